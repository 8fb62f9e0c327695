//! The async engine: runs checkers, applies the machine, persists with
//! compare-and-swap, performs actions, notifies observers and emits metrics.
//!
//! The engine owns no loop and no timer: [`crate::Runtime`] drives it (or a
//! driver of your own calls [`Engine::sync`] with the complete target set,
//! [`Engine::evaluate`] with the few that changed, and sleeps until
//! [`Engine::next_deadline`]; a spurious wake-up is a harmless no-op).
//!
//! Actions run off the evaluation path: starting one records it (CAS) and
//! hands it to a task; other nodes, the storm guard and the budget go on
//! meanwhile. Its outcome comes back through [`Engine::wait_completion`] and
//! [`Engine::fold_completions`], and the node's next step is decided only
//! from a fresh evaluation after that. [`Engine::run_pass`] does all of it in
//! one call (it waits for the actions it starts), for simulations.
//!
//! Cancellation: the in-memory record changes only after the store
//! confirmed the write, so dropping any engine future at an await point
//! never loses, resets or duplicates a record or an action.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::stream;
use futures_util::{FutureExt, StreamExt};
use metrics::{Gauge, Histogram};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::checker::HealthChecker;
use crate::domain::{Action, CheckOutcome, Mode, NodeRecord, Phase};
use crate::executor::{ExecError, Executor};
use crate::machine::{self, Budget, Check, Decision, HoldReason, Observation, PhaseChange};
use crate::metrics::{CheckResultLabel, MetricNames, NodeSeries, SeriesRemover};
use crate::observer::{
    ActionEvent, DepartEvent, FoldEvent, HoldEvent, Observer, PassEvent, StormEvent, TransitionEvent,
};
use crate::policy::{Backoff, Policy, PolicyError};
use crate::store::{StateStore, StoreError, Version};
use crate::time::{Clock, SystemClock, Timestamp};

mod actions;
mod checks;
mod config;
mod contain;
mod controls;
mod domains;
mod evaluate;
mod persist;
mod report;
mod state;

pub use crate::target::Target;
pub use config::{EngineConfig, EngineError};
pub use controls::Controls;
use controls::Switches;
pub use report::{ActionRecord, NodeError, PassReport};

use actions::Completion;
use contain::{notify, panic_message, panicked};
use domains::{DomainIds, DomainTable, DomainTally, NO_DOMAIN, NO_DOMAINS};
use persist::{Plan, Written};
use state::{Globals, Slot, State, Tally, clamp_future};

/// Everything that does not change while the engine runs.
struct Shared<T> {
    policy: Policy,
    config: EngineConfig,
    checkers: Vec<Arc<dyn HealthChecker<T>>>,
    checker_names: Arc<[String]>,
    /// The checker names as shared metric label values.
    checker_labels: Vec<Arc<str>>,
    thresholds: Arc<[Duration]>,
    /// Which checkers are validation probes (run only for verifying nodes).
    validation: Arc<[bool]>,
    executor: Arc<dyn Executor<T>>,
    store: Arc<dyn StateStore>,
    observers: Vec<Arc<dyn Observer<T>>>,
    clock: Arc<dyn Clock>,
    remover: Option<Arc<dyn SeriesRemover>>,
    controls: Arc<Controls>,
    names: MetricNames,
}

impl<T> Shared<T> {
    /// Reports a phase change of `slot` (in the pass report, to the observers).
    fn transition(
        &self,
        report: &mut PassReport,
        slot: &Slot,
        target: &T,
        change: PhaseChange,
        at: Timestamp,
        mode: Mode,
    ) {
        report.transitions.push((slot.name.to_string(), change));
        let event =
            TransitionEvent { node: &slot.name, from: change.from, to: change.to, at, record: &slot.record, mode };
        notify(&self.observers, "transition", |o| o.on_transition(target, &event));
    }

