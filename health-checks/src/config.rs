//! Building checkers from configuration.
//!
//! ```toml
//! [[checkers]]
//! kind = "node-ready"
//! threshold = "3m"
//!
//! [[checkers]]
//! kind = "condition"
//! name = "KernelDeadlock"
//! condition_type = "KernelDeadlock"
//! bad_statuses = ["True"]
//! for_at_least = "2m"
//!
//! [[checkers]]
//! kind = "http"
//! name = "Sidecar"
//! url = "https://{internal_ip}:8443/v0/healthz"
//! timeout = "3s"
//! ca_file = "/etc/sidecar/ca.pem"      # trusted besides the platform's roots
//! expect_status = [200, 204]           # default: any 2xx
//! body_contains = "\"ready\""          # optional
//! ```

use std::sync::Arc;
use std::time::Duration;

use health_core::HealthChecker;
use health_core::policy::duration_str;
use serde::Deserialize;

use crate::{CheckTarget, ConfigError};

/// The longest accepted duration setting.
const MAX_DAYS: u64 = 365;

/// The kind of a configured checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckerKind {
    /// [`crate::NodeReadyChecker`].
    NodeReady,
    /// DiskPressure condition.
    DiskPressure,
    /// MemoryPressure condition.
    MemoryPressure,
    /// PIDPressure condition.
    PidPressure,
    /// Any condition ([`crate::ConditionChecker`]).
    Condition,
    /// [`crate::GpuChecker`].
    Gpu,
    /// [`crate::CiliumChecker`].
    Cilium,
    /// [`crate::KubeletLeaseChecker`].
    KubeletLease,
    /// [`crate::HttpProbe`].
    Http,
    /// `grpc.health.v1` probe (`GrpcHealthProbe`, feature `grpc`).
    GrpcHealth,
    /// [`crate::CommandChecker`].
    Command,
    /// [`crate::FileSentinel`].
    File,
}

impl CheckerKind {
    /// The configuration name (`node-ready`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckerKind::NodeReady => "node-ready",
            CheckerKind::DiskPressure => "disk-pressure",
            CheckerKind::MemoryPressure => "memory-pressure",
            CheckerKind::PidPressure => "pid-pressure",
            CheckerKind::Condition => "condition",
            CheckerKind::Gpu => "gpu",
            CheckerKind::Cilium => "cilium",
            CheckerKind::KubeletLease => "kubelet-lease",
            CheckerKind::Http => "http",
            CheckerKind::GrpcHealth => "grpc-health",
            CheckerKind::Command => "command",
            CheckerKind::File => "file",
        }
    }

    /// Fields this kind accepts besides `kind`, `name`, `threshold`, `enabled` and `validation_only`.
    const fn fields(self) -> &'static [&'static str] {
        match self {
            CheckerKind::Condition => &["condition_type", "bad_statuses", "for_at_least", "missing", "reason"],
            CheckerKind::KubeletLease => &["stale_after"],
            CheckerKind::Http => {
                &["url", "connect_timeout", "timeout", "bearer_token_file", "ca_file", "expect_status", "body_contains"]
            }
            CheckerKind::GrpcHealth => &["url", "service", "connect_timeout", "timeout"],
            CheckerKind::Command => &["program", "args", "timeout", "max_output", "reason"],
            CheckerKind::File => &["path", "reason"],
            _ => &[],
        }
    }
}

/// What a missing condition means, in configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Healthy.
    Pass,
    /// Not applicable.
    Skip,
    /// Unhealthy.
    Fail,
}

