//! `nodeagent.v1.AgentAdmin`: status, nodes, pause and resume.

use std::collections::BTreeMap;
use std::sync::Arc;

use health_core::engine::NodeView;
use health_core::{NodeRecord, Phase, Timestamp};
use node_agent_proto::RequireBearer;
use node_agent_proto::v1::agent_admin_server::{AgentAdmin, AgentAdminServer};
use node_agent_proto::v1::{
    AgentStatus, FailingCheck, GetNodeRequest, GetStatusRequest, ListNodesRequest, ListNodesResponse, NodeStatus,
    PauseRequest, PauseState as WirePause, ResumeRequest,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::AgentState;
use super::pause::PauseState;

/// The admin service over `state`, requiring `auth`'s token.
#[must_use]
pub fn service(
    state: Arc<AgentState>,
    auth: RequireBearer,
) -> InterceptedService<AgentAdminServer<Admin>, RequireBearer> {
    // Node lists of big clusters exceed tonic's 4 MiB default.
    let server = AgentAdminServer::new(Admin(state)).max_encoding_message_size(64 << 20);
    InterceptedService::new(server, auth)
}

/// The `AgentAdmin` implementation.
#[derive(Clone, Debug)]
pub struct Admin(Arc<AgentState>);

fn ts(t: Option<Timestamp>) -> Option<node_agent_proto::Timestamp> {
    t.map(|t| super::timestamp(t.to_system_time()))
}

fn wire_pause(p: &PauseState) -> WirePause {
    WirePause {
        paused: p.paused,
        reason: p.reason.clone(),
        since: (p.since > 0)
            .then(|| node_agent_proto::Timestamp { seconds: i64::try_from(p.since).unwrap_or(i64::MAX), nanos: 0 }),
    }
}

/// What the API says of one node.
#[must_use]
pub fn node_status(v: &NodeView<'_>) -> NodeStatus {
    let r: &NodeRecord = v.record;
    NodeStatus {
        name: v.name.to_owned(),
        class: r.class.as_str().to_owned(),
        phase: r.phase.as_str().to_owned(),
        phase_since: ts(r.last_transition_at),
        failing: r
            .failing
            .iter()
            .map(|f| FailingCheck {
                checker: f.checker.clone(),
                reason: f.reason.clone(),
                since: ts(f.since.or(r.unhealthy_since)),
            })
            .collect(),
        unhealthy_since: ts(r.unhealthy_since),
        reboots: r.reboot_count,
        replaces: r.replace_count,
        action_failures: r.action_failures,
        last_action: r.last_action.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        last_action_at: ts(r.last_action_at),
        held_back: v.hold.map(|h| h.as_str().to_owned()).unwrap_or_default(),
        action_running: v.running,
        not_before: ts(r.not_before),
    }
}

fn phase_filter(phase: &str) -> Result<Option<Phase>, Status> {
    if phase.is_empty() {
        return Ok(None);
    }
    Phase::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(phase)).map(Some).ok_or_else(|| {
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        Status::invalid_argument(format!("phase {phase:?}: expected one of {}", names.join(", ")))
    })
}

#[tonic::async_trait]
impl AgentAdmin for Admin {
    async fn get_status(&self, _: Request<GetStatusRequest>) -> Result<Response<AgentStatus>, Status> {
        let s = &self.0;
        let summary = s.engine_summary().await.unwrap_or_default();
        Ok(Response::new(AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_mode: s.mode.to_owned(),
            role: s.role().as_str().to_owned(),
            pause: Some(wire_pause(&s.pause_state())),
            nodes_per_phase: summary.per_phase.into_iter().collect(),
            storm_guard_engaged: summary.storm_guard,
            started_at: Some(super::timestamp(s.started_at)),
        }))
    }

    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let phase = phase_filter(&req.get_ref().phase)?;
        let nodes = self
            .0
            .inspect(move |e| {
                let mut out: BTreeMap<String, NodeStatus> = BTreeMap::new();
                for n in e.nodes().filter(|n| !n.departed && phase.is_none_or(|p| n.record.phase == p)) {
                    out.insert(n.name.to_owned(), node_status(&n));
                }
                out.into_values().collect::<Vec<_>>()
            })
            .await?;
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeStatus>, Status> {
        let name = req.into_inner().name;
        if name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        let lookup = name.clone();
        match self.0.inspect(move |e| e.node(&lookup).map(|n| node_status(&n))).await? {
            Some(n) => Ok(Response::new(n)),
            None => Err(Status::not_found(format!("node {name:?} is not known to this agent"))),
        }
    }

    async fn pause(&self, req: Request<PauseRequest>) -> Result<Response<WirePause>, Status> {
        let reason = req.into_inner().reason;
        let reason = if reason.trim().is_empty() { "paused by an operator".to_owned() } else { reason };
        if reason.len() > 1024 {
            return Err(Status::invalid_argument("reason: at most 1024 bytes"));
        }
        let state = self.0.set_pause(true, &reason).await?;
        Ok(Response::new(wire_pause(&state)))
    }

    async fn resume(&self, _: Request<ResumeRequest>) -> Result<Response<WirePause>, Status> {
        let state = self.0.set_pause(false, "").await?;
        Ok(Response::new(wire_pause(&state)))
    }
}
