//! Kubernetes executor: cordon, drain through the Eviction API, uncordon.

use std::time::Duration;

use async_trait::async_trait;
use health_core::retry::{RetryAfter, RetryPolicy, retry};
use health_core::{Action, ExecError, Executor};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::ExecTarget;

/// The annotation recording that the agent (not an operator) cordoned a node.
pub const CORDONED_ANNOTATION: &str = "node-agent.civo.com/cordoned";

/// How a drain behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainConfig {
    /// Give up (naming the pods left) after this long.
    pub timeout: Duration,
    /// The first wait before repeating an eviction refused by a disruption
    /// budget (doubling, with jitter, up to 30s or this, whichever is
    /// longer; a `retryAfterSeconds` from the API server is honoured), and
    /// the wait between looks at pods still terminating.
    pub retry_interval: Duration,
    /// Grace period for evicted pods (None: each pod's own).
    pub grace_period: Option<u32>,
    /// Pods terminating for longer than this count as gone (a dead kubelet
    /// never confirms their deletion), like kubectl's
    /// `--skip-wait-for-delete-timeout`.
    pub skip_terminating_after: Duration,
    /// Time limit of each API call (a drain's calls also end at the drain's
    /// deadline), whatever retries the client does on its own.
    pub call_timeout: Duration,
    /// Evict pods that no controller manages (they are gone for good), like
    /// kubectl's `--force`. Off by default: such a node is not drained.
    pub evict_unmanaged: bool,
    /// Evict pods with `emptyDir` volumes (their data is deleted), like
    /// kubectl's `--delete-emptydir-data`. Off by default: such a node is not
    /// drained.
    pub delete_emptydir_data: bool,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            timeout: Duration::from_secs(600),
            retry_interval: Duration::from_secs(5),
            grace_period: None,
            skip_terminating_after: Duration::from_secs(30),
            call_timeout: Duration::from_secs(30),
            evict_unmanaged: false,
            delete_emptydir_data: false,
        }
    }
}

/// What went wrong with a Kubernetes action.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// An API call did not answer within its time limit.
    #[error("{what} on node {node:?} got no answer within {after:?}")]
    Unanswered {
        /// The node.
        node: String,
        /// The call.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The drain would destroy what cannot come back, and the settings do
    /// not allow it; nothing was cordoned or evicted.
    #[error("refusing to drain node {node:?}: {why}: {}", pods.join(", "))]
    Refused {
        /// The node.
        node: String,
        /// What is at stake, and the setting that allows it.
        why: &'static str,
        /// `namespace/name` of the pods concerned.
        pods: Vec<String>,
    },
    /// The node changed under every attempt to cordon it.
    #[error("node {node:?} kept changing while being cordoned; gave up after 5 attempts")]
    Contended {
        /// The node.
        node: String,
    },
    /// A pod restart found no pod to restart on the node.
    #[error("no pod in namespace {namespace:?} matching {selector:?} runs on node {node:?}")]
    NoPods {
        /// The node.
        node: String,
        /// The namespace searched.
        namespace: String,
        /// The label selector.
        selector: String,
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

/// A pod no controller would recreate elsewhere.
fn is_unmanaged(p: &Pod) -> bool {
    !p.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true))
}

fn has_emptydir(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()))
}

