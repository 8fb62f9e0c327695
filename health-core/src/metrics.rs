//! Metric names and per-node series handles.
//!
//! The engine emits through the [`metrics`] facade only; the binary installs
//! an exporter. Names are `{prefix}_{name}`, with the prefix configurable
//! (default [`DEFAULT_PREFIX`], `node_health`; the `node-agent` binary sets
//! `civo_node_agent`, the names of Civo's Go agent).
//!
//! The facade cannot delete a series, so when a node leaves the engine hands
//! every per-node key to a [`SeriesRemover`], implemented by the recorder
//! the binary installs (or a test recorder).

use std::sync::Arc;

use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, SharedString, Unit};

use crate::domain::{Action, Mode, Phase, Repair};

/// The library's default metric name prefix (vendor-neutral).
pub const DEFAULT_PREFIX: &str = "node_health";

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The kind of a metric series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SeriesKind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
}

/// Removes series from the installed recorder when their node goes away.
pub trait SeriesRemover: Send + Sync {
    /// Forgets the series `key` of `kind`; unknown keys are ignored.
    fn remove_series(&self, kind: SeriesKind, key: &Key);
}

impl<R: SeriesRemover + ?Sized> SeriesRemover for std::sync::Arc<R> {
    fn remove_series(&self, kind: SeriesKind, key: &Key) {
        (**self).remove_series(kind, key);
    }
}

/// The full metric names for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricNames {
    /// `{prefix}_health_check_total{node,checker,result=pass|fail|error}` (counter).
    pub health_check_total: String,
    /// `{prefix}_recovery_actions_total{node,action,mode=monitor|active}` (counter).
    pub recovery_actions_total: String,
    /// `{prefix}_recovery_failures_total{node,action}` (counter).
    pub recovery_failures_total: String,
    /// `{prefix}_reconcile_errors_total{reason}` (counter).
    pub reconcile_errors_total: String,
    /// `{prefix}_node_unhealthy_duration_seconds{node}` (gauge).
    pub node_unhealthy_duration_seconds: String,
    /// `{prefix}_recovery_phase{node,phase}` (gauge, one-hot).
    pub recovery_phase: String,
    /// `{prefix}_storm_guard_active` (gauge, 0 or 1).
    pub storm_guard_active: String,
    /// `{prefix}_unhealthy_nodes` (gauge).
    pub unhealthy_nodes: String,
    /// `{prefix}_selected_nodes` (gauge).
    pub selected_nodes: String,
    /// `{prefix}_remediations_in_flight` (gauge).
    pub remediations_in_flight: String,
    /// `{prefix}_actions_held_total{reason}` (counter).
    pub actions_held_total: String,
    /// `{prefix}_evaluation_duration_seconds` (histogram, one per pass).
    pub evaluation_duration_seconds: String,
    /// `{prefix}_domain_nodes{label,domain}` (gauge): nodes per failure domain.
    pub domain_nodes: String,
    /// `{prefix}_domain_unhealthy_nodes{label,domain}` (gauge).
    pub domain_unhealthy_nodes: String,
    /// `{prefix}_domain_storm_active{label,domain}` (gauge, 0 or 1).
    pub domain_storm_active: String,
    /// The names written on every evaluation of a node, shared (a key
    /// built from them copies no string).
    shared: SharedNames,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SharedNames {
    health_check_total: KeyName,
    recovery_phase: KeyName,
    node_unhealthy_duration_seconds: KeyName,
}

