//! The repair ladder and the validation gate, driven through the pure
//! machine: soft repairs first (not held by windows or `max_in_flight`),
//! then reboots, then drain and replace; a relapse while verifying goes on
//! up the ladder.

use std::time::Duration;

use health_core::machine::{ActionOutcome, apply_outcome, step};
use health_core::*;

const MIN: Duration = Duration::from_secs(60);
const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

fn repair(name: &str) -> Repair {
    Repair::new(name).expect("a valid repair name")
}

/// NodeReady: restart-kubelet (twice) -> reboot -> replace; Cilium:
/// restart-cilium -> reboot; GPU nodes: reboot only (the default).
fn policy() -> Policy {
    Policy::default()
        .with_monitor_only(false)
        .with_replace(true)
        .with_max_reboot_retries(2)
        .with_repair(repair("restart-kubelet"), 2, MIN)
        .with_repair(repair("restart-cilium"), 1, 2 * MIN)
        .with_ladder(Ladder {
            class: Some(NodeClass::Standard),
            checker: Some("NodeReady".into()),
            rungs: vec![Rung::Repair(repair("restart-kubelet")), Rung::Reboot, Rung::Replace],
        })
        .with_ladder(Ladder {
            class: None,
            checker: Some("Cilium".into()),
            rungs: vec![Rung::Repair(repair("restart-cilium")), Rung::Reboot],
        })
}

/// One node's life: its record and the time, stepped at each deadline.
struct Node {
    record: NodeRecord,
    now: Timestamp,
    class: NodeClass,
    actions: Vec<(Duration, Action)>,
    holds: Vec<HoldReason>,
}

impl Node {
    fn new(class: NodeClass) -> Self {
        Node { record: NodeRecord::new(class), now: T0, class, actions: Vec::new(), holds: Vec::new() }
    }

    /// Steps once with `failing` checkers failing (threshold 1m each) and
    /// returns the decision's deadline. Actions succeed.
    fn step(&mut self, failing: &[&str], policy: &Policy, budget: &Budget) -> Option<Timestamp> {
        let outcomes: Vec<(&str, CheckOutcome)> = ["NodeReady", "Cilium"]
            .iter()
            .map(|c| (*c, if failing.contains(c) { CheckOutcome::fail("Down") } else { CheckOutcome::Pass }))
            .collect();
        let checks: Vec<Check<'_>> = outcomes.iter().map(|(n, o)| Check::new(n, MIN, o)).collect();
        let facts = NodeFacts { class: self.class, ..NodeFacts::default() };
        let d = step(self.record.clone(), &Observation { checks: &checks, facts }, policy, budget, self.now);
        if let Some(h) = d.hold {
            self.holds.push(h.reason);
        }
        self.record = d.record;
        if let Some(a) = d.action {
            self.actions.push((self.now.saturating_since(T0), a));
            self.record = apply_outcome(self.record.clone(), a, ActionOutcome::Succeeded, policy, self.now).record;
        }
        d.next_deadline
    }

    /// Steps at every deadline until `until` has passed (at most 200 steps).
    fn run(&mut self, failing: &[&str], policy: &Policy, budget: &Budget, until: Duration) {
        let end = T0 + until;
        for _ in 0..200 {
            let acted = self.actions.len();
            let next = self.step(failing, policy, budget);
            match next {
                Some(t) if t <= end => self.now = t,
                // A drain's outcome is known: the replacement follows at once.
                None if self.actions.len() > acted => {}
                _ => {
                    self.now = end;
                    let _ = self.step(failing, policy, budget);
                    return;
                }
            }
        }
        panic!("no fixpoint");
    }

    fn names(&self) -> Vec<&'static str> {
        self.actions.iter().map(|(_, a)| a.as_str()).collect()
    }
}

fn budget() -> Budget {
    Budget { total: 20, unhealthy: 1, ..Budget::default() }
}

#[test]
fn a_fault_no_rung_fixes_climbs_the_whole_ladder_in_order() {
    let p = policy();
    let mut n = Node::new(NodeClass::Standard);
    n.run(&["NodeReady"], &p, &budget(), 24 * 60 * MIN);
    assert_eq!(n.names(), ["restart-kubelet", "restart-kubelet", "reboot", "reboot", "drain", "replace"]);
    assert_eq!(n.record.phase, Phase::Failed, "after the replacement wait");
    // Each rung waits for the one before: 1m threshold, 1m per kubelet
    // restart, 10m per reboot.
    let at: Vec<u64> = n.actions.iter().map(|(t, _)| t.as_secs() / 60).collect();
    assert_eq!(at, [1, 2, 3, 13, 23, 23]);
    assert_eq!(n.record.repair_count(repair("restart-kubelet")), 2);
}

