//! Host mode's configuration: built-in defaults < TOML or YAML file <
//! environment (`NODE_AGENT_<SECTION>__<KEY>`, e.g.
//! `NODE_AGENT_SAFETY__DRY_RUN=true`). A bad value, an unknown key or two
//! settings that contradict each other stop start-up with an error naming
//! the key, the value and the accepted form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml, Yaml};
use serde::{Deserialize, Serialize};

use super::window::{RuleConfig, Windows};
use crate::config::{
    ConfigError, EnvMap, EtcdTlsRule, LogFormat, describe_figment, duration_str, env_dict, etcd_tls_rule,
};

/// The default host-mode configuration file.
pub const DEFAULT_HOST_CONFIG: &str = "/etc/node-agent/host.toml";

/// `[host]`: this host and how often it looks at itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostSection {
    /// The host's name in etcd, logs and metrics (empty: the kernel's hostname).
    pub name: String,
    /// Where the boot id is read; a new value after a reboot tells the agent
    /// that the reboot happened.
    pub boot_id_file: PathBuf,
    /// How often the detectors and the health gate run.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// Up to this much random delay is added to each interval, so a fleet
    /// started at once does not act in step.
    #[serde(with = "duration_str")]
    pub jitter: Duration,
}

impl Default for HostSection {
    fn default() -> Self {
        HostSection {
            name: String::new(),
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            interval: Duration::from_secs(300),
            jitter: Duration::from_secs(30),
        }
    }
}

/// One reboot-required detector (`[[detectors]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DetectorConfig {
    /// A reboot is needed while this file exists (Debian's and Ubuntu's
    /// `/var/run/reboot-required`).
    File {
        /// The sentinel file.
        path: PathBuf,
    },
    /// A program says whether a reboot is needed by its exit code.
    Command {
        /// Program and arguments.
        command: Vec<String>,
        /// Exit codes that mean "a reboot is needed" (default `[0]`); every
        /// other exit code means "not needed". A program that cannot run,
        /// times out or is killed by a signal is a detector failure.
        #[serde(default = "zero")]
        reboot_exit_codes: Vec<i32>,
        /// How long it may run.
        #[serde(default = "thirty_secs", with = "duration_str")]
        timeout: Duration,
    },
}

fn zero() -> Vec<i32> {
    vec![0]
}

fn thirty_secs() -> Duration {
    Duration::from_secs(30)
}

impl DetectorConfig {
    /// A short name for logs and metrics: `file:/var/run/reboot-required`, `command:needs-restarting`.
    #[must_use]
    pub fn name(&self) -> String {
        match self {
            DetectorConfig::File { path } => format!("file:{}", path.display()),
            DetectorConfig::Command { command, .. } => {
                let program = command.first().map_or("", String::as_str);
                format!("command:{}", Path::new(program).file_name().map_or(program.into(), |f| f.to_string_lossy()))
            }
        }
    }
}

/// `[gate]`: the operator's health script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateSection {
    /// Program and arguments (empty: no script; peers and policy still gate).
    /// Exit 0 means healthy; anything else blocks reboots fleet-wide.
    pub command: Vec<String>,
    /// How long it may run (past it: unhealthy).
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for GateSection {
    fn default() -> Self {
        GateSection { command: Vec::new(), timeout: Duration::from_secs(60) }
    }
}

/// Which store the fleet coordinates through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// etcd (`[etcd]`).
    #[default]
    Etcd,
    /// Kubernetes Leases (`[kubernetes]`), for clusters without etcd access.
    Kubernetes,
}

/// `[coordination]`: the backend and its timings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationSection {
    /// `"etcd"` or `"kubernetes"`.
    pub backend: Backend,
    /// The lock's TTL while the holder runs: a holder that dies before it
    /// reboots frees the lock within it.
    #[serde(with = "duration_str")]
    pub lock_ttl: Duration,
    /// How long one pass waits for the lock before it gives up (exit 4 with `--once`).
    #[serde(with = "duration_str")]
    pub lock_wait: Duration,
    /// The TTL of this host's health marker: a host that stops reporting
    /// for this long is no longer counted (as healthy or unhealthy).
    #[serde(with = "duration_str")]
    pub health_ttl: Duration,
    /// Deadline of each call to the backend.
    #[serde(with = "duration_str")]
    pub call_timeout: Duration,
}

