//! The simulated cluster: the handle ([`Cluster`]) on its objects, nodes
//! and Civo account, and the Rust API that drives scenarios. Its concerns
//! live in their own modules: settings (`config`), node faults and host
//! services (`faults`), rendering a node's objects (`render`), the Civo
//! account (`account`), the object store and watches (`store`).

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::fixtures::{self, NodePlan, PodOwner};
use crate::resource::Kind;
use crate::selector::Selectors;
use crate::store::{Keep, ListPage, Obj, Store, WatchStart};

pub use crate::account::{CivoCall, CivoFault, Instance, gpu_pool_id, pool_id};
pub(crate) use crate::account::{CivoState, instance_id};
pub use crate::config::{ClusterConfig, ConfigError};
pub(crate) use crate::faults::NodeState;
pub use crate::faults::{Fault, RebootBehaviour, SoftFix};

pub(crate) struct Inner {
    pub(crate) store: Mutex<Store>,
    pub(crate) civo: Mutex<CivoState>,
    pub(crate) nodes: Mutex<NodeState>,
    pub(crate) config: ClusterConfig,
    pub(crate) next_index: Mutex<u32>,
    requests: Mutex<std::collections::BTreeMap<KubeRequest, u64>>,
    /// An API server outage: `Some(host)` while the API answers 503; a
    /// restart of k3s on `host` ends it. Open watches end when it starts.
    pub(crate) outage: tokio::sync::watch::Sender<Option<String>>,
    /// (verb, resource) pairs answered 403, as RBAC would ([`Cluster::forbid`]).
    forbidden: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Tasks the cluster started (reboots, replacements, scenario faults);
    /// [`crate::SimServer::shutdown`] stops them.
    pub(crate) tasks: Mutex<tokio::task::JoinSet<()>>,
}

/// Distinct request kinds counted before new clients fold into `other`.
pub const MAX_REQUEST_KINDS: usize = 1_024;

/// A kind of Kubernetes API request, as counted by [`Cluster::kube_requests`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct KubeRequest {
    /// The client's product, the first word of its `User-Agent` (`kubectl`,
    /// `node-agent`, ...), or `unknown`.
    pub client: String,
    /// `list`, `watch`, `get`, `create`, `update`, `patch`, `delete` or
    /// `deletecollection`, as the API server's audit log names verbs.
    pub verb: &'static str,
    /// The resource, with its subresource (`nodes`, `nodes/status`,
    /// `pods/eviction`, `leases`...).
    pub resource: String,
}