    fn count_error(&self, reason: &'static str) {
        let names = &self.names;
        names.counter(&names.labelled(&names.reconcile_errors_total, "reason", reason)).increment(1);
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder<T> {
    policy: Policy,
    config: EngineConfig,
    checkers: Vec<Arc<dyn HealthChecker<T>>>,
    executor: Arc<dyn Executor<T>>,
    store: Arc<dyn StateStore>,
    observers: Vec<Arc<dyn Observer<T>>>,
    clock: Arc<dyn Clock>,
    remover: Option<Arc<dyn SeriesRemover>>,
}

impl<T: Target + Clone + 'static> EngineBuilder<T> {
    /// Sets the policy (default: [`Policy::default`], monitor-only).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the engine tuning.
    #[must_use]
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a checker.
    #[must_use]
    pub fn checker(mut self, checker: impl HealthChecker<T> + 'static) -> Self {
        self.checkers.push(Arc::new(checker));
        self
    }

    /// Adds a shared checker.
    #[must_use]
    pub fn checker_arc(mut self, checker: Arc<dyn HealthChecker<T>>) -> Self {
        self.checkers.push(checker);
        self
    }

    /// Adds an observer.
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn Observer<T>>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Sets the clock (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the hook that deletes a removed node's metric series.
    #[must_use]
    pub fn series_remover(mut self, remover: Arc<dyn SeriesRemover>) -> Self {
        self.remover = Some(remover);
        self
    }

    /// Validates the policy and configuration and builds the engine.
    pub fn build(self) -> Result<Engine<T>, EngineError> {
        self.policy.validate()?;
        self.config.validate()?;
        let checker_names: Vec<String> = self.checkers.iter().map(|c| c.name().to_owned()).collect();
        for (i, n) in checker_names.iter().enumerate() {
            if checker_names[..i].contains(n) {
                return Err(EngineError::DuplicateChecker(n.clone()));
            }
        }
        let thresholds = self.checkers.iter().map(|c| c.threshold()).collect();
        let validation = self.checkers.iter().map(|c| c.validation_only()).collect();
        let names = MetricNames::new(&self.config.metrics_prefix);
        let store_timeout = self.config.store_timeout;
        names.describe();
        let globals = Globals {
            storm: names.gauge(&metrics::Key::from_name(names.storm_guard_active.clone())),
            unhealthy: names.gauge(&metrics::Key::from_name(names.unhealthy_nodes.clone())),
            selected: names.gauge(&metrics::Key::from_name(names.selected_nodes.clone())),
            in_flight: names.gauge(&metrics::Key::from_name(names.remediations_in_flight.clone())),
            eval: names.histogram(&metrics::Key::from_name(names.evaluation_duration_seconds.clone())),
        };
        Ok(Engine {
            shared: Shared {
                policy: self.policy,
                config: self.config,
                checkers: self.checkers,
                checker_labels: checker_names.iter().map(|n| Arc::from(n.as_str())).collect(),
                checker_names: checker_names.into(),
                thresholds,
                validation,
                executor: self.executor,
                store: Arc::new(crate::store::TimedStore::new(self.store, store_timeout)),
                observers: self.observers,
                clock: self.clock,
                remover: self.remover,
                controls: Arc::new(Controls::default()),
                names,
            },
            state: State {
                slots: Vec::new(),
                index: HashMap::new(),
                last_action_at: None,
                last_action_mono: None,
                mono: Duration::ZERO,
                storm_active: false,
                recheck: false,
                pass: 0,
                outcomes: Vec::new(),
                errs: Vec::new(),
                globals,
                due_streak: 0,
                next_deadline: None,
                tally: Tally::default(),
                domains: DomainTable::default(),
                domain_moved: false,
                last_counts: (0, 0),
                listed: false,
            },
            running: JoinSet::new(),
            completions: VecDeque::new(),
        })
    }
}

/// The async driver of the recovery machine over a set of targets.
///
/// Metric handles are registered with the recorder installed when the engine
/// (or a node's first evaluation) is set up, so install the exporter first.
pub struct Engine<T> {
    shared: Shared<T>,
    state: State,
    /// Actions running in tasks.
    running: JoinSet<Completion<T>>,
    /// Finished actions not yet folded (kept until their record is written,
    /// so a cancelled fold is redone, not lost).
    completions: VecDeque<Completion<T>>,
}

/// One node as the engine holds it (see [`Engine::node`]).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct NodeView<'a> {
    /// The node name.
    pub name: &'a str,
    /// Its record.
    pub record: &'a NodeRecord,
    /// The gate that held its next action back at its last decision.
    pub hold: Option<HoldReason>,
    /// An action of this node is running in a task.
    pub running: bool,
    /// The node left the target set (its record is kept for `forget_after`).
    pub departed: bool,
}

impl<'a> NodeView<'a> {
    fn of(s: &'a state::Slot) -> Self {
        NodeView {
            name: &s.name,
            record: &s.record,
            hold: s.hold,
            running: s.running,
            departed: s.departed_at.is_some(),
        }
    }
}

/// Decide-and-perform rounds per pass (see `evaluate_inner`).
const MAX_ROUNDS: usize = 8;

/// One action planned in a round.
struct Planned {
    target: usize,
    slot: usize,
    action: Action,
    mode: Mode,
    started_at: Timestamp,
}

impl<T: Target + Clone + 'static> Engine<T> {
    /// Starts building an engine that persists to `store` and acts through `executor`.
    pub fn builder(store: Arc<dyn StateStore>, executor: Arc<dyn Executor<T>>) -> EngineBuilder<T> {
        EngineBuilder {
            policy: Policy::default(),
            config: EngineConfig::default(),
            checkers: Vec::new(),
            executor,
            store,
            observers: Vec::new(),
            clock: Arc::new(SystemClock),
            remover: None,
        }
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// The operator switches (pause, stale source, maintenance window).
    #[must_use]
    pub fn controls(&self) -> Arc<Controls> {
        Arc::clone(&self.shared.controls)
    }

    /// The record the engine holds for `node`.
    #[must_use]
    pub fn record(&self, node: &str) -> Option<&NodeRecord> {
        self.state.index.get(node).map(|&i| &self.state.slots[i].record)
    }

    /// Every node the engine knows, with its record.
    pub fn records(&self) -> impl Iterator<Item = (&str, &NodeRecord)> {
        self.state.slots.iter().map(|s| (&*s.name, &s.record))
    }

    /// What the engine holds for `node` beyond its record: the gate holding
    /// its next action back, whether an action of it is running.
    #[must_use]
    pub fn node(&self, node: &str) -> Option<NodeView<'_>> {
        self.state.index.get(node).map(|&i| NodeView::of(&self.state.slots[i]))
    }

