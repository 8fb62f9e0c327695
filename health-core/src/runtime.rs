//! The driver loop that ships with the crate: [`Runtime`] owns an
//! [`Engine`] and the current targets, and reacts to everything that can
//! change a decision.
//!
//! It applies complete target sets and incremental upserts and deletions
//! from a stream, sleeps until the engine's next deadline, wakes on
//! [`crate::Controls`] changes and on finished actions, and re-decides only
//! what is due or changed. On shutdown it starts nothing new and waits for
//! the actions in flight up to a grace period.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use health_core::*;
//!
//! #[derive(Clone)]
//! struct Vm { name: String, responding: bool }
//! impl Target for Vm {
//!     fn name(&self) -> &str { &self.name }
//!     fn facts(&self) -> NodeFacts { NodeFacts::default() }
//! }
//!
//! struct PowerCycle;
//! #[async_trait]
//! impl Executor<Vm> for PowerCycle {
//!     async fn execute(&self, _: Action, _: &Vm) -> Result<(), ExecError> { Ok(()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), EngineError> {
//! let ping = FnChecker::new("Ping", Duration::from_secs(60), |vm: &Vm| {
//!     if vm.responding { CheckOutcome::Pass } else { CheckOutcome::fail("NoAnswer") }
//! });
//! let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(PowerCycle))
//!     .policy(Policy::default().with_monitor_only(false))
//!     .checker(ping)
//!     .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(1_000_000))))
//!     .build()?;
//!
//! let (updates, rx) = tokio::sync::mpsc::channel(16);
//! updates.send(TargetUpdate::Full(vec![Vm { name: "vm-1".into(), responding: false }])).await.unwrap();
//! // Stop after ten simulated minutes: the threshold passed, the VM was rebooted.
//! let shutdown = tokio::time::sleep(Duration::from_secs(600));
//! let stopped = Runtime::new(engine).run(runtime::updates_from(rx), shutdown).await;
//! assert_eq!(stopped.engine.record("vm-1").unwrap().phase, Phase::WaitingReboot);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};

use crate::engine::{Engine, PassReport, Target};

/// The receiving end of a Tokio channel as the stream [`Runtime::run`] takes.
pub fn updates_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<TargetUpdate<T>>,
) -> impl Stream<Item = TargetUpdate<T>> + Unpin + Send {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) }))
}

/// A change of the target set.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TargetUpdate<T> {
    /// The complete set (a fresh listing): targets not in it depart.
    Full(Vec<T>),
    /// One target was added or changed.
    Upsert(T),
    /// One target was deleted (it departs; its record is kept for
    /// `forget_after`).
    Delete(String),
}

/// What happened in one step of the runtime, for a report sink.
#[derive(Debug)]
#[non_exhaustive]
pub enum RuntimeEvent<'a> {
    /// An evaluation (full, incremental, due or after an action) finished.
    Pass {
        /// Why it ran.
        cause: PassCause,
        /// What it did.
        report: &'a PassReport,
    },
    /// Shutdown began: nothing new starts; `in_flight` actions are awaited.
    ShuttingDown {
        /// Actions still running.
        in_flight: bool,
    },
}

/// Why the runtime evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PassCause {
    /// A complete target set arrived.
    Full,
    /// Targets were added or changed.
    Changed,
    /// A deadline came, or a gate lifted.
    Due,
    /// Operator controls changed.
    Controls,
    /// Actions finished: their outcome was folded and their nodes decided again.
    Completion,
}

/// The runtime stopped.
#[non_exhaustive]
pub struct Stopped<T> {
    /// The engine, with every record as it was left.
    pub engine: Engine<T>,
    /// Whether actions were still running when the grace ran out (their
    /// records say they were started; a restarted agent waits them out).
    pub abandoned: bool,
}

type Sink = Box<dyn FnMut(&RuntimeEvent<'_>) + Send>;
type Query<T> = Box<dyn FnOnce(&Engine<T>) + Send>;

/// Asks a running [`Runtime`] about its engine (for an admin API or a
/// heartbeat): the question runs between two evaluations, so it sees one
/// consistent state. Cheap to clone.
pub struct Inspector<T> {
    tx: tokio::sync::mpsc::Sender<Query<T>>,
}

impl<T> Clone for Inspector<T> {
    fn clone(&self) -> Self {
        Inspector { tx: self.tx.clone() }
    }
}

impl<T> std::fmt::Debug for Inspector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector").field("closed", &self.tx.is_closed()).finish()
    }
}

impl<T: 'static> Inspector<T> {
    /// Runs `f` on the engine between two evaluations and returns what it
    /// returned; `None` once the runtime has stopped. It waits while a pass
    /// runs (bound it with a timeout).
    pub async fn inspect<R: Send + 'static>(&self, f: impl FnOnce(&Engine<T>) -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let query: Query<T> = Box::new(move |engine| {
            let _ = tx.send(f(engine));
        });
        self.tx.send(query).await.ok()?;
        rx.await.ok()
    }
}

/// Owns an [`Engine`] and its targets, and runs the loop.
pub struct Runtime<T> {
    engine: Engine<T>,
    /// Keyed by each target's shared name (no copy of it).
    targets: HashMap<Arc<str>, T>,
    grace: Duration,
    sink: Option<Sink>,
    queries: tokio::sync::mpsc::Receiver<Query<T>>,
    inspector: Inspector<T>,
}