impl Default for CoordinationSection {
    fn default() -> Self {
        CoordinationSection {
            backend: Backend::Etcd,
            lock_ttl: Duration::from_secs(30),
            lock_wait: Duration::from_secs(60),
            health_ttl: Duration::from_secs(900),
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// `[etcd]`: the etcd backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix: the lock is `<prefix>/lock/`, health markers
    /// `<prefix>/health/<host>`, the last reboot `<prefix>/last-reboot`.
    pub prefix: String,
    /// PEM CA bundle that signs the etcd servers' certificates (needed for
    /// `https://` endpoints).
    pub ca_file: PathBuf,
    /// PEM client certificate, for etcd's `--client-cert-auth` (with `key_file`).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// etcd user, for etcd's role-based access (with `password_file`).
    pub username: String,
    /// A file holding that user's password (never logged).
    pub password_file: PathBuf,
}

impl Default for EtcdSection {
    fn default() -> Self {
        EtcdSection {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/node-agent/host".to_owned(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            username: String::new(),
            password_file: PathBuf::new(),
        }
    }
}

fn set(p: &Path) -> bool {
    !p.as_os_str().is_empty()
}

impl EtcdSection {
    fn validate(&self) -> Result<(), ConfigError> {
        match etcd_tls_rule(&self.endpoints, &self.ca_file, &self.cert_file, &self.key_file) {
            None => {}
            Some(EtcdTlsRule::MixedSchemes) => {
                return Err(invalid("etcd.endpoints", "mixes http:// and https:// URLs: use one scheme"));
            }
            Some(EtcdTlsRule::HttpsWithoutCa) => {
                return Err(invalid(
                    "etcd.ca_file",
                    "empty, but the endpoints are https://: expected the PEM CA bundle that signs the etcd servers' certificates",
                ));
            }
            Some(EtcdTlsRule::TlsFilesWithHttp) => {
                return Err(ConfigError::Conflict {
                    first: "etcd.ca_file".into(),
                    second: "etcd.endpoints".into(),
                    message: "TLS files are set but the endpoints are http://: use https:// URLs".into(),
                });
            }
            Some(EtcdTlsRule::CertWithoutKey) => {
                return Err(invalid(
                    "etcd.cert_file",
                    "etcd.cert_file and etcd.key_file go together: set both or neither",
                ));
            }
        }
        if self.username.is_empty() == set(&self.password_file) {
            return Err(invalid(
                "etcd.username",
                "etcd.username and etcd.password_file go together: set both or neither",
            ));
        }
        for (key, p) in [
            ("etcd.ca_file", &self.ca_file),
            ("etcd.cert_file", &self.cert_file),
            ("etcd.key_file", &self.key_file),
            ("etcd.password_file", &self.password_file),
        ] {
            if set(p) && !p.is_file() {
                return Err(invalid(key, format!("{}: no such file", p.display())));
            }
        }
        Ok(())
    }
}

/// `[kubernetes]`: the Kubernetes Lease backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesSection {
    /// A kubeconfig file (empty: the in-cluster configuration).
    pub kubeconfig: String,
    /// The Leases' namespace.
    pub namespace: String,
    /// The Leases' name prefix (`<prefix>-lock`, `<prefix>-health-<host>`, `<prefix>-last-reboot`).
    pub name_prefix: String,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        KubernetesSection {
            kubeconfig: String::new(),
            namespace: "kube-system".to_owned(),
            name_prefix: "node-agent-host".to_owned(),
        }
    }
}

