//! The Healthy -> Healthy machine step allocates nothing.
//!
//! This file holds a single test, so no other test thread allocates while
//! the global counters are read. The test harness's own threads still may
//! (rarely; seen once in CI: one 96-byte allocation): the loop is measured
//! five times and the fewest allocations must be zero. An allocation in the
//! step itself would show in every round.

use std::alloc::System;
use std::time::Duration;

use health_core::machine::step;
use health_core::{Budget, Check, CheckOutcome, NodeFacts, NodeRecord, Observation, Phase, Policy, Timestamp};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn healthy_step_does_not_allocate() {
    let now = Timestamp::from_secs(1_700_000_000);
    let outcomes = [CheckOutcome::Pass, CheckOutcome::skip("NonGPUNode"), CheckOutcome::Pass];
    let names = ["NodeReady", "GPU", "DiskPressure"];
    let checks: Vec<Check<'_>> = names
        .iter()
        .zip(&outcomes)
        .map(|(name, outcome)| Check::new(name, Duration::from_secs(300), outcome))
        .collect();
    let obs = Observation { checks: &checks, facts: NodeFacts::default() };
    let policy = Policy::default();
    let budget = Budget::new(10);
    let mut record = NodeRecord { phase: Phase::Healthy, healthy_since: Some(now), ..NodeRecord::default() };

    let mut rounds = Vec::new();
    for _ in 0..5 {
        let region = Region::new(GLOBAL);
        for i in 0..1000u64 {
            let d = step(record, &obs, &policy, &budget, now + Duration::from_secs(i));
            assert!(!d.changed);
            record = d.record;
        }
        rounds.push(region.change());
    }
    let fewest = rounds.iter().map(|s| s.allocations + s.reallocations).min();
    assert_eq!(fewest, Some(0), "{rounds:?}");

    // The check is real: a failing observation does allocate (it records the reason).
    let fail = [CheckOutcome::fail("KubeletNotReady")];
    let failing = [Check::new("NodeReady", Duration::from_secs(300), &fail[0])];
    let region = Region::new(GLOBAL);
    let d = step(record, &Observation { checks: &failing, facts: NodeFacts::default() }, &policy, &budget, now);
    assert!(region.change().allocations > 0);
    assert_eq!(d.record.phase, Phase::Unhealthy);
}
