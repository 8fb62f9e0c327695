//! Engine tests: paused tokio time, mockall executors, a test metrics recorder.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use async_trait::async_trait;
use health_core::*;
use mockall::{Sequence, mock, predicate::eq};
use parking_lot::Mutex;

mod common;

use common::{MIN, Node, T0, nodes, ready_checker};

mock! {
    Exec {}
    #[async_trait]
    impl Executor<Node> for Exec {
        async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError>;
    }
}

fn active() -> Policy {
    Policy::default().with_monitor_only(false)
}

fn clock() -> TokioClock {
    TokioClock::starting_at(Timestamp::from_secs(T0))
}

fn engine(store: Arc<dyn StateStore>, exec: Arc<dyn Executor<Node>>, policy: Policy) -> Engine<Node> {
    Engine::builder(store, exec)
        .policy(policy)
        .checker(ready_checker())
        .clock(Arc::new(clock()))
        .build()
        .expect("valid engine")
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_store_conflict_never_produces_a_second_action() {
    // Two replicas share one store and both see node-0 broken.
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let mut first = MockExec::new();
    first.expect_execute().with(eq(Action::Reboot), mockall::predicate::always()).times(2).returning(|_, _| Ok(()));
    let mut second = MockExec::new();
    second.expect_execute().times(0);
    let mut a = engine(Arc::clone(&store), Arc::new(first), active());
    let mut b = engine(Arc::clone(&store), Arc::new(second), active());
    let targets = nodes(10, &[0]);

    let _ = a.run_pass(&targets).await;
    let _ = b.run_pass(&targets).await;
    assert_eq!(a.record("node-0").map(|r| r.phase), Some(Phase::Unhealthy));
    assert_eq!(b.record("node-0").map(|r| r.phase), Some(Phase::Unhealthy));

    advance(5 * MIN).await;
    let ra = a.run_pass(&targets).await;
    assert_eq!(ra.actions.len(), 1);
    // b still holds the old version: its save conflicts, it reloads, sees the
    // reboot already issued and does nothing.
    let rb = b.run_pass(&targets).await;
    assert_eq!(rb.conflicts, 1);
    assert!(rb.actions.is_empty(), "{:?}", rb.actions);
    assert!(rb.errors.is_empty());
    let rec = b.record("node-0").expect("record");
    assert_eq!((rec.phase, rec.reboot_count), (Phase::WaitingReboot, 1));
    // Both agree on the next deadline: the end of the reboot wait.
    assert_eq!(a.next_deadline(), b.next_deadline());
    assert_eq!(a.next_deadline(), Some(Timestamp::from_secs(T0) + 15 * MIN));
    // A driver sleeps until the wake-up instant; the wait then has expired.
    let wake = a.next_wakeup().expect("a deadline");
    tokio::time::sleep_until(wake).await;
    assert_eq!(a.next_wakeup(), Some(tokio::time::Instant::now()));
    let r = a.run_pass(&targets).await;
    assert_eq!(r.actions.len(), 1, "the second reboot is due exactly at the deadline");
}

struct Slow;

#[async_trait]
impl Executor<Node> for Slow {
    async fn execute(&self, _action: Action, _target: &Node) -> Result<(), ExecError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_executor_times_out_and_counts_a_failure() {
    let store = Arc::new(MemoryStore::new());
    let mut e = Engine::builder(store.clone(), Arc::new(Slow))
        .policy(active())
        .config(EngineConfig::default().with_action_timeouts(Duration::from_secs(30), 5 * MIN))
        .checker(ready_checker())
        .clock(Arc::new(clock()))
        .build()
        .expect("engine");
    let targets = nodes(3, &[1]);
    let _ = e.run_pass(&targets).await;
    advance(5 * MIN).await;
    let started = tokio::time::Instant::now();
    let r = e.run_pass(&targets).await;
    assert_eq!(started.elapsed(), Duration::from_secs(30), "the pass waited exactly the action timeout");
    let actions: Vec<_> = r.actions.iter().map(|a| (a.node.as_str(), a.action, a.mode, a.failure.as_deref())).collect();
    assert_eq!(actions, [("node-1", Action::Reboot, Mode::Active, Some("reboot timed out after 30s"))]);
    let rec = e.record("node-1").expect("record").clone();
    assert_eq!((rec.phase, rec.reboot_count, rec.action_failures), (Phase::Unhealthy, 0, 1));
    // Persisted, and not retried before a reboot wait plus back-off after issuing it.
    let stored = store.load("node-1").await.expect("load").expect("stored");
    assert_eq!(stored.record, rec);
    let issued = Timestamp::from_secs(T0) + 5 * MIN;
    assert_eq!(rec.not_before, Some(issued + 10 * MIN + MIN));
    assert_eq!(e.next_deadline(), rec.not_before);
}

#[tokio::test(start_paused = true)]
async fn monitor_only_runs_the_lifecycle_without_executing() {
    let mut exec = MockExec::new();
    exec.expect_execute().times(0);
    let mut e = engine(Arc::new(MemoryStore::new()), Arc::new(exec), Policy::default());
    let targets = nodes(10, &[3]);
    let mut reboots = 0;
    for _ in 0..40 {
        let r = e.run_pass(&targets).await;
        reboots += r.actions.iter().filter(|a| a.action == Action::Reboot && a.mode == Mode::Monitor).count();
        match e.next_deadline() {
            Some(_) => advance(10 * MIN).await,
            None => break,
        }
    }
    assert_eq!(reboots, 5);
    let rec = e.record("node-3").expect("record");
    assert_eq!((rec.phase, rec.reboot_count), (Phase::Failed, 5));
}

#[tokio::test(start_paused = true)]
async fn escalation_drains_then_replaces_in_order() {
    let mut exec = MockExec::new();
    let mut seq = Sequence::new();
    exec.expect_execute()
        .with(eq(Action::Reboot), mockall::predicate::always())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    exec.expect_execute()
        .with(eq(Action::Drain), mockall::predicate::always())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    exec.expect_execute()
        .with(eq(Action::Replace), mockall::predicate::always())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    let policy = active().with_replace(true).with_max_reboot_retries(1);
    let mut e = engine(Arc::new(MemoryStore::new()), Arc::new(exec), policy);
    let targets = nodes(10, &[0]);
    let _ = e.run_pass(&targets).await;
    advance(5 * MIN).await;
    assert_eq!(e.run_pass(&targets).await.actions.len(), 1);
    advance(10 * MIN).await;
    let r = e.run_pass(&targets).await;
    let actions: Vec<_> = r.actions.iter().map(|a| a.action).collect();
    assert_eq!(actions, [Action::Drain, Action::Replace]);
    let rec = e.record("node-0").expect("record");
    assert_eq!((rec.phase, rec.replace_count, rec.cordoned), (Phase::WaitingReplace, 1, true));
    // The replaced node disappears; its record is kept for forget_after
    // (30 minutes), then goes.
    let r = e.run_pass(&targets[1..]).await;
    assert_eq!((r.departed.as_slice(), r.removed.len()), (&["node-0".to_owned()][..], 0));
    assert!(e.record("node-0").is_some());
    advance(30 * MIN).await;
    let r = e.run_pass(&targets[1..]).await;
    assert_eq!(r.removed, ["node-0"]);
    assert!(e.record("node-0").is_none());
}

#[tokio::test(start_paused = true)]
async fn storm_guard_holds_everything_and_tells_observers() {
    #[derive(Default)]
    struct Events {
        storms: Mutex<Vec<StormEvent>>,
        holds: Mutex<Vec<(String, HoldReason)>>,
        transitions: Mutex<Vec<(String, Phase, Phase)>>,
    }
    impl Observer<Node> for Events {
        fn on_storm_guard(&self, e: &StormEvent) {
            self.storms.lock().push(*e);
        }
        fn on_hold(&self, _: &Node, e: &HoldEvent<'_>) {
            self.holds.lock().push((e.node.to_owned(), e.hold.reason));
        }
        fn on_transition(&self, _: &Node, e: &TransitionEvent<'_>) {
            self.transitions.lock().push((e.node.to_owned(), e.from, e.to));
        }
    }
    let events = Arc::new(Events::default());
    let mut exec = MockExec::new();
    exec.expect_execute().times(1).returning(|_, _| Ok(()));
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(exec))
        .policy(active())
        .checker(ready_checker())
        .observer(events.clone())
        .clock(Arc::new(clock()))
        .build()
        .expect("engine");
    // 3 of 10 broken: more than 20% (2).
    let broken = nodes(10, &[0, 1, 2]);
    let _ = e.run_pass(&broken).await;
    advance(5 * MIN).await;
    let r = e.run_pass(&broken).await;
    assert!(r.storm_guard);
    assert!(r.actions.is_empty());
    assert_eq!(r.held.len(), 3);
    assert!(r.held.iter().all(|(_, h)| *h == HoldReason::StormGuard));
    // A second pass does not repeat the hold events.
    let _ = e.run_pass(&broken).await;
    assert_eq!(events.holds.lock().len(), 3);
    let storms = events.storms.lock().clone();
    assert_eq!(storms.len(), 1);
    assert_eq!((storms[0].active, storms[0].unhealthy, storms[0].limit), (true, 3, 2));
    assert_eq!(e.next_deadline(), None, "nothing can change until the cluster does");
    // One recovers: the guard lifts and the others are looked at again at once.
    let recovering = nodes(10, &[0, 1]);
    let r = e.run_pass(&recovering).await;
    assert!(!r.storm_guard);
    // With the guard lifted the first due node reboots (max_in_flight is 1 of 10).
    assert_eq!(r.actions.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(), ["node-0"]);
    assert_eq!(events.storms.lock().last().map(|s| s.active), Some(false));
    let transitions = events.transitions.lock().clone();
    assert!(transitions.contains(&("node-2".into(), Phase::Unhealthy, Phase::Healthy)));
    assert!(transitions.contains(&("node-0".into(), Phase::Unknown, Phase::Unhealthy)));
}

#[tokio::test(start_paused = true)]
async fn in_flight_slots_free_up_within_a_pass_and_across_passes() {
    let clk = clock();
    let mut exec = MockExec::new();
    exec.expect_execute().times(3).returning(|_, _| Ok(()));
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(exec))
        .policy(active())
        .checker(ready_checker())
        .clock(Arc::new(clk))
        .build()
        .expect("engine");
    let forward = nodes(10, &[0, 1, 2]);
    let mut backward = forward.clone();
    backward.reverse();
    // 3 of 10 is a storm (more than 20%); make it 3 of 20.
    let mut forward_big = forward.clone();
    forward_big.extend((10..20).map(|i| Node::new(&format!("node-{i}"), true)));
    let mut backward_big = backward.clone();
    backward_big.extend((10..20).map(|i| Node::new(&format!("node-{i}"), true)));

    let _ = e.run_pass(&forward_big).await;
    advance(5 * MIN).await;
    // max_in_flight is 2 for 20 nodes: node-2 and node-1 reboot, node-0 waits.
    let r = e.run_pass(&backward_big).await;
    assert_eq!(r.actions.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(), ["node-2", "node-1"]);
    assert_eq!(r.held, [("node-0".to_owned(), HoldReason::MaxInFlight)]);
    assert_eq!(e.next_deadline(), Some(clk.now() + 10 * MIN));

    // node-2 recovers; it is decided before node-0, so node-0 gets the slot in the same pass.
    let mut recovered = backward_big.clone();
    recovered[7].ready = true;
    assert_eq!(recovered[7].name, "node-2");
    let r = e.run_pass(&recovered).await;
    assert_eq!(r.actions.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(), ["node-0"]);

    // All recover but the hold is re-checked only when it lifts: the held node
    // is looked at again at once, not at a timer.
    let mut e2_exec = MockExec::new();
    e2_exec.expect_execute().times(2).returning(|_, _| Ok(()));
    let mut e2 = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(e2_exec))
        .policy(active())
        .checker(ready_checker())
        .clock(Arc::new(clk))
        .build()
        .expect("engine");
    let two = nodes(10, &[0, 1]);
    let mut two_back = two.clone();
    two_back.reverse();
    let _ = e2.run_pass(&two).await;
    advance(5 * MIN).await;
    let r = e2.run_pass(&two_back).await;
    assert_eq!(r.actions.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(), ["node-1"]);
    // node-1 recovers, but node-0 is decided first and is held again...
    let mut fixed = nodes(10, &[0]);
    fixed[1].ready = true;
    let r = e2.run_pass(&fixed).await;
    assert_eq!(r.held, [("node-0".to_owned(), HoldReason::MaxInFlight)]);
    // ...so the engine asks to be woken at once, and then node-0 gets its turn.
    assert_eq!(e2.next_deadline(), Some(clk.now()));
    let r = e2.run_pass(&fixed).await;
    assert!(r.held.is_empty());
    assert_eq!(r.actions.iter().map(|a| a.node.as_str()).collect::<Vec<_>>(), ["node-0"]);
    // The next wake-up: node-1, verifying since its recovery, counts as
    // recovered after verify_for (2m), before node-0's reboot wait ends.
    assert_eq!(e2.record("node-1").map(|r| r.phase), Some(Phase::Verifying));
    assert_eq!(e2.next_deadline(), Some(clk.now() + 2 * MIN));
}

