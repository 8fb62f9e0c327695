//! Recording what the engine sees and decides, and replaying it offline
//! under another policy ("what would it have done?").
//!
//! A [`TapeRecorder`] is an [`Observer`] that writes one JSON object per
//! line: a `start` line (the policy and the checkers), the records loaded at
//! start-up, every evaluation's observations (each target's facts, failure
//! domain labels and every checker's outcome reason, never a detail text),
//! every action outcome folded in, every departure, and every decision
//! (action, hold, phase change). [`replay`] runs a fresh engine over those
//! observations on a clock that reads the recorded times: under the policy
//! it was recorded with it reproduces the recorded decisions exactly; under
//! another one it shows what that policy would have done with the same
//! observations (an action the recording never saw is taken to succeed at
//! once, and the nodes' recorded health does not react to it).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use health_core::tape::{self, LineSink, TapeRecorder};
//! use health_core::*;
//!
//! #[derive(Clone)]
//! struct Vm(&'static str, bool);
//! impl Target for Vm {
//!     fn name(&self) -> &str { self.0 }
//!     fn facts(&self) -> NodeFacts { NodeFacts::default() }
//! }
//! struct Done;
//! #[async_trait::async_trait]
//! impl Executor<Vm> for Done {
//!     async fn execute(&self, _: Action, _: &Vm) -> Result<(), ExecError> { Ok(()) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let checker: Arc<dyn HealthChecker<Vm>> = Arc::new(FnChecker::new("Up", Duration::ZERO, |v: &Vm| {
//!     if v.1 { CheckOutcome::Pass } else { CheckOutcome::fail("Down") }
//! }));
//! let lines = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
//! let policy = Policy::default().with_domains(Domains::off());
//! let recorder = TapeRecorder::new(Box::new(Arc::clone(&lines)), &policy, &[Arc::clone(&checker)], &EngineConfig::default());
//! let mut engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(Done))
//!     .policy(policy)
//!     .checker_arc(checker)
//!     .observer(Arc::new(recorder))
//!     .build()
//!     .unwrap();
//! let _ = engine.run_pass(&[Vm("vm-1", false)]).await;
//!
//! let text = lines.lock().join("\n");
//! let replayed = tape::replay(&tape::Text(text), None).await.unwrap();
//! assert_eq!(replayed.decisions, replayed.recorded, "the same decisions");
//! assert_eq!(replayed.recorded[0].to_string(), "Unknown -> WaitingReboot");
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::checker::{CheckContext, CheckError, CheckResult, HealthChecker};
use crate::domain::{Action, CheckOutcome, NodeClass, NodeFacts, NodeRecord, Repair};
use crate::engine::{Engine, EngineConfig, Target};
use crate::executor::{ExecError, Executor};
use crate::observer::{ActionEvent, DepartEvent, FoldEvent, HoldEvent, Observer, PassEvent, TransitionEvent};
use crate::policy::{Ladder, Policy, RepairSpec, Rung};
use crate::store::MemoryStore;
use crate::time::{Clock, Timestamp};

/// The tape format's version (the `v` of the `start` line).
pub const TAPE_VERSION: u32 = 2;

/// Where a recorder writes its lines (one JSON object each, no newline).
pub trait LineSink: Send {
    /// Writes one line. An error is logged once per failure streak by the
    /// recorder; recording goes on with the next line.
    fn line(&mut self, text: &str) -> std::io::Result<()>;
}

impl LineSink for Arc<Mutex<Vec<String>>> {
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        self.lock().push(text.to_owned());
        Ok(())
    }
}

/// One checker as recorded: enough to replay its outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerSpec {
    /// Its name.
    pub name: String,
    /// Its threshold.
    #[serde(with = "crate::policy::duration_str")]
    pub threshold: Duration,
    /// Whether it is a validation probe.
    #[serde(default)]
    pub validation: bool,
}

/// A soft repair's settings, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RepairLine {
    repair: String,
    attempts: u32,
    #[serde(with = "crate::policy::duration_str")]
    wait: Duration,
}

/// A ladder, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LadderLine {
    class: Option<NodeClass>,
    checker: Option<String>,
    rungs: Vec<String>,
}

