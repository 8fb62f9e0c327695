//! Durable per-node state for node-health, so a restart never forgets that
//! a node was just rebooted and two writers can never both act on a node.
//!
//! | store | feature | where the records live | compare-and-swap on |
//! |---|---|---|---|
//! | [`MemoryStore`] | — | process memory (tests, embedders) | a counter |
//! | [`FileStore`] | `file` | one JSON file, atomically replaced, locked | a counter in the file |
//! | [`KubeStore`] | `kube` | the annotation `node-agent.civo.com/state` on each Node | the record's version, written with a patch guarded by the node's `resourceVersion` |
//! | [`EtcdStore`] | `etcd` | keys under a prefix | `mod_revision`, in a transaction |
//!
//! The `etcd` feature also brings [`RemediationLock`], a lease-backed
//! lock/semaphore so several agents (or one agent per host) serialise
//! disruptive actions, with holder metadata `{node, pid, acquired_at}`
//! readable with `etcdctl get`.
//!
//! [`conformance`] is the suite every backend passes; use it for your own.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "file")] {
//! use health_core::{NodeRecord, StateStore};
//! use state_store::FileStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let path = std::env::temp_dir().join(format!("state-doc-{}.json", std::process::id()));
//! let store = FileStore::open(&path).unwrap();
//! let v1 = store.save("node-1", &NodeRecord::default(), None).await.unwrap();
//! // A second writer holding the old version loses.
//! let v2 = store.save("node-1", &NodeRecord::default(), Some(&v1)).await.unwrap();
//! assert!(store.save("node-1", &NodeRecord::default(), Some(&v1)).await.unwrap_err().is_conflict());
//! # drop(store); let _ = std::fs::remove_file(&path); let _ = v2;
//! # }
//! # }
//! ```

pub mod conformance;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "file")]
mod file;
#[cfg(feature = "kube")]
mod kube;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdStore, Holder, LockError, LockGuard, RemediationLock};
#[cfg(feature = "file")]
pub use file::{FILE_FORMAT_VERSION, FileStore};
pub use health_core::{MemoryStore, StateStore, StoreError, Stored, Version};
#[cfg(feature = "kube")]
pub use kube::{KubeStore, STATE_ANNOTATION};