#[test]
fn a_gpu_node_climbs_the_default_ladder_and_ends_failed() {
    let p = policy();
    let mut n = Node::new(NodeClass::Gpu);
    n.run(&["NodeReady"], &p, &budget(), 24 * 60 * MIN);
    // The NodeReady ladder is for standard nodes: the default one, no replacement.
    assert_eq!(n.names(), ["reboot", "reboot"]);
    assert_eq!(n.record.phase, Phase::Failed);
}

#[test]
fn the_failing_checker_picks_the_ladder() {
    let p = policy();
    let mut n = Node::new(NodeClass::Gpu);
    n.run(&["Cilium"], &p, &budget(), 24 * 60 * MIN);
    assert_eq!(n.names(), ["restart-cilium", "reboot", "reboot"]);
    assert_eq!(n.record.phase, Phase::Failed, "the Cilium ladder has no replacement");
}

#[test]
fn a_soft_repair_that_works_is_verified_without_a_reboot() {
    let p = policy();
    let mut n = Node::new(NodeClass::Standard);
    n.run(&["NodeReady"], &p, &budget(), MIN);
    assert_eq!(n.names(), ["restart-kubelet"]);
    assert_eq!(n.record.phase, Phase::Repairing);
    // Fixed: verifying for 2 minutes, then healthy.
    n.now = n.now + Duration::from_secs(30);
    let deadline = n.step(&[], &p, &budget());
    assert_eq!(n.record.phase, Phase::Verifying);
    assert_eq!(deadline, Some(n.now + 2 * MIN), "verified at the end of verify_for");
    n.now = n.now + 2 * MIN;
    let _ = n.step(&[], &p, &budget());
    assert_eq!(n.record.phase, Phase::Healthy);
    assert_eq!(n.record.reboot_count, 0);
    assert_eq!(n.names(), ["restart-kubelet"]);
}

#[test]
fn a_relapse_while_verifying_goes_to_the_next_rung() {
    let p = policy();
    let mut n = Node::new(NodeClass::Standard);
    n.run(&["NodeReady"], &p, &budget(), 2 * MIN);
    assert_eq!(n.names(), ["restart-kubelet", "restart-kubelet"]);
    // Healthy for a minute, then failing again: not recovered...
    n.now = n.now + Duration::from_secs(10);
    let _ = n.step(&[], &p, &budget());
    assert_eq!(n.record.phase, Phase::Verifying);
    n.now = n.now + MIN;
    let _ = n.step(&["NodeReady"], &p, &budget());
    assert_eq!(n.record.phase, Phase::Unhealthy);
    // ...and the next rung (a reboot), not the bottom of the ladder, once
    // the relapse has lasted its threshold.
    let before = n.actions.len();
    let start = n.now;
    n.run(&["NodeReady"], &p, &budget(), start.saturating_since(T0) + MIN);
    assert_eq!(n.names()[before..], ["reboot"]);
    assert_eq!(n.actions[before].0, start.saturating_since(T0) + MIN);
}

#[test]
fn soft_repairs_ignore_windows_and_in_flight_but_not_the_storm_guard_or_pause() {
    let p = policy().with_gates(Gates { min_action_interval: 30 * MIN, ..Gates::default() });
    let mut n = Node::new(NodeClass::Standard);
    let _ = n.step(&["NodeReady"], &p, &budget());
    n.now = n.now + MIN;
    // A closed window, no free slot and a recent action elsewhere: the soft
    // repair still runs...
    let busy =
        Budget { window_closed: true, in_flight: 20, last_action_at: Some(n.now - Duration::from_secs(1)), ..budget() };
    let _ = n.step(&["NodeReady"], &p, &busy);
    assert_eq!(n.names(), ["restart-kubelet"]);
    // ...the reboot it leads to waits for the window.
    n.run(&["NodeReady"], &p, &busy, 60 * MIN);
    assert_eq!(n.names(), ["restart-kubelet", "restart-kubelet"]);
    assert_eq!(n.holds.last(), Some(&HoldReason::MaintenanceWindow));

    for (b, reason) in [
        (Budget { unhealthy: 10, ..budget() }, HoldReason::StormGuard),
        (Budget { paused: true, ..budget() }, HoldReason::Paused),
        (Budget { source_stale: true, ..budget() }, HoldReason::SourceStale),
    ] {
        let mut n = Node::new(NodeClass::Standard);
        n.run(&["NodeReady"], &p, &b, 30 * MIN);
        assert!(n.actions.is_empty(), "{reason}: {:?}", n.actions);
        assert_eq!(n.holds.last(), Some(&reason));
    }
}

