//! One evaluation: load, check, decide with compare-and-swap.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Check outcomes kept allocated between passes (one per node and checker).
const SCRATCH_KEEP: usize = 4096;

impl<T: Target + Clone + 'static> Engine<T> {
    /// Ensures every target has a slot (loading stored records); returns the
    /// slot index per target (`None` where loading failed).
    pub(super) async fn slots_for(&mut self, targets: &[T], report: &mut PassReport) -> Vec<Option<usize>> {
        let pass = self.state.pass;
        let mut out = Vec::with_capacity(targets.len());
        // A first listing of a large fleet gets its slots in one allocation
        // (growing by doubling would leave up to half of them unused).
        // Only a listing that at least doubles the fleet does: a node that
        // joins a full vector grows it by doubling, not to one more.
        let unseen = targets.len().saturating_sub(self.state.slots.len());
        if unseen > self.state.slots.len() && unseen > self.state.slots.capacity() - self.state.slots.len() {
            self.state.slots.reserve_exact(unseen);
            self.state.index.reserve(unseen);
        }
        for (ti, t) in targets.iter().enumerate() {
            let name = t.name();
            // Drivers that pass the same targets in the same order (a
            // simulation, a full listing) find each slot where they left
            // it, without a hash lookup (a cache miss per node at scale).
            let known = match self.state.slots.get(ti) {
                Some(s) if &*s.name == name => Some(ti),
                _ => self.state.index.get(name).copied(),
            };
            let idx = match known {
                Some(i) if !self.state.slots[i].needs_reload => Some(i),
                // Not in the listing just restored: nothing is stored.
                None if self.state.listed => {
                    let slot = Slot::new(t.shared_name(), NodeRecord::new(t.facts().class), None);
                    Some(self.state.push(slot))
                }
                existing => {
                    match self.shared.store.load(name).await {
                        Ok(stored) => {
                            let now = self.shared.clock.now();
                            let (mut record, version) = match stored {
                                Some(s) => (s.record, Some(s.version)),
                                None => (NodeRecord::new(t.facts().class), None),
                            };
                            clamp_future(&mut record, now);
                            // Only a disruptive action spaces the cluster's next one.
                            if let Some(at) = record.last_action_at
                                && record.last_action.is_some_and(Action::is_disruptive)
                            {
                                self.state.last_action_at = Some(self.state.last_action_at.map_or(at, |l| l.max(at)));
                            }
                            match existing {
                                Some(i) => {
                                    let slot = &mut self.state.slots[i];
                                    slot.record = record;
                                    slot.version = version;
                                    slot.needs_reload = false;
                                    slot.unknown = false;
                                    Some(i)
                                }
                                None => Some(self.state.push(Slot::new(t.shared_name(), record, version))),
                            }
                        }
                        Err(error) => {
                            self.shared.count_error("store_load");
                            report.errors.push(NodeError { node: name.to_owned(), error });
                            // Keep the node counted (as unhealthy: its state is
                            // unknown) and not removed, and try it again after a back-off.
                            let i = match existing {
                                Some(i) => i,
                                None => {
                                    let mut slot = Slot::new(t.shared_name(), NodeRecord::new(t.facts().class), None);
                                    slot.needs_reload = true;
                                    self.state.push(slot)
                                }
                            };
                            let now = self.shared.clock.now();
                            let slot = &mut self.state.slots[i];
                            slot.seen = pass;
                            slot.unknown = true;
                            slot.departed_at = None;
                            slot.errors = slot.errors.saturating_add(1);
                            slot.deadline = Some(now + self.shared.config.store_retry.delay(slot.errors));
                            self.state.touch(i);
                            None
                        }
                    }
                }
            };
            // The node's failure domains (the unknown count against theirs too).
            if let Some(i) = idx.or_else(|| self.state.index.get(name).copied()) {
                let ids = self.state.domains.ids(&self.shared.policy.domains.labels, t, &mut self.state.tally);
                if self.state.slots[i].domains != ids {
                    self.state.slots[i].domains = ids;
                    self.state.touch(i);
                }
            }
            if let Some(i) = idx {
                let slot = &mut self.state.slots[i];
                slot.seen = pass;
                if slot.departed_at.take().is_some() {
                    // Back within forget_after: history kept.
                    slot.deadline = None;
                }
                self.state.touch(i);
            }
            out.push(idx);
        }
        out
    }

    /// Evaluates `targets`; with `complete`, they are the whole set and
    /// known nodes not among them depart first (so they leave the budget).
    pub(super) async fn evaluate_inner(&mut self, targets: &[T], complete: bool, sync: bool) -> PassReport {
        let started = tokio::time::Instant::now();
        self.state.pass += 1;
        let mut report = PassReport { evaluated: targets.len(), ..PassReport::default() };
        let slots = self.slots_for(targets, &mut report).await;
        // The listing vouches for the first pass over nodes after it only.
        if !targets.is_empty() {
            self.state.listed = false;
        }
        if complete {
            let (pass, now, forget_after) = (self.state.pass, self.shared.clock.now(), self.shared.config.forget_after);
            for si in 0..self.state.slots.len() {
                let s = &mut self.state.slots[si];
                if s.seen != pass && s.departed_at.is_none() {
                    s.departed_at = Some(now);
                    s.deadline = Some(now + forget_after);
                    report.departed.push(s.name.to_string());
                    self.state.touch(si);
                }
            }
        }
        let mut outcomes = std::mem::take(&mut self.state.outcomes);
        let mut errs = std::mem::take(&mut self.state.errs);
        // Validation probes run only for nodes being verified, and for those
        // a probe failed (until it passes: its failure is not forgotten).
        let verifying: Vec<bool> = if self.shared.validation.iter().any(|v| *v) {
            let names = &self.shared.checker_names;
            let validation = &self.shared.validation;
            slots
                .iter()
                .map(|s| {
                    s.is_some_and(|si| {
                        let r = &self.state.slots[si].record;
                        r.phase == Phase::Verifying
                            || r.failing
                                .iter()
                                .any(|f| names.iter().zip(validation.iter()).any(|(n, v)| *v && *n == f.checker))
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        Self::run_checks(&self.shared, targets, &slots, &verifying, &mut outcomes, &mut errs).await;
        let nc = self.shared.checkers.len();
        let now = self.shared.clock.now();
        self.state.mono = self.shared.clock.monotonic();
        let grace = self.shared.config.error_grace;
        // The controls are read once, with the clock: the pass decides on
        // these readings, which are the ones a recording holds.
        let sw = self.shared.controls.read();
        if !self.shared.observers.is_empty() {
            let loaded: Vec<bool> = slots.iter().map(Option::is_some).collect();
            let event = PassEvent {
                targets,
                sync,
                loaded: &loaded,
                checkers: &self.shared.checker_names,
                outcomes: &outcomes[..targets.len() * nc],
                errors: &errs[..targets.len() * nc],
                at: now,
                monotonic: self.state.mono,
                paused: sw.paused,
                source_stale: sw.source_stale,
                window_closed: sw.window_closed,
            };
            notify(&self.shared.observers, "pass", |o| o.on_pass(&event));
        }

        for (ti, slot) in slots.iter().enumerate() {
            let Some(si) = *slot else { continue };
            let s = &mut self.state.slots[si];
            s.grace_until = None;
            // Allocated only while some checker errs on this node (a
            // healthy fleet keeps none).
            if !errs[ti * nc..(ti + 1) * nc].iter().any(|&e| e) {
                s.error_since = Vec::new();
            } else if s.error_since.len() != nc {
                s.error_since.resize(nc, None);
            }
            for ci in 0..nc {
                let i = ti * nc + ci;
                if !errs[i] {
                    if let Some(e) = s.error_since.get_mut(ci) {
                        *e = None;
                    }
                    continue;
                }
                // A checker's own error is not a finding about the node: skip
                // it until it has lasted the grace. A validation probe gets no
                // grace: one that cannot answer has not validated the node.
                let since = *s.error_since[ci].get_or_insert(now);
                if now < since + grace
                    && !self.shared.validation[ci]
                    && let CheckOutcome::Fail { reason, .. } = &outcomes[i]
                {
                    s.grace_until = Some(s.grace_until.map_or(since + grace, |g| g.min(since + grace)));
                    outcomes[i] = CheckOutcome::Skip { reason: reason.clone() };
                }
            }
            s.failing = outcomes[ti * nc..(ti + 1) * nc].iter().any(CheckOutcome::is_fail);
            self.state.touch(si);
        }
        let mut budget = self.budget(now, self.state.mono, sw);
        // A stale source holds everything, like a storm: say so the same way
        // (once there are nodes to hold).
        let storm = budget.storm(&self.shared.policy) || (budget.source_stale && budget.total > 0);
        report.storm_guard = storm;
        if storm != self.state.storm_active {
            self.state.storm_active = storm;
            self.state.globals.storm.set(if storm { 1.0 } else { 0.0 });
            let event = StormEvent {
                active: storm,
                unhealthy: budget.unhealthy,
                total: budget.total,
                limit: self.shared.policy.gates.max_unhealthy.resolve_ceil(budget.total),
                source_stale: budget.source_stale,
                at: now,
            };
            notify(&self.shared.observers, "storm_guard", |o| o.on_storm_guard(&event));
        }
        if self.report_domains(now) {
            self.state.domain_moved = true;
        }

        // Round 1 decides every target. Actions in active mode run in tasks
        // and are decided again after they finish (from a new evaluation);
        // monitor-mode actions are recorded at once, and later rounds
        // re-decide those nodes. Every round decides on the pass's one
        // reading of the clock and the controls (the readings a recording
        // holds, so a replay decides the same). The machine never chains
        // more than three actions; the bound only guards against a bug.
        // One target's checks as the machine sees them, in a buffer reused
        // for every target (no allocation per node).
        let names = Arc::clone(&self.shared.checker_names);
        let thresholds = Arc::clone(&self.shared.thresholds);
        let validation = Arc::clone(&self.shared.validation);
        let mut checks: Vec<Check<'_>> = Vec::with_capacity(nc);
        let mut round: Vec<usize> = (0..targets.len()).filter(|&ti| slots[ti].is_some()).collect();
        let mut first = true;
        for _ in 0..MAX_ROUNDS {
            if round.is_empty() {
                break;
            }
            let mut planned = Vec::new();
            for &ti in &round {
                let Some(si) = slots[ti] else { continue };
                checks.clear();
                checks.extend(
                    names
                        .iter()
                        .zip(thresholds.iter())
                        .zip(validation.iter())
                        .zip(&outcomes[ti * nc..(ti + 1) * nc])
                        .map(|(((name, &threshold), &validation), outcome)| Check {
                            name,
                            threshold,
                            outcome,
                            validation,
                        }),
                );
                if let Some(p) = self
                    .decide(
                        &targets[ti],
                        ti,
                        si,
                        &checks,
                        &errs[ti * nc..(ti + 1) * nc],
                        &mut budget,
                        now,
                        first,
                        &mut report,
                    )
                    .await
                {
                    planned.push(p);
                }
            }
            first = false;
            round = self.perform(targets, planned, now, &mut report).await;
        }
        for &ti in &round {
            // Still chaining after MAX_ROUNDS: look at these nodes again soon.
            if let Some(si) = slots[ti] {
                self.state.slots[si].deadline = Some(now);
                self.state.touch(si);
            }
        }
        drop(checks);
        // The scratch space is kept for the next pass, up to a size that
        // serves the incremental passes: a full pass over a large fleet
        // (tens of megabytes at 65,536 nodes) does not stay resident.
        if outcomes.capacity() > SCRATCH_KEEP {
            outcomes.clear();
            outcomes.shrink_to(SCRATCH_KEEP);
            errs.clear();
            errs.shrink_to(SCRATCH_KEEP);
        }
        self.state.outcomes = outcomes;
        self.state.errs = errs;
        self.state.globals.eval.record(started.elapsed().as_secs_f64());
        report
    }

    /// Steps one node, persists the decision with compare-and-swap, and
    /// returns the action to perform. A node whose action is still running
    /// is not decided (its next step waits for the outcome).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn decide(
        &mut self,
        target: &T,
        ti: usize,
        si: usize,
        checks: &[Check<'_>],
        errs: &[bool],
        budget: &mut Budget,
        now: Timestamp,
        emit_checks: bool,
        report: &mut PassReport,
    ) -> Option<Planned> {
        if self.state.slots[si].running {
            return None;
        }
        let shared = &self.shared;
        let facts = target.facts();
        let obs = Observation { checks, facts };
        let mono = self.state.mono;
        let wall = now;
        let last_mono = self.state.last_action_mono;
        let policy = &shared.policy;
        let b0 = *budget;
        let domains = if policy.domains.labels.is_empty() {
            b0.domains
        } else {
            self.state.domain_budget(policy, si, wall, mono)
        };
        let written = Self::write_cas(shared, &mut self.state, si, now, report, |slot| {
            slot.anchor(wall, mono);
            let local = slot.local_now(wall, mono);
            let was_in_flight = slot.occupies_slot(policy, wall, mono);
            // The cluster-wide last action, in this node's frame.
            let mut b = Budget { domains, ..b0 };
            // The machine counts a node in an in-flight phase as under way;
            // past its wait the engine does not (it blocks nobody while held
            // there), so add it back: its retry then needs a free slot.
            if slot.record.phase.is_in_flight() && !was_in_flight {
                b.in_flight += 1;
            }
            if let Some(m) = last_mono {
                b.last_action_at = Some(local - mono.saturating_sub(m));
            }
            let (record, outline) = Outline::split(machine::step(slot.record.clone(), &obs, policy, &b, local));
            match record {
                Some(record) => Plan::Write(record, (outline, local, was_in_flight)),
                None => Plan::Keep((outline, local, was_in_flight)),
            }
        })
        .await;
        let (decision, local) = match written {
            Written::Failed => return None,
            Written::Kept((outline, local, _)) => (outline, local),
            Written::Saved((outline, local, was_in_flight)) => {
                let disruptive = outline.action.is_some_and(Action::is_disruptive);
                if disruptive {
                    budget.last_action_at = Some(wall);
                    self.state.last_action_at = Some(wall);
                    self.state.last_action_mono = Some(mono);
                }
                let starts = disruptive && outline.mode == Mode::Active;
                let slot = &self.state.slots[si];
                match (was_in_flight, starts || slot.occupies_slot(policy, wall, mono)) {
                    (false, true) => budget.in_flight += 1,
                    (true, false) => budget.in_flight = budget.in_flight.saturating_sub(1),
                    _ => {}
                }
                (outline, local)
            }
        };

        let domain_hold = decision
            .hold
            .and_then(|h| h.domain)
            .and_then(|k| self.state.domain_of(si, usize::from(k)).map(|(v, t)| (usize::from(k), v, t)));
        let slot = &mut self.state.slots[si];
        // The machine's deadline is in the node's frame; the driver sleeps on the wall clock.
        let next = decision
            .next_deadline
            .map(|d| if d >= local { wall + d.saturating_since(local) } else { wall - local.saturating_since(d) });
        slot.deadline = match (next, slot.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        slot.errors = 0;
        if emit_checks {
            for (i, (check, &erred)) in checks.iter().zip(errs).enumerate() {
                let result = match check.outcome {
                    _ if erred => CheckResultLabel::Error,
                    CheckOutcome::Pass => CheckResultLabel::Pass,
                    CheckOutcome::Fail { .. } => CheckResultLabel::Fail,
                    CheckOutcome::Skip { .. } => continue,
                };
                slot.series.count_check(&shared.names, &slot.name, &shared.checker_labels, i, result);
            }
        }
        slot.series.set_phase(&shared.names, &slot.name, slot.record.phase);
        let unhealthy_for = slot.record.unhealthy_since.map_or(0.0, |t| now.saturating_since(t).as_secs_f64());
        slot.series.set_unhealthy(&shared.names, &slot.name, unhealthy_for);
        let new_hold = decision.hold.map(|h| h.reason);
        if let Some(h) = &decision.hold {
            report.held.push((slot.name.to_string(), h.reason));
            if slot.hold != new_hold {
                let names = &shared.names;
                names.counter(&names.labelled(&names.actions_held_total, "reason", h.reason.as_str())).increment(1);
                let domain = domain_hold.as_ref().map(|(k, v, t)| domains::status_of(&shared.policy, *k, v, t));
                let event = HoldEvent { node: &slot.name, hold: h, at: now, domain };
                notify(&shared.observers, "hold", |o| o.on_hold(target, &event));
            }
        }
        slot.hold = new_hold;
        self.state.touch(si);
        let slot = &self.state.slots[si];
        if let Some(change) = decision.transition {
            shared.transition(report, slot, target, change, now, decision.mode);
        }
        // The record stamps the action in the node's frame: so does the plan.
        decision.action.map(|action| Planned { target: ti, slot: si, action, mode: decision.mode, started_at: local })
    }
}

/// A decision without its record.
pub(super) struct Outline {
    pub(super) action: Option<Action>,
    pub(super) mode: Mode,
    pub(super) transition: Option<PhaseChange>,
    pub(super) hold: Option<crate::machine::Hold>,
    pub(super) next_deadline: Option<Timestamp>,
}

impl Outline {
    /// Splits a decision into its new record (when it changed) and the rest.
    pub(super) fn split(d: Decision) -> (Option<NodeRecord>, Self) {
        let outline = Outline {
            action: d.action,
            mode: d.mode,
            transition: d.transition,
            hold: d.hold,
            next_deadline: d.next_deadline,
        };
        (d.changed.then_some(d.record), outline)
    }
}
