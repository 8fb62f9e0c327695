//! One host's reboot coordination: a pass decides whether this host reboots
//! now; [`run`] repeats passes on an interval.
//!
//! A pass, in order: detectors; the health gate (`pre-lock`, or `report`
//! when no reboot is needed) and this host's health marker; kill switch;
//! maintenance window; fleet health and policy; cooldown; the lock (waiting
//! up to `coordination.lock_wait`); then, holding it, everything again (detectors,
//! window, fleet, cooldown, the gate at `post-lock`). Only then the lock is
//! handed over to the reboot (held on a lease of `reboot.hold` that nobody
//! renews) and the reboot command runs. After the reboot, the new process
//! reclaims the lock, sees the new boot id, runs the gate at `post-reboot`,
//! records the reboot for the cooldown and releases the lock. A host that
//! does not come back frees the lock when `reboot.hold` runs out.

use std::collections::BTreeMap;
use std::time::Duration;

use health_core::HealthManager;
use health_core::process::Program;
use serde::Serialize;
use state_store::Holder;

use super::config::{Backend, HostConfig};
use super::coord::{CoordError, EtcdFleet, FleetStore, FleetView, HeldLock, HostState, now};
use super::detect::{self, DetectorRun, GateRun};
use super::kube_fleet::{KubeFleet, KubeFleetSettings};
use super::window::{Verdict, Windows};

/// Exit code: a health gate (this host's, a peer's or the policy) blocks the reboot.
pub const EXIT_GATE: i32 = 3;
/// Exit code: another host holds the lock.
pub const EXIT_LOCK: i32 = 4;
/// Exit code: the kill switch is present.
pub const EXIT_KILL_SWITCH: i32 = 5;
/// Exit code: a detector failed (`host simulate`).
pub const EXIT_DETECTOR: i32 = 6;
/// Exit code: deferred by a closed maintenance window or the cooldown.
pub const EXIT_DEFERRED: i32 = 7;

/// How a pass ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// No detector asks for a reboot.
    NoAction,
    /// A reboot was needed, but not any more once the lock was held.
    RecheckCleared,
    /// Everything allows a reboot (`status`, or `--dry-run`: the reboot
    /// command was not run).
    Ready,
    /// The reboot command ran; the host is going down.
    Rebooting,
    /// Back from a reboot and healthy: the lock is released.
    Recovered,
    /// Held back by the health gate, a peer or the policy.
    Blocked(String),
    /// Another host holds the lock.
    LockBusy(String),
    /// The kill switch file exists.
    KillSwitch(String),
    /// A closed maintenance window or the cooldown.
    Deferred(String),
    /// Something failed (etcd, the reboot command).
    Failed(String),
}

impl Outcome {
    /// The process exit code for `run --once` and `status`.
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::NoAction | Outcome::RecheckCleared | Outcome::Ready | Outcome::Rebooting | Outcome::Recovered => 0,
            Outcome::Failed(_) => 1,
            Outcome::Blocked(_) => EXIT_GATE,
            Outcome::LockBusy(_) => EXIT_LOCK,
            Outcome::KillSwitch(_) => EXIT_KILL_SWITCH,
            Outcome::Deferred(_) => EXIT_DEFERRED,
        }
    }

    /// The metric label and log event name.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::NoAction => "no_action",
            Outcome::RecheckCleared => "recheck_cleared",
            Outcome::Ready => "ready",
            Outcome::Rebooting => "rebooting",
            Outcome::Recovered => "recovered",
            Outcome::Blocked(_) => "blocked",
            Outcome::LockBusy(_) => "lock_busy",
            Outcome::KillSwitch(_) => "kill_switch",
            Outcome::Deferred(_) => "deferred",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The reason, if the outcome has one.
    #[must_use]
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Blocked(r)
            | Outcome::LockBusy(r)
            | Outcome::KillSwitch(r)
            | Outcome::Deferred(r)
            | Outcome::Failed(r) => r,
            _ => "",
        }
    }
}

