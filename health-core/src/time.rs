//! Wall-clock instants and the clocks that produce them.
//!
//! The decision core never reads a clock: every function takes `now` as a
//! [`Timestamp`]. Drivers read one of the [`Clock`]s below and convert deadlines
//! back into tokio instants to sleep on.

use std::fmt;
use std::num::NonZeroU64;
use std::ops::{Add, Sub};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A wall-clock instant, in whole milliseconds since the Unix epoch.
///
/// Persisted records use it so that state survives a restart of the process
/// (a monotonic instant would not). Arithmetic saturates instead of panicking.
///
/// It is written as RFC 3339 UTC with milliseconds
/// (`"2026-12-02T19:30:00.123Z"`), so an operator reading a record with
/// `kubectl`, `etcdctl` or `cat` sees a time; it is read from that form or
/// from a number of milliseconds (what earlier versions wrote). Instants
/// past the year 9999 are written as a number.
///
/// The latest instant is [`Timestamp::MAX`] (`u64::MAX - 1` milliseconds):
/// the representation keeps one value free so that `Option<Timestamp>` is
/// as small as a `Timestamp` (a record holds five of them).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(NonZeroU64);

impl Default for Timestamp {
    /// The Unix epoch.
    fn default() -> Self {
        Timestamp::EPOCH
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp").field(&self.as_millis()).finish()
    }
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const MAX_RFC3339_MILLIS: u64 = 253_402_300_799_999;

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.as_millis() > MAX_RFC3339_MILLIS {
            return s.serialize_u64(self.as_millis());
        }
        s.collect_str(&humantime::format_rfc3339_millis(self.to_system_time()))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an RFC 3339 UTC time such as \"2026-12-02T19:30:00.123Z\" or milliseconds since the Unix epoch",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp::from_millis(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                u64::try_from(v)
                    .map(Timestamp::from_millis)
                    .map_err(|_| E::custom(format!("a time before 1970 ({v} ms)")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                humantime::parse_rfc3339(v).map(Timestamp::from_system_time).map_err(|e| {
                    E::custom(format!(
                        "invalid time {v:?} ({e}): expected RFC 3339 UTC such as \"2026-12-02T19:30:00.123Z\""
                    ))
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp::from_millis(0);

    /// The latest representable instant, `u64::MAX - 1` milliseconds after
    /// the epoch; later instants saturate to it.
    pub const MAX: Timestamp = Timestamp::from_millis(u64::MAX - 1);

    /// A timestamp `millis` milliseconds after the Unix epoch (at most
    /// [`Timestamp::MAX`]).
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        // Stored plus one, so zero stays free for `Option`'s niche.
        match NonZeroU64::new(millis.saturating_add(1)) {
            Some(v) => Timestamp(v),
            None => Timestamp(NonZeroU64::MAX),
        }
    }

    /// A timestamp `secs` seconds after the Unix epoch.
    #[must_use]
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp::from_millis(secs.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0.get() - 1
    }

    /// Converts a [`SystemTime`]; instants before the epoch map to the epoch.
    #[must_use]
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0);
        Timestamp::from_millis(ms)
    }

    /// The same instant as a [`SystemTime`].
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.as_millis())
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.as_millis().saturating_sub(earlier.as_millis()))
    }
}

/// `d` in whole milliseconds, saturating.
fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp::from_millis(self.as_millis().saturating_add(duration_millis(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp::from_millis(self.as_millis().saturating_sub(duration_millis(rhs)))
    }
}

/// The first instant RFC 3339 cannot write (year 10000).
const RFC3339_END_MS: u64 = 253_402_300_800_000;

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.as_millis() < RFC3339_END_MS {
            humantime::format_rfc3339_millis(self.to_system_time()).fmt(f)
        } else {
            write!(f, "{}ms after the epoch", self.as_millis())
        }
    }
}