#[test]
fn a_failed_repair_gives_way_to_the_next_rung_and_an_unknown_one_keeps_its_wait() {
    let p = policy().with_repair(repair("mark-ready"), 1, 5 * MIN).with_ladder(Ladder {
        class: None,
        checker: None,
        rungs: vec![Rung::Repair(repair("mark-ready")), Rung::Reboot],
    });
    let facts = NodeFacts::default();
    let fail = CheckOutcome::fail("Down");
    let checks = [Check::new("Sidecar", MIN, &fail)];
    let obs = Observation { checks: &checks, facts };
    let d = step(NodeRecord::default(), &obs, &p, &budget(), T0);
    let d = step(d.record, &obs, &p, &budget(), T0 + MIN);
    let mark = Action::Repair(repair("mark-ready"));
    assert_eq!(d.action, Some(mark));
    assert_eq!(d.record.phase, Phase::Repairing);

    // Failed: the try is spent; the reboot follows after the back-off's first step.
    let failed = apply_outcome(d.record.clone(), mark, ActionOutcome::Failed, &p, T0 + MIN).record;
    assert_eq!(failed.phase, Phase::Unhealthy);
    assert_eq!(failed.action_failures, 0, "a soft repair's failure is not a disruptive failure");
    let early = step(failed.clone(), &obs, &p, &budget(), T0 + MIN + Duration::from_secs(1));
    assert_eq!(early.action, None);
    let due = early.next_deadline.expect("the back-off ends");
    assert_eq!(due, T0 + MIN + p.failure_backoff.delay(1), "after the back-off's first step, not the repair's wait");
    assert_eq!(step(failed, &obs, &p, &budget(), due).action, Some(Action::Reboot));

    // Unknown: it may have happened, so its wait applies before the reboot.
    let unknown = apply_outcome(d.record, mark, ActionOutcome::Unknown, &p, T0 + MIN).record;
    assert_eq!(unknown.phase, Phase::Repairing);
    let d = step(unknown.clone(), &obs, &p, &budget(), T0 + 2 * MIN);
    assert_eq!((d.action, d.next_deadline), (None, Some(T0 + 6 * MIN)));
    assert_eq!(step(unknown, &obs, &p, &budget(), T0 + 6 * MIN).action, Some(Action::Reboot));
}

#[test]
fn the_default_ladder_is_todays_behaviour() {
    let p = Policy::default().with_monitor_only(false).with_replace(true).with_max_reboot_retries(2);
    let mut n = Node::new(NodeClass::Standard);
    n.run(&["NodeReady"], &p, &budget(), 24 * 60 * MIN);
    assert_eq!(n.names(), ["reboot", "reboot", "drain", "replace"]);
}

