//! The gRPC API of `node-agent`, package `nodeagent.v1`, compiled from
//! `proto/nodeagent/v1/*.proto` by protox (no system `protoc`).
//!
//! | service | who serves it | what |
//! |---|---|---|
//! | `HealthReporter` | the fleet control plane | heartbeats pushed by every agent |
//! | `AgentAdmin` | the agent (`127.0.0.1:9626`) | status, nodes, pause and resume |
//! | `RecoveryExecutor` | the operator's provisioning service | remote recovery actions, idempotent per key |
//!
//! Messages and enums are prost types; clients and servers are tonic 0.14
//! (`*_client` and `*_server` modules).
//!
//! # Example
//!
//! ```
//! use node_agent_proto::v1::{Action, ExecuteRequest};
//!
//! let req = ExecuteRequest {
//!     idempotency_key: "reboot-node-1-7f3a".into(),
//!     node: "node-1".into(),
//!     action: Action::Reboot as i32,
//!     ..Default::default()
//! };
//! assert_eq!(req.action(), Action::Reboot);
//! assert_eq!(Action::Reboot.as_str_name(), "ACTION_REBOOT");
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

/// `nodeagent.v1`: the first stable version of the API.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("nodeagent.v1");
}

/// The gRPC service names, as routed (`/<name>/<method>`).
pub mod names {
    /// `nodeagent.v1.HealthReporter`.
    pub const HEALTH_REPORTER: &str = "nodeagent.v1.HealthReporter";
    /// `nodeagent.v1.AgentAdmin`.
    pub const AGENT_ADMIN: &str = "nodeagent.v1.AgentAdmin";
    /// `nodeagent.v1.RecoveryExecutor`.
    pub const RECOVERY_EXECUTOR: &str = "nodeagent.v1.RecoveryExecutor";
}

pub mod transport;

pub use prost_types::{Duration, Timestamp};
pub use transport::{Bearer, ClientSettings, RequireBearer, Token, TransportError};