/// A checker outcome on tape: `"p"`, `{"f": reason}`, `{"s": reason}`, and
/// `{"e": reason}` for a checker that erred (counted as a failure with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Seen {
    #[serde(rename = "p")]
    Pass,
    #[serde(rename = "f")]
    Fail(String),
    #[serde(rename = "s")]
    Skip(String),
    #[serde(rename = "e")]
    Erred(String),
}

/// One observed target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeLine {
    n: String,
    #[serde(default, skip_serializing_if = "is_standard")]
    class: NodeClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleting: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    removal: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    opted_out: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    o: Vec<Seen>,
}

fn is_standard(c: &NodeClass) -> bool {
    *c == NodeClass::Standard
}

/// A decision, as recorded and as replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Decided {
    /// An action performed (active) or recorded (monitor), with its error.
    Action {
        /// When (milliseconds since the epoch).
        at: u64,
        /// The node.
        n: String,
        /// The action.
        a: String,
        /// `active` or `monitor`.
        mode: String,
        /// The executor's error kind (`failed`, `unknown`, `timeout`, `unsupported`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        err: Option<String>,
    },
    /// An action held back by a gate.
    Hold {
        /// When.
        at: u64,
        /// The node.
        n: String,
        /// The action held.
        a: String,
        /// The gate.
        why: String,
        /// For a domain storm: `label=value`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    /// A phase change.
    Phase {
        /// When.
        at: u64,
        /// The node.
        n: String,
        /// The phase before.
        from: String,
        /// The phase after.
        to: String,
    },
}

impl Decided {
    /// When it was decided.
    #[must_use]
    pub fn at(&self) -> Timestamp {
        let (Decided::Action { at, .. } | Decided::Hold { at, .. } | Decided::Phase { at, .. }) = self;
        Timestamp::from_millis(*at)
    }

    /// The node.
    #[must_use]
    pub fn node(&self) -> &str {
        let (Decided::Action { n, .. } | Decided::Hold { n, .. } | Decided::Phase { n, .. }) = self;
        n
    }
}

impl std::fmt::Display for Decided {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decided::Action { a, mode, err, .. } => {
                write!(f, "{a} ({mode})")?;
                match err {
                    Some(e) => write!(f, ", {e}"),
                    None => Ok(()),
                }
            }
            Decided::Hold { a, why, domain, .. } => {
                write!(f, "{a} held: {why}")?;
                match domain {
                    Some(d) => write!(f, " ({d})"),
                    None => Ok(()),
                }
            }
            Decided::Phase { from, to, .. } => write!(f, "{from} -> {to}"),
        }
    }
}

/// One tape line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum Line {
    Start {
        v: u32,
        /// When the recording began (it tells recordings apart).
        #[serde(default)]
        at: u64,
        policy: Box<Policy>,
        #[serde(default)]
        repairs: Vec<RepairLine>,
        #[serde(default)]
        ladders: Vec<LadderLine>,
        checkers: Vec<CheckerSpec>,
        #[serde(with = "crate::policy::duration_str")]
        forget_after: Duration,
        #[serde(with = "crate::policy::duration_str")]
        error_grace: Duration,
    },
    Restore {
        at: u64,
        records: BTreeMap<String, NodeRecord>,
    },
    Pass {
        at: u64,
        /// The monotonic clock, in nanoseconds (milliseconds in version 1).
        mono: u64,
        sync: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        paused: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stale: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        window: bool,
        nodes: Vec<NodeLine>,
    },
    Fold {
        at: u64,
        /// The monotonic clock, in nanoseconds (milliseconds in version 1).
        mono: u64,
        n: String,
        a: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        err: Option<String>,
    },
    Depart {
        at: u64,
        /// The monotonic clock, in nanoseconds (milliseconds in version 1).
        mono: u64,
        n: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        removed: bool,
    },
    #[serde(untagged)]
    Decided(Decided),
}