/// A pod that has finished: deleting it loses nothing that runs.
fn is_finished(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
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

    /// One API call, bounded by the call timeout and by `deadline`.
    async fn call<T>(
        &self,
        node: &str,
        what: &'static str,
        deadline: Option<tokio::time::Instant>,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, KubeExecError> {
        let mut until = tokio::time::Instant::now() + self.drain.call_timeout;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        tokio::time::timeout_at(until, call).await.map_err(|_| match deadline {
            // Completed with the pods left by `drain`.
            Some(d) if d <= until => {
                KubeExecError::DrainTimeout { node: node.to_owned(), after: self.drain.timeout, pods: Vec::new() }
            }
            _ => KubeExecError::Unanswered { node: node.to_owned(), what, after: self.drain.call_timeout },
        })
    }

    fn api_err<'a>(node: &'a str, what: &'static str) -> impl FnOnce(kube::Error) -> KubeExecError + 'a {
        move |source| KubeExecError::Api { node: node.to_owned(), what, source }
    }

    async fn pods_on(&self, node: &str, deadline: Option<tokio::time::Instant>) -> Result<Vec<Pod>, KubeExecError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        Ok(self
            .call(node, "list pods", deadline, pods.list(&lp))
            .await?
            .map_err(Self::api_err(node, "list pods"))?
            .items)
    }

    /// Refuses, like kubectl, to evict what would be lost for good unless
    /// the settings allow it.
    fn check_drainable(&self, node: &str, pods: &[Pod]) -> Result<(), KubeExecError> {
        let at_stake = |f: fn(&Pod) -> bool| -> Vec<String> {
            pods.iter()
                .filter(|p| must_evict(p, self.drain.skip_terminating_after) && !is_finished(p) && f(p))
                .map(pod_key)
                .collect()
        };
        if !self.drain.evict_unmanaged {
            let pods = at_stake(is_unmanaged);
            if !pods.is_empty() {
                return Err(KubeExecError::Refused {
                    node: node.to_owned(),
                    why: "pods not managed by a controller would be deleted for good (allow with drain evict_unmanaged, like kubectl drain --force)",
                    pods,
                });
            }
        }
        if !self.drain.delete_emptydir_data {
            let pods = at_stake(has_emptydir);
            if !pods.is_empty() {
                return Err(KubeExecError::Refused {
                    node: node.to_owned(),
                    why: "pods with emptyDir volumes would lose their data (allow with drain delete_emptydir_data, like kubectl drain --delete-emptydir-data)",
                    pods,
                });
            }
        }
        Ok(())
    }

    /// Cordons `node`; returns whether this call cordoned it (false when it
    /// was already unschedulable, e.g. an operator's cordon, which is left alone).
    pub async fn cordon(&self, node: &str) -> Result<bool, KubeExecError> {
        self.cordon_until(node, None).await
    }

    async fn cordon_until(&self, node: &str, deadline: Option<tokio::time::Instant>) -> Result<bool, KubeExecError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for _ in 0..5 {
            let n = self.call(node, "get", deadline, nodes.get(node)).await?.map_err(Self::api_err(node, "get"))?;
            let ours = n.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CORDONED_ANNOTATION));
            if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
                return Ok(ours);
            }
            let patch = json!({
                "metadata": {"resourceVersion": n.metadata.resource_version, "annotations": {CORDONED_ANNOTATION: "true"}},
                "spec": {"unschedulable": true}
            });
            match self
                .call(node, "cordon", deadline, nodes.patch(node, &PatchParams::default(), &Patch::Merge(patch)))
                .await?
            {
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
            let n = self.call(node, "get", None, nodes.get(node)).await?.map_err(Self::api_err(node, "get"))?;
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
            match self
                .call(node, "uncordon", None, nodes.patch(node, &PatchParams::default(), &Patch::Merge(patch)))
                .await?
            {
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
    /// timeout. Every call ends by the deadline, whatever the client's own
    /// retries. Pods without a controller, and pods with `emptyDir` data,
    /// make the drain refuse before anything is cordoned, unless
    /// [`DrainConfig`] allows them.
    pub async fn drain(&self, node: &str) -> Result<(), KubeExecError> {
        match self.drain_until(node, tokio::time::Instant::now() + self.drain.timeout).await {
            // A call ran into the deadline: name what is left.
            Err(KubeExecError::DrainTimeout { .. }) => match self.pods_left(node).await {
                Ok(pods) => Err(KubeExecError::DrainTimeout { node: node.to_owned(), after: self.drain.timeout, pods }),
                Err(e) => Err(e),
            },
            other => other,
        }
    }

    async fn drain_until(&self, node: &str, deadline: tokio::time::Instant) -> Result<(), KubeExecError> {
        let first = self.pods_on(node, Some(deadline)).await?;
        self.check_drainable(node, &first)?;
        self.cordon_until(node, Some(deadline)).await?;
        let mut params = EvictParams::default();
        if let Some(g) = self.drain.grace_period {
            params.delete_options =
                Some(kube::api::DeleteParams { grace_period_seconds: Some(g), ..Default::default() });
        }
        let mut on_node = Some(first);
        loop {
            let pods = match on_node.take() {
                Some(p) => p,
                None => self.pods_on(node, Some(deadline)).await?,
            };
            let evictable: Vec<&Pod> =
                pods.iter().filter(|p| must_evict(p, self.drain.skip_terminating_after)).collect();
            if evictable.is_empty() {
                tracing::info!(node, "drained");
                return Ok(());
            }
            // Pods that arrived since the check are held to the same rules.
            let arrived: Vec<Pod> = evictable.iter().map(|p| (*p).clone()).collect();
            self.check_drainable(node, &arrived)?;
            // Every pod is evicted at once, each repeating its own refusals
            // (like kubectl drain): one pod held by its budget does not hold
            // back the others.
            let evictions = evictable.iter().filter_map(|p| {
                let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref()) else {
                    return None;
                };
                Some(self.evict(node, ns, name, &params, deadline))
            });
            // The first hard failure ends the drain at once (the other
            // evictions are dropped).
            match futures_util::future::try_join_all(evictions).await {
                Ok(_) => {}
                // The deadline passed inside a call: name what is left.
                Err(KubeExecError::DrainTimeout { .. }) => {}
                Err(e) => return Err(e),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let pods = self.pods_left(node).await?;
                if pods.is_empty() {
                    return Ok(());
                }
                return Err(KubeExecError::DrainTimeout { node: node.to_owned(), after: self.drain.timeout, pods });
            }
            tokio::time::sleep(self.drain.retry_interval.min(deadline - now)).await;
        }
    }

    /// Evicts one pod, repeating the eviction while a disruption budget
    /// refuses it (429) as long as a repeat starts before `deadline`; a pod
    /// already gone counts as evicted, and one still refused is left to the
    /// drain (which tries again or, at its deadline, names it).
    async fn evict(
        &self,
        node: &str,
        ns: &str,
        name: &str,
        params: &EvictParams,
        deadline: tokio::time::Instant,
    ) -> Result<(), KubeExecError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let key = format!("{ns}/{name}");
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let first = self.drain.retry_interval.max(Duration::from_millis(1));
        // A budget's refusal is expected while its pods move: logged at INFO.
        let policy =
            RetryPolicy::new(first, first.max(Duration::from_secs(30)), u32::MAX).with_total(left).as_routine();
        let what = format!("evict {key} from node {node}");
        let outcome = retry(
            &policy,
            &what,
            |_| async {
                match self.call(node, "evict", Some(deadline), api.evict(name, params)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(()),
                    Ok(Err(kube::Error::Api(s))) if s.code == 429 => Err(Eviction::Refused(s)),
                    Ok(Err(e)) => Err(Eviction::Failed(Self::api_err(node, "evict")(e))),
                    Err(e) => Err(Eviction::Failed(e)),
                }
            },
            |e| matches!(e, Eviction::Refused(_)),
        )
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(node, pod = %key, "evicted");
                Ok(())
            }
            // Its repeats would run past the drain's deadline: the drain
            // looks at the node again and tries once more while time is left.
            Err(Eviction::Refused(s)) => {
                tracing::info!(node, pod = %key, reason = %s.message, "eviction still refused by a disruption budget");
                Ok(())
            }
            Err(Eviction::Failed(e)) => Err(e),
        }
    }

    /// The pods the drain still had to evict (looked up with the call
    /// timeout, past the drain's own deadline).
    async fn pods_left(&self, node: &str) -> Result<Vec<String>, KubeExecError> {
        let left = self.pods_on(node, None).await?;
        Ok(left.iter().filter(|p| must_evict(p, self.drain.skip_terminating_after)).map(pod_key).collect())
    }
}

