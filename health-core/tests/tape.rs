//! Recording and replay: a recorded run replays to the same decisions, and
//! another policy shows where it would have acted differently.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::tape::{self, CheckerSpec, Setup, TapeRecorder};
use health_core::*;
use parking_lot::Mutex;

mod common;

use common::{MIN, Node, T0, ready_checker};

const ZONE: &str = "topology.kubernetes.io/zone";

/// Node-0..4 in zone-a (all down), node-5..29 in five healthy zones but
/// node-7 down; a reboot fixes a node after `fix_after` passes.
fn fleet(broken: &Mutex<Vec<(usize, u32)>>) -> Vec<Node> {
    let b = broken.lock();
    (0..30)
        .map(|i| {
            let down = b.iter().any(|&(n, left)| n == i && left > 0);
            Node::new(&format!("node-{i}"), !down)
                .with_label(ZONE, &format!("zone-{}", char::from(b'a' + (i / 5) as u8)))
        })
        .collect()
}

struct Exec(Arc<Mutex<Vec<(usize, u32)>>>, Mutex<u32>);

#[async_trait]
impl Executor<Node> for Exec {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        let mut calls = self.1.lock();
        *calls += 1;
        if calls.is_multiple_of(3) {
            return Err(ExecError::failed(action, "the API said no"));
        }
        let i: usize = target.name.trim_start_matches("node-").parse().unwrap();
        for (n, left) in self.0.lock().iter_mut() {
            if *n == i {
                *left = 0;
            }
        }
        Ok(())
    }
}

async fn record(policy: Policy) -> String {
    let broken = Arc::new(Mutex::new(vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (7, 1)]));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let checker: Arc<dyn HealthChecker<Node>> = Arc::new(ready_checker());
    let recorder =
        TapeRecorder::new(Box::new(Arc::clone(&lines)), &policy, &[Arc::clone(&checker)], &EngineConfig::default());
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(Exec(Arc::clone(&broken), Mutex::new(0))))
        .policy(policy)
        .checker_arc(checker)
        .observer(Arc::new(recorder))
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0))))
        .build()
        .expect("valid engine");
    let _ = e.restore().await;
    for minute in 0..90 {
        if minute == 60 {
            // Zone-a comes back by itself.
            broken.lock().retain(|&(n, _)| n >= 5);
        }
        let _ = e.run_pass(&fleet(&broken)).await;
        tokio::time::sleep(MIN).await;
    }
    lines.lock().join("\n")
}

fn setup(policy: Policy) -> Setup {
    Setup { policy, checkers: vec![CheckerSpec { name: "NodeReady".into(), threshold: 5 * MIN, validation: false }] }
}

#[tokio::test(start_paused = true)]
async fn a_recorded_run_replays_to_the_same_decisions() {
    let text = record(Policy::default().with_monitor_only(false)).await;
    let r = tape::replay(&tape::Text(text.clone()), None).await.expect("replays");
    assert!(!r.recorded.is_empty());
    assert_eq!(r.decisions, r.recorded);
    assert_eq!(r.passes, 90 + 1, "ninety passes and node-7's re-evaluation after its reboot");
    let text_of = |d: &[tape::Decided]| d.iter().map(|d| format!("{} {d}", d.node())).collect::<Vec<_>>();
    let seen = text_of(&r.decisions);
    assert!(seen.contains(&"node-7 reboot (active)".to_owned()), "{seen:?}");
    assert!(
        seen.contains(&"node-0 reboot held: DomainStorm (topology.kubernetes.io/zone=zone-a)".to_owned()),
        "{seen:?}"
    );
    // Replaying twice gives the same answer (nothing depends on the machine).
    assert_eq!(tape::replay(&tape::Text(text), None).await.expect("replays"), r);
}

#[tokio::test(start_paused = true)]
async fn another_policy_shows_where_it_would_have_acted() {
    let text = record(Policy::default().with_monitor_only(false)).await;
    let recorded = Policy::default().with_monitor_only(false);
    let (a, b, diff) = tape::compare(
        &tape::Text(text),
        setup(recorded),
        setup(Policy::default().with_monitor_only(false).with_domains(Domains::off())),
    )
    .await
    .expect("compares");
    assert_eq!(a.decisions, a.recorded, "the recorded policy replays as recorded");
    assert_ne!(a.decisions, b.decisions);
    // Without domains, zone-a's nodes are rebooted (their recorded health
    // does not change: the recording saw them come back only at minute 60).
    let rebooted: Vec<&str> = diff
        .iter()
        .filter_map(|(n, _, only_a, only_b)| match (only_a, only_b) {
            (_, Some(tape::Decided::Action { a, .. })) if a == "reboot" => Some(n.as_str()),
            _ => None,
        })
        .collect();
    for i in 0..5 {
        assert!(rebooted.contains(&format!("node-{i}").as_str()), "node-{i} in {diff:?}");
    }
    assert!(!rebooted.contains(&"node-7"), "node-7 is rebooted under both");
}

