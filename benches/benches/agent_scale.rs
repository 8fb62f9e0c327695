//! Scale harness of the built `node-agent` against `cluster-sim serve` in a
//! separate process: time to the first complete sync, agent RSS at steady
//! state and after a burst of node updates, and Node event -> decision
//! latency (p50/p99). Prints figures; asserts nothing about time.
//!
//! Build both binaries first (release), then run:
//!
//! ```sh
//! cargo build --release -p agent-bin -p cluster-sim
//! AGENT_SCALE_NODES=10000,65536 cargo bench -p benches --bench agent_scale
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn bin(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os(format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_")))
        .map_or_else(|| root.join("target/release").join(name), PathBuf::from)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU seconds of `pid` (from /proc, at 100 ticks a second).
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The fields after the command name (which may hold spaces).
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, k): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
            Some((u + k) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// `MALLOC_ARENA_MAX` for the agent: 1 (as deployed) unless
/// `AGENT_SCALE_MALLOC_ARENA_MAX` says otherwise (empty: unset).
fn arena_max() -> Option<(&'static str, String)> {
    let v = std::env::var("AGENT_SCALE_MALLOC_ARENA_MAX").unwrap_or_else(|_| "1".to_owned());
    (!v.is_empty()).then_some(("MALLOC_ARENA_MAX", v))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(nodes: u32, burst: usize) {
    let dir = std::env::temp_dir().join(format!("agent-scale-{}-{nodes}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let t0 = Instant::now();
    let mut sim = Command::new(bin("cluster-sim"))
        .args(["serve", "--nodes", &nodes.to_string(), "--kubeconfig-out"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cluster-sim serve starts (build it with cargo build --release -p cluster-sim)");
    let mut sim_out = BufReader::new(sim.stdout.take().unwrap()).lines();
    let line = sim_out.next_line().await.unwrap().expect("cluster-sim prints its URLs");
    let urls: serde_json::Value = serde_json::from_str(&line).unwrap();
    let kube_url = urls["kube_url"].as_str().unwrap().to_owned();
    println!("agent_scale/{nodes}: simulator up in {:.1?}", t0.elapsed());

    let t1 = Instant::now();
    // AGENT_SCALE_RECORD=1: the agent records (`run --record`), to measure
    // what recording costs.
    let tape = dir.join("agent.tape");
    let recording = std::env::var("AGENT_SCALE_RECORD").is_ok_and(|v| v == "1");
    let record_args: Vec<std::ffi::OsString> =
        if recording { vec!["--record".into(), tape.clone().into_os_string()] } else { Vec::new() };
    let mut agent = Command::new(bin("node-agent"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--log-format", "json", "run"])
        .args(&record_args)
        .env_clear()
        .env("RUST_LOG", "info")
        .env("NODE_AGENT_AGENT__METRICS_PORT", "0")
        .env("NODE_AGENT_AGENT__METRICS_ADDRESS", "127.0.0.1")
        .env("NODE_AGENT_STORE__BACKEND", "memory")
        .env("NODE_AGENT_KUBE__EVENTS", "false")
        // As the shipped unit, chart and image run it (one glibc arena);
        // AGENT_SCALE_MALLOC_ARENA_MAX= (empty) measures glibc's default.
        .envs(arena_max())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node-agent starts (build it with cargo build --release -p agent-bin)");
    let pid = agent.id().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, serde_json::Value)>();
    let mut log = BufReader::new(agent.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = log.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                let _ = tx.send((Instant::now(), v));
            }
        }
    });
    let msg = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    loop {
        let (at, v) = rx.recv().await.expect("agent log");
        if msg(&v).starts_with("node list complete") {
            println!("agent_scale/{nodes}: first complete sync {:.2?} after start", at - t1);
            break;
        }
    }
    // Let the first pass finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steady = rss_kib(pid);
    println!(
        "agent_scale/{nodes}: RSS at steady state {:.1} MiB (target <= {:.1} MiB)",
        steady as f64 / 1024.0,
        64.0 + nodes as f64 / 1024.0
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    // API requests of the agent over one steady-state minute.
    let requests = |http: reqwest::Client, url: String| async move {
        let v: serde_json::Value = http.get(format!("{url}/sim/requests")).send().await.unwrap().json().await.unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["client"] == "node-agent")
            .map(|r| {
                (
                    format!("{} {}", r["verb"].as_str().unwrap(), r["resource"].as_str().unwrap()),
                    r["count"].as_u64().unwrap(),
                )
            })
            .collect::<std::collections::BTreeMap<String, u64>>()
    };
    let before = requests(http.clone(), kube_url.clone()).await;
    let minute: u64 = match std::env::var("AGENT_SCALE_STEADY_SECS") {
        Ok(s) => {
            s.parse().unwrap_or_else(|_| panic!("AGENT_SCALE_STEADY_SECS={s:?}: expected whole seconds such as 60"))
        }
        Err(_) => 60,
    };
    tokio::time::sleep(Duration::from_secs(minute)).await;
    let after = requests(http.clone(), kube_url.clone()).await;
    let delta: Vec<String> = after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k}: {d}"))
        })
        .collect();
    println!(
        "agent_scale/{nodes}: API requests in {minute} s of steady state: {} (target: 0 LIST; writes only on transitions)",
        if delta.is_empty() { "none".to_owned() } else { delta.join(", ") }
    );
    println!("agent_scale/{nodes}: requests since start: {after:?}");
    println!("agent_scale/{nodes}: RSS after {minute} s {:.1} MiB", rss_kib(pid) as f64 / 1024.0);
    let names: Vec<String> = (1..=burst as u32).map(|i| format!("k3s-sim-std-5a1c-node-{i:05}")).collect();
    let body = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}});
    let mut sent = std::collections::HashMap::new();
    for n in &names {
        let r = http
            .patch(format!("{kube_url}/api/v1/nodes/{n}/status"))
            .header("content-type", "application/strategic-merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{n}: {}", r.status());
        sent.insert(n.clone(), Instant::now());
    }
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lat.len() < burst && Instant::now() < deadline {
        let Ok(Some((at, v))) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else { break };
        if msg(&v) == "phase changed"
            && v["fields"]["to"] == "Unhealthy"
            && let Some(s) = v["fields"]["node"].as_str().and_then(|n| sent.get(n))
        {
            lat.push(at.saturating_duration_since(*s));
        }
    }
    lat.sort();
    println!(
        "agent_scale/{nodes}: {} of {burst} updates decided; event -> decision p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("agent_scale/{nodes}: RSS after the burst {:.1} MiB", rss_kib(pid) as f64 / 1024.0);
    println!(
        "agent_scale/{nodes}: CPU time since start {:.2} s{}",
        cpu_secs(pid),
        if recording {
            format!(
                " (recording: {:.1} MiB written)",
                std::fs::metadata(&tape).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0)
            )
        } else {
            " (not recording)".to_owned()
        }
    );
    let _ = agent.kill().await;
    let _ = sim.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--quick" || a == "--list") {
        println!("agent_scale: skipped in quick mode (run it with cargo bench -p benches --bench agent_scale)");
        return;
    }
    for b in ["node-agent", "cluster-sim"] {
        if !bin(b).exists() {
            println!(
                "agent_scale: {} not built; run cargo build --release -p agent-bin -p cluster-sim",
                bin(b).display()
            );
            return;
        }
    }
    let sizes = std::env::var("AGENT_SCALE_NODES").unwrap_or_else(|_| "10000".into());
    for n in sizes.split(',').filter_map(|s| s.trim().parse::<u32>().ok()) {
        run(n, 1000.min(n as usize / 10).max(1)).await;
    }
}