/// An eviction that did not happen: refused by a disruption budget (to be
/// repeated), or failed.
enum Eviction {
    Refused(Box<kube::core::Status>),
    Failed(KubeExecError),
}

impl std::fmt::Display for Eviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Eviction::Refused(s) => write!(f, "refused (429): {}", s.message),
            Eviction::Failed(e) => e.fmt(f),
        }
    }
}

impl RetryAfter for Eviction {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Eviction::Refused(s) => s
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|&secs| secs > 0)
                .map(|secs| Duration::from_secs(u64::from(secs))),
            Eviction::Failed(_) => None,
        }
    }
}

/// A soft repair that restarts a node's pods: it deletes the pods in one
/// namespace, matching a label selector, that run on the node, and their
/// controller (a DaemonSet, typically a CNI agent such as Cilium) starts
/// new ones. Finding none is a failure (the repair cannot have helped).
#[derive(Clone)]
pub struct PodRestarter {
    client: kube::Client,
    namespace: String,
    selector: String,
    call_timeout: Duration,
}

impl std::fmt::Debug for PodRestarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRestarter")
            .field("namespace", &self.namespace)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl PodRestarter {
    /// Restarts the pods of `namespace` matching `selector` (such as
    /// `k8s-app=cilium`), each API call bounded by `call_timeout`.
    #[must_use]
    pub fn new(client: kube::Client, namespace: &str, selector: &str, call_timeout: Duration) -> Self {
        PodRestarter { client, namespace: namespace.to_owned(), selector: selector.to_owned(), call_timeout }
    }

    /// Deletes the matching pods on `node`; returns their names.
    pub async fn restart(&self, node: &str) -> Result<Vec<String>, KubeExecError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().labels(&self.selector).fields(&format!("spec.nodeName={node}"));
        let timed =
            |what: &'static str| KubeExecError::Unanswered { node: node.to_owned(), what, after: self.call_timeout };
        let found = tokio::time::timeout(self.call_timeout, pods.list(&lp))
            .await
            .map_err(|_| timed("list pods"))?
            .map_err(|source| KubeExecError::Api { node: node.to_owned(), what: "list pods", source })?;
        // The server applies the field selector; a proxy that ignored it must
        // not make this delete every matching pod of the cluster.
        let names: Vec<String> = found
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if names.is_empty() {
            return Err(KubeExecError::NoPods {
                node: node.to_owned(),
                namespace: self.namespace.clone(),
                selector: self.selector.clone(),
            });
        }
        for name in &names {
            match tokio::time::timeout(self.call_timeout, pods.delete(name, &DeleteParams::default()))
                .await
                .map_err(|_| timed("delete pod"))?
            {
                // Already gone: what the restart wanted.
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(KubeExecError::Api { node: node.to_owned(), what: "delete pod", source }),
            }
        }
        tracing::info!(node, namespace = %self.namespace, pods = ?names, "pods deleted for a restart");
        Ok(names)
    }
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for PodRestarter {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        if !action.is_soft() {
            return Err(ExecError::Unsupported { action });
        }
        self.restart(target.node_name()).await.map(drop).map_err(|e| match e {
            KubeExecError::Unanswered { .. } => ExecError::Unknown { action, message: e.to_string() },
            e => ExecError::Failed { action, message: e.to_string(), source: Some(Box::new(e)) },
        })
    }
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for KubeExecutor {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        let node = target.node_name();
        let result = match action {
            Action::Drain => self.drain(node).await,
            Action::Uncordon => self.uncordon(node).await,
            Action::Reboot | Action::Replace | Action::Repair(_) => return Err(ExecError::Unsupported { action }),
        };
        result.map_err(|e| ExecError::Failed { action, message: e.to_string(), source: Some(Box::new(e)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(details: serde_json::Value) -> Eviction {
        let status: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": 429, "reason": "TooManyRequests",
            "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": details,
        }))
        .unwrap();
        Eviction::Refused(Box::new(status))
    }

    #[test]
    fn an_evictions_retry_after_comes_from_the_status_details() {
        // The API server asks for 10s while a budget is not yet observed.
        assert_eq!(refused(json!({"retryAfterSeconds": 10})).retry_after(), Some(Duration::from_secs(10)));
        // A budget with no disruptions allowed sends none (or 0): the back-off's own delay.
        assert_eq!(refused(json!({"retryAfterSeconds": 0})).retry_after(), None);
        assert_eq!(refused(json!({"causes": []})).retry_after(), None);
        let e = refused(json!({}));
        assert_eq!(e.to_string(), "refused (429): Cannot evict pod as it would violate the pod's disruption budget.");
    }
}