#[test]
fn a_bad_tape_is_refused_with_its_line() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let err = |t: &str| rt.block_on(tape::replay(&tape::Text(t.to_owned()), None)).unwrap_err().to_string();
    assert_eq!(err(""), "the recording is empty");
    assert_eq!(
        err(r#"{"k":"pass","at":1,"mono":1,"sync":true,"nodes":[]}"#),
        "line 1 is not the recording's start line"
    );
    let start = r#"{"k":"start","v":9,"policy":{},"checkers":[],"forget_after":"1h","error_grace":"1m"}"#;
    assert_eq!(err(start), "recording format version 9; this build reads versions 1 to 2");
    let start = start.replace("\"v\":9", "\"v\":1");
    assert!(err(&format!("{start}\n{{\"k\":\"nonsense\"}}")).starts_with("line 2: not a recording line"));
    let action = r#"{"k":"action","at":1,"n":"a","a":"reboot","mode":"active","err":"exploded"}"#;
    assert_eq!(
        err(&format!("{start}\n{action}")),
        "line 2: not a recording line: unknown error kind \"exploded\": expected failed, unknown, timeout or unsupported"
    );
    let _ = Duration::ZERO;
}

/// A clock whose wall (milliseconds) and monotonic (nanoseconds) readings
/// are set apart, as a real machine's are: the monotonic clock has
/// sub-millisecond fractions the wall clock does not show.
#[derive(Default)]
struct SplitClock {
    wall_ms: std::sync::atomic::AtomicU64,
    mono_ns: std::sync::atomic::AtomicU64,
}

impl SplitClock {
    fn set(&self, wall_ms: u64, mono_ns: u64) {
        self.wall_ms.store(wall_ms, std::sync::atomic::Ordering::SeqCst);
        self.mono_ns.store(mono_ns, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for SplitClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.wall_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.mono_ns.load(std::sync::atomic::Ordering::SeqCst))
    }
}

struct Succeed;

#[async_trait]
impl Executor<Node> for Succeed {
    async fn execute(&self, _: Action, _: &Node) -> Result<(), ExecError> {
        Ok(())
    }
}

/// The gap seen under CI load: a reboot wait that ends within a millisecond
/// of a pass. The node's time is its frame advanced by the monotonic clock;
/// a recording that kept whole milliseconds of that clock replayed the pass
/// on the other side of the deadline.
#[tokio::test]
async fn a_wait_ending_within_a_millisecond_replays_as_recorded() {
    const MS: u64 = 1_000_000;
    let policy = Policy::default()
        .with_monitor_only(false)
        .with_domains(Domains::off())
        .with_gates(Gates { startup_grace: Duration::ZERO, ..Gates::default() });
    let wait = policy.reboot_wait;
    let checker: Arc<dyn HealthChecker<Node>> = Arc::new(FnChecker::new("NodeReady", Duration::ZERO, |n: &Node| {
        if n.ready { CheckOutcome::Pass } else { CheckOutcome::fail("KubeletNotReady") }
    }));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder =
        TapeRecorder::new(Box::new(Arc::clone(&lines)), &policy, &[Arc::clone(&checker)], &EngineConfig::default());
    let clock = Arc::new(SplitClock::default());
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(Succeed))
        .policy(policy)
        .checker_arc(checker)
        .observer(Arc::new(recorder))
        .clock(Arc::clone(&clock) as Arc<dyn Clock>)
        .build()
        .expect("valid engine");
    let w0 = T0 * 1000;
    let fleet = |down: bool| common::nodes(10, if down { &[0] } else { &[] });
    clock.set(w0, MS / 5);
    let _ = e.restore().await;
    let _ = e.run_pass(&fleet(false)).await;
    // node-0 fails: its frame is anchored on this pass (monotonic 1000.5 ms)
    // and it is rebooted at once (threshold zero).
    clock.set(w0 + 1000, 1000 * MS + MS / 2);
    let _ = e.run_pass(&fleet(true)).await;
    // 599,999.7 ms of the node's time later: the wait has not ended (its
    // frame counts whole milliseconds from the anchor). Whole milliseconds
    // of each reading would have made it 600,000 ms.
    let at = 1000 * MS + MS / 2 + u64::try_from(wait.as_nanos()).unwrap() - 3 * MS / 10;
    clock.set(w0 + 1000 + u64::try_from(wait.as_millis()).unwrap(), at);
    let _ = e.run_pass(&fleet(true)).await;
    // A second later node-0 is back (a reboot decided in the last pass
    // would show now: a replayed action ends at the next recorded line).
    clock.set(w0 + 2000 + u64::try_from(wait.as_millis()).unwrap(), at + 1000 * MS);
    let _ = e.run_pass(&fleet(false)).await;
    drop(e);
    let text = lines.lock().join("\n");

    let r = tape::replay(&tape::Text(text.clone()), None).await.expect("replays");
    let reboots = |d: &[tape::Decided]| {
        d.iter().filter(|d| matches!(d, tape::Decided::Action { a, .. } if a == "reboot")).count()
    };
    assert_eq!(reboots(&r.recorded), 1, "not yet due live: {:?}", r.recorded);
    assert_eq!(r.decisions, r.recorded);

    // The same recording with the monotonic clock in whole milliseconds
    // (format version 1, still read) replays the third pass as due.
    let v1: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(m) = v.get_mut("mono") {
                *m = (m.as_u64().unwrap() / MS).into();
            }
            if v["k"] == "start" {
                v["v"] = 1.into();
            }
            v.to_string()
        })
        .collect();
    let old = tape::replay(&tape::Text(v1.join("\n")), None).await.expect("a version 1 recording replays");
    assert_eq!(reboots(&old.decisions), 2, "{:?}", old.decisions);
}
