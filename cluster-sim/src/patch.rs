//! JSON merge patch, JSON patch and strategic merge patch.

use json_patch::PatchOperation;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::limits::Limits;

/// A patch kind, from the request's Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386 `application/merge-patch+json`.
    Merge,
    /// RFC 6902 `application/json-patch+json`.
    Json,
    /// Kubernetes `application/strategic-merge-patch+json`.
    Strategic,
    /// Server-side apply, `application/apply-patch+yaml` (JSON bodies).
    Apply,
}

impl PatchKind {
    /// The kind for a Content-Type header.
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" => Ok(PatchKind::Apply),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
    }
}

/// Applies `patch` (already parsed JSON) to `target`, within `limits`: a
/// JSON patch has at most [`Limits::max_json_patch_operations`] operations
/// (413 past it) and copies at most [`Limits::max_object_bytes`] in total
/// (422 past it). Merge and strategic patches grow the object by at most the
/// patch's own size, which the request body limit bounds.
///
/// On error `target` may be left partly patched: apply patches to a copy.
pub fn apply(kind: PatchKind, target: &mut Value, patch: &Value, limits: &Limits) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchKind::Json => {
            let ops = json_patch::Patch::deserialize(patch)
                .map_err(|e| ApiError::bad_request(&format!("invalid JSON patch: {e}")))?;
            if ops.0.len() > limits.max_json_patch_operations {
                return Err(ApiError::entity_too_large(&format!(
                    "The allowed maximum operations in a JSON patch is {}, got {}",
                    limits.max_json_patch_operations,
                    ops.0.len()
                )));
            }
            json(target, &ops.0, limits.max_object_bytes)
        }
        PatchKind::Apply => Err(ApiError::bad_request("an apply patch is applied by its field manager")),
        PatchKind::Strategic => {
            let p = patch
                .as_object()
                .ok_or_else(|| ApiError::bad_request("a strategic merge patch must be a JSON object"))?;
            strategic(target, p)
        }
    }
}

/// 422 for a JSON patch that cannot be applied.
fn json_patch_failed(message: &str) -> ApiError {
    let mut err = ApiError::invalid("patch", message);
    err.message = format!("the JSON patch could not be applied: {message}");
    err
}

/// Applies JSON patch operations one at a time, refusing a `copy` that would
/// bring the bytes this patch copies over `max_copy_bytes`. Each copy may
/// double the document, so without that bound a kilobyte of operations asks
/// for gigabytes; with it, the document grows by at most the patch's own
/// size (its `add` and `replace` values) plus `max_copy_bytes`, and measuring
/// the copies costs no more than `max_copy_bytes` either.
fn json(target: &mut Value, ops: &[PatchOperation], max_copy_bytes: usize) -> Result<(), ApiError> {
    let mut copied = 0;
    for (i, op) in ops.iter().enumerate() {
        if let PatchOperation::Copy(c) = op
            && let Some(from) = target.pointer(c.from.as_str())
        {
            match json_len_within(from, max_copy_bytes - copied) {
                Some(n) => copied += n,
                None => {
                    return Err(json_patch_failed(&format!(
                        "operation {i} (copy from {:?}) would copy more than {max_copy_bytes} bytes in this patch (max_object_bytes)",
                        c.from.as_str()
                    )));
                }
            }
        }
        // One operation at a time, so no undo log is kept: the caller throws
        // `target` away on error.
        json_patch::patch_unsafe(target, std::slice::from_ref(op)).map_err(|mut e| {
            e.operation = i;
            json_patch_failed(&e.to_string())
        })?;
    }
    Ok(())
}

