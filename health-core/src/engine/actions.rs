//! Actions off the evaluation path: started in tasks, folded in when they finish.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A finished action, waiting to be folded into its node's record.
#[derive(Clone)]
pub(super) struct Completion<T> {
    pub(super) node: String,
    pub(super) action: Action,
    pub(super) mode: Mode,
    pub(super) started_at: Timestamp,
    pub(super) target: T,
    pub(super) error: Option<Arc<ExecError>>,
}

impl<T: Target + Clone + 'static> Engine<T> {
    /// Starts planned actions: active ones in tasks (bounded by their
    /// timeout, panics contained), monitor-mode ones recorded at once.
    /// Returns the targets to decide again in this evaluation.
    pub(super) async fn perform(
        &mut self,
        targets: &[T],
        planned: Vec<Planned>,
        now: Timestamp,
        report: &mut PassReport,
    ) -> Vec<usize> {
        let mut again = Vec::new();
        for p in planned {
            let node = self.state.slots[p.slot].name.to_string();
            let target = targets[p.target].clone();
            match p.mode {
                Mode::Monitor => {
                    let c = Completion {
                        node,
                        action: p.action,
                        mode: p.mode,
                        started_at: p.started_at,
                        target,
                        error: None,
                    };
                    // Recorded at the decision's time (not a later clock
                    // reading): a replay of the pass reproduces it.
                    self.announce_at(&c, now);
                    if self.fold_at(&c, report, now, self.state.mono).await.is_some() {
                        again.push(p.target);
                    }
                }
                Mode::Active => {
                    self.state.slots[p.slot].running = true;
                    self.state.slots[p.slot].running_soft = p.action.is_soft();
                    self.state.touch(p.slot);
                    let executor = Arc::clone(&self.shared.executor);
                    let limit = self.shared.config.timeout_for(p.action);
                    let (action, mode, started_at) = (p.action, p.mode, p.started_at);
                    self.running.spawn(async move {
                        let run = AssertUnwindSafe(executor.execute(action, &target)).catch_unwind();
                        let error = match tokio::time::timeout(limit, run).await {
                            Ok(Ok(Ok(()))) => None,
                            Ok(Ok(Err(e))) => Some(e),
                            Ok(Err(p)) => {
                                let message = panic_message(p.as_ref());
                                tracing::error!(node = %node, %action, panic = %message, "the executor panicked; its outcome is unknown");
                                Some(ExecError::Unknown { action, message: format!("the executor panicked: {message}") })
                            }
                            Err(_) => Some(ExecError::Timeout { action, after: limit }),
                        };
                        Completion { node, action, mode, started_at, target, error: error.map(Arc::new) }
                    });
                }
            }
        }
        again
    }

    /// Counts a finished action and tells the observers (once per action).
    pub(super) fn announce(&self, c: &Completion<T>) {
        self.announce_at(c, self.shared.clock.now());
    }

    /// [`Self::announce`] at `now`.
    fn announce_at(&self, c: &Completion<T>, now: Timestamp) {
        let names = &self.shared.names;
        names.counter(&names.action_key(&c.node, c.action, c.mode)).increment(1);
        if c.error.is_some() {
            names.counter(&names.failure_key(&c.node, c.action)).increment(1);
        }
        let error = c.error.as_deref();
        let event = ActionEvent { node: &c.node, action: c.action, mode: c.mode, at: now, error };
        notify(&self.shared.observers, "action", |o| o.on_action(&c.target, &event));
    }

    /// Waits until an action finishes (at once if one already has, or if
    /// none runs). Cancel-safe: nothing is lost when the wait is dropped.
    pub async fn wait_completion(&mut self) {
        if !self.completions.is_empty() {
            return;
        }
        match self.running.join_next().await {
            Some(Ok(c)) => {
                self.announce(&c);
                self.completions.push_back(c);
            }
            // Only an aborted task (the engine is being dropped) ends so.
            Some(Err(e)) => tracing::error!(error = %e, "an action task ended without an outcome"),
            None => {}
        }
    }

    /// Takes in every action that has finished, without waiting (their
    /// outcomes are announced now and folded by the next
    /// [`Engine::fold_completions`]). Returns how many.
    pub fn collect_finished(&mut self) -> usize {
        let mut n = 0;
        while let Some(r) = self.running.try_join_next() {
            match r {
                Ok(c) => {
                    self.announce(&c);
                    self.completions.push_back(c);
                    n += 1;
                }
                Err(e) => tracing::error!(error = %e, "an action task ended without an outcome"),
            }
        }
        n
    }

    /// Folds every finished action into its node's record (CAS); returns the
    /// nodes to evaluate again (a fresh observation decides their next step)
    /// and what was done. A fold interrupted by cancellation is redone by
    /// the next call.
    pub async fn fold_completions(&mut self) -> (Vec<String>, PassReport) {
        let mut report = PassReport::default();
        let mut nodes = Vec::new();
        while let Some(c) = self.completions.front().cloned() {
            if let Some(node) = self.fold(&c, &mut report).await {
                nodes.push(node);
            }
            self.completions.pop_front();
        }
        self.finish_pass(&mut report);
        (nodes, report)
    }

    /// Folds one finished action; returns the node when it is to be decided
    /// again.
    pub(super) async fn fold(&mut self, c: &Completion<T>, report: &mut PassReport) -> Option<String> {
        let (now, mono) = (self.shared.clock.now(), self.shared.clock.monotonic());
        self.fold_at(c, report, now, mono).await
    }

    /// [`Self::fold`] at the wall and monotonic time given.
    async fn fold_at(
        &mut self,
        c: &Completion<T>,
        report: &mut PassReport,
        now: Timestamp,
        mono: Duration,
    ) -> Option<String> {
        report.actions.push(ActionRecord {
            node: c.node.clone(),
            action: c.action,
            mode: c.mode,
            failure: c.error.as_ref().map(ToString::to_string),
        });
        if !self.shared.observers.is_empty() {
            let event =
                FoldEvent { node: &c.node, action: c.action, error: c.error.as_deref(), at: now, monotonic: mono };
            notify(&self.shared.observers, "fold", |o| o.on_fold(&event));
        }
        let si = *self.state.index.get(c.node.as_str())?;
        let again = self.record_outcome(c, si, now, mono, report).await;
        let slot = &mut self.state.slots[si];
        slot.running = false;
        slot.running_soft = false;
        // Decide the next step from a fresh evaluation, not from the
        // observation taken before the action.
        slot.deadline = Some(slot.deadline.map_or(now, |d| d.min(now)));
        self.state.touch(si);
        again.then(|| c.node.clone())
    }

    /// Applies an action's outcome to the node's record and persists it;
    /// returns whether the node should be decided again (whenever the
    /// outcome was recorded, or was not this record's to record).
    pub(super) async fn record_outcome(
        &mut self,
        c: &Completion<T>,
        si: usize,
        now: Timestamp,
        mono: Duration,
        report: &mut PassReport,
    ) -> bool {
        let shared = &self.shared;
        let outcome = match c.error.as_deref() {
            None => machine::ActionOutcome::Succeeded,
            Some(ExecError::Unsupported { .. }) => machine::ActionOutcome::Unsupported,
            Some(ExecError::Unknown { .. } | ExecError::Timeout { .. }) => machine::ActionOutcome::Unknown,
            Some(_) => machine::ActionOutcome::Failed,
        };
        let written = Self::write_cas(shared, &mut self.state, si, now, report, |slot| {
            // Only fold the outcome into the record of the decision that asked
            // for it; otherwise decide again from the record as it now is.
            let ours = match c.action {
                Action::Uncordon => slot.record.cordoned && slot.record.phase == Phase::Healthy,
                _ => slot.record.last_action == Some(c.action) && slot.record.last_action_at == Some(c.started_at),
            };
            if !ours {
                return Plan::Keep(None);
            }
            let local = slot.local_now(now, mono);
            let applied = machine::apply_outcome(slot.record.clone(), c.action, outcome, &shared.policy, local);
            if applied.changed { Plan::Write(applied.record, Some(applied.transition)) } else { Plan::Keep(None) }
        })
        .await;
        let transition = match written {
            Written::Failed => return false,
            Written::Kept(_) => return true,
            Written::Saved(t) => t.flatten(),
        };
        let slot = &mut self.state.slots[si];
        slot.series.set_phase(&shared.names, &slot.name, slot.record.phase);
        let slot = &self.state.slots[si];
        if c.action == Action::Uncordon && c.error.is_some() && !slot.record.cordoned {
            tracing::warn!(
                node = %slot.name,
                failures = slot.record.uncordon_failures,
                "gave up uncordoning: the node stays cordoned until an operator uncordons it"
            );
        }
        if let Some(change) = transition {
            shared.transition(report, slot, &c.target, change, now, c.mode);
        }
        true
    }
}
