//! What the agent tells operators: a log line for every transition, action
//! and hold, and a Kubernetes Event (events.k8s.io) on the Node for each.
//!
//! The engine calls observers synchronously, so [`EventObserver`] only
//! formats the event and hands it to a bounded queue; a task publishes it
//! with kube-runtime's recorder. A full queue drops the Event (the log line
//! and metrics remain) and counts `reconcile_errors_total{reason="event_dropped"}`.

use std::fmt::Write as _;

use health_core::observer::{ActionEvent, DomainStormEvent, HoldEvent, StormEvent, TransitionEvent};
use health_core::{Observer, Phase};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

use crate::node::{AgentNode, NodeRef};

/// Events waiting to be published at most.
pub const QUEUE: usize = 1024;

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    /// The Node's name.
    pub node: String,
    /// The Node's uid, if known.
    pub uid: Option<String>,
    /// Normal or Warning.
    pub warning: bool,
    /// A CamelCase reason (`NodeUnhealthy`, `RebootIssued`, `RemediationHeld`, ...).
    pub reason: String,
    /// What happened and why.
    pub note: String,
    /// The action (`Reboot`, `Drain`, `Replace`, `Evaluate`).
    pub action: String,
}

/// Formats and queues Events; logs every one.
#[derive(Debug)]
pub struct EventObserver {
    tx: Option<mpsc::Sender<NodeEvent>>,
    errors_metric: String,
}

impl EventObserver {
    /// An observer that only logs.
    #[must_use]
    pub fn log_only(errors_metric: String) -> Self {
        EventObserver { tx: None, errors_metric }
    }

    /// An observer that logs and publishes Events through `client`; returns
    /// the publishing task's future (run it until shutdown).
    pub fn publishing(
        client: Client,
        instance: String,
        errors_metric: String,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let reporter = Reporter { controller: "node-agent".into(), instance: Some(instance).filter(|s| !s.is_empty()) };
        let recorder = Recorder::new(client, reporter);
        (EventObserver { tx: Some(tx), errors_metric: errors_metric.clone() }, publish(recorder, rx, errors_metric))
    }

    fn send(&self, ev: NodeEvent) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(ev).is_err() {
            metrics::counter!(self.errors_metric.clone(), "reason" => "event_dropped").increment(1);
        }
    }
}

async fn publish(recorder: Recorder, mut rx: mpsc::Receiver<NodeEvent>, errors_metric: String) {
    while let Some(ev) = rx.recv().await {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(ev.node.clone()),
            uid: ev.uid.clone(),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if ev.warning { EventType::Warning } else { EventType::Normal },
            reason: ev.reason.clone(),
            note: Some(ev.note.chars().take(1000).collect()),
            action: ev.action.clone(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            metrics::counter!(errors_metric.clone(), "reason" => "event_publish").increment(1);
            tracing::warn!(node = %ev.node, reason = %ev.reason, error = %e, "could not publish a Kubernetes Event");
        }
    }
}

fn phase_reason(from: Phase, to: Phase) -> &'static str {
    match to {
        // Verified after an action of ours: the repair worked.
        Phase::Healthy if from == Phase::Verifying => "NodeRecovered",
        Phase::Healthy => "NodeHealthy",
        Phase::Repairing => "RepairStarted",
        Phase::Verifying => "RecoveryVerifying",
        Phase::Unhealthy => "NodeUnhealthy",
        Phase::WaitingReboot => "RebootRequested",
        Phase::Draining => "DrainStarted",
        Phase::WaitingReplace => "ReplaceRequested",
        Phase::Failed => "RemediationFailed",
        Phase::Unknown => "NodeUnknown",
    }
}

/// `Reboot` for `reboot`, `RestartKubelet` for `restart-kubelet`: Event
/// reasons and actions are CamelCase.
fn camel(a: health_core::Action) -> String {
    let mut out = String::with_capacity(a.as_str().len());
    for word in a.as_str().split('-') {
        let mut c = word.chars();
        if let Some(f) = c.next() {
            out.push(f.to_ascii_uppercase());
            out.push_str(c.as_str());
        }
    }
    out
}

fn uid(target: &AgentNode) -> Option<String> {
    target.view().uid().map(str::to_owned)
}

impl Observer<NodeRef> for EventObserver {
    fn on_transition(&self, target: &NodeRef, e: &TransitionEvent<'_>) {
        let r = e.record;
        let mut note = format!("{} -> {}", e.from, e.to);
        if !r.failing.is_empty() {
            note.push_str("; failing:");
            for f in &r.failing {
                let _ = write!(note, " {} ({})", f.checker, f.reason);
            }
        }
        let _ = write!(
            note,
            "; reboots {}, failed actions {}, replacements {}; mode {}",
            r.reboot_count,
            r.action_failures,
            r.replace_count,
            e.mode.as_str()
        );
        let warning = !matches!(e.to, Phase::Healthy | Phase::Verifying);
        if e.from == Phase::Unknown && e.to == Phase::Healthy {
            // First sight of a healthy node: not news (and 65,536 lines at start-up).
            tracing::debug!(node = e.node, "first evaluation: healthy");
            return;
        }
        if warning {
            tracing::warn!(node = e.node, from = %e.from, to = %e.to, mode = e.mode.as_str(), detail = %note, "phase changed");
        } else {
            tracing::info!(node = e.node, from = %e.from, to = %e.to, mode = e.mode.as_str(), detail = %note, "phase changed");
        }
        self.send(NodeEvent {
            node: e.node.to_owned(),
            uid: uid(target),
            warning,
            reason: phase_reason(e.from, e.to).into(),
            note,
            action: "Evaluate".into(),
        });
    }

