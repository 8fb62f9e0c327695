//! The agent's configuration: built-in defaults < TOML file < environment.
//!
//! Civo's Go agent variables keep their names and meaning (`CIVO_API_KEY`,
//! `CIVO_NODE_POOL_IDS`, `CIVO_NODE_AGENT_MONITOR_ONLY`, ...); every other
//! setting can be given as `NODE_AGENT_<SECTION>__<KEY>` (for example
//! `NODE_AGENT_POLICY__GATES__MAX_UNHEALTHY=30%`). A bad value, an unknown key
//! or two settings that contradict each other stop start-up with an error that
//! names the variable or key, the value and the accepted form.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use health_checks::{CheckerEntry, CheckersConfig};
use health_core::Policy;
use serde::{Deserialize, Serialize};

/// The default Civo API.
pub const DEFAULT_CIVO_API_URL: &str = "https://api.civo.com";
/// The default kubeconfig (k3s on the control-plane VM).
pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
/// The default metrics / health port (Civo's agent's).
pub const DEFAULT_METRICS_PORT: u16 = 9625;
/// The default file store path.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/node-agent/state.json";

/// A configuration that cannot be used. Its message names the setting (the
/// environment variable, or the TOML key), the value and the accepted form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// One setting is invalid.
    #[error("{setting}: {message}")]
    Invalid {
        /// The variable or dotted key, e.g. `CIVO_NODE_REBOOT_WAIT_MINUTES` or `policy.reboot_wait`.
        setting: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// Two settings contradict each other.
    #[error("conflicting settings: {first} and {second}: {message}")]
    Conflict {
        /// One setting.
        first: String,
        /// The other.
        second: String,
        /// Why they cannot both hold.
        message: String,
    },
    /// The file, the environment or a value in them cannot be parsed.
    #[error("{0}")]
    Parse(String),
}

impl ConfigError {
    pub(crate) fn invalid(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { setting: setting.into(), message: message.into() }
    }
}

/// A secret string (the Civo API key): never shown by Debug or Display.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether it is empty (or blank).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_empty() { "<empty>" } else { "<redacted>" })
    }
}

/// `[civo]`: the Civo API (Civo's `CIVO_*` variables).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CivoSection {
    /// `CIVO_API_KEY`; required in active mode with the Civo executor.
    pub api_key: Secret,
    /// `CIVO_API_URL`.
    pub api_url: String,
    /// `CIVO_CLUSTER_ID`.
    pub cluster_id: String,
    /// `CIVO_REGION`.
    pub region: String,
    /// `CIVO_NODE_POOL_IDS`: nodes of these pools are selected (empty: all).
    pub node_pool_ids: Vec<String>,
    /// Time limit of one Civo call.
    #[serde(with = "duration_str")]
    pub call_timeout: Duration,
    /// Allow a plain-http, non-loopback `api_url` (tests only).
    pub allow_insecure_http: bool,
}

impl Default for CivoSection {
    fn default() -> Self {
        CivoSection {
            api_key: Secret::default(),
            api_url: DEFAULT_CIVO_API_URL.to_owned(),
            cluster_id: String::new(),
            region: String::new(),
            node_pool_ids: Vec::new(),
            call_timeout: Duration::from_secs(10),
            allow_insecure_http: false,
        }
    }
}

/// The log format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[agent]`: the process itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// `CIVO_NODE_AGENT_METRICS_PORT`: `/metrics`, `/healthz`, `/readyz`
    /// (0 in the file: any free port, logged at start).
    pub metrics_port: u16,
    /// The address the HTTP port binds.
    pub metrics_address: String,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// The name Events are reported under (the pod or host name).
    pub instance: String,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            metrics_port: DEFAULT_METRICS_PORT,
            metrics_address: "0.0.0.0".to_owned(),
            log_format: LogFormat::Text,
            instance: String::new(),
        }
    }
}

/// `[kube]`: the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeSection {
    /// `--kubeconfig`: a kubeconfig file; empty: in-cluster configuration.
    pub kubeconfig: String,
    /// Time limit of every non-watch call.
    #[serde(with = "duration_str")]
    pub call_timeout: Duration,
    /// Drain: give up after this long.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
    /// Publish Kubernetes Events for transitions and held actions.
    pub events: bool,
    /// Drain: evict pods no controller manages (they are gone for good),
    /// like `kubectl drain --force`. Off: such a node is not drained.
    pub drain_evict_unmanaged: bool,
    /// Drain: evict pods with `emptyDir` volumes (their data is deleted),
    /// like `kubectl drain --delete-emptydir-data`. Off: such a node is not drained.
    pub drain_delete_emptydir_data: bool,
    /// How often each `[[addons]]` workload is read.
    #[serde(with = "duration_str")]
    pub addons_interval: Duration,
}

impl Default for KubeSection {
    fn default() -> Self {
        KubeSection {
            kubeconfig: DEFAULT_KUBECONFIG.to_owned(),
            call_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(600),
            events: true,
            drain_evict_unmanaged: false,
            drain_delete_emptydir_data: false,
            addons_interval: Duration::from_secs(30),
        }
    }
}

/// Where node records live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The Kubernetes annotation in-cluster, the file store otherwise.
    #[default]
    Auto,
    /// A JSON annotation on each Node (`node-agent.civo.com/state`).
    Kubernetes,
    /// A local JSON file (atomic replace, fsync, locked).
    File,
    /// Memory only: history is lost on restart (tests and demos).
    Memory,
    /// etcd (`[store.etcd]`): records under a key prefix, compare-and-swap
    /// on the key's revision; TLS with a CA and a client certificate.
    Etcd,
}

/// `[store.etcd]`: where the etcd store keeps records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreEtcdSection {
    /// Client URLs (`https://10.0.0.5:2379`); all `http://` or all `https://`.
    pub endpoints: Vec<String>,
    /// Key prefix of the records (a node's record is `<prefix><node>`).
    pub prefix: String,
    /// CA certificate (PEM) of etcd's server certificate; required with https.
    pub ca_file: PathBuf,
    /// Client certificate (PEM), when etcd requires one (`--client-cert-auth`).
    pub cert_file: PathBuf,
    /// The client certificate's private key (PEM).
    pub key_file: PathBuf,
}

impl Default for StoreEtcdSection {
    fn default() -> Self {
        StoreEtcdSection {
            endpoints: Vec::new(),
            prefix: "/node-agent/state/".to_owned(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
        }
    }
}

/// `[store]`: persistent state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// The backend.
    pub backend: StoreBackend,
    /// The file store's path.
    pub path: PathBuf,
    /// The etcd store (`backend = "etcd"`).
    pub etcd: StoreEtcdSection,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: StoreBackend::Auto,
            path: PathBuf::from(DEFAULT_STATE_FILE),
            etcd: StoreEtcdSection::default(),
        }
    }
}

/// A broken pairing of etcd endpoints and TLS files (the rules host mode's
/// `[etcd]` and cluster mode's `[store.etcd]` share; each names its own keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EtcdTlsRule {
    /// Some endpoints are http://, some https://.
    MixedSchemes,
    /// https:// endpoints without a CA file.
    HttpsWithoutCa,
    /// A CA or client certificate with http:// endpoints.
    TlsFilesWithHttp,
    /// A client certificate without its key, or a key without a certificate.
    CertWithoutKey,
}

