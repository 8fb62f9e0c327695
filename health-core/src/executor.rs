//! The [`Executor`] trait and its forwarding impls.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::Action;

/// An executor could not perform an action.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The action was refused or failed; it did not happen.
    #[error("{action} failed: {message}")]
    Failed {
        /// The action attempted.
        action: Action,
        /// What went wrong (never contains secrets).
        message: String,
        /// The underlying cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The outcome is unknown: the action may or may not have happened.
    #[error("{action} outcome unknown: {message}")]
    Unknown {
        /// The action attempted.
        action: Action,
        /// What is known.
        message: String,
    },
    /// The executor did not finish within its time limit (outcome unknown).
    #[error("{action} timed out after {after:?}")]
    Timeout {
        /// The action attempted.
        action: Action,
        /// The limit that expired.
        after: Duration,
    },
    /// This executor cannot perform the action at all.
    #[error("this executor does not support {action}")]
    Unsupported {
        /// The action asked for.
        action: Action,
    },
}

impl ExecError {
    /// A failure with a message.
    pub fn failed(action: Action, message: impl Into<String>) -> Self {
        ExecError::Failed { action, message: message.into(), source: None }
    }

    /// A short, bounded reason word for metrics and events.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            ExecError::Failed { .. } => "Failed",
            ExecError::Unknown { .. } => "OutcomeUnknown",
            ExecError::Timeout { .. } => "Timeout",
            ExecError::Unsupported { .. } => "Unsupported",
        }
    }
}

/// Performs remediation actions on targets.
///
/// Implementations must be safe to call once per action the machine asks for;
/// the engine never calls an executor for the same decision twice and never in
/// monitor-only mode.
#[async_trait]
pub trait Executor<T: ?Sized + Sync>: Send + Sync {
    /// Performs `action` on `target`.
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError>;
}

#[async_trait]
impl<T: ?Sized + Sync, E: Executor<T> + ?Sized> Executor<T> for Arc<E> {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        (**self).execute(action, target).await
    }
}

#[async_trait]
impl<T: ?Sized + Sync, E: Executor<T> + ?Sized> Executor<T> for Box<E> {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        (**self).execute(action, target).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuse;

    #[async_trait]
    impl Executor<str> for Refuse {
        async fn execute(&self, action: Action, _target: &str) -> Result<(), ExecError> {
            Err(ExecError::Unsupported { action })
        }
    }

    #[tokio::test]
    async fn forwarding_impls_reach_the_inner_executor() {
        let e: Arc<dyn Executor<str>> = Arc::new(Refuse);
        let b: Box<dyn Executor<str>> = Box::new(e);
        let err = b.execute(Action::Replace, "n1").await.unwrap_err();
        assert_eq!(err.to_string(), "this executor does not support replace");
        assert_eq!(err.reason(), "Unsupported");
        assert_eq!(
            ExecError::Timeout { action: Action::Reboot, after: Duration::from_secs(5) }.to_string(),
            "reboot timed out after 5s"
        );
    }
}