    /// Every node the engine knows, as [`Engine::node`] sees it (in no
    /// particular order).
    pub fn nodes(&self) -> impl Iterator<Item = NodeView<'_>> {
        self.state.slots.iter().map(NodeView::of)
    }

    /// Whether the storm guard (or a stale node source) held remediation
    /// back at the last evaluation.
    #[must_use]
    pub fn storm_guard_active(&self) -> bool {
        self.state.storm_active
    }

    /// The next instant at which some node's decision can change without a
    /// new observation (a wait ends, a departed node is to be forgotten, a
    /// lifted gate frees held nodes). Never at or before the current time
    /// twice in a row: a driver that follows it cannot busy-loop.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.state.next_deadline
    }

    /// [`Engine::next_deadline`] as a tokio instant, for
    /// `tokio::time::sleep_until` (follows paused time with [`crate::TokioClock`]).
    #[must_use]
    pub fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        self.next_deadline().map(|t| self.shared.clock.instant_at(t))
    }

    /// Recomputes the next deadline; a deadline due again right after one
    /// that was due backs off (250 ms doubling to 30 s) instead of spinning.
    fn refresh_deadline(&mut self) -> Option<Timestamp> {
        let now = self.shared.clock.now();
        self.state.debug_check_tally();
        let mut d = if self.state.recheck { Some(now) } else { self.state.tally.deadlines.first().map(|&(t, _)| t) };
        match d {
            Some(t) if t <= now => {
                self.state.due_streak = self.state.due_streak.saturating_add(1);
                if self.state.due_streak > 1 {
                    let shift = (self.state.due_streak - 2).min(7);
                    d = Some(now + (Duration::from_millis(250) * (1 << shift)).min(Duration::from_secs(30)));
                }
            }
            _ => self.state.due_streak = 0,
        }
        self.state.next_deadline = d;
        d
    }

    /// Nodes to evaluate now: their deadline has come, or a gate that held
    /// them has lifted. (Departed nodes are forgotten by the next evaluation.)
    #[must_use]
    pub fn due(&self) -> Vec<String> {
        let now = self.shared.clock.now();
        let s = &self.state;
        let timed = s.tally.deadlines.iter().take_while(|&&(d, _)| d <= now).map(|&(_, i)| i);
        let held = s.tally.held.iter().copied().filter(|_| s.recheck);
        let mut due: Vec<usize> =
            timed.chain(held).filter(|&i| s.slots[i].departed_at.is_none() && !s.slots[i].running).collect();
        due.sort_unstable();
        due.dedup();
        due.into_iter().map(|i| s.slots[i].name.to_string()).collect()
    }

    /// Whether actions are running or finished ones wait to be folded.
    #[must_use]
    pub fn has_running(&self) -> bool {
        !self.running.is_empty() || !self.completions.is_empty()
    }

    /// Loads every stored record (after a restart), so remediation history
    /// and in-flight waits carry over. Returns how many were loaded.
    /// Timestamps in the future (stamped by a clock that was ahead) are
    /// clamped to now.
    pub async fn restore(&mut self) -> Result<usize, StoreError> {
        let all = self.shared.store.list().await?;
        let now = self.shared.clock.now();
        let n = all.len();
        for (name, mut stored) in all {
            clamp_future(&mut stored.record, now);
            // Only a disruptive action spaces the cluster's next one.
            if let Some(t) = stored.record.last_action_at
                && stored.record.last_action.is_some_and(Action::is_disruptive)
            {
                self.state.last_action_at = Some(self.state.last_action_at.map_or(t, |l| l.max(t)));
            }
            match self.state.index.get(name.as_str()) {
                Some(&i) => {
                    let slot = &mut self.state.slots[i];
                    slot.record = stored.record;
                    slot.version = Some(stored.version);
                    slot.needs_reload = false;
                    slot.unknown = false;
                    self.state.touch(i);
                }
                None => {
                    self.state.push(Slot::new(name.into(), stored.record, Some(stored.version)));
                }
            }
        }
        self.state.listed = true;
        if !self.shared.observers.is_empty() {
            let records: Vec<(&str, &NodeRecord)> = self.state.slots.iter().map(|s| (&*s.name, &s.record)).collect();
            notify(&self.shared.observers, "restore", |o| o.on_restore(&records, now));
        }
        self.refresh_deadline();
        Ok(n)
    }

    /// Evaluates `targets` as the complete set, starts the actions due, and
    /// (for simulations and tests) waits for those actions, folds their
    /// outcomes and decides those nodes again from a fresh evaluation, until
    /// no action runs. Drivers that must not wait use [`Engine::sync`].
    pub async fn run_pass(&mut self, targets: &[T]) -> PassReport {
        let mut report = self.sync(targets).await;
        // The machine chains at most three actions per node; the bound only
        // guards against a bug turning a pass into an endless loop.
        let mut rounds: HashMap<String, usize> = HashMap::new();
        while self.has_running() {
            self.wait_completion().await;
            let (nodes, folded) = self.fold_completions().await;
            report.merge(folded);
            let again: Vec<T> = targets
                .iter()
                .filter(|t| nodes.iter().any(|n| n == t.name()))
                .filter(|t| {
                    let n = rounds.entry(t.name().to_owned()).or_default();
                    *n += 1;
                    *n <= MAX_ROUNDS
                })
                .cloned()
                .collect();
            if !again.is_empty() {
                let r = self.evaluate(&again).await;
                report.merge(r);
            }
        }
        report
    }

    /// Evaluates `targets` as the complete set: nodes the engine knows that
    /// are not among them depart (their record and series are kept for
    /// `forget_after`, then deleted; a node back within it keeps its history).
    /// Actions start in tasks and are not waited for.
    ///
    /// Departure is skipped while the node source is marked stale
    /// ([`Controls::set_source_stale`]) and when `targets` is empty: an
    /// unsynced or failed listing must never erase remediation history. Use
    /// [`Engine::remove`] to forget nodes explicitly.
    pub async fn sync(&mut self, targets: &[T]) -> PassReport {
        let may_depart = !targets.is_empty() && !self.shared.controls.source_stale();
        let mut report = self.evaluate_inner(targets, may_depart, true).await;
        self.sweep_departed(&mut report).await;
        self.finish_pass(&mut report);
        report
    }

    /// Marks one node departed (a watch saw it deleted): its record and
    /// series are kept for `forget_after`.
    pub fn depart(&mut self, node: &str) {
        let now = self.shared.clock.now();
        self.notify_depart(node, false, now);
        if let Some(&i) = self.state.index.get(node) {
            let slot = &mut self.state.slots[i];
            if slot.departed_at.is_none() {
                slot.departed_at = Some(now);
                slot.deadline = Some(now + self.shared.config.forget_after);
            }
            self.state.touch(i);
        }
        self.refresh_deadline();
    }

    /// Evaluates some targets (for example the nodes a watch reported changed);
    /// other known nodes keep their state and still count in the budget.
    /// Departed nodes whose time has come are forgotten.
    pub async fn evaluate(&mut self, targets: &[T]) -> PassReport {
        let mut report = self.evaluate_inner(targets, false, false).await;
        self.sweep_departed(&mut report).await;
        self.finish_pass(&mut report);
        report
    }

    fn notify_depart(&self, node: &str, removed: bool, at: Timestamp) {
        if !self.shared.observers.is_empty() {
            let event = DepartEvent { node, removed, at, monotonic: self.shared.clock.monotonic() };
            notify(&self.shared.observers, "depart", |o| o.on_depart(&event));
        }
    }

    /// Forgets departed nodes whose `forget_after` has passed.
    async fn sweep_departed(&mut self, report: &mut PassReport) {
        if self.state.tally.departed.is_empty() {
            return;
        }
        let now = self.shared.clock.now();
        let forget_after = self.shared.config.forget_after;
        let gone: Vec<(String, Option<Version>)> = self
            .state
            .tally
            .departed
            .iter()
            .map(|&i| &self.state.slots[i])
            .filter(|s| !s.running && s.departed_at.is_some_and(|t| now >= t + forget_after))
            .filter(|s| s.deadline.is_none_or(|d| d <= now))
            .map(|s| (s.name.to_string(), s.version.clone()))
            .collect();
        for (name, version) in gone {
            // Nothing stored for it (a node only ever healthy): no store call.
            let forgotten = match version {
                Some(v) => self.forget(&name, Some(&v)).await,
                None => {
                    self.drop_node(&name);
                    Ok(())
                }
            };
            match forgotten {
                Ok(()) => report.removed.push(name),
                Err(error) => {
                    self.shared.count_error("store_delete");
                    if let Some(&i) = self.state.index.get(name.as_str()) {
                        let slot = &mut self.state.slots[i];
                        slot.errors = slot.errors.saturating_add(1);
                        slot.deadline = Some(now + self.shared.config.store_retry.delay(slot.errors));
                        self.state.touch(i);
                    }
                    report.errors.push(NodeError { node: name, error });
                }
            }
        }
    }

    /// Forgets a node: deletes its record from the store and its metric series.
    pub async fn remove(&mut self, node: &str) -> Result<(), StoreError> {
        self.notify_depart(node, true, self.shared.clock.now());
        let r = self.forget(node, None).await;
        self.refresh_deadline();
        r
    }

    /// Deletes a node's record (guarded by `expected` when given) and series.
    async fn forget(&mut self, node: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        self.shared.store.delete(node, expected).await?;
        self.drop_node(node);
        Ok(())
    }

    /// Drops a node's slot and metric series (not its stored record).
    fn drop_node(&mut self, node: &str) {
        self.state.remove(node);
        if let Some(remover) = &self.shared.remover {
            let repairs: Vec<_> = self.shared.policy.repairs.iter().map(|s| s.repair).collect();
            for (kind, key) in self.shared.names.node_series(node, &self.shared.checker_names, &repairs) {
                remover.remove_series(kind, &key);
            }
        }
    }

    /// The cluster budget over the present (not departed) nodes at the
    /// clock reading `now`/`mono` and the switches `sw`. A node whose
    /// record cannot be loaded counts as unhealthy (fail-safe).
    fn budget(&self, now: Timestamp, mono: Duration, sw: Switches) -> Budget {
        let s = &self.state;
        let policy = &self.shared.policy;
        let t = &s.tally;
        let occupying = t.candidates.iter().filter(|&&i| s.slots[i].occupies_slot(policy, now, mono)).count();
        let (total, unhealthy) = (t.present, t.unhealthy);
        let in_flight = u32::try_from(occupying).unwrap_or(u32::MAX);
        Budget {
            total,
            unhealthy,
            in_flight,
            paused: sw.paused,
            source_stale: sw.source_stale,
            window_closed: sw.window_closed,
            last_action_at: s.last_action_at,
            domains: [None; crate::policy::MAX_DOMAIN_LABELS],
        }
    }

    fn finish_pass(&mut self, report: &mut PassReport) {
        let (now, mono) = (self.shared.clock.now(), self.shared.clock.monotonic());
        let budget = self.budget(now, mono, self.shared.controls.read());
        let max_in_flight = budget.max_in_flight(&self.shared.policy);
        let g = &self.state.globals;
        g.selected.set(f64::from(budget.total));
        g.unhealthy.set(f64::from(budget.unhealthy));
        g.in_flight.set(f64::from(budget.in_flight));
        // A node held by its failure domain is looked at again once a
        // domain's counts or the cluster's moved (its floor may have opened).
        let moved = self.report_domains(now)
            || std::mem::take(&mut self.state.domain_moved)
            || self.state.last_counts != (budget.unhealthy, budget.in_flight);
        self.state.last_counts = (budget.unhealthy, budget.in_flight);
        // A node held by a gate that has since lifted must be looked at again.
        let t = &self.state.tally;
        let policy = &self.shared.policy;
        self.state.recheck = (t.holds(HoldReason::Paused) && !budget.paused)
            || (t.holds(HoldReason::SourceStale) && !budget.source_stale)
            || (t.holds(HoldReason::StormGuard) && !budget.storm(policy))
            || (t.holds(HoldReason::DomainStorm) && moved)
            || (t.holds(HoldReason::MaintenanceWindow) && !budget.window_closed)
            || (t.holds(HoldReason::MaxInFlight) && budget.in_flight < max_in_flight);
        report.next_deadline = self.refresh_deadline();
    }
}
