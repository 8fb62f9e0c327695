//! Server-side printing (`meta.k8s.io/v1` Table), as kubectl asks for with
//! `Accept: application/json;as=Table;...`.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::resource::Kind;
use crate::store::Obj;

/// Whether the request asks for metadata only (`as=PartialObjectMetadata`
/// or `as=PartialObjectMetadataList`, what kube's `get_metadata` and
/// `list_metadata` send).
pub(crate) fn wants_metadata(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=PartialObjectMetadata"))
}

/// An object reduced to a `meta.k8s.io/v1` PartialObjectMetadata, as
/// JSON. Its stored text is scanned for `metadata` and copied, not parsed
/// into a tree (a metadata-only list of 65,536 Nodes is 132 pages).
pub(crate) fn partial(obj: &Obj) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow)]
        metadata: Option<&'a serde_json::value::RawValue>,
    }
    let metadata =
        serde_json::from_slice::<Meta<'_>>(&obj.json).ok().and_then(|m| m.metadata).map_or("{}", |m| m.get());
    let mut out = Vec::with_capacity(metadata.len() + 80);
    out.extend_from_slice(br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#);
    out.extend_from_slice(metadata.as_bytes());
    out.push(b'}');
    out
}

/// Whether the request asks for a Table.
pub(crate) fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

fn col(name: &str, kind: &str, format: &str, desc: &str, priority: u8) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": desc, "priority": priority})
}

pub(crate) fn columns(kind: Kind) -> Vec<Value> {
    let name = col("Name", "string", "name", "Name must be unique within a namespace.", 0);
    let age = col(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    match kind {
        Kind::Node => vec![
            name,
            col("Status", "string", "", "The status of the node", 0),
            col("Roles", "string", "", "The roles of the node", 0),
            age,
            col("Version", "string", "", "Kubelet Version reported by the node.", 0),
            col("Internal-IP", "string", "", "List of addresses reachable to the node.", 1),
            col("OS-Image", "string", "", "OS Image reported by the node.", 1),
        ],
        Kind::Pod => vec![
            name,
            col("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
            col("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            col("Restarts", "string", "", "The number of times the containers in this pod have been restarted.", 0),
            age,
            col("Node", "string", "", "The node the pod runs on.", 1),
        ],
        Kind::Lease => vec![name, col("Holder", "string", "", "The holder of the lease.", 0), age],
        Kind::Event | Kind::EventV1 => vec![
            col("Last Seen", "string", "", "Time since the event was last seen.", 0),
            col("Type", "string", "", "Type of this event.", 0),
            col("Reason", "string", "", "Why the event was generated.", 0),
            col("Object", "string", "", "The object this event is about.", 0),
            col("Message", "string", "", "A human-readable description.", 0),
        ],
        _ => vec![name, age],
    }
}

/// A duration as kubectl prints ages: `45s`, `12m`, `5h`, `3d`.
pub(crate) fn age(since: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(since) else { return "<unknown>".into() };
    let secs = SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86_400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn cells(kind: Kind, v: &Value) -> Vec<Value> {
    let name = json!(s(&v["metadata"]["name"]));
    let created = age(s(&v["metadata"]["creationTimestamp"]));
    match kind {
        Kind::Node => {
            let ready = v["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map_or("Unknown", |c| match s(&c["status"]) {
                    "True" => "Ready",
                    "False" => "NotReady",
                    _ => "Unknown",
                });
            let mut status = ready.to_owned();
            if v["spec"]["unschedulable"] == json!(true) {
                status.push_str(",SchedulingDisabled");
            }
            let ip = v["status"]["addresses"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                .map_or("<none>", |x| s(&x["address"]));
            vec![
                name,
                json!(status),
                json!("<none>"),
                json!(created),
                json!(s(&v["status"]["nodeInfo"]["kubeletVersion"])),
                json!(ip),
                json!(s(&v["status"]["nodeInfo"]["osImage"])),
            ]
        }
        Kind::Pod => {
            let containers = v["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = v["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            vec![
                name,
                json!(format!("{}/{containers}", if ready { containers } else { 0 })),
                json!(s(&v["status"]["phase"])),
                json!("0"),
                json!(created),
                json!(s(&v["spec"]["nodeName"])),
            ]
        }
        Kind::Lease => vec![name, json!(s(&v["spec"]["holderIdentity"])), json!(created)],
        Kind::Event | Kind::EventV1 => {
            let regarding = if kind == Kind::Event { &v["involvedObject"] } else { &v["regarding"] };
            let message = if kind == Kind::Event { &v["message"] } else { &v["note"] };
            let last = [&v["lastTimestamp"], &v["eventTime"], &v["metadata"]["creationTimestamp"]]
                .into_iter()
                .find(|t| t.is_string())
                .map_or_else(|| "<unknown>".to_owned(), |t| age(s(t)));
            vec![
                json!(last),
                json!(s(&v["type"])),
                json!(s(&v["reason"])),
                json!(format!("{}/{}", s(&regarding["kind"]).to_lowercase(), s(&regarding["name"]))),
                json!(s(message)),
            ]
        }
        _ => vec![name, json!(created)],
    }
}

fn row(kind: Kind, obj: &Obj, include_object: bool) -> Value {
    let v = obj.value();
    let object = if include_object {
        v.clone()
    } else {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v["metadata"].clone()})
    };
    json!({"cells": cells(kind, &v), "object": object})
}

/// A Table of `items`.
pub(crate) fn table(kind: Kind, items: &[std::sync::Arc<Obj>], meta: Value, include_object: bool) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(kind),
        "rows": items.iter().map(|o| row(kind, o, include_object)).collect::<Vec<_>>(),
    })
}

/// A single-row Table for a watch event (columns only on the first).
pub(crate) fn table_event(kind: Kind, obj: &Obj, include_object: bool, with_columns: bool) -> Vec<u8> {
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": obj.rv.to_string()},
        "rows": [row(kind, obj, include_object)],
    });
    if with_columns {
        t["columnDefinitions"] = Value::Array(columns(kind));
    }
    t.to_string().into_bytes()
}
