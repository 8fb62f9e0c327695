//! Domain types: node classes, phases, check outcomes, actions and the
//! persisted per-node record.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A short reason word, CamelCase, fit for a bounded metrics label
/// (for example `KubeletNotReady`). Static strings do not allocate.
pub type Reason = Cow<'static, str>;

/// What kind of machine a node is; it selects the reboot wait and whether
/// escalation past reboots is allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeClass {
    /// An ordinary node: rebooted, then drained and replaced when escalation is enabled.
    #[default]
    Standard,
    /// A GPU node: long reboot wait, reboot-only (never replaced automatically).
    Gpu,
}

impl NodeClass {
    /// The stable lowercase name (`standard`, `gpu`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeClass::Standard => "standard",
            NodeClass::Gpu => "gpu",
        }
    }
}

impl fmt::Display for NodeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a node is in the recovery lifecycle.
///
/// The names returned by [`Phase::as_str`] are stable: they are metric label
/// values and persisted state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// Never evaluated (the zero value of a fresh record).
    #[default]
    Unknown,
    /// Every checker passes or skips.
    Healthy,
    /// Some checker fails; waiting for its threshold.
    Unhealthy,
    /// A reboot was issued; waiting for it to take effect.
    WaitingReboot,
    /// Reboots are exhausted; the node is being cordoned and drained before replacement.
    Draining,
    /// A replacement was requested; waiting for the node to go away.
    WaitingReplace,
    /// Remediation gave up; stays here until every checker passes.
    Failed,
    /// A soft repair (a rung of the ladder that disrupts no workload, such
    /// as restarting kubelet) was started; waiting for it to take effect.
    Repairing,
    /// Every checker passes again after an action of ours; the node counts
    /// as recovered once they have passed for the policy's `verify_for`.
    Verifying,
}

impl Phase {
    /// Every phase, in declaration order.
    pub const ALL: [Phase; 9] = [
        Phase::Unknown,
        Phase::Healthy,
        Phase::Unhealthy,
        Phase::WaitingReboot,
        Phase::Draining,
        Phase::WaitingReplace,
        Phase::Failed,
        Phase::Repairing,
        Phase::Verifying,
    ];

    /// The stable name of the phase (`WaitingReboot`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Unknown => "Unknown",
            Phase::Healthy => "Healthy",
            Phase::Unhealthy => "Unhealthy",
            Phase::WaitingReboot => "WaitingReboot",
            Phase::Draining => "Draining",
            Phase::WaitingReplace => "WaitingReplace",
            Phase::Failed => "Failed",
            Phase::Repairing => "Repairing",
            Phase::Verifying => "Verifying",
        }
    }

    /// Whether a disruptive remediation is under way (it counts against
    /// `max_in_flight`). A soft repair does not.
    #[must_use]
    pub const fn is_in_flight(self) -> bool {
        matches!(self, Phase::WaitingReboot | Phase::Draining | Phase::WaitingReplace)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error for a phase or action name that is not one of the known names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}: expected one of {expected}")]
pub struct UnknownName {
    kind: &'static str,
    value: String,
    expected: &'static str,
}

impl FromStr for Phase {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownName {
            kind: "phase",
            value: s.to_owned(),
            expected: "Unknown, Healthy, Unhealthy, WaitingReboot, Draining, WaitingReplace, Failed, Repairing, Verifying",
        })
    }
}

/// The name of a soft repair: a rung of the ladder that fixes a node
/// without disrupting its workloads (restart kubelet, restart the CNI
/// agent's pod, re-apply a sidecar's mark-ready).
///
/// A name is a lowercase DNS label (`restart-kubelet`: letters, digits and
/// `-`, at most 63 characters) other than a built-in action's name. Names
/// are interned for the life of the process, so a `Repair` is `Copy` and
/// its name is `&'static str` (a metric label and Event reason without an
/// allocation); at most [`Repair::MAX_NAMES`] distinct names exist.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repair(&'static &'static str);

