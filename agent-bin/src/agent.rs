//! The agent's main loop: Node watch -> engine -> executors, with component
//! health, metrics and Events.
//!
//! Every task started here has an owner: the watch task and the Event
//! publisher are aborted when [`run`] returns; the HTTP server stops with
//! the shutdown future of its caller.
//!
//! Evaluation is event-driven: a pass runs when the Node cache changed in a
//! way the checkers can see, when the engine's next deadline arrives, or when
//! an operator control changes; never on a fixed tick, and never with a
//! periodic LIST (the watch lists once, and again only after a watch error).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use health_core::{
    ComponentStatus, Controls, Engine, EngineConfig, Executor, HealthManager, MemoryStore, NodeRecord, Observer,
    PassCause, PassReport, Runtime, RuntimeEvent, StateStore, TargetUpdate,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use node_agent_proto::{ClientSettings, Token};
use recovery_exec::{
    ApiKey, CivoConfig, CivoExecutor, DrainConfig, GrpcExecutor, GrpcExecutorConfig, KubeExecutor, NoopExecutor,
    Remediator, Repairs,
};
use state_store::{FileStore, KubeStore};

use crate::config::{Config, ExecutorKind, StoreBackend};
use crate::events::EventObserver;
use crate::grpc::AgentState;
use crate::grpc::pause::{FilePause, LeasePause, MemoryPause, PauseStore};
use crate::node::NodeRef;
use crate::recorder::AgentRecorder;
use crate::watch::{self, NodeCache, WatchConfig};

/// The metric prefix of the agent (Civo's agent's names).
pub const METRICS_PREFIX: &str = "civo_node_agent";
/// Read timeout of the watch connection (above the watch's own 290s timeout).
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// The agent could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The Kubernetes client could not be configured.
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// The state store could not be opened or read.
    #[error("state store: {0}")]
    Store(String),
    /// An executor could not be configured.
    #[error("executor: {0}")]
    Executor(String),
    /// The engine rejected its configuration.
    #[error("engine: {0}")]
    Engine(String),
    /// The HTTP port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--once`: the pass could not be completed.
    #[error("the evaluation pass failed: {0}")]
    Pass(String),
}

/// What the caller supplies besides the configuration.
#[derive(Default)]
pub struct Deps {
    /// The installed metrics recorder (series of departed nodes are deleted through it).
    pub recorder: AgentRecorder,
    /// Component health (served by the HTTP port).
    pub health: Arc<HealthManager>,
    /// Extra observers (the simulator's live printer).
    pub observers: Vec<Arc<dyn Observer<NodeRef>>>,
    /// Run one pass after the first complete list, then return.
    pub once: bool,
    /// The in-process Kubernetes config to use instead of `kube.kubeconfig` (simulations).
    pub kube_config: Option<kube::Config>,
    /// The state the admin API and the heartbeat read (the engine is attached to it).
    pub state: Option<Arc<AgentState>>,
}

/// What a finished run leaves behind.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Every known node's record, by name.
    pub records: BTreeMap<String, NodeRecord>,
    /// Evaluation passes run.
    pub passes: u64,
    /// Nodes in the last pass.
    pub nodes: usize,
    /// Whether the storm guard held remediation back in any pass.
    pub storm_guard_engaged: bool,
}

/// Reads the kubeconfig (or the in-cluster configuration).
pub async fn kube_config(config: &Config) -> Result<kube::Config, RunError> {
    let mut cfg = if config.in_cluster() {
        kube::Config::incluster().map_err(|e| {
            RunError::Kube(format!(
                "in-cluster configuration unavailable ({e}); outside a pod pass --kubeconfig FILE (default {})",
                crate::config::DEFAULT_KUBECONFIG
            ))
        })?
    } else {
        let path = Path::new(&config.kube.kubeconfig);
        let kc =
            Kubeconfig::read_from(path).map_err(|e| RunError::Kube(format!("--kubeconfig {}: {e}", path.display())))?;
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| RunError::Kube(format!("--kubeconfig {}: {e}", path.display())))?
    };
    // The API server's audit log and rate limits see who is calling.
    cfg.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("node-agent/", env!("CARGO_PKG_VERSION"))),
    ));
    Ok(cfg)
}

