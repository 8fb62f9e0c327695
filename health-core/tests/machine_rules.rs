//! Table-driven tests: one row per rule of DESIGN §3 and per safety gate,
//! each asserting the exact phase, counters, action, hold and next deadline.

use std::time::Duration;

use health_core::machine::{ActionOutcome, apply_outcome, step};
use health_core::*;

const T0: u64 = 1_700_000_000;
const MIN: u64 = 60;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_secs(T0 + secs)
}

/// `now` is T0 + 1h in every row; times are given relative to it.
const NOW: u64 = 3600;

fn ago(secs: u64) -> Option<Timestamp> {
    Some(at(NOW - secs))
}

fn pass() -> CheckOutcome {
    CheckOutcome::Pass
}
fn fail(reason: &'static str) -> CheckOutcome {
    CheckOutcome::fail(reason)
}

fn active() -> Policy {
    Policy::default().with_monitor_only(false)
}

fn budget() -> Budget {
    Budget { total: 100, unhealthy: 1, ..Budget::default() }
}

fn unhealthy(since_ago: u64) -> NodeRecord {
    NodeRecord { phase: Phase::Unhealthy, unhealthy_since: ago(since_ago), ..NodeRecord::default() }
}

fn waiting(count: u32, action_ago: u64) -> NodeRecord {
    NodeRecord {
        phase: Phase::WaitingReboot,
        unhealthy_since: ago(action_ago + 5 * MIN),
        last_action_at: ago(action_ago),
        last_action: Some(Action::Reboot),
        reboot_count: count,
        ..NodeRecord::default()
    }
}

struct Row {
    name: &'static str,
    record: NodeRecord,
    checks: Vec<(&'static str, u64, CheckOutcome)>,
    facts: NodeFacts,
    policy: Policy,
    budget: Budget,
    // Expectations.
    phase: Phase,
    action: Option<Action>,
    hold: Option<HoldReason>,
    /// (reboot_count, action_failures, replace_count)
    counters: (u32, u32, u32),
    /// Seconds relative to T0, like `NOW`.
    deadline: Option<u64>,
}

impl Row {
    fn new(name: &'static str, record: NodeRecord) -> Self {
        Row {
            name,
            record,
            checks: vec![("NodeReady", 5 * MIN, pass())],
            facts: NodeFacts::default(),
            policy: active(),
            budget: budget(),
            phase: Phase::Healthy,
            action: None,
            hold: None,
            counters: (0, 0, 0),
            deadline: None,
        }
    }
    fn checks(mut self, checks: Vec<(&'static str, u64, CheckOutcome)>) -> Self {
        self.checks = checks;
        self
    }
    fn failing(self) -> Self {
        self.checks(vec![("NodeReady", 5 * MIN, fail("KubeletNotReady"))])
    }
    fn facts(mut self, facts: NodeFacts) -> Self {
        self.facts = facts;
        self
    }
    fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }
    fn budget(mut self, b: Budget) -> Self {
        self.budget = b;
        self
    }
    fn expect(
        mut self,
        phase: Phase,
        action: Option<Action>,
        counters: (u32, u32, u32),
        deadline: Option<u64>,
    ) -> Self {
        self.phase = phase;
        self.action = action;
        self.counters = counters;
        self.deadline = deadline;
        self
    }
    fn held(mut self, reason: HoldReason) -> Self {
        self.hold = Some(reason);
        self
    }

    fn check(self) {
        let _decision = self.run();
    }

