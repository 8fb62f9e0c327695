//! Observers of what the engine decides and does.
//!
//! Observers are called synchronously by the engine after the state change
//! is persisted; one that needs I/O (a Kubernetes Event, a webhook) should
//! hand the event to a queue and return.

use std::sync::Arc;

use crate::domain::{Action, Mode, NodeRecord, Phase};
use crate::executor::ExecError;
use crate::machine::Hold;
use crate::time::Timestamp;

/// A node changed phase.
#[derive(Debug)]
#[non_exhaustive]
pub struct TransitionEvent<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
    /// When.
    pub at: Timestamp,
    /// The record after the change.
    pub record: &'a NodeRecord,
    /// The engine's mode.
    pub mode: Mode,
}

/// An action was performed (active mode) or recorded (monitor mode).
#[derive(Debug)]
#[non_exhaustive]
pub struct ActionEvent<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The action.
    pub action: Action,
    /// Executed (`Active`) or only recorded (`Monitor`).
    pub mode: Mode,
    /// When it finished.
    pub at: Timestamp,
    /// The executor's error, if it failed.
    pub error: Option<&'a ExecError>,
}

/// A gate started holding an action back for a node (reported once per change).
#[derive(Debug)]
#[non_exhaustive]
pub struct HoldEvent<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The hold.
    pub hold: &'a Hold,
    /// When.
    pub at: Timestamp,
    /// For a [`crate::HoldReason::DomainStorm`] hold: the failure domain.
    pub domain: Option<DomainStatus<'a>>,
}

/// A failure domain's state (see [`crate::Domains`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DomainStatus<'a> {
    /// The label that defines it (`topology.kubernetes.io/zone`).
    pub label: &'a str,
    /// Its value (`lon1-a`).
    pub value: &'a str,
    /// Present nodes of the domain.
    pub total: u32,
    /// Unhealthy nodes of the domain.
    pub unhealthy: u32,
    /// The resolved `domains.max_unhealthy` for the domain.
    pub limit: u32,
}

/// A failure domain entered or left its storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DomainStormEvent<'a> {
    /// Whether the domain now has more unhealthy nodes than it tolerates.
    pub active: bool,
    /// The domain.
    pub domain: DomainStatus<'a>,
    /// When.
    pub at: Timestamp,
}

/// The storm guard tripped or cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StormEvent {
    /// Whether the guard is now holding new remediations back.
    pub active: bool,
    /// Unhealthy selected nodes.
    pub unhealthy: u32,
    /// Selected nodes.
    pub total: u32,
    /// The resolved `max_unhealthy`.
    pub limit: u32,
    /// The node source is stale or unreachable: counts cannot be trusted,
    /// so everything is held as in a storm.
    pub source_stale: bool,
    /// When.
    pub at: Timestamp,
}

/// What the engine observed in one evaluation, before deciding: the
/// targets, every checker's raw outcome, the time and the operator
/// controls. With [`FoldEvent`] and [`DepartEvent`] it is everything a
/// decision depends on, so a recording of them replays exactly
/// ([`crate::tape`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct PassEvent<'a, T> {
    /// The targets evaluated.
    pub targets: &'a [T],
    /// Whether they were passed as the complete set ([`crate::Engine::sync`]).
    pub sync: bool,
    /// Which targets had a slot (`false`: their record could not be loaded,
    /// they were not decided).
    pub loaded: &'a [bool],
    /// The checkers' names, in order.
    pub checkers: &'a [String],
    /// Row-major outcomes: `outcomes[target * checkers.len() + checker]`.
    pub outcomes: &'a [crate::CheckOutcome],
    /// Per outcome: the checker itself erred (timed out, panicked, failed).
    pub errors: &'a [bool],
    /// The engine's clock when it decided.
    pub at: Timestamp,
    /// Its monotonic reading then.
    pub monotonic: std::time::Duration,
    /// Remediation paused by an operator.
    pub paused: bool,
    /// The node source marked stale.
    pub source_stale: bool,
    /// A maintenance window closed.
    pub window_closed: bool,
}

/// A finished action's outcome about to be folded into its node's record.
#[derive(Debug)]
#[non_exhaustive]
pub struct FoldEvent<'a> {
    /// The node.
    pub node: &'a str,
    /// The action.
    pub action: crate::Action,
    /// The executor's error, if it failed.
    pub error: Option<&'a ExecError>,
    /// The engine's clock when it folded.
    pub at: Timestamp,
    /// Its monotonic reading then.
    pub monotonic: std::time::Duration,
}

/// A node was marked departed ([`crate::Engine::depart`]) or removed
/// ([`crate::Engine::remove`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct DepartEvent<'a> {
    /// The node.
    pub node: &'a str,
    /// Removed (forgotten at once) rather than departed.
    pub removed: bool,
    /// The engine's clock then.
    pub at: Timestamp,
    /// Its monotonic reading then.
    pub monotonic: std::time::Duration,
}

/// Receives engine events. Every method has a no-op default.
pub trait Observer<T: ?Sized>: Send + Sync {
    /// A node changed phase.
    fn on_transition(&self, _target: &T, _event: &TransitionEvent<'_>) {}
    /// An action finished (or was recorded in monitor mode).
    fn on_action(&self, _target: &T, _event: &ActionEvent<'_>) {}
    /// A gate began holding an action back.
    fn on_hold(&self, _target: &T, _event: &HoldEvent<'_>) {}
    /// The storm guard changed state.
    fn on_storm_guard(&self, _event: &StormEvent) {}
    /// A failure domain entered or left its storm.
    fn on_domain_storm(&self, _event: &DomainStormEvent<'_>) {}
    /// The engine loaded the stored records ([`crate::Engine::restore`]).
    fn on_restore(&self, _records: &[(&str, &NodeRecord)], _at: Timestamp) {}
    /// An evaluation observed its targets (before deciding).
    fn on_pass(&self, _event: &PassEvent<'_, T>)
    where
        T: Sized,
    {
    }
    /// A finished action is folded into its node's record.
    fn on_fold(&self, _event: &FoldEvent<'_>) {}
    /// A node departed or was removed.
    fn on_depart(&self, _event: &DepartEvent<'_>) {}
}

/// An observer behind a pointer observes as the observer itself.
macro_rules! forward_observer {
    ($ptr:ident) => {
        impl<T: ?Sized, O: Observer<T> + ?Sized> Observer<T> for $ptr<O> {
            fn on_transition(&self, target: &T, event: &TransitionEvent<'_>) {
                (**self).on_transition(target, event);
            }
            fn on_action(&self, target: &T, event: &ActionEvent<'_>) {
                (**self).on_action(target, event);
            }
            fn on_hold(&self, target: &T, event: &HoldEvent<'_>) {
                (**self).on_hold(target, event);
            }
            fn on_storm_guard(&self, event: &StormEvent) {
                (**self).on_storm_guard(event);
            }
            fn on_domain_storm(&self, event: &DomainStormEvent<'_>) {
                (**self).on_domain_storm(event);
            }
            fn on_restore(&self, records: &[(&str, &NodeRecord)], at: Timestamp) {
                (**self).on_restore(records, at);
            }
            fn on_pass(&self, event: &PassEvent<'_, T>)
            where
                T: Sized,
            {
                (**self).on_pass(event);
            }
            fn on_fold(&self, event: &FoldEvent<'_>) {
                (**self).on_fold(event);
            }
            fn on_depart(&self, event: &DepartEvent<'_>) {
                (**self).on_depart(event);
            }
        }
    };
}

forward_observer!(Arc);
forward_observer!(Box);
