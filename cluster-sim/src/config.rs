//! The simulator's settings ([`ClusterConfig`]) and their validation.

use std::time::Duration;

use crate::limits::Limits;

/// How big the simulated cluster is and how it behaves.
///
/// Its `Debug` output shows `civo_key` as `"<redacted>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Standard nodes.
    pub nodes: u32,
    /// GPU nodes (in their own pool).
    pub gpu_nodes: u32,
    /// GPUs per GPU node.
    pub gpus_per_node: u32,
    /// Pools the standard nodes are spread over (at least 1).
    pub pools: u32,
    /// Zones (0: nodes carry no zone label; at most 26). Pool `i` (the
    /// standard pools in order, then the GPU pool) is in zone
    /// `{region}-{letter i mod zones}` (`lon1-a`); a replacement node joins
    /// its pool's zone.
    pub zones: u32,
    /// Civo cluster id.
    pub cluster_id: String,
    /// Civo cluster name (also the node name prefix).
    pub cluster_name: String,
    /// Civo region.
    pub region: String,
    /// The Civo API key the simulated API accepts (never shown by `Debug`).
    pub civo_key: String,
    /// Pods per node: one DaemonSet pod and this many ReplicaSet pods.
    pub pods_per_node: u32,
    /// Watch events kept for resuming watches (older versions get 410 Gone).
    pub watch_history: usize,
    /// How often watches receive a BOOKMARK (when they ask for them).
    pub bookmark_interval: Duration,
    /// How often kubelet leases of healthy nodes are renewed (zero: never).
    pub lease_renew_interval: Duration,
    /// Default time a reboot takes.
    pub reboot_takes: Duration,
    /// Time until a replaced instance comes back as a new node.
    pub replace_takes: Duration,
    /// Bounds on request and object sizes, JSON patches and connections.
    pub limits: Limits,
}

impl ClusterConfig {
    /// Checks the settings that would otherwise produce invalid objects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let label = |field: &'static str, v: &str| {
            let ok = !v.is_empty()
                && v.len() <= 40
                && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !v.starts_with('-')
                && !v.ends_with('-');
            if ok {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("{v:?} must be 1-40 lowercase letters, digits or '-', not starting or ending with '-'"),
                ))
            }
        };
        label("cluster_name", &self.cluster_name)?;
        label("region", &self.region)?;
        if self.pools == 0 {
            return Err(ConfigError::new("pools", "must be at least 1"));
        }
        if self.zones > 26 {
            return Err(ConfigError::new("zones", format!("must be at most 26 (one letter each), got {}", self.zones)));
        }
        if self.civo_key.is_empty() {
            return Err(ConfigError::new("civo_key", "must not be empty"));
        }
        if self.gpu_nodes > 0 && self.gpus_per_node == 0 {
            return Err(ConfigError::new("gpus_per_node", "must be at least 1 when there are GPU nodes"));
        }
        self.limits.validate()
    }
}

/// A simulator setting that cannot be used: the field (dotted) and what is
/// wrong with its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct ConfigError {
    /// The setting, e.g. `pools` or `limits.max_connections`.
    pub field: &'static str,
    /// What is wrong, and the accepted form.
    pub problem: String,
}

impl ConfigError {
    /// An error for `field`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError { field, problem: problem.into() }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be left out (or leak) silently.
        let ClusterConfig {
            nodes,
            gpu_nodes,
            gpus_per_node,
            pools,
            zones,
            cluster_id,
            cluster_name,
            region,
            civo_key: _,
            pods_per_node,
            watch_history,
            bookmark_interval,
            lease_renew_interval,
            reboot_takes,
            replace_takes,
            limits,
        } = self;
        f.debug_struct("ClusterConfig")
            .field("nodes", nodes)
            .field("gpu_nodes", gpu_nodes)
            .field("gpus_per_node", gpus_per_node)
            .field("pools", pools)
            .field("zones", zones)
            .field("cluster_id", cluster_id)
            .field("cluster_name", cluster_name)
            .field("region", region)
            .field("civo_key", &"<redacted>")
            .field("pods_per_node", pods_per_node)
            .field("watch_history", watch_history)
            .field("bookmark_interval", bookmark_interval)
            .field("lease_renew_interval", lease_renew_interval)
            .field("reboot_takes", reboot_takes)
            .field("replace_takes", replace_takes)
            .field("limits", limits)
            .finish()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 3,
            gpu_nodes: 0,
            gpus_per_node: 8,
            pools: 1,
            zones: 0,
            cluster_id: "b3a7c6d2-5f1e-4c9a-8d0b-7e6f5a4c3b21".into(),
            cluster_name: "sim".into(),
            region: "lon1".into(),
            civo_key: "sim-civo-key".into(),
            pods_per_node: 2,
            watch_history: 100_000,
            bookmark_interval: Duration::from_secs(1),
            lease_renew_interval: Duration::from_secs(10),
            reboot_takes: Duration::from_secs(30),
            replace_takes: Duration::from_secs(60),
            limits: Limits::default(),
        }
    }
}