/// A repair name that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RepairNameError {
    /// Not a lowercase DNS label.
    #[error(
        "invalid repair name {0:?}: expected a lowercase name of letters, digits and '-' (at most 63, starting and ending with a letter or digit) such as \"restart-kubelet\""
    )]
    Invalid(String),
    /// The name of a built-in action.
    #[error(
        "repair name {0:?} is a built-in action or rung (reboot, drain, replace, uncordon, drain-reboot): choose another name"
    )]
    BuiltIn(String),
    /// More distinct names than [`Repair::MAX_NAMES`].
    #[error("too many distinct repair names (at most {max})", max = Repair::MAX_NAMES)]
    TooMany,
}

/// Whether `s` is a DNS label (RFC 1123): 1 to 63 lowercase letters, digits
/// or `-`, not starting or ending with `-` (a repair's name, a label key's
/// prefix part, a Kubernetes namespace).
#[must_use]
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

// A thin pointer to the interned name keeps `Option<Action>` at 16 bytes
// (and a record within 128).
static REPAIR_NAMES: parking_lot::Mutex<Vec<&'static &'static str>> = parking_lot::Mutex::new(Vec::new());

impl Repair {
    /// The most distinct repair names a process holds.
    pub const MAX_NAMES: usize = 1_024;

    /// The repair called `name`, checked and interned.
    pub fn new(name: &str) -> Result<Self, RepairNameError> {
        if !is_dns_label(name) {
            return Err(RepairNameError::Invalid(name.to_owned()));
        }
        if Action::ALL.iter().any(|a| a.as_str() == name) || name == "drain-reboot" {
            return Err(RepairNameError::BuiltIn(name.to_owned()));
        }
        let mut names = REPAIR_NAMES.lock();
        if let Some(known) = names.iter().find(|n| ***n == name) {
            return Ok(Repair(known));
        }
        if names.len() >= Self::MAX_NAMES {
            return Err(RepairNameError::TooMany);
        }
        let text: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let leaked: &'static &'static str = Box::leak(Box::new(text));
        names.push(leaked);
        Ok(Repair(leaked))
    }

    /// The repair's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Repair").field(self.0).finish()
    }
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Repair {
    type Err = RepairNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Repair::new(s)
    }
}

impl Serialize for Repair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Repair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <Cow<'de, str>>::deserialize(d)?;
        Repair::new(&name).map_err(serde::de::Error::custom)
    }
}

/// A remediation step the machine asks the engine to perform.
#[must_use = "an action does nothing until an executor performs it"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Hard-reboot the machine behind the node.
    Reboot,
    /// Cordon the node and evict its pods.
    Drain,
    /// Delete the machine so its pool replaces it.
    Replace,
    /// Undo a cordon that a drain of ours made.
    Uncordon,
    /// A soft repair named by the policy's ladder (restart kubelet, restart
    /// a pod, mark a sidecar ready...): it disrupts no workload.
    Repair(Repair),
}

impl Action {
    /// Every built-in action, in declaration order (repairs are named by the policy).
    pub const ALL: [Action; 4] = [Action::Reboot, Action::Drain, Action::Replace, Action::Uncordon];

    /// The stable lowercase name (a metric label value and, for a repair,
    /// its configured name).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Reboot => "reboot",
            Action::Drain => "drain",
            Action::Replace => "replace",
            Action::Uncordon => "uncordon",
            Action::Repair(r) => r.as_str(),
        }
    }

    /// Whether the action disrupts workloads (reboot, drain, replace). Only
    /// disruptive actions are held by maintenance windows, `max_in_flight`
    /// and the cluster-wide `min_action_interval`.
    #[must_use]
    pub const fn is_disruptive(self) -> bool {
        matches!(self, Action::Reboot | Action::Drain | Action::Replace)
    }

    /// Whether the action is a soft repair: it disrupts nothing, yet the
    /// storm guard, the pause, the node's own gates and its waits apply.
    #[must_use]
    pub const fn is_soft(self) -> bool {
        matches!(self, Action::Repair(_))
    }

    /// Whether the action remediates (everything but `Uncordon`): the
    /// safety gates are consulted before it.
    #[must_use]
    pub const fn is_remediation(self) -> bool {
        !matches!(self, Action::Uncordon)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Action {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| UnknownName {
            kind: "action",
            value: s.to_owned(),
            expected: "reboot, drain, replace, uncordon",
        })
    }
}