fn client(mut cfg: kube::Config, read_timeout: Duration) -> Result<kube::Client, RunError> {
    cfg.read_timeout = Some(read_timeout);
    cfg.connect_timeout = Some(cfg.connect_timeout.unwrap_or(Duration::from_secs(10)).min(read_timeout));
    kube::Client::try_from(cfg).map_err(|e| RunError::Kube(e.to_string()))
}

async fn open_store(config: &Config, call_client: &kube::Client) -> Result<Arc<dyn StateStore>, RunError> {
    Ok(match config.store_backend() {
        StoreBackend::Kubernetes | StoreBackend::Auto => {
            Arc::new(KubeStore::new(call_client.clone()).with_call_timeout(config.kube.call_timeout))
        }
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
        StoreBackend::Etcd => Arc::new(open_etcd(&config.store.etcd, config.engine.store_timeout).await?),
        StoreBackend::File => {
            let path = config.store.path.clone();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| RunError::Store(format!("cannot create {} for store.path: {e}", dir.display())))?;
            }
            Arc::new(
                FileStore::open(&path).map_err(|e| RunError::Store(format!("store.path {}: {e}", path.display())))?,
            )
        }
    })
}

/// Connects to the etcd store and asks etcd once (the client connects
/// lazily), all within `timeout`: a wrong address, CA or certificate stops
/// start-up with the reason instead of holding every node later.
async fn open_etcd(e: &crate::config::StoreEtcdSection, timeout: Duration) -> Result<state_store::EtcdStore, RunError> {
    use state_store::etcd_client::{Client, ConnectOptions};
    let opts = match e.tls() {
        Some(tls) => tls.connect_options(timeout).map_err(|err| {
            RunError::Store(format!("store.etcd.{} {}: {}", err.setting, err.path.display(), err.message))
        })?,
        None => ConnectOptions::new().with_connect_timeout(timeout),
    };
    let hint = if e.tls().is_some() {
        " (check store.etcd.ca_file against the server's certificate, and cert_file/key_file against its --trusted-ca-file)"
    } else {
        ""
    };
    let endpoints = e.endpoints.join(",");
    let connected = tokio::time::timeout(timeout, async {
        let client = Client::connect(e.endpoints.clone(), Some(opts)).await?;
        client.clone().status().await?;
        Ok::<_, state_store::etcd_client::Error>(client)
    })
    .await;
    match connected {
        Ok(Ok(client)) => Ok(state_store::EtcdStore::new(client, e.prefix.clone())),
        Ok(Err(err)) => Err(RunError::Store(format!("etcd {endpoints}: {err}{hint}"))),
        Err(_) => {
            Err(RunError::Store(format!("etcd {endpoints}: no answer within {timeout:?} (engine.store_timeout)")))
        }
    }
}

/// Where the operator's pause is kept (see [`crate::grpc::pause`]).
fn pause_store(config: &Config, call_client: &kube::Client) -> Arc<dyn PauseStore> {
    // With HA every replica must see the same pause: a Lease, whatever the
    // store; with the etcd store too (the agent always has the API server).
    let backend = if config.ha.enabled { StoreBackend::Kubernetes } else { config.store_backend() };
    match backend {
        StoreBackend::Kubernetes | StoreBackend::Auto | StoreBackend::Etcd => Arc::new(LeasePause::new(
            call_client.clone(),
            &config.ha.namespace(),
            &format!("{}-pause", config.ha.lease_name),
            config.kube.call_timeout,
        )),
        StoreBackend::Memory => Arc::new(MemoryPause::default()),
        StoreBackend::File => Arc::new(FilePause(
            config.admin.pause_file.clone().unwrap_or_else(|| config.store.path.with_file_name("pause.json")),
        )),
    }
}

