//! The fleet's shared state on Kubernetes Leases, for clusters whose hosts
//! cannot reach etcd (`coordination.backend = "kubernetes"`).
//!
//! In the configured namespace, with the name prefix `P`:
//!
//! | Lease | what |
//! |---|---|
//! | `P-lock` | the reboot lock: `holderIdentity` = host, `leaseDurationSeconds`, `renewTime`; the holder metadata in the annotation `node-agent.io/holder` |
//! | `P-health-<host>` | a host's health marker (annotation `node-agent.io/marker`), live while `renewTime + leaseDurationSeconds` is ahead; label `node-agent.io/fleet=P` |
//! | `P-last-reboot` | the last completed reboot (annotation `node-agent.io/last-reboot`) |
//!
//! Every write carries the `resourceVersion` it read, so two hosts racing
//! for the lock cannot both win (409). Expiry is judged on the reader's wall
//! clock against the writer's `renewTime`: keep the hosts' clocks in sync
//! (NTP), and keep `lock_ttl` well above the skew. A holder stops counting
//! on the lock `lock_ttl − margin` after its last confirmed renewal, on its
//! monotonic clock, before any other host can see it expired.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::LeaseFence;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{ListParams, PostParams};
use parking_lot::Mutex;
use state_store::Holder;
use tokio::time::Instant;

use super::coord::{CoordError, FleetStore, FleetView, HeldLock, HostState, LastReboot, Marker, now};

/// The annotation holding the lock holder's metadata.
pub const HOLDER_ANNOTATION: &str = "node-agent.io/holder";
/// The annotation holding a health marker.
pub const MARKER_ANNOTATION: &str = "node-agent.io/marker";
/// The annotation holding the last completed reboot.
pub const LAST_REBOOT_ANNOTATION: &str = "node-agent.io/last-reboot";
/// The label grouping a fleet's health markers.
pub const FLEET_LABEL: &str = "node-agent.io/fleet";

/// Settings of the Kubernetes backend.
#[derive(Clone, Debug)]
pub struct KubeFleetSettings {
    /// The namespace of the Leases.
    pub namespace: String,
    /// The Leases' name prefix.
    pub prefix: String,
    /// This host.
    pub node: String,
    /// The lock's TTL while its holder runs.
    pub lock_ttl: Duration,
    /// A marker's TTL.
    pub health_ttl: Duration,
    /// A `Rebooting` marker's TTL (the reboot hold).
    pub rebooting_ttl: Duration,
    /// Each call's deadline.
    pub call_timeout: Duration,
    /// The lock Lease's full name (default `<prefix>-lock`).
    pub lock_name: Option<String>,
}

/// The fleet on Kubernetes Leases.
#[derive(Clone)]
pub struct KubeFleet {
    api: Api<Lease>,
    s: Arc<KubeFleetSettings>,
}

impl std::fmt::Debug for KubeFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeFleet").field("namespace", &self.s.namespace).field("prefix", &self.s.prefix).finish()
    }
}

async fn bounded<T>(
    what: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CoordError> {
    match tokio::time::timeout(after, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CoordError::Kube { what, message: e.to_string() }),
        Err(_) => Err(CoordError::Timeout { what, after }),
    }
}

fn conflict_or_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn micro_now() -> MicroTime {
    let ms = i64::try_from(now().1).unwrap_or(i64::MAX);
    MicroTime(jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Whether a Lease's holder is still within its duration (reader's clock).
fn live(l: &Lease) -> bool {
    let Some(spec) = &l.spec else { return false };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let (Some(renew), Some(dur)) = (&spec.renew_time, spec.lease_duration_seconds) else { return false };
    let until = renew.0.as_millisecond().saturating_add(i64::from(dur).saturating_mul(1000));
    i64::try_from(now().1).unwrap_or(i64::MAX) < until
}

fn annotation<'a>(l: &'a Lease, key: &str) -> Option<&'a str> {
    l.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

impl KubeFleet {
    /// The backend over `client`.
    #[must_use]
    pub fn new(client: kube::Client, settings: KubeFleetSettings) -> KubeFleet {
        KubeFleet { api: Api::namespaced(client, &settings.namespace), s: Arc::new(settings) }
    }

    fn lock_name(&self) -> String {
        self.s.lock_name.clone().unwrap_or_else(|| format!("{}-lock", self.s.prefix))
    }

    fn marker_name(&self, host: &str) -> String {
        format!("{}-health-{host}", self.s.prefix)
    }

    fn last_name(&self) -> String {
        format!("{}-last-reboot", self.s.prefix)
    }