/// The first rule `endpoints` and the TLS files break, if any.
pub(crate) fn etcd_tls_rule(endpoints: &[String], ca: &Path, cert: &Path, key: &Path) -> Option<EtcdTlsRule> {
    let set = |p: &Path| !p.as_os_str().is_empty();
    let https = endpoints.iter().filter(|u| u.starts_with("https://")).count();
    if https != 0 && https != endpoints.len() {
        Some(EtcdTlsRule::MixedSchemes)
    } else if https > 0 && !set(ca) {
        Some(EtcdTlsRule::HttpsWithoutCa)
    } else if https == 0 && (set(ca) || set(cert)) {
        Some(EtcdTlsRule::TlsFilesWithHttp)
    } else if set(cert) != set(key) {
        Some(EtcdTlsRule::CertWithoutKey)
    } else {
        None
    }
}

impl StoreEtcdSection {
    /// Checks the section for `backend = "etcd"`, naming the bad key.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                "store.etcd.endpoints",
                "store.backend = \"etcd\" needs endpoints, such as [\"https://10.0.0.5:2379\"]",
            ));
        }
        if let Some(bad) = self.endpoints.iter().find(|e| !e.starts_with("https://") && !e.starts_with("http://")) {
            return Err(ConfigError::invalid(
                "store.etcd.endpoints",
                format!("invalid value {bad:?}: expected an http:// or https:// URL such as \"https://10.0.0.5:2379\""),
            ));
        }
        if let Some(rule) = etcd_tls_rule(&self.endpoints, &self.ca_file, &self.cert_file, &self.key_file) {
            let (setting, message) = match rule {
                EtcdTlsRule::MixedSchemes => {
                    ("store.etcd.endpoints", "mixes http:// and https:// URLs: use one scheme")
                }
                EtcdTlsRule::HttpsWithoutCa => (
                    "store.etcd.ca_file",
                    "https:// endpoints need the CA certificate (PEM) of etcd's server certificate",
                ),
                EtcdTlsRule::TlsFilesWithHttp => {
                    ("store.etcd.endpoints", "TLS files are set but the endpoints are http://: use https:// URLs")
                }
                EtcdTlsRule::CertWithoutKey => {
                    ("store.etcd.key_file", "set both store.etcd.cert_file and store.etcd.key_file, or neither")
                }
            };
            return Err(ConfigError::invalid(setting, message));
        }
        if self.prefix.len() < 3 || !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return Err(ConfigError::invalid(
                "store.etcd.prefix",
                format!(
                    "invalid value {:?}: expected a key prefix of its own, starting and ending with '/', such as \"/node-agent/state/\" (every key under it is read as a record)",
                    self.prefix
                ),
            ));
        }
        Ok(())
    }

    /// The TLS settings, when the endpoints are https://.
    #[must_use]
    pub fn tls(&self) -> Option<state_store::EtcdTls> {
        if !self.endpoints.iter().any(|e| e.starts_with("https://")) {
            return None;
        }
        let tls = state_store::EtcdTls::with_ca(&self.ca_file);
        Some(if self.cert_file.as_os_str().is_empty() {
            tls
        } else {
            tls.with_identity(&self.cert_file, &self.key_file)
        })
    }
}

/// Which executor performs reboots and replacements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// The Civo API (hard reboot, pool replacement), drain before replace.
    #[default]
    Civo,
    /// Nothing is executed; the lifecycle is only logged (like monitor-only).
    Noop,
    /// The operator's provisioning service over gRPC
    /// (`nodeagent.v1.RecoveryExecutor`): reboot and replace (and drain with
    /// `executor.remote_drain`); the agent drains through the Eviction API
    /// otherwise.
    Grpc,
}

/// `[executor]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorSection {
    /// The executor.
    pub kind: ExecutorKind,
    /// `kind = "grpc"`: the server, `https://host:port` (or `http://` on loopback).
    pub endpoint: String,
    /// `kind = "grpc"`: a file holding the bearer token sent to the server.
    pub token_file: Option<PathBuf>,
    /// `kind = "grpc"`: a PEM CA bundle for the server's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// `kind = "grpc"`: time limit of one call.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// `kind = "grpc"`: calls per action; a lost answer is retried with the same idempotency key.
    pub attempts: u32,
    /// `kind = "grpc"`: drains and uncordons go to the server too.
    pub remote_drain: bool,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection {
            kind: ExecutorKind::Civo,
            endpoint: String::new(),
            token_file: None,
            ca_file: None,
            timeout: Duration::from_secs(15),
            attempts: 3,
            remote_drain: false,
        }
    }
}

/// The default admin API address (loopback only).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9626";

/// `[admin]`: the gRPC admin API (`nodeagent.v1.AgentAdmin`) and
/// `grpc.health.v1`, on one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Serve it.
    pub enabled: bool,
    /// `host:port`; a non-loopback address needs `token_file`.
    pub listen: String,
    /// A file holding the bearer token every call must carry.
    pub token_file: Option<PathBuf>,
    /// Where a pause is kept (file store: default `pause.json` beside
    /// `store.path`; the Kubernetes store keeps it on the Lease
    /// `<ha.lease_name>-pause` in the HA namespace).
    pub pause_file: Option<PathBuf>,
    /// How long a call waits for the engine (it answers between evaluations).
    #[serde(with = "duration_str")]
    pub call_timeout: Duration,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            enabled: true,
            listen: DEFAULT_ADMIN_LISTEN.to_owned(),
            token_file: None,
            pause_file: None,
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// `[heartbeat]`: heartbeats pushed to a fleet control plane
/// (`nodeagent.v1.HealthReporter`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSection {
    /// `https://host:port` (or `http://` on loopback); empty: no heartbeats.
    pub endpoint: String,
    /// Time between heartbeats (±10% jitter); doubled per failure up to 8 times it, at most 5m.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// Time limit of one heartbeat call.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// A file holding the bearer token sent with each heartbeat.
    pub token_file: Option<PathBuf>,
    /// A PEM CA bundle for the endpoint's certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            endpoint: String::new(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            token_file: None,
            ca_file: None,
        }
    }
}

