//! The [`StateStore`] trait (versioned compare-and-swap) and the in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::domain::NodeRecord;

/// An opaque store version for compare-and-swap (a counter, a Kubernetes
/// `resourceVersion`, an etcd `mod_revision`). Only equality is meaningful.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// A version from its textual form.
    pub fn new(v: impl Into<Arc<str>>) -> Self {
        Version(v.into())
    }

    /// A version from a counter.
    #[must_use]
    pub fn from_u64(v: u64) -> Self {
        Version(v.to_string().into())
    }

    /// The textual form.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record together with the version it was stored at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The record.
    pub record: NodeRecord,
    /// Its version, to pass back to [`StateStore::save`].
    pub version: Version,
}

/// A state store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The compare-and-swap lost: the record changed (or appeared, or vanished)
    /// since it was read. Reload and decide again.
    #[error("state of {key:?} changed concurrently (expected version {expected}, found {found})")]
    Conflict {
        /// The record's key.
        key: String,
        /// The version the writer expected (`none` = absent).
        expected: String,
        /// The version found (`none` = absent).
        found: String,
    },
    /// A stored record cannot be read (garbage, or a newer format).
    #[error("state of {key:?} is unreadable: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A stored record was written in a newer format than this build reads.
    /// It is left untouched: upgrade the agent, or move the record away.
    #[error(
        "state of {key:?} was written in record format {found}; this build reads format {supported}: upgrade the agent or remove the record"
    )]
    NewerFormat {
        /// The record's key.
        key: String,
        /// The format version found in the record.
        found: u64,
        /// The newest format this build reads.
        supported: u32,
    },
    /// The backend failed (I/O, network, permissions).
    #[error("state store backend failed: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The underlying cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// A conflict error between an expected and a found version.
    #[must_use]
    pub fn conflict(key: &str, expected: Option<&Version>, found: Option<&Version>) -> Self {
        let show = |v: Option<&Version>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        StoreError::Conflict { key: key.to_owned(), expected: show(expected), found: show(found) }
    }

    /// Whether this is a compare-and-swap conflict.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// Durable per-node state with compare-and-swap writes.
///
/// Every write names the version it read (`None` = "must not exist yet");
/// a mismatch is [`StoreError::Conflict`], so two writers can never both act
/// on the same node.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The record stored under `key`, if any.
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError>;

    /// Stores `record` under `key` if its current version is `expected`;
    /// returns the new version.
    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError>;

    /// Deletes `key`. With `expected`, only if the version matches; deleting an
    /// absent key without `expected` succeeds.
    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError>;

    /// Every stored record, by key.
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError>;
}

#[async_trait]
impl<S: StateStore + ?Sized> StateStore for Arc<S> {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        (**self).load(key).await
    }
    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        (**self).save(key, record, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        (**self).delete(key, expected).await
    }
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        (**self).list().await
    }
}

#[async_trait]
impl<S: StateStore + ?Sized> StateStore for Box<S> {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        (**self).load(key).await
    }
    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        (**self).save(key, record, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        (**self).delete(key, expected).await
    }
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        (**self).list().await
    }
}

/// A store whose every call has a deadline: a backend that accepts a
/// request and never answers becomes a [`StoreError::Backend`] naming the
/// call and the deadline, instead of a hang. The engine wraps its store in
/// one ([`crate::EngineConfig::store_timeout`]).
///
/// A `save` or `delete` that timed out may still have been applied: the
/// error says so, and the next compare-and-swap finds out.
pub struct TimedStore {
    inner: Arc<dyn StateStore>,
    timeout: std::time::Duration,
}

impl fmt::Debug for TimedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedStore").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl TimedStore {
    /// Bounds every call of `inner` by `timeout`.
    #[must_use]
    pub fn new(inner: Arc<dyn StateStore>, timeout: std::time::Duration) -> Self {
        TimedStore { inner, timeout }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        key: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| {
            let maybe = if what == "load" || what == "list" { "" } else { "; it may have been applied" };
            Err(StoreError::Backend {
                message: format!("the store did not answer {what} {key:?} within {:?}{maybe}", self.timeout),
                source: None,
            })
        })
    }
}

#[async_trait]
impl StateStore for TimedStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.bounded("load", key, self.inner.load(key)).await
    }

    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        self.bounded("save", key, self.inner.save(key, record, expected)).await
    }

    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        self.bounded("delete", key, self.inner.delete(key, expected)).await
    }

    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        self.bounded("list", "*", self.inner.list()).await
    }
}