    /// Reads a Lease. A read is safe to repeat: a connection-level failure
    /// (a request that never got an answer) is tried twice more within the
    /// call's time limit before the backend counts as failed.
    async fn get(&self, name: &str) -> Result<Option<Lease>, CoordError> {
        let what = "get a Lease";
        let after = self.s.call_timeout;
        let deadline = tokio::time::Instant::now() + after;
        let mut retries = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.api.get_opt(name)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !matches!(e, kube::Error::Api(_)) && retries < 2 => {
                    retries += 1;
                    tracing::debug!(error = %e, retries, "reading a Lease failed at the connection; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Err(e)) => return Err(CoordError::Kube { what, message: e.to_string() }),
                Err(_) => return Err(CoordError::Timeout { what, after }),
            }
        }
    }

    /// Creates `lease`, or replaces the one read (`rv`); false on a conflict.
    async fn write(&self, lease: Lease, existed: bool) -> Result<bool, CoordError> {
        let t = self.s.call_timeout;
        let pp = PostParams { field_manager: Some("node-agent".into()), ..PostParams::default() };
        let name = lease.metadata.name.clone().unwrap_or_default();
        let r = if existed {
            tokio::time::timeout(t, self.api.replace(&name, &pp, &lease)).await
        } else {
            tokio::time::timeout(t, self.api.create(&pp, &lease)).await
        };
        match r {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if conflict_or_exists(&e) => Ok(false),
            Ok(Err(e)) => Err(CoordError::Kube { what: "write a Lease", message: e.to_string() }),
            Err(_) => Err(CoordError::Timeout { what: "write a Lease", after: t }),
        }
    }

    fn lease(&self, name: String, old: Option<Lease>, spec: LeaseSpec, annotations: &[(&str, String)]) -> Lease {
        let mut meta =
            old.map(|l| l.metadata).unwrap_or_else(|| ObjectMeta { name: Some(name), ..ObjectMeta::default() });
        let map = meta.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in annotations {
            map.insert((*k).to_owned(), v.clone());
        }
        Lease { metadata: meta, spec: Some(spec) }
    }

    /// Writes the lock held by this host for `ttl`, over `old` (its read);
    /// false when someone else wrote first.
    async fn write_lock(&self, old: Option<Lease>, holder: &Holder, ttl: Duration) -> Result<bool, CoordError> {
        let existed = old.is_some();
        let transitions = old.as_ref().and_then(|l| l.spec.as_ref()).and_then(|s| s.lease_transitions).unwrap_or(0);
        let same = old
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| h == self.s.node);
        let spec = LeaseSpec {
            holder_identity: Some(self.s.node.clone()),
            lease_duration_seconds: Some(secs(ttl)),
            acquire_time: if same {
                old.as_ref().and_then(|l| l.spec.as_ref()).and_then(|s| s.acquire_time.clone())
            } else {
                Some(micro_now())
            },
            renew_time: Some(micro_now()),
            lease_transitions: Some(if same { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        };
        let value = serde_json::to_string(holder).unwrap_or_default();
        let lease = self.lease(self.lock_name(), old, spec, &[(HOLDER_ANNOTATION, value)]);
        self.write(lease, existed).await
    }

    /// A fence for a Lease of `ttl`, renewed at `sent`; built from the whole
    /// seconds the Lease really carries.
    fn fence(&self, sent: Instant) -> LeaseFence {
        let mut fence = LeaseFence::new(Duration::from_secs(u64::try_from(secs(self.s.lock_ttl)).unwrap_or(1)));
        fence.renewed(sent);
        fence
    }

    /// Keeps the lock held by `mine` (the holder metadata written when it was
    /// taken: a Lease rewritten by anyone else, even under the same
    /// identity, is a takeover).
    fn held(&self, fence: LeaseFence, mine: Holder) -> Box<dyn HeldLock> {
        let fence = Arc::new(Mutex::new(fence));
        let (me, f) = (self.clone(), Arc::clone(&fence));
        let every = (self.s.lock_ttl / 3).max(Duration::from_millis(500));
        let taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gone = Arc::clone(&taken);
        let renewer = tokio::spawn(async move {
            let mut next = Instant::now() + every;
            loop {
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                let renewed = async {
                    let Some(l) = me.get(&me.lock_name()).await? else { return Ok(false) };
                    let identity =
                        l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(me.s.node.as_str());
                    let stored: Option<Holder> =
                        annotation(&l, HOLDER_ANNOTATION).and_then(|v| serde_json::from_str(v).ok());
                    if !identity || stored.as_ref() != Some(&mine) {
                        return Ok(false);
                    }
                    me.write_lock(Some(l), &mine, me.s.lock_ttl).await
                }
                .await;
                match renewed {
                    Ok(true) => {
                        f.lock().renewed(sent);
                        next = sent + every;
                    }
                    Ok(false) => {
                        gone.store(true, std::sync::atomic::Ordering::SeqCst);
                        tracing::error!(lock = %me.lock_name(), "the lock Lease was taken over: stop disruptive work");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(lock = %me.lock_name(), error = %e, "cannot renew the lock Lease; retrying soon");
                        next = Instant::now() + every / 4;
                    }
                }
            }
        });
        Box::new(KubeHeld { fleet: self.clone(), renewer, fence, taken })
    }
}

struct KubeHeld {
    fleet: KubeFleet,
    renewer: tokio::task::JoinHandle<()>,
    fence: Arc<Mutex<LeaseFence>>,
    taken: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for KubeHeld {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl KubeHeld {
    /// The lock as read, if it is still this host's and its fence holds.
    async fn ours(&self) -> Result<Lease, CoordError> {
        let key = self.fleet.lock_name();
        if !self.fence.lock().is_valid(Instant::now()) {
            return Err(CoordError::Lost { key });
        }
        match self.fleet.get(&key).await? {
            Some(l)
                if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.fleet.s.node.as_str()) =>
            {
                Ok(l)
            }
            _ => Err(CoordError::Lost { key }),
        }
    }
}

#[async_trait]
impl HeldLock for KubeHeld {
    fn key(&self) -> String {
        format!("{}/{}", self.fleet.s.namespace, self.fleet.lock_name())
    }

