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
