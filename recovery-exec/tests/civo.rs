//! The Civo executor against cluster-sim's Civo API.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use cluster_sim::{CivoFault, ClusterConfig, Instance, Ports, SimServer};
use health_core::{Action, ExecError, Executor};
use parking_lot::Mutex;
use recovery_exec::*;

const KEY: &str = "sim-key-0123456789abcdef";

async fn sim(nodes: u32) -> SimServer {
    let config = ClusterConfig { nodes, civo_key: KEY.into(), region: "lon1".into(), ..ClusterConfig::default() };
    SimServer::start(config, Ports::default()).await.unwrap()
}

fn executor(sim: &SimServer, key: &str, cluster: Option<&str>) -> CivoExecutor {
    let mut c = CivoConfig::new(
        sim.civo_url(),
        ApiKey::new(key),
        cluster.unwrap_or(&sim.cluster().config().cluster_id).to_owned(),
        "lon1",
    );
    c.call_timeout = Duration::from_millis(300);
    c.retry_base = Duration::from_millis(10);
    c.max_retries = 2;
    c.agent = "node-agent/test".into();
    CivoExecutor::new(c).unwrap()
}

/// (method, path without query, status) of every call.
fn calls(sim: &SimServer) -> Vec<(String, String, u16)> {
    sim.cluster()
        .civo_calls()
        .into_iter()
        .map(|c| (c.method, c.path.split('?').next().unwrap_or("").to_owned(), c.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_by_node_name_hits_exactly_one_instance() {
    let sim = sim(3).await;
    let e = executor(&sim, KEY, None);
    let node = sim.cluster().node_names()[1].clone();
    let id = sim.cluster().instances().into_iter().find(|i| i.hostname == node).unwrap().id;
    // Hostnames match case-insensitively.
    e.reboot(&node.to_uppercase()).await.unwrap();
    let cid = &sim.cluster().config().cluster_id;
    assert_eq!(
        calls(&sim),
        [
            ("GET".to_owned(), format!("/v2/kubernetes/clusters/{cid}/instances"), 200),
            ("POST".to_owned(), format!("/v2/instances/{id}/hard_reboots"), 200),
        ]
    );
    assert!(sim.cluster().civo_calls().iter().all(|c| c.path.ends_with("?region=lon1")));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_ambiguous_hostnames_are_errors_naming_the_node() {
    let sim = sim(2).await;
    let e = executor(&sim, KEY, None);
    let err = e.reboot("no-such-node").await.unwrap_err();
    assert!(matches!(err, CivoError::NoInstance { .. }), "{err}");
    assert!(err.to_string().contains("\"no-such-node\""));
    let node = sim.cluster().node_names()[0].clone();
    let twin = sim.cluster().instances().into_iter().find(|i| i.hostname == node).unwrap();
    sim.cluster().add_civo_instance(Instance { id: "twin-0000".into(), hostname: node.to_uppercase(), ..twin });
    let err = e.reboot(&node).await.unwrap_err();
    assert!(matches!(err, CivoError::AmbiguousInstance { count: 2, .. }), "{err}");
    assert!(calls(&sim).iter().all(|(m, ..)| m == "GET"), "no reboot was attempted");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_typed_and_retried_only_when_safe() {
    let sim = sim(2).await;
    let node = sim.cluster().node_names()[0].clone();
    let c = sim.cluster().clone();

    // 401: wrong key, one call, no retry.
    let err = executor(&sim, "wrong-key", None).reboot(&node).await.unwrap_err();
    assert!(matches!(err, CivoError::Auth { status: 401, .. }), "{err}");
    assert_eq!(calls(&sim).len(), 1);

    // 404: unknown cluster, one call.
    let err = executor(&sim, KEY, Some("00000000-dead")).reboot(&node).await.unwrap_err();
    assert!(matches!(err, CivoError::NotFound { .. }), "{err}");
    assert_eq!(calls(&sim).len(), 2);

    // 429 on listing: retried (safe), 1 + 2 calls, then RateLimited.
    c.civo_fail_next(CivoFault { skip: 0, status: 429, delay: Duration::ZERO, calls: 3 });
    let err = executor(&sim, KEY, None).reboot(&node).await.unwrap_err();
    assert!(matches!(err, CivoError::RateLimited), "{err}");
    assert_eq!(calls(&sim).len(), 5);

    // 500 on the reboot itself: never repeated, and reported as possibly done.
    c.civo_fail_next(CivoFault { skip: 1, status: 500, delay: Duration::ZERO, calls: 1 });
    let exec = executor(&sim, KEY, None);
    let err = Executor::<k8s_openapi::api::core::v1::Node>::execute(&exec, Action::Reboot, &node_obj(&sim, &node))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Unknown { action: Action::Reboot, .. }), "{err}");
    let tail: Vec<_> = calls(&sim).into_iter().skip(5).collect();
    assert_eq!(tail.iter().map(|(m, _, s)| (m.as_str(), *s)).collect::<Vec<_>>(), [("GET", 200), ("POST", 500)]);

    // A reboot that hangs past the timeout: reported as timed out (outcome
    // unknown), never repeated.
    c.civo_fail_next(CivoFault { skip: 1, status: 0, delay: Duration::from_secs(3), calls: 1 });
    let err = Executor::<k8s_openapi::api::core::v1::Node>::execute(&exec, Action::Reboot, &node_obj(&sim, &node))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Timeout { action: Action::Reboot, .. }), "{err}");
    let posts = calls(&sim).iter().filter(|(m, ..)| m == "POST").count();
    assert_eq!(posts, 2, "one POST per attempted reboot");

    // A listing that hangs: retried, then Timeout.
    c.civo_fail_next(CivoFault { skip: 0, status: 0, delay: Duration::from_secs(3), calls: 3 });
    let before = calls(&sim).len();
    let err = exec.find_instance(&node).await.unwrap_err();
    assert!(matches!(err, CivoError::Timeout { .. }), "{err}");
    assert_eq!(calls(&sim).len() - before, 3);
    sim.shutdown().await;
}

fn node_obj(sim: &SimServer, name: &str) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(sim.cluster().node(name).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_deletes_the_right_pool_instance() {
    let sim = sim(3).await;
    let e = executor(&sim, KEY, None);
    let node = sim.cluster().node_names()[2].clone();
    let inst = sim.cluster().instances().into_iter().find(|i| i.hostname == node).unwrap();
    Executor::<k8s_openapi::api::core::v1::Node>::execute(&e, Action::Replace, &node_obj(&sim, &node)).await.unwrap();
    let cid = &sim.cluster().config().cluster_id;
    assert_eq!(
        calls(&sim).last().unwrap(),
        &("DELETE".to_owned(), format!("/v2/kubernetes/clusters/{cid}/pools/{}/instances/{}", inst.pool, inst.id), 200)
    );
    assert!(sim.cluster().node(&node).is_none());
    // A node without its pool label cannot be replaced.
    let mut n = node_obj(&sim, &sim.cluster().node_names()[0]);
    n.metadata.labels.as_mut().unwrap().remove(POOL_LABEL);
    let err = Executor::<k8s_openapi::api::core::v1::Node>::execute(&e, Action::Replace, &n).await.unwrap_err();
    assert!(err.to_string().contains("has no kubernetes.civo.com/civo-node-pool label"), "{err}");
    sim.shutdown().await;
}

#[test]
fn configuration_is_validated_up_front() {
    let ok = || CivoConfig::new("https://api.civo.com", ApiKey::new("k"), "3f2b1c9e-1", "LON1");
    let cases: Vec<(CivoConfig, &str)> = vec![
        (CivoConfig { api_url: "api.civo.com".into(), ..ok() }, "api_url"),
        (CivoConfig { api_url: String::new(), ..ok() }, "api_url"),
        (CivoConfig { api_key: ApiKey::new(""), ..ok() }, "api_key"),
        (CivoConfig { api_key: ApiKey::new("a key"), ..ok() }, "api_key"),
        (CivoConfig { cluster_id: String::new(), ..ok() }, "cluster_id"),
        (CivoConfig { cluster_id: "a/b".into(), ..ok() }, "cluster_id"),
        (CivoConfig { region: String::new(), ..ok() }, "region"),
        (CivoConfig { call_timeout: Duration::ZERO, ..ok() }, "call_timeout"),
    ];
    for (c, field) in cases {
        match CivoExecutor::new(c).unwrap_err() {
            CivoError::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            other => panic!("{other}"),
        }
    }
    assert!(CivoExecutor::new(ok()).is_ok());
}

/// Collects everything tracing writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_api_key_never_leaks() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = sim(2).await;
    let node = sim.cluster().node_names()[0].clone();
    let mut texts = Vec::new();
    let good = executor(&sim, KEY, None);
    texts.push(format!("{good:?}"));
    // Failing calls of every kind.
    sim.cluster().civo_fail_next(CivoFault { skip: 0, status: 500, delay: Duration::ZERO, calls: 3 });
    texts.push(format!("{:?}", good.reboot(&node).await.unwrap_err()));
    sim.cluster().civo_fail_next(CivoFault { skip: 1, status: 0, delay: Duration::from_secs(2), calls: 1 });
    let e = good.reboot(&node).await.unwrap_err();
    texts.push(format!("{e} {e:?}"));
    let wrong = executor(&sim, &format!("{KEY}-wrong"), None);
    let e = wrong.reboot(&node).await.unwrap_err();
    texts.push(format!("{e} {e:?} {wrong:?}"));
    let ghost: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nope-node", "labels": {"kubernetes.civo.com/civo-node-pool": "p"}}
    }))
    .unwrap();
    let e = Executor::<k8s_openapi::api::core::v1::Node>::execute(&good, Action::Replace, &ghost).await;
    texts.push(format!("{e:?}"));
    let config = CivoConfig::new(sim.civo_url(), ApiKey::new(KEY), "c", "lon1");
    texts.push(format!("{config:?}"));
    sim.shutdown().await;

    let logs = String::from_utf8_lossy(&capture.0.lock()).into_owned();
    assert!(logs.contains("retrying"), "the failing calls were logged: {logs}");
    for t in texts.iter().chain(std::iter::once(&logs)) {
        assert!(!t.contains(KEY), "the API key leaked into: {t}");
    }
}
