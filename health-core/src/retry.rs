//! Repeating a call after a transient failure: the one retry helper of the
//! workspace (the Civo client, the drain's evictions, the remote gRPC
//! executor and the etcd lock's renewals use it), on [`backon`].
//!
//! * Delays grow exponentially from [`Backoff::initial`] and never exceed
//!   [`Backoff::max`] (the schedule of the engine's failure back-off,
//!   [`Backoff::delay`]). With jitter (the default) each delay is drawn
//!   from its upper half, so clients that failed together do not retry
//!   together.
//! * At most [`RetryPolicy::retries`] repeats, and none that would start after
//!   [`RetryPolicy::total`] has passed since the first attempt.
//! * The caller says which failures may be repeated (a reboot request that
//!   may have reached the API is not), and a server's own wait (`Retry-After`,
//!   a Kubernetes `retryAfterSeconds`) is honoured through [`RetryAfter`]: it
//!   replaces a shorter delay, and a wait longer than the maximum delay ends
//!   the retries (the caller's own back-off takes over rather than a client
//!   hammering a server that asked for quiet).
//!
//! Sleeps use `tokio::time`, so paused-clock tests run instantly.
//!
//! ```
//! use std::time::Duration;
//! use health_core::retry::{RetryAfter, RetryPolicy, retry};
//!
//! #[derive(Debug)]
//! struct Busy;
//! impl std::fmt::Display for Busy {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("busy") }
//! }
//! impl RetryAfter for Busy {}
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2), 5);
//! let answer = retry(&policy, "ask the API", |attempt| async move {
//!     if attempt < 2 { Err(Busy) } else { Ok(attempt) }
//! }, |_| true).await;
//! assert_eq!(answer.unwrap(), 2, "the third attempt (two repeats) answered");
//! # }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::policy::Backoff;

/// How a failed call is repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The delays: `initial` doubled per repeat up to `max`, the schedule
    /// of the engine's failure back-off. No delay is longer than `max`, and
    /// a server asking for a longer wait ends the retries.
    pub delays: Backoff,
    /// At most this many repeats (0: the call is made once).
    pub retries: u32,
    /// No repeat starts later than this after the first attempt.
    pub total: Option<Duration>,
    /// Each delay is drawn from its upper half (on by default).
    pub jitter: bool,
    /// Repeats are expected (an eviction refused by a disruption budget):
    /// logged at INFO rather than WARN.
    pub routine: bool,
}

impl RetryPolicy {
    /// Delays from `initial` doubling up to `max_delay`, at most `retries`
    /// repeats, with jitter and no total limit.
    #[must_use]
    pub const fn new(initial: Duration, max_delay: Duration, retries: u32) -> Self {
        RetryPolicy { delays: Backoff { initial, max: max_delay }, retries, total: None, jitter: true, routine: false }
    }

    /// No repeat starts later than `total` after the first attempt.
    #[must_use]
    pub const fn with_total(mut self, total: Duration) -> Self {
        self.total = Some(total);
        self
    }

    /// Repeats are expected: logged at INFO, not WARN.
    #[must_use]
    pub const fn as_routine(mut self) -> Self {
        self.routine = true;
        self
    }

