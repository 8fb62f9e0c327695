//! The [`HealthChecker`] trait, its forwarding impls and the closure checker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::CheckOutcome;
use crate::time::Timestamp;

/// What the engine tells a checker about the evaluation it runs in.
///
/// All time comes from the engine's one injected clock: a checker that
/// needs "now" (a heartbeat's age, a condition held for some time) reads
/// [`CheckContext::now`] instead of owning a clock, so a simulation or a
/// test moves every checker's time with the engine's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckContext {
    /// The wall-clock instant of the evaluation.
    pub now: Timestamp,
}

impl CheckContext {
    /// A context for an evaluation at `now`.
    #[must_use]
    pub const fn at(now: Timestamp) -> Self {
        CheckContext { now }
    }
}

/// A checker could not decide (a probe errored, a command exited oddly).
///
/// It is not a finding about the target: the engine skips the check while
/// the checker has erred for less than `EngineConfig::error_grace`, then
/// counts it as failing with reason `CheckError` and the message as detail
/// (a timeout is `CheckTimeout`, a panic `CheckPanicked`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CheckError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CheckError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        CheckError { message: message.into(), source: None }
    }

    /// An error with a message and an underlying cause.
    pub fn with_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        CheckError { message: message.into(), source: Some(Box::new(source)) }
    }
}

/// What a checker returns: an outcome, or an error meaning "could not tell".
pub type CheckResult = Result<CheckOutcome, CheckError>;

/// Decides whether a target (a Node, a VM, a device) is healthy in one respect.
///
/// Checkers are small and object-safe: the engine holds them as
/// `Arc<dyn HealthChecker<T>>`. Checkers that only inspect the target in
/// memory also implement [`HealthChecker::check_sync`], which the engine calls
/// directly without allocating a future or arming a timer.
///
/// An asynchronous checker (a probe over the network) implements
/// [`HealthChecker::check`] only:
///
/// ```
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use health_core::{CheckContext, CheckOutcome, CheckResult, HealthChecker, Timestamp};
///
/// struct Vm { last_heartbeat: Timestamp }
///
/// /// Fails when the VM's guest agent has not been heard from for a minute.
/// struct Heartbeat;
///
/// #[async_trait]
/// impl HealthChecker<Vm> for Heartbeat {
///     fn name(&self) -> &str { "Heartbeat" }
///     fn threshold(&self) -> Duration { Duration::from_secs(120) }
///     async fn check(&self, vm: &Vm, ctx: &CheckContext) -> CheckResult {
///         // A real probe awaits I/O here; the engine bounds it with its check timeout.
///         tokio::task::yield_now().await;
///         let age = ctx.now.saturating_since(vm.last_heartbeat);
///         if age > Duration::from_secs(60) {
///             return Ok(CheckOutcome::fail_with("HeartbeatLost", format!("silent for {}s", age.as_secs())));
///         }
///         Ok(CheckOutcome::Pass)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let vm = Vm { last_heartbeat: Timestamp::from_secs(1_000) };
/// let r = Heartbeat.check(&vm, &CheckContext::at(Timestamp::from_secs(1_090))).await;
/// assert!(r.unwrap().is_fail());
/// # }
/// ```
#[async_trait]
pub trait HealthChecker<T: ?Sized + Sync>: Send + Sync {
    /// A stable name (a metric label), e.g. `NodeReady`.
    fn name(&self) -> &str;

    /// How long the checker must fail before remediation starts (zero: at once).
    fn threshold(&self) -> Duration;

    /// The synchronous fast path: `Some` for checkers that need no I/O.
    fn check_sync(&self, _target: &T, _ctx: &CheckContext) -> Option<CheckResult> {
        None
    }

    /// Checks the target. The engine bounds it with a per-check timeout
    /// (and contains a panic: it counts as the checker's own error).
    async fn check(&self, target: &T, ctx: &CheckContext) -> CheckResult;

    /// A validation probe: run only for a node being verified after an
    /// action of ours (`Verifying`), and it must pass at the end of
    /// `verify_for` for the node to count as recovered; failing then is a
    /// relapse acted on at once (next rung). Default false: an ordinary
    /// checker. Wrap a checker in [`Validation`] to make it one.
    fn validation_only(&self) -> bool {
        false
    }
}

/// Makes a checker a validation probe (see [`HealthChecker::validation_only`]):
/// a load test, a GPU burn-in, a synthetic request that should run only
/// after a repair, not on every healthy node.
#[derive(Clone, Debug)]
pub struct Validation<C>(pub C);