/// Whether actions are performed or only recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The lifecycle runs in full but no executor is called.
    Monitor,
    /// Actions are performed.
    Active,
}

impl Mode {
    /// The metric label value (`monitor`, `active`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Active => "active",
        }
    }
}

/// The result of one checker on one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The target is healthy as far as this checker can tell.
    Pass,
    /// The target is unhealthy.
    Fail {
        /// Short CamelCase word, bounded, usable as a label.
        reason: Reason,
        /// Free-form detail for logs (never a label).
        detail: Option<String>,
    },
    /// The checker does not apply to this target (e.g. GPU checks on a CPU node).
    Skip {
        /// Short CamelCase word saying why.
        reason: Reason,
    },
}

impl CheckOutcome {
    /// A failure with a reason and no detail.
    pub fn fail(reason: impl Into<Reason>) -> Self {
        CheckOutcome::Fail { reason: reason.into(), detail: None }
    }

    /// A failure with a reason and detail for logs.
    pub fn fail_with(reason: impl Into<Reason>, detail: impl Into<String>) -> Self {
        CheckOutcome::Fail { reason: reason.into(), detail: Some(detail.into()) }
    }

    /// A skip with a reason.
    pub fn skip(reason: impl Into<Reason>) -> Self {
        CheckOutcome::Skip { reason: reason.into() }
    }

    /// Whether this is a failure.
    #[must_use]
    pub fn is_fail(&self) -> bool {
        matches!(self, CheckOutcome::Fail { .. })
    }

    /// The reason of a failure or skip.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            CheckOutcome::Pass => None,
            CheckOutcome::Fail { reason, .. } | CheckOutcome::Skip { reason } => Some(reason),
        }
    }
}

/// Facts about a node that the safety gates consult. Adapters fill them from
/// their source (a Kubernetes Node, a VM inventory, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's class.
    pub class: NodeClass,
    /// When the node was created, for the start-up grace (unknown: no grace).
    pub created_at: Option<Timestamp>,
    /// The node is being deleted (e.g. a deletion timestamp is set).
    pub deleting: bool,
    /// The node is tainted for removal or shutdown
    /// (`ToBeDeletedByClusterAutoscaler`, `node.cloudprovider.kubernetes.io/shutdown`).
    pub tainted_for_removal: bool,
    /// An operator opted this node out of remediation.
    pub opted_out: bool,
}

/// A failing checker as remembered in a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingCheck {
    /// The checker's name.
    pub checker: String,
    /// The checker's reason word.
    pub reason: String,
    /// Since when this checker has been failing continuously (its threshold
    /// counts from here). Absent in records of earlier versions: the
    /// episode's start is used then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

