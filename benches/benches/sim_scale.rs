//! Scale harness for cluster-sim: 65,536 nodes, a paginated list of all of
//! them, a watch delivering 10,000 updates, and the simulator's memory.
//!
//! Prints figures; run with `cargo bench -p benches --bench sim_scale`.
//! `SIM_SCALE_NODES` overrides the node count (CI runs it smaller with `--quick`).

use std::time::{Duration, Instant};

use cluster_sim::{ClusterConfig, Ports, SimServer};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn run(nodes: u32, updates: usize) {
    let before = rss_mib();
    let t = Instant::now();
    let config = ClusterConfig {
        nodes,
        pods_per_node: 0,
        lease_renew_interval: Duration::ZERO,
        watch_history: updates * 2,
        ..ClusterConfig::default()
    };
    let sim = SimServer::start(config, Ports::default()).await.expect("simulator starts");
    let built = t.elapsed();
    let rss = rss_mib();
    println!(
        "sim_scale: {nodes} nodes built in {:.2?}; RSS {rss:.0} MiB ({:.0} MiB for the cluster)",
        built,
        rss - before
    );

    // reqwest may be built with rustls and no default provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let t = Instant::now();
    let (mut count, mut pages, mut bytes, mut cont) = (0usize, 0usize, 0usize, String::new());
    let mut rv = String::new();
    loop {
        let url = format!("{}/api/v1/nodes?limit=500&continue={cont}", sim.kube_url());
        let body = http.get(url).send().await.expect("list").bytes().await.expect("body");
        bytes += body.len();
        let page: Value = serde_json::from_slice(&body).expect("json");
        count += page["items"].as_array().map_or(0, Vec::len);
        pages += 1;
        if rv.is_empty() {
            rv = page["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
        }
        match page["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => cont = c.to_owned(),
            _ => break,
        }
    }
    let listed = t.elapsed();
    assert_eq!(count, nodes as usize);
    println!(
        "sim_scale: paginated list of {count} nodes in {pages} pages: {listed:.2?} ({:.0} nodes/s, {:.1} MiB, {:.1} KiB/node)",
        count as f64 / listed.as_secs_f64(),
        bytes as f64 / 1_048_576.0,
        bytes as f64 / 1024.0 / count as f64
    );

    let watch = http
        .get(format!("{}/api/v1/nodes?watch=true&resourceVersion={rv}", sim.kube_url()))
        .send()
        .await
        .expect("watch");
    let mut stream = watch.bytes_stream();
    let names = sim.cluster().node_names();
    let cluster = sim.cluster().clone();
    let t = Instant::now();
    let writer = tokio::task::spawn_blocking(move || {
        for i in 0..updates {
            let name = &names[i % names.len()];
            cluster
                .update_node(name, |n| n["metadata"]["labels"]["sim/generation"] = json!(i.to_string()))
                .expect("update");
        }
    });
    let (mut seen, mut buf) = (0usize, Vec::new());
    while seen < updates {
        let chunk = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("watch stalls")
            .expect("stream ends")
            .expect("chunk");
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if line.starts_with(b"{\"type\":\"MODIFIED\"") {
                seen += 1;
            }
        }
    }
    let watched = t.elapsed();
    writer.await.expect("writer");
    println!(
        "sim_scale: watch delivered {seen} updates in {watched:.2?} ({:.0} events/s, writes included); RSS {:.0} MiB",
        seen as f64 / watched.as_secs_f64(),
        rss_mib()
    );
    sim.shutdown().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let nodes =
        std::env::var("SIM_SCALE_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 8192 } else { 65_536 });
    let updates = if quick { 2_000 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(nodes, updates));
}