/// One configured checker. Fields that do not apply to its kind are errors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerEntry {
    /// The kind.
    pub kind: Option<CheckerKind>,
    /// A name overriding the kind's default.
    pub name: Option<String>,
    /// A threshold overriding the kind's default.
    #[serde(default, deserialize_with = "duration_str::deserialize_some")]
    pub threshold: Option<Duration>,
    /// Whether the checker runs (default true).
    pub enabled: Option<bool>,
    /// A validation probe (default false): run only for a node being
    /// verified after a repair, reboot or replacement, and it must pass at
    /// the end of `verify_for` (see `health_core::Validation`).
    pub validation_only: Option<bool>,
    /// `condition`: the condition type.
    pub condition_type: Option<String>,
    /// `condition`: statuses that are unhealthy (default `["True"]`).
    pub bad_statuses: Option<Vec<String>>,
    /// `condition`: how long a bad status must hold.
    #[serde(default, deserialize_with = "duration_str::deserialize_some")]
    pub for_at_least: Option<Duration>,
    /// `condition`: what a missing condition means (default pass).
    pub missing: Option<Missing>,
    /// `condition`, `command`, `file`: the failure reason (CamelCase).
    pub reason: Option<String>,
    /// `kubelet-lease`: staleness limit (default 40s).
    #[serde(default, deserialize_with = "duration_str::deserialize_some")]
    pub stale_after: Option<Duration>,
    /// `http`, `grpc-health`: URL template.
    pub url: Option<String>,
    /// `grpc-health`: the service asked about (default `""`: the whole server).
    pub service: Option<String>,
    /// `http`: connect timeout (default 2s).
    #[serde(default, deserialize_with = "duration_str::deserialize_some")]
    pub connect_timeout: Option<Duration>,
    /// `http`, `command`: total timeout.
    #[serde(default, deserialize_with = "duration_str::deserialize_some")]
    pub timeout: Option<Duration>,
    /// `http`: a PEM file of CA certificates trusted besides the platform's (https).
    pub ca_file: Option<std::path::PathBuf>,
    /// `http`: the statuses that pass (default: any 2xx).
    pub expect_status: Option<Vec<u16>>,
    /// `http`: a text the body must contain.
    pub body_contains: Option<String>,
    /// `http`: bearer token file.
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// `command`: the program.
    pub program: Option<std::path::PathBuf>,
    /// `command`: its arguments.
    pub args: Option<Vec<String>>,
    /// `command`: output kept per stream, in bytes.
    pub max_output: Option<usize>,
    /// `file`: the sentinel path.
    pub path: Option<std::path::PathBuf>,
}

impl CheckerEntry {
    /// An entry of `kind` with every default.
    #[must_use]
    pub fn of(kind: CheckerKind) -> Self {
        CheckerEntry { kind: Some(kind), ..CheckerEntry::default() }
    }

    fn present(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |name, set: bool| {
            if set {
                v.push(name);
            }
        };
        add("condition_type", self.condition_type.is_some());
        add("bad_statuses", self.bad_statuses.is_some());
        add("for_at_least", self.for_at_least.is_some());
        add("missing", self.missing.is_some());
        add("reason", self.reason.is_some());
        add("stale_after", self.stale_after.is_some());
        add("url", self.url.is_some());
        add("service", self.service.is_some());
        add("connect_timeout", self.connect_timeout.is_some());
        add("timeout", self.timeout.is_some());
        add("bearer_token_file", self.bearer_token_file.is_some());
        add("ca_file", self.ca_file.is_some());
        add("expect_status", self.expect_status.is_some());
        add("body_contains", self.body_contains.is_some());
        add("program", self.program.is_some());
        add("args", self.args.is_some());
        add("max_output", self.max_output.is_some());
        add("path", self.path.is_some());
        v
    }
}

/// The checkers to run.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckersConfig {
    /// The entries, in evaluation order.
    pub checkers: Vec<CheckerEntry>,
}

impl Default for CheckersConfig {
    /// The Civo agent's set: NodeReady, GPU, DiskPressure and Cilium.
    fn default() -> Self {
        CheckersConfig {
            checkers: [CheckerKind::NodeReady, CheckerKind::Gpu, CheckerKind::DiskPressure, CheckerKind::Cilium]
                .into_iter()
                .map(CheckerEntry::of)
                .collect(),
        }
    }
}