fn drain_executor(config: &Config, call_cfg: &kube::Config) -> Result<KubeExecutor, RunError> {
    let drain = DrainConfig {
        timeout: config.kube.drain_timeout,
        call_timeout: config.kube.call_timeout,
        evict_unmanaged: config.kube.drain_evict_unmanaged,
        delete_emptydir_data: config.kube.drain_delete_emptydir_data,
        ..DrainConfig::default()
    };
    let mut kcfg = call_cfg.clone();
    kcfg.read_timeout = Some(config.kube.call_timeout);
    KubeExecutor::from_config(kcfg, drain).map_err(|e| RunError::Executor(e.to_string()))
}

/// The remote executor (`executor.kind = "grpc"`).
fn grpc_executor(config: &Config) -> Result<GrpcExecutor, RunError> {
    let e = &config.executor;
    let mut client = ClientSettings::new(e.endpoint.clone());
    client.timeout = e.timeout;
    client.ca_file.clone_from(&e.ca_file);
    if let Some(path) = &e.token_file {
        client.token =
            Some(Token::from_file(path).map_err(|err| RunError::Executor(format!("executor.token_file: {err}")))?);
    }
    let mut cfg = GrpcExecutorConfig::new(client);
    cfg.attempts = e.attempts;
    GrpcExecutor::new(cfg).map_err(|err| RunError::Executor(format!("executor.endpoint: {err}")))
}

/// The executor of every action: the configured soft repairs, each through
/// its own executor, and the rest through [`base_executor`]. Monitor-only
/// mode performs nothing.
fn executor(
    config: &Config,
    call_cfg: &kube::Config,
    call_client: &kube::Client,
) -> Result<Arc<dyn Executor<NodeRef>>, RunError> {
    // Monitor-only mode, and the no-op executor, perform nothing at all:
    // soft repairs included.
    if config.policy.monitor_only || config.executor.kind == ExecutorKind::Noop {
        return Ok(Arc::new(NoopExecutor));
    }
    let remote: Option<Arc<dyn Executor<NodeRef>>> = match config.executor.kind {
        ExecutorKind::Grpc => Some(Arc::new(grpc_executor(config)?)),
        _ => None,
    };
    let base = base_executor(config, call_cfg, remote.clone())?;
    if config.repairs.is_empty() {
        return Ok(base);
    }
    let mut routed = Repairs::new(base);
    for (repair, e) in crate::repairs::executors(&config.repairs, call_client, remote).map_err(RunError::Executor)? {
        routed = routed.with(repair, e);
    }
    Ok(Arc::new(routed))
}

fn base_executor(
    config: &Config,
    call_cfg: &kube::Config,
    remote: Option<Arc<dyn Executor<NodeRef>>>,
) -> Result<Arc<dyn Executor<NodeRef>>, RunError> {
    if config.executor.kind == ExecutorKind::Noop {
        return Ok(Arc::new(NoopExecutor));
    }
    if let Some(remote) = remote {
        if config.executor.remote_drain {
            return Ok(remote);
        }
        return Ok(Arc::new(Remediator::new(Arc::new(drain_executor(config, call_cfg)?), remote)));
    }
    let c = &config.civo;
    let mut civo = CivoConfig::new(
        c.api_url.trim_end_matches('/'),
        ApiKey::new(c.api_key.expose()),
        c.cluster_id.trim(),
        c.region.trim(),
    );
    civo.call_timeout = c.call_timeout;
    civo.allow_insecure_http = c.allow_insecure_http;
    civo.agent = format!("node-agent/{}", env!("CARGO_PKG_VERSION"));
    let civo = CivoExecutor::new(civo).map_err(|e| RunError::Executor(e.to_string()))?;
    Ok(Arc::new(Remediator::new(Arc::new(drain_executor(config, call_cfg)?), Arc::new(civo))))
}

