//! The agent's gRPC side: the admin API (`nodeagent.v1.AgentAdmin`) and
//! `grpc.health.v1` on one port, heartbeats to a fleet control plane
//! (`nodeagent.v1.HealthReporter`), and the persisted pause switch.
//!
//! [`AgentState`] is what they share: the replica's role, the running
//! engine (through a [`health_core::Inspector`], answered between
//! evaluations), component health and the pause. It exists before the
//! engine does, so a standby answers status calls and sends heartbeats.

pub mod admin;
pub mod client;
pub mod heartbeat;
pub mod pause;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use health_core::{ComponentStatus, Controls, HealthManager, Inspector, Phase};
use node_agent_proto::v1 as pb;
use node_agent_proto::{RequireBearer, Timestamp};
use parking_lot::Mutex;

use crate::node::NodeRef;
use pause::{PauseState, PauseStore};

/// The commit the binary was built from (`NODE_AGENT_COMMIT` at build
/// time: scripts/package.sh and the Dockerfile set it), else `unknown`.
pub const COMMIT: &str = match option_env!("NODE_AGENT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The component name of the heartbeat reporter.
pub const REPORTER_COMPONENT: &str = "grpc_reporter";

/// A replica's part in high availability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// HA off: the only replica.
    Single,
    /// Holds the Lease: evaluates and acts.
    Leader,
    /// Waits for the Lease: does nothing.
    Standby,
}

impl Role {
    /// `single`, `leader` or `standby`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }

    fn wire(self) -> pb::Role {
        match self {
            Role::Single => pb::Role::Single,
            Role::Leader => pb::Role::Leader,
            Role::Standby => pb::Role::Standby,
        }
    }
}

/// The running engine's handles: inspector, controls, pause store.
type EngineHandles = (Inspector<NodeRef>, Arc<Controls>, Arc<dyn PauseStore>);

/// The running engine, as the gRPC side reaches it.
struct Attached {
    inspector: Inspector<NodeRef>,
    controls: Arc<Controls>,
    pause: Arc<dyn PauseStore>,
}

/// What the admin API, the heartbeat and grpc.health share.
pub struct AgentState {
    /// When the process started.
    pub started_at: SystemTime,
    /// `active` or `monitor-only`.
    pub mode: &'static str,
    /// The Civo cluster id.
    pub cluster_id: String,
    /// This replica's identity.
    pub identity: String,
    /// Component health.
    pub health: Arc<HealthManager>,
    /// How long a question to the engine may wait.
    pub call_timeout: Duration,
    role: Mutex<Role>,
    attached: Mutex<Option<Attached>>,
    /// Bumped on attach and detach (calls made during start-up wait for it).
    attachments: tokio::sync::watch::Sender<u64>,
    pause: Mutex<PauseState>,
    draining: Arc<AtomicBool>,
    sequence: AtomicU64,
    grpc_health: Mutex<Option<tonic_health::server::HealthReporter>>,
    /// Serialises pause changes (store and controls move together) and
    /// grpc.health refreshes (the last computed status is the one set).
    changes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("mode", &self.mode)
            .field("identity", &self.identity)
            .field("role", &*self.role.lock())
            .finish_non_exhaustive()
    }
}

/// One moment of the engine, for the heartbeat and the status call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineSummary {
    /// Known (not departed) nodes per phase.
    pub per_phase: BTreeMap<String, u32>,
    /// Nodes not Healthy (Unknown counts as not healthy).
    pub unhealthy: u32,
    /// Known nodes.
    pub total: u32,
    /// Whether the storm guard held remediation back at the last evaluation.
    pub storm_guard: bool,
}

