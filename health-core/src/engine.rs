//! The async engine: runs checkers, applies the machine, persists with
//! compare-and-swap, performs actions, notifies observers and emits metrics.
//!
//! The engine owns no loop and no timer. A driver calls
//! [`Engine::run_pass`] with the current targets (or [`Engine::evaluate`]
//! with the few that changed), then sleeps until [`Engine::next_deadline`]
//! or until something changes; a spurious wake-up is a harmless no-op.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;
use metrics::{Gauge, Histogram};
use tokio::sync::Notify;

use crate::checker::HealthChecker;
use crate::domain::{Action, CheckOutcome, Mode, NodeFacts, NodeRecord, Phase};
use crate::executor::{ExecError, Executor};
use crate::machine::{self, Budget, Check, Decision, HoldReason, Observation, PhaseChange};
use crate::metrics::{MetricNames, NodeSeries, SeriesRemover};
use crate::observer::{ActionEvent, HoldEvent, Observer, StormEvent, TransitionEvent};
use crate::policy::{Backoff, Policy, PolicyError};
use crate::store::{StateStore, StoreError, Version};
use crate::time::{Clock, SystemClock, Timestamp};

/// Something the engine evaluates: a Kubernetes Node, a VM, a device.
pub trait Target: Send + Sync {
    /// A unique, stable name (the state store key and the `node` label).
    fn name(&self) -> &str;
    /// Facts for the safety gates.
    fn facts(&self) -> NodeFacts;
}

impl<T: Target + ?Sized> Target for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn facts(&self) -> NodeFacts {
        (**self).facts()
    }
}

/// Engine tuning (not policy): concurrency, timeouts, metric prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Asynchronous checks run at once. Default 64.
    pub check_concurrency: usize,
    /// Time limit of one asynchronous check. Default 10s.
    pub check_timeout: Duration,
    /// Time limit of a reboot or uncordon (a replace gets this plus the drain timeout). Default 2m.
    pub action_timeout: Duration,
    /// Time limit of a drain (evictions wait on disruption budgets). Default 15m.
    pub drain_timeout: Duration,
    /// Metric name prefix. Default `civo_node_agent`.
    pub metrics_prefix: String,
    /// Store conflicts tolerated per node per pass before giving up until the
    /// next pass. Default 3.
    pub conflict_retries: u32,
    /// When a node's state cannot be read or written, decide it again after
    /// this back-off (5s doubling up to 5m), never in a busy loop.
    pub store_retry: Backoff,
    /// Time limit of one state-store call (load, save, delete, list). Default 30s.
    pub store_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            check_concurrency: 64,
            check_timeout: Duration::from_secs(10),
            action_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(15 * 60),
            metrics_prefix: crate::metrics::DEFAULT_PREFIX.to_owned(),
            conflict_retries: 3,
            store_retry: Backoff { initial: Duration::from_secs(5), max: Duration::from_secs(300) },
            store_timeout: Duration::from_secs(30),
        }
    }
}

impl EngineConfig {
    /// Sets the check concurrency.
    #[must_use]
    pub fn with_check_concurrency(mut self, n: usize) -> Self {
        self.check_concurrency = n;
        self
    }

    /// Sets the per-check timeout.
    #[must_use]
    pub fn with_check_timeout(mut self, d: Duration) -> Self {
        self.check_timeout = d;
        self
    }

    /// Sets the action and drain timeouts.
    #[must_use]
    pub fn with_action_timeouts(mut self, action: Duration, drain: Duration) -> Self {
        self.action_timeout = action;
        self.drain_timeout = drain;
        self
    }

