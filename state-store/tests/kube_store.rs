//! The conformance suite on the Kubernetes annotation store, against cluster-sim.

use std::sync::Arc;

use cluster_sim::{ClusterConfig, Ports, SimServer};
use health_core::{NodeRecord, Phase, StoreError};
use state_store::{KubeStore, STATE_ANNOTATION, StateStore, conformance};

async fn setup(nodes: u32) -> (SimServer, KubeStore) {
    let sim = SimServer::start(ClusterConfig { nodes, ..ClusterConfig::default() }, Ports::default()).await.unwrap();
    let client = kube::Client::try_from(kube::Config::new(sim.kube_url().parse().unwrap())).unwrap();
    (sim, KubeStore::new(client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_store_conforms() {
    let (sim, store) = setup(4).await;
    let n = sim.cluster().node_names();
    conformance::basic(&store, &n[0], &n[1]).await.unwrap();
    conformance::racing_writers(Arc::new(store.clone()), &n[2], 6, 8).await.unwrap();
    let s2 = store.clone();
    conformance::survives_restart(store, move || Ok(s2), &n[3]).await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_visible_on_the_node_and_survive_unrelated_node_updates() {
    let (sim, store) = setup(2).await;
    let node = sim.cluster().node_names()[0].clone();
    let rec = NodeRecord { phase: Phase::WaitingReboot, reboot_count: 2, ..NodeRecord::default() };
    let v = store.save(&node, &rec, None).await.unwrap();
    let annotation =
        sim.cluster().node(&node).unwrap()["metadata"]["annotations"][STATE_ANNOTATION].as_str().unwrap().to_owned();
    assert!(annotation.contains("\"WaitingReboot\""), "{annotation}");
    // A kubelet heartbeat changes the node but not the record: no conflict.
    sim.cluster()
        .update_node(&node, |n| n["status"]["conditions"][0]["message"] = serde_json::json!("heartbeat"))
        .unwrap();
    let v2 = store.save(&node, &rec, Some(&v)).await.unwrap();
    assert_ne!(v, v2);
    // The node goes away: so does its record.
    let client = kube::Client::try_from(kube::Config::new(sim.kube_url().parse().unwrap())).unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    nodes.delete(&node, &Default::default()).await.unwrap();
    assert!(store.load(&node).await.unwrap().is_none());
    assert!(store.list().await.unwrap().iter().all(|(k, _)| *k != node));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_annotation_is_a_clear_error_and_loses_nothing_else() {
    let (sim, store) = setup(3).await;
    let n = sim.cluster().node_names();
    store.save(&n[0], &NodeRecord::default(), None).await.unwrap();
    store.save(&n[2], &NodeRecord { phase: Phase::Failed, ..NodeRecord::default() }, None).await.unwrap();
    sim.cluster()
        .update_node(&n[1], |v| v["metadata"]["annotations"][STATE_ANNOTATION] = serde_json::json!("{not json"))
        .unwrap();
    match store.load(&n[1]).await.unwrap_err() {
        StoreError::Corrupt { key, message } => {
            assert_eq!(key, n[1]);
            assert!(message.contains("kubectl annotate"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(store.save(&n[1], &NodeRecord::default(), None).await.unwrap_err().to_string().contains("unreadable"));
    let listed = store.list().await.unwrap_err();
    assert!(listed.to_string().contains(&n[1]), "{listed}");
    // The other records are intact and load by key.
    assert_eq!(store.load(&n[2]).await.unwrap().unwrap().record.phase, Phase::Failed);
    assert!(store.load(&n[0]).await.unwrap().is_some());
    // A missing node has no record, and saving one is refused.
    assert!(store.load("no-such-node").await.unwrap().is_none());
    assert!(
        store
            .save("no-such-node", &NodeRecord::default(), None)
            .await
            .unwrap_err()
            .to_string()
            .contains("does not exist")
    );
    sim.shutdown().await;
}

/// Reproduced: against a server that accepts and never answers,
/// `KubeStore::load` still hung at 20 s. Now every call has a time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_cannot_hang_the_store() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let store = KubeStore::new(client).with_call_timeout(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let err = store.load("node-1").await.unwrap_err().to_string();
    assert!(err.contains("reading node node-1 got no answer from the API server within 500ms"), "{err}");
    assert!(store.save("node-1", &NodeRecord::default(), None).await.is_err());
    assert!(store.list().await.is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_newer_format_is_a_typed_error() {
    let (sim, store) = setup(1).await;
    let node = sim.cluster().node_names()[0].clone();
    let newer = r#"{"v":3,"record":{"format_version":99,"phase":"Healthy","class":"standard","rung":"reimage"}}"#;
    sim.cluster()
        .update_node(&node, |v| v["metadata"]["annotations"][STATE_ANNOTATION] = serde_json::json!(newer))
        .unwrap();
    match store.load(&node).await.unwrap_err() {
        StoreError::NewerFormat { key, found: 99, supported: 1 } => assert_eq!(key, node),
        other => panic!("{other}"),
    }
    sim.shutdown().await;
}

/// At scale the store must not move whole Nodes: it reads metadata only
/// (`PartialObjectMetadata`) and lists in pages of 500. Its annotation is
/// readable (RFC 3339 times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_metadata_in_pages_with_readable_times() {
    let (sim, store) = setup(1_100).await;
    let n = sim.cluster().node_names();
    let at = health_core::Timestamp::from_millis(1_764_703_800_123);
    let rec = NodeRecord { phase: Phase::WaitingReboot, last_action_at: Some(at), ..NodeRecord::default() };
    for node in [&n[0], &n[600], &n[1_099]] {
        store.save(node, &rec, None).await.unwrap();
    }
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|(_, s)| s.record.last_action_at == Some(at)));
    let lists: u64 = sim
        .cluster()
        .kube_requests()
        .into_iter()
        .filter(|(r, _)| r.verb == "list" && r.resource == "nodes")
        .map(|(_, c)| c)
        .sum();
    assert_eq!(lists, 3, "1,100 nodes in pages of 500");
    let node = sim.cluster().node(&n[600]).unwrap();
    let annotation = node["metadata"]["annotations"][STATE_ANNOTATION].as_str().unwrap().to_owned();
    assert!(annotation.contains("\"last_action_at\":\"2025-12-02T19:30:00.123Z\""), "{annotation}");
    sim.shutdown().await;
}
