//! Operator switches shared with other tasks.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Operator switches shared with other tasks (an admin API, a pause file
/// watcher). Changing one wakes the driver waiting in [`Controls::changed`]
/// (one driver per engine; a change made while it is busy is kept for its
/// next wait).
#[derive(Debug, Default)]
pub struct Controls {
    paused: AtomicBool,
    source_stale: AtomicBool,
    window_closed: AtomicBool,
    notify: Notify,
}

/// The switches as read at one instant: a pass decides on one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Switches {
    pub(super) paused: bool,
    pub(super) source_stale: bool,
    pub(super) window_closed: bool,
}

impl Controls {
    /// Every switch, read now.
    pub(super) fn read(&self) -> Switches {
        Switches { paused: self.paused(), source_stale: self.source_stale(), window_closed: self.window_closed() }
    }

    fn set(&self, flag: &AtomicBool, on: bool) {
        if flag.swap(on, Ordering::SeqCst) != on {
            // A stored permit: a driver busy in a pass still sees the change.
            self.notify.notify_one();
        }
    }

    /// Pauses or resumes all disruptive actions.
    pub fn set_paused(&self, on: bool) {
        self.set(&self.paused, on);
    }

    /// Whether remediation is paused.
    #[must_use]
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Marks the node source stale (unreachable API server) or fresh.
    pub fn set_source_stale(&self, on: bool) {
        self.set(&self.source_stale, on);
    }

    /// Whether the node source is stale.
    #[must_use]
    pub fn source_stale(&self) -> bool {
        self.source_stale.load(Ordering::SeqCst)
    }

    /// Closes or opens the maintenance window for disruptive actions.
    pub fn set_window_closed(&self, on: bool) {
        self.set(&self.window_closed, on);
    }

    /// Whether the maintenance window is closed.
    #[must_use]
    pub fn window_closed(&self) -> bool {
        self.window_closed.load(Ordering::SeqCst)
    }

    /// Resolves when a switch changes (for drivers sleeping until a deadline).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}
