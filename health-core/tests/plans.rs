//! A remediation plan (the `drain-reboot` rung: cordon and drain, reboot,
//! wait, verify, uncordon) interrupted at each of its steps, the engine
//! dropped mid-action as a killed process would be, and resumed by a new
//! engine on the same store. Paused tokio time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use health_core::*;
use parking_lot::Mutex;

mod common;

use common::{MIN, Node, T0, nodes, ready_checker};

/// The world: node-0 is broken until it is rebooted. Every call is logged
/// when it starts; the `block_at`-th call never returns.
struct World {
    fixed: AtomicBool,
    calls: AtomicUsize,
    block_at: usize,
    log: Mutex<Vec<Action>>,
    blocked: tokio::sync::Notify,
}

impl World {
    fn targets(&self) -> Vec<Node> {
        if self.fixed.load(Ordering::SeqCst) { nodes(3, &[]) } else { nodes(3, &[0]) }
    }
}

struct Exec(Arc<World>);

#[async_trait]
impl Executor<Node> for Exec {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        assert_eq!(target.name, "node-0", "only the broken node is touched");
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.log.lock().push(action);
        if action == Action::Reboot {
            // The reboot reached the machine (whatever happens to the agent).
            self.0.fixed.store(true, Ordering::SeqCst);
        }
        if n == self.0.block_at {
            self.0.blocked.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

fn policy() -> Policy {
    Policy::default().with_monitor_only(false).with_max_reboot_retries(1).with_ladder(Ladder {
        class: None,
        checker: None,
        rungs: vec![Rung::DrainReboot],
    })
}

/// node-0 broken until rebooted; the `block_at`-th call hangs.
fn world(block_at: usize) -> Arc<World> {
    Arc::new(World {
        fixed: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
        block_at,
        log: Mutex::new(Vec::new()),
        blocked: tokio::sync::Notify::new(),
    })
}

fn engine(store: Arc<dyn StateStore>, world: &Arc<World>) -> Engine<Node> {
    engine_with(store, world, None)
}

/// The engine over `world`, with NodeReady and an optional validation probe.
fn engine_with(
    store: Arc<dyn StateStore>,
    world: &Arc<World>,
    probe: Option<Arc<dyn HealthChecker<Node>>>,
) -> Engine<Node> {
    let mut b = Engine::builder(store, Arc::new(Exec(Arc::clone(world)))).policy(policy()).checker(ready_checker());
    if let Some(p) = probe {
        b = b.checker_arc(p);
    }
    b.clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0)))).build().expect("valid engine")
}