impl MetricNames {
    /// The names under `prefix` (no trailing underscore).
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let n = |s: &str| format!("{prefix}_{s}");
        let shared = |s: &str| KeyName::from(SharedString::from(Arc::<str>::from(n(s))));
        MetricNames {
            shared: SharedNames {
                health_check_total: shared("health_check_total"),
                recovery_phase: shared("recovery_phase"),
                node_unhealthy_duration_seconds: shared("node_unhealthy_duration_seconds"),
            },
            health_check_total: n("health_check_total"),
            recovery_actions_total: n("recovery_actions_total"),
            recovery_failures_total: n("recovery_failures_total"),
            reconcile_errors_total: n("reconcile_errors_total"),
            node_unhealthy_duration_seconds: n("node_unhealthy_duration_seconds"),
            recovery_phase: n("recovery_phase"),
            storm_guard_active: n("storm_guard_active"),
            unhealthy_nodes: n("unhealthy_nodes"),
            selected_nodes: n("selected_nodes"),
            remediations_in_flight: n("remediations_in_flight"),
            actions_held_total: n("actions_held_total"),
            evaluation_duration_seconds: n("evaluation_duration_seconds"),
            domain_nodes: n("domain_nodes"),
            domain_unhealthy_nodes: n("domain_unhealthy_nodes"),
            domain_storm_active: n("domain_storm_active"),
        }
    }

    /// Registers HELP text and units with the installed recorder.
    pub fn describe(&self) {
        metrics::with_recorder(|r| {
            let c = |name: &String, unit: Option<Unit>, help: &'static str| {
                r.describe_counter(name.clone().into(), unit, help.into())
            };
            let g = |name: &String, unit: Option<Unit>, help: &'static str| {
                r.describe_gauge(name.clone().into(), unit, help.into())
            };
            c(
                &self.health_check_total,
                None,
                "Health check evaluations per node, checker and result (pass, fail, or error: the checker itself failed or timed out).",
            );
            c(
                &self.recovery_actions_total,
                None,
                "Recovery actions decided per node, action and mode (monitor: recorded only; active: executed).",
            );
            c(
                &self.recovery_failures_total,
                None,
                "Recovery actions the executor reported failed, per node and action.",
            );
            c(
                &self.reconcile_errors_total,
                None,
                "Errors of the reconcile loop itself (state store, node source), by reason.",
            );
            g(
                &self.node_unhealthy_duration_seconds,
                Some(Unit::Seconds),
                "Seconds since the node's current unhealthy episode began (0 when healthy).",
            );
            g(&self.recovery_phase, None, "Current recovery phase of each node (one-hot: 1 for the current phase).");
            g(&self.storm_guard_active, None, "1 while the storm guard holds back new remediations, else 0.");
            g(&self.unhealthy_nodes, None, "Selected nodes currently failing at least one checker.");
            g(&self.selected_nodes, None, "Nodes selected for evaluation.");
            g(
                &self.remediations_in_flight,
                None,
                "Nodes with a remediation under way (waiting reboot, draining, waiting replace).",
            );
            c(&self.actions_held_total, None, "Actions held back by a safety gate, by gate.");
            g(&self.domain_nodes, None, "Nodes per failure domain (label and its value).");
            g(&self.domain_unhealthy_nodes, None, "Nodes of each failure domain failing at least one checker.");
            g(
                &self.domain_storm_active,
                None,
                "1 while a failure domain has more unhealthy nodes than domains.max_unhealthy (its nodes are held), else 0.",
            );
            r.describe_histogram(
                self.evaluation_duration_seconds.clone().into(),
                Some(Unit::Seconds),
                "Duration of one evaluation pass over the selected nodes.".into(),
            );
        });
    }

    pub(crate) fn counter(&self, key: &Key) -> Counter {
        metrics::with_recorder(|r| r.register_counter(key, &METADATA))
    }

    pub(crate) fn gauge(&self, key: &Key) -> Gauge {
        metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
    }

    pub(crate) fn histogram(&self, key: &Key) -> metrics::Histogram {
        metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
    }

    /// Label values are taken as given: an `Arc<str>` is shared, not copied.
    pub(crate) fn check_key(
        &self,
        node: impl Into<SharedString>,
        checker: impl Into<SharedString>,
        result: &'static str,
    ) -> Key {
        Key::from_parts(
            self.shared.health_check_total.clone(),
            vec![Label::new("node", node), Label::new("checker", checker), Label::new("result", result)],
        )
    }

    pub(crate) fn action_key(&self, node: &str, action: Action, mode: Mode) -> Key {
        Key::from_parts(
            self.recovery_actions_total.clone(),
            vec![
                Label::new("node", node.to_owned()),
                Label::new("action", action.as_str()),
                Label::new("mode", mode.as_str()),
            ],
        )
    }

    pub(crate) fn failure_key(&self, node: &str, action: Action) -> Key {
        Key::from_parts(
            self.recovery_failures_total.clone(),
            vec![Label::new("node", node.to_owned()), Label::new("action", action.as_str())],
        )
    }

    pub(crate) fn phase_key(&self, node: impl Into<SharedString>, phase: Phase) -> Key {
        Key::from_parts(
            self.shared.recovery_phase.clone(),
            vec![Label::new("node", node), Label::new("phase", phase.as_str())],
        )
    }

    pub(crate) fn unhealthy_key(&self, node: impl Into<SharedString>) -> Key {
        Key::from_parts(self.shared.node_unhealthy_duration_seconds.clone(), vec![Label::new("node", node)])
    }

    /// A failure domain's series of `name`.
    pub(crate) fn domain_key(&self, name: &str, label: &str, domain: &Arc<str>) -> Key {
        Key::from_parts(
            name.to_owned(),
            vec![Label::new("label", label.to_owned()), Label::new("domain", SharedString::from(Arc::clone(domain)))],
        )
    }

    pub(crate) fn labelled(&self, name: &str, label: &'static str, value: &'static str) -> Key {
        Key::from_parts(name.to_owned(), vec![Label::new(label, value)])
    }

    /// Every per-node series key the engine may have created for `node`.
    pub(crate) fn node_series(&self, node: &str, checkers: &[String], repairs: &[Repair]) -> Vec<(SeriesKind, Key)> {
        let mut keys = Vec::new();
        let shared: Arc<str> = node.into();
        for checker in checkers {
            for result in CheckResultLabel::ALL {
                keys.push((SeriesKind::Counter, self.check_key(Arc::clone(&shared), checker.clone(), result.as_str())));
            }
        }
        for action in Action::ALL.into_iter().chain(repairs.iter().map(|r| Action::Repair(*r))) {
            for mode in [Mode::Monitor, Mode::Active] {
                keys.push((SeriesKind::Counter, self.action_key(node, action, mode)));
            }
            keys.push((SeriesKind::Counter, self.failure_key(node, action)));
        }
        for phase in Phase::ALL {
            keys.push((SeriesKind::Gauge, self.phase_key(Arc::clone(&shared), phase)));
        }
        keys.push((SeriesKind::Gauge, self.unhealthy_key(shared)));
        keys
    }
}

