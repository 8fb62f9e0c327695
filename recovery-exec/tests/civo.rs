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
    // The executor brought its own provider: none was installed for the process.
    assert!(rustls::crypto::CryptoProvider::get_default().is_none(), "a library installed a global crypto provider");
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
    c.civo_fail_next(CivoFault { skip: 0, status: 429, delay: Duration::ZERO, calls: 3, retry_after: None });
    let err = executor(&sim, KEY, None).reboot(&node).await.unwrap_err();
    assert!(matches!(err, CivoError::RateLimited { .. }), "{err}");
    assert_eq!(calls(&sim).len(), 5);

    // 500 on the reboot itself: never repeated, and reported as possibly done.
    c.civo_fail_next(CivoFault { skip: 1, status: 500, delay: Duration::ZERO, calls: 1, retry_after: None });
    let exec = executor(&sim, KEY, None);
    let err = Executor::<k8s_openapi::api::core::v1::Node>::execute(&exec, Action::Reboot, &node_obj(&sim, &node))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Unknown { action: Action::Reboot, .. }), "{err}");
    let tail: Vec<_> = calls(&sim).into_iter().skip(5).collect();
    assert_eq!(tail.iter().map(|(m, _, s)| (m.as_str(), *s)).collect::<Vec<_>>(), [("GET", 200), ("POST", 500)]);

    // A reboot that hangs past the timeout: reported as timed out (outcome
    // unknown), never repeated.
    c.civo_fail_next(CivoFault { skip: 1, status: 0, delay: Duration::from_secs(3), calls: 1, retry_after: None });
    let err = Executor::<k8s_openapi::api::core::v1::Node>::execute(&exec, Action::Reboot, &node_obj(&sim, &node))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::Timeout { action: Action::Reboot, .. }), "{err}");
    let posts = calls(&sim).iter().filter(|(m, ..)| m == "POST").count();
    assert_eq!(posts, 2, "one POST per attempted reboot");

    // A listing that hangs: retried, then Timeout.
    c.civo_fail_next(CivoFault { skip: 0, status: 0, delay: Duration::from_secs(3), calls: 3, retry_after: None });
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

/// Every log line of this test binary, from every test. One process-wide
/// subscriber: a thread-local one (`set_default`) misses events whose
/// callsite another test thread, running without a subscriber, registered
/// first as uninteresting (tracing caches interest per callsite), which made
/// this test flaky under parallel runs.
fn captured_logs() -> Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let writer = capture.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this test binary");
            capture
        })
        .clone()
}

#[tokio::test(flavor = "current_thread")]
async fn the_api_key_never_leaks() {
    let capture = captured_logs();

    let sim = sim(2).await;
    let node = sim.cluster().node_names()[0].clone();
    let mut texts = Vec::new();
    let good = executor(&sim, KEY, None);
    texts.push(format!("{good:?}"));
    // Failing calls of every kind.
    sim.cluster().civo_fail_next(CivoFault {
        skip: 0,
        status: 500,
        delay: Duration::ZERO,
        calls: 3,
        retry_after: None,
    });
    texts.push(format!("{:?}", good.reboot(&node).await.unwrap_err()));
    sim.cluster().civo_fail_next(CivoFault {
        skip: 1,
        status: 0,
        delay: Duration::from_secs(2),
        calls: 1,
        retry_after: None,
    });
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
    assert!(logs.contains("call failed; repeating it"), "the failing calls were logged: {logs}");
    for t in texts.iter().chain(std::iter::once(&logs)) {
        assert!(!t.contains(KEY), "the API key leaked into: {t}");
    }
}