    fn run(self) -> Decision {
        let outcomes: Vec<CheckOutcome> = self.checks.iter().map(|c| c.2.clone()).collect();
        let checks: Vec<Check<'_>> =
            self.checks.iter().zip(&outcomes).map(|(c, o)| Check::new(c.0, Duration::from_secs(c.1), o)).collect();
        let obs = Observation { checks: &checks, facts: self.facts };
        let before = self.record.clone();
        let d = step(self.record, &obs, &self.policy, &self.budget, at(NOW));
        let n = self.name;
        assert_eq!(d.record.phase, self.phase, "{n}: phase");
        assert_eq!(d.action, self.action, "{n}: action");
        assert_eq!(d.hold.map(|h| h.reason), self.hold, "{n}: hold");
        assert_eq!(
            (d.record.reboot_count, d.record.action_failures, d.record.replace_count),
            self.counters,
            "{n}: counters"
        );
        assert_eq!(d.next_deadline, self.deadline.map(at), "{n}: next deadline");
        assert_eq!(d.changed, d.record != before, "{n}: changed flag");
        assert_eq!(
            d.transition,
            (before.phase != d.record.phase).then_some(PhaseChange { from: before.phase, to: d.record.phase }),
            "{n}: transition"
        );
        if d.hold.is_some() {
            assert_eq!(d.record.last_action_at, before.last_action_at, "{n}: a hold never records an action");
        }
        d
    }
}

#[test]
fn lifecycle_rules() {
    let gpu = NodeFacts { class: NodeClass::Gpu, ..NodeFacts::default() };
    let rows = vec![
        Row::new("unknown and passing becomes healthy", NodeRecord::default()).expect(
            Phase::Healthy,
            None,
            (0, 0, 0),
            None,
        ),
        Row::new("a skip counts as healthy", NodeRecord::default())
            .checks(vec![("GPU", 10 * MIN, CheckOutcome::skip("NonGPUNode"))])
            .expect(Phase::Healthy, None, (0, 0, 0), None),
        Row::new(
            "healthy and failing becomes unhealthy",
            NodeRecord { phase: Phase::Healthy, ..NodeRecord::default() },
        )
        .failing()
        .expect(Phase::Unhealthy, None, (0, 0, 0), Some(NOW + 5 * MIN)),
        Row::new("unknown and failing becomes unhealthy", NodeRecord::default()).failing().expect(
            Phase::Unhealthy,
            None,
            (0, 0, 0),
            Some(NOW + 5 * MIN),
        ),
        Row::new("threshold not yet reached", unhealthy(4 * MIN)).failing().expect(
            Phase::Unhealthy,
            None,
            (0, 0, 0),
            Some(NOW + MIN),
        ),
        Row::new("threshold reached: reboot", unhealthy(5 * MIN)).failing().expect(
            Phase::WaitingReboot,
            Some(Action::Reboot),
            (1, 0, 0),
            Some(NOW + 10 * MIN),
        ),
        Row::new("threshold is the minimum over the failing checkers", unhealthy(6 * MIN))
            .checks(vec![("DiskPressure", 30 * MIN, fail("DiskPressure")), ("NodeReady", 5 * MIN, fail("NotReady"))])
            .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 0, 0), Some(NOW + 10 * MIN)),
        Row::new("a passing checker's threshold does not count", unhealthy(6 * MIN))
            .checks(vec![("DiskPressure", 30 * MIN, fail("DiskPressure")), ("NodeReady", 5 * MIN, pass())])
            .expect(Phase::Unhealthy, None, (0, 0, 0), Some(NOW + 24 * MIN)),
        Row::new("threshold zero acts at once", NodeRecord { phase: Phase::Healthy, ..NodeRecord::default() })
            .checks(vec![("Sentinel", 0, fail("RebootRequired"))])
            .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 0, 0), Some(NOW + 10 * MIN)),
        Row::new("waiting reboot inside the wait", waiting(1, 9 * MIN)).failing().expect(
            Phase::WaitingReboot,
            None,
            (1, 0, 0),
            Some(NOW + MIN),
        ),
        Row::new("waiting reboot past the wait reboots again", waiting(1, 10 * MIN)).failing().expect(
            Phase::WaitingReboot,
            Some(Action::Reboot),
            (2, 0, 0),
            Some(NOW + 10 * MIN),
        ),
        Row::new("gpu nodes wait 40m", NodeRecord { class: NodeClass::Gpu, ..waiting(1, 30 * MIN) })
            .failing()
            .facts(gpu)
            .expect(Phase::WaitingReboot, None, (1, 0, 0), Some(NOW + 10 * MIN)),
        Row::new("gpu nodes reboot again after 40m", NodeRecord { class: NodeClass::Gpu, ..waiting(1, 40 * MIN) })
            .failing()
            .facts(gpu)
            .expect(Phase::WaitingReboot, Some(Action::Reboot), (2, 0, 0), Some(NOW + 40 * MIN)),
        Row::new("the class follows the node facts", waiting(1, 30 * MIN)).failing().facts(gpu).expect(
            Phase::WaitingReboot,
            None,
            (1, 0, 0),
            Some(NOW + 10 * MIN),
        ),
        Row::new("retries exhausted without escalation: failed", waiting(5, 10 * MIN)).failing().expect(
            Phase::Failed,
            None,
            (5, 0, 0),
            None,
        ),
        Row::new("retries exhausted with escalation: drain", waiting(5, 10 * MIN))
            .failing()
            .policy(active().with_replace(true))
            .expect(Phase::Draining, Some(Action::Drain), (5, 0, 0), None),
        Row::new("gpu nodes never escalate", NodeRecord { class: NodeClass::Gpu, ..waiting(5, 40 * MIN) })
            .failing()
            .facts(gpu)
            .policy(active().with_replace(true))
            .expect(Phase::Failed, None, (5, 0, 0), None),
        Row::new("a node replaced once is not replaced again", NodeRecord { replace_count: 1, ..waiting(5, 10 * MIN) })
            .failing()
            .policy(active().with_replace(true))
            .expect(Phase::Failed, None, (5, 0, 1), None),
        Row::new(
            "a drained node is replaced",
            NodeRecord { phase: Phase::Draining, cordoned: true, drained: true, ..waiting(5, 0) },
        )
        .failing()
        .policy(active().with_replace(true))
        .expect(Phase::WaitingReplace, Some(Action::Replace), (5, 0, 1), Some(NOW + 30 * MIN)),
        Row::new("an undrained draining node drains (again)", NodeRecord { phase: Phase::Draining, ..waiting(5, 0) })
            .failing()
            .policy(active().with_replace(true))
            .expect(Phase::Draining, Some(Action::Drain), (5, 0, 0), None),
        Row::new(
            "waiting replace inside its wait",
            NodeRecord {
                phase: Phase::WaitingReplace,
                replace_count: 1,
                last_action: Some(Action::Replace),
                ..waiting(5, 20 * MIN)
            },
        )
        .failing()
        .policy(active().with_replace(true))
        .expect(Phase::WaitingReplace, None, (5, 0, 1), Some(NOW + 10 * MIN)),
        Row::new(
            "waiting replace past its wait: failed",
            NodeRecord { phase: Phase::WaitingReplace, replace_count: 1, ..waiting(5, 30 * MIN) },
        )
        .failing()
        .policy(active().with_replace(true))
        .expect(Phase::Failed, None, (5, 0, 1), None),
        Row::new("failed stays failed while a checker fails", NodeRecord { phase: Phase::Failed, ..waiting(5, 60) })
            .failing()
            .expect(Phase::Failed, None, (5, 0, 0), None),
        Row::new("failed recovers when every checker passes", NodeRecord { phase: Phase::Failed, ..waiting(5, 60) })
            .expect(Phase::Verifying, None, (5, 0, 0), Some(NOW + 2 * MIN)),
        Row::new("a reboot that worked: verifying, history kept", waiting(1, 3 * MIN)).expect(
            Phase::Verifying,
            None,
            (1, 0, 0),
            Some(NOW + 2 * MIN),
        ),
        Row::new(
            "verifying until verify_for has passed",
            NodeRecord { phase: Phase::Verifying, healthy_since: ago(MIN), ..waiting(1, 3 * MIN) },
        )
        .expect(Phase::Verifying, None, (1, 0, 0), Some(NOW + MIN)),
        Row::new(
            "verified: healthy, history kept until history_reset_after",
            NodeRecord { phase: Phase::Verifying, healthy_since: ago(2 * MIN), ..waiting(1, 3 * MIN) },
        )
        .expect(Phase::Healthy, None, (1, 0, 0), Some(NOW + 28 * MIN)),
        Row::new(
            "a relapse while verifying: unhealthy, history kept, the reboot wait still spaces the next reboot",
            NodeRecord { phase: Phase::Verifying, healthy_since: ago(MIN), ..waiting(1, 3 * MIN) },
        )
        .failing()
        .expect(Phase::Unhealthy, None, (1, 0, 0), Some(NOW + 7 * MIN)),
        Row::new(
            "a relapse while verifying counts its threshold from now",
            NodeRecord { phase: Phase::Verifying, healthy_since: ago(MIN), ..waiting(1, 30 * MIN) },
        )
        .failing()
        .expect(Phase::Unhealthy, None, (1, 0, 0), Some(NOW + 5 * MIN)),
        Row::new("verify_for zero: healthy at once", NodeRecord { phase: Phase::Failed, ..waiting(5, 60) })
            .policy(active().with_verify_for(Duration::ZERO))
            .expect(Phase::Healthy, None, (5, 0, 0), Some(NOW + 30 * MIN)),
        Row::new(
            "a node we cordoned is not uncordoned while verifying",
            NodeRecord { phase: Phase::Draining, cordoned: true, ..waiting(5, 60) },
        )
        .expect(Phase::Verifying, None, (5, 0, 0), Some(NOW + 2 * MIN)),
        Row::new(
            "history is kept until healthy for history_reset_after",
            NodeRecord {
                phase: Phase::Healthy,
                healthy_since: ago(29 * MIN),
                reboot_count: 3,
                ..NodeRecord::default()
            },
        )
        .expect(Phase::Healthy, None, (3, 0, 0), Some(NOW + MIN)),
        Row::new(
            "history resets after history_reset_after",
            NodeRecord {
                phase: Phase::Healthy,
                healthy_since: ago(30 * MIN),
                reboot_count: 3,
                action_failures: 2,
                ..NodeRecord::default()
            },
        )
        .expect(Phase::Healthy, None, (0, 0, 0), None),
        Row::new(
            "a flapping node with exhausted history is not rebooted again",
            NodeRecord { reboot_count: 5, ..unhealthy(5 * MIN) },
        )
        .failing()
        .expect(Phase::Failed, None, (5, 0, 0), None),
        Row::new(
            "a node past max_reboot_failures goes to failed",
            NodeRecord { action_failures: 4, ..unhealthy(5 * MIN) },
        )
        .failing()
        .expect(Phase::Failed, None, (0, 4, 0), None),
        Row::new(
            "back-off after a failure holds the retry",
            NodeRecord { action_failures: 1, not_before: Some(at(NOW + 90)), ..unhealthy(20 * MIN) },
        )
        .failing()
        .expect(Phase::Unhealthy, None, (0, 1, 0), Some(NOW + 90)),
        Row::new(
            "back-off elapsed: reboot",
            NodeRecord { action_failures: 1, not_before: ago(0), ..unhealthy(20 * MIN) },
        )
        .failing()
        .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 1, 0), Some(NOW + 10 * MIN)),
        Row::new(
            "a node we cordoned is uncordoned on recovery",
            NodeRecord { phase: Phase::Failed, cordoned: true, ..NodeRecord::default() },
        )
        .expect(Phase::Healthy, Some(Action::Uncordon), (0, 0, 0), None),
        Row::new(
            "uncordon backs off after a failure",
            NodeRecord {
                phase: Phase::Healthy,
                healthy_since: ago(MIN),
                cordoned: true,
                not_before: Some(at(NOW + 30)),
                ..NodeRecord::default()
            },
        )
        .expect(Phase::Healthy, None, (0, 0, 0), Some(NOW + 30)),
        Row::new(
            "recovered and failing again: no reboot within the reboot wait",
            NodeRecord {
                reboot_count: 1,
                last_action: Some(Action::Reboot),
                last_action_at: ago(7 * MIN),
                ..unhealthy(5 * MIN)
            },
        )
        .failing()
        .expect(Phase::Unhealthy, None, (1, 0, 0), Some(NOW + 3 * MIN)),
        Row::new(
            "a lost gpu label does not shorten a gpu node's wait",
            NodeRecord { class: NodeClass::Gpu, ..waiting(1, 30 * MIN) },
        )
        .failing()
        .expect(Phase::WaitingReboot, None, (1, 0, 0), Some(NOW + 10 * MIN)),
        Row::new(
            "a healthy node takes the class of its facts",
            NodeRecord {
                phase: Phase::Healthy,
                class: NodeClass::Gpu,
                healthy_since: ago(MIN),
                ..NodeRecord::default()
            },
        )
        .expect(Phase::Healthy, None, (0, 0, 0), None),
        Row::new(
            "draining with escalation switched off gives up",
            NodeRecord { phase: Phase::Draining, drained: true, ..waiting(5, 0) },
        )
        .failing()
        .expect(Phase::Failed, None, (5, 0, 0), None),
        Row::new("monitor-only runs the same lifecycle", unhealthy(5 * MIN))
            .failing()
            .policy(Policy::default())
            .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 0, 0), Some(NOW + 10 * MIN)),
    ];
    for row in rows {
        let monitor = row.policy.monitor_only;
        let d = row.run();
        assert_eq!(d.mode, if monitor { Mode::Monitor } else { Mode::Active });
        if monitor {
            assert_eq!(d.action_to_execute(), None);
        } else {
            assert_eq!(d.action_to_execute(), d.action);
        }
    }
}