/// `[policy]`: how much of the fleet must be healthy before one host reboots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    /// Hosts that must report healthy (this one included) for a reboot to start.
    pub min_healthy: u32,
    /// The same as a fraction (0.0 to 1.0) of the known hosts, or of
    /// `expected_hosts` when more are expected than report.
    pub min_healthy_fraction: f64,
    /// The fleet's size as the operator knows it (0: unknown). Hosts that do
    /// not report count as not healthy.
    pub expected_hosts: u32,
    /// With fewer hosts reporting than this, nothing reboots (a partition,
    /// a wrong prefix or a fleet still starting looks like a small fleet).
    pub min_known_hosts: u32,
    /// Whether one host reporting unhealthy blocks every reboot.
    pub block_on_unhealthy_peer: bool,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            min_healthy: 0,
            min_healthy_fraction: 0.0,
            expected_hosts: 0,
            min_known_hosts: 1,
            block_on_unhealthy_peer: true,
        }
    }
}

/// `[safety]`: what holds reboots back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetySection {
    /// While this file exists no host starts a reboot (exit 5 with `--once`).
    pub kill_switch: PathBuf,
    /// Run everything (detectors, gate, lock) but never reboot.
    pub dry_run: bool,
    /// The least time between two successful reboots, fleet-wide.
    #[serde(with = "duration_str")]
    pub cooldown: Duration,
    /// Maintenance windows (`[[safety.windows]]`).
    pub windows: Vec<RuleConfig>,
    /// The first retry delay after a transient failure (etcd, a reboot
    /// command that failed); doubled on each failure, with jitter.
    #[serde(with = "duration_str")]
    pub backoff: Duration,
    /// The longest retry delay.
    #[serde(with = "duration_str")]
    pub max_backoff: Duration,
}

impl Default for SafetySection {
    fn default() -> Self {
        SafetySection {
            kill_switch: PathBuf::from("/etc/node-agent/disable-reboots"),
            dry_run: false,
            cooldown: Duration::from_secs(1800),
            windows: Vec::new(),
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
        }
    }
}

/// `[reboot]`: how the host reboots itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebootSection {
    /// Program and arguments.
    pub command: Vec<String>,
    /// How long the command may run.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// How long the lock stays held for a reboot: the host must be back and
    /// healthy within it, or the lock frees itself and the fleet goes on.
    #[serde(with = "duration_str")]
    pub hold: Duration,
}

impl Default for RebootSection {
    fn default() -> Self {
        RebootSection {
            command: vec!["systemctl".to_owned(), "reboot".to_owned()],
            timeout: Duration::from_secs(120),
            hold: Duration::from_secs(1800),
        }
    }
}

/// `[server]`: the HTTP port (the same server as cluster mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// `/metrics`, `/healthz`, `/readyz` (0: no server).
    pub metrics_port: u16,
    /// The address it binds.
    pub metrics_address: String,
    /// Log format (JSON by default: one object per line for journald).
    pub log_format: LogFormat,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            metrics_port: crate::config::DEFAULT_METRICS_PORT,
            metrics_address: "0.0.0.0".to_owned(),
            log_format: LogFormat::Json,
        }
    }
}

/// Host mode's whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// This host.
    pub host: HostSection,
    /// Reboot-required detectors (none: the sentinel file `/var/run/reboot-required`).
    pub detectors: Vec<DetectorConfig>,
    /// The health gate.
    pub gate: GateSection,
    /// The backend and its timings.
    pub coordination: CoordinationSection,
    /// etcd.
    pub etcd: EtcdSection,
    /// Kubernetes Leases.
    pub kubernetes: KubernetesSection,
    /// Fleet health policy.
    pub policy: PolicySection,
    /// Safeguards.
    pub safety: SafetySection,
    /// The reboot itself.
    pub reboot: RebootSection,
    /// The HTTP server and logs.
    pub server: ServerSection,
}

fn invalid(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: setting.to_owned(), message: message.into() }
}

fn argv(setting: &str, v: &[String], may_be_empty: bool) -> Result<(), ConfigError> {
    match v.first() {
        None if may_be_empty => Ok(()),
        None => Err(invalid(setting, "empty: expected a program and its arguments, e.g. [\"systemctl\", \"reboot\"]")),
        Some(p) if p.trim().is_empty() => {
            Err(invalid(setting, "the program is an empty string: expected a path or a name on PATH"))
        }
        Some(_) => Ok(()),
    }
}

