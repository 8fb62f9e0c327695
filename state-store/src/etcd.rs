//! etcd: records under a key prefix with compare-and-swap on `mod_revision`,
//! and a lease-backed remediation lock/semaphore.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use health_core::retry::{RetryAfter, RetryPolicy, retry};
use health_core::{LeaseFence, NodeRecord, StateStore, StoreError, Stored, Version};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::decode_record;

/// Keys per page when listing records.
const LIST_PAGE: i64 = 1000;

/// The end of the key range of everything under `prefix` (etcd's rule: the
/// prefix with its last byte below 0xff incremented; all keys for none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends_follow_etcds_rule() {
        assert_eq!(prefix_end(b"/node-agent/state/"), b"/node-agent/state0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), [0]);
    }
}

/// A failed etcd call; the message carries etcd's error too (a log line
/// that prints only the message still says "connection refused").
fn backend(message: String, e: etcd_client::Error) -> StoreError {
    StoreError::Backend { message: format!("{message}: {e}"), source: Some(Box::new(e)) }
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
        let record = decode_record(&self.key(node), value)?;
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

    /// Reads the records in pages of 1,000 keys, all at the first
    /// page's revision (one consistent snapshot): a single answer is capped
    /// by the client (4 MiB), which a fleet reaches at about 10,000 records.
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        let mut c = self.client.clone();
        let end = prefix_end(self.prefix.as_bytes());
        let mut from = self.prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            if revision != 0 {
                opts = opts.with_revision(revision);
            }
            let r = c
                .get(from.clone(), Some(opts))
                .await
                .map_err(|e| backend(format!("cannot list {}", self.prefix), e))?;
            if revision == 0 {
                revision = r.header().map_or(0, |h| h.revision());
            }
            for kv in r.kvs() {
                let full = String::from_utf8_lossy(kv.key()).into_owned();
                let node = full.strip_prefix(&self.prefix).unwrap_or(&full).to_owned();
                let stored = self.decode(&node, kv.value(), kv.mod_revision())?;
                out.push((node, stored));
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
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
    /// The holder host's boot id when it handed the slot to a reboot
    /// ([`LockGuard::hold_through`]): after the reboot, a different boot id
    /// tells the host that the reboot happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the holder asked its host to reboot (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebooting_since: Option<String>,
}

impl Holder {
    /// A holder for `node` in this process, acquiring now.
    pub fn now(node: impl Into<String>) -> Self {
        Holder {
            node: node.into(),
            pid: std::process::id(),
            acquired_at: rfc3339_now(),
            boot_id: None,
            rebooting_since: None,
        }
    }

    /// The same holder, about to reboot its host, which has `boot_id` now.
    #[must_use]
    pub fn rebooting(mut self, boot_id: impl Into<String>) -> Self {
        self.boot_id = Some(boot_id.into());
        self.rebooting_since = Some(rfc3339_now());
        self
    }
}

fn rfc3339_now() -> String {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| health_core::Timestamp::from_millis(u64::try_from(d.as_millis()).unwrap_or(0)).to_string())
        .unwrap_or_default()
}

/// A slot handed to a reboot ([`LockGuard::hold_through`]): bound to a lease
/// nobody renews, so it frees itself when the lease's TTL runs out unless the
/// rebooted host reclaims it first ([`RemediationLock::reclaim`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedSlot {
    /// The slot's key.
    pub key: String,
    /// The lease the slot is bound to now.
    pub lease: i64,
    /// The lease's TTL: the longest the slot stays taken without its holder.
    pub ttl: Duration,
}

