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

use std::collections::{HashMap, VecDeque};
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
    /// How long a departed node (absent from the target set) keeps its
    /// record and series before they are deleted; a node that comes back
    /// within it keeps its history. Default 30m.
    pub forget_after: Duration,
    /// A checker that errs (its own failure, a timeout, a panic: not a
    /// finding about the node) counts as failing only after erring
    /// continuously this long; before, its check is skipped. Default 5m.
    pub error_grace: Duration,
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
            forget_after: Duration::from_secs(30 * 60),
            error_grace: Duration::from_secs(5 * 60),
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

    /// Sets how long a departed node keeps its record.
    #[must_use]
    pub fn with_forget_after(mut self, d: Duration) -> Self {
        self.forget_after = d;
        self
    }

    /// Sets how long a checker may err before it counts as failing.
    #[must_use]
    pub fn with_error_grace(mut self, d: Duration) -> Self {
        self.error_grace = d;
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

/// A finished action, waiting to be folded into its node's record.
#[derive(Clone)]
struct Completion<T> {
    node: String,
    action: Action,
    mode: Mode,
    started_at: Timestamp,
    target: T,
    error: Option<Arc<ExecError>>,
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

/// Calls every observer, containing panics: a panicking observer is logged
/// and the engine goes on.
fn notify<T: ?Sized>(observers: &[Arc<dyn Observer<T>>], what: &'static str, call: impl Fn(&dyn Observer<T>)) {
    for o in observers {
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| call(o.as_ref()))) {
            tracing::error!(event = what, panic = %panic_message(p.as_ref()), "an observer panicked; the engine goes on");
        }
    }
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
#[must_use = "a pass report says what was done, held back and failed"]
#[non_exhaustive]
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
    /// Nodes that left the target set this pass (kept for `forget_after`).
    pub departed: Vec<String>,
}

