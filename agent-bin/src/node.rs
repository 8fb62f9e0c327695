//! What the agent keeps of a Node: the fields the checkers, the gates and the
//! executors read, nothing else.
//!
//! A Node object is 15-30 KB (images, managedFields, heartbeat times); the
//! agent reduces it to a few hundred bytes *before* caching it, and compares
//! reduced views to ignore heartbeat-only updates.

use std::collections::BTreeMap;
use std::sync::Arc;

use health_checks::{GPU_RESOURCE, LeaseObservation, NodeIdentity, NodeSource};
use health_core::{NodeFacts, Target};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Annotations the agent reads (its state annotation is not among them: a
/// save must not look like a change of the node).
const KEPT_ANNOTATIONS: &[&str] = &[health_checks::OPT_OUT_ANNOTATION, recovery_exec::CORDONED_ANNOTATION];
/// Longest condition message kept (the checkers only read reasons; logs get a hint).
const MAX_MESSAGE: usize = 256;

/// A reduced Node, as the agent caches and evaluates it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentNode {
    node: Node,
    lease: LeaseObservation,
    /// The kubelet leases, when the kubelet-lease checker is on (read at check time).
    leases: Option<crate::leases::LeaseHandle>,
}

impl AgentNode {
    /// Reduces a full Node to what the agent needs.
    #[must_use]
    pub fn from_node(full: &Node) -> Self {
        AgentNode { node: trim(full), lease: LeaseObservation::NotFetched, leases: None }
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
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// An approximation of the bytes this view holds (for memory figures).
    #[must_use]
    pub fn approx_size(&self) -> usize {
        serde_json::to_vec(&self.node).map_or(0, |v| v.len())
    }
}

fn trim(full: &Node) -> Node {
    let m = &full.metadata;
    let annotations: Option<BTreeMap<String, String>> = m.annotations.as_ref().map(|a| {
        a.iter().filter(|(k, _)| KEPT_ANNOTATIONS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
    });
    let metadata = ObjectMeta {
        name: m.name.clone(),
        uid: m.uid.clone(),
        labels: m.labels.clone(),
        annotations: annotations.filter(|a| !a.is_empty()),
        creation_timestamp: m.creation_timestamp.clone(),
        deletion_timestamp: m.deletion_timestamp.clone(),
        ..ObjectMeta::default()
    };
    let spec = full.spec.as_ref().map(|s| NodeSpec {
        taints: s.taints.clone(),
        unschedulable: s.unschedulable,
        provider_id: s.provider_id.clone(),
        ..NodeSpec::default()
    });
    let status = full.status.as_ref().map(|s| NodeStatus {
        conditions: s.conditions.as_ref().map(|cs| {
            cs.iter()
                .map(|c| NodeCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.as_ref().map(|msg| truncate(msg, MAX_MESSAGE)),
                    last_transition_time: c.last_transition_time.clone(),
                    last_heartbeat_time: None,
                })
                .collect()
        }),
        allocatable: s.allocatable.as_ref().map(|a| {
            a.iter().filter(|(k, _)| k.as_str() == GPU_RESOURCE).map(|(k, v)| (k.clone(), v.clone())).collect()
        }),
        addresses: s.addresses.as_ref().map(|a| {
            a.iter()
                .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP" | "Hostname"))
                .map(|a| NodeAddress { type_: a.type_.clone(), address: a.address.clone() })
                .collect()
        }),
        ..NodeStatus::default()
    });
    Node { metadata, spec, status }
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Target for AgentNode {
    fn name(&self) -> &str {
        AgentNode::name(self)
    }
    fn facts(&self) -> NodeFacts {
        health_checks::node_facts(&self.node)
    }
}

impl NodeSource for AgentNode {
    fn node(&self) -> &Node {
        &self.node
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
        self.node.internal_ip()
    }
    fn external_ip(&self) -> Option<&str> {
        self.node.external_ip()
    }
    fn hostname(&self) -> Option<&str> {
        self.node.hostname()
    }
}

impl recovery_exec::ExecTarget for AgentNode {
    fn node_name(&self) -> &str {
        AgentNode::name(self)
    }
    fn pool_id(&self) -> Option<&str> {
        recovery_exec::ExecTarget::pool_id(&self.node)
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
        }
    }

    #[test]
    fn trimming_keeps_what_checkers_need_and_drops_the_rest() {
        let full = node(&plan("gpu-3", 8));
        let full_size = serde_json::to_vec(&full).unwrap().len();
        let view = AgentNode::from_node(&full);
        assert!(view.approx_size() * 5 < full_size, "{} vs {full_size}", view.approx_size());
        let checkers = health_checks::CheckersConfig::default().build::<NodeRef>().unwrap();
        let ctx = health_core::CheckContext::at(health_core::Timestamp::from_secs(1_700_000_000));
        for c in &checkers {
            let a = c.check_sync(&Arc::new(view.clone()), &ctx);
            let b = c.check_sync(
                &Arc::new(AgentNode { node: full.clone(), lease: LeaseObservation::NotFetched, leases: None }),
                &ctx,
            );
            let a = a.map(|r| r.map_err(|e| e.to_string()));
            let b = b.map(|r| r.map_err(|e| e.to_string()));
            assert_eq!(a, b, "{}", c.name());
        }
        assert_eq!(view.facts(), health_checks::node_facts(&full));
    }

    #[test]
    fn heartbeat_only_updates_compare_equal() {
        let full = node(&plan("std-1", 0));
        let mut beat = full.clone();
        for c in beat.status.as_mut().unwrap().conditions.as_mut().unwrap() {
            c.last_heartbeat_time = None;
        }
        beat.metadata.resource_version = Some("999".into());
        assert_eq!(AgentNode::from_node(&full), AgentNode::from_node(&beat));
    }
}