/// A monotonic reading as written on tape: whole nanoseconds (a wait
/// computed from it ends on the same millisecond as it did live).
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn err_kind(e: &ExecError) -> &'static str {
    match e {
        ExecError::Failed { .. } => "failed",
        ExecError::Unknown { .. } => "unknown",
        ExecError::Timeout { .. } => "timeout",
        ExecError::Unsupported { .. } => "unsupported",
    }
}

/// Records what the engine sees and decides as JSON lines (see the module).
pub struct TapeRecorder {
    sink: Mutex<(Box<dyn LineSink>, bool)>,
    labels: Vec<String>,
}

impl std::fmt::Debug for TapeRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapeRecorder").field("labels", &self.labels).finish_non_exhaustive()
    }
}

impl TapeRecorder {
    /// A recorder writing to `sink`, starting with the `policy`, the
    /// `checkers` (names, thresholds, validation) and the engine settings
    /// the decisions depend on. Only the policy's failure-domain labels of
    /// each target are recorded.
    pub fn new<T: ?Sized + Sync>(
        sink: Box<dyn LineSink>,
        policy: &Policy,
        checkers: &[Arc<dyn HealthChecker<T>>],
        config: &EngineConfig,
    ) -> Self {
        let start = Line::Start {
            v: TAPE_VERSION,
            at: Timestamp::from_system_time(std::time::SystemTime::now()).as_millis(),
            policy: Box::new(policy.clone()),
            repairs: policy
                .repairs
                .iter()
                .map(|r| RepairLine { repair: r.repair.as_str().to_owned(), attempts: r.attempts, wait: r.wait })
                .collect(),
            ladders: policy
                .ladders
                .iter()
                .map(|l| LadderLine {
                    class: l.class,
                    checker: l.checker.clone(),
                    rungs: l.rungs.iter().map(|r| r.as_str().to_owned()).collect(),
                })
                .collect(),
            checkers: checkers
                .iter()
                .map(|c| CheckerSpec {
                    name: c.name().to_owned(),
                    threshold: c.threshold(),
                    validation: c.validation_only(),
                })
                .collect(),
            forget_after: config.forget_after,
            error_grace: config.error_grace,
        };
        let r = TapeRecorder { sink: Mutex::new((sink, false)), labels: policy.domains.labels.clone() };
        r.write(&start);
        r
    }

    fn write<S: Serialize>(&self, line: &S) {
        let text = match serde_json::to_string(line) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "a tape line could not be encoded; it is left out");
                return;
            }
        };
        let mut guard = self.sink.lock();
        let (sink, failing) = &mut *guard;
        match sink.line(&text) {
            Ok(()) => *failing = false,
            Err(e) => {
                if !*failing {
                    tracing::error!(error = %e, "recording: a line could not be written (further failures are not logged until a write succeeds)");
                }
                *failing = true;
            }
        }
    }
}

impl<T: Target> Observer<T> for TapeRecorder {
    fn on_restore(&self, records: &[(&str, &NodeRecord)], at: Timestamp) {
        let records = records.iter().map(|(n, r)| ((*n).to_owned(), (*r).clone())).collect();
        self.write(&Line::Restore { at: at.as_millis(), records });
    }

    fn on_pass(&self, e: &PassEvent<'_, T>) {
        let nc = e.checkers.len();
        let nodes = e
            .targets
            .iter()
            .enumerate()
            .filter(|(i, _)| e.loaded.get(*i).copied().unwrap_or(false))
            .map(|(i, t)| {
                let facts = t.facts();
                let o = (0..nc)
                    .map(|c| {
                        let k = i * nc + c;
                        match (&e.outcomes[k], e.errors[k]) {
                            (CheckOutcome::Pass, _) => Seen::Pass,
                            (CheckOutcome::Fail { reason, .. }, true) => Seen::Erred(reason.to_string()),
                            (CheckOutcome::Fail { reason, .. }, false) => Seen::Fail(reason.to_string()),
                            (CheckOutcome::Skip { reason }, _) => Seen::Skip(reason.to_string()),
                        }
                    })
                    .collect();
                NodeLine {
                    n: t.name().to_owned(),
                    class: facts.class,
                    created: facts.created_at.map(Timestamp::as_millis),
                    deleting: facts.deleting,
                    removal: facts.tainted_for_removal,
                    opted_out: facts.opted_out,
                    labels: self.labels.iter().filter_map(|k| t.label(k).map(|v| (k.clone(), v.to_owned()))).collect(),
                    o,
                }
            })
            .collect();
        self.write(&Line::Pass {
            at: e.at.as_millis(),
            mono: duration_nanos(e.monotonic),
            sync: e.sync,
            paused: e.paused,
            stale: e.source_stale,
            window: e.window_closed,
            nodes,
        });
    }

