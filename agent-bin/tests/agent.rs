//! Black-box tests: the built `node-agent` against cluster-sim, one per
//! behaviour of the Civo agent's test plan, plus the safety cases.

mod common;

use std::time::Duration;

use cluster_sim::{CivoFault, ClusterConfig, Fault, RebootBehaviour, SimServer};
use common::*;

fn unfixable(sim: &cluster_sim::SimServer, node: &str) {
    sim.cluster().set_reboot(node, RebootBehaviour::new(false, Duration::from_millis(300)));
}

fn gpu_node(sim: &cluster_sim::SimServer) -> String {
    sim.cluster().instances().into_iter().find(|i| i.gpus > 0).unwrap().hostname
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_only_counts_and_logs_but_never_calls_civo() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("monitor");
    let node = sim.cluster().node_names()[0].clone();
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &civo_env(&sim)).await;
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    agent.transition(&node, "WaitingReboot").await;
    let first = agent.action(&node, "reboot").await;
    assert_eq!(field(&first, "mode"), Some("monitor"));
    // The identical lifecycle: retries, then Failed, all recorded only.
    agent.transition(&node, "Failed").await;
    assert_eq!(hard_reboots(&sim), 0, "monitor-only must not call Civo");
    let (_, metrics) = agent.get("/metrics").await;
    let line =
        format!("civo_node_agent_recovery_actions_total{{node=\"{node}\",action=\"reboot\",mode=\"monitor\"}} 2");
    assert!(metrics.contains(&line), "{metrics}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_mode_reboots_once_per_wait_then_gpu_nodes_fail() {
    let sim = sim(2, 1, 1).await;
    let dir = scratch("active-gpu");
    let gpu = gpu_node(&sim);
    unfixable(&sim, &gpu);
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &env).await;
    sim.cluster().inject(&gpu, Fault::GpuLost).unwrap();
    let started = tokio::time::Instant::now();
    agent.action(&gpu, "reboot").await;
    assert_eq!(hard_reboots(&sim), 1, "exactly one hard_reboots call per reboot");
    agent.action(&gpu, "reboot").await;
    assert!(started.elapsed() >= Duration::from_secs(2), "the second reboot waited the reboot wait");
    agent.transition(&gpu, "Failed").await;
    assert_eq!(hard_reboots(&sim), 2, "max_reboot_retries = 2");
    assert_eq!(pool_deletes(&sim), 0, "GPU nodes are never replaced");
    // A Failed node recovers when its checks pass.
    sim.cluster().heal(&gpu).unwrap();
    agent.transition(&gpu, "Healthy").await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_nodes_are_drained_and_replaced_when_enabled() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("replace");
    let node = sim.cluster().node_names()[1].clone();
    unfixable(&sim, &node);
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    env.push(("NODE_AGENT_POLICY__ESCALATION__REPLACE".into(), "true".into()));
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &env).await;
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    agent.transition(&node, "Draining").await;
    assert_eq!(hard_reboots(&sim), 2);
    let drain = agent.action(&node, "drain").await;
    assert_eq!(message(&drain), "action", "the drain succeeded: {drain}");
    assert_eq!(pool_deletes(&sim), 0, "no replacement before the drain finished");
    agent.action(&node, "replace").await;
    assert_eq!(pool_deletes(&sim), 1, "one pool delete");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn civo_api_failures_past_the_limit_send_the_node_to_failed() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("civo-fail");
    let node = sim.cluster().node_names()[2].clone();
    sim.cluster().civo_fail_next(CivoFault {
        skip: 0,
        status: 500,
        delay: Duration::ZERO,
        calls: 1000,
        retry_after: None,
    });
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &env).await;
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    for _ in 0..4 {
        let a = agent.action(&node, "reboot").await;
        assert_eq!(message(&a), "action failed", "{a}");
    }
    agent.transition(&node, "Failed").await;
    let (_, metrics) = agent.get("/metrics").await;
    let line = format!("civo_node_agent_recovery_failures_total{{node=\"{node}\",action=\"reboot\"}} 4");
    assert!(metrics.contains(&line), "{metrics}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_not_ready_nodes_reboots_nothing() {
    let sim = sim(5, 0, 1).await;
    let dir = scratch("storm");
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &env).await;
    let names = sim.cluster().node_names();
    for n in &names {
        sim.cluster().inject(n, Fault::NotReady).unwrap();
    }
    let storm = agent.wait_for("the storm guard", |v| message(v).starts_with("storm guard engaged")).await;
    assert_eq!(storm["fields"]["unhealthy"], 5, "{storm}");
    // Past every threshold: every node's reboot is held, none is issued.
    let held = std::cell::RefCell::new(std::collections::BTreeSet::new());
    agent
        .wait_for("a StormGuard hold of every node", |v| {
            if message(v) == "action held back" && field(v, "gate") == Some("StormGuard") {
                held.borrow_mut().insert(field(v, "node").unwrap_or("").to_owned());
            }
            held.borrow().len() == names.len()
        })
        .await;
    let (_, metrics) = agent.get("/metrics").await;
    assert!(metrics.contains("civo_node_agent_storm_guard_active 1"), "{metrics}");
    assert_eq!(hard_reboots(&sim), 0);
    let events = sim.cluster().events();
    assert!(events.iter().any(|e| e.to_string().contains("storm guard")), "an Event says why: {events:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_waiting_reboot_does_not_reboot_again_early() {
    let etcd = etcd("kill9").await;
    for backend in ["file", "kubernetes", "etcd"] {
        let sim = sim(3, 0, 1).await;
        let dir = scratch(&format!("kill9-{backend}"));
        let node = sim.cluster().node_names()[0].clone();
        unfixable(&sim, &node);
        let store = match backend {
            "etcd" => {
                format!("backend = \"etcd\"\n\n[store.etcd]\nendpoints = [\"{}\"]\nprefix = \"/kill9/\"", etcd.endpoint)
            }
            _ => format!("backend = \"{backend}\"\npath = \"{}\"", dir.join("state.json").display()),
        };
        let config = FAST_POLICY
            .replace("backend = \"memory\"", &store)
            .replace("reboot_wait = \"2s\"", "reboot_wait = \"6s\"")
            .replace("max_reboot_retries = 2", "max_reboot_retries = 5");
        let mut env = civo_env(&sim);
        env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
        let mut agent = spawn(&sim, &dir, &config, &env).await;
        sim.cluster().inject(&node, Fault::NotReady).unwrap();
        agent.action(&node, "reboot").await;
        let first = tokio::time::Instant::now();
        agent.kill9().await;
        let mut agent = spawn(&sim, &dir, &config, &env).await;
        let restored = agent.wait_for("restore", |v| message(v) == "state restored").await;
        // Only the rebooted node has a record: the two others have only
        // ever been healthy, and such nodes are not written.
        assert_eq!(restored["fields"]["records"], 1, "{backend}: {restored}");
        agent.action(&node, "reboot").await;
        assert!(
            first.elapsed() >= Duration::from_secs(5),
            "{backend}: second reboot {:?} after the first (wait 6s)",
            first.elapsed()
        );
        assert_eq!(hard_reboots(&sim), 2, "{backend}");
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_hold_the_civo_series() {
    let sim = sim(2, 1, 1).await;
    let dir = scratch("promtool");
    let node = sim.cluster().node_names()[0].clone();
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &civo_env(&sim)).await;
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    agent.action(&node, "reboot").await;
    let (code, metrics) = agent.get("/metrics").await;
    assert_eq!(code, 200);
    for series in [
        "civo_node_agent_info{",
        "civo_node_agent_health_check_total{node=",
        "civo_node_agent_recovery_actions_total{node=",
        "# TYPE civo_node_agent_recovery_failures_total counter",
        "# TYPE civo_node_agent_reconcile_errors_total counter",
        "civo_node_agent_node_unhealthy_duration_seconds{node=",
        "civo_node_agent_recovery_phase{node=",
    ] {
        assert!(metrics.contains(series), "missing {series}:\n{metrics}");
    }
    assert!(metrics.contains(",result=\"fail\"}"));
    assert!(metrics.contains(&format!("{{node=\"{node}\",phase=\"WaitingReboot\"}} 1")), "{metrics}");
    if std::process::Command::new("promtool").arg("--version").output().is_ok() {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        println!("skipping promtool: not installed (Debian package prometheus)");
    }
    let (code, ready) = agent.get("/readyz").await;
    assert_eq!(code, 200, "{ready}");
    let (code, watch) = agent.get("/components/kube-watch").await;
    assert_eq!(code, 200, "{watch}");
    assert!(watch.contains("\"synced\":\"true\""), "{watch}");
    assert_eq!(agent.get("/components/nope").await.0, 404);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_node_loses_its_series_and_a_steady_one_keeps_them() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("series");
    let names = sim.cluster().node_names();
    // Departed nodes' records and series go at once (default: after 30m).
    let mut env = civo_env(&sim);
    env.push(("NODE_AGENT_ENGINE__FORGET_AFTER".into(), "0s".into()));
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &env).await;
    agent.wait_for("the first list", |v| message(v).starts_with("node list complete")).await;
    let (_, before) = agent.get("/metrics").await;
    assert!(before.contains(&format!("node=\"{}\"", names[0])));
    sim.cluster().inject(&names[1], Fault::NotReady).unwrap();
    agent.transition(&names[1], "Unhealthy").await;
    let gone = names[0].clone();
    let api = format!("{}/api/v1/nodes/{gone}", sim.kube_url());
    recovery_exec::install_crypto_provider();
    let r = reqwest::Client::new().delete(api).send().await.unwrap();
    assert!(r.status().is_success());
    sim.cluster().inject(&names[2], Fault::NotReady).unwrap();
    agent.transition(&names[2], "Unhealthy").await;
    let (_, after) = agent.get("/metrics").await;
    assert!(!after.contains(&format!("node=\"{gone}\"")), "departed node's series remain:\n{after}");
    assert!(after.contains(&format!("node=\"{}\"", names[1])), "{after}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_ids_select_the_right_nodes() {
    let sim = sim(6, 0, 3).await;
    let dir = scratch("pools");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let pools: Vec<String> = (0..3).map(cluster_sim::pool_id).collect();
    let cases =
        [(String::new(), 6), (pools[0].clone(), 2), (pools.join(","), 6), (format!("{},{}", pools[1], pools[2]), 4)];
    for (ids, want) in cases {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
            .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "check", "--json"])
            .env_clear()
            .env("CIVO_NODE_POOL_IDS", &ids)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut nodes: Vec<&str> = rows.iter().map(|r| r["node"].as_str().unwrap()).collect();
        nodes.dedup();
        assert_eq!(nodes.len(), want, "CIVO_NODE_POOL_IDS={ids:?}");
        assert!(rows.iter().all(|r| r["result"] == "pass" || r["result"] == "skip"), "{rows:?}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_does_one_pass_and_exits_zero() {
    let sim = sim(2, 0, 1).await;
    let dir = scratch("once");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "--log-format", "json", "run", "--once"])
        .env_clear()
        .env("NODE_AGENT_AGENT__METRICS_PORT", "0")
        .env("NODE_AGENT_STORE__BACKEND", "memory")
        .output()
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("node list complete"), "{log}");
    sim.shutdown().await;
}

