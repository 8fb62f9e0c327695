//! Engine tuning: [`EngineConfig`] and the build error [`EngineError`].

#[allow(clippy::wildcard_imports)]
use super::*;

/// Engine tuning (not policy): concurrency, timeouts, metric prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Asynchronous checks run at once. Default 64.
    pub check_concurrency: usize,
    /// Time limit of one asynchronous check. Default 10s.
    pub check_timeout: Duration,
    /// Time limit of a reboot, replace or uncordon. Default 2m.
    pub action_timeout: Duration,
    /// Time limit of a drain (evictions wait on disruption budgets). Default 15m.
    pub drain_timeout: Duration,
    /// Metric name prefix. Default `node_health` ([`crate::metrics::DEFAULT_PREFIX`]).
    pub metrics_prefix: String,
    /// Store conflicts tolerated per node per pass before giving up until the
    /// next pass. Default 3.
    pub conflict_retries: u32,
    /// When a node's state cannot be read or written, decide it again after
    /// this back-off (5s doubling up to 5m), never in a busy loop.
    pub store_retry: Backoff,
    /// Time limit of one state-store call (load, save, delete, list). Default 30s.
    pub store_timeout: Duration,
    /// How long a departed node (absent from the target set) keeps its
    /// record and series before they are deleted; a node that comes back
    /// within it keeps its history. Default 30m.
    pub forget_after: Duration,
    /// A checker that errs (its own failure, a timeout, a panic: not a
    /// finding about the node) counts as failing only after erring
    /// continuously this long; before, its check is skipped. Default 5m.
    pub error_grace: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            check_concurrency: 64,
            check_timeout: Duration::from_secs(10),
            action_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(15 * 60),
            metrics_prefix: crate::metrics::DEFAULT_PREFIX.to_owned(),
            conflict_retries: 3,
            store_retry: Backoff { initial: Duration::from_secs(5), max: Duration::from_secs(300) },
            store_timeout: Duration::from_secs(30),
            forget_after: Duration::from_secs(30 * 60),
            error_grace: Duration::from_secs(5 * 60),
        }
    }
}

impl EngineConfig {
    /// Sets the check concurrency.
    #[must_use]
    pub fn with_check_concurrency(mut self, n: usize) -> Self {
        self.check_concurrency = n;
        self
    }

    /// Sets the per-check timeout.
    #[must_use]
    pub fn with_check_timeout(mut self, d: Duration) -> Self {
        self.check_timeout = d;
        self
    }

    /// Sets the action and drain timeouts.
    #[must_use]
    pub fn with_action_timeouts(mut self, action: Duration, drain: Duration) -> Self {
        self.action_timeout = action;
        self.drain_timeout = drain;
        self
    }

    /// Sets the time limit of one state-store call.
    #[must_use]
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Sets how long a departed node keeps its record.
    #[must_use]
    pub fn with_forget_after(mut self, d: Duration) -> Self {
        self.forget_after = d;
        self
    }

    /// Sets how long a checker may err before it counts as failing.
    #[must_use]
    pub fn with_error_grace(mut self, d: Duration) -> Self {
        self.error_grace = d;
        self
    }

    /// Sets the metric prefix.
    #[must_use]
    pub fn with_metrics_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.metrics_prefix = prefix.into();
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field: &'static str, expected: &'static str| Err(EngineError::InvalidConfig { field, expected });
        if self.check_concurrency == 0 {
            return bad("check_concurrency", "a whole number of at least 1");
        }
        if self.store_retry.max < self.store_retry.initial {
            return bad("store_retry.max", "at least store_retry.initial");
        }
        for (field, d) in [
            ("check_timeout", self.check_timeout),
            ("action_timeout", self.action_timeout),
            ("drain_timeout", self.drain_timeout),
            ("store_retry.initial", self.store_retry.initial),
            ("store_timeout", self.store_timeout),
        ] {
            if d.is_zero() {
                return bad(field, "a positive duration such as \"30s\"");
            }
        }
        let p = self.metrics_prefix.as_bytes();
        let valid = !p.is_empty()
            && (p[0].is_ascii_alphabetic() || p[0] == b'_')
            && p.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !valid {
            return bad(
                "metrics_prefix",
                "a Prometheus name: letters, digits and underscores, not starting with a digit",
            );
        }
        Ok(())
    }

    pub(super) fn timeout_for(&self, action: Action) -> Duration {
        match action {
            Action::Drain => self.drain_timeout,
            _ => self.action_timeout,
        }
    }
}

/// The engine cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The policy is invalid.
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// An engine setting is invalid.
    #[error("invalid engine config: {field} must be {expected}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// The accepted form.
        expected: &'static str,
    },
    /// Two checkers share a name.
    #[error("two checkers are named {0:?}: checker names must be unique")]
    DuplicateChecker(String),
}
