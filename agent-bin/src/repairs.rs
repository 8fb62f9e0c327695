//! Soft repairs and repair ladders: `[repairs.NAME]` and `[[ladder]]`.
//!
//! A repair is a rung that disrupts no workload (restart kubelet, restart
//! the Cilium agent's pod, re-apply a sidecar's mark-ready). Each names how
//! it is performed (`kind`), how often it is tried in a node's history
//! (`attempts`) and how long each try is given (`wait`):
//!
//! ```toml
//! [repairs.restart-kubelet]
//! kind = "http"                 # http | command | restart-pods | grpc
//! url = "https://node-repair.internal/v1/nodes/{node}/restart/kubelet"
//! attempts = 1
//! wait = "2m"
//!
//! [repairs.restart-cilium]
//! kind = "restart-pods"
//! namespace = "kube-system"
//! selector = "k8s-app=cilium"
//!
//! [[ladder]]
//! class = "standard"            # standard | gpu; leave out for both
//! checker = "NodeReady"         # leave out for any failure
//! rungs = ["restart-kubelet", "reboot", "replace"]
//! ```
//!
//! A failing node climbs the first ladder of its class naming a failing
//! checker, else the first of its class naming none, else the default
//! (`reboot`, then `replace` where `policy.escalation.replace` allows).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use health_core::{Executor, Ladder, NodeClass, Repair, RepairSpec, Rung};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, duration_str};
use crate::node::NodeRef;

/// How a soft repair is performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepairKind {
    /// One HTTP request (`url`, `method`, optional `token_file`, `ca_file`).
    Http,
    /// A program (`command`: the program and its arguments), with
    /// `NODE_NAME`, `NODE_POOL` and `ACTION` (the repair's name) set.
    Command,
    /// Deletes the node's pods in `namespace` matching `selector`; their
    /// DaemonSet starts new ones.
    RestartPods,
    /// The remote executor of `[executor]` (needs `executor.kind = "grpc"`),
    /// asked for `ACTION_REPAIR` with the repair's name.
    Grpc,
}

impl RepairKind {
    const fn as_str(self) -> &'static str {
        match self {
            RepairKind::Http => "http",
            RepairKind::Command => "command",
            RepairKind::RestartPods => "restart-pods",
            RepairKind::Grpc => "grpc",
        }
    }
}

fn one() -> u32 {
    1
}

fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

fn post() -> String {
    "POST".to_owned()
}

/// `[repairs.NAME]`: one soft repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairConfig {
    /// How it is performed.
    pub kind: RepairKind,
    /// Tries in one node's history (1 to 10). Default 1.
    #[serde(default = "one")]
    pub attempts: u32,
    /// How long a try is given before the node is judged again. Default 2m.
    #[serde(default = "two_minutes", with = "duration_str")]
    pub wait: Duration,
    /// The longest a try may take (http, command, restart-pods). Default 30s.
    #[serde(default = "thirty_seconds", with = "duration_str")]
    pub timeout: Duration,
    /// http: the URL; `{node}`, `{pool}`, `{repair}` and `{internal_ip}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// http: the method. Default POST.
    #[serde(default = "post")]
    pub method: String,
    /// http: a file holding a bearer token (read at start-up, never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// http: a PEM file of CA certificates trusted besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// command: the program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// restart-pods: the pods' namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// restart-pods: the pods' label selector, such as `k8s-app=cilium`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// `[[ladder]]`: the rungs for a class of nodes, optionally for one checker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderConfig {
    /// `standard` or `gpu`; left out: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The checker whose failure selects this ladder; left out: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<String>,
    /// Repair names, then `reboot` or `drain-reboot`, then `replace`.
    pub rungs: Vec<String>,
}

fn invalid(setting: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, message: message.into() }
}

