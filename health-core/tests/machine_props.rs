//! Property tests of the machine's invariants over random sequences of
//! outcomes, times, executor results and gate states.

use std::time::Duration;

use health_core::machine::{apply_outcome, step};
use health_core::*;
use proptest::prelude::*;

const T0: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
struct Tick {
    /// Seconds since the previous evaluation.
    advance: u64,
    /// Whether each of the two checkers fails.
    fails: [bool; 2],
    /// Whether the executor succeeds if asked to act.
    exec_ok: bool,
    /// Which gate (if any) is closed during this evaluation.
    gate: Option<u8>,
}

#[derive(Clone, Debug)]
struct Scenario {
    policy: Policy,
    class: NodeClass,
    thresholds: [u64; 2],
    created_at_offset: Option<u64>,
    ticks: Vec<Tick>,
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        prop_oneof![0u64..=90, 0u64..=900, 0u64..=3600],
        any::<[bool; 2]>(),
        prop::bool::weighted(0.7),
        prop::option::weighted(0.2, 0u8..9),
    )
        .prop_map(|(advance, fails, exec_ok, gate)| Tick { advance, fails, exec_ok, gate })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<bool>(),
        any::<bool>(),
        1u32..=6,
        0u32..=4,
        prop_oneof![Just(NodeClass::Standard), Just(NodeClass::Gpu)],
        prop_oneof![Just(0u64), Just(60), Just(300)],
        prop_oneof![Just(300u64), Just(1800)],
        prop::option::of(0u64..=1200),
        prop::collection::vec(tick(), 1..80),
    )
        .prop_map(|(monitor, replace, retries, failures, class, t1, t2, created, ticks)| Scenario {
            policy: Policy::default()
                .with_monitor_only(monitor)
                .with_replace(replace)
                .with_max_reboot_retries(retries)
                .with_max_reboot_failures(failures),
            class,
            thresholds: [t1, t2],
            created_at_offset: created,
            ticks,
        })
}

fn facts(s: &Scenario, gate: Option<u8>) -> NodeFacts {
    NodeFacts {
        class: s.class,
        created_at: s.created_at_offset.map(|o| Timestamp::from_secs(T0 - o)),
        deleting: gate == Some(4),
        tainted_for_removal: gate == Some(5),
        opted_out: gate == Some(6),
    }
}

fn budget(gate: Option<u8>, now: Timestamp) -> Budget {
    Budget {
        total: if gate == Some(8) { 20 } else { 10 },
        unhealthy: match gate {
            Some(2) => 5,
            Some(8) => 4,
            _ => 1,
        },
        in_flight: if gate == Some(7) { 1 } else { 0 },
        paused: gate == Some(0),
        source_stale: gate == Some(1),
        window_closed: gate == Some(3),
        last_action_at: Some(now - Duration::from_secs(3600)),
        // Gate 8: the node's zone is down as a whole (its floor is closed).
        domains: [
            Some(DomainCount { total: 4, unhealthy: if gate == Some(8) { 4 } else { 1 }, in_flight: 0 }),
            None,
            None,
            None,
        ],
    }
}

/// One evaluation's outcome for the invariants to inspect.
struct Seen {
    now: Timestamp,
    before: NodeRecord,
    all_pass: bool,
    gate: Option<u8>,
    decision: Decision,
}

