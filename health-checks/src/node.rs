//! Checkers over Kubernetes Nodes (k8s-openapi types, no client), read
//! through a [`NodeView`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{CheckContext, CheckOutcome, CheckResult, HealthChecker, NodeClass, NodeFacts, Timestamp};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::quantity;
use crate::view::{ConditionView, NodeView};

/// The label that holds a node's expected GPU count (set by GPU feature discovery).
pub const GPU_COUNT_LABEL: &str = "nvidia.com/gpu.count";
/// The allocatable resource of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The taint Cilium puts on nodes whose agent is not ready.
pub const CILIUM_TAINT: &str = "node.cilium.io/agent-not-ready";
/// The taint the cluster autoscaler puts on nodes it is removing.
pub const AUTOSCALER_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// The taint cloud providers put on nodes that are shutting down.
pub const SHUTDOWN_TAINT: &str = "node.cloudprovider.kubernetes.io/shutdown";
/// The annotation that opts a node out of remediation when set to `"true"`.
pub const OPT_OUT_ANNOTATION: &str = "node-agent.civo.com/opt-out";
/// The label that names a node's Civo pool.
pub const POOL_LABEL: &str = "kubernetes.civo.com/civo-node-pool";

/// What the agent learnt about a node's kubelet lease (`kube-node-lease`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseObservation {
    /// Not looked up (the lease checker skips).
    #[default]
    NotFetched,
    /// The node has no lease.
    Missing,
    /// The lease's `spec.renewTime` (absent: never renewed).
    Renewed(Option<Timestamp>),
}

/// A target that carries a Node (and optionally its kubelet lease).
///
/// A controller that caches nodes keeps [`NodeView`]s (borrowed at check
/// time); a full k8s-openapi `Node` also works, but is reduced to a view on
/// every read (about 0.7 µs each, so once per checker), so cache views when
/// the same node meets several checkers.
pub trait NodeSource: Send + Sync {
    /// What the checkers read of the Node.
    fn view(&self) -> Cow<'_, NodeView>;
    /// The kubelet lease, as fetched by the agent.
    fn lease(&self) -> LeaseObservation {
        LeaseObservation::NotFetched
    }
}

impl NodeSource for Node {
    fn view(&self) -> Cow<'_, NodeView> {
        Cow::Owned(NodeView::from_node(self))
    }
}

impl NodeSource for NodeView {
    fn view(&self) -> Cow<'_, NodeView> {
        Cow::Borrowed(self)
    }
}

impl<T: NodeSource + ?Sized> NodeSource for Arc<T> {
    fn view(&self) -> Cow<'_, NodeView> {
        (**self).view()
    }
    fn lease(&self) -> LeaseObservation {
        (**self).lease()
    }
}

/// A Kubernetes time as a [`Timestamp`].
#[must_use]
pub fn timestamp(t: &Time) -> Timestamp {
    Timestamp::from_millis(u64::try_from(t.0.as_millisecond()).unwrap_or(0))
}

/// How long a condition has been in its current status, at `now`
/// (unknown transition time: treated as long enough).
fn held_for(c: &ConditionView, now: Timestamp) -> Duration {
    c.last_transition().map_or(Duration::MAX, |t| now.saturating_since(t))
}

fn node_name(node: &NodeView) -> &str {
    if node.name().is_empty() { "<unnamed>" } else { node.name() }
}

/// NodeReady: fails when the Ready condition is False, Unknown, anything
/// else than True, or missing. Duplicated Ready conditions fail if any is bad.
pub struct NodeReadyChecker {
    name: String,
    threshold: Duration,
}

impl NodeReadyChecker {
    /// The default checker (`NodeReady`, threshold 5m).
    #[must_use]
    pub fn new() -> Self {
        NodeReadyChecker { name: "NodeReady".into(), threshold: Duration::from_secs(300) }
    }

