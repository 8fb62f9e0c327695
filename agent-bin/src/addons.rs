//! The add-on monitor: Deployments and DaemonSets the nodes depend on (the
//! Cilium agent, the NVIDIA device plugin, CoreDNS...) become components of
//! the agent's health, with their ready and desired counts in the
//! metadata: in `/components/{name}`, in the heartbeat, in `/readyz`'s
//! detail.
//!
//! Each add-on is read with one GET per `kube.addons_interval` (a handful
//! of objects: cheaper than a watch each). An add-on never makes the agent
//! itself unready or dead: a short one is `degraded`, as is one that is
//! missing or cannot be read, and the message says which.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use health_core::{ComponentStatus, HealthManager};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use serde::{Deserialize, Serialize};

/// The kinds of add-on workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddonKind {
    /// apps/v1 DaemonSet (ready: `numberReady` of `desiredNumberScheduled`).
    DaemonSet,
    /// apps/v1 Deployment (ready: `readyReplicas` of `spec.replicas`).
    Deployment,
}

/// `[[addons]]`: one monitored workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonEntry {
    /// `DaemonSet` or `Deployment`.
    pub kind: AddonKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The component name (default `addon-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

impl AddonEntry {
    /// The component it reports as.
    #[must_use]
    pub fn component(&self) -> String {
        self.component.clone().unwrap_or_else(|| format!("addon-{}", self.name))
    }
}

/// What one read of an add-on found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Pods wanted.
    pub desired: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods available (ready for `minReadySeconds`).
    pub available: i32,
    /// Pods of the current template.
    pub updated: i32,
}

/// The counts of a DaemonSet.
#[must_use]
pub fn daemonset_counts(ds: &DaemonSet) -> Counts {
    let s = ds.status.clone().unwrap_or_default();
    Counts {
        desired: s.desired_number_scheduled,
        ready: s.number_ready,
        available: s.number_available.unwrap_or(0),
        updated: s.updated_number_scheduled.unwrap_or(0),
    }
}

/// The counts of a Deployment.
#[must_use]
pub fn deployment_counts(d: &Deployment) -> Counts {
    let s = d.status.clone().unwrap_or_default();
    Counts {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: s.ready_replicas.unwrap_or(0),
        available: s.available_replicas.unwrap_or(0),
        updated: s.updated_replicas.unwrap_or(0),
    }
}

/// The component report for `counts`.
#[must_use]
pub fn verdict(e: &AddonEntry, counts: &Counts) -> (ComponentStatus, String, BTreeMap<String, String>) {
    let meta = BTreeMap::from([
        ("kind".to_owned(), format!("{:?}", e.kind)),
        ("namespace".to_owned(), e.namespace.clone()),
        ("name".to_owned(), e.name.clone()),
        ("desired".to_owned(), counts.desired.to_string()),
        ("ready".to_owned(), counts.ready.to_string()),
        ("available".to_owned(), counts.available.to_string()),
        ("updated".to_owned(), counts.updated.to_string()),
    ]);
    if counts.ready >= counts.desired {
        (ComponentStatus::Healthy, format!("{} of {} ready", counts.ready, counts.desired), meta)
    } else {
        (
            ComponentStatus::Degraded,
            format!(
                "{} of {} ready ({} not ready)",
                counts.ready,
                counts.desired,
                counts.desired.saturating_sub(counts.ready)
            ),
            meta,
        )
    }
}

async fn read(client: &kube::Client, e: &AddonEntry, timeout: Duration) -> Result<Option<Counts>, String> {
    let call = async {
        match e.kind {
            AddonKind::DaemonSet => kube::Api::<DaemonSet>::namespaced(client.clone(), &e.namespace)
                .get_opt(&e.name)
                .await
                .map(|o| o.as_ref().map(daemonset_counts)),
            AddonKind::Deployment => kube::Api::<Deployment>::namespaced(client.clone(), &e.namespace)
                .get_opt(&e.name)
                .await
                .map(|o| o.as_ref().map(deployment_counts)),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Reads every add-on every `interval` until the task is aborted.
pub async fn monitor(
    client: kube::Client,
    addons: Vec<AddonEntry>,
    interval: Duration,
    timeout: Duration,
    health: Arc<HealthManager>,
) {
    for a in &addons {
        health.register_optional(&a.component());
    }
    let mut last: BTreeMap<String, ComponentStatus> = BTreeMap::new();
    loop {
        for a in &addons {
            let name = a.component();
            let (status, message, meta) = match read(&client, a, timeout).await {
                Ok(Some(counts)) => verdict(a, &counts),
                Ok(None) => (
                    ComponentStatus::Degraded,
                    format!("{:?} {}/{} not found", a.kind, a.namespace, a.name),
                    BTreeMap::new(),
                ),
                Err(err) => (
                    ComponentStatus::Degraded,
                    format!("cannot read {:?} {}/{}: {err}", a.kind, a.namespace, a.name),
                    BTreeMap::new(),
                ),
            };
            if last.insert(name.clone(), status) != Some(status) {
                if status == ComponentStatus::Healthy {
                    tracing::info!(addon = %name, %message, "add-on ready");
                } else {
                    tracing::warn!(addon = %name, %message, "add-on not fully ready");
                }
            }
            health.update(&name, status, message, meta);
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_verdicts() {
        let e = AddonEntry {
            kind: AddonKind::DaemonSet,
            namespace: "kube-system".into(),
            name: "cilium".into(),
            component: None,
        };
        assert_eq!(e.component(), "addon-cilium");
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cilium"},
            "status": {"desiredNumberScheduled": 5, "numberReady": 4, "currentNumberScheduled": 5,
                       "numberMisscheduled": 0, "numberAvailable": 4, "updatedNumberScheduled": 5}
        }))
        .unwrap();
        let (status, message, meta) = verdict(&e, &daemonset_counts(&ds));
        assert_eq!((status, message.as_str()), (ComponentStatus::Degraded, "4 of 5 ready (1 not ready)"));
        assert_eq!(meta["ready"], "4");
        assert_eq!(meta["desired"], "5");
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "coredns"}, "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"readyReplicas": 2}
        }))
        .unwrap();
        assert_eq!(verdict(&e, &deployment_counts(&d)).0, ComponentStatus::Healthy);
    }
}