/// A handle on the simulated cluster (cheap to clone).
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("cluster_id", &self.inner.config.cluster_id).finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster populated as `config` says (no servers started).
    #[must_use]
    pub fn new(config: ClusterConfig) -> Self {
        let store = Store::new(config.watch_history, 65_536, config.limits.max_object_bytes);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                civo: Mutex::new(CivoState::default()),
                nodes: Mutex::new(NodeState::default()),
                config: config.clone(),
                next_index: Mutex::new(0),
                requests: Mutex::new(std::collections::BTreeMap::new()),
                forbidden: Mutex::new(std::collections::BTreeSet::new()),
                tasks: Mutex::new(tokio::task::JoinSet::new()),
                outage: tokio::sync::watch::Sender::new(None),
            }),
        };
        let pools = config.pools.max(1);
        {
            let mut civo = cluster.inner.civo.lock();
            for p in 0..pools {
                civo.pools.push((pool_id(p), "g4s.kube.medium".into()));
            }
            if config.gpu_nodes > 0 {
                civo.pools.push((gpu_pool_id(), "an1.l40s-ks".into()));
            }
        }
        for i in 0..config.nodes {
            cluster.add_node(&pool_id(i % pools), 0);
        }
        for _ in 0..config.gpu_nodes {
            cluster.add_node(&gpu_pool_id(), config.gpus_per_node);
        }
        cluster.seed_system_objects();
        cluster
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    fn seed_system_objects(&self) {
        let mut store = self.inner.store.lock();
        for (ns, name) in [("kube-system", "cilium"), ("kube-system", "node-exporter")] {
            let ds = json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                "spec": {"selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": name, "image": format!("ghcr.io/example/{name}:1.0")}]}}}
            });
            let _ = store.create(Kind::DaemonSet, ds, false);
        }
        let deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                     "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                                  "spec": {"containers": [{"name": "coredns", "image": "ghcr.io/example/coredns:1.0"}]}}},
            "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2}
        });
        let _ = store.create(Kind::Deployment, deploy, false);
        let n = i64::from(self.inner.config.nodes);
        drop(store);
        for name in ["cilium", "node-exporter"] {
            let _ = self.set_workload_ready("DaemonSet", "kube-system", name, n, n);
        }
    }

    /// Sets the replica counts in the status of a seeded workload (`kind`
    /// `DaemonSet` or `Deployment`): how many are wanted and how many are
    /// ready. Add-on monitors read them.
    pub fn set_workload_ready(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        desired: i64,
        ready: i64,
    ) -> Result<(), ApiError> {
        let (k, status) = match kind {
            "DaemonSet" => (
                Kind::DaemonSet,
                json!({"desiredNumberScheduled": desired, "currentNumberScheduled": desired, "numberReady": ready,
                       "numberAvailable": ready, "numberMisscheduled": 0, "updatedNumberScheduled": desired}),
            ),
            "Deployment" => (
                Kind::Deployment,
                json!({"replicas": desired, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": desired}),
            ),
            other => {
                return Err(ApiError::bad_request(&format!(
                    "workload kind {other:?}: expected DaemonSet or Deployment"
                )));
            }
        };
        let mut store = self.inner.store.lock();
        let plural = k.def().plural;
        let current = store.get(k, namespace, name).ok_or_else(|| ApiError::not_found(plural, name))?;
        let mut v = current.value();
        if k == Kind::Deployment
            && let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut())
        {
            spec.insert("replicas".into(), json!(desired));
        }
        v["status"] = status;
        if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
        }
        store.update(k, namespace, name, v, Keep::Nothing, false).map(|_| ())
    }

    /// Adds a node (and its Civo instance, kubelet lease and pods) to `pool`.
    /// Returns the node name.
    pub fn add_node(&self, pool: &str, gpus: u32) -> String {
        let index = {
            let mut n = self.inner.next_index.lock();
            *n += 1;
            *n
        };
        let cfg = &self.inner.config;
        let kind = if gpus > 0 { "gpu" } else { "std" };
        let short = pool.get(..4).unwrap_or(pool);
        let name = format!("k3s-{}-{kind}-{short}-node-{index:05}", cfg.cluster_name);
        let zone = (cfg.zones > 0).then(|| {
            let position = self.inner.civo.lock().pools.iter().position(|(id, _)| id == pool).unwrap_or(0);
            let letter = char::from(b'a' + u8::try_from(position % cfg.zones as usize).unwrap_or(0));
            format!("{}-{letter}", cfg.region)
        });
        let plan = NodePlan {
            name: name.clone(),
            pool: pool.to_owned(),
            instance_id: instance_id(index),
            gpus,
            index,
            region: cfg.region.clone(),
            zone,
        };
        let node = serde_json::to_value(fixtures::node(&plan)).unwrap_or(Value::Null);
        {
            let mut store = self.inner.store.lock();
            let _ = store.create(Kind::Node, node, false);
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
            });
            let _ = store.create(Kind::Lease, lease, false);
            let ds = serde_json::to_value(fixtures::pod(
                "kube-system",
                &format!("cilium-{index:05}"),
                &name,
                "cilium",
                PodOwner::DaemonSet,
            ))
            .unwrap_or(Value::Null);
            let _ = store.create(Kind::Pod, ds, false);
            for p in 0..cfg.pods_per_node {
                let app = if p % 2 == 0 { "shop-frontend" } else { "shop-api" };
                let pod = serde_json::to_value(fixtures::pod(
                    "default",
                    &format!("{app}-{index:05}-{p}"),
                    &name,
                    app,
                    PodOwner::ReplicaSet,
                ))
                .unwrap_or(Value::Null);
                let _ = store.create(Kind::Pod, pod, false);
            }
        }
        let size = if gpus > 0 { "an1.l40s-ks" } else { "g4s.kube.medium" };
        self.inner.civo.lock().instances.insert(
            plan.instance_id.clone(),
            Instance {
                id: plan.instance_id,
                hostname: name.clone(),
                pool: pool.to_owned(),
                size: size.into(),
                status: "ACTIVE".into(),
                public_ip: fixtures::public_ip(index),
                private_ip: fixtures::internal_ip(index),
                index,
                gpus,
            },
        );
        name
    }

    /// Every node name, sorted.
    #[must_use]
    pub fn node_names(&self) -> Vec<String> {
        let store = self.inner.store.lock();
        store.matching(Kind::Node, None, &Default::default()).iter().map(|o| o.name.clone()).collect()
    }

    /// A node as JSON.
    #[must_use]
    pub fn node(&self, name: &str) -> Option<Value> {
        self.inner.store.lock().get(Kind::Node, "", name).map(|o| o.value())
    }

    /// Any object as JSON (`namespace` empty for cluster-scoped kinds).
    #[must_use]
    pub fn object(&self, kind: crate::Kind, namespace: &str, name: &str) -> Option<Value> {
        self.inner.store.lock().get(kind, namespace, name).map(|o| o.value())
    }

    /// Applies `f` to a node's JSON and stores the result (status included).
    pub fn update_node(&self, name: &str, f: impl Fn(&mut Value)) -> Result<(), ApiError> {
        self.update(Kind::Node, "", name, f)
    }

    /// Applies `f` to any object's JSON and stores the result. `f` runs
    /// outside the store lock (it may read the cluster) and is called again
    /// if the object changed meanwhile.
    pub fn update(&self, kind: Kind, namespace: &str, name: &str, f: impl Fn(&mut Value)) -> Result<(), ApiError> {
        loop {
            let obj = self.inner.store.lock().get(kind, namespace, name);
            let obj = obj.ok_or_else(|| ApiError::not_found(kind.def().plural, name))?;
            let mut v = obj.value();
            f(&mut v);
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("resourceVersion".into(), Value::String(obj.rv.to_string()));
            }
            match self.inner.store.lock().update(kind, namespace, name, v, Keep::Nothing, false) {
                Err(e) if e.code == 409 => continue,
                other => return other.map(|_| ()),
            }
        }
    }

    /// Creates any object from JSON.
    pub fn create(&self, kind: Kind, v: Value) -> Result<(), ApiError> {
        self.inner.store.lock().create(kind, v, false).map(|_| ())
    }

    // The store as the API handlers use it: every read and write of
    // objects goes through these (and the Rust API above), never through
    // the lock itself, so side effects (a DaemonSet pod coming back) happen
    // whichever way a pod goes.

    /// One stored object.
    pub(crate) fn get_obj(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Obj>> {
        self.inner.store.lock().get(kind, namespace, name)
    }

    /// Creates an object; returns it and the fields the schema dropped.
    pub(crate) fn create_obj(&self, kind: Kind, v: Value, strict: bool) -> Result<(Arc<Obj>, Vec<String>), ApiError> {
        self.inner.store.lock().create(kind, v, strict)
    }

    /// Replaces an object (`PUT`), guarded by the body's resource version.
    pub(crate) fn replace_obj(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        v: Value,
        keep: Keep,
        strict: bool,
    ) -> Result<(Arc<Obj>, Vec<String>), ApiError> {
        self.inner.store.lock().update(kind, namespace, name, v, keep, strict)
    }

    /// Reads, changes and writes one object atomically (a patch, an apply):
    /// `f` gets the object's JSON (`None` when absent) and returns the new
    /// one, which creates the object if it was absent. Returns the stored
    /// object, the fields the schema dropped and whether it was created.
    pub(crate) fn write_obj(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        keep: Keep,
        strict: bool,
        f: impl FnOnce(Option<Value>) -> Result<Value, ApiError>,
    ) -> Result<(Arc<Obj>, Vec<String>, bool), ApiError> {
        let mut store = self.inner.store.lock();
        let current = store.get(kind, namespace, name).map(|o| o.value());
        let created = current.is_none();
        let v = f(current)?;
        let (obj, unknown) = if created {
            store.create(kind, v, strict)?
        } else {
            store.update(kind, namespace, name, v, keep, strict)?
        };
        Ok((obj, unknown, created))
    }

    /// Deletes an object (guarded by `precondition_rv` when given).
    pub(crate) fn delete_obj(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Arc<Obj>, ApiError> {
        let obj = self.inner.store.lock().delete(kind, namespace, name, precondition_rv)?;
        if kind == Kind::Pod {
            self.pod_deleted(&obj.value());
        }
        Ok(obj)
    }

    /// Evicts a pod unless a disruption budget forbids it (429).
    pub(crate) fn evict_pod(&self, namespace: &str, name: &str) -> Result<(), ApiError> {
        let pod = crate::disruption::evict(&mut self.inner.store.lock(), namespace, name)?;
        self.pod_deleted(&pod.value());
        Ok(())
    }

    /// One page of a list.
    pub(crate) fn list_objs(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        sel: &Selectors,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        self.inner.store.lock().list(kind, namespace, sel, limit, continue_token)
    }

    /// Starts a watch (410 Gone from a compacted resource version).
    pub(crate) fn watch_objs(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        sel: &Selectors,
        from_rv: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        self.inner.store.lock().watch(kind, namespace, sel, from_rv)
    }

    /// Ends every open watch (shutdown).
    pub(crate) fn close_watches(&self) {
        self.inner.store.lock().close_watches();
    }

    /// Makes every watch from an older resource version fail with 410 Gone.
    pub fn compact(&self) {
        self.inner.store.lock().compact();
    }

    /// The current resource version.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.inner.store.lock().current_rv()
    }

    /// Counts one Kubernetes API request (the API handler calls it).
    /// Client names come from request headers: at most [`MAX_REQUEST_KINDS`]
    /// distinct kinds are kept (more fold into client `other`), so clients
    /// inventing User-Agents cannot grow the simulator's memory.
    pub(crate) fn count_request(&self, mut request: KubeRequest) {
        let mut counts = self.inner.requests.lock();
        if !counts.contains_key(&request) && counts.len() >= MAX_REQUEST_KINDS {
            "other".clone_into(&mut request.client);
        }
        *counts.entry(request).or_default() += 1;
    }

    /// Answers `verb` on `resource` (`patch` on `nodes`, `create` on
    /// `pods/eviction`: the verbs and resources of [`KubeRequest`]) with 403
    /// Forbidden from now on, as the API server does for a verb the
    /// client's RBAC role lacks.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.inner.forbidden.lock().insert((verb.to_owned(), resource.to_owned()));
    }

    /// Allows every verb again.
    pub fn allow_all(&self) {
        self.inner.forbidden.lock().clear();
    }

    pub(crate) fn forbidden(&self, verb: &str, resource: &str) -> bool {
        let f = self.inner.forbidden.lock();
        !f.is_empty() && f.contains(&(verb.to_owned(), resource.to_owned()))
    }

    /// Tasks still pending (reboots and replacements under way, scenario
    /// faults not yet due).
    #[must_use]
    pub fn pending_tasks(&self) -> usize {
        let mut tasks = self.inner.tasks.lock();
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    /// Runs `task` on the current runtime until it ends or the server shuts down.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.inner.tasks.lock();
        // Finished tasks are dropped as new ones come.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// How many Kubernetes API requests of each kind were served so far
    /// (also served as JSON at `GET /sim/requests` on the Kubernetes port).
    #[must_use]
    pub fn kube_requests(&self) -> Vec<(KubeRequest, u64)> {
        self.inner.requests.lock().iter().map(|(k, n)| (k.clone(), *n)).collect()
    }

    /// Every Event written (core/v1 and events.k8s.io/v1), oldest first.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        let store = self.inner.store.lock();
        let mut out: Vec<_> =
            [Kind::Event, Kind::EventV1].iter().flat_map(|k| store.matching(*k, None, &Default::default())).collect();
        out.sort_by_key(|o| o.rv);
        out.iter().map(|o| o.value()).collect()
    }

    /// Adds a pod on `node`.
    pub fn add_pod(&self, namespace: &str, name: &str, node: &str, app: &str, owner: PodOwner) -> Result<(), ApiError> {
        let pod = serde_json::to_value(fixtures::pod(namespace, name, node, app, owner)).unwrap_or(Value::Null);
        self.create(Kind::Pod, pod)
    }

    /// Adds a PodDisruptionBudget selecting `app=<app>` with `min_available`.
    pub fn add_pdb(&self, namespace: &str, name: &str, app: &str, min_available: i32) -> Result<(), ApiError> {
        let pdb = json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}}
        });
        self.create(Kind::PodDisruptionBudget, pdb)
    }

    /// Names of the pods on `node`.
    #[must_use]
    pub fn pods_on(&self, node: &str) -> Vec<String> {
        let store = self.inner.store.lock();
        store
            .matching(Kind::Pod, None, &Selectors::on_node(node))
            .iter()
            .map(|o| format!("{}/{}", o.namespace, o.name))
            .collect()
    }
}