#[tokio::test(start_paused = true)]
async fn controls_pause_and_wake_drivers() {
    let mut exec = MockExec::new();
    exec.expect_execute().times(0);
    let mut e = engine(Arc::new(MemoryStore::new()), Arc::new(exec), active());
    let targets = nodes(10, &[0]);
    let _ = e.run_pass(&targets).await;
    let controls = e.controls();
    let woke = tokio::spawn({
        let c = Arc::clone(&controls);
        async move { c.changed().await }
    });
    tokio::task::yield_now().await;
    controls.set_paused(true);
    woke.await.expect("woken");
    advance(5 * MIN).await;
    let r = e.run_pass(&targets).await;
    assert_eq!(r.held, [("node-0".to_owned(), HoldReason::Paused)]);
    assert_eq!(e.next_deadline(), None);
    controls.set_paused(false);
    // Resuming lifts the hold: the driver is told to look again now.
    let _ = e.evaluate(&[]).await;
    assert!(e.next_deadline().is_some());
}

#[tokio::test(start_paused = true)]
async fn state_survives_a_restart() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let mut exec = MockExec::new();
    exec.expect_execute().times(1).returning(|_, _| Ok(()));
    let mut a = engine(Arc::clone(&store), Arc::new(exec), active());
    let targets = nodes(10, &[4]);
    let _ = a.run_pass(&targets).await;
    advance(5 * MIN).await;
    assert_eq!(a.run_pass(&targets).await.actions.len(), 1);
    drop(a);

    // A new process two minutes later (its clock reads the same wall time):
    // it must not reboot again.
    advance(2 * MIN).await;
    let mut exec = MockExec::new();
    exec.expect_execute().times(0);
    let mut b = Engine::builder(Arc::clone(&store), Arc::new(exec))
        .policy(active())
        .checker(ready_checker())
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0) + 7 * MIN)))
        .build()
        .expect("valid engine");
    // Only node-4 has a record: the others have only ever been healthy.
    assert_eq!(b.restore().await.expect("restore"), 1);
    let r = b.run_pass(&targets).await;
    assert!(r.actions.is_empty());
    assert_eq!(b.record("node-4").map(|r| (r.phase, r.reboot_count)), Some((Phase::WaitingReboot, 1)));
    assert_eq!(b.next_deadline(), Some(Timestamp::from_secs(T0) + 15 * MIN));
}

