//! [`NodeView`]: what the node checkers, the safety gates and the executors
//! read of a Kubernetes Node, in a few hundred bytes.
//!
//! A Node object is 15-30 KB (images, managedFields, heartbeat times) and
//! even a trimmed k8s-openapi `Node` is about 4 KB (a kilobyte of inline
//! `Option` fields, every label, every condition as five owned strings). A
//! controller that caches tens of thousands of nodes keeps a `NodeView`
//! instead: the name, the few labels, annotations and taints that matter,
//! the conditions, the allocatable GPUs and the addresses. The strings that
//! repeat across a fleet (condition types, statuses, reasons and messages,
//! taint keys) can be shared through a [`StringPool`], so a healthy node's
//! conditions cost a few pointers.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use health_core::{NodeClass, NodeFacts, Timestamp};
use k8s_openapi::api::core::v1::Node;
use parking_lot::Mutex;

use crate::node::{
    AUTOSCALER_TAINT, GPU_COUNT_LABEL, GPU_RESOURCE, OPT_OUT_ANNOTATION, POOL_LABEL, SHUTDOWN_TAINT, timestamp,
};

/// Longest condition message kept, in bytes (the checkers only put it in a
/// failure's detail; it is cut on a character boundary, with `…`).
pub const MAX_CONDITION_MESSAGE: usize = 256;

/// The annotation the Kubernetes executor sets on a node it cordoned (kept
/// in the view so that an uncordon by an operator is a change).
const CORDONED_ANNOTATION: &str = "node-agent.civo.com/cordoned";

/// The text of a condition: what thousands of healthy nodes repeat word for
/// word, so a [`StringPool`] keeps it once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ConditionText {
    type_: Box<str>,
    status: Box<str>,
    reason: Option<Box<str>>,
    message: Option<Box<str>>,
}

/// One Node condition as the checkers read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionView {
    text: Arc<ConditionText>,
    since: Option<Timestamp>,
}

impl ConditionView {
    /// The condition type, e.g. `Ready`.
    #[must_use]
    pub fn type_(&self) -> &str {
        &self.text.type_
    }

    /// The status: `True`, `False`, `Unknown` (or whatever the node wrote).
    #[must_use]
    pub fn status(&self) -> &str {
        &self.text.status
    }

    /// The machine-readable reason, if any.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        self.text.reason.as_deref()
    }

    /// The message, cut to [`MAX_CONDITION_MESSAGE`] bytes, if any.
    #[must_use]
    pub fn message(&self) -> Option<&str> {
        self.text.message.as_deref()
    }

    /// When the condition last changed status, if known.
    #[must_use]
    pub fn last_transition(&self) -> Option<Timestamp> {
        self.since
    }
}

/// What the checkers, gates and executors read of a Node. Build it with
/// [`NodeView::from_node`] (or [`NodeView::from_node_in`] to share common
/// strings through a [`StringPool`]); two views compare equal when nothing
/// a checker reads differs, so heartbeat-only updates compare equal.
///
/// ```
/// use health_checks::{NodeReadyChecker, NodeView};
/// use health_core::CheckOutcome;
/// use k8s_openapi::api::core::v1::Node;
///
/// let node: Node = serde_json::from_value(serde_json::json!({
///     "metadata": {"name": "n1", "labels": {"kubernetes.civo.com/civo-node-pool": "pool-a"}},
///     "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}
/// })).unwrap();
/// let view = NodeView::from_node(&node);
/// assert_eq!(view.name(), "n1");
/// assert_eq!(view.pool(), Some("pool-a"));
/// assert_eq!(NodeReadyChecker::new().evaluate(&view).reason(), Some("NodeNotReady"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    name: Arc<str>,
    uid: Option<Box<str>>,
    created_at: Option<Timestamp>,
    deleting: bool,
    unschedulable: bool,
    opted_out: bool,
    cordoned_by_agent: bool,
    /// Label values shared by many nodes: interned when built with a pool.
    gpu_count: Option<Arc<str>>,
    pool: Option<Arc<str>>,
    allocatable_gpu: Option<Arc<str>>,
    taints: Box<[Arc<str>]>,
    conditions: Box<[ConditionView]>,
    internal_ip: Option<Box<str>>,
    external_ip: Option<Box<str>>,
    /// The `Hostname` address when it differs from the name.
    hostname: Option<Box<str>>,
    /// The `Hostname` address equals the name (the usual case: no copy).
    hostname_is_name: bool,
}

impl NodeView {
    /// The view of `node`, with strings of its own.
    #[must_use]
    pub fn from_node(node: &Node) -> Self {
        Self::build(node, None)
    }

