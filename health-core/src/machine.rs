//! The sans-IO recovery state machine.
//!
//! [`step`] is a pure function of (record, observation, policy, budget, now):
//! it returns the new record, at most one [`Action`], why an action was held
//! back, and the next instant at which its answer can change. It never reads
//! a clock, sleeps, spawns or calls out, so it can be driven by an async
//! engine, a test, a simulation that jumps between deadlines, or a
//! property test. [`apply_outcome`] folds an executor's result back into the
//! record.
//!
//! # Rules
//!
//! * All checkers pass or skip: a node that an action of ours (not an
//!   uncordon) touched in this unhealthy episode becomes `Verifying`, and
//!   `Healthy` once they have passed continuously for `verify_for`; any
//!   other node becomes `Healthy` at once. Counters are kept until it has
//!   been healthy for `history_reset_after`. A node we cordoned is
//!   uncordoned once `Healthy`.
//! * Some checker fails:
//!   * `Unknown`/`Healthy` become `Unhealthy` (`unhealthy_since = now`).
//!   * `Verifying` goes back to `Unhealthy` in the same episode: the relapse
//!     counts its threshold from now and the ladder goes on from its history.
//!   * `Unhealthy`, once some failing checker has failed continuously for its
//!     threshold (each checker counts from its own [`FailingCheck::since`],
//!     any back-off has passed and the last reboot has had its wait): the
//!     next rung of the node's ladder ([`Policy::ladder_for`]).
//!     That is the first soft repair tried fewer times than its `attempts`
//!     (`Repairing`), else a reboot while `reboot_count < max_reboot_retries`
//!     (`WaitingReboot`), else a drain for a replacement where the ladder and
//!     escalation allow it (standard nodes only), else `Failed`. A node whose
//!     failures already exceed `max_reboot_failures` goes to `Failed`.
//!   * `WaitingReboot` and `Repairing`, once the reboot's or repair's wait
//!     has passed: the next rung as above. `Draining` drains, then replaces
//!     (`WaitingReplace`).
//!   * `WaitingReplace` past `escalation.replace_wait`: `Failed`.
//!   * Two reboots of one node are always at least its reboot wait apart, even
//!     when it recovered and failed again in between.
//!   * `Failed` stays until every checker passes.
//! * A failed uncordon is retried after the failure back-off; after
//!   `max_uncordon_failures` in a row the node is left cordoned.
//! * The cluster-wide `min_action_interval` spaces every disruptive action,
//!   retries included, except a replacement following its own drain.
//! * A soft repair's outcome never counts `action_failures`: a failed one is
//!   spent and the next rung follows after the back-off's first step; one of
//!   unknown outcome keeps its wait.
//! * Executor errors ([`apply_outcome`]) count `action_failures`, back off,
//!   and past `max_reboot_failures` send the node to `Failed`. A failed reboot
//!   is retried no sooner than a full reboot wait after it was issued (its
//!   outcome may be unknown), plus the back-off.
//! * Monitor-only mode runs the same lifecycle; the decision's mode says the
//!   action must not be executed.
//!
//! # Safety gates
//!
//! Before a disruptive action (reboot, drain, replace) the machine consults
//! the gates: global pause, stale node source, storm guard, maintenance
//! window, node being deleted or tainted for removal, per-node opt-out,
//! start-up grace, `max_in_flight` (counting the other nodes under way: a
//! node in remediation that acts again, a reboot retry or an escalation,
//! needs a slot as a new one does) and the cluster-wide minimum interval.
//! A soft repair disrupts nothing: the maintenance window, `max_in_flight`
//! and the minimum interval do not apply to it; the others do. A gate holds
//! the action back and says why in [`Decision::hold`]; it never changes the
//! phase or the counters.

use std::time::Duration;

use crate::domain::{Action, CheckOutcome, FailingCheck, Mode, NodeClass, NodeFacts, NodeRecord, Phase};
use crate::policy::{MAX_DOMAIN_LABELS, Policy, Rung};
use crate::time::Timestamp;

/// One checker's outcome, as the machine sees it.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// The checker's name.
    pub name: &'a str,
    /// The checker's threshold.
    pub threshold: Duration,
    /// What it found.
    pub outcome: &'a CheckOutcome,
    /// A validation probe ([`crate::HealthChecker::validation_only`]): it
    /// counts only at the end of a node's verification.
    pub validation: bool,
}