/// What a pass saw and decided (printed by `host status`, logged by `host run`).
#[derive(Clone, Debug, Serialize)]
pub struct PassReport {
    /// The host.
    pub node: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Each detector's finding (the last run, after the lock when it got that far).
    pub detectors: Vec<DetectorRun>,
    /// The gate's last verdict.
    pub gate: Option<GateRun>,
    /// The fleet's health markers, when read.
    pub fleet: Option<FleetView>,
    /// The maintenance window verdict.
    pub window: String,
    /// The lock's holders when it was busy, or what happened to it.
    pub lock: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// Options of one pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassOptions {
    /// Never run the reboot command (the configuration's `safety.dry_run` also does).
    pub dry_run: bool,
    /// `status`: report, publish nothing, take the lock only to test it.
    pub status: bool,
    /// `status --skip-health`: do not run the gate.
    pub skip_health: bool,
    /// `status --skip-lock`: do not touch the lock.
    pub skip_lock: bool,
}

/// One host's coordinator.
pub struct HostAgent {
    config: HostConfig,
    node: String,
    windows: Windows,
    coord: Box<dyn FleetStore>,
    health: std::sync::Arc<HealthManager>,
    metrics_endpoint: String,
}

impl std::fmt::Debug for HostAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAgent").field("node", &self.node).finish_non_exhaustive()
    }
}

/// The component of `/readyz` for the coordination backend.
pub const STORE_COMPONENT: &str = "coordination";

async fn connect(config: &HostConfig, node: &str) -> Result<Box<dyn FleetStore>, String> {
    let c = &config.coordination;
    match c.backend {
        Backend::Etcd => {
            let f = EtcdFleet::connect(&config.etcd, c, node, config.reboot.hold).await.map_err(|e| e.to_string())?;
            Ok(Box::new(f))
        }
        Backend::Kubernetes => {
            let k = &config.kubernetes;
            let mut cfg = if k.kubeconfig.is_empty() {
                kube::Config::incluster().map_err(|e| {
                    format!(
                        "kubernetes.kubeconfig is empty and the in-cluster configuration is unavailable ({e}): set it"
                    )
                })?
            } else {
                let kc = kube::config::Kubeconfig::read_from(&k.kubeconfig)
                    .map_err(|e| format!("kubernetes.kubeconfig {}: {e}", k.kubeconfig))?;
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| format!("kubernetes.kubeconfig {}: {e}", k.kubeconfig))?
            };
            cfg.read_timeout = Some(c.call_timeout);
            cfg.connect_timeout = Some(c.call_timeout);
            cfg.headers.push((
                axum::http::header::USER_AGENT,
                axum::http::HeaderValue::from_static(concat!("node-agent/", env!("CARGO_PKG_VERSION"))),
            ));
            let client = kube::Client::try_from(cfg).map_err(|e| format!("Kubernetes client: {e}"))?;
            let settings = KubeFleetSettings {
                namespace: k.namespace.clone(),
                prefix: k.name_prefix.clone(),
                node: node.to_owned(),
                lock_ttl: c.lock_ttl,
                health_ttl: c.health_ttl,
                rebooting_ttl: config.reboot.hold,
                call_timeout: c.call_timeout,
                lock_name: None,
            };
            Ok(Box::new(KubeFleet::new(client, settings)))
        }
    }
}

fn read_boot_id(config: &HostConfig) -> Result<String, String> {
    let p = &config.host.boot_id_file;
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read the boot id from {} (host.boot_id_file): {e}", p.display()))
}

fn gate_env(a: &HostAgent, opts: PassOptions) -> Vec<(String, String)> {
    let c = &a.config;
    let dry = opts.dry_run || c.safety.dry_run || opts.status;
    vec![
        ("NODE_HEALTH_NODE".into(), a.node.clone()),
        ("NODE_HEALTH_DRY_RUN".into(), dry.to_string()),
        ("NODE_HEALTH_LOCK_KEY".into(), a.coord.lock_key()),
        ("NODE_HEALTH_ETCD_ENDPOINTS".into(), c.etcd.endpoints.join(",")),
        ("NODE_HEALTH_KILL_SWITCH".into(), c.safety.kill_switch.display().to_string()),
        ("NODE_HEALTH_WINDOWS".into(), a.windows.describe()),
        ("NODE_HEALTH_POLICY".into(), serde_json::to_string(&c.policy).unwrap_or_default()),
        ("NODE_HEALTH_METRICS_ENDPOINT".into(), a.metrics_endpoint.clone()),
        ("NODE_HEALTH_SKIP_HEALTH".into(), opts.skip_health.to_string()),
        ("NODE_HEALTH_SKIP_LOCK".into(), opts.skip_lock.to_string()),
    ]
}