/// The `result` label of `health_check_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckResultLabel {
    Pass = 0,
    Fail = 1,
    Error = 2,
}

impl CheckResultLabel {
    /// Every label.
    pub(crate) const ALL: [Self; 3] = [Self::Pass, Self::Fail, Self::Error];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Error => "error",
        }
    }
}

/// The phases exported in the one-hot `recovery_phase` gauge (all but `Unknown`).
pub(crate) const EXPORTED_PHASES: [Phase; 6] =
    [Phase::Healthy, Phase::Unhealthy, Phase::WaitingReboot, Phase::Draining, Phase::WaitingReplace, Phase::Failed];

/// The engine's part of one node's series.
///
/// Only the `pass` counters, written on every evaluation of a healthy
/// node, are held as handles (16 bytes each, registered on first use). A
/// `fail` or `error` count goes through the facade (a registry lookup, as
/// the `metrics` macros do), and the phase and unhealthy-duration gauges
/// are written only when their value changes, so a pass over a healthy
/// fleet builds no key, and each series lives once, in the recorder.
///
/// A series is registered when it is first written: a healthy node has its
/// `pass` counters, its `Healthy` phase gauge and its unhealthy-duration
/// gauge, not twelve more zero series (each costs the recorder memory: a
/// registry entry of about 250 bytes in a general-purpose recorder, about
/// 50 in the agent's). Once registered a series stays until its node is
/// forgotten. The keys share the node's name (an `Arc<str>`), never copy it.
#[derive(Debug, Default)]
pub(crate) struct NodeSeries {
    /// Per checker: its `pass` counter (a no-op handle until bit `i` of
    /// `pass_set` says it is registered; checkers past the 64th are looked
    /// up on every count).
    pass: Box<[Counter]>,
    pass_set: u64,
    /// Bit `i`: the gauge of `EXPORTED_PHASES[i]` exists.
    phases_set: u8,
    /// The index in `EXPORTED_PHASES` of the gauge now at 1.
    phase_now: Option<u8>,
    /// The unhealthy-duration gauge exists and was last set to 0.
    unhealthy_zero: bool,
}

