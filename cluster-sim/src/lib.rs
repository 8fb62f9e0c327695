//! tmp
#![allow(missing_docs, dead_code)]
mod civo;
pub mod cluster;
pub mod error;
pub mod fixtures;
mod kube_api;
pub mod objects;
pub mod patch;
pub mod scenario;
pub mod selector;
pub mod server;
mod table;
pub use cluster::*;
pub use objects::Kind;
pub use scenario::{Scenario, ScenarioError};
pub use server::*;
