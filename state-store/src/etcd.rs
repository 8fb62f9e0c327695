//! etcd: records under a key prefix with compare-and-swap on `mod_revision`,
//! and a lease-backed remediation lock/semaphore.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use health_core::{NodeRecord, StateStore, StoreError, Stored, Version};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

fn backend(message: String, e: etcd_client::Error) -> StoreError {
    StoreError::Backend { message, source: Some(Box::new(e)) }
}

/// Records as etcd keys `<prefix><node>`, CAS on `mod_revision` in a transaction.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store under `prefix` (e.g. `/node-health/state/`).
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        EtcdStore { client, prefix: prefix.into() }
    }

    fn key(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    fn decode(&self, node: &str, value: &[u8], revision: i64) -> Result<Stored, StoreError> {
        let record = serde_json::from_slice(value)
            .map_err(|e| StoreError::Corrupt { key: self.key(node), message: format!("not a state record: {e}") })?;
        Ok(Stored { record, version: Version::from_u64(u64::try_from(revision).unwrap_or(0)) })
    }

    async fn current(&self, node: &str) -> Option<Version> {
        let mut c = self.client.clone();
        let r = c.get(self.key(node), None).await.ok()?;
        r.kvs().first().map(|kv| Version::from_u64(u64::try_from(kv.mod_revision()).unwrap_or(0)))
    }
}

fn revision_of(v: &Version) -> Option<i64> {
    v.as_str().parse().ok()
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let mut c = self.client.clone();
        let r = c.get(self.key(key), None).await.map_err(|e| backend(format!("cannot read {}", self.key(key)), e))?;
        r.kvs().first().map(|kv| self.decode(key, kv.value(), kv.mod_revision())).transpose()
    }

    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        let k = self.key(key);
        let compare = match expected {
            None => vec![Compare::create_revision(k.clone(), CompareOp::Equal, 0)],
            // An absent key has mod_revision 0: require the key to exist too.
            Some(v) => match revision_of(v) {
                Some(rev) if rev > 0 => vec![
                    Compare::create_revision(k.clone(), CompareOp::Greater, 0),
                    Compare::mod_revision(k.clone(), CompareOp::Equal, rev),
                ],
                _ => return Err(StoreError::conflict(key, expected, self.current(key).await.as_ref())),
            },
        };
        let value =
            serde_json::to_vec(record).map_err(|e| StoreError::Backend { message: e.to_string(), source: None })?;
        let txn = Txn::new().when(compare).and_then([TxnOp::put(k.clone(), value, None)]);
        let mut c = self.client.clone();
        let r = c.txn(txn).await.map_err(|e| backend(format!("cannot write {k}"), e))?;
        if !r.succeeded() {
            return Err(StoreError::conflict(key, expected, self.current(key).await.as_ref()));
        }
        let rev = r.header().map(|h| h.revision()).filter(|r| *r > 0).ok_or_else(|| StoreError::Backend {
            message: format!("etcd answered the write of {k} without a revision"),
            source: None,
        })?;
        Ok(Version::from_u64(u64::try_from(rev).unwrap_or(0)))
    }

    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        let k = self.key(key);
        let mut c = self.client.clone();
        match expected {
            None => {
                c.delete(k.clone(), None).await.map_err(|e| backend(format!("cannot delete {k}"), e))?;
                Ok(())
            }
            Some(v) => {
                let Some(rev) = revision_of(v).filter(|r| *r > 0) else {
                    return Err(StoreError::conflict(key, expected, self.current(key).await.as_ref()));
                };
                let txn = Txn::new()
                    .when([
                        Compare::create_revision(k.clone(), CompareOp::Greater, 0),
                        Compare::mod_revision(k.clone(), CompareOp::Equal, rev),
                    ])
                    .and_then([TxnOp::delete(k.clone(), None)]);
                let r = c.txn(txn).await.map_err(|e| backend(format!("cannot delete {k}"), e))?;
                if r.succeeded() {
                    Ok(())
                } else {
                    Err(StoreError::conflict(key, expected, self.current(key).await.as_ref()))
                }
            }
        }
    }

    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        let mut c = self.client.clone();
        let r = c
            .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| backend(format!("cannot list {}", self.prefix), e))?;
        let mut out = Vec::new();
        for kv in r.kvs() {
            let full = String::from_utf8_lossy(kv.key()).into_owned();
            let node = full.strip_prefix(&self.prefix).unwrap_or(&full).to_owned();
            let stored = self.decode(&node, kv.value(), kv.mod_revision())?;
            out.push((node, stored));
        }
        Ok(out)
    }
}

