//! Control-plane repair, black-box: the built `node-agent` against
//! cluster-sim whose API server goes down. The agent waits out the grace,
//! restarts k3s on the control-plane hosts one at a time in order until the
//! API answers, never touches a worker meanwhile, and then works as before.

mod common;

use cluster_sim::Fault;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_is_repaired_host_by_host_and_workers_are_left_alone() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("control-plane");
    let state = dir.join("control-plane.json");
    let config = format!(
        r#"{FAST_POLICY}
[control_plane]
enabled = true
hosts = ["cp-1", "cp-2", "cp-3"]
grace = "1s"
backoff = "5m"
host_wait = "1500ms"
probe_interval = "200ms"
state_file = "{state}"

[control_plane.repair]
kind = "http"
url = "{kube}/sim/v1/nodes/{{node}}/restart/k3s"
timeout = "5s"
"#,
        state = state.display(),
        kube = sim.kube_url(),
    );
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let mut agent = spawn(&sim, &dir, &config, &env).await;
    agent.wait_for("the first list", |v| message(v).starts_with("node list complete")).await;

    // The API server goes down; only restarting k3s on cp-2 brings it back.
    // A worker breaks meanwhile: nobody can see it until the API is back.
    let worker = sim.cluster().node_names()[0].clone();
    sim.cluster().api_outage("cp-2");
    sim.cluster().inject(&worker, Fault::NotReady).unwrap();
    agent.wait_for("the grace", |v| message(v).starts_with("the API server does not answer")).await;
    agent.wait_for("the repair of cp-1", |v| field(v, "host") == Some("cp-1")).await;
    agent.wait_for("the recovery", |v| message(v).starts_with("control-plane repair worked")).await;
    let restarts = sim.cluster().service_restarts();
    assert_eq!(
        restarts,
        [("cp-1".to_owned(), "k3s".to_owned()), ("cp-2".to_owned(), "k3s".to_owned())],
        "one host at a time, in order, stopping when the API answers"
    );
    assert_eq!(hard_reboots(&sim), 0, "no worker is touched while the API is down");
    assert!(
        agent.seen.iter().any(|v| message(v).starts_with("node watch failed")),
        "the watch saw the outage (the cache is stale: every worker action is held):\n{}",
        agent.dump()
    );
    let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let attempts: Vec<(String, bool)> = recorded["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["host"].as_str().unwrap().to_owned(), a["api_back"].as_bool().unwrap()))
        .collect();
    assert_eq!(attempts, [("cp-1".to_owned(), false), ("cp-2".to_owned(), true)]);

    // Back to normal: the broken worker is seen and rebooted.
    agent.action(&worker, "reboot").await;
    assert_eq!(hard_reboots(&sim), 1);
    let (_, metrics) = agent.get("/metrics").await;
    for line in [
        "civo_node_agent_control_plane_repairs_total{host=\"cp-1\",result=\"succeeded\"} 1",
        "civo_node_agent_control_plane_repairs_total{host=\"cp-2\",result=\"succeeded\"} 1",
        "civo_node_agent_api_server_reachable 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains("host=\"cp-3\""), "cp-3 was never touched");
    sim.shutdown().await;
}
