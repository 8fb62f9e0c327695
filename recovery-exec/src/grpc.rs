//! The remote executor: actions performed by the operator's provisioning
//! service over gRPC (`nodeagent.v1.RecoveryExecutor`).
//!
//! Every action gets an idempotency key when it is decided; a call whose
//! answer was lost (a timeout, a dropped connection) is retried with the
//! same key, so a server that keeps the contract never acts twice. Errors
//! that say the server refused are not retried.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use health_core::{Action, ExecError, Executor};
use node_agent_proto::v1::recovery_executor_client::RecoveryExecutorClient;
use node_agent_proto::v1::{self as pb, ExecuteRequest};
use node_agent_proto::{Bearer, ClientSettings, TransportError};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::ExecTarget;

/// How the remote executor calls its server.
#[derive(Clone, Debug)]
pub struct GrpcExecutorConfig {
    /// Endpoint, TLS trust, token and time limits of each call.
    pub client: ClientSettings,
    /// Calls per action, the first included (a lost answer is retried with the same key).
    pub attempts: u32,
    /// Wait before the first retry (doubled per retry, with jitter).
    pub backoff: Duration,
}

impl GrpcExecutorConfig {
    /// Three attempts 500 ms apart (doubling) against `client`.
    #[must_use]
    pub fn new(client: ClientSettings) -> Self {
        GrpcExecutorConfig { client, attempts: 3, backoff: Duration::from_millis(500) }
    }
}

/// Performs actions through a `nodeagent.v1.RecoveryExecutor` server.
#[derive(Clone, Debug)]
pub struct GrpcExecutor {
    client: RecoveryExecutorClient<InterceptedService<Channel, Bearer>>,
    config: GrpcExecutorConfig,
}

impl GrpcExecutor {
    /// A client of `config.client.endpoint` (connected lazily: a server that
    /// is down fails the actions, not this). Needs a Tokio runtime.
    ///
    /// # Errors
    /// A malformed endpoint, an unreadable CA file, a token over plain http
    /// to a remote host, or `attempts` of zero.
    pub fn new(config: GrpcExecutorConfig) -> Result<Self, TransportError> {
        if config.attempts == 0 {
            return Err(TransportError::Endpoint {
                endpoint: config.client.endpoint.clone(),
                message: "attempts must be at least 1".into(),
            });
        }
        let (channel, bearer) = config.client.connect()?;
        Ok(GrpcExecutor { client: RecoveryExecutorClient::with_interceptor(channel, bearer), config })
    }
}

/// The wire form of an action.
#[must_use]
pub fn wire_action(action: Action) -> pb::Action {
    match action {
        Action::Reboot => pb::Action::Reboot,
        Action::Drain => pb::Action::Drain,
        Action::Replace => pb::Action::Replace,
        Action::Uncordon => pb::Action::Uncordon,
        Action::Repair(_) => pb::Action::Repair,
    }
}

/// A fresh idempotency key for one decided action on `node`.
fn idempotency_key(node: &str, action: Action) -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{node}/{action}/{ms}-{:016x}", fastrand::u64(..))
}

/// Codes a server answers before acting (it refused): final.
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for GrpcExecutor {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        let node = target.node_name();
        let key = idempotency_key(node, action);
        let timeout = self.config.client.timeout;
        let request = ExecuteRequest {
            idempotency_key: key.clone(),
            node: node.to_owned(),
            action: wire_action(action) as i32,
            pool_id: target.pool_id().unwrap_or_default().to_owned(),
            timeout: Some(pb_duration(timeout)),
            repair: match action {
                Action::Repair(r) => r.as_str().to_owned(),
                _ => String::new(),
            },
        };
        let mut wait = self.config.backoff;
        let mut last: Option<tonic::Status> = None;
        for attempt in 1..=self.config.attempts {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(timeout);
            match self.client.clone().execute(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    tracing::info!(
                        node,
                        %action,
                        key = %key,
                        attempt,
                        replayed = resp.replayed,
                        answer = %resp.message,
                        "remote executor performed the action"
                    );
                    return Ok(());
                }
                Err(status) => {
                    let code = status.code();
                    if code == Code::Unimplemented {
                        return Err(ExecError::Unsupported { action });
                    }
                    // Anything else (Unavailable, a client-side timeout seen as
                    // Cancelled, an h2 reset seen as Internal...) may come after
                    // the server acted: retried with the same key, and unknown
                    // in the end, never "failed".
                    if refused(code) {
                        return Err(ExecError::failed(
                            action,
                            format!("remote executor refused ({code:?}): {}", status.message()),
                        ));
                    }
                    tracing::warn!(
                        node,
                        %action,
                        key = %key,
                        attempt,
                        attempts = self.config.attempts,
                        code = ?code,
                        error = %status.message(),
                        "remote executor call failed; retrying with the same idempotency key"
                    );
                    last = Some(status);
                    if attempt < self.config.attempts {
                        let jitter = wait.mul_f64(fastrand::f64() * 0.2);
                        tokio::time::sleep(wait + jitter).await;
                        wait = wait.saturating_mul(2);
                    }
                }
            }
        }
        let status = last.map_or_else(|| "no answer".to_owned(), |s| format!("{:?}: {}", s.code(), s.message()));
        Err(ExecError::Unknown {
            action,
            message: format!(
                "no answer from the remote executor after {} attempts (last: {status}); key {key}",
                self.config.attempts
            ),
        })
    }
}

fn pb_duration(d: Duration) -> node_agent_proto::Duration {
    node_agent_proto::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
