//! The built-in health checkers of node-health, as [`HealthChecker`]
//! implementations any engine can run.
//!
//! | checker | feature | fails when | default threshold |
//! |---|---|---|---|
//! | [`NodeReadyChecker`] | `kube` | Ready is False, Unknown or missing | 5m |
//! | [`ConditionChecker`] (`DiskPressure`, `MemoryPressure`, `PIDPressure`, or any condition) | `kube` | the condition holds a bad status (for long enough) | 30m / 10m / 10m |
//! | [`GpuChecker`] | `kube` | allocatable `nvidia.com/gpu` differs from the `nvidia.com/gpu.count` label | 10m |
//! | [`CiliumChecker`] | `kube` | NetworkUnavailable=True with a Cilium reason, or the agent-not-ready taint | 10m |
//! | [`KubeletLeaseChecker`] | `kube` | the kubelet lease was not renewed recently | 5m |
//! | [`HttpProbe`] | `http` | a GET of a templated URL is not 2xx | 5m |
//! | `GrpcHealthProbe` | `grpc` | `grpc.health.v1` of a templated endpoint is not SERVING | 5m |
//! | [`CommandChecker`] | `command` | a program exits 1 (other exits are errors) | 5m |
//! | [`FileSentinel`] | `file` | a file exists | 0 |
//!
//! Failure reasons are short CamelCase words fit for a bounded metrics label
//! (`NodeNotReady`, `GPUCountMismatch`, `HTTPStatus5xx`...); the detail that
//! explains them goes to logs. Kubernetes checkers need no client: they read
//! a [`NodeView`] (what a checker, a gate or an executor needs of a Node, a
//! few hundred bytes instead of a 15-30 KB object; a full k8s-openapi `Node`
//! works too and is reduced on read) and a lease observation the agent
//! fetches, so they run through the engine's synchronous fast path. A
//! controller caching many nodes builds views with a shared [`StringPool`].
//!
//! # Runtime needs and panics
//!
//! Node checkers are synchronous and need no runtime. [`HttpProbe`] and
//! [`CommandChecker`] need a Tokio runtime (with timers; `CommandChecker`
//! also the `process` driver, on by default in a multi-feature Tokio). No
//! checker panics on any Node object, quantity or label (fuzzed); bad
//! configuration is a [`ConfigError`] naming the entry and the field.
//!
//! # Features
//!
//! * `kube`: Node checkers, [`NodeView`], [`node_facts`] and [`classify`] (k8s-openapi only).
//! * `http`: [`HttpProbe`] (HTTP and HTTPS with reqwest on rustls; ring is
//!   handed to the probe's client, never installed as the process's
//!   provider; a CA file, expected statuses and a body match).
//! * `command`: [`CommandChecker`] (tokio process).
//! * `file`: [`FileSentinel`].
//!
//! All are on by default. [`CheckersConfig`] builds a checker set from
//! configuration (TOML, YAML or env through serde) with errors that name the
//! entry and the field.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "kube")] {
//! use health_checks::{GpuChecker, NodeReadyChecker};
//! use health_core::CheckOutcome;
//! use k8s_openapi::api::core::v1::Node;
//!
//! let node: Node = serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.count": "8"}},
//!     "status": {
//!         "allocatable": {"nvidia.com/gpu": "7"},
//!         "conditions": [{"type": "Ready", "status": "True"}]
//!     }
//! })).unwrap();
//! assert_eq!(NodeReadyChecker::new().evaluate(&node), CheckOutcome::Pass);
//! assert_eq!(GpuChecker::evaluate(&node).reason(), Some("GPUCountMismatch"));
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "command")]
mod command;
mod config;
#[cfg(feature = "file")]
mod file;
#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "kube")]
mod node;
pub mod quantity;
#[cfg(feature = "kube")]
mod view;

