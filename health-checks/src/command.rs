//! Programs as checkers: exit 0 passes, 1 fails, anything else is an error.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{CheckContext, CheckError, CheckOutcome, CheckResult, HealthChecker};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{ConfigError, NodeIdentity};

/// Settings of a command checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandConfig {
    /// The checker name.
    pub name: String,
    /// The program (absolute path or found on PATH).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Threshold.
    pub threshold: Duration,
    /// The program is killed after this long.
    pub timeout: Duration,
    /// Output kept for logs, per stream, in bytes.
    pub max_output: usize,
    /// Failure reason on exit 1 (CamelCase).
    pub reason: String,
}

impl CommandConfig {
    /// A command with defaults: timeout 30s, 4 KiB of output, reason `CommandFailed`, threshold 5m.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        CommandConfig {
            name: name.into(),
            program: program.into(),
            args,
            threshold: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
            max_output: 4096,
            reason: "CommandFailed".into(),
        }
    }
}

/// A command checker.
#[derive(Debug)]
pub struct CommandChecker {
    config: CommandConfig,
}

/// Reads a whole stream, keeping at most `max` bytes (the rest is drained so
/// the program never blocks on a full pipe). Returns the kept bytes and the total.
async fn read_capped(mut r: impl AsyncRead + Unpin, max: usize) -> (Vec<u8>, usize) {
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
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

impl CommandChecker {
    /// Builds a command checker.
    pub fn new(config: CommandConfig) -> Result<Self, ConfigError> {
        let field = |f: &'static str, m: &str| ConfigError::Field {
            entry: config.name.clone(),
            field: f,
            message: m.to_owned(),
        };
        if config.program.as_os_str().is_empty() {
            return Err(field("program", "must name a program"));
        }
        if config.timeout.is_zero() {
            return Err(field("timeout", "must be a positive duration such as \"30s\""));
        }
        Ok(CommandChecker { config })
    }

    /// Runs the program for one node.
    pub async fn run(&self, node: &dyn NodeIdentity) -> CheckResult {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.program);
        cmd.args(&c.args)
            // Only what the program needs: never the agent's secrets (CIVO_API_KEY...).
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| k == "PATH" || k == "LANG" || k == "HOME"))
            .env("NODE_NAME", node.node_name())
            .env("NODE_INTERNAL_IP", node.internal_ip().unwrap_or(""))
            .env("NODE_EXTERNAL_IP", node.external_ip().unwrap_or(""))
            .env("NODE_HOSTNAME", node.hostname().unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child =
            cmd.spawn().map_err(|e| CheckError::new(format!("cannot start {}: {e}", c.program.display())))?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(CheckError::new("the program's output pipes are missing"));
        };
        let run = async {
            let ((o, ot), (e, et), status) =
                tokio::join!(read_capped(out, c.max_output), read_capped(err, c.max_output), child.wait());
            (status, show(&o, ot), show(&e, et))
        };
        let (status, stdout, stderr) = match tokio::time::timeout(c.timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                // The future owning the pipes is gone; kill_on_drop ends the
                // program, and we reap it here.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(CheckError::new(format!(
                    "{} did not finish within {:?} and was killed",
                    c.program.display(),
                    c.timeout
                )));
            }
        };
        let status = status.map_err(|e| CheckError::new(format!("waiting for {}: {e}", c.program.display())))?;
        let output = match (stdout.is_empty(), stderr.is_empty()) {
            (false, false) => format!("{stdout} | stderr: {stderr}"),
            (false, true) => stdout,
            (true, false) => stderr,
            (true, true) => String::new(),
        };
        match status.code() {
            Some(0) => Ok(CheckOutcome::Pass),
            Some(1) => Ok(CheckOutcome::fail_with(c.reason.clone(), output)),
            Some(code) => Err(CheckError::new(format!("{} exited with {code}: {output}", c.program.display()))),
            None => Err(CheckError::new(format!("{} was killed by a signal: {output}", c.program.display()))),
        }
    }
}

#[async_trait]
impl<T: NodeIdentity> HealthChecker<T> for CommandChecker {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn threshold(&self) -> Duration {
        self.config.threshold
    }
    async fn check(&self, target: &T, _ctx: &CheckContext) -> CheckResult {
        self.run(target).await
    }
}
