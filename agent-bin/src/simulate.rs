//! `node-agent simulate`: the real agent against an in-process simulated
//! cluster (Kubernetes API + Civo API on loopback), with the policy scaled
//! to run a bad hour in well under a minute.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// `println!` that ignores a closed stdout (`simulate | head` must not panic).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

use cluster_sim::{ClusterConfig, Ports, Scenario, SimServer};
use health_core::observer::{ActionEvent, DomainStormEvent, HoldEvent, StormEvent, TransitionEvent};
use health_core::{Action, HealthManager, Mode, Observer, Phase, Policy};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::agent::{self, Deps, RunError};
use crate::config::{Config, StoreBackend};
use crate::node::NodeRef;
use crate::recorder::AgentRecorder;

/// The built-in scenario.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.toml");

/// A simulation that could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimulateError {
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] cluster_sim::ScenarioError),
    /// The simulator did not start.
    #[error("simulator: {0}")]
    Sim(String),
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] RunError),
}

/// Settings of one simulation.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// The scenario (TOML text) and where it came from.
    pub scenario: (String, String),
    /// Policy speed-up.
    pub speed: u32,
    /// How long to run.
    pub duration: Duration,
    /// Print transitions as they happen.
    pub live: bool,
    /// Serve /metrics on this port.
    pub metrics_port: Option<u16>,
    /// Record the run to this file.
    pub record: Option<std::path::PathBuf>,
}

/// One node in the summary.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeSummary {
    /// The node.
    pub name: String,
    /// `standard` or `gpu`.
    pub class: String,
    /// Its last phase (`Replaced` for a node that was replaced and left).
    pub phase: String,
    /// Soft repairs issued (restart kubelet, restart the Cilium pod).
    pub repairs: u32,
    /// Reboots issued.
    pub reboots: u32,
    /// Replacements issued.
    pub replaces: u32,
    /// Failed actions.
    pub failures: u32,
}

/// Totals of the summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Nodes seen.
    pub nodes: usize,
    /// Nodes Healthy at the end.
    pub healthy: usize,
    /// Nodes Failed at the end.
    pub failed: usize,
    /// Soft repairs issued.
    pub repairs: u32,
    /// Reboots issued.
    pub reboots: u32,
    /// Replacements issued.
    pub replaces: u32,
    /// Failed actions.
    pub failures: u32,
    /// Actions held back by a safety gate.
    pub held: u32,
}

/// Civo calls the simulated API received.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CivoCalls {
    /// `POST .../hard_reboots` calls (any answer).
    pub hard_reboots: usize,
    /// `DELETE .../pools/{pool}/instances/{id}` calls (any answer).
    pub pool_deletes: usize,
}

/// The machine-readable summary (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Per node.
    pub nodes: Vec<NodeSummary>,
    /// Totals.
    pub totals: Totals,
    /// Civo calls.
    pub civo_calls: CivoCalls,
    /// Whether the storm guard engaged.
    pub storm_guard_engaged: bool,
}

#[derive(Default)]
struct Tally {
    repairs: u32,
    reboots: u32,
    replaces: u32,
    failures: u32,
}

/// Prints what happens and counts actions (they survive a node's departure).
struct Printer {
    start: Instant,
    live: bool,
    tally: Mutex<BTreeMap<String, Tally>>,
    held: Mutex<u32>,
}

impl Printer {
    fn line(&self, text: &str) {
        if self.live {
            say!("[{:>5.1}s] {text}", self.start.elapsed().as_secs_f64());
        }
    }
}

impl Observer<NodeRef> for Printer {
    fn on_transition(&self, _t: &NodeRef, e: &TransitionEvent<'_>) {
        if e.from == Phase::Unknown && e.to == Phase::Healthy {
            return;
        }
        let mut why = String::new();
        for f in &e.record.failing {
            let _ = write!(why, " {}={}", f.checker, f.reason);
        }
        self.line(&format!("{:<28} {:>14} -> {:<14}{}", e.node, e.from.as_str(), e.to.as_str(), why));
    }

    fn on_action(&self, _t: &NodeRef, e: &ActionEvent<'_>) {
        let mut tally = self.tally.lock();
        let t = tally.entry(e.node.to_owned()).or_default();
        match (e.action, e.error) {
            (_, Some(err)) => {
                t.failures += 1;
                self.line(&format!("{:<28} {} FAILED: {err}", e.node, e.action));
            }
            (Action::Reboot, None) => {
                t.reboots += 1;
                self.line(&format!("{:<28} hard reboot issued (Civo API)", e.node));
            }
            (Action::Replace, None) => {
                t.replaces += 1;
                self.line(&format!("{:<28} replacement issued (drained, deleted from its pool)", e.node));
            }
            (Action::Repair(r), None) => {
                t.repairs += 1;
                self.line(&format!("{:<28} soft repair {r} done (no reboot)", e.node));
            }
            (a, None) => self.line(&format!("{:<28} {a} done", e.node)),
        }
        debug_assert_eq!(e.mode, Mode::Active);
    }

