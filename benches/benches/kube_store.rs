//! The Kubernetes store at fleet scale, against cluster-sim (in process):
//! what one full listing and one record load cost the way the store reads
//! now (metadata only, `PartialObjectMetadata`, pages of 500) and the way
//! it read before (whole Node objects, one unpaged list, full GETs).
//!
//! `KUBE_STORE_NODES` sets the size (default 65,536); `--quick`: 2,000.
//! One record in a hundred nodes is stored first (the others have none, as
//! in a healthy fleet).

use std::time::{Duration, Instant};

use cluster_sim::{ClusterConfig, Ports, SimServer};
use health_core::{NodeRecord, Phase, StateStore};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use state_store::KubeStore;

const META: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
const META_ONE: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

/// Bytes of the answers to `GET url` (following `continue` tokens), with `accept`.
async fn bytes(http: &reqwest::Client, url: &str, accept: &str, paged: bool) -> u64 {
    let mut total = 0;
    let mut token: Option<String> = None;
    loop {
        let mut u = url.to_owned();
        if paged {
            u.push_str(if u.contains('?') { "&" } else { "?" });
            u.push_str("limit=500");
            if let Some(t) = &token {
                u.push_str(&format!("&continue={t}"));
            }
        }
        let body = http.get(&u).header("accept", accept).send().await.unwrap().bytes().await.unwrap();
        total += body.len() as u64;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("a list page is JSON");
        token = v["metadata"]["continue"].as_str().filter(|t| !t.is_empty()).map(str::to_owned);
        if !paged || token.is_none() {
            return total;
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let t = Instant::now();
    let out = f.await;
    (out, t.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u32 = if quick {
        2_000
    } else {
        std::env::var("KUBE_STORE_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(65_536)
    };
    let config =
        ClusterConfig { nodes: n, pods_per_node: 0, lease_renew_interval: Duration::ZERO, ..ClusterConfig::default() };
    let t = Instant::now();
    let sim = SimServer::start(config, Ports::default()).await.expect("simulator starts");
    println!("kube_store/{n}: simulator up in {:.1?}", t.elapsed());
    let client = kube::Client::try_from(kube::Config::new(sim.kube_url().parse().unwrap())).unwrap();
    let store = KubeStore::new(client.clone());
    let names = sim.cluster().node_names();
    let record = NodeRecord { phase: Phase::WaitingReboot, reboot_count: 1, ..NodeRecord::default() };
    for name in names.iter().step_by(100) {
        store.save(name, &record, None).await.unwrap();
    }
    let stored = names.len().div_ceil(100);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let nodes_url = format!("{}/api/v1/nodes", sim.kube_url());

    // Before: whole Nodes, one unpaged list; a full GET per load.
    let api: Api<Node> = Api::all(client);
    let (full, before_list) = timed(api.list(&ListParams::default())).await;
    assert_eq!(full.unwrap().items.len(), names.len());
    let before_list_bytes = bytes(&http, &nodes_url, "application/json", false).await;
    let one = &names[names.len() / 2];
    let t = Instant::now();
    for name in names.iter().take(200) {
        let _ = api.get(name).await.unwrap();
    }
    let before_load = t.elapsed() / 200;
    let before_load_bytes = bytes(&http, &format!("{nodes_url}/{one}"), "application/json", false).await;

    // Now: metadata only, pages of 500.
    let (listed, after_list) = timed(store.list()).await;
    assert_eq!(listed.unwrap().len(), stored);
    let after_list_bytes = bytes(&http, &nodes_url, META, true).await;
    let t = Instant::now();
    for name in names.iter().take(200) {
        let _ = store.load(name).await.unwrap();
    }
    let after_load = t.elapsed() / 200;
    let after_load_bytes = bytes(&http, &format!("{nodes_url}/{one}"), META_ONE, false).await;

    println!("kube_store/{n}: {stored} records stored (one node in a hundred)");
    println!(
        "kube_store/{n}: list every record: before (whole Nodes, one unpaged list) {} in {before_list:.2?}; now (metadata, pages of 500) {} in {after_list:.2?}",
        mib(before_list_bytes),
        mib(after_list_bytes)
    );
    println!(
        "kube_store/{n}: load one record: before (full GET) {before_load_bytes} B in {before_load:.2?}; now (metadata GET) {after_load_bytes} B in {after_load:.2?}",
    );
    sim.shutdown().await;
}