#[test]
fn failing_checks_and_reasons_are_remembered() {
    let d = Row::new("remember", NodeRecord::default())
        .checks(vec![
            ("NodeReady", 5 * MIN, fail("KubeletNotReady")),
            ("GPU", 10 * MIN, CheckOutcome::skip("NonGPUNode")),
            ("DiskPressure", 30 * MIN, CheckOutcome::fail_with("DiskPressure", "92% used")),
        ])
        .expect(Phase::Unhealthy, None, (0, 0, 0), Some(NOW + 5 * MIN))
        .run();
    let failing: Vec<_> = d.record.failing.iter().map(|f| (f.checker.as_str(), f.reason.as_str())).collect();
    assert_eq!(failing, [("NodeReady", "KubeletNotReady"), ("DiskPressure", "DiskPressure")]);
    assert_eq!(d.record.unhealthy_since, Some(at(NOW)));
    assert_eq!(d.record.last_transition_at, Some(at(NOW)));
}

/// A node whose threshold has passed, so the machine wants to reboot it.
fn due() -> Row {
    Row::new("due", unhealthy(10 * MIN)).failing()
}

#[test]
fn safety_gates_hold_actions_without_changing_counters() {
    let grace_facts = NodeFacts { created_at: ago(4 * MIN), ..NodeFacts::default() };
    let interval = active().with_gates(Gates { min_action_interval: Duration::from_secs(5 * MIN), ..Gates::default() });
    let rows = vec![
        Row { name: "paused", ..due() }.budget(Budget { paused: true, ..budget() }).held(HoldReason::Paused),
        Row { name: "stale source", ..due() }
            .budget(Budget { source_stale: true, ..budget() })
            .held(HoldReason::SourceStale),
        Row { name: "storm: 21 of 100 unhealthy", ..due() }
            .budget(Budget { unhealthy: 21, ..budget() })
            .held(HoldReason::StormGuard),
        Row { name: "maintenance window closed", ..due() }
            .budget(Budget { window_closed: true, ..budget() })
            .held(HoldReason::MaintenanceWindow),
        Row { name: "node being deleted", ..due() }
            .facts(NodeFacts { deleting: true, ..NodeFacts::default() })
            .held(HoldReason::NodeDeleting),
        Row { name: "node tainted for removal", ..due() }
            .facts(NodeFacts { tainted_for_removal: true, ..NodeFacts::default() })
            .held(HoldReason::TaintedForRemoval),
        Row { name: "node opted out", ..due() }
            .facts(NodeFacts { opted_out: true, ..NodeFacts::default() })
            .held(HoldReason::OptedOut),
        Row { name: "max in flight: 10 of 100 already", ..due() }
            .budget(Budget { in_flight: 10, ..budget() })
            .held(HoldReason::MaxInFlight),
    ];
    for row in rows {
        row.expect(Phase::Unhealthy, None, (0, 0, 0), None).check();
    }
    // Time-based gates report when they lift.
    Row { name: "start-up grace", ..due() }
        .facts(grace_facts)
        .held(HoldReason::StartupGrace)
        .expect(Phase::Unhealthy, None, (0, 0, 0), Some(NOW + 6 * MIN))
        .check();
    Row { name: "minimum interval between actions", ..due() }
        .policy(interval)
        .budget(Budget { last_action_at: ago(2 * MIN), ..budget() })
        .held(HoldReason::MinActionInterval)
        .expect(Phase::Unhealthy, None, (0, 0, 0), Some(NOW + 3 * MIN))
        .check();
    // A reboot retry or an escalation step is held by node-level gates too.
    Row::new("retry held by pause", waiting(1, 10 * MIN))
        .failing()
        .budget(Budget { paused: true, ..budget() })
        .held(HoldReason::Paused)
        .expect(Phase::WaitingReboot, None, (1, 0, 0), None)
        .check();
    Row::new("escalation held by storm", waiting(5, 10 * MIN))
        .failing()
        .policy(active().with_replace(true))
        .budget(Budget { unhealthy: 50, ..budget() })
        .held(HoldReason::StormGuard)
        .expect(Phase::WaitingReboot, None, (5, 0, 0), None)
        .check();
}

