//! The simulated cluster: its objects, its Civo account, and the Rust API
//! that drives scenarios (faults, reboots, replacements, API failures).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::fixtures::{self, NodePlan, PodOwner};
use crate::limits::Limits;
use crate::resource::Kind;
use crate::selector::Selectors;
use crate::store::{Keep, Store};

/// How big the simulated cluster is and how it behaves.
///
/// Its `Debug` output shows `civo_key` as `"<redacted>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Standard nodes.
    pub nodes: u32,
    /// GPU nodes (in their own pool).
    pub gpu_nodes: u32,
    /// GPUs per GPU node.
    pub gpus_per_node: u32,
    /// Pools the standard nodes are spread over (at least 1).
    pub pools: u32,
    /// Zones (0: nodes carry no zone label; at most 26). Pool `i` (the
    /// standard pools in order, then the GPU pool) is in zone
    /// `{region}-{letter i mod zones}` (`lon1-a`); a replacement node joins
    /// its pool's zone.
    pub zones: u32,
    /// Civo cluster id.
    pub cluster_id: String,
    /// Civo cluster name (also the node name prefix).
    pub cluster_name: String,
    /// Civo region.
    pub region: String,
    /// The Civo API key the simulated API accepts (never shown by `Debug`).
    pub civo_key: String,
    /// Pods per node: one DaemonSet pod and this many ReplicaSet pods.
    pub pods_per_node: u32,
    /// Watch events kept for resuming watches (older versions get 410 Gone).
    pub watch_history: usize,
    /// How often watches receive a BOOKMARK (when they ask for them).
    pub bookmark_interval: Duration,
    /// How often kubelet leases of healthy nodes are renewed (zero: never).
    pub lease_renew_interval: Duration,
    /// Default time a reboot takes.
    pub reboot_takes: Duration,
    /// Time until a replaced instance comes back as a new node.
    pub replace_takes: Duration,
    /// Bounds on request and object sizes, JSON patches and connections.
    pub limits: Limits,
}

impl ClusterConfig {
    /// Checks the settings that would otherwise produce invalid objects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let label = |field: &'static str, v: &str| {
            let ok = !v.is_empty()
                && v.len() <= 40
                && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !v.starts_with('-')
                && !v.ends_with('-');
            if ok {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("{v:?} must be 1-40 lowercase letters, digits or '-', not starting or ending with '-'"),
                ))
            }
        };
        label("cluster_name", &self.cluster_name)?;
        label("region", &self.region)?;
        if self.pools == 0 {
            return Err(ConfigError::new("pools", "must be at least 1"));
        }
        if self.zones > 26 {
            return Err(ConfigError::new("zones", format!("must be at most 26 (one letter each), got {}", self.zones)));
        }
        if self.civo_key.is_empty() {
            return Err(ConfigError::new("civo_key", "must not be empty"));
        }
        if self.gpu_nodes > 0 && self.gpus_per_node == 0 {
            return Err(ConfigError::new("gpus_per_node", "must be at least 1 when there are GPU nodes"));
        }
        self.limits.validate()
    }
}

/// A simulator setting that cannot be used: the field (dotted) and what is
/// wrong with its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct ConfigError {
    /// The setting, e.g. `pools` or `limits.max_connections`.
    pub field: &'static str,
    /// What is wrong, and the accepted form.
    pub problem: String,
}

