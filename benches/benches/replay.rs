//! Replay of a day's recording of a large fleet (`node-agent replay`).
//!
//! First records 24 hours of 10,000 nodes (10 zones, 20 pools, 4 checkers)
//! with the real engine on a paused clock: a full listing every 5 minutes,
//! the changed and due nodes every 10 seconds, about 300 node faults (most
//! fixed by a reboot, some blips, some no reboot fixes) and one zone down
//! for 40 minutes. Then replays the recording on one thread and checks that
//! the decisions are the recorded ones. Prints the recording's size, the
//! time to record and the time to replay.
//!
//! `REPLAY_NODES` and `REPLAY_HOURS` change the size; `--quick` runs 1,000
//! nodes for 2 hours.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use health_core::tape::{self, LineSink, TapeRecorder};
use health_core::*;
use parking_lot::Mutex;

const ZONE: &str = "topology.kubernetes.io/zone";
const POOL: &str = "kubernetes.civo.com/civo-node-pool";
const STEP: Duration = Duration::from_secs(10);
const SYNC_EVERY: u64 = 30;

#[derive(Clone)]
struct Node {
    name: Arc<str>,
    ready: bool,
    labels: [(&'static str, Arc<str>); 2],
}

impl Target for Node {
    fn name(&self) -> &str {
        &self.name
    }
    fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }
    fn facts(&self) -> NodeFacts {
        NodeFacts::default()
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
    }
}

/// Why a node is down, and until when (in steps).
#[derive(Clone, Copy, PartialEq)]
enum Down {
    /// Until it is rebooted (and three minutes more).
    UntilReboot,
    /// Until the given step, whatever is done.
    Until(u64),
}

struct World {
    nodes: Vec<Node>,
    down: Vec<Option<Down>>,
    /// (step, node) a rebooted node comes back.
    back: BTreeSet<(u64, usize)>,
    step: u64,
}

struct Exec(Arc<Mutex<World>>);

#[async_trait]
impl Executor<Node> for Exec {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        if action == Action::Reboot {
            let mut w = self.0.lock();
            let i: usize = target.name[5..].parse().unwrap_or(0);
            if w.down[i] == Some(Down::UntilReboot) {
                let at = w.step + 18;
                w.back.insert((at, i));
            }
        }
        Ok(())
    }
}

struct File(std::io::BufWriter<std::fs::File>, u64);

impl LineSink for File {
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        self.1 += text.len() as u64 + 1;
        self.0.write_all(text.as_bytes())?;
        self.0.write_all(b"\n")
    }
}

impl Drop for File {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = self.0.flush();
    }
}

fn checkers() -> Vec<Arc<dyn HealthChecker<Node>>> {
    let ready: Arc<dyn HealthChecker<Node>> =
        Arc::new(FnChecker::new("NodeReady", Duration::from_secs(300), |n: &Node| {
            if n.ready { CheckOutcome::Pass } else { CheckOutcome::fail("KubeletNotReady") }
        }));
    let mut all = vec![ready];
    for (name, secs) in [("GPU", 300), ("DiskPressure", 1800), ("Cilium", 300)] {
        all.push(Arc::new(FnChecker::new(name, Duration::from_secs(secs), |_: &Node| CheckOutcome::Pass)));
    }
    all
}