    /// Sets the time limit of one state-store call.
    #[must_use]
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Sets the metric prefix.
    #[must_use]
    pub fn with_metrics_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.metrics_prefix = prefix.into();
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field: &'static str, expected: &'static str| Err(EngineError::InvalidConfig { field, expected });
        if self.check_concurrency == 0 {
            return bad("check_concurrency", "a whole number of at least 1");
        }
        if self.store_retry.max < self.store_retry.initial {
            return bad("store_retry.max", "at least store_retry.initial");
        }
        for (field, d) in [
            ("check_timeout", self.check_timeout),
            ("action_timeout", self.action_timeout),
            ("drain_timeout", self.drain_timeout),
            ("store_retry.initial", self.store_retry.initial),
            ("store_timeout", self.store_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "a positive duration such as \"30s\"");
            }
        }
        let p = self.metrics_prefix.as_bytes();
        let valid = !p.is_empty()
            && (p[0].is_ascii_alphabetic() || p[0] == b'_')
            && p.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !valid {
            return bad(
                "metrics_prefix",
                "a Prometheus name: letters, digits and underscores, not starting with a digit",
            );
        }
        Ok(())
    }

    fn timeout_for(&self, action: Action) -> Duration {
        match action {
            Action::Drain => self.drain_timeout,
            // Executors may drain before replacing (recovery-exec's Remediator).
            Action::Replace => self.drain_timeout.saturating_add(self.action_timeout),
            _ => self.action_timeout,
        }
    }
}

/// The engine cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The policy is invalid.
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// An engine setting is invalid.
    #[error("invalid engine config: {field} must be {expected}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// The accepted form.
        expected: &'static str,
    },
    /// Two checkers share a name.
    #[error("two checkers are named {0:?}: checker names must be unique")]
    DuplicateChecker(String),
}

/// Operator switches shared with other tasks (an admin API, a pause file
/// watcher). Changing one wakes the driver waiting in [`Controls::changed`]
/// (one driver per engine; a change made while it is busy is kept for its
/// next wait).
#[derive(Debug, Default)]
pub struct Controls {
    paused: AtomicBool,
    source_stale: AtomicBool,
    window_closed: AtomicBool,
    notify: Notify,
}

impl Controls {
    fn set(&self, flag: &AtomicBool, on: bool) {
        if flag.swap(on, Ordering::SeqCst) != on {
            // A stored permit: a driver busy in a pass still sees the change.
            self.notify.notify_one();
        }
    }

    /// Pauses or resumes all disruptive actions.
    pub fn set_paused(&self, on: bool) {
        self.set(&self.paused, on);
    }

    /// Whether remediation is paused.
    #[must_use]
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Marks the node source stale (unreachable API server) or fresh.
    pub fn set_source_stale(&self, on: bool) {
        self.set(&self.source_stale, on);
    }

    /// Whether the node source is stale.
    #[must_use]
    pub fn source_stale(&self) -> bool {
        self.source_stale.load(Ordering::SeqCst)
    }

    /// Closes or opens the maintenance window for disruptive actions.
    pub fn set_window_closed(&self, on: bool) {
        self.set(&self.window_closed, on);
    }

    /// Whether the maintenance window is closed.
    #[must_use]
    pub fn window_closed(&self) -> bool {
        self.window_closed.load(Ordering::SeqCst)
    }

    /// Resolves when a switch changes (for drivers sleeping until a deadline).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

/// An action the engine started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionRecord {
    /// The node.
    pub node: String,
    /// The action.
    pub action: Action,
    /// Executed or recorded only.
    pub mode: Mode,
    /// The executor's failure reason, if it failed.
    pub failure: Option<String>,
}

/// A per-node error of one pass.
#[derive(Debug)]
pub struct NodeError {
    /// The node.
    pub node: String,
    /// What failed.
    pub error: StoreError,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Targets evaluated.
    pub evaluated: usize,
    /// Phase transitions.
    pub transitions: Vec<(String, PhaseChange)>,
    /// Actions started (executed or recorded).
    pub actions: Vec<ActionRecord>,
    /// Nodes whose action a gate held back this pass, with the gate.
    pub held: Vec<(String, HoldReason)>,
    /// Store compare-and-swap conflicts met (and resolved by reloading).
    pub conflicts: u32,
    /// Nodes removed because they were no longer targets.
    pub removed: Vec<String>,
    /// Store errors; those nodes are reloaded and decided again next pass.
    pub errors: Vec<NodeError>,
    /// Whether the storm guard held new remediations back.
    pub storm_guard: bool,
    /// The engine's next deadline after the pass.
    pub next_deadline: Option<Timestamp>,
}