#[tokio::test(start_paused = true)]
async fn a_node_only_ever_healthy_is_not_written() {
    let store = Arc::new(MemoryStore::new());
    let mut exec = MockExec::new();
    exec.expect_execute().times(0);
    let mut e = engine(Arc::clone(&store) as Arc<dyn StateStore>, Arc::new(exec), Policy::default());
    let r = e.run_pass(&nodes(5, &[])).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Every node became Healthy (and says so), none was written.
    assert_eq!(r.transitions.len(), 5);
    assert_eq!(e.record("node-1").map(|r| r.phase), Some(Phase::Healthy));
    assert_eq!(store.len(), 0);

    // node-2 fails: its first record is a create; the others stay unwritten.
    advance(MIN).await;
    let _ = e.run_pass(&nodes(5, &[2])).await;
    assert_eq!(store.len(), 1);
    let stored = store.load("node-2").await.expect("load").expect("node-2 stored");
    assert_eq!(stored.record.phase, Phase::Unhealthy);

    // It recovers: its record is updated (it has a story now), not dropped.
    advance(MIN).await;
    let _ = e.run_pass(&nodes(5, &[])).await;
    let stored = store.load("node-2").await.expect("load").expect("node-2 still stored");
    assert_eq!(stored.record.phase, Phase::Healthy);
    assert!(stored.record.healthy_since.is_some());
    assert_eq!(store.len(), 1);
}