/// Who holds a remediation slot (the value of the slot key: `etcdctl get --prefix <lock>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node being remediated (or the host running the agent).
    pub node: String,
    /// The holder's process id.
    pub pid: u32,
    /// When it acquired the slot (RFC 3339).
    pub acquired_at: String,
}

impl Holder {
    /// A holder for `node` in this process, acquiring now.
    pub fn now(node: impl Into<String>) -> Self {
        Holder {
            node: node.into(),
            pid: std::process::id(),
            acquired_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| health_core::Timestamp::from_millis(u64::try_from(d.as_millis()).unwrap_or(0)).to_string())
                .unwrap_or_default(),
        }
    }
}

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// etcd failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Every slot stayed taken until the deadline.
    #[error("every slot of {name} stayed taken for {waited:?}")]
    Timeout {
        /// The lock.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A setting is invalid.
    #[error("invalid lock settings: {0}")]
    Invalid(String),
}

/// A lease-backed lock (one slot) or semaphore (several) in etcd, so several
/// agents serialise disruptive actions. A holder that dies stops renewing its
/// lease, and its slot frees itself within the TTL.
#[derive(Clone)]
pub struct RemediationLock {
    client: Client,
    name: String,
    slots: u32,
    ttl: i64,
}

impl std::fmt::Debug for RemediationLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemediationLock")
            .field("name", &self.name)
            .field("slots", &self.slots)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A held slot; the lease is kept alive until [`LockGuard::release`] (or,
/// when dropped, until the TTL runs out).
pub struct LockGuard {
    client: Client,
    key: String,
    lease: i64,
    keepalive: JoinHandle<()>,
    lost: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard").field("key", &self.key).field("lease", &self.lease).finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The slot's key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease id.
    #[must_use]
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Whether the lease was lost (etcd unreachable for a whole TTL, or the
    /// lease expired): the slot may then belong to someone else, so stop
    /// disruptive work.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Releases the slot at once (revokes the lease).
    pub async fn release(mut self) -> Result<(), LockError> {
        self.keepalive.abort();
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Without keep-alives the lease, and so the slot, expires within the TTL.
        self.keepalive.abort();
    }
}

impl RemediationLock {
    /// A lock named `name` (a key prefix, e.g. `/node-health/locks/reboot`)
    /// with `slots` holders at most and a lease TTL.
    pub fn new(client: Client, name: impl Into<String>, slots: u32, ttl: Duration) -> Result<Self, LockError> {
        if slots == 0 {
            return Err(LockError::Invalid("slots must be at least 1".into()));
        }
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        if ttl < 2 {
            return Err(LockError::Invalid("the TTL must be at least 2s".into()));
        }
        Ok(RemediationLock { client, name: name.into().trim_end_matches('/').to_owned(), slots, ttl })
    }

    fn slot_key(&self, i: u32) -> String {
        format!("{}/slot-{i}", self.name)
    }

    /// Takes a free slot now, or returns `None`.
    pub async fn try_acquire(&self, holder: &Holder) -> Result<Option<LockGuard>, LockError> {
        let mut c = self.client.clone();
        let lease = c.lease_grant(self.ttl, None).await?.id();
        let value = serde_json::to_vec(holder).map_err(|e| LockError::Invalid(e.to_string()))?;
        for i in 0..self.slots {
            let key = self.slot_key(i);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))]);
            if c.txn(txn).await?.succeeded() {
                let (keepalive, lost) = match self.spawn_keepalive(lease).await {
                    Ok(k) => k,
                    Err(e) => {
                        // Without renewals the slot would linger for a TTL: give it back.
                        let _ = c.lease_revoke(lease).await;
                        return Err(e);
                    }
                };
                tracing::info!(lock = %self.name, slot = i, node = %holder.node, "remediation slot acquired");
                return Ok(Some(LockGuard { client: c, key, lease, keepalive, lost }));
            }
        }
        c.lease_revoke(lease).await?;
        Ok(None)
    }

    /// Renews the lease every TTL/3, reconnecting after stream errors,
    /// until the lease is confirmed gone or a whole TTL passes without a
    /// renewal; then reports it lost.
    async fn spawn_keepalive(
        &self,
        lease: i64,
    ) -> Result<(JoinHandle<()>, tokio::sync::watch::Receiver<bool>), LockError> {
        let mut c = self.client.clone();
        let first = c.lease_keep_alive(lease).await?;
        let ttl = Duration::from_secs(u64::try_from(self.ttl).unwrap_or(2));
        let every = (ttl / 3).max(Duration::from_millis(500));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let name = self.name.clone();
        let handle = tokio::spawn(async move {
            let mut renewed = tokio::time::Instant::now();
            let mut stream = Some(first);
            loop {
                if renewed.elapsed() >= ttl {
                    break;
                }
                let (keeper, responses) = match stream.as_mut() {
                    Some(s) => (&mut s.0, &mut s.1),
                    None => match c.lease_keep_alive(lease).await {
                        Ok(s) => {
                            let s = stream.insert(s);
                            (&mut s.0, &mut s.1)
                        }
                        Err(e) => {
                            tracing::warn!(lock = %name, error = %e, "cannot reach etcd to renew the lease; retrying");
                            tokio::time::sleep(every / 4).await;
                            continue;
                        }
                    },
                };
                let answer = match keeper.keep_alive().await {
                    Ok(()) => tokio::time::timeout(every, responses.message()).await,
                    Err(e) => Ok(Err(e)),
                };
                match answer {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {
                        renewed = tokio::time::Instant::now();
                        tokio::time::sleep(every).await;
                    }
                    // TTL 0: the lease is gone.
                    Ok(Ok(Some(_))) => break,
                    _ => {
                        stream = None;
                        tokio::time::sleep(every / 4).await;
                    }
                }
            }
            tracing::error!(lock = %name, lease, "remediation lock lease lost");
            let _ = tx.send(true);
        });
        Ok((handle, rx))
    }

    /// Waits (up to `timeout`) for a free slot; woken by deletions, not polling.
    pub async fn acquire(&self, holder: &Holder, timeout: Duration) -> Result<LockGuard, LockError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut c = self.client.clone();
        // Watch first, so a slot freed between the attempt and the wait is seen.
        let mut watch = c.watch(format!("{}/", self.name), Some(WatchOptions::new().with_prefix())).await?;
        loop {
            if let Some(guard) = self.try_acquire(holder).await? {
                return Ok(guard);
            }
            loop {
                match tokio::time::timeout_at(deadline, watch.message()).await {
                    Err(_) => return Err(LockError::Timeout { name: self.name.clone(), waited: timeout }),
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(None)) => return Err(LockError::Invalid("the watch ended".into())),
                    Ok(Ok(Some(r))) if r.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                    Ok(Ok(Some(_))) => {}
                }
            }
        }
    }

    /// The current holders.
    pub async fn holders(&self) -> Result<Vec<Holder>, LockError> {
        let mut c = self.client.clone();
        let r = c.get(format!("{}/", self.name), Some(GetOptions::new().with_prefix())).await?;
        Ok(r.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }
}