/// `[engine]`: tuning of the evaluation loop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Time limit of one asynchronous check.
    #[serde(with = "duration_str")]
    pub check_timeout: Duration,
    /// Time limit of one action other than a drain.
    #[serde(with = "duration_str")]
    pub action_timeout: Duration,
    /// Checks run at once.
    pub check_concurrency: usize,
    /// Time limit of one state-store call as the engine sees it (a
    /// Kubernetes store call retries node conflicts within it).
    #[serde(with = "duration_str")]
    pub store_timeout: Duration,
    /// On SIGTERM, how long to wait for actions in flight (nothing new starts).
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// How long a departed node's record and series are kept (a node that
    /// comes back within it keeps its history).
    #[serde(with = "duration_str")]
    pub forget_after: Duration,
    /// A checker that errs (its own failure or timeout) counts as failing
    /// only after erring continuously this long.
    #[serde(with = "duration_str")]
    pub error_grace: Duration,
    /// How often every node is evaluated again when a checker looks outside
    /// the Node object (`http`, `grpc-health`, `command`, `file`): their
    /// answers change without a Node update. Default 30s.
    #[serde(with = "duration_str")]
    pub probe_interval: Duration,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            check_timeout: Duration::from_secs(10),
            action_timeout: Duration::from_secs(60),
            check_concurrency: 64,
            store_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            forget_after: Duration::from_secs(30 * 60),
            error_grace: Duration::from_secs(5 * 60),
            probe_interval: Duration::from_secs(30),
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[civo]`.
    pub civo: CivoSection,
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[kube]`.
    pub kube: KubeSection,
    /// `[store]`.
    pub store: StoreSection,
    /// `[executor]`.
    pub executor: ExecutorSection,
    /// `[engine]`.
    pub engine: EngineSection,
    /// `[policy]`: waits, limits, escalation and safety gates.
    pub policy: Policy,
    /// `[ha]`: leader election between replicas.
    pub ha: HaSection,
    /// `[admin]`: the gRPC admin API and grpc.health.v1.
    pub admin: AdminSection,
    /// `[heartbeat]`: heartbeats to a fleet control plane.
    pub heartbeat: HeartbeatSection,
    /// `[[addons]]`: Deployments and DaemonSets reported as components.
    pub addons: Vec<crate::addons::AddonEntry>,
    /// `[[windows]]`: maintenance windows for disruptive actions (allow and
    /// deny rules by day, time and IANA zone; none: always open).
    pub windows: Vec<crate::window::RuleConfig>,
    /// `[[checkers]]`: the checkers to run (default: NodeReady, GPU, DiskPressure, Cilium).
    pub checkers: Option<Vec<CheckerEntry>>,
    /// `[repairs.NAME]`: soft repairs the ladders may name (see [`crate::repairs`]).
    pub repairs: BTreeMap<String, crate::repairs::RepairConfig>,
    /// `[[ladder]]`: repair ladders per node class and failing checker (none:
    /// reboot, then replace where escalation allows).
    pub ladder: Vec<crate::repairs::LadderConfig>,
    /// `[control_plane]`: repair of the control plane when the API server is down.
    pub control_plane: crate::control_plane::ControlPlaneSection,
    /// `[record]`: record what the engine sees and decides, for `replay`.
    pub record: crate::record::RecordSection,
}

/// `[ha]`: two or more replicas, of which only the holder of a Kubernetes
/// Lease evaluates and acts. The holder stops acting at
/// `last confirmed renewal + lease_duration − margin` on its monotonic clock
/// (before any other replica can take the Lease over) and exits, so its
/// supervisor restarts it as a standby.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaSection {
    /// Elect a leader (off: this replica always acts).
    pub enabled: bool,
    /// The Lease's namespace (empty: the pod's namespace, else `kube-system`).
    pub namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// How long a leader's Lease lasts without renewal (renewed every third of it).
    #[serde(with = "duration_str")]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (empty: `agent.instance`, else the hostname).
    pub identity: String,
}

impl Default for HaSection {
    fn default() -> Self {
        HaSection {
            enabled: false,
            namespace: String::new(),
            lease_name: "node-agent".to_owned(),
            lease_duration: Duration::from_secs(15),
            identity: String::new(),
        }
    }
}

impl HaSection {
    /// The Lease's namespace.
    #[must_use]
    pub fn namespace(&self) -> String {
        if !self.namespace.is_empty() {
            return self.namespace.clone();
        }
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "kube-system".to_owned())
    }

    /// This replica's identity.
    #[must_use]
    pub fn identity(&self, instance: &str) -> String {
        if !self.identity.is_empty() {
            return self.identity.clone();
        }
        if !instance.is_empty() {
            return instance.to_owned();
        }
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default();
        format!("{host}-{}", std::process::id())
    }
}

/// Overrides from the command line, applied over the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `--kubeconfig`.
    pub kubeconfig: Option<String>,
    /// `--monitor-only` (true) or `--active` (false).
    pub monitor_only: Option<bool>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// Parses a boolean the way Go's `strconv.ParseBool` does (Civo's agent
/// reads its variables with it).
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

const GO_BOOL_FORMS: &str = "true or false (also 1, t, T, TRUE, True, 0, f, F, FALSE, False)";

/// The environment the configuration reads (injectable for tests).
pub type EnvMap = BTreeMap<String, String>;

/// The process environment, restricted to the variables the agent reads.
#[must_use]
pub fn process_env() -> EnvMap {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("CIVO_") || k.starts_with("NODE_AGENT_"))
        // Only NODE_AGENT_ names: CIVO_ ones are read by exact name (so a
        // link such as CIVO_NODE_AGENT_PORT is ignored anyway, while
        // CIVO_NODE_AGENT_METRICS_PORT must stay).
        .filter(|(k, _)| !(k.starts_with("NODE_AGENT_") && is_service_link(k)))
        .collect()
}

/// Whether `name` is a variable Kubernetes injects for a Service (service
/// links): a Service called `node-agent` (or `node-agent-metrics`, ...) in
/// the pod's namespace sets `NODE_AGENT_SERVICE_HOST`, `NODE_AGENT_PORT`,
/// `NODE_AGENT_PORT_9625_TCP_ADDR` and so on. They are not settings (ours
/// always have a `__`), so they are left out instead of failing start-up.
#[must_use]
pub fn is_service_link(name: &str) -> bool {
    if name.contains("__") {
        return false;
    }
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_SERVICE_PORT") || name.contains("_SERVICE_PORT_") {
        return true;
    }
    // <NAME>_PORT, <NAME>_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]
    if name.ends_with("_PORT") {
        return true;
    }
    let Some(i) = name.rfind("_PORT_") else { return false };
    let mut rest = name[i + "_PORT_".len()..].split('_');
    let number = rest.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let proto = rest.next().is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    let tail = rest.next().is_none_or(|t| matches!(t, "PROTO" | "PORT" | "ADDR"));
    number && proto && tail && rest.next().is_none()
}

fn minutes(env: &EnvMap, var: &str) -> Result<Option<u64>, ConfigError> {
    let Some(v) = env.get(var) else { return Ok(None) };
    let v = v.trim();
    match v.parse::<u64>() {
        Ok(0) => Err(ConfigError::invalid(
            var,
            format!("invalid value {v:?}: must be a whole number of minutes of at least 1"),
        )),
        Ok(n) if n > 365 * 24 * 60 => Err(ConfigError::invalid(
            var,
            format!("invalid value {v:?}: must be a whole number of minutes of at most {}", 365 * 24 * 60),
        )),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(ConfigError::invalid(
            var,
            format!("invalid value {v:?}: expected a whole number of minutes such as 10"),
        )),
    }
}