/// A MicroTime string for now.
pub(crate) fn now_micro() -> String {
    let t = std::time::SystemTime::now();
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use std::time::Duration;

    fn ready(c: &Cluster, node: &str) -> String {
        let n = c.node(node).unwrap_or_default();
        n["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["status"].as_str())
            .unwrap_or("")
            .to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_reboot_keeps_the_node_down_until_it_finishes() {
        let c = Cluster::new(ClusterConfig { nodes: 1, ..ClusterConfig::default() });
        let node = c.node_names()[0].clone();
        let id = c.instances()[0].id.clone();
        c.set_reboot(&node, RebootBehaviour::new(true, Duration::from_secs(30)));
        assert!(c.reboot_instance(&id));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(c.reboot_instance(&id));
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(ready(&c, &node), "Unknown", "the first reboot's timer must not end the second");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(ready(&c, &node), "True");
        assert!(!c.reboot_instance("no-such-instance"));
    }

    #[test]
    fn configuration_is_validated() {
        let bad = ClusterConfig { cluster_name: "My Lab".into(), ..ClusterConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("cluster_name \"My Lab\""));
        let bad = ClusterConfig { pools: 0, ..ClusterConfig::default() };
        assert_eq!(bad.validate().unwrap_err().to_string(), "pools must be at least 1");
        let bad = ClusterConfig { limits: Limits::default().max_json_patch_operations(0), ..ClusterConfig::default() };
        assert_eq!(bad.validate().unwrap_err().field, "limits.max_json_patch_operations");
        assert_eq!(ClusterConfig::default().validate(), Ok(()));
    }

    #[test]
    fn debug_does_not_show_the_civo_key() {
        let config = ClusterConfig { civo_key: "s3cr3t-civo-key-0123".into(), ..ClusterConfig::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-civo-key-0123"), "{shown}");
        assert!(shown.contains(r#"civo_key: "<redacted>""#), "{shown}");
        assert!(shown.contains(r#"cluster_name: "sim""#), "the other fields are shown: {shown}");
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains("s3cr3t"), "{pretty}");
    }

    #[test]
    fn events_k8s_io_events_show_as_core_events() {
        let c = Cluster::new(ClusterConfig { nodes: 1, ..ClusterConfig::default() });
        c.create(
            Kind::EventV1,
            json!({
                "metadata": {"name": "agent.1", "namespace": "default"},
                "eventTime": "2026-11-21T05:00:00.000000Z",
                "regarding": {"kind": "Node", "name": "n1"},
                "reason": "Rebooted", "note": "rebooted after 5m NotReady", "type": "Normal",
                "action": "Reboot", "reportingController": "node-agent", "reportingInstance": "node-agent-0"
            }),
        )
        .unwrap();
        let store = c.inner.store.lock();
        let core = store.matching(Kind::Event, None, &Default::default());
        assert_eq!(core.len(), 1);
        let v = core[0].value();
        assert_eq!(v["involvedObject"]["name"], "n1");
        assert_eq!(v["message"], "rebooted after 5m NotReady");
        assert_eq!(v["source"]["component"], "node-agent");
    }
}