/// Records `hours` of `n` nodes to `path`; returns the bytes written.
async fn record(n: usize, hours: u64, path: &std::path::Path) -> u64 {
    let nodes: Vec<Node> = (0..n)
        .map(|i| Node {
            name: Arc::from(format!("node-{i:06}")),
            ready: true,
            labels: [(ZONE, Arc::from(format!("zone-{}", i % 10))), (POOL, Arc::from(format!("pool-{}", i % 20)))],
        })
        .collect();
    let world = Arc::new(Mutex::new(World { down: vec![None; n], nodes, back: BTreeSet::new(), step: 0 }));
    let steps = hours * 360;
    // About 300 faults a day, spread over the recording.
    // Seeded: the same faults every run.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut faults: Vec<(u64, usize, Down)> = (0..(300 * hours / 24).max(10))
        .map(|_| {
            let at = rng.u64(..steps);
            let node = rng.usize(..n);
            let kind = match rng.u8(..10) {
                0..=6 => Down::UntilReboot,
                7 | 8 => Down::Until(at + 18),
                _ => Down::Until(at + 720),
            };
            (at, node, kind)
        })
        .collect();
    // One zone down for 40 minutes, a third of the way in.
    let outage = steps / 3;
    faults.extend((0..n).filter(|i| i % 10 == 3).map(|i| (outage, i, Down::Until(outage + 240))));
    faults.sort_by_key(|f| f.0);

    let sink = File(std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap()), 0);
    let bytes = Arc::new(Mutex::new(0u64));
    struct Counted(File, Arc<Mutex<u64>>);
    impl LineSink for Counted {
        fn line(&mut self, text: &str) -> std::io::Result<()> {
            self.0.line(text)?;
            *self.1.lock() = self.0.1;
            Ok(())
        }
    }
    let policy = Policy::default().with_monitor_only(false).with_replace(true);
    let checkers = checkers();
    let config = EngineConfig::default();
    let recorder = TapeRecorder::new(Box::new(Counted(sink, Arc::clone(&bytes))), &policy, &checkers, &config);
    let mut b = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(Exec(Arc::clone(&world))))
        .policy(policy)
        .config(config)
        .observer(Arc::new(recorder))
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(1_800_000_000))));
    for c in checkers {
        b = b.checker_arc(c);
    }
    let mut engine = b.build().unwrap();
    let _ = engine.restore().await;
    let mut next_fault = 0;
    for step in 0..steps {
        let changed: Vec<Node> = {
            let mut w = world.lock();
            w.step = step;
            let mut touched = BTreeSet::new();
            while next_fault < faults.len() && faults[next_fault].0 == step {
                let (_, i, kind) = faults[next_fault];
                w.down[i] = Some(kind);
                touched.insert(i);
                next_fault += 1;
            }
            let back: Vec<(u64, usize)> = w.back.iter().copied().take_while(|&(s, _)| s <= step).collect();
            for (s, i) in back {
                w.back.remove(&(s, i));
                w.down[i] = None;
                touched.insert(i);
            }
            for i in 0..n {
                if let Some(Down::Until(s)) = w.down[i]
                    && s <= step
                {
                    w.down[i] = None;
                    touched.insert(i);
                }
            }
            for &i in &touched {
                w.nodes[i].ready = w.down[i].is_none();
            }
            let due: BTreeSet<String> = engine.due().into_iter().collect();
            w.nodes
                .iter()
                .enumerate()
                .filter(|(i, node)| touched.contains(i) || due.contains(&*node.name))
                .map(|(_, node)| node.clone())
                .collect()
        };
        if step % SYNC_EVERY == 0 {
            let all = world.lock().nodes.clone();
            let _ = engine.sync(&all).await;
        } else if !changed.is_empty() {
            let _ = engine.evaluate(&changed).await;
        }
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        if engine.collect_finished() > 0 {
            let _ = engine.fold_completions().await;
        }
        tokio::time::advance(STEP).await;
    }
    drop(engine);
    *bytes.lock()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (n, hours) = if quick { (1_000, 2) } else { (env("REPLAY_NODES", 10_000) as usize, env("REPLAY_HOURS", 24)) };
    let dir = std::env::temp_dir().join(format!("replay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("day.tape");

    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    let t = Instant::now();
    let bytes = rt.block_on(record(n, hours, &path));
    println!("replay/{n}x{hours}h: recorded in {:.1?}: {:.1} MiB", t.elapsed(), bytes as f64 / (1024.0 * 1024.0));

    // The replay as `node-agent replay` runs it: one thread.
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let t = Instant::now();
    let r = rt.block_on(tape::replay(&tape::Files(vec![path.clone()]), None)).expect("replays");
    let took = t.elapsed();
    assert_eq!(r.decisions, r.recorded, "the replay takes the recorded decisions");
    let actions = r.decisions.iter().filter(|d| matches!(d, tape::Decided::Action { .. })).count();
    let holds = r.decisions.iter().filter(|d| matches!(d, tape::Decided::Hold { .. })).count();
    println!(
        "replay/{n}x{hours}h: replayed in {took:.1?} on one thread: {} evaluations, {} node observations, {} decisions ({actions} actions, {holds} holds), identical to the recording (target: 24 h of 10,000 nodes under 1 minute)",
        r.passes,
        r.observations,
        r.decisions.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
