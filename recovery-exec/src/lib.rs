//! Executors for node-health: they perform the machine's actions.
//!
//! | executor | feature | actions |
//! |---|---|---|
//! | [`CivoExecutor`] | `civo` | Reboot (hard reboot of the instance behind the node), Replace (delete it from its pool) |
//! | [`KubeExecutor`] | `kube` | Drain (cordon, then evict through the Eviction API), Uncordon (only a cordon of ours) |
//! | [`Remediator`] | — | routes Drain/Uncordon to a cluster executor, Reboot and Replace to a cloud one |
//! | [`CommandExecutor`] | `command` | any configured action, as a program |
//! | [`PodRestarter`] | `kube` | soft repairs: deletes a node's pods matching a selector (a DaemonSet restarts them) |
//! | [`HttpExecutor`] | `http` | soft repairs: one HTTP request (a sidecar's mark-ready, a webhook) |
//! | [`Repairs`] | — | routes each soft repair to its executor, everything else to another |
//! | [`GrpcExecutor`] | `grpc` | any action, by the operator's `nodeagent.v1.RecoveryExecutor` server (idempotency key per action) |
//! | [`NoopExecutor`], [`DryRun`] | — | nothing (dry-run logs what it would do) |
//!
//! The Civo executor finds the instance by node name (case-insensitive
//! exact hostname match; none or several is an error naming the node),
//! retries only calls that are safe to repeat (listing, deleting) with
//! jittered back-off, never repeats a reboot that may have reached Civo,
//! maps Civo's JSON errors to [`CivoError`], and never lets the API key
//! reach Debug output, errors or logs.
//!
//! # Runtime needs and panics
//!
//! Every executor needs a Tokio runtime with timers (the Civo and
//! Kubernetes executors also its I/O driver, the command executor its
//! process driver). No executor installs a process-wide rustls crypto
//! provider: [`CivoExecutor::new`] hands ring to its own client (or pass
//! yours to `CivoExecutor::with_client`), and [`HttpExecutor`] takes the
//! caller's client. No executor panics on an API answer: errors become
//! [`health_core::ExecError`]s.
//!
//! # Example
//!
//! ```
//! use health_core::{Action, Executor};
//! use recovery_exec::DryRun;
//!
//! struct Vm(&'static str);
//! impl recovery_exec::ExecTarget for Vm {
//!     fn node_name(&self) -> &str { self.0 }
//!     fn pool_id(&self) -> Option<&str> { None }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! assert!(DryRun.execute(Action::Reboot, &Vm("vm-1")).await.is_ok());
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "civo")]
mod civo;
#[cfg(feature = "command")]
mod command;
#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "kube")]
mod kube;

use std::sync::Arc;

use async_trait::async_trait;
use health_core::{Action, ExecError, Executor, Repair};

#[cfg(feature = "civo")]
pub use civo::{ApiKey, CivoConfig, CivoError, CivoExecutor, install_crypto_provider, is_loopback_url};
#[cfg(feature = "command")]
pub use command::CommandExecutor;
#[cfg(feature = "grpc")]
pub use grpc::{DEFAULT_GRPC_BACKOFF, GrpcExecutor, GrpcExecutorConfig, wire_action};
#[cfg(feature = "http")]
pub use http::{HttpExecutor, UrlTemplateError};
#[cfg(feature = "kube")]
pub use kube::{CORDONED_ANNOTATION, DrainConfig, KubeExecError, KubeExecutor, PodRestarter};

/// The label holding a Civo node's pool id.
pub const POOL_LABEL: &str = "kubernetes.civo.com/civo-node-pool";

/// What an executor needs to know about its target.
pub trait ExecTarget: Send + Sync {
    /// The node name (the Civo instance hostname).
    fn node_name(&self) -> &str;
    /// The Civo pool id (from the node's pool label).
    fn pool_id(&self) -> Option<&str>;
    /// The node's internal IP address, when known (`{internal_ip}` of an
    /// HTTP repair's URL). Default: unknown.
    fn internal_ip(&self) -> Option<&str> {
        None
    }
}

