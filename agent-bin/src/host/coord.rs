//! The fleet's shared state: each host's health marker (expiring, so a dead
//! host's marker does not count), the last completed reboot (for the
//! fleet-wide cooldown) and the reboot lock, behind [`FleetStore`]: etcd
//! ([`EtcdFleet`]) or Kubernetes Leases ([`super::kube_fleet::KubeFleet`]).
//!
//! etcd keys under the configured prefix `P`:
//!
//! | key | value |
//! |---|---|
//! | `P/lock/slot-0` | the lock holder `{node, pid, acquired_at[, boot_id, rebooting_since]}` |
//! | `P/health/<host>` | `{node, state, reason, at}`, bound to a lease of `coordination.health_ttl` |
//! | `P/last-reboot` | `{node, at}` of the last reboot that completed (host back and healthy) |

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use state_store::{Holder, LockError, LockGuard, RemediationLock};

use super::config::{CoordinationSection, EtcdSection, PolicySection};

/// The longest reason a marker keeps (bytes).
pub const MAX_REASON: usize = 512;

/// A host's state as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// The health gate passes.
    Healthy,
    /// The health gate fails: no other host reboots.
    Unhealthy,
    /// The host is rebooting (it holds the lock).
    Rebooting,
}

/// One host's health marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The host.
    pub node: String,
    /// Its state.
    pub state: HostState,
    /// Why (the gate's verdict).
    pub reason: String,
    /// When it reported (RFC 3339).
    pub at: String,
}

/// The last reboot that completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReboot {
    /// The host.
    pub node: String,
    /// When it was back and healthy (RFC 3339).
    pub at: String,
    /// The same, in Unix milliseconds.
    pub at_ms: u64,
}

/// The fleet as the markers show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetView {
    /// Hosts reporting healthy (this one included).
    pub healthy: Vec<String>,
    /// Hosts reporting unhealthy, with their reasons.
    pub unhealthy: Vec<(String, String)>,
    /// Hosts reporting that they are rebooting.
    pub rebooting: Vec<String>,
    /// Markers that could not be read (counted as unhealthy).
    pub unreadable: Vec<String>,
}

impl FleetView {
    /// Hosts that report at all.
    #[must_use]
    pub fn known(&self) -> usize {
        self.healthy.len() + self.unhealthy.len() + self.rebooting.len() + self.unreadable.len()
    }

    /// Replaces `me`'s entry by its current gate verdict (`None`: no gate
    /// ran, counted healthy).
    pub fn overlay(&mut self, me: &str, gate: Option<(bool, &str)>) {
        self.healthy.retain(|h| h != me);
        self.unhealthy.retain(|(h, _)| h != me);
        self.rebooting.retain(|h| h != me);
        self.unreadable.retain(|h| h != me);
        match gate {
            Some((false, why)) => self.unhealthy.push((me.to_owned(), why.to_owned())),
            _ => self.healthy.push(me.to_owned()),
        }
    }

    /// Why the policy holds a reboot of `me` back, or `None` when it allows it.
    #[must_use]
    pub fn blocks(&self, me: &str, p: &PolicySection) -> Option<String> {
        let known = self.known();
        if known < p.min_known_hosts as usize {
            return Some(format!(
                "only {known} host(s) report health and policy.min_known_hosts is {}: a partition or a fleet still \
                 starting looks like a small fleet",
                p.min_known_hosts
            ));
        }
        if p.block_on_unhealthy_peer {
            if let Some((host, why)) = self.unhealthy.iter().find(|(h, _)| h != me) {
                return Some(format!("host {host} reports unhealthy: {why}"));
            }
            if let Some(host) = self.unreadable.first() {
                return Some(format!("the health marker of {host} cannot be read"));
            }
        }
        // Healthy hosts that stay up while this one reboots.
        let others = self.healthy.iter().filter(|h| *h != me).count();
        if others < p.min_healthy as usize {
            return Some(format!(
                "{others} other host(s) healthy, policy.min_healthy needs {} to stay up during a reboot",
                p.min_healthy
            ));
        }
        let fleet = known.max(p.expected_hosts as usize).max(1);
        #[allow(clippy::cast_precision_loss)] // host counts are far below 2^52
        let fraction = others as f64 / fleet as f64;
        if fraction + 1e-9 < p.min_healthy_fraction {
            return Some(format!(
                "{others} of {fleet} hosts would stay healthy ({:.0}%), policy.min_healthy_fraction needs {:.0}%",
                fraction * 100.0,
                p.min_healthy_fraction * 100.0
            ));
        }
        None
    }
}

