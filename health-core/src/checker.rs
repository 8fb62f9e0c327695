//! The [`HealthChecker`] trait, its forwarding impls and the closure checker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::CheckOutcome;

/// A checker could not decide (a probe errored, a command exited oddly).
///
/// The engine turns it into a failure with reason `CheckError` and the
/// message as detail.
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
#[async_trait]
pub trait HealthChecker<T: ?Sized + Sync>: Send + Sync {
    /// A stable name (a metric label), e.g. `NodeReady`.
    fn name(&self) -> &str;

    /// How long the checker must fail before remediation starts (zero: at once).
    fn threshold(&self) -> Duration;

    /// The synchronous fast path: `Some` for checkers that need no I/O.
    fn check_sync(&self, _target: &T) -> Option<CheckResult> {
        None
    }

    /// Checks the target. The engine bounds it with a per-check timeout.
    async fn check(&self, target: &T) -> CheckResult;
}

#[async_trait]
impl<T: ?Sized + Sync, C: HealthChecker<T> + ?Sized> HealthChecker<T> for Arc<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn threshold(&self) -> Duration {
        (**self).threshold()
    }
    fn check_sync(&self, target: &T) -> Option<CheckResult> {
        (**self).check_sync(target)
    }
    async fn check(&self, target: &T) -> CheckResult {
        (**self).check(target).await
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
    fn check_sync(&self, target: &T) -> Option<CheckResult> {
        (**self).check_sync(target)
    }
    async fn check(&self, target: &T) -> CheckResult {
        (**self).check(target).await
    }
}

/// A synchronous checker made from a closure `Fn(&T) -> CheckOutcome`.
///
/// ```
/// use std::time::Duration;
/// use health_core::{CheckOutcome, FnChecker, HealthChecker};
///
/// struct Disk { used_pct: u8 }
/// let full = FnChecker::new("DiskFull", Duration::from_secs(300), |d: &Disk| {
///     if d.used_pct >= 95 { CheckOutcome::fail("DiskFull") } else { CheckOutcome::Pass }
/// });
/// assert_eq!(full.name(), "DiskFull");
/// assert!(full.check_sync(&Disk { used_pct: 99 }).unwrap().unwrap().is_fail());
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
    fn check_sync(&self, target: &T) -> Option<CheckResult> {
        Some(Ok((self.f)(target)))
    }
    async fn check(&self, target: &T) -> CheckResult {
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
        assert_eq!(boxed.check("").await.unwrap(), CheckOutcome::fail("Empty"));
        assert_eq!(arc.check_sync("x").unwrap().unwrap(), CheckOutcome::Pass);
    }

    #[test]
    fn check_error_keeps_its_source() {
        let e = CheckError::with_source("probe failed", std::io::Error::other("refused"));
        assert_eq!(e.to_string(), "probe failed");
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()).as_deref(), Some("refused"));
    }
}
