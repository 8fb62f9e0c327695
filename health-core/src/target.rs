//! The [`Target`] trait: what the engine evaluates.

use std::sync::Arc;

use crate::domain::NodeFacts;

/// Something the engine evaluates: a Kubernetes Node, a VM, a device.
pub trait Target: Send + Sync {
    /// A unique, stable name (the state store key and the `node` label).
    fn name(&self) -> &str;
    /// Facts for the safety gates.
    fn facts(&self) -> NodeFacts;
}

impl<T: Target + ?Sized> Target for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn facts(&self) -> NodeFacts {
        (**self).facts()
    }
}