fn observe_detectors(runs: &[DetectorRun], node: &str) {
    for r in runs {
        metrics::counter!("node_agent_host_detector_total", "detector" => r.detector.clone(), "result" => r.detection.label())
            .increment(1);
        if let detect::Detection::Failed { error } = &r.detection {
            tracing::warn!(event = "detector_failed", node, detector = %r.detector, error = %error, "a reboot-required detector could not tell");
        }
    }
    metrics::gauge!("node_agent_host_reboot_required").set(if detect::needed(runs) { 1.0 } else { 0.0 });
}

fn observe_gate(g: &GateRun) {
    let result = if g.healthy { "pass" } else { "fail" };
    metrics::counter!("node_agent_host_gate_total", "stage" => g.stage, "result" => result).increment(1);
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!("node_agent_host_gate_duration_seconds", "stage" => g.stage).record(g.millis as f64 / 1000.0);
}

fn observe_fleet(v: &FleetView) {
    #[allow(clippy::cast_precision_loss)]
    for (state, n) in [
        ("healthy", v.healthy.len()),
        ("unhealthy", v.unhealthy.len() + v.unreadable.len()),
        ("rebooting", v.rebooting.len()),
    ] {
        metrics::gauge!("node_agent_host_fleet_hosts", "state" => state).set(n as f64);
    }
}

/// Registers HELP text for every host-mode metric.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("node_agent_host_info", "Host-mode agent build and identity (always 1).");
    describe_counter!("node_agent_host_passes_total", "Coordination passes by outcome.");
    describe_counter!("node_agent_host_reboots_total", "Reboot commands this host ran successfully.");
    describe_counter!(
        "node_agent_host_reboot_failures_total",
        "Reboot commands that failed, and reboots that did not happen."
    );
    describe_counter!(
        "node_agent_host_reboots_completed_total",
        "Reboots after which the host came back healthy and released the lock."
    );
    describe_histogram!("node_agent_host_lock_wait_seconds", "Time spent waiting for the fleet reboot lock.");
    describe_counter!("node_agent_host_lock_acquired_total", "Times this host took the fleet reboot lock.");
    describe_counter!("node_agent_host_gate_total", "Health gate runs by stage and result.");
    describe_histogram!("node_agent_host_gate_duration_seconds", "Health gate run time by stage.");
    describe_counter!("node_agent_host_detector_total", "Reboot-required detector runs by detector and result.");
    describe_gauge!("node_agent_host_reboot_required", "1 while a detector says this host needs a reboot.");
    describe_gauge!("node_agent_host_window_open", "1 while the maintenance windows allow a reboot to start.");
    describe_gauge!("node_agent_host_kill_switch", "1 while the kill switch file exists.");
    describe_gauge!("node_agent_host_fleet_hosts", "Hosts by the state their health marker reports.");
    describe_counter!(
        "node_agent_host_coordination_errors_total",
        "Failed calls to the coordination backend (etcd or Kubernetes) by operation."
    );
}

impl HostAgent {
    /// Connects to etcd and prepares the agent.
    pub async fn new(
        config: HostConfig,
        health: std::sync::Arc<HealthManager>,
        metrics_endpoint: String,
    ) -> Result<HostAgent, String> {
        let node = config.node_name().map_err(|e| e.to_string())?;
        read_boot_id(&config)?;
        let coord = connect(&config, &node).await?;
        let windows = config.windows();
        health.register(STORE_COMPONENT);
        health.register_optional("detectors");
        health.register_optional("gate");
        metrics::gauge!("node_agent_host_info", "version" => env!("CARGO_PKG_VERSION"), "node" => node.clone())
            .set(1.0);
        Ok(HostAgent { config, node, windows, coord, health, metrics_endpoint })
    }

