//! Programs as executors (e.g. `systemctl reboot`, or a script restarting kubelet over SSH).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{Action, ExecError, Executor};
use tokio::io::{AsyncRead, AsyncReadExt};

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

async fn read_capped(mut r: impl AsyncRead + Unpin, max: usize) -> (Vec<u8>, usize) {
    let (mut kept, mut total, mut buf) = (Vec::new(), 0usize, [0u8; 8192]);
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    (kept, total)
}

fn show(kept: &[u8], total: usize) -> String {
    let mut s = String::from_utf8_lossy(kept).trim_end().to_owned();
    if total > kept.len() {
        s.push_str(&format!(" [... {} more bytes]", total - kept.len()));
    }
    s
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for CommandExecutor {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        if !self.actions.contains(&action) {
            return Err(ExecError::Unsupported { action });
        }
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            // Only what the program needs: never the agent's secrets (CIVO_API_KEY...).
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| k == "PATH" || k == "LANG" || k == "HOME"))
            .env("NODE_NAME", target.node_name())
            .env("NODE_POOL", target.pool_id().unwrap_or(""))
            .env("ACTION", action.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ExecError::failed(action, format!("cannot start {}: {e}", self.program.display())))?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ExecError::failed(action, "the program's output pipes are missing"));
        };
        let max = self.max_output;
        let run = async {
            let ((o, ot), (e, et), status) = tokio::join!(read_capped(out, max), read_capped(err, max), child.wait());
            (status, show(&o, ot), show(&e, et))
        };
        let Ok((status, stdout, stderr)) = tokio::time::timeout(self.timeout, run).await else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(ExecError::Timeout { action, after: self.timeout });
        };
        let status =
            status.map_err(|e| ExecError::Unknown { action, message: format!("waiting for the program: {e}") })?;
        if status.success() {
            tracing::info!(node = target.node_name(), %action, program = %self.program.display(), "command succeeded");
            return Ok(());
        }
        let code = status.code().map_or_else(|| "a signal".to_owned(), |c| c.to_string());
        Err(ExecError::failed(
            action,
            format!("{} exited with {code}: {stdout} {stderr}", self.program.display()).trim_end().to_owned(),
        ))
    }
}