/// A hostile Civo: answers every request on one connection with `head`
/// and then `body_chunks` chunks of `chunk` (chunked encoding) until the
/// client hangs up. Returns its URL and the number of body bytes it sent.
async fn hostile(head: &'static str, chunk: Vec<u8>, body_chunks: usize) -> (String, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let chunk = chunk.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut req = vec![0u8; 8192];
                let _ = conn.read(&mut req).await;
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..body_chunks {
                    let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    if conn.write_all(&framed).await.is_err() {
                        return;
                    }
                    *counter.lock() += chunk.len();
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (url, sent)
}

fn hostile_executor(url: &str) -> CivoExecutor {
    let mut c = CivoConfig::new(url, ApiKey::new(KEY), "c-1", "lon1");
    c.max_retries = 0;
    c.call_timeout = Duration::from_secs(20);
    CivoExecutor::new(c).unwrap()
}

/// Reproduced: a 768 MiB answer raised the agent's memory from 14 to
/// 1,556 MiB. Now the read stops at max_body_bytes (4 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_is_refused_without_reading_it_whole() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    // 768 MiB in 1 MiB chunks, streamed: never held by the server either.
    let (url, sent) = hostile(head, vec![b' '; 1 << 20], 768).await;
    let err = hostile_executor(&url).find_instance("node-1").await.unwrap_err().to_string();
    assert!(err.contains("larger than 4194304 bytes (max_body_bytes)"), "{err}");
    let sent = *sent.lock();
    assert!(sent < 64 << 20, "the server got {sent} bytes out before the client hung up");
    println!("server wrote {} MiB before the executor stopped reading", sent >> 20);

    // A declared length over the cap is refused before any body is read.
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 805306368\r\n\r\n";
    let (url, _) = hostile(head, Vec::new(), 0).await;
    let err = hostile_executor(&url).find_instance("node-1").await.unwrap_err().to_string();
    assert!(err.contains("larger than 4194304 bytes"), "{err}");
}

/// Reproduced: a 500 with a 50 MiB reason made a 52 MB error message, which
/// was logged too. Now the reason is cut to 512 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_reason_is_cut() {
    let head =
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut body = br#"{"code":"database_error","reason":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 50 << 20));
    body.extend_from_slice(br#""}"#);
    let (url, _) = hostile(head, body, 1).await;
    let err = hostile_executor(&url).find_instance("node-1").await.unwrap_err().to_string();
    assert!(err.len() < 1024, "an error of {} bytes", err.len());
    assert!(err.starts_with("Civo server error 500"), "{err}");
}

/// Reproduced: an instance id `x?region=evil#` from the listing went into
/// the reboot URL, which became `POST /v2/instances/x?region=evil` with the
/// key, and the executor reported success. Now the id is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_that_is_not_an_id_never_reaches_a_url() {
    let sim = sim(1).await;
    sim.cluster().add_civo_instance(Instance {
        id: "x?region=evil#".into(),
        hostname: "evil-node".into(),
        ..sim.cluster().instances()[0].clone()
    });
    let e = executor(&sim, KEY, None);
    let err = e.reboot("evil-node").await.unwrap_err().to_string();
    assert!(err.contains("which is not a Civo id"), "{err}");
    assert!(calls(&sim).iter().all(|(m, _, _)| m == "GET"), "{:?}", calls(&sim));
    // A pool label that is not an id is refused before any call.
    let before = calls(&sim).len();
    let err = e.replace(&sim.cluster().node_names()[0], "p/../../x").await.unwrap_err().to_string();
    assert!(err.contains("is not a Civo pool id"), "{err}");
    assert_eq!(calls(&sim).len(), before);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_the_maximum_delay_ends_the_retries() {
    let sim = sim(2).await;
    let node = sim.cluster().node_names()[0].clone();
    // Civo asks for an hour: beyond retry_max_delay, so the listing is not
    // repeated and the wait is in the error for the operator.
    sim.cluster().civo_fail_next(CivoFault {
        skip: 0,
        status: 429,
        delay: Duration::ZERO,
        calls: 1,
        retry_after: Some(3600),
    });
    let err = executor(&sim, KEY, None).find_instance(&node).await.unwrap_err();
    assert!(matches!(err, CivoError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(3600)), "{err}");
    assert_eq!(err.to_string(), "Civo rate-limited the request (429; retry after 3600s)");
    assert_eq!(calls(&sim).len(), 1, "asked for a longer wait than retry_max_delay: not repeated");
    // A 503 asking for less than the maximum delay is waited out and repeated.
    sim.cluster().civo_fail_next(CivoFault {
        skip: 0,
        status: 503,
        delay: Duration::ZERO,
        calls: 1,
        retry_after: Some(0),
    });
    let id = executor(&sim, KEY, None).find_instance(&node).await.unwrap();
    assert!(!id.is_empty());
    assert_eq!(calls(&sim).iter().map(|c| c.2).collect::<Vec<_>>(), [429, 503, 200]);
    sim.shutdown().await;
}

#[test]
fn retry_settings_are_checked() {
    let mut c = CivoConfig::new("https://api.civo.com", ApiKey::new("k"), "c-1", "LON1");
    c.retry_max_delay = Duration::from_millis(100);
    let err = c.validate().unwrap_err().to_string();
    assert_eq!(err, "invalid Civo configuration: retry_max_delay must be at least retry_base");
    c.retry_base = Duration::ZERO;
    assert!(c.validate().unwrap_err().to_string().contains("retry_base must be a positive duration"));
}
