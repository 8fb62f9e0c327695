//! Label and field selectors (`app=web,tier!=db,env in (a,b),!legacy`).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;
use crate::resource::Kind;

/// What a selector reads of an object: its labels and, for field
/// selectors, a field by its dotted path.
pub(crate) trait Fields {
    /// The object's labels.
    fn labels(&self) -> &BTreeMap<String, String>;
    /// The field at a dotted path (`spec.nodeName`), `""` when absent (as
    /// the API server reads a missing field). `doc` holds the object parsed
    /// for the fields that need it, once per match.
    fn field<'a>(&'a self, path: &str, doc: &'a OnceCell<Value>) -> Cow<'a, str>;
}

/// A bare label set (a pod's labels against a disruption budget's
/// selector) has no fields.
impl Fields for BTreeMap<String, String> {
    fn labels(&self) -> &BTreeMap<String, String> {
        self
    }
    fn field<'a>(&'a self, _path: &str, _doc: &'a OnceCell<Value>) -> Cow<'a, str> {
        Cow::Borrowed("")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Parsed `labelSelector` and `fieldSelector` of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    labels: Vec<Req>,
    /// (field, value, negated)
    fields: Vec<(String, String, bool)>,
}

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    let name = k.rsplit('/').next().unwrap_or(k);
    !name.is_empty()
        && name.len() <= 63
        && k.matches('/').count() <= 1
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Req {
    /// Why the requirement is invalid (a bad key or value), if it is.
    fn invalid(&self) -> Option<String> {
        let (key, values): (&String, &[String]) = match self {
            Req::Eq(k, v) | Req::NotEq(k, v) => (k, std::slice::from_ref(v)),
            Req::In(k, vs) | Req::NotIn(k, vs) => (k, vs),
            Req::Exists(k) | Req::NotExists(k) => (k, &[]),
        };
        if !valid_key(key) {
            return Some(format!("{key:?} is not a valid label key"));
        }
        values.iter().find(|v| !valid_value(v)).map(|v| format!("{v:?} is not a valid label value"))
    }
}

fn bad_label(s: &str, why: &str) -> ApiError {
    ApiError::bad_request(&format!("unable to parse requirement: invalid label selector {s:?}: {why}"))
}

fn parse_set(sel: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad_label(sel, "expected a parenthesised set such as (a,b)"))?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if vals.iter().any(|v| !valid_value(v)) || vals.iter().all(String::is_empty) {
        return Err(bad_label(sel, "set values must be valid label values"));
    }
    Ok(vals)
}

impl Selectors {
    /// Parses both selectors; empty strings select everything.
    pub fn parse(kind: Kind, label: Option<&str>, field: Option<&str>) -> Result<Self, ApiError> {
        let mut out = Selectors::default();
        if let Some(l) = label.filter(|l| !l.trim().is_empty()) {
            for part in split_top(l) {
                let p = part.trim();
                if p.is_empty() {
                    return Err(bad_label(l, "empty requirement"));
                }
                let req = if let Some(k) = p.strip_prefix('!') {
                    Req::NotExists(k.trim().to_owned())
                } else if let Some((k, v)) = p.split_once("!=") {
                    Req::NotEq(k.trim().to_owned(), v.trim().to_owned())
                } else if let Some((k, v)) = p.split_once("==") {
                    Req::Eq(k.trim().to_owned(), v.trim().to_owned())
                } else if let Some((k, v)) = p.split_once('=') {
                    Req::Eq(k.trim().to_owned(), v.trim().to_owned())
                } else if let Some((k, rest)) = p.split_once(" notin ") {
                    Req::NotIn(k.trim().to_owned(), parse_set(l, rest)?)
                } else if let Some((k, rest)) = p.split_once(" in ") {
                    Req::In(k.trim().to_owned(), parse_set(l, rest)?)
                } else {
                    Req::Exists(p.to_owned())
                };
                if let Some(why) = req.invalid() {
                    return Err(bad_label(l, &why));
                }
                out.labels.push(req);
            }
        }
        if let Some(f) = field.filter(|f| !f.trim().is_empty()) {
            for part in f.split(',') {
                let p = part.trim();
                let (k, v, neg) = if let Some((k, v)) = p.split_once("!=") {
                    (k, v, true)
                } else if let Some((k, v)) = p.split_once("==") {
                    (k, v, false)
                } else if let Some((k, v)) = p.split_once('=') {
                    (k, v, false)
                } else {
                    return Err(ApiError::bad_request(&format!("invalid field selector {f:?}: expected field=value")));
                };
                let supported = match kind {
                    Kind::Pod => ["metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"].contains(&k),
                    // What `kubectl describe` asks for a Node's or Pod's events.
                    Kind::Event => [
                        "metadata.name",
                        "metadata.namespace",
                        "involvedObject.name",
                        "involvedObject.namespace",
                        "involvedObject.kind",
                        "involvedObject.uid",
                        "reason",
                        "type",
                    ]
                    .contains(&k.trim()),
                    _ => ["metadata.name", "metadata.namespace"].contains(&k),
                };
                if !supported {
                    return Err(ApiError::bad_request(&format!("field label not supported: {}", k.trim())));
                }
                out.fields.push((k.trim().to_owned(), v.trim().to_owned(), neg));
            }
        }
        Ok(out)
    }

