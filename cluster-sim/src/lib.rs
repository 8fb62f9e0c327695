//! An in-process simulated Kubernetes cluster and Civo API, on loopback HTTP,
//! faithful enough that kube-rs clients (watchers included) and the real
//! `kubectl` work against it, with fault injection for tests, benches and
//! the `node-agent simulate` demo.
//!
//! # What it serves
//!
//! * **Kubernetes** (JSON only): discovery (`/version`, `/api`, `/api/v1`,
//!   `/apis`, the `coordination.k8s.io`, `events.k8s.io`, `policy` and `apps`
//!   groups); Nodes (list with `limit`/`continue` over a consistent snapshot,
//!   get, watch with bookmarks, `timeoutSeconds` and 410 Gone, label and field
//!   selectors, create, delete, merge / JSON / strategic merge patches, the
//!   `status` subresource, 409 on a stale `resourceVersion`); Pods (by
//!   namespace or across namespaces, `spec.nodeName` field selector, eviction
//!   refused with 429 by PodDisruptionBudgets); core and `events.k8s.io`
//!   Events; Leases; PodDisruptionBudgets; DaemonSets (for `kubectl drain`).
//!   Objects are validated through the k8s-openapi types, unknown fields are
//!   dropped with a warning (or rejected with `fieldValidation=Strict`), and
//!   errors are `Status` objects. kubectl gets server-side tables.
//! * **Civo**: the cluster, its instances, hard and soft reboots,
//!   pool instance deletion; `Authorization: bearer KEY` and `?region=`
//!   required; errors shaped `{code, reason, details}`.
//!
//! # Limits
//!
//! [`Limits`] (in [`ClusterConfig::limits`]) bound what one client can make
//! the simulator do, with the real API server's defaults: request bodies of
//! 3 MiB, stored objects of 1.5 MiB (etcd's limit; it also bounds the bytes
//! one JSON patch may copy), 10,000 JSON patch operations; past them the
//! answer is a `Status` with 413 `RequestEntityTooLarge` (422 `Invalid` for a
//! JSON patch that copies too much). Each API serves at most 1,024
//! connections at once (more wait in the listen backlog), and a client has
//! 10 s to send its request headers before its connection is closed.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`server`] | [`SimServer`]: binds both APIs on `127.0.0.1`, writes a kubeconfig |
//! | [`cluster`] | [`Cluster`]: the Rust API to drive scenarios (faults, reboots, replacements, Civo faults, call and event logs) |
//! | [`scenario`] | TOML scenario files |
//! | [`fixtures`] | realistic Node and Pod objects (10-20 KB per Node) |
//! | [`selector`], [`patch`], [`error`] | the API server's selectors, patches and `Status` errors |
//! | [`limits`] | [`Limits`]: request, object, JSON patch and connection bounds |
//!
//! Inside, each concern has its module: the object store and its watches
//! (`store`), the served resources and their schema (`resource`),
//! disruption budgets (`disruption`), server-side apply (`apply`), node
//! faults and host services (`faults`), rendering a node's objects from
//! them (`render`), the Civo account (`account`), the settings (`config`)
//! and the HTTP routing of both APIs (`kube_api`, `civo`, `server`). The
//! routing reaches the store and the account only through [`Cluster`]'s
//! methods.
//!
//! # Runtime needs and panics
//!
//! The simulator serves on a Tokio runtime with the I/O driver and timers
//! (a multi-thread runtime when a blocking client such as `kubectl` runs in
//! the same process's tests). Bad client input gets a `Status` error;
//! an invalid [`ClusterConfig`] is a [`ConfigError`].
//!
//! # Example
//!
//! ```
//! use cluster_sim::{ClusterConfig, Fault, Ports, SimServer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sim = SimServer::start(ClusterConfig { nodes: 3, gpu_nodes: 1, ..ClusterConfig::default() }, Ports::default())
//!     .await
//!     .unwrap();
//! let node = sim.cluster().node_names()[0].clone();
//! sim.cluster().inject(&node, Fault::NotReady).unwrap();
//! let ready = sim.cluster().node(&node).unwrap()["status"]["conditions"]
//!     .as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()["status"].clone();
//! assert_eq!(ready, "False");
//! println!("kubectl --server {} get nodes", sim.kube_url());
//! sim.shutdown().await;
//! # }
//! ```
//!
//! The `cluster-sim serve` binary does the same from a shell and prints one
//! JSON line with both URLs and the kubeconfig path.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod account;
mod apply;
mod civo;
pub mod cluster;
mod config;
mod disruption;
pub mod error;
mod faults;
pub mod fixtures;
mod kube_api;
pub mod limits;
pub mod patch;
mod render;
mod resource;
pub mod scenario;
pub mod selector;
pub mod server;
mod store;
mod table;

pub use cluster::{
    CivoCall, CivoFault, Cluster, ClusterConfig, ConfigError, Fault, Instance, KubeRequest, MAX_REQUEST_KINDS,
    RebootBehaviour, gpu_pool_id, pool_id,
};
pub use error::ApiError;
pub use limits::Limits;
pub use resource::Kind;
pub use scenario::{Scenario, ScenarioError};
pub use server::{Ports, SimError, SimServer};