    /// Evaluates a Node (a [`NodeView`] or a full `Node`).
    #[must_use]
    pub fn evaluate(&self, node: &(impl NodeSource + ?Sized)) -> CheckOutcome {
        let node = node.view();
        let mut seen = false;
        for c in node.conditions_of("Ready") {
            seen = true;
            let detail =
                || format!("Ready={} reason={} {}", c.status(), c.reason().unwrap_or(""), c.message().unwrap_or(""));
            match c.status() {
                "True" => {}
                "False" => return CheckOutcome::fail_with("NodeNotReady", detail()),
                _ => return CheckOutcome::fail_with("NodeStatusUnknown", detail()),
            }
        }
        if seen {
            CheckOutcome::Pass
        } else {
            CheckOutcome::fail_with(
                "ReadyConditionMissing",
                format!("node {} reports no Ready condition", node_name(&node)),
            )
        }
    }
}

impl Default for NodeReadyChecker {
    fn default() -> Self {
        Self::new()
    }
}

/// Which statuses of a condition are bad, for how long, and what a missing
/// condition means (NodeHealthCheck-style `unhealthyConditions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionRule {
    /// The condition type, e.g. `DiskPressure`.
    pub condition_type: String,
    /// Statuses that count as unhealthy, e.g. `["True"]`.
    pub bad_statuses: Vec<String>,
    /// How long the condition must hold a bad status before the checker fails.
    pub for_at_least: Duration,
    /// What a missing condition means.
    pub missing: MissingCondition,
    /// The failure reason (CamelCase, bounded).
    pub reason: String,
}

/// What a missing condition means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingCondition {
    /// Healthy.
    Pass,
    /// Not applicable.
    Skip,
    /// Unhealthy (reason `<Type>ConditionMissing`).
    Fail,
}

/// A checker for any node condition.
pub struct ConditionChecker {
    name: String,
    threshold: Duration,
    rule: ConditionRule,
}

impl ConditionChecker {
    /// A checker named `name` applying `rule`.
    pub fn new(name: impl Into<String>, threshold: Duration, rule: ConditionRule) -> Self {
        ConditionChecker { name: name.into(), threshold, rule }
    }

    fn pressure(kind: &str, threshold: Duration) -> Self {
        Self::new(
            kind,
            threshold,
            ConditionRule {
                condition_type: kind.into(),
                bad_statuses: vec!["True".into()],
                for_at_least: Duration::ZERO,
                missing: MissingCondition::Pass,
                reason: kind.into(),
            },
        )
    }

    /// `DiskPressure` (threshold 30m).
    #[must_use]
    pub fn disk_pressure() -> Self {
        Self::pressure("DiskPressure", Duration::from_secs(1800))
    }

    /// `MemoryPressure` (threshold 10m).
    #[must_use]
    pub fn memory_pressure() -> Self {
        Self::pressure("MemoryPressure", Duration::from_secs(600))
    }

    /// `PIDPressure` (threshold 10m).
    #[must_use]
    pub fn pid_pressure() -> Self {
        Self::pressure("PIDPressure", Duration::from_secs(600))
    }

    /// Evaluates a Node (a [`NodeView`] or a full `Node`) at `now` (the
    /// engine passes its clock's time in the [`health_core::CheckContext`]).
    #[must_use]
    pub fn evaluate_at(&self, node: &(impl NodeSource + ?Sized), now: Timestamp) -> CheckOutcome {
        let node = node.view();
        let r = &self.rule;
        let mut seen = false;
        for c in node.conditions_of(&r.condition_type) {
            seen = true;
            if r.bad_statuses.iter().any(|b| b == c.status()) && held_for(c, now) >= r.for_at_least {
                return CheckOutcome::fail_with(
                    r.reason.clone(),
                    format!(
                        "{}={} reason={} {}",
                        c.type_(),
                        c.status(),
                        c.reason().unwrap_or(""),
                        c.message().unwrap_or("")
                    ),
                );
            }
        }
        if seen {
            return CheckOutcome::Pass;
        }
        match r.missing {
            MissingCondition::Pass => CheckOutcome::Pass,
            MissingCondition::Skip => CheckOutcome::skip("ConditionMissing"),
            MissingCondition::Fail => CheckOutcome::fail_with(
                format!("{}ConditionMissing", r.condition_type),
                format!("node {} reports no {} condition", node_name(&node), r.condition_type),
            ),
        }
    }
}

