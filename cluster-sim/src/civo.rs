//! The Civo API subset: cluster, instances, reboots and pool instance deletion.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::cluster::{CivoCall, Cluster, Instance};

fn civo_error(status: StatusCode, code: &str, reason: &str) -> Response {
    (status, Json(json!({"code": code, "reason": reason, "details": ""}))).into_response()
}

/// Checks the key and region and applies injected faults.
/// `Err` carries the response to send instead of serving the request.
async fn gate(cluster: &Cluster, headers: &HeaderMap, query: &HashMap<String, String>) -> Result<(), Response> {
    let key = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let expected = &cluster.config().civo_key;
    let ok_key = key.split_once(' ').is_some_and(|(scheme, k)| scheme.eq_ignore_ascii_case("bearer") && k == expected);
    if !ok_key {
        return Err(civo_error(
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "Authentication failed: supply a valid API key as \"Authorization: bearer KEY\"",
        ));
    }
    let fault = cluster.take_civo_fault();
    if let Some(f) = fault {
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        if f.status != 0 {
            let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (code, reason) = match f.status {
                429 => ("rate_limit_exceeded", "Too many requests, slow down"),
                404 => {
                    ("database_kubernetes_cluster_not_found", "Failed to find the cluster within the internal database")
                }
                401 | 403 => {
                    ("authentication_access_denied", "Access denied, you don't have permission on this resource")
                }
                _ => ("internal_server_error", "An unexpected error occurred"),
            };
            let mut answer = civo_error(status, code, reason);
            if let Some(secs) = f.retry_after {
                answer.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
            }
            return Err(answer);
        }
    }
    check_region(cluster, query)
}

// The error is the response to send, as in a handler.
#[allow(clippy::result_large_err)]
fn check_region(cluster: &Cluster, query: &HashMap<String, String>) -> Result<(), Response> {
    if query.get("region").is_none_or(String::is_empty) {
        return Err(civo_error(StatusCode::BAD_REQUEST, "region_missing", "The region query parameter is required"));
    }
    if query.get("region") != Some(&cluster.config().region) {
        return Err(civo_error(StatusCode::NOT_FOUND, "region_unavailable", "The region is not available"));
    }
    Ok(())
}

fn cluster_not_found() -> Response {
    civo_error(
        StatusCode::NOT_FOUND,
        "database_kubernetes_cluster_not_found",
        "Failed to find the cluster within the internal database",
    )
}

fn instance_json(i: &Instance, region: &str) -> Value {
    json!({
        "id": i.id, "hostname": i.hostname, "status": i.status, "size": i.size, "region": region,
        "public_ip": i.public_ip, "private_ip": i.private_ip, "network_id": "6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f",
        "firewall_id": "4211a9c2-7e3b-4d8f-9a1c-2b3e4f5a6b7c", "tags": ["k3s"], "cpu_cores": if i.gpus > 0 { 16 } else { 4 },
        "ram_mb": if i.gpus > 0 { 131_072 } else { 8192 }, "disk_gb": 80, "created_at": "2026-11-01T09:10:02Z",
        "source_type": "diskimage", "source_id": "ubuntu-noble"
    })
}

async fn get_cluster(
    State(c): State<Cluster>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&c, &headers, &q).await {
        return r;
    }
    let cfg = c.config();
    if id != cfg.cluster_id {
        return cluster_not_found();
    }
    let all = c.instances();
    let pools: Vec<Value> = c
        .civo_pools()
        .iter()
        .map(|(pid, size)| {
            let members: Vec<&Instance> = all.iter().filter(|i| &i.pool == pid).collect();
            json!({
                "id": pid, "count": members.len(), "size": size,
                "instance_names": members.iter().map(|i| i.hostname.clone()).collect::<Vec<_>>(),
                "instances": members.iter().map(|i| instance_json(i, &cfg.region)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let instances: Vec<Value> = all.iter().map(|i| instance_json(i, &cfg.region)).collect();
    Json(json!({
        "id": cfg.cluster_id, "name": cfg.cluster_name, "version": "1.33.1-k3s1", "status": "ACTIVE", "ready": true,
        "cluster_type": "k3s", "num_target_nodes": instances.len(), "target_nodes_size": "g4s.kube.medium",
        "kubernetes_version": "1.33.1-k3s1", "cni_plugin": "cilium", "ccm_installed": "true",
        "created_at": "2026-11-01T09:00:00Z", "pools": pools, "instances": instances
    }))
    .into_response()
}

async fn list_instances(
    State(c): State<Cluster>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&c, &headers, &q).await {
        return r;
    }
    if id != c.config().cluster_id {
        return cluster_not_found();
    }
    let region = &c.config().region;
    let list: Vec<Value> = c.instances().iter().map(|i| instance_json(i, region)).collect();
    Json(Value::Array(list)).into_response()
}

async fn reboot(
    State(c): State<Cluster>,
    Path((id, kind)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&c, &headers, &q).await {
        return r;
    }
    if kind != "hard_reboots" && kind != "soft_reboots" {
        return civo_error(StatusCode::NOT_FOUND, "not_found", "No such action");
    }
    if c.reboot_instance(&id) {
        Json(json!({"ID": id, "result": "success"})).into_response()
    } else {
        civo_error(
            StatusCode::NOT_FOUND,
            "database_instance_not_found",
            "Failed to find the instance within the internal database",
        )
    }
}

async fn delete_pool_instance(
    State(c): State<Cluster>,
    Path((cid, pool, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&c, &headers, &q).await {
        return r;
    }
    let in_pool = cid == c.config().cluster_id && c.instance_in_pool(&id, &pool);
    if !in_pool {
        return civo_error(
            StatusCode::NOT_FOUND,
            "database_cluster_pool_instance_not_found",
            "Failed to find the instance in the cluster pool within the internal database",
        );
    }
    match c.delete_instance(&id) {
        Some(_) => Json(json!({"result": "success"})).into_response(),
        None => {
            civo_error(StatusCode::NOT_FOUND, "database_cluster_pool_instance_not_found", "Failed to find the instance")
        }
    }
}

async fn fallback(State(c): State<Cluster>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Err(r) = gate(&c, &headers, &q).await {
        return r;
    }
    civo_error(StatusCode::NOT_FOUND, "not_found", "The requested resource does not exist")
}

/// Records every call with the status actually answered (0: no answer was sent).
async fn log_calls(State(c): State<Cluster>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map_or_else(|| req.uri().path().to_owned(), ToString::to_string);
    // Logged on arrival (status 0 until answered), so a call whose client
    // gave up before the answer still counts.
    let index = c.log_civo_call(CivoCall { method, path, status: 0 });
    let response = next.run(req).await;
    c.answer_civo_call(index, response.status().as_u16());
    response
}

/// The Civo API router.
pub(crate) fn router(cluster: Cluster) -> Router {
    Router::new()
        .route("/v2/kubernetes/clusters/{id}", get(get_cluster))
        .route("/v2/kubernetes/clusters/{id}/instances", get(list_instances))
        .route("/v2/instances/{id}/{action}", post(reboot))
        .route("/v2/kubernetes/clusters/{cid}/pools/{pool}/instances/{id}", delete(delete_pool_instance))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(cluster.clone(), log_calls))
        .with_state(cluster)
}