#[test]
fn gate_boundaries_and_exemptions() {
    // Exactly at the storm limit (20% of 100 rounds to 20): not a storm.
    due()
        .budget(Budget { unhealthy: 20, ..budget() })
        .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 0, 0), Some(NOW + 10 * MIN))
        .check();
    // Percentages round up: 20% of 6 nodes is 2, so 2 unhealthy is not a storm and 3 is.
    due()
        .budget(Budget { total: 6, unhealthy: 2, ..Budget::default() })
        .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 0, 0), Some(NOW + 10 * MIN))
        .check();
    due()
        .budget(Budget { total: 6, unhealthy: 3, ..Budget::default() })
        .held(HoldReason::StormGuard)
        .expect(Phase::Unhealthy, None, (0, 0, 0), None)
        .check();
    // max_in_flight is at least one: a 3-node cluster can remediate one node.
    due()
        .budget(Budget { total: 3, unhealthy: 1, in_flight: 0, ..Budget::default() })
        .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 0, 0), Some(NOW + 10 * MIN))
        .check();
    // A retry counts the other nodes under way (in_flight includes the
    // node itself): 9 others of a limit of 10 leave it a slot...
    let interval = active().with_gates(Gates { min_action_interval: Duration::from_secs(5 * MIN), ..Gates::default() });
    Row::new("retry with a free slot", waiting(1, 10 * MIN))
        .failing()
        .policy(interval.clone())
        .budget(Budget { in_flight: 10, last_action_at: ago(10 * MIN), ..budget() })
        .expect(Phase::WaitingReboot, Some(Action::Reboot), (2, 0, 0), Some(NOW + 10 * MIN))
        .check();
    // ...10 others do not: a retry never runs beside remediations that
    // started while it waited.
    Row::new("retry without a free slot", waiting(1, 10 * MIN))
        .failing()
        .policy(interval.clone())
        .budget(Budget { in_flight: 11, last_action_at: ago(10 * MIN), ..budget() })
        .held(HoldReason::MaxInFlight)
        .expect(Phase::WaitingReboot, None, (1, 0, 0), None)
        .check();
    // ...but a retry is spaced by the cluster-wide minimum interval like a first action.
    Row::new("retry waits for the minimum interval", waiting(1, 10 * MIN))
        .failing()
        .policy(interval)
        .budget(Budget { in_flight: 10, last_action_at: ago(MIN), ..budget() })
        .held(HoldReason::MinActionInterval)
        .expect(Phase::WaitingReboot, None, (1, 0, 0), Some(NOW + 4 * MIN))
        .check();
    // A replacement follows its own drain at once: the interval does not apply.
    let replacing = active()
        .with_gates(Gates { min_action_interval: Duration::from_secs(5 * MIN), ..Gates::default() })
        .with_replace(true);
    let drained = NodeRecord {
        phase: Phase::Draining,
        cordoned: true,
        drained: true,
        last_action: Some(Action::Drain),
        last_action_at: ago(MIN),
        ..waiting(5, MIN)
    };
    Row::new("replace after the drain", drained)
        .failing()
        .policy(replacing)
        .budget(Budget { last_action_at: ago(MIN), ..budget() })
        .expect(Phase::WaitingReplace, Some(Action::Replace), (5, 0, 1), Some(NOW + 30 * MIN))
        .check();
    // Start-up grace over: act.
    due()
        .facts(NodeFacts { created_at: ago(10 * MIN), ..NodeFacts::default() })
        .expect(Phase::WaitingReboot, Some(Action::Reboot), (1, 0, 0), Some(NOW + 10 * MIN))
        .check();
    // Uncordon is not disruptive: no gate holds it.
    Row::new("uncordon while paused", NodeRecord { phase: Phase::Failed, cordoned: true, ..NodeRecord::default() })
        .budget(Budget { paused: true, unhealthy: 90, ..budget() })
        .expect(Phase::Healthy, Some(Action::Uncordon), (0, 0, 0), None)
        .check();
    // Gates never touch a node that only changes phase without acting.
    Row::new("failing past retries while paused still goes to failed", waiting(5, 10 * MIN))
        .failing()
        .budget(Budget { paused: true, ..budget() })
        .expect(Phase::Failed, None, (5, 0, 0), None)
        .check();
}