/// Checks one repair's kind-specific settings.
pub(crate) fn check_repair(section: &str, r: &RepairConfig, grpc_executor: bool) -> Result<(), ConfigError> {
    let field = |f: &str| format!("{section}.{f}");
    let kind = r.kind.as_str();
    let only = |f: &str, set: bool, for_kind: RepairKind| {
        if set && r.kind != for_kind {
            return Err(invalid(
                field(f),
                format!("only applies to kind = \"{}\" (this is {kind:?})", for_kind.as_str()),
            ));
        }
        Ok(())
    };
    only("url", r.url.is_some(), RepairKind::Http)?;
    only("token_file", r.token_file.is_some(), RepairKind::Http)?;
    only("ca_file", r.ca_file.is_some(), RepairKind::Http)?;
    only("method", r.method != "POST", RepairKind::Http)?;
    only("command", r.command.is_some(), RepairKind::Command)?;
    only("namespace", r.namespace.is_some(), RepairKind::RestartPods)?;
    only("selector", r.selector.is_some(), RepairKind::RestartPods)?;
    if r.timeout.is_zero() {
        return Err(invalid(field("timeout"), "must be a positive duration such as \"30s\""));
    }
    match r.kind {
        RepairKind::Http => {
            let url = r.url.as_deref().ok_or_else(|| {
                invalid(
                    field("url"),
                    "must be set for kind = \"http\": such as \"http://{internal_ip}:9090/v0/mark-ready\"",
                )
            })?;
            recovery_exec::HttpExecutor::check_template(url).map_err(|e| invalid(field("url"), e.to_string()))?;
            if !matches!(r.method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
                return Err(invalid(
                    field("method"),
                    format!("invalid value {:?}: expected GET, POST, PUT, PATCH or DELETE", r.method),
                ));
            }
        }
        RepairKind::Command => {
            if r.command.as_ref().is_none_or(|c| c.first().is_none_or(|p| p.trim().is_empty())) {
                return Err(invalid(
                    field("command"),
                    "must be set for kind = \"command\": the program and its arguments, such as \
                     [\"/usr/local/sbin/restart-kubelet\", \"--node\"]",
                ));
            }
        }
        RepairKind::RestartPods => {
            let ns = r.namespace.as_deref().unwrap_or_default();
            if !health_core::domain::is_dns_label(ns) {
                return Err(invalid(
                    field("namespace"),
                    format!("{ns:?}: expected the pods' namespace, such as \"kube-system\""),
                ));
            }
            let sel = r.selector.as_deref().unwrap_or_default().trim();
            let ok = !sel.is_empty()
                && sel.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=!,()".contains(c) || c == ' ');
            if !ok {
                return Err(invalid(
                    field("selector"),
                    format!("{sel:?}: expected a label selector such as \"k8s-app=cilium\""),
                ));
            }
        }
        RepairKind::Grpc => {
            if !grpc_executor {
                return Err(invalid(
                    field("kind"),
                    "\"grpc\" uses the remote executor of [executor]: set executor.kind = \"grpc\" and executor.endpoint",
                ));
            }
        }
    }
    Ok(())
}

/// The policy's repairs and ladders from `[repairs.NAME]` and `[[ladder]]`,
/// every setting checked (the field is named in the error). `checkers` are
/// the configured checkers' names.
pub fn policy_parts(
    repairs: &BTreeMap<String, RepairConfig>,
    ladders: &[LadderConfig],
    checkers: &[String],
    grpc_executor: bool,
) -> Result<(Vec<RepairSpec>, Vec<Ladder>), ConfigError> {
    let mut specs = Vec::with_capacity(repairs.len());
    for (name, r) in repairs {
        let repair = Repair::new(name).map_err(|e| invalid(format!("repairs.{name}"), e.to_string()))?;
        check_repair(&format!("repairs.{name}"), r, grpc_executor)?;
        specs.push(RepairSpec { repair, attempts: r.attempts, wait: r.wait });
    }
    let mut out = Vec::with_capacity(ladders.len());
    for (i, l) in ladders.iter().enumerate() {
        let class = match l.class.as_deref() {
            None => None,
            Some("standard") => Some(NodeClass::Standard),
            Some("gpu") => Some(NodeClass::Gpu),
            Some(other) => {
                return Err(invalid(
                    format!("ladder[{i}].class"),
                    format!("invalid value {other:?}: expected \"standard\" or \"gpu\" (or leave it out for both)"),
                ));
            }
        };
        if let Some(c) = &l.checker
            && !checkers.contains(c)
        {
            return Err(invalid(
                format!("ladder[{i}].checker"),
                format!("{c:?} is not a configured checker: expected one of {}", checkers.join(", ")),
            ));
        }
        let mut rungs = Vec::with_capacity(l.rungs.len());
        for name in &l.rungs {
            let rung = match name.as_str() {
                "reboot" => Rung::Reboot,
                "drain-reboot" => Rung::DrainReboot,
                "replace" => Rung::Replace,
                other => match specs.iter().find(|s| s.repair.as_str() == other) {
                    Some(s) => Rung::Repair(s.repair),
                    None => {
                        let defined: Vec<&str> = specs.iter().map(|s| s.repair.as_str()).collect();
                        return Err(invalid(
                            format!("ladder[{i}].rungs"),
                            format!(
                                "{other:?} is neither \"reboot\", \"drain-reboot\", \"replace\" nor a repair defined \
                                 in [repairs.NAME] (defined: {})",
                                if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
                            ),
                        ));
                    }
                },
            };
            rungs.push(rung);
        }
        out.push(Ladder { class, checker: l.checker.clone(), rungs });
    }
    for s in &specs {
        if !out.iter().any(|l| l.rungs.contains(&Rung::Repair(s.repair))) {
            return Err(invalid(
                format!("repairs.{}", s.repair),
                "is not used by any [[ladder]]: add it to a ladder's rungs or remove it",
            ));
        }
    }
    Ok((specs, out))
}