impl ConfigError {
    /// An error for `field`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError { field, problem: problem.into() }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be left out (or leak) silently.
        let ClusterConfig {
            nodes,
            gpu_nodes,
            gpus_per_node,
            pools,
            zones,
            cluster_id,
            cluster_name,
            region,
            civo_key: _,
            pods_per_node,
            watch_history,
            bookmark_interval,
            lease_renew_interval,
            reboot_takes,
            replace_takes,
            limits,
        } = self;
        f.debug_struct("ClusterConfig")
            .field("nodes", nodes)
            .field("gpu_nodes", gpu_nodes)
            .field("gpus_per_node", gpus_per_node)
            .field("pools", pools)
            .field("zones", zones)
            .field("cluster_id", cluster_id)
            .field("cluster_name", cluster_name)
            .field("region", region)
            .field("civo_key", &"<redacted>")
            .field("pods_per_node", pods_per_node)
            .field("watch_history", watch_history)
            .field("bookmark_interval", bookmark_interval)
            .field("lease_renew_interval", lease_renew_interval)
            .field("reboot_takes", reboot_takes)
            .field("replace_takes", replace_takes)
            .field("limits", limits)
            .finish()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 3,
            gpu_nodes: 0,
            gpus_per_node: 8,
            pools: 1,
            zones: 0,
            cluster_id: "b3a7c6d2-5f1e-4c9a-8d0b-7e6f5a4c3b21".into(),
            cluster_name: "sim".into(),
            region: "lon1".into(),
            civo_key: "sim-civo-key".into(),
            pods_per_node: 2,
            watch_history: 100_000,
            bookmark_interval: Duration::from_secs(1),
            lease_renew_interval: Duration::from_secs(10),
            reboot_takes: Duration::from_secs(30),
            replace_takes: Duration::from_secs(60),
            limits: Limits::default(),
        }
    }
}

/// A fault injected into a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Ready=False (the kubelet reports not ready).
    NotReady,
    /// Ready=Unknown (the kubelet stopped posting status).
    Unknown,
    /// MemoryPressure=True.
    MemoryPressure,
    /// DiskPressure=True.
    DiskPressure,
    /// PIDPressure=True.
    PidPressure,
    /// Allocatable GPUs drop to zero (the label keeps the expected count).
    GpuLost,
    /// Cilium is down: NetworkUnavailable=True and the agent-not-ready taint.
    CiliumDown,
    /// The kubelet lease stops being renewed.
    LeaseStale,
    /// The kubelet process stopped: Ready=Unknown and its lease goes stale.
    /// A restart of the kubelet (the simulated host endpoint
    /// `POST /sim/v1/nodes/{node}/restart/kubelet`) or a reboot fixes it.
    KubeletStopped,
    /// The node's sidecar answers 503 on `GET /sim/v1/nodes/{node}/sidecar/healthz`
    /// while the node itself looks fine (its pod was replaced and lost its
    /// readiness mark); `POST .../sidecar/mark-ready` fixes it.
    #[serde(rename = "sidecar-503")]
    Sidecar503,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 10] = [
        Fault::NotReady,
        Fault::Unknown,
        Fault::MemoryPressure,
        Fault::DiskPressure,
        Fault::PidPressure,
        Fault::GpuLost,
        Fault::CiliumDown,
        Fault::LeaseStale,
        Fault::KubeletStopped,
        Fault::Sidecar503,
    ];

    /// What repairs the fault besides a reboot: the host service whose
    /// restart fixes it, or deleting the node's Cilium agent pod.
    #[must_use]
    pub const fn soft_fix(self) -> Option<SoftFix> {
        match self {
            Fault::KubeletStopped => Some(SoftFix::Restart("kubelet")),
            Fault::CiliumDown => Some(SoftFix::CiliumPod),
            Fault::Sidecar503 => Some(SoftFix::MarkReady),
            _ => None,
        }
    }
}

/// A repair short of a reboot that clears a [`Fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftFix {
    /// Restarting this host service (`kubelet`).
    Restart(&'static str),
    /// Deleting the node's Cilium agent pod (its DaemonSet starts a new one).
    CiliumPod,
    /// The sidecar's mark-ready call.
    MarkReady,
}

/// What a reboot of a node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebootBehaviour {
    /// The reboot clears the node's faults.
    pub fixes: bool,
    /// How long the node is NotReady while rebooting.
    pub takes: Duration,
    /// After a reboot that fixed it, the node's faults come back this long
    /// after it is up again (a node that looks healthy right after a reboot
    /// and fails under load), once per reboot.
    pub relapse_after: Option<Duration>,
}

impl RebootBehaviour {
    /// A reboot taking `takes` that fixes the node (`fixes`) for good.
    #[must_use]
    pub const fn new(fixes: bool, takes: Duration) -> Self {
        RebootBehaviour { fixes, takes, relapse_after: None }
    }
}

