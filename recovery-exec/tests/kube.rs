//! The Kubernetes executor against cluster-sim's Kubernetes API.

use std::sync::Arc;
use std::time::Duration;

use cluster_sim::fixtures::PodOwner;
use cluster_sim::{ClusterConfig, Ports, SimServer};
use health_core::{Action, Executor};
use k8s_openapi::api::core::v1::Node;
use recovery_exec::*;
use serde_json::json;

async fn sim(nodes: u32) -> SimServer {
    SimServer::start(ClusterConfig { nodes, ..ClusterConfig::default() }, Ports::default()).await.unwrap()
}

fn kube(sim: &SimServer, timeout: Duration) -> KubeExecutor {
    let config = kube::Config::new(sim.kube_url().parse().unwrap());
    KubeExecutor::from_config(
        config,
        DrainConfig {
            timeout,
            retry_interval: Duration::from_millis(50),
            grace_period: Some(0),
            ..DrainConfig::default()
        },
    )
    .unwrap()
}

fn unschedulable(sim: &SimServer, node: &str) -> bool {
    sim.cluster().node(node).unwrap()["spec"]["unschedulable"] == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evicts_everything_but_daemonset_and_mirror_pods() {
    let sim = sim(2).await;
    let c = sim.cluster();
    let node = c.node_names()[0].clone();
    c.add_pod("kube-system", "kube-proxy-static", &node, "kube-proxy", PodOwner::Mirror).unwrap();
    assert_eq!(c.pods_on(&node).len(), 4);
    // A pod that has been terminating for an hour (its kubelet is dead) counts as gone.
    c.add_pod("default", "zombie", &node, "zombie", PodOwner::ReplicaSet).unwrap();
    c.update(cluster_sim::Kind::Pod, "default", "zombie", |p| {
        p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    })
    .unwrap();
    kube(&sim, Duration::from_secs(10)).drain(&node).await.unwrap();
    let mut left: Vec<String> = c.pods_on(&node).into_iter().filter(|p| p != "default/zombie").collect();
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left[0].starts_with("kube-system/cilium-") && left[1] == "kube-system/kube-proxy-static");
    assert!(unschedulable(&sim, &node));
    // The other node is untouched.
    assert_eq!(c.pods_on(&c.node_names()[1]).len(), 3);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_on_a_disruption_budget_and_names_the_pods_at_its_timeout() {
    let sim = sim(2).await;
    let c = sim.cluster();
    let (node, other) = (c.node_names()[0].clone(), c.node_names()[1].clone());
    c.add_pod("shop", "db-0", &node, "db", PodOwner::ReplicaSet).unwrap();
    c.add_pod("shop", "db-1", &other, "db", PodOwner::ReplicaSet).unwrap();
    c.add_pdb("shop", "db", "db", 2).unwrap();
    let started = std::time::Instant::now();
    let err = kube(&sim, Duration::from_millis(400)).drain(&node).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(400), "it waited for the budget");
    match &err {
        KubeExecError::DrainTimeout { pods, .. } => assert_eq!(pods, &["shop/db-0".to_owned()]),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("shop/db-0"));
    // Everything else did go.
    let left = c.pods_on(&node);
    assert_eq!(left.len(), 2, "{left:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncordon_only_undoes_our_own_cordon() {
    let sim = sim(2).await;
    let c = sim.cluster();
    let (ours, operators) = (c.node_names()[0].clone(), c.node_names()[1].clone());
    let k = kube(&sim, Duration::from_secs(10));

    assert!(k.cordon(&ours).await.unwrap());
    assert!(k.cordon(&ours).await.unwrap(), "cordoning again still reports our cordon");
    k.uncordon(&ours).await.unwrap();
    assert!(!unschedulable(&sim, &ours));
    let n = c.node(&ours).unwrap();
    assert!(n["metadata"]["annotations"].get(CORDONED_ANNOTATION).is_none());

    // An operator cordons by hand; our drain and uncordon leave that cordon in place.
    c.update_node(&operators, |n| n["spec"]["unschedulable"] = json!(true)).unwrap();
    assert!(!k.cordon(&operators).await.unwrap());
    k.drain(&operators).await.unwrap();
    k.uncordon(&operators).await.unwrap();
    assert!(unschedulable(&sim, &operators), "the operator's cordon stays");
    sim.shutdown().await;
}

/// The remediator routes: Drain to the cluster, Replace to the cloud only
/// (the machine drained before; a second drain would repeat the evictions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remediator_routes_without_a_second_drain() {
    let sim = sim(2).await;
    let c = sim.cluster().clone();
    let node = c.node_names()[0].clone();
    let mut civo = CivoConfig::new(sim.civo_url(), ApiKey::new("sim-civo-key"), c.config().cluster_id.clone(), "lon1");
    civo.retry_base = Duration::from_millis(10);
    let r: Remediator<Node> =
        Remediator::new(Arc::new(kube(&sim, Duration::from_secs(10))), Arc::new(CivoExecutor::new(civo).unwrap()));
    let target: Node = serde_json::from_value(c.node(&node).unwrap()).unwrap();
    r.execute(Action::Drain, &target).await.unwrap();
    assert!(unschedulable(&sim, &node), "drained through the cluster executor");
    // A pod no drain could evict (its budget allows no disruption) does not
    // hold the replacement back: Replace does not drain again.
    c.add_pod("shop", "db-0", &node, "db", PodOwner::ReplicaSet).unwrap();
    c.add_pdb("shop", "db", "db", 1).unwrap();
    r.execute(Action::Replace, &target).await.unwrap();
    assert!(c.node(&node).is_none(), "replaced");
    assert!(c.civo_calls().iter().any(|k| k.method == "DELETE"));
    sim.shutdown().await;
}