impl PassReport {
    pub(crate) fn merge(&mut self, other: PassReport) {
        self.evaluated += other.evaluated;
        self.transitions.extend(other.transitions);
        self.actions.extend(other.actions);
        self.held.extend(other.held);
        self.conflicts += other.conflicts;
        self.removed.extend(other.removed);
        self.errors.extend(other.errors);
        self.storm_guard |= other.storm_guard;
        self.departed.extend(other.departed);
        self.next_deadline = other.next_deadline;
    }
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
    /// An action of this node is running in a task.
    running: bool,
    /// The record could not be loaded: the node counts as unhealthy.
    unknown: bool,
    /// When the node left the target set (its record is kept until
    /// `forget_after` has passed).
    departed_at: Option<Timestamp>,
    /// Per checker: since when it has been erring continuously.
    error_since: Vec<Option<Timestamp>>,
    /// The earliest end of an error grace, to decide again then.
    grace_until: Option<Timestamp>,
    /// The node's own time frame while it is being remediated: a wall
    /// instant and the monotonic instant it was read at. Its time advances
    /// with the monotonic clock, so a wall-clock step never shortens (or
    /// stretches) its waits.
    frame: Option<(Timestamp, Duration)>,
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
            running: false,
            unknown: false,
            departed_at: None,
            error_since: Vec::new(),
            grace_until: None,
            frame: None,
        }
    }

    /// Nothing time-critical is under way: the node may follow the wall clock.
    fn calm(&self) -> bool {
        matches!(self.record.phase, Phase::Healthy | Phase::Unknown)
            && !self.record.has_history()
            && !self.record.cordoned
            && !self.running
    }

    /// Re-anchors the node's frame on the wall clock while it is calm.
    fn anchor(&mut self, wall: Timestamp, mono: Duration) {
        if self.frame.is_none() || self.calm() {
            self.frame = Some((wall, mono));
        }
    }

    /// The node's current time: the wall clock while calm, else its frame
    /// advanced by monotonic time.
    fn local_now(&self, wall: Timestamp, mono: Duration) -> Timestamp {
        match self.frame {
            Some((t, m)) if !self.calm() => t + mono.saturating_sub(m),
            _ => wall,
        }
    }

    /// Whether the node occupies a `max_in_flight` slot: while its action
    /// runs, or within the wait that follows it (a node held in an in-flight
    /// phase past its wait does not block others).
    fn occupies_slot(&self, policy: &Policy, wall: Timestamp, mono: Duration) -> bool {
        if self.running {
            return true;
        }
        if !self.record.phase.is_in_flight() {
            return false;
        }
        let now = self.local_now(wall, mono);
        let wait = match self.record.phase {
            Phase::WaitingReboot => policy.reboot_wait_for(self.record.class),
            Phase::WaitingReplace => policy.escalation.replace_wait,
            // A drain occupies a slot while it runs; a drained node waiting
            // for its replacement does until the replacement is decided.
            Phase::Draining => return self.record.drained && self.hold.is_none(),
            _ => return false,
        };
        self.record.last_action_at.is_some_and(|at| now < at + wait)
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
    /// The monotonic instant of the last disruptive action started by this
    /// process (the cluster-wide minimum interval is measured on it).
    last_action_mono: Option<Duration>,
    /// The monotonic reading of the current decision round.
    mono: Duration,
    storm_active: bool,
    recheck: bool,
    pass: u64,
    outcomes: Vec<CheckOutcome>,
    /// Per outcome: the checker erred (rather than found the node unhealthy).
    errs: Vec<bool>,
    globals: Globals,
    /// The deadline handed out last, and whether it was already due then
    /// (two due deadlines in a row back off instead of spinning).
    due_streak: u32,
    next_deadline: Option<Timestamp>,
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
        self.state.slots.iter().map(|s| (s.name.as_str(), &s.record))
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
        let mut d =
            if self.state.recheck { Some(now) } else { self.state.slots.iter().filter_map(|s| s.deadline).min() };
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
        self.state
            .slots
            .iter()
            .filter(|s| {
                s.departed_at.is_none()
                    && !s.running
                    && (s.deadline.is_some_and(|d| d <= now) || (self.state.recheck && s.hold.is_some()))
            })
            .map(|s| s.name.clone())
            .collect()
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
            if let Some(t) = stored.record.last_action_at {
                self.state.last_action_at = Some(self.state.last_action_at.map_or(t, |l| l.max(t)));
            }
            match self.state.index.get(&name) {
                Some(&i) => {
                    let slot = &mut self.state.slots[i];
                    slot.record = stored.record;
                    slot.version = Some(stored.version);
                    slot.needs_reload = false;
                    slot.unknown = false;
                }
                None => {
                    self.state.index.insert(name.clone(), self.state.slots.len());
                    self.state.slots.push(Slot::new(&name, stored.record, Some(stored.version)));
                }
            }
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
        let mut report = self.evaluate_inner(targets, may_depart).await;
        self.sweep_departed(&mut report).await;
        self.finish_pass(&mut report);
        report
    }

    /// Marks one node departed (a watch saw it deleted): its record and
    /// series are kept for `forget_after`.
    pub fn depart(&mut self, node: &str) {
        let now = self.shared.clock.now();
        if let Some(&i) = self.state.index.get(node) {
            let slot = &mut self.state.slots[i];
            if slot.departed_at.is_none() {
                slot.departed_at = Some(now);
                slot.deadline = Some(now + self.shared.config.forget_after);
            }
        }
        self.refresh_deadline();
    }

    /// Evaluates some targets (for example the nodes a watch reported changed);
    /// other known nodes keep their state and still count in the budget.
    /// Departed nodes whose time has come are forgotten.
    pub async fn evaluate(&mut self, targets: &[T]) -> PassReport {
        let mut report = self.evaluate_inner(targets, false).await;
        self.sweep_departed(&mut report).await;
        self.finish_pass(&mut report);
        report
    }

    /// Forgets departed nodes whose `forget_after` has passed.
    async fn sweep_departed(&mut self, report: &mut PassReport) {
        if !self.state.slots.iter().any(|s| s.departed_at.is_some()) {
            return;
        }
        let now = self.shared.clock.now();
        let forget_after = self.shared.config.forget_after;
        let gone: Vec<(String, Option<Version>)> = self
            .state
            .slots
            .iter()
            .filter(|s| !s.running && s.departed_at.is_some_and(|t| now >= t + forget_after))
            .filter(|s| s.deadline.is_none_or(|d| d <= now))
            .map(|s| (s.name.clone(), s.version.clone()))
            .collect();
        for (name, version) in gone {
            match self.forget(&name, version.as_ref()).await {
                Ok(()) => report.removed.push(name),
                Err(error) => {
                    self.shared.count_error("store_delete");
                    if let Some(&i) = self.state.index.get(&name) {
                        let slot = &mut self.state.slots[i];
                        slot.errors = slot.errors.saturating_add(1);
                        slot.deadline = Some(now + self.shared.config.store_retry.delay(slot.errors));
                    }
                    report.errors.push(NodeError { node: name, error });
                }
            }
        }
    }

    /// Forgets a node: deletes its record from the store and its metric series.
    pub async fn remove(&mut self, node: &str) -> Result<(), StoreError> {
        let r = self.forget(node, None).await;
        self.refresh_deadline();
        r
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

    /// The cluster budget over the present (not departed) nodes. A node
    /// whose record cannot be loaded counts as unhealthy (fail-safe).
    fn budget(&self, now: Timestamp) -> Budget {
        let s = &self.state;
        let c = &self.shared.controls;
        let policy = &self.shared.policy;
        let mono = self.shared.clock.monotonic();
        let (mut total, mut unhealthy, mut in_flight) = (0u32, 0u32, 0u32);
        for slot in &s.slots {
            if slot.occupies_slot(policy, now, mono) {
                in_flight = in_flight.saturating_add(1);
            }
            if slot.departed_at.is_none() {
                total = total.saturating_add(1);
                if slot.failing || slot.unknown {
                    unhealthy = unhealthy.saturating_add(1);
                }
            }
        }
        Budget {
            total,
            unhealthy,
            in_flight,
            paused: c.paused(),
            source_stale: c.source_stale(),
            window_closed: c.window_closed(),
            last_action_at: s.last_action_at,
        }
    }

    fn finish_pass(&mut self, report: &mut PassReport) {
        let now = self.shared.clock.now();
        let budget = self.budget(now);
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
        report.next_deadline = self.refresh_deadline();
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
                existing => {
                    let existing = existing.copied();
                    match self.shared.store.load(name).await {
                        Ok(stored) => {
                            let now = self.shared.clock.now();
                            let (mut record, version) = match stored {
                                Some(s) => (s.record, Some(s.version)),
                                None => (NodeRecord::new(t.facts().class), None),
                            };
                            clamp_future(&mut record, now);
                            if let Some(at) = record.last_action_at {
                                self.state.last_action_at = Some(self.state.last_action_at.map_or(at, |l| l.max(at)));
                            }
                            match existing {
                                Some(i) => {
                                    let slot = &mut self.state.slots[i];
                                    slot.record = record;
                                    slot.version = version;
                                    slot.needs_reload = false;
                                    slot.unknown = false;
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
                            // Keep the node counted (as unhealthy: its state is
                            // unknown) and not removed, and try it again after a back-off.
                            let i = match existing {
                                Some(i) => i,
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
                            slot.unknown = true;
                            slot.departed_at = None;
                            slot.errors = slot.errors.saturating_add(1);
                            slot.deadline = Some(now + self.shared.config.store_retry.delay(slot.errors));
                            None
                        }
                    }
                }
            };
            if let Some(i) = idx {
                let slot = &mut self.state.slots[i];
                slot.seen = pass;
                if slot.departed_at.take().is_some() {
                    // Back within forget_after: history kept.
                    slot.deadline = None;
                }
                if slot.series.is_none() {
                    slot.series = Some(NodeSeries::register(&self.shared.names, name, &self.shared.checker_names));
                }
            }
            out.push(idx);
        }
        out
    }

    /// Runs every checker on every target into `outcomes` (row-major). A
    /// panicking checker is a failing check with reason `CheckPanicked`.
    async fn run_checks(
        shared: &Shared<T>,
        targets: &[T],
        slots: &[Option<usize>],
        outcomes: &mut Vec<CheckOutcome>,
        errs: &mut Vec<bool>,
    ) {
        let nc = shared.checkers.len();
        let ctx = crate::checker::CheckContext::at(shared.clock.now());
        let ctx = &ctx;
        outcomes.clear();
        outcomes.resize(targets.len() * nc, CheckOutcome::Pass);
        errs.clear();
        errs.resize(targets.len() * nc, false);
        let mut pending: Vec<(usize, usize)> = Vec::new();
        for (ti, t) in targets.iter().enumerate() {
            if slots[ti].is_none() {
                continue;
            }
            for (ci, c) in shared.checkers.iter().enumerate() {
                let i = ti * nc + ci;
                match std::panic::catch_unwind(AssertUnwindSafe(|| c.check_sync(t, ctx))) {
                    Ok(Some(r)) => (outcomes[i], errs[i]) = to_outcome(r),
                    Ok(None) => pending.push((ti, ci)),
                    Err(p) => (outcomes[i], errs[i]) = (panicked(c.name(), t.name(), p.as_ref()), true),
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let timeout = shared.config.check_timeout;
        let results: Vec<(usize, (CheckOutcome, bool))> = stream::iter(pending)
            .map(|(ti, ci)| {
                let checker = &shared.checkers[ci];
                let target = &targets[ti];
                async move {
                    let check = AssertUnwindSafe(checker.check(target, ctx)).catch_unwind();
                    let outcome = match tokio::time::timeout(timeout, check).await {
                        Ok(Ok(r)) => to_outcome(r),
                        Ok(Err(p)) => (panicked(checker.name(), target.name(), p.as_ref()), true),
                        Err(_) => {
                            (CheckOutcome::fail_with("CheckTimeout", format!("no answer within {timeout:?}")), true)
                        }
                    };
                    (ti * nc + ci, outcome)
                }
            })
            .buffer_unordered(shared.config.check_concurrency)
            .collect()
            .await;
        for (i, (o, e)) in results {
            outcomes[i] = o;
            errs[i] = e;
        }
    }

    /// Evaluates `targets`; with `complete`, they are the whole set and
    /// known nodes not among them depart first (so they leave the budget).
    async fn evaluate_inner(&mut self, targets: &[T], complete: bool) -> PassReport {
        let started = tokio::time::Instant::now();
        self.state.pass += 1;
        let mut report = PassReport { evaluated: targets.len(), ..PassReport::default() };
        let slots = self.slots_for(targets, &mut report).await;
        if complete {
            let (pass, now, forget_after) = (self.state.pass, self.shared.clock.now(), self.shared.config.forget_after);
            for s in &mut self.state.slots {
                if s.seen != pass && s.departed_at.is_none() {
                    s.departed_at = Some(now);
                    s.deadline = Some(now + forget_after);
                    report.departed.push(s.name.clone());
                }
            }
        }
        let mut outcomes = std::mem::take(&mut self.state.outcomes);
        let mut errs = std::mem::take(&mut self.state.errs);
        Self::run_checks(&self.shared, targets, &slots, &mut outcomes, &mut errs).await;
        let nc = self.shared.checkers.len();
        let mut now = self.shared.clock.now();
        self.state.mono = self.shared.clock.monotonic();
        let grace = self.shared.config.error_grace;

        for (ti, slot) in slots.iter().enumerate() {
            let Some(si) = *slot else { continue };
            let s = &mut self.state.slots[si];
            if s.error_since.len() != nc {
                s.error_since.resize(nc, None);
            }
            s.grace_until = None;
            for ci in 0..nc {
                let i = ti * nc + ci;
                if !errs[i] {
                    s.error_since[ci] = None;
                    continue;
                }
                // A checker's own error is not a finding about the node: skip
                // it until it has lasted the grace.
                let since = *s.error_since[ci].get_or_insert(now);
                if now < since + grace
                    && let CheckOutcome::Fail { reason, .. } = &outcomes[i]
                {
                    s.grace_until = Some(s.grace_until.map_or(since + grace, |g| g.min(since + grace)));
                    outcomes[i] = CheckOutcome::Skip { reason: reason.clone() };
                }
            }
            s.failing = outcomes[ti * nc..(ti + 1) * nc].iter().any(CheckOutcome::is_fail);
        }
        let mut budget = self.budget(now);
        // A stale source holds everything, like a storm: say so the same way
        // (once there are nodes to hold).
        let storm = budget.storm(&self.shared.policy) || (budget.source_stale && budget.total > 0);
        report.storm_guard = storm;
        if storm != self.state.storm_active {
            self.state.storm_active = storm;
            self.state.globals.storm.set(if storm { 1.0 } else { 0.0 });
            let event = StormEvent {
                active: storm,
                unhealthy: budget.unhealthy,
                total: budget.total,
                limit: self.shared.policy.gates.max_unhealthy.resolve_ceil(budget.total),
                source_stale: budget.source_stale,
                at: now,
            };
            notify(&self.shared.observers, "storm_guard", |o| o.on_storm_guard(&event));
        }

        // Round 1 decides every target. Actions in active mode run in tasks
        // and are decided again after they finish (from a new evaluation);
        // monitor-mode actions are recorded at once, and later rounds
        // re-decide those nodes. The machine never chains more than three
        // actions; the bound only guards against a bug.
        let mut round: Vec<usize> = (0..targets.len()).filter(|&ti| slots[ti].is_some()).collect();
        let mut first = true;
        for _ in 0..MAX_ROUNDS {
            if round.is_empty() {
                break;
            }
            if !first {
                now = self.shared.clock.now();
                self.state.mono = self.shared.clock.monotonic();
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
                        &errs[ti * nc..(ti + 1) * nc],
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
            // Still chaining after MAX_ROUNDS: look at these nodes again soon.
            if let Some(si) = slots[ti] {
                self.state.slots[si].deadline = Some(now);
            }
        }
        self.state.outcomes = outcomes;
        self.state.errs = errs;
        self.state.globals.eval.record(started.elapsed().as_secs_f64());
        report
    }

    /// Steps one node, persists the decision with compare-and-swap, and
    /// returns the action to perform. A node whose action is still running
    /// is not decided (its next step waits for the outcome).
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &mut self,
        target: &T,
        ti: usize,
        si: usize,
        outcomes: &[CheckOutcome],
        errs: &[bool],
        budget: &mut Budget,
        now: Timestamp,
        emit_checks: bool,
        report: &mut PassReport,
    ) -> Option<Planned> {
        if self.state.slots[si].running {
            return None;
        }
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
        let mono = self.state.mono;
        let wall = now;
        let mut local: Timestamp;
        let decision: Outline = loop {
            let slot = &mut self.state.slots[si];
            slot.anchor(wall, mono);
            local = slot.local_now(wall, mono);
            let was_in_flight = slot.occupies_slot(&shared.policy, wall, mono);
            // The cluster-wide last action, in this node's frame.
            let mut b = *budget;
            if let Some(m) = self.state.last_action_mono {
                b.last_action_at = Some(local - mono.saturating_sub(m));
            }
            // The record in memory changes only once the store has the new one.
            let d = machine::step(slot.record.clone(), &obs, &shared.policy, &b, local);
            if !d.changed {
                break Outline::keep(d, slot);
            }
            match shared.store.save(&slot.name, &d.record, slot.version.as_ref()).await {
                Ok(v) => {
                    let slot = &mut self.state.slots[si];
                    slot.version = Some(v);
                    if d.action.is_some_and(Action::is_disruptive) {
                        budget.last_action_at = Some(wall);
                        self.state.last_action_at = Some(wall);
                        self.state.last_action_mono = Some(mono);
                    }
                    let starts = d.action.is_some_and(Action::is_disruptive) && d.mode == Mode::Active;
                    let outline = Outline::keep(d, slot);
                    match (was_in_flight, starts || slot.occupies_slot(&shared.policy, wall, mono)) {
                        (false, true) => budget.in_flight += 1,
                        (true, false) => budget.in_flight = budget.in_flight.saturating_sub(1),
                        _ => {}
                    }
                    break outline;
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
                            self.store_failed(si, "store_load", error, now, report);
                            return None;
                        }
                    }
                }
                Err(error) => {
                    let reason = if error.is_conflict() { "store_conflict" } else { "store_save" };
                    self.store_failed(si, reason, error, now, report);
                    return None;
                }
            }
        };

        let slot = &mut self.state.slots[si];
        // The machine's deadline is in the node's frame; the driver sleeps on the wall clock.
        let next = decision
            .next_deadline
            .map(|d| if d >= local { wall + d.saturating_since(local) } else { wall - local.saturating_since(d) });
        slot.deadline = match (next, slot.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        slot.errors = 0;
        if let Some(series) = &slot.series {
            if emit_checks {
                for ((c, outcome), &erred) in series.checks.iter().zip(outcomes).zip(errs) {
                    match outcome {
                        _ if erred => c.error.increment(1),
                        CheckOutcome::Pass => c.pass.increment(1),
                        CheckOutcome::Fail { .. } => c.fail.increment(1),
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
                let event = HoldEvent { node: &slot.name, hold: h, at: now };
                notify(&shared.observers, "hold", |o| o.on_hold(target, &event));
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
            notify(&shared.observers, "transition", |o| o.on_transition(target, &event));
        }
        // The record stamps the action in the node's frame: so does the plan.
        decision.action.map(|action| Planned { target: ti, slot: si, action, mode: decision.mode, started_at: local })
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

    /// Starts planned actions: active ones in tasks (bounded by their
    /// timeout, panics contained), monitor-mode ones recorded at once.
    /// Returns the targets to decide again in this evaluation.
    async fn perform(&mut self, targets: &[T], planned: Vec<Planned>, report: &mut PassReport) -> Vec<usize> {
        let mut again = Vec::new();
        for p in planned {
            let node = self.state.slots[p.slot].name.clone();
            let target = targets[p.target].clone();
            match p.mode {
                Mode::Monitor => {
                    let c = Completion {
                        node,
                        action: p.action,
                        mode: p.mode,
                        started_at: p.started_at,
                        target,
                        error: None,
                    };
                    self.announce(&c);
                    if self.fold(&c, report).await.is_some() {
                        again.push(p.target);
                    }
                }
                Mode::Active => {
                    self.state.slots[p.slot].running = true;
                    let executor = Arc::clone(&self.shared.executor);
                    let limit = self.shared.config.timeout_for(p.action);
                    let (action, mode, started_at) = (p.action, p.mode, p.started_at);
                    self.running.spawn(async move {
                        let run = AssertUnwindSafe(executor.execute(action, &target)).catch_unwind();
                        let error = match tokio::time::timeout(limit, run).await {
                            Ok(Ok(Ok(()))) => None,
                            Ok(Ok(Err(e))) => Some(e),
                            Ok(Err(p)) => {
                                let message = panic_message(p.as_ref());
                                tracing::error!(node = %node, %action, panic = %message, "the executor panicked; its outcome is unknown");
                                Some(ExecError::Unknown { action, message: format!("the executor panicked: {message}") })
                            }
                            Err(_) => Some(ExecError::Timeout { action, after: limit }),
                        };
                        Completion { node, action, mode, started_at, target, error: error.map(Arc::new) }
                    });
                }
            }
        }
        again
    }

    /// Counts a finished action and tells the observers (once per action).
    fn announce(&self, c: &Completion<T>) {
        let names = &self.shared.names;
        let now = self.shared.clock.now();
        names.counter(&names.action_key(&c.node, c.action, c.mode)).increment(1);
        if c.error.is_some() {
            names.counter(&names.failure_key(&c.node, c.action)).increment(1);
        }
        let error = c.error.as_deref();
        let event = ActionEvent { node: &c.node, action: c.action, mode: c.mode, at: now, error };
        notify(&self.shared.observers, "action", |o| o.on_action(&c.target, &event));
    }

    /// Waits until an action finishes (at once if one already has, or if
    /// none runs). Cancel-safe: nothing is lost when the wait is dropped.
    pub async fn wait_completion(&mut self) {
        if !self.completions.is_empty() {
            return;
        }
        match self.running.join_next().await {
            Some(Ok(c)) => {
                self.announce(&c);
                self.completions.push_back(c);
            }
            // Only an aborted task (the engine is being dropped) ends so.
            Some(Err(e)) => tracing::error!(error = %e, "an action task ended without an outcome"),
            None => {}
        }
    }

    /// Folds every finished action into its node's record (CAS); returns the
    /// nodes to evaluate again (a fresh observation decides their next step)
    /// and what was done. A fold interrupted by cancellation is redone by
    /// the next call.
    pub async fn fold_completions(&mut self) -> (Vec<String>, PassReport) {
        let mut report = PassReport::default();
        let mut nodes = Vec::new();
        while let Some(c) = self.completions.front().cloned() {
            if let Some(node) = self.fold(&c, &mut report).await {
                nodes.push(node);
            }
            self.completions.pop_front();
        }
        self.finish_pass(&mut report);
        (nodes, report)
    }

    /// Folds one finished action; returns the node when it is to be decided
    /// again.
    async fn fold(&mut self, c: &Completion<T>, report: &mut PassReport) -> Option<String> {
        report.actions.push(ActionRecord {
            node: c.node.clone(),
            action: c.action,
            mode: c.mode,
            failure: c.error.as_ref().map(ToString::to_string),
        });
        let now = self.shared.clock.now();
        let si = *self.state.index.get(&c.node)?;
        let again = self.record_outcome(c, si, now, report).await;
        let slot = &mut self.state.slots[si];
        slot.running = false;
        // Decide the next step from a fresh evaluation, not from the
        // observation taken before the action.
        slot.deadline = Some(slot.deadline.map_or(now, |d| d.min(now)));
        again.then(|| c.node.clone())
    }

    /// Applies an action's outcome to the node's record and persists it;
    /// returns whether the node should be decided again (whenever the
    /// outcome was recorded).
    async fn record_outcome(&mut self, c: &Completion<T>, si: usize, now: Timestamp, report: &mut PassReport) -> bool {
        let shared = &self.shared;
        let mut attempts = 0;
        loop {
            let slot = &mut self.state.slots[si];
            // Only fold the outcome into the record of the decision that asked
            // for it; otherwise decide again from the record as it now is.
            let ours = match c.action {
                Action::Uncordon => slot.record.cordoned && slot.record.phase == Phase::Healthy,
                _ => slot.record.last_action == Some(c.action) && slot.record.last_action_at == Some(c.started_at),
            };
            if !ours {
                return true;
            }
            let local = slot.local_now(now, shared.clock.monotonic());
            let outcome = match c.error.as_deref() {
                None => machine::ActionOutcome::Succeeded,
                Some(ExecError::Unsupported { .. }) => machine::ActionOutcome::Unsupported,
                Some(ExecError::Unknown { .. } | ExecError::Timeout { .. }) => machine::ActionOutcome::Unknown,
                Some(_) => machine::ActionOutcome::Failed,
            };
            let applied = machine::apply_outcome(slot.record.clone(), c.action, outcome, &shared.policy, local);
            if !applied.changed {
                return true;
            }
            match shared.store.save(&slot.name, &applied.record, slot.version.as_ref()).await {
                Ok(v) => {
                    let slot = &mut self.state.slots[si];
                    slot.version = Some(v);
                    slot.record = applied.record;
                    if c.action == Action::Uncordon && c.error.is_some() && !slot.record.cordoned {
                        tracing::warn!(
                            node = %slot.name,
                            failures = slot.record.uncordon_failures,
                            "gave up uncordoning: the node stays cordoned until an operator uncordons it"
                        );
                    }
                    if let Some(change) = applied.transition {
                        report.transitions.push((slot.name.clone(), change));
                        let event = TransitionEvent {
                            node: &slot.name,
                            from: change.from,
                            to: change.to,
                            at: now,
                            record: &slot.record,
                            mode: c.mode,
                        };
                        notify(&shared.observers, "transition", |o| o.on_transition(&c.target, &event));
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
                            let slot = &mut self.state.slots[si];
                            slot.record = s.record;
                            slot.version = Some(s.version);
                        }
                        Ok(None) => {
                            // Deleted meanwhile (the node left): nothing to record.
                            let slot = &mut self.state.slots[si];
                            slot.needs_reload = true;
                            slot.deadline = Some(now + self.shared.config.store_retry.delay(1));
                            return false;
                        }
                        Err(error) => {
                            self.store_failed(si, "store_load", error, now, report);
                            return false;
                        }
                    }
                }
                Err(error) => {
                    self.store_failed(si, "store_save", error, now, report);
                    return false;
                }
            }
        }
    }
}

/// Moves timestamps stamped in the future (by a clock that was ahead) to
/// `now`, so such a record never holds a node or a slot longer than its wait.
fn clamp_future(record: &mut NodeRecord, now: Timestamp) {
    for t in [
        &mut record.unhealthy_since,
        &mut record.healthy_since,
        &mut record.last_transition_at,
        &mut record.last_action_at,
    ] {
        if t.is_some_and(|t| t > now) {
            *t = Some(now);
        }
    }
    // A back-off may legitimately end in the future, but not past the
    // longest back-off after a clamped action.
    if let (Some(nb), Some(at)) = (record.not_before, record.last_action_at)
        && nb > at + Duration::from_secs(7 * 24 * 3600)
    {
        record.not_before = Some(at);
    }
}

fn panicked(checker: &str, node: &str, payload: &(dyn std::any::Any + Send)) -> CheckOutcome {
    let message = panic_message(payload);
    tracing::error!(checker, node, panic = %message, "a checker panicked; counted as a failing check");
    CheckOutcome::fail_with("CheckPanicked", format!("the checker panicked: {message}"))
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

/// A checker's result as an outcome, and whether the checker erred.
fn to_outcome(r: crate::checker::CheckResult) -> (CheckOutcome, bool) {
    match r {
        Ok(o) => (o, false),
        Err(e) => (CheckOutcome::fail_with("CheckError", e.to_string()), true),
    }
}