#[cfg(feature = "command")]
pub use command::{CommandChecker, CommandConfig};
pub use config::{CheckerEntry, CheckerKind, CheckersConfig};
#[cfg(feature = "file")]
pub use file::FileSentinel;
#[cfg(feature = "grpc")]
pub use grpc::{GrpcHealthProbe, GrpcProbeConfig};
#[cfg(feature = "http")]
pub use http::{
    HttpProbe, HttpProbeConfig, MAX_BODY, PLACEHOLDERS, TemplateError, tls_client_builder, validate_template,
};
#[cfg(feature = "kube")]
pub use node::{
    AUTOSCALER_TAINT, CILIUM_TAINT, CiliumChecker, ConditionChecker, ConditionRule, GPU_COUNT_LABEL, GPU_RESOURCE,
    GpuChecker, KubeletLeaseChecker, LeaseObservation, MissingCondition, NodeReadyChecker, NodeSource,
    OPT_OUT_ANNOTATION, POOL_LABEL, SHUTDOWN_TAINT, classify, node_facts, timestamp,
};
#[cfg(feature = "kube")]
pub use view::{ConditionView, MAX_CONDITION_MESSAGE, NodeView, StringPool, shorten};

pub use health_core::HealthChecker;

/// A checker set cannot be built from its configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field of an entry is missing, misplaced or out of range.
    #[error("{entry}: {field}: {message}")]
    Field {
        /// The entry, e.g. `checkers[2] (http)`.
        entry: String,
        /// The field.
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A checker kind needs a feature this build lacks.
    #[error("{entry}: kind {kind} needs the `{feature}` feature of health-checks")]
    FeatureMissing {
        /// The entry.
        entry: String,
        /// The kind.
        kind: &'static str,
        /// The feature.
        feature: &'static str,
    },
    /// Two checkers share a name.
    #[error("{entry}: the name {name:?} is already used by another checker")]
    DuplicateName {
        /// The entry.
        entry: String,
        /// The name.
        name: String,
    },
}

/// The identity of a node as probes and commands need it.
pub trait NodeIdentity: Send + Sync {
    /// The node's name.
    fn node_name(&self) -> &str;
    /// Its internal IP.
    fn internal_ip(&self) -> Option<&str>;
    /// Its external IP.
    fn external_ip(&self) -> Option<&str> {
        None
    }
    /// Its hostname.
    fn hostname(&self) -> Option<&str> {
        None
    }
}

#[cfg(feature = "kube")]
fn address<'a>(node: &'a k8s_openapi::api::core::v1::Node, kind: &str) -> Option<&'a str> {
    node.status.as_ref()?.addresses.as_ref()?.iter().find(|a| a.type_ == kind).map(|a| a.address.as_str())
}

#[cfg(feature = "kube")]
impl NodeIdentity for NodeView {
    fn node_name(&self) -> &str {
        self.name()
    }
    fn internal_ip(&self) -> Option<&str> {
        NodeView::internal_ip(self)
    }
    fn external_ip(&self) -> Option<&str> {
        NodeView::external_ip(self)
    }
    fn hostname(&self) -> Option<&str> {
        NodeView::hostname(self)
    }
}

#[cfg(feature = "kube")]
impl NodeIdentity for k8s_openapi::api::core::v1::Node {
    fn node_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
    fn internal_ip(&self) -> Option<&str> {
        address(self, "InternalIP")
    }
    fn external_ip(&self) -> Option<&str> {
        address(self, "ExternalIP")
    }
    fn hostname(&self) -> Option<&str> {
        address(self, "Hostname")
    }
}

impl<T: NodeIdentity + ?Sized> NodeIdentity for std::sync::Arc<T> {
    fn node_name(&self) -> &str {
        (**self).node_name()
    }
    fn internal_ip(&self) -> Option<&str> {
        (**self).internal_ip()
    }
    fn external_ip(&self) -> Option<&str> {
        (**self).external_ip()
    }
    fn hostname(&self) -> Option<&str> {
        (**self).hostname()
    }
}

/// What a target must offer for every configured checker kind of this build.
#[cfg(feature = "kube")]
pub trait CheckTarget: NodeIdentity + NodeSource + 'static {}
#[cfg(feature = "kube")]
impl<T: NodeIdentity + NodeSource + 'static> CheckTarget for T {}

/// What a target must offer for every configured checker kind of this build.
#[cfg(not(feature = "kube"))]
pub trait CheckTarget: NodeIdentity + 'static {}
#[cfg(not(feature = "kube"))]
impl<T: NodeIdentity + 'static> CheckTarget for T {}