/// A repair and the executor that performs it.
pub type RepairExecutor = (Repair, Arc<dyn Executor<NodeRef>>);

/// Builds the executor of each configured repair. `remote` is the gRPC
/// executor when `executor.kind = "grpc"`.
pub fn executors(
    repairs: &BTreeMap<String, RepairConfig>,
    kube: &kube::Client,
    remote: Option<Arc<dyn Executor<NodeRef>>>,
) -> Result<Vec<RepairExecutor>, String> {
    let mut out: Vec<RepairExecutor> = Vec::with_capacity(repairs.len());
    for (name, r) in repairs {
        let repair = Repair::new(name).map_err(|e| format!("repairs.{name}: {e}"))?;
        let field = |f: &str| format!("repairs.{name}.{f}");
        let executor: Arc<dyn Executor<NodeRef>> = match r.kind {
            RepairKind::RestartPods => Arc::new(recovery_exec::PodRestarter::new(
                kube.clone(),
                r.namespace.as_deref().unwrap_or_default(),
                r.selector.as_deref().unwrap_or_default(),
                r.timeout,
            )),
            RepairKind::Grpc => {
                remote.clone().ok_or_else(|| format!("{}: \"grpc\" needs executor.kind = \"grpc\"", field("kind")))?
            }
            RepairKind::Http | RepairKind::Command => standalone(&format!("repairs.{name}"), repair, r)?,
        };
        out.push((repair, executor));
    }
    Ok(out)
}