/// A process-local store (for tests and embedders that need no durability).
///
/// Versions are a global counter, so a deleted and re-created key never
/// reuses a version.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: RwLock<HashMap<String, (NodeRecord, u64)>>,
    next: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// How many records are stored.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.read().len()
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.read().is_empty()
    }

    fn version_of(v: u64) -> Version {
        Version::from_u64(v)
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.records.read().get(key).map(|(r, v)| Stored { record: r.clone(), version: Self::version_of(*v) }))
    }

    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        let mut map = self.records.write();
        let current = map.get(key).map(|(_, v)| Self::version_of(*v));
        if current.as_ref() != expected {
            return Err(StoreError::conflict(key, expected, current.as_ref()));
        }
        let v = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        map.insert(key.to_owned(), (record.clone(), v));
        Ok(Self::version_of(v))
    }

    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        let mut map = self.records.write();
        if let Some(expected) = expected {
            let current = map.get(key).map(|(_, v)| Self::version_of(*v));
            if current.as_ref() != Some(expected) {
                return Err(StoreError::conflict(key, Some(expected), current.as_ref()));
            }
        }
        map.remove(key);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        let mut out: Vec<_> = self
            .records
            .read()
            .iter()
            .map(|(k, (r, v))| (k.clone(), Stored { record: r.clone(), version: Self::version_of(*v) }))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Phase;

    /// A backend that accepts every call and never answers.
    struct Silent;

    #[async_trait]
    impl StateStore for Silent {
        async fn load(&self, _: &str) -> Result<Option<Stored>, StoreError> {
            std::future::pending().await
        }
        async fn save(&self, _: &str, _: &NodeRecord, _: Option<&Version>) -> Result<Version, StoreError> {
            std::future::pending().await
        }
        async fn delete(&self, _: &str, _: Option<&Version>) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_times_out_on_every_call() {
        let store = TimedStore::new(Arc::new(Silent), std::time::Duration::from_secs(30));
        let t0 = tokio::time::Instant::now();
        let e = store.load("n1").await.unwrap_err().to_string();
        assert_eq!(t0.elapsed(), std::time::Duration::from_secs(30));
        assert!(e.contains("did not answer load \"n1\" within 30s"), "{e}");
        let e = store.save("n1", &NodeRecord::default(), None).await.unwrap_err().to_string();
        assert!(e.contains("save \"n1\" within 30s; it may have been applied"), "{e}");
        assert!(store.delete("n1", None).await.is_err());
        assert!(store.list().await.is_err());
        assert_eq!(t0.elapsed(), std::time::Duration::from_secs(120));
    }

    #[tokio::test]
    async fn compare_and_swap_semantics() {
        let s = MemoryStore::new();
        assert!(s.load("a").await.unwrap().is_none());
        let rec = NodeRecord::default();
        let v1 = s.save("a", &rec, None).await.unwrap();
        // Creating again conflicts.
        let err = s.save("a", &rec, None).await.unwrap_err();
        assert!(err.is_conflict());
        assert_eq!(err.to_string(), format!("state of \"a\" changed concurrently (expected version none, found {v1})"));
        let healthy = NodeRecord { phase: Phase::Healthy, ..NodeRecord::default() };
        let v2 = s.save("a", &healthy, Some(&v1)).await.unwrap();
        assert_ne!(v1, v2);
        // A stale writer loses.
        assert!(s.save("a", &rec, Some(&v1)).await.unwrap_err().is_conflict());
        let got = s.load("a").await.unwrap().unwrap();
        assert_eq!(got.record.phase, Phase::Healthy);
        assert_eq!(got.version, v2);
        // Guarded delete.
        assert!(s.delete("a", Some(&v1)).await.unwrap_err().is_conflict());
        s.delete("a", Some(&v2)).await.unwrap();
        s.delete("a", None).await.unwrap();
        assert!(s.is_empty());
        // A re-created key never reuses a version.
        let v3 = s.save("a", &rec, None).await.unwrap();
        assert_ne!(v3, v1);
        assert_ne!(v3, v2);
        s.save("b", &rec, None).await.unwrap();
        let keys: Vec<_> = s.list().await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b"]);
    }
}