/// The length of `v` as JSON if it is at most `budget` bytes; serialising
/// stops as soon as it goes past.
fn json_len_within(v: &Value, budget: usize) -> Option<usize> {
    struct Counter {
        len: usize,
        budget: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.len += buf.len();
            if self.len > self.budget { Err(std::io::Error::other("over budget")) } else { Ok(buf.len()) }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { len: 0, budget };
    serde_json::to_writer(&mut counter, v).ok().map(|()| counter.len)
}

/// The merge key of a list field, as the Kubernetes schema declares it.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" | "addresses" => "type",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "containerStatuses"
        | "initContainerStatuses" => "name",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn strategic(target: &mut Value, patch: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(d) = patch.get("$patch") {
        match d.as_str() {
            Some("replace") => {
                *target = strip_directives(&Value::Object(patch.clone()));
                return Ok(());
            }
            Some("merge") => {}
            Some("delete") => {
                *target = Value::Null;
                return Ok(());
            }
            _ => return Err(ApiError::bad_request(&format!("unknown patch directive $patch: {d}"))),
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else { return Ok(()) };
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            // $setElementOrder/..., $retainKeys: ordering hints, not changes.
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                strategic(entry, pm)?;
                if entry.is_null() {
                    t.remove(k);
                }
            }
            Value::Array(items) => match (merge_key(k), t.get_mut(k)) {
                (Some(key), Some(Value::Array(existing))) => merge_list(existing, items, key)?,
                (None, Some(Value::Array(existing))) if k == "finalizers" => {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
                _ => {
                    let items: Vec<Value> = items
                        .iter()
                        .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                        .map(strip_directives)
                        .collect();
                    t.insert(k.clone(), Value::Array(items));
                }
            },
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(existing: &mut Vec<Value>, items: &[Value], key: &str) -> Result<(), ApiError> {
    for item in items {
        let Some(obj) = item.as_object() else {
            return Err(ApiError::bad_request(&format!("list items merged by {key:?} must be objects")));
        };
        let Some(id) = obj.get(key) else {
            return Err(ApiError::bad_request(&format!("list item is missing its merge key {key:?}")));
        };
        let pos = existing.iter().position(|e| e.get(key) == Some(id));
        match (obj.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(p)) => {
                existing.remove(p);
            }
            (Some("delete"), None) => {}
            (Some("replace"), Some(p)) => existing[p] = strip_directives(item),
            (_, Some(p)) => strategic(&mut existing[p], obj)?,
            (_, None) => existing.push(strip_directives(item)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({
            "metadata": {"name": "n", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"taints": [{"key": "k1", "effect": "NoSchedule"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                {"type": "DiskPressure", "status": "False"}
            ]}
        })
    }

    #[test]
    fn strategic_merges_conditions_and_taints_by_key() {
        let mut n = node();
        let p = json!({
            "metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
            "spec": {"unschedulable": true, "taints": [{"key": "k2", "effect": "NoExecute"}]},
            "status": {
                "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "DiskPressure"}],
                "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
            }
        });
        apply(PatchKind::Strategic, &mut n, &p, &Limits::default()).unwrap();
        assert_eq!(n["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(n["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(n["spec"]["unschedulable"], json!(true));
        // Taints have no merge key in the Node schema: the list is replaced.
        assert_eq!(n["spec"]["taints"], json!([{"key": "k2", "effect": "NoExecute"}]));
        assert_eq!(
            n["status"]["conditions"][0],
            json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady"})
        );
        assert_eq!(n["status"]["conditions"][1]["type"], "DiskPressure");

        let p = json!({"status": {"conditions": [{"type": "DiskPressure", "$patch": "delete"}]}});
        apply(PatchKind::Strategic, &mut n, &p, &Limits::default()).unwrap();
        assert_eq!(n["status"]["conditions"].as_array().unwrap().len(), 1);
        let p = json!({"spec": {"$patch": "replace", "unschedulable": false}});
        apply(PatchKind::Strategic, &mut n, &p, &Limits::default()).unwrap();
        assert_eq!(n["spec"], json!({"unschedulable": false}));
    }

    #[test]
    fn merge_patch_replaces_lists() {
        let mut n = node();
        let p = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        apply(PatchKind::Merge, &mut n, &p, &Limits::default()).unwrap();
        assert_eq!(n["status"]["conditions"].as_array().unwrap().len(), 1);
        assert_eq!(apply(PatchKind::Merge, &mut n, &json!([1]), &Limits::default()).unwrap_err().code, 400);
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let mut n = node();
        let p = json!([
            {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            {"op": "replace", "path": "/status/conditions/0/status", "value": "False"},
            {"op": "add", "path": "/spec/unschedulable", "value": true}
        ]);
        apply(PatchKind::Json, &mut n, &p, &Limits::default()).unwrap();
        assert_eq!(n["status"]["conditions"][0]["status"], "False");
        let p = json!([{"op": "test", "path": "/metadata/labels/a", "value": "9"}]);
        let e = apply(PatchKind::Json, &mut n, &p, &Limits::default()).unwrap_err();
        assert_eq!(e.code, 422);
        let e = apply(PatchKind::Json, &mut n, &json!([{"op": "frobnicate", "path": "/x"}]), &Limits::default())
            .unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn json_patch_failures_name_the_operation() {
        let mut n = node();
        let p = json!([
            {"op": "add", "path": "/spec/unschedulable", "value": true},
            {"op": "remove", "path": "/spec/nothing-here"}
        ]);
        let e = apply(PatchKind::Json, &mut n, &p, &Limits::default()).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("operation '/1'"), "{}", e.message);
    }

    #[test]
    fn json_patch_operations_are_counted() {
        let limits = Limits::default().max_json_patch_operations(2);
        let test = json!({"op": "test", "path": "/metadata/name", "value": "n"});
        let mut n = node();
        apply(PatchKind::Json, &mut n, &json!([test, test]), &limits).unwrap();
        let e = apply(PatchKind::Json, &mut n, &json!([test, test, test]), &limits).unwrap_err();
        assert_eq!((e.code, e.reason), (413, "RequestEntityTooLarge"));
        assert_eq!(e.message, "Request entity too large: The allowed maximum operations in a JSON patch is 2, got 3");
    }

    #[test]
    fn json_patch_copies_are_bounded() {
        // Each copy doubles the document: 18 of them would ask for gigabytes.
        let limits = Limits::default().max_object_bytes(Limits::MIN_OBJECT_BYTES);
        let mut n = json!({"metadata": {"name": "n"}, "spec": {"podCIDR": "x".repeat(1000)}});
        let ops: Vec<Value> =
            (0..18).map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/spec/c{i}")})).collect();
        let e = apply(PatchKind::Json, &mut n, &Value::Array(ops), &limits).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        // 1 KB doubled six times is 64 KB: the seventh copy goes past.
        assert!(e.message.contains("operation 6 (copy from \"/spec\")"), "{}", e.message);
        assert!(e.message.contains("65536 bytes"), "{}", e.message);
        assert!(n.to_string().len() < 2 * Limits::MIN_OBJECT_BYTES, "the document stopped growing");

        // Copies within the budget apply.
        let mut n = node();
        let p = json!([{"op": "copy", "from": "/metadata/labels/a", "path": "/metadata/labels/z"}]);
        apply(PatchKind::Json, &mut n, &p, &limits).unwrap();
        assert_eq!(n["metadata"]["labels"]["z"], "1");
    }

    #[test]
    fn json_len_within_stops_at_the_budget() {
        let v = json!({"a": [1, 2, 3]});
        let len = v.to_string().len();
        assert_eq!(json_len_within(&v, len), Some(len));
        assert_eq!(json_len_within(&v, len - 1), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"), Ok(PatchKind::Merge));
        assert_eq!(PatchKind::from_content_type("application/apply-patch+yaml"), Ok(PatchKind::Apply));
        assert_eq!(PatchKind::from_content_type("application/yaml").unwrap_err().code, 415);
    }
}