/// A memory store that counts single-record loads.
struct CountingLoads(MemoryStore, AtomicUsize);

#[async_trait]
impl StateStore for CountingLoads {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.load(key).await
    }
    async fn save(&self, key: &str, r: &NodeRecord, v: Option<&Version>) -> Result<Version, StoreError> {
        self.0.save(key, r, v).await
    }
    async fn delete(&self, key: &str, v: Option<&Version>) -> Result<(), StoreError> {
        self.0.delete(key, v).await
    }
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        self.0.list().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_restart_reads_the_listing_not_each_healthy_node() {
    let store = Arc::new(CountingLoads(MemoryStore::new(), AtomicUsize::new(0)));
    let mut a = engine(Arc::clone(&store) as Arc<dyn StateStore>, Arc::new(MockExec::new()), Policy::default());
    let _ = a.run_pass(&nodes(5, &[2])).await;
    assert_eq!(store.0.len(), 1, "only the failing node is stored");
    drop(a);

    // A new process: one listing, then a pass over the five nodes without a
    // load per node (the four healthy ones have no record, as listed).
    store.1.store(0, Ordering::SeqCst);
    let mut b = engine(Arc::clone(&store) as Arc<dyn StateStore>, Arc::new(MockExec::new()), Policy::default());
    assert_eq!(b.restore().await.expect("restore"), 1);
    let r = b.run_pass(&nodes(5, &[2])).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(store.1.load(Ordering::SeqCst), 0, "no per-node loads after the listing");
    assert_eq!(b.record("node-2").map(|r| r.phase), Some(Phase::Unhealthy));
    assert_eq!(b.record("node-1").map(|r| r.phase), Some(Phase::Healthy));

    // A node that joins later is loaded (the listing is no longer current).
    let mut six = nodes(6, &[2]);
    six.rotate_right(1);
    let _ = b.run_pass(&six).await;
    assert_eq!(store.1.load(Ordering::SeqCst), 1, "node-5 is read once");

    // A healthy node that departs is dropped without a store call (nothing
    // is stored for it); the stored record of node-2 stays.
    advance(31 * MIN).await;
    let _ = b.run_pass(&nodes(5, &[2])[..3]).await;
    advance(31 * MIN).await;
    let r = b.run_pass(&nodes(5, &[2])[..3]).await;
    assert!(r.removed.iter().any(|n| n == "node-4"), "{:?}", r.removed);
    assert_eq!(store.0.len(), 1);
}