impl AgentState {
    /// The shared state of one agent process; `draining` is the flag the
    /// HTTP readiness reads.
    #[must_use]
    pub fn new(config: &crate::config::Config, health: Arc<HealthManager>, draining: Arc<AtomicBool>) -> Arc<Self> {
        let role = if config.ha.enabled { Role::Standby } else { Role::Single };
        Arc::new(AgentState {
            started_at: SystemTime::now(),
            mode: if config.policy.monitor_only { "monitor-only" } else { "active" },
            cluster_id: config.civo.cluster_id.trim().to_owned(),
            identity: config.ha.identity(&config.agent.instance),
            health,
            call_timeout: config.admin.call_timeout,
            role: Mutex::new(role),
            attached: Mutex::new(None),
            attachments: tokio::sync::watch::Sender::new(0),
            pause: Mutex::new(PauseState::default()),
            draining,
            sequence: AtomicU64::new(0),
            grpc_health: Mutex::new(None),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// The replica's role.
    #[must_use]
    pub fn role(&self) -> Role {
        *self.role.lock()
    }

    /// Changes the role (grpc.health follows).
    pub async fn set_role(&self, role: Role) {
        *self.role.lock() = role;
        self.refresh_grpc_health().await;
    }

    /// Shutdown began: grpc.health says NOT_SERVING.
    pub async fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.refresh_grpc_health().await;
    }

    /// Whether shutdown began.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    async fn refresh_grpc_health(&self) {
        let _one_at_a_time = self.changes.lock().await;
        let reporter = self.grpc_health.lock().clone();
        if let Some(r) = reporter {
            let serving = !self.draining() && self.role() != Role::Standby;
            let status =
                if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            for name in ["", node_agent_proto::names::AGENT_ADMIN] {
                r.set_service_status(name, status).await;
            }
        }
    }

    /// The current pause.
    #[must_use]
    pub fn pause_state(&self) -> PauseState {
        self.pause.lock().clone()
    }

    /// Called by the agent once it leads and its engine runs: reads the
    /// stored pause from `pause` and applies it to `controls` before the
    /// first evaluation; the admin API then reaches the engine.
    ///
    /// # Errors
    /// The stored pause cannot be read (the agent does not start: it
    /// cannot know whether an operator paused it).
    pub async fn load_pause(&self, pause: &Arc<dyn PauseStore>, controls: &Controls) -> Result<(), String> {
        let state = pause.load().await?;
        if state.paused {
            tracing::warn!(
                reason = %state.reason,
                since = state.since,
                location = %pause.location(),
                "remediation is paused by an operator (AgentAdmin.Resume or `node-agent resume` lifts it)"
            );
        }
        controls.set_paused(state.paused);
        *self.pause.lock() = state;
        Ok(())
    }

    /// Makes the running engine reachable (after [`AgentState::load_pause`]).
    pub fn attach(&self, inspector: Inspector<NodeRef>, controls: Arc<Controls>, pause: Arc<dyn PauseStore>) {
        *self.attached.lock() = Some(Attached { inspector, controls, pause });
        self.attachments.send_modify(|n| *n += 1);
    }

    /// The engine stopped.
    pub fn detach(&self) {
        *self.attached.lock() = None;
        self.attachments.send_modify(|n| *n += 1);
    }

    fn attached_engine(&self) -> Option<EngineHandles> {
        self.attached.lock().as_ref().map(|a| (a.inspector.clone(), Arc::clone(&a.controls), Arc::clone(&a.pause)))
    }

    /// The running engine; during start-up (not on a standby, not while
    /// draining) waits up to `call_timeout` for it.
    async fn engine(&self) -> Option<EngineHandles> {
        let mut changes = self.attachments.subscribe();
        let deadline = tokio::time::Instant::now() + self.call_timeout;
        loop {
            if let Some(e) = self.attached_engine() {
                return Some(e);
            }
            if self.role() == Role::Standby || self.draining() {
                return None;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Asks the engine `f` (between evaluations), waiting at most `call_timeout`.
    ///
    /// # Errors
    /// No engine runs here (standby, starting, stopping), or it did not
    /// answer in time.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&health_core::Engine<NodeRef>) -> R + Send + 'static,
    ) -> Result<R, tonic::Status> {
        self.inspect_in(true, f).await
    }

    async fn inspect_in<R: Send + 'static>(
        &self,
        wait: bool,
        f: impl FnOnce(&health_core::Engine<NodeRef>) -> R + Send + 'static,
    ) -> Result<R, tonic::Status> {
        let engine = if wait { self.engine().await } else { self.attached_engine() };
        let Some((inspector, ..)) = engine else {
            return Err(match self.role() {
                Role::Standby => tonic::Status::failed_precondition(
                    "this replica is a standby: it keeps no node state; ask the leader (the holder of the HA Lease)",
                ),
                _ => tonic::Status::unavailable("the engine is not running (starting or stopping); try again"),
            });
        };
        match tokio::time::timeout(self.call_timeout, inspector.inspect(f)).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(tonic::Status::unavailable("the engine stopped")),
            Err(_) => Err(tonic::Status::unavailable(format!(
                "the engine did not answer within {:?} (an evaluation is running); try again",
                self.call_timeout
            ))),
        }
    }

    /// Node counts and the storm guard, or `None` where no engine runs
    /// (now: it does not wait for one that is starting).
    pub async fn engine_summary(&self) -> Option<EngineSummary> {
        self.inspect_in(false, |e| {
            let mut s = EngineSummary { storm_guard: e.storm_guard_active(), ..EngineSummary::default() };
            for n in e.nodes().filter(|n| !n.departed) {
                *s.per_phase.entry(n.record.phase.as_str().to_owned()).or_default() += 1;
                s.total += 1;
                if n.record.phase != Phase::Healthy {
                    s.unhealthy += 1;
                }
            }
            s
        })
        .await
        .ok()
    }

    /// Pauses (persisted first when possible) or resumes (persisted first:
    /// a resume that cannot be stored leaves the agent paused).
    ///
    /// # Errors
    /// No engine here (standby), or the store failed; the message says
    /// what state the agent is left in.
    pub async fn set_pause(&self, paused: bool, reason: &str) -> Result<PauseState, tonic::Status> {
        let Some((_, controls, store)) = self.engine().await else {
            return Err(match self.role() {
                Role::Standby => tonic::Status::failed_precondition(
                    "this replica is a standby; pause the leader (the holder of the HA Lease)",
                ),
                _ => tonic::Status::unavailable("the engine is not running (starting or stopping); try again"),
            });
        };
        let state = if paused { PauseState::paused(reason) } else { PauseState::default() };
        // One change at a time: a Pause and a Resume never interleave their
        // store write and their switch.
        let _one_at_a_time = self.changes.lock().await;
        if paused {
            // Safety first: pause now, even if it cannot be stored.
            controls.set_paused(true);
            *self.pause.lock() = state.clone();
            if let Err(e) = store.save(&state).await {
                tracing::error!(error = %e, "remediation paused, but the pause could not be stored: a restart would resume");
                return Err(tonic::Status::internal(format!(
                    "paused now, but the pause could not be stored ({e}): a restart would resume; call Pause again"
                )));
            }
            tracing::warn!(reason, location = %store.location(), "remediation paused by an operator");
        } else {
            if let Err(e) = store.save(&state).await {
                tracing::error!(error = %e, "resume refused: the stored pause could not be cleared; still paused");
                return Err(tonic::Status::unavailable(format!(
                    "still paused: the stored pause could not be cleared ({e}); try again"
                )));
            }
            controls.set_paused(false);
            *self.pause.lock() = state.clone();
            tracing::warn!(location = %store.location(), "remediation resumed by an operator");
        }
        Ok(state)
    }

    /// One heartbeat: the snapshot that is both logged and sent.
    pub async fn snapshot(&self) -> pb::ReportHealthRequest {
        let summary = self.engine_summary().await;
        let components = self
            .health
            .report()
            .into_iter()
            .map(|(name, c)| pb::Component {
                name,
                status: wire_status(c.status) as i32,
                message: c.message,
                metadata: c.metadata.into_iter().collect(),
                required: c.required,
            })
            .collect();
        let s = summary.unwrap_or_default();
        let pause = self.pause_state();
        let storm_reason = if s.storm_guard {
            format!("{} of {} nodes unhealthy (or the node source is stale)", s.unhealthy, s.total)
        } else {
            String::new()
        };
        pb::ReportHealthRequest {
            cluster_id: self.cluster_id.clone(),
            agent_mode: self.mode.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: COMMIT.to_owned(),
            started_at: Some(timestamp(self.started_at)),
            reported_at: Some(timestamp(SystemTime::now())),
            role: self.role().wire() as i32,
            identity: self.identity.clone(),
            components,
            nodes_per_phase: s.per_phase.into_iter().collect(),
            storm_guard: Some(pb::StormGuard {
                engaged: s.storm_guard,
                unhealthy: s.unhealthy,
                total: s.total,
                reason: storm_reason,
            }),
            sequence: self.sequence.fetch_add(1, Ordering::SeqCst) + 1,
            paused: pause.paused,
        }
    }
}

fn wire_status(s: ComponentStatus) -> pb::ComponentStatus {
    match s {
        ComponentStatus::Healthy => pb::ComponentStatus::Healthy,
        ComponentStatus::Degraded => pb::ComponentStatus::Degraded,
        ComponentStatus::Unhealthy => pb::ComponentStatus::Unhealthy,
        _ => pb::ComponentStatus::Unspecified,
    }
}

/// A protobuf timestamp.
#[must_use]
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Serves the admin API (token required when set) and grpc.health.v1 (no
/// token) on `addr` until `shutdown`.
/// Returns the bound address (port 0 picks one) and the server task.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AgentState>,
    auth: RequireBearer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    *state.grpc_health.lock() = Some(reporter);
    state.refresh_grpc_health().await;
    let admin = admin::service(Arc::clone(&state), auth);
    // grpc.health.v1 needs no token: probes (the kubelet's among them)
    // cannot send one, and it tells only SERVING or NOT_SERVING.
    let health = health_service;
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(admin)
            .add_service(health)
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the admin gRPC server stopped");
        }
    });
    Ok((bound, task))
}
