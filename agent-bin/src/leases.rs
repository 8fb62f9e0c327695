//! Kubelet leases (`kube-node-lease`), for the `kubelet-lease` checker.
//!
//! Only when that checker is configured: at 65,536 nodes the lease watch
//! carries about 6,500 events per second, so the agent folds them into a
//! map of name -> last renewal and never re-evaluates a node for a renewal.
//! A node is evaluated again only when its lease crosses the staleness
//! limit, either way (a sweep every quarter of the limit finds those), or
//! when its lease appears or goes away.
//!
//! Until the lease list is complete, or while the lease watch is down, the
//! checker skips (`LeaseNotFetched`): a missing observation is never a
//! failure.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use health_checks::LeaseObservation;
use health_core::{ComponentStatus, HealthManager, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use parking_lot::RwLock;

use crate::watch::NodeCache;

/// The namespace of kubelet leases.
pub const NAMESPACE: &str = "kube-node-lease";
/// The component name of the lease watch.
pub const COMPONENT: &str = "kube-lease-watch";

#[derive(Debug, Default)]
struct Inner {
    synced: bool,
    renewed: HashMap<String, Option<Timestamp>>,
    stale: HashSet<String>,
}

/// Node name -> last renewal of its kubelet lease.
#[derive(Debug, Default)]
pub struct LeaseMap(RwLock<Inner>);

impl LeaseMap {
    /// An empty map (not synced: every observation is `NotFetched`).
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(LeaseMap::default())
    }

    /// What the checker sees for `node`.
    #[must_use]
    pub fn observe(&self, node: &str) -> LeaseObservation {
        let inner = self.0.read();
        if !inner.synced {
            return LeaseObservation::NotFetched;
        }
        match inner.renewed.get(node) {
            None => LeaseObservation::Missing,
            Some(t) => LeaseObservation::Renewed(*t),
        }
    }

    /// Leases known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.read().renewed.len()
    }

    /// Whether no lease is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shared [`LeaseMap`] that compares by identity (a node view holding
/// it is equal to another holding the same map).
#[derive(Clone, Debug)]
pub struct LeaseHandle(pub Arc<LeaseMap>);

impl PartialEq for LeaseHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn renew_time(l: &Lease) -> Option<Timestamp> {
    let t = l.spec.as_ref()?.renew_time.as_ref()?;
    Some(Timestamp::from_millis(u64::try_from(t.0.as_millisecond()).unwrap_or(0)))
}

fn is_stale(t: Option<Timestamp>, now: Timestamp, limit: Duration) -> bool {
    t.is_none_or(|t| now.saturating_since(t) > limit)
}

/// Watches `kube-node-lease` until aborted, keeping `map` and waking the
/// evaluation of nodes whose lease crossed `stale_after`.
///
/// The watcher relists by itself after a desync (410) and backs off on
/// errors. During an error the last map stays and no node is woken for it;
/// the staleness sweep waits until the watch delivers again, so a lease
/// never looks stale for want of news.
pub async fn watch_leases(
    client: kube::Client,
    map: Arc<LeaseMap>,
    cache: Arc<NodeCache>,
    stale_after: Duration,
    errors_metric: String,
    health: Arc<HealthManager>,
) {
    let api: kube::Api<Lease> = kube::Api::namespaced(client, NAMESPACE);
    health.register_optional(COMPONENT);
    let sweep_every = (stale_after / 4).max(Duration::from_secs(1));
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut buffer: Option<HashMap<String, Option<Timestamp>>> = None;
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_error = false;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = sweep.tick() => {
                if !in_error {
                    sweep_stale(&map, &cache, stale_after);
                }
                continue;
            }
        };
        let Some(event) = event else {
            // The watcher's stream does not end; if it ever does, the checker skips.
            tracing::warn!("kubelet lease watch ended: the kubelet-lease checker skips from now on");
            map.0.write().synced = false;
            health.update(COMPONENT, ComponentStatus::Degraded, "watch ended", Default::default());
            return;
        };
        match event {
            Ok(Event::Init) => buffer = Some(HashMap::new()),
            Ok(Event::InitApply(l)) => {
                if let Some(name) = l.metadata.name.clone() {
                    buffer.get_or_insert_with(HashMap::new).insert(name, renew_time(&l));
                }
            }
            Ok(Event::InitDone) => {
                in_error = false;
                let renewed = buffer.take().unwrap_or_default();
                let n = renewed.len();
                let woken = replace(&map, renewed, stale_after);
                tracing::info!(leases = n, "kubelet lease list complete");
                health.update(COMPONENT, ComponentStatus::Healthy, format!("{n} leases"), Default::default());
                match woken {
                    None => cache.touch_all(),
                    Some(names) => names.iter().for_each(|n| cache.touch(n)),
                }
            }
            Ok(Event::Apply(l)) => {
                in_error = false;
                let Some(name) = l.metadata.name.clone() else { continue };
                let t = renew_time(&l);
                let now = Timestamp::from_system_time(SystemTime::now());
                let wake = {
                    let mut inner = map.0.write();
                    let new = inner.renewed.insert(name.clone(), t).is_none();
                    let was_stale = inner.stale.contains(&name);
                    let stale = is_stale(t, now, stale_after);
                    if stale {
                        inner.stale.insert(name.clone());
                    } else {
                        inner.stale.remove(&name);
                    }
                    new || was_stale != stale
                };
                if wake {
                    cache.touch(&name);
                }
            }
            Ok(Event::Delete(l)) => {
                in_error = false;
                if let Some(name) = l.metadata.name.as_deref() {
                    {
                        let mut inner = map.0.write();
                        inner.renewed.remove(name);
                        inner.stale.remove(name);
                    }
                    cache.touch(name);
                }
            }
            Err(e) => {
                metrics::counter!(errors_metric.clone(), "reason" => "lease_watch").increment(1);
                if !in_error {
                    tracing::warn!(
                        error = %e,
                        "kubelet lease watch error: the last leases are kept, nothing is re-evaluated for it, the watcher retries"
                    );
                }
                health.update(COMPONENT, ComponentStatus::Degraded, format!("watch error: {e}"), Default::default());
                in_error = true;
            }
        }
    }
}

