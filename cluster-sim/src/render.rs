//! Rendering a node's objects from its state: the Node's conditions,
//! capacity and taints from its faults and reboots, and its Lease.

use serde_json::{Value, json};

use crate::cluster::{Cluster, now_micro};
use crate::error::ApiError;
use crate::faults::Fault;
use crate::fixtures;
use crate::resource::Kind;

impl Cluster {
    /// Writes a node's conditions, taints and GPUs from its faults.
    pub(crate) fn render(&self, node: &str) -> Result<(), ApiError> {
        let faults = self.faults(node);
        self.render_with(node, &faults, false)
    }

    pub(crate) fn render_with(&self, node: &str, faults: &[Fault], rebooting: bool) -> Result<(), ApiError> {
        let now = crate::store::now_rfc3339();
        self.update_node(node, |v| {
            let mut conds = fixtures::healthy_conditions();
            for c in &mut conds {
                let (status, reason, message) = match (c.type_.as_str(), rebooting) {
                    ("Ready", true) => ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
                    ("Ready", false) if faults.contains(&Fault::Unknown) || faults.contains(&Fault::KubeletStopped) => {
                        ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
                    }
                    ("Ready", false) if faults.contains(&Fault::NotReady) => {
                        ("False", "KubeletNotReady", "container runtime network not ready: NetworkReady=false")
                    }
                    ("MemoryPressure", _) if faults.contains(&Fault::MemoryPressure) => {
                        ("True", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
                    }
                    ("DiskPressure", _) if faults.contains(&Fault::DiskPressure) => {
                        ("True", "KubeletHasDiskPressure", "kubelet has disk pressure")
                    }
                    ("PIDPressure", _) if faults.contains(&Fault::PidPressure) => {
                        ("True", "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
                    }
                    ("NetworkUnavailable", _) if faults.contains(&Fault::CiliumDown) => {
                        ("True", "CiliumIsDown", "Cilium agent is not running on this node")
                    }
                    _ => continue,
                };
                c.status = status.into();
                c.reason = Some(reason.into());
                c.message = Some(message.into());
                c.last_transition_time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now.parse().unwrap_or_default()));
            }
            v["status"]["conditions"] = serde_json::to_value(&conds).unwrap_or(Value::Null);
            let mut taints: Vec<Value> = v["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|t| {
                    !matches!(
                        t["key"].as_str(),
                        Some(
                            "node.cilium.io/agent-not-ready"
                                | "node.kubernetes.io/unreachable"
                                | "node.kubernetes.io/not-ready"
                        )
                    )
                })
                .collect();
            if faults.contains(&Fault::CiliumDown) {
                taints.push(json!({"key": "node.cilium.io/agent-not-ready", "value": "true", "effect": "NoSchedule"}));
            }
            if rebooting || faults.contains(&Fault::Unknown) || faults.contains(&Fault::KubeletStopped) {
                taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": now}));
            } else if faults.contains(&Fault::NotReady) {
                taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule", "timeAdded": now}));
            }
            v["spec"]["taints"] = Value::Array(taints);
            if let Some(expected) = v["metadata"]["labels"][fixtures::GPU_COUNT_LABEL].as_str().map(str::to_owned) {
                let alloc = if faults.contains(&Fault::GpuLost) { "0".to_owned() } else { expected };
                v["status"]["allocatable"][fixtures::GPU_RESOURCE] = Value::String(alloc.clone());
                v["status"]["capacity"][fixtures::GPU_RESOURCE] = Value::String(alloc);
            }
        })?;
        if faults.contains(&Fault::LeaseStale) || faults.contains(&Fault::KubeletStopped) {
            self.update(Kind::Lease, "kube-node-lease", node, |l| {
                l["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
            })?;
        } else {
            self.renew_lease(node);
        }
        Ok(())
    }

    pub(crate) fn renew_lease(&self, node: &str) {
        let _ = self.update(Kind::Lease, "kube-node-lease", node, |l| {
            l["spec"]["renewTime"] = Value::String(now_micro());
        });
    }

    /// Renews the kubelet lease of every node without a `LeaseStale` fault or reboot in progress.
    pub fn renew_leases(&self) {
        let stale: Vec<String> = {
            let st = self.inner.nodes.lock();
            st.faults
                .iter()
                .filter(|(_, f)| f.contains(&Fault::LeaseStale) || f.contains(&Fault::KubeletStopped))
                .map(|(n, _)| n.clone())
                .collect()
        };
        for node in self.node_names() {
            if !stale.contains(&node) {
                self.renew_lease(&node);
            }
        }
    }
}
