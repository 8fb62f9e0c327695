//! Kubernetes executor: cordon, drain through the Eviction API, uncordon.

use std::time::Duration;

use async_trait::async_trait;
use health_core::{Action, ExecError, Executor};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::ExecTarget;

/// The annotation recording that the agent (not an operator) cordoned a node.
pub const CORDONED_ANNOTATION: &str = "node-agent.civo.com/cordoned";

/// How a drain behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    /// Give up (naming the pods left) after this long.
    pub timeout: Duration,
    /// Wait between rounds of evictions refused by disruption budgets.
    pub retry_interval: Duration,
    /// Grace period for evicted pods (None: each pod's own).
    pub grace_period: Option<u32>,
    /// Pods terminating for longer than this count as gone (a dead kubelet
    /// never confirms their deletion), like kubectl's
    /// `--skip-wait-for-delete-timeout`.
    pub skip_terminating_after: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            timeout: Duration::from_secs(600),
            retry_interval: Duration::from_secs(5),
            grace_period: None,
            skip_terminating_after: Duration::from_secs(30),
        }
    }
}

/// What went wrong with a Kubernetes action.
#[derive(Debug, thiserror::Error)]
pub enum KubeExecError {
    /// An API call failed.
    #[error("{what} on node {node:?}: {source}")]
    Api {
        /// The node.
        node: String,
        /// The call.
        what: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The node changed under every attempt to cordon it.
    #[error("node {node:?} kept changing while being cordoned; gave up after 5 attempts")]
    Contended {
        /// The node.
        node: String,
    },
    /// Disruption budgets kept pods on the node past the drain timeout.
    #[error("drain of node {node:?} timed out after {after:?}; pods still on it: {}", pods.join(", "))]
    DrainTimeout {
        /// The node.
        node: String,
        /// The limit.
        after: Duration,
        /// `namespace/name` of every pod left.
        pods: Vec<String>,
    },
}

/// Cordons, drains and uncordons nodes.
///
/// kube 5 clients retry 429 answers (a disruption budget refusing an
/// eviction) up to 15 times on their own by default; build the client with
/// [`KubeExecutor::from_config`], or with `Config::default_retry = false`,
/// so the drain timeout governs.
#[derive(Clone)]
pub struct KubeExecutor {
    client: kube::Client,
    drain: DrainConfig,
}

impl std::fmt::Debug for KubeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeExecutor").field("drain", &self.drain).finish_non_exhaustive()
    }
}

fn is_daemonset_pod(p: &Pod) -> bool {
    p.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.kind == "DaemonSet")
}

fn is_mirror_pod(p: &Pod) -> bool {
    p.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
}

