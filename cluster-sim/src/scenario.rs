//! Scenario files (TOML): cluster size, node faults, reboot behaviour and
//! Civo API faults over time.
//!
//! ```toml
//! [cluster]
//! nodes = 6          # standard nodes
//! gpu_nodes = 2
//! pools = 2
//! reboot_takes = "30s"
//!
//! [[fault]]
//! node = "gpu-0"     # the first GPU node; "std-3", or a full node name
//! kind = "gpu-lost"  # not-ready, unknown, memory-pressure, disk-pressure,
//!                    # pid-pressure, gpu-lost, cilium-down, lease-stale,
//!                    # kubelet-stopped, sidecar-503
//! at = "10s"         # after the simulator starts
//! reboot_fixes = true
//! reboot_takes = "2m"
//! relapse_after = "1m" # a reboot fixes it, but it comes back this long after
//! lasts = "30s"      # heals by itself after this long (default: never)
//!
//! [[civo_fault]]
//! status = 500       # answer the next `calls` Civo calls with this status
//! calls = 2
//! delay = "0s"
//! at = "0s"
//! retry_after = 2    # a Retry-After header (seconds) on those answers
//! ```

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::cluster::{CivoFault, Cluster, ClusterConfig, Fault, RebootBehaviour};

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}): expected a number with a unit such as \"30s\" or \"2m\""
        ))
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// The `[cluster]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Standard nodes.
    pub nodes: Option<u32>,
    /// GPU nodes.
    pub gpu_nodes: Option<u32>,
    /// GPUs per GPU node.
    pub gpus_per_node: Option<u32>,
    /// Pools.
    pub pools: Option<u32>,
    /// Zones (standard pool `i` in zone `i mod zones`).
    pub zones: Option<u32>,
    /// Default reboot time.
    #[serde(default, deserialize_with = "opt_duration")]
    pub reboot_takes: Option<Duration>,
    /// Replacement time.
    #[serde(default, deserialize_with = "opt_duration")]
    pub replace_takes: Option<Duration>,
}

/// One `[[fault]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// `std-N`, `gpu-N` or a node name.
    pub node: String,
    /// The fault.
    pub kind: Fault,
    /// When, after start.
    #[serde(default, deserialize_with = "duration")]
    pub at: Duration,
    /// Whether a reboot fixes it (default true).
    #[serde(default = "yes")]
    pub reboot_fixes: bool,
    /// How long a reboot of this node takes.
    #[serde(default, deserialize_with = "opt_duration")]
    pub reboot_takes: Option<Duration>,
    /// Heal the node by itself this long after the fault (a blip); default never.
    #[serde(default, deserialize_with = "opt_duration")]
    pub lasts: Option<Duration>,
    /// After a reboot that fixed it, the fault comes back this long after
    /// the node is up (it passes right after the reboot, then fails).
    #[serde(default, deserialize_with = "opt_duration")]
    pub relapse_after: Option<Duration>,
}

fn yes() -> bool {
    true
}

/// One `[[civo_fault]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CivoFaultSpec {
    /// Status to answer with (0: only delay).
    #[serde(default)]
    pub status: u16,
    /// Calls affected.
    pub calls: u32,
    /// Delay before answering.
    #[serde(default, deserialize_with = "duration")]
    pub delay: Duration,
    /// When, after start.
    #[serde(default, deserialize_with = "duration")]
    pub at: Duration,
    /// A `Retry-After` header (seconds) on the fault's answers.
    #[serde(default)]
    pub retry_after: Option<u32>,
}

/// A whole scenario.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Cluster size and timings.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Node faults.
    #[serde(default, rename = "fault")]
    pub faults: Vec<FaultSpec>,
    /// Civo API faults.
    #[serde(default, rename = "civo_fault")]
    pub civo_faults: Vec<CivoFaultSpec>,
}

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or names an unknown field or value.
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (with line and column, and the accepted values).
        message: String,
    },
    /// A value is out of range or names a node that does not exist.
    #[error("scenario {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The field, e.g. `fault[2].node`.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