/// A fault of the simulated Civo API for its next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivoFault {
    /// Calls to let through untouched before this fault applies.
    pub skip: u32,
    /// HTTP status to answer with (0: answer normally after the delay).
    pub status: u16,
    /// Delay before answering.
    pub delay: Duration,
    /// How many calls it affects.
    pub calls: u32,
    /// A `Retry-After` header (seconds) on the fault's answers.
    pub retry_after: Option<u32>,
}

/// One call the simulated Civo API received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CivoCall {
    /// HTTP method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Status answered.
    pub status: u16,
}

/// A simulated Civo instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// Instance id.
    pub id: String,
    /// Hostname (the node name).
    pub hostname: String,
    /// Pool id.
    pub pool: String,
    /// Instance size.
    pub size: String,
    /// `ACTIVE`, `REBOOTING`, ...
    pub status: String,
    /// Public IP.
    pub public_ip: String,
    /// Private IP.
    pub private_ip: String,
    /// Node index (for addresses).
    #[serde(skip)]
    pub index: u32,
    /// GPUs.
    #[serde(skip)]
    pub gpus: u32,
}

#[derive(Default)]
pub(crate) struct CivoState {
    pub(crate) instances: BTreeMap<String, Instance>,
    pub(crate) pools: Vec<(String, String)>,
    pub(crate) faults: Vec<CivoFault>,
    pub(crate) calls: Vec<CivoCall>,
}

#[derive(Default)]
struct NodeState {
    faults: BTreeMap<String, Vec<Fault>>,
    /// Host services restarted through the simulated host endpoint, in order.
    restarts: Vec<(String, String)>,
    reboot: BTreeMap<String, RebootBehaviour>,
    /// Reboots started per node: only the latest one brings the node back.
    reboots: BTreeMap<String, u64>,
}

pub(crate) struct Inner {
    pub(crate) store: Mutex<Store>,
    pub(crate) civo: Mutex<CivoState>,
    nodes: Mutex<NodeState>,
    pub(crate) config: ClusterConfig,
    next_index: Mutex<u32>,
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

fn instance_id(n: u32) -> String {
    format!("0f9c7a52-3b1e-4d6a-9f20-{n:012x}")
}

/// The pool id of standard pool `p`.
#[must_use]
pub fn pool_id(p: u32) -> String {
    format!("5a1c{p:04x}-9e2b-4f7d-8c3a-1b6e0d9f2a47")
}

/// The pool id of the GPU pool.
#[must_use]
pub fn gpu_pool_id() -> String {
    "9d4e7f10-6c2a-4b8e-a1f3-5e0c7b2d9a61".into()
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

    /// Makes every watch from an older resource version fail with 410 Gone.
    pub fn compact(&self) {
        self.inner.store.lock().compact();
    }

    /// The current resource version.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.inner.store.lock().current_rv()
    }

    /// Injects a fault into a node.
    pub fn inject(&self, node: &str, fault: Fault) -> Result<(), ApiError> {
        {
            let mut st = self.inner.nodes.lock();
            let faults = st.faults.entry(node.to_owned()).or_default();
            if !faults.contains(&fault) {
                faults.push(fault);
            }
        }
        self.render(node)
    }

    /// Clears every fault of a node.
    pub fn heal(&self, node: &str) -> Result<(), ApiError> {
        self.inner.nodes.lock().faults.remove(node);
        self.render(node)
    }

    /// The faults of a node.
    #[must_use]
    pub fn faults(&self, node: &str) -> Vec<Fault> {
        self.inner.nodes.lock().faults.get(node).cloned().unwrap_or_default()
    }

    /// Says what a reboot of `node` does.
    pub fn set_reboot(&self, node: &str, behaviour: RebootBehaviour) {
        self.inner.nodes.lock().reboot.insert(node.to_owned(), behaviour);
    }

    fn reboot_behaviour(&self, node: &str) -> RebootBehaviour {
        self.inner
            .nodes
            .lock()
            .reboot
            .get(node)
            .copied()
            .unwrap_or(RebootBehaviour::new(true, self.inner.config.reboot_takes))
    }

