//! The remediation policy: waits, limits, escalation and safety gates.
//!
//! [`Policy`] is a plain struct with conservative defaults; [`Policy::validate`]
//! rejects values that would make the agent unsafe, naming the field and the
//! accepted form. Durations deserialise from human strings (`"10m"`, `"1h 30m"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::{FailingCheck, NodeClass, Repair};

/// The longest accepted duration of any policy setting, in days.
pub const MAX_DURATION_DAYS: u64 = 365;

/// The largest accepted `max_reboot_failures`: more would let a broken cloud
/// API be hammered for hours.
pub const MAX_REBOOT_FAILURES_CAP: u32 = 10;

/// The largest accepted `max_uncordon_failures`.
pub const MAX_UNCORDON_FAILURES_CAP: u32 = 20;

/// A policy value that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A duration that must be positive is zero.
    #[error("{field} must be a positive duration such as \"10m\", got 0")]
    ZeroDuration {
        /// The policy field, dotted (`reboot_wait`, `escalation.replace_wait`).
        field: &'static str,
    },
    /// A number is above its cap.
    #[error("{field} must be at most {max}, got {value}")]
    TooLarge {
        /// The policy field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// A number is below its minimum.
    #[error("{field} must be at least {min}, got {value}")]
    TooSmall {
        /// The policy field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The smallest accepted value.
        min: u64,
    },
    /// A limit is neither a count nor a percentage.
    #[error(
        "{field}: invalid limit {value:?}: expected a whole count such as 3 or a percentage from 0% to 100% such as \"20%\""
    )]
    InvalidLimit {
        /// The policy field.
        field: &'static str,
        /// The text given.
        value: String,
    },
    /// A limit that would allow no node at all.
    #[error("{field} must allow at least one node: a count of at least 1 or a percentage above 0%")]
    ZeroLimit {
        /// The policy field.
        field: &'static str,
    },
    /// A duration is longer than any sensible setting.
    #[error("{field} must be at most {max_days} days, got {value:?}")]
    DurationTooLong {
        /// The policy field.
        field: &'static str,
        /// The value given.
        value: Duration,
        /// The largest accepted value, in days.
        max_days: u64,
    },
    /// A failure-domain setting that cannot be used.
    #[error("{field}: {message}")]
    Domains {
        /// Where: `domains.labels[1]`, `domains.min_repairable`.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A repair ladder or repair setting that cannot be used.
    #[error("{field}: {message}")]
    Ladder {
        /// Where: `ladder[2].rungs`, `repairs.restart-kubelet.attempts`.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// Two durations contradict each other.
    #[error("{field} ({value:?}) must not be shorter than {other} ({other_value:?})")]
    Inconsistent {
        /// The policy field.
        field: &'static str,
        /// Its value.
        value: Duration,
        /// The field it is compared with.
        other: &'static str,
        /// That field's value.
        other_value: Duration,
    },
}

/// A limit over a set of nodes: an absolute count, or a percentage of the
/// selected nodes. Written `3` or `"20%"` (decimals allowed: `"12.5%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// At most this many nodes.
    Count(u32),
    /// At most this share of the nodes, in basis points: 1% is 100, so
    /// `BasisPoints(2000)` is 20% (write [`Limit::percent`]`(20)`).
    BasisPoints(u32),
}

impl Limit {
    /// A percentage limit; `pct` is clamped to 0..=100.
    #[must_use]
    pub fn percent(pct: u32) -> Self {
        Limit::BasisPoints(pct.min(100) * 100)
    }

