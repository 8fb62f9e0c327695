//! Clients that never finish their request headers (slowloris) neither keep
//! their connections nor starve normal requests, and do not hold up shutdown.

mod common;

use std::time::Duration;

use cluster_sim::{ClusterConfig, Limits, SimServer};
use common::{start_with, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The soft limit on open files, from /proc/self/limits (`None`: unknown).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Opens `n` connections to the Kubernetes API that send part of a request
/// and then nothing more.
async fn slow_clients(sim: &SimServer, n: usize) -> Vec<TcpStream> {
    let addr = sim.kube_url().trim_start_matches("http://").to_owned();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(&addr).await.expect("the kernel queues the connection");
        c.write_all(b"GET /api/v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: appl").await.unwrap();
        conns.push(c);
    }
    conns
}

/// Reads until the server closes the connection; true if it did (EOF or reset).
async fn closed_by_server(c: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    match c.read_to_end(&mut buf).await {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_starve_normal_requests() {
    // 1,100 slow clients against the default 1,024 connections need about
    // 2,200 descriptors (both ends are in this process); with fewer, 100
    // against 64 reproduce the same starvation.
    let (slow, max_connections) = match open_files_limit() {
        Some(n) if n >= 4096 => (1100, 1024),
        _ => (100, 64),
    };
    println!("{slow} slow clients, {max_connections} connections at most");
    let limits = Limits::default().max_connections(max_connections).header_read_timeout(Duration::from_secs(1));
    let sim = start_with(ClusterConfig { nodes: 2, limits, ..ClusterConfig::default() }).await;

    within("the whole scenario", async {
        let mut conns = slow_clients(&sim, slow).await;

        // Every connection slot is taken by a slow client: the request waits
        // until the header read timeout frees slots, then it is served.
        let started = tokio::time::Instant::now();
        let r = common::http().get(format!("{}/api/v1/nodes", sim.kube_url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let list: serde_json::Value = r.json().await.unwrap();
        assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
        println!("a normal GET with {slow} slow clients connected took {:?}", started.elapsed());

        // The first slow client (served at once) was cut off by the header
        // read timeout; so was the last one, which waited for a slot first.
        assert!(closed_by_server(&mut conns[0]).await, "the first slow client is disconnected");
        let last = conns.last_mut().unwrap();
        assert!(closed_by_server(last).await, "the last slow client is disconnected");
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_connections_that_never_send_a_request() {
    // A long timeout: shutdown must not depend on it to end these connections
    // quickly, only as its upper bound.
    let limits = Limits::default().header_read_timeout(Duration::from_secs(3));
    let sim = start_with(ClusterConfig { nodes: 1, limits, ..ClusterConfig::default() }).await;
    let mut slow = slow_clients(&sim, 3).await;
    let addr = sim.kube_url().trim_start_matches("http://").to_owned();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // A kept-alive connection that finished a request.
    let http = common::http();
    let r = http.get(format!("{}/version", sim.kube_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let watch = http.get(format!("{}/api/v1/nodes?watch=true", sim.kube_url())).send().await.unwrap();
    assert_eq!(watch.status(), 200);

    within("shutdown", sim.shutdown()).await;

    for c in &mut slow {
        assert!(closed_by_server(c).await, "a slow client is disconnected by shutdown");
    }
    assert!(closed_by_server(&mut silent).await, "a silent client is disconnected by shutdown");
    let rest = within("the end of the watch", watch.text()).await;
    assert!(rest.is_ok(), "the watch ends cleanly: {rest:?}");
}