#[test]
fn ladders_are_validated_with_the_field_named() {
    let kubelet = repair("restart-kubelet");
    let base = || Policy::default().with_replace(true).with_repair(kubelet, 1, MIN);
    let ladder = |class, rungs: Vec<Rung>| Ladder { class, checker: None, rungs };
    let cases: Vec<(Policy, &str)> = vec![
        (base().with_ladder(ladder(None, vec![])), "ladder[0].rungs: must name at least one rung"),
        (
            base().with_ladder(ladder(None, vec![Rung::Reboot, Rung::Repair(kubelet)])),
            "ladder[0].rungs: \"restart-kubelet\" comes after \"reboot\": soft repairs go first",
        ),
        (base().with_ladder(ladder(None, vec![Rung::Reboot, Rung::Reboot])), "ladder[0].rungs: names \"reboot\" twice"),
        (
            base().with_ladder(ladder(None, vec![Rung::Repair(repair("mark-ready"))])),
            "names the repair \"mark-ready\", which is not defined (repairs.mark-ready)",
        ),
        (
            base().with_ladder(ladder(Some(NodeClass::Gpu), vec![Rung::Reboot, Rung::Replace])),
            "ladder[0].rungs: a GPU node is never replaced automatically",
        ),
        (
            base().with_replace(false).with_ladder(ladder(None, vec![Rung::Replace])),
            "\"replace\" needs escalation.replace = true",
        ),
        (
            base().with_ladder(ladder(None, vec![Rung::Reboot])).with_ladder(ladder(None, vec![Rung::Replace])),
            "ladder[1]: has the same class and checker as ladder[0]",
        ),
        (base().with_repair(repair("x"), 0, MIN), "repairs.x.attempts: must be from 1 to 10, got 0"),
        (base().with_repair(repair("y"), 1, Duration::ZERO), "repairs.y.wait: must be a positive duration"),
        (base().with_repair(kubelet, 1, MIN), "repairs.restart-kubelet: is defined twice"),
        (
            base().with_ladder(ladder(None, vec![Rung::Reboot, Rung::DrainReboot])),
            "names both \"reboot\" and \"drain-reboot\"",
        ),
    ];
    for (p, want) in cases {
        let e = p.validate().expect_err(want).to_string();
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
    assert_eq!(base().with_ladder(ladder(None, vec![Rung::Repair(kubelet), Rung::Reboot])).validate(), Ok(()));
}

#[test]
fn a_validation_probe_counts_only_at_the_end_of_verification() {
    let p = policy();
    let pass = CheckOutcome::Pass;
    let down = CheckOutcome::fail("Down");
    let burn_fail = CheckOutcome::fail("BurnInFailed");
    let step_with = |record: NodeRecord, ready: &CheckOutcome, burn: &CheckOutcome, at: Timestamp| {
        let checks =
            [Check::new("NodeReady", MIN, ready), Check { validation: true, ..Check::new("BurnIn", 10 * MIN, burn) }];
        let facts = NodeFacts::default();
        step(record, &Observation { checks: &checks, facts }, &p, &budget(), at)
    };
    // A healthy node never acted on: a failing probe does not count.
    let d = step_with(NodeRecord::default(), &pass, &burn_fail, T0);
    assert_eq!(d.record.phase, Phase::Healthy);
    // Failing, then restart-kubelet.
    let d = step_with(d.record, &down, &burn_fail, T0 + MIN);
    let d = step_with(d.record, &down, &burn_fail, T0 + 2 * MIN);
    assert_eq!(d.action, Some(Action::Repair(repair("restart-kubelet"))));
    // Back: verifying; the probe's failure does not count before verify_for.
    let d = step_with(d.record, &pass, &burn_fail, T0 + 3 * MIN);
    assert_eq!(d.record.phase, Phase::Verifying);
    let d = step_with(d.record, &pass, &burn_fail, T0 + 4 * MIN);
    assert_eq!((d.record.phase, d.action), (Phase::Verifying, None));
    // At the end of verify_for it fails: a relapse acted on at once (its
    // 10m threshold does not apply), on the ladder of the failing probe
    // (none names BurnIn: the default one, a reboot).
    let at_end = T0 + 5 * MIN;
    let relapsed = step_with(d.record.clone(), &pass, &burn_fail, at_end);
    assert_eq!(relapsed.action, Some(Action::Reboot));
    assert_eq!(relapsed.record.repair_count(repair("restart-kubelet")), 1, "the history is kept");
    assert_eq!(relapsed.record.failing.first().map(|f| f.checker.as_str()), Some("BurnIn"));
    // Had it passed, the node would be recovered.
    let ok = step_with(d.record, &pass, &pass, at_end);
    assert_eq!((ok.record.phase, ok.action), (Phase::Healthy, None));
}

#[test]
fn a_validation_failure_is_kept_until_the_probe_passes() {
    let p = policy();
    let pass = CheckOutcome::Pass;
    let burn_fail = CheckOutcome::fail("BurnInFailed");
    let step_with = |record: NodeRecord, burn: &CheckOutcome, at: Timestamp, b: &Budget| {
        let checks =
            [Check::new("NodeReady", MIN, &pass), Check { validation: true, ..Check::new("BurnIn", MIN, burn) }];
        step(record, &Observation { checks: &checks, facts: NodeFacts::default() }, &p, b, at)
    };
    // Verifying after a reboot 3 minutes ago, verified now: the probe fails,
    // but the storm guard holds the next rung.
    let record = NodeRecord {
        phase: Phase::Verifying,
        unhealthy_since: Some(T0),
        healthy_since: Some(T0 + MIN),
        last_action: Some(Action::Reboot),
        last_action_at: Some(T0),
        reboot_count: 1,
        ..NodeRecord::default()
    };
    let storm = Budget { unhealthy: 10, ..budget() };
    let d = step_with(record, &burn_fail, T0 + 3 * MIN, &storm);
    assert_eq!(d.record.phase, Phase::Unhealthy);
    // Next pass, still failing (the engine runs the probe for it): still
    // unhealthy, no flapping back to Verifying; the next rung is held.
    let d = step_with(d.record, &burn_fail, T0 + 11 * MIN, &storm);
    assert_eq!(d.record.phase, Phase::Unhealthy);
    assert_eq!(d.hold.map(|h| h.reason), Some(HoldReason::StormGuard));
    // Once the probe passes, the node is verified again from scratch.
    let d = step_with(d.record, &pass, T0 + 12 * MIN, &budget());
    assert_eq!(d.record.phase, Phase::Verifying);
}