/// Parses the GPU count label; `Ok(None)` when absent.
pub(crate) fn expected_gpus(node: &NodeView) -> Result<Option<u64>, String> {
    let Some(v) = node.gpu_count_label() else { return Ok(None) };
    let n: u64 =
        v.trim().parse().map_err(|_| format!("label {GPU_COUNT_LABEL}={v:?} is not a whole number of GPUs"))?;
    if n > 1024 {
        return Err(format!("label {GPU_COUNT_LABEL}={v:?} is implausible (more than 1024 GPUs)"));
    }
    Ok(Some(n))
}

/// The node class: `Gpu` when the GPU count label holds a positive count
/// ([`NodeView::class`]).
#[must_use]
pub fn classify(node: &(impl NodeSource + ?Sized)) -> NodeClass {
    node.view().class()
}

/// The facts the safety gates consult, read from a Node ([`NodeView::facts`]).
#[must_use]
pub fn node_facts(node: &(impl NodeSource + ?Sized)) -> NodeFacts {
    node.view().facts()
}

/// GPU: the label `nvidia.com/gpu.count` (expected) against allocatable
/// `nvidia.com/gpu`. Nodes without the label are skipped (`NonGPUNode`).
pub struct GpuChecker {
    name: String,
    threshold: Duration,
}

impl GpuChecker {
    /// The default checker (`GPU`, threshold 10m).
    #[must_use]
    pub fn new() -> Self {
        GpuChecker { name: "GPU".into(), threshold: Duration::from_secs(600) }
    }

    /// Evaluates a Node (a [`NodeView`] or a full `Node`).
    #[must_use]
    pub fn evaluate(node: &(impl NodeSource + ?Sized)) -> CheckOutcome {
        let node = node.view();
        let expected = match expected_gpus(&node) {
            Ok(Some(n)) => n,
            Ok(None) => return CheckOutcome::skip("NonGPUNode"),
            Err(detail) => return CheckOutcome::fail_with("InvalidGPULabel", detail),
        };
        let Some(q) = node.allocatable_gpu() else {
            return CheckOutcome::fail_with("NoAllocatableGPU", format!("expected {expected} GPUs, none allocatable"));
        };
        match quantity::parse_whole(q) {
            Err(e) => CheckOutcome::fail_with("InvalidGPUQuantity", format!("allocatable {GPU_RESOURCE}={q:?}: {e}")),
            Ok(0) if expected > 0 => {
                CheckOutcome::fail_with("NoAllocatableGPU", format!("expected {expected} GPUs, 0 allocatable"))
            }
            Ok(n) if n == u128::from(expected) => CheckOutcome::Pass,
            Ok(n) => CheckOutcome::fail_with("GPUCountMismatch", format!("expected {expected} GPUs, {n} allocatable")),
        }
    }
}

impl Default for GpuChecker {
    fn default() -> Self {
        Self::new()
    }
}

/// Cilium: fails when NetworkUnavailable is True with a Cilium reason, or
/// the node carries `node.cilium.io/agent-not-ready`; skips nodes that show
/// no sign of Cilium.
pub struct CiliumChecker {
    name: String,
    threshold: Duration,
}

impl CiliumChecker {
    /// The default checker (`Cilium`, threshold 10m).
    #[must_use]
    pub fn new() -> Self {
        CiliumChecker { name: "Cilium".into(), threshold: Duration::from_secs(600) }
    }

    /// Evaluates a Node (a [`NodeView`] or a full `Node`).
    #[must_use]
    pub fn evaluate(node: &(impl NodeSource + ?Sized)) -> CheckOutcome {
        let node = node.view();
        let tainted = node.taint_keys().any(|k| k == CILIUM_TAINT);
        let mut cilium = tainted;
        for c in node.conditions_of("NetworkUnavailable") {
            let reason = c.reason().unwrap_or("");
            if reason.starts_with("Cilium") || reason.starts_with("NoCilium") {
                cilium = true;
                if c.status() == "True" {
                    return CheckOutcome::fail_with(
                        "CiliumNetworkUnavailable",
                        format!("NetworkUnavailable=True reason={reason} {}", c.message().unwrap_or("")),
                    );
                }
            }
        }
        if tainted {
            return CheckOutcome::fail_with("CiliumAgentNotReady", format!("node carries taint {CILIUM_TAINT}"));
        }
        if cilium { CheckOutcome::Pass } else { CheckOutcome::skip("NonCiliumNode") }
    }
}