    fn on_fold(&self, e: &FoldEvent<'_>) {
        self.write(&Line::Fold {
            at: e.at.as_millis(),
            mono: duration_nanos(e.monotonic),
            n: e.node.to_owned(),
            a: e.action.as_str().to_owned(),
            err: e.error.map(|e| err_kind(e).to_owned()),
        });
    }

    fn on_depart(&self, e: &DepartEvent<'_>) {
        self.write(&Line::Depart {
            at: e.at.as_millis(),
            mono: duration_nanos(e.monotonic),
            n: e.node.to_owned(),
            removed: e.removed,
        });
    }

    fn on_action(&self, _t: &T, e: &ActionEvent<'_>) {
        self.write(&decided_action(e));
    }

    fn on_hold(&self, _t: &T, e: &HoldEvent<'_>) {
        self.write(&decided_hold(e));
    }

    fn on_transition(&self, _t: &T, e: &TransitionEvent<'_>) {
        self.write(&decided_phase(e));
    }
}

fn decided_action(e: &ActionEvent<'_>) -> Decided {
    Decided::Action {
        at: e.at.as_millis(),
        n: e.node.to_owned(),
        a: e.action.as_str().to_owned(),
        mode: e.mode.as_str().to_owned(),
        err: e.error.map(|e| err_kind(e).to_owned()),
    }
}

fn decided_hold(e: &HoldEvent<'_>) -> Decided {
    Decided::Hold {
        at: e.at.as_millis(),
        n: e.node.to_owned(),
        a: e.hold.action.as_str().to_owned(),
        why: e.hold.reason.as_str().to_owned(),
        domain: e.domain.map(|d| format!("{}={}", d.label, d.value)),
    }
}

fn decided_phase(e: &TransitionEvent<'_>) -> Decided {
    Decided::Phase {
        at: e.at.as_millis(),
        n: e.node.to_owned(),
        from: e.from.as_str().to_owned(),
        to: e.to.as_str().to_owned(),
    }
}

/// Where a tape is read from; opened twice by [`replay`] (a first read
/// counts the recorded action outcomes).
pub trait TapeSource {
    /// The lines, from the first.
    fn open(&self) -> std::io::Result<Box<dyn BufRead + '_>>;
}

/// A tape held as text.
#[derive(Clone, Debug)]
pub struct Text(pub String);

impl TapeSource for Text {
    fn open(&self) -> std::io::Result<Box<dyn BufRead + '_>> {
        Ok(Box::new(self.0.as_bytes()))
    }
}

/// A tape in files, read in the order given (oldest rotated file first).
#[derive(Clone, Debug)]
pub struct Files(pub Vec<std::path::PathBuf>);

impl TapeSource for Files {
    fn open(&self) -> std::io::Result<Box<dyn BufRead + '_>> {
        let mut chain: Box<dyn std::io::Read> = Box::new(std::io::empty());
        for p in &self.0 {
            let f =
                std::fs::File::open(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            chain = Box::new(std::io::Read::chain(chain, f));
        }
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, chain)))
    }
}

/// What a replay needs besides the tape: the policy and checkers to decide
/// with (`None` in [`replay`]: those the tape was recorded with).
#[derive(Clone, Debug)]
pub struct Setup {
    /// The policy.
    pub policy: Policy,
    /// The checkers, by name: a recorded checker not among them is ignored,
    /// one not recorded always passes.
    pub checkers: Vec<CheckerSpec>,
}

