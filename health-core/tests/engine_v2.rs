//! The engine v2 scenarios, each reproducing a failure seen on the v1
//! engine: stale follow-up decisions, one slow action blocking everything,
//! cancellation, held in-flight slots, storm under-counting, lost history
//! of a re-registered node, busy loops and panics. Paused tokio time.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use health_core::*;
use parking_lot::Mutex;

mod common;

use common::{MIN, Node, T0, nodes, ready_checker};

/// Records every action with the (paused) instant it started; drains take
/// `drain_for`.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, Action, tokio::time::Instant)>>,
    drain_for: Duration,
}

impl Recorder {
    fn actions(&self) -> Vec<(String, Action)> {
        self.calls.lock().iter().map(|(n, a, _)| (n.clone(), *a)).collect()
    }
}

#[async_trait]
impl Executor<Node> for Recorder {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        self.calls.lock().push((target.name.clone(), action, tokio::time::Instant::now()));
        if action == Action::Drain {
            tokio::time::sleep(self.drain_for).await;
        }
        Ok(())
    }
}

fn build(store: Arc<dyn StateStore>, exec: Arc<dyn Executor<Node>>, policy: Policy) -> Engine<Node> {
    Engine::builder(store, exec)
        .policy(policy)
        .config(EngineConfig::default().with_action_timeouts(2 * MIN, 30 * MIN))
        .checker(ready_checker())
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0))))
        .build()
        .expect("valid engine")
}

fn escalating() -> Policy {
    Policy::default().with_monitor_only(false).with_replace(true).with_max_reboot_retries(1)
}

/// Takes node-0 of 10 to the start of its drain (reboot, wait, still broken).
async fn until_drain_starts(e: &mut Engine<Node>, targets: &[Node]) {
    let _ = e.run_pass(targets).await;
    tokio::time::advance(5 * MIN).await;
    let _ = e.run_pass(targets).await; // reboot
    tokio::time::advance(10 * MIN).await;
    let r = e.sync(targets).await; // the reboot did not help: drain, in a task
    assert_eq!(e.record("node-0").map(|r| r.phase), Some(Phase::Draining));
    assert!(r.actions.is_empty(), "the drain runs in a task: {:?}", r.actions);
    assert!(e.has_running());
}

/// Why 1: a 10-minute drain cured the node; v1 replaced it anyway from the
/// observation taken before the drain.
#[tokio::test(start_paused = true)]
async fn a_node_cured_by_its_drain_is_not_replaced() {
    let exec = Arc::new(Recorder { drain_for: 10 * MIN, ..Recorder::default() });
    let mut e = build(Arc::new(MemoryStore::new()), exec.clone(), escalating());
    let mut targets = nodes(10, &[0]);
    until_drain_starts(&mut e, &targets).await;
    // The node recovers while the drain runs (the watch delivers it).
    targets[0].ready = true;
    let _ = e.evaluate(&targets[..1]).await;
    e.wait_completion().await;
    let (again, _) = e.fold_completions().await;
    assert_eq!(again, ["node-0"]);
    let _ = e.evaluate(&targets[..1]).await;
    assert_eq!(exec.actions().last().map(|a| a.1), Some(Action::Drain));
    assert!(!exec.actions().iter().any(|a| a.1 == Action::Replace), "{:?}", exec.actions());
    // Recovered after our actions: verified for 2 minutes before it counts
    // (and is uncordoned).
    let rec = e.record("node-0").unwrap();
    assert_eq!(rec.phase, Phase::Verifying);
    assert!(rec.cordoned, "still cordoned while verifying");
    tokio::time::advance(2 * MIN).await;
    let _ = e.run_pass(&targets).await;
    assert_eq!(e.record("node-0").map(|r| r.phase), Some(Phase::Healthy));
    assert_eq!(exec.actions().last().map(|a| a.1), Some(Action::Uncordon));
}

