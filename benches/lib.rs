//! Shared fixtures for the benchmarks: synthetic targets, checkers and an
//! executor that never runs (the benches evaluate healthy fleets).
//!
//! Run them with `cargo bench -p benches`; see the README for the figures.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{
    Action, Check, CheckOutcome, Engine, ExecError, Executor, FnChecker, MemoryStore, NodeFacts, NodeRecord, Phase,
    Policy, Target, Timestamp,
};

/// A synthetic node: a name and a few fields for checkers to read.
#[derive(Clone, Debug)]
pub struct SimNode {
    /// The node's name.
    pub name: String,
    /// Whether the kubelet reports ready.
    pub ready: bool,
    /// Expected and allocatable GPUs.
    pub gpus: (u8, u8),
    /// Disk use in percent.
    pub disk_pct: u8,
}

impl Target for SimNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn facts(&self) -> NodeFacts {
        NodeFacts::default()
    }
}

/// `n` healthy nodes named `node-00000`...
#[must_use]
pub fn fleet(n: usize) -> Vec<SimNode> {
    (0..n).map(|i| SimNode { name: format!("node-{i:05}"), ready: true, gpus: (8, 8), disk_pct: 40 }).collect()
}

/// An executor that fails every call (healthy fleets never call it).
#[derive(Debug, Default)]
pub struct NeverExecutor;

#[async_trait]
impl Executor<SimNode> for NeverExecutor {
    async fn execute(&self, action: Action, _target: &SimNode) -> Result<(), ExecError> {
        Err(ExecError::Unsupported { action })
    }
}

/// An engine with five synchronous checkers over an in-memory store.
///
/// # Panics
///
/// Never with the fixed, valid policy used here.
#[must_use]
pub fn engine_with_five_checkers() -> Engine<SimNode> {
    let mins = |m: u64| Duration::from_secs(60 * m);
    Engine::builder(Arc::new(MemoryStore::new()), Arc::new(NeverExecutor))
        .policy(Policy::default())
        .checker(FnChecker::new("NodeReady", mins(5), |n: &SimNode| {
            if n.ready { CheckOutcome::Pass } else { CheckOutcome::fail("KubeletNotReady") }
        }))
        .checker(FnChecker::new("GPU", mins(10), |n: &SimNode| {
            if n.gpus.0 == n.gpus.1 { CheckOutcome::Pass } else { CheckOutcome::fail("GPUCountMismatch") }
        }))
        .checker(FnChecker::new("DiskPressure", mins(30), |n: &SimNode| {
            if n.disk_pct < 90 { CheckOutcome::Pass } else { CheckOutcome::fail("DiskPressure") }
        }))
        .checker(FnChecker::new("Cilium", mins(10), |n: &SimNode| {
            if n.name.is_empty() { CheckOutcome::skip("NonCiliumNode") } else { CheckOutcome::Pass }
        }))
        .checker(FnChecker::new("KubeletLease", mins(5), |n: &SimNode| {
            if n.ready { CheckOutcome::Pass } else { CheckOutcome::fail("LeaseStale") }
        }))
        .build()
        .expect("the fixed bench policy is valid")
}

/// A healthy record and five passing checks, for single machine steps.
pub struct StepFixture {
    /// The record.
    pub record: NodeRecord,
    /// Five passing outcomes.
    pub outcomes: [CheckOutcome; 5],
    /// The checker names.
    pub names: [&'static str; 5],
    /// The instant of evaluation.
    pub now: Timestamp,
}

impl Default for StepFixture {
    fn default() -> Self {
        let now = Timestamp::from_secs(1_700_000_000);
        StepFixture {
            record: NodeRecord { phase: Phase::Healthy, healthy_since: Some(now), ..NodeRecord::default() },
            outcomes: [
                CheckOutcome::Pass,
                CheckOutcome::Pass,
                CheckOutcome::Pass,
                CheckOutcome::Pass,
                CheckOutcome::Pass,
            ],
            names: ["NodeReady", "GPU", "DiskPressure", "Cilium", "KubeletLease"],
            now,
        }
    }
}

impl StepFixture {
    /// The checks as the machine sees them.
    #[must_use]
    pub fn checks(&self) -> [Check<'_>; 5] {
        std::array::from_fn(|i| Check::new(self.names[i], Duration::from_secs(300), &self.outcomes[i]))
    }
}