    /// The host's name.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    fn store_ok(&self) {
        self.health.update(
            STORE_COMPONENT,
            health_core::ComponentStatus::Healthy,
            "the coordination backend answers",
            BTreeMap::new(),
        );
    }

    fn store_failed(&self, what: &str, e: &CoordError) -> Outcome {
        metrics::counter!("node_agent_host_coordination_errors_total", "operation" => what.to_owned()).increment(1);
        self.health.update(
            STORE_COMPONENT,
            health_core::ComponentStatus::Degraded,
            format!("{what}: {e}"),
            BTreeMap::from([("backend".to_owned(), format!("{:?}", self.config.coordination.backend).to_lowercase())]),
        );
        let text = e.to_string();
        // A server that refuses a client certificate just closes the
        // connection: say where to look.
        let tls = !self.config.etcd.ca_file.as_os_str().is_empty() && self.config.coordination.backend == Backend::Etcd;
        let hint = if tls
            && ["connection closed", "broken pipe", "transport error", "certificate"].iter().any(|w| text.contains(w))
        {
            " (TLS: check etcd.ca_file against the server's certificate, and etcd.cert_file/etcd.key_file against its --trusted-ca-file when it requires client certificates)"
        } else {
            ""
        };
        tracing::warn!(event = "coordination_failed", node = %self.node, operation = what, error = %format!("{text}{hint}"), "the coordination backend failed; nothing reboots until it answers");
        Outcome::Failed(format!("{what}: {text}{hint}"))
    }

    async fn run_gate(&self, stage: &'static str, opts: PassOptions) -> Option<GateRun> {
        if opts.skip_health {
            return None;
        }
        let g = detect::gate(&self.config.gate, stage, &gate_env(self, opts)).await;
        observe_gate(&g);
        let status =
            if g.healthy { health_core::ComponentStatus::Healthy } else { health_core::ComponentStatus::Degraded };
        self.health.update("gate", status, g.reason.clone(), BTreeMap::from([("stage".to_owned(), stage.to_owned())]));
        if !g.healthy {
            tracing::warn!(event = "gate_failed", node = %self.node, stage, reason = %g.reason, "the health gate fails: no host reboots while it does");
        }
        Some(g)
    }

    async fn detect(&self, opts: PassOptions) -> Vec<DetectorRun> {
        let runs = detect::detect_all(&self.config.detectors, &gate_env(self, opts)).await;
        observe_detectors(&runs, &self.node);
        let failed: Vec<&str> = runs
            .iter()
            .filter(|r| matches!(r.detection, detect::Detection::Failed { .. }))
            .map(|r| r.detector.as_str())
            .collect();
        if failed.is_empty() {
            self.health.update("detectors", health_core::ComponentStatus::Healthy, "detectors ran", BTreeMap::new());
        } else {
            self.health.update(
                "detectors",
                health_core::ComponentStatus::Degraded,
                format!("failed: {}", failed.join(", ")),
                BTreeMap::new(),
            );
        }
        runs
    }

    fn window(&self) -> Verdict {
        let v = self.windows.at(jiff::Timestamp::now());
        metrics::gauge!("node_agent_host_window_open").set(if v.open() { 1.0 } else { 0.0 });
        v
    }

    /// Why the cooldown holds a reboot back, if it does.
    async fn cooldown(&self) -> Result<Option<String>, CoordError> {
        let cooldown = self.config.safety.cooldown;
        if cooldown.is_zero() {
            return Ok(None);
        }
        let Some(last) = self.coord.last_reboot().await? else { return Ok(None) };
        let elapsed = Duration::from_millis(now().1.saturating_sub(last.at_ms));
        Ok((elapsed < cooldown).then(|| {
            format!(
                "cooldown: {} rebooted at {}, {} ago; safety.cooldown is {}",
                last.node,
                last.at,
                humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
                humantime::format_duration(cooldown)
            )
        }))
    }

    fn kill_switch(&self) -> Option<String> {
        let on = self.config.safety.kill_switch.exists();
        metrics::gauge!("node_agent_host_kill_switch").set(if on { 1.0 } else { 0.0 });
        on.then(|| format!("kill switch {} exists: no reboot starts", self.config.safety.kill_switch.display()))
    }

    /// Finishes a reboot this host started before it restarted, if the lock
    /// says it did: reclaims the lock; with a new boot id and a passing gate,
    /// records the reboot and releases it; with a failing gate, holds it
    /// again (within what is left of `reboot.hold`). With the same boot id
    /// the reboot did not happen: the lock is released.
    pub async fn resume(&self) -> Option<Outcome> {
        let reclaimed = match self.coord.reclaim().await {
            Ok(r) => r,
            Err(e) => return Some(self.store_failed("reclaim the lock", &e)),
        };
        self.store_ok();
        let (guard, holder) = reclaimed?;
        let boot_now = match read_boot_id(&self.config) {
            Ok(b) => b,
            Err(e) => return Some(Outcome::Failed(e)),
        };
        let Some(boot_before) = holder.boot_id.clone() else {
            tracing::info!(event = "stale_lock_released", node = %self.node, "this host held the lock before a restart (no reboot started): releasing it");
            return Some(self.release(guard, Outcome::NoAction).await);
        };
        if boot_before == boot_now {
            metrics::counter!("node_agent_host_reboot_failures_total").increment(1);
            let why = format!(
                "the reboot requested at {} did not happen (boot id unchanged: {boot_now}); lock released",
                holder.rebooting_since.as_deref().unwrap_or("?")
            );
            tracing::error!(event = "reboot_not_happened", node = %self.node, reason = %why, "reboot did not happen");
            return Some(self.release(guard, Outcome::Failed(why)).await);
        }
        tracing::info!(event = "back_from_reboot", node = %self.node, boot_id_before = %boot_before, boot_id = %boot_now, "this host is back from its reboot; checking its health before releasing the lock");
        let since = holder
            .rebooting_since
            .as_deref()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| u64::try_from(t.as_millisecond()).unwrap_or(0));
        let held = Duration::from_millis(now().1.saturating_sub(since));
        let left = self.config.reboot.hold.saturating_sub(held);
        let gate = self.run_gate("post-reboot", PassOptions::default()).await;
        let (state, reason) = match &gate {
            Some(g) if !g.healthy => (HostState::Unhealthy, g.reason.clone()),
            _ => (HostState::Healthy, "back from reboot, gate passes".to_owned()),
        };
        if let Err(e) = self.coord.publish(state, &reason).await {
            self.store_failed("publish health", &e);
        }
        let unfinished = if state == HostState::Healthy {
            match self.coord.record_reboot().await {
                Ok(()) => {
                    metrics::counter!("node_agent_host_reboots_completed_total").increment(1);
                    tracing::info!(event = "reboot_completed", node = %self.node, "reboot completed: healthy again, lock released");
                    return Some(self.release(guard, Outcome::Recovered).await);
                }
                // Not released without a cooldown record: held again below.
                Err(e) => self.store_failed("record the reboot", &e),
            }
        } else {
            Outcome::Blocked(format!("unhealthy after the reboot: {reason}"))
        };
        if left < Duration::from_secs(2) {
            metrics::counter!("node_agent_host_reboot_failures_total").increment(1);
            let why = format!(
                "not done {} after the reboot (reboot.hold): lock released anyway so the fleet goes on: {}",
                humantime::format_duration(Duration::from_secs(held.as_secs())),
                unfinished.reason()
            );
            tracing::error!(event = "hold_expired", node = %self.node, reason = %why, "releasing the lock");
            return Some(self.release(guard, Outcome::Blocked(why)).await);
        }
        if let Err(e) = guard.hold_through(&holder, left).await {
            return Some(self.store_failed("hold the lock", &e));
        }
        tracing::warn!(event = "unhealthy_after_reboot", node = %self.node, reason = %unfinished.reason(), hold_left = %humantime::format_duration(Duration::from_secs(left.as_secs())), "back from reboot but not done: keeping the lock so no other host reboots");
        Some(unfinished)
    }

    async fn release(&self, guard: Box<dyn HeldLock>, outcome: Outcome) -> Outcome {
        match guard.release().await {
            Ok(()) => outcome,
            Err(e) => {
                tracing::warn!(event = "lock_release_failed", node = %self.node, error = %e, "the lock could not be released; it frees itself within coordination.lock_ttl");
                outcome
            }
        }
    }

    /// One pass (see the module docs).
    pub async fn pass(&self, opts: PassOptions) -> PassReport {
        let dry_run = opts.dry_run || self.config.safety.dry_run;
        let mut report = PassReport {
            node: self.node.clone(),
            outcome: Outcome::NoAction,
            detectors: Vec::new(),
            gate: None,
            fleet: None,
            window: String::new(),
            lock: String::new(),
            dry_run,
        };
        report.outcome = self.decide(opts, dry_run, &mut report).await;
        metrics::counter!("node_agent_host_passes_total", "outcome" => report.outcome.label()).increment(1);
        report
    }

    async fn decide(&self, opts: PassOptions, dry_run: bool, report: &mut PassReport) -> Outcome {
        report.detectors = self.detect(opts).await;
        let needed = detect::needed(&report.detectors);
        report.gate = self.run_gate(if needed { "pre-lock" } else { "report" }, opts).await;
        let healthy = report.gate.as_ref().is_none_or(|g| g.healthy);
        if !opts.status {
            let (state, reason) = match &report.gate {
                Some(g) => (if g.healthy { HostState::Healthy } else { HostState::Unhealthy }, g.reason.as_str()),
                None => (HostState::Healthy, "no health gate run"),
            };
            if let Err(e) = self.coord.publish(state, reason).await {
                return self.store_failed("publish health", &e);
            }
            self.store_ok();
        }
        let window = self.window();
        report.window = window.to_string();
        if let Some(why) = self.kill_switch() {
            return Outcome::KillSwitch(why);
        }
        if !needed {
            return Outcome::NoAction;
        }
        if !healthy {
            return Outcome::Blocked(format!(
                "this host's health gate fails: {}",
                report.gate.as_ref().map_or("", |g| g.reason.as_str())
            ));
        }
        if !window.open() {
            return Outcome::Deferred(format!("maintenance window: {window}"));
        }
        if let Some(out) = self.fleet_blocks(report).await {
            return out;
        }
        match self.cooldown().await {
            Ok(Some(why)) => return Outcome::Deferred(why),
            Ok(None) => {}
            Err(e) => return self.store_failed("read the last reboot", &e),
        }
        if opts.skip_lock {
            report.lock = "not checked (--skip-lock)".into();
            return Outcome::Ready;
        }
        let started = std::time::Instant::now();
        let wait = if opts.status { Duration::ZERO } else { self.config.coordination.lock_wait };
        let holder = Holder::now(self.node.clone());
        let acquired =
            if wait.is_zero() { self.coord.try_lock(&holder).await } else { self.coord.lock(&holder, wait).await };
        metrics::histogram!("node_agent_host_lock_wait_seconds").record(started.elapsed().as_secs_f64());
        let guard = match acquired {
            Ok(Some(g)) => g,
            Ok(None) => {
                let holders = self.coord.holders().await.unwrap_or_default();
                let who = holders
                    .iter()
                    .map(|h| format!("{} (pid {}, since {})", h.node, h.pid, h.acquired_at))
                    .collect::<Vec<_>>()
                    .join(", ");
                report.lock = format!("held by {who}");
                return Outcome::LockBusy(format!(
                    "the reboot lock {} is held by {who} (waited {})",
                    self.coord.lock_key(),
                    humantime::format_duration(wait)
                ));
            }
            Err(e) => return self.store_failed("take the lock", &e),
        };
        metrics::counter!("node_agent_host_lock_acquired_total").increment(1);
        report.lock = format!("acquired {}", guard.key());
        tracing::info!(event = "lock_acquired", node = %self.node, key = %guard.key(), "took the fleet reboot lock; checking everything again");
        let verdict = self.under_lock(opts, report).await;
        let verdict = match verdict {
            Some(out) => out,
            None if dry_run || opts.status => {
                if dry_run && !opts.status {
                    tracing::info!(event = "dry_run", node = %self.node, "dry run: every check allows a reboot; the reboot command is not run");
                }
                Outcome::Ready
            }
            None => return self.reboot(guard).await,
        };
        report.lock = format!("{}; released", report.lock);
        self.release(guard, verdict).await
    }

    async fn fleet_blocks(&self, report: &mut PassReport) -> Option<Outcome> {
        let fleet = match self.coord.fleet().await {
            Ok(f) => f,
            Err(e) => return Some(self.store_failed("read health markers", &e)),
        };
        let mut fleet = fleet;
        // This host counts as its gate says now (its marker may be older, or
        // absent for `status`, which publishes nothing).
        fleet.overlay(&self.node, report.gate.as_ref().map(|g| (g.healthy, g.reason.as_str())));
        observe_fleet(&fleet);
        let blocked = fleet.blocks(&self.node, &self.config.policy);
        report.fleet = Some(fleet);
        blocked.map(Outcome::Blocked)
    }

    /// Everything again, holding the lock; `None`: go ahead.
    async fn under_lock(&self, opts: PassOptions, report: &mut PassReport) -> Option<Outcome> {
        report.detectors = self.detect(opts).await;
        if !detect::needed(&report.detectors) {
            tracing::info!(event = "recheck_cleared", node = %self.node, "the reboot is no longer needed: releasing the lock");
            return Some(Outcome::RecheckCleared);
        }
        if let Some(why) = self.kill_switch() {
            return Some(Outcome::KillSwitch(why));
        }
        let window = self.window();
        report.window = window.to_string();
        if !window.open() {
            return Some(Outcome::Deferred(format!("maintenance window: {window}")));
        }
        match self.cooldown().await {
            Ok(Some(why)) => return Some(Outcome::Deferred(why)),
            Ok(None) => {}
            Err(e) => return Some(self.store_failed("read the last reboot", &e)),
        }
        if let Some(out) = self.fleet_blocks(report).await {
            return Some(out);
        }
        report.gate = self.run_gate("post-lock", opts).await;
        if let Some(g) = report.gate.as_ref().filter(|g| !g.healthy) {
            return Some(Outcome::Blocked(format!("this host's health gate fails after the lock: {}", g.reason)));
        }
        None
    }

    async fn reboot(&self, guard: Box<dyn HeldLock>) -> Outcome {
        let boot_id = match read_boot_id(&self.config) {
            Ok(b) => b,
            Err(e) => return self.release(guard, Outcome::Failed(e)).await,
        };
        if let Err(e) = self.coord.publish(HostState::Rebooting, "rebooting").await {
            let out = self.store_failed("publish health", &e);
            return self.release(guard, out).await;
        }
        let holder = Holder::now(self.node.clone()).rebooting(boot_id.clone());
        let key = guard.key();
        if let Err(e) = guard.hold_through(&holder, self.config.reboot.hold).await {
            return self.store_failed("hold the lock through the reboot", &e);
        }
        let argv = &self.config.reboot.command;
        tracing::warn!(event = "reboot_requested", node = %self.node, command = %argv.join(" "), boot_id = %boot_id, lock = %key, hold = %humantime::format_duration(self.config.reboot.hold), "rebooting this host");
        let program = Program::new(&argv[0], &argv[1..]).timeout(self.config.reboot.timeout);
        match program.run().await {
            Ok(done) if done.status.success() => {
                metrics::counter!("node_agent_host_reboots_total").increment(1);
                Outcome::Rebooting
            }
            result => {
                let why = match result {
                    Ok(done) => format!("{} failed ({}): {}", argv[0], done.status, done.output()),
                    Err(e) => e.to_string(),
                };
                metrics::counter!("node_agent_host_reboot_failures_total").increment(1);
                tracing::error!(event = "reboot_failed", node = %self.node, reason = %why, "the reboot command failed; releasing the lock");
                // Take the slot back and free it for the fleet.
                match self.coord.reclaim().await {
                    Ok(Some((g, _))) => self.release(g, Outcome::Failed(format!("reboot command: {why}"))).await,
                    Ok(None) => Outcome::Failed(format!("reboot command: {why}")),
                    Err(e) => self.store_failed("reclaim the lock", &e),
                }
            }
        }
    }
}