    /// The limit for `total` nodes, rounding a percentage up
    /// (20% of 6 nodes is 2).
    #[must_use]
    pub fn resolve_ceil(self, total: u32) -> u32 {
        match self {
            Limit::Count(n) => n,
            Limit::BasisPoints(bp) => {
                let v = (u64::from(total) * u64::from(bp)).div_ceil(10_000);
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }

    /// The limit for `total` nodes, rounding a percentage down but never
    /// below 1 (10% of 15 nodes is 1, of 25 nodes 2).
    #[must_use]
    pub fn resolve_floor_at_least_one(self, total: u32) -> u32 {
        match self {
            Limit::Count(n) => n,
            Limit::BasisPoints(bp) => {
                let v = (u64::from(total) * u64::from(bp)) / 10_000;
                u32::try_from(v).unwrap_or(u32::MAX).max(1)
            }
        }
    }

    /// Parses `3` or `"20%"`; `field` names the setting in the error.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, PolicyError> {
        let invalid = || PolicyError::InvalidLimit { field, value: text.to_owned() };
        let t = text.trim();
        if let Some(num) = t.strip_suffix('%') {
            let num = num.trim_end();
            if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') || num.starts_with('.') {
                return Err(invalid());
            }
            let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
            if frac.len() > 2 || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
                return Err(invalid());
            }
            let whole: u32 = whole.parse().map_err(|_| invalid())?;
            let frac_bp: u32 = match frac.len() {
                0 => 0,
                1 => frac.parse::<u32>().map_err(|_| invalid())? * 10,
                _ => frac.parse::<u32>().map_err(|_| invalid())?,
            };
            let bp = whole.checked_mul(100).and_then(|w| w.checked_add(frac_bp)).ok_or_else(invalid)?;
            if bp > 10_000 {
                return Err(invalid());
            }
            Ok(Limit::BasisPoints(bp))
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().map(Limit::Count).map_err(|_| invalid())
        } else {
            Err(invalid())
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::BasisPoints(bp) if bp % 100 == 0 => write!(f, "{}%", bp / 100),
            Limit::BasisPoints(bp) => {
                let frac = format!("{:02}", bp % 100);
                write!(f, "{}.{}%", bp / 100, frac.trim_end_matches('0'))
            }
        }
    }
}

impl FromStr for Limit {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Limit::parse("limit", s)
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Limit::Count(n) => s.serialize_u32(n),
            Limit::BasisPoints(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a whole count such as 3 or a percentage such as \"20%\""))?
        {
            Raw::Int(n) => u32::try_from(n).map(Limit::Count).map_err(|_| {
                serde::de::Error::custom(format!("invalid limit {n}: expected a whole count from 0 to {}", u32::MAX))
            }),
            Raw::Text(t) => Limit::parse("limit", &t).map_err(serde::de::Error::custom),
        }
    }
}

/// Serde helpers for human-readable durations (`"10m"`, `"1h 30m"`, `"250ms"`),
/// the one adapter of the workspace: `#[serde(with = "duration_str")]`.
/// Surrounding white space is ignored (values often come from environment
/// variables); an error names the text and the accepted form.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises a duration as a human string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Deserialises a human duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}): expected a number with a unit such as \"30s\", \"10m\" or \"1h 30m\""
            ))
        })
    }

    /// Deserialises a human duration string into `Some` (for optional
    /// fields with `#[serde(default, deserialize_with = ...)]`).
    pub fn deserialize_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        deserialize(d).map(Some)
    }
}

/// Back-off applied after a failed action: `initial`, doubling per failure,
/// capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Delay after the first failure.
    #[serde(with = "duration_str")]
    pub initial: Duration,
    /// Largest delay.
    #[serde(with = "duration_str")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(60), max: Duration::from_secs(30 * 60) }
    }
}

impl Backoff {
    /// The delay after the `failures`-th consecutive failure (1-based; 0 gives zero).
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// What happens when reboots do not help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Escalation {
    /// Drain and replace standard nodes whose reboots are exhausted
    /// (GPU nodes are never replaced). Default off.
    pub replace: bool,
    /// How long to wait for a replaced node to go away before giving up.
    #[serde(with = "duration_str")]
    pub replace_wait: Duration,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation { replace: false, replace_wait: Duration::from_secs(30 * 60) }
    }
}

/// Safety gates consulted before any disruptive action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gates {
    /// Start nothing new while more than this many selected nodes are unhealthy
    /// (percentages round up). Default `20%`.
    pub max_unhealthy: Limit,
    /// Remediations under way at once (percentages round down, at least 1).
    /// Default `10%`: one per ten nodes.
    pub max_in_flight: Limit,
    /// No action for a node this soon after its creation. Default 10m.
    #[serde(with = "duration_str")]
    pub startup_grace: Duration,
    /// Minimum time between two disruptive actions started anywhere in the
    /// cluster, retries included (a replacement following its own drain is
    /// exempt: the node's workloads have already moved). Default 0 (off).
    #[serde(with = "duration_str")]
    pub min_action_interval: Duration,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            max_unhealthy: Limit::percent(20),
            max_in_flight: Limit::percent(10),
            startup_grace: Duration::from_secs(10 * 60),
            min_action_interval: Duration::ZERO,
        }
    }
}