/// A source of the current time for drivers (never for the decision core).
pub trait Clock: Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;

    /// A monotonic reading (any origin) that advances at the rate of
    /// [`Clock::now`] but never jumps when the wall clock is stepped. The
    /// engine measures the waits of a node under remediation on it.
    ///
    /// The default follows [`Clock::now`] (no protection against steps):
    /// right for simulated clocks that are never stepped.
    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.now().as_millis())
    }

    /// The tokio instant at which `deadline` falls, for `tokio::time::sleep_until`.
    ///
    /// The default maps through the distance from [`Clock::now`], which is
    /// right for any clock that advances with tokio's clock.
    fn instant_at(&self, deadline: Timestamp) -> tokio::time::Instant {
        let now = self.now();
        let base = tokio::time::Instant::now();
        if deadline >= now {
            base + deadline.saturating_since(now)
        } else {
            base.checked_sub(now.saturating_since(deadline)).unwrap_or(base)
        }
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
    fn monotonic(&self) -> Duration {
        (**self).monotonic()
    }
    fn instant_at(&self, deadline: Timestamp) -> tokio::time::Instant {
        (**self).instant_at(deadline)
    }
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    fn monotonic(&self) -> Duration {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// A wall clock that advances with tokio's clock, so paused-time tests
/// (`#[tokio::test(start_paused = true)]`) control it with `tokio::time::advance`.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin_wall: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now and advancing with `tokio::time::Instant`.
    #[must_use]
    pub fn starting_at(start: Timestamp) -> Self {
        TokioClock { origin_wall: start, origin: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.origin_wall + self.origin.elapsed()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn instant_at(&self, deadline: Timestamp) -> tokio::time::Instant {
        self.origin + deadline.saturating_since(self.origin_wall)
    }
}

/// A clock that only moves when told to: the simulation harness of the
/// examples and tests jumps it straight to the next deadline.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that reads `start` until advanced.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        ManualClock { now: Arc::new(AtomicU64::new(start.as_millis())) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = duration_millis(by);
        let _ = self.now.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some(v.saturating_add(ms)));
    }

    /// Sets the clock to `to` if that is later than the current reading.
    pub fn advance_to(&self, to: Timestamp) {
        self.now.fetch_max(to.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_readable_and_read_in_both_forms() {
        let t = Timestamp::from_millis(1_764_703_800_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2025-12-02T19:30:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(serde_json::from_str::<Timestamp>("1764703800123").unwrap(), t, "the number earlier versions wrote");
        let far = Timestamp::from_millis(u64::MAX);
        assert_eq!(serde_json::from_str::<Timestamp>(&serde_json::to_string(&far).unwrap()).unwrap(), far);
        let e = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err().to_string();
        assert!(e.contains("expected RFC 3339 UTC"), "{e}");
        assert!(serde_json::from_str::<Timestamp>("-5").is_err());
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_secs(10);
        assert_eq!(t - Duration::from_secs(20), Timestamp::EPOCH);
        assert_eq!(Timestamp::from_millis(u64::MAX) + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(Timestamp::MAX.as_millis(), u64::MAX - 1);
        assert_eq!(Timestamp::default(), Timestamp::EPOCH);
        assert_eq!(std::mem::size_of::<Option<Timestamp>>(), 8, "the niche keeps Option<Timestamp> at 8 bytes");
        assert_eq!(t.saturating_since(Timestamp::from_secs(20)), Duration::ZERO);
        assert_eq!(Timestamp::from_secs(20).saturating_since(t), Duration::from_secs(10));
    }

    #[test]
    fn display_is_rfc3339() {
        assert_eq!(Timestamp::from_millis(1_500).to_string(), "1970-01-01T00:00:01.500Z");
        assert_eq!(Timestamp::from_millis(u64::MAX).to_string(), "18446744073709551614ms after the epoch");
        assert_eq!(Timestamp::from_millis(253_402_300_799_999).to_string(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn manual_clock_only_moves_forward() {
        let c = ManualClock::new(Timestamp::from_secs(5));
        c.advance(Duration::from_secs(1));
        assert_eq!(c.now(), Timestamp::from_secs(6));
        c.advance_to(Timestamp::from_secs(3));
        assert_eq!(c.now(), Timestamp::from_secs(6));
        c.advance_to(Timestamp::from_secs(9));
        assert_eq!(c.now(), Timestamp::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::starting_at(Timestamp::from_secs(100));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(c.now(), Timestamp::from_secs(130));
        let at = c.instant_at(Timestamp::from_secs(160));
        assert_eq!(at - tokio::time::Instant::now(), Duration::from_secs(30));
    }
}