/// A tape that cannot be replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapeError {
    /// It cannot be read.
    #[error("cannot read the recording: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a tape line.
    #[error("line {line}: not a recording line: {message}")]
    Line {
        /// The line number (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// It does not start with a `start` line of a known version.
    #[error("{0}")]
    Start(String),
    /// The recorded policy cannot be used.
    #[error("the recorded policy: {0}")]
    Policy(String),
}

/// What a replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replayed {
    /// The decisions the replayed engine took, in order.
    pub decisions: Vec<Decided>,
    /// The decisions on tape, in order.
    pub recorded: Vec<Decided>,
    /// Evaluations replayed.
    pub passes: u64,
    /// Node observations replayed.
    pub observations: u64,
    /// The recorded time span (first and last line's time).
    pub span: Option<(Timestamp, Timestamp)>,
}

/// A node as replayed: its recorded facts, labels and outcomes.
#[derive(Clone, Debug)]
struct Node {
    name: Arc<str>,
    facts: NodeFacts,
    labels: Arc<BTreeMap<String, String>>,
    outcomes: Arc<[Seen]>,
}

impl Target for Node {
    fn name(&self) -> &str {
        &self.name
    }
    fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }
    fn facts(&self) -> NodeFacts {
        self.facts
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A checker answering what the tape says its namesake answered.
struct Replayer {
    spec: CheckerSpec,
    /// Its position on tape (`None`: not recorded, always passes).
    index: Option<usize>,
}

#[async_trait]
impl HealthChecker<Node> for Replayer {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn threshold(&self) -> Duration {
        self.spec.threshold
    }
    fn validation_only(&self) -> bool {
        self.spec.validation
    }
    fn check_sync(&self, target: &Node, _ctx: &CheckContext) -> Option<CheckResult> {
        let seen = self.index.and_then(|i| target.outcomes.get(i));
        Some(match seen {
            None | Some(Seen::Pass) => Ok(CheckOutcome::Pass),
            Some(Seen::Fail(r)) => Ok(CheckOutcome::fail(r.clone())),
            Some(Seen::Skip(r)) => Ok(CheckOutcome::skip(r.clone())),
            Some(Seen::Erred(r)) => Err(CheckError::new(r.clone())),
        })
    }
    async fn check(&self, target: &Node, ctx: &CheckContext) -> CheckResult {
        self.check_sync(target, ctx).unwrap_or(Ok(CheckOutcome::Pass))
    }
}

/// An executor call waiting for the replay: node, action, where its result goes.
type Pending = (String, Action, tokio::sync::oneshot::Sender<Result<(), ExecError>>);

/// An executor whose calls finish when the replay says so.
#[derive(Default)]
struct Held {
    pending: Mutex<Vec<Pending>>,
}

#[async_trait]
impl Executor<Node> for Held {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().push((target.name.to_string(), action, tx));
        rx.await.unwrap_or_else(|_| Err(ExecError::Unknown { action, message: "the replay ended".into() }))
    }
}

impl Held {
    /// Finishes the pending call of `node` for `action` (the oldest), if any.
    fn release(&self, node: &str, action: Action, result: Result<(), ExecError>) -> bool {
        let mut p = self.pending.lock();
        match p.iter().position(|(n, a, _)| n == node && *a == action) {
            Some(i) => {
                let (.., tx) = p.remove(i);
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }
}

/// A clock reading the recorded times.
#[derive(Default)]
struct TapeClock {
    wall: AtomicU64,
    mono: AtomicU64,
}

impl TapeClock {
    fn set(&self, at: u64, mono: Option<u64>) {
        self.wall.store(at, Ordering::SeqCst);
        if let Some(m) = mono {
            self.mono.store(m, Ordering::SeqCst);
        }
    }
}

impl Clock for TapeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.wall.load(Ordering::SeqCst))
    }
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.mono.load(Ordering::SeqCst))
    }
}

/// Collects the replayed engine's decisions.
#[derive(Default)]
struct Collect(Mutex<Vec<Decided>>);