    /// Pods on `node` (`spec.nodeName=node`).
    pub(crate) fn on_node(node: &str) -> Self {
        Selectors { labels: Vec::new(), fields: vec![("spec.nodeName".to_owned(), node.to_owned(), false)] }
    }

    /// A `metav1.LabelSelector` (`matchLabels`, `matchExpressions`), as a
    /// PodDisruptionBudget holds it. `Ok(None)`: an absent selector, which
    /// selects nothing; an empty one selects everything.
    pub(crate) fn from_label_selector(sel: Option<&Value>) -> Result<Option<Self>, ApiError> {
        let Some(sel) = sel.filter(|s| !s.is_null()) else { return Ok(None) };
        let bad = |why: String| ApiError::bad_request(&format!("invalid label selector {sel}: {why}"));
        let mut labels = Vec::new();
        for (k, v) in sel.get("matchLabels").and_then(Value::as_object).into_iter().flatten() {
            let v = v.as_str().ok_or_else(|| bad(format!("matchLabels.{k} is not a string")))?;
            labels.push(Req::Eq(k.clone(), v.to_owned()));
        }
        for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e.get("key").and_then(Value::as_str).ok_or_else(|| bad("an expression has no key".into()))?;
            let values = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| bad(format!("the values of {key:?} must be strings")))
                })
                .collect::<Result<Vec<String>, _>>()?;
            let key = key.to_owned();
            labels.push(match e.get("operator").and_then(Value::as_str) {
                Some("In") => Req::In(key, values),
                Some("NotIn") => Req::NotIn(key, values),
                Some("Exists") => Req::Exists(key),
                Some("DoesNotExist") => Req::NotExists(key),
                other => return Err(bad(format!("operator {other:?}: expected In, NotIn, Exists or DoesNotExist"))),
            });
        }
        if let Some(why) = labels.iter().find_map(Req::invalid) {
            return Err(bad(why));
        }
        Ok(Some(Selectors { labels, fields: Vec::new() }))
    }

    /// Whether an object matches.
    pub(crate) fn matches(&self, o: &impl Fields) -> bool {
        let l = o.labels();
        let labels_ok = self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => l.get(k) == Some(v),
            Req::NotEq(k, v) => l.get(k) != Some(v),
            Req::In(k, vs) => l.get(k).is_some_and(|x| vs.contains(x)),
            Req::NotIn(k, vs) => l.get(k).is_none_or(|x| !vs.contains(x)),
            Req::Exists(k) => l.contains_key(k),
            Req::NotExists(k) => !l.contains_key(k),
        });
        let doc = OnceCell::new();
        labels_ok && self.fields.iter().all(|(k, v, neg)| (o.field(k, &doc) == v.as_str()) != *neg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe {
        labels: BTreeMap<String, String>,
        node: Option<String>,
        phase: Option<String>,
    }

    impl Fields for Probe {
        fn labels(&self) -> &BTreeMap<String, String> {
            &self.labels
        }
        fn field<'a>(&'a self, path: &str, _doc: &'a OnceCell<Value>) -> Cow<'a, str> {
            match path {
                "metadata.name" => Cow::Borrowed("x"),
                "metadata.namespace" => Cow::Borrowed("default"),
                "spec.nodeName" => Cow::Borrowed(self.node.as_deref().unwrap_or("")),
                "status.phase" => Cow::Borrowed(self.phase.as_deref().unwrap_or("")),
                _ => Cow::Borrowed(""),
            }
        }
    }

    fn obj(labels: &[(&str, &str)], node: Option<&str>) -> Probe {
        Probe {
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            node: node.map(str::to_owned),
            phase: Some("Running".into()),
        }
    }

    #[test]
    fn label_selector_forms() {
        let o = obj(&[("app", "web"), ("tier", "front"), ("kubernetes.civo.com/civo-node-pool", "p1")], None);
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,api)", true),
            ("app notin (web,api)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing notin (a)", true),
            ("app=web,tier=back", false),
            ("kubernetes.civo.com/civo-node-pool in (p1, p2),app", true),
            ("", true),
        ];
        for (sel, want) in cases {
            let s = Selectors::parse(Kind::Node, Some(sel), None).unwrap();
            assert_eq!(s.matches(&o), want, "{sel}");
        }
    }

    #[test]
    fn bad_selectors_are_400() {
        for bad in ["app=we b", "a=b,,c=d", "app in web", "app in ()", "-x/y/z=1", "app=v@l"] {
            let e = Selectors::parse(Kind::Node, Some(bad), None).unwrap_err();
            assert_eq!(e.code, 400, "{bad}: {e}");
        }
        let e = Selectors::parse(Kind::Node, None, Some("spec.nodeName=a")).unwrap_err();
        assert_eq!(e.message, "field label not supported: spec.nodeName");
        assert_eq!(Selectors::parse(Kind::Pod, None, Some("bogus")).unwrap_err().code, 400);
    }

    #[test]
    fn kubectl_describe_pod_selector() {
        // kubectl describe node lists the node's non-terminated pods with this.
        let sel = "spec.nodeName=node-1,status.phase!=Succeeded,status.phase!=Failed";
        let s = Selectors::parse(Kind::Pod, None, Some(sel)).unwrap();
        assert!(s.matches(&obj(&[], Some("node-1"))));
        let mut done = obj(&[], Some("node-1"));
        done.phase = Some("Succeeded".into());
        assert!(!s.matches(&done));
        let e = Selectors::parse(Kind::Node, None, Some("status.phase!=Failed")).unwrap_err();
        assert_eq!(e.message, "field label not supported: status.phase");
    }

    #[test]
    fn field_selectors() {
        let o = obj(&[], Some("node-1"));
        let s = Selectors::parse(Kind::Pod, None, Some("spec.nodeName=node-1,metadata.namespace=default")).unwrap();
        assert!(s.matches(&o));
        let s = Selectors::parse(Kind::Pod, None, Some("spec.nodeName!=node-1")).unwrap();
        assert!(!s.matches(&o));
        let s = Selectors::parse(Kind::Node, None, Some("metadata.name=x")).unwrap();
        assert!(s.matches(&o));
    }

    #[test]
    fn label_selectors_of_disruption_budgets() {
        let sel = |v: Value| Selectors::from_label_selector(Some(&v));
        let s = sel(serde_json::json!({
            "matchLabels": {"app": "db"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap()
        .unwrap();
        let labels =
            |l: &[(&str, &str)]| l.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>();
        assert!(s.matches(&labels(&[("app", "db"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a"), ("legacy", "1")])));
        assert!(sel(serde_json::json!({})).unwrap().unwrap().matches(&labels(&[])), "empty: everything");
        assert_eq!(Selectors::from_label_selector(None).unwrap(), None, "absent: nothing");
        assert_eq!(Selectors::from_label_selector(Some(&Value::Null)).unwrap(), None);
        let e = sel(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})).unwrap_err();
        assert!(e.message.contains("expected In, NotIn, Exists or DoesNotExist"), "{}", e.message);
        assert_eq!(sel(serde_json::json!({"matchLabels": {"app": 1}})).unwrap_err().code, 400);
        let e = sel(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", 1]}]}));
        assert!(e.unwrap_err().message.contains("the values of \"a\" must be strings"));
        let e = sel(serde_json::json!({"matchLabels": {"app": "we b"}})).unwrap_err();
        assert!(e.message.contains("\"we b\" is not a valid label value"), "{}", e.message);
    }
}