struct Slot {
    name: String,
    record: NodeRecord,
    version: Option<Version>,
    /// The record in memory may differ from the store: reload before deciding.
    needs_reload: bool,
    failing: bool,
    deadline: Option<Timestamp>,
    hold: Option<HoldReason>,
    seen: u64,
    /// Consecutive store errors, for the retry back-off.
    errors: u32,
    series: Option<NodeSeries>,
}

impl Slot {
    fn new(name: &str, record: NodeRecord, version: Option<Version>) -> Self {
        Slot {
            name: name.to_owned(),
            failing: !record.failing.is_empty(),
            record,
            version,
            needs_reload: false,
            deadline: None,
            hold: None,
            seen: 0,
            errors: 0,
            series: None,
        }
    }
}

struct Globals {
    storm: Gauge,
    unhealthy: Gauge,
    selected: Gauge,
    in_flight: Gauge,
    eval: Histogram,
}

/// Everything that does not change while the engine runs.
struct Shared<T> {
    policy: Policy,
    config: EngineConfig,
    checkers: Vec<Arc<dyn HealthChecker<T>>>,
    checker_names: Vec<String>,
    thresholds: Vec<Duration>,
    executor: Arc<dyn Executor<T>>,
    store: Arc<dyn StateStore>,
    observers: Vec<Arc<dyn Observer<T>>>,
    clock: Arc<dyn Clock>,
    remover: Option<Arc<dyn SeriesRemover>>,
    controls: Arc<Controls>,
    names: MetricNames,
}

impl<T> Shared<T> {
    fn count_error(&self, reason: &'static str) {
        let names = &self.names;
        names.counter(&names.labelled(&names.reconcile_errors_total, "reason", reason)).increment(1);
    }
}

/// The mutable bookkeeping of the engine.
struct State {
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    last_action_at: Option<Timestamp>,
    storm_active: bool,
    recheck: bool,
    pass: u64,
    outcomes: Vec<CheckOutcome>,
    globals: Globals,
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

impl<T: Target + 'static> EngineBuilder<T> {
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
                checker_names,
                thresholds,
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
                storm_active: false,
                recheck: false,
                pass: 0,
                outcomes: Vec::new(),
                globals,
            },
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