impl HostConfig {
    /// Loads defaults < `file` (TOML, or YAML for `.yaml`/`.yml`) < `env`, then validates.
    pub fn load(file: Option<&Path>, env: &EnvMap) -> Result<HostConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(HostConfig::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!(
                        "{}: no such file (expected a TOML or YAML file such as examples/host.toml)",
                        path.display()
                    ),
                ));
            }
            let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            fig = if yaml { fig.merge(Yaml::file_exact(path)) } else { fig.merge(Toml::file_exact(path)) };
        }
        let dict = env_dict(env, &["NODE_AGENT_ETCD__ENDPOINTS"])?;
        fig = fig.merge(Serialized::defaults(figment::value::Value::from(dict)).profile(figment::Profile::Default));
        let mut config: HostConfig = fig.extract().map_err(|e| ConfigError::Parse(describe_figment(&e)))?;
        if config.detectors.is_empty() {
            config.detectors.push(DetectorConfig::File { path: PathBuf::from("/var/run/reboot-required") });
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting and their combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.host;
        if h.interval < Duration::from_millis(100) {
            return Err(invalid("host.interval", format!("{:?} is too short: expected at least 100ms", h.interval)));
        }
        if h.jitter > h.interval {
            return Err(invalid("host.jitter", "must not exceed host.interval"));
        }
        if h.name.contains('/') || h.name.chars().any(char::is_whitespace) {
            return Err(invalid("host.name", format!("{:?}: expected a host name without '/' or spaces", h.name)));
        }
        for (i, d) in self.detectors.iter().enumerate() {
            match d {
                DetectorConfig::File { path } if path.as_os_str().is_empty() => {
                    return Err(invalid(&format!("detectors[{i}].path"), "empty: expected a file path"));
                }
                DetectorConfig::Command { command, reboot_exit_codes, timeout } => {
                    argv(&format!("detectors[{i}].command"), command, false)?;
                    if reboot_exit_codes.is_empty() || reboot_exit_codes.iter().any(|c| !(0..=255).contains(c)) {
                        return Err(invalid(
                            &format!("detectors[{i}].reboot_exit_codes"),
                            "expected a non-empty list of exit codes from 0 to 255",
                        ));
                    }
                    if timeout.is_zero() {
                        return Err(invalid(&format!("detectors[{i}].timeout"), "must be positive"));
                    }
                }
                DetectorConfig::File { .. } => {}
            }
        }
        argv("gate.command", &self.gate.command, true)?;
        if self.gate.timeout.is_zero() {
            return Err(invalid("gate.timeout", "must be positive"));
        }
        let e = &self.etcd;
        if self.coordination.backend == Backend::Etcd {
            if e.endpoints.is_empty() {
                return Err(invalid(
                    "etcd.endpoints",
                    "empty: expected at least one URL such as http://127.0.0.1:2379",
                ));
            }
            for u in &e.endpoints {
                if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
                    return Err(invalid(
                        "etcd.endpoints",
                        format!("{u:?}: expected a URL such as http://127.0.0.1:2379"),
                    ));
                }
            }
            if !e.prefix.starts_with('/') || e.prefix.len() < 2 {
                return Err(invalid(
                    "etcd.prefix",
                    format!("{:?}: expected a key prefix such as /node-agent/host", e.prefix),
                ));
            }
            e.validate()?;
        } else {
            let k = &self.kubernetes;
            if !health_core::domain::is_dns_label(&k.namespace) {
                return Err(invalid("kubernetes.namespace", format!("{:?}: expected a namespace name", k.namespace)));
            }
            if !health_core::domain::is_dns_label(&k.name_prefix) || k.name_prefix.len() > 40 {
                return Err(invalid(
                    "kubernetes.name_prefix",
                    format!("{:?}: expected lowercase letters, digits and '-', at most 40", k.name_prefix),
                ));
            }
            if !h.name.is_empty() && !health_core::domain::is_dns_label(&h.name) {
                return Err(invalid(
                    "host.name",
                    format!(
                        "{:?}: the Kubernetes backend names Leases after hosts: expected lowercase letters, digits and '-'",
                        h.name
                    ),
                ));
            }
        }
        let c = &self.coordination;
        if c.lock_ttl < Duration::from_secs(2) {
            return Err(invalid("coordination.lock_ttl", "expected at least 2s"));
        }
        if c.call_timeout.is_zero() || c.call_timeout >= c.lock_ttl {
            return Err(ConfigError::Conflict {
                first: "coordination.call_timeout".into(),
                second: "coordination.lock_ttl".into(),
                message: "each call must time out (positive) before the lock lease would expire".into(),
            });
        }
        if c.health_ttl <= h.interval + h.jitter {
            return Err(ConfigError::Conflict {
                first: "coordination.health_ttl".into(),
                second: "host.interval".into(),
                message: format!(
                    "a health marker must outlive one interval plus jitter ({:?}), or healthy hosts drop out between reports",
                    h.interval + h.jitter
                ),
            });
        }
        let p = &self.policy;
        if !(0.0..=1.0).contains(&p.min_healthy_fraction) || p.min_healthy_fraction.is_nan() {
            return Err(invalid(
                "policy.min_healthy_fraction",
                format!("{}: expected a fraction from 0.0 to 1.0", p.min_healthy_fraction),
            ));
        }
        if p.expected_hosts != 0 && p.min_healthy > p.expected_hosts {
            return Err(ConfigError::Conflict {
                first: "policy.min_healthy".into(),
                second: "policy.expected_hosts".into(),
                message: "more healthy hosts are required than the fleet has: nothing could ever reboot".into(),
            });
        }
        let s = &self.safety;
        if s.kill_switch.as_os_str().is_empty() {
            return Err(invalid("safety.kill_switch", "empty: expected a file path"));
        }
        Windows::parse(&s.windows).map_err(|(i, field, m)| invalid(&format!("safety.windows[{i}].{field}"), m))?;
        if s.backoff.is_zero() || s.max_backoff < s.backoff {
            return Err(invalid("safety.backoff", "must be positive and not above safety.max_backoff"));
        }
        argv("reboot.command", &self.reboot.command, false)?;
        if self.reboot.timeout.is_zero() || self.reboot.timeout >= self.reboot.hold {
            return Err(invalid("reboot.timeout", "must be positive and below reboot.hold"));
        }
        if self.reboot.hold <= self.coordination.lock_ttl {
            return Err(ConfigError::Conflict {
                first: "reboot.hold".into(),
                second: "coordination.lock_ttl".into(),
                message: "the lock must be held through a reboot for longer than its running TTL".into(),
            });
        }
        if self.server.metrics_address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "server.metrics_address",
                format!("{:?}: expected an IP address such as 0.0.0.0 or 127.0.0.1", self.server.metrics_address),
            ));
        }
        Ok(())
    }

    /// The parsed maintenance windows (validated at load).
    #[must_use]
    pub fn windows(&self) -> Windows {
        Windows::parse(&self.safety.windows).unwrap_or_default()
    }

    /// The host's name: `host.name`, else the kernel's hostname.
    pub fn node_name(&self) -> Result<String, ConfigError> {
        if !self.host.name.is_empty() {
            return Ok(self.host.name.clone());
        }
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .map_err(|e| invalid("host.name", format!("empty and the hostname cannot be read ({e}): set it")))?;
        if name.is_empty() {
            return Err(invalid("host.name", "empty and the kernel's hostname is empty: set it"));
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_toml(text: &str, env: &[(&str, &str)]) -> Result<HostConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("host-config-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.toml");
        std::fs::write(&path, text).unwrap();
        let env: EnvMap = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let r = HostConfig::load(Some(&path), &env);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn defaults_are_safe_and_valid() {
        let c = HostConfig::load(None, &EnvMap::new()).unwrap();
        assert_eq!(c.reboot.command, ["systemctl", "reboot"]);
        assert_eq!(c.detectors, [DetectorConfig::File { path: "/var/run/reboot-required".into() }]);
        assert!(!c.safety.dry_run);
        assert_eq!(c.safety.cooldown, Duration::from_secs(1800));
        assert!(c.policy.block_on_unhealthy_peer);
    }

    #[test]
    fn file_then_environment() {
        let c = load_toml(
            "[host]\nname = \"web-1\"\ninterval = \"1m\"\n[[detectors]]\nkind = \"command\"\ncommand = [\"/bin/needs\", \"-r\"]\nreboot_exit_codes = [1]\n",
            &[("NODE_AGENT_SAFETY__DRY_RUN", "true"), ("NODE_AGENT_ETCD__ENDPOINTS", "http://a:2379,http://b:2379")],
        )
        .unwrap();
        assert_eq!(c.host.name, "web-1");
        assert_eq!(c.host.interval, Duration::from_secs(60));
        assert!(c.safety.dry_run);
        assert_eq!(c.etcd.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.detectors[0].name(), "command:needs");
    }

    #[test]
    fn yaml_is_accepted() {
        let dir = std::env::temp_dir().join(format!("host-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.yaml");
        std::fs::write(&path, "host:\n  name: db-2\nsafety:\n  windows:\n    - action: allow\n      days: [sat, sun]\n      start: \"01:00\"\n      end: \"05:00\"\n      time_zone: Europe/Berlin\n").unwrap();
        let c = HostConfig::load(Some(&path), &EnvMap::new()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.host.name, "db-2");
        assert_eq!(c.windows().describe(), "allow sat,sun 01:00-05:00 Europe/Berlin");
    }

    #[test]
    fn broken_configs_name_the_field() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("[host]\ninterval = \"soon\"\n", &[], "host.interval"),
            ("[host]\nintervall = \"1m\"\n", &[], "intervall"),
            ("[gate]\ncommand = [\"\"]\n", &[], "gate.command"),
            ("[[detectors]]\nkind = \"magic\"\n", &[], "magic"),
            ("[[detectors]]\nkind = \"command\"\ncommand = []\n", &[], "detectors[0].command"),
            (
                "[[detectors]]\nkind = \"command\"\ncommand = [\"x\"]\nreboot_exit_codes = [300]\n",
                &[],
                "reboot_exit_codes",
            ),
            ("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n", &[], "etcd.endpoints"),
            ("[etcd]\nprefix = \"node\"\n", &[], "etcd.prefix"),
            ("[policy]\nmin_healthy_fraction = 1.5\n", &[], "policy.min_healthy_fraction"),
            ("[policy]\nmin_healthy = -1\n", &[], "min_healthy"),
            (
                "[[safety.windows]]\naction = \"allow\"\nstart = \"1am\"\nend = \"02:00\"\n",
                &[],
                "safety.windows[0].start",
            ),
            (
                "[[safety.windows]]\naction = \"allow\"\nstart = \"01:00\"\nend = \"02:00\"\ntime_zone = \"Europe/Atlantis\"\n",
                &[],
                "safety.windows[0].time_zone",
            ),
            ("[reboot]\ncommand = []\n", &[], "reboot.command"),
            ("[etcd]\nendpoints = [\"https://etcd:2379\"]\n", &[], "etcd.ca_file"),
            ("[etcd]\nendpoints = [\"https://etcd:2379\"]\nca_file = \"/nonexistent/ca.pem\"\n", &[], "etcd.ca_file"),
            ("[etcd]\nca_file = \"/etc/hostname\"\n", &[], "https://"),
            ("[etcd]\nusername = \"agent\"\n", &[], "etcd.username"),
            ("[reboot]\nhold = \"10s\"\n", &[], "reboot.hold"),
            ("", &[("NODE_AGENT_SAFETY__DRY_RUN", "maybe")], "NODE_AGENT_SAFETY__DRY_RUN"),
            ("", &[("NODE_AGENT_SERVER__METRICS_PORT", "70000")], "NODE_AGENT_SERVER__METRICS_PORT"),
            ("[coordination]\nhealth_ttl = \"1m\"\n", &[], "coordination.health_ttl"),
            ("[coordination]\nbackend = \"zookeeper\"\n", &[], "backend"),
            ("[coordination]\nbackend = \"kubernetes\"\n[host]\nname = \"Web_1\"\n", &[], "host.name"),
        ];
        for (text, env, field) in cases {
            let err = load_toml(text, env).unwrap_err().to_string();
            assert!(err.contains(field), "{text:?} {env:?}: {err}");
        }
    }
}