fn applied(record: NodeRecord, action: Action, ok: bool) -> NodeRecord {
    apply_outcome(record, action, ok, &active(), at(NOW)).record
}

#[test]
fn executor_outcomes() {
    // A failed reboot: not counted as a reboot, counted as a failure, back to
    // Unhealthy, and not retried before a full reboot wait plus back-off.
    let issued = waiting(2, 0);
    let a = apply_outcome(issued.clone(), Action::Reboot, false, &active(), at(NOW));
    assert_eq!(a.record.phase, Phase::Unhealthy);
    assert_eq!((a.record.reboot_count, a.record.action_failures), (1, 1));
    assert_eq!(a.record.not_before, Some(at(NOW + 10 * MIN + MIN)));
    assert_eq!(a.transition, Some(PhaseChange { from: Phase::WaitingReboot, to: Phase::Unhealthy }));
    // Second failure doubles the back-off.
    let r = applied(NodeRecord { action_failures: 1, ..issued.clone() }, Action::Reboot, false);
    assert_eq!(r.not_before, Some(at(NOW + 10 * MIN + 2 * MIN)));
    // Past max_reboot_failures (3): failed.
    let r = applied(NodeRecord { action_failures: 3, ..issued.clone() }, Action::Reboot, false);
    assert_eq!((r.phase, r.action_failures), (Phase::Failed, 4));
    // max_reboot_failures = 0: the first failure gives up.
    let p = active().with_max_reboot_failures(0);
    assert_eq!(apply_outcome(issued.clone(), Action::Reboot, false, &p, at(NOW)).record.phase, Phase::Failed);
    // Success changes nothing.
    let a = apply_outcome(issued.clone(), Action::Reboot, true, &active(), at(NOW));
    assert!(!a.changed);
    assert_eq!(a.record, issued);

    let draining =
        NodeRecord { phase: Phase::Draining, cordoned: true, last_action: Some(Action::Drain), ..waiting(5, 0) };
    let r = applied(draining.clone(), Action::Drain, true);
    assert!(r.drained && r.phase == Phase::Draining);
    let r = applied(draining.clone(), Action::Drain, false);
    assert_eq!((r.phase, r.action_failures, r.drained), (Phase::Draining, 1, false));
    assert_eq!(r.not_before, Some(at(NOW + MIN)));

    let replacing = NodeRecord {
        phase: Phase::WaitingReplace,
        cordoned: true,
        replace_count: 1,
        last_action: Some(Action::Replace),
        ..waiting(5, 0)
    };
    let r = applied(replacing.clone(), Action::Replace, false);
    assert_eq!((r.phase, r.replace_count, r.action_failures, r.drained), (Phase::Draining, 0, 1, true));
    assert_eq!(r.not_before, Some(at(NOW + MIN)));

    let cordoned = NodeRecord { phase: Phase::Healthy, cordoned: true, ..NodeRecord::default() };
    assert!(!applied(cordoned.clone(), Action::Uncordon, true).cordoned);
    let r = applied(cordoned, Action::Uncordon, false);
    assert!(r.cordoned);
    assert_eq!(r.not_before, Some(at(NOW + MIN)));
    assert_eq!(r.action_failures, 0, "uncordon failures do not count toward giving up");
}