/// The executor of an `http` or `command` repair, for any target: they
/// need nothing from the cluster. `section` names the settings in errors.
pub fn standalone<T: recovery_exec::ExecTarget + ?Sized + 'static>(
    section: &str,
    repair: Repair,
    r: &RepairConfig,
) -> Result<Arc<dyn Executor<T>>, String> {
    let field = |f: &str| format!("{section}.{f}");
    match r.kind {
        RepairKind::Http => {
            let mut client = reqwest::Client::builder().connect_timeout(r.timeout.min(Duration::from_secs(10)));
            if let Some(path) = &r.ca_file {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {}: {e}", field("ca_file"), path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    format!("{}: {}: {e} (expected PEM certificates)", field("ca_file"), path.display())
                })?;
                for c in certs {
                    client = client.add_root_certificate(c);
                }
            }
            let client = client.build().map_err(|e| format!("{}: {e}", field("url")))?;
            let method =
                reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| format!("{}: {e}", field("method")))?;
            let url = r.url.as_deref().unwrap_or_default();
            let mut e = recovery_exec::HttpExecutor::new(client, method, url, r.timeout)
                .map_err(|e| format!("{}: {e}", field("url")))?;
            if let Some(path) = &r.token_file {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {}: {e}", field("token_file"), path.display()))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(format!("{}: {} is empty", field("token_file"), path.display()));
                }
                e = e.with_bearer_token(token);
            }
            Ok(Arc::new(e))
        }
        RepairKind::Command => {
            let mut cmd = r.command.clone().unwrap_or_default().into_iter();
            let program = cmd.next().unwrap_or_default();
            Ok(Arc::new(
                recovery_exec::CommandExecutor::new(program, cmd.collect(), vec![health_core::Action::Repair(repair)])
                    .with_timeout(r.timeout),
            ))
        }
        other => Err(format!(
            "{}: {:?} cannot be used here: expected \"http\" or \"command\"",
            field("kind"),
            other.as_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<(Vec<RepairSpec>, Vec<Ladder>), String> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            repairs: BTreeMap<String, RepairConfig>,
            #[serde(default)]
            ladder: Vec<LadderConfig>,
        }
        let doc: Doc = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let checkers = ["NodeReady".to_owned(), "Cilium".to_owned()];
        policy_parts(&doc.repairs, &doc.ladder, &checkers, false).map_err(|e| e.to_string())
    }

    #[test]
    fn repairs_and_ladders_become_policy_parts() {
        let (specs, ladders) = parse(
            r#"
            [repairs.restart-kubelet]
            kind = "http"
            url = "http://sim/{node}/restart/kubelet"
            attempts = 2
            wait = "1m"
            [repairs.restart-cilium]
            kind = "restart-pods"
            namespace = "kube-system"
            selector = "k8s-app=cilium"
            [[ladder]]
            class = "standard"
            checker = "NodeReady"
            rungs = ["restart-kubelet", "reboot"]
            [[ladder]]
            checker = "Cilium"
            rungs = ["restart-cilium", "reboot"]
            "#,
        )
        .expect("valid");
        assert_eq!(specs.len(), 2);
        let kubelet = specs.iter().find(|s| s.repair.as_str() == "restart-kubelet").expect("defined");
        assert_eq!((kubelet.attempts, kubelet.wait), (2, Duration::from_secs(60)));
        assert_eq!(ladders[0].class, Some(NodeClass::Standard));
        assert_eq!(ladders[0].rungs, [Rung::Repair(kubelet.repair), Rung::Reboot]);
        assert_eq!(ladders[1].class, None);
    }

    #[test]
    fn bad_repairs_and_ladders_name_the_field() {
        let cases = [
            ("[repairs.Bad]\nkind = \"command\"\ncommand = [\"x\"]", "repairs.Bad: invalid repair name"),
            ("[repairs.x]\nkind = \"http\"", "repairs.x.url: must be set for kind = \"http\""),
            ("[repairs.x]\nkind = \"http\"\nurl = \"http://h/{host}\"", "repairs.x.url: invalid URL template"),
            ("[repairs.x]\nkind = \"command\"\nurl = \"http://h\"", "repairs.x.url: only applies to kind = \"http\""),
            ("[repairs.x]\nkind = \"command\"", "repairs.x.command: must be set"),
            ("[repairs.x]\nkind = \"restart-pods\"\nselector = \"a=b\"", "repairs.x.namespace"),
            ("[repairs.x]\nkind = \"restart-pods\"\nnamespace = \"kube-system\"", "repairs.x.selector"),
            ("[repairs.x]\nkind = \"grpc\"", "repairs.x.kind: \"grpc\" uses the remote executor"),
            ("[repairs.x]\nkind = \"ssh\"", "unknown variant `ssh`"),
            (
                "[repairs.x]\nkind = \"command\"\ncommand = [\"x\"]\n[[ladder]]\nrungs = [\"reboot\"]",
                "repairs.x: is not used by any [[ladder]]",
            ),
            ("[[ladder]]\nclass = \"big\"\nrungs = [\"reboot\"]", "ladder[0].class: invalid value \"big\""),
            (
                "[[ladder]]\nchecker = \"Disk\"\nrungs = [\"reboot\"]",
                "ladder[0].checker: \"Disk\" is not a configured checker",
            ),
            ("[[ladder]]\nrungs = [\"restart\"]", "ladder[0].rungs: \"restart\" is neither"),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(want);
            assert!(e.contains(want), "{e}\nwanted: {want}");
        }
    }
}