    /// The view of `node`, sharing condition texts and taint keys with every
    /// other view built from `pool`.
    #[must_use]
    pub fn from_node_in(node: &Node, pool: &StringPool) -> Self {
        Self::build(node, Some(pool))
    }

    fn build(node: &Node, pool: Option<&StringPool>) -> Self {
        let m = &node.metadata;
        let shared = |v: &str| pool.map_or_else(|| Arc::from(v), |p| p.intern(v));
        let label = |k: &str| m.labels.as_ref().and_then(|l| l.get(k)).map(|v| shared(v));
        let annotation = |k: &str| m.annotations.as_ref().and_then(|a| a.get(k));
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let address = |kind: &str| {
            status
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == kind))
                .map(|a| Box::from(a.address.as_str()))
        };
        let taints: Box<[Arc<str>]> = spec.and_then(|s| s.taints.as_ref()).map_or_else(Box::default, |ts| {
            ts.iter().map(|t| pool.map_or_else(|| Arc::from(t.key.as_str()), |p| p.intern(&t.key))).collect()
        });
        let conditions: Box<[ConditionView]> =
            status.and_then(|s| s.conditions.as_ref()).map_or_else(Box::default, |cs| {
                cs.iter()
                    .map(|c| {
                        let text = ConditionText {
                            type_: c.type_.as_str().into(),
                            status: c.status.as_str().into(),
                            reason: c.reason.as_deref().map(Box::from),
                            message: c.message.as_deref().map(|msg| shorten(msg, MAX_CONDITION_MESSAGE).into()),
                        };
                        ConditionView {
                            text: match pool {
                                Some(p) => p.intern_condition(text),
                                None => Arc::new(text),
                            },
                            since: c.last_transition_time.as_ref().map(timestamp),
                        }
                    })
                    .collect()
            });
        let name: Arc<str> = Arc::from(m.name.as_deref().unwrap_or(""));
        let mut hostname = address("Hostname");
        let hostname_is_name = hostname.as_deref() == Some(&*name);
        if hostname_is_name {
            hostname = None;
        }
        NodeView {
            name,
            uid: m.uid.as_deref().map(Box::from),
            created_at: m.creation_timestamp.as_ref().map(timestamp),
            deleting: m.deletion_timestamp.is_some(),
            unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
            opted_out: annotation(OPT_OUT_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true")),
            cordoned_by_agent: annotation(CORDONED_ANNOTATION).is_some(),
            gpu_count: label(GPU_COUNT_LABEL),
            pool: label(POOL_LABEL),
            allocatable_gpu: status
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(GPU_RESOURCE))
                .map(|q| shared(&q.0)),
            taints,
            conditions,
            internal_ip: address("InternalIP"),
            external_ip: address("ExternalIP"),
            hostname,
            hostname_is_name,
        }
    }

    /// The node's name (empty when the object had none).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's name as a shared string (a clone of the view's own copy).
    #[must_use]
    pub fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// The object's uid, if any (Events refer to it).
    #[must_use]
    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// When the node was created, if known.
    #[must_use]
    pub fn created_at(&self) -> Option<Timestamp> {
        self.created_at
    }

    /// Whether the node is being deleted.
    #[must_use]
    pub fn deleting(&self) -> bool {
        self.deleting
    }

    /// Whether the node is cordoned (`spec.unschedulable`).
    #[must_use]
    pub fn unschedulable(&self) -> bool {
        self.unschedulable
    }

    /// Whether the node carries the remediation opt-out annotation set to `"true"`.
    #[must_use]
    pub fn opted_out(&self) -> bool {
        self.opted_out
    }

    /// Whether the node carries the annotation of a cordon by the agent.
    #[must_use]
    pub fn cordoned_by_agent(&self) -> bool {
        self.cordoned_by_agent
    }

    /// The raw value of the GPU count label ([`GPU_COUNT_LABEL`]), if any.
    #[must_use]
    pub fn gpu_count_label(&self) -> Option<&str> {
        self.gpu_count.as_deref()
    }

    /// The Civo pool id (label [`POOL_LABEL`]), if any.
    #[must_use]
    pub fn pool(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    /// The raw allocatable quantity of [`GPU_RESOURCE`], if any.
    #[must_use]
    pub fn allocatable_gpu(&self) -> Option<&str> {
        self.allocatable_gpu.as_deref()
    }

    /// The keys of the node's taints.
    pub fn taint_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.taints.iter().map(|t| &**t)
    }

    /// The node's conditions, in the object's order.
    #[must_use]
    pub fn conditions(&self) -> &[ConditionView] {
        &self.conditions
    }

    /// The conditions of one type (a node may, wrongly, report one twice).
    pub fn conditions_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a ConditionView> + 'a {
        self.conditions.iter().filter(move |c| c.type_() == kind)
    }

    /// The `InternalIP` address, if any.
    #[must_use]
    pub fn internal_ip(&self) -> Option<&str> {
        self.internal_ip.as_deref()
    }

    /// The `ExternalIP` address, if any.
    #[must_use]
    pub fn external_ip(&self) -> Option<&str> {
        self.external_ip.as_deref()
    }

    /// The `Hostname` address, if any.
    #[must_use]
    pub fn hostname(&self) -> Option<&str> {
        if self.hostname_is_name { Some(&self.name) } else { self.hostname.as_deref() }
    }

    /// The node class: `Gpu` when the GPU count label holds a positive count.
    #[must_use]
    pub fn class(&self) -> NodeClass {
        match crate::node::expected_gpus(self) {
            Ok(Some(n)) if n > 0 => NodeClass::Gpu,
            _ => NodeClass::Standard,
        }
    }

    /// The facts the safety gates consult.
    #[must_use]
    pub fn facts(&self) -> NodeFacts {
        NodeFacts {
            class: self.class(),
            created_at: self.created_at,
            deleting: self.deleting,
            tainted_for_removal: self.taint_keys().any(|k| k == AUTOSCALER_TAINT || k == SHUTDOWN_TAINT),
            opted_out: self.opted_out,
        }
    }

    /// An estimate of the bytes this view holds on the heap and inline,
    /// counting shared strings in full (for memory figures).
    #[must_use]
    pub fn approx_size(&self) -> usize {
        let opt = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        let shared = |s: &Option<Arc<str>>| s.as_ref().map_or(0, |s| s.len());
        std::mem::size_of::<Self>()
            + self.name.len()
            + opt(&self.uid)
            + shared(&self.gpu_count)
            + shared(&self.pool)
            + shared(&self.allocatable_gpu)
            + opt(&self.internal_ip)
            + opt(&self.external_ip)
            + opt(&self.hostname)
            + self.taints.iter().map(|t| std::mem::size_of::<Arc<str>>() + t.len()).sum::<usize>()
            + self
                .conditions
                .iter()
                .map(|c| {
                    std::mem::size_of::<ConditionView>()
                        + std::mem::size_of::<ConditionText>()
                        + c.type_().len()
                        + c.status().len()
                        + c.reason().map_or(0, str::len)
                        + c.message().map_or(0, str::len)
                })
                .sum::<usize>()
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with `…`
/// when cut (how condition messages are kept; also for other bounded text).
///
/// ```
/// assert_eq!(health_checks::shorten("kubelet stopped", 7), "kubelet…");
/// assert_eq!(health_checks::shorten("é", 1), "…");
/// assert_eq!(health_checks::shorten("ok", 7), "ok");
/// ```
#[must_use]
pub fn shorten(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// Shared strings for [`NodeView`]s: the condition texts (type, status,
/// reason and message together) and taint keys that thousands of nodes
/// repeat are kept once, so a healthy node's conditions cost a pointer and
/// a time each.
///
/// The pool is bounded by what views use: when a set has doubled since its
/// last sweep (and holds at least 1,024 entries), entries no view refers to
/// any more are dropped and the set's table is shrunk, so it holds at most
/// about twice the live entries (a message that carries a per-node detail
/// goes at the first sweep after the last view that had it).
#[derive(Debug, Default)]
pub struct StringPool {
    inner: Mutex<PoolInner>,
}

#[derive(Debug, Default)]
struct PoolInner {
    strings: Swept<str>,
    conditions: Swept<ConditionText>,
}

/// A set of shared values swept of unused ones as it grows.
#[derive(Debug)]
struct Swept<T: ?Sized> {
    set: HashSet<Arc<T>>,
    /// The size after the last sweep.
    swept_at: usize,
}

impl<T: ?Sized> Default for Swept<T> {
    fn default() -> Self {
        Swept { set: HashSet::new(), swept_at: 0 }
    }
}

impl<T: ?Sized + Eq + std::hash::Hash> Swept<T> {
    /// Adds `value`, first sweeping when the set has doubled since the last
    /// sweep (and holds at least [`SWEEP_FLOOR`]).
    fn insert(&mut self, value: Arc<T>) -> Arc<T> {
        if self.set.len() >= SWEEP_FLOOR.max(self.swept_at.saturating_mul(2)) {
            self.set.retain(|s| Arc::strong_count(s) > 1);
            self.set.shrink_to(2 * self.set.len());
            self.swept_at = self.set.len();
        }
        self.set.insert(Arc::clone(&value));
        value
    }
}

/// Below this many entries a set is never swept.
const SWEEP_FLOOR: usize = 1024;

impl StringPool {
    /// An empty pool.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared copy of `s`.
    pub fn intern(&self, s: &str) -> Arc<str> {
        let mut inner = self.inner.lock();
        if let Some(found) = inner.strings.set.get(s) {
            return Arc::clone(found);
        }
        inner.strings.insert(Arc::from(s))
    }

    fn intern_condition(&self, text: ConditionText) -> Arc<ConditionText> {
        let mut inner = self.inner.lock();
        if let Some(found) = inner.conditions.set.get(&text) {
            return Arc::clone(found);
        }
        inner.conditions.insert(Arc::new(text))
    }

    /// How many strings and condition texts the pool holds.
    #[must_use]
    pub fn len(&self) -> usize {
        let inner = self.inner.lock();
        inner.strings.set.len() + inner.conditions.set.len()
    }

    /// Whether the pool holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, message: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "uid": "u-1",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"nvidia.com/gpu.count": "2", "kubernetes.civo.com/civo-node-pool": "p1", "other": "x"},
                "annotations": {"node-agent.civo.com/opt-out": "TRUE", "unrelated": "y"}
            },
            "spec": {"unschedulable": true, "taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"nvidia.com/gpu": "2", "cpu": "4"},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": message,
                     "lastHeartbeatTime": "2026-01-02T00:00:00Z", "lastTransitionTime": "2026-01-01T00:01:00Z"}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_view_keeps_what_is_read() {
        let v = NodeView::from_node(&node("n1", "kubelet is posting ready status"));
        assert_eq!(v.name(), "n1");
        assert_eq!(v.uid(), Some("u-1"));
        assert_eq!(v.pool(), Some("p1"));
        assert_eq!(v.gpu_count_label(), Some("2"));
        assert_eq!(v.allocatable_gpu(), Some("2"));
        assert_eq!(v.internal_ip(), Some("10.0.0.1"));
        assert_eq!(v.hostname(), Some("n1"));
        assert_eq!(v.external_ip(), None);
        assert!(v.unschedulable() && v.opted_out() && !v.deleting() && !v.cordoned_by_agent());
        assert_eq!(v.taint_keys().collect::<Vec<_>>(), [AUTOSCALER_TAINT]);
        let c = &v.conditions()[0];
        assert_eq!((c.type_(), c.status(), c.reason()), ("Ready", "True", Some("KubeletReady")));
        assert_eq!(c.last_transition(), Some(Timestamp::from_secs(1_767_225_660)));
        let f = v.facts();
        assert_eq!(f.class, NodeClass::Gpu);
        assert!(f.tainted_for_removal && f.opted_out);
        assert_eq!(f.created_at, Some(Timestamp::from_secs(1_767_225_600)));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        let v = NodeView::from_node(&node("n1", &long));
        let m = v.conditions()[0].message().unwrap();
        assert!(m.len() <= MAX_CONDITION_MESSAGE + '…'.len_utf8(), "{}", m.len());
        assert!(m.ends_with('…'));
    }

    #[test]
    fn the_pool_shares_strings_and_forgets_unused_ones() {
        let pool = StringPool::new();
        let a = NodeView::from_node_in(&node("a", "same"), &pool);
        let b = NodeView::from_node_in(&node("b", "same"), &pool);
        assert!(Arc::ptr_eq(&a.conditions()[0].text, &b.conditions()[0].text));
        assert!(Arc::ptr_eq(&a.taints[0], &b.taints[0]));
        assert_eq!(a, NodeView::from_node(&node("a", "same")), "pooled and own strings compare equal");
        // Unique messages of views that are gone are swept once the pool doubles.
        for i in 0..10 * SWEEP_FLOOR {
            drop(NodeView::from_node_in(&node("c", &format!("detail {i}")), &pool));
        }
        assert!(pool.len() <= 2 * SWEEP_FLOOR + 8, "{}", pool.len());
        assert!(
            pool.inner.lock().conditions.set.iter().any(|c| c.message.as_deref() == Some("same")),
            "live condition texts stay"
        );
        assert!(pool.inner.lock().strings.set.contains(AUTOSCALER_TAINT), "live taint keys stay");
        drop((a, b));
    }
}
