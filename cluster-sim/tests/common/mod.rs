//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use cluster_sim::{ClusterConfig, Ports, SimServer};

/// Starts a simulator with `nodes` standard and `gpu` GPU nodes.
pub async fn start(nodes: u32, gpu: u32) -> SimServer {
    start_with(ClusterConfig { nodes, gpu_nodes: gpu, ..ClusterConfig::default() }).await
}

/// Starts a simulator with a configuration.
pub async fn start_with(config: ClusterConfig) -> SimServer {
    SimServer::start(config, Ports::default()).await.expect("the simulator starts")
}

/// A kube-rs client for the simulator. kube 5 retries 429 (and so evictions
/// blocked by a disruption budget) up to 15 times by default; the tests want
/// to see the first answer.
pub fn client(sim: &SimServer) -> kube::Client {
    let mut config = kube::Config::new(sim.kube_url().parse().expect("a valid URL"));
    config.default_retry = false;
    kube::Client::try_from(config).expect("a client")
}

/// Bounds a wait that should complete promptly (the operation is event-driven;
/// the limit only turns a hang into a failure).
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// An HTTP client for raw requests. The workspace may build reqwest with
/// rustls but no default crypto provider (feature unification with
/// recovery-exec), so one is installed first.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