/// Logs a pass's report (one line, JSON-friendly fields).
pub fn log_report(r: &PassReport) {
    let detectors: Vec<String> =
        r.detectors.iter().map(|d| format!("{}={}", d.detector, d.detection.label())).collect();
    let gate = r
        .gate
        .as_ref()
        .map_or("not run".to_owned(), |g| format!("{} {}", g.stage, if g.healthy { "pass" } else { "fail" }));
    match &r.outcome {
        Outcome::Failed(_) => {
            tracing::error!(event = r.outcome.label(), node = %r.node, reason = %r.outcome.reason(), detectors = %detectors.join(","), gate = %gate, "pass failed")
        }
        Outcome::NoAction | Outcome::Recovered | Outcome::RecheckCleared | Outcome::Ready | Outcome::Rebooting => {
            tracing::info!(event = r.outcome.label(), node = %r.node, detectors = %detectors.join(","), gate = %gate, "pass done")
        }
        _ => {
            tracing::info!(event = r.outcome.label(), node = %r.node, reason = %r.outcome.reason(), detectors = %detectors.join(","), gate = %gate, window = %r.window, lock = %r.lock, dry_run = r.dry_run, "pass done")
        }
    }
}

/// The delay before the next pass: the interval plus jitter, or the
/// back-off after `failures` consecutive failures.
#[must_use]
pub fn next_delay(config: &HostConfig, failures: u32) -> Duration {
    let jitter = |max: Duration| Duration::from_millis(fastrand::u64(0..=u64::try_from(max.as_millis()).unwrap_or(0)));
    if failures == 0 {
        return config.host.interval + jitter(config.host.jitter);
    }
    let s = &config.safety;
    let base = s.backoff.saturating_mul(1u32 << (failures - 1).min(16)).min(s.max_backoff);
    // Full jitter on the upper half: never less than half the back-off.
    base / 2 + jitter(base / 2)
}

