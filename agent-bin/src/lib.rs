//! `node-agent`: the reference agent of node-health, a drop-in successor of
//! Civo's Go node-agent.
//!
//! It watches the selected Kubernetes Nodes, runs the health checkers on
//! every relevant change, and drives the recovery machine of
//! [`health_core`]: hard reboots through the Civo API, then drain and
//! replacement, with persistent per-node state and safety gates (storm
//! guard, in-flight limit, start-up grace, opt-out, ...). It serves
//! Prometheus metrics and health endpoints on one port and publishes
//! Kubernetes Events.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`cli`] | the command line and exit codes |
//! | [`config`] | defaults < TOML file < environment (Civo's variables and `NODE_AGENT_*`) |
//! | [`agent`] | [`agent::run`]: the main loop |
//! | [`watch`] | the Node watch and the cache of reduced Nodes |
//! | [`leases`] | kubelet leases folded into a map, for the kubelet-lease checker |
//! | [`node`] | [`node::AgentNode`]: what the agent keeps of a Node |
//! | [`events`] | logs and Kubernetes Events for transitions, actions and holds |
//! | [`recorder`], [`http`] | metrics with deletable series; `/metrics`, `/healthz`, `/readyz` |
//! | [`simulate`] | `node-agent simulate` |
//! | [`check`] | `node-agent check` |
//! | [`ha`] | leader election between replicas on a fenced Kubernetes Lease |
//! | [`addons`] | Deployments and DaemonSets reported as components (ready/desired) |
//! | [`grpc`] | the admin API, grpc.health.v1, heartbeats, the persisted pause |
//! | [`window`] | maintenance windows (allow and deny rules, IANA zones, DST) for both modes |
//! | [`host`] | `node-agent host ...`: serialized, health-gated reboots of a fleet of Linux hosts (etcd) |
//!
//! # Example
//!
//! Configuration is loaded the way the binary loads it:
//!
//! ```
//! use agent_bin::config::{CliOverrides, Config, EnvMap};
//!
//! let env: EnvMap = [("CIVO_NODE_POOL_IDS".to_owned(), "pool-a,pool-b".to_owned())].into();
//! let config = Config::load(None, &env, &CliOverrides::default()).unwrap();
//! assert!(config.policy.monitor_only);
//! assert_eq!(config.node_selector().unwrap(), "kubernetes.civo.com/civo-node-pool in (pool-a,pool-b)");
//! ```
//!
//! The agent needs a multi-threaded Tokio runtime with timers and I/O.

pub mod addons;
pub mod agent;
pub mod check;
pub mod cli;
pub mod config;
pub mod control_plane;
pub mod events;
pub mod grpc;
pub mod ha;
pub mod host;
pub mod http;
pub mod leases;
pub mod node;
pub mod record;
pub mod recorder;
pub mod repairs;
pub mod simulate;
pub mod watch;
pub mod window;