impl<T: Target + Clone + 'static> Runtime<T> {
    /// A runtime around `engine` (30 s shutdown grace, no report sink).
    #[must_use]
    pub fn new(engine: Engine<T>) -> Self {
        let (tx, queries) = tokio::sync::mpsc::channel(16);
        Runtime {
            engine,
            targets: HashMap::new(),
            grace: Duration::from_secs(30),
            sink: None,
            queries,
            inspector: Inspector { tx },
        }
    }

    /// A handle that asks the running engine questions (see [`Inspector`]).
    #[must_use]
    pub fn inspector(&self) -> Inspector<T> {
        self.inspector.clone()
    }

    /// How long shutdown waits for actions in flight.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Calls `sink` after every evaluation (for logs, health, metrics).
    #[must_use]
    pub fn with_sink(mut self, sink: impl FnMut(&RuntimeEvent<'_>) + Send + 'static) -> Self {
        self.sink = Some(Box::new(sink));
        self
    }

    /// The engine (records, controls).
    #[must_use]
    pub fn engine(&self) -> &Engine<T> {
        &self.engine
    }

    fn emit(&mut self, cause: PassCause, report: &PassReport) {
        if let Some(sink) = &mut self.sink {
            sink(&RuntimeEvent::Pass { cause, report });
        }
    }

    fn lookup<S: AsRef<str>>(&self, names: &[S]) -> Vec<T> {
        names.iter().filter_map(|n| self.targets.get(n.as_ref()).cloned()).collect()
    }

    /// Runs until `shutdown` resolves or `updates` ends, then stops
    /// starting actions, waits for those in flight up to the grace, and
    /// returns the engine.
    pub async fn run<S, F>(mut self, updates: S, shutdown: F) -> Stopped<T>
    where
        S: Stream<Item = TargetUpdate<T>> + Unpin,
        F: Future<Output = ()>,
    {
        let mut updates = updates.fuse();
        let mut shutdown = std::pin::pin!(shutdown);
        let controls = self.engine.controls();
        loop {
            let wake = self.engine.next_wakeup();
            let running = self.engine.has_running();
            let event = tokio::select! {
                biased;
                () = &mut shutdown => Wake::Shutdown,
                () = self.engine.wait_completion(), if running => Wake::Completion,
                // Before updates: a busy cluster always has an update ready,
                // and a question is answered in microseconds.
                Some(q) = self.queries.recv() => Wake::Query(q),
                u = updates.next() => match u {
                    Some(u) => Wake::Update(u),
                    None => Wake::Shutdown,
                },
                () = controls.changed() => Wake::Controls,
                () = sleep_until(wake) => Wake::Due,
            };
            match event {
                Wake::Shutdown => break,
                Wake::Query(q) => q(&self.engine),
                Wake::Completion => {
                    let (nodes, mut report) = self.engine.fold_completions().await;
                    let again = self.lookup(&nodes);
                    if !again.is_empty() {
                        let r = self.engine.evaluate(&again).await;
                        merge(&mut report, r);
                    }
                    self.emit(PassCause::Completion, &report);
                }
                Wake::Update(first) => {
                    // Take every update already waiting, then evaluate once.
                    let mut batch = vec![first];
                    while let Some(Some(u)) = updates.next().now_or_never() {
                        batch.push(u);
                    }
                    self.apply(batch).await;
                }
                Wake::Controls => {
                    let all: Vec<T> = self.targets.values().cloned().collect();
                    let report = self.engine.evaluate(&all).await;
                    self.emit(PassCause::Controls, &report);
                }
                Wake::Due => {
                    let due = self.lookup(&self.engine.due());
                    let report = self.engine.evaluate(&due).await;
                    self.emit(PassCause::Due, &report);
                }
            }
        }
        self.stop().await
    }

    async fn apply(&mut self, batch: Vec<TargetUpdate<T>>) {
        let mut full = None;
        // In arrival order, each name once (a set: a burst of updates is
        // not quadratic).
        let mut changed: Vec<Arc<str>> = Vec::new();
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        for u in batch {
            match u {
                TargetUpdate::Full(all) => {
                    self.targets = all.into_iter().map(|t| (t.shared_name(), t)).collect();
                    full = Some(());
                    changed.clear();
                    seen.clear();
                }
                TargetUpdate::Upsert(t) => {
                    let name = t.shared_name();
                    self.targets.insert(Arc::clone(&name), t);
                    if seen.insert(Arc::clone(&name)) {
                        changed.push(name);
                    }
                }
                TargetUpdate::Delete(name) => {
                    self.targets.remove(name.as_str());
                    if seen.remove(name.as_str()) {
                        changed.retain(|n| **n != *name);
                    }
                    if full.is_none() {
                        self.engine.depart(&name);
                    }
                }
            }
        }
        if full.is_some() {
            let all: Vec<T> = self.targets.values().cloned().collect();
            let report = self.engine.sync(&all).await;
            self.emit(PassCause::Full, &report);
        } else if !changed.is_empty() {
            let targets = self.lookup(&changed);
            let report = self.engine.evaluate(&targets).await;
            self.emit(PassCause::Changed, &report);
        }
    }

    async fn stop(mut self) -> Stopped<T> {
        let in_flight = self.engine.has_running();
        if let Some(sink) = &mut self.sink {
            sink(&RuntimeEvent::ShuttingDown { in_flight });
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut abandoned = false;
        while self.engine.has_running() {
            tokio::select! {
                () = self.engine.wait_completion() => {
                    // Record the outcome; start nothing new.
                    let (_, report) = self.engine.fold_completions().await;
                    self.emit(PassCause::Completion, &report);
                }
                () = tokio::time::sleep_until(deadline) => {
                    abandoned = true;
                    break;
                }
            }
        }
        Stopped { engine: self.engine, abandoned }
    }
}

enum Wake<T> {
    Shutdown,
    Query(Query<T>),
    Completion,
    Update(TargetUpdate<T>),
    Controls,
    Due,
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn merge(into: &mut PassReport, other: PassReport) {
    into.merge(other);
}
