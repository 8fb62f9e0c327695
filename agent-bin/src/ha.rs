//! High availability: replicas elect a leader on a Kubernetes Lease; only
//! the leader evaluates and acts (`[ha]`).
//!
//! Fencing: a leader cut off from the API server is never told it lost the
//! Lease. So the leader counts as leader only until `send time of its last
//! confirmed renewal + lease_duration − margin` on its monotonic clock, and
//! the other replicas take the Lease over only after `renewTime +
//! lease_duration` on theirs. When the fence runs out, the leader exits at
//! once (exit code 1, actions in flight abandoned: their records say they
//! started, so the next leader waits them out), and its supervisor restarts
//! it as a standby.

use std::sync::Arc;
use std::time::Duration;

use health_core::HealthManager;
use state_store::Holder;

use crate::config::Config;

// The leader check runs in its own task (see `watchdog`), so a pass that is
// busy (slow checks, store calls) cannot delay the exit past the fence.
use crate::host::coord::{FleetStore, HeldLock};
use crate::host::kube_fleet::{KubeFleet, KubeFleetSettings};

/// This replica leads while this is held.
pub struct Leadership {
    held: Box<dyn HeldLock>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership").field("lease", &self.held.key()).finish()
    }
}

impl Leadership {
    /// The Lease (`namespace/name`).
    #[must_use]
    pub fn lease(&self) -> String {
        self.held.key()
    }

    /// Exits the process (code 1) as soon as leadership is lost, from a task
    /// of its own: whatever the agent is doing, it starts nothing after that.
    pub fn watchdog(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            self.lost().await;
            tracing::error!(lease = %self.lease(), "leadership lost (no renewal confirmed in time, or taken over): exiting now so that two replicas never act; the supervisor restarts this one as a standby");
            std::process::exit(1);
        })
    }

    /// Resolves when this replica may no longer be the leader.
    pub async fn lost(&self) {
        loop {
            if self.held.is_lost() {
                return;
            }
            let now = tokio::time::Instant::now();
            let until = self.held.valid_until().unwrap_or(now).min(now + Duration::from_millis(250));
            tokio::time::sleep_until(until).await;
        }
    }
}

fn lease(client: kube::Client, config: &Config, identity: &str) -> KubeFleet {
    let ha = &config.ha;
    KubeFleet::new(
        client,
        KubeFleetSettings {
            namespace: ha.namespace(),
            prefix: ha.lease_name.clone(),
            node: identity.to_owned(),
            lock_ttl: ha.lease_duration,
            health_ttl: ha.lease_duration,
            rebooting_ttl: ha.lease_duration,
            call_timeout: config.kube.call_timeout.min(ha.lease_duration / 3),
            lock_name: Some(ha.lease_name.clone()),
        },
    )
}

/// `run --once` with `[ha]`: the pass runs only if this replica can take
/// the Lease now (a running leader keeps it).
pub async fn try_lead(client: kube::Client, config: &Config) -> Result<Option<Leadership>, String> {
    let identity = config.ha.identity(&config.agent.instance);
    let fleet = lease(client, config, &identity);
    match fleet.try_lock(&Holder::now(identity)).await {
        Ok(held) => Ok(held.map(|held| Leadership { held })),
        Err(e) => Err(format!("cannot read or take the leader Lease {}: {e}", fleet.lock_key())),
    }
}

/// Waits as a standby (readiness reports standby) until this replica holds
/// the Lease. Errors of the API server are logged and retried.
pub async fn lead(client: kube::Client, config: &Config, health: &Arc<HealthManager>) -> Leadership {
    let ha = &config.ha;
    let identity = ha.identity(&config.agent.instance);
    let fleet = lease(client, config, &identity);
    health.set_standby(true);
    let lease = fleet.lock_key();
    let mut said = String::new();
    loop {
        let holder = Holder::now(identity.clone());
        match fleet.lock(&holder, ha.lease_duration).await {
            Ok(Some(held)) => {
                health.set_standby(false);
                tracing::info!(lease = %lease, identity = %identity, "leadership acquired: this replica evaluates and acts");
                return Leadership { held };
            }
            Ok(None) => {
                let leader =
                    fleet.holders().await.ok().and_then(|h| h.first().map(|h| h.node.clone())).unwrap_or_default();
                if leader != said {
                    tracing::info!(lease = %lease, leader = %leader, identity = %identity, "standby: another replica leads; waiting for its Lease to lapse");
                    said = leader;
                }
            }
            Err(e) => {
                tracing::warn!(lease = %lease, error = %e, "cannot read or take the leader Lease; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
