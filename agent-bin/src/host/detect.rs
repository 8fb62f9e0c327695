//! Reboot-required detectors and the health gate: programs and files this
//! host is judged by.

use std::time::{Duration, Instant};

use health_core::process::{Program, RunError};
use serde::Serialize;

use super::config::{DetectorConfig, GateSection};

/// What one detector found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Detection {
    /// A reboot is needed.
    Needed {
        /// Why (the file, the exit code).
        reason: String,
    },
    /// No reboot is needed.
    NotNeeded {
        /// Why.
        reason: String,
    },
    /// The detector could not tell (a program that could not run, timed
    /// out or died of a signal). Counted as "not needed" for the reboot,
    /// reported as an error.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl Detection {
    /// The metric label: `needed`, `not_needed` or `error`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Detection::Needed { .. } => "needed",
            Detection::NotNeeded { .. } => "not_needed",
            Detection::Failed { .. } => "error",
        }
    }
}

/// One detector's run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DetectorRun {
    /// The detector (`file:/var/run/reboot-required`).
    pub detector: String,
    /// What it found.
    #[serde(flatten)]
    pub detection: Detection,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs one detector.
pub async fn detect(d: &DetectorConfig, env: &[(String, String)]) -> DetectorRun {
    let started = Instant::now();
    let detection = match d {
        DetectorConfig::File { path } => match tokio::fs::metadata(path).await {
            Ok(_) => Detection::Needed { reason: format!("{} exists", path.display()) },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Detection::NotNeeded { reason: format!("{} does not exist", path.display()) }
            }
            Err(e) => Detection::Failed { error: format!("cannot check {}: {e}", path.display()) },
        },
        DetectorConfig::Command { command, reboot_exit_codes, timeout } => {
            match program(command, env, *timeout).run().await {
                Ok(done) => match done.status.code() {
                    Some(code) if reboot_exit_codes.contains(&code) => {
                        Detection::Needed { reason: format!("{} exited {code}", command[0]) }
                    }
                    Some(code) => Detection::NotNeeded { reason: format!("{} exited {code}", command[0]) },
                    None => {
                        Detection::Failed { error: format!("{} was killed by a signal: {}", command[0], done.output()) }
                    }
                },
                Err(e) => Detection::Failed { error: e.to_string() },
            }
        }
    };
    DetectorRun { detector: d.name(), detection, millis: millis(started) }
}

/// Runs every detector, in order.
pub async fn detect_all(ds: &[DetectorConfig], env: &[(String, String)]) -> Vec<DetectorRun> {
    let mut out = Vec::with_capacity(ds.len());
    for d in ds {
        out.push(detect(d, env).await);
    }
    out
}

/// Whether any run says a reboot is needed.
#[must_use]
pub fn needed(runs: &[DetectorRun]) -> bool {
    runs.iter().any(|r| matches!(r.detection, Detection::Needed { .. }))
}

fn program(argv: &[String], env: &[(String, String)], timeout: Duration) -> Program {
    let mut p = Program::new(&argv[0], &argv[1..]).timeout(timeout);
    for (k, v) in env {
        p = p.env(k, v);
    }
    p
}

/// The health gate's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GateRun {
    /// When it ran: `pre-lock`, `post-lock`, `post-reboot` or `report`.
    pub stage: &'static str,
    /// Whether the host is healthy.
    pub healthy: bool,
    /// Why (exit code and output, or why it could not run).
    pub reason: String,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// Runs the gate (no command: healthy).
pub async fn gate(g: &GateSection, stage: &'static str, env: &[(String, String)]) -> GateRun {
    let started = Instant::now();
    if g.command.is_empty() {
        return GateRun { stage, healthy: true, reason: "no health gate configured".into(), millis: 0 };
    }
    let mut env = env.to_vec();
    env.push(("NODE_HEALTH_STAGE".into(), stage.into()));
    let (healthy, reason) = match program(&g.command, &env, g.timeout).run().await {
        Ok(done) if done.status.success() => (true, format!("{} exited 0", g.command[0])),
        Ok(done) => {
            let code = done.status.code().map_or("a signal".to_owned(), |c| format!("exit {c}"));
            (false, format!("{} failed ({code}): {}", g.command[0], done.output()))
        }
        Err(e @ RunError::TimedOut { .. }) => (false, e.to_string()),
        Err(e) => (false, format!("the health gate could not run: {e}")),
    };
    GateRun { stage, healthy, reason, millis: millis(started) }
}