/// Why 1: an opt-out added during the drain, and half the fleet going
/// NotReady during the drain, both hold the replacement.
#[tokio::test(start_paused = true)]
async fn an_opt_out_or_a_storm_during_the_drain_holds_the_replacement() {
    for storm in [false, true] {
        let exec = Arc::new(Recorder { drain_for: 10 * MIN, ..Recorder::default() });
        let mut e = build(Arc::new(MemoryStore::new()), exec.clone(), escalating());
        let mut targets = nodes(10, &[0]);
        until_drain_starts(&mut e, &targets).await;
        if storm {
            for t in &mut targets[1..6] {
                t.ready = false;
            }
        } else {
            targets[0].facts.opted_out = true;
        }
        let _ = e.evaluate(&targets).await;
        e.wait_completion().await;
        let (again, _) = e.fold_completions().await;
        let fresh: Vec<Node> = targets.iter().filter(|t| again.contains(&t.name)).cloned().collect();
        let r = e.evaluate(&fresh).await;
        let want = if storm { HoldReason::StormGuard } else { HoldReason::OptedOut };
        assert_eq!(r.held, [("node-0".to_owned(), want)]);
        assert!(!exec.actions().iter().any(|a| a.1 == Action::Replace), "{:?}", exec.actions());
    }
}

/// Why 2: a 14-minute drain delayed every other node's evaluation by 14
/// minutes. Now a node that breaks during the drain is seen at once and
/// rebooted at its threshold, while the drain still runs.
#[tokio::test(start_paused = true)]
async fn a_slow_drain_does_not_delay_other_nodes() {
    let exec = Arc::new(Recorder { drain_for: 14 * MIN, ..Recorder::default() });
    let gates = Gates { max_in_flight: Limit::Count(2), ..Gates::default() };
    let mut e = build(Arc::new(MemoryStore::new()), exec.clone(), escalating().with_gates(gates));
    let mut targets = nodes(10, &[0]);
    until_drain_starts(&mut e, &targets).await;
    let drain_started = tokio::time::Instant::now();
    targets[3].ready = false;
    let r = e.evaluate(&targets[3..4]).await;
    assert_eq!(r.transitions.len(), 1, "node-3 is Unhealthy at once");
    tokio::time::advance(5 * MIN).await;
    let r = e.evaluate(&targets[3..4]).await;
    assert!(r.held.is_empty(), "{:?}", r.held);
    assert_eq!(e.record("node-3").map(|r| r.phase), Some(Phase::WaitingReboot));
    // Let the reboot's task run.
    tokio::task::yield_now().await;
    let calls = exec.calls.lock().clone();
    let (_, action, at) = calls.last().cloned().unwrap();
    assert_eq!(action, Action::Reboot);
    assert_eq!(at - drain_started, 5 * MIN, "rebooted at its threshold, during the drain");
    assert!(e.has_running(), "the drain still runs");
}

/// A store whose `block_at`-th call (1-based) never returns.
struct BlockingStore {
    inner: MemoryStore,
    calls: AtomicUsize,
    block_at: usize,
}

impl BlockingStore {
    async fn gate(&self) {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.block_at {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl StateStore for BlockingStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.gate().await;
        self.inner.load(key).await
    }
    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        self.gate().await;
        self.inner.save(key, record, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.delete(key, expected).await
    }
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        self.gate().await;
        self.inner.list().await
    }
}

/// Why 3 and Must show: the pass is dropped at every await point of a
/// remediation (the store blocks at its N-th call, for every N); no record
/// is lost or reset, and reboots stay a reboot wait apart.
#[tokio::test(start_paused = true)]
async fn dropping_a_pass_at_any_store_call_never_resets_history() {
    let mut checked = 0;
    for block_at in 1..=60 {
        let store = Arc::new(BlockingStore { inner: MemoryStore::new(), calls: AtomicUsize::new(0), block_at });
        let exec = Arc::new(Recorder::default());
        let policy = Policy::default().with_monitor_only(false);
        let mut e = build(store.clone(), exec.clone(), policy);
        let targets = nodes(3, &[0]);
        let mut max_count = 0;
        let mut known = false;
        for _ in 0..12 {
            let pass = e.run_pass(&targets);
            // The blocked call is abandoned after a second: the pass future is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), pass).await;
            if let Some(r) = e.record("node-0") {
                assert!(r.reboot_count >= max_count, "block at {block_at}: count went back to {}", r.reboot_count);
                max_count = r.reboot_count;
                // Before its first stored decision a fresh record is Unknown;
                // once known it never goes back.
                assert!(!(known && r.phase == Phase::Unknown), "block at {block_at}: the record was reset");
                known |= r.phase != Phase::Unknown;
            }
            tokio::time::advance(5 * MIN).await;
        }
        let calls = exec.calls.lock().clone();
        for w in calls.windows(2) {
            assert!(w[1].2 - w[0].2 >= 10 * MIN, "block at {block_at}: reboots {:?} apart", w[1].2 - w[0].2);
        }
        assert!(!calls.is_empty(), "block at {block_at}: the node was never rebooted");
        checked += 1;
    }
    assert_eq!(checked, 60);
}

