//! `node-agent status`, `pause` and `resume`: the admin API's client.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use node_agent_proto::v1::agent_admin_client::AgentAdminClient;
use node_agent_proto::v1::{
    AgentStatus, GetNodeRequest, GetStatusRequest, ListNodesRequest, NodeStatus, PauseRequest, PauseState,
    ResumeRequest,
};
use node_agent_proto::{Bearer, ClientSettings, Token};
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A connected admin client.
pub type AdminClient = AgentAdminClient<InterceptedService<Channel, Bearer>>;

/// Connects to the admin API at `addr` (`host:port` gets `http://`).
///
/// # Errors
/// A malformed address or an unreadable token file (named in the message).
pub fn connect(addr: &str, token_file: Option<&Path>) -> Result<AdminClient, String> {
    let endpoint = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let mut settings = ClientSettings::new(endpoint);
    settings.timeout = Duration::from_secs(15);
    if let Some(p) = token_file {
        settings.token = Some(Token::from_file(p).map_err(|e| format!("--token-file: {e}"))?);
    }
    let (channel, bearer) = settings.connect().map_err(|e| format!("--admin: {e}"))?;
    // A node list of 65,536 nodes is about 15 MiB.
    Ok(AgentAdminClient::with_interceptor(channel, bearer).max_decoding_message_size(64 << 20))
}

/// A gRPC error as an operator reads it.
#[must_use]
pub fn describe(addr: &str, s: &tonic::Status) -> String {
    match s.code() {
        tonic::Code::Unavailable if s.message().contains("connect") || s.message().contains("transport") => {
            format!(
                "no agent answers at {addr} (is it running with [admin] enabled, on this address?): {}",
                s.message()
            )
        }
        tonic::Code::Unauthenticated => {
            format!("{addr} refused the call: {} (pass --token-file, or set admin.token_file)", s.message())
        }
        code => format!("{addr}: {code:?}: {}", s.message()),
    }
}

fn when(t: Option<&node_agent_proto::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0));
    match SystemTime::now().duration_since(at) {
        Ok(d) => format!("{} ago", humantime::format_duration(Duration::from_secs(d.as_secs()))),
        Err(e) => format!("in {}", humantime::format_duration(Duration::from_secs(e.duration().as_secs()))),
    }
}

fn pause_line(p: Option<&PauseState>) -> String {
    match p {
        Some(p) if p.paused => format!("PAUSED since {}: {}", when(p.since.as_ref()), p.reason),
        _ => "not paused".into(),
    }
}

/// The agent line and a node table.
#[must_use]
pub fn table(status: &AgentStatus, nodes: &[NodeStatus]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node-agent {} ({}, {}), started {}; remediation {}{}",
        status.version,
        status.agent_mode,
        status.role,
        when(status.started_at.as_ref()),
        pause_line(status.pause.as_ref()),
        if status.storm_guard_engaged { "; STORM GUARD ENGAGED" } else { "" }
    );
    let counts: Vec<String> = status.nodes_per_phase.iter().map(|(p, n)| format!("{p}={n}")).collect();
    if !counts.is_empty() {
        let _ = writeln!(out, "nodes: {}", counts.join(" "));
    }
    if nodes.is_empty() {
        return out;
    }
    let rows: Vec<[String; 7]> = nodes
        .iter()
        .map(|n| {
            let failing: Vec<String> = n.failing.iter().map(|f| format!("{}:{}", f.checker, f.reason)).collect();
            let last = if n.last_action.is_empty() {
                "-".to_owned()
            } else {
                format!("{} {}", n.last_action, when(n.last_action_at.as_ref()))
            };
            [
                n.name.clone(),
                n.class.clone(),
                n.phase.clone(),
                if failing.is_empty() { "-".into() } else { failing.join(",") },
                format!("{}/{}/{}", n.reboots, n.replaces, n.action_failures),
                last,
                if n.held_back.is_empty() { "-".into() } else { n.held_back.clone() },
            ]
        })
        .collect();
    let header = ["NODE", "CLASS", "PHASE", "FAILING", "REBOOTS/REPLACES/FAILURES", "LAST ACTION", "HELD BACK"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{c:<w$}  ", w = widths[i]);
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&header.map(str::to_owned));
    for r in &rows {
        line(r);
    }
    out
}