impl Default for CiliumChecker {
    fn default() -> Self {
        Self::new()
    }
}

/// Kubelet lease staleness: fails when the node's lease in `kube-node-lease`
/// was last renewed more than `stale_after` ago (the agent fetches the lease).
pub struct KubeletLeaseChecker {
    name: String,
    threshold: Duration,
    stale_after: Duration,
}

impl KubeletLeaseChecker {
    /// The default checker (`KubeletLease`, stale after 40s, threshold 5m).
    #[must_use]
    pub fn new() -> Self {
        KubeletLeaseChecker {
            name: "KubeletLease".into(),
            threshold: Duration::from_secs(300),
            stale_after: Duration::from_secs(40),
        }
    }

    /// With another staleness limit.
    #[must_use]
    pub fn with_stale_after(mut self, d: Duration) -> Self {
        self.stale_after = d;
        self
    }

    /// Evaluates a lease observation at `now`.
    #[must_use]
    pub fn evaluate_at(&self, lease: LeaseObservation, now: Timestamp) -> CheckOutcome {
        match lease {
            LeaseObservation::NotFetched => CheckOutcome::skip("LeaseNotFetched"),
            LeaseObservation::Missing => {
                CheckOutcome::fail_with("LeaseMissing", "the node has no lease in kube-node-lease")
            }
            LeaseObservation::Renewed(None) => CheckOutcome::fail_with("LeaseStale", "the lease was never renewed"),
            LeaseObservation::Renewed(Some(t)) => {
                let age = now.saturating_since(t);
                if age > self.stale_after {
                    CheckOutcome::fail_with(
                        "LeaseStale",
                        format!("last renewed {}s ago (limit {}s)", age.as_secs(), self.stale_after.as_secs()),
                    )
                } else {
                    CheckOutcome::Pass
                }
            }
        }
    }
}

impl Default for KubeletLeaseChecker {
    fn default() -> Self {
        Self::new()
    }
}

/// `with_threshold` and `with_name` for a checker with `name` and `threshold` fields.
macro_rules! name_and_threshold {
    ($($ty:ty),+) => {$(
        impl $ty {
            /// With another threshold.
            #[must_use]
            pub fn with_threshold(mut self, threshold: Duration) -> Self {
                self.threshold = threshold;
                self
            }

            /// With another name.
            #[must_use]
            pub fn with_name(mut self, name: impl Into<String>) -> Self {
                self.name = name.into();
                self
            }
        }
    )+};
}

name_and_threshold!(NodeReadyChecker, ConditionChecker, GpuChecker, CiliumChecker, KubeletLeaseChecker);

macro_rules! sync_checker {
    ($ty:ty, |$self_:ident, $t:ident, $now:ident| $body:expr) => {
        #[async_trait]
        impl<T: NodeSource + ?Sized> HealthChecker<T> for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn threshold(&self) -> Duration {
                self.threshold
            }
            fn check_sync(&self, target: &T, ctx: &CheckContext) -> Option<CheckResult> {
                let ($self_, $t, $now) = (self, target, ctx.now);
                Some(Ok($body))
            }
            async fn check(&self, target: &T, ctx: &CheckContext) -> CheckResult {
                let ($self_, $t, $now) = (self, target, ctx.now);
                Ok($body)
            }
        }
    };
}

sync_checker!(NodeReadyChecker, |s, t, _now| s.evaluate(t));
sync_checker!(ConditionChecker, |s, t, now| s.evaluate_at(t, now));
sync_checker!(GpuChecker, |_s, t, _now| GpuChecker::evaluate(t));
sync_checker!(CiliumChecker, |_s, t, _now| CiliumChecker::evaluate(t));
sync_checker!(KubeletLeaseChecker, |s, t, now| s.evaluate_at(t.lease(), now));