struct Hanging;

#[async_trait]
impl HealthChecker<Node> for Hanging {
    fn name(&self) -> &str {
        "Hanging"
    }
    fn threshold(&self) -> Duration {
        Duration::ZERO
    }
    async fn check(&self, target: &Node, _ctx: &CheckContext) -> CheckResult {
        match target.name.as_str() {
            "node-0" => std::future::pending().await,
            "node-1" => Err(CheckError::new("connection refused")),
            _ => Ok(CheckOutcome::Pass),
        }
    }
}

struct Gauged {
    running: AtomicUsize,
    peak: AtomicUsize,
}

#[async_trait]
impl HealthChecker<Node> for Gauged {
    fn name(&self) -> &str {
        "Gauged"
    }
    fn threshold(&self) -> Duration {
        MIN
    }
    async fn check(&self, _target: &Node, _ctx: &CheckContext) -> CheckResult {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(CheckOutcome::Pass)
    }
}

#[tokio::test(start_paused = true)]
async fn checks_are_bounded_timed_out_and_errors_fail_only_after_the_grace() {
    let gauged = Arc::new(Gauged { running: AtomicUsize::new(0), peak: AtomicUsize::new(0) });
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(MockExec::new()))
        .config(EngineConfig::default().with_check_concurrency(4).with_check_timeout(Duration::from_secs(5)))
        .checker(Hanging)
        .checker_arc(gauged.clone())
        .clock(Arc::new(clock()))
        .build()
        .expect("engine");
    let targets = nodes(20, &[]);
    let started = tokio::time::Instant::now();
    let _ = e.run_pass(&targets).await;
    assert_eq!(gauged.peak.load(Ordering::SeqCst), 4);
    assert!(started.elapsed() >= Duration::from_secs(5), "the hanging check ran into its timeout");
    // A checker's own error or timeout is skipped for error_grace (5m)...
    assert!(e.record("node-0").unwrap().failing.is_empty());
    assert!(e.record("node-1").unwrap().failing.is_empty());
    // ...and counts as failing once it has lasted that long.
    advance(5 * MIN).await;
    let _ = e.run_pass(&targets).await;
    let failing = |n: &str| {
        e.record(n).map(|r| r.failing.iter().map(|f| (f.checker.clone(), f.reason.clone())).collect::<Vec<_>>())
    };
    assert_eq!(failing("node-0").unwrap_or_default(), [("Hanging".to_owned(), "CheckTimeout".to_owned())]);
    assert_eq!(failing("node-1").unwrap_or_default(), [("Hanging".to_owned(), "CheckError".to_owned())]);
    assert!(failing("node-2").unwrap_or_default().is_empty());
}