/// Reads Civo's variables into a nested value for figment, checking each.
fn civo_env(env: &EnvMap) -> Result<serde_json::Value, ConfigError> {
    use serde_json::{Map, Value, json};
    let mut civo = Map::new();
    let mut agent = Map::new();
    let mut policy = Map::new();
    for (var, key) in [
        ("CIVO_API_KEY", "api_key"),
        ("CIVO_API_URL", "api_url"),
        ("CIVO_CLUSTER_ID", "cluster_id"),
        ("CIVO_REGION", "region"),
    ] {
        if let Some(v) = env.get(var) {
            civo.insert(key.into(), Value::String(v.trim().to_owned()));
        }
    }
    let pools = |var: &str| env.get(var).map(|v| split_list(v));
    match (pools("CIVO_NODE_POOL_IDS"), pools("CIVO_NODE_POOL_ID")) {
        (Some(a), Some(b)) if a != b => {
            return Err(ConfigError::Conflict {
                first: "CIVO_NODE_POOL_IDS".into(),
                second: "CIVO_NODE_POOL_ID".into(),
                message: "both are set to different pools; set only CIVO_NODE_POOL_IDS (a comma list)".into(),
            });
        }
        (Some(ids), _) | (None, Some(ids)) => {
            civo.insert("node_pool_ids".into(), json!(ids));
        }
        (None, None) => {}
    }
    if let Some(v) = env.get("CIVO_NODE_AGENT_MONITOR_ONLY") {
        let b = parse_go_bool(v.trim()).ok_or_else(|| {
            ConfigError::invalid(
                "CIVO_NODE_AGENT_MONITOR_ONLY",
                format!("invalid value {v:?}: expected {GO_BOOL_FORMS}"),
            )
        })?;
        policy.insert("monitor_only".into(), Value::Bool(b));
    }
    if let Some(v) = env.get("CIVO_NODE_AGENT_METRICS_PORT") {
        let port = v.trim().parse::<u32>().ok().filter(|p| (1..=65535).contains(p)).ok_or_else(|| {
            ConfigError::invalid(
                "CIVO_NODE_AGENT_METRICS_PORT",
                format!("invalid value {v:?}: expected a TCP port from 1 to 65535 such as 9625"),
            )
        })?;
        agent.insert("metrics_port".into(), json!(port));
    }
    if let Some(m) = minutes(env, "CIVO_NODE_REBOOT_WAIT_MINUTES")? {
        policy.insert("reboot_wait".into(), json!(format!("{m}m")));
    }
    if let Some(m) = minutes(env, "CIVO_GPU_NODE_REBOOT_WAIT_MINUTES")? {
        policy.insert("gpu_reboot_wait".into(), json!(format!("{m}m")));
    }
    if let Some(v) = env.get("CIVO_NODE_MAX_REBOOT_RETRIES") {
        let n = v.trim().parse::<u32>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| {
            ConfigError::invalid(
                "CIVO_NODE_MAX_REBOOT_RETRIES",
                format!("invalid value {v:?}: expected a whole number from 1 to 100 such as 5"),
            )
        })?;
        policy.insert("max_reboot_retries".into(), json!(n));
    }
    let mut root = Map::new();
    for (name, section) in [("civo", civo), ("agent", agent), ("policy", policy)] {
        if !section.is_empty() {
            root.insert(name.into(), Value::Object(section));
        }
    }
    Ok(Value::Object(root))
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Civo variables and the `NODE_AGENT_` keys that set the same thing.
const SAME_SETTING: &[(&str, &str)] = &[
    ("CIVO_API_KEY", "NODE_AGENT_CIVO__API_KEY"),
    ("CIVO_API_URL", "NODE_AGENT_CIVO__API_URL"),
    ("CIVO_CLUSTER_ID", "NODE_AGENT_CIVO__CLUSTER_ID"),
    ("CIVO_REGION", "NODE_AGENT_CIVO__REGION"),
    ("CIVO_NODE_POOL_IDS", "NODE_AGENT_CIVO__NODE_POOL_IDS"),
    ("CIVO_NODE_AGENT_MONITOR_ONLY", "NODE_AGENT_POLICY__MONITOR_ONLY"),
    ("CIVO_NODE_AGENT_METRICS_PORT", "NODE_AGENT_AGENT__METRICS_PORT"),
    ("CIVO_NODE_REBOOT_WAIT_MINUTES", "NODE_AGENT_POLICY__REBOOT_WAIT"),
    ("CIVO_GPU_NODE_REBOOT_WAIT_MINUTES", "NODE_AGENT_POLICY__GPU_REBOOT_WAIT"),
    ("CIVO_NODE_MAX_REBOOT_RETRIES", "NODE_AGENT_POLICY__MAX_REBOOT_RETRIES"),
];

impl Config {
    /// Loads defaults < `file` (TOML) < `env` < `cli`, then validates.
    pub fn load(file: Option<&Path>, env: &EnvMap, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let mut config = Self::parse(file, env, cli)?;
        config.resolve_ladders()?;
        config.validate(env)?;
        Ok(config)
    }

    /// The policy and checkers of `file` (TOML) over the defaults, for
    /// `replay`: only the policy, its ladders and the checkers are checked
    /// (no Civo key or cluster access is needed to replay).
    pub fn load_policy(file: &Path) -> Result<Config, ConfigError> {
        let mut config = Self::parse(Some(file), &EnvMap::new(), &CliOverrides::default())?;
        config.resolve_ladders()?;
        config.policy.validate().map_err(|e| match e {
            health_core::PolicyError::Ladder { field, message } => ConfigError::invalid(field, message),
            e => ConfigError::invalid("policy", e.to_string()),
        })?;
        Ok(config)
    }

