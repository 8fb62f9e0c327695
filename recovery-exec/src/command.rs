//! Programs as executors (e.g. `systemctl reboot`, or a script restarting kubelet over SSH).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use health_core::process::{Program, RunError};
use health_core::{Action, ExecError, Executor};

use crate::ExecTarget;

/// Runs a program for an action, with the node's identity in its environment
/// (`NODE_NAME`, `NODE_POOL`, `ACTION`). Exit 0 succeeds; anything else fails
/// with the (truncated) output; a program past its timeout is killed and the
/// outcome reported unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandExecutor {
    program: PathBuf,
    args: Vec<String>,
    actions: Vec<Action>,
    timeout: Duration,
    max_output: usize,
}

impl CommandExecutor {
    /// Runs `program args...` for the given actions (others are unsupported).
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>, actions: Vec<Action>) -> Self {
        CommandExecutor { program: program.into(), args, actions, timeout: Duration::from_secs(120), max_output: 4096 }
    }

    /// With another timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With another output limit per stream, in bytes.
    #[must_use]
    pub fn with_max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for CommandExecutor {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        if !self.actions.contains(&action) {
            return Err(ExecError::Unsupported { action });
        }
        let done = Program::new(&self.program, &self.args)
            .env("NODE_NAME", target.node_name())
            .env("NODE_POOL", target.pool_id().unwrap_or(""))
            .env("ACTION", action.as_str())
            .timeout(self.timeout)
            .max_output(self.max_output)
            .run()
            .await
            .map_err(|e| match e {
                RunError::Spawn { .. } => ExecError::failed(action, e.to_string()),
                RunError::TimedOut { after, .. } => ExecError::Timeout { action, after },
                other => ExecError::Unknown { action, message: other.to_string() },
            })?;
        let status = done.status;
        if status.success() {
            tracing::info!(node = target.node_name(), %action, program = %self.program.display(), "command succeeded");
            return Ok(());
        }
        let code = status.code().map_or_else(|| "a signal".to_owned(), |c| c.to_string());
        Err(ExecError::failed(action, format!("{} exited with {code}: {}", self.program.display(), done.output())))
    }
}