    fn on_hold(&self, _t: &NodeRef, e: &HoldEvent<'_>) {
        *self.held.lock() += 1;
        self.line(&format!("{:<28} {} held back: {}", e.node, e.hold.action, e.hold.reason));
    }

    fn on_domain_storm(&self, e: &DomainStormEvent<'_>) {
        let d = &e.domain;
        if e.active {
            self.line(&format!(
                "DOMAIN STORM: {}={}: {} of {} nodes unhealthy (limit {}): its nodes are held",
                d.label, d.value, d.unhealthy, d.total, d.limit
            ));
        } else {
            self.line(&format!("domain storm cleared: {}={}", d.label, d.value));
        }
    }

    fn on_storm_guard(&self, e: &StormEvent) {
        if e.active {
            self.line(&format!(
                "STORM GUARD ENGAGED: {} of {} nodes unhealthy (limit {}): no new remediation",
                e.unhealthy, e.total, e.limit
            ));
        } else {
            self.line("storm guard cleared");
        }
    }
}

fn scale(d: Duration, speed: u32) -> Duration {
    d / speed
}

/// The agent configuration for a simulated cluster: active mode, Civo
/// executor pointed at the simulator, replacement on, policy scaled.
pub fn config_for(sim: &SimServer, speed: u32) -> Config {
    let cc = sim.cluster().config();
    let mut c = Config::default();
    c.civo.api_url = sim.civo_url();
    c.civo.api_key = crate::config::Secret::new(cc.civo_key.clone());
    c.civo.cluster_id = cc.cluster_id.clone();
    c.civo.region = cc.region.clone();
    c.civo.call_timeout = Duration::from_secs(5);
    c.kube.kubeconfig = String::new();
    c.kube.drain_timeout = Duration::from_secs(10);
    c.kube.call_timeout = Duration::from_secs(5);
    c.store.backend = StoreBackend::Kubernetes;
    c.engine.action_timeout = Duration::from_secs(10);
    let p = Policy::default();
    let mut policy = p.clone().with_monitor_only(false).with_replace(true);
    policy.reboot_wait = scale(p.reboot_wait, speed);
    policy.gpu_reboot_wait = scale(p.gpu_reboot_wait, speed);
    policy.history_reset_after = scale(p.history_reset_after, speed);
    policy.failure_backoff.initial = scale(p.failure_backoff.initial, speed);
    policy.failure_backoff.max = scale(p.failure_backoff.max, speed);
    policy.escalation.replace_wait = scale(p.escalation.replace_wait, speed);
    policy.gates.startup_grace = scale(p.gates.startup_grace, speed);
    policy.verify_for = scale(p.verify_for, speed);
    // Twelve nodes would allow one remediation at a time; the demo allows three.
    policy.gates.max_in_flight = health_core::Limit::percent(25);
    c.policy = policy;
    // The repair ladder: a stopped kubelet is restarted (the simulator's
    // host endpoint stands in for an operator's SSH script or fleet API), a
    // crashed Cilium agent's pod is deleted for its DaemonSet to replace;
    // reboots and replacement come after.
    let repair = |kind, wait: Duration| crate::repairs::RepairConfig {
        kind,
        attempts: 1,
        wait,
        timeout: Duration::from_secs(5),
        url: None,
        method: "POST".into(),
        token_file: None,
        ca_file: None,
        command: None,
        namespace: None,
        selector: None,
    };
    let wait = scale(Duration::from_secs(2 * 60), speed);
    c.repairs.insert(
        "restart-kubelet".into(),
        crate::repairs::RepairConfig {
            url: Some(format!("{}/sim/v1/nodes/{{node}}/restart/kubelet", sim.kube_url())),
            ..repair(crate::repairs::RepairKind::Http, wait)
        },
    );
    c.repairs.insert(
        "restart-cilium".into(),
        crate::repairs::RepairConfig {
            namespace: Some("kube-system".into()),
            selector: Some("k8s-app=cilium".into()),
            ..repair(crate::repairs::RepairKind::RestartPods, wait)
        },
    );
    c.ladder = vec![
        crate::repairs::LadderConfig {
            class: Some("standard".into()),
            checker: Some("NodeReady".into()),
            rungs: vec!["restart-kubelet".into(), "reboot".into(), "replace".into()],
        },
        crate::repairs::LadderConfig {
            class: None,
            checker: Some("Cilium".into()),
            rungs: vec!["restart-cilium".into(), "reboot".into()],
        },
    ];
    let mut entries = c.checkers_config().checkers;
    let built = c.checkers_config().build::<NodeRef>().unwrap_or_default();
    for (e, b) in entries.iter_mut().zip(built) {
        e.threshold = Some(scale(b.threshold(), speed));
    }
    c.checkers = Some(entries);
    // Built from valid parts: a failure here is a bug, and the agent's
    // start-up names it (the policy then has no ladders).
    if let Err(e) = c.resolve_ladders() {
        tracing::error!(error = %e, "the simulation's repair ladders are invalid");
    }
    c
}