fn camel_case(s: &str) -> bool {
    s.len() <= 63 && s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl CheckersConfig {
    /// Builds every enabled checker, validating each entry.
    pub fn build<T: CheckTarget>(&self) -> Result<Vec<Arc<dyn HealthChecker<T>>>, ConfigError> {
        let mut out: Vec<Arc<dyn HealthChecker<T>>> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, e) in self.checkers.iter().enumerate() {
            let Some(kind) = e.kind else {
                return Err(ConfigError::Field {
                    entry: format!("checkers[{i}]"),
                    field: "kind",
                    message: "is required: one of node-ready, disk-pressure, memory-pressure, pid-pressure, condition, gpu, cilium, kubelet-lease, http, grpc-health, command, file".into(),
                });
            };
            let entry = format!("checkers[{i}] ({})", kind.as_str());
            let err =
                |field: &'static str, message: String| ConfigError::Field { entry: entry.clone(), field, message };
            for f in e.present() {
                if !kind.fields().contains(&f) {
                    let accepted = if kind.fields().is_empty() { "none".to_owned() } else { kind.fields().join(", ") };
                    return Err(err(
                        f,
                        format!("does not apply to {} checkers (their own fields: {accepted})", kind.as_str()),
                    ));
                }
            }
            let max = Duration::from_secs(MAX_DAYS * 86_400);
            for (field, d) in [
                ("threshold", e.threshold),
                ("for_at_least", e.for_at_least),
                ("stale_after", e.stale_after),
                ("timeout", e.timeout),
                ("connect_timeout", e.connect_timeout),
            ] {
                if d.is_some_and(|d| d > max) {
                    return Err(err(field, format!("must be at most {MAX_DAYS} days")));
                }
            }
            if let Some(r) = &e.reason
                && !camel_case(r)
            {
                return Err(err(
                    "reason",
                    format!("{r:?} must be a CamelCase word such as \"RebootRequired\" (it becomes a metrics label)"),
                ));
            }
            if let Some(n) = &e.name
                && (n.is_empty()
                    || n.len() > 63
                    || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                return Err(err("name", format!("{n:?} must be 1-63 letters, digits, '-' or '_'")));
            }
            if e.enabled == Some(false) {
                continue;
            }
            let mut checker = build_one::<T>(kind, e, &entry)?;
            if e.validation_only == Some(true) {
                checker = Arc::new(health_core::Validation(checker));
            }
            let name = checker.name().to_owned();
            if names.contains(&name) {
                return Err(ConfigError::DuplicateName { entry, name });
            }
            names.push(name);
            out.push(checker);
        }
        Ok(out)
    }
}