/// Why 5: a node held (opted out) in WaitingReboot kept its in-flight slot
/// forever, so with 10 nodes (one slot) a second broken node was never
/// remediated.
#[tokio::test(start_paused = true)]
async fn a_held_node_frees_its_in_flight_slot_after_its_wait() {
    let exec = Arc::new(Recorder::default());
    let mut e = build(Arc::new(MemoryStore::new()), exec.clone(), Policy::default().with_monitor_only(false));
    let mut targets = nodes(10, &[0]);
    let _ = e.run_pass(&targets).await;
    tokio::time::advance(5 * MIN).await;
    let _ = e.run_pass(&targets).await;
    assert_eq!(exec.actions(), [("node-0".to_owned(), Action::Reboot)]);
    // An operator opts node-0 out; it stays broken. node-1 breaks.
    targets[0].facts.opted_out = true;
    targets[1].ready = false;
    let r = e.run_pass(&targets).await;
    assert!(r.held.is_empty() || r.held.iter().all(|h| h.1 == HoldReason::MaxInFlight), "{:?}", r.held);
    tokio::time::advance(10 * MIN).await;
    let r = e.run_pass(&targets).await;
    assert!(r.held.contains(&("node-0".to_owned(), HoldReason::OptedOut)), "the hold names its cause: {:?}", r.held);
    assert_eq!(exec.actions().last(), Some(&("node-1".to_owned(), Action::Reboot)), "{:?}", exec.actions());
}

/// Fails `load` for some keys (a store answering 503 for them).
struct FailingLoads {
    inner: MemoryStore,
    failing: HashSet<String>,
}

#[async_trait]
impl StateStore for FailingLoads {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        if self.failing.contains(key) {
            return Err(StoreError::Backend { message: "503 Service Unavailable".into(), source: None });
        }
        self.inner.load(key).await
    }
    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        self.inner.save(key, record, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        self.inner.delete(key, expected).await
    }
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        self.inner.list().await
    }
}

/// Why 6: 5 of 10 nodes NotReady, 4 of them with records that cannot be
/// loaded, looked like 1 unhealthy node, and a reboot went ahead during
/// the storm. Unreadable nodes now count as unhealthy.
#[tokio::test(start_paused = true)]
async fn nodes_whose_record_cannot_be_loaded_count_for_the_storm_guard() {
    let failing: HashSet<String> = (1..5).map(|i| format!("node-{i}")).collect();
    let store = Arc::new(FailingLoads { inner: MemoryStore::new(), failing });
    let exec = Arc::new(Recorder::default());
    let mut e = build(store, exec.clone(), Policy::default().with_monitor_only(false));
    let targets = nodes(10, &[0, 1, 2, 3, 4]);
    let r = e.run_pass(&targets).await;
    assert!(r.storm_guard, "4 unreadable + 1 failing of 10 is a storm");
    tokio::time::advance(6 * MIN).await;
    let r = e.run_pass(&targets).await;
    assert!(r.storm_guard);
    assert!(exec.actions().is_empty(), "{:?}", exec.actions());
    assert!(r.held.contains(&("node-0".to_owned(), HoldReason::StormGuard)));
}

