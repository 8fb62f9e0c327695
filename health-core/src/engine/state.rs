//! Per-node bookkeeping ([`Slot`]) and the engine's mutable state.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) struct Slot {
    /// The node's name, shared with the index and its metric labels.
    pub(super) name: Arc<str>,
    pub(super) record: NodeRecord,
    pub(super) version: Option<Version>,
    /// The record in memory may differ from the store: reload before deciding.
    pub(super) needs_reload: bool,
    pub(super) failing: bool,
    pub(super) deadline: Option<Timestamp>,
    pub(super) hold: Option<HoldReason>,
    pub(super) seen: u64,
    /// Consecutive store errors, for the retry back-off.
    pub(super) errors: u32,
    /// Which of the node's phase gauges exist.
    pub(super) series: NodeSeries,
    /// An action of this node is running in a task.
    pub(super) running: bool,
    /// The running action is a soft repair: it takes no `max_in_flight` slot.
    pub(super) running_soft: bool,
    /// The record could not be loaded: the node counts as unhealthy.
    pub(super) unknown: bool,
    /// When the node left the target set (its record is kept until
    /// `forget_after` has passed).
    pub(super) departed_at: Option<Timestamp>,
    /// Per checker: since when it has been erring continuously (empty
    /// while none errs).
    pub(super) error_since: Vec<Option<Timestamp>>,
    /// The earliest end of an error grace, to decide again then.
    pub(super) grace_until: Option<Timestamp>,
    /// The node's own time frame while it is being remediated: a wall
    /// instant and the monotonic instant it was read at. Its time advances
    /// with the monotonic clock, so a wall-clock step never shortens (or
    /// stretches) its waits.
    pub(super) frame: Option<(Timestamp, Duration)>,
    /// What the slot adds to the engine's [`Tally`], as last accounted.
    pub(super) counted: Counted,
    /// The node's failure domains.
    pub(super) domains: DomainIds,
}

impl Slot {
    pub(super) fn new(name: Arc<str>, record: NodeRecord, version: Option<Version>) -> Self {
        Slot {
            name,
            failing: !record.failing.is_empty(),
            record,
            version,
            needs_reload: false,
            deadline: None,
            hold: None,
            seen: 0,
            errors: 0,
            series: NodeSeries::default(),
            running: false,
            running_soft: false,
            unknown: false,
            departed_at: None,
            error_since: Vec::new(),
            grace_until: None,
            frame: None,
            counted: Counted::default(),
            domains: NO_DOMAINS,
        }
    }

    /// Nothing time-critical is under way: the node may follow the wall clock.
    pub(super) fn calm(&self) -> bool {
        matches!(self.record.phase, Phase::Healthy | Phase::Unknown)
            && !self.record.has_history()
            && !self.record.cordoned
            && !self.running
    }

    /// Re-anchors the node's frame on the wall clock while it is calm.
    pub(super) fn anchor(&mut self, wall: Timestamp, mono: Duration) {
        if self.frame.is_none() || self.calm() {
            self.frame = Some((wall, mono));
        }
    }

    /// The node's current time: the wall clock while calm, else its frame
    /// advanced by monotonic time.
    pub(super) fn local_now(&self, wall: Timestamp, mono: Duration) -> Timestamp {
        match self.frame {
            Some((t, m)) if !self.calm() => t + mono.saturating_sub(m),
            _ => wall,
        }
    }

    /// Whether the node occupies a `max_in_flight` slot: while its action
    /// runs, or within the wait that follows it (a node held in an in-flight
    /// phase past its wait does not block others).
    pub(super) fn occupies_slot(&self, policy: &Policy, wall: Timestamp, mono: Duration) -> bool {
        if self.running && !self.running_soft {
            return true;
        }
        // A node we cordoned stays out of service until it is verified:
        // another node's drain must not start beside it.
        if self.record.cordoned && self.record.phase == Phase::Verifying {
            return true;
        }
        if !self.record.phase.is_in_flight() {
            return false;
        }
        let now = self.local_now(wall, mono);
        let wait = match self.record.phase {
            Phase::WaitingReboot => policy.reboot_wait_for(self.record.class),
            Phase::WaitingReplace => policy.escalation.replace_wait,
            // A drain occupies a slot while it runs; a drained node waiting
            // for its replacement does until the replacement is decided.
            Phase::Draining => return self.record.drained && self.hold.is_none(),
            _ => return false,
        };
        self.record.last_action_at.is_some_and(|at| now < at + wait)
    }
}

