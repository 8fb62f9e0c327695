//! Programs as checkers: exit 0 passes, 1 fails, anything else is an error.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use health_core::process::Program;
use health_core::{CheckContext, CheckError, CheckOutcome, CheckResult, HealthChecker};

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

    /// Runs the program for one node (in its own process group, killed
    /// whole at the timeout).
    pub async fn run(&self, node: &dyn NodeIdentity) -> CheckResult {
        let c = &self.config;
        let done = Program::new(&c.program, &c.args)
            .env("NODE_NAME", node.node_name())
            .env("NODE_INTERNAL_IP", node.internal_ip().unwrap_or(""))
            .env("NODE_EXTERNAL_IP", node.external_ip().unwrap_or(""))
            .env("NODE_HOSTNAME", node.hostname().unwrap_or(""))
            .timeout(c.timeout)
            .max_output(c.max_output)
            .run()
            .await
            .map_err(|e| CheckError::with_source(e.to_string(), e))?;
        let output = done.output();
        match done.status.code() {
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
