//! A real kube-rs 5 client against the simulator: lists, watches (with
//! pagination, across a forced 410), patches, evictions and Lease conflicts.

mod common;

use common::{client, start, within};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paginated_and_consistent() {
    let sim = start(7, 1).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let first = nodes.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let rv = first.metadata.resource_version.clone().unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    assert_eq!(first.metadata.remaining_item_count, Some(5));
    // A write between pages does not show up in the continued list.
    sim.cluster().add_node(&cluster_sim::pool_id(0), 0);
    let mut names: Vec<String> = first.items.iter().map(|n| n.metadata.name.clone().unwrap()).collect();
    let mut cont = Some(token);
    while let Some(c) = cont {
        let page = nodes.list(&ListParams::default().limit(3).continue_token(&c)).await.unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        names.extend(page.items.iter().map(|n| n.metadata.name.clone().unwrap()));
        cont = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    assert_eq!(names.len(), 8);
    assert_eq!(nodes.list(&ListParams::default()).await.unwrap().items.len(), 9);

    // Label selectors, the node-agent's pool selector among them.
    let gpu = nodes.list(&ListParams::default().labels("nvidia.com/gpu.count")).await.unwrap();
    assert_eq!(gpu.items.len(), 1);
    let pool = cluster_sim::pool_id(0);
    let in_pool = nodes
        .list(&ListParams::default().labels(&format!("kubernetes.civo.com/civo-node-pool in ({pool},other)")))
        .await
        .unwrap();
    assert_eq!(in_pool.items.len(), 8);
    let one = nodes.list(&ListParams::default().fields(&format!("metadata.name={}", names[0]))).await.unwrap();
    assert_eq!(one.items.len(), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_pages_the_initial_list_and_survives_a_forced_410() {
    let sim = start(5, 0).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let mut stream = watcher::watcher(nodes.clone(), watcher::Config::default().page_size(2)).boxed();

    let mut initial = 0;
    loop {
        match within("the initial list", stream.next()).await.unwrap().unwrap() {
            Event::Init => {}
            Event::InitApply(_) => initial += 1,
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, 5);

    let name = sim.cluster().node_names()[2].clone();
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sim/touched": "1"}}})))
        .await
        .unwrap();
    let touched = loop {
        if let Event::Apply(n) = within("the change", stream.next()).await.unwrap().unwrap() {
            break n;
        }
    };
    assert_eq!(touched.metadata.labels.unwrap()["sim/touched"], "1");

    // A label selector watch sees objects leave and enter the selection.
    let selected: Api<Node> = Api::all(client(&sim));
    let mut sel_stream = watcher::watcher(selected, watcher::Config::default().labels("sim/touched=1")).boxed();
    within("the selected list", async {
        while !matches!(sel_stream.next().await.unwrap().unwrap(), Event::InitDone) {}
    })
    .await;
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sim/touched": "0"}}})))
        .await
        .unwrap();
    let left = within("the DELETED event", async {
        loop {
            if let Event::Delete(n) = sel_stream.next().await.unwrap().unwrap() {
                break n;
            }
        }
    })
    .await;
    assert_eq!(left.metadata.name.as_deref(), Some(name.as_str()));
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sim/touched": "1"}}})))
        .await
        .unwrap();
    within("the re-ADDED event", async {
        while !matches!(sel_stream.next().await.unwrap().unwrap(), Event::Apply(_)) {}
    })
    .await;

    // Compaction ends the watch; resuming from the old version gets 410 and
    // the watcher relists.
    sim.cluster().compact();
    let mut relisted = 0;
    loop {
        match within("the relist", stream.next()).await.unwrap() {
            Ok(Event::InitApply(_)) => relisted += 1,
            Ok(Event::InitDone) => break,
            Ok(_) | Err(_) => {}
        }
    }
    assert_eq!(relisted, 5);
    nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sim/touched": "2"}}})))
        .await
        .unwrap();
    loop {
        if let Event::Apply(n) = within("a change after the relist", stream.next()).await.unwrap().unwrap() {
            assert_eq!(n.metadata.labels.unwrap()["sim/touched"], "2");
            break;
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_of_every_kind_and_the_status_subresource() {
    let sim = start(2, 0).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let name = sim.cluster().node_names()[0].clone();
    let pp = PatchParams::default();

    // Strategic merge: cordon, then add a taint next to none.
    let n = nodes.patch(&name, &pp, &Patch::Strategic(json!({"spec": {"unschedulable": true}}))).await.unwrap();
    assert_eq!(n.spec.unwrap().unschedulable, Some(true));

    // Status changes only through the status subresource, merged by condition type.
    let cond = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}});
    let n = nodes.patch(&name, &pp, &Patch::Strategic(cond.clone())).await.unwrap();
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(ready(&n), "True", "the main resource ignores status");
    let n = nodes.patch_status(&name, &pp, &Patch::Strategic(cond)).await.unwrap();
    assert_eq!(ready(&n), "False");
    assert_eq!(n.status.unwrap().conditions.unwrap().len(), 5, "merged by type, not replaced");

    // JSON patch with a test operation.
    let p: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/unschedulable", "value": true},
        {"op": "replace", "path": "/spec/unschedulable", "value": false}
    ]))
    .unwrap();
    let n = nodes.patch(&name, &pp, &Patch::<()>::Json(p)).await.unwrap();
    assert_eq!(n.spec.unwrap().unschedulable, Some(false));

    // A stale resourceVersion in a patch is a conflict.
    let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}});
    let e = nodes.patch(&name, &pp, &Patch::Merge(stale)).await.unwrap_err();
    assert_eq!(api_code(&e), Some(409));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_respect_disruption_budgets() {
    let sim = start(2, 0).await;
    let c = sim.cluster();
    let node = c.node_names()[0].clone();
    c.add_pod("shop", "db-0", &node, "db", cluster_sim::fixtures::PodOwner::ReplicaSet).unwrap();
    c.add_pod("shop", "db-1", &c.node_names()[1], "db", cluster_sim::fixtures::PodOwner::ReplicaSet).unwrap();
    c.add_pdb("shop", "db", "db", 2).unwrap();
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let e = pods.evict("db-0", &EvictParams::default()).await.unwrap_err();
    assert_eq!(api_code(&e), Some(429));
    assert!(e.to_string().contains("disruption budget"), "{e}");
    assert!(pods.get_opt("db-0").await.unwrap().is_some());
    // Without a budget in the way the pod goes.
    let default_pods: Api<Pod> = Api::namespaced(client(&sim), "default");
    let victim = c.pods_on(&node).into_iter().find(|p| p.starts_with("default/")).unwrap();
    let victim = victim.trim_start_matches("default/").to_owned();
    default_pods.evict(&victim, &EvictParams::default()).await.unwrap();
    assert!(default_pods.get_opt(&victim).await.unwrap().is_none());
    let e = default_pods.evict("no-such-pod", &EvictParams::default()).await.unwrap_err();
    assert_eq!(api_code(&e), Some(404));
    // maxUnavailable percentages round up: 50% of 1 pod allows one disruption.
    c.add_pod("solo", "only", &node, "solo", cluster_sim::fixtures::PodOwner::ReplicaSet).unwrap();
    c.create(
        cluster_sim::Kind::PodDisruptionBudget,
        json!({"metadata": {"name": "solo", "namespace": "solo"},
               "spec": {"maxUnavailable": "50%", "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["solo"]}]}}}),
    )
    .unwrap();
    let solo: Api<Pod> = Api::namespaced(client(&sim), "solo");
    solo.evict("only", &EvictParams::default()).await.unwrap();
    // An empty selector guards every pod of its namespace; a pod that is not
    // ready may still go while the budget holds.
    c.add_pod("guarded", "a", &node, "a", cluster_sim::fixtures::PodOwner::ReplicaSet).unwrap();
    c.add_pod("guarded", "b", &node, "b", cluster_sim::fixtures::PodOwner::ReplicaSet).unwrap();
    c.create(
        cluster_sim::Kind::PodDisruptionBudget,
        json!({"metadata": {"name": "all", "namespace": "guarded"}, "spec": {"minAvailable": 1, "selector": {}}}),
    )
    .unwrap();
    c.update(cluster_sim::Kind::Pod, "guarded", "b", |p| p["status"]["conditions"][0]["status"] = json!("False"))
        .unwrap();
    let guarded: Api<Pod> = Api::namespaced(client(&sim), "guarded");
    let e = guarded.evict("a", &EvictParams::default()).await.unwrap_err();
    assert_eq!(api_code(&e), Some(429), "a is the only ready pod");
    guarded.evict("b", &EvictParams::default()).await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_taken_with_optimistic_concurrency() {
    let sim = start(1, 0).await;
    let leases: Api<Lease> = Api::namespaced(client(&sim), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "node-agent"},
        "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let e = leases.create(&PostParams::default(), &lease).await.unwrap_err();
    assert_eq!(api_code(&e), Some(409), "AlreadyExists");

    // Two replicas read the same version; the first write wins, the second conflicts.
    let mut a = created.clone();
    let mut b = created.clone();
    a.spec.as_mut().unwrap().holder_identity = Some("replica-a".into());
    b.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    let won = leases.replace("node-agent", &PostParams::default(), &a).await.unwrap();
    let e = leases.replace("node-agent", &PostParams::default(), &b).await.unwrap_err();
    assert_eq!(api_code(&e), Some(409));
    assert_ne!(won.metadata.resource_version, created.metadata.resource_version);
    // After re-reading, b can take over.
    let mut fresh = leases.get("node-agent").await.unwrap();
    fresh.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    let taken = leases.replace("node-agent", &PostParams::default(), &fresh).await.unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("replica-b"));
    // Kubelet leases exist for every node.
    let node_leases: Api<Lease> = Api::namespaced(client(&sim), "kube-node-lease");
    assert_eq!(node_leases.list(&ListParams::default()).await.unwrap().items.len(), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_fields_by_manager() {
    let sim = start(2, 0).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let name = sim.cluster().node_names()[0].clone();
    let apply = |labels: serde_json::Value| {
        Patch::Apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}))
    };
    let pp = PatchParams::apply("team-a");
    let n = nodes.patch(&name, &pp, &apply(json!({"team": "a", "tier": "gold"}))).await.unwrap();
    let labels = n.metadata.labels.clone().unwrap();
    assert_eq!((labels["team"].as_str(), labels["tier"].as_str()), ("a", "gold"));
    let entry = n
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("team-a"))
        .expect("team-a's entry");
    assert_eq!(entry.operation.as_deref(), Some("Apply"));
    // Applying again without `tier` gives the field up: it goes.
    let n = nodes.patch(&name, &pp, &apply(json!({"team": "a"}))).await.unwrap();
    assert!(!n.metadata.labels.unwrap().contains_key("tier"));
    // A field another manager owns (the pool label, set by the cloud
    // controller) with another value is a conflict, unless forced.
    let pool = "kubernetes.civo.com/civo-node-pool";
    let err = nodes.patch(&name, &PatchParams::apply("team-b"), &apply(json!({pool: "elsewhere"}))).await.unwrap_err();
    assert_eq!(api_code(&err), Some(409), "{err}");
    assert!(err.to_string().contains("conflict with \"civo-cloud-controller-manager\""), "{err}");
    let n =
        nodes.patch(&name, &PatchParams::apply("team-b").force(), &apply(json!({pool: "elsewhere"}))).await.unwrap();
    assert_eq!(n.metadata.labels.unwrap()[pool], "elsewhere");
    // Without a field manager the API server refuses an apply.
    let err = nodes.patch(&name, &PatchParams::default(), &apply(json!({}))).await.unwrap_err();
    assert_eq!(api_code(&err), Some(422), "{err}");
    // An apply of an object that does not exist creates it.
    let leases: Api<Lease> = Api::namespaced(client(&sim), "default");
    let lease = leases
        .patch(
            "applied",
            &PatchParams::apply("team-a"),
            &Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                 "metadata": {"name": "applied"}, "spec": {"holderIdentity": "me"}})),
        )
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("me"));
    assert_eq!(lease.metadata.namespace.as_deref(), Some("default"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_reads_carry_no_spec_or_status() {
    let sim = start(3, 0).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let name = sim.cluster().node_names()[1].clone();
    let one = nodes.get_metadata(&name).await.unwrap();
    assert_eq!(one.metadata.name.as_deref(), Some(name.as_str()));
    assert!(one.metadata.labels.unwrap().contains_key("kubernetes.io/hostname"));
    let list = nodes.list_metadata(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert!(list.metadata.continue_.is_some());
    // `Api<PartialObjectMeta<Node>>`: every request is metadata-only, the
    // watcher too (what kube-rs controllers use to follow many objects cheaply).
    let meta: Api<kube::core::PartialObjectMeta<Node>> = Api::all(client(&sim));
    let got = meta.get(&name).await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(meta.list(&ListParams::default()).await.unwrap().items.len(), 3);
    drop(nodes);
    let mut w = watcher::watcher(meta, watcher::Config::default()).boxed();
    let mut seen = 0;
    while let Some(ev) = within("the metadata watcher's initial list", w.next()).await {
        match ev.unwrap() {
            Event::InitApply(m) => {
                assert!(m.metadata.name.is_some());
                seen += 1;
            }
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, 3);
    // A change reaches the metadata watch as metadata.
    sim.cluster().update_node(&name, |n| n["metadata"]["labels"]["team"] = serde_json::json!("storage")).unwrap();
    loop {
        match within("the metadata watch's event", w.next()).await.expect("the watch goes on").unwrap() {
            Event::Apply(m) if m.metadata.name.as_deref() == Some(name.as_str()) => {
                assert_eq!(m.metadata.labels.unwrap().get("team").map(String::as_str), Some("storage"));
                break;
            }
            _ => {}
        }
    }
    // On the wire: PartialObjectMetadata items, without spec or status.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let raw: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/nodes", sim.kube_url()))
        .header("accept", "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["kind"], "PartialObjectMetadataList");
    assert!(raw["items"].as_array().unwrap().iter().all(|i| i.get("status").is_none() && i.get("spec").is_none()));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_verb_is_a_403_as_rbac_words_it() {
    let sim = start(2, 0).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let name = sim.cluster().node_names()[0].clone();
    sim.cluster().forbid("patch", "nodes");
    let err = nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}})))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains("cannot patch resource \"nodes\""), "{err}");
    // Other verbs still work; allowing again lifts it.
    assert!(nodes.get(&name).await.is_ok());
    sim.cluster().allow_all();
    assert!(
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}})))
            .await
            .is_ok()
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_watches_and_pending_faults() {
    let sim = start(2, 0).await;
    let nodes: Api<Node> = Api::all(client(&sim));
    let name = sim.cluster().node_names()[0].clone();
    // A fault due in an hour is pending when the server stops.
    let scenario = cluster_sim::Scenario::parse(
        "test",
        &format!("[[fault]]\nnode = \"{name}\"\nkind = \"not-ready\"\nat = \"1h\"\n"),
    )
    .unwrap();
    scenario.spawn(sim.cluster().clone()).unwrap();
    assert_eq!(sim.cluster().pending_tasks(), 1);
    let cluster = sim.cluster().clone();
    let watch = tokio::spawn(async move {
        let mut s = nodes.watch(&kube::api::WatchParams::default().timeout(290), "0").await.unwrap().boxed();
        while let Some(ev) = s.next().await {
            if ev.is_err() {
                break;
            }
        }
    });
    within("the watch to open", async {
        while sim.cluster().kube_requests().iter().all(|(r, _)| r.verb != "watch") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), sim.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown does not wait for an open watch or a pending fault");
    within("the watch to end", watch).await.unwrap();
    assert_eq!(cluster.pending_tasks(), 0, "the pending fault was stopped");
}
