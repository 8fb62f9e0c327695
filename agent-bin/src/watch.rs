//! The Node source: a kube-runtime watcher of the selected Nodes feeding a
//! cache of reduced views ([`AgentNode`]).
//!
//! The cache is complete only after the watcher's first list (`InitDone`).
//! Any watch error marks it stale (the engine then starts nothing new),
//! counts `reconcile_errors_total{reason="watch"}` and restarts the watcher
//! after a back-off with a fresh list; the cache is trusted again only when
//! that list is complete. Updates that change nothing the agent reads
//! (heartbeats, images, resourceVersion) do not wake the evaluation loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use health_core::{ComponentStatus, HealthManager};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::node::{AgentNode, NodeRef};

/// The component name of the Node watch in component health.
pub const COMPONENT: &str = "kube-watch";

#[derive(Default)]
struct Inner {
    /// Keyed by the view's own name (shared, not copied).
    nodes: HashMap<Arc<str>, NodeRef>,
    synced: bool,
    stale: Option<String>,
    generation: u64,
    /// Nodes updated since the last [`NodeCache::take_changes`].
    dirty: HashSet<Arc<str>>,
    /// Nodes added or removed (or a new list) since then.
    membership: bool,
}

/// What changed since the last look, for an incremental evaluation.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Every node, when the set changed or a full pass was asked for; else empty.
    pub all: Vec<NodeRef>,
    /// The nodes updated since the last look (when `all` is empty).
    pub changed: Vec<NodeRef>,
    /// Whether `all` holds the full set.
    pub full: bool,
    /// Whether a complete list has been seen.
    pub synced: bool,
    /// Why the cache cannot be trusted right now, if it cannot.
    pub stale: Option<String>,
}

/// The cache of selected Nodes, shared by the watch task and the loop.
#[derive(Default)]
pub struct NodeCache {
    inner: Mutex<Inner>,
    changed: Notify,
}

/// A consistent copy of the cache.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The nodes, in name order.
    pub nodes: Vec<NodeRef>,
    /// Whether a complete list has been seen.
    pub synced: bool,
    /// Why the cache cannot be trusted right now, if it cannot.
    pub stale: Option<String>,
    /// Bumped on every relevant change.
    pub generation: u64,
}

impl NodeCache {
    /// An empty, unsynced cache.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(NodeCache::default())
    }

    /// Waits until something relevant changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The current generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// A copy of the nodes and flags.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock();
        let mut nodes: Vec<NodeRef> = inner.nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.name().cmp(b.name()));
        Snapshot { nodes, synced: inner.synced, stale: inner.stale.clone(), generation: inner.generation }
    }

    /// Takes what changed since the last call: the full set when nodes came
    /// or went (or `full` is asked), else only the updated nodes. Nothing is
    /// taken before the first complete list.
    pub fn take_changes(&self, full: bool) -> Changes {
        let mut inner = self.inner.lock();
        let mut out = Changes { synced: inner.synced, stale: inner.stale.clone(), ..Changes::default() };
        if !inner.synced {
            return out;
        }
        if full || inner.membership {
            out.full = true;
            out.all = inner.nodes.values().cloned().collect();
        } else {
            let dirty = std::mem::take(&mut inner.dirty);
            out.changed = dirty.iter().filter_map(|n| inner.nodes.get(n).cloned()).collect();
        }
        inner.membership = false;
        inner.dirty.clear();
        out
    }

    fn bump(inner: &mut Inner, notify: &Notify) {
        inner.generation += 1;
        notify.notify_one();
    }

    /// Inserts or updates a node; returns whether anything the agent reads changed.
    pub fn upsert(&self, node: AgentNode) -> bool {
        let mut inner = self.inner.lock();
        let name = node.view().shared_name();
        if inner.nodes.get(&name).is_some_and(|old| **old == node) {
            return false;
        }
        if inner.nodes.insert(Arc::clone(&name), Arc::new(node)).is_none() {
            inner.membership = true;
        } else {
            inner.dirty.insert(name);
        }
        Self::bump(&mut inner, &self.changed);
        true
    }

    /// Marks `name` changed (its kubelet lease crossed the staleness limit):
    /// it is evaluated again.
    pub fn touch(&self, name: &str) {
        let mut inner = self.inner.lock();
        if let Some(key) = inner.nodes.get_key_value(name).map(|(k, _)| Arc::clone(k)) {
            inner.dirty.insert(key);
            Self::bump(&mut inner, &self.changed);
        }
    }

    /// Marks every node changed (the lease list was replaced or lost).
    pub fn touch_all(&self) {
        let mut inner = self.inner.lock();
        let names: Vec<Arc<str>> = inner.nodes.keys().cloned().collect();
        inner.dirty.extend(names);
        Self::bump(&mut inner, &self.changed);
    }

    /// Removes a node.
    pub fn remove(&self, name: &str) -> bool {
        let mut inner = self.inner.lock();
        if inner.nodes.remove(name).is_none() {
            return false;
        }
        inner.membership = true;
        Self::bump(&mut inner, &self.changed);
        true
    }

    /// Replaces the whole set after a complete list and marks the cache synced and fresh.
    pub fn replace_all(&self, nodes: HashMap<Arc<str>, NodeRef>) {
        let mut inner = self.inner.lock();
        inner.nodes = nodes;
        inner.membership = true;
        inner.dirty.clear();
        inner.synced = true;
        inner.stale = None;
        Self::bump(&mut inner, &self.changed);
    }

    /// Marks the cache stale (the engine holds new actions back).
    pub fn mark_stale(&self, why: impl Into<String>) {
        let mut inner = self.inner.lock();
        inner.stale = Some(why.into());
        Self::bump(&mut inner, &self.changed);
    }
}