/// The node labels that group nodes into failure domains by default: the
/// zone and the Civo node pool.
pub const DEFAULT_DOMAIN_LABELS: [&str; 2] = ["topology.kubernetes.io/zone", "kubernetes.civo.com/civo-node-pool"];

/// The most labels that may define failure domains.
pub const MAX_DOMAIN_LABELS: usize = 4;

/// The most nodes a domain's floor may let under repair at once.
pub const MAX_MIN_REPAIRABLE: u32 = 100;

/// Failure domains: a storm guard per group of nodes that fail together.
///
/// Each label defines one grouping: the nodes with the same value of it are
/// one domain (a node without the label is in no domain of it). A node's
/// remediation is held while any of its domains has more than
/// `max_unhealthy` of its own nodes unhealthy ([`HoldReason::DomainStorm`](crate::HoldReason::DomainStorm)):
/// a zone, a pool or a hypervisor failing as a whole is not repaired node
/// by node, and it does not use up the cluster's budget meanwhile. The
/// cluster-wide `gates.max_unhealthy` still applies on top.
///
/// The floor, `min_repairable`, keeps small domains repairable: a domain in
/// storm may still have this many nodes under repair at once while every
/// node outside it is healthy and at least one of its own is (a domain that
/// is down as a whole is a shared cause, never repaired node by node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Domains {
    /// The labels, at most [`MAX_DOMAIN_LABELS`]; empty turns domains off.
    /// Default [`DEFAULT_DOMAIN_LABELS`].
    pub labels: Vec<String>,
    /// Unhealthy nodes a domain tolerates before it holds its own nodes
    /// (percentages round up, of the domain's nodes). Default `20%`.
    pub max_unhealthy: Limit,
    /// Nodes of a domain in storm that may be under repair at once while the
    /// rest of the cluster is healthy (0: none). Default 1.
    pub min_repairable: u32,
}

impl Default for Domains {
    fn default() -> Self {
        Domains {
            labels: DEFAULT_DOMAIN_LABELS.iter().map(|&l| l.to_owned()).collect(),
            max_unhealthy: Limit::percent(20),
            min_repairable: 1,
        }
    }
}

impl Domains {
    /// No failure domains (the cluster-wide guard only).
    #[must_use]
    pub fn off() -> Self {
        Domains { labels: Vec::new(), ..Domains::default() }
    }

    fn validate(&self) -> Result<(), PolicyError> {
        let err = |field: String, message: String| Err(PolicyError::Domains { field, message });
        if self.labels.len() > MAX_DOMAIN_LABELS {
            return err(
                "domains.labels".into(),
                format!("at most {MAX_DOMAIN_LABELS} labels, got {}", self.labels.len()),
            );
        }
        for (i, label) in self.labels.iter().enumerate() {
            if let Err(why) = label_key_problem(label) {
                return err(format!("domains.labels[{i}]"), format!("{label:?} is not a label key: {why}"));
            }
            if self.labels[..i].contains(label) {
                return err(format!("domains.labels[{i}]"), format!("{label:?} is listed twice"));
            }
        }
        if let Limit::BasisPoints(bp) = self.max_unhealthy
            && bp > 10_000
        {
            return Err(PolicyError::InvalidLimit {
                field: "domains.max_unhealthy",
                value: self.max_unhealthy.to_string(),
            });
        }
        if matches!(self.max_unhealthy, Limit::Count(0) | Limit::BasisPoints(0)) {
            return Err(PolicyError::ZeroLimit { field: "domains.max_unhealthy" });
        }
        if self.min_repairable > MAX_MIN_REPAIRABLE {
            return Err(PolicyError::TooLarge {
                field: "domains.min_repairable",
                value: u64::from(self.min_repairable),
                max: u64::from(MAX_MIN_REPAIRABLE),
            });
        }
        Ok(())
    }
}