#[test]
fn validate_config_names_the_field_of_each_broken_input() {
    let dir = scratch("validate");
    let file = dir.join("bad.toml");
    /// (environment, config file, what the error must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: &[Case<'_>] = &[
        (&[("NODE_AGENT_POLICY__REBOOT_WAIT", "10 minutes-ish")], None, "reboot_wait"),
        (&[("NODE_AGENT_POLICY__NOPE", "1")], None, "nope"),
        (&[("CIVO_NODE_MAX_REBOOT_RETRIES", "-3")], None, "CIVO_NODE_MAX_REBOOT_RETRIES"),
        (&[("NODE_AGENT_POLICY__GATES__MAX_UNHEALTHY", "150%")], None, "max_unhealthy"),
        (&[("CIVO_NODE_AGENT_MONITOR_ONLY", "maybe")], None, "CIVO_NODE_AGENT_MONITOR_ONLY"),
        (&[("CIVO_NODE_AGENT_METRICS_PORT", "70000")], None, "CIVO_NODE_AGENT_METRICS_PORT"),
        (&[("CIVO_NODE_AGENT_MONITOR_ONLY", "false"), ("CIVO_API_KEY", "")], None, "CIVO_API_KEY"),
        (&[("CIVO_NODE_REBOOT_WAIT_MINUTES", "0")], None, "CIVO_NODE_REBOOT_WAIT_MINUTES"),
        (&[("CIVO_GPU_NODE_REBOOT_WAIT_MINUTES", "forty")], None, "CIVO_GPU_NODE_REBOOT_WAIT_MINUTES"),
        (&[("CIVO_API_URL", "ftp://api.civo.com")], None, "CIVO_API_URL"),
        (&[("CIVO_NODE_POOL_IDS", "a b")], None, "CIVO_NODE_POOL_IDS"),
        (&[], Some("[policy]\nmax_reboot_failures = 50\n"), "max_reboot_failures"),
        (&[], Some("[polcy]\nreboot_wait = \"5m\"\n"), "polcy"),
        (&[], Some("[[checkers]]\nkind = \"node-ready\"\nthreshold = \"soon\"\n"), "threshold"),
        (&[], Some("[kube]\ncall_timeout = \"0s\"\n"), "kube.call_timeout"),
        (&[], Some("not toml ["), "bad.toml"),
        (&[], Some("[admin]\ntoken_file = \"/nonexistent/admin-token\"\n"), "admin.token_file"),
        (&[], Some("[admin]\nlisten = \"0.0.0.0:9626\"\n"), "admin.token_file"),
        (&[], Some("[heartbeat]\nendpoint = \"grpc://fleet:443\"\n"), "heartbeat.endpoint"),
        (&[], Some("[ha]\nlease_name = \"Node_Agent\"\n"), "ha.lease_name"),
        (&[], Some("[[addons]]\nkind = \"StatefulSet\"\nnamespace = \"x\"\nname = \"y\"\n"), "kind"),
        (
            &[],
            Some("[[windows]]\naction = \"allow\"\nstart = \"01:00\"\nend = \"05:00\"\ntime_zone = \"Europe/Londn\"\n"),
            "windows[0].time_zone",
        ),
        (&[], Some("[[windows]]\naction = \"allow\"\nstart = \"1am\"\nend = \"05:00\"\n"), "windows[0].start"),
        (&[], Some("[store]\nbackend = \"etcd\"\n"), "store.etcd.endpoints"),
        (
            &[],
            Some("[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"https://10.0.0.5:2379\"]\n"),
            "store.etcd.ca_file",
        ),
        (
            &[],
            Some("[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"10.0.0.5:2379\"]\n"),
            "store.etcd.endpoints",
        ),
    ];
    for (env, toml, needle) in cases {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"));
        cmd.env_clear().envs(env.iter().copied());
        if let Some(t) = toml {
            std::fs::write(&file, t).unwrap();
            cmd.arg("--config").arg(&file);
        }
        let out = cmd.arg("validate-config").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?} {toml:?}: {err}");
        assert!(err.contains(needle), "{env:?} {toml:?}: {needle} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .env_clear()
        .env("CIVO_API_KEY", "very-secret-key")
        .arg("validate-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("very-secret-key") && text.contains("<redacted>"), "{text}");
    // A Service named node-agent in the pod's namespace: Kubernetes' service
    // links are not settings.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .env_clear()
        .env("NODE_AGENT_SERVICE_HOST", "10.43.0.12")
        .env("NODE_AGENT_PORT", "tcp://10.43.0.12:9625")
        .env("NODE_AGENT_PORT_9625_TCP_ADDR", "10.43.0.12")
        .arg("validate-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64), "usage errors exit 64");
}

#[test]
fn the_annotated_example_configs_are_valid() {
    for name in ["config.toml", "ladder.toml"] {
        let file = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
            .args(["--config", &file, "validate-config"])
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        if name == "ladder.toml" {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("\"restart-kube-proxy\"") && text.contains("verify_for: 120s"), "{text}");
        }
    }
}

#[test]
fn simulate_runs_the_built_in_scenario_and_reports_json() {
    let started = std::time::Instant::now();
    let dir = scratch("simulate-record");
    let tape = dir.join("sim.tape");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["simulate", "--json", "--record"])
        .arg(&tape)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The recording replays to exactly the decisions the agent took.
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(["replay", "--json"])
        .arg(&tape)
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let r: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(r["policy"], "recorded");
    let decisions = r["decisions"].as_array().unwrap();
    let recorded: Vec<serde_json::Value> = std::fs::read_to_string(&tape)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| ["action", "hold", "phase"].contains(&v["k"].as_str().unwrap_or("")))
        .collect();
    assert!(recorded.len() > 10, "{r}");
    assert_eq!(decisions, &recorded, "{r}");
    assert_eq!(r["identical_to_recording"], true, "{r}");
    let reboots =
        recorded.iter().filter(|d| d["k"] == "action" && d["a"] == "reboot" && d.get("err").is_none()).count() as u64;
    assert_eq!(reboots, s["totals"]["reboots"].as_u64().unwrap(), "every reboot recorded: {r}");
    let nodes = s["nodes"].as_array().unwrap();
    assert!(nodes.len() >= 12, "{s}");
    for key in ["name", "class", "phase", "repairs", "reboots", "replaces", "failures"] {
        assert!(nodes.iter().all(|n| n.get(key).is_some()), "{key}: {s}");
    }
    assert_eq!(nodes.iter().filter(|n| n["class"] == "gpu").count(), 3, "{s}");
    assert_eq!(s["storm_guard_engaged"], true, "the control-plane blip engages the storm guard: {s}");
    // Every reboot the agent counted reached the Civo API exactly once
    // (failed reboots reached it too).
    // The stopped kubelet and the crashed Cilium agent are fixed by their
    // soft rungs, and the unfixable node tries the kubelet restart first.
    assert!(s["totals"]["repairs"].as_u64().unwrap() >= 3, "{s}");
    let reboots = s["totals"]["reboots"].as_u64().unwrap();
    assert!(reboots >= 5, "{s}");
    assert!(s["civo_calls"]["hard_reboots"].as_u64().unwrap() >= reboots, "{s}");
    assert_eq!(s["civo_calls"]["pool_deletes"], s["totals"]["replaces"], "{s}");
    // The fault no reboot fixes ends in a replacement, unless the Civo
    // outage happened to hit that node's reboots (which node the outage
    // meets depends on scheduling): then its failures delay the escalation
    // past the demo's 50 s, and it must still be under remediation.
    // (The unfixable node is rebooted most: every reboot fails to cure it.)
    let unfixable = nodes.iter().max_by_key(|n| n["reboots"].as_u64().unwrap_or(0)).expect("nodes");
    let delayed = unfixable["failures"].as_u64().unwrap_or(0) >= 1
        && ["Unhealthy", "WaitingReboot", "Draining", "WaitingReplace"]
            .contains(&unfixable["phase"].as_str().unwrap_or(""));
    assert!(s["totals"]["replaces"] == 1 || delayed, "the fault no reboot fixes ends in a replacement: {s}");
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outage_holds_every_action_until_the_cache_is_synced_again() {
    let first = sim(3, 0, 1).await;
    let cluster = first.cluster().clone();
    let port = |url: String| url.rsplit(':').next().unwrap().trim_end_matches('/').parse::<u16>().unwrap();
    let (kube_port, civo_port) = (port(first.kube_url()), port(first.civo_url()));
    let dir = scratch("outage");
    let node = cluster.node_names()[0].clone();
    let mut env = civo_env(&first);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let config = FAST_POLICY.replacen("threshold = \"1s\"", "threshold = \"3s\"", 1);
    let mut agent = spawn(&first, &dir, &config, &env).await;
    agent.wait_for("the first list", |v| message(v).starts_with("node list complete")).await;
    cluster.inject(&node, Fault::NotReady).unwrap();
    agent.transition(&node, "Unhealthy").await;
    // The API server goes away before the 3s threshold expires; when it
    // does, the agent must hold the reboot: it cannot trust what it sees.
    first.shutdown().await;
    agent.wait_for("the watch failure", |v| message(v).starts_with("node watch failed")).await;
    let n = node.clone();
    agent
        .wait_for("a SourceStale hold", move |v| {
            message(v) == "action held back" && field(v, "node") == Some(&n) && field(v, "gate") == Some("SourceStale")
        })
        .await;
    let back =
        cluster_sim::SimServer::serve_cluster(cluster.clone(), cluster_sim::Ports { kube: kube_port, civo: civo_port })
            .await
            .unwrap();
    // A fresh, complete list comes first; only then the reboot.
    agent.wait_for("a fresh list", |v| message(v).starts_with("node list complete")).await;
    let reboot = agent.action(&node, "reboot").await;
    assert_eq!(message(&reboot), "action", "{reboot}");
    let lists: Vec<usize> = agent
        .seen
        .iter()
        .enumerate()
        .filter(|(_, v)| message(v).starts_with("node list complete"))
        .map(|(i, _)| i)
        .collect();
    assert!(lists.len() >= 2, "{}", agent.dump());
    let stale_actions = agent.seen[..lists[lists.len() - 1]].iter().filter(|v| message(v) == "action").count();
    assert_eq!(stale_actions, 0, "no action while the cache was stale:\n{}", agent.dump());
    assert_eq!(hard_reboots(&back), 1);
    back.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_a_killed_leader_is_replaced_without_an_early_reboot() {
    let sim = sim(3, 0, 1).await;
    let (da, db) = (scratch("ha-a"), scratch("ha-b"));
    let node = sim.cluster().node_names()[0].clone();
    unfixable(&sim, &node);
    let config = FAST_POLICY
        .replace("backend = \"memory\"", "backend = \"kubernetes\"")
        .replace("[kube]\n", "[kube]\ncall_timeout = \"1s\"\n")
        .replace("reboot_wait = \"2s\"", "reboot_wait = \"8s\"")
        .replace("max_reboot_retries = 2", "max_reboot_retries = 5")
        + "\n[ha]\nenabled = true\nnamespace = \"default\"\nlease_duration = \"3s\"\n";
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let mut a = spawn(&sim, &da, &config, &env).await;
    a.wait_for("a leads", |v| message(v).starts_with("leadership acquired")).await;
    let mut b = spawn(&sim, &db, &config, &env).await;
    b.wait_for("b stands by", |v| message(v).starts_with("standby: another replica leads")).await;
    let (code, body) = b.get("/readyz").await;
    assert_eq!(code, 200, "a standby is ready: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["standby"], true, "{body}");

    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    a.action(&node, "reboot").await;
    let first = tokio::time::Instant::now();
    assert_eq!(hard_reboots(&sim), 1);
    a.kill9().await;
    let killed = tokio::time::Instant::now();
    b.wait_for("b takes over", |v| message(v).starts_with("leadership acquired")).await;
    let took = killed.elapsed();
    eprintln!("takeover {took:?} after the leader was killed (lease 3s)");
    assert!(took <= Duration::from_secs(3) + Duration::from_secs(2), "took over after {took:?} (lease 3s)");
    // The new leader reads the shared record: the next reboot only after the wait.
    b.action(&node, "reboot").await;
    assert!(first.elapsed() >= Duration::from_secs(7), "second reboot {:?} after the first (wait 8s)", first.elapsed());
    assert_eq!(hard_reboots(&sim), 2);
    sim.shutdown().await;
}

/// The `timestamp` of a log line, in RFC 3339.
fn at(v: &serde_json::Value) -> String {
    v["timestamp"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_takes_over() {
    let sim = sim(3, 0, 1).await;
    let (da, db) = (scratch("ha-cut-a"), scratch("ha-cut-b"));
    let config = FAST_POLICY
        .replace("backend = \"memory\"", "backend = \"kubernetes\"")
        .replace("[kube]\n", "[kube]\ncall_timeout = \"1s\"\n")
        + "\n[ha]\nenabled = true\nnamespace = \"default\"\nlease_duration = \"3s\"\n";
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let target = sim.kube_url().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let proxy = Proxy::start(target).await;
    let mut a = spawn_via(&sim, &da, &config, &env, &proxy.url).await;
    a.wait_for("a leads", |v| message(v).starts_with("leadership acquired")).await;
    let mut b = spawn(&sim, &db, &config, &env).await;
    b.wait_for("b stands by", |v| message(v).starts_with("standby: another replica leads")).await;

    // Partition the leader from the API server, with a node due for a reboot.
    proxy.cut(true);
    let node = sim.cluster().node_names()[0].clone();
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    let lost = a.wait_for("a gives up", |v| message(v).starts_with("leadership lost")).await;
    let took_over = b.wait_for("b takes over", |v| message(v).starts_with("leadership acquired")).await;
    assert!(
        at(&lost) < at(&took_over),
        "the old leader stopped at {} before the new one started at {}",
        at(&lost),
        at(&took_over)
    );
    // The new leader acts; the old one never did during the partition.
    let reboot = b.action(&node, "reboot").await;
    assert!(at(&reboot) > at(&lost));
    assert_eq!(hard_reboots(&sim), 1);
    let status = a.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(1), "the fenced leader exits 1 to be restarted as a standby");
    eprintln!("old leader stopped {}, new leader started {}, first reboot {}", at(&lost), at(&took_over), at(&reboot));
    sim.shutdown().await;
}

/// The kubelet-lease checker reads kube-node-lease through a watch folded
/// into a map: a lease that stops being renewed fails the node, a renewed
/// one heals it; renewals alone do not re-evaluate anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_kubelet_lease_fails_the_node_and_a_renewal_heals_it() {
    let sim = sim(3, 0, 1).await;
    let dir = scratch("lease");
    let node = sim.cluster().node_names()[2].clone();
    let config =
        format!("{FAST_POLICY}\n[[checkers]]\nkind = \"kubelet-lease\"\nthreshold = \"1s\"\nstale_after = \"30s\"\n");
    let mut agent = spawn(&sim, &dir, &config, &civo_env(&sim)).await;
    agent.wait_for("the lease list", |v| message(v) == "kubelet lease list complete").await;
    sim.cluster().inject(&node, Fault::LeaseStale).unwrap();
    let unhealthy = agent.transition(&node, "Unhealthy").await;
    assert!(field(&unhealthy, "detail").is_some_and(|d| d.contains("KubeletLease (LeaseStale)")), "{unhealthy}");
    sim.cluster().heal(&node).unwrap();
    agent.transition(&node, "Healthy").await;
    let (_, body) = agent.get("/components/kube-lease-watch").await;
    assert!(body.contains("healthy") && body.contains("3 leases"), "{body}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_outage_is_held_while_a_node_in_a_healthy_zone_is_repaired() {
    // 30 nodes in 6 pools, one pool per zone (lon1-a .. lon1-f).
    let config = ClusterConfig {
        nodes: 30,
        pools: 6,
        zones: 6,
        reboot_takes: Duration::from_millis(300),
        ..ClusterConfig::default()
    };
    let sim = SimServer::start(config, cluster_sim::Ports::default()).await.expect("simulator starts");
    let zone_of = |n: &str| {
        sim.cluster().node(n).unwrap()["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str().unwrap().to_owned()
    };
    let names = sim.cluster().node_names();
    let zone_a: Vec<String> = names.iter().filter(|n| zone_of(n) == "lon1-a").cloned().collect();
    let elsewhere = names.iter().find(|n| zone_of(n) == "lon1-b").unwrap().clone();
    assert_eq!(zone_a.len(), 5);
    let dir = scratch("zone-outage");
    let mut env = civo_env(&sim);
    env.push(("CIVO_NODE_AGENT_MONITOR_ONLY".into(), "false".into()));
    let mut agent = spawn(&sim, &dir, FAST_POLICY, &env).await;
    for n in zone_a.iter().chain([&elsewhere]) {
        sim.cluster().inject(n, Fault::NotReady).unwrap();
    }
    let storm = agent
        .wait_for("the zone's storm", |v| {
            message(v).starts_with("failure domain topology.kubernetes.io/zone=lon1-a in storm")
        })
        .await;
    assert_eq!(
        (storm["fields"]["unhealthy"].as_u64(), storm["fields"]["total"].as_u64()),
        (Some(5), Some(5)),
        "{storm}"
    );
    // The node in the healthy zone is rebooted and recovers; every node of
    // the broken zone is held by its domain (6 of 30 is under the cluster's 20%).
    let held = std::cell::RefCell::new(std::collections::BTreeSet::new());
    agent
        .wait_for("a DomainStorm hold of every node of lon1-a", |v| {
            if message(v) == "action held back" && field(v, "gate") == Some("DomainStorm") {
                held.borrow_mut().insert(field(v, "node").unwrap_or("").to_owned());
            }
            held.borrow().len() == zone_a.len()
        })
        .await;
    assert_eq!(held.into_inner(), zone_a.iter().cloned().collect());
    agent.action(&elsewhere, "reboot").await;
    agent.transition(&elsewhere, "Healthy").await;
    let calls = sim.cluster().civo_calls();
    let rebooted: Vec<String> = calls.iter().map(|c| format!("{c:?}")).filter(|c| c.contains("hard_reboot")).collect();
    assert_eq!(hard_reboots(&sim), 1, "only the node in the healthy zone: {rebooted:?}");

    let (_, metrics) = agent.get("/metrics").await;
    for line in [
        "civo_node_agent_domain_storm_active{label=\"topology.kubernetes.io/zone\",domain=\"lon1-a\"} 1",
        "civo_node_agent_domain_unhealthy_nodes{label=\"topology.kubernetes.io/zone\",domain=\"lon1-a\"} 5",
        "civo_node_agent_domain_nodes{label=\"topology.kubernetes.io/zone\",domain=\"lon1-a\"} 5",
        "civo_node_agent_domain_storm_active{label=\"topology.kubernetes.io/zone\",domain=\"lon1-b\"} 0",
        "civo_node_agent_storm_guard_active 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let events = sim.cluster().events();
    for n in &zone_a {
        assert!(
            events.iter().any(|e| e["involvedObject"]["name"] == n.as_str()
                && e["reason"] == "RemediationHeld"
                && e["message"].as_str().is_some_and(
                    |m| m.contains("failure domain topology.kubernetes.io/zone=lon1-a has 5 of 5 nodes unhealthy")
                )),
            "an Event on {n} says why: {events:?}"
        );
    }
    sim.shutdown().await;
}