    fn is_lost(&self) -> bool {
        self.taken.load(std::sync::atomic::Ordering::SeqCst) || !self.fence.lock().is_valid(Instant::now())
    }

    fn valid_until(&self) -> Option<Instant> {
        self.fence.lock().valid_until()
    }

    async fn release(self: Box<Self>) -> Result<(), CoordError> {
        self.renewer.abort();
        let mut l = self.ours().await?;
        if let Some(spec) = l.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        if let Some(a) = l.metadata.annotations.as_mut() {
            a.remove(HOLDER_ANNOTATION);
        }
        if self.fleet.write(l, true).await? { Ok(()) } else { Err(CoordError::Lost { key: self.key() }) }
    }

    async fn hold_through(self: Box<Self>, holder: &Holder, ttl: Duration) -> Result<(), CoordError> {
        self.renewer.abort();
        let l = self.ours().await?;
        if self.fleet.write_lock(Some(l), holder, ttl).await? {
            tracing::info!(lock = %self.key(), ttl_secs = ttl.as_secs(), "lock Lease held through the reboot");
            Ok(())
        } else {
            Err(CoordError::Lost { key: self.key() })
        }
    }
}

#[async_trait]
impl FleetStore for KubeFleet {
    fn lock_key(&self) -> String {
        format!("{}/{}", self.s.namespace, self.lock_name())
    }

    async fn publish(&self, state: HostState, reason: &str) -> Result<(), CoordError> {
        let name = self.marker_name(&self.s.node);
        let old = self.get(&name).await?;
        let existed = old.is_some();
        let marker = Marker {
            node: self.s.node.clone(),
            state,
            reason: health_checks::shorten(reason, super::coord::MAX_REASON).into_owned(),
            at: now().0,
        };
        let spec = LeaseSpec {
            holder_identity: Some(self.s.node.clone()),
            lease_duration_seconds: Some(secs(if state == HostState::Rebooting {
                self.s.rebooting_ttl.max(self.s.health_ttl)
            } else {
                self.s.health_ttl
            })),
            renew_time: Some(micro_now()),
            ..LeaseSpec::default()
        };
        let mut lease =
            self.lease(name, old, spec, &[(MARKER_ANNOTATION, serde_json::to_string(&marker).unwrap_or_default())]);
        lease.metadata.labels.get_or_insert_with(BTreeMap::new).insert(FLEET_LABEL.into(), self.s.prefix.clone());
        if self.write(lease, existed).await? {
            Ok(())
        } else {
            Err(CoordError::Kube { what: "publish health", message: "the marker changed under this host (409)".into() })
        }
    }

    async fn fleet(&self) -> Result<FleetView, CoordError> {
        let lp = ListParams::default().labels(&format!("{FLEET_LABEL}={}", self.s.prefix));
        let list = bounded("list health markers", self.s.call_timeout, self.api.list(&lp)).await?;
        let mut view = FleetView::default();
        for l in list.items.iter().filter(|l| live(l)) {
            let host = l.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
            match annotation(l, MARKER_ANNOTATION).and_then(|v| serde_json::from_str::<Marker>(v).ok()) {
                Some(m) => match m.state {
                    HostState::Healthy => view.healthy.push(host),
                    HostState::Unhealthy => view.unhealthy.push((host, m.reason)),
                    HostState::Rebooting => view.rebooting.push(host),
                },
                None => view.unreadable.push(host),
            }
        }
        Ok(view)
    }

