//! The real `kubectl` against the simulator (skipped, saying why, when kubectl is absent).

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use cluster_sim::{Fault, Kind, SimServer};
use common::{start, within};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

fn kubectl_available() -> bool {
    let found =
        std::process::Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success());
    if !found {
        println!("skipping: kubectl is not installed on this machine");
    }
    found
}

fn kubeconfig(sim: &SimServer, tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("cluster-sim-{}-{tag}.kubeconfig", std::process::id()));
    sim.write_kubeconfig(&path).unwrap();
    path
}

async fn kubectl(cfg: &PathBuf, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cfg)
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(cfg: &PathBuf, args: &[&str]) -> String {
    let (success, out, err) = kubectl(cfg, args).await;
    assert!(success, "kubectl {args:?} failed:\n{out}\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_nodes_pods_leases_and_events() {
    if !kubectl_available() {
        return;
    }
    let sim = start(3, 1).await;
    let cfg = kubeconfig(&sim, "read");
    let names = sim.cluster().node_names();

    let out = ok(&cfg, &["get", "nodes"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    for n in &names {
        assert!(out.lines().any(|l| l.starts_with(n.as_str()) && l.contains(" Ready ")), "{n} in\n{out}");
    }

    let out = ok(&cfg, &["get", "nodes", "-l", "nvidia.com/gpu.count", "-o", "name"]).await;
    let gpu: Vec<&str> = out.lines().collect();
    assert_eq!(gpu.len(), 1);
    assert!(gpu[0].contains("-gpu-"), "{out}");

    let out = ok(&cfg, &["get", "node", &names[0], "-o", "json"]).await;
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(node["metadata"]["name"], json!(names[0]));
    assert_eq!(node["kind"], "Node");

    let std_node = names.iter().find(|n| n.contains("-std-")).unwrap();
    let out = ok(&cfg, &["get", "pods", "-A", "--field-selector", &format!("spec.nodeName={std_node}")]).await;
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "one DaemonSet pod and two workload pods:\n{out}");
    assert!(out.lines().next().unwrap().starts_with("NAMESPACE"));

    let out = ok(&cfg, &["get", "leases", "-A"]).await;
    assert_eq!(out.lines().filter(|l| l.starts_with("kube-node-lease")).count(), 4, "{out}");

    sim.cluster()
        .create(
            Kind::Event,
            json!({
                "metadata": {"name": "node-agent.1", "namespace": "default"},
                "involvedObject": {"kind": "Node", "name": names[0]},
                "reason": "RebootRequested", "message": "NodeReady failing for 5m", "type": "Warning",
                "source": {"component": "node-agent"}
            }),
        )
        .unwrap();
    let out = ok(&cfg, &["get", "events", "-A"]).await;
    assert!(out.contains("RebootRequested") && out.contains("NodeReady failing for 5m"), "{out}");
    let _ = std::fs::remove_file(cfg);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_cordons_drains_and_uncordons() {
    if !kubectl_available() {
        return;
    }
    let sim = start(2, 0).await;
    let cfg = kubeconfig(&sim, "drain");
    let node = sim.cluster().node_names()[0].clone();

    let out = ok(&cfg, &["cordon", &node]).await;
    assert!(out.contains("cordoned"), "{out}");
    assert_eq!(sim.cluster().node(&node).unwrap()["spec"]["unschedulable"], json!(true));
    let out = ok(&cfg, &["get", "node", &node]).await;
    assert!(out.contains("Ready,SchedulingDisabled"), "{out}");

    let (success, out, err) = kubectl(&cfg, &["drain", &node, "--ignore-daemonsets", "--timeout=30s"]).await;
    assert!(success, "{out}\n{err}");
    assert!(out.contains("evicted") && out.contains("drained"), "{out}\n{err}");
    let left = sim.cluster().pods_on(&node);
    assert_eq!(left.len(), 1, "only the DaemonSet pod stays: {left:?}");
    assert!(left[0].starts_with("kube-system/cilium-"));

    let out = ok(&cfg, &["uncordon", &node]).await;
    assert!(out.contains("uncordoned"), "{out}");
    assert!(sim.cluster().node(&node).unwrap()["spec"]["unschedulable"].is_null());
    let _ = std::fs::remove_file(cfg);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_watch_sees_a_change_made_through_the_api() {
    if !kubectl_available() {
        return;
    }
    let sim = start(2, 0).await;
    let cfg = kubeconfig(&sim, "watch");
    let node = sim.cluster().node_names()[1].clone();
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cfg)
        .args(["get", "nodes", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The initial rows.
    within("the initial rows", async {
        let mut seen = 0;
        while seen < 2 {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.contains(" Ready ") {
                seen += 1;
            }
        }
    })
    .await;
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    let line = within("the NotReady row", async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.starts_with(node.as_str()) && line.contains("NotReady") {
                break line;
            }
        }
    })
    .await;
    assert!(line.contains("NotReady"));
    let _ = child.kill().await;
    let _ = std::fs::remove_file(cfg);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_describe_node_lists_its_pods() {
    if !kubectl_available() {
        return;
    }
    let sim = start(2, 0).await;
    let cfg = kubeconfig(&sim, "describe");
    let node = sim.cluster().node_names()[0].clone();
    // kubectl's pod query for describe: spec.nodeName=N,status.phase!=Succeeded,status.phase!=Failed
    let out = ok(&cfg, &["describe", "node", &node]).await;
    assert!(out.contains(&format!("Name:               {node}")), "{out}");
    assert!(out.contains("Non-terminated Pods:"), "{out}");
    for pod in sim.cluster().pods_on(&node) {
        let name = pod.rsplit('/').next().unwrap();
        assert!(out.contains(name), "describe lacks pod {pod}:\n{out}");
    }
    // The node's Events, found by kubectl's involvedObject field selector.
    let uid = sim.cluster().node(&node).unwrap()["metadata"]["uid"].as_str().unwrap().to_owned();
    sim.cluster()
        .create(
            Kind::Event,
            json!({
                "metadata": {"name": "node-agent.2", "namespace": "default"},
                "involvedObject": {"kind": "Node", "name": node, "uid": uid},
                "reason": "RecoveryVerifying", "message": "WaitingReboot -> Verifying", "type": "Normal",
                "source": {"component": "node-agent"}
            }),
        )
        .unwrap();
    let out = ok(&cfg, &["describe", "node", &node]).await;
    assert!(out.contains("RecoveryVerifying") && out.contains("WaitingReboot -> Verifying"), "{out}");
    sim.shutdown().await;
}

/// The official Python client (Debian's python3-kubernetes), when installed.
fn python_client() -> Option<&'static str> {
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipping: /usr/bin/python3 with the kubernetes module (python3-kubernetes) is not installed");
    }
    ok.then_some("/usr/bin/python3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_lists_and_watches_nodes() {
    let Some(python) = python_client() else { return };
    let sim = start(3, 0).await;
    let cfg = kubeconfig(&sim, "python");
    let node = sim.cluster().node_names()[1].clone();
    let script = r#"
import sys
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
print("LIST", len(v1.list_node().items), flush=True)
w = watch.Watch()
for ev in w.stream(v1.list_node, timeout_seconds=20):
    name = ev["object"].metadata.name
    ready = [c.status for c in ev["object"].status.conditions if c.type == "Ready"][0]
    print("EVENT", ev["type"], name, ready, flush=True)
    if ready == "False":
        w.stop()
        break
"#;
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(within("a line from the python client", lines.next_line()).await.unwrap().unwrap(), "LIST 3");
    // The initial ADDED events, then our fault as a MODIFIED event.
    for _ in 0..3 {
        let l = within("a line from the python client", lines.next_line()).await.unwrap().unwrap();
        assert!(l.starts_with("EVENT ADDED "), "{l}");
    }
    sim.cluster().inject(&node, Fault::NotReady).unwrap();
    let l = within("a line from the python client", lines.next_line()).await.unwrap().unwrap();
    assert_eq!(l, format!("EVENT MODIFIED {node} False"));
    assert!(within("the python client to exit", child.wait()).await.unwrap().success());
    sim.shutdown().await;
}