/// Whether a pod has been terminating for longer than `limit` (on a node whose
/// kubelet is gone it never finishes).
fn stuck_terminating(p: &Pod, limit: Duration) -> bool {
    p.metadata.deletion_timestamp.as_ref().is_some_and(|t| {
        let since = u64::try_from(t.0.as_millisecond()).unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        now.saturating_sub(since) > u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Pods the drain must still evict.
fn must_evict(p: &Pod, skip_terminating_after: Duration) -> bool {
    !is_daemonset_pod(p) && !is_mirror_pod(p) && !stuck_terminating(p, skip_terminating_after)
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), p.metadata.name.as_deref().unwrap_or(""))
}

impl KubeExecutor {
    /// An executor using `client`.
    #[must_use]
    pub fn new(client: kube::Client, drain: DrainConfig) -> Self {
        KubeExecutor { client, drain }
    }

    /// An executor with a client built from `config`, without kube's own 429 retries.
    pub fn from_config(mut config: kube::Config, drain: DrainConfig) -> Result<Self, kube::Error> {
        config.default_retry = false;
        Ok(Self::new(kube::Client::try_from(config)?, drain))
    }

    fn api_err<'a>(node: &'a str, what: &'static str) -> impl FnOnce(kube::Error) -> KubeExecError + 'a {
        move |source| KubeExecError::Api { node: node.to_owned(), what, source }
    }

    /// Cordons `node`; returns whether this call cordoned it (false when it
    /// was already unschedulable, e.g. an operator's cordon, which is left alone).
    pub async fn cordon(&self, node: &str) -> Result<bool, KubeExecError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for _ in 0..5 {
            let n = nodes.get(node).await.map_err(Self::api_err(node, "get"))?;
            let ours = n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CORDONED_ANNOTATION));
            if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
                return Ok(ours);
            }
            let patch = json!({
                "metadata": {"resourceVersion": n.metadata.resource_version, "annotations": {CORDONED_ANNOTATION: "true"}},
                "spec": {"unschedulable": true}
            });
            match nodes.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {
                    tracing::info!(node, "cordoned");
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(Self::api_err(node, "cordon")(e)),
            }
        }
        Err(KubeExecError::Contended { node: node.to_owned() })
    }

    /// Uncordons `node` if, and only if, the agent cordoned it. A marker left
    /// on a node someone else uncordoned meanwhile is removed without
    /// touching the node's schedulability.
    pub async fn uncordon(&self, node: &str) -> Result<(), KubeExecError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for _ in 0..5 {
            let n = nodes.get(node).await.map_err(Self::api_err(node, "get"))?;
            let ours = n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CORDONED_ANNOTATION));
            if !ours {
                tracing::info!(node, "not uncordoning: the agent did not cordon this node");
                return Ok(());
            }
            let cordoned = n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
            let mut patch = json!({"metadata": {"resourceVersion": n.metadata.resource_version, "annotations": {CORDONED_ANNOTATION: null}}});
            if cordoned {
                patch["spec"] = json!({"unschedulable": null});
            }
            match nodes.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {
                    tracing::info!(node, was_cordoned = cordoned, "uncordoned");
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(Self::api_err(node, "uncordon")(e)),
            }
        }
        Err(KubeExecError::Contended { node: node.to_owned() })
    }

    /// Cordons `node` and evicts every pod on it except DaemonSet and mirror
    /// pods, retrying evictions refused by disruption budgets until the drain
    /// timeout.
    pub async fn drain(&self, node: &str) -> Result<(), KubeExecError> {
        self.cordon(node).await?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + self.drain.timeout;
        let mut params = EvictParams::default();
        if let Some(g) = self.drain.grace_period {
            params.delete_options =
                Some(kube::api::DeleteParams { grace_period_seconds: Some(g), ..Default::default() });
        }
        loop {
            let on_node = pods
                .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
                .await
                .map_err(Self::api_err(node, "list pods"))?;
            let evictable: Vec<&Pod> =
                on_node.items.iter().filter(|p| must_evict(p, self.drain.skip_terminating_after)).collect();
            if evictable.is_empty() {
                tracing::info!(node, "drained");
                return Ok(());
            }
            for p in &evictable {
                let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref()) else {
                    continue;
                };
                let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                match api.evict(name, &params).await {
                    Ok(_) => tracing::info!(node, pod = %pod_key(p), "evicted"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(kube::Error::Api(s)) if s.code == 429 => {
                        tracing::info!(node, pod = %pod_key(p), "eviction refused by a disruption budget; will retry");
                    }
                    Err(e) => return Err(Self::api_err(node, "evict")(e)),
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let left = pods
                    .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
                    .await
                    .map_err(Self::api_err(node, "list pods"))?;
                let pods: Vec<String> = left
                    .items
                    .iter()
                    .filter(|p| must_evict(p, self.drain.skip_terminating_after))
                    .map(pod_key)
                    .collect();
                if pods.is_empty() {
                    return Ok(());
                }
                return Err(KubeExecError::DrainTimeout { node: node.to_owned(), after: self.drain.timeout, pods });
            }
            tokio::time::sleep(self.drain.retry_interval.min(deadline - now)).await;
        }
    }
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for KubeExecutor {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        let node = target.node_name();
        let result = match action {
            Action::Drain => self.drain(node).await,
            Action::Uncordon => self.uncordon(node).await,
            Action::Reboot | Action::Replace => return Err(ExecError::Unsupported { action }),
        };
        result.map_err(|e| ExecError::Failed { action, message: e.to_string(), source: Some(Box::new(e)) })
    }
}
