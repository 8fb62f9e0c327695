//! Component health of the agent itself (liveness and readiness).
//!
//! Components (the node watcher, the state store, the heartbeat reporter...)
//! register with a [`HealthManager`] and report `Healthy`, `Degraded` or
//! `Unhealthy` with a message and metadata. Liveness fails while any
//! component is `Unhealthy`; readiness needs every required component
//! `Healthy` or `Degraded`. Each check can be suppressed for a while (a
//! planned restart, start-up while waiting for leadership), and a standby
//! replica is always ready. Reports are taken under one lock, so the verdict
//! and the per-component detail always agree.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, ReentrantMutex};
use serde::Serialize;
use tokio::time::Instant;

/// A component's reported health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentStatus {
    /// Registered but has not reported yet.
    #[default]
    Unspecified,
    /// Working.
    Healthy,
    /// Working with reduced capacity or accuracy.
    Degraded,
    /// Not working.
    Unhealthy,
}

impl ComponentStatus {
    /// The lowercase name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ComponentStatus::Unspecified => "unspecified",
            ComponentStatus::Healthy => "healthy",
            ComponentStatus::Degraded => "degraded",
            ComponentStatus::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for ComponentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One component's last report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ComponentState {
    /// Its status.
    pub status: ComponentStatus,
    /// A human message.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Extra detail (never secrets).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Whether readiness depends on it.
    pub required: bool,
}

/// A liveness or readiness verdict with the per-component detail it was based on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The verdict.
    pub ok: bool,
    /// Why the check fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The check is suppressed (it passes regardless).
    pub suppressed: bool,
    /// The replica is a standby.
    pub standby: bool,
    /// Every component's state.
    pub components: BTreeMap<String, ComponentState>,
}

/// A component changed status.
#[derive(Debug)]
pub struct ComponentTransition<'a> {
    /// The component.
    pub component: &'a str,
    /// The status before.
    pub old: ComponentStatus,
    /// The status after.
    pub new: ComponentStatus,
    /// The new message.
    pub message: &'a str,
    /// The new metadata.
    pub metadata: &'a BTreeMap<String, String>,
}

/// Called on every status change, outside the manager's lock (it may call
/// back into the manager).
pub type TransitionCallback = Arc<dyn Fn(&ComponentTransition<'_>) + Send + Sync>;

#[derive(Default)]
struct Inner {
    components: BTreeMap<String, ComponentState>,
    liveness_until: Option<Instant>,
    readiness_until: Option<Instant>,
    standby: bool,
    observer: Option<TransitionCallback>,
}

/// The registry of component health.
#[derive(Default)]
pub struct HealthManager {
    inner: Mutex<Inner>,
    /// Serialises callback delivery so transitions arrive in the order they
    /// happened; re-entrant so a callback may update the manager itself.
    delivery: ReentrantMutex<()>,
}

/// `now + d`, capped a century ahead instead of overflowing (`Duration::MAX`
/// means "until cleared").
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

impl fmt::Debug for HealthManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("HealthManager")
            .field("components", &inner.components)
            .field("standby", &inner.standby)
            .finish_non_exhaustive()
    }
}

