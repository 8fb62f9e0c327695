//! Fixtures shared by the engine tests: a node target, a fleet of them and
//! a NodeReady checker.
#![allow(dead_code)]

use std::time::Duration;

use health_core::{CheckOutcome, FnChecker, NodeFacts, Target};

/// The tests' wall-clock start.
pub(crate) const T0: u64 = 1_700_000_000;
/// One minute.
pub(crate) const MIN: Duration = Duration::from_secs(60);

/// A node: ready or not, with gate facts.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ready: bool,
    pub(crate) facts: NodeFacts,
    /// Labels (for failure domains).
    pub(crate) labels: Vec<(String, String)>,
}

impl Node {
    pub(crate) fn new(name: &str, ready: bool) -> Self {
        Node { name: name.to_owned(), ready, facts: NodeFacts::default(), labels: Vec::new() }
    }

    /// The node with the label `key=value`.
    pub(crate) fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }
}

impl Target for Node {
    fn name(&self) -> &str {
        &self.name
    }
    fn facts(&self) -> NodeFacts {
        self.facts
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `node-0`..`node-{n-1}`, those in `not_ready` NotReady.
pub(crate) fn nodes(n: usize, not_ready: &[usize]) -> Vec<Node> {
    (0..n).map(|i| Node::new(&format!("node-{i}"), !not_ready.contains(&i))).collect()
}

/// NodeReady with a 5-minute threshold.
pub(crate) fn ready_checker() -> FnChecker<impl Fn(&Node) -> CheckOutcome + Send + Sync> {
    FnChecker::new("NodeReady", 5 * MIN, |n: &Node| {
        if n.ready { CheckOutcome::Pass } else { CheckOutcome::fail("KubeletNotReady") }
    })
}