    /// Reads defaults < `file` < `env` < `cli` without checking them.
    fn parse(file: Option<&Path>, env: &EnvMap, cli: &CliOverrides) -> Result<Config, ConfigError> {
        for (civo, ours) in SAME_SETTING {
            if env.contains_key(*civo) && env.contains_key(*ours) {
                return Err(ConfigError::Conflict {
                    first: (*civo).into(),
                    second: (*ours).into(),
                    message: "both set the same thing; keep one".into(),
                });
            }
        }
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    "--config",
                    format!("{}: no such file (expected a TOML file such as examples/config.toml)", path.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(Serialized::defaults(civo_env(env)?));
        let dict = env_dict(env, &["NODE_AGENT_CIVO__NODE_POOL_IDS"])?;
        fig = fig.merge(Serialized::defaults(figment::value::Value::from(dict)).profile(figment::Profile::Default));
        let mut config: Config = fig.extract().map_err(|e| ConfigError::Parse(describe_figment(&e)))?;
        if let Some(k) = &cli.kubeconfig {
            config.kube.kubeconfig.clone_from(k);
        }
        if let Some(m) = cli.monitor_only {
            config.policy.monitor_only = m;
        }
        if let Some(f) = cli.log_format {
            config.agent.log_format = f;
        }
        Ok(config)
    }

    /// Fills the policy's repairs and ladders from `[repairs.NAME]` and
    /// `[[ladder]]` (checked, naming the field).
    pub fn resolve_ladders(&mut self) -> Result<(), ConfigError> {
        let (repairs, ladders) = self.ladder_parts()?;
        self.policy.repairs = repairs;
        self.policy.ladders = ladders;
        Ok(())
    }

    fn ladder_parts(&self) -> Result<(Vec<health_core::RepairSpec>, Vec<health_core::Ladder>), ConfigError> {
        let checkers: Vec<String> = self
            .checkers_config()
            .build::<crate::node::NodeRef>()
            .map_err(|e| ConfigError::invalid("checkers", e.to_string()))?
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        crate::repairs::policy_parts(&self.repairs, &self.ladder, &checkers, self.executor.kind == ExecutorKind::Grpc)
    }

    /// The checker set.
    #[must_use]
    pub fn checkers_config(&self) -> CheckersConfig {
        match &self.checkers {
            Some(c) => CheckersConfig { checkers: c.clone() },
            None => CheckersConfig::default(),
        }
    }

    /// Whether a configured checker looks outside the Node object (an HTTP,
    /// gRPC health, command or file probe): nodes are then evaluated again
    /// every `engine.probe_interval`.
    #[must_use]
    pub fn has_probes(&self) -> bool {
        use health_checks::CheckerKind as K;
        self.checkers_config()
            .checkers
            .iter()
            .any(|c| c.enabled != Some(false) && matches!(c.kind, Some(K::Http | K::GrpcHealth | K::Command | K::File)))
    }

    /// Whether the agent runs in-cluster (no kubeconfig file).
    #[must_use]
    pub fn in_cluster(&self) -> bool {
        self.kube.kubeconfig.trim().is_empty()
    }

    /// The store backend after resolving `auto`.
    #[must_use]
    pub fn store_backend(&self) -> StoreBackend {
        match self.store.backend {
            StoreBackend::Auto if self.in_cluster() => StoreBackend::Kubernetes,
            StoreBackend::Auto => StoreBackend::File,
            b => b,
        }
    }

    /// Checks every setting, naming the first bad one (with the variable a
    /// Civo user would have set, where there is one).
    pub fn validate(&self, env: &EnvMap) -> Result<(), ConfigError> {
        let ha = &self.ha;
        let label = health_core::domain::is_dns_label;
        // Also without HA: the pause Lease is named after it.
        if !label(&ha.lease_name) || ha.lease_name.len() > 57 {
            return Err(ConfigError::invalid(
                "ha.lease_name",
                format!(
                    "{:?}: expected a Lease name of at most 57 characters (lowercase letters, digits and '-'; \
                     <name>-pause names the pause Lease)",
                    ha.lease_name
                ),
            ));
        }
        if ha.enabled {
            if !ha.namespace.is_empty() && !label(&ha.namespace) {
                return Err(ConfigError::invalid(
                    "ha.namespace",
                    format!("{:?}: expected a namespace name", ha.namespace),
                ));
            }
            if ha.lease_duration < Duration::from_secs(3) {
                return Err(ConfigError::invalid("ha.lease_duration", "expected at least 3s"));
            }
            // Lease calls time out after min(kube.call_timeout, lease_duration / 3),
            // so the defaults work together.
        }
        self.validate_grpc()?;
        self.validate_addons()?;
        self.control_plane.validate()?;
        self.record.validate()?;
        if self.control_plane.enabled {
            if self.ha.enabled {
                return Err(ConfigError::Conflict {
                    first: "control_plane.enabled".into(),
                    second: "ha.enabled".into(),
                    message: "an HA leader exits when it cannot renew its Lease, so it would be gone before a \
                              control-plane outage's grace ends: run the control-plane repair without HA (one \
                              agent on a control-plane VM)"
                        .into(),
                });
            }
            if self.control_plane.repair.as_ref().is_some_and(|r| r.kind == crate::repairs::RepairKind::Grpc)
                && self.executor.kind != ExecutorKind::Grpc
            {
                return Err(ConfigError::invalid(
                    "control_plane.repair.kind",
                    "\"grpc\" uses the remote executor of [executor]: set executor.kind = \"grpc\" and executor.endpoint",
                ));
            }
            if self.store_backend() != StoreBackend::File && self.control_plane.state_file.is_none() {
                return Err(ConfigError::invalid(
                    "control_plane.state_file",
                    "must be set (a writable path on the control-plane VM) unless store.backend is \"file\": \
                     the repairs' record and lock are kept there",
                ));
            }
        }
        if self.store.backend == StoreBackend::Etcd {
            self.store.etcd.validate()?;
        }
        crate::window::Windows::parse(&self.windows)
            .map_err(|(i, field, m)| ConfigError::invalid(format!("windows[{i}].{field}"), m))?;
        let name = |civo: &str, key: &str| {
            if env.contains_key(civo) { civo.to_owned() } else { format!("{key} ({civo})") }
        };
        let (repairs, ladders) = self.ladder_parts()?;
        if self.policy.repairs != repairs || self.policy.ladders != ladders {
            return Err(ConfigError::invalid(
                "ladder",
                "the policy's ladders differ from [[ladder]] and [repairs.NAME]: call Config::resolve_ladders first",
            ));
        }
        self.policy.validate().map_err(|e| match e {
            // Ladder settings are top-level sections: name them as written.
            health_core::PolicyError::Ladder { field, message } => ConfigError::invalid(field, message),
            e => ConfigError::invalid("policy", e.to_string()),
        })?;
        self.checkers_config()
            .build::<crate::node::NodeRef>()
            .map_err(|e| ConfigError::invalid("checkers", e.to_string()))?;
        if self.agent.metrics_address.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                "agent.metrics_address",
                format!(
                    "invalid value {:?}: expected an IP address such as 0.0.0.0 or 127.0.0.1",
                    self.agent.metrics_address
                ),
            ));
        }
        for (field, d) in [
            ("kube.call_timeout", self.kube.call_timeout),
            ("kube.drain_timeout", self.kube.drain_timeout),
            ("civo.call_timeout", self.civo.call_timeout),
            ("engine.check_timeout", self.engine.check_timeout),
            ("engine.action_timeout", self.engine.action_timeout),
            ("engine.store_timeout", self.engine.store_timeout),
            ("engine.shutdown_grace", self.engine.shutdown_grace),
            ("engine.probe_interval", self.engine.probe_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(field, "must be a positive duration such as \"30s\""));
            }
        }
        if self.engine.check_concurrency == 0 || self.engine.check_concurrency > 4096 {
            return Err(ConfigError::invalid(
                "engine.check_concurrency",
                format!("invalid value {}: expected a number from 1 to 4096", self.engine.check_concurrency),
            ));
        }
        for id in &self.civo.node_pool_ids {
            let ok =
                id.len() <= 63 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !ok {
                return Err(ConfigError::invalid(
                    name("CIVO_NODE_POOL_IDS", "civo.node_pool_ids"),
                    format!(
                        "invalid pool id {id:?}: expected a comma list of pool ids (letters, digits, '-', '_', '.')"
                    ),
                ));
            }
        }
        let url = self.civo.api_url.trim_end_matches('/');
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || url.len() <= "https://".len() {
            return Err(ConfigError::invalid(
                name("CIVO_API_URL", "civo.api_url"),
                format!("invalid value {:?}: expected an https URL such as {DEFAULT_CIVO_API_URL}", self.civo.api_url),
            ));
        }
        if url.starts_with("http://") && !self.civo.allow_insecure_http && !recovery_exec::is_loopback_url(url) {
            return Err(ConfigError::invalid(
                name("CIVO_API_URL", "civo.api_url"),
                format!(
                    "invalid value {:?}: plain http would send the API key in clear; use https (or set civo.allow_insecure_http for a test server)",
                    self.civo.api_url
                ),
            ));
        }
        let active_civo = !self.policy.monitor_only && self.executor.kind == ExecutorKind::Civo;
        if active_civo {
            if self.civo.api_key.is_empty() {
                return Err(ConfigError::invalid(
                    name("CIVO_API_KEY", "civo.api_key"),
                    "must be set in active mode (CIVO_NODE_AGENT_MONITOR_ONLY=false) with the Civo executor",
                ));
            }
            if self.civo.cluster_id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    name("CIVO_CLUSTER_ID", "civo.cluster_id"),
                    "must be set in active mode: the id of this cluster, e.g. 3f2b1c9e-8d41-4a2f-9c55-000000000001",
                ));
            }
            if self.civo.region.trim().is_empty() {
                return Err(ConfigError::invalid(
                    name("CIVO_REGION", "civo.region"),
                    "must be set in active mode: a Civo region such as LON1",
                ));
            }
        }
        if self.policy.escalation.replace && self.executor.kind == ExecutorKind::Noop && !self.policy.monitor_only {
            return Err(ConfigError::Conflict {
                first: "policy.escalation.replace".into(),
                second: "executor.kind = \"noop\"".into(),
                message: "replacement needs the Civo executor".into(),
            });
        }
        Ok(())
    }

    /// The parsed maintenance windows (validated at load).
    #[must_use]
    pub fn windows(&self) -> crate::window::Windows {
        crate::window::Windows::parse(&self.windows).unwrap_or_default()
    }

    /// `[[addons]]`.
    fn validate_addons(&self) -> Result<(), ConfigError> {
        let label = health_core::domain::is_dns_label;
        let mut seen = std::collections::BTreeSet::new();
        for (i, a) in self.addons.iter().enumerate() {
            let at = |f: &str| format!("addons[{i}].{f}");
            if !label(&a.namespace) {
                return Err(ConfigError::invalid(
                    at("namespace"),
                    format!("{:?}: expected a namespace name", a.namespace),
                ));
            }
            let name_ok = !a.name.is_empty() && a.name.len() <= 253 && a.name.split('.').all(label);
            if !name_ok {
                return Err(ConfigError::invalid(at("name"), format!("{:?}: expected an object name", a.name)));
            }
            let c = a.component();
            if !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                return Err(ConfigError::invalid(
                    at("component"),
                    format!("{c:?}: expected letters, digits, '-' and '_' (it is a URL path segment)"),
                ));
            }
            if !seen.insert(c.clone()) {
                return Err(ConfigError::invalid(at("component"), format!("{c:?} is used by two add-ons")));
            }
        }
        if !self.addons.is_empty() && self.kube.addons_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid("kube.addons_interval", "expected at least 1s, such as \"30s\""));
        }
        Ok(())
    }

    /// `[admin]`, `[heartbeat]` and the gRPC executor.
    fn validate_grpc(&self) -> Result<(), ConfigError> {
        let a = &self.admin;
        if a.enabled {
            let addr = a.listen.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    "admin.listen",
                    format!("invalid value {:?}: expected host:port such as {DEFAULT_ADMIN_LISTEN}", a.listen),
                )
            })?;
            if !addr.ip().is_loopback() && a.token_file.is_none() {
                return Err(ConfigError::Conflict {
                    first: "admin.listen".into(),
                    second: "admin.token_file".into(),
                    message: format!(
                        "{addr} is reachable from other hosts: anyone could pause the agent or read its state; \
                         set admin.token_file, or listen on 127.0.0.1"
                    ),
                });
            }
            if a.call_timeout.is_zero() {
                return Err(ConfigError::invalid("admin.call_timeout", "must be a positive duration such as \"10s\""));
            }
        }
        let h = &self.heartbeat;
        if !h.endpoint.is_empty() {
            grpc_endpoint("heartbeat.endpoint", &h.endpoint, h.token_file.is_some())?;
            if h.interval < Duration::from_secs(1) || h.interval > Duration::from_secs(3600) {
                return Err(ConfigError::invalid(
                    "heartbeat.interval",
                    format!("{:?}: expected 1s to 1h, such as \"30s\"", h.interval),
                ));
            }
            if h.timeout.is_zero() || h.timeout > h.interval {
                return Err(ConfigError::invalid(
                    "heartbeat.timeout",
                    format!("{:?}: expected a positive duration no longer than heartbeat.interval", h.timeout),
                ));
            }
        }
        let e = &self.executor;
        if e.kind == ExecutorKind::Grpc {
            if e.endpoint.is_empty() {
                return Err(ConfigError::invalid(
                    "executor.endpoint",
                    "must be set with executor.kind = \"grpc\": the server, such as https://provisioner:9700",
                ));
            }
            grpc_endpoint("executor.endpoint", &e.endpoint, e.token_file.is_some())?;
            if e.timeout.is_zero() {
                return Err(ConfigError::invalid("executor.timeout", "must be a positive duration such as \"30s\""));
            }
            if !(1..=10).contains(&e.attempts) {
                return Err(ConfigError::invalid(
                    "executor.attempts",
                    format!("invalid value {}: expected a number from 1 to 10", e.attempts),
                ));
            }
            // Every attempt and its back-off must fit in the engine's limit
            // for one action, or the last attempts are cut off mid-call.
            let backoff =
                recovery_exec::GrpcExecutorConfig::retry_policy_for(e.attempts, recovery_exec::DEFAULT_GRPC_BACKOFF)
                    .longest_wait();
            let needed = e.timeout * e.attempts + backoff;
            if needed >= self.engine.action_timeout {
                return Err(ConfigError::Conflict {
                    first: "executor.attempts × executor.timeout".into(),
                    second: "engine.action_timeout".into(),
                    message: format!(
                        "{} attempts of up to {:?} (with back-off {needed:?}) do not fit in engine.action_timeout {:?}; \
                         lower executor.timeout or attempts, or raise engine.action_timeout",
                        e.attempts, e.timeout, self.engine.action_timeout
                    ),
                });
            }
        }
        Ok(())
    }

    /// The pool label selector: empty (all nodes), equality, or `in`.
    #[must_use]
    pub fn node_selector(&self) -> Option<String> {
        node_selector(&self.civo.node_pool_ids)
    }
}