impl HealthManager {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        HealthManager::default()
    }

    fn add(&self, name: &str, required: bool) {
        let mut inner = self.inner.lock();
        let entry = inner.components.entry(name.to_owned()).or_default();
        entry.required = required;
    }

    /// Registers a component that readiness depends on (status `Unspecified`
    /// until it reports). Registering again keeps its status.
    pub fn register(&self, name: &str) {
        self.add(name, true);
    }

    /// Registers a component that readiness ignores (liveness still counts it).
    pub fn register_optional(&self, name: &str) {
        self.add(name, false);
    }

    /// Removes a component.
    pub fn deregister(&self, name: &str) {
        self.inner.lock().components.remove(name);
    }

    /// Records a component's status; an unregistered component is registered
    /// as required. The transition callback runs after the lock is released.
    pub fn update(
        &self,
        name: &str,
        status: ComponentStatus,
        message: impl Into<String>,
        metadata: BTreeMap<String, String>,
    ) {
        let message = message.into();
        let _delivery = self.delivery.lock();
        let (old, observer) = {
            let mut inner = self.inner.lock();
            let entry = inner
                .components
                .entry(name.to_owned())
                .or_insert_with(|| ComponentState { required: true, ..ComponentState::default() });
            let old = entry.status;
            entry.status = status;
            entry.message.clone_from(&message);
            entry.metadata.clone_from(&metadata);
            (old, inner.observer.clone())
        };
        if old != status
            && let Some(observer) = observer
        {
            observer(&ComponentTransition {
                component: name,
                old,
                new: status,
                message: &message,
                metadata: &metadata,
            });
        }
    }

    /// A component's last report.
    #[must_use]
    pub fn status(&self, name: &str) -> Option<ComponentState> {
        self.inner.lock().components.get(name).cloned()
    }

    /// Every component's last report.
    #[must_use]
    pub fn report(&self) -> BTreeMap<String, ComponentState> {
        self.inner.lock().components.clone()
    }

    /// Liveness: nothing is `Unhealthy` (or liveness is suppressed).
    #[must_use]
    pub fn check_liveness(&self) -> HealthReport {
        let inner = self.inner.lock();
        let suppressed = inner.liveness_until.is_some_and(|t| Instant::now() < t);
        let bad: Vec<String> = inner
            .components
            .iter()
            .filter(|(_, c)| c.status == ComponentStatus::Unhealthy)
            .map(|(n, c)| describe(n, c))
            .collect();
        verdict(&inner, suppressed, bad, "unhealthy components")
    }

    /// Readiness: every required component is `Healthy` or `Degraded` (or the
    /// replica is a standby, or readiness is suppressed).
    #[must_use]
    pub fn check_readiness(&self) -> HealthReport {
        let inner = self.inner.lock();
        let suppressed = inner.readiness_until.is_some_and(|t| Instant::now() < t);
        let bad: Vec<String> = if inner.standby {
            Vec::new()
        } else {
            inner
                .components
                .iter()
                .filter(|(_, c)| {
                    c.required && !matches!(c.status, ComponentStatus::Healthy | ComponentStatus::Degraded)
                })
                .map(|(n, c)| describe(n, c))
                .collect()
        };
        verdict(&inner, suppressed, bad, "components not ready")
    }

    /// Makes liveness pass for `d` (e.g. across a planned restart of a component).
    pub fn suppress_liveness(&self, d: Duration) {
        self.inner.lock().liveness_until = Some(deadline_after(d));
    }

    /// Ends a liveness suppression early.
    pub fn clear_liveness_suppression(&self) {
        self.inner.lock().liveness_until = None;
    }

    /// Makes readiness pass for `d` (e.g. at start-up).
    pub fn suppress_readiness(&self, d: Duration) {
        self.inner.lock().readiness_until = Some(deadline_after(d));
    }

    /// Ends a readiness suppression early.
    pub fn clear_readiness_suppression(&self) {
        self.inner.lock().readiness_until = None;
    }

    /// Marks this replica a standby (always ready, acts on nothing) or active.
    pub fn set_standby(&self, standby: bool) {
        self.inner.lock().standby = standby;
    }

    /// Whether this replica is a standby.
    #[must_use]
    pub fn is_standby(&self) -> bool {
        self.inner.lock().standby
    }

    /// Sets (or clears) the transition callback.
    pub fn set_observer(&self, observer: Option<TransitionCallback>) {
        self.inner.lock().observer = observer;
    }
}

fn describe(name: &str, c: &ComponentState) -> String {
    if c.message.is_empty() {
        format!("{name} ({})", c.status)
    } else {
        format!("{name} ({}: {})", c.status, c.message)
    }
}

