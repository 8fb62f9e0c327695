//! What the agent keeps of a Node: the fields the checkers, the gates and the
//! executors read, nothing else.
//!
//! A Node object is 15-30 KB (images, managedFields, heartbeat times); the
//! agent reduces it to a [`NodeView`] of a few hundred bytes *before*
//! caching it (condition and taint strings shared across nodes through one
//! [`StringPool`]), and compares views to ignore heartbeat-only updates.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use health_checks::{LeaseObservation, NodeIdentity, NodeSource, NodeView, StringPool};
use health_core::{NodeFacts, Target};
use k8s_openapi::api::core::v1::Node;

/// The strings every cached view shares (condition types, statuses,
/// reasons and messages, taint keys).
static POOL: LazyLock<StringPool> = LazyLock::new(StringPool::new);

/// A reduced Node, as the agent caches and evaluates it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentNode {
    view: NodeView,
    lease: LeaseObservation,
    /// The kubelet leases, when the kubelet-lease checker is on (read at check time).
    leases: Option<crate::leases::LeaseHandle>,
    /// The node's values of the failure-domain labels (key, value), interned.
    labels: Box<[(Arc<str>, Arc<str>)]>,
}

impl AgentNode {
    /// Reduces a full Node to what the agent needs, keeping its values of
    /// `domain_labels` (the policy's failure-domain labels).
    #[must_use]
    pub fn from_node(full: &Node, domain_labels: &[String]) -> Self {
        let node_labels = full.metadata.labels.as_ref();
        let labels = domain_labels
            .iter()
            .filter_map(|k| node_labels.and_then(|l| l.get(k)).map(|v| (POOL.intern(k), POOL.intern(v))))
            .collect();
        AgentNode {
            view: NodeView::from_node_in(full, &POOL),
            lease: LeaseObservation::NotFetched,
            leases: None,
            labels,
        }
    }

    /// The node reading its kubelet lease from `leases` at check time.
    #[must_use]
    pub fn with_leases(mut self, leases: Option<crate::leases::LeaseHandle>) -> Self {
        self.leases = leases;
        self
    }

    /// The node with a kubelet lease observation.
    #[must_use]
    pub fn with_lease(mut self, lease: LeaseObservation) -> Self {
        self.lease = lease;
        self
    }

    /// The reduced Node.
    #[must_use]
    pub fn view(&self) -> &NodeView {
        &self.view
    }

    /// The node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.view.name()
    }

    /// An approximation of the bytes this view holds (for memory figures).
    #[must_use]
    pub fn approx_size(&self) -> usize {
        std::mem::size_of::<Self>() - std::mem::size_of::<NodeView>()
            + self.view.approx_size()
            + self.labels.len() * std::mem::size_of::<(Arc<str>, Arc<str>)>()
    }
}

impl Target for AgentNode {
    fn name(&self) -> &str {
        AgentNode::name(self)
    }
    fn shared_name(&self) -> Arc<str> {
        self.view.shared_name()
    }
    fn facts(&self) -> NodeFacts {
        self.view.facts()
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }
}

impl NodeSource for AgentNode {
    fn view(&self) -> Cow<'_, NodeView> {
        Cow::Borrowed(&self.view)
    }
    fn lease(&self) -> LeaseObservation {
        match &self.leases {
            Some(map) => map.0.observe(AgentNode::name(self)),
            None => self.lease,
        }
    }
}

impl NodeIdentity for AgentNode {
    fn node_name(&self) -> &str {
        AgentNode::name(self)
    }
    fn internal_ip(&self) -> Option<&str> {
        self.view.internal_ip()
    }
    fn external_ip(&self) -> Option<&str> {
        self.view.external_ip()
    }
    fn hostname(&self) -> Option<&str> {
        self.view.hostname()
    }
}

impl recovery_exec::ExecTarget for AgentNode {
    fn node_name(&self) -> &str {
        AgentNode::name(self)
    }
    fn pool_id(&self) -> Option<&str> {
        self.view.pool()
    }
    fn internal_ip(&self) -> Option<&str> {
        self.view.internal_ip()
    }
}

/// A shared reduced node.
pub type NodeRef = Arc<AgentNode>;

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_sim::fixtures::{NodePlan, node};

    fn plan(name: &str, gpus: u32) -> NodePlan {
        NodePlan {
            name: name.into(),
            pool: "pool-a".into(),
            instance_id: format!("i-{name}"),
            gpus,
            index: 3,
            region: "LON1".into(),
            zone: None,
        }
    }

    #[test]
    fn trimming_keeps_what_checkers_need_and_drops_the_rest() {
        let full = node(&plan("gpu-3", 8));
        let full_size = serde_json::to_vec(&full).unwrap().len();
        let view = AgentNode::from_node(&full, &[]);
        assert!(view.approx_size() * 10 < full_size, "{} vs {full_size}", view.approx_size());
        let checkers = health_checks::CheckersConfig::default().build::<NodeRef>().unwrap();
        let on_full = health_checks::CheckersConfig::default().build::<Node>().unwrap();
        let ctx = health_core::CheckContext::at(health_core::Timestamp::from_secs(1_700_000_000));
        for (c, f) in checkers.iter().zip(&on_full) {
            let a = c.check_sync(&Arc::new(view.clone()), &ctx).map(|r| r.map_err(|e| e.to_string()));
            let b = f.check_sync(&full, &ctx).map(|r| r.map_err(|e| e.to_string()));
            assert_eq!(a, b, "{}", c.name());
        }
        assert_eq!(view.facts(), health_checks::node_facts(&full));
    }

    #[test]
    fn the_executors_cordon_mark_is_seen_and_is_a_change() {
        let full = node(&plan("std-2", 0));
        let mut cordoned = full.clone();
        cordoned
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(recovery_exec::CORDONED_ANNOTATION.to_owned(), "true".to_owned());
        let (a, b) = (AgentNode::from_node(&full, &[]), AgentNode::from_node(&cordoned, &[]));
        assert!(!a.view().cordoned_by_agent());
        assert!(b.view().cordoned_by_agent(), "the view reads recovery-exec's annotation");
        assert_eq!(
            a.view().pool(),
            full.metadata.labels.as_ref().unwrap().get(recovery_exec::POOL_LABEL).map(String::as_str),
            "the view reads the pool from recovery-exec's label"
        );
        assert_ne!(a, b, "an uncordon by an operator must wake the agent");
    }

    #[test]
    fn heartbeat_only_updates_compare_equal() {
        let full = node(&plan("std-1", 0));
        let mut beat = full.clone();
        for c in beat.status.as_mut().unwrap().conditions.as_mut().unwrap() {
            c.last_heartbeat_time = None;
        }
        beat.metadata.resource_version = Some("999".into());
        assert_eq!(AgentNode::from_node(&full, &[]), AgentNode::from_node(&beat, &[]));
    }
}
