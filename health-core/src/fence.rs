//! When a lease-backed claim (a lock slot, a leader lease) must be treated as
//! lost, judged on a monotonic clock and independently of the RPCs that
//! renew it.
//!
//! The server starts a lease's TTL when it *processes* a renewal, which is
//! after the client sent it. So the earliest instant another party can take
//! the claim over is `send time of the last successful renewal + TTL`, by the
//! server's clock. A holder that stops acting at `send time + TTL − margin`
//! by its own monotonic clock never overlaps with the next holder, whatever
//! the network does, as long as the two clocks' rates differ by less than
//! `margin / TTL`.

use std::time::Duration;

use tokio::time::Instant;

/// Tracks the validity of a lease-backed claim.
///
/// ```
/// use std::time::Duration;
/// use health_core::LeaseFence;
/// use tokio::time::Instant;
///
/// let mut fence = LeaseFence::new(Duration::from_secs(15));
/// let sent = Instant::now();
/// fence.renewed(sent);
/// assert!(fence.is_valid(sent + Duration::from_secs(10)));
/// // Lost before the server can expire the lease.
/// assert!(!fence.is_valid(sent + Duration::from_secs(15) - fence.margin()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    ttl: Duration,
    margin: Duration,
    renewed_sent: Option<Instant>,
}

impl LeaseFence {
    /// A fence for a lease of `ttl`, with the default margin (a quarter of
    /// the TTL, at least 500 ms, at most half the TTL). Not valid until the
    /// first [`LeaseFence::renewed`].
    #[must_use]
    pub fn new(ttl: Duration) -> Self {
        let margin = (ttl / 4).max(Duration::from_millis(500)).min(ttl / 2);
        LeaseFence { ttl, margin, renewed_sent: None }
    }

    /// The same fence with another margin (clamped below the TTL).
    #[must_use]
    pub fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = margin.min(self.ttl);
        self
    }

    /// The lease TTL.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long before the server-side expiry the claim counts as lost.
    #[must_use]
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Records a successful grant or renewal whose request was sent at
    /// `sent_at` (not when the answer arrived). An older instant than the
    /// one recorded is ignored.
    pub fn renewed(&mut self, sent_at: Instant) {
        if self.renewed_sent.is_none_or(|r| sent_at > r) {
            self.renewed_sent = Some(sent_at);
        }
    }

    /// The instant from which the claim counts as lost, or `None` before
    /// the first renewal.
    #[must_use]
    pub fn valid_until(&self) -> Option<Instant> {
        self.renewed_sent.map(|s| s + (self.ttl - self.margin))
    }

    /// Whether the claim is still held at `now`.
    #[must_use]
    pub fn is_valid(&self, now: Instant) -> bool {
        self.valid_until().is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_and_validity() {
        let t0 = Instant::now();
        let mut f = LeaseFence::new(Duration::from_secs(3));
        assert_eq!(f.margin(), Duration::from_millis(750));
        assert!(!f.is_valid(t0), "not valid before the first renewal");
        f.renewed(t0);
        assert!(f.is_valid(t0 + Duration::from_millis(2249)));
        assert!(!f.is_valid(t0 + Duration::from_millis(2250)));
        // An answer to an older request does not move the fence back.
        f.renewed(t0 + Duration::from_secs(1));
        f.renewed(t0);
        assert_eq!(f.valid_until(), Some(t0 + Duration::from_millis(3250)));
        assert_eq!(LeaseFence::new(Duration::from_secs(1)).margin(), Duration::from_millis(500));
        assert_eq!(LeaseFence::new(Duration::from_millis(600)).margin(), Duration::from_millis(300));
        assert_eq!(LeaseFence::new(Duration::from_secs(60)).margin(), Duration::from_secs(15));
        assert_eq!(
            LeaseFence::new(Duration::from_secs(2)).with_margin(Duration::from_secs(5)).margin(),
            Duration::from_secs(2)
        );
    }
}