fn verdict(inner: &Inner, suppressed: bool, bad: Vec<String>, what: &str) -> HealthReport {
    let failing = !bad.is_empty();
    HealthReport {
        ok: suppressed || !failing,
        error: failing.then(|| format!("{what}: {}", bad.join(", "))),
        suppressed,
        standby: inner.standby,
        components: inner.components.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_owned(), v.to_owned())])
    }

    #[test]
    fn liveness_fails_only_on_unhealthy() {
        let hm = HealthManager::new();
        hm.register("watcher");
        hm.register_optional("heartbeat");
        assert!(hm.check_liveness().ok, "unspecified is alive");
        hm.update("heartbeat", ComponentStatus::Degraded, "slow", BTreeMap::new());
        assert!(hm.check_liveness().ok);
        hm.update("watcher", ComponentStatus::Unhealthy, "watch failed", meta("errors", "3"));
        let r = hm.check_liveness();
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("unhealthy components: watcher (unhealthy: watch failed)"));
        assert_eq!(r.components["watcher"].metadata["errors"], "3");
    }

    #[test]
    fn readiness_needs_required_components_reporting_healthy_or_degraded() {
        let hm = HealthManager::new();
        hm.register("watcher");
        hm.register_optional("heartbeat");
        let r = hm.check_readiness();
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("components not ready: watcher (unspecified)"));
        hm.update("watcher", ComponentStatus::Degraded, "", BTreeMap::new());
        assert!(hm.check_readiness().ok, "optional heartbeat is ignored");
        hm.update("store", ComponentStatus::Unhealthy, "etcd down", BTreeMap::new());
        assert!(!hm.check_readiness().ok, "an unregistered update registers as required");
        hm.deregister("store");
        assert!(hm.check_readiness().ok);
    }

    #[test]
    fn standby_is_always_ready() {
        let hm = HealthManager::new();
        hm.register("watcher");
        hm.set_standby(true);
        let r = hm.check_readiness();
        assert!(r.ok && r.standby && r.error.is_none());
        hm.set_standby(false);
        assert!(!hm.check_readiness().ok);
    }

    #[tokio::test(start_paused = true)]
    async fn suppression_is_time_boxed_and_clearable() {
        let hm = HealthManager::new();
        hm.update("watcher", ComponentStatus::Unhealthy, "down", BTreeMap::new());
        hm.suppress_liveness(Duration::from_secs(30));
        let r = hm.check_liveness();
        assert!(r.ok && r.suppressed);
        assert!(r.error.is_some(), "the detail still says what is wrong");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(!hm.check_liveness().ok);

        hm.suppress_readiness(Duration::from_secs(10));
        assert!(hm.check_readiness().ok);
        hm.clear_readiness_suppression();
        assert!(!hm.check_readiness().ok);
        hm.suppress_liveness(Duration::from_secs(10));
        hm.clear_liveness_suppression();
        assert!(!hm.check_liveness().ok);
        // "Forever" does not overflow.
        hm.suppress_liveness(Duration::MAX);
        hm.suppress_readiness(Duration::MAX);
        assert!(hm.check_liveness().ok && hm.check_readiness().ok);
    }

    #[test]
    fn observer_runs_outside_the_lock_on_changes_only() {
        let hm = Arc::new(HealthManager::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (hm2, seen2) = (Arc::clone(&hm), Arc::clone(&seen));
        hm.set_observer(Some(Arc::new(move |t: &ComponentTransition<'_>| {
            // Re-entering the manager must not deadlock.
            let ready = hm2.check_readiness().ok;
            seen2.lock().push((t.component.to_owned(), t.old, t.new, t.message.to_owned(), ready));
        })));
        hm.register("store");
        hm.update("store", ComponentStatus::Healthy, "ok", BTreeMap::new());
        hm.update("store", ComponentStatus::Healthy, "still ok", BTreeMap::new());
        hm.update("store", ComponentStatus::Unhealthy, "gone", BTreeMap::new());
        let seen = seen.lock().clone();
        assert_eq!(
            seen,
            vec![
                ("store".to_owned(), ComponentStatus::Unspecified, ComponentStatus::Healthy, "ok".to_owned(), true),
                ("store".to_owned(), ComponentStatus::Healthy, ComponentStatus::Unhealthy, "gone".to_owned(), false),
            ]
        );
        assert_eq!(hm.status("store").map(|s| s.message), Some("gone".to_owned()));
    }

    #[test]
    fn concurrent_updates_reach_the_observer_in_order() {
        let hm = Arc::new(HealthManager::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        hm.set_observer(Some(Arc::new(move |t: &ComponentTransition<'_>| {
            // A slow observer widens the window in which deliveries could overtake.
            for _ in 0..20 {
                std::thread::yield_now();
            }
            seen2.lock().push((t.old, t.new));
        })));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let hm = Arc::clone(&hm);
                std::thread::spawn(move || {
                    for k in 0..200 {
                        let status =
                            if (i + k) % 2 == 0 { ComponentStatus::Healthy } else { ComponentStatus::Unhealthy };
                        hm.update("c", status, "", BTreeMap::new());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        // Every delivered transition starts where the previous one ended.
        let seen = seen.lock();
        assert!(seen.windows(2).all(|w| w[0].1 == w[1].0), "out of order: {seen:?}");
        assert_eq!(seen.last().map(|t| t.1), hm.status("c").map(|s| s.status));
    }

    #[test]
    fn report_serialises_for_http_endpoints() {
        let hm = HealthManager::new();
        hm.update("watcher", ComponentStatus::Healthy, "", meta("nodes", "3"));
        let json = serde_json::to_string(&hm.check_readiness()).unwrap();
        assert_eq!(
            json,
            r#"{"ok":true,"suppressed":false,"standby":false,"components":{"watcher":{"status":"healthy","metadata":{"nodes":"3"},"required":true}}}"#
        );
    }
}