    async fn last_reboot(&self) -> Result<Option<LastReboot>, CoordError> {
        let name = self.last_name();
        let Some(l) = self.get(&name).await? else { return Ok(None) };
        let Some(v) = annotation(&l, LAST_REBOOT_ANNOTATION) else { return Ok(None) };
        serde_json::from_str(v).map(Some).map_err(|e| CoordError::Unreadable {
            key: format!("Lease {}/{name} annotation {LAST_REBOOT_ANNOTATION}", self.s.namespace),
            message: e.to_string(),
        })
    }

    async fn record_reboot(&self) -> Result<(), CoordError> {
        let (at, at_ms) = now();
        let value = serde_json::to_string(&LastReboot { node: self.s.node.clone(), at, at_ms }).unwrap_or_default();
        for _ in 0..3 {
            let old = self.get(&self.last_name()).await?;
            let existed = old.is_some();
            let spec = LeaseSpec { holder_identity: Some(self.s.node.clone()), ..LeaseSpec::default() };
            let lease = self.lease(self.last_name(), old, spec, &[(LAST_REBOOT_ANNOTATION, value.clone())]);
            if self.write(lease, existed).await? {
                return Ok(());
            }
        }
        Err(CoordError::Kube { what: "record the reboot", message: "kept conflicting (409) three times".into() })
    }

    async fn try_lock(&self, holder: &Holder) -> Result<Option<Box<dyn HeldLock>>, CoordError> {
        let old = self.get(&self.lock_name()).await?;
        if old.as_ref().is_some_and(live) {
            return Ok(None);
        }
        let sent = Instant::now();
        if !self.write_lock(old, holder, self.s.lock_ttl).await? {
            return Ok(None);
        }
        tracing::info!(lock = %self.lock_key(), node = %self.s.node, "lock Lease acquired");
        Ok(Some(self.held(self.fence(sent), holder.clone())))
    }

    async fn lock(&self, holder: &Holder, wait: Duration) -> Result<Option<Box<dyn HeldLock>>, CoordError> {
        // A Lease expires by time, with no event: look again when it would
        // expire, at least every second (to see a release soon).
        let deadline = Instant::now() + wait;
        loop {
            if let Some(g) = self.try_lock(holder).await? {
                return Ok(Some(g));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep((deadline - now).min(Duration::from_secs(1))).await;
        }
    }

    async fn holders(&self) -> Result<Vec<Holder>, CoordError> {
        let Some(l) = self.get(&self.lock_name()).await? else { return Ok(Vec::new()) };
        if !live(&l) {
            return Ok(Vec::new());
        }
        let host = l.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
        Ok(vec![
            annotation(&l, HOLDER_ANNOTATION).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_else(|| Holder {
                pid: 0,
                acquired_at: "?".into(),
                ..Holder::now(host)
            }),
        ])
    }

    async fn reclaim(&self) -> Result<Option<(Box<dyn HeldLock>, Holder)>, CoordError> {
        let Some(l) = self.get(&self.lock_name()).await? else { return Ok(None) };
        let ours = l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.s.node.as_str());
        if !ours || !live(&l) {
            return Ok(None);
        }
        let Some(holder) = annotation(&l, HOLDER_ANNOTATION).and_then(|v| serde_json::from_str::<Holder>(v).ok())
        else {
            return Ok(None);
        };
        let sent = Instant::now();
        if !self.write_lock(Some(l), &holder, self.s.lock_ttl).await? {
            return Ok(None);
        }
        tracing::info!(lock = %self.lock_key(), node = %self.s.node, "lock Lease reclaimed after a restart");
        Ok(Some((self.held(self.fence(sent), holder.clone()), holder)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lives_while_renewed_within_its_duration() {
        let mut l = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(30),
                renew_time: Some(micro_now()),
                ..LeaseSpec::default()
            }),
        };
        assert!(live(&l));
        let old = jiff::Timestamp::from_millisecond(i64::try_from(now().1).unwrap() - 31_000).unwrap();
        l.spec.as_mut().unwrap().renew_time = Some(MicroTime(old));
        assert!(!live(&l), "expired");
        l.spec.as_mut().unwrap().renew_time = Some(micro_now());
        l.spec.as_mut().unwrap().holder_identity = None;
        assert!(!live(&l), "released");
    }
}