#[tokio::test(start_paused = true)]
async fn a_plan_interrupted_at_any_step_resumes_where_it_stopped() {
    // The plan's calls: drain, reboot, uncordon.
    for block_at in 1..=3 {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let world = world(block_at);
        let mut e = engine(Arc::clone(&store), &world);
        // Run until the block_at-th call hangs, then drop the engine with it
        // (the future is dropped: what a killed process leaves behind).
        let interrupted = async {
            loop {
                let _ = e.run_pass(&world.targets()).await;
                tokio::time::sleep(MIN).await;
            }
        };
        tokio::select! {
            () = interrupted => unreachable!(),
            () = world.blocked.notified() => {}
        }
        let phase_then = e.record("node-0").map(|r| r.phase);
        drop(e);

        // A new engine on the same store carries the plan on.
        let mut e = engine(Arc::clone(&store), &world);
        assert_eq!(e.restore().await.expect("restore"), 1, "block at {block_at}");
        assert_eq!(e.record("node-0").map(|r| r.phase), phase_then, "block at {block_at}: resumed at its step");
        for _ in 0..90 {
            let _ = e.run_pass(&world.targets()).await;
            tokio::time::sleep(MIN).await;
        }
        let record = e.record("node-0").expect("record").clone();
        assert_eq!(record.phase, Phase::Healthy, "block at {block_at}");
        assert!(!record.cordoned, "block at {block_at}: uncordoned at the end");
        let log = world.log.lock().clone();
        // Each step completed once; the interrupted one ran again only when
        // it is idempotent (a drain, an uncordon), never the reboot.
        let expected: &[Action] = match block_at {
            1 => &[Action::Drain, Action::Drain, Action::Reboot, Action::Uncordon],
            2 => &[Action::Drain, Action::Reboot, Action::Uncordon],
            _ => &[Action::Drain, Action::Reboot, Action::Uncordon, Action::Uncordon],
        };
        assert_eq!(log, expected, "block at {block_at}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_plan_verifies_before_it_uncordons() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let world = world(usize::MAX);
    let mut e = engine(store, &world);
    let mut phases = Vec::new();
    for _ in 0..30 {
        let _ = e.run_pass(&world.targets()).await;
        let r = e.record("node-0").expect("record");
        if phases.last() != Some(&r.phase) {
            phases.push(r.phase);
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    assert_eq!(phases, [Phase::Unhealthy, Phase::WaitingReboot, Phase::Verifying, Phase::Healthy]);
    assert_eq!(*world.log.lock(), [Action::Drain, Action::Reboot, Action::Uncordon]);
}

/// A validation probe runs only for nodes being verified, not on every
/// healthy node at every pass.
#[tokio::test(start_paused = true)]
async fn a_validation_probe_runs_only_while_a_node_is_verified() {
    struct Burn(Arc<Mutex<Vec<String>>>);
    #[async_trait]
    impl HealthChecker<Node> for Burn {
        fn name(&self) -> &str {
            "BurnIn"
        }
        fn threshold(&self) -> Duration {
            Duration::ZERO
        }
        async fn check(&self, n: &Node, _: &CheckContext) -> CheckResult {
            self.0.lock().push(n.name.clone());
            Ok(CheckOutcome::Pass)
        }
    }
    let ran = Arc::new(Mutex::new(Vec::new()));
    let world = world(usize::MAX);
    let mut e = engine_with(Arc::new(MemoryStore::new()), &world, Some(Arc::new(Validation(Burn(Arc::clone(&ran))))));
    for _ in 0..40 {
        let _ = e.run_pass(&world.targets()).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    assert_eq!(e.record("node-0").map(|r| r.phase), Some(Phase::Healthy));
    let ran = ran.lock().clone();
    assert!(!ran.is_empty() && ran.iter().all(|n| n == "node-0"), "only the verified node: {ran:?}");
    assert!(ran.len() <= 5, "only while verifying (2m at 30s passes): {ran:?}");
}

/// A validation probe that cannot answer has not validated the node: no
/// error grace for it, the node is not reported recovered.
#[tokio::test(start_paused = true)]
async fn a_validation_probe_that_errs_does_not_validate() {
    struct Hangs;
    #[async_trait]
    impl HealthChecker<Node> for Hangs {
        fn name(&self) -> &str {
            "BurnIn"
        }
        fn threshold(&self) -> Duration {
            Duration::ZERO
        }
        async fn check(&self, _: &Node, _: &CheckContext) -> CheckResult {
            Err(CheckError::new("the burn-in tool is missing"))
        }
    }
    let world = world(usize::MAX);
    let mut e = engine_with(Arc::new(MemoryStore::new()), &world, Some(Arc::new(Validation(Hangs))));
    let mut phases = Vec::new();
    for _ in 0..60 {
        let _ = e.run_pass(&world.targets()).await;
        let p = e.record("node-0").expect("record").phase;
        if phases.last() != Some(&p) {
            phases.push(p);
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    // Rebooted once (the ladder's only reboot), never verified: Failed, and
    // still cordoned for an operator.
    assert!(!phases.contains(&Phase::Healthy), "{phases:?}");
    let r = e.record("node-0").expect("record");
    assert_eq!(r.phase, Phase::Failed, "{phases:?}");
    assert!(r.cordoned);
    assert_eq!(*world.log.lock(), [Action::Drain, Action::Reboot]);
}

/// A soft repair that takes long does not occupy a `max_in_flight` slot:
/// another node's reboot starts beside it.
#[tokio::test(start_paused = true)]
async fn a_running_soft_repair_takes_no_in_flight_slot() {
    struct Slow(Mutex<Vec<(String, Action)>>);
    #[async_trait]
    impl Executor<Node> for Slow {
        async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
            self.0.lock().push((target.name.clone(), action));
            if action.is_soft() {
                tokio::time::sleep(30 * MIN).await;
            }
            Ok(())
        }
    }
    let kick = Repair::new("kick").unwrap();
    let policy = Policy::default()
        .with_monitor_only(false)
        .with_gates(Gates { max_in_flight: Limit::Count(1), max_unhealthy: Limit::percent(50), ..Gates::default() })
        .with_repair(kick, 1, 40 * MIN)
        .with_ladder(Ladder { class: None, checker: Some("Kicked".into()), rungs: vec![Rung::Repair(kick)] });
    let kicked = FnChecker::new("Kicked", MIN, |n: &Node| {
        if n.name == "node-1" { CheckOutcome::fail("Stuck") } else { CheckOutcome::Pass }
    });
    let exec = Arc::new(Slow(Mutex::new(Vec::new())));
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), exec.clone())
        .policy(policy)
        .config(EngineConfig::default().with_action_timeouts(60 * MIN, 60 * MIN))
        .checker(ready_checker())
        .checker(kicked)
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0))))
        .build()
        .expect("valid engine");
    let targets = nodes(4, &[0]);
    let _ = e.sync(&targets).await;
    tokio::time::advance(MIN).await;
    let _ = e.sync(&targets).await; // node-1's kick starts (and runs for 30m)
    tokio::time::advance(5 * MIN).await;
    let _ = e.sync(&targets).await; // node-0's reboot: the only disruptive action
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = exec.0.lock().clone();
    assert!(calls.contains(&("node-1".to_owned(), Action::Repair(kick))), "{calls:?}");
    assert!(calls.contains(&("node-0".to_owned(), Action::Reboot)), "the kick took no slot: {calls:?}");
}
