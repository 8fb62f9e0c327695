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
//! readable with `etcdctl get`. The etcd client is re-exported
//! ([`etcd_client`]); connect with it and hand the client over.
//!
//! The `etcd-tls` feature adds TLS (rustls with ring, through etcd-client's
//! `tls-ring`): `EtcdTls` reads a CA and, for etcd's `--client-cert-auth`
//! (kubeadm's and k3s's etcd), a client certificate and key from PEM files,
//! and its error names the setting and the file. No process-wide crypto
//! provider is installed.
//!
//! [`conformance`] is the suite every backend passes; use it for your own.
//!
//! # Runtime needs and panics
//!
//! The stores need a Tokio runtime: [`FileStore`] (feature `file`) runs its
//! blocking I/O on the blocking pool, the Kubernetes and etcd stores need
//! the I/O driver and timers. A damaged or newer-format record is a
//! [`health_core::StoreError`], never a panic (fuzzed).
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

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod conformance;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "file")]
mod file;
#[cfg(feature = "kube")]
mod kube;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdStore, Holder, LockError, LockGuard, ParkedSlot, RemediationLock};
/// The etcd client this crate is built with (connect with it, then hand the
/// client to [`EtcdStore::new`] or [`RemediationLock::new`]).
#[cfg(feature = "etcd")]
pub use etcd_client;
#[cfg(feature = "etcd-tls")]
mod etcd_tls;
#[cfg(feature = "etcd-tls")]
pub use etcd_tls::{EtcdTls, TlsFileError};
#[cfg(feature = "file")]
pub use file::{FILE_FORMAT_VERSION, FileStore};
pub use health_core::{MemoryStore, StateStore, StoreError, Stored, Version};
use health_core::{NodeRecord, RECORD_FORMAT_VERSION};
#[cfg(feature = "kube")]
pub use kube::{FIELD_MANAGER, KubeStore, STATE_ANNOTATION};

/// Decodes a stored record from JSON text, for store backends.
///
/// The format version is read first, so a record written by a newer build
/// is [`StoreError::NewerFormat`] (even if it has fields this build does not
/// know), and anything else unreadable is [`StoreError::Corrupt`]; `key`
/// names the record in both.
pub fn decode_record(key: &str, json: &[u8]) -> Result<NodeRecord, StoreError> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| StoreError::Corrupt { key: key.to_owned(), message: format!("not a state record: {e}") })?;
    decode_record_value(key, value)
}

/// [`decode_record`] for a record already parsed as a JSON value (a record
/// embedded in a larger document).
pub fn decode_record_value(key: &str, value: serde_json::Value) -> Result<NodeRecord, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt { key: key.to_owned(), message };
    let found = match value.get("format_version") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().ok_or_else(|| corrupt(format!("format_version {n} is not a non-negative integer")))?
        }
        Some(other) => return Err(corrupt(format!("format_version {other} is not a number"))),
        None => return Err(corrupt("the record has no format_version".to_owned())),
    };
    if found > u64::from(RECORD_FORMAT_VERSION) {
        return Err(StoreError::NewerFormat { key: key.to_owned(), found, supported: RECORD_FORMAT_VERSION });
    }
    if found == 0 {
        return Err(corrupt("format_version 0 is not a record format".to_owned()));
    }
    serde_json::from_value(value).map_err(|e| corrupt(format!("not a state record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_rejects_newer_formats_by_type_and_names_the_key() {
        let good = serde_json::to_vec(&NodeRecord::default()).unwrap();
        assert_eq!(decode_record("n1", &good).unwrap(), NodeRecord::default());
        // A newer record, even with fields this build does not know.
        let newer = br#"{"format_version":99,"phase":"Healthy","class":"standard","rung":"reimage"}"#;
        match decode_record("n1", newer) {
            Err(StoreError::NewerFormat { key, found: 99, supported: 1 }) => assert_eq!(key, "n1"),
            other => panic!("{other:?}"),
        }
        let msg = decode_record("n1", newer).unwrap_err().to_string();
        assert!(msg.contains("record format 99; this build reads format 1"), "{msg}");
        for (bad, why) in [
            (&br#"{"phase":"Healthy","class":"standard"}"#[..], "no format_version"),
            (br#"{"format_version":"1"}"#, "is not a number"),
            (br#"{"format_version":-1}"#, "non-negative integer"),
            (br#"{"format_version":0,"phase":"Healthy","class":"standard"}"#, "format_version 0"),
            (br#"{"format_version":1,"phase":"Rebooting","class":"standard"}"#, "not a state record"),
            (b"[1,", "not a state record"),
        ] {
            match decode_record("n2", bad) {
                Err(StoreError::Corrupt { key, message }) => {
                    assert_eq!(key, "n2");
                    assert!(message.contains(why), "{message}");
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }
}