/// What one slot adds to the engine's [`Tally`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Counted {
    /// Present (not departed): counts toward the budget's total.
    present: bool,
    /// Present and failing, or its record could not be loaded.
    unhealthy: bool,
    /// May occupy a `max_in_flight` slot (running, or in an in-flight phase).
    candidate: bool,
    departed: bool,
    deadline: Option<Timestamp>,
    hold: Option<HoldReason>,
    domains: DomainIds,
}

impl Default for Counted {
    fn default() -> Self {
        Counted {
            present: false,
            unhealthy: false,
            candidate: false,
            departed: false,
            deadline: None,
            hold: None,
            domains: NO_DOMAINS,
        }
    }
}

impl Slot {
    fn counts(&self) -> Counted {
        let present = self.departed_at.is_none();
        Counted {
            present,
            unhealthy: present && (self.failing || self.unknown),
            candidate: (self.running && !self.running_soft)
                || self.record.phase.is_in_flight()
                || (self.record.cordoned && self.record.phase == Phase::Verifying),
            departed: !present,
            deadline: self.deadline,
            hold: self.hold,
            domains: self.domains,
        }
    }
}

/// Aggregates over every slot, kept current by [`State::touch`], so that
/// evaluating a few nodes costs time in those nodes (and the few in
/// remediation), not in the size of the fleet.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Present nodes.
    pub(super) present: u32,
    /// Present nodes failing or unknown.
    pub(super) unhealthy: u32,
    /// Slots that may occupy an in-flight slot.
    pub(super) candidates: BTreeSet<usize>,
    /// Every slot's deadline.
    pub(super) deadlines: BTreeSet<(Timestamp, usize)>,
    /// Slots whose last decision was held back.
    pub(super) held: BTreeSet<usize>,
    /// Held slots per reason (indexed like [`HoldReason::ALL`]).
    pub(super) holds: [u32; HoldReason::ALL.len()],
    /// Departed slots, waiting for `forget_after`.
    pub(super) departed: BTreeSet<usize>,
    /// Per failure domain (indexed by id).
    pub(super) domains: Vec<DomainTally>,
    /// Domains whose counts changed since they were last reported.
    pub(super) dirty_domains: Vec<u32>,
}

impl Tally {
    fn account(&mut self, si: usize, c: Counted, add: bool) {
        let n = |v: &mut u32, on: bool| {
            if on {
                *v = if add { v.saturating_add(1) } else { v.saturating_sub(1) };
            }
        };
        n(&mut self.present, c.present);
        n(&mut self.unhealthy, c.unhealthy);
        let set = |s: &mut BTreeSet<usize>, on: bool| {
            if on {
                if add {
                    s.insert(si);
                } else {
                    s.remove(&si);
                }
            }
        };
        set(&mut self.candidates, c.candidate);
        set(&mut self.departed, c.departed);
        set(&mut self.held, c.hold.is_some());
        if let Some(h) = c.hold {
            n(&mut self.holds[h as usize], true);
        }
        if c.present || c.unhealthy {
            for &id in c.domains.iter().filter(|&&id| id != NO_DOMAIN) {
                let Some(d) = self.domains.get_mut(id as usize) else { continue };
                n(&mut d.present, c.present);
                n(&mut d.unhealthy, c.unhealthy);
                if !d.dirty {
                    d.dirty = true;
                    self.dirty_domains.push(id);
                }
            }
        }
        if let Some(d) = c.deadline {
            if add {
                self.deadlines.insert((d, si));
            } else {
                self.deadlines.remove(&(d, si));
            }
        }
    }

    /// Whether some node is held by `reason`.
    pub(super) fn holds(&self, reason: HoldReason) -> bool {
        self.holds[reason as usize] > 0
    }
}

pub(super) struct Globals {
    pub(super) storm: Gauge,
    pub(super) unhealthy: Gauge,
    pub(super) selected: Gauge,
    pub(super) in_flight: Gauge,
    pub(super) eval: Histogram,
}