impl<'a> Check<'a> {
    /// An ordinary check (not a validation probe).
    #[must_use]
    pub const fn new(name: &'a str, threshold: Duration, outcome: &'a CheckOutcome) -> Self {
        Check { name, threshold, outcome, validation: false }
    }
}

/// What a validation probe counts as outside the end of a verification.
static NOT_VALIDATING: CheckOutcome = CheckOutcome::Skip { reason: std::borrow::Cow::Borrowed("NotVerifying") };

/// The checks as the rules see them: a validation probe counts only once a
/// `Verifying` node has passed for `verify_for` (and then with no
/// threshold: its failure is a relapse acted on at once); before that it is
/// a skip. Borrowed unchanged when there is no validation probe.
fn effective<'a>(
    checks: &'a [Check<'a>],
    record: &NodeRecord,
    policy: &Policy,
    now: Timestamp,
) -> std::borrow::Cow<'a, [Check<'a>]> {
    if !checks.iter().any(|c| c.validation) {
        return std::borrow::Cow::Borrowed(checks);
    }
    let verified =
        record.phase == Phase::Verifying && record.healthy_since.is_some_and(|h| now >= h + policy.verify_for);
    std::borrow::Cow::Owned(
        checks
            .iter()
            .map(|c| {
                // A probe that failed a verification keeps counting until it
                // passes, so its failure is acted on, not forgotten.
                let counts = verified || record.failing.iter().any(|f| f.checker == c.name);
                match (c.validation, counts) {
                    (false, _) => *c,
                    (true, true) => Check { threshold: Duration::ZERO, ..*c },
                    (true, false) => Check { outcome: &NOT_VALIDATING, ..*c },
                }
            })
            .collect(),
    )
}

/// Everything observed about one node in one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Every checker's outcome.
    pub checks: &'a [Check<'a>],
    /// Facts for the safety gates.
    pub facts: NodeFacts,
}

/// The cluster-wide state the safety gates consult, computed by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Nodes selected for remediation.
    pub total: u32,
    /// Selected nodes currently failing a checker.
    pub unhealthy: u32,
    /// Selected nodes with a remediation under way ([`Phase::is_in_flight`]),
    /// the stepped node included when its phase is in flight.
    pub in_flight: u32,
    /// Remediation is paused by an operator.
    pub paused: bool,
    /// The node source is stale or unreachable.
    pub source_stale: bool,
    /// A maintenance window forbids disruptive actions now.
    pub window_closed: bool,
    /// When a remediation was last started anywhere in the cluster.
    pub last_action_at: Option<Timestamp>,
    /// The stepped node's failure domains, one per label of
    /// [`Policy::domains`] (in its order; `None` where the node has no value
    /// for that label).
    pub domains: [Option<DomainCount>; MAX_DOMAIN_LABELS],
}

/// One failure domain as seen from a node of it (see [`crate::Domains`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainCount {
    /// Present nodes of the domain.
    pub total: u32,
    /// Nodes of the domain failing a checker (or whose record cannot be loaded).
    pub unhealthy: u32,
    /// Other nodes of the domain with a remediation under way (the stepped
    /// node not counted). Consulted only while the domain is in storm: a
    /// driver may leave it 0 otherwise.
    pub in_flight: u32,
}

impl DomainCount {
    /// The most unhealthy nodes the domain tolerates.
    #[must_use]
    pub fn limit(&self, policy: &Policy) -> u32 {
        policy.domains.max_unhealthy.resolve_ceil(self.total)
    }

    /// Whether more of the domain's nodes are unhealthy than it tolerates.
    #[must_use]
    pub fn storm(&self, policy: &Policy) -> bool {
        self.unhealthy > self.limit(policy)
    }

    /// Whether the floor lets one more node of this domain (in storm) be
    /// repaired: fewer than `min_repairable` others are under way, no node
    /// outside it is unhealthy (`cluster_unhealthy` counts every node), and
    /// the domain is not down as a whole.
    #[must_use]
    pub fn floor_open(&self, policy: &Policy, cluster_unhealthy: u32) -> bool {
        self.in_flight < policy.domains.min_repairable
            && cluster_unhealthy <= self.unhealthy
            && self.unhealthy < self.total
    }
}

