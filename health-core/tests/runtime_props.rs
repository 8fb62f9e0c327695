//! Property tests of the runtime: random fleets, readiness changes, pauses
//! and executors that are fast, slow, failing, hanging past their timeout or
//! panicking, in paused time. Whatever happens, the runtime keeps going and:
//!
//! * never runs two disruptive actions at once where `max_in_flight` is one;
//! * never reboots a node twice within its reboot wait (elapsed time);
//! * never executes anything in monitor-only mode;
//! * keeps every record within the policy's counters;
//! * wakes up a bounded number of times.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use health_core::*;
use parking_lot::Mutex;
use proptest::prelude::*;

mod common;

use common::{MIN, Node, T0, nodes, ready_checker};

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Ok,
    /// Succeeds after this many seconds.
    Slow(u64),
    Fail,
    /// Never answers: the engine's action timeout ends it.
    Hang,
    Panic,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Ok),
        2 => (1u64..=1200).prop_map(Behaviour::Slow),
        2 => Just(Behaviour::Fail),
        1 => Just(Behaviour::Hang),
        1 => Just(Behaviour::Panic),
    ]
}

#[derive(Clone, Debug)]
enum Event {
    /// Seconds of simulated time before the next event.
    Wait(u64),
    /// A node's readiness changes.
    Ready(usize, bool),
    Pause(bool),
}

fn event(n: usize) -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (1u64..=1800).prop_map(Event::Wait),
        3 => (0..n, any::<bool>()).prop_map(|(i, r)| Event::Ready(i, r)),
        1 => any::<bool>().prop_map(Event::Pause),
    ]
}

#[derive(Clone, Debug)]
struct Scenario {
    nodes: usize,
    monitor_only: bool,
    replace: bool,
    script: Vec<Behaviour>,
    events: Vec<Event>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (3usize..=8).prop_flat_map(|n| {
        (
            Just(n),
            prop::bool::weighted(0.15),
            any::<bool>(),
            prop::collection::vec(behaviour(), 1..24),
            prop::collection::vec(event(n), 1..40),
        )
            .prop_map(|(nodes, monitor_only, replace, script, events)| Scenario {
                nodes,
                monitor_only,
                replace,
                script,
                events,
            })
    })
}

/// Runs the scripted behaviours in turn (cycling), and watches what runs.
struct Chaos {
    script: Vec<Behaviour>,
    calls: AtomicUsize,
    running: AtomicUsize,
    peak: AtomicUsize,
    reboots: Mutex<HashMap<String, Vec<tokio::time::Instant>>>,
}

/// Counts a disruptive action as running until dropped (also when the
/// engine's timeout drops the future, and during a panic's unwinding).
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Executor<Node> for Chaos {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        let b = self.script[self.calls.fetch_add(1, Ordering::SeqCst) % self.script.len()];
        let _running = action.is_disruptive().then(|| {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            Running(&self.running)
        });
        if action == Action::Reboot {
            self.reboots.lock().entry(target.name.clone()).or_default().push(tokio::time::Instant::now());
        }
        match b {
            Behaviour::Ok => Ok(()),
            Behaviour::Slow(s) => {
                tokio::time::sleep(Duration::from_secs(s)).await;
                Ok(())
            }
            Behaviour::Fail => Err(ExecError::failed(action, "chaos: refused")),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
                Ok(())
            }
            Behaviour::Panic => panic!("chaos: the executor panicked"),
        }
    }
}