/// Puts a constructor's field error under this entry's name.
#[cfg(any(feature = "http", feature = "command"))]
fn in_entry(e: ConfigError, err: &dyn Fn(&'static str, String) -> ConfigError) -> ConfigError {
    match e {
        ConfigError::Field { field, message, .. } => err(field, message),
        other => other,
    }
}

#[allow(clippy::too_many_lines)]
fn build_one<T: CheckTarget>(
    kind: CheckerKind,
    e: &CheckerEntry,
    entry: &str,
) -> Result<Arc<dyn HealthChecker<T>>, ConfigError> {
    let err = |field: &'static str, message: String| ConfigError::Field { entry: entry.to_owned(), field, message };
    let missing_feature =
        |feature: &'static str| ConfigError::FeatureMissing { entry: entry.to_owned(), kind: kind.as_str(), feature };
    // Builds without some features use only some of these.
    let _ = (e, &err, &missing_feature);
    match kind {
        #[cfg(feature = "kube")]
        CheckerKind::NodeReady
        | CheckerKind::DiskPressure
        | CheckerKind::MemoryPressure
        | CheckerKind::PidPressure
        | CheckerKind::Condition
        | CheckerKind::Gpu
        | CheckerKind::Cilium
        | CheckerKind::KubeletLease => kube_checker::<T>(kind, e, &err),
        #[cfg(not(feature = "kube"))]
        CheckerKind::NodeReady
        | CheckerKind::DiskPressure
        | CheckerKind::MemoryPressure
        | CheckerKind::PidPressure
        | CheckerKind::Condition
        | CheckerKind::Gpu
        | CheckerKind::Cilium
        | CheckerKind::KubeletLease => Err(missing_feature("kube")),
        #[cfg(feature = "http")]
        CheckerKind::Http => {
            let url = e
                .url
                .clone()
                .ok_or_else(|| err("url", "is required, e.g. \"http://{internal_ip}:8080/healthz\"".into()))?;
            let mut c = crate::HttpProbeConfig::new(e.name.clone().unwrap_or_else(|| "HTTP".into()), url);
            c.threshold = e.threshold.unwrap_or(c.threshold);
            c.connect_timeout = e.connect_timeout.unwrap_or(c.connect_timeout);
            c.timeout = e.timeout.unwrap_or(c.timeout);
            c.bearer_token_file.clone_from(&e.bearer_token_file);
            c.ca_file.clone_from(&e.ca_file);
            c.expect_status = e.expect_status.clone().unwrap_or_default();
            c.body_contains.clone_from(&e.body_contains);
            let probe = crate::HttpProbe::new(c).map_err(|x| in_entry(x, &err))?;
            Ok(Arc::new(probe))
        }
        #[cfg(not(feature = "http"))]
        CheckerKind::Http => Err(missing_feature("http")),
        #[cfg(feature = "grpc")]
        CheckerKind::GrpcHealth => {
            let url =
                e.url.clone().ok_or_else(|| err("url", "is required, e.g. \"http://{internal_ip}:50051\"".into()))?;
            let mut c = crate::GrpcProbeConfig::new(e.name.clone().unwrap_or_else(|| "GRPCHealth".into()), url);
            c.threshold = e.threshold.unwrap_or(c.threshold);
            c.connect_timeout = e.connect_timeout.unwrap_or(c.connect_timeout);
            c.timeout = e.timeout.unwrap_or(c.timeout);
            c.service = e.service.clone().unwrap_or_default();
            let probe = crate::GrpcHealthProbe::new(c).map_err(|x| in_entry(x, &err))?;
            Ok(Arc::new(probe))
        }
        #[cfg(not(feature = "grpc"))]
        CheckerKind::GrpcHealth => Err(missing_feature("grpc")),
        #[cfg(feature = "command")]
        CheckerKind::Command => {
            let program =
                e.program.clone().ok_or_else(|| err("program", "is required: a path or a program on PATH".into()))?;
            let mut c = crate::CommandConfig::new(
                e.name.clone().unwrap_or_else(|| "Command".into()),
                program,
                e.args.clone().unwrap_or_default(),
            );
            c.threshold = e.threshold.unwrap_or(c.threshold);
            c.timeout = e.timeout.unwrap_or(c.timeout);
            c.max_output = e.max_output.unwrap_or(c.max_output);
            if let Some(r) = &e.reason {
                c.reason.clone_from(r);
            }
            let checker = crate::CommandChecker::new(c).map_err(|x| in_entry(x, &err))?;
            Ok(Arc::new(checker))
        }
        #[cfg(not(feature = "command"))]
        CheckerKind::Command => Err(missing_feature("command")),
        #[cfg(feature = "file")]
        CheckerKind::File => {
            let path =
                e.path.clone().ok_or_else(|| err("path", "is required, e.g. \"/var/run/reboot-required\"".into()))?;
            let mut f = crate::FileSentinel::new(e.name.clone().unwrap_or_else(|| "FileSentinel".into()), path);
            if let Some(t) = e.threshold {
                f = f.with_threshold(t);
            }
            if let Some(r) = &e.reason {
                f = f.with_reason(r.clone());
            }
            Ok(Arc::new(f))
        }
        #[cfg(not(feature = "file"))]
        CheckerKind::File => Err(missing_feature("file")),
    }
}

#[cfg(feature = "kube")]
fn kube_checker<T: CheckTarget>(
    kind: CheckerKind,
    e: &CheckerEntry,
    err: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Arc<dyn HealthChecker<T>>, ConfigError> {
    use crate::node::*;
    let named = |default: &str| e.name.clone().unwrap_or_else(|| default.to_owned());
    let renamed = |c: ConditionChecker, default: &str| -> ConditionChecker { c.with_name(named(default)) };
    Ok(match kind {
        CheckerKind::NodeReady => {
            let mut c = NodeReadyChecker::new().with_name(named("NodeReady"));
            if let Some(t) = e.threshold {
                c = c.with_threshold(t);
            }
            Arc::new(c)
        }
        CheckerKind::DiskPressure | CheckerKind::MemoryPressure | CheckerKind::PidPressure => {
            let (c, default) = match kind {
                CheckerKind::DiskPressure => (ConditionChecker::disk_pressure(), "DiskPressure"),
                CheckerKind::MemoryPressure => (ConditionChecker::memory_pressure(), "MemoryPressure"),
                _ => (ConditionChecker::pid_pressure(), "PIDPressure"),
            };
            let mut c = renamed(c, default);
            if let Some(t) = e.threshold {
                c = c.with_threshold(t);
            }
            Arc::new(c)
        }
        CheckerKind::Condition => {
            let ct = e
                .condition_type
                .clone()
                .ok_or_else(|| err("condition_type", "is required, e.g. \"KernelDeadlock\"".into()))?;
            if ct.is_empty() || !ct.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(err(
                    "condition_type",
                    format!("{ct:?} must be a condition type such as \"KernelDeadlock\""),
                ));
            }
            let bad = e.bad_statuses.clone().unwrap_or_else(|| vec!["True".into()]);
            if bad.is_empty() || bad.iter().any(|s| !["True", "False", "Unknown"].contains(&s.as_str())) {
                return Err(err(
                    "bad_statuses",
                    format!("{bad:?}: expected a non-empty list of \"True\", \"False\", \"Unknown\""),
                ));
            }
            let rule = ConditionRule {
                condition_type: ct.clone(),
                bad_statuses: bad,
                for_at_least: e.for_at_least.unwrap_or(Duration::ZERO),
                missing: match e.missing.unwrap_or(Missing::Pass) {
                    Missing::Pass => MissingCondition::Pass,
                    Missing::Skip => MissingCondition::Skip,
                    Missing::Fail => MissingCondition::Fail,
                },
                reason: e.reason.clone().unwrap_or_else(|| ct.clone()),
            };
            Arc::new(ConditionChecker::new(named(&ct), e.threshold.unwrap_or(Duration::from_secs(600)), rule))
        }
        CheckerKind::Gpu => Arc::new(
            GpuChecker::new().with_name(named("GPU")).with_threshold(e.threshold.unwrap_or(Duration::from_secs(600))),
        ),
        CheckerKind::Cilium => Arc::new(
            CiliumChecker::new()
                .with_name(named("Cilium"))
                .with_threshold(e.threshold.unwrap_or(Duration::from_secs(600))),
        ),
        CheckerKind::KubeletLease => {
            let mut c = KubeletLeaseChecker::new().with_name(named("KubeletLease"));
            if let Some(t) = e.threshold {
                c = c.with_threshold(t);
            }
            if let Some(s) = e.stale_after {
                if s.is_zero() {
                    return Err(err("stale_after", "must be a positive duration such as \"40s\"".into()));
                }
                c = c.with_stale_after(s);
            }
            Arc::new(c)
        }
        other => return Err(err("kind", format!("{} is not a Kubernetes checker kind", other.as_str()))),
    })
}