/// etcd failed or answered something unusable.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A call failed.
    #[error("etcd ({what}): {source}")]
    Etcd {
        /// The call.
        what: &'static str,
        /// Why.
        #[source]
        source: etcd_client::Error,
    },
    /// A call did not answer in time.
    #[error("etcd did not answer ({what}) within {after:?}")]
    Timeout {
        /// The call.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The Kubernetes API failed.
    #[error("Kubernetes API ({what}): {message}")]
    Kube {
        /// The call.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A file the configuration names cannot be read.
    #[error("{key}: {message}")]
    File {
        /// The setting.
        key: String,
        /// Why.
        message: String,
    },
    /// The lock is no longer ours.
    #[error("the lock {key} is no longer held by this host")]
    Lost {
        /// The lock's key or object.
        key: String,
    },
    /// A value is not what this agent writes.
    #[error("the value of {key} cannot be read ({message}); inspect it with etcdctl get {key}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
}

/// A held reboot lock.
#[async_trait]
pub trait HeldLock: Send + Sync {
    /// The lock's key (etcd) or object (`namespace/name`).
    fn key(&self) -> String;
    /// Whether the lock may belong to someone else now (no renewal confirmed
    /// for its TTL minus a margin, on the monotonic clock, or taken over).
    fn is_lost(&self) -> bool;
    /// When it counts as lost unless a renewal is confirmed before.
    fn valid_until(&self) -> Option<tokio::time::Instant>;
    /// Releases it at once.
    async fn release(self: Box<Self>) -> Result<(), CoordError>;
    /// Keeps it held through a reboot of this host for at most `ttl`, with
    /// `holder`'s metadata (boot id), renewed by nobody: it frees itself
    /// unless this host reclaims it ([`FleetStore::reclaim`]).
    async fn hold_through(self: Box<Self>, holder: &Holder, ttl: Duration) -> Result<(), CoordError>;
}

/// Where the fleet coordinates (see the module docs).
#[async_trait]
pub trait FleetStore: Send + Sync {
    /// The lock's key or object, for logs and the gate's environment.
    fn lock_key(&self) -> String;
    /// Publishes this host's marker, expiring after `coordination.health_ttl`.
    async fn publish(&self, state: HostState, reason: &str) -> Result<(), CoordError>;
    /// Every live marker.
    async fn fleet(&self) -> Result<FleetView, CoordError>;
    /// The last completed reboot.
    async fn last_reboot(&self) -> Result<Option<LastReboot>, CoordError>;
    /// Records that this host's reboot completed now.
    async fn record_reboot(&self) -> Result<(), CoordError>;
    /// Takes the lock now, or `None` when another host holds it.
    async fn try_lock(&self, holder: &Holder) -> Result<Option<Box<dyn HeldLock>>, CoordError>;
    /// Waits up to `wait` for the lock; `None` when it stayed taken.
    async fn lock(&self, holder: &Holder, wait: Duration) -> Result<Option<Box<dyn HeldLock>>, CoordError>;
    /// Who holds the lock.
    async fn holders(&self) -> Result<Vec<Holder>, CoordError>;
    /// Takes back the lock this host held before it restarted, with the
    /// metadata it wrote then.
    async fn reclaim(&self) -> Result<Option<(Box<dyn HeldLock>, Holder)>, CoordError>;
}

struct EtcdHeld {
    guard: LockGuard,
}

#[async_trait]
impl HeldLock for EtcdHeld {
    fn key(&self) -> String {
        self.guard.key().to_owned()
    }
    fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }
    fn valid_until(&self) -> Option<tokio::time::Instant> {
        self.guard.valid_until()
    }
    async fn release(self: Box<Self>) -> Result<(), CoordError> {
        Ok(self.guard.release().await?)
    }
    async fn hold_through(self: Box<Self>, holder: &Holder, ttl: Duration) -> Result<(), CoordError> {
        self.guard.hold_through(holder, ttl).await?;
        Ok(())
    }
}

fn held(guard: LockGuard) -> Box<dyn HeldLock> {
    Box::new(EtcdHeld { guard })
}