    /// Writes a node's conditions, taints and GPUs from its faults.
    fn render(&self, node: &str) -> Result<(), ApiError> {
        let faults = self.faults(node);
        self.render_with(node, &faults, false)
    }

    fn render_with(&self, node: &str, faults: &[Fault], rebooting: bool) -> Result<(), ApiError> {
        let now = crate::store::now_rfc3339();
        self.update_node(node, |v| {
            let mut conds = fixtures::healthy_conditions();
            for c in &mut conds {
                let (status, reason, message) = match (c.type_.as_str(), rebooting) {
                    ("Ready", true) => ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
                    ("Ready", false) if faults.contains(&Fault::Unknown) || faults.contains(&Fault::KubeletStopped) => {
                        ("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
                    }
                    ("Ready", false) if faults.contains(&Fault::NotReady) => {
                        ("False", "KubeletNotReady", "container runtime network not ready: NetworkReady=false")
                    }
                    ("MemoryPressure", _) if faults.contains(&Fault::MemoryPressure) => {
                        ("True", "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
                    }
                    ("DiskPressure", _) if faults.contains(&Fault::DiskPressure) => {
                        ("True", "KubeletHasDiskPressure", "kubelet has disk pressure")
                    }
                    ("PIDPressure", _) if faults.contains(&Fault::PidPressure) => {
                        ("True", "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
                    }
                    ("NetworkUnavailable", _) if faults.contains(&Fault::CiliumDown) => {
                        ("True", "CiliumIsDown", "Cilium agent is not running on this node")
                    }
                    _ => continue,
                };
                c.status = status.into();
                c.reason = Some(reason.into());
                c.message = Some(message.into());
                c.last_transition_time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now.parse().unwrap_or_default()));
            }
            v["status"]["conditions"] = serde_json::to_value(&conds).unwrap_or(Value::Null);
            let mut taints: Vec<Value> = v["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|t| {
                    !matches!(
                        t["key"].as_str(),
                        Some(
                            "node.cilium.io/agent-not-ready"
                                | "node.kubernetes.io/unreachable"
                                | "node.kubernetes.io/not-ready"
                        )
                    )
                })
                .collect();
            if faults.contains(&Fault::CiliumDown) {
                taints.push(json!({"key": "node.cilium.io/agent-not-ready", "value": "true", "effect": "NoSchedule"}));
            }
            if rebooting || faults.contains(&Fault::Unknown) || faults.contains(&Fault::KubeletStopped) {
                taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": now}));
            } else if faults.contains(&Fault::NotReady) {
                taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule", "timeAdded": now}));
            }
            v["spec"]["taints"] = Value::Array(taints);
            if let Some(expected) = v["metadata"]["labels"][fixtures::GPU_COUNT_LABEL].as_str().map(str::to_owned) {
                let alloc = if faults.contains(&Fault::GpuLost) { "0".to_owned() } else { expected };
                v["status"]["allocatable"][fixtures::GPU_RESOURCE] = Value::String(alloc.clone());
                v["status"]["capacity"][fixtures::GPU_RESOURCE] = Value::String(alloc);
            }
        })?;
        if faults.contains(&Fault::LeaseStale) || faults.contains(&Fault::KubeletStopped) {
            self.update(Kind::Lease, "kube-node-lease", node, |l| {
                l["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
            })?;
        } else {
            self.renew_lease(node);
        }
        Ok(())
    }

    fn renew_lease(&self, node: &str) {
        let _ = self.update(Kind::Lease, "kube-node-lease", node, |l| {
            l["spec"]["renewTime"] = Value::String(now_micro());
        });
    }

    /// Renews the kubelet lease of every node without a `LeaseStale` fault or reboot in progress.
    pub fn renew_leases(&self) {
        let stale: Vec<String> = {
            let st = self.inner.nodes.lock();
            st.faults
                .iter()
                .filter(|(_, f)| f.contains(&Fault::LeaseStale) || f.contains(&Fault::KubeletStopped))
                .map(|(n, _)| n.clone())
                .collect()
        };
        for node in self.node_names() {
            if !stale.contains(&node) {
                self.renew_lease(&node);
            }
        }
    }

    /// Reboots the node behind an instance: NotReady now, then (after the
    /// reboot time) healthy if the reboot fixes it, else its faults again.
    pub(crate) fn reboot_instance(&self, id: &str) -> bool {
        let Some(host) = self.inner.civo.lock().instances.get_mut(id).map(|i| {
            i.status = "REBOOTING".into();
            i.hostname.clone()
        }) else {
            return false;
        };
        let b = self.reboot_behaviour(&host);
        let generation = {
            let mut st = self.inner.nodes.lock();
            let g = st.reboots.entry(host.clone()).or_default();
            *g += 1;
            *g
        };
        let faults = self.faults(&host);
        let _ = self.render_with(&host, &faults, true);
        let me = self.clone();
        let id = id.to_owned();
        self.spawn(async move {
            tokio::time::sleep(b.takes).await;
            let cleared = {
                let mut st = me.inner.nodes.lock();
                if st.reboots.get(&host) != Some(&generation) {
                    // A later reboot is still under way; it finishes the job.
                    return;
                }
                if b.fixes { st.faults.remove(&host) } else { None }
            };
            if let Some(i) = me.inner.civo.lock().instances.get_mut(&id) {
                i.status = "ACTIVE".into();
            }
            let _ = me.render(&host);
            if let (Some(after), Some(faults)) = (b.relapse_after, cleared) {
                tokio::time::sleep(after).await;
                if me.inner.nodes.lock().reboots.get(&host) != Some(&generation) {
                    return;
                }
                tracing::info!(node = %host, ?faults, "the node's faults are back after its reboot");
                for f in faults {
                    let _ = me.inject(&host, f);
                }
            }
        });
        true
    }

    /// Takes the Kubernetes API down: every request but the simulator's own
    /// (`/sim/...`) answers 503 and open watches end, until k3s is restarted
    /// on `fixed_by` (`POST /sim/v1/nodes/{fixed_by}/restart/k3s`, a
    /// control-plane host, not a node) or [`Cluster::end_api_outage`].
    pub fn api_outage(&self, fixed_by: &str) {
        tracing::warn!(fixed_by, "simulated API server outage");
        self.inner.outage.send_replace(Some(fixed_by.to_owned()));
    }

    /// Ends an API server outage.
    pub fn end_api_outage(&self) {
        self.inner.outage.send_replace(None);
    }

    /// Whether the API server is down.
    #[must_use]
    pub fn api_down(&self) -> bool {
        self.inner.outage.borrow().is_some()
    }

    /// Restarts a host service of `node` (what an operator's script or a
    /// fleet controller does over SSH): clears the faults that restart fixes
    /// and records the call. `k3s` on a control-plane host ends an API
    /// outage it causes (any host name is accepted for `k3s`). `None` when
    /// there is no such node.
    pub fn restart_service(&self, node: &str, service: &str) -> Option<Vec<Fault>> {
        if service == "k3s" {
            self.inner.nodes.lock().restarts.push((node.to_owned(), service.to_owned()));
            let fixed = self.inner.outage.borrow().as_deref() == Some(node);
            if fixed {
                self.end_api_outage();
            }
            tracing::info!(host = node, fixed, "k3s restarted");
            return Some(Vec::new());
        }
        self.node(node)?;
        let fixed = {
            let mut st = self.inner.nodes.lock();
            st.restarts.push((node.to_owned(), service.to_owned()));
            let faults = st.faults.entry(node.to_owned()).or_default();
            let fixed: Vec<Fault> = faults
                .iter()
                .copied()
                .filter(|f| matches!(f.soft_fix(), Some(SoftFix::Restart(s)) if s == service))
                .collect();
            faults.retain(|f| !fixed.contains(f));
            fixed
        };
        tracing::info!(node, service, ?fixed, "host service restarted");
        let _ = self.render(node);
        Some(fixed)
    }

    /// Whether the node's sidecar is ready (`None`: no such node).
    #[must_use]
    pub fn sidecar_ready(&self, node: &str) -> Option<bool> {
        self.node(node)?;
        Some(!self.faults(node).contains(&Fault::Sidecar503))
    }

    /// The sidecar's mark-ready: clears `Sidecar503` and records the call
    /// (as the service `sidecar-mark-ready`). `None`: no such node.
    pub fn mark_ready(&self, node: &str) -> Option<bool> {
        self.node(node)?;
        let had = {
            let mut st = self.inner.nodes.lock();
            st.restarts.push((node.to_owned(), "sidecar-mark-ready".to_owned()));
            let faults = st.faults.entry(node.to_owned()).or_default();
            let had = faults.contains(&Fault::Sidecar503);
            faults.retain(|f| *f != Fault::Sidecar503);
            had
        };
        tracing::info!(node, fixed = had, "sidecar marked ready");
        Some(had)
    }

    /// Every host service restart (and sidecar mark-ready, as the service
    /// `sidecar-mark-ready`) so far, in order: `(node, service)`.
    #[must_use]
    pub fn service_restarts(&self) -> Vec<(String, String)> {
        self.inner.nodes.lock().restarts.clone()
    }

    /// A pod was deleted through the API. A DaemonSet's pod comes back at
    /// once (same name, new uid), and a new Cilium agent pod clears its
    /// node's `CiliumDown`.
    pub(crate) fn pod_deleted(&self, pod: &Value) {
        let meta = &pod["metadata"];
        let daemon = meta["ownerReferences"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["kind"] == "DaemonSet" && r["controller"] == true));
        let (Some(ns), Some(name), Some(node)) =
            (meta["namespace"].as_str(), meta["name"].as_str(), pod["spec"]["nodeName"].as_str())
        else {
            return;
        };
        if !daemon || self.node(node).is_none() {
            return;
        }
        let app = meta["labels"]["app"].as_str().unwrap_or_default().to_owned();
        let fresh =
            serde_json::to_value(fixtures::pod(ns, name, node, &app, PodOwner::DaemonSet)).unwrap_or(Value::Null);
        let _ = self.create(Kind::Pod, fresh);
        if app == "cilium" {
            let had = {
                let mut st = self.inner.nodes.lock();
                let faults = st.faults.entry(node.to_owned()).or_default();
                let had = faults.contains(&Fault::CiliumDown);
                faults.retain(|f| *f != Fault::CiliumDown);
                had
            };
            tracing::info!(node, pod = name, fixed = had, "Cilium agent pod restarted");
            let _ = self.render(node);
        }
    }