#[tokio::test(start_paused = true)]
async fn builder_rejects_bad_configuration() {
    let build = |policy: Policy, config: EngineConfig| {
        Engine::<Node>::builder(Arc::new(MemoryStore::new()), Arc::new(MockExec::new()))
            .policy(policy)
            .config(config)
            .checker(ready_checker())
            .build()
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        build(Policy::default().with_max_reboot_failures(11), EngineConfig::default()).as_deref(),
        Some("invalid policy: max_reboot_failures must be at most 10, got 11")
    );
    assert_eq!(
        build(Policy::default(), EngineConfig::default().with_metrics_prefix("9bad-prefix")).as_deref(),
        Some(
            "invalid engine config: metrics_prefix must be a Prometheus name: letters, digits and underscores, not starting with a digit"
        )
    );
    assert_eq!(
        build(Policy::default(), EngineConfig::default().with_check_concurrency(0)).as_deref(),
        Some("invalid engine config: check_concurrency must be a whole number of at least 1")
    );
    let dup = Engine::<Node>::builder(Arc::new(MemoryStore::new()), Arc::new(MockExec::new()))
        .checker(ready_checker())
        .checker(ready_checker())
        .build()
        .err()
        .map(|e| e.to_string());
    assert_eq!(dup.as_deref(), Some("two checkers are named \"NodeReady\": checker names must be unique"));
}

/// A store whose writes fail with a backend error.
struct Broken(MemoryStore);

#[async_trait]
impl StateStore for Broken {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.0.load(key).await
    }
    async fn save(&self, _: &str, _: &NodeRecord, _: Option<&Version>) -> Result<Version, StoreError> {
        Err(StoreError::Backend { message: "disk full".into(), source: None })
    }
    async fn delete(&self, key: &str, v: Option<&Version>) -> Result<(), StoreError> {
        self.0.delete(key, v).await
    }
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        self.0.list().await
    }
}

// ---- metrics ---------------------------------------------------------------

