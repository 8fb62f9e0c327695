//! The remote executor: actions performed by the operator's provisioning
//! service over gRPC (`nodeagent.v1.RecoveryExecutor`).
//!
//! Every action gets an idempotency key when it is decided; a call whose
//! answer was lost (a timeout, a dropped connection) is retried with the
//! same key, so a server that keeps the contract never acts twice. Errors
//! that say the server refused are not retried.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use health_core::retry::{RetryAfter, RetryPolicy, retry};
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
    /// Wait before the first retry (doubled per retry up to 30s, with jitter).
    pub backoff: Duration,
}

/// The first retry delay of [`GrpcExecutorConfig::new`].
pub const DEFAULT_GRPC_BACKOFF: Duration = Duration::from_millis(500);

impl GrpcExecutorConfig {
    /// How `attempts` calls with a first retry delay of `backoff` are
    /// spaced: doubling up to 30s, with jitter.
    #[must_use]
    pub fn retry_policy_for(attempts: u32, backoff: Duration) -> RetryPolicy {
        let first = backoff.max(Duration::from_millis(1));
        RetryPolicy::new(first, first.max(Duration::from_secs(30)), attempts.saturating_sub(1))
    }

    /// How this configuration's calls are spaced.
    #[must_use]
    pub fn retry_policy(&self) -> RetryPolicy {
        Self::retry_policy_for(self.attempts, self.backoff)
    }

    /// Three attempts against `client`, the first repeat after 250 to 500 ms
    /// (doubling, with jitter).
    #[must_use]
    pub fn new(client: ClientSettings) -> Self {
        GrpcExecutorConfig { client, attempts: 3, backoff: DEFAULT_GRPC_BACKOFF }
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
        let attempts = self.config.attempts;
        let policy = self.config.retry_policy();
        let what = format!("{action} of node {node} through the remote executor (key {key})");
        let answer = retry(
            &policy,
            &what,
            |attempt| {
                let mut req = tonic::Request::new(request.clone());
                req.set_timeout(timeout);
                let mut client = self.client.clone();
                async move { client.execute(req).await.map(|r| (attempt + 1, r.into_inner())).map_err(Unanswered) }
            },
            // Anything but a refusal (Unavailable, a client-side timeout
            // seen as Cancelled, an h2 reset seen as Internal...) may come
            // after the server acted: repeated with the same key, and
            // unknown in the end, never "failed".
            |Unanswered(status)| status.code() != Code::Unimplemented && !refused(status.code()),
        )
        .await;
        match answer {
            Ok((attempt, resp)) => {
                tracing::info!(
                    node,
                    %action,
                    key = %key,
                    attempt,
                    replayed = resp.replayed,
                    answer = %resp.message,
                    "remote executor performed the action"
                );
                Ok(())
            }
            Err(Unanswered(status)) if status.code() == Code::Unimplemented => Err(ExecError::Unsupported { action }),
            Err(Unanswered(status)) if refused(status.code()) => Err(ExecError::failed(
                action,
                format!("remote executor refused ({:?}): {}", status.code(), status.message()),
            )),
            Err(Unanswered(status)) => Err(ExecError::Unknown {
                action,
                message: format!(
                    "no answer from the remote executor after {attempts} attempts (last: {:?}: {}); key {key}",
                    status.code(),
                    status.message()
                ),
            }),
        }
    }
}

/// A call the server did not answer with success.
struct Unanswered(tonic::Status);

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

impl RetryAfter for Unanswered {}

fn pb_duration(d: Duration) -> node_agent_proto::Duration {
    node_agent_proto::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
