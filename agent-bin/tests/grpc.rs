//! The agent's gRPC side, black-box: the built `node-agent` against
//! cluster-sim with real tonic peers on loopback. The admin API pauses
//! remediation (and the pause survives a restart), tokens are enforced,
//! heartbeats carry one snapshot and survive their endpoint going away,
//! grpc.health follows the HA role, and the remote executor reboots once
//! when its first answer is lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cluster_sim::{Fault, RebootBehaviour};
use common::*;
use node_agent_proto::v1::health_reporter_server::{HealthReporter, HealthReporterServer};
use node_agent_proto::v1::{ReportHealthRequest, ReportHealthResponse};
use parking_lot::Mutex;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn active(sim: &cluster_sim::SimServer) -> Vec<(String, String)> {
    let mut env = civo_env(sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    env
}

fn admin(agent: &Agent) -> String {
    agent.admin.expect("admin address logged").to_string()
}

/// A node held back by the pause gate.
fn held_paused(node: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |v| message(v) == "action held back" && field(v, "node") == Some(node) && field(v, "gate") == Some("Paused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_a_failing_node_and_survives_a_restart() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("grpc-pause");
    let node = sim.cluster().node_names()[0].clone();
    let config = FAST_POLICY.replace(
        "[store]\nbackend = \"memory\"",
        &format!("[store]\nbackend = \"file\"\npath = \"{}\"", dir.join("state.json").display()),
    );
    let mut agent = spawn(&sim, &dir, &config, &active(&sim)).await;
    let addr = admin(&agent);
    let (code, out, err) = cli(&["pause", "--reason", "change freeze CHG-42", "--admin", &addr]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PAUSED") && out.contains("CHG-42"), "{out}");
    agent.wait_for("the pause logged", |v| message(v) == "remediation paused by an operator").await;

    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    agent.wait_for("the node held with reason Paused", held_paused(&node)).await;
    assert_eq!(hard_reboots(&sim), 0, "paused: no reboot");
    let (code, out, err) = cli(&["status", "--admin", &addr, "--node", &node, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["pause"]["paused"], true, "{v}");
    assert_eq!(v["nodes"][0]["held_back"], "Paused", "{v}");
    assert_eq!(v["nodes"][0]["failing"][0]["checker"], "NodeReady", "{v}");
    let stored = std::fs::read_to_string(dir.join("pause.json")).expect("the pause is on disk");
    assert!(stored.contains("CHG-42"), "{stored}");

    // kill -9 and restart: still paused, before the first evaluation.
    agent.kill9().await;
    let mut agent = spawn(&sim, &dir, &config, &active(&sim)).await;
    let addr = admin(&agent);
    agent.wait_for("the restored pause", |v| message(v).starts_with("remediation is paused by an operator")).await;
    agent.wait_for("the node held again", held_paused(&node)).await;
    assert_eq!(hard_reboots(&sim), 0, "still paused after the restart");
    let (_, table, _) = cli(&["status", "--admin", &addr]).await;
    assert!(table.contains("PAUSED") && table.contains(&node) && table.contains("Paused"), "{table}");
    eprintln!("{table}");

    let (code, out, _) = cli(&["resume", "--admin", &addr]).await;
    assert_eq!((code, out.trim()), (0, "remediation not paused"));
    agent.action(&node, "reboot").await;
    assert_eq!(hard_reboots(&sim), 1, "resumed: the held reboot happens, once");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_are_enforced_and_a_remote_bind_needs_one() {
    let dir = scratch("grpc-token");
    let config = dir.join("remote.toml");
    std::fs::write(&config, "[admin]\nlisten = \"0.0.0.0:9626\"\n").unwrap();
    let (code, _, err) = cli(&["--config", config.to_str().unwrap(), "run"]).await;
    assert_eq!(code, 2, "a token-less remote bind is refused: {err}");
    assert!(err.contains("admin.listen") && err.contains("admin.token_file"), "{err}");

    let sim = sim(2, 0, 1).await;
    let token = dir.join("admin-token");
    std::fs::write(&token, "s3cr3t-admin-token\n").unwrap();
    let wrong = dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let cfg = FAST_POLICY.replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"", token.display()),
    );
    let agent = spawn(&sim, &dir, &cfg, &civo_env(&sim)).await;
    let addr = admin(&agent);
    let (code, _, err) = cli(&["status", "--admin", &addr]).await;
    assert_eq!(code, 1);
    assert!(err.contains("refused") && err.contains("--token-file"), "{err}");
    let (code, _, err) =
        cli(&["pause", "--reason", "x", "--admin", &addr, "--token-file", wrong.to_str().unwrap()]).await;
    assert_eq!(code, 1, "a wrong token is refused");
    assert!(err.contains("Unauthenticated") || err.contains("refused"), "{err}");
    let (code, out, err) = cli(&["status", "--admin", &addr, "--token-file", token.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("not paused"), "{out}");
    // With --admin, status works where the agent's own settings are incomplete
    // (active mode without a Civo key); without it, the error says so.
    let (code, _, err) = cli(&["--active", "status", "--admin", &addr, "--token-file", token.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["--active", "status"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("CIVO_API_KEY") && err.contains("--admin"), "{err}");
    let log = agent.dump();
    assert!(!log.contains("s3cr3t") && !log.contains("not-the-token"), "tokens never reach the log");
    sim.shutdown().await;
}

/// Records every heartbeat it receives.
#[derive(Clone, Default)]
struct Fleet(Arc<Mutex<Vec<ReportHealthRequest>>>, Arc<tokio::sync::Notify>);

#[tonic::async_trait]
impl HealthReporter for Fleet {
    async fn report_health(
        &self,
        req: tonic::Request<ReportHealthRequest>,
    ) -> Result<tonic::Response<ReportHealthResponse>, tonic::Status> {
        let auth = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        if auth != "Bearer fleet-token" {
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        self.0.lock().push(req.into_inner());
        self.1.notify_waiters();
        Ok(tonic::Response::new(ReportHealthResponse {}))
    }
}

/// Serves `fleet` on `listener` until the returned sender is dropped or fired.
fn serve_fleet(fleet: &Fleet, listener: tokio::net::TcpListener) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = HealthReporterServer::new(fleet.clone());
    tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(listener),
        async move {
            let _ = rx.await;
        },
    ));
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_one_snapshot_and_survive_the_endpoint_going_away() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("grpc-heartbeat");
    let fleet = Fleet::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = serve_fleet(&fleet, listener);
    let token = dir.join("fleet-token");
    std::fs::write(&token, "fleet-token").unwrap();
    // The Cilium agent is short of one pod: an add-on component says so.
    sim.cluster().set_workload_ready("DaemonSet", "kube-system", "cilium", 3, 2).unwrap();
    let addons = "\n[[addons]]\nkind = \"DaemonSet\"\nnamespace = \"kube-system\"\nname = \"cilium\"\n\n[[addons]]\nkind = \"Deployment\"\nnamespace = \"kube-system\"\nname = \"coredns\"\ncomponent = \"dns\"\n";
    let config = format!(
        "{FAST_POLICY}{addons}\n[heartbeat]\nendpoint = \"http://127.0.0.1:{port}\"\ninterval = \"1s\"\ntimeout = \"1s\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let mut env = civo_env(&sim);
    env.push(("RUST_LOG".into(), "info,agent_bin::grpc::heartbeat=debug".into()));
    let mut agent = spawn(&sim, &dir, &config, &env).await;

    // A report taken after the first complete list counts all three nodes.
    let logged = agent
        .wait_for("a heartbeat with three nodes", |v| {
            message(v) == "heartbeat"
                && field(v, "report").is_some_and(|r| r.contains("\"Healthy\": 3") && r.contains("2 of 3 ready"))
        })
        .await;
    let text = field(&logged, "report").unwrap().to_owned();
    let seq: u64 = text.split("sequence: ").nth(1).and_then(|t| t.split(',').next()).unwrap().parse().unwrap();
    let sent = loop {
        let found = fleet.0.lock().iter().find(|r| r.sequence == seq).cloned();
        if let Some(r) = found {
            break r;
        }
        tokio::time::timeout(WAIT, fleet.1.notified()).await.expect("the logged heartbeat arrives");
    };
    assert_eq!(format!("{sent:?}"), text, "the report logged is the report sent");
    let c = sim.cluster().config();
    assert_eq!(sent.cluster_id, c.cluster_id);
    assert_eq!(sent.agent_mode, "monitor-only");
    assert_eq!(sent.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(sent.role(), node_agent_proto::v1::Role::Single);
    assert_eq!(sent.nodes_per_phase.get("Healthy"), Some(&3));
    assert!(!sent.storm_guard.as_ref().unwrap().engaged);
    let names: Vec<&str> = sent.components.iter().map(|c| c.name.as_str()).collect();
    for want in ["engine", "grpc_reporter", "kube-watch", "state-store"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    assert!(sent.started_at.is_some() && sent.reported_at.is_some());
    let cilium = sent.components.iter().find(|c| c.name == "addon-cilium").expect("the add-on is a component");
    assert_eq!(cilium.status(), node_agent_proto::v1::ComponentStatus::Degraded, "{cilium:?}");
    assert_eq!((cilium.metadata["ready"].as_str(), cilium.metadata["desired"].as_str()), ("2", "3"));
    assert_eq!(cilium.message, "2 of 3 ready (1 not ready)");
    let (_, body) = agent.get("/components/dns").await;
    assert!(body.contains("healthy") && body.contains("2 of 2 ready"), "{body}");

    // The endpoint goes away: Degraded, with back-off; back: Healthy.
    drop(stop);
    agent.wait_for("a failed heartbeat", |v| message(v).starts_with("heartbeat failed")).await;
    let (_, body) = agent.get("/components/grpc_reporter").await;
    assert!(body.contains("degraded"), "{body}");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the same port again");
    let _stop = serve_fleet(&fleet, listener);
    agent.wait_for("heartbeats again", |v| message(v) == "heartbeats reach the endpoint again").await;
    let (_, body) = agent.get("/components/grpc_reporter").await;
    assert!(body.contains("healthy"), "{body}");
    let seqs: Vec<u64> = fleet.0.lock().iter().map(|r| r.sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequences increase: {seqs:?}");
    sim.shutdown().await;
}

async fn grpc_health(addr: &str) -> ServingStatus {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    r.into_inner().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_is_serving_on_the_leader_only_and_a_standby_sends_callers_to_it() {
    let sim = sim(2, 0, 1).await;
    let (da, db) = (scratch("grpc-ha-a"), scratch("grpc-ha-b"));
    let config = FAST_POLICY.replace("backend = \"memory\"", "backend = \"kubernetes\"")
        + "\n[ha]\nenabled = true\nnamespace = \"default\"\nlease_duration = \"3s\"\n";
    let mut a = spawn(&sim, &da, &config, &civo_env(&sim)).await;
    a.wait_for("a leads", |v| message(v).starts_with("leadership acquired")).await;
    let mut b = spawn(&sim, &db, &config, &civo_env(&sim)).await;
    b.wait_for("b stands by", |v| message(v).starts_with("standby: another replica leads")).await;
    assert_eq!(grpc_health(&admin(&a)).await, ServingStatus::Serving);
    assert_eq!(grpc_health(&admin(&b)).await, ServingStatus::NotServing);
    let (code, out, _) = cli(&["status", "--admin", &admin(&b)]).await;
    assert_eq!(code, 0);
    assert!(out.contains("standby") && out.contains("ask the leader"), "{out}");
    let (code, _, err) = cli(&["pause", "--reason", "x", "--admin", &admin(&b)]).await;
    assert_eq!(code, 1);
    assert!(err.contains("standby"), "{err}");

    // The pause on the leader is kept on a Lease: the next leader inherits it.
    let (code, _, err) = cli(&["pause", "--reason", "freeze", "--admin", &admin(&a)]).await;
    assert_eq!(code, 0, "{err}");
    a.kill9().await;
    b.wait_for("b takes over", |v| message(v).starts_with("leadership acquired")).await;
    b.wait_for("b is paused", |v| message(v).starts_with("remediation is paused by an operator")).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_executor_reboots_once_when_its_first_answer_is_lost() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("grpc-exec");
    let node = sim.cluster().node_names()[1].clone();
    sim.cluster().set_reboot(&node, RebootBehaviour::new(false, Duration::from_millis(300)));
    let cluster = sim.cluster().clone();
    let performed = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&performed);
    let server = examples::recovery_server::ReferenceServer::new(Arc::new(move |action, node: &str, _repair: &str| {
        seen.lock().push((action.as_str_name().to_owned(), node.to_owned()));
        cluster.heal(node).map_err(|e| e.to_string())?;
        Ok(format!("provisioner rebooted {node}"))
    }));
    server.lose_next_answers(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = dir.join("exec-token");
    std::fs::write(&token, "exec-token").unwrap();
    let auth = node_agent_proto::RequireBearer::new(Some(node_agent_proto::Token::new("exec-token").unwrap()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.service(auth))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let config = FAST_POLICY.replace(
        "[store]",
        &format!(
            "[executor]\nkind = \"grpc\"\nendpoint = \"http://127.0.0.1:{port}\"\ntoken_file = \"{}\"\ntimeout = \"1s\"\n\n[store]",
            token.display()
        ),
    );
    let mut env = active(&sim);
    env.retain(|(k, _)| k != "CIVO_API_KEY");
    let mut agent = spawn(&sim, &dir, &config, &env).await;
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    let done = agent.wait_for("the remote reboot", |v| message(v) == "remote executor performed the action").await;
    assert_eq!(done["fields"]["replayed"], true, "the retry got the first call's outcome: {done}");
    agent.action(&node, "reboot").await;
    agent.transition(&node, "Healthy").await;
    assert_eq!(*performed.lock(), vec![("ACTION_REBOOT".to_owned(), node.clone())], "rebooted exactly once");
    assert_eq!(server.calls(), 2, "the lost answer was retried once");
    assert_eq!(hard_reboots(&sim), 0, "Civo was not called");
    sim.shutdown().await;
}
