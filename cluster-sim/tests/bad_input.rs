//! Bad input gets the right status and a Kubernetes- or Civo-shaped error,
//! and never takes the server down.

mod common;

use common::start;
use serde_json::{Value, json};

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn send(&self, method: &str, path: &str, ct: &str, body: &str) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .client
            .request(m, format!("{}{path}", self.base))
            .header("content-type", ct)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

fn assert_status(what: &str, got: &(u16, Value), code: u16, reason: &str) {
    assert_eq!(got.0, code, "{what}: {}", got.1);
    assert_eq!(got.1["kind"], "Status", "{what}: {}", got.1);
    assert_eq!(got.1["status"], "Failure", "{what}");
    assert_eq!(got.1["code"], json!(code), "{what}");
    assert_eq!(got.1["reason"], json!(reason), "{what}: {}", got.1);
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_bad_input_is_rejected_with_status_objects() {
    let sim = start(2, 0).await;
    let h = Http { client: common::http(), base: sim.kube_url() };
    let node = sim.cluster().node_names()[0].clone();
    let np = format!("/api/v1/nodes/{node}");
    let merge = "application/merge-patch+json";
    let duplicate = format!(r#"{{"metadata":{{"name":"{node}"}}}}"#);
    let cases: Vec<(&str, &str, String, &str, &str, u16, &str)> = vec![
        (
            "malformed JSON on create",
            "POST",
            "/api/v1/nodes".into(),
            "application/json",
            "{\"metadata\":",
            400,
            "BadRequest",
        ),
        ("malformed JSON patch body", "PATCH", np.clone(), merge, "{not json", 400, "BadRequest"),
        ("wrong type in a patch", "PATCH", np.clone(), merge, r#"{"spec":{"unschedulable":"yes"}}"#, 422, "Invalid"),
        (
            "a JSON patch whose test fails",
            "PATCH",
            np.clone(),
            "application/json-patch+json",
            r#"[{"op":"test","path":"/metadata/name","value":"other"}]"#,
            422,
            "Invalid",
        ),
        (
            "an unknown JSON patch op",
            "PATCH",
            np.clone(),
            "application/json-patch+json",
            r#"[{"op":"explode","path":"/x"}]"#,
            400,
            "BadRequest",
        ),
        ("an unsupported patch type", "PATCH", np.clone(), "application/yaml", "{}", 415, "UnsupportedMediaType"),
        (
            "an apply patch without a field manager",
            "PATCH",
            np.clone(),
            "application/apply-patch+yaml",
            "{}",
            422,
            "Invalid",
        ),
        (
            "unknown fields with strict validation",
            "PATCH",
            format!("{np}?fieldValidation=Strict"),
            merge,
            r#"{"spec":{"bogus":1}}"#,
            400,
            "BadRequest",
        ),
        (
            "a stale resourceVersion",
            "PATCH",
            np.clone(),
            merge,
            r#"{"metadata":{"resourceVersion":"1"}}"#,
            409,
            "Conflict",
        ),
        ("renaming through a patch", "PATCH", np.clone(), merge, r#"{"metadata":{"name":"other"}}"#, 422, "Invalid"),
        ("a bad label selector", "GET", "/api/v1/nodes?labelSelector=app%20in%20web".into(), "", "", 400, "BadRequest"),
        (
            "an unsupported field selector",
            "GET",
            "/api/v1/nodes?fieldSelector=spec.nodeName%3Dx".into(),
            "",
            "",
            400,
            "BadRequest",
        ),
        ("a bad limit", "GET", "/api/v1/nodes?limit=lots".into(), "", "", 400, "BadRequest"),
        ("a bad continue token", "GET", "/api/v1/nodes?limit=1&continue=garbage".into(), "", "", 400, "BadRequest"),
        ("a missing node", "GET", "/api/v1/nodes/nope".into(), "", "", 404, "NotFound"),
        ("an unknown resource", "GET", "/api/v1/widgets".into(), "", "", 404, "NotFound"),
        ("a duplicate create", "POST", "/api/v1/nodes".into(), "application/json", &duplicate, 409, "AlreadyExists"),
        (
            "an invalid name",
            "POST",
            "/api/v1/nodes".into(),
            "application/json",
            r#"{"metadata":{"name":"Bad_Name"}}"#,
            422,
            "Invalid",
        ),
        (
            "a body of the wrong kind",
            "POST",
            "/api/v1/nodes".into(),
            "application/json",
            r#"{"kind":"Pod","metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
        ),
        (
            "a delete with a stale precondition",
            "DELETE",
            np.clone(),
            "application/json",
            r#"{"preconditions":{"resourceVersion":"1"}}"#,
            409,
            "Conflict",
        ),
        (
            "an eviction of a missing pod",
            "POST",
            "/api/v1/namespaces/default/pods/nope/eviction".into(),
            "application/json",
            r#"{"kind":"Eviction","metadata":{"name":"nope"}}"#,
            404,
            "NotFound",
        ),
        (
            "a bad watch resourceVersion",
            "GET",
            "/api/v1/nodes?watch=true&resourceVersion=abc".into(),
            "",
            "",
            400,
            "BadRequest",
        ),
        (
            "a watch from the future",
            "GET",
            "/api/v1/nodes?watch=true&resourceVersion=999999999".into(),
            "",
            "",
            504,
            "Timeout",
        ),
        ("a bad timeoutSeconds", "GET", "/api/v1/nodes?watch=true&timeoutSeconds=-1".into(), "", "", 400, "BadRequest"),
    ];
    for (what, method, path, ct, body, code, reason) in &cases {
        let got = h.send(method, path, ct, body).await;
        assert_status(what, &got, *code, reason);
    }
    // A continue token only continues the list it came from.
    let (_, first) = h.send("GET", "/api/v1/nodes?limit=1", "", "").await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    let got = h.send("GET", &format!("/api/v1/namespaces/default/pods?limit=1&continue={token}"), "", "").await;
    assert_status("a continue token of another list", &got, 400, "BadRequest");
    // An absurd timeout is capped, not a crash.
    let r = h
        .client
        .get(format!("{}/api/v1/nodes?watch=true&timeoutSeconds=18446744073709551615", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(r);
    // Unknown fields without strict validation are dropped with a warning, as the API server does.
    let r = h
        .client
        .patch(format!("{}{np}", h.base))
        .header("content-type", merge)
        .body(r#"{"spec":{"bogus":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("warning").and_then(|w| w.to_str().ok()).is_some_and(|w| w.contains("spec.bogus")));
    let body: Value = r.json().await.unwrap();
    assert!(body["spec"].get("bogus").is_none());
    // Watching from a compacted version: an ERROR event with 410 Expired.
    sim.cluster().compact();
    let (code, body) = h.send("GET", "/api/v1/nodes?watch=true&resourceVersion=2", "", "").await;
    assert_eq!(code, 200);
    let text = body.as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
    let event: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
    // The server is still fine.
    let (code, list) = h.send("GET", "/api/v1/nodes", "", "").await;
    assert_eq!(code, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn civo_rejects_missing_or_wrong_keys_and_regions() {
    let sim = start(2, 0).await;
    let client = common::http();
    let id = sim.cluster().config().cluster_id.clone();
    let url = |p: &str| format!("{}{p}", sim.civo_url());
    let instances = format!("/v2/kubernetes/clusters/{id}/instances?region=lon1");
    for (what, auth) in
        [("no key", None), ("a wrong key", Some("bearer nope")), ("a wrong scheme", Some("Basic sim-civo-key"))]
    {
        let mut req = client.get(url(&instances));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "authentication_failed", "{what}");
        assert!(body["reason"].as_str().is_some_and(|r| !r.contains("sim-civo-key")), "the key is never echoed");
    }
    let authed = |p: &str| client.get(url(p)).header("authorization", "bearer sim-civo-key");
    let r = authed(&format!("/v2/kubernetes/clusters/{id}/instances")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "region_missing");
    let r = authed("/v2/kubernetes/clusters/other/instances?region=lon1").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "database_kubernetes_cluster_not_found");
    let r = authed(&instances).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let calls = sim.cluster().civo_calls();
    assert_eq!(calls.iter().map(|c| c.status).collect::<Vec<_>>(), [401, 401, 401, 400, 404, 200]);
    sim.shutdown().await;
}

#[tokio::test]
async fn query_booleans_are_parsed_like_the_api_server() {
    let sim = start(1, 0).await;
    let http = common::http();
    for (value, watch) in [("true", true), ("True", true), ("1", true), ("t", true), ("false", false), ("0", false)] {
        let url = format!("{}/api/v1/nodes?watch={value}&timeoutSeconds=1", sim.kube_url());
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{value}");
        let body = r.text().await.unwrap();
        assert_eq!(body.contains("\"type\":\"ADDED\""), watch, "watch={value}: {body}");
    }
    let r = http.get(format!("{}/api/v1/nodes?watch=yes", sim.kube_url())).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let status: serde_json::Value = r.json().await.unwrap();
    assert!(status["message"].as_str().unwrap().contains("watch"), "{status}");
    sim.shutdown().await;
}

/// Requests are counted per client (User-Agent product), verb and resource,
/// and served at `/sim/requests` (the agent's scale harness reads it).
#[tokio::test]
async fn requests_are_counted_by_client_verb_and_resource() {
    let sim = start(2, 0).await;
    let http = common::http();
    let base = sim.kube_url();
    let agent = |r: reqwest::RequestBuilder| r.header("user-agent", "node-agent/0.1.0");
    agent(http.get(format!("{base}/api/v1/nodes"))).send().await.unwrap();
    agent(http.get(format!("{base}/api/v1/nodes?watch=1&timeoutSeconds=1")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let node = sim.cluster().node_names()[0].clone();
    agent(http.get(format!("{base}/api/v1/nodes/{node}"))).send().await.unwrap();
    agent(
        http.patch(format!("{base}/api/v1/nodes/{node}/status")).header("content-type", "application/merge-patch+json"),
    )
    .body("{}")
    .send()
    .await
    .unwrap();
    http.get(format!("{base}/api/v1/nodes")).send().await.unwrap();
    let counts: Vec<(String, &str, String, u64)> =
        sim.cluster().kube_requests().into_iter().map(|(r, n)| (r.client, r.verb, r.resource, n)).collect();
    let want = |c: &str, v: &str, r: &str| counts.iter().find(|x| x.0 == c && x.1 == v && x.2 == r).map(|x| x.3);
    assert_eq!(want("node-agent", "list", "nodes"), Some(1), "{counts:?}");
    assert_eq!(want("node-agent", "watch", "nodes"), Some(1));
    assert_eq!(want("node-agent", "get", "nodes"), Some(1));
    assert_eq!(want("node-agent", "patch", "nodes/status"), Some(1));
    assert_eq!(want("unknown", "list", "nodes"), Some(1), "a client without a User-Agent");
    let served: serde_json::Value =
        http.get(format!("{base}/sim/requests")).send().await.unwrap().json().await.unwrap();
    assert!(served.as_array().unwrap().iter().any(|r| r["client"] == "node-agent" && r["verb"] == "watch"), "{served}");
    sim.shutdown().await;
}

/// Clients inventing User-Agents cannot grow the request counts without bound.
#[tokio::test]
async fn invented_user_agents_fold_into_other() {
    let sim = start(1, 0).await;
    let http = common::http();
    let url = format!("{}/api/v1/nodes", sim.kube_url());
    for i in 0..cluster_sim::MAX_REQUEST_KINDS + 10 {
        http.get(&url).header("user-agent", format!("client-{i}/1")).send().await.unwrap();
    }
    http.get(&url).header("user-agent", "x".repeat(65)).send().await.unwrap();
    let counts = sim.cluster().kube_requests();
    assert!(counts.len() <= cluster_sim::MAX_REQUEST_KINDS + 1, "{}", counts.len());
    let other: u64 = counts.iter().filter(|(r, _)| r.client == "other").map(|(_, n)| n).sum();
    assert_eq!(other, 11, "the last 10 invented clients and the over-long one");
    sim.shutdown().await;
}
