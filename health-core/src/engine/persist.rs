//! The one compare-and-swap write path: every change of a node's record
//! goes through [`Engine::write_cas`], and the record in memory changes only
//! after the store confirmed the write.

#[allow(clippy::wildcard_imports)]
use super::*;

/// What a write asks for the record in its slot.
pub(super) enum Plan<X> {
    /// The record stays as it is.
    Keep(X),
    /// Store this record (then it becomes the slot's record).
    Write(NodeRecord, X),
}

/// How a write ended.
pub(super) enum Written<X> {
    /// Nothing to write.
    Kept(X),
    /// The slot has the new record, and so has the store (unless the
    /// record is unremarkable and the store has none for the node).
    Saved(X),
    /// The store failed (recorded: the node is reloaded after a back-off).
    Failed,
}

impl<T: Target + Clone + 'static> Engine<T> {
    /// Writes what `plan` asks for slot `si` with compare-and-swap. On a
    /// conflict the record is reloaded (a deleted one starts afresh) and
    /// `plan` is asked again, up to `conflict_retries` times.
    pub(super) async fn write_cas<X>(
        shared: &Shared<T>,
        state: &mut State,
        si: usize,
        now: Timestamp,
        report: &mut PassReport,
        mut plan: impl FnMut(&mut Slot) -> Plan<X>,
    ) -> Written<X> {
        let mut attempts = 0;
        loop {
            let slot = &mut state.slots[si];
            let (record, x) = match plan(slot) {
                Plan::Keep(x) => return Written::Kept(x),
                Plan::Write(record, x) => (record, x),
            };
            // A node first seen healthy, with nothing stored, keeps its
            // record in memory only: a fresh start over 65,536 healthy nodes
            // writes nothing, and the store holds only nodes with a story.
            // Its first real change is a create (expected: absent).
            if slot.version.is_none() && record.is_unremarkable() {
                slot.record = record;
                state.touch(si);
                return Written::Saved(x);
            }
            match shared.store.save(&slot.name, &record, slot.version.as_ref()).await {
                Ok(v) => {
                    let slot = &mut state.slots[si];
                    slot.version = Some(v);
                    slot.record = record;
                    state.touch(si);
                    return Written::Saved(x);
                }
                Err(e) if e.is_conflict() && attempts < shared.config.conflict_retries => {
                    attempts += 1;
                    report.conflicts += 1;
                    match shared.store.load(&state.slots[si].name).await {
                        Ok(stored) => {
                            let slot = &mut state.slots[si];
                            match stored {
                                Some(s) => {
                                    slot.record = s.record;
                                    slot.version = Some(s.version);
                                }
                                None => {
                                    slot.record = NodeRecord::new(slot.record.class);
                                    slot.version = None;
                                }
                            }
                            clamp_future(&mut slot.record, now);
                            state.touch(si);
                        }
                        Err(error) => {
                            Self::store_failed(shared, state, si, "store_load", error, now, report);
                            return Written::Failed;
                        }
                    }
                }
                Err(error) => {
                    let reason = if error.is_conflict() { "store_conflict" } else { "store_save" };
                    Self::store_failed(shared, state, si, reason, error, now, report);
                    return Written::Failed;
                }
            }
        }
    }

    /// Records a store failure for a node: its in-memory record may now differ
    /// from the store, so it is reloaded before the next decision, which comes
    /// after a growing back-off (never a busy loop, never forgotten).
    pub(super) fn store_failed(
        shared: &Shared<T>,
        state: &mut State,
        si: usize,
        reason: &'static str,
        error: StoreError,
        now: Timestamp,
        report: &mut PassReport,
    ) {
        shared.count_error(reason);
        let slot = &mut state.slots[si];
        slot.needs_reload = true;
        slot.errors = slot.errors.saturating_add(1);
        slot.deadline = Some(now + shared.config.store_retry.delay(slot.errors));
        report.errors.push(NodeError { node: slot.name.to_string(), error });
        state.touch(si);
    }
}