impl Observer<Node> for Collect {
    fn on_action(&self, _t: &Node, e: &ActionEvent<'_>) {
        self.0.lock().push(decided_action(e));
    }
    fn on_hold(&self, _t: &Node, e: &HoldEvent<'_>) {
        self.0.lock().push(decided_hold(e));
    }
    fn on_transition(&self, _t: &Node, e: &TransitionEvent<'_>) {
        self.0.lock().push(decided_phase(e));
    }
}

/// The recorded outcome of `action` (`None`: an error kind this build does not know).
fn exec_result(action: Action, err: Option<&str>) -> Option<Result<(), ExecError>> {
    Some(match err {
        None => Ok(()),
        Some("failed") => Err(ExecError::failed(action, "as recorded")),
        Some("unknown") => Err(ExecError::Unknown { action, message: "as recorded".into() }),
        Some("timeout") => Err(ExecError::Timeout { action, after: Duration::ZERO }),
        Some("unsupported") => Err(ExecError::Unsupported { action }),
        Some(_) => return None,
    })
}

/// An action by its recorded name: a built-in one or a soft repair.
fn action_named(name: &str) -> Option<Action> {
    name.parse().ok().or_else(|| Repair::new(name).ok().map(Action::Repair))
}

fn parse_line(line: usize, text: &str) -> Result<Line, TapeError> {
    serde_json::from_str(text).map_err(|e| TapeError::Line { line, message: e.to_string() })
}

fn recorded_policy(policy: Policy, repairs: Vec<RepairLine>, ladders: Vec<LadderLine>) -> Result<Policy, TapeError> {
    let bad = |m: String| TapeError::Policy(m);
    let mut p = policy;
    p.repairs = repairs
        .into_iter()
        .map(|r| {
            let repair = Repair::new(&r.repair).map_err(|e| bad(e.to_string()))?;
            Ok(RepairSpec { repair, attempts: r.attempts, wait: r.wait })
        })
        .collect::<Result<_, TapeError>>()?;
    p.ladders = ladders
        .into_iter()
        .map(|l| {
            let rungs = l
                .rungs
                .iter()
                .map(|r| match r.as_str() {
                    "reboot" => Ok(Rung::Reboot),
                    "drain-reboot" => Ok(Rung::DrainReboot),
                    "replace" => Ok(Rung::Replace),
                    name => Repair::new(name).map(Rung::Repair).map_err(|e| bad(e.to_string())),
                })
                .collect::<Result<_, TapeError>>()?;
            Ok(Ladder { class: l.class, checker: l.checker, rungs })
        })
        .collect::<Result<_, TapeError>>()?;
    p.validate().map_err(|e| bad(e.to_string()))?;
    Ok(p)
}