#[async_trait]
impl<T: ?Sized + Sync, C: HealthChecker<T>> HealthChecker<T> for Validation<C> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn threshold(&self) -> Duration {
        self.0.threshold()
    }
    fn check_sync(&self, target: &T, ctx: &CheckContext) -> Option<CheckResult> {
        self.0.check_sync(target, ctx)
    }
    async fn check(&self, target: &T, ctx: &CheckContext) -> CheckResult {
        self.0.check(target, ctx).await
    }
    fn validation_only(&self) -> bool {
        true
    }
}

#[async_trait]
impl<T: ?Sized + Sync, C: HealthChecker<T> + ?Sized> HealthChecker<T> for Arc<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn threshold(&self) -> Duration {
        (**self).threshold()
    }
    fn check_sync(&self, target: &T, ctx: &CheckContext) -> Option<CheckResult> {
        (**self).check_sync(target, ctx)
    }
    async fn check(&self, target: &T, ctx: &CheckContext) -> CheckResult {
        (**self).check(target, ctx).await
    }
    fn validation_only(&self) -> bool {
        (**self).validation_only()
    }
}

#[async_trait]
impl<T: ?Sized + Sync, C: HealthChecker<T> + ?Sized> HealthChecker<T> for Box<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn threshold(&self) -> Duration {
        (**self).threshold()
    }
    fn check_sync(&self, target: &T, ctx: &CheckContext) -> Option<CheckResult> {
        (**self).check_sync(target, ctx)
    }
    async fn check(&self, target: &T, ctx: &CheckContext) -> CheckResult {
        (**self).check(target, ctx).await
    }
    fn validation_only(&self) -> bool {
        (**self).validation_only()
    }
}

/// A synchronous checker made from a closure `Fn(&T) -> CheckOutcome`.
///
/// ```
/// use std::time::Duration;
/// use health_core::{CheckContext, CheckOutcome, FnChecker, HealthChecker, Timestamp};
///
/// struct Disk { used_pct: u8 }
/// let full = FnChecker::new("DiskFull", Duration::from_secs(300), |d: &Disk| {
///     if d.used_pct >= 95 { CheckOutcome::fail("DiskFull") } else { CheckOutcome::Pass }
/// });
/// assert_eq!(full.name(), "DiskFull");
/// let ctx = CheckContext::at(Timestamp::from_secs(1_000));
/// assert!(full.check_sync(&Disk { used_pct: 99 }, &ctx).unwrap().unwrap().is_fail());
/// ```
pub struct FnChecker<F> {
    name: String,
    threshold: Duration,
    f: F,
}

impl<F> FnChecker<F> {
    /// A checker called `name` with `threshold`, deciding with `f`.
    pub fn new(name: impl Into<String>, threshold: Duration, f: F) -> Self {
        FnChecker { name: name.into(), threshold, f }
    }
}

impl<F> std::fmt::Debug for FnChecker<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnChecker")
            .field("name", &self.name)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<T, F> HealthChecker<T> for FnChecker<F>
where
    T: ?Sized + Sync,
    F: Fn(&T) -> CheckOutcome + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn threshold(&self) -> Duration {
        self.threshold
    }
    fn check_sync(&self, target: &T, _ctx: &CheckContext) -> Option<CheckResult> {
        Some(Ok((self.f)(target)))
    }
    async fn check(&self, target: &T, _ctx: &CheckContext) -> CheckResult {
        Ok((self.f)(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_object_safe(_: &dyn HealthChecker<str>) {}

    #[tokio::test]
    async fn closures_and_forwarding_impls_check() {
        let c = FnChecker::new("Empty", Duration::from_secs(1), |s: &str| {
            if s.is_empty() { CheckOutcome::fail("Empty") } else { CheckOutcome::Pass }
        });
        assert_object_safe(&c);
        let arc: Arc<dyn HealthChecker<str>> = Arc::new(c);
        let boxed: Box<dyn HealthChecker<str>> = Box::new(arc.clone());
        assert_eq!(boxed.name(), "Empty");
        assert_eq!(boxed.threshold(), Duration::from_secs(1));
        let ctx = CheckContext::at(Timestamp::from_secs(1));
        assert_eq!(boxed.check("", &ctx).await.unwrap(), CheckOutcome::fail("Empty"));
        assert_eq!(arc.check_sync("x", &ctx).unwrap().unwrap(), CheckOutcome::Pass);
    }

    #[test]
    fn check_error_keeps_its_source() {
        let e = CheckError::with_source("probe failed", std::io::Error::other("refused"));
        assert_eq!(e.to_string(), "probe failed");
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()).as_deref(), Some("refused"));
    }
}