struct StormFlag(parking_lot::Mutex<bool>);

impl Observer<NodeRef> for StormFlag {
    fn on_storm_guard(&self, e: &health_core::observer::StormEvent) {
        if e.active {
            *self.0.lock() = true;
        }
    }
}

/// Runs the agent until `shutdown` resolves (or after one pass with
/// `deps.once`). After `shutdown` nothing new starts; a pass in flight
/// finishes (its actions are bounded by the action and drain timeouts).
pub async fn run(
    config: Config,
    deps: Deps,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, RunError> {
    recovery_exec::install_crypto_provider();
    let health = deps.health.clone();
    health.register(watch::COMPONENT);
    health.register("state-store");
    health.register("engine");

    let base = match deps.kube_config {
        Some(c) => c,
        None => kube_config(&config).await?,
    };
    // The watch has its own back-off: kube's retries would hide an API
    // outage from it (a 503 retried for seconds instead of marking the
    // cache stale, which holds every action).
    let mut watch_cfg = base.clone();
    watch_cfg.default_retry = false;
    let watch_client = client(watch_cfg, WATCH_READ_TIMEOUT)?;
    let call_client = client(base.clone(), config.kube.call_timeout)?;

    let store = open_store(&config, &call_client).await?;
    let executor = executor(&config, &base, &call_client)?;
    let errors_metric = format!("{METRICS_PREFIX}_reconcile_errors_total");

    let mut tasks = tokio::task::JoinSet::new();
    let events = if config.kube.events {
        let (obs, publisher) =
            EventObserver::publishing(call_client.clone(), config.agent.instance.clone(), errors_metric.clone());
        tasks.spawn(publisher);
        obs
    } else {
        EventObserver::log_only(errors_metric.clone())
    };
    let storm = Arc::new(StormFlag(parking_lot::Mutex::new(false)));

    let checkers =
        config.checkers_config().build::<NodeRef>().map_err(|e| RunError::Engine(format!("checkers: {e}")))?;
    let engine_config = EngineConfig::default()
        .with_check_concurrency(config.engine.check_concurrency)
        .with_check_timeout(config.engine.check_timeout)
        .with_action_timeouts(config.engine.action_timeout, config.kube.drain_timeout)
        .with_store_timeout(config.engine.store_timeout)
        .with_forget_after(config.engine.forget_after)
        .with_error_grace(config.engine.error_grace)
        .with_metrics_prefix(METRICS_PREFIX);
    let mut builder = Engine::builder(store, executor)
        .policy(config.policy.clone())
        .config(engine_config.clone())
        .observer(Arc::new(events))
        .observer(storm.clone())
        .series_remover(Arc::new(deps.recorder.clone()));
    match crate::record::recorder(&config, &checkers, &engine_config) {
        Ok(Some(r)) => builder = builder.observer(Arc::new(r)),
        Ok(None) => {}
        Err(e) => return Err(RunError::Engine(format!("record.path: cannot record: {e}"))),
    }
    for c in checkers {
        builder = builder.checker_arc(c);
    }
    for o in deps.observers {
        builder = builder.observer(o);
    }
    let mut engine = builder.build().map_err(|e| RunError::Engine(e.to_string()))?;
    metrics::describe_gauge!(
        format!("{METRICS_PREFIX}_info"),
        "The agent's version and the Civo cluster it serves (always 1)."
    );
    metrics::gauge!(
        format!("{METRICS_PREFIX}_info"),
        "version" => env!("CARGO_PKG_VERSION"),
        "cluster_id" => config.civo.cluster_id.clone()
    )
    .set(1.0);

    // An operator's pause holds from the first evaluation on.
    let pause = pause_store(&config, &call_client);
    let controls = engine.controls();
    // The maintenance windows, set before the first evaluation and then
    // at each opening and closing.
    let windows = config.windows();
    if !windows.is_empty() {
        let verdict = windows.at(crate::window::to_jiff(health_core::Clock::now(&health_core::SystemClock)));
        controls.set_window_closed(!verdict.open());
        tracing::info!(rules = %windows.describe(), now = %verdict, "maintenance windows configured");
        metrics::describe_gauge!(
            format!("{METRICS_PREFIX}_maintenance_window_open"),
            "1 while the maintenance windows allow disruptive actions to start, else 0."
        );
        let gauge = metrics::gauge!(format!("{METRICS_PREFIX}_maintenance_window_open"));
        // Runs until the agent's tasks are shut down at exit.
        let clock = Arc::new(health_core::SystemClock);
        tasks.spawn(crate::window::drive(windows, Arc::clone(&controls), clock, gauge, std::future::pending()));
    }
    if config.control_plane.enabled && !deps.once {
        let cp = &config.control_plane;
        let repair = health_core::Repair::new(crate::control_plane::REPAIR_NAME)
            .map_err(|e| RunError::Executor(format!("control_plane.repair: {e}")))?;
        let executor: Arc<dyn Executor<crate::control_plane::Host>> =
            if config.policy.monitor_only || config.executor.kind == ExecutorKind::Noop {
                Arc::new(recovery_exec::DryRun)
            } else {
                let r = cp.repair.as_ref().ok_or_else(|| RunError::Executor("control_plane.repair: not set".into()))?;
                if r.kind == crate::repairs::RepairKind::Grpc {
                    Arc::new(grpc_executor(&config)?)
                } else {
                    crate::repairs::standalone("control_plane.repair", repair, r).map_err(RunError::Executor)?
                }
            };
        let state_path = cp.state_path(&config.store.path);
        metrics::describe_gauge!(
            format!("{METRICS_PREFIX}_api_server_reachable"),
            "1 while the Kubernetes API server answers the control-plane probe, else 0."
        );
        metrics::describe_counter!(
            format!("{METRICS_PREFIX}_control_plane_repairs_total"),
            "Control-plane repairs by host and result (succeeded, failed, unknown)."
        );
        tracing::info!(hosts = ?cp.hosts, grace = ?cp.grace, backoff = ?cp.backoff, state = %state_path.display(), "control-plane repair enabled");
        // The probe's own client: kube's default retries would turn a 503
        // into a call that hangs for its whole time limit.
        let probe_timeout = config.kube.call_timeout.min(Duration::from_secs(10));
        let mut probe_cfg = base.clone();
        probe_cfg.default_retry = false;
        let repairer = crate::control_plane::Repairer {
            config: cp.clone(),
            state_path,
            executor,
            action: health_core::Action::Repair(repair),
            probe: Arc::new(crate::control_plane::KubeProbe {
                client: client(probe_cfg, probe_timeout)?,
                timeout: probe_timeout,
            }),
            clock: Arc::new(health_core::SystemClock),
            last_round: parking_lot::Mutex::new(None),
        };
        tasks.spawn(repairer.run(std::future::pending()));
    }
    match &deps.state {
        Some(state) => state.load_pause(&pause, &controls).await,
        None => pause.load().await.map(|p| controls.set_paused(p.paused)),
    }
    .map_err(|e| RunError::Store(format!("the operator's pause ({}): {e}", pause.location())))?;

    match engine.restore().await {
        Ok(n) => {
            tracing::info!(records = n, backend = ?config.store_backend(), "state restored");
            health.update("state-store", ComponentStatus::Healthy, format!("{n} records restored"), BTreeMap::new());
        }
        Err(e) => {
            // Nodes are loaded one by one as they are seen; a store that
            // cannot list keeps the agent from acting on those it cannot read.
            tracing::warn!(error = %e, "could not list stored records; each node's record is read when it is seen");
            health.update("state-store", ComponentStatus::Degraded, format!("restore failed: {e}"), BTreeMap::new());
        }
    }

    let cache = NodeCache::new();
    let selector = config.node_selector();
    tracing::info!(
        mode = if config.policy.monitor_only { "monitor" } else { "active" },
        selector = selector.as_deref().unwrap_or("(all nodes)"),
        store = ?config.store_backend(),
        "node-agent started"
    );
    // The kubelet-lease checker needs the leases of kube-node-lease.
    let lease_checker = config
        .checkers_config()
        .checkers
        .into_iter()
        .find(|c| c.kind == Some(health_checks::CheckerKind::KubeletLease) && c.enabled != Some(false));
    let leases = lease_checker.map(|c| {
        let map = crate::leases::LeaseMap::new();
        let stale_after = c.stale_after.unwrap_or(Duration::from_secs(40));
        (crate::leases::LeaseHandle(Arc::clone(&map)), map, stale_after)
    });
    let watch_config = WatchConfig {
        selector,
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
        errors_metric: errors_metric.clone(),
        server: base.cluster_url.to_string(),
        leases: leases.as_ref().map(|(h, ..)| h.clone()),
        domain_labels: config.policy.domains.labels.clone().into(),
    };
    if let Some((_, map, stale_after)) = leases {
        tasks.spawn(crate::leases::watch_leases(
            watch_client.clone(),
            map,
            cache.clone(),
            stale_after,
            errors_metric.clone(),
            health.clone(),
        ));
    }
    tasks.spawn(watch::watch_nodes(watch_client, watch_config, cache.clone(), health.clone()));
    if !config.addons.is_empty() && !deps.once {
        tasks.spawn(crate::addons::monitor(
            call_client.clone(),
            config.addons.clone(),
            config.kube.addons_interval,
            config.kube.call_timeout,
            health.clone(),
        ));
    }

    let mut summary = RunSummary::default();
    if deps.once {
        return run_once(engine, &cache, &controls, &health, &config, tasks, storm).await;
    }

    // The watch cache becomes a stream of target updates for the runtime:
    // the complete set when nodes come or go, the changed nodes otherwise.
    let (updates_tx, updates_rx) = tokio::sync::mpsc::channel::<TargetUpdate<NodeRef>>(64);
    let feeder_cache = cache.clone();
    let feeder_controls = Arc::clone(&controls);
    // Probes that look outside the Node (HTTP, gRPC, commands, files) change
    // without a Node update: then every node is evaluated again on a timer.
    let probe_every = config.has_probes().then_some(config.engine.probe_interval);
    if let Some(every) = probe_every {
        tracing::info!(interval = ?every, "probe checkers configured: every node is evaluated again at this interval");
    }
    tasks.spawn(async move {
        let mut all = false;
        loop {
            let snap = feeder_cache.take_changes(all);
            feeder_controls.set_source_stale(!snap.synced || snap.stale.is_some());
            if snap.synced {
                let batch: Vec<TargetUpdate<NodeRef>> = if snap.full {
                    vec![TargetUpdate::Full(snap.all)]
                } else {
                    snap.changed.into_iter().map(TargetUpdate::Upsert).collect()
                };
                for u in batch {
                    if updates_tx.send(u).await.is_err() {
                        return;
                    }
                }
            }
            all = match probe_every {
                Some(every) => tokio::select! {
                    () = feeder_cache.changed() => false,
                    () = tokio::time::sleep(every) => true,
                },
                None => {
                    feeder_cache.changed().await;
                    false
                }
            };
        }
    });
    let updates = health_core::runtime::updates_from(updates_rx);

    let passes = Arc::new(parking_lot::Mutex::new((0u64, 0usize)));
    let sink_passes = Arc::clone(&passes);
    let sink_health = Arc::clone(&health);
    let runtime =
        Runtime::new(engine).with_shutdown_grace(config.engine.shutdown_grace).with_sink(move |event| match event {
            RuntimeEvent::Pass { cause, report } => {
                let mut p = sink_passes.lock();
                p.0 += 1;
                if *cause == PassCause::Full {
                    p.1 = report.evaluated;
                }
                report_health(&sink_health, report, p.0, p.1);
            }
            RuntimeEvent::ShuttingDown { in_flight } => {
                tracing::info!(
                    actions_in_flight = in_flight,
                    "shutting down: nothing new starts; waiting for actions in flight"
                );
            }
            _ => {}
        });
    if let Some(state) = &deps.state {
        state.attach(runtime.inspector(), Arc::clone(&controls), pause);
    }
    let stopped = runtime.run(updates, shutdown).await;
    if let Some(state) = &deps.state {
        state.detach();
    }
    if stopped.abandoned {
        tracing::warn!(
            grace = ?config.engine.shutdown_grace,
            "actions were still running at the end of the shutdown grace; their records say they were started, so a restarted agent waits them out"
        );
    }
    let engine = stopped.engine;
    let (passes, nodes) = *passes.lock();
    summary.passes = passes;
    summary.nodes = nodes;
    summary.records = engine.records().map(|(k, r)| (k.to_owned(), r.clone())).collect();
    summary.storm_guard_engaged = *storm.0.lock();
    tasks.shutdown().await;
    Ok(summary)
}

/// Updates the `state-store` and `engine` components after a pass.
fn report_health(health: &HealthManager, report: &PassReport, passes: u64, nodes: usize) {
    let mut meta = BTreeMap::new();
    meta.insert("nodes".to_owned(), nodes.to_string());
    meta.insert("passes".to_owned(), passes.to_string());
    if report.errors.is_empty() {
        health.update("state-store", ComponentStatus::Healthy, "ok", BTreeMap::new());
    } else {
        let first = &report.errors[0];
        tracing::warn!(
            errors = report.errors.len(),
            node = %first.node,
            error = %first.error,
            "state store errors: those nodes are held and retried with back-off"
        );
        health.update(
            "state-store",
            ComponentStatus::Degraded,
            format!("{} errors, first: {}: {}", report.errors.len(), first.node, first.error),
            BTreeMap::new(),
        );
    }
    health.update("engine", ComponentStatus::Healthy, "evaluating", meta);
}

/// `--once`: waits (bounded) for a complete node list, runs one pass
/// (waiting for the actions it starts) and stops.
async fn run_once(
    mut engine: Engine<NodeRef>,
    cache: &NodeCache,
    controls: &Controls,
    health: &HealthManager,
    config: &Config,
    mut tasks: tokio::task::JoinSet<()>,
    storm: Arc<StormFlag>,
) -> Result<RunSummary, RunError> {
    let limit = config.kube.call_timeout * 2;
    let deadline = tokio::time::Instant::now() + limit;
    let snap = loop {
        let snap = cache.take_changes(true);
        if snap.synced {
            break snap;
        }
        if tokio::time::timeout_at(deadline, cache.changed()).await.is_err() {
            tasks.shutdown().await;
            return Err(RunError::Pass(format!(
                "no complete node list within {limit:?}: {}",
                snap.stale.unwrap_or_else(|| "the list did not finish".into())
            )));
        }
    };
    controls.set_source_stale(snap.stale.is_some());
    let report = engine.run_pass(&snap.all).await;
    report_health(health, &report, 1, snap.all.len());
    tasks.shutdown().await;
    if !report.errors.is_empty() {
        return Err(RunError::Pass(format!("{} store errors, first: {}", report.errors.len(), report.errors[0].error)));
    }
    Ok(RunSummary {
        passes: 1,
        nodes: snap.all.len(),
        records: engine.records().map(|(k, r)| (k.to_owned(), r.clone())).collect(),
        storm_guard_engaged: *storm.0.lock(),
    })
}