/// Drives the machine through a scenario, folding executor outcomes back in.
fn run(s: &Scenario, mut inspect: impl FnMut(&Seen)) {
    let mut record = NodeRecord::new(s.class);
    let mut now = Timestamp::from_secs(T0);
    let names = ["NodeReady", "DiskPressure"];
    for t in &s.ticks {
        now = now + Duration::from_secs(t.advance);
        let outcomes: Vec<CheckOutcome> =
            t.fails.iter().map(|&f| if f { CheckOutcome::fail("Broken") } else { CheckOutcome::Pass }).collect();
        let checks: Vec<Check<'_>> =
            (0..2).map(|i| Check::new(names[i], Duration::from_secs(s.thresholds[i]), &outcomes[i])).collect();
        let obs = Observation { checks: &checks, facts: facts(s, t.gate) };
        let before = record.clone();
        let decision = step(record, &obs, &s.policy, &budget(t.gate, now), now);
        let seen = Seen { now, before, all_pass: !t.fails.iter().any(|f| *f), gate: t.gate, decision };
        inspect(&seen);
        let d = seen.decision;
        record = match d.action {
            Some(a) => {
                let ok = d.mode == Mode::Monitor || t.exec_ok;
                apply_outcome(d.record, a, ok, &s.policy, now).record
            }
            None => d.record,
        };
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn at_most_one_reboot_per_reboot_wait(s in scenario()) {
        let wait = s.policy.reboot_wait_for(s.class);
        let mut last: Option<Timestamp> = None;
        let mut violation = None;
        run(&s, |seen| {
            if seen.decision.action == Some(Action::Reboot) {
                if let Some(prev) = last
                    && seen.now.saturating_since(prev) < wait
                {
                    violation = Some((prev, seen.now));
                }
                last = Some(seen.now);
            }
        });
        prop_assert_eq!(violation, None);
    }

    #[test]
    fn monitor_only_never_executes(s in scenario()) {
        let s = Scenario { policy: s.policy.with_monitor_only(true), ..s };
        let (mut executed, mut recorded) = (0, 0);
        run(&s, |seen| {
            assert_eq!(seen.decision.mode, Mode::Monitor);
            recorded += usize::from(seen.decision.action.is_some());
            executed += usize::from(seen.decision.action_to_execute().is_some());
        });
        prop_assert_eq!(executed, 0, "recorded {} actions", recorded);
    }

    #[test]
    fn gates_only_hold_and_never_change_counters(s in scenario()) {
        let mut bad = None;
        run(&s, |seen| {
            let d = &seen.decision;
            if let Some(h) = d.hold {
                let (b, r) = (&seen.before, &d.record);
                let same = (b.reboot_count, b.action_failures, b.replace_count, b.last_action_at, b.last_action, b.not_before, b.cordoned, b.drained)
                    == (r.reboot_count, r.action_failures, r.replace_count, r.last_action_at, r.last_action, r.not_before, r.cordoned, r.drained);
                if !same || d.action.is_some() || !h.action.is_disruptive() {
                    bad = Some(format!("{:?} -> {:?}", seen.before, d));
                }
            }
            // With every gate open, nothing is held except by time-based node gates.
            if seen.gate.is_none()
                && let Some(h) = d.hold
                && !matches!(h.reason, HoldReason::StartupGrace)
            {
                bad = Some(format!("held with gates open: {h:?}"));
            }
        });
        prop_assert_eq!(bad, None);
    }

    #[test]
    fn failed_nodes_never_act_until_all_checks_pass(s in scenario()) {
        let mut acted_while_failed = None;
        run(&s, |seen| {
            if seen.before.phase == Phase::Failed && !seen.all_pass && seen.decision.action.is_some() {
                acted_while_failed = Some(seen.decision.action);
            }
            if seen.before.phase == Phase::Failed && !seen.all_pass {
                assert_eq!(seen.decision.record.phase, Phase::Failed);
            }
        });
        prop_assert_eq!(acted_while_failed, None);
    }

    #[test]
    fn no_action_inside_startup_grace(s in scenario()) {
        let grace = s.policy.gates.startup_grace;
        let created = s.created_at_offset.map(|o| Timestamp::from_secs(T0 - o));
        let mut bad = None;
        run(&s, |seen| {
            if let Some(c) = created
                && seen.now < c + grace
                && seen.decision.action.is_some()
            {
                bad = Some((seen.now, seen.decision.action));
            }
        });
        prop_assert_eq!(bad, None);
    }

    #[test]
    fn counters_never_decrease_within_an_episode(s in scenario()) {
        let mut bad = None;
        run(&s, |seen| {
            let (b, r) = (&seen.before, &seen.decision.record);
            let reset = r.phase == Phase::Healthy;
            if !reset && (r.action_failures < b.action_failures || r.replace_count < b.replace_count || r.reboot_count < b.reboot_count) {
                bad = Some(format!("{b:?} -> {r:?}"));
            }
        });
        prop_assert_eq!(bad, None);
    }

    #[test]
    fn deadlines_are_in_the_future_and_waking_early_is_a_no_op(s in scenario()) {
        let mut bad = None;
        run(&s, |seen| {
            if let Some(t) = seen.decision.next_deadline
                && t <= seen.now
            {
                bad = Some(format!("deadline {t} not after now {}", seen.now));
            }
        });
        prop_assert_eq!(bad, None);
    }
}

#[test]
fn stepping_again_at_the_same_instant_is_a_no_op() {
    // A spurious wake-up: the same observation at the same instant decides nothing new.
    let policy = Policy::default().with_monitor_only(false);
    let fail = CheckOutcome::fail("Broken");
    let checks = [Check::new("NodeReady", Duration::from_secs(300), &fail)];
    let obs = Observation { checks: &checks, facts: NodeFacts::default() };
    let now = Timestamp::from_secs(T0);
    let mut record = NodeRecord::default();
    for k in 0..30u64 {
        let t = now + Duration::from_secs(k * 97);
        let first = step(record, &obs, &policy, &Budget::new(10), t);
        let again = step(first.record.clone(), &obs, &policy, &Budget::new(10), t);
        assert!(!again.changed, "second step at {t} changed the record");
        assert_eq!(again.action, None);
        record = first.record;
    }
}