/// Checks a gRPC endpoint: http(s)://host:port, and no token over plain
/// http to a remote host.
fn grpc_endpoint(field: &str, endpoint: &str, token: bool) -> Result<(), ConfigError> {
    let https = endpoint.starts_with("https://");
    if !https && !endpoint.starts_with("http://") {
        return Err(ConfigError::invalid(
            field,
            format!("invalid value {endpoint:?}: expected https://host:port (or http://127.0.0.1:port)"),
        ));
    }
    if endpoint.parse::<axum::http::Uri>().ok().and_then(|u| u.host().map(str::to_owned)).is_none() {
        return Err(ConfigError::invalid(field, format!("invalid value {endpoint:?}: expected https://host:port")));
    }
    if !https && token && !node_agent_proto::transport::is_loopback_endpoint(endpoint) {
        return Err(ConfigError::invalid(
            field,
            format!("invalid value {endpoint:?}: the token would travel in clear; use https"),
        ));
    }
    Ok(())
}

/// The label selector for `pools`: `None` for all nodes, equality for one,
/// set-based `in` for several (as Civo's agent builds it).
#[must_use]
pub fn node_selector(pools: &[String]) -> Option<String> {
    let label = recovery_exec::POOL_LABEL;
    match pools {
        [] => None,
        [one] => Some(format!("{label}={one}")),
        many => Some(format!("{label} in ({})", many.join(","))),
    }
}