    fn on_action(&self, target: &NodeRef, e: &ActionEvent<'_>) {
        let (reason, note, warning) = match (e.mode, e.error) {
            (health_core::Mode::Monitor, _) => (
                format!("{}Recorded", camel(e.action)),
                format!("{} decided in monitor-only mode: recorded, not executed", e.action),
                false,
            ),
            (health_core::Mode::Active, None) => {
                (format!("{}Issued", camel(e.action)), format!("{} issued", e.action), false)
            }
            (health_core::Mode::Active, Some(err)) => {
                (format!("{}Failed", camel(e.action)), format!("{} failed ({}): {err}", e.action, err.reason()), true)
            }
        };
        if warning {
            tracing::warn!(node = e.node, action = %e.action, mode = e.mode.as_str(), detail = %note, "action failed");
        } else {
            tracing::info!(node = e.node, action = %e.action, mode = e.mode.as_str(), detail = %note, "action");
        }
        self.send(NodeEvent {
            node: e.node.to_owned(),
            uid: uid(target),
            warning,
            reason,
            note,
            action: camel(e.action),
        });
    }

    fn on_hold(&self, target: &NodeRef, e: &HoldEvent<'_>) {
        let why = match e.hold.reason {
            health_core::HoldReason::Paused => "remediation is paused by an operator".to_owned(),
            health_core::HoldReason::SourceStale => {
                "the node list cannot be trusted right now (watch down or not yet synced)".to_owned()
            }
            health_core::HoldReason::StormGuard => {
                "too many nodes are unhealthy at once (storm guard): a cluster-wide problem is more likely than a node fault".to_owned()
            }
            health_core::HoldReason::DomainStorm => match &e.domain {
                Some(d) => format!(
                    "its failure domain {}={} has {} of {} nodes unhealthy (limit {}): a shared cause is more likely than a node fault, so its nodes are not repaired one by one",
                    d.label, d.value, d.unhealthy, d.total, d.limit
                ),
                None => "too many nodes of its failure domain are unhealthy".to_owned(),
            },
            health_core::HoldReason::MaintenanceWindow => "outside the maintenance window".to_owned(),
            health_core::HoldReason::NodeDeleting => "the node is being deleted".to_owned(),
            health_core::HoldReason::TaintedForRemoval => "the node is tainted for removal or shutdown".to_owned(),
            health_core::HoldReason::OptedOut => {
                format!("the node is opted out ({}=true)", health_checks::OPT_OUT_ANNOTATION)
            }
            health_core::HoldReason::StartupGrace => "the node is within its start-up grace".to_owned(),
            health_core::HoldReason::MaxInFlight => "the limit of remediations under way is reached".to_owned(),
            health_core::HoldReason::MinActionInterval => {
                "another remediation started too recently (minimum interval)".to_owned()
            }
        };
        let mut note = format!("{} held back: {why}", e.hold.action);
        if let Some(until) = e.hold.until {
            let _ = write!(note, "; earliest at {until}");
        }
        tracing::warn!(node = e.node, action = %e.hold.action, gate = %e.hold.reason, detail = %note, "action held back");
        self.send(NodeEvent {
            node: e.node.to_owned(),
            uid: uid(target),
            warning: true,
            reason: "RemediationHeld".into(),
            note,
            // Events are aggregated by reason and action: with the held
            // action and the gate in the action, a hold by another gate is
            // an Event of its own (with its own message), not a count on
            // the old one.
            action: format!("{}HeldBy{}", camel(e.hold.action), e.hold.reason),
        });
    }

    fn on_domain_storm(&self, e: &DomainStormEvent<'_>) {
        let d = &e.domain;
        if e.active {
            tracing::error!(
                label = d.label,
                domain = d.value,
                unhealthy = d.unhealthy,
                total = d.total,
                limit = d.limit,
                "failure domain {}={} in storm: {} of {} nodes unhealthy (limit {}); its nodes are held until it recovers",
                d.label,
                d.value,
                d.unhealthy,
                d.total,
                d.limit
            );
        } else {
            tracing::info!(
                label = d.label,
                domain = d.value,
                unhealthy = d.unhealthy,
                total = d.total,
                limit = d.limit,
                "failure domain {}={} storm cleared",
                d.label,
                d.value
            );
        }
    }

    fn on_storm_guard(&self, e: &StormEvent) {
        if e.active && e.source_stale {
            tracing::error!(
                unhealthy = e.unhealthy,
                total = e.total,
                "storm guard engaged: the node source is stale (watch down or not synced), so node health cannot be trusted; no new remediation starts until a fresh list arrives"
            );
        } else if e.active {
            tracing::error!(
                unhealthy = e.unhealthy,
                total = e.total,
                limit = e.limit,
                "storm guard engaged: {} of {} nodes unhealthy (limit {}); no new remediation starts until it clears",
                e.unhealthy,
                e.total,
                e.limit
            );
        } else {
            tracing::info!(unhealthy = e.unhealthy, total = e.total, limit = e.limit, "storm guard cleared");
        }
    }
}