#[test]
fn healthy_steady_state_changes_nothing() {
    let rec = NodeRecord { phase: Phase::Healthy, healthy_since: ago(5), ..NodeRecord::default() };
    let d = Row::new("steady", rec.clone()).run();
    assert!(!d.changed);
    assert_eq!(d.record, rec);
    assert_eq!(d.transition, None);
}

/// Typed outcomes: an unsupported disruptive action goes Failed without a
/// retry; an unsupported uncordon is given up; a replacement of unknown
/// outcome keeps its wait instead of being retried a minute later.
#[test]
fn typed_outcomes() {
    let issued = waiting(2, 0);
    let a = apply_outcome(issued.clone(), Action::Reboot, ActionOutcome::Unsupported, &active(), at(NOW));
    assert_eq!((a.record.phase, a.record.not_before), (Phase::Failed, None));
    assert_eq!(a.transition, Some(PhaseChange { from: Phase::WaitingReboot, to: Phase::Failed }));

    let cordoned = NodeRecord { phase: Phase::Healthy, cordoned: true, ..NodeRecord::default() };
    let a = apply_outcome(cordoned, Action::Uncordon, ActionOutcome::Unsupported, &active(), at(NOW));
    assert!(!a.record.cordoned && a.record.not_before.is_none(), "{:?}", a.record);
    assert_eq!(a.record.phase, Phase::Healthy);

    let replacing = NodeRecord {
        phase: Phase::WaitingReplace,
        replace_count: 1,
        last_action: Some(Action::Replace),
        last_action_at: Some(at(NOW)),
        ..NodeRecord::default()
    };
    let a = apply_outcome(replacing.clone(), Action::Replace, ActionOutcome::Unknown, &active(), at(NOW));
    assert_eq!((a.record.phase, a.record.replace_count, a.record.action_failures), (Phase::WaitingReplace, 1, 1));
    assert_eq!(a.record.not_before, None);
    // A certain failure still goes back to retry the replacement after a back-off.
    let r = applied(replacing, Action::Replace, false);
    assert_eq!((r.phase, r.drained), (Phase::Draining, true));
    assert!(r.not_before.is_some());
}