/// Why `key` is not a Kubernetes label key (`[prefix/]name`: a DNS
/// subdomain prefix and a name of 1 to 63 alphanumerics, `-`, `_` or `.`
/// that starts and ends alphanumeric).
fn label_key_problem(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(crate::domain::is_dns_label))
    {
        return Err("the prefix must be a DNS subdomain such as topology.kubernetes.io");
    }
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || !edge(name.bytes().next())
        || !edge(name.bytes().last())
    {
        return Err(
            "the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// How a soft repair is used: how often it is tried in a node's history and
/// how long each try is given to take effect before the ladder moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairSpec {
    /// The repair.
    pub repair: Repair,
    /// Tries in one history (1 to [`MAX_REPAIR_ATTEMPTS`]).
    pub attempts: u32,
    /// How long a try is given before the node is judged again (positive).
    pub wait: Duration,
}

/// The most tries of one soft repair in a node's history.
pub const MAX_REPAIR_ATTEMPTS: u32 = 10;

/// One rung of a repair ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rung {
    /// A soft repair (see [`Policy::repairs`]).
    Repair(Repair),
    /// Reboots, up to `max_reboot_retries` in a history, each followed by the
    /// class's reboot wait.
    Reboot,
    /// The same reboots, each after cordoning and draining the node (a
    /// graceful plan: cordon, drain, reboot, wait, verify, uncordon). Every
    /// step is kept in the node's record, so a restarted agent resumes at
    /// the step it stopped at.
    DrainReboot,
    /// Drain, then replace the machine (standard nodes, with
    /// `escalation.replace` on), then `escalation.replace_wait`.
    Replace,
}

impl Rung {
    /// The rung's name as written in a ladder (`reboot`, `replace` or the repair's name).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Rung::Repair(r) => r.as_str(),
            Rung::Reboot => "reboot",
            Rung::DrainReboot => "drain-reboot",
            Rung::Replace => "replace",
        }
    }
}

/// The ladder of nodes that no configured ladder matches: reboots, then
/// drain and replace where escalation allows it (Civo's node-agent).
pub const DEFAULT_LADDER: [Rung; 2] = [Rung::Reboot, Rung::Replace];

/// An ordered list of rungs for the nodes of a class, optionally only while
/// a given checker fails. Rungs go soft repairs first, then `reboot` or
/// `drain-reboot`, then `replace`; each appears at most once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    /// The node class it applies to (`None`: every class).
    pub class: Option<NodeClass>,
    /// The checker whose failure selects it (`None`: any failure).
    pub checker: Option<String>,
    /// The rungs, climbed in order.
    pub rungs: Vec<Rung>,
}

impl Ladder {
    fn applies_to(&self, class: NodeClass) -> bool {
        self.class.is_none_or(|c| c == class)
    }
}

/// The full remediation policy (defaults compatible with Civo's node-agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Run the lifecycle without calling the executor. Default on.
    pub monitor_only: bool,
    /// Wait after a reboot of a standard node. Default 10m.
    #[serde(with = "duration_str")]
    pub reboot_wait: Duration,
    /// Wait after a reboot of a GPU node. Default 40m.
    #[serde(with = "duration_str")]
    pub gpu_reboot_wait: Duration,
    /// Reboots before escalating (or giving up). Default 5.
    pub max_reboot_retries: u32,
    /// Failed actions tolerated; one more sends the node to `Failed`.
    /// Default 3, at most [`MAX_REBOOT_FAILURES_CAP`].
    pub max_reboot_failures: u32,
    /// Failed uncordons tolerated: after this many in a row (spaced by the
    /// failure back-off) the node is left cordoned for an operator. Default 5.
    pub max_uncordon_failures: u32,
    /// Back-off after failed actions.
    pub failure_backoff: Backoff,
    /// Remediation history is forgotten after this long continuously healthy. Default 30m.
    #[serde(with = "duration_str")]
    pub history_reset_after: Duration,
    /// Escalation past reboots.
    pub escalation: Escalation,
    /// Safety gates.
    pub gates: Gates,
    /// Failure domains: a storm guard per zone, pool or other label.
    pub domains: Domains,
    /// After an action of ours, a node whose checkers pass again is
    /// `Verifying` and counts as recovered (and is uncordoned) only once
    /// they have passed continuously this long. Zero: at once. Default 2m.
    #[serde(with = "duration_str")]
    pub verify_for: Duration,
    /// The soft repairs the ladders may name. Set in code (the agent builds
    /// them from its `[repairs.NAME]` sections).
    #[serde(skip)]
    pub repairs: Vec<RepairSpec>,
    /// Repair ladders. A failing node climbs the first ladder of its class
    /// naming a failing checker, else the first of its class naming none,
    /// else [`DEFAULT_LADDER`]. Set in code (the agent builds them from its
    /// `[[ladder]]` sections).
    #[serde(skip)]
    pub ladders: Vec<Ladder>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            monitor_only: true,
            reboot_wait: Duration::from_secs(10 * 60),
            gpu_reboot_wait: Duration::from_secs(40 * 60),
            max_reboot_retries: 5,
            max_reboot_failures: 3,
            max_uncordon_failures: 5,
            failure_backoff: Backoff::default(),
            history_reset_after: Duration::from_secs(30 * 60),
            escalation: Escalation::default(),
            gates: Gates::default(),
            domains: Domains::default(),
            verify_for: Duration::from_secs(2 * 60),
            repairs: Vec::new(),
            ladders: Vec::new(),
        }
    }
}