#[async_trait]
impl FleetStore for EtcdFleet {
    fn lock_key(&self) -> String {
        format!("{}/slot-0", self.lock.name())
    }
    async fn publish(&self, state: HostState, reason: &str) -> Result<(), CoordError> {
        self.put_marker(state, reason).await
    }
    async fn fleet(&self) -> Result<FleetView, CoordError> {
        self.read_fleet().await
    }
    async fn last_reboot(&self) -> Result<Option<LastReboot>, CoordError> {
        self.read_last_reboot().await
    }
    async fn record_reboot(&self) -> Result<(), CoordError> {
        self.write_last_reboot().await
    }
    async fn try_lock(&self, holder: &Holder) -> Result<Option<Box<dyn HeldLock>>, CoordError> {
        Ok(self.lock.try_acquire(holder).await?.map(held))
    }
    async fn lock(&self, holder: &Holder, wait: Duration) -> Result<Option<Box<dyn HeldLock>>, CoordError> {
        match self.lock.acquire(holder, wait).await {
            Ok(g) => Ok(Some(held(g))),
            Err(LockError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    async fn holders(&self) -> Result<Vec<Holder>, CoordError> {
        Ok(self.lock.holders().await?)
    }
    async fn reclaim(&self) -> Result<Option<(Box<dyn HeldLock>, Holder)>, CoordError> {
        Ok(self.lock.reclaim(&self.node).await?.map(|(g, h)| (held(g), h)))
    }
}

/// The TLS settings of `[etcd]` (CA, and a client identity when set), read
/// by state-store's `EtcdTls` (the etcd store's TLS, the same files).
fn tls(e: &EtcdSection) -> Result<etcd_client::TlsOptions, CoordError> {
    let mut t = state_store::EtcdTls::with_ca(&e.ca_file);
    if !e.cert_file.as_os_str().is_empty() {
        t = t.with_identity(&e.cert_file, &e.key_file);
    }
    t.options().map_err(|err| CoordError::File {
        key: format!("etcd.{}", err.setting),
        message: format!("{}: {}", err.path.display(), err.message),
    })
}

/// The fleet's shared state in etcd.
#[derive(Clone)]
pub struct EtcdFleet {
    client: Client,
    prefix: String,
    node: String,
    timeout: Duration,
    health_ttl: Duration,
    rebooting_ttl: Duration,
    lock: RemediationLock,
    marker_lease: std::sync::Arc<parking_lot::Mutex<Option<i64>>>,
}

impl std::fmt::Debug for EtcdFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdFleet").field("prefix", &self.prefix).field("node", &self.node).finish_non_exhaustive()
    }
}

async fn bounded<T>(
    what: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, CoordError> {
    match tokio::time::timeout(after, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(CoordError::Etcd { what, source }),
        Err(_) => Err(CoordError::Timeout { what, after }),
    }
}

/// The current time as RFC 3339 and Unix milliseconds.
#[must_use]
pub fn now() -> (String, u64) {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    (health_core::Timestamp::from_millis(ms).to_string(), ms)
}

impl EtcdFleet {
    /// Connects to etcd (lazily: the first call connects).
    /// A `Rebooting` marker lasts `rebooting_ttl` (at least the health TTL):
    /// a host that never comes back counts as down for the whole hold.
    pub async fn connect(
        e: &EtcdSection,
        c: &CoordinationSection,
        node: &str,
        rebooting_ttl: Duration,
    ) -> Result<EtcdFleet, CoordError> {
        // No per-request timeout on the channel: it would end the lock's watch and
        // keep-alive streams. Each call is bounded by `bounded` instead.
        let mut opts = ConnectOptions::new().with_connect_timeout(c.call_timeout);
        if !e.ca_file.as_os_str().is_empty() {
            opts = opts.with_tls(tls(e)?);
        }
        if !e.username.is_empty() {
            let password = std::fs::read_to_string(&e.password_file).map_err(|err| CoordError::File {
                key: "etcd.password_file".into(),
                message: format!("{}: {err}", e.password_file.display()),
            })?;
            opts = opts.with_user(e.username.clone(), password.trim_end_matches(['\n', '\r']).to_owned());
        }
        let client = bounded("connect", c.call_timeout, Client::connect(e.endpoints.clone(), Some(opts))).await?;
        let prefix = e.prefix.trim_end_matches('/').to_owned();
        let lock = RemediationLock::new(client.clone(), format!("{prefix}/lock"), 1, c.lock_ttl)?
            .with_rpc_timeout(c.call_timeout)?;
        Ok(EtcdFleet {
            client,
            prefix,
            node: node.to_owned(),
            timeout: c.call_timeout,
            health_ttl: c.health_ttl,
            rebooting_ttl: rebooting_ttl.max(c.health_ttl),
            lock,
            marker_lease: std::sync::Arc::default(),
        })
    }

    fn health_key(&self, node: &str) -> String {
        format!("{}/health/{node}", self.prefix)
    }

    fn last_reboot_key(&self) -> String {
        format!("{}/last-reboot", self.prefix)
    }

    /// Publishes this host's marker under a fresh lease of `coordination.health_ttl`
    /// (the previous lease is revoked), so it expires if the host stops.
    async fn put_marker(&self, state: HostState, reason: &str) -> Result<(), CoordError> {
        let mut c = self.client.clone();
        let t = self.timeout;
        let ttl = if state == HostState::Rebooting { self.rebooting_ttl } else { self.health_ttl };
        let ttl = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        let lease = bounded("grant the health lease", t, c.lease_grant(ttl, None)).await?.id();
        let marker = Marker {
            node: self.node.clone(),
            state,
            reason: health_checks::shorten(reason, MAX_REASON).into_owned(),
            at: now().0,
        };
        let value = serde_json::to_vec(&marker).unwrap_or_default();
        if let Err(e) = bounded(
            "publish health",
            t,
            c.put(self.health_key(&self.node), value, Some(PutOptions::new().with_lease(lease))),
        )
        .await
        {
            let _ = bounded("revoke the lease", t, c.lease_revoke(lease)).await;
            return Err(e);
        }
        let old = self.marker_lease.lock().replace(lease);
        if let Some(old) = old {
            let _ = bounded("revoke the old health lease", t, c.lease_revoke(old)).await;
        }
        Ok(())
    }

    /// Every host's marker.
    async fn read_fleet(&self) -> Result<FleetView, CoordError> {
        let mut c = self.client.clone();
        let prefix = format!("{}/health/", self.prefix);
        let r =
            bounded("read health markers", self.timeout, c.get(prefix.clone(), Some(GetOptions::new().with_prefix())))
                .await?;
        let mut view = FleetView::default();
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let host = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
            match serde_json::from_slice::<Marker>(kv.value()) {
                Ok(m) => match m.state {
                    HostState::Healthy => view.healthy.push(host),
                    HostState::Unhealthy => view.unhealthy.push((host, m.reason)),
                    HostState::Rebooting => view.rebooting.push(host),
                },
                Err(_) => view.unreadable.push(host),
            }
        }
        Ok(view)
    }

    /// The last completed reboot, if any.
    async fn read_last_reboot(&self) -> Result<Option<LastReboot>, CoordError> {
        let mut c = self.client.clone();
        let key = self.last_reboot_key();
        let r = bounded("read the last reboot", self.timeout, c.get(key.clone(), None)).await?;
        let Some(kv) = r.kvs().first() else { return Ok(None) };
        serde_json::from_slice(kv.value()).map(Some).map_err(|e| CoordError::Unreadable { key, message: e.to_string() })
    }

    /// Records that this host's reboot completed now.
    async fn write_last_reboot(&self) -> Result<(), CoordError> {
        let mut c = self.client.clone();
        let (at, at_ms) = now();
        let value = serde_json::to_vec(&LastReboot { node: self.node.clone(), at, at_ms }).unwrap_or_default();
        bounded("record the reboot", self.timeout, c.put(self.last_reboot_key(), value, None)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(healthy: &[&str], unhealthy: &[&str], rebooting: &[&str]) -> FleetView {
        FleetView {
            healthy: healthy.iter().map(|h| (*h).to_owned()).collect(),
            unhealthy: unhealthy.iter().map(|h| ((*h).to_owned(), "disk".to_owned())).collect(),
            rebooting: rebooting.iter().map(|h| (*h).to_owned()).collect(),
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn policy_thresholds() {
        let p = PolicySection::default();
        assert_eq!(view(&["a", "b"], &[], &[]).blocks("a", &p), None);
        let why = view(&["a"], &["b"], &[]).blocks("a", &p).unwrap();
        assert!(why.contains("host b reports unhealthy: disk"), "{why}");
        // This host's own unhealthy marker is its gate's business.
        assert_eq!(view(&["b"], &["a"], &[]).blocks("a", &p), None);
        let lenient = PolicySection { block_on_unhealthy_peer: false, ..p.clone() };
        assert_eq!(view(&["a"], &["b"], &[]).blocks("a", &lenient), None);

        let count = PolicySection { min_healthy: 3, ..p.clone() };
        assert!(view(&["a", "b", "c"], &[], &["d"]).blocks("a", &count).unwrap().contains("2 other host(s)"));
        assert_eq!(view(&["a", "b", "c", "d"], &[], &[]).blocks("a", &count), None);

        // 4 of 5 stay up: 80 %.
        let frac = PolicySection { min_healthy_fraction: 0.8, ..p.clone() };
        assert_eq!(view(&["a", "b", "c", "d", "e"], &[], &[]).blocks("a", &frac), None);
        assert!(view(&["a", "b", "c", "d"], &[], &["e"]).blocks("a", &frac).is_some());
        // Hosts that do not report count against the fraction.
        let expected = PolicySection { expected_hosts: 10, ..frac.clone() };
        assert!(view(&["a", "b", "c", "d", "e"], &[], &[]).blocks("a", &expected).unwrap().contains("4 of 10"));

        let known = PolicySection { min_known_hosts: 3, ..p };
        assert!(view(&["a", "b"], &[], &[]).blocks("a", &known).unwrap().contains("min_known_hosts"));
    }
}