impl Scenario {
    /// Parses scenario TOML; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)
            .map_err(|e| ScenarioError::Parse { path: origin.to_owned(), message: e.to_string() })?;
        s.validate(origin)?;
        Ok(s)
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: origin.clone(), source })?;
        Self::parse(&origin, &text)
    }

    fn validate(&self, origin: &str) -> Result<(), ScenarioError> {
        let invalid = |field: String, message: &str| ScenarioError::Invalid {
            path: origin.to_owned(),
            field,
            message: message.to_owned(),
        };
        if self.cluster.pools == Some(0) {
            return Err(invalid("cluster.pools".into(), "must be at least 1"));
        }
        let std_nodes = self.cluster.nodes.unwrap_or(ClusterConfig::default().nodes);
        let gpu_nodes = self.cluster.gpu_nodes.unwrap_or(0);
        for (i, f) in self.faults.iter().enumerate() {
            let field = format!("fault[{i}].node");
            match parse_node_ref(&f.node) {
                Some(NodeRef::Std(n)) if n >= std_nodes => {
                    return Err(invalid(
                        field,
                        &format!(
                            "std-{n} does not exist: the cluster has {std_nodes} standard nodes (std-0 to std-{})",
                            std_nodes.saturating_sub(1)
                        ),
                    ));
                }
                Some(NodeRef::Gpu(n)) if n >= gpu_nodes => {
                    return Err(invalid(
                        field,
                        &format!("gpu-{n} does not exist: the cluster has {gpu_nodes} GPU nodes"),
                    ));
                }
                None => return Err(invalid(field, "expected \"std-N\", \"gpu-N\" or a node name")),
                _ => {}
            }
            if f.kind == Fault::GpuLost && !matches!(parse_node_ref(&f.node), Some(NodeRef::Gpu(_) | NodeRef::Name(_)))
            {
                return Err(invalid(format!("fault[{i}].kind"), "gpu-lost needs a GPU node (\"gpu-N\")"));
            }
        }
        for (i, f) in self.civo_faults.iter().enumerate() {
            if f.status != 0 && !(400..=599).contains(&f.status) {
                return Err(invalid(
                    format!("civo_fault[{i}].status"),
                    "expected 0 (delay only) or an HTTP error status from 400 to 599",
                ));
            }
            if f.calls == 0 {
                return Err(invalid(format!("civo_fault[{i}].calls"), "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Applies the `[cluster]` section to a configuration.
    pub fn apply_config(&self, c: &mut ClusterConfig) {
        let s = &self.cluster;
        c.nodes = s.nodes.unwrap_or(c.nodes);
        c.gpu_nodes = s.gpu_nodes.unwrap_or(c.gpu_nodes);
        c.gpus_per_node = s.gpus_per_node.unwrap_or(c.gpus_per_node);
        c.pools = s.pools.unwrap_or(c.pools);
        c.zones = s.zones.unwrap_or(c.zones);
        c.reboot_takes = s.reboot_takes.unwrap_or(c.reboot_takes);
        c.replace_takes = s.replace_takes.unwrap_or(c.replace_takes);
    }

    /// Resolves node references and schedules every fault on `cluster`
    /// (tasks on the current tokio runtime, stopped by the server's
    /// `shutdown`).
    pub fn spawn(&self, cluster: Cluster) -> Result<(), ScenarioError> {
        let names = cluster.node_names();
        let gpu_hosts: Vec<String> =
            cluster.instances().into_iter().filter(|i| i.gpus > 0).map(|i| i.hostname).collect();
        let (gpu, std): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| gpu_hosts.contains(n));
        let mut plan = Vec::new();
        for (i, f) in self.faults.iter().enumerate() {
            let node = match parse_node_ref(&f.node) {
                Some(NodeRef::Std(n)) => std.get(n as usize).map(|s| (*s).clone()),
                Some(NodeRef::Gpu(n)) => gpu.get(n as usize).map(|s| (*s).clone()),
                Some(NodeRef::Name(n)) => names.iter().find(|x| **x == n).cloned(),
                None => None,
            }
            .ok_or_else(|| ScenarioError::Invalid {
                path: "scenario".into(),
                field: format!("fault[{i}].node"),
                message: format!("no node {:?} in this cluster", f.node),
            })?;
            plan.push((node, f.clone()));
        }
        for (node, f) in plan {
            let c = cluster.clone();
            let takes = f.reboot_takes.unwrap_or(c.config().reboot_takes);
            c.set_reboot(&node, RebootBehaviour { fixes: f.reboot_fixes, takes, relapse_after: f.relapse_after });
            cluster.spawn(async move {
                tokio::time::sleep(f.at).await;
                let _ = c.inject(&node, f.kind);
                if let Some(lasts) = f.lasts {
                    tokio::time::sleep(lasts).await;
                    let _ = c.heal(&node);
                }
            });
        }
        for f in self.civo_faults.clone() {
            let c = cluster.clone();
            cluster.spawn(async move {
                tokio::time::sleep(f.at).await;
                c.civo_fail_next(CivoFault {
                    skip: 0,
                    status: f.status,
                    delay: f.delay,
                    calls: f.calls,
                    retry_after: f.retry_after,
                });
            });
        }
        Ok(())
    }
}

enum NodeRef {
    Std(u32),
    Gpu(u32),
    Name(String),
}

fn parse_node_ref(s: &str) -> Option<NodeRef> {
    if let Some(n) = s.strip_prefix("std-") {
        return n.parse().ok().map(NodeRef::Std);
    }
    if let Some(n) = s.strip_prefix("gpu-") {
        return n.parse().ok().map(NodeRef::Gpu);
    }
    let valid =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    valid.then(|| NodeRef::Name(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_scenario() {
        let s = Scenario::parse(
            "t.toml",
            r#"
[cluster]
nodes = 4
gpu_nodes = 1
reboot_takes = "20s"

[[fault]]
node = "gpu-0"
kind = "gpu-lost"
at = "5s"
reboot_fixes = false

[[civo_fault]]
status = 503
calls = 2
"#,
        )
        .unwrap();
        assert_eq!(s.faults[0].kind, Fault::GpuLost);
        assert!(!s.faults[0].reboot_fixes);
        let mut c = ClusterConfig::default();
        s.apply_config(&mut c);
        assert_eq!((c.nodes, c.gpu_nodes, c.reboot_takes), (4, 1, Duration::from_secs(20)));
    }

    #[test]
    fn errors_name_the_line_field_and_accepted_values() {
        let cases = [
            (
                "[[fault]]\nnode = \"std-0\"\nkind = \"gpu-loss\"\n",
                &["line 3", "unknown variant `gpu-loss`", "`not-ready`", "`lease-stale`"][..],
            ),
            ("[cluster]\nnodez = 3\n", &["line 2", "unknown field `nodez`", "`nodes`"]),
            (
                "[[fault]]\nnode = \"std-0\"\nkind = \"not-ready\"\nat = \"soon\"\n",
                &["line 4", "invalid duration \"soon\""],
            ),
            (
                "[[fault]]\nnode = \"std-9\"\nkind = \"not-ready\"\n",
                &["fault[0].node", "std-9 does not exist", "3 standard nodes"],
            ),
            ("[[civo_fault]]\nstatus = 200\ncalls = 1\n", &["civo_fault[0].status", "from 400 to 599"]),
            ("[cluster\nnodes = 3\n", &["line 1"]),
        ];
        for (text, wants) in cases {
            let e = Scenario::parse("bad.toml", text).unwrap_err().to_string();
            for w in wants {
                assert!(e.contains(w), "{e:?} lacks {w:?}");
            }
        }
    }
}