/// Settings of the watch task.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The pool label selector (None: every node).
    pub selector: Option<String>,
    /// First back-off after an error (doubling).
    pub backoff_initial: Duration,
    /// Largest back-off.
    pub backoff_max: Duration,
    /// The metric name of reconcile errors.
    pub errors_metric: String,
    /// The API server, for log lines.
    pub server: String,
    /// The kubelet leases, when the kubelet-lease checker is on.
    pub leases: Option<crate::leases::LeaseHandle>,
    /// The failure-domain labels whose values each node keeps.
    pub domain_labels: Arc<[String]>,
}

/// Runs the watch until the task is dropped (aborted).
pub async fn watch_nodes(client: Client, config: WatchConfig, cache: Arc<NodeCache>, health: Arc<HealthManager>) {
    let api: Api<Node> = Api::all(client);
    let mut backoff = config.backoff_initial;
    let mut wc = watcher::Config::default();
    if let Some(s) = &config.selector {
        wc = wc.labels(s);
    }
    let meta = |synced: bool| {
        let mut m = BTreeMap::new();
        m.insert("selector".to_owned(), config.selector.clone().unwrap_or_else(|| "(all nodes)".into()));
        m.insert("synced".to_owned(), synced.to_string());
        m
    };
    health.update(COMPONENT, ComponentStatus::Degraded, "listing nodes", meta(false));
    loop {
        let mut stream = watcher::watcher(api.clone(), wc.clone()).boxed();
        let mut buffer: Option<HashMap<Arc<str>, NodeRef>> = None;
        let error = loop {
            match stream.next().await {
                None => break "the watch stream ended".to_owned(),
                Some(Ok(Event::Init)) => buffer = Some(HashMap::new()),
                Some(Ok(Event::InitApply(n))) => {
                    let view = AgentNode::from_node(&n, &config.domain_labels).with_leases(config.leases.clone());
                    buffer.get_or_insert_with(HashMap::new).insert(view.view().shared_name(), Arc::new(view));
                }
                Some(Ok(Event::InitDone)) => {
                    let nodes = buffer.take().unwrap_or_default();
                    tracing::info!(nodes = nodes.len(), selector = ?config.selector, "node list complete; cache synced");
                    health.update(COMPONENT, ComponentStatus::Healthy, format!("{} nodes", nodes.len()), meta(true));
                    cache.replace_all(nodes);
                    backoff = config.backoff_initial;
                }
                Some(Ok(Event::Apply(n))) => {
                    cache.upsert(AgentNode::from_node(&n, &config.domain_labels).with_leases(config.leases.clone()));
                }
                Some(Ok(Event::Delete(n))) => {
                    if let Some(name) = n.metadata.name.as_deref() {
                        cache.remove(name);
                    }
                }
                Some(Err(e)) => break e.to_string(),
            }
        };
        metrics::counter!(config.errors_metric.clone(), "reason" => "watch").increment(1);
        tracing::warn!(
            error = %error,
            server = %config.server,
            retry_in = ?backoff,
            "node watch failed: the cache is stale and no new action starts until a fresh list completes"
        );
        health.update(COMPONENT, ComponentStatus::Degraded, format!("watch failed: {error}"), meta(false));
        cache.mark_stale(format!("node watch failed: {error}"));
        drop(stream);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}
