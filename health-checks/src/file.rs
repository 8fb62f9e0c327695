//! File sentinels: fail while a file exists (e.g. `/var/run/reboot-required`).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{CheckContext, CheckError, CheckOutcome, CheckResult, HealthChecker};

/// Fails while `path` exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSentinel {
    name: String,
    path: PathBuf,
    threshold: Duration,
    reason: String,
}

impl FileSentinel {
    /// A sentinel named `name` on `path` (threshold 0, reason `SentinelPresent`).
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        FileSentinel {
            name: name.into(),
            path: path.into(),
            threshold: Duration::ZERO,
            reason: "SentinelPresent".into(),
        }
    }

    /// The usual reboot-required sentinel of Debian and Ubuntu hosts.
    #[must_use]
    pub fn reboot_required() -> Self {
        FileSentinel::new("RebootRequired", "/var/run/reboot-required").with_reason("RebootRequired")
    }

    /// With another failure reason.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// With another threshold.
    #[must_use]
    pub fn with_threshold(mut self, threshold: Duration) -> Self {
        self.threshold = threshold;
        self
    }

    /// Looks at the file.
    pub async fn look(&self) -> CheckResult {
        match tokio::fs::metadata(&self.path).await {
            Ok(_) => Ok(CheckOutcome::fail_with(self.reason.clone(), format!("{} exists", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CheckOutcome::Pass),
            Err(e) => Err(CheckError::new(format!("cannot look at {}: {e}", self.path.display()))),
        }
    }
}

#[async_trait]
impl<T: ?Sized + Sync> HealthChecker<T> for FileSentinel {
    fn name(&self) -> &str {
        &self.name
    }
    fn threshold(&self) -> Duration {
        self.threshold
    }
    async fn check(&self, _target: &T, _ctx: &CheckContext) -> CheckResult {
        self.look().await
    }
}