impl<T: Target + 'static> Engine<T> {
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
        self.state.slots.iter().map(|s| (s.name.as_str(), &s.record))
    }

    /// The next instant at which some node's decision can change without a
    /// new observation; `now` when held nodes should be looked at again.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.state.recheck {
            return Some(self.shared.clock.now());
        }
        self.state.slots.iter().filter_map(|s| s.deadline).min()
    }

    /// [`Engine::next_deadline`] as a tokio instant, for
    /// `tokio::time::sleep_until` (follows paused time with [`crate::TokioClock`]).
    #[must_use]
    pub fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        self.next_deadline().map(|t| self.shared.clock.instant_at(t))
    }

    /// Loads every stored record (after a restart), so remediation history
    /// and in-flight waits carry over. Returns how many were loaded.
    pub async fn restore(&mut self) -> Result<usize, StoreError> {
        let all = self.shared.store.list().await?;
        let n = all.len();
        for (name, stored) in all {
            if let Some(t) = stored.record.last_action_at {
                self.state.last_action_at = Some(self.state.last_action_at.map_or(t, |l| l.max(t)));
            }
            match self.state.index.get(&name) {
                Some(&i) => {
                    let slot = &mut self.state.slots[i];
                    slot.record = stored.record;
                    slot.version = Some(stored.version);
                    slot.needs_reload = false;
                }
                None => {
                    self.state.index.insert(name.clone(), self.state.slots.len());
                    self.state.slots.push(Slot::new(&name, stored.record, Some(stored.version)));
                }
            }
        }
        Ok(n)
    }

    /// Evaluates `targets` as the complete set: nodes the engine knows that
    /// are not among them are removed (their record and series deleted).
    ///
    /// Removal is skipped while the node source is marked stale
    /// ([`Controls::set_source_stale`]) and when `targets` is empty: an
    /// unsynced or failed listing must never erase remediation history. Use
    /// [`Engine::remove`] to forget nodes explicitly.
    pub async fn run_pass(&mut self, targets: &[T]) -> PassReport {
        let mut report = self.evaluate_inner(targets, true).await;
        if !targets.is_empty() && !self.shared.controls.source_stale() {
            let pass = self.state.pass;
            let gone: Vec<(String, Option<Version>)> = self
                .state
                .slots
                .iter()
                .filter(|s| s.seen != pass)
                .map(|s| (s.name.clone(), s.version.clone()))
                .collect();
            for (name, version) in gone {
                match self.forget(&name, version.as_ref()).await {
                    Ok(()) => report.removed.push(name),
                    Err(error) => {
                        self.shared.count_error("store_delete");
                        report.errors.push(NodeError { node: name, error });
                    }
                }
            }
        }
        self.finish_pass(&mut report, true);
        report
    }

    /// Evaluates some targets (for example the nodes a watch reported changed);
    /// other known nodes keep their state and still count in the budget.
    pub async fn evaluate(&mut self, targets: &[T]) -> PassReport {
        let mut report = self.evaluate_inner(targets, false).await;
        self.finish_pass(&mut report, false);
        report
    }

    /// Forgets a node: deletes its record from the store and its metric series.
    pub async fn remove(&mut self, node: &str) -> Result<(), StoreError> {
        self.forget(node, None).await
    }

    /// Deletes a node's record (guarded by `expected` when given) and series.
    async fn forget(&mut self, node: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        self.shared.store.delete(node, expected).await?;
        if let Some(i) = self.state.index.remove(node) {
            let slot = self.state.slots.swap_remove(i);
            if let Some(moved) = self.state.slots.get(i) {
                self.state.index.insert(moved.name.clone(), i);
            }
            drop(slot.series);
        }
        if let Some(remover) = &self.shared.remover {
            for (kind, key) in self.shared.names.node_series(node, &self.shared.checker_names) {
                remover.remove_series(kind, &key);
            }
        }
        Ok(())
    }

    /// The cluster budget over the selected nodes: with `only_seen`, the nodes
    /// of the current full pass (nodes about to be removed do not count).
    fn budget(&self, only_seen: bool) -> Budget {
        let s = &self.state;
        let c = &self.shared.controls;
        let count = |f: &dyn Fn(&Slot) -> bool| {
            let n = s.slots.iter().filter(|slot| (!only_seen || slot.seen == s.pass) && f(slot)).count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        Budget {
            total: count(&|_| true),
            unhealthy: count(&|slot| slot.failing),
            in_flight: count(&|slot| slot.record.phase.is_in_flight()),
            paused: c.paused(),
            source_stale: c.source_stale(),
            window_closed: c.window_closed(),
            last_action_at: s.last_action_at,
        }
    }

    fn finish_pass(&mut self, report: &mut PassReport, full: bool) {
        let budget = self.budget(full);
        let policy = &self.shared.policy;
        let max_in_flight = budget.max_in_flight(policy);
        let g = &self.state.globals;
        g.selected.set(f64::from(budget.total));
        g.unhealthy.set(f64::from(budget.unhealthy));
        g.in_flight.set(f64::from(budget.in_flight));
        // A node held by a gate that has since lifted must be looked at again.
        self.state.recheck = self.state.slots.iter().any(|s| match s.hold {
            Some(HoldReason::Paused) => !budget.paused,
            Some(HoldReason::SourceStale) => !budget.source_stale,
            Some(HoldReason::StormGuard) => !budget.storm(policy),
            Some(HoldReason::MaintenanceWindow) => !budget.window_closed,
            Some(HoldReason::MaxInFlight) => budget.in_flight < max_in_flight,
            _ => false,
        });
        report.next_deadline = self.next_deadline();
    }

    /// Ensures every target has a slot (loading stored records); returns the
    /// slot index per target (`None` where loading failed).
    async fn slots_for(&mut self, targets: &[T], report: &mut PassReport) -> Vec<Option<usize>> {
        let pass = self.state.pass;
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let name = t.name();
            let idx = match self.state.index.get(name) {
                Some(&i) if !self.state.slots[i].needs_reload => Some(i),
                existing => match self.shared.store.load(name).await {
                    Ok(stored) => {
                        let (record, version) = match stored {
                            Some(s) => (s.record, Some(s.version)),
                            None => (NodeRecord::new(t.facts().class), None),
                        };
                        if let Some(at) = record.last_action_at {
                            self.state.last_action_at = Some(self.state.last_action_at.map_or(at, |l| l.max(at)));
                        }
                        match existing {
                            Some(&i) => {
                                let slot = &mut self.state.slots[i];
                                slot.record = record;
                                slot.version = version;
                                slot.needs_reload = false;
                                Some(i)
                            }
                            None => {
                                let i = self.state.slots.len();
                                self.state.slots.push(Slot::new(name, record, version));
                                self.state.index.insert(name.to_owned(), i);
                                Some(i)
                            }
                        }
                    }
                    Err(error) => {
                        self.shared.count_error("store_load");
                        report.errors.push(NodeError { node: name.to_owned(), error });
                        // Keep the node counted (and not removed) while its state is
                        // unknown, and try it again after a back-off.
                        let i = match existing {
                            Some(&i) => i,
                            None => {
                                let i = self.state.slots.len();
                                let mut slot = Slot::new(name, NodeRecord::new(t.facts().class), None);
                                slot.needs_reload = true;
                                self.state.slots.push(slot);
                                self.state.index.insert(name.to_owned(), i);
                                i
                            }
                        };
                        let now = self.shared.clock.now();
                        let slot = &mut self.state.slots[i];
                        slot.seen = pass;
                        slot.errors = slot.errors.saturating_add(1);
                        slot.deadline = Some(now + self.shared.config.store_retry.delay(slot.errors));
                        None
                    }
                },
            };
            if let Some(i) = idx {
                let slot = &mut self.state.slots[i];
                slot.seen = pass;
                if slot.series.is_none() {
                    slot.series = Some(NodeSeries::register(&self.shared.names, name, &self.shared.checker_names));
                }
            }
            out.push(idx);
        }
        out
    }

    /// Runs every checker on every target into `outcomes` (row-major).
    async fn run_checks(shared: &Shared<T>, targets: &[T], slots: &[Option<usize>], outcomes: &mut Vec<CheckOutcome>) {
        let nc = shared.checkers.len();
        outcomes.clear();
        outcomes.resize(targets.len() * nc, CheckOutcome::Pass);
        let mut pending: Vec<(usize, usize)> = Vec::new();
        for (ti, t) in targets.iter().enumerate() {
            if slots[ti].is_none() {
                continue;
            }
            for (ci, c) in shared.checkers.iter().enumerate() {
                match c.check_sync(t) {
                    Some(r) => outcomes[ti * nc + ci] = to_outcome(r),
                    None => pending.push((ti, ci)),
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let timeout = shared.config.check_timeout;
        let results: Vec<(usize, CheckOutcome)> = stream::iter(pending)
            .map(|(ti, ci)| {
                let checker = &shared.checkers[ci];
                let target = &targets[ti];
                async move {
                    let outcome = match tokio::time::timeout(timeout, checker.check(target)).await {
                        Ok(r) => to_outcome(r),
                        Err(_) => CheckOutcome::fail_with("CheckTimeout", format!("no answer within {timeout:?}")),
                    };
                    (ti * nc + ci, outcome)
                }
            })
            .buffer_unordered(shared.config.check_concurrency)
            .collect()
            .await;
        for (i, o) in results {
            outcomes[i] = o;
        }
    }

    async fn evaluate_inner(&mut self, targets: &[T], full: bool) -> PassReport {
        let started = tokio::time::Instant::now();
        self.state.pass += 1;
        let mut report = PassReport { evaluated: targets.len(), ..PassReport::default() };
        let slots = self.slots_for(targets, &mut report).await;
        let mut outcomes = std::mem::take(&mut self.state.outcomes);
        Self::run_checks(&self.shared, targets, &slots, &mut outcomes).await;
        let nc = self.shared.checkers.len();

        for (ti, slot) in slots.iter().enumerate() {
            if let Some(si) = *slot {
                self.state.slots[si].failing = outcomes[ti * nc..(ti + 1) * nc].iter().any(CheckOutcome::is_fail);
            }
        }
        let mut now = self.shared.clock.now();
        let mut budget = self.budget(full);
        let storm = budget.storm(&self.shared.policy);
        report.storm_guard = storm;
        if storm != self.state.storm_active {
            self.state.storm_active = storm;
            self.state.globals.storm.set(if storm { 1.0 } else { 0.0 });
            let event = StormEvent {
                active: storm,
                unhealthy: budget.unhealthy,
                total: budget.total,
                limit: self.shared.policy.gates.max_unhealthy.resolve_ceil(budget.total),
                at: now,
            };
            for o in &self.shared.observers {
                o.on_storm_guard(&event);
            }
        }

        // Round 1 decides every target; later rounds re-decide the nodes that
        // just acted (a finished drain continues with the replacement; a
        // failure sets the back-off deadline). Every decided action is
        // performed before the loop ends; the machine never chains more than
        // three actions, the bound only guards against a bug.
        let mut round: Vec<usize> = (0..targets.len()).filter(|&ti| slots[ti].is_some()).collect();
        let mut first = true;
        for _ in 0..MAX_ROUNDS {
            if round.is_empty() {
                break;
            }
            if !first {
                // Actions may have taken minutes: decide follow-ups with the
                // current time and the operator switches as they are now.
                now = self.shared.clock.now();
                let c = &self.shared.controls;
                budget.paused = c.paused();
                budget.source_stale = c.source_stale();
                budget.window_closed = c.window_closed();
            }
            let mut planned = Vec::new();
            for &ti in &round {
                let Some(si) = slots[ti] else { continue };
                if let Some(p) = self
                    .decide(
                        &targets[ti],
                        ti,
                        si,
                        &outcomes[ti * nc..(ti + 1) * nc],
                        &mut budget,
                        now,
                        first,
                        &mut report,
                    )
                    .await
                {
                    planned.push(p);
                }
            }
            first = false;
            round = self.perform(targets, planned, &mut report).await;
        }
        for &ti in &round {
            // Still chaining after MAX_ROUNDS: look at these nodes again at once.
            if let Some(si) = slots[ti] {
                self.state.slots[si].deadline = Some(now);
            }
        }
        self.state.outcomes = outcomes;
        self.state.globals.eval.record(started.elapsed().as_secs_f64());
        report
    }

    /// Steps one node, persists the decision with compare-and-swap, and
    /// returns the action to perform.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &mut self,
        target: &T,
        ti: usize,
        si: usize,
        outcomes: &[CheckOutcome],
        budget: &mut Budget,
        now: Timestamp,
        emit_checks: bool,
        report: &mut PassReport,
    ) -> Option<Planned> {
        let shared = &self.shared;
        let facts = target.facts();
        let checks: Vec<Check<'_>> = shared
            .checker_names
            .iter()
            .zip(&shared.thresholds)
            .zip(outcomes)
            .map(|((name, &threshold), outcome)| Check { name, threshold, outcome })
            .collect();
        let obs = Observation { checks: &checks, facts };
        let mut attempts = 0;
        let decision: Outline = loop {
            let slot = &mut self.state.slots[si];
            let was_in_flight = slot.record.phase.is_in_flight();
            let d = machine::step(std::mem::take(&mut slot.record), &obs, &shared.policy, budget, now);
            if !d.changed {
                break Outline::keep(d, slot);
            }
            match shared.store.save(&slot.name, &d.record, slot.version.as_ref()).await {
                Ok(v) => {
                    let slot = &mut self.state.slots[si];
                    slot.version = Some(v);
                    if d.action.is_some_and(Action::is_disruptive) {
                        budget.last_action_at = Some(now);
                        self.state.last_action_at = Some(now);
                    }
                    match (was_in_flight, d.record.phase.is_in_flight()) {
                        (false, true) => budget.in_flight += 1,
                        (true, false) => budget.in_flight = budget.in_flight.saturating_sub(1),
                        _ => {}
                    }
                    break Outline::keep(d, slot);
                }
                Err(e) if e.is_conflict() && attempts < shared.config.conflict_retries => {
                    attempts += 1;
                    report.conflicts += 1;
                    match shared.store.load(&self.state.slots[si].name).await {
                        Ok(stored) => {
                            let slot = &mut self.state.slots[si];
                            match stored {
                                Some(s) => {
                                    slot.record = s.record;
                                    slot.version = Some(s.version);
                                }
                                None => {
                                    slot.record = NodeRecord::new(facts.class);
                                    slot.version = None;
                                }
                            }
                        }
                        Err(error) => {
                            self.state.slots[si].record = d.record;
                            self.store_failed(si, "store_load", error, now, report);
                            return None;
                        }
                    }
                }
                Err(error) => {
                    self.state.slots[si].record = d.record;
                    let reason = if error.is_conflict() { "store_conflict" } else { "store_save" };
                    self.store_failed(si, reason, error, now, report);
                    return None;
                }
            }
        };

        let slot = &mut self.state.slots[si];
        slot.deadline = decision.next_deadline;
        slot.errors = 0;
        if let Some(series) = &slot.series {
            if emit_checks {
                for ((pass, fail), outcome) in series.checks.iter().zip(outcomes) {
                    match outcome {
                        CheckOutcome::Pass => pass.increment(1),
                        CheckOutcome::Fail { .. } => fail.increment(1),
                        CheckOutcome::Skip { .. } => {}
                    }
                }
            }
            series.set_phase(slot.record.phase);
            let unhealthy_for = slot.record.unhealthy_since.map_or(0.0, |t| now.saturating_since(t).as_secs_f64());
            series.unhealthy.set(unhealthy_for);
        }
        let new_hold = decision.hold.map(|h| h.reason);
        if let Some(h) = &decision.hold {
            report.held.push((slot.name.clone(), h.reason));
            if slot.hold != new_hold {
                let names = &shared.names;
                names.counter(&names.labelled(&names.actions_held_total, "reason", h.reason.as_str())).increment(1);
                for o in &shared.observers {
                    o.on_hold(target, &HoldEvent { node: &slot.name, hold: h, at: now });
                }
            }
        }
        slot.hold = new_hold;
        if let Some(change) = decision.transition {
            report.transitions.push((slot.name.clone(), change));
            let event = TransitionEvent {
                node: &slot.name,
                from: change.from,
                to: change.to,
                at: now,
                record: &slot.record,
                mode: decision.mode,
            };
            for o in &shared.observers {
                o.on_transition(target, &event);
            }
        }
        decision.action.map(|action| Planned { target: ti, slot: si, action, mode: decision.mode, started_at: now })
    }

    /// Records a store failure for a node: its in-memory record may now differ
    /// from the store, so it is reloaded before the next decision, which comes
    /// after a growing back-off (never a busy loop, never forgotten).
    fn store_failed(
        &mut self,
        si: usize,
        reason: &'static str,
        error: StoreError,
        now: Timestamp,
        report: &mut PassReport,
    ) {
        self.shared.count_error(reason);
        let slot = &mut self.state.slots[si];
        slot.needs_reload = true;
        slot.errors = slot.errors.saturating_add(1);
        slot.deadline = Some(now + self.shared.config.store_retry.delay(slot.errors));
        report.errors.push(NodeError { node: slot.name.clone(), error });
    }

    /// Performs planned actions concurrently, folds their outcomes into the
    /// records and returns the targets to decide again.
    async fn perform(&mut self, targets: &[T], planned: Vec<Planned>, report: &mut PassReport) -> Vec<usize> {
        if planned.is_empty() {
            return Vec::new();
        }
        let executor = Arc::clone(&self.shared.executor);
        let config = &self.shared.config;
        let results: Vec<Option<ExecError>> = futures_util::future::join_all(planned.iter().map(|p| {
            let executor = &executor;
            let target = &targets[p.target];
            let limit = config.timeout_for(p.action);
            async move {
                match p.mode {
                    Mode::Monitor => None,
                    Mode::Active => match tokio::time::timeout(limit, executor.execute(p.action, target)).await {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e),
                        Err(_) => Some(ExecError::Timeout { action: p.action, after: limit }),
                    },
                }
            }
        }))
        .await;

        let mut again = Vec::new();
        for (p, error) in planned.into_iter().zip(results) {
            let now = self.shared.clock.now();
            let names = &self.shared.names;
            let node = self.state.slots[p.slot].name.clone();
            names.counter(&names.action_key(&node, p.action, p.mode)).increment(1);
            if error.is_some() {
                names.counter(&names.failure_key(&node, p.action)).increment(1);
            }
            report.actions.push(ActionRecord {
                node: node.clone(),
                action: p.action,
                mode: p.mode,
                failure: error.as_ref().map(ToString::to_string),
            });
            for o in &self.shared.observers {
                o.on_action(
                    &targets[p.target],
                    &ActionEvent { node: &node, action: p.action, mode: p.mode, at: now, error: error.as_ref() },
                );
            }
            if self.record_outcome(&targets[p.target], &p, error.is_none(), now, report).await {
                again.push(p.target);
            }
        }
        again
    }

    /// Applies an action's outcome to the node's record and persists it;
    /// returns whether the node should be decided again (whenever the
    /// outcome was recorded).
    async fn record_outcome(
        &mut self,
        target: &T,
        p: &Planned,
        ok: bool,
        now: Timestamp,
        report: &mut PassReport,
    ) -> bool {
        let shared = &self.shared;
        let mut attempts = 0;
        loop {
            let slot = &mut self.state.slots[p.slot];
            // Only fold the outcome into the record of the decision that asked
            // for it; otherwise decide again from the record as it now is.
            let ours = match p.action {
                Action::Uncordon => slot.record.cordoned && slot.record.phase == Phase::Healthy,
                _ => slot.record.last_action == Some(p.action) && slot.record.last_action_at == Some(p.started_at),
            };
            if !ours {
                return true;
            }
            let applied = machine::apply_outcome(slot.record.clone(), p.action, ok, &shared.policy, now);
            if !applied.changed {
                return true;
            }
            match shared.store.save(&slot.name, &applied.record, slot.version.as_ref()).await {
                Ok(v) => {
                    let slot = &mut self.state.slots[p.slot];
                    slot.version = Some(v);
                    slot.record = applied.record;
                    if let Some(change) = applied.transition {
                        report.transitions.push((slot.name.clone(), change));
                        let event = TransitionEvent {
                            node: &slot.name,
                            from: change.from,
                            to: change.to,
                            at: now,
                            record: &slot.record,
                            mode: p.mode,
                        };
                        for o in &shared.observers {
                            o.on_transition(target, &event);
                        }
                    }
                    if let Some(series) = &slot.series {
                        series.set_phase(slot.record.phase);
                    }
                    return true;
                }
                Err(e) if e.is_conflict() && attempts < shared.config.conflict_retries => {
                    attempts += 1;
                    report.conflicts += 1;
                    let name = slot.name.clone();
                    match shared.store.load(&name).await {
                        Ok(Some(s)) => {
                            let slot = &mut self.state.slots[p.slot];
                            slot.record = s.record;
                            slot.version = Some(s.version);
                        }
                        Ok(None) => {
                            // Deleted meanwhile (the node left): nothing to record.
                            let slot = &mut self.state.slots[p.slot];
                            slot.needs_reload = true;
                            slot.deadline = Some(now + self.shared.config.store_retry.delay(1));
                            return false;
                        }
                        Err(error) => {
                            self.store_failed(p.slot, "store_load", error, now, report);
                            return false;
                        }
                    }
                }
                Err(error) => {
                    self.store_failed(p.slot, "store_save", error, now, report);
                    return false;
                }
            }
        }
    }
}

/// A decision whose record has moved into its slot.
struct Outline {
    action: Option<Action>,
    mode: Mode,
    transition: Option<PhaseChange>,
    hold: Option<crate::machine::Hold>,
    next_deadline: Option<Timestamp>,
}

impl Outline {
    fn keep(d: Decision, slot: &mut Slot) -> Self {
        slot.record = d.record;
        Outline {
            action: d.action,
            mode: d.mode,
            transition: d.transition,
            hold: d.hold,
            next_deadline: d.next_deadline,
        }
    }
}

fn to_outcome(r: crate::checker::CheckResult) -> CheckOutcome {
    match r {
        Ok(o) => o,
        Err(e) => CheckOutcome::fail_with("CheckError", e.to_string()),
    }
}