impl FailingCheck {
    /// A checker failing with `reason` since `since`.
    #[must_use]
    pub fn new(checker: impl Into<String>, reason: impl Into<String>, since: Timestamp) -> Self {
        FailingCheck { checker: checker.into(), reason: reason.into(), since: Some(since) }
    }
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// The version of the [`NodeRecord`] serialisation format written by this crate.
pub const RECORD_FORMAT_VERSION: u32 = 1;

/// Everything the machine remembers about one node between evaluations.
///
/// Stores persist it (it is `Serialize`/`Deserialize` with a format version);
/// the store's own compare-and-swap version lives beside it, in
/// [`crate::Stored`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// Serialisation format version ([`RECORD_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Current phase.
    pub phase: Phase,
    /// The node's class as last observed.
    pub class: NodeClass,
    /// Checkers failing at the last evaluation, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingCheck>,
    /// Start of the current unhealthy episode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<Timestamp>,
    /// Start of the current healthy stretch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<Timestamp>,
    /// When the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_at: Option<Timestamp>,
    /// When the last action was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_at: Option<Timestamp>,
    /// The last action started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<Action>,
    /// No new action before this instant (back-off after a failed action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Reboots issued and not reported failed, in the current history.
    #[serde(default)]
    pub reboot_count: u32,
    /// Disruptive actions (reboot, drain, replace) that failed or whose
    /// outcome is unknown, in the current history. Stored as
    /// `reboot_failures` (the name of earlier versions, and of the Go agent).
    #[serde(default, rename = "reboot_failures")]
    pub action_failures: u32,
    /// Consecutive failed uncordons; past the policy's
    /// `max_uncordon_failures` the node is left cordoned for an operator.
    /// (A `u8` keeps the record within 128 bytes, which moves cheaply.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uncordon_failures: u8,
    /// Replacements requested, in the current history.
    #[serde(default)]
    pub replace_count: u32,
    /// A drain of ours may have cordoned the node: uncordon it on recovery.
    #[serde(default)]
    pub cordoned: bool,
    /// The drain of the current escalation finished; replacement may follow.
    #[serde(default)]
    pub drained: bool,
    /// Soft repairs started in the current history, with how often: the
    /// ladder's next rung is the first one not yet tried as often as it
    /// allows. Forgotten with the other counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<RepairTry>,
}

/// How often one soft repair was started in a node's current history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairTry {
    /// The repair.
    pub repair: Repair,
    /// Times started.
    pub count: u32,
}

impl Default for NodeRecord {
    fn default() -> Self {
        NodeRecord {
            format_version: RECORD_FORMAT_VERSION,
            phase: Phase::Unknown,
            class: NodeClass::Standard,
            failing: Vec::new(),
            unhealthy_since: None,
            healthy_since: None,
            last_transition_at: None,
            last_action_at: None,
            last_action: None,
            not_before: None,
            reboot_count: 0,
            action_failures: 0,
            uncordon_failures: 0,
            replace_count: 0,
            cordoned: false,
            drained: false,
            repairs: Vec::new(),
        }
    }
}

impl NodeRecord {
    /// A fresh record (phase `Unknown`) for a node of `class`.
    #[must_use]
    pub fn new(class: NodeClass) -> Self {
        NodeRecord { class, ..NodeRecord::default() }
    }

    /// Whether any remediation history (counters, back-off) is remembered.
    #[must_use]
    pub fn has_history(&self) -> bool {
        self.reboot_count != 0
            || self.action_failures != 0
            || self.replace_count != 0
            || self.not_before.is_some()
            || !self.repairs.is_empty()
    }

    /// How often `repair` was started in the current history.
    #[must_use]
    pub fn repair_count(&self, repair: Repair) -> u32 {
        self.repairs.iter().find(|t| t.repair == repair).map_or(0, |t| t.count)
    }

    /// Counts one more start of `repair`.
    pub fn count_repair(&mut self, repair: Repair) {
        match self.repairs.iter_mut().find(|t| t.repair == repair) {
            Some(t) => t.count = t.count.saturating_add(1),
            None => self.repairs.push(RepairTry { repair, count: 1 }),
        }
    }

