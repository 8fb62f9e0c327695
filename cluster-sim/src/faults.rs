//! Node faults and host services: what breaks on a node, what a soft
//! repair or a reboot does about it, and API server outages.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::fixtures::{self, PodOwner};
use crate::resource::Kind;

/// A fault injected into a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Ready=False (the kubelet reports not ready).
    NotReady,
    /// Ready=Unknown (the kubelet stopped posting status).
    Unknown,
    /// MemoryPressure=True.
    MemoryPressure,
    /// DiskPressure=True.
    DiskPressure,
    /// PIDPressure=True.
    PidPressure,
    /// Allocatable GPUs drop to zero (the label keeps the expected count).
    GpuLost,
    /// Cilium is down: NetworkUnavailable=True and the agent-not-ready taint.
    CiliumDown,
    /// The kubelet lease stops being renewed.
    LeaseStale,
    /// The kubelet process stopped: Ready=Unknown and its lease goes stale.
    /// A restart of the kubelet (the simulated host endpoint
    /// `POST /sim/v1/nodes/{node}/restart/kubelet`) or a reboot fixes it.
    KubeletStopped,
    /// The node's sidecar answers 503 on `GET /sim/v1/nodes/{node}/sidecar/healthz`
    /// while the node itself looks fine (its pod was replaced and lost its
    /// readiness mark); `POST .../sidecar/mark-ready` fixes it.
    #[serde(rename = "sidecar-503")]
    Sidecar503,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 10] = [
        Fault::NotReady,
        Fault::Unknown,
        Fault::MemoryPressure,
        Fault::DiskPressure,
        Fault::PidPressure,
        Fault::GpuLost,
        Fault::CiliumDown,
        Fault::LeaseStale,
        Fault::KubeletStopped,
        Fault::Sidecar503,
    ];

    /// What repairs the fault besides a reboot: the host service whose
    /// restart fixes it, or deleting the node's Cilium agent pod.
    #[must_use]
    pub const fn soft_fix(self) -> Option<SoftFix> {
        match self {
            Fault::KubeletStopped => Some(SoftFix::Restart("kubelet")),
            Fault::CiliumDown => Some(SoftFix::CiliumPod),
            Fault::Sidecar503 => Some(SoftFix::MarkReady),
            _ => None,
        }
    }
}

/// A repair short of a reboot that clears a [`Fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftFix {
    /// Restarting this host service (`kubelet`).
    Restart(&'static str),
    /// Deleting the node's Cilium agent pod (its DaemonSet starts a new one).
    CiliumPod,
    /// The sidecar's mark-ready call.
    MarkReady,
}

/// What a reboot of a node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebootBehaviour {
    /// The reboot clears the node's faults.
    pub fixes: bool,
    /// How long the node is NotReady while rebooting.
    pub takes: Duration,
    /// After a reboot that fixed it, the node's faults come back this long
    /// after it is up again (a node that looks healthy right after a reboot
    /// and fails under load), once per reboot.
    pub relapse_after: Option<Duration>,
}

impl RebootBehaviour {
    /// A reboot taking `takes` that fixes the node (`fixes`) for good.
    #[must_use]
    pub const fn new(fixes: bool, takes: Duration) -> Self {
        RebootBehaviour { fixes, takes, relapse_after: None }
    }
}

#[derive(Default)]
pub(crate) struct NodeState {
    pub(crate) faults: BTreeMap<String, Vec<Fault>>,
    /// Host services restarted through the simulated host endpoint, in order.
    pub(crate) restarts: Vec<(String, String)>,
    pub(crate) reboot: BTreeMap<String, RebootBehaviour>,
    /// Reboots started per node: only the latest one brings the node back.
    pub(crate) reboots: BTreeMap<String, u64>,
}

impl Cluster {
    /// Injects a fault into a node.
    pub fn inject(&self, node: &str, fault: Fault) -> Result<(), ApiError> {
        {
            let mut st = self.inner.nodes.lock();
            let faults = st.faults.entry(node.to_owned()).or_default();
            if !faults.contains(&fault) {
                faults.push(fault);
            }
        }
        self.render(node)
    }

    /// Clears every fault of a node.
    pub fn heal(&self, node: &str) -> Result<(), ApiError> {
        self.inner.nodes.lock().faults.remove(node);
        self.render(node)
    }

    /// The faults of a node.
    #[must_use]
    pub fn faults(&self, node: &str) -> Vec<Fault> {
        self.inner.nodes.lock().faults.get(node).cloned().unwrap_or_default()
    }

    /// Says what a reboot of `node` does.
    pub fn set_reboot(&self, node: &str, behaviour: RebootBehaviour) {
        self.inner.nodes.lock().reboot.insert(node.to_owned(), behaviour);
    }

    pub(crate) fn reboot_behaviour(&self, node: &str) -> RebootBehaviour {
        self.inner
            .nodes
            .lock()
            .reboot
            .get(node)
            .copied()
            .unwrap_or(RebootBehaviour::new(true, self.inner.config.reboot_takes))
    }