/// Steps `record` at `now` (seconds after T0) with `checks` (name, threshold, outcome).
fn step_at(record: NodeRecord, checks: &[(&str, u64, CheckOutcome)], now: u64) -> Decision {
    let checks: Vec<Check<'_>> = checks.iter().map(|c| Check::new(c.0, Duration::from_secs(c.1), &c.2)).collect();
    step(record, &Observation { checks: &checks, facts: NodeFacts::default() }, &active(), &budget(), at(now))
}

/// Each checker's threshold counts from when that checker started failing:
/// a 20 s NodeReady blip (threshold 5m) on a node with 25 minutes of
/// DiskPressure (threshold 30m) does not reboot it; DiskPressure's own
/// threshold does, 30 minutes after it began.
#[test]
fn thresholds_count_per_checker() {
    let disk = ("DiskPressure", 30 * MIN, fail("KubeletHasDiskPressure"));
    let ready = |o: CheckOutcome| ("NodeReady", 5 * MIN, o);
    let d = step_at(NodeRecord::default(), &[disk.clone(), ready(pass())], 0);
    assert_eq!((d.record.phase, d.next_deadline), (Phase::Unhealthy, Some(at(30 * MIN))));
    let d = step_at(d.record, &[disk.clone(), ready(fail("KubeletNotReady"))], 25 * MIN);
    assert_eq!(d.action, None, "the blip has failed for 0 s of its 5m");
    assert_eq!(d.next_deadline, Some(at(30 * MIN)), "DiskPressure is due first (NodeReady at 30m too)");
    let since: Vec<_> = d.record.failing.iter().map(|f| (f.checker.as_str(), f.since)).collect();
    assert_eq!(since, [("DiskPressure", Some(at(0))), ("NodeReady", Some(at(25 * MIN)))]);
    let d = step_at(d.record, &[disk.clone(), ready(pass())], 25 * MIN + 20);
    assert_eq!((d.action, d.next_deadline), (None, Some(at(30 * MIN))));
    let d = step_at(d.record, &[disk.clone(), ready(pass())], 30 * MIN);
    assert_eq!((d.record.phase, d.action), (Phase::WaitingReboot, Some(Action::Reboot)));

    // A checker that fails again after passing starts from zero.
    let d = step_at(NodeRecord::default(), &[ready(fail("KubeletNotReady")), disk.clone()], 0);
    let d = step_at(d.record, &[ready(fail("KubeletNotReady")), disk.clone()], 4 * MIN);
    let d = step_at(d.record, &[ready(pass()), disk.clone()], 4 * MIN + 30);
    let d = step_at(d.record, &[ready(fail("KubeletNotReady")), disk], 5 * MIN);
    assert_eq!((d.action, d.next_deadline), (None, Some(at(10 * MIN))));

    // A record from an earlier version (no per-checker start) counts from its episode.
    let old = NodeRecord {
        failing: vec![FailingCheck { checker: "NodeReady".into(), reason: "KubeletNotReady".into(), since: None }],
        ..unhealthy(10 * MIN)
    };
    let d = step_at(old, &[ready(fail("KubeletNotReady"))], NOW);
    assert_eq!(d.action, Some(Action::Reboot));
}