/// Why 7: a node absent from one listing (deleted and re-registered) lost
/// its history and was rebooted again 7 minutes after its first reboot.
#[tokio::test(start_paused = true)]
async fn a_node_back_within_forget_after_keeps_its_history() {
    let exec = Arc::new(Recorder::default());
    let mut e = build(Arc::new(MemoryStore::new()), exec.clone(), Policy::default().with_monitor_only(false));
    let targets = nodes(10, &[0]);
    let _ = e.run_pass(&targets).await;
    tokio::time::advance(5 * MIN).await;
    let _ = e.run_pass(&targets).await;
    assert_eq!(exec.actions().len(), 1);
    tokio::time::advance(MIN).await;
    let r = e.run_pass(&targets[1..]).await;
    assert_eq!(r.departed, ["node-0"]);
    assert!(r.removed.is_empty());
    tokio::time::advance(6 * MIN).await;
    let r = e.run_pass(&targets).await;
    assert!(r.actions.is_empty(), "rebooted again 7 minutes after the first: {:?}", r.actions);
    assert_eq!(e.record("node-0").map(|r| (r.phase, r.reboot_count)), Some((Phase::WaitingReboot, 1)));
    tokio::time::advance(3 * MIN).await;
    let r = e.run_pass(&targets).await;
    assert_eq!(r.actions.len(), 1, "the second reboot comes at the end of the wait");
}

/// Why 8 and Must show: over 24 h of simulated time with holds (storm and
/// opt-out), departures and a store that fails every delete, the runtime's
/// evaluations stay bounded.
#[tokio::test(start_paused = true)]
async fn the_runtime_never_busy_loops() {
    struct NoDeletes(MemoryStore);
    #[async_trait]
    impl StateStore for NoDeletes {
        async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
            self.0.load(key).await
        }
        async fn save(&self, key: &str, r: &NodeRecord, v: Option<&Version>) -> Result<Version, StoreError> {
            self.0.save(key, r, v).await
        }
        async fn delete(&self, _: &str, _: Option<&Version>) -> Result<(), StoreError> {
            Err(StoreError::Backend { message: "503".into(), source: None })
        }
        async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
            self.0.list().await
        }
    }
    let exec = Arc::new(Recorder::default());
    // node-9 has a stored record (a node only ever healthy has none, and
    // would depart without a store call).
    let store = MemoryStore::new();
    let old = NodeRecord { phase: Phase::Healthy, reboot_count: 1, ..NodeRecord::default() };
    store.save("node-9", &old, None).await.expect("seeded");
    let e = build(Arc::new(NoDeletes(store)), exec, Policy::default().with_monitor_only(false));
    let passes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&passes);
    let runtime = Runtime::new(e).with_sink(move |ev| {
        if matches!(ev, RuntimeEvent::Pass { .. }) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut all = nodes(10, &[0, 1, 2, 3]);
    all[5].facts.opted_out = true;
    all[5].ready = false;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(TargetUpdate::Full(all.clone())).unwrap();
    // node-9 departs after an hour (its delete then fails forever).
    let sender = tokio::spawn(async move {
        tokio::time::sleep(60 * MIN).await;
        tx.send(TargetUpdate::Delete("node-9".into())).unwrap();
        tokio::time::sleep(24 * 60 * MIN).await;
        drop(tx);
    });
    let updates = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) }));
    let stopped = runtime.run(updates, tokio::time::sleep(24 * 60 * MIN)).await;
    sender.abort();
    let n = passes.load(Ordering::SeqCst);
    println!("evaluations in 24 h of simulated time: {n}");
    assert!(n <= 400, "{n} evaluations in 24 h");
    assert!(stopped.engine.record("node-9").is_some(), "the failing delete keeps the record");
}

struct Panicking;

#[async_trait]
impl HealthChecker<Node> for Panicking {
    fn name(&self) -> &str {
        "Panicking"
    }
    fn threshold(&self) -> Duration {
        MIN
    }
    async fn check(&self, target: &Node, _ctx: &CheckContext) -> CheckResult {
        if target.name == "node-1" {
            panic!("checker bug");
        }
        Ok(CheckOutcome::Pass)
    }
}

struct PanickingExec;

#[async_trait]
impl Executor<Node> for PanickingExec {
    async fn execute(&self, _: Action, _: &Node) -> Result<(), ExecError> {
        panic!("executor bug")
    }
}

struct PanickingObserver;

impl Observer<Node> for PanickingObserver {
    fn on_transition(&self, _: &Node, _: &TransitionEvent<'_>) {
        panic!("observer bug")
    }
}