impl NodeSeries {
    /// Counts one evaluation of checker `i` (labelled `checkers[i]`) on
    /// `node` with `result`.
    pub(crate) fn count_check(
        &mut self,
        names: &MetricNames,
        node: &Arc<str>,
        checkers: &[Arc<str>],
        i: usize,
        result: CheckResultLabel,
    ) {
        let Some(checker) = checkers.get(i) else { return };
        let key = || names.check_key(Arc::clone(node), Arc::clone(checker), result.as_str());
        if result != CheckResultLabel::Pass || i >= 64 {
            names.counter(&key()).increment(1);
            return;
        }
        if self.pass.len() != checkers.len() {
            self.pass = checkers.iter().map(|_| Counter::noop()).collect();
            self.pass_set = 0;
        }
        if self.pass_set & (1 << i) == 0 {
            self.pass[i] = names.counter(&key());
            self.pass_set |= 1 << i;
        }
        self.pass[i].increment(1);
    }

    /// Sets `node`'s unhealthy-duration gauge (a 0 only when it was not 0).
    pub(crate) fn set_unhealthy(&mut self, names: &MetricNames, node: &Arc<str>, seconds: f64) {
        let zero = seconds == 0.0;
        if zero && self.unhealthy_zero {
            return;
        }
        names.gauge(&names.unhealthy_key(Arc::clone(node))).set(seconds);
        self.unhealthy_zero = zero;
    }

    /// Sets the one-hot phase gauges: 1 for `phase`, 0 for the others the
    /// node has been in (nothing when the phase is the one already at 1).
    pub(crate) fn set_phase(&mut self, names: &MetricNames, node: &Arc<str>, phase: Phase) {
        let now = EXPORTED_PHASES.iter().position(|&p| p == phase).and_then(|i| u8::try_from(i).ok());
        if now.is_some() && now == self.phase_now {
            return;
        }
        for (i, p) in EXPORTED_PHASES.into_iter().enumerate() {
            if p == phase {
                names.gauge(&names.phase_key(Arc::clone(node), p)).set(1.0);
                self.phases_set |= 1 << i;
            } else if self.phases_set & (1 << i) != 0 {
                names.gauge(&names.phase_key(Arc::clone(node), p)).set(0.0);
            }
        }
        self.phase_now = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let n = MetricNames::new(DEFAULT_PREFIX);
        assert_eq!(n.health_check_total, "node_health_health_check_total");
        let n = MetricNames::new("civo_node_agent");
        assert_eq!(n.health_check_total, "civo_node_agent_health_check_total");
        assert_eq!(n.recovery_phase, "civo_node_agent_recovery_phase");
        assert_eq!(n.node_unhealthy_duration_seconds, "civo_node_agent_node_unhealthy_duration_seconds");
        let m = MetricNames::new("acme");
        assert_eq!(m.reconcile_errors_total, "acme_reconcile_errors_total");
        let kubelet = crate::Repair::new("restart-kubelet").expect("a valid name");
        let keys = n.node_series("n1", &["NodeReady".to_owned()], &[kubelet]);
        // 3 check results + 5 actions x (2 modes + 1 failure) + 9 phases + 1 duration.
        assert_eq!(keys.len(), 3 + 15 + 9 + 1);
        assert!(keys.iter().any(|(_, k)| k.labels().any(|l| l.key() == "action" && l.value() == "restart-kubelet")));
        assert!(keys.iter().all(|(_, k)| k.labels().any(|l| l.key() == "node" && l.value() == "n1")));
    }
}
