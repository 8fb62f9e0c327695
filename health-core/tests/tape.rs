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
    assert_eq!(err(start), "recording format version 9; this build reads version 1");
    let start = start.replace("\"v\":9", "\"v\":1");
    assert!(err(&format!("{start}\n{{\"k\":\"nonsense\"}}")).starts_with("line 2: not a recording line"));
    let action = r#"{"k":"action","at":1,"n":"a","a":"reboot","mode":"active","err":"exploded"}"#;
    assert_eq!(
        err(&format!("{start}\n{action}")),
        "line 2: not a recording line: unknown error kind Some(\"exploded\"): expected failed, unknown, timeout or unsupported"
    );
    let _ = Duration::ZERO;
}