/// Runs passes until `shutdown` resolves (or once). Returns the last outcome.
///
/// Each iteration first finishes a reboot this host started before it
/// restarted ([`HostAgent::resume`]); while the host is back but not yet
/// healthy, it holds the lock and runs no pass.
pub async fn run(agent: &HostAgent, once: bool, dry_run: bool, shutdown: impl Future<Output = ()>) -> Outcome {
    let opts = PassOptions { dry_run, ..PassOptions::default() };
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let resumed = agent.resume().await;
        // Failures were logged where they happened.
        if let Some(o) = resumed.as_ref().filter(|o| !matches!(o, Outcome::Failed(_))) {
            tracing::info!(event = o.label(), node = %agent.node, reason = %o.reason(), "finished what was started before the restart");
        }
        let outcome = match resumed {
            Some(o) if !matches!(o, Outcome::NoAction | Outcome::Recovered) || (once && o == Outcome::Recovered) => o,
            _ => {
                let report = agent.pass(opts).await;
                log_report(&report);
                report.outcome
            }
        };
        if once {
            return outcome;
        }
        failures = if matches!(outcome, Outcome::Failed(_)) { failures.saturating_add(1) } else { 0 };
        let delay = match outcome {
            // The host is going down. A slow or scheduled shutdown must not
            // look like a reboot that did not happen: look again only near
            // the end of the hold (still within it, so the lock can be
            // reclaimed and the failure reported).
            Outcome::Rebooting => agent.config.reboot.hold.saturating_sub(agent.config.coordination.lock_ttl),
            _ => next_delay(&agent.config, failures),
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => return outcome,
        }
    }
}