/// Replays a recording (see the module): the engine decides over the
/// recorded observations at the recorded times, under `setup` (or the
/// recorded policy and checkers). Runs as fast as it can; the decisions do
/// not depend on the machine it runs on.
pub async fn replay(source: &dyn TapeSource, setup: Option<Setup>) -> Result<Replayed, TapeError> {
    // First read: how many outcomes of each (node, action) are on tape, so
    // that an action the recording never finished is not waited for.
    let mut outcomes: HashMap<(String, String), u32> = HashMap::new();
    for (i, text) in source.open()?.lines().enumerate() {
        let text = text?;
        if text.contains("\"k\":\"action\"")
            && let Line::Decided(Decided::Action { n, a, mode, .. }) = parse_line(i + 1, &text)?
            && mode == "active"
        {
            *outcomes.entry((n, a)).or_default() += 1;
        }
    }

    let mut lines = source.open()?.lines().enumerate();
    let first = lines.next().ok_or_else(|| TapeError::Start("the recording is empty".into()))?.1?;
    let (recorded_setup, forget_after, error_grace, mono_unit) = match parse_line(1, &first)? {
        Line::Start { v, policy, repairs, ladders, checkers, forget_after, error_grace, .. } => {
            // Version 1 wrote the monotonic clock in milliseconds; its
            // replays may differ where a wait ends within a millisecond.
            let mono_unit = match v {
                1 => 1_000_000,
                TAPE_VERSION => 1,
                _ => {
                    return Err(TapeError::Start(format!(
                        "recording format version {v}; this build reads versions 1 to {TAPE_VERSION}"
                    )));
                }
            };
            (
                Setup { policy: recorded_policy(*policy, repairs, ladders)?, checkers },
                forget_after,
                error_grace,
                mono_unit,
            )
        }
        _ => return Err(TapeError::Start("line 1 is not the recording's start line".into())),
    };
    let tape_checkers: Vec<String> = recorded_setup.checkers.iter().map(|c| c.name.clone()).collect();
    let setup = setup.unwrap_or(recorded_setup);

    let clock = Arc::new(TapeClock::default());
    let exec = Arc::new(Held::default());
    let collect = Arc::new(Collect::default());
    let store = Arc::new(MemoryStore::new());
    let mut builder = Engine::builder(store.clone(), exec.clone())
        .policy(setup.policy)
        .config(EngineConfig::default().with_forget_after(forget_after).with_error_grace(error_grace))
        .observer(collect.clone())
        .clock(clock.clone());
    for spec in setup.checkers {
        let index = tape_checkers.iter().position(|n| *n == spec.name);
        builder = builder.checker(Replayer { spec, index });
    }
    let mut engine = builder.build().map_err(|e| TapeError::Policy(e.to_string()))?;
    let controls = engine.controls();

    let mut out = Replayed::default();
    let mut restored = false;
    let span = |at: u64, out: &mut Replayed| {
        let t = Timestamp::from_millis(at);
        out.span = Some(out.span.map_or((t, t), |(a, _)| (a, t)));
    };
    for (i, text) in lines {
        let text = text?;
        // Every rotated file of a recording begins with its start line.
        if text.is_empty() || text == first {
            continue;
        }
        let line = parse_line(i + 1, &text)?;
        match line {
            Line::Start { .. } => {
                return Err(TapeError::Line {
                    line: i + 1,
                    message: "a second start line (two recordings joined?)".into(),
                });
            }
            Line::Restore { at, records } => {
                clock.set(at, None);
                for (name, record) in records {
                    let _ = crate::store::StateStore::save(&*store, &name, &record, None).await;
                }
                let _ = engine.restore().await;
                restored = true;
            }
            Line::Pass { at, mono, sync, paused, stale, window, nodes } => {
                let mono = mono.saturating_mul(mono_unit);
                span(at, &mut out);
                let released = settle(&exec, &outcomes, &clock, at, mono);
                finish_settled(&mut engine, released).await;
                if !restored {
                    let _ = engine.restore().await;
                    restored = true;
                }
                clock.set(at, Some(mono));
                controls.set_paused(paused);
                controls.set_source_stale(stale);
                controls.set_window_closed(window);
                out.passes += 1;
                out.observations += nodes.len() as u64;
                let targets: Vec<Node> = nodes
                    .into_iter()
                    .map(|n| Node {
                        name: Arc::from(n.n),
                        facts: NodeFacts {
                            class: n.class,
                            created_at: n.created.map(Timestamp::from_millis),
                            deleting: n.deleting,
                            tainted_for_removal: n.removal,
                            opted_out: n.opted_out,
                        },
                        labels: Arc::new(n.labels),
                        outcomes: n.o.into(),
                    })
                    .collect();
                let _ = if sync { engine.sync(&targets).await } else { engine.evaluate(&targets).await };
                // Let the actions started reach the executor.
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
            }
            Line::Fold { at, mono, .. } => {
                let mono = mono.saturating_mul(mono_unit);
                span(at, &mut out);
                clock.set(at, Some(mono));
                let _ = engine.fold_completions().await;
            }
            Line::Depart { at, mono, n, removed } => {
                let mono = mono.saturating_mul(mono_unit);
                span(at, &mut out);
                clock.set(at, Some(mono));
                if removed {
                    let _ = engine.remove(&n).await;
                } else {
                    engine.depart(&n);
                }
            }
            Line::Decided(d) => {
                span(d.at().as_millis(), &mut out);
                if let Decided::Action { at, n, a, mode, err } = &d
                    && mode == "active"
                {
                    // The recorded action finished now: so does ours (if
                    // this policy started it too), with the recorded result.
                    if let Some(left) = outcomes.get_mut(&(n.clone(), a.clone())) {
                        *left = left.saturating_sub(1);
                    }
                    let action = action_named(a)
                        .ok_or_else(|| TapeError::Line { line: i + 1, message: format!("unknown action {a:?}") })?;
                    let result = exec_result(action, err.as_deref()).ok_or_else(|| TapeError::Line {
                        line: i + 1,
                        message: format!(
                            "unknown error kind {:?}: expected failed, unknown, timeout or unsupported",
                            err.as_deref().unwrap_or_default()
                        ),
                    })?;
                    if exec.release(n, action, result) {
                        clock.set(*at, None);
                        finished(&mut engine, 1).await;
                    }
                }
                out.recorded.push(d);
            }
        }
    }
    out.decisions = std::mem::take(&mut *collect.0.lock());
    Ok(out)
}

