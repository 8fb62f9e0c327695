//! The resources the simulated API server serves: their kinds, URL
//! segments and discovery data, and their schema (typed validation through
//! k8s-openapi, unknown-field reporting).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A kind of object the simulator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Node.
    Node,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Event.
    Event,
    /// events.k8s.io/v1 Event.
    EventV1,
    /// coordination.k8s.io/v1 Lease.
    Lease,
    /// policy/v1 PodDisruptionBudget.
    PodDisruptionBudget,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 Deployment.
    Deployment,
}

/// How a resource is served: its URL segments and discovery data.
#[derive(Debug)]
pub(crate) struct ResourceDef {
    pub(crate) kind: Kind,
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) kind_name: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) short_names: &'static [&'static str],
    pub(crate) verbs: &'static [&'static str],
    /// (subresource, kind, group, version, verbs)
    pub(crate) subresources:
        &'static [(&'static str, &'static str, &'static str, &'static str, &'static [&'static str])],
}

const ALL_VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

pub(crate) const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        kind: Kind::Node,
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind_name: "Node",
        namespaced: false,
        short_names: &["no"],
        verbs: ALL_VERBS,
        subresources: &[("status", "Node", "", "v1", &["get", "patch", "update"])],
    },
    ResourceDef {
        kind: Kind::Pod,
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind_name: "Pod",
        namespaced: true,
        short_names: &["po"],
        verbs: ALL_VERBS,
        subresources: &[
            ("status", "Pod", "", "v1", &["get", "patch", "update"]),
            ("eviction", "Eviction", "policy", "v1", &["create"]),
        ],
    },
    ResourceDef {
        kind: Kind::Event,
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind_name: "Event",
        namespaced: true,
        short_names: &["ev"],
        verbs: ALL_VERBS,
        subresources: &[],
    },
    ResourceDef {
        kind: Kind::EventV1,
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind_name: "Event",
        namespaced: true,
        short_names: &["ev"],
        verbs: ALL_VERBS,
        subresources: &[],
    },
    ResourceDef {
        kind: Kind::Lease,
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind_name: "Lease",
        namespaced: true,
        short_names: &[],
        verbs: ALL_VERBS,
        subresources: &[],
    },
    ResourceDef {
        kind: Kind::PodDisruptionBudget,
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        kind_name: "PodDisruptionBudget",
        namespaced: true,
        short_names: &["pdb"],
        verbs: ALL_VERBS,
        subresources: &[],
    },
    ResourceDef {
        kind: Kind::DaemonSet,
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind_name: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        verbs: ALL_VERBS,
        subresources: &[],
    },
    ResourceDef {
        kind: Kind::Deployment,
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind_name: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        verbs: ALL_VERBS,
        subresources: &[],
    },
];

impl Kind {
    pub(crate) fn def(self) -> &'static ResourceDef {
        RESOURCES.iter().find(|d| d.kind == self).unwrap_or(&RESOURCES[0])
    }

    /// The group/version string (`v1`, `coordination.k8s.io/v1`).
    pub(crate) fn api_version(self) -> String {
        let d = self.def();
        if d.group.is_empty() { d.version.to_owned() } else { format!("{}/{}", d.group, d.version) }
    }

    /// Deserialises into the k8s-openapi type and back: rejects bad types
    /// (422) and drops fields the schema does not declare, as the API server does.
    pub(crate) fn roundtrip(self, v: Value) -> Result<Value, String> {
        fn rt<T: DeserializeOwned + Serialize>(v: Value) -> Result<Value, String> {
            let t: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
            serde_json::to_value(&t).map_err(|e| e.to_string())
        }
        use k8s_openapi::api;
        match self {
            Kind::Node => rt::<api::core::v1::Node>(v),
            Kind::Pod => rt::<api::core::v1::Pod>(v),
            Kind::Event => rt::<api::core::v1::Event>(v),
            Kind::EventV1 => rt::<api::events::v1::Event>(v),
            Kind::Lease => rt::<api::coordination::v1::Lease>(v),
            Kind::PodDisruptionBudget => rt::<api::policy::v1::PodDisruptionBudget>(v),
            Kind::DaemonSet => rt::<api::apps::v1::DaemonSet>(v),
            Kind::Deployment => rt::<api::apps::v1::Deployment>(v),
        }
    }
}

/// Paths (`.spec.foo`) present in `input` but not in `output`.
pub(crate) fn unknown_fields(input: &Value, output: &Value) -> Vec<String> {
    fn walk(input: &Value, output: &Value, path: &mut String, out: &mut Vec<String>) {
        match (input, output) {
            (Value::Object(i), Value::Object(o)) => {
                for (k, v) in i {
                    if v.is_null() {
                        continue;
                    }
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    match o.get(k) {
                        Some(ov) => walk(v, ov, path, out),
                        None => out.push(path.clone()),
                    }
                    path.truncate(len);
                }
            }
            (Value::Array(i), Value::Array(o)) => {
                for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{n}]"));
                    walk(iv, ov, path, out);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(input, output, &mut String::new(), &mut out);
    out
}
