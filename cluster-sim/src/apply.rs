//! Server-side apply (`application/apply-patch+yaml`), the subset kube-rs's
//! `Patch::Apply` uses: the applied configuration is merged into the object
//! (created when missing); each field manager owns the fields it applied
//! (`metadata.managedFields`, `FieldsV1`); a field another manager owns with
//! another value is a 409 conflict unless `force=true` (then it changes
//! hands); a field this manager applied before and no longer does is
//! removed when nobody else owns it. Lists are atomic (replaced whole).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// A field path: the keys from the object's root to a leaf.
type Path = Vec<String>;

/// The leaf paths of an applied configuration (`apiVersion` and `kind` and
/// `metadata.name` / `metadata.namespace` identify the object and are not owned).
fn leaves(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if prefix.is_empty() && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if prefix.len() == 1
                    && prefix[0] == "metadata"
                    && matches!(k.as_str(), "name" | "namespace" | "managedFields" | "resourceVersion")
                {
                    continue;
                }
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// `FieldsV1` of a set of paths: `{"f:metadata": {"f:labels": {"f:a": {}}}}`.
fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut node = &mut root;
        for k in p {
            let entry = node.entry(format!("f:{k}")).or_insert_with(|| json!({}));
            node = match entry {
                Value::Object(m) => m,
                _ => unreachable!("FieldsV1 nodes are objects"),
            };
        }
    }
    Value::Object(root)
}

/// The paths a `FieldsV1` owns (its leaves; `.` entries mean the node itself).
fn owned(fields: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = fields.as_object() else { return };
    let children: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (k, child) in children {
        prefix.push(k[2..].to_owned());
        owned(child, prefix, out);
        prefix.pop();
    }
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = v;
    for k in parents {
        match node.get_mut(k) {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(m) = node.as_object_mut() {
        m.remove(last);
    }
}

fn set(v: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = v;
    for k in parents {
        if !node.get(k).is_some_and(Value::is_object)
            && let Some(m) = node.as_object_mut()
        {
            m.insert(k.clone(), json!({}));
        }
        node = match node.get_mut(k) {
            Some(n) => n,
            None => return,
        };
    }
    if let Some(m) = node.as_object_mut() {
        m.insert(last.clone(), value);
    }
}

fn dotted(p: &Path) -> String {
    p.iter().map(|k| format!(".{k}")).collect()
}

/// Applies `config` as `manager` to `current` (`None`: the object is
/// created from it). `api_version` is recorded in the manager's entry.
pub(crate) fn apply(
    current: Option<Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request("an apply patch must be a JSON object (YAML's JSON subset)"));
    }
    let mut applied = BTreeSet::new();
    leaves(config, &mut Vec::new(), &mut applied);
    let mut target = current.unwrap_or_else(|| {
        let mut v = json!({});
        for k in ["apiVersion", "kind"] {
            if let Some(x) = config.get(k) {
                v[k] = x.clone();
            }
        }
        v["metadata"] = json!({});
        for k in ["name", "namespace"] {
            if let Some(x) = config["metadata"].get(k) {
                v["metadata"][k] = x.clone();
            }
        }
        v
    });
    let mut entries: Vec<Value> = target["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    let mut mine = BTreeSet::new();
    let mut others: Vec<(String, BTreeSet<Path>)> = Vec::new();
    for e in &entries {
        let mut paths = BTreeSet::new();
        owned(&e["fieldsV1"], &mut Vec::new(), &mut paths);
        let who = e["manager"].as_str().unwrap_or("").to_owned();
        if who == manager && e["operation"] == "Apply" {
            mine = paths;
        } else {
            others.push((who, paths));
        }
    }
    // Conflicts: a field another manager owns, applied with another value.
    let mut conflicts = Vec::new();
    for p in &applied {
        for (who, paths) in &others {
            if paths.contains(p) && get(&target, p) != get(config, p) {
                conflicts.push(format!("conflict with \"{who}\": {}", dotted(p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApiError::apply_conflict(&format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            conflicts.join(", ")
        )));
    }
    // Fields this manager gave up, owned by nobody else, go.
    for p in mine.difference(&applied) {
        if !others.iter().any(|(_, paths)| paths.contains(p)) {
            remove(&mut target, p);
        }
    }
    for p in &applied {
        if let Some(v) = get(config, p) {
            set(&mut target, p, v.clone());
        }
    }
    // Forced fields change hands; this manager's entry is replaced.
    entries.retain(|e| !(e["manager"] == manager && e["operation"] == "Apply"));
    for e in &mut entries {
        let mut paths = BTreeSet::new();
        owned(&e["fieldsV1"], &mut Vec::new(), &mut paths);
        let kept: BTreeSet<Path> = paths.difference(&applied).cloned().collect();
        if kept.len() != paths.len() {
            e["fieldsV1"] = fields_v1(&kept);
        }
    }
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(&applied),
    }));
    target["metadata"]["managedFields"] = Value::Array(entries);
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_through_fields_v1() {
        let config = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}, "spec": {"taints": [{"key": "x"}]}});
        let mut paths = BTreeSet::new();
        leaves(&config, &mut Vec::new(), &mut paths);
        let f = fields_v1(&paths);
        assert_eq!(f, json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}, "f:spec": {"f:taints": {}}}));
        let mut back = BTreeSet::new();
        owned(&f, &mut Vec::new(), &mut back);
        assert_eq!(back, paths);
    }
}