    /// Takes the Kubernetes API down: every request but the simulator's own
    /// (`/sim/...`) answers 503 and open watches end, until k3s is restarted
    /// on `fixed_by` (`POST /sim/v1/nodes/{fixed_by}/restart/k3s`, a
    /// control-plane host, not a node) or [`Cluster::end_api_outage`].
    pub fn api_outage(&self, fixed_by: &str) {
        tracing::warn!(fixed_by, "simulated API server outage");
        self.inner.outage.send_replace(Some(fixed_by.to_owned()));
    }

    /// Ends an API server outage.
    pub fn end_api_outage(&self) {
        self.inner.outage.send_replace(None);
    }

    /// Whether the API server is down.
    #[must_use]
    pub fn api_down(&self) -> bool {
        self.inner.outage.borrow().is_some()
    }

    /// Restarts a host service of `node` (what an operator's script or a
    /// fleet controller does over SSH): clears the faults that restart fixes
    /// and records the call. `k3s` on a control-plane host ends an API
    /// outage it causes (any host name is accepted for `k3s`). `None` when
    /// there is no such node.
    pub fn restart_service(&self, node: &str, service: &str) -> Option<Vec<Fault>> {
        if service == "k3s" {
            self.inner.nodes.lock().restarts.push((node.to_owned(), service.to_owned()));
            let fixed = self.inner.outage.borrow().as_deref() == Some(node);
            if fixed {
                self.end_api_outage();
            }
            tracing::info!(host = node, fixed, "k3s restarted");
            return Some(Vec::new());
        }
        self.node(node)?;
        let fixed = {
            let mut st = self.inner.nodes.lock();
            st.restarts.push((node.to_owned(), service.to_owned()));
            let faults = st.faults.entry(node.to_owned()).or_default();
            let fixed: Vec<Fault> = faults
                .iter()
                .copied()
                .filter(|f| matches!(f.soft_fix(), Some(SoftFix::Restart(s)) if s == service))
                .collect();
            faults.retain(|f| !fixed.contains(f));
            fixed
        };
        tracing::info!(node, service, ?fixed, "host service restarted");
        let _ = self.render(node);
        Some(fixed)
    }

    /// Whether the node's sidecar is ready (`None`: no such node).
    #[must_use]
    pub fn sidecar_ready(&self, node: &str) -> Option<bool> {
        self.node(node)?;
        Some(!self.faults(node).contains(&Fault::Sidecar503))
    }

    /// The sidecar's mark-ready: clears `Sidecar503` and records the call
    /// (as the service `sidecar-mark-ready`). `None`: no such node.
    pub fn mark_ready(&self, node: &str) -> Option<bool> {
        self.node(node)?;
        let had = {
            let mut st = self.inner.nodes.lock();
            st.restarts.push((node.to_owned(), "sidecar-mark-ready".to_owned()));
            let faults = st.faults.entry(node.to_owned()).or_default();
            let had = faults.contains(&Fault::Sidecar503);
            faults.retain(|f| *f != Fault::Sidecar503);
            had
        };
        tracing::info!(node, fixed = had, "sidecar marked ready");
        Some(had)
    }

    /// Every host service restart (and sidecar mark-ready, as the service
    /// `sidecar-mark-ready`) so far, in order: `(node, service)`.
    #[must_use]
    pub fn service_restarts(&self) -> Vec<(String, String)> {
        self.inner.nodes.lock().restarts.clone()
    }

    /// A pod was deleted through the API. A DaemonSet's pod comes back at
    /// once (same name, new uid), and a new Cilium agent pod clears its
    /// node's `CiliumDown`.
    pub(crate) fn pod_deleted(&self, pod: &Value) {
        let meta = &pod["metadata"];
        let daemon = meta["ownerReferences"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["kind"] == "DaemonSet" && r["controller"] == true));
        let (Some(ns), Some(name), Some(node)) =
            (meta["namespace"].as_str(), meta["name"].as_str(), pod["spec"]["nodeName"].as_str())
        else {
            return;
        };
        if !daemon || self.node(node).is_none() {
            return;
        }
        let app = meta["labels"]["app"].as_str().unwrap_or_default().to_owned();
        let fresh =
            serde_json::to_value(fixtures::pod(ns, name, node, &app, PodOwner::DaemonSet)).unwrap_or(Value::Null);
        let _ = self.create(Kind::Pod, fresh);
        if app == "cilium" {
            let had = {
                let mut st = self.inner.nodes.lock();
                let faults = st.faults.entry(node.to_owned()).or_default();
                let had = faults.contains(&Fault::CiliumDown);
                faults.retain(|f| *f != Fault::CiliumDown);
                had
            };
            tracing::info!(node, pod = name, fixed = had, "Cilium agent pod restarted");
            let _ = self.render(node);
        }
    }
}