    /// Deletes an instance: its node (and pods and lease) go, and after the
    /// replacement time a new node joins the same pool.
    pub(crate) fn delete_instance(&self, id: &str) -> Option<Instance> {
        let inst = self.inner.civo.lock().instances.remove(id)?;
        {
            let mut store = self.inner.store.lock();
            let _ = store.delete(Kind::Node, "", &inst.hostname, None);
            let _ = store.delete(Kind::Lease, "kube-node-lease", &inst.hostname, None);
            for p in store.matching(Kind::Pod, None, &Selectors::on_node(&inst.hostname)) {
                let _ = store.delete(Kind::Pod, &p.namespace.clone(), &p.name.clone(), None);
            }
        }
        self.inner.nodes.lock().faults.remove(&inst.hostname);
        let me = self.clone();
        let (pool, gpus) = (inst.pool.clone(), inst.gpus);
        let takes = self.inner.config.replace_takes;
        self.spawn(async move {
            tokio::time::sleep(takes).await;
            me.add_node(&pool, gpus);
        });
        Some(inst)
    }

    /// Makes the next `fault.calls` Civo API calls fail (or stall) as described.
    pub fn civo_fail_next(&self, fault: CivoFault) {
        self.inner.civo.lock().faults.push(fault);
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

    /// Every Civo API call received so far.
    #[must_use]
    pub fn civo_calls(&self) -> Vec<CivoCall> {
        self.inner.civo.lock().calls.clone()
    }

    /// Adds a Civo instance without a node (e.g. a duplicate hostname left by
    /// a botched rebuild).
    pub fn add_civo_instance(&self, instance: Instance) {
        self.inner.civo.lock().instances.insert(instance.id.clone(), instance);
    }

    /// Every Civo instance.
    #[must_use]
    pub fn instances(&self) -> Vec<Instance> {
        self.inner.civo.lock().instances.values().cloned().collect()
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