    /// Whether the record says nothing a restart would need: the node is
    /// healthy and has never been remediated (no failing checker, no
    /// history, no action, no cordon of ours). Only its first-seen times
    /// differ from a fresh record, and a restart sets those again. The
    /// engine does not store such a record for a node that has none.
    #[must_use]
    pub fn is_unremarkable(&self) -> bool {
        self.phase == Phase::Healthy
            && self.failing.is_empty()
            && self.unhealthy_since.is_none()
            && !self.has_history()
            && self.last_action.is_none()
            && self.last_action_at.is_none()
            && self.uncordon_failures == 0
            && !self.cordoned
            && !self.drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_round_trip_and_are_stable() {
        let names: Vec<_> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "Unknown",
                "Healthy",
                "Unhealthy",
                "WaitingReboot",
                "Draining",
                "WaitingReplace",
                "Failed",
                "Repairing",
                "Verifying"
            ]
        );
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).ok(), Some(format!("\"{p}\"")));
        }
        let err = "Rebooting".parse::<Phase>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "unknown phase \"Rebooting\": expected one of Unknown, Healthy, Unhealthy, WaitingReboot, Draining, WaitingReplace, Failed, Repairing, Verifying"
            )
        );
        assert_eq!(Phase::default(), Phase::Unknown);
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert!("reset".parse::<Action>().is_err());
        assert!(!Action::Uncordon.is_disruptive());
        assert!(Action::Reboot.is_disruptive());
        let kubelet = Repair::new("restart-kubelet").expect("a valid name");
        assert_eq!(Action::Repair(kubelet).as_str(), "restart-kubelet");
        assert!(!Action::Repair(kubelet).is_disruptive() && Action::Repair(kubelet).is_soft());
        assert!(Action::Repair(kubelet).is_remediation() && !Action::Uncordon.is_remediation());
        assert_eq!(Repair::new("restart-kubelet"), Ok(kubelet), "interned once");
    }

    #[test]
    fn repair_names_are_dns_labels_and_not_built_in() {
        for bad in ["", "Restart", "-x", "x-", "a_b", "a b", &"a".repeat(64)] {
            let e = Repair::new(bad).unwrap_err().to_string();
            assert!(e.contains("expected a lowercase name"), "{bad:?}: {e}");
        }
        let e = Repair::new("reboot").unwrap_err().to_string();
        assert!(e.contains("built-in action"), "{e}");
        assert!(Repair::new("a").is_ok() && Repair::new(&"b".repeat(63)).is_ok());
        let json = serde_json::to_string(&Action::Repair(Repair::new("mark-ready").unwrap())).unwrap();
        assert_eq!(json, r#"{"Repair":"mark-ready"}"#);
        assert_eq!(
            serde_json::from_str::<Action>(&json).ok(),
            Some(Action::Repair(Repair::new("mark-ready").unwrap()))
        );
        assert!(serde_json::from_str::<Action>(r#"{"Repair":"Bad Name"}"#).is_err());
    }

    #[test]
    fn record_round_trips_through_json_with_format_version() {
        let rec = NodeRecord {
            phase: Phase::WaitingReboot,
            class: NodeClass::Gpu,
            failing: vec![FailingCheck::new("NodeReady", "KubeletNotReady", Timestamp::from_secs(1_000))],
            unhealthy_since: Some(Timestamp::from_secs(10)),
            last_action_at: Some(Timestamp::from_secs(20)),
            last_action: Some(Action::Reboot),
            reboot_count: 1,
            ..NodeRecord::default()
        };
        let json = serde_json::to_string(&rec).unwrap_or_default();
        assert!(json.contains("\"format_version\":1"), "{json}");
        assert!(json.contains("\"class\":\"gpu\""), "{json}");
        let back: NodeRecord = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, rec);
    }

    #[test]
    fn record_rejects_unknown_fields() {
        let err = serde_json::from_str::<NodeRecord>(
            r#"{"format_version":1,"phase":"Healthy","class":"standard","bogus":1}"#,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }
}

#[cfg(test)]
mod size {
    /// A record of at most 128 bytes is moved inline; past that the
    /// compiler calls memmove on every step (a third of a healthy step's time).
    #[test]
    fn a_record_fits_in_128_bytes() {
        assert!(std::mem::size_of::<super::NodeRecord>() <= 128, "{}", std::mem::size_of::<super::NodeRecord>());
    }
}
