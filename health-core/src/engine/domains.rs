//! Failure domains: which domains each node is in, each domain's gauges,
//! and its storm, reported when it changes (see [`crate::Domains`]).

#[allow(clippy::wildcard_imports)]
use super::*;

use crate::machine::DomainCount;
use crate::observer::{DomainStatus, DomainStormEvent};
use crate::policy::MAX_DOMAIN_LABELS;

/// A slot's domains, one id per configured label ([`NO_DOMAIN`] where the
/// node has no value for it).
pub(super) type DomainIds = [u32; MAX_DOMAIN_LABELS];

/// No domain for this label.
pub(super) const NO_DOMAIN: u32 = u32::MAX;

/// A node in no domain.
pub(super) const NO_DOMAINS: DomainIds = [NO_DOMAIN; MAX_DOMAIN_LABELS];

/// A domain's counts, kept current by the tally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct DomainTally {
    /// Present nodes.
    pub(super) present: u32,
    /// Present nodes failing or unknown.
    pub(super) unhealthy: u32,
    /// Counts changed since they were last reported.
    pub(super) dirty: bool,
}

/// One domain: what it is and what was last reported of it.
struct Domain {
    /// Its label, as an index into the policy's domain labels.
    label: u8,
    value: Arc<str>,
    /// The storm state last reported.
    storm: bool,
    /// Its gauges (nodes, unhealthy, storm), while it has nodes.
    gauges: Option<[Gauge; 3]>,
}

/// Every domain seen, by label and value. Ids are never reused: a domain
/// whose nodes all left keeps its id (and loses its series).
#[derive(Default)]
pub(super) struct DomainTable {
    /// Per label: value to id.
    by_value: Vec<HashMap<Arc<str>, u32>>,
    list: Vec<Domain>,
}

impl DomainTable {
    /// The ids of `target`'s domains, creating the domains not seen yet.
    pub(super) fn ids<T: Target>(&mut self, labels: &[String], target: &T, tally: &mut Tally) -> DomainIds {
        let mut ids = NO_DOMAINS;
        if labels.is_empty() {
            return ids;
        }
        if self.by_value.len() < labels.len() {
            self.by_value.resize_with(labels.len(), HashMap::new);
        }
        for (k, key) in labels.iter().enumerate().take(MAX_DOMAIN_LABELS) {
            let Some(value) = target.label(key).filter(|v| !v.is_empty()) else { continue };
            ids[k] = match self.by_value[k].get(value) {
                Some(&id) => id,
                None => {
                    let id = u32::try_from(self.list.len()).unwrap_or(NO_DOMAIN - 1);
                    let value: Arc<str> = Arc::from(value);
                    self.by_value[k].insert(Arc::clone(&value), id);
                    self.list.push(Domain {
                        label: u8::try_from(k).unwrap_or(u8::MAX),
                        value,
                        storm: false,
                        gauges: None,
                    });
                    tally.domains.push(DomainTally::default());
                    id
                }
            };
        }
        ids
    }
}

impl State {
    /// The stepped node's domains as the machine sees them. Other nodes
    /// under way are counted only for a domain in storm (the floor's check).
    pub(super) fn domain_budget(
        &self,
        policy: &Policy,
        si: usize,
        wall: Timestamp,
        mono: Duration,
    ) -> [Option<DomainCount>; MAX_DOMAIN_LABELS] {
        let mut out = [None; MAX_DOMAIN_LABELS];
        for (k, &id) in self.slots[si].domains.iter().enumerate() {
            let Some(t) = self.tally.domains.get(id as usize) else { continue };
            let mut d = DomainCount { total: t.present, unhealthy: t.unhealthy, in_flight: 0 };
            if d.storm(policy) {
                let busy = self.tally.candidates.iter().filter(|&&i| {
                    i != si && self.slots[i].domains[k] == id && self.slots[i].occupies_slot(policy, wall, mono)
                });
                d.in_flight = u32::try_from(busy.count()).unwrap_or(u32::MAX);
            }
            out[k] = Some(d);
        }
        out
    }

    /// Domain `k` of slot `si`, for a hold's report: its value and counts.
    pub(super) fn domain_of(&self, si: usize, k: usize) -> Option<(Arc<str>, DomainTally)> {
        let id = *self.slots[si].domains.get(k)?;
        let (t, d) = (self.tally.domains.get(id as usize)?, self.domains.list.get(id as usize)?);
        Some((Arc::clone(&d.value), *t))
    }
}

/// Domain `k`'s status from its value and counts.
pub(super) fn status_of<'a>(policy: &'a Policy, k: usize, value: &'a str, t: &DomainTally) -> DomainStatus<'a> {
    let count = DomainCount { total: t.present, unhealthy: t.unhealthy, in_flight: 0 };
    DomainStatus {
        label: policy.domains.labels.get(k).map_or("", String::as_str),
        value,
        total: t.present,
        unhealthy: t.unhealthy,
        limit: count.limit(policy),
    }
}

fn status<'a>(policy: &'a Policy, d: &'a Domain, t: &DomainTally) -> DomainStatus<'a> {
    status_of(policy, usize::from(d.label), &d.value, t)
}

impl<T: Target + Clone + 'static> Engine<T> {
    /// Updates the gauges of every domain whose counts changed, and reports
    /// each domain entering or leaving its storm. Returns whether any changed.
    pub(super) fn report_domains(&mut self, now: Timestamp) -> bool {
        let dirty = std::mem::take(&mut self.state.tally.dirty_domains);
        let changed = !dirty.is_empty();
        let shared = &self.shared;
        let policy = &shared.policy;
        let names = &shared.names;
        for id in dirty {
            let i = id as usize;
            let (Some(t), Some(d)) = (self.state.tally.domains.get_mut(i), self.state.domains.list.get_mut(i)) else {
                continue;
            };
            t.dirty = false;
            let t = *t;
            let count = DomainCount { total: t.present, unhealthy: t.unhealthy, in_flight: 0 };
            let storm = t.present > 0 && count.storm(policy);
            let label = policy.domains.labels.get(usize::from(d.label)).map_or("", String::as_str);
            let keys = [&names.domain_nodes, &names.domain_unhealthy_nodes, &names.domain_storm_active]
                .map(|n| names.domain_key(n, label, &d.value));
            if t.present == 0 {
                // The domain's nodes are all gone: so are its series.
                if d.gauges.take().is_some()
                    && let Some(remover) = &shared.remover
                {
                    for key in &keys {
                        remover.remove_series(crate::metrics::SeriesKind::Gauge, key);
                    }
                }
            } else {
                let gauges = d.gauges.get_or_insert_with(|| keys.each_ref().map(|k| names.gauge(k)));
                gauges[0].set(f64::from(t.present));
                gauges[1].set(f64::from(t.unhealthy));
                gauges[2].set(if storm { 1.0 } else { 0.0 });
            }
            if storm != d.storm {
                d.storm = storm;
                let event = DomainStormEvent { active: storm, domain: status(policy, d, &t), at: now };
                notify(&shared.observers, "domain_storm", |o| o.on_domain_storm(&event));
            }
        }
        changed
    }
}
