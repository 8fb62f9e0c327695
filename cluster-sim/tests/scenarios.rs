//! Fault injection, reboots and replacements through the Civo API, Civo API
//! faults, and the scenario files shipped in examples/scenarios.

mod common;

use std::time::Duration;

use cluster_sim::{CivoFault, ClusterConfig, Fault, Kind, RebootBehaviour, Scenario};
use common::{client, start, start_with, within};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

fn condition(node: &Value, kind: &str) -> (String, String) {
    let c = node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == kind).unwrap();
    (c["status"].as_str().unwrap().to_owned(), c["reason"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_render_like_real_nodes() {
    let sim = start(2, 1).await;
    let c = sim.cluster();
    let names = c.node_names();
    let gpu = names.iter().find(|n| n.contains("-gpu-")).unwrap();
    let std = names.iter().find(|n| n.contains("-std-")).unwrap();

    c.inject(gpu, Fault::GpuLost).unwrap();
    let n = c.node(gpu).unwrap();
    assert_eq!(n["metadata"]["labels"]["nvidia.com/gpu.count"], "8");
    assert_eq!(n["status"]["allocatable"]["nvidia.com/gpu"], "0");

    c.inject(std, Fault::CiliumDown).unwrap();
    c.inject(std, Fault::DiskPressure).unwrap();
    let n = c.node(std).unwrap();
    assert_eq!(condition(&n, "NetworkUnavailable"), ("True".into(), "CiliumIsDown".into()));
    assert_eq!(condition(&n, "DiskPressure").0, "True");
    assert!(n["spec"]["taints"].as_array().unwrap().iter().any(|t| t["key"] == "node.cilium.io/agent-not-ready"));

    c.inject(std, Fault::Unknown).unwrap();
    assert_eq!(condition(&c.node(std).unwrap(), "Ready"), ("Unknown".into(), "NodeStatusUnknown".into()));
    c.inject(std, Fault::LeaseStale).unwrap();
    let lease = c.object(Kind::Lease, "kube-node-lease", std).unwrap();
    assert!(lease["spec"]["renewTime"].as_str().unwrap().starts_with("2026-01-01"));

    c.heal(std).unwrap();
    let n = c.node(std).unwrap();
    assert_eq!(condition(&n, "Ready"), ("True".into(), "KubeletReady".into()));
    assert_eq!(condition(&n, "NetworkUnavailable"), ("False".into(), "CiliumIsUp".into()));
    assert!(n["spec"]["taints"].as_array().unwrap().is_empty());
    sim.shutdown().await;
}

/// `POST .../instances/{id}/hard_reboots` on the simulated Civo API.
async fn hard_reboot(sim: &cluster_sim::SimServer, http: &reqwest::Client, id: &str) -> reqwest::Response {
    http.post(format!("{}/v2/instances/{id}/hard_reboots?region=lon1", sim.civo_url()))
        .header("authorization", "bearer sim-civo-key")
        .json(&json!({"region": "lon1"}))
        .send()
        .await
        .unwrap()
}

async fn wait_for_ready(nodes: &Api<Node>, name: &str, want: &str) {
    let mut stream =
        watcher::watcher(nodes.clone(), watcher::Config::default().fields(&format!("metadata.name={name}"))).boxed();
    within(&format!("{name} Ready={want}"), async {
        loop {
            let node = match stream.next().await.unwrap().unwrap() {
                Event::Apply(n) | Event::InitApply(n) => n,
                _ => continue,
            };
            let ready = node.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
            if ready.status == want {
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_reboot_takes_the_node_down_and_brings_it_back() {
    let sim = start(3, 0).await;
    let c = sim.cluster().clone();
    let http = common::http();
    let nodes: Api<Node> = Api::all(client(&sim));
    let names = c.node_names();
    let (fixed, broken) = (&names[0], &names[1]);
    c.set_reboot(fixed, RebootBehaviour::new(true, Duration::from_millis(200)));
    c.set_reboot(broken, RebootBehaviour::new(false, Duration::from_millis(200)));
    c.inject(fixed, Fault::NotReady).unwrap();
    c.inject(broken, Fault::NotReady).unwrap();

    let instances: Vec<Value> = http
        .get(format!("{}/v2/kubernetes/clusters/{}/instances?region=lon1", sim.civo_url(), c.config().cluster_id))
        .header("authorization", "bearer sim-civo-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_of =
        |host: &str| instances.iter().find(|i| i["hostname"] == host).unwrap()["id"].as_str().unwrap().to_owned();
    for node in [fixed, broken] {
        let r = hard_reboot(&sim, &http, &id_of(node)).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["result"], "success");
        assert_eq!(condition(&c.node(node).unwrap(), "Ready").0, "Unknown", "rebooting");
    }
    wait_for_ready(&nodes, fixed, "True").await;
    wait_for_ready(&nodes, broken, "False").await;
    assert_eq!(c.faults(broken), [Fault::NotReady]);
    let reboots: Vec<_> = c.civo_calls().into_iter().filter(|k| k.path.contains("hard_reboots")).collect();
    assert_eq!(reboots.len(), 2);
    assert!(reboots.iter().all(|k| k.method == "POST" && k.status == 200 && k.path.ends_with("?region=lon1")));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_instance_comes_back_as_a_new_node_in_its_pool() {
    let sim = start_with(ClusterConfig {
        nodes: 4,
        pools: 2,
        replace_takes: Duration::from_millis(100),
        ..ClusterConfig::default()
    })
    .await;
    let c = sim.cluster().clone();
    let victim = c.instances().into_iter().find(|i| i.pool == cluster_sim::pool_id(1)).unwrap();
    let nodes: Api<Node> = Api::all(client(&sim));
    let mut stream = watcher::watcher(nodes.clone(), watcher::Config::default()).boxed();
    within("the initial list", async { while !matches!(stream.next().await.unwrap().unwrap(), Event::InitDone) {} })
        .await;
    let r = common::http()
        .delete(format!(
            "{}/v2/kubernetes/clusters/{}/pools/{}/instances/{}?region=lon1",
            sim.civo_url(),
            c.config().cluster_id,
            victim.pool,
            victim.id
        ))
        .header("authorization", "bearer sim-civo-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (gone, added) = within("the replacement", async {
        let mut gone = None;
        loop {
            match stream.next().await.unwrap().unwrap() {
                Event::Delete(n) => gone = n.metadata.name,
                Event::Apply(n) if gone.is_some() => break (gone.unwrap(), n),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(gone, victim.hostname);
    assert_ne!(added.metadata.name.as_deref(), Some(victim.hostname.as_str()));
    assert_eq!(added.metadata.labels.unwrap()["kubernetes.civo.com/civo-node-pool"], victim.pool);
    assert_eq!(c.instances().len(), 4);
    assert!(c.pods_on(&victim.hostname).is_empty(), "its pods went with it");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn civo_faults_affect_exactly_the_next_calls() {
    let sim = start(1, 0).await;
    let c = sim.cluster().clone();
    c.civo_fail_next(CivoFault { skip: 0, status: 500, delay: Duration::ZERO, calls: 2, retry_after: None });
    c.civo_fail_next(CivoFault { skip: 0, status: 429, delay: Duration::ZERO, calls: 1, retry_after: None });
    let url = format!("{}/v2/kubernetes/clusters/{}?region=lon1", sim.civo_url(), c.config().cluster_id);
    let http = common::http();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = http.get(&url).header("authorization", "bearer sim-civo-key").send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status != 200 {
            assert!(body["code"].is_string() && body["reason"].is_string(), "{body}");
        } else {
            assert_eq!(body["pools"][0]["instances"].as_array().unwrap().len(), 1);
        }
        codes.push(status);
    }
    assert_eq!(codes, [500, 500, 429, 200]);
    assert_eq!(c.civo_calls().iter().map(|k| k.status).collect::<Vec<_>>(), codes);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_scenarios_load_and_run() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut config = ClusterConfig::default();
        s.apply_config(&mut config);
        let sim = start_with(config).await;
        s.spawn(sim.cluster().clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        sim.shutdown().await;
        seen += 1;
    }
    assert!(seen >= 3, "expected at least three scenarios in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_faults_are_fixed_by_their_soft_repair_and_reboots_can_relapse() {
    let sim = start(3, 0).await;
    let c = sim.cluster().clone();
    let http = common::http();
    let names = c.node_names();
    let (kubelet, cilium, relapsing) = (&names[0], &names[1], &names[2]);

    // A stopped kubelet: Ready=Unknown, a stale lease; restarting it fixes it.
    c.inject(kubelet, Fault::KubeletStopped).unwrap();
    assert_eq!(condition(&c.node(kubelet).unwrap(), "Ready"), ("Unknown".into(), "NodeStatusUnknown".into()));
    let lease = c.object(Kind::Lease, "kube-node-lease", kubelet).unwrap();
    assert!(lease["spec"]["renewTime"].as_str().unwrap().starts_with("2026-01-01"));
    let r = http.post(format!("{}/sim/v1/nodes/{kubelet}/restart/kubelet", sim.kube_url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["fixed"], json!(["kubelet-stopped"]));
    assert_eq!(condition(&c.node(kubelet).unwrap(), "Ready").0, "True");
    assert_eq!(c.service_restarts(), [(kubelet.clone(), "kubelet".to_owned())]);
    let r = http.post(format!("{}/sim/v1/nodes/nope/restart/kubelet", sim.kube_url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Cilium down: deleting the node's agent pod (as a repair would) brings
    // a new one and the network back; other pods stay.
    c.inject(cilium, Fault::CiliumDown).unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client(&sim), "kube-system");
    let lp = kube::api::ListParams::default().labels("k8s-app=cilium").fields(&format!("spec.nodeName={cilium}"));
    let before = pods.list(&lp).await.unwrap().items;
    assert_eq!(before.len(), 1);
    let name = before[0].metadata.name.clone().unwrap();
    pods.delete(&name, &Default::default()).await.unwrap();
    let after = pods.list(&lp).await.unwrap().items;
    assert_eq!(after.len(), 1, "the DaemonSet's pod is back");
    assert_ne!(after[0].metadata.uid, before[0].metadata.uid, "a new pod");
    assert_eq!(condition(&c.node(cilium).unwrap(), "NetworkUnavailable"), ("False".into(), "CiliumIsUp".into()));
    assert!(c.faults(cilium).is_empty());

    // A sidecar answering 503 on a node that is otherwise fine: mark-ready fixes it.
    c.inject(kubelet, Fault::Sidecar503).unwrap();
    assert_eq!(condition(&c.node(kubelet).unwrap(), "Ready").0, "True", "the node itself is fine");
    let healthz = format!("{}/sim/v1/nodes/{kubelet}/sidecar/healthz", sim.kube_url());
    assert_eq!(http.get(&healthz).send().await.unwrap().status().as_u16(), 503);
    let r = http.post(format!("{}/sim/v1/nodes/{kubelet}/sidecar/mark-ready", sim.kube_url())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(http.get(&healthz).send().await.unwrap().status().as_u16(), 200);

    // A reboot that fixes the node for a while only.
    c.set_reboot(
        relapsing,
        RebootBehaviour {
            fixes: true,
            takes: Duration::from_millis(100),
            relapse_after: Some(Duration::from_millis(300)),
        },
    );
    c.inject(relapsing, Fault::NotReady).unwrap();
    let nodes: Api<Node> = Api::all(client(&sim));
    let instances = c.instances();
    let id = &instances.iter().find(|i| &i.hostname == relapsing).unwrap().id;
    assert_eq!(hard_reboot(&sim, &http, id).await.status().as_u16(), 200);
    wait_for_ready(&nodes, relapsing, "True").await;
    wait_for_ready(&nodes, relapsing, "False").await;
    assert_eq!(c.faults(relapsing), [Fault::NotReady]);
    sim.shutdown().await;
}