/// Finishes, as succeeded at `at`, every running action the tape holds no
/// outcome for (a what-if policy started it; the recording never did).
fn settle(exec: &Held, outcomes: &HashMap<(String, String), u32>, clock: &TapeClock, at: u64, mono: u64) -> usize {
    let unrecorded: Vec<(String, Action)> = exec
        .pending
        .lock()
        .iter()
        .filter(|(n, a, _)| outcomes.get(&(n.clone(), a.as_str().to_owned())).is_none_or(|&left| left == 0))
        .map(|(n, a, _)| (n.clone(), *a))
        .collect();
    if unrecorded.is_empty() {
        return 0;
    }
    clock.set(at, Some(mono));
    unrecorded.into_iter().filter(|(n, a)| exec.release(n, *a, Ok(()))).count()
}

/// Lets `released` actions finish and takes them in (announced now).
async fn finished(engine: &mut Engine<Node>, released: usize) -> usize {
    let mut n = 0;
    for _ in 0..1000 {
        n += engine.collect_finished();
        if n >= released {
            break;
        }
        tokio::task::yield_now().await;
    }
    n
}

/// Announces and folds the actions [`settle`] finished.
async fn finish_settled(engine: &mut Engine<Node>, released: usize) {
    if released > 0 && finished(engine, released).await > 0 {
        let _ = engine.fold_completions().await;
    }
}

/// Where the decisions of two replays differ: (node, time, first's
/// decision, second's decision), one side `None` where only the other took it.
pub type Difference = (String, Timestamp, Option<Decided>, Option<Decided>);

/// The decisions only one of `a` and `b` took, matched by node, time and
/// decision, in time order; where both took a different one for the same
/// node at the same time, they share a row.
#[must_use]
pub fn differences(a: &[Decided], b: &[Decided]) -> Vec<Difference> {
    let mut left: Vec<Option<&Decided>> = a.iter().map(Some).collect();
    let mut out = Vec::new();
    for d in b {
        match left.iter().position(|x| *x == Some(d)) {
            Some(i) => left[i] = None,
            None => out.push((d.node().to_owned(), d.at(), None, Some(d.clone()))),
        }
    }
    out.extend(left.into_iter().flatten().map(|d| (d.node().to_owned(), d.at(), Some(d.clone()), None)));
    out.sort_by(|x, y| (x.1, &x.0, x.2.is_none()).cmp(&(y.1, &y.0, y.2.is_none())));
    // What each took instead, side by side: one row per (time, node) pair.
    let mut merged: Vec<Difference> = Vec::with_capacity(out.len());
    for d in out {
        match merged.last_mut() {
            Some(last) if last.0 == d.0 && last.1 == d.1 && last.3.is_none() && d.2.is_none() => last.3 = d.3,
            _ => merged.push(d),
        }
    }
    merged
}

/// The decisions replayed under `setup`'s policy for each of the two, and
/// where they differ.
pub async fn compare(
    source: &dyn TapeSource,
    a: Setup,
    b: Setup,
) -> Result<(Replayed, Replayed, Vec<Difference>), TapeError> {
    let ra = replay(source, Some(a)).await?;
    let rb = replay(source, Some(b)).await?;
    let diff = differences(&ra.decisions, &rb.decisions);
    Ok((ra, rb, diff))
}