/// A node as JSON.
#[must_use]
pub fn node_json(n: &NodeStatus) -> serde_json::Value {
    let t = |t: Option<&node_agent_proto::Timestamp>| t.map(|t| t.seconds);
    json!({
        "name": n.name, "class": n.class, "phase": n.phase, "phase_since": t(n.phase_since.as_ref()),
        "failing": n.failing.iter().map(|f| json!({"checker": f.checker, "reason": f.reason, "since": t(f.since.as_ref())})).collect::<Vec<_>>(),
        "unhealthy_since": t(n.unhealthy_since.as_ref()), "reboots": n.reboots, "replaces": n.replaces,
        "action_failures": n.action_failures, "last_action": n.last_action, "last_action_at": t(n.last_action_at.as_ref()),
        "held_back": n.held_back, "action_running": n.action_running, "not_before": t(n.not_before.as_ref()),
    })
}

/// The agent as JSON.
#[must_use]
pub fn status_json(s: &AgentStatus, nodes: &[NodeStatus]) -> serde_json::Value {
    let p = s.pause.clone().unwrap_or_default();
    json!({
        "version": s.version, "mode": s.agent_mode, "role": s.role,
        "pause": {"paused": p.paused, "reason": p.reason, "since": p.since.map(|t| t.seconds)},
        "nodes_per_phase": s.nodes_per_phase.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "storm_guard_engaged": s.storm_guard_engaged, "started_at": s.started_at.map(|t| t.seconds),
        "nodes": nodes.iter().map(node_json).collect::<Vec<_>>(),
    })
}

/// `node-agent status`: prints the agent and its nodes.
///
/// # Errors
/// The agent cannot be reached or refused (the message says why).
pub async fn status(
    addr: &str,
    token_file: Option<&Path>,
    node: Option<&str>,
    phase: Option<&str>,
    as_json: bool,
) -> Result<String, String> {
    let mut c = connect(addr, token_file)?;
    let s = c.get_status(GetStatusRequest {}).await.map_err(|e| describe(addr, &e))?.into_inner();
    let standby = s.role == "standby";
    let nodes = if standby {
        Vec::new()
    } else if let Some(name) = node {
        vec![c.get_node(GetNodeRequest { name: name.to_owned() }).await.map_err(|e| describe(addr, &e))?.into_inner()]
    } else {
        let req = ListNodesRequest { phase: phase.unwrap_or_default().to_owned() };
        c.list_nodes(req).await.map_err(|e| describe(addr, &e))?.into_inner().nodes
    };
    if as_json {
        return Ok(serde_json::to_string_pretty(&status_json(&s, &nodes)).unwrap_or_default());
    }
    let mut out = table(&s, &nodes);
    if standby {
        out.push_str(
            "this replica is a standby: it keeps no node state; ask the leader (the holder of the HA Lease)\n",
        );
    }
    Ok(out)
}

/// `node-agent pause` / `resume`: prints the new pause state.
///
/// # Errors
/// The agent cannot be reached, refused, or could not store the change.
pub async fn set_pause(addr: &str, token_file: Option<&Path>, pause: Option<&str>) -> Result<String, String> {
    let mut c = connect(addr, token_file)?;
    let p = match pause {
        Some(reason) => c.pause(PauseRequest { reason: reason.to_owned() }).await,
        None => c.resume(ResumeRequest {}).await,
    }
    .map_err(|e| describe(addr, &e))?
    .into_inner();
    Ok(format!("remediation {}\n", pause_line(Some(&p))))
}