fn run(s: &Scenario) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
    rt.block_on(async {
        let chaos = Arc::new(Chaos {
            script: s.script.clone(),
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            reboots: Mutex::new(HashMap::new()),
        });
        let policy = Policy::default().with_monitor_only(s.monitor_only).with_replace(s.replace);
        let engine = Engine::builder(Arc::new(MemoryStore::new()), chaos.clone())
            .policy(policy.clone())
            .checker(ready_checker())
            .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0))))
            .build()
            .expect("engine");
        let controls = engine.controls();
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = passes.clone();
        let runtime = Runtime::new(engine).with_sink(move |e| {
            if matches!(e, RuntimeEvent::Pass { .. }) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(runtime.run(runtime::updates_from(rx), async {
            let _ = stopped.await;
        }));
        let mut fleet: VecDeque<Node> = nodes(s.nodes, &[]).into();
        tx.send(TargetUpdate::Full(fleet.iter().cloned().collect())).await.expect("runtime alive");
        let mut waited = Duration::ZERO;
        for e in &s.events {
            match *e {
                Event::Wait(secs) => {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    waited += Duration::from_secs(secs);
                }
                Event::Ready(i, ready) => {
                    fleet[i].ready = ready;
                    tx.send(TargetUpdate::Upsert(fleet[i].clone())).await.expect("runtime alive");
                }
                Event::Pause(on) => controls.set_paused(on),
            }
        }
        // Let the last decisions play out, then stop.
        tokio::time::sleep(60 * MIN).await;
        waited += 60 * MIN;
        let _ = stop.send(());
        let stopped = task.await.map_err(|e| TestCaseError::fail(format!("the runtime died: {e}")))?;

        let calls = chaos.calls.load(Ordering::SeqCst);
        if s.monitor_only {
            prop_assert_eq!(calls, 0, "monitor-only executed actions");
        }
        prop_assert!(chaos.peak.load(Ordering::SeqCst) <= 1, "two disruptive actions ran at once");
        let wait = policy.reboot_wait;
        for (node, times) in chaos.reboots.lock().iter() {
            for w in times.windows(2) {
                prop_assert!(w[1] - w[0] >= wait, "{node} rebooted {:?} after its previous reboot", w[1] - w[0]);
            }
        }
        for (node, r) in stopped.engine.records() {
            prop_assert!(r.reboot_count <= policy.max_reboot_retries, "{node}: {r:?}");
            prop_assert!(r.replace_count <= 1, "{node}: {r:?}");
            prop_assert!(r.action_failures <= policy.max_reboot_failures + 1, "{node}: {r:?}");
        }
        // Wake-ups: one per update or control change and per finished
        // action, plus deadlines (thresholds, waits, back-offs, the history
        // reset): a few per node per simulated hour at most.
        let hours = usize::try_from(waited.as_secs() / 3600).unwrap_or(usize::MAX) + 1;
        let bound = 2 * s.events.len() + 3 * calls + 12 * s.nodes * hours + 8;
        let n = passes.load(Ordering::SeqCst);
        prop_assert!(n <= bound, "{n} passes (bound {bound}) over {waited:?}");
        Ok(())
    })
}

/// A case the property found: node-3's reboot wait ran out in the pass in
/// which node-6 started a reboot; node-3's retry was exempt from
/// `max_in_flight`, so two reboots ran at once (when node-6 came first in
/// the pass).
#[test]
fn regression_pauses_and_slow_reboots() {
    use Behaviour::*;
    use Event::*;
    let s = Scenario {
        nodes: 7,
        monitor_only: false,
        replace: false,
        script: vec![
            Ok,
            Panic,
            Fail,
            Slow(30),
            Hang,
            Ok,
            Ok,
            Slow(540),
            Slow(1041),
            Ok,
            Fail,
            Slow(74),
            Hang,
            Panic,
            Ok,
            Fail,
            Ok,
            Ok,
            Ok,
            Slow(641),
        ],
        events: vec![
            Pause(true),
            Wait(465),
            Ready(3, false),
            Ready(6, false),
            Ready(3, false),
            Wait(797),
            Pause(true),
            Pause(false),
            Wait(169),
            Wait(1395),
            Pause(true),
            Wait(111),
            Wait(1379),
            Ready(3, false),
            Wait(1276),
            Ready(5, true),
            Wait(1563),
            Ready(6, false),
            Pause(false),
            Wait(1539),
        ],
    };
    run(&s).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_runtime_stays_safe_whatever_the_executor_does(s in scenario()) {
        run(&s)?;
    }
}