impl Budget {
    /// A budget for `total` healthy nodes with nothing in flight.
    #[must_use]
    pub fn new(total: u32) -> Self {
        Budget { total, ..Budget::default() }
    }

    /// Whether the storm guard is tripped: more than `max_unhealthy` selected
    /// nodes are failing.
    #[must_use]
    pub fn storm(&self, policy: &Policy) -> bool {
        self.unhealthy > policy.gates.max_unhealthy.resolve_ceil(self.total)
    }

    /// The resolved `max_in_flight` for this many nodes.
    #[must_use]
    pub fn max_in_flight(&self, policy: &Policy) -> u32 {
        policy.gates.max_in_flight.resolve_floor_at_least_one(self.total)
    }

    /// The first of the node's failure domains that holds its remediation
    /// (an index into [`Policy::domains`]' labels): in storm, with its floor
    /// closed.
    #[must_use]
    pub fn domain_hold(&self, policy: &Policy) -> Option<usize> {
        self.domains.iter().position(|d| d.is_some_and(|d| d.storm(policy) && !d.floor_open(policy, self.unhealthy)))
    }
}

/// Why an action was held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// Remediation is paused.
    Paused,
    /// The node source is stale or unreachable.
    SourceStale,
    /// Too many nodes are unhealthy at once.
    StormGuard,
    /// Too many nodes of one of the node's failure domains are unhealthy.
    DomainStorm,
    /// Outside the maintenance window.
    MaintenanceWindow,
    /// The node is being deleted.
    NodeDeleting,
    /// The node is tainted for removal or shutdown.
    TaintedForRemoval,
    /// The node is opted out of remediation.
    OptedOut,
    /// The node is within its start-up grace.
    StartupGrace,
    /// Too many remediations are under way.
    MaxInFlight,
    /// A remediation started elsewhere too recently.
    MinActionInterval,
}

impl HoldReason {
    /// Every reason, in the order the gates are consulted.
    pub const ALL: [HoldReason; 11] = [
        HoldReason::Paused,
        HoldReason::SourceStale,
        HoldReason::StormGuard,
        HoldReason::DomainStorm,
        HoldReason::MaintenanceWindow,
        HoldReason::NodeDeleting,
        HoldReason::TaintedForRemoval,
        HoldReason::OptedOut,
        HoldReason::StartupGrace,
        HoldReason::MaxInFlight,
        HoldReason::MinActionInterval,
    ];

    /// A stable CamelCase name (a metric label value).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            HoldReason::Paused => "Paused",
            HoldReason::SourceStale => "SourceStale",
            HoldReason::StormGuard => "StormGuard",
            HoldReason::DomainStorm => "DomainStorm",
            HoldReason::MaintenanceWindow => "MaintenanceWindow",
            HoldReason::NodeDeleting => "NodeDeleting",
            HoldReason::TaintedForRemoval => "TaintedForRemoval",
            HoldReason::OptedOut => "OptedOut",
            HoldReason::StartupGrace => "StartupGrace",
            HoldReason::MaxInFlight => "MaxInFlight",
            HoldReason::MinActionInterval => "MinActionInterval",
        }
    }

    /// Whether the hold depends on other nodes or operators (it lifts when the
    /// budget changes) rather than on this node's own time or facts.
    #[must_use]
    pub const fn depends_on_budget(self) -> bool {
        matches!(
            self,
            HoldReason::Paused
                | HoldReason::SourceStale
                | HoldReason::StormGuard
                | HoldReason::DomainStorm
                | HoldReason::MaintenanceWindow
                | HoldReason::MaxInFlight
        )
    }
}

impl std::fmt::Display for HoldReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An action the machine wanted but a gate held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The action held back.
    pub action: Action,
    /// The gate that held it.
    pub reason: HoldReason,
    /// When the gate lifts by itself, if it is time-based.
    pub until: Option<Timestamp>,
    /// For [`HoldReason::DomainStorm`]: which failure domain (an index into
    /// [`Policy::domains`]' labels and [`Budget::domains`]).
    pub domain: Option<u8>,
}

/// A change of phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseChange {
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
}