/// The `NODE_AGENT_<SECTION>__<KEY>` variables of `env` as a nested
/// dictionary; the variables in `list_keys` hold comma lists.
pub(crate) fn env_dict(env: &EnvMap, list_keys: &[&str]) -> Result<figment::value::Dict, ConfigError> {
    let mut dict = figment::value::Dict::new();
    for (k, v) in env.iter().filter(|(k, _)| k.starts_with("NODE_AGENT_")) {
        let path = k["NODE_AGENT_".len()..].to_ascii_lowercase().replace("__", ".");
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(ConfigError::invalid(
                k.as_str(),
                "malformed name: expected NODE_AGENT_<SECTION>__<KEY>, e.g. NODE_AGENT_POLICY__REBOOT_WAIT",
            ));
        }
        let value = if list_keys.contains(&k.as_str()) {
            figment::value::Value::from(split_list(v))
        } else {
            v.parse::<figment::value::Value>().unwrap_or_else(|_| figment::value::Value::from(v.clone()))
        };
        insert_path(&mut dict, &path, value);
    }
    Ok(dict)
}

fn insert_path(dict: &mut figment::value::Dict, path: &str, value: figment::value::Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_owned(), value);
        }
        Some((head, tail)) => {
            let entry =
                dict.entry(head.to_owned()).or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, tail, value);
            } else {
                let mut inner = figment::value::Dict::new();
                insert_path(&mut inner, tail, value);
                *entry = figment::value::Value::from(inner);
            }
        }
    }
}

pub(crate) fn describe_figment(e: &figment::Error) -> String {
    let mut out = Vec::new();
    for err in e.clone() {
        let key = err.path.join(".");
        let mut line = String::new();
        if !key.is_empty() {
            line.push_str(&key);
            if let Some(var) = env_name(&err.path) {
                line.push_str(&format!(" ({var})"));
            }
            line.push_str(": ");
        }
        line.push_str(&err.kind.to_string());
        if let Some(figment::Source::File(path)) = err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            line.push_str(&format!(" (in {})", path.display()));
        }
        out.push(line);
    }
    out.join("; ")
}

fn env_name(path: &[String]) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    Some(format!("NODE_AGENT_{}", path.join("__").to_ascii_uppercase()))
}

