//! The [`Target`] trait: what the engine evaluates.

use std::sync::Arc;

use crate::domain::NodeFacts;

/// Something the engine evaluates: a Kubernetes Node, a VM, a device.
pub trait Target: Send + Sync {
    /// A unique, stable name (the state store key and the `node` label).
    fn name(&self) -> &str;
    /// The name as a shared string. The engine keeps one copy of each
    /// node's name (its slot, its index and its metric labels share it); a
    /// target that already holds its name in an `Arc<str>` returns a clone
    /// of it, so the engine adds no copy at all.
    fn shared_name(&self) -> Arc<str> {
        Arc::from(self.name())
    }
    /// Facts for the safety gates.
    fn facts(&self) -> NodeFacts;
    /// The value of the label `key`, for failure domains
    /// ([`crate::Domains`]): the engine asks only for the configured
    /// domain labels. Default: no labels (the node is in no domain).
    fn label(&self, _key: &str) -> Option<&str> {
        None
    }
}

impl<T: Target + ?Sized> Target for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn shared_name(&self) -> Arc<str> {
        (**self).shared_name()
    }
    fn facts(&self) -> NodeFacts {
        (**self).facts()
    }
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}