/// Why 10: a panic in a checker, executor or observer aborted the pass and
/// killed the driver. Now a panicking checker is a failing check, a
/// panicking executor an action whose outcome is unknown, and the engine
/// goes on.
#[tokio::test(start_paused = true)]
async fn panics_are_contained() {
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(PanickingExec))
        .policy(Policy::default().with_monitor_only(false))
        .checker(ready_checker())
        .checker(Panicking)
        .observer(Arc::new(PanickingObserver))
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0))))
        .build()
        .expect("engine");
    let targets = nodes(10, &[0]);
    let r = e.run_pass(&targets).await;
    assert_eq!(r.evaluated, 10);
    // A panicking checker is a checker error: skipped for the error grace...
    assert!(e.record("node-1").unwrap().failing.is_empty());
    tokio::time::advance(5 * MIN).await;
    let r = e.run_pass(&targets).await;
    // ...then failing, with its own reason.
    let rec = e.record("node-1").unwrap();
    assert_eq!(rec.failing.first().map(|f| f.reason.as_str()), Some("CheckPanicked"));
    let failures: Vec<_> = r.actions.iter().filter_map(|a| a.failure.clone()).collect();
    assert!(failures.iter().any(|f| f.contains("the executor panicked: executor bug")), "{failures:?}");
    // The outcome is unknown, so the reboot counts as issued: its wait applies.
    let rec = e.record("node-0").unwrap();
    assert!(rec.not_before.is_some_and(|t| t >= Timestamp::from_secs(T0) + 15 * MIN), "{rec:?}");
}

/// Errs (a fork failure, a probe timeout) on every call.
struct Erring;

#[async_trait]
impl HealthChecker<Node> for Erring {
    fn name(&self) -> &str {
        "Probe"
    }
    fn threshold(&self) -> Duration {
        Duration::ZERO
    }
    async fn check(&self, target: &Node, _ctx: &CheckContext) -> CheckResult {
        if target.name == "node-0" {
            Err(CheckError::new("fork: resource temporarily unavailable"))
        } else {
            Ok(CheckOutcome::Pass)
        }
    }
}

/// Why 9: with threshold 0 one checker error rebooted the node at once.
/// Now an error is not a failure until it has lasted error_grace (5m).
#[tokio::test(start_paused = true)]
async fn a_checker_error_is_not_a_failure_until_the_grace_has_passed() {
    let exec = Arc::new(Recorder::default());
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), exec.clone())
        .policy(Policy::default().with_monitor_only(false))
        .checker(Erring)
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0))))
        .build()
        .expect("engine");
    let targets = nodes(10, &[]);
    let r = e.run_pass(&targets).await;
    assert!(r.actions.is_empty() && r.transitions.iter().all(|t| t.1.to != Phase::Unhealthy), "{r:?}");
    // The engine looks again when the grace ends.
    assert_eq!(e.next_deadline(), Some(Timestamp::from_secs(T0) + 5 * MIN));
    tokio::time::advance(4 * MIN).await;
    let r = e.run_pass(&targets).await;
    assert!(r.actions.is_empty());
    tokio::time::advance(MIN).await;
    let r = e.run_pass(&targets).await;
    assert_eq!(r.actions.first().map(|a| (a.node.as_str(), a.action)), Some(("node-0", Action::Reboot)));
    assert_eq!(e.record("node-0").unwrap().failing[0].reason, "CheckError");
}