/// The lock could not be taken, released or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// etcd failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd did not answer a call in time.
    #[error("etcd did not answer ({what}) within {after:?}")]
    Unanswered {
        /// The call.
        what: &'static str,
        /// The deadline it missed.
        after: Duration,
    },
    /// Every slot stayed taken until the deadline.
    #[error("every slot of {name} stayed taken for {waited:?}")]
    Timeout {
        /// The lock.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A slot's value is not holder metadata (written by something else).
    #[error("the value of {key} is not holder metadata ({message}); inspect it with etcdctl get {key}")]
    Unreadable {
        /// The slot key.
        key: String,
        /// Why it cannot be read.
        message: String,
    },
    /// A setting is invalid.
    #[error("invalid lock settings: {0}")]
    Invalid(String),
    /// The slot is no longer ours (its lease expired or it was taken over).
    #[error("the slot {key} is no longer held by this holder")]
    Lost {
        /// The slot key.
        key: String,
    },
}

/// A lease-backed lock (one slot) or semaphore (several) in etcd, so several
/// agents serialise disruptive actions. A holder that dies stops renewing its
/// lease, and its slot frees itself within the TTL.
///
/// Every call to etcd has a deadline ([`RemediationLock::with_rpc_timeout`]).
/// A held slot counts as lost ([`LockGuard::is_lost`]) from
/// `TTL − margin` after the send time of the last confirmed renewal, on the
/// monotonic clock, whatever the renewals are doing ([`LeaseFence`]): so a
/// holder cut off from etcd stops believing it holds the slot before etcd
/// can give the slot to anybody else.
#[derive(Clone)]
pub struct RemediationLock {
    client: Client,
    name: String,
    slots: u32,
    ttl: Duration,
    rpc_timeout: Duration,
}

impl std::fmt::Debug for RemediationLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemediationLock")
            .field("name", &self.name)
            .field("slots", &self.slots)
            .field("ttl", &self.ttl)
            .field("rpc_timeout", &self.rpc_timeout)
            .finish_non_exhaustive()
    }
}

/// A held slot; the lease is kept alive until [`LockGuard::release`] (or,
/// when dropped, until the TTL runs out).
pub struct LockGuard {
    client: Client,
    key: String,
    lease: i64,
    rpc_timeout: Duration,
    keepalive: JoinHandle<()>,
    fence: Arc<Mutex<LeaseFence>>,
    lost: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard").field("key", &self.key).field("lease", &self.lease).finish_non_exhaustive()
    }
}

