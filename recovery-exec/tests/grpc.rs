//! The remote executor against the reference server over loopback: a lost
//! answer is retried with the same key and the node is rebooted once; a
//! wrong token, a refusal and an unsupported action are not retried.
#![cfg(feature = "grpc")]

use std::sync::Arc;
use std::time::Duration;

use examples::recovery_server::ReferenceServer;
use health_core::{Action, ExecError, Executor};
use node_agent_proto::{ClientSettings, RequireBearer, Token};
use parking_lot::Mutex;
use recovery_exec::{ExecTarget, GrpcExecutor, GrpcExecutorConfig};

struct Node(&'static str);
impl ExecTarget for Node {
    fn node_name(&self) -> &str {
        self.0
    }
    fn pool_id(&self) -> Option<&str> {
        Some("pool-a")
    }
}

type Log = Arc<Mutex<Vec<(String, String)>>>;

/// Serves a reference server on 127.0.0.1:0; its actions are logged.
async fn serve(token: Option<&str>, refuse: Option<&'static str>) -> (Arc<ReferenceServer>, String, Log) {
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    let server = ReferenceServer::new(Arc::new(move |action, node, repair: &str| {
        if refuse == Some(node) {
            return Err(format!("{node} is locked by a change freeze"));
        }
        let what = if repair.is_empty() { action.as_str_name().to_owned() } else { format!("ACTION_REPAIR:{repair}") };
        seen.lock().push((what, node.to_owned()));
        Ok(format!("{} {node}", action.as_str_name()))
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = server.service(RequireBearer::new(token.map(|t| Token::new(t).expect("token"))));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (server, format!("http://{addr}"), log)
}

fn executor(endpoint: &str, token: Option<&str>) -> GrpcExecutor {
    let mut client = ClientSettings::new(endpoint);
    client.timeout = Duration::from_millis(400);
    client.token = token.map(|t| Token::new(t).expect("token"));
    let mut cfg = GrpcExecutorConfig::new(client);
    cfg.backoff = Duration::from_millis(10);
    GrpcExecutor::new(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_retried_with_the_same_key_and_acts_once() {
    let (server, endpoint, log) = serve(Some("t0ken"), None).await;
    server.lose_next_answers(1);
    let exec = executor(&endpoint, Some("t0ken"));
    exec.execute(Action::Reboot, &Node("node-1")).await.expect("the retry gets the first call's outcome");
    assert_eq!(server.calls(), 2, "one call lost its answer, the retry got it");
    assert_eq!(*log.lock(), vec![("ACTION_REBOOT".to_owned(), "node-1".to_owned())], "rebooted exactly once");

    // A new decision is a new key: it acts again.
    exec.execute(Action::Reboot, &Node("node-1")).await.expect("second reboot");
    assert_eq!(log.lock().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_never_come_end_as_an_unknown_outcome() {
    let (server, endpoint, log) = serve(None, None).await;
    server.lose_next_answers(10);
    let err = executor(&endpoint, None).execute(Action::Drain, &Node("node-2")).await.unwrap_err();
    assert!(matches!(err, ExecError::Unknown { action: Action::Drain, .. }), "{err}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert_eq!(server.calls(), 3);
    assert_eq!(log.lock().len(), 1, "three calls, one drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_not_retried() {
    let (server, endpoint, log) = serve(Some("tok-A1"), Some("node-frozen")).await;
    let err = executor(&endpoint, Some("tok-B2")).execute(Action::Reboot, &Node("node-1")).await.unwrap_err();
    assert!(matches!(err, ExecError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("Unauthenticated"), "{err}");
    assert!(!err.to_string().contains("tok-"), "no token in errors: {err}");
    assert_eq!(server.calls(), 0, "the interceptor refused before the handler");

    let err = executor(&endpoint, Some("tok-A1")).execute(Action::Replace, &Node("node-frozen")).await.unwrap_err();
    assert!(err.to_string().contains("change freeze"), "{err}");
    assert_eq!(server.calls(), 1, "a refusal is final");
    assert!(log.lock().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_an_unknown_outcome_not_a_panic() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let err = executor(&endpoint, None).execute(Action::Reboot, &Node("node-1")).await.unwrap_err();
    assert!(matches!(err, ExecError::Unknown { .. }), "{err}");
}

/// A server whose every answer is an h2-level failure (seen as `Internal`).
#[derive(Clone)]
struct Resetting(Arc<std::sync::atomic::AtomicU32>);

#[tonic::async_trait]
impl node_agent_proto::v1::recovery_executor_server::RecoveryExecutor for Resetting {
    async fn execute(
        &self,
        _: tonic::Request<node_agent_proto::v1::ExecuteRequest>,
    ) -> Result<tonic::Response<node_agent_proto::v1::ExecuteResponse>, tonic::Status> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(tonic::Status::internal("h2 protocol error: stream reset"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_error_is_retried_and_ends_unknown_never_failed() {
    let server = Resetting(Arc::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let svc = node_agent_proto::v1::recovery_executor_server::RecoveryExecutorServer::new(server.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let err = executor(&endpoint, None).execute(Action::Replace, &Node("node-1")).await.unwrap_err();
    assert!(matches!(err, ExecError::Unknown { action: Action::Replace, .. }), "an Internal may follow the act: {err}");
    assert_eq!(server.0.load(std::sync::atomic::Ordering::SeqCst), 3, "retried with the same key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_repair_travels_with_its_name() {
    let (_server, endpoint, log) = serve(None, None).await;
    let exec = executor(&endpoint, None);
    let repair = health_core::Repair::new("restart-kubelet").expect("a valid name");
    exec.execute(Action::Repair(repair), &Node("node-3")).await.expect("the server restarts kubelet");
    assert_eq!(*log.lock(), vec![("ACTION_REPAIR:restart-kubelet".to_owned(), "node-3".to_owned())]);
}
