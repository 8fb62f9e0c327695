//! A reference `nodeagent.v1.RecoveryExecutor` server: what an operator's
//! provisioning service must do to be node-agent's remote executor.
//!
//! The contract: an idempotency key seen before never acts again; it
//! answers the first call's outcome with `replayed = true`, even while the
//! first call is still running (the retry waits for it). The action runs
//! in a task of its own, so a client that gives up does not cancel it
//! half-way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use node_agent_proto::RequireBearer;
use node_agent_proto::v1::recovery_executor_server::{RecoveryExecutor, RecoveryExecutorServer};
use node_agent_proto::v1::{Action, ExecuteRequest, ExecuteResponse};
use parking_lot::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

/// What performs an action on a node: `Ok(message)` when it was done,
/// `Err(message)` when it failed. The third argument is the soft repair's
/// name with `ACTION_REPAIR` (such as `restart-kubelet`), else empty.
pub type Perform = Arc<dyn Fn(Action, &str, &str) -> Result<String, String> + Send + Sync>;

type Outcome = Result<String, String>;

/// The reference server's state: outcomes by idempotency key.
pub struct ReferenceServer {
    perform: Perform,
    outcomes: Mutex<HashMap<String, tokio::sync::watch::Receiver<Option<Outcome>>>>,
    /// Answers withheld (never sent) after acting, for tests of lost answers.
    lose_answers: AtomicU32,
    /// Calls received (retries included).
    calls: AtomicU32,
}

impl ReferenceServer {
    /// A server acting through `perform`.
    #[must_use]
    pub fn new(perform: Perform) -> Arc<Self> {
        Arc::new(ReferenceServer {
            perform,
            outcomes: Mutex::new(HashMap::new()),
            lose_answers: AtomicU32::new(0),
            calls: AtomicU32::new(0),
        })
    }

    /// Withholds the answers of the next `n` calls after acting (a lost
    /// answer, as the client sees it).
    pub fn lose_next_answers(&self, n: u32) {
        self.lose_answers.store(n, Ordering::SeqCst);
    }

    /// Calls received so far.
    #[must_use]
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The tonic service, requiring `auth`'s token.
    #[must_use]
    pub fn service(
        self: &Arc<Self>,
        auth: RequireBearer,
    ) -> InterceptedService<RecoveryExecutorServer<Handle>, RequireBearer> {
        RecoveryExecutorServer::with_interceptor(Handle(Arc::clone(self)), auth)
    }
}

/// The service handle of a [`ReferenceServer`].
#[derive(Clone)]
pub struct Handle(Arc<ReferenceServer>);

#[tonic::async_trait]
impl RecoveryExecutor for Handle {
    async fn execute(&self, request: Request<ExecuteRequest>) -> Result<Response<ExecuteResponse>, Status> {
        let server = &self.0;
        server.calls.fetch_add(1, Ordering::SeqCst);
        let req = request.into_inner();
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid_argument("idempotency_key is required"));
        }
        if req.node.is_empty() {
            return Err(Status::invalid_argument("node is required"));
        }
        let action = Action::try_from(req.action)
            .ok()
            .filter(|a| *a != Action::Unspecified)
            .ok_or_else(|| Status::invalid_argument(format!("unknown action {}", req.action)))?;
        if action == Action::Repair && req.repair.is_empty() {
            return Err(Status::invalid_argument("repair (the repair's name) is required with ACTION_REPAIR"));
        }
        let (mut rx, replayed) = {
            let mut outcomes = server.outcomes.lock();
            match outcomes.get(&req.idempotency_key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    outcomes.insert(req.idempotency_key.clone(), rx.clone());
                    let perform = Arc::clone(&server.perform);
                    let node = req.node.clone();
                    let repair = req.repair.clone();
                    // Its own task: a client that gives up does not cancel it.
                    tokio::spawn(async move {
                        let outcome = tokio::task::spawn_blocking(move || perform(action, &node, &repair))
                            .await
                            .unwrap_or_else(|e| Err(format!("the action panicked: {e}")));
                        let _ = tx.send(Some(outcome));
                    });
                    (rx, false)
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Status::internal("the action's task ended without an outcome"))?
            .clone()
            .unwrap_or_else(|| Err("no outcome".into()));
        let lost = server.lose_answers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if lost {
            std::future::pending::<()>().await;
        }
        match outcome {
            Ok(message) => Ok(Response::new(ExecuteResponse { replayed, message })),
            Err(message) => Err(Status::failed_precondition(message)),
        }
    }
}