fn fence_of(f: &Mutex<LeaseFence>) -> LeaseFence {
    *f.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn bounded<T>(
    what: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, LockError> {
    match tokio::time::timeout(after, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LockError::Unanswered { what, after }),
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

    /// The instant (monotonic) from which the slot counts as lost unless a
    /// renewal is confirmed before: bound disruptive work by it.
    #[must_use]
    pub fn valid_until(&self) -> Option<Instant> {
        fence_of(&self.fence).valid_until()
    }

    /// Whether the slot may belong to someone else now: no renewal was
    /// confirmed for `TTL − margin`, or etcd reported the lease gone. Stop
    /// disruptive work. Judged on the clock, not only by the renewal task.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || !fence_of(&self.fence).is_valid(Instant::now())
    }

    /// Resolves when the slot is lost.
    pub async fn lost(&mut self) {
        loop {
            if self.is_lost() {
                return;
            }
            let until = self.valid_until().unwrap_or_else(Instant::now);
            tokio::select! {
                r = self.lost.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Releases the slot at once (revokes the lease).
    pub async fn release(mut self) -> Result<(), LockError> {
        self.keepalive.abort();
        bounded("revoke the lease", self.rpc_timeout, self.client.lease_revoke(self.lease)).await?;
        Ok(())
    }

    /// Hands the slot over to a reboot of the holder's own host: writes
    /// `holder` (see [`Holder::rebooting`]) and binds the slot to a new
    /// lease of `ttl` that nobody renews, in one transaction that succeeds
    /// only while the slot is still bound to this guard's lease. The slot then
    /// stays taken while the host reboots, and frees itself after `ttl` if the
    /// host never comes back to [`RemediationLock::reclaim`] it.
    pub async fn hold_through(mut self, holder: &Holder, ttl: Duration) -> Result<ParkedSlot, LockError> {
        if self.is_lost() {
            return Err(LockError::Lost { key: self.key.clone() });
        }
        let t = self.rpc_timeout;
        let ttl = Duration::from_secs(ttl.as_secs().max(2));
        let value = serde_json::to_vec(holder).map_err(|e| LockError::Invalid(e.to_string()))?;
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = bounded("grant the reboot lease", t, self.client.lease_grant(secs, None)).await?.id();
        let txn = Txn::new()
            .when([Compare::lease(self.key.clone(), CompareOp::Equal, self.lease)])
            .and_then([TxnOp::put(self.key.clone(), value, Some(PutOptions::new().with_lease(lease)))]);
        let moved = bounded("bind the slot to the reboot lease", t, self.client.txn(txn)).await;
        match moved {
            Ok(r) if r.succeeded() => {}
            other => {
                let _ = bounded("revoke the lease", t, self.client.lease_revoke(lease)).await;
                return match other {
                    Err(e) => Err(e),
                    Ok(_) => Err(LockError::Lost { key: self.key.clone() }),
                };
            }
        }
        self.keepalive.abort();
        // The slot lives on the new lease now; the old one holds nothing.
        if let Err(e) = bounded("revoke the lease", t, self.client.lease_revoke(self.lease)).await {
            tracing::debug!(lease = self.lease, error = %e, "old lock lease not revoked; it expires by itself");
        }
        tracing::info!(key = %self.key, lease, ttl_secs = ttl.as_secs(), "lock slot held through the reboot");
        Ok(ParkedSlot { key: self.key.clone(), lease, ttl })
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Without keep-alives the lease, and so the slot, expires within the TTL.
        self.keepalive.abort();
    }
}

/// Why a renewal attempt was not confirmed.
enum Unrenewed {
    /// etcd says the lease no longer exists.
    Gone,
    /// No confirmation (error, timeout, stream ended); to be repeated.
    Failed(String),
}

impl std::fmt::Display for Unrenewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unrenewed::Gone => f.write_str("etcd reports the lease expired or revoked"),
            Unrenewed::Failed(why) => f.write_str(why),
        }
    }
}

impl RetryAfter for Unrenewed {}

type KeepAlive = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// Sends one keep-alive (reopening the stream if needed) and waits up to
/// `timeout` for its answer; confirmed, it returns when it was sent.
async fn renew(
    c: &mut Client,
    stream: &mut Option<KeepAlive>,
    lease: i64,
    timeout: Duration,
) -> Result<Instant, Unrenewed> {
    if stream.is_none() {
        match tokio::time::timeout(timeout, c.lease_keep_alive(lease)).await {
            Ok(Ok(s)) => *stream = Some(s),
            Ok(Err(e)) => return Err(Unrenewed::Failed(e.to_string())),
            Err(_) => return Err(Unrenewed::Failed(format!("no keep-alive stream within {timeout:?}"))),
        }
    }
    let Some((keeper, responses)) = stream.as_mut() else {
        return Err(Unrenewed::Failed("no keep-alive stream".into()));
    };
    let sent = Instant::now();
    let answer = tokio::time::timeout(timeout, async {
        keeper.keep_alive().await?;
        responses.message().await
    })
    .await;
    let failed = match answer {
        Ok(Ok(Some(r))) if r.ttl() > 0 => return Ok(sent),
        Ok(Ok(Some(_))) => return Err(Unrenewed::Gone),
        Ok(Ok(None)) => "the keep-alive stream ended".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {timeout:?}"),
    };
    // A later answer on this stream could belong to this request: start anew.
    *stream = None;
    Err(Unrenewed::Failed(failed))
}

impl RemediationLock {
    /// A lock named `name` (a key prefix, e.g. `/node-health/locks/reboot`)
    /// with `slots` holders at most and a lease TTL (whole seconds, at
    /// least 2 s). Calls to etcd time out after a third of the TTL (at most
    /// 5 s) unless [`RemediationLock::with_rpc_timeout`] says otherwise.
    pub fn new(client: Client, name: impl Into<String>, slots: u32, ttl: Duration) -> Result<Self, LockError> {
        if slots == 0 {
            return Err(LockError::Invalid("slots must be at least 1".into()));
        }
        let ttl = Duration::from_secs(ttl.as_secs());
        if ttl < Duration::from_secs(2) {
            return Err(LockError::Invalid("the TTL must be at least 2s".into()));
        }
        let rpc_timeout = (ttl / 3).min(Duration::from_secs(5));
        Ok(RemediationLock { client, name: name.into().trim_end_matches('/').to_owned(), slots, ttl, rpc_timeout })
    }

    /// The same lock with another deadline for each call to etcd (positive,
    /// below the TTL).
    pub fn with_rpc_timeout(mut self, timeout: Duration) -> Result<Self, LockError> {
        if timeout.is_zero() || timeout >= self.ttl {
            return Err(LockError::Invalid(format!(
                "the etcd call timeout must be positive and below the TTL ({:?}), got {timeout:?}",
                self.ttl
            )));
        }
        self.rpc_timeout = timeout;
        Ok(self)
    }

    fn slot_key(&self, i: u32) -> String {
        format!("{}/slot-{i}", self.name)
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// Takes a free slot now, or returns `None`.
    pub async fn try_acquire(&self, holder: &Holder) -> Result<Option<LockGuard>, LockError> {
        let t = self.rpc_timeout;
        let mut c = self.client.clone();
        let value = serde_json::to_vec(holder).map_err(|e| LockError::Invalid(e.to_string()))?;
        // The server starts the TTL after this instant.
        let sent = Instant::now();
        let lease = bounded("grant a lease", t, c.lease_grant(self.ttl_secs(), None)).await?.id();
        for i in 0..self.slots {
            let key = self.slot_key(i);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))]);
            match bounded("take a slot", t, c.txn(txn)).await {
                Ok(r) if r.succeeded() => {
                    let mut fence = LeaseFence::new(self.ttl);
                    fence.renewed(sent);
                    let (keepalive, fence, lost) = self.spawn_keepalive(lease, fence);
                    tracing::info!(lock = %self.name, slot = i, node = %holder.node, lease, "remediation slot acquired");
                    return Ok(Some(LockGuard { client: c, key, lease, rpc_timeout: t, keepalive, fence, lost }));
                }
                Ok(_) => {}
                Err(e) => {
                    // The slot may have been taken with this lease: give it
                    // back (or let it expire within the TTL).
                    let _ = bounded("revoke the lease", t, c.lease_revoke(lease)).await;
                    return Err(e);
                }
            }
        }
        bounded("revoke the lease", t, c.lease_revoke(lease)).await?;
        Ok(None)
    }

    /// Renews the lease every TTL/3 (retrying sooner after a failure, and
    /// reconnecting the stream) until etcd says the lease is gone or the
    /// fence runs out; then reports it lost.
    fn spawn_keepalive(
        &self,
        lease: i64,
        fence: LeaseFence,
    ) -> (JoinHandle<()>, Arc<Mutex<LeaseFence>>, tokio::sync::watch::Receiver<bool>) {
        let c = self.client.clone();
        let every = (self.ttl / 3).max(Duration::from_millis(500));
        let timeout = self.rpc_timeout;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Mutex::new(fence));
        let fence = Arc::clone(&shared);
        let name = self.name.clone();
        let handle = tokio::spawn(async move {
            let stream = tokio::sync::Mutex::new(None);
            let what = format!("renew the lease {lease} of lock {name}");
            let why = loop {
                let Some(until) = fence_of(&fence).valid_until() else { break "never renewed".to_owned() };
                // A failed renewal is repeated sooner (the first repeat
                // within TTL/12, then at most TTL/6 apart, with jitter) until
                // one is confirmed or the fence runs out.
                let renewal = async {
                    tokio::time::sleep(every).await;
                    let policy = RetryPolicy::new(every / 4, every / 2, u32::MAX)
                        .with_total(until.saturating_duration_since(Instant::now()));
                    retry(
                        &policy,
                        &what,
                        |_| {
                            let (mut c, stream) = (c.clone(), &stream);
                            async move { renew(&mut c, &mut *stream.lock().await, lease, timeout).await }
                        },
                        |e| matches!(e, Unrenewed::Failed(_)),
                    )
                    .await
                };
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {
                        break "no renewal was confirmed for the TTL minus the safety margin".to_owned();
                    }
                    r = renewal => match r {
                        Ok(sent) => fence.lock().unwrap_or_else(PoisonError::into_inner).renewed(sent),
                        Err(Unrenewed::Gone) => break Unrenewed::Gone.to_string(),
                        // Out of time to repeat: the fence runs out next.
                        Err(Unrenewed::Failed(e)) => {
                            tracing::warn!(lock = %name, lease, error = %e, "cannot renew the lock lease");
                        }
                    }
                }
            };
            tracing::error!(lock = %name, lease, reason = %why, "remediation lock lost: stop disruptive work");
            let _ = tx.send(true);
        });
        (handle, shared, rx)
    }

    /// Waits (up to `timeout`) for a free slot; woken by deletions, not polling.
    pub async fn acquire(&self, holder: &Holder, timeout: Duration) -> Result<LockGuard, LockError> {
        let deadline = Instant::now() + timeout;
        let mut c = self.client.clone();
        // Watch first, so a slot freed between the attempt and the wait is seen.
        let mut watch = bounded(
            "watch the lock",
            self.rpc_timeout,
            c.watch(format!("{}/", self.name), Some(WatchOptions::new().with_prefix())),
        )
        .await?;
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

    /// Takes back the slot `node` holds from before a restart (a reboot of
    /// its host, see [`LockGuard::hold_through`]), binding it to a new lease
    /// of this lock's TTL kept alive by this process. Returns the guard and
    /// the holder metadata as it was stored, or `None` when `node` holds no
    /// slot. The slot's value is left as it was until the caller releases it.
    pub async fn reclaim(&self, node: &str) -> Result<Option<(LockGuard, Holder)>, LockError> {
        let t = self.rpc_timeout;
        let mut c = self.client.clone();
        let r = bounded("read the holders", t, c.get(format!("{}/", self.name), Some(GetOptions::new().with_prefix())))
            .await?;
        for kv in r.kvs() {
            let Ok(holder) = serde_json::from_slice::<Holder>(kv.value()) else { continue };
            if holder.node != node {
                continue;
            }
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let sent = Instant::now();
            let lease = bounded("grant a lease", t, c.lease_grant(self.ttl_secs(), None)).await?.id();
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then([TxnOp::put(key.clone(), kv.value().to_vec(), Some(PutOptions::new().with_lease(lease)))]);
            match bounded("reclaim the slot", t, c.txn(txn)).await {
                Ok(r) if r.succeeded() => {}
                other => {
                    let _ = bounded("revoke the lease", t, c.lease_revoke(lease)).await;
                    return match other {
                        Err(e) => Err(e),
                        // Changed (expired, released) between the read and the txn.
                        Ok(_) => Ok(None),
                    };
                }
            }
            if kv.lease() != 0 {
                let _ = bounded("revoke the lease", t, c.lease_revoke(kv.lease())).await;
            }
            let mut fence = LeaseFence::new(self.ttl);
            fence.renewed(sent);
            let (keepalive, fence, lost) = self.spawn_keepalive(lease, fence);
            tracing::info!(lock = %self.name, key = %key, node, lease, "lock slot reclaimed after a restart");
            return Ok(Some((LockGuard { client: c, key, lease, rpc_timeout: t, keepalive, fence, lost }, holder)));
        }
        Ok(None)
    }

    /// The lock's name (its key prefix).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current holders. A slot whose value is not holder metadata is an
    /// error naming its key, not a free slot.
    pub async fn holders(&self) -> Result<Vec<Holder>, LockError> {
        let mut c = self.client.clone();
        let r = bounded(
            "read the holders",
            self.rpc_timeout,
            c.get(format!("{}/", self.name), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        r.kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice(kv.value()).map_err(|e| LockError::Unreadable {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    message: e.to_string(),
                })
            })
            .collect()
    }
}