#[cfg(feature = "kube")]
impl ExecTarget for k8s_openapi::api::core::v1::Node {
    fn node_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
    fn pool_id(&self) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(POOL_LABEL).map(String::as_str)
    }
}

impl<T: ExecTarget + ?Sized> ExecTarget for Arc<T> {
    fn node_name(&self) -> &str {
        (**self).node_name()
    }
    fn pool_id(&self) -> Option<&str> {
        (**self).pool_id()
    }
    fn internal_ip(&self) -> Option<&str> {
        (**self).internal_ip()
    }
}

/// Does nothing and succeeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopExecutor;

#[async_trait]
impl<T: ?Sized + Sync> Executor<T> for NoopExecutor {
    async fn execute(&self, _action: Action, _target: &T) -> Result<(), ExecError> {
        Ok(())
    }
}

/// Logs what it would do and succeeds without acting.
#[derive(Clone, Copy, Debug, Default)]
pub struct DryRun;

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for DryRun {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        tracing::info!(node = target.node_name(), %action, "dry run: would perform the action");
        Ok(())
    }
}

/// Routes actions: Drain and Uncordon to the cluster executor, Reboot and
/// Replace to the cloud executor.
///
/// A replacement is not drained here: the recovery machine drains first
/// (`Drain`, then `Replace` only once the drain succeeded), so a second
/// drain would only repeat the evictions. A driver of its own must do the
/// same.
pub struct Remediator<T: ?Sized> {
    cluster: Arc<dyn Executor<T>>,
    cloud: Arc<dyn Executor<T>>,
}

impl<T: ?Sized> std::fmt::Debug for Remediator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remediator").finish_non_exhaustive()
    }
}

impl<T: ?Sized + Sync> Remediator<T> {
    /// Combines a cluster executor (drain, uncordon) and a cloud executor (reboot, replace).
    pub fn new(cluster: Arc<dyn Executor<T>>, cloud: Arc<dyn Executor<T>>) -> Self {
        Remediator { cluster, cloud }
    }
}

#[async_trait]
impl<T: ?Sized + Sync> Executor<T> for Remediator<T> {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        match action {
            Action::Drain | Action::Uncordon => self.cluster.execute(action, target).await,
            Action::Reboot | Action::Replace => self.cloud.execute(action, target).await,
            Action::Repair(_) => Err(ExecError::Unsupported { action }),
        }
    }
}

/// Routes each soft repair to the executor configured for it and every
/// other action to `rest`. A repair nobody performs is unsupported (the
/// machine then moves on to the next rung).
pub struct Repairs<T: ?Sized> {
    by_name: Vec<(Repair, Arc<dyn Executor<T>>)>,
    rest: Arc<dyn Executor<T>>,
}

impl<T: ?Sized> std::fmt::Debug for Repairs<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.by_name.iter().map(|(r, _)| r.as_str()).collect();
        f.debug_struct("Repairs").field("repairs", &names).finish_non_exhaustive()
    }
}

impl<T: ?Sized + Sync> Repairs<T> {
    /// Sends every action to `rest` until repairs are added.
    pub fn new(rest: Arc<dyn Executor<T>>) -> Self {
        Repairs { by_name: Vec::new(), rest }
    }

    /// Performs `repair` with `executor` (a later call for the same repair replaces it).
    #[must_use]
    pub fn with(mut self, repair: Repair, executor: Arc<dyn Executor<T>>) -> Self {
        self.by_name.retain(|(r, _)| *r != repair);
        self.by_name.push((repair, executor));
        self
    }
}

#[async_trait]
impl<T: ?Sized + Sync> Executor<T> for Repairs<T> {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        match action {
            Action::Repair(r) => match self.by_name.iter().find(|(name, _)| *name == r) {
                Some((_, e)) => e.execute(action, target).await,
                None => Err(ExecError::Unsupported { action }),
            },
            _ => self.rest.execute(action, target).await,
        }
    }
}