/// A wall clock that follows tokio's (paused) clock and can be stepped.
#[derive(Clone)]
struct SteppingClock {
    origin: tokio::time::Instant,
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl Clock for SteppingClock {
    fn now(&self) -> Timestamp {
        let base = i64::try_from((Timestamp::from_secs(T0) + self.origin.elapsed()).as_millis()).unwrap();
        Timestamp::from_millis(u64::try_from(base + self.offset_ms.load(Ordering::SeqCst)).unwrap())
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Must show: wall-clock steps of −1 h, +2 h and +2 days, at every minute
/// of a remediation (before the threshold, during every reboot wait): two
/// reboots are never closer than the reboot wait in elapsed time, and none
/// comes later than the wait plus one pass (1 minute).
#[tokio::test(start_paused = true)]
async fn wall_clock_steps_never_shorten_or_stretch_a_wait() {
    const HOUR: i64 = 3_600_000;
    let mut runs = 0;
    for step in [-HOUR, 2 * HOUR, 48 * HOUR] {
        for at_minute in 0..60 {
            let clock = SteppingClock {
                origin: tokio::time::Instant::now(),
                offset_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            };
            let exec = Arc::new(Recorder::default());
            let mut e = Engine::builder(Arc::new(MemoryStore::new()), exec.clone())
                .policy(Policy::default().with_monitor_only(false))
                .checker(ready_checker())
                .clock(Arc::new(clock.clone()))
                .build()
                .expect("engine");
            let targets = nodes(10, &[0]);
            let start = tokio::time::Instant::now();
            for minute in 0..90 {
                if minute == at_minute {
                    clock.offset_ms.store(step, Ordering::SeqCst);
                }
                let _ = e.run_pass(&targets).await;
                tokio::time::advance(MIN).await;
            }
            let at: Vec<Duration> = exec.calls.lock().iter().map(|c| c.2 - start).collect();
            let ctx = format!("step {step} ms at minute {at_minute}: reboots at {at:?}");
            assert_eq!(at.len(), 5, "{ctx}");
            assert!(at[0] >= 5 * MIN && at[0] <= 6 * MIN, "{ctx}");
            for w in at.windows(2) {
                let gap = w[1] - w[0];
                assert!(gap >= 10 * MIN && gap <= 11 * MIN, "{ctx}");
            }
            runs += 1;
        }
    }
    assert_eq!(runs, 180);
}

/// With the node's time frame apart from the wall clock (here after a step
/// of 1.234 s), an action's outcome is still folded into the decision that
/// asked for it: one drain, then one replacement, not a drain loop.
#[tokio::test(start_paused = true)]
async fn a_drifted_frame_still_folds_each_outcome_once() {
    let clock = SteppingClock {
        origin: tokio::time::Instant::now(),
        offset_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
    };
    let exec = Arc::new(Recorder::default());
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), exec.clone())
        .policy(escalating())
        .checker(ready_checker())
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("engine");
    let targets = nodes(10, &[0]);
    let _ = e.run_pass(&targets).await;
    clock.offset_ms.store(1234, Ordering::SeqCst);
    for _ in 0..30 {
        tokio::time::advance(MIN).await;
        let _ = e.run_pass(&targets).await;
    }
    let actions: Vec<Action> = exec.actions().into_iter().map(|a| a.1).collect();
    assert_eq!(actions, [Action::Reboot, Action::Drain, Action::Replace]);
}

/// Item 4: checkers take "now" from the engine's clock (the check context),
/// so a simulated clock moves them too.
#[tokio::test(start_paused = true)]
async fn checkers_read_the_engines_clock() {
    struct SeesTime(Arc<Mutex<Vec<Timestamp>>>);
    #[async_trait]
    impl HealthChecker<Node> for SeesTime {
        fn name(&self) -> &str {
            "Clocked"
        }
        fn threshold(&self) -> Duration {
            Duration::ZERO
        }
        async fn check(&self, _: &Node, ctx: &CheckContext) -> CheckResult {
            self.0.lock().push(ctx.now);
            Ok(CheckOutcome::Pass)
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(T0)));
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(Recorder::default()))
        .checker(SeesTime(seen.clone()))
        .clock(clock.clone())
        .build()
        .expect("engine");
    let targets = nodes(1, &[]);
    let _ = e.run_pass(&targets).await;
    clock.advance(Duration::from_secs(3 * 24 * 3600));
    let _ = e.run_pass(&targets).await;
    assert_eq!(*seen.lock(), [Timestamp::from_secs(T0), Timestamp::from_secs(T0 + 3 * 24 * 3600)]);
}

