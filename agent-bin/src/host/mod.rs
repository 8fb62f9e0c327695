//! Host mode: one agent per Linux host (Kubernetes or not) reboots its own
//! host when it needs it (a kernel update's sentinel file, a command), one
//! host of the fleet at a time, only while the fleet is healthy.
//!
//! `node-agent host run` coordinates through etcd: every host publishes its
//! health gate's verdict under a lease; a host that needs a reboot takes the
//! fleet's lock, checks everything again, and reboots holding the lock; it
//! releases it once it is back (new boot id) and its gate passes, and the
//! fleet-wide cooldown starts. See [`run`] for a pass's steps and
//! [`config::HostConfig`] for the settings (`examples/host.toml`).
//!
//! | module | what |
//! |---|---|
//! | [`config`] | defaults < TOML or YAML file < `NODE_AGENT_<SECTION>__<KEY>` |
//! | [`window`] | maintenance windows (days, times, IANA zones, DST), shared with cluster mode |
//! | [`detect`] | reboot-required detectors and the health gate |
//! | [`coord`] | health markers, the last reboot and the lock: the backend trait, etcd |
//! | [`kube_fleet`] | the same on Kubernetes Leases |
//! | [`run`] | passes, the loop and exit codes |

pub mod config;
pub mod coord;
pub mod detect;
pub mod kube_fleet;
pub mod run;
pub use crate::window;

use std::fmt::Write as _;

use serde::Serialize;

use self::config::HostConfig;
use self::detect::{Detection, DetectorRun};
use self::run::PassReport;

/// `host simulate`: every detector once, without etcd or the gate.
#[derive(Clone, Debug, Serialize)]
pub struct SimulateReport {
    /// The host.
    pub node: String,
    /// Whether a reboot is needed.
    pub reboot_required: bool,
    /// Each detector's finding.
    pub detectors: Vec<DetectorRun>,
}

impl SimulateReport {
    /// Whether a detector failed (exit 6).
    #[must_use]
    pub fn failed(&self) -> bool {
        self.detectors.iter().any(|d| matches!(d.detection, Detection::Failed { .. }))
    }
}

/// Runs the detectors once.
pub async fn simulate(config: &HostConfig) -> Result<SimulateReport, String> {
    let node = config.node_name().map_err(|e| e.to_string())?;
    let env = [("NODE_HEALTH_NODE".to_owned(), node.clone()), ("NODE_HEALTH_DRY_RUN".to_owned(), "true".to_owned())];
    let detectors = detect::detect_all(&config.detectors, &env).await;
    Ok(SimulateReport { node, reboot_required: detect::needed(&detectors), detectors })
}

fn detector_lines(out: &mut String, runs: &[DetectorRun]) {
    for d in runs {
        let why = match &d.detection {
            Detection::Needed { reason } | Detection::NotNeeded { reason } => reason.as_str(),
            Detection::Failed { error } => error.as_str(),
        };
        let _ = writeln!(out, "  {:<40} {:<11} {why} ({} ms)", d.detector, d.detection.label(), d.millis);
    }
}

/// `host simulate` as text.
#[must_use]
pub fn simulate_table(r: &SimulateReport) -> String {
    let mut out = format!(
        "host {}: reboot {}\ndetectors:\n",
        r.node,
        if r.reboot_required { "required" } else { "not required" }
    );
    detector_lines(&mut out, &r.detectors);
    out
}

/// `host status` as text.
#[must_use]
pub fn status_table(r: &PassReport) -> String {
    let mut out = format!("host {}: {}", r.node, r.outcome.label());
    if !r.outcome.reason().is_empty() {
        let _ = write!(out, ": {}", r.outcome.reason());
    }
    out.push_str("\ndetectors:\n");
    detector_lines(&mut out, &r.detectors);
    match &r.gate {
        Some(g) => {
            let _ = writeln!(
                out,
                "gate:     {} {} ({} ms): {}",
                g.stage,
                if g.healthy { "pass" } else { "fail" },
                g.millis,
                g.reason
            );
        }
        None => out.push_str("gate:     not run\n"),
    }
    if let Some(f) = &r.fleet {
        let unhealthy: Vec<String> = f.unhealthy.iter().map(|(h, why)| format!("{h} ({why})")).collect();
        let _ = writeln!(
            out,
            "fleet:    {} known, healthy [{}], unhealthy [{}], rebooting [{}]",
            f.known(),
            f.healthy.join(", "),
            unhealthy.join(", "),
            f.rebooting.join(", ")
        );
    }
    if !r.window.is_empty() {
        let _ = writeln!(out, "window:   {}", r.window);
    }
    if !r.lock.is_empty() {
        let _ = writeln!(out, "lock:     {}", r.lock);
    }
    out
}
