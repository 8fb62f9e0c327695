//! Whole-lifecycle simulations: a fleet with injected faults, driven by
//! jumping the clock from deadline to deadline.

use std::time::Duration;

use health_core::{Action, Phase, Policy, Timestamp};
use tests::{Fault, Sim};

const MIN: u64 = 60;

fn at(min: u64) -> Timestamp {
    Timestamp::from_secs(1_700_000_000 + min * MIN)
}

fn active() -> Policy {
    Policy::default().with_monitor_only(false)
}

fn reboot_times(sim: &Sim, name: &str) -> Vec<Timestamp> {
    sim.fleet.log.lock().iter().filter(|(n, a, _)| n == name && *a == Action::Reboot).map(|(.., t)| *t).collect()
}

#[tokio::test]
async fn a_reboot_fixes_a_broken_node() {
    let mut sim = Sim::in_memory(10, 0, active());
    sim.fleet.inject("std-003", Fault::FixedByReboot);
    sim.run_for(Duration::from_secs(2 * 3600)).await;
    assert_eq!(reboot_times(&sim, "std-003"), [at(5)]);
    assert_eq!(sim.fleet.log.lock().len(), 1, "nobody else was touched");
    let transitions: Vec<_> =
        sim.fleet.transitions.lock().iter().filter(|(n, ..)| n == "std-003").map(|(_, f, t)| (*f, *t)).collect();
    assert_eq!(
        transitions,
        [
            (Phase::Unknown, Phase::Unhealthy),
            (Phase::Unhealthy, Phase::WaitingReboot),
            // Recovered after the reboot: verified for 2 minutes first.
            (Phase::WaitingReboot, Phase::Verifying),
            (Phase::Verifying, Phase::Healthy)
        ]
    );
    let rec = sim.engine.record("std-003").expect("record");
    assert_eq!((rec.phase, rec.reboot_count), (Phase::Healthy, 0), "history reset after 30m healthy");
}

#[tokio::test]
async fn a_permanent_fault_exhausts_reboots_then_fails() {
    let mut sim = Sim::in_memory(10, 0, active());
    sim.fleet.inject("std-001", Fault::Permanent);
    sim.run_for(Duration::from_secs(3 * 3600)).await;
    assert_eq!(reboot_times(&sim, "std-001"), [at(5), at(15), at(25), at(35), at(45)]);
    let rec = sim.engine.record("std-001").expect("record");
    assert_eq!((rec.phase, rec.reboot_count), (Phase::Failed, 5));
    assert_eq!(rec.last_transition_at, Some(at(55)));
}

#[tokio::test]
async fn gpu_nodes_wait_forty_minutes_and_are_never_replaced() {
    let mut sim = Sim::in_memory(9, 1, active().with_replace(true));
    sim.fleet.inject("gpu-000", Fault::Permanent);
    sim.run_for(Duration::from_secs(5 * 3600)).await;
    assert_eq!(reboot_times(&sim, "gpu-000"), [at(5), at(45), at(85), at(125), at(165)]);
    assert_eq!(sim.fleet.actions_on("gpu-000"), [Action::Reboot; 5]);
    assert_eq!(sim.engine.record("gpu-000").map(|r| r.phase), Some(Phase::Failed));
}

#[tokio::test]
async fn escalation_replaces_a_standard_node_that_reboots_cannot_fix() {
    let mut sim = Sim::in_memory(10, 0, active().with_replace(true));
    sim.fleet.inject("std-007", Fault::Permanent);
    sim.run_for(Duration::from_secs(3 * 3600)).await;
    let mut want = vec![Action::Reboot; 5];
    want.extend([Action::Drain, Action::Replace]);
    assert_eq!(sim.fleet.actions_on("std-007"), want);
    // The old node is gone with its record; its replacement is healthy.
    assert!(sim.engine.record("std-007").is_none());
    assert_eq!(sim.engine.record("std-007-r").map(|r| r.phase), Some(Phase::Healthy));
}

#[tokio::test]
async fn cloud_api_errors_back_off_and_then_succeed() {
    let mut sim = Sim::in_memory(10, 0, active());
    sim.fleet.inject("std-002", Fault::FixedByReboot);
    sim.fleet.failing_calls.lock().insert("std-002".into(), 2);
    sim.run_for(Duration::from_secs(2 * 3600)).await;
    // Failed at 5m and 16m (each retry a full reboot wait plus a doubling back-off later).
    assert_eq!(reboot_times(&sim, "std-002"), [at(28)]);
    let rec = sim.engine.record("std-002").expect("record");
    assert_eq!(rec.phase, Phase::Healthy);
}

#[tokio::test]
async fn a_storm_starts_nothing() {
    let mut sim = Sim::in_memory(10, 0, active());
    for n in ["std-000", "std-004", "std-008"] {
        sim.fleet.inject(n, Fault::FixedByReboot);
    }
    sim.run_for(Duration::from_secs(3600)).await;
    assert!(sim.fleet.log.lock().is_empty());
    // One is fixed by hand: 2 of 10 is within 20%, remediation resumes one at a time.
    sim.fleet.inject("std-004", Fault::None);
    sim.run_for(Duration::from_secs(3600)).await;
    let log: Vec<_> = sim.fleet.log.lock().iter().map(|(n, a, _)| (n.clone(), *a)).collect();
    assert_eq!(log, [("std-000".to_owned(), Action::Reboot), ("std-008".to_owned(), Action::Reboot)]);
}

#[tokio::test]
async fn monitor_only_walks_the_same_path_without_touching_anything() {
    let mut sim = Sim::in_memory(10, 0, Policy::default());
    sim.fleet.inject("std-001", Fault::Permanent);
    sim.run_for(Duration::from_secs(3 * 3600)).await;
    assert!(sim.fleet.log.lock().is_empty());
    let rec = sim.engine.record("std-001").expect("record");
    assert_eq!((rec.phase, rec.reboot_count, rec.last_transition_at), (Phase::Failed, 5, Some(at(55))));
}