/// Durations as human strings (`"30s"`, `"10m"`): health-core's adapter.
pub(crate) use health_core::policy::duration_str;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, &env(pairs), &CliOverrides::default())
    }

    #[test]
    fn kubernetes_service_links_are_not_settings() {
        for link in [
            "NODE_AGENT_SERVICE_HOST",
            "NODE_AGENT_SERVICE_PORT",
            "NODE_AGENT_SERVICE_PORT_METRICS",
            "NODE_AGENT_PORT",
            "NODE_AGENT_PORT_9625_TCP",
            "NODE_AGENT_PORT_9625_TCP_ADDR",
            "NODE_AGENT_PORT_9625_TCP_PORT",
            "NODE_AGENT_PORT_9625_TCP_PROTO",
            "NODE_AGENT_METRICS_PORT_9625_UDP",
        ] {
            assert!(is_service_link(link), "{link}");
        }
        for setting in
            ["NODE_AGENT_AGENT__METRICS_PORT", "NODE_AGENT_POLICY_REBOOT_WAIT", "NODE_AGENT_PORT_X_TCP", "NODE_AGENT_"]
        {
            assert!(!is_service_link(setting), "{setting}");
        }
        // A mistyped setting that is no service link still fails start-up.
        let err = load(&[("NODE_AGENT_POLICY_REBOOT_WAIT", "5m")]).unwrap_err().to_string();
        assert!(err.contains("NODE_AGENT_POLICY_REBOOT_WAIT"), "{err}");
    }

    #[test]
    fn ha_works_with_the_default_timeouts() {
        let c = load(&[("NODE_AGENT_HA__ENABLED", "true")]).expect("HA on its defaults");
        assert!(c.kube.call_timeout > c.ha.lease_duration, "renewals bound their own calls");
    }

    #[test]
    fn admin_and_heartbeat_settings_are_checked() {
        let err = load(&[("NODE_AGENT_ADMIN__LISTEN", "0.0.0.0:9626")]).unwrap_err().to_string();
        assert!(err.contains("admin.listen") && err.contains("admin.token_file"), "{err}");
        assert!(load(&[("NODE_AGENT_ADMIN__LISTEN", "0.0.0.0:9626"), ("NODE_AGENT_ADMIN__TOKEN_FILE", "/t")]).is_ok());
        let err = load(&[("NODE_AGENT_ADMIN__LISTEN", "localhost")]).unwrap_err().to_string();
        assert!(err.contains("admin.listen") && err.contains("host:port"), "{err}");
        let err = load(&[("NODE_AGENT_HEARTBEAT__ENDPOINT", "fleet:443")]).unwrap_err().to_string();
        assert!(err.contains("heartbeat.endpoint"), "{err}");
        let err = load(&[
            ("NODE_AGENT_HEARTBEAT__ENDPOINT", "http://fleet.example.com:80"),
            ("NODE_AGENT_HEARTBEAT__TOKEN_FILE", "/t"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("in clear"), "{err}");
        let err = load(&[
            ("NODE_AGENT_HEARTBEAT__ENDPOINT", "https://f:1"),
            ("NODE_AGENT_HEARTBEAT__INTERVAL", "5s"),
            ("NODE_AGENT_HEARTBEAT__TIMEOUT", "10s"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("heartbeat.timeout"), "{err}");
        let err = load(&[("NODE_AGENT_EXECUTOR__KIND", "grpc")]).unwrap_err().to_string();
        assert!(err.contains("executor.endpoint"), "{err}");
        let err = load(&[
            ("NODE_AGENT_EXECUTOR__KIND", "grpc"),
            ("NODE_AGENT_EXECUTOR__ENDPOINT", "https://p:1"),
            ("NODE_AGENT_EXECUTOR__ATTEMPTS", "0"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("executor.attempts"), "{err}");
        let c = load(&[
            ("CIVO_NODE_AGENT_MONITOR_ONLY", "false"),
            ("NODE_AGENT_EXECUTOR__KIND", "grpc"),
            ("NODE_AGENT_EXECUTOR__ENDPOINT", "https://provisioner:9700"),
        ])
        .expect("the gRPC executor needs no Civo key");
        assert_eq!(c.executor.kind, ExecutorKind::Grpc);
        let err = load(&[
            ("NODE_AGENT_EXECUTOR__KIND", "grpc"),
            ("NODE_AGENT_EXECUTOR__ENDPOINT", "https://p:1"),
            ("NODE_AGENT_EXECUTOR__ATTEMPTS", "4"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("engine.action_timeout") && err.contains("executor.attempts"), "{err}");
        // 4 calls of 15s and repeats 0.5s, 1s and 2s apart: 63.5s.
        assert!(err.contains("(with back-off 63.5s)"), "{err}");
        let err = load(&[("NODE_AGENT_HEARTBEAT__ENDPOINT", "https://f:1"), ("NODE_AGENT_HEARTBEAT__INTERVAL", "2d")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("heartbeat.interval"), "{err}");
    }

    #[test]
    fn defaults_are_civo_agent_defaults() {
        let c = load(&[]).unwrap();
        assert!(c.policy.monitor_only);
        assert_eq!(c.agent.metrics_port, 9625);
        assert_eq!(c.policy.reboot_wait, Duration::from_secs(600));
        assert_eq!(c.policy.gpu_reboot_wait, Duration::from_secs(2400));
        assert_eq!(c.policy.max_reboot_retries, 5);
        assert_eq!(c.kube.kubeconfig, DEFAULT_KUBECONFIG);
        assert_eq!(c.civo.api_url, DEFAULT_CIVO_API_URL);
        assert_eq!(c.node_selector(), None);
    }

    #[test]
    fn civo_variables_map_to_settings() {
        let c = load(&[
            ("CIVO_NODE_AGENT_MONITOR_ONLY", "F"),
            ("CIVO_API_KEY", "k"),
            ("CIVO_CLUSTER_ID", "c-1"),
            ("CIVO_REGION", "LON1"),
            ("CIVO_NODE_REBOOT_WAIT_MINUTES", "7"),
            ("CIVO_GPU_NODE_REBOOT_WAIT_MINUTES", "41"),
            ("CIVO_NODE_MAX_REBOOT_RETRIES", "2"),
            ("CIVO_NODE_AGENT_METRICS_PORT", "9999"),
            ("CIVO_NODE_POOL_ID", "p1"),
        ])
        .unwrap();
        assert!(!c.policy.monitor_only);
        assert_eq!(c.policy.reboot_wait, Duration::from_secs(420));
        assert_eq!(c.policy.gpu_reboot_wait, Duration::from_secs(41 * 60));
        assert_eq!(c.policy.max_reboot_retries, 2);
        assert_eq!(c.agent.metrics_port, 9999);
        assert_eq!(c.node_selector().as_deref(), Some("kubernetes.civo.com/civo-node-pool=p1"));
        assert_eq!(format!("{:?}", c.civo.api_key), "<redacted>");
        assert!(!format!("{c:?}").contains("\"k\""));
    }

    #[test]
    fn pool_selectors() {
        assert_eq!(node_selector(&[]), None);
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(node_selector(&three).as_deref(), Some("kubernetes.civo.com/civo-node-pool in (a,b,c)"));
        let c = load(&[("CIVO_NODE_POOL_IDS", " a, b ,c ")]).unwrap();
        assert_eq!(c.civo.node_pool_ids, three);
    }

    #[test]
    fn our_variables_and_file() {
        let dir = std::env::temp_dir().join(format!("agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[policy]\nreboot_wait = \"3m\"\n[policy.gates]\nmax_unhealthy = \"30%\"\n").unwrap();
        let c = Config::load(
            Some(&file),
            &env(&[("NODE_AGENT_POLICY__REBOOT_WAIT", "4m"), ("NODE_AGENT_KUBE__CALL_TIMEOUT", "5s")]),
            &CliOverrides { monitor_only: Some(false), kubeconfig: Some(String::new()), ..CliOverrides::default() },
        );
        // Active mode with the Civo executor needs a key.
        let err = c.unwrap_err().to_string();
        assert!(err.contains("CIVO_API_KEY") || err.contains("civo.api_key"), "{err}");
        let c = Config::load(
            Some(&file),
            &env(&[("NODE_AGENT_POLICY__REBOOT_WAIT", "4m"), ("NODE_AGENT_KUBE__CALL_TIMEOUT", "5s")]),
            &CliOverrides { kubeconfig: Some(String::new()), ..CliOverrides::default() },
        )
        .unwrap();
        assert_eq!(c.policy.reboot_wait, Duration::from_secs(240));
        assert_eq!(c.policy.gates.max_unhealthy, health_core::Limit::percent(30));
        assert_eq!(c.kube.call_timeout, Duration::from_secs(5));
        assert!(c.in_cluster());
        assert_eq!(c.store_backend(), StoreBackend::Kubernetes);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_inputs_name_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CIVO_NODE_AGENT_MONITOR_ONLY", "maybe")], "CIVO_NODE_AGENT_MONITOR_ONLY"),
            (&[("CIVO_NODE_AGENT_METRICS_PORT", "70000")], "CIVO_NODE_AGENT_METRICS_PORT"),
            (&[("CIVO_NODE_AGENT_METRICS_PORT", "-1")], "CIVO_NODE_AGENT_METRICS_PORT"),
            (&[("CIVO_NODE_REBOOT_WAIT_MINUTES", "ten")], "CIVO_NODE_REBOOT_WAIT_MINUTES"),
            (&[("CIVO_NODE_REBOOT_WAIT_MINUTES", "0")], "CIVO_NODE_REBOOT_WAIT_MINUTES"),
            (&[("CIVO_GPU_NODE_REBOOT_WAIT_MINUTES", "-5")], "CIVO_GPU_NODE_REBOOT_WAIT_MINUTES"),
            (&[("CIVO_NODE_MAX_REBOOT_RETRIES", "-1")], "CIVO_NODE_MAX_REBOOT_RETRIES"),
            (&[("NODE_AGENT_POLICY__REBOOT_WAIT", "soon")], "policy.reboot_wait"),
            (&[("NODE_AGENT_POLICY__NO_SUCH_KEY", "1")], "no_such_key"),
            (&[("NODE_AGENT_POLICY__GATES__MAX_UNHEALTHY", "120%")], "max_unhealthy"),
            (&[("NODE_AGENT_POLICY__MONITOR_ONLY", "maybe")], "monitor_only"),
            (&[("CIVO_NODE_AGENT_MONITOR_ONLY", "false")], "CIVO_API_KEY"),
            (&[("CIVO_API_URL", "http://api.example.com")], "CIVO_API_URL"),
            (&[("CIVO_NODE_POOL_IDS", "a"), ("CIVO_NODE_POOL_ID", "b")], "CIVO_NODE_POOL_ID"),
            (&[("CIVO_NODE_REBOOT_WAIT_MINUTES", "5"), ("NODE_AGENT_POLICY__REBOOT_WAIT", "5m")], "conflicting"),
            (&[("NODE_AGENT_ENGINE__CHECK_CONCURRENCY", "0")], "engine.check_concurrency"),
            (&[("NODE_AGENT_HA__ENABLED", "true"), ("NODE_AGENT_HA__LEASE_DURATION", "1s")], "ha.lease_duration"),
            (&[("NODE_AGENT_HA__ENABLED", "true"), ("NODE_AGENT_HA__LEASE_NAME", "Node_Agent")], "ha.lease_name"),
            (&[("NODE_AGENT_HA__ENABLED", "maybe")], "ha.enabled"),
        ];
        for (pairs, needle) in cases {
            let err = load(pairs).expect_err(needle).to_string();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn the_readme_maintenance_window_example_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n  [[windows]]").expect("the README has a [[windows]] example");
        let block = &readme[start + "```toml\n".len()..];
        let block: String =
            block[..block.find("```").expect("closed")].lines().map(|l| format!("{}\n", l.trim_start())).collect();
        let dir = std::env::temp_dir().join(format!("windows-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, &block).unwrap();
        let config = Config::load(Some(&path), &EnvMap::new(), &CliOverrides::default()).expect(&block);
        let windows = config.windows();
        assert_eq!(windows.describe(), "allow mon-fri 01:00-05:00 Europe/London; deny wed 02:00-03:00 Europe/London");
        // Wednesday 2026-12-09: open at 01:30 GMT, closed for the backup, open after it.
        let at = |s: &str| windows.at(s.parse().unwrap()).open();
        assert!(at("2026-12-09T01:30:00Z"));
        assert!(!at("2026-12-09T02:30:00Z"));
        assert!(at("2026-12-09T03:30:00Z"));
        assert!(!at("2026-12-12T02:00:00Z"), "Saturday");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn go_bool_forms() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Some(false));
        }
        assert_eq!(parse_go_bool("yes"), None);
    }
}
