//! Request, object and JSON patch limits: a request past one is answered
//! with a `Status` naming the limit, memory stays bounded, and the server
//! carries on.

mod common;

use cluster_sim::{ClusterConfig, Limits, SimServer};
use common::{start_with, within};
use serde_json::{Value, json};

/// Sends a PATCH of `body` (as `content_type`) to `node`; returns the status and body.
async fn patch(sim: &SimServer, node: &str, content_type: &str, body: String) -> (u16, Value) {
    let url = format!("{}/api/v1/nodes/{node}", sim.kube_url());
    let r = common::http().patch(url).header("content-type", content_type).body(body).send().await.unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Asserts a Kubernetes `Status` failure with `code`, `reason` and a message containing `needle`.
fn assert_status(got: &(u16, Value), code: u16, reason: &str, needle: &str) {
    assert_eq!(got.0, code, "{}", got.1);
    assert_eq!(got.1["kind"], "Status", "{}", got.1);
    assert_eq!(got.1["status"], "Failure", "{}", got.1);
    assert_eq!(got.1["code"], json!(code), "{}", got.1);
    assert_eq!(got.1["reason"], reason, "{}", got.1);
    let message = got.1["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "the message names the limit ({needle}): {message}");
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`), where there is one.
fn proc_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The node's JSON, served by the API (the server still answers).
async fn get_node(sim: &SimServer, node: &str) -> Value {
    let url = format!("{}/api/v1/nodes/{node}", sim.kube_url());
    let r = common::http().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "the server serves the next request");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_patch_of_doubling_copies_is_refused_and_the_server_carries_on() {
    let sim = start_with(ClusterConfig { nodes: 1, ..ClusterConfig::default() }).await;
    let node = sim.cluster().node_names()[0].clone();
    // Each copy doubles .status (10-20 KB): 18 of them would ask for gigabytes.
    let ops: Vec<Value> =
        (0..18).map(|i| json!({"op": "copy", "from": "/status", "path": format!("/status/c{i}")})).collect();
    let body = Value::Array(ops).to_string();
    assert!(body.len() < 1200, "a kilobyte of patch: {}", body.len());
    let rss_before = proc_kib("VmRSS:");

    let got = within("the copy patch", patch(&sim, &node, "application/json-patch+json", body)).await;

    assert_status(&got, 422, "Invalid", "max_object_bytes");
    let after = get_node(&sim, &node).await;
    assert!(after["status"].get("c0").is_none(), "nothing was stored");
    if let (Some(before), Some(peak)) = (rss_before, proc_kib("VmHWM:")) {
        println!("RSS before the patch: {} MiB; peak RSS of the test process: {} MiB", before / 1024, peak / 1024);
        assert!(peak < 512 * 1024, "memory stays bounded: the peak RSS is {peak} KiB");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_operations_are_limited() {
    let limits = Limits::default().max_json_patch_operations(3);
    let sim = start_with(ClusterConfig { nodes: 1, limits, ..ClusterConfig::default() }).await;
    let node = sim.cluster().node_names()[0].clone();
    let test = json!({"op": "test", "path": "/metadata/name", "value": node});

    let got = patch(&sim, &node, "application/json-patch+json", json!([test, test, test, test]).to_string()).await;

    assert_status(&got, 413, "RequestEntityTooLarge", "The allowed maximum operations in a JSON patch is 3, got 4");
    let got = patch(&sim, &node, "application/json-patch+json", json!([test, test, test]).to_string()).await;
    assert_eq!(got.0, 200, "{}", got.1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_limited() {
    let limits = Limits::default().max_request_body_bytes(64 * 1024);
    let sim = start_with(ClusterConfig { nodes: 1, limits, ..ClusterConfig::default() }).await;
    let node = sim.cluster().node_names()[0].clone();
    let big = json!({"metadata": {"annotations": {"big": "x".repeat(64 * 1024)}}}).to_string();

    let got = patch(&sim, &node, "application/merge-patch+json", big).await;

    assert_status(&got, 413, "RequestEntityTooLarge", "limit is 65536 (max_request_body_bytes)");
    let small = json!({"metadata": {"annotations": {"small": "x".repeat(1024)}}}).to_string();
    let got = patch(&sim, &node, "application/merge-patch+json", small).await;
    assert_eq!(got.0, 200, "a body within the limit is read: {}", got.1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_objects_are_limited() {
    let limits = Limits::default().max_object_bytes(Limits::MIN_OBJECT_BYTES);
    let sim = start_with(ClusterConfig { nodes: 1, limits, ..ClusterConfig::default() }).await;
    let node = sim.cluster().node_names()[0].clone();
    let rv = sim.cluster().resource_version();
    // Within the request body limit (3 MiB), past the object limit (64 KiB).
    let big = json!({"metadata": {"annotations": {"big": "x".repeat(Limits::MIN_OBJECT_BYTES)}}}).to_string();

    let got = patch(&sim, &node, "application/merge-patch+json", big).await;

    assert_status(&got, 413, "RequestEntityTooLarge", "limit is 65536 (max_object_bytes)");
    assert_eq!(sim.cluster().resource_version(), rv, "a refused write takes no resource version");
    let after = get_node(&sim, &node).await;
    assert!(after["metadata"]["annotations"].get("big").is_none(), "nothing was stored");
    sim.shutdown().await;
}