/// A failed uncordon backs off (1, 2, 4, 8 minutes with the default
/// failure back-off) and is given up after `max_uncordon_failures` (5):
/// the node is left cordoned, and no uncordon is asked for again.
#[test]
fn a_failing_uncordon_backs_off_and_gives_up() {
    let policy = active();
    let mut record =
        NodeRecord { phase: Phase::Healthy, cordoned: true, healthy_since: ago(MIN), ..Default::default() };
    let mut now = NOW;
    let mut asked = Vec::new();
    for _ in 0..40 {
        let d = step_at(record, &[("NodeReady", 5 * MIN, pass())], now);
        record = d.record;
        match d.action {
            Some(Action::Uncordon) => {
                asked.push((now - NOW) / MIN);
                record = apply_outcome(record, Action::Uncordon, ActionOutcome::Failed, &policy, at(now)).record;
            }
            Some(a) => panic!("unexpected {a}"),
            None => {}
        }
        now += MIN;
    }
    assert_eq!(asked, [0, 1, 3, 7, 15], "uncordon attempts, in minutes");
    assert!(!record.cordoned, "given up: the record no longer claims a cordon of ours");
    assert_eq!(record.uncordon_failures, 5);
    // A later success resets the count.
    let cordoned = NodeRecord { phase: Phase::Healthy, cordoned: true, uncordon_failures: 3, ..Default::default() };
    let r = apply_outcome(cordoned, Action::Uncordon, ActionOutcome::Succeeded, &policy, at(NOW)).record;
    assert_eq!((r.cordoned, r.uncordon_failures), (false, 0));
}