    /// Exact delays (for tests and for callers that spread load otherwise).
    #[must_use]
    pub const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The longest the repeats can wait in all (jitter only shortens
    /// delays; a server's own wait is not counted): the sum of the
    /// schedule's delays, at most `total`.
    #[must_use]
    pub fn longest_wait(&self) -> Duration {
        let mut sum = Duration::ZERO;
        for n in 1..=self.retries {
            let d = self.delays.delay(n);
            if d == self.delays.max {
                // Every further repeat waits the maximum.
                sum = sum.saturating_add(d.saturating_mul(self.retries - n + 1));
                break;
            }
            sum = sum.saturating_add(d);
        }
        self.total.map_or(sum, |t| sum.min(t))
    }

    fn builder(&self) -> ExponentialBuilder {
        // backon's jitter adds up to the delay itself: start from half the
        // delay so a jittered delay lies in [d/2, d).
        let Backoff { initial, max } = self.delays;
        let (min, max) = if self.jitter { (initial / 2, max / 2) } else { (initial, max) };
        let b = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_max_times(usize::try_from(self.retries).unwrap_or(usize::MAX));
        if self.jitter { b.with_jitter() } else { b }
    }
}

/// A wait the server asked for with its failure (`Retry-After`,
/// `retryAfterSeconds`); none by default.
pub trait RetryAfter {
    /// How long the server asked the client to wait before repeating.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Calls `op` (with the attempt number, 0 first) until it succeeds, fails
/// in a way `may_repeat` refuses, or `policy` allows no further repeat;
/// returns the last result. Each repeat is logged (at WARN, or INFO when
/// [`RetryPolicy::routine`]) with `what`, the attempt, the delay and the
/// error.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut op: F,
    mut may_repeat: impl FnMut(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display + RetryAfter,
{
    let attempts = AtomicU32::new(0);
    let started = tokio::time::Instant::now();
    let (max_delay, total, routine) = (policy.delays.max, policy.total, policy.routine);
    let call = || op(attempts.fetch_add(1, Ordering::Relaxed));
    call.retry(policy.builder())
        .sleep(tokio::time::sleep)
        .when(|e| may_repeat(e))
        .adjust(|e, delay| {
            let delay = delay?;
            let delay = match e.retry_after() {
                Some(asked) if asked > max_delay => {
                    tracing::warn!(what, asked = ?asked, max_delay = ?max_delay, error = %e,
                        "the server asked for a longer wait than the maximum delay; not repeating");
                    return None;
                }
                Some(asked) => asked.max(delay),
                None => delay,
            }
            .min(max_delay);
            if total.is_some_and(|t| started.elapsed() + delay > t) {
                return None;
            }
            Some(delay)
        })
        .notify(|e, delay| {
            let attempt = attempts.load(Ordering::Relaxed);
            if routine {
                tracing::info!(what, attempt, delay = ?delay, error = %e, "call refused; repeating it after the delay");
            } else {
                tracing::warn!(what, attempt, delay = ?delay, error = %e, "call failed; repeating it after the delay");
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Busy(Option<Duration>),
        Fatal,
    }
    impl Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }
    impl RetryAfter for E {
        fn retry_after(&self) -> Option<Duration> {
            match self {
                E::Busy(d) => *d,
                E::Fatal => None,
            }
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// The gaps are the delays (tokio's timer rounds a deadline up to its
    /// next millisecond tick).
    fn assert_gaps(gaps: &[Duration], delays: &[Duration]) {
        assert_eq!(gaps.len(), delays.len(), "{gaps:?} for {delays:?}");
        for (g, d) in gaps.iter().zip(delays) {
            assert!(*g >= *d && *g <= *d + MS, "{gaps:?} for {delays:?}");
        }
    }

    /// Runs `retry` over `answers` (one per attempt; `Ok` past the end) and
    /// returns the result, the attempts made and the delays between them.
    async fn run(policy: RetryPolicy, answers: Vec<Result<u32, E>>) -> (Result<u32, E>, Vec<Duration>) {
        let answers = parking_lot::Mutex::new(answers.into_iter());
        let times = parking_lot::Mutex::new(Vec::new());
        let start = tokio::time::Instant::now();
        let r = retry(
            &policy,
            "test",
            |n| {
                times.lock().push(start.elapsed());
                let next = answers.lock().next().unwrap_or(Ok(n));
                async move { next }
            },
            |e| matches!(e, E::Busy(_)),
        )
        .await;
        let t = times.into_inner();
        (r, t.windows(2).map(|w| w[1] - w[0]).collect())
    }

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_maximum() {
        let b = RetryPolicy::new(100 * MS, 350 * MS, 10).without_jitter();
        let (r, gaps) = run(b, (0..5).map(|_| Err(E::Busy(None))).collect()).await;
        assert_eq!(r, Ok(5));
        assert_gaps(&gaps, &[100 * MS, 200 * MS, 350 * MS, 350 * MS, 350 * MS]);
    }

    #[test]
    fn the_longest_wait_sums_the_schedule() {
        let p = RetryPolicy::new(100 * MS, 350 * MS, 5);
        assert_eq!(p.longest_wait(), (100 + 200 + 350 + 350 + 350) * MS);
        assert_eq!(RetryPolicy::new(100 * MS, 350 * MS, 0).longest_wait(), Duration::ZERO);
        let endless = RetryPolicy::new(100 * MS, 350 * MS, u32::MAX);
        assert_eq!(endless.with_total(2000 * MS).longest_wait(), 2000 * MS, "at most the total");
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_delays_stay_within_half_and_all_of_each_delay() {
        let b = RetryPolicy::new(100 * MS, 400 * MS, 20);
        let (_, gaps) = run(b, (0..20).map(|_| Err(E::Busy(None))).collect()).await;
        assert_eq!(gaps.len(), 20);
        for (i, g) in gaps.iter().enumerate() {
            let nominal = b.delays.delay(u32::try_from(i).unwrap() + 1);
            assert!(*g >= nominal / 2 && *g <= nominal + MS, "repeat {}: {g:?} for {nominal:?}", i + 1);
        }
        assert!(gaps.iter().any(|g| *g != gaps[gaps.len() - 1]), "jitter varies: {gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_error_is_returned_when_the_repeats_run_out() {
        let b = RetryPolicy::new(10 * MS, 10 * MS, 2).without_jitter();
        let (r, gaps) = run(b, (0..5).map(|_| Err(E::Busy(None))).collect()).await;
        assert_eq!(r, Err(E::Busy(None)));
        assert_eq!(gaps.len(), 2, "one call and two repeats");
        let (r, gaps) = run(RetryPolicy::new(10 * MS, 10 * MS, 0), vec![Err(E::Busy(None))]).await;
        assert_eq!((r, gaps.len()), (Err(E::Busy(None)), 0), "retries 0: called once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_the_caller_refuses_is_not_repeated() {
        let b = RetryPolicy::new(10 * MS, 10 * MS, 5);
        let (r, gaps) = run(b, vec![Err(E::Busy(None)), Err(E::Fatal)]).await;
        assert_eq!(r, Err(E::Fatal));
        assert_eq!(gaps.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_wait_replaces_a_shorter_delay_and_a_longer_one_ends_the_retries() {
        let b = RetryPolicy::new(100 * MS, 5000 * MS, 5).without_jitter();
        let (r, gaps) = run(b, vec![Err(E::Busy(Some(2000 * MS))), Err(E::Busy(Some(10 * MS)))]).await;
        assert_eq!(r, Ok(2));
        // Retry-After 2s, then the back-off's own 200ms.
        assert_gaps(&gaps, &[2000 * MS, 200 * MS]);
        let (r, gaps) = run(b, vec![Err(E::Busy(Some(60_000 * MS)))]).await;
        assert_eq!(r, Err(E::Busy(Some(60_000 * MS))), "asked for a minute: beyond the 5s maximum");
        assert!(gaps.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn no_repeat_starts_after_the_total() {
        let b = RetryPolicy::new(100 * MS, 1000 * MS, 50).without_jitter().with_total(1000 * MS);
        let (r, gaps) = run(b, (0..50).map(|_| Err(E::Busy(None))).collect()).await;
        assert!(r.is_err());
        // A fourth repeat would start at 1.5s.
        assert_gaps(&gaps, &[100 * MS, 200 * MS, 400 * MS]);
    }
}