/// The mutable bookkeeping of the engine.
pub(super) struct State {
    pub(super) slots: Vec<Slot>,
    pub(super) index: HashMap<Arc<str>, usize>,
    pub(super) last_action_at: Option<Timestamp>,
    /// The monotonic instant of the last disruptive action started by this
    /// process (the cluster-wide minimum interval is measured on it).
    pub(super) last_action_mono: Option<Duration>,
    /// The monotonic reading of the current decision round.
    pub(super) mono: Duration,
    pub(super) storm_active: bool,
    pub(super) recheck: bool,
    pub(super) pass: u64,
    pub(super) outcomes: Vec<CheckOutcome>,
    /// Per outcome: the checker erred (rather than found the node unhealthy).
    pub(super) errs: Vec<bool>,
    pub(super) globals: Globals,
    /// Every failure domain seen.
    pub(super) domains: DomainTable,
    /// Since the last pass ended: whether a domain's counts changed, and the
    /// cluster's (unhealthy, in flight) then. A node held by its domain is
    /// looked at again only after one of them moved.
    pub(super) domain_moved: bool,
    pub(super) last_counts: (u32, u32),
    /// The deadline handed out last, and whether it was already due then
    /// (two due deadlines in a row back off instead of spinning).
    pub(super) due_streak: u32,
    pub(super) next_deadline: Option<Timestamp>,
    pub(super) tally: Tally,
    /// A complete listing of the store was just loaded ([`Engine::restore`]):
    /// until the end of the next pass, a node without a slot has no record
    /// (nodes only ever healthy are not stored), so it is not loaded one by
    /// one. A record written meanwhile by someone else is still found: the
    /// node's first write is a create, which conflicts and reloads.
    pub(super) listed: bool,
}

impl State {
    /// Brings the tally up to date with slot `si` (after any change to it).
    pub(super) fn touch(&mut self, si: usize) {
        let slot = &mut self.slots[si];
        let now = slot.counts();
        let before = std::mem::replace(&mut slot.counted, now);
        if before != now {
            self.tally.account(si, before, false);
            self.tally.account(si, now, true);
        }
    }

    /// Adds a slot and accounts it; returns its index.
    pub(super) fn push(&mut self, slot: Slot) -> usize {
        let i = self.slots.len();
        self.index.insert(Arc::clone(&slot.name), i);
        self.slots.push(slot);
        self.touch(i);
        i
    }

    /// Removes the slot of `node` (the last slot takes its index).
    pub(super) fn remove(&mut self, node: &str) -> Option<Slot> {
        let i = self.index.remove(node)?;
        let last = self.slots.len() - 1;
        let counted = self.slots[i].counted;
        self.tally.account(i, counted, false);
        if i != last {
            let moved = self.slots[last].counted;
            self.tally.account(last, moved, false);
        }
        let slot = self.slots.swap_remove(i);
        if i != last {
            self.tally.account(i, self.slots[i].counted, true);
            self.index.insert(Arc::clone(&self.slots[i].name), i);
        }
        Some(slot)
    }

    /// Recomputes the tally from scratch and compares (debug builds, small
    /// fleets): a slot changed without [`State::touch`] is a bug.
    pub(super) fn debug_check_tally(&self) {
        if cfg!(debug_assertions) && self.slots.len() <= 2048 {
            let mut fresh =
                Tally { domains: vec![DomainTally::default(); self.tally.domains.len()], ..Tally::default() };
            for (i, s) in self.slots.iter().enumerate() {
                fresh.account(i, s.counts(), true);
            }
            let t = &self.tally;
            let counts = |d: &[DomainTally]| d.iter().map(|d| (d.present, d.unhealthy)).collect::<Vec<_>>();
            assert!(
                counts(&fresh.domains) == counts(&t.domains),
                "engine domain tally out of date: {:?}, expected {:?}",
                t.domains,
                fresh.domains
            );
            assert!(
                (
                    fresh.present,
                    fresh.unhealthy,
                    &fresh.candidates,
                    &fresh.deadlines,
                    &fresh.held,
                    fresh.holds,
                    &fresh.departed
                ) == (t.present, t.unhealthy, &t.candidates, &t.deadlines, &t.held, t.holds, &t.departed),
                "engine tally out of date: {t:?}, expected {fresh:?}"
            );
        }
    }
}

/// Moves timestamps stamped in the future (by a clock that was ahead) to
/// `now`, so such a record never holds a node or a slot longer than its wait.
pub(super) fn clamp_future(record: &mut NodeRecord, now: Timestamp) {
    for t in [
        &mut record.unhealthy_since,
        &mut record.healthy_since,
        &mut record.last_transition_at,
        &mut record.last_action_at,
    ] {
        if t.is_some_and(|t| t > now) {
            *t = Some(now);
        }
    }
    // A back-off may legitimately end in the future, but not past the
    // longest back-off after a clamped action.
    if let (Some(nb), Some(at)) = (record.not_before, record.last_action_at)
        && nb > at + Duration::from_secs(7 * 24 * 3600)
    {
        record.not_before = Some(at);
    }
}