/// Runs a simulation and returns its summary.
pub async fn simulate(opts: SimulateOptions, recorder: AgentRecorder) -> Result<Summary, SimulateError> {
    let scenario = Scenario::parse(&opts.scenario.0, &opts.scenario.1)?;
    let mut cc = ClusterConfig::default();
    scenario.apply_config(&mut cc);
    let sim = SimServer::start(cc, Ports::default()).await.map_err(|e| SimulateError::Sim(e.to_string()))?;
    let mut config = config_for(&sim, opts.speed);
    config.record.path.clone_from(&opts.record);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig())
        .map_err(|e| SimulateError::Sim(format!("kubeconfig: {e}")))?;
    let kube_config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| SimulateError::Sim(format!("kubeconfig: {e}")))?;

    let printer = Arc::new(Printer {
        start: Instant::now(),
        live: opts.live,
        tally: Mutex::new(BTreeMap::new()),
        held: Mutex::new(0),
    });
    if opts.live {
        say!(
            "simulated cluster: {} nodes ({} GPU) at {}; Civo API at {}",
            sim.cluster().node_names().len(),
            sim.cluster().instances().iter().filter(|i| i.gpus > 0).count(),
            sim.kube_url(),
            sim.civo_url()
        );
        say!(
            "agent: active mode, policy at {}x speed (reboot wait {:?}, GPU {:?}); running for {:?}",
            opts.speed,
            config.policy.reboot_wait,
            config.policy.gpu_reboot_wait,
            opts.duration
        );
    }
    let health = Arc::new(HealthManager::new());
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(port) = opts.metrics_port {
        let state =
            crate::http::HttpState { recorder: recorder.clone(), health: health.clone(), draining: Arc::default() };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (bound, _h) = crate::http::serve(addr, state, async move {
            let _ = http_stopped.await;
        })
        .await
        .map_err(|e| SimulateError::Sim(format!("cannot listen on {addr}: {e}")))?;
        if opts.live {
            say!("metrics: http://{bound}/metrics");
        }
    }
    scenario.spawn(sim.cluster().clone())?;
    let deps = Deps {
        recorder,
        health,
        observers: vec![printer.clone()],
        once: false,
        kube_config: Some(kube_config),
        state: None,
    };
    let run = agent::run(config, deps, tokio::time::sleep(opts.duration)).await?;
    let _ = stop_http.send(());

    let tally = std::mem::take(&mut *printer.tally.lock());
    let mut names: Vec<String> = run.records.keys().cloned().collect();
    for n in tally.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names.sort();
    let mut totals = Totals { held: *printer.held.lock(), ..Totals::default() };
    let mut nodes = Vec::new();
    for name in names {
        let t = tally.get(&name);
        let record = run.records.get(&name);
        let phase = record.map_or("Replaced", |r| r.phase.as_str()).to_owned();
        let class = record.map_or("standard", |r| r.class.as_str()).to_owned();
        let s = NodeSummary {
            name,
            class,
            phase,
            repairs: t.map_or(0, |t| t.repairs),
            reboots: t.map_or(0, |t| t.reboots),
            replaces: t.map_or(0, |t| t.replaces),
            failures: t.map_or(0, |t| t.failures),
        };
        totals.nodes += 1;
        totals.healthy += usize::from(s.phase == "Healthy");
        totals.failed += usize::from(s.phase == "Failed");
        totals.repairs += s.repairs;
        totals.reboots += s.reboots;
        totals.replaces += s.replaces;
        totals.failures += s.failures;
        nodes.push(s);
    }
    let calls = sim.cluster().civo_calls();
    let civo_calls = CivoCalls {
        hard_reboots: calls.iter().filter(|c| c.method == "POST" && c.path.contains("/hard_reboots")).count(),
        pool_deletes: calls.iter().filter(|c| c.method == "DELETE" && c.path.contains("/pools/")).count(),
    };
    sim.shutdown().await;
    Ok(Summary { nodes, totals, civo_calls, storm_guard_engaged: run.storm_guard_engaged })
}

/// The summary as a table.
#[must_use]
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<30} {:<9} {:<15} {:>7} {:>7} {:>8} {:>8}",
        "NODE", "CLASS", "PHASE", "REPAIRS", "REBOOTS", "REPLACES", "FAILURES"
    );
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{:<30} {:<9} {:<15} {:>7} {:>7} {:>8} {:>8}",
            n.name, n.class, n.phase, n.repairs, n.reboots, n.replaces, n.failures
        );
    }
    let t = &s.totals;
    let _ = writeln!(
        out,
        "\n{} nodes: {} healthy, {} failed; {} soft repairs, {} reboots, {} replacements, {} failed actions, \
         {} holds by safety gates",
        t.nodes, t.healthy, t.failed, t.repairs, t.reboots, t.replaces, t.failures, t.held
    );
    let _ = writeln!(
        out,
        "Civo API calls: {} hard reboots, {} pool deletes; storm guard engaged: {}",
        s.civo_calls.hard_reboots,
        s.civo_calls.pool_deletes,
        if s.storm_guard_engaged { "yes" } else { "no" }
    );
    out
}
