//! What a pass did: [`PassReport`] and its parts.

#[allow(clippy::wildcard_imports)]
use super::*;

/// An action the engine started.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActionRecord {
    /// The node.
    pub node: String,
    /// The action.
    pub action: Action,
    /// Executed or recorded only.
    pub mode: Mode,
    /// The executor's failure reason, if it failed.
    pub failure: Option<String>,
}

/// A per-node error of one pass.
#[derive(Debug)]
#[non_exhaustive]
pub struct NodeError {
    /// The node.
    pub node: String,
    /// What failed.
    pub error: StoreError,
}

/// What one pass did.
#[derive(Debug, Default)]
#[must_use = "a pass report says what was done, held back and failed"]
#[non_exhaustive]
pub struct PassReport {
    /// Targets evaluated.
    pub evaluated: usize,
    /// Phase transitions.
    pub transitions: Vec<(String, PhaseChange)>,
    /// Actions started (executed or recorded).
    pub actions: Vec<ActionRecord>,
    /// Nodes whose action a gate held back this pass, with the gate.
    pub held: Vec<(String, HoldReason)>,
    /// Store compare-and-swap conflicts met (and resolved by reloading).
    pub conflicts: u32,
    /// Nodes removed because they were no longer targets.
    pub removed: Vec<String>,
    /// Store errors; those nodes are reloaded and decided again next pass.
    pub errors: Vec<NodeError>,
    /// Whether the storm guard held new remediations back.
    pub storm_guard: bool,
    /// The engine's next deadline after the pass.
    pub next_deadline: Option<Timestamp>,
    /// Nodes that left the target set this pass (kept for `forget_after`).
    pub departed: Vec<String>,
}

impl PassReport {
    pub(crate) fn merge(&mut self, other: PassReport) {
        self.evaluated += other.evaluated;
        self.transitions.extend(other.transitions);
        self.actions.extend(other.actions);
        self.held.extend(other.held);
        self.conflicts += other.conflicts;
        self.removed.extend(other.removed);
        self.errors.extend(other.errors);
        self.storm_guard |= other.storm_guard;
        self.departed.extend(other.departed);
        self.next_deadline = other.next_deadline;
    }
}
