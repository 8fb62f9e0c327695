//! Examples of embedding the node-health crates outside Kubernetes.
//!
//! * `vm_fleet`: a controller for a fleet of virtual machines with its own
//!   async health probe, a synchronous disk checker and a power-cycle
//!   executor, driven by jumping a manual clock from deadline to deadline.
//!   Run it with `cargo run -p examples --example vm_fleet`.
//! * `recovery_server`: a reference remote executor
//!   (`nodeagent.v1.RecoveryExecutor`) for `[executor] kind = "grpc"`,
//!   idempotent per key. Its server is [`recovery_server::ReferenceServer`].
//!   Run it with `cargo run -p examples --example recovery_server`.

#[path = "recovery_server.rs"]
pub mod recovery_server;
