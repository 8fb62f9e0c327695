//! Checkers over Kubernetes Node objects (k8s-openapi types, no client).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{CheckContext, CheckOutcome, CheckResult, HealthChecker, NodeClass, NodeFacts, Timestamp};
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::quantity;

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

/// A target that carries a Node object (and optionally its kubelet lease).
pub trait NodeSource: Send + Sync {
    /// The Node.
    fn node(&self) -> &Node;
    /// The kubelet lease, as fetched by the agent.
    fn lease(&self) -> LeaseObservation {
        LeaseObservation::NotFetched
    }
}

impl NodeSource for Node {
    fn node(&self) -> &Node {
        self
    }
}

impl<T: NodeSource + ?Sized> NodeSource for Arc<T> {
    fn node(&self) -> &Node {
        (**self).node()
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

fn conditions<'a>(node: &'a Node, kind: &'a str) -> impl Iterator<Item = &'a NodeCondition> + 'a {
    node.status.iter().flat_map(|s| s.conditions.iter().flatten()).filter(move |c| c.type_ == kind)
}

/// How long a condition has been in its current status, at `now`
/// (unknown transition time: treated as long enough).
fn held_for(c: &NodeCondition, now: Timestamp) -> Duration {
    c.last_transition_time.as_ref().map_or(Duration::MAX, |t| now.saturating_since(timestamp(t)))
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("<unnamed>")
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

    /// Evaluates a Node.
    #[must_use]
    pub fn evaluate(&self, node: &Node) -> CheckOutcome {
        let mut seen = false;
        for c in conditions(node, "Ready") {
            seen = true;
            let detail = || {
                format!(
                    "Ready={} reason={} {}",
                    c.status,
                    c.reason.as_deref().unwrap_or(""),
                    c.message.as_deref().unwrap_or("")
                )
            };
            match c.status.as_str() {
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
                format!("node {} reports no Ready condition", node_name(node)),
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

    /// Evaluates a Node at `now` (the engine passes its clock's time in the
    /// [`health_core::CheckContext`]).
    #[must_use]
    pub fn evaluate_at(&self, node: &Node, now: Timestamp) -> CheckOutcome {
        let r = &self.rule;
        let mut seen = false;
        for c in conditions(node, &r.condition_type) {
            seen = true;
            if r.bad_statuses.contains(&c.status) && held_for(c, now) >= r.for_at_least {
                return CheckOutcome::fail_with(
                    r.reason.clone(),
                    format!(
                        "{}={} reason={} {}",
                        c.type_,
                        c.status,
                        c.reason.as_deref().unwrap_or(""),
                        c.message.as_deref().unwrap_or("")
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
                format!("node {} reports no {} condition", node_name(node), r.condition_type),
            ),
        }
    }
}

/// Parses the GPU count label; `Ok(None)` when absent.
fn expected_gpus(node: &Node) -> Result<Option<u64>, String> {
    let Some(v) = node.metadata.labels.as_ref().and_then(|l| l.get(GPU_COUNT_LABEL)) else { return Ok(None) };
    let n: u64 =
        v.trim().parse().map_err(|_| format!("label {GPU_COUNT_LABEL}={v:?} is not a whole number of GPUs"))?;
    if n > 1024 {
        return Err(format!("label {GPU_COUNT_LABEL}={v:?} is implausible (more than 1024 GPUs)"));
    }
    Ok(Some(n))
}

/// The node class: `Gpu` when the GPU count label holds a positive count.
#[must_use]
pub fn classify(node: &Node) -> NodeClass {
    match expected_gpus(node) {
        Ok(Some(n)) if n > 0 => NodeClass::Gpu,
        _ => NodeClass::Standard,
    }
}

/// The facts the safety gates consult, read from a Node.
#[must_use]
pub fn node_facts(node: &Node) -> NodeFacts {
    let taints = node.spec.iter().flat_map(|s| s.taints.iter().flatten());
    let tainted_for_removal = taints.clone().any(|t| t.key == AUTOSCALER_TAINT || t.key == SHUTDOWN_TAINT);
    let opted_out = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OPT_OUT_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    NodeFacts {
        class: classify(node),
        created_at: node.metadata.creation_timestamp.as_ref().map(timestamp),
        deleting: node.metadata.deletion_timestamp.is_some(),
        tainted_for_removal,
        opted_out,
    }
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

    /// Evaluates a Node.
    #[must_use]
    pub fn evaluate(node: &Node) -> CheckOutcome {
        let expected = match expected_gpus(node) {
            Ok(Some(n)) => n,
            Ok(None) => return CheckOutcome::skip("NonGPUNode"),
            Err(detail) => return CheckOutcome::fail_with("InvalidGPULabel", detail),
        };
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref()).and_then(|a| a.get(GPU_RESOURCE));
        let Some(q) = allocatable else {
            return CheckOutcome::fail_with("NoAllocatableGPU", format!("expected {expected} GPUs, none allocatable"));
        };
        match quantity::parse_whole(&q.0) {
            Err(e) => {
                CheckOutcome::fail_with("InvalidGPUQuantity", format!("allocatable {GPU_RESOURCE}={:?}: {e}", q.0))
            }
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

    /// Evaluates a Node.
    #[must_use]
    pub fn evaluate(node: &Node) -> CheckOutcome {
        let tainted = node.spec.iter().flat_map(|s| s.taints.iter().flatten()).any(|t| t.key == CILIUM_TAINT);
        let mut cilium = tainted;
        for c in conditions(node, "NetworkUnavailable") {
            let reason = c.reason.as_deref().unwrap_or("");
            if reason.starts_with("Cilium") || reason.starts_with("NoCilium") {
                cilium = true;
                if c.status == "True" {
                    return CheckOutcome::fail_with(
                        "CiliumNetworkUnavailable",
                        format!("NetworkUnavailable=True reason={reason} {}", c.message.as_deref().unwrap_or("")),
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

sync_checker!(NodeReadyChecker, |s, t, _now| s.evaluate(t.node()));
sync_checker!(ConditionChecker, |s, t, now| s.evaluate_at(t.node(), now));
sync_checker!(GpuChecker, |_s, t, _now| GpuChecker::evaluate(t.node()));
sync_checker!(CiliumChecker, |_s, t, _now| CiliumChecker::evaluate(t.node()));
sync_checker!(KubeletLeaseChecker, |s, t, now| s.evaluate_at(t.lease(), now));