impl Policy {
    /// Checks every field; the first problem is returned.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let positive = [
            ("reboot_wait", self.reboot_wait),
            ("gpu_reboot_wait", self.gpu_reboot_wait),
            ("history_reset_after", self.history_reset_after),
            ("failure_backoff.initial", self.failure_backoff.initial),
            ("failure_backoff.max", self.failure_backoff.max),
            ("escalation.replace_wait", self.escalation.replace_wait),
        ];
        for (field, d) in positive {
            if d.is_zero() {
                return Err(PolicyError::ZeroDuration { field });
            }
        }
        let max = Duration::from_secs(MAX_DURATION_DAYS * 86_400);
        let bounded = positive.into_iter().chain([
            ("gates.startup_grace", self.gates.startup_grace),
            ("gates.min_action_interval", self.gates.min_action_interval),
            ("verify_for", self.verify_for),
        ]);
        for (field, value) in bounded {
            if value > max {
                return Err(PolicyError::DurationTooLong { field, value, max_days: MAX_DURATION_DAYS });
            }
        }
        if self.failure_backoff.max < self.failure_backoff.initial {
            return Err(PolicyError::Inconsistent {
                field: "failure_backoff.max",
                value: self.failure_backoff.max,
                other: "failure_backoff.initial",
                other_value: self.failure_backoff.initial,
            });
        }
        if self.max_reboot_failures > MAX_REBOOT_FAILURES_CAP {
            return Err(PolicyError::TooLarge {
                field: "max_reboot_failures",
                value: u64::from(self.max_reboot_failures),
                max: u64::from(MAX_REBOOT_FAILURES_CAP),
            });
        }
        if self.verify_for >= self.history_reset_after {
            // The history would be forgotten while a node is still being verified.
            return Err(PolicyError::Inconsistent {
                field: "history_reset_after",
                value: self.history_reset_after,
                other: "verify_for (it must be longer)",
                other_value: self.verify_for,
            });
        }
        if self.max_uncordon_failures == 0 {
            return Err(PolicyError::TooSmall { field: "max_uncordon_failures", value: 0, min: 1 });
        }
        if self.max_uncordon_failures > MAX_UNCORDON_FAILURES_CAP {
            return Err(PolicyError::TooLarge {
                field: "max_uncordon_failures",
                value: u64::from(self.max_uncordon_failures),
                max: u64::from(MAX_UNCORDON_FAILURES_CAP),
            });
        }
        if self.max_reboot_retries == 0 {
            return Err(PolicyError::TooSmall { field: "max_reboot_retries", value: 0, min: 1 });
        }
        for (field, limit) in
            [("gates.max_unhealthy", self.gates.max_unhealthy), ("gates.max_in_flight", self.gates.max_in_flight)]
        {
            if let Limit::BasisPoints(bp) = limit
                && bp > 10_000
            {
                return Err(PolicyError::InvalidLimit { field, value: limit.to_string() });
            }
        }
        for (field, limit) in
            [("gates.max_unhealthy", self.gates.max_unhealthy), ("gates.max_in_flight", self.gates.max_in_flight)]
        {
            if matches!(limit, Limit::Count(0) | Limit::BasisPoints(0)) {
                return Err(PolicyError::ZeroLimit { field });
            }
        }
        self.domains.validate()?;
        self.validate_ladders()
    }

    fn validate_ladders(&self) -> Result<(), PolicyError> {
        let err = |field: String, message: String| Err(PolicyError::Ladder { field, message });
        let max = Duration::from_secs(MAX_DURATION_DAYS * 86_400);
        for (i, spec) in self.repairs.iter().enumerate() {
            let name = spec.repair;
            if self.repairs[..i].iter().any(|s| s.repair == name) {
                return err(format!("repairs.{name}"), "is defined twice".into());
            }
            if spec.attempts == 0 || spec.attempts > MAX_REPAIR_ATTEMPTS {
                return err(
                    format!("repairs.{name}.attempts"),
                    format!("must be from 1 to {MAX_REPAIR_ATTEMPTS}, got {}", spec.attempts),
                );
            }
            if spec.wait.is_zero() || spec.wait > max {
                return err(
                    format!("repairs.{name}.wait"),
                    format!(
                        "must be a positive duration of at most {MAX_DURATION_DAYS} days such as \"2m\", got {:?}",
                        spec.wait
                    ),
                );
            }
        }
        for (i, ladder) in self.ladders.iter().enumerate() {
            let field = format!("ladder[{i}].rungs");
            if ladder.rungs.is_empty() {
                return err(field, "must name at least one rung".into());
            }
            // Soft repairs first, then reboot (or drain-reboot), then replace: each at most once.
            let rank = |r: &Rung| match r {
                Rung::Repair(_) => 0,
                Rung::Reboot | Rung::DrainReboot => 1,
                Rung::Replace => 2,
            };
            if ladder.rungs.contains(&Rung::Reboot) && ladder.rungs.contains(&Rung::DrainReboot) {
                return err(
                    field,
                    "names both \"reboot\" and \"drain-reboot\": they share the reboot count; keep one".into(),
                );
            }
            for (j, rung) in ladder.rungs.iter().enumerate() {
                if ladder.rungs[..j].contains(rung) {
                    return err(field, format!("names {:?} twice", rung.as_str()));
                }
                if j > 0 && rank(&ladder.rungs[j - 1]) > rank(rung) {
                    return err(
                        field,
                        format!(
                            "{:?} comes after {:?}: soft repairs go first, then \"reboot\" (or \"drain-reboot\"), then \"replace\"",
                            rung.as_str(),
                            ladder.rungs[j - 1].as_str()
                        ),
                    );
                }
                if let Rung::Repair(r) = rung
                    && !self.repairs.iter().any(|s| s.repair == *r)
                {
                    return err(
                        field,
                        format!("names the repair {:?}, which is not defined (repairs.{r})", r.as_str()),
                    );
                }
            }
            if ladder.rungs.contains(&Rung::Replace) {
                if ladder.class == Some(NodeClass::Gpu) {
                    return err(field, "a GPU node is never replaced automatically: remove \"replace\"".into());
                }
                if !self.escalation.replace {
                    return err(field, "\"replace\" needs escalation.replace = true".into());
                }
            }
            if let Some(c) = &ladder.checker
                && c.trim().is_empty()
            {
                return err(format!("ladder[{i}].checker"), "must name a checker or be left out".into());
            }
            if let Some(j) =
                self.ladders[..i].iter().position(|l| l.class == ladder.class && l.checker == ladder.checker)
            {
                return err(
                    format!("ladder[{i}]"),
                    format!("has the same class and checker as ladder[{j}], which always wins: remove one"),
                );
            }
        }
        Ok(())
    }

    /// The rungs a node of `class` climbs while `failing` fail: the first
    /// ladder of its class naming a failing checker, else the first of its
    /// class naming none, else [`DEFAULT_LADDER`].
    #[must_use]
    pub fn ladder_for(&self, class: NodeClass, failing: &[FailingCheck]) -> &[Rung] {
        let by_checker = self.ladders.iter().find(|l| {
            l.applies_to(class) && l.checker.as_deref().is_some_and(|c| failing.iter().any(|f| f.checker == c))
        });
        let ladder = by_checker.or_else(|| self.ladders.iter().find(|l| l.applies_to(class) && l.checker.is_none()));
        ladder.map_or(&DEFAULT_LADDER[..], |l| &l.rungs)
    }

    /// The settings of `repair`, when the policy defines it.
    #[must_use]
    pub fn repair(&self, repair: Repair) -> Option<&RepairSpec> {
        self.repairs.iter().find(|s| s.repair == repair)
    }

    /// The reboot wait for a node class.
    #[must_use]
    pub fn reboot_wait_for(&self, class: NodeClass) -> Duration {
        match class {
            NodeClass::Standard => self.reboot_wait,
            NodeClass::Gpu => self.gpu_reboot_wait,
        }
    }

    /// Sets monitor-only mode.
    #[must_use]
    pub fn with_monitor_only(mut self, on: bool) -> Self {
        self.monitor_only = on;
        self
    }

    /// Sets the standard and GPU reboot waits.
    #[must_use]
    pub fn with_reboot_waits(mut self, standard: Duration, gpu: Duration) -> Self {
        self.reboot_wait = standard;
        self.gpu_reboot_wait = gpu;
        self
    }

    /// Sets `max_reboot_retries`.
    #[must_use]
    pub fn with_max_reboot_retries(mut self, n: u32) -> Self {
        self.max_reboot_retries = n;
        self
    }

    /// Sets `max_reboot_failures`.
    #[must_use]
    pub fn with_max_reboot_failures(mut self, n: u32) -> Self {
        self.max_reboot_failures = n;
        self
    }

    /// Sets `max_uncordon_failures`.
    #[must_use]
    pub fn with_max_uncordon_failures(mut self, n: u32) -> Self {
        self.max_uncordon_failures = n;
        self
    }

    /// Enables or disables drain-and-replace escalation.
    #[must_use]
    pub fn with_replace(mut self, on: bool) -> Self {
        self.escalation.replace = on;
        self
    }

    /// Replaces the safety gates.
    #[must_use]
    pub fn with_gates(mut self, gates: Gates) -> Self {
        self.gates = gates;
        self
    }

    /// Replaces the failure domains.
    #[must_use]
    pub fn with_domains(mut self, domains: Domains) -> Self {
        self.domains = domains;
        self
    }

    /// Sets `verify_for`.
    #[must_use]
    pub fn with_verify_for(mut self, verify_for: Duration) -> Self {
        self.verify_for = verify_for;
        self
    }

    /// Defines a soft repair: `attempts` tries, each given `wait`.
    #[must_use]
    pub fn with_repair(mut self, repair: Repair, attempts: u32, wait: Duration) -> Self {
        self.repairs.push(RepairSpec { repair, attempts, wait });
        self
    }

    /// Adds a ladder (see [`Policy::ladder_for`] for which one a node climbs).
    #[must_use]
    pub fn with_ladder(mut self, ladder: Ladder) -> Self {
        self.ladders.push(ladder);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let p = Policy::default();
        assert!(p.monitor_only);
        assert_eq!(p.reboot_wait, Duration::from_secs(600));
        assert_eq!(p.gpu_reboot_wait, Duration::from_secs(2400));
        assert_eq!(p.max_reboot_retries, 5);
        assert_eq!(p.max_reboot_failures, 3);
        assert_eq!(p.history_reset_after, Duration::from_secs(1800));
        assert!(!p.escalation.replace);
        assert_eq!(p.gates.max_unhealthy, Limit::BasisPoints(2000));
        assert_eq!(p.gates.startup_grace, Duration::from_secs(600));
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.reboot_wait_for(NodeClass::Gpu), Duration::from_secs(2400));
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(Policy, &str)> = vec![
            (
                Policy { reboot_wait: Duration::ZERO, ..Policy::default() },
                "reboot_wait must be a positive duration such as \"10m\", got 0",
            ),
            (
                Policy { gpu_reboot_wait: Duration::ZERO, ..Policy::default() },
                "gpu_reboot_wait must be a positive duration such as \"10m\", got 0",
            ),
            (Policy::default().with_max_reboot_failures(11), "max_reboot_failures must be at most 10, got 11"),
            (Policy::default().with_max_reboot_retries(0), "max_reboot_retries must be at least 1, got 0"),
            (
                Policy::default().with_gates(Gates { max_unhealthy: Limit::BasisPoints(10_001), ..Gates::default() }),
                "gates.max_unhealthy: invalid limit \"100.01%\": expected a whole count such as 3 or a percentage from 0% to 100% such as \"20%\"",
            ),
            (
                Policy::default().with_gates(Gates { max_in_flight: Limit::Count(0), ..Gates::default() }),
                "gates.max_in_flight must allow at least one node: a count of at least 1 or a percentage above 0%",
            ),
            (
                Policy::default().with_gates(Gates { max_unhealthy: Limit::BasisPoints(0), ..Gates::default() }),
                "gates.max_unhealthy must allow at least one node: a count of at least 1 or a percentage above 0%",
            ),
            (
                Policy {
                    escalation: Escalation { replace_wait: Duration::from_secs(400 * 86_400), ..Escalation::default() },
                    ..Policy::default()
                },
                "escalation.replace_wait must be at most 365 days, got 34560000s",
            ),
            (
                Policy {
                    failure_backoff: Backoff { initial: Duration::from_secs(60), max: Duration::from_secs(30) },
                    ..Policy::default()
                },
                "failure_backoff.max (30s) must not be shorter than failure_backoff.initial (60s)",
            ),
        ];
        for (policy, want) in cases {
            let got = policy.validate().err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), Some(want));
        }
        assert_eq!(Policy::default().with_max_reboot_failures(10).validate(), Ok(()));
        assert_eq!(Policy::default().with_max_reboot_failures(0).validate(), Ok(()));
    }

    #[test]
    fn limits_parse_and_resolve() {
        let ok = [
            ("3", Limit::Count(3)),
            ("0", Limit::Count(0)),
            ("20%", Limit::BasisPoints(2000)),
            (" 100% ", Limit::BasisPoints(10_000)),
            ("12.5%", Limit::BasisPoints(1250)),
            ("0.25%", Limit::BasisPoints(25)),
            ("0%", Limit::BasisPoints(0)),
        ];
        for (text, want) in ok {
            assert_eq!(Limit::parse("f", text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "%",
            "20 %x",
            "-1",
            "-5%",
            "101%",
            "1.234%",
            "abc",
            "1.%",
            ".5%",
            "1.2.3%",
            "3.5",
            "99999999999%",
            "1e3",
        ] {
            assert_eq!(
                Limit::parse("gates.max_unhealthy", bad),
                Err(PolicyError::InvalidLimit { field: "gates.max_unhealthy", value: bad.to_owned() }),
                "{bad:?}"
            );
        }
        assert_eq!(Limit::percent(20).resolve_ceil(6), 2);
        assert_eq!(Limit::percent(20).resolve_ceil(10), 2);
        assert_eq!(Limit::percent(20).resolve_ceil(11), 3);
        assert_eq!(Limit::percent(20).resolve_ceil(0), 0);
        assert_eq!(Limit::Count(4).resolve_ceil(2), 4);
        assert_eq!(Limit::percent(10).resolve_floor_at_least_one(5), 1);
        assert_eq!(Limit::percent(10).resolve_floor_at_least_one(25), 2);
        assert_eq!(Limit::percent(10).resolve_floor_at_least_one(65_536), 6553);
        assert_eq!(Limit::BasisPoints(1250).to_string(), "12.5%");
        assert_eq!(Limit::BasisPoints(25).to_string(), "0.25%");
    }

    #[test]
    fn policy_deserialises_human_values_and_rejects_bad_ones() {
        let json = r#"{"monitor_only":false,"reboot_wait":"15m","gates":{"max_unhealthy":"30%","max_in_flight":2}}"#;
        let p: Policy = serde_json::from_str(json).unwrap();
        assert!(!p.monitor_only);
        assert_eq!(p.reboot_wait, Duration::from_secs(900));
        assert_eq!(p.gates.max_unhealthy, Limit::BasisPoints(3000));
        assert_eq!(p.gates.max_in_flight, Limit::Count(2));
        assert_eq!(p.gpu_reboot_wait, Duration::from_secs(2400));

        let err = serde_json::from_str::<Policy>(r#"{"reboot_wait":"ten minutes"}"#).unwrap_err().to_string();
        assert!(err.contains("invalid duration \"ten minutes\""), "{err}");
        let err =
            serde_json::from_str::<Policy>(r#"{"gates":{"max_unhealthy":"20 percent"}}"#).unwrap_err().to_string();
        assert!(err.contains("invalid limit \"20 percent\""), "{err}");
        let err = serde_json::from_str::<Policy>(r#"{"gates":{"max_unhealthy":-2}}"#).unwrap_err().to_string();
        assert!(err.contains("invalid limit -2"), "{err}");
        let err = serde_json::from_str::<Policy>(r#"{"reboot_wiat":"1m"}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `reboot_wiat`"), "{err}");

        let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_secs(60));
        assert_eq!(b.delay(2), Duration::from_secs(120));
        assert_eq!(b.delay(3), Duration::from_secs(240));
        assert_eq!(b.delay(40), Duration::from_secs(1800));
    }
}