/// The machine's answer for one node.
#[must_use = "a decision's record must be persisted and its action performed"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The new record.
    pub record: NodeRecord,
    /// The action to perform, if any (at most one per step).
    pub action: Option<Action>,
    /// Whether the action is to be executed or only recorded.
    pub mode: Mode,
    /// The record differs from the input and must be persisted.
    pub changed: bool,
    /// The phase changed.
    pub transition: Option<PhaseChange>,
    /// An action held back by a gate.
    pub hold: Option<Hold>,
    /// The next instant at which the decision can change without a new
    /// observation (`None`: only a new observation or budget can change it).
    pub next_deadline: Option<Timestamp>,
}

impl Decision {
    /// The action an executor must perform: none in monitor-only mode.
    #[must_use]
    pub fn action_to_execute(&self) -> Option<Action> {
        match self.mode {
            Mode::Active => self.action,
            Mode::Monitor => None,
        }
    }
}

/// The result of folding an executor's outcome into a record.
#[must_use = "the updated record must be persisted"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The updated record.
    pub record: NodeRecord,
    /// The record changed.
    pub changed: bool,
    /// The phase changed.
    pub transition: Option<PhaseChange>,
}

fn later(now: Timestamp, t: Timestamp) -> Option<Timestamp> {
    (t > now).then_some(t)
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn failing_matches(list: &[FailingCheck], checks: &[Check<'_>]) -> bool {
    let mut remembered = list.iter();
    for c in checks {
        if let CheckOutcome::Fail { reason, .. } = c.outcome {
            match remembered.next() {
                Some(f) if f.checker == c.name && f.reason == *reason => {}
                _ => return false,
            }
        }
    }
    remembered.next().is_none()
}

/// The failing checks, each keeping the start of its continuous failure
/// from `previous`; a checker new to the list starts failing `now`. A
/// record in an unhealthy `episode` that remembers no per-checker start (an
/// earlier version's, or one written by hand) counts from the episode.
fn failing_list(
    previous: &[FailingCheck],
    episode: Option<Timestamp>,
    checks: &[Check<'_>],
    now: Timestamp,
) -> Vec<FailingCheck> {
    let unknown = if previous.iter().any(|f| f.since.is_some()) { None } else { episode };
    checks
        .iter()
        .filter_map(|c| match c.outcome {
            CheckOutcome::Fail { reason, .. } => {
                let since =
                    previous.iter().find(|f| f.checker == c.name).and_then(|f| f.since).or(unknown).unwrap_or(now);
                Some(FailingCheck::new(c.name, reason.as_ref(), since))
            }
            _ => None,
        })
        .collect()
}

/// When the first failing checker reaches its threshold, each counted from
/// when that checker started failing (`None`: nothing fails).
fn threshold_due(record: &NodeRecord, checks: &[Check<'_>], now: Timestamp) -> Option<Timestamp> {
    let episode = record.unhealthy_since.unwrap_or(now);
    checks
        .iter()
        .filter(|c| c.outcome.is_fail())
        .map(|c| {
            let since = record.failing.iter().find(|f| f.checker == c.name).and_then(|f| f.since).unwrap_or(episode);
            since + c.threshold
        })
        .min()
}

fn mode_of(policy: &Policy) -> Mode {
    if policy.monitor_only { Mode::Monitor } else { Mode::Active }
}

/// Consults the safety gates for `action`. A soft repair passes the pause,
/// stale source, storm guard and the node's own gates (deletion, removal
/// taint, opt-out, start-up grace), but not the maintenance window,
/// `max_in_flight` or `min_action_interval`: it disrupts nothing. `counted` is true when the node
/// itself is in an in-flight phase, so [`Budget::in_flight`] counts it:
/// `max_in_flight` applies to the other nodes under way, whether the action
/// starts a remediation or continues one (a retry after the wait must not
/// run beside a remediation that started meanwhile). The cluster-wide
/// minimum interval spaces every disruptive action but a replacement (it
/// follows the node's own drain).
fn gate(
    action: Action,
    counted: bool,
    facts: &NodeFacts,
    budget: &Budget,
    policy: &Policy,
    now: Timestamp,
) -> Option<Hold> {
    if !action.is_remediation() {
        return None;
    }
    let hold = |reason, until| Some(Hold { action, reason, until, domain: None });
    if budget.paused {
        return hold(HoldReason::Paused, None);
    }
    if budget.source_stale {
        return hold(HoldReason::SourceStale, None);
    }
    if budget.storm(policy) {
        return hold(HoldReason::StormGuard, None);
    }
    if let Some(d) = budget.domain_hold(policy) {
        return Some(Hold { action, reason: HoldReason::DomainStorm, until: None, domain: u8::try_from(d).ok() });
    }
    if budget.window_closed && action.is_disruptive() {
        return hold(HoldReason::MaintenanceWindow, None);
    }
    if facts.deleting {
        return hold(HoldReason::NodeDeleting, None);
    }
    if facts.tainted_for_removal {
        return hold(HoldReason::TaintedForRemoval, None);
    }
    if facts.opted_out {
        return hold(HoldReason::OptedOut, None);
    }
    if let Some(created) = facts.created_at {
        let end = created + policy.gates.startup_grace;
        if end > now {
            return hold(HoldReason::StartupGrace, Some(end));
        }
    }
    if !action.is_disruptive() {
        // A soft repair takes no in-flight slot and is not spaced cluster-wide.
        return None;
    }
    let others = if counted { budget.in_flight.saturating_sub(1) } else { budget.in_flight };
    if others >= budget.max_in_flight(policy) {
        return hold(HoldReason::MaxInFlight, None);
    }
    if let Some(last) = budget.last_action_at
        && action != Action::Replace
        && !policy.gates.min_action_interval.is_zero()
    {
        let end = last + policy.gates.min_action_interval;
        if end > now {
            return hold(HoldReason::MinActionInterval, Some(end));
        }
    }
    None
}

/// What the failing branch wants to do before gates are consulted.
enum Want {
    Nothing,
    Act(Action),
    Fail,
}

fn may_replace(record: &NodeRecord, policy: &Policy) -> bool {
    record.class == NodeClass::Standard && policy.escalation.replace
}

/// The next rung of the node's ladder: the first soft repair not yet tried
/// as often as it allows, reboots while `max_reboot_retries` allows (each
/// after a drain for `drain-reboot`), then drain and replace where
/// escalation allows; past the top, `Failed`.
fn next_rung(record: &NodeRecord, policy: &Policy) -> Want {
    for rung in policy.ladder_for(record.class, &record.failing) {
        match *rung {
            Rung::Repair(repair) => {
                let attempts = policy.repair(repair).map_or(0, |s| s.attempts);
                if record.repair_count(repair) < attempts {
                    return Want::Act(Action::Repair(repair));
                }
            }
            Rung::Reboot => {
                if record.reboot_count < policy.max_reboot_retries {
                    return Want::Act(Action::Reboot);
                }
            }
            Rung::DrainReboot => {
                if record.reboot_count < policy.max_reboot_retries {
                    return Want::Act(if record.drained { Action::Reboot } else { Action::Drain });
                }
            }
            Rung::Replace => {
                if may_replace(record, policy) && record.replace_count == 0 {
                    return Want::Act(if record.drained { Action::Replace } else { Action::Drain });
                }
            }
        }
    }
    Want::Fail
}

/// How long the last action is given to take effect before the node is
/// judged again: the reboot wait after a reboot, the repair's wait after a
/// repair (none when the policy no longer defines it).
fn settle_time(record: &NodeRecord, policy: &Policy) -> Option<Duration> {
    match record.last_action? {
        Action::Reboot => Some(policy.reboot_wait_for(record.class)),
        Action::Repair(r) => Some(policy.repair(r).map_or(Duration::ZERO, |s| s.wait)),
        _ => None,
    }
}

/// Whether an action of ours (not an uncordon) started in the current
/// unhealthy episode: a recovery then has to be verified.
fn acted_this_episode(record: &NodeRecord) -> bool {
    match (record.last_action, record.last_action_at, record.unhealthy_since) {
        (Some(a), Some(at), Some(since)) => a.is_remediation() && at >= since,
        _ => false,
    }
}

fn apply_action(record: &mut NodeRecord, action: Action, now: Timestamp) {
    match action {
        Action::Reboot => {
            record.phase = Phase::WaitingReboot;
            record.reboot_count = record.reboot_count.saturating_add(1);
        }
        Action::Drain => {
            record.phase = Phase::Draining;
            record.cordoned = true;
            record.drained = false;
            record.uncordon_failures = 0;
        }
        Action::Replace => {
            record.phase = Phase::WaitingReplace;
            record.replace_count = record.replace_count.saturating_add(1);
            record.drained = false;
        }
        Action::Repair(repair) => {
            record.phase = Phase::Repairing;
            record.count_repair(repair);
        }
        Action::Uncordon => return,
    }
    record.last_action_at = Some(now);
    record.last_action = Some(action);
    record.not_before = None;
}

/// Evaluates one node: the pure decision of the recovery machine.
///
/// `record` is taken by value and returned in the [`Decision`], so the
/// healthy steady state moves it without copying or allocating.
pub fn step(
    mut record: NodeRecord,
    obs: &Observation<'_>,
    policy: &Policy,
    budget: &Budget,
    now: Timestamp,
) -> Decision {
    let initial_phase = record.phase;
    let mut changed = false;
    let checks = effective(obs.checks, &record, policy, now);
    let obs = &Observation { checks: &checks, facts: obs.facts };

    // The class follows the node, except that during an unhealthy episode it
    // can only become `Gpu`: a lost GPU label must not shorten the reboot wait
    // or make a GPU node replaceable.
    let class = match record.phase {
        Phase::Unknown | Phase::Healthy => obs.facts.class,
        _ if obs.facts.class == NodeClass::Gpu => NodeClass::Gpu,
        _ => record.class,
    };
    if record.class != class {
        record.class = class;
        changed = true;
    }

    let any_failing = obs.checks.iter().any(|c| c.outcome.is_fail());
    if !failing_matches(&record.failing, obs.checks) {
        // A relapse while verifying counts its threshold from now, like any
        // new failure (the episode, and its ladder position, go on).
        let episode = if matches!(record.phase, Phase::Unknown | Phase::Healthy | Phase::Verifying) {
            None
        } else {
            record.unhealthy_since
        };
        record.failing = failing_list(&record.failing, episode, obs.checks, now);
        changed = true;
    }

    let mut action = None;
    let mut hold = None;
    let mut next: Option<Timestamp> = None;

    match any_failing {
        false => {
            if !matches!(record.phase, Phase::Healthy | Phase::Verifying) {
                // Recovered by itself, or after an action of ours: then only
                // once the checkers have passed for `verify_for`.
                let verify = acted_this_episode(&record) && !policy.verify_for.is_zero();
                record.phase = if verify { Phase::Verifying } else { Phase::Healthy };
                record.healthy_since = Some(now);
                if !verify {
                    record.unhealthy_since = None;
                }
                record.drained = false;
                changed = true;
            }
            let healthy_since = match record.healthy_since {
                Some(t) => t,
                None => {
                    record.healthy_since = Some(now);
                    changed = true;
                    now
                }
            };
            if record.phase == Phase::Verifying {
                let verified_at = healthy_since + policy.verify_for;
                if now >= verified_at {
                    record.phase = Phase::Healthy;
                    record.unhealthy_since = None;
                    changed = true;
                } else {
                    next = Some(verified_at);
                }
            }
            if record.has_history() {
                let reset_at = healthy_since + policy.history_reset_after;
                if now >= reset_at {
                    record.reboot_count = 0;
                    record.action_failures = 0;
                    record.replace_count = 0;
                    record.not_before = None;
                    record.repairs.clear();
                    changed = true;
                } else {
                    next = earliest(next, Some(reset_at));
                }
            }
            // A node we cordoned takes workloads again once it is verified.
            if record.cordoned && record.phase == Phase::Healthy {
                match record.not_before.and_then(|t| later(now, t)) {
                    Some(t) => next = earliest(next, Some(t)),
                    None => action = Some(Action::Uncordon),
                }
            }
        }
        true => {
            if matches!(record.phase, Phase::Unknown | Phase::Healthy) {
                record.phase = Phase::Unhealthy;
                record.unhealthy_since = Some(now);
                record.healthy_since = None;
                changed = true;
            }
            if record.phase == Phase::Verifying {
                // Failed again before it was verified: not recovered; the
                // ladder goes on from where it stood.
                record.phase = Phase::Unhealthy;
                record.healthy_since = None;
                changed = true;
            }
            if record.unhealthy_since.is_none() {
                record.unhealthy_since = Some(now);
                record.healthy_since = None;
                changed = true;
            }
            if record.phase.is_in_flight() && record.last_action_at.is_none() {
                // A record written by hand or by an older version: start the wait now.
                record.last_action_at = Some(now);
                changed = true;
            }
            let threshold_due = threshold_due(&record, obs.checks, now).unwrap_or(now);
            let last_action_at = record.last_action_at.unwrap_or(now);
            let not_before = record.not_before.unwrap_or(Timestamp::EPOCH);

            let (want, due) = match record.phase {
                Phase::Unhealthy => {
                    let mut due = threshold_due.max(not_before);
                    if record.last_action == Some(Action::Reboot) {
                        // A reboot needs its wait to take effect, whatever happened since.
                        // (A failed soft repair is followed after its back-off.)
                        due = due.max(last_action_at + policy.reboot_wait_for(record.class));
                    }
                    let want = if now < due {
                        Want::Nothing
                    } else if record.action_failures > policy.max_reboot_failures {
                        Want::Fail
                    } else {
                        next_rung(&record, policy)
                    };
                    (want, due)
                }
                Phase::WaitingReboot | Phase::Repairing => {
                    let settle = settle_time(&record, policy).unwrap_or(Duration::ZERO);
                    let due = (last_action_at + settle).max(not_before);
                    let want = if now < due { Want::Nothing } else { next_rung(&record, policy) };
                    (want, due)
                }
                Phase::Draining => {
                    // A drain for a drain-reboot continues with the reboot,
                    // one for a replacement with the replacement; escalation
                    // switched off mid-way (or a node found to be a GPU node)
                    // leaves no rung: Failed rather than replaced.
                    let want = if now < not_before { Want::Nothing } else { next_rung(&record, policy) };
                    (want, not_before)
                }
                Phase::WaitingReplace => {
                    let due = last_action_at + policy.escalation.replace_wait;
                    (if now < due { Want::Nothing } else { Want::Fail }, due)
                }
                Phase::Failed | Phase::Unknown | Phase::Healthy | Phase::Verifying => (Want::Nothing, Timestamp::EPOCH),
            };

            match want {
                Want::Nothing => next = later(now, due),
                Want::Fail => {
                    record.phase = Phase::Failed;
                    changed = true;
                }
                Want::Act(a) => {
                    match gate(a, record.phase.is_in_flight(), &obs.facts, budget, policy, now) {
                        Some(h) => {
                            next = h.until;
                            hold = Some(h);
                        }
                        None => {
                            apply_action(&mut record, a, now);
                            action = Some(a);
                            changed = true;
                            next = match record.phase {
                                Phase::WaitingReboot | Phase::Repairing => {
                                    Some(now + settle_time(&record, policy).unwrap_or(Duration::ZERO))
                                }
                                Phase::WaitingReplace => Some(now + policy.escalation.replace_wait),
                                // Draining continues as soon as the drain's outcome is known.
                                _ => None,
                            };
                        }
                    }
                }
            }
        }
    }

    let transition = (record.phase != initial_phase).then_some(PhaseChange { from: initial_phase, to: record.phase });
    if transition.is_some() {
        record.last_transition_at = Some(now);
    }
    Decision { record, action, mode: mode_of(policy), changed, transition, hold, next_deadline: next }
}

/// What came of an action, as [`apply_outcome`] folds it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionOutcome {
    /// It was done.
    Succeeded,
    /// It certainly failed (nothing happened).
    Failed,
    /// It may or may not have happened (a timeout, a lost answer, a panic).
    Unknown,
    /// The executor cannot do this action at all: retrying is pointless.
    Unsupported,
}

impl From<bool> for ActionOutcome {
    /// `true`: succeeded; `false`: failed.
    fn from(ok: bool) -> Self {
        if ok { ActionOutcome::Succeeded } else { ActionOutcome::Failed }
    }
}

/// Folds the outcome of performing `action` into the record produced by the
/// [`step`] that asked for it. In monitor-only mode drivers report success.
///
/// A failure counts `action_failures` and backs off. An unknown outcome is
/// a failure that may have happened: a reboot or a replacement of unknown
/// outcome keeps its wait (a replacement stays `WaitingReplace` instead of
/// being retried a minute later). An unsupported disruptive action sends
/// the node to `Failed` at once; an unsupported uncordon is given up.
pub fn apply_outcome(
    mut record: NodeRecord,
    action: Action,
    outcome: impl Into<ActionOutcome>,
    policy: &Policy,
    now: Timestamp,
) -> Applied {
    let outcome = outcome.into();
    let succeeded = outcome == ActionOutcome::Succeeded;
    let initial_phase = record.phase;
    let before = record.clone();
    let backoff = policy.failure_backoff;
    if let Action::Repair(_) = action {
        // The try stays counted whatever came of it, so a repair that cannot
        // work gives way to the next rung. One that may have happened keeps
        // its wait; one that certainly did not is followed after the
        // back-off's first step. Disruptive failures are not counted.
        if outcome != ActionOutcome::Succeeded
            && outcome != ActionOutcome::Unknown
            && record.phase == Phase::Repairing
            && record.last_action == Some(action)
        {
            record.phase = Phase::Unhealthy;
            record.not_before = Some(now + backoff.delay(1));
        }
        return applied(record, &before, initial_phase, now);
    }
    if outcome == ActionOutcome::Unsupported {
        if action.is_disruptive() {
            record.phase = Phase::Failed;
        } else {
            // Nobody can uncordon through this executor: stop trying.
            record.cordoned = false;
        }
        return applied(record, &before, initial_phase, now);
    }
    if outcome == ActionOutcome::Unknown && action == Action::Replace && record.phase == Phase::WaitingReplace {
        // The pool may be replacing the node: wait for it as after a replacement.
        record.action_failures = record.action_failures.saturating_add(1);
        if record.action_failures > policy.max_reboot_failures {
            record.phase = Phase::Failed;
        }
        return applied(record, &before, initial_phase, now);
    }
    match (action, succeeded) {
        (Action::Reboot | Action::Replace, true) | (Action::Repair(_), _) => {}
        (Action::Drain, true) => {
            if record.phase == Phase::Draining {
                record.drained = true;
            }
        }
        (Action::Uncordon, true) => {
            record.cordoned = false;
            record.uncordon_failures = 0;
        }
        (Action::Uncordon, false) => {
            record.uncordon_failures = record.uncordon_failures.saturating_add(1);
            if u32::from(record.uncordon_failures) >= policy.max_uncordon_failures {
                // Given up: the node stays cordoned for an operator.
                record.cordoned = false;
            } else {
                record.not_before = Some(now + backoff.delay(u32::from(record.uncordon_failures)));
            }
        }
        (Action::Reboot, false) => {
            record.action_failures = record.action_failures.saturating_add(1);
            if record.phase == Phase::WaitingReboot && record.last_action == Some(Action::Reboot) {
                record.reboot_count = record.reboot_count.saturating_sub(1);
                record.phase = Phase::Unhealthy;
            }
            // The reboot may still happen (a timeout leaves it unknown): never
            // retry sooner than a full reboot wait after issuing it.
            let issued = record.last_action_at.unwrap_or(now);
            record.not_before =
                Some(issued + policy.reboot_wait_for(record.class) + backoff.delay(record.action_failures));
        }
        (Action::Drain, false) => {
            record.action_failures = record.action_failures.saturating_add(1);
            record.not_before = Some(now + backoff.delay(record.action_failures));
        }
        (Action::Replace, false) => {
            record.action_failures = record.action_failures.saturating_add(1);
            if record.phase == Phase::WaitingReplace {
                record.replace_count = record.replace_count.saturating_sub(1);
                record.phase = Phase::Draining;
                record.drained = true;
            }
            record.not_before = Some(now + backoff.delay(record.action_failures));
        }
    }
    if !succeeded && action.is_disruptive() && record.action_failures > policy.max_reboot_failures {
        record.phase = Phase::Failed;
    }
    applied(record, &before, initial_phase, now)
}

/// The [`Applied`] for a record changed from `before` (its phase then).
fn applied(mut record: NodeRecord, before: &NodeRecord, initial_phase: Phase, now: Timestamp) -> Applied {
    let transition = (record.phase != initial_phase).then_some(PhaseChange { from: initial_phase, to: record.phase });
    if transition.is_some() {
        record.last_transition_at = Some(now);
    }
    let changed = record != *before;
    Applied { record, changed, transition }
}