/// Reproduced: the drain evicted unmanaged pods and pods with emptyDir data
/// without any opt-in. Now it refuses like kubectl, before cordoning,
/// naming the pods; each setting lets its kind through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_unmanaged_and_emptydir_pods_unless_allowed() {
    let sim = sim(1).await;
    let c = sim.cluster();
    let node = c.node_names()[0].clone();
    c.add_pod("default", "bare", &node, "bare", PodOwner::ReplicaSet).unwrap();
    c.update(cluster_sim::Kind::Pod, "default", "bare", |p| p["metadata"]["ownerReferences"] = serde_json::Value::Null)
        .unwrap();
    c.add_pod("shop", "cache-0", &node, "cache", PodOwner::ReplicaSet).unwrap();
    c.update(cluster_sim::Kind::Pod, "shop", "cache-0", |p| {
        p["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}])
    })
    .unwrap();
    // A finished unmanaged pod loses nothing: it never blocks a drain.
    c.add_pod("default", "job-done", &node, "job", PodOwner::ReplicaSet).unwrap();
    c.update(cluster_sim::Kind::Pod, "default", "job-done", |p| {
        p["metadata"]["ownerReferences"] = serde_json::Value::Null;
        p["status"]["phase"] = json!("Succeeded");
    })
    .unwrap();
    let before = c.pods_on(&node).len();

    let drain = |evict_unmanaged, delete_emptydir_data| {
        let config = kube::Config::new(sim.kube_url().parse().unwrap());
        let d = DrainConfig {
            timeout: Duration::from_secs(10),
            retry_interval: Duration::from_millis(50),
            grace_period: Some(0),
            evict_unmanaged,
            delete_emptydir_data,
            ..DrainConfig::default()
        };
        KubeExecutor::from_config(config, d).unwrap()
    };
    let err = drain(false, false).drain(&node).await.unwrap_err();
    match &err {
        KubeExecError::Refused { pods, .. } => assert_eq!(pods, &["default/bare".to_owned()]),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("kubectl drain --force"), "{err}");
    assert!(!unschedulable(&sim, &node), "a refused drain cordons nothing");
    assert_eq!(c.pods_on(&node).len(), before, "and evicts nothing");

    let err = drain(true, false).drain(&node).await.unwrap_err().to_string();
    assert!(err.contains("emptyDir") && err.contains("shop/cache-0") && !err.contains("default/bare"), "{err}");
    assert_eq!(c.pods_on(&node).len(), before);

    drain(true, true).drain(&node).await.unwrap();
    let left = c.pods_on(&node);
    assert!(!left.iter().any(|p| p == "default/bare" || p == "shop/cache-0"), "{left:?}");
    sim.shutdown().await;
}

/// A server that accepts connections and never answers.
async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    url
}

/// Reproduced: against a server that accepts and never answers, a drain
/// with a 2 s timeout still hung at 30 s. Now every call ends by the
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_cannot_hang_a_drain_or_an_uncordon() {
    let url = silent_server().await;
    let d =
        DrainConfig { timeout: Duration::from_secs(2), call_timeout: Duration::from_secs(1), ..DrainConfig::default() };
    let e = KubeExecutor::new(kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap(), d);
    let started = std::time::Instant::now();
    let err = e.drain("node-1").await.unwrap_err();
    let took = started.elapsed();
    // The drain's first call ends at the call timeout (1 s): no answer at all.
    assert!(matches!(err, KubeExecError::Unanswered { what: "list pods", .. }), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let err = e.uncordon("node-1").await.unwrap_err().to_string();
    assert!(err.contains("got no answer within 1s"), "{err}");
}

/// Reproduced: `KubeExecutor::new` with a client that retries 429 answers
/// itself ran a budget-blocked drain with a 1 s timeout past 120 s. Now the
/// deadline bounds every call, whatever the client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_retrying_client_cannot_stretch_the_drain_deadline() {
    let sim = sim(2).await;
    let c = sim.cluster();
    let (node, other) = (c.node_names()[0].clone(), c.node_names()[1].clone());
    c.add_pod("shop", "db-0", &node, "db", PodOwner::ReplicaSet).unwrap();
    c.add_pod("shop", "db-1", &other, "db", PodOwner::ReplicaSet).unwrap();
    c.add_pdb("shop", "db", "db", 2).unwrap();
    // kube's default client: retries 429 with back-off on its own.
    let client = kube::Client::try_from(kube::Config::new(sim.kube_url().parse().unwrap())).unwrap();
    let d = DrainConfig { timeout: Duration::from_secs(1), grace_period: Some(0), ..DrainConfig::default() };
    let started = std::time::Instant::now();
    let err = KubeExecutor::new(client, d).drain(&node).await.unwrap_err();
    let took = started.elapsed();
    match &err {
        KubeExecError::DrainTimeout { pods, .. } => assert_eq!(pods, &["shop/db-0".to_owned()]),
        other => panic!("{other}"),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    println!("budget-blocked drain with a 1 s timeout and a self-retrying client ended after {took:?}");
    sim.shutdown().await;
}