/// An executor whose `block_at`-th call (1-based) is recorded and then
/// never returns; it tells the test when it blocks.
struct BlockingExec {
    log: Arc<Recorder>,
    calls: AtomicUsize,
    block_at: usize,
    blocked: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Executor<Node> for BlockingExec {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.execute(action, target).await?;
        if n == self.block_at {
            self.blocked.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Must show (cancellation at executor await points): the agent stops
/// while its N-th action has not answered (for every N of a remediation:
/// the grace runs out, the action is abandoned), and a new engine over the
/// same store carries on. The record is never reset, and no node is
/// rebooted twice within its reboot wait across the restart.
#[tokio::test(start_paused = true)]
async fn stopping_while_an_action_hangs_never_repeats_it_early() {
    for block_at in 1..=5 {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let clock = Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0)));
        let log = Arc::new(Recorder::default());
        let policy = Policy::default().with_monitor_only(false);
        let engine = |exec: Arc<dyn Executor<Node>>| {
            Engine::builder(store.clone(), exec)
                .policy(policy.clone())
                .checker(ready_checker())
                .clock(clock.clone())
                .build()
                .expect("valid engine")
        };
        let blocked = Arc::new(tokio::sync::Notify::new());
        let exec =
            Arc::new(BlockingExec { log: log.clone(), calls: AtomicUsize::new(0), block_at, blocked: blocked.clone() });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(TargetUpdate::Full(nodes(3, &[0]))).await.expect("runtime alive");
        let waiting = blocked.clone();
        let stopped = Runtime::new(engine(exec))
            .with_shutdown_grace(Duration::from_secs(30))
            .run(runtime::updates_from(rx), async move { waiting.notified().await })
            .await;
        assert!(stopped.abandoned, "block at {block_at}: the hung action was abandoned");
        let before = stopped.engine.record("node-0").expect("record").clone();
        assert_eq!(before.reboot_count as usize, block_at, "block at {block_at}: the hung reboot is on record");
        drop(stopped);

        // The restarted agent.
        let mut e = engine(log.clone());
        // node-0's record (the two healthy nodes have none).
        assert_eq!(e.restore().await.expect("restore"), 1);
        assert_eq!(e.record("node-0"), Some(&before), "block at {block_at}: the record survived as it was");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(TargetUpdate::Full(nodes(3, &[0]))).await.expect("runtime alive");
        let _ = Runtime::new(e).run(runtime::updates_from(rx), tokio::time::sleep(120 * MIN)).await;

        let calls = log.calls.lock().clone();
        let reboots: Vec<_> = calls.iter().filter(|c| c.0 == "node-0" && c.1 == Action::Reboot).map(|c| c.2).collect();
        assert_eq!(reboots.len(), 5, "block at {block_at}: every retry happened once ({calls:?})");
        for w in reboots.windows(2) {
            assert!(w[1] - w[0] >= 10 * MIN, "block at {block_at}: reboots {:?} apart", w[1] - w[0]);
        }
    }
}

/// An inspector sees the running engine between evaluations: a paused
/// engine holds the due node with reason Paused, and the view says so.
#[tokio::test(start_paused = true)]
async fn an_inspector_sees_holds_and_records_of_the_running_engine() {
    let exec = Arc::new(Recorder::default());
    let engine = build(Arc::new(MemoryStore::new()), exec.clone(), Policy::default().with_monitor_only(false));
    let controls = engine.controls();
    controls.set_paused(true);
    let runtime = Runtime::new(engine);
    let inspector = runtime.inspector();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(TargetUpdate::Full(nodes(3, &[1]))).await.expect("runtime alive");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runtime.run(runtime::updates_from(rx), async move {
        let _ = stop_rx.await;
    }));

    tokio::time::sleep(10 * MIN).await;
    let view = inspector
        .inspect(|e| {
            let n = e.node("node-1").expect("known");
            (n.record.phase, n.hold, n.running, e.nodes().count(), e.storm_guard_active())
        })
        .await
        .expect("the runtime answers");
    assert_eq!(view, (Phase::Unhealthy, Some(HoldReason::Paused), false, 3, false));
    assert!(exec.actions().is_empty(), "paused: nothing was done");

    controls.set_paused(false);
    tokio::time::sleep(MIN).await;
    let view = inspector.inspect(|e| e.node("node-1").map(|n| (n.record.phase, n.hold))).await.expect("answers");
    assert_eq!(view, Some((Phase::WaitingReboot, None)));
    assert_eq!(exec.actions(), vec![("node-1".to_owned(), Action::Reboot)]);

    stop_tx.send(()).expect("runtime alive");
    drop(task.await.expect("runtime ends"));
    assert_eq!(inspector.inspect(|e| e.nodes().count()).await, None, "a stopped runtime answers nothing");
}