/// Replaces the map after a complete list. Returns the nodes whose
/// observation changed (lease appeared, went, or crossed the limit), or
/// `None` for the first list (every node: their checker skipped so far).
fn replace(map: &LeaseMap, renewed: HashMap<String, Option<Timestamp>>, stale_after: Duration) -> Option<Vec<String>> {
    let now = Timestamp::from_system_time(SystemTime::now());
    let stale: HashSet<String> =
        renewed.iter().filter(|(_, t)| is_stale(**t, now, stale_after)).map(|(n, _)| n.clone()).collect();
    let mut inner = map.0.write();
    let first = !inner.synced;
    let changed = if first {
        None
    } else {
        let names: HashSet<&String> = renewed.keys().chain(inner.renewed.keys()).collect();
        Some(
            names
                .into_iter()
                .filter(|n| {
                    (inner.renewed.contains_key(*n), inner.stale.contains(*n))
                        != (renewed.contains_key(*n), stale.contains(*n))
                })
                .cloned()
                .collect(),
        )
    };
    *inner = Inner { synced: true, renewed, stale };
    changed
}

/// Wakes the nodes whose lease went stale since the last sweep.
fn sweep_stale(map: &LeaseMap, cache: &NodeCache, stale_after: Duration) {
    let now = Timestamp::from_system_time(SystemTime::now());
    let newly: Vec<String> = {
        let mut inner = map.0.write();
        if !inner.synced {
            return;
        }
        let found: Vec<String> = inner
            .renewed
            .iter()
            .filter(|(n, t)| is_stale(**t, now, stale_after) && !inner.stale.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        inner.stale.extend(found.iter().cloned());
        found
    };
    for n in &newly {
        tracing::debug!(node = %n, "kubelet lease went stale");
        cache.touch(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_follow_the_map() {
        let m = LeaseMap::new();
        assert_eq!(m.observe("a"), LeaseObservation::NotFetched, "not synced: the checker skips");
        {
            let mut inner = m.0.write();
            inner.synced = true;
            inner.renewed.insert("a".into(), Some(Timestamp::from_secs(100)));
            inner.renewed.insert("b".into(), None);
        }
        assert_eq!(m.observe("a"), LeaseObservation::Renewed(Some(Timestamp::from_secs(100))));
        assert_eq!(m.observe("b"), LeaseObservation::Renewed(None));
        assert_eq!(m.observe("c"), LeaseObservation::Missing);
        assert!(is_stale(Some(Timestamp::from_secs(100)), Timestamp::from_secs(141), Duration::from_secs(40)));
        assert!(!is_stale(Some(Timestamp::from_secs(100)), Timestamp::from_secs(140), Duration::from_secs(40)));
        assert!(is_stale(None, Timestamp::from_secs(0), Duration::from_secs(40)));
    }
}