#[derive(Default)]
struct TestRecorder {
    series: Mutex<HashMap<(SeriesKind, String), Arc<AtomicU64>>>,
    help: Mutex<HashMap<String, String>>,
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    fn handle(&self, kind: SeriesKind, key: &Key) -> Arc<AtomicU64> {
        Arc::clone(self.series.lock().entry((kind, render(key))).or_default())
    }
    fn counter(&self, series: &str) -> Option<u64> {
        self.series.lock().get(&(SeriesKind::Counter, series.to_owned())).map(|v| v.load(Ordering::SeqCst))
    }
    fn gauge(&self, series: &str) -> Option<f64> {
        self.series
            .lock()
            .get(&(SeriesKind::Gauge, series.to_owned()))
            .map(|v| f64::from_bits(v.load(Ordering::SeqCst)))
    }
    fn with_node(&self, node: &str) -> Vec<String> {
        let needle = format!("node={node}");
        let mut v: Vec<String> =
            self.series.lock().keys().filter(|(_, k)| k.contains(&needle)).map(|(_, k)| k.clone()).collect();
        v.sort();
        v
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.help.lock().insert(key.as_str().to_owned(), help.into_owned());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.help.lock().insert(key.as_str().to_owned(), help.into_owned());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, help: SharedString) {
        self.help.lock().insert(key.as_str().to_owned(), help.into_owned());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(SeriesKind::Counter, key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(SeriesKind::Gauge, key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl SeriesRemover for TestRecorder {
    fn remove_series(&self, kind: SeriesKind, key: &Key) {
        self.series.lock().remove(&(kind, render(key)));
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_carry_design_names_and_labels_and_vanish_with_the_node() {
    let recorder = Arc::new(TestRecorder::default());
    let _guard = ::metrics::set_default_local_recorder(&*recorder);
    let mut exec = MockExec::new();
    exec.expect_execute().times(1).returning(|_, _| Err(ExecError::failed(Action::Reboot, "HTTP 500")));
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(exec))
        .policy(active())
        .config(EngineConfig::default().with_forget_after(Duration::ZERO))
        .checker(ready_checker())
        .clock(Arc::new(clock()))
        .series_remover(recorder.clone())
        .build()
        .expect("engine");
    let targets = nodes(5, &[1]);
    let _ = e.run_pass(&targets).await;
    advance(5 * MIN).await;
    let _ = e.run_pass(&targets).await;

    let p = "node_health";
    assert_eq!(
        recorder.counter(&format!("{p}_health_check_total{{checker=NodeReady,node=node-0,result=pass}}")),
        Some(2)
    );
    // node-1 was checked a third time: the failed reboot is decided again
    // from a fresh evaluation.
    assert_eq!(
        recorder.counter(&format!("{p}_health_check_total{{checker=NodeReady,node=node-1,result=fail}}")),
        Some(3)
    );
    // Series are registered when first written: node-1 never passed.
    assert_eq!(recorder.counter(&format!("{p}_health_check_total{{checker=NodeReady,node=node-1,result=pass}}")), None);
    assert_eq!(recorder.counter(&format!("{p}_health_check_total{{checker=NodeReady,node=node-0,result=fail}}")), None);
    assert_eq!(
        recorder.counter(&format!("{p}_recovery_actions_total{{action=reboot,mode=active,node=node-1}}")),
        Some(1)
    );
    assert_eq!(recorder.counter(&format!("{p}_recovery_failures_total{{action=reboot,node=node-1}}")), Some(1));
    assert_eq!(recorder.gauge(&format!("{p}_node_unhealthy_duration_seconds{{node=node-1}}")), Some(300.0));
    assert_eq!(recorder.gauge(&format!("{p}_node_unhealthy_duration_seconds{{node=node-0}}")), Some(0.0));
    // One-hot phase over the phases node-1 has been in: the failed reboot
    // left it Unhealthy (after WaitingReboot); phases it never entered have
    // no series.
    for (phase, want) in [
        ("Healthy", None),
        ("Unhealthy", Some(1.0)),
        ("WaitingReboot", Some(0.0)),
        ("Draining", None),
        ("WaitingReplace", None),
        ("Failed", None),
    ] {
        assert_eq!(recorder.gauge(&format!("{p}_recovery_phase{{node=node-1,phase={phase}}}")), want, "{phase}");
    }
    assert_eq!(recorder.gauge(&format!("{p}_recovery_phase{{node=node-0,phase=Healthy}}")), Some(1.0));
    assert_eq!(recorder.gauge(&format!("{p}_selected_nodes{{}}")), Some(5.0));
    assert_eq!(recorder.gauge(&format!("{p}_unhealthy_nodes{{}}")), Some(1.0));
    assert_eq!(recorder.gauge(&format!("{p}_storm_guard_active{{}}")), Some(0.0));
    for name in ["health_check_total", "recovery_phase", "node_unhealthy_duration_seconds", "recovery_actions_total"] {
        assert!(recorder.help.lock().contains_key(&format!("{p}_{name}")), "HELP for {name}");
    }

    // node-1 leaves the cluster (forget_after 0): every series naming it goes.
    assert!(!recorder.with_node("node-1").is_empty());
    let r = e.run_pass(&[targets[0].clone(), targets[2].clone(), targets[3].clone(), targets[4].clone()]).await;
    assert_eq!(r.removed, ["node-1"]);
    assert_eq!(recorder.with_node("node-1"), Vec::<String>::new());
    assert!(!recorder.with_node("node-0").is_empty());
    assert_eq!(recorder.gauge(&format!("{p}_selected_nodes{{}}")), Some(4.0));
}

#[tokio::test(start_paused = true)]
async fn store_errors_back_off_instead_of_spinning() {
    let clk = clock();
    let mut exec = MockExec::new();
    exec.expect_execute().times(0);
    let mut e = Engine::builder(Arc::new(Broken(MemoryStore::new())), Arc::new(exec))
        .policy(active())
        .checker(ready_checker())
        .clock(Arc::new(clk))
        .build()
        .expect("engine");
    // node-1 fails: its first record cannot be written (a healthy node
    // writes nothing, so it never meets the broken store).
    let targets = nodes(3, &[1]);
    let _ = e.run_pass(&targets).await;
    assert_eq!(e.next_deadline(), Some(clk.now() + Duration::from_secs(5)));
    advance(Duration::from_secs(5)).await;
    let _ = e.run_pass(&targets).await;
    assert_eq!(e.next_deadline(), Some(clk.now() + Duration::from_secs(10)), "the back-off doubles");
}

#[tokio::test(start_paused = true)]
async fn an_empty_or_stale_listing_never_erases_history() {
    let store = Arc::new(MemoryStore::new());
    let mut e = engine(store.clone(), Arc::new(MockExec::new()), Policy::default());
    // Two nodes with a story (healthy ones have no record).
    let targets = nodes(4, &[2, 3]);
    let _ = e.run_pass(&targets).await;
    assert_eq!(store.len(), 2);
    // An unsynced watch cache: no targets at all.
    let r = e.run_pass(&[]).await;
    assert!(r.removed.is_empty());
    assert_eq!(store.len(), 2);
    // A partial listing while the API server is unreachable.
    e.controls().set_source_stale(true);
    let r = e.run_pass(&targets[..1]).await;
    assert!(r.removed.is_empty());
    assert_eq!(store.len(), 2);
    // A fresh listing without node-3: it departs, and goes after forget_after.
    e.controls().set_source_stale(false);
    let r = e.run_pass(&targets[..3]).await;
    assert_eq!(r.departed, ["node-3"]);
    assert_eq!(store.len(), 2);
    assert_eq!(e.record("node-2").map(|r| r.phase), Some(Phase::Unhealthy));
    advance(30 * MIN).await;
    let r = e.run_pass(&targets[..3]).await;
    assert_eq!(r.removed, ["node-3"]);
    assert_eq!(store.len(), 1);
}

/// Drains successfully, but an operator pauses remediation while the drain runs.
struct PausedDuringDrain {
    controls: std::sync::OnceLock<Arc<Controls>>,
    calls: Mutex<Vec<Action>>,
}

#[async_trait]
impl Executor<Node> for PausedDuringDrain {
    async fn execute(&self, action: Action, _target: &Node) -> Result<(), ExecError> {
        self.calls.lock().push(action);
        if action == Action::Drain {
            tokio::time::sleep(3 * MIN).await;
            if let Some(c) = self.controls.get() {
                c.set_paused(true);
            }
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_pause_during_a_drain_holds_the_replacement() {
    let clk = clock();
    let exec = Arc::new(PausedDuringDrain { controls: std::sync::OnceLock::new(), calls: Mutex::new(Vec::new()) });
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), exec.clone())
        .policy(active().with_replace(true).with_max_reboot_retries(1))
        .checker(ready_checker())
        .clock(Arc::new(clk))
        .build()
        .expect("engine");
    let _ = exec.controls.set(e.controls());
    let targets = nodes(10, &[0]);
    let _ = e.run_pass(&targets).await;
    advance(5 * MIN).await;
    let _ = e.run_pass(&targets).await;
    advance(10 * MIN).await;
    let r = e.run_pass(&targets).await;
    assert_eq!(*exec.calls.lock(), [Action::Reboot, Action::Drain]);
    assert_eq!(r.held, [("node-0".to_owned(), HoldReason::Paused)]);
    let rec = e.record("node-0").expect("record");
    assert_eq!((rec.phase, rec.drained, rec.cordoned), (Phase::Draining, true, true));
    // Resumed: the replacement goes ahead, stamped with the time it really happens.
    e.controls().set_paused(false);
    let r = e.run_pass(&targets).await;
    assert_eq!(r.actions.iter().map(|a| a.action).collect::<Vec<_>>(), [Action::Replace]);
    assert_eq!(e.record("node-0").and_then(|r| r.last_action_at), Some(clk.now()));
}

#[tokio::test(start_paused = true)]
async fn store_errors_are_counted_and_never_lead_to_action() {
    let recorder = TestRecorder::default();
    let _guard = ::metrics::set_default_local_recorder(&recorder);
    let mut exec = MockExec::new();
    exec.expect_execute().times(0);
    let mut e = Engine::builder(Arc::new(Broken(MemoryStore::new())), Arc::new(exec))
        .policy(active())
        .config(EngineConfig::default().with_metrics_prefix("acme"))
        .checker(FnChecker::new("Sentinel", Duration::ZERO, |_: &Node| CheckOutcome::fail("RebootRequired")))
        .clock(Arc::new(clock()))
        .build()
        .expect("engine");
    let r = e.run_pass(&nodes(10, &[])).await;
    assert!(r.actions.is_empty());
    assert_eq!(r.errors.len(), 10);
    assert_eq!(r.errors[0].error.to_string(), "state store backend failed: disk full");
    assert_eq!(recorder.counter("acme_reconcile_errors_total{reason=store_save}"), Some(10));
}
