//! The object store behind the simulated API server: resource versions,
//! watch history and consistent list snapshots.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::resource::{Kind, unknown_fields};
use crate::selector::{Fields, Selectors};

/// One stored object: its identity, the fields selectors need, and its JSON.
#[derive(Debug)]
pub(crate) struct Obj {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) rv: u64,
    pub(crate) labels: BTreeMap<String, String>,
    /// `spec.nodeName` of pods.
    pub(crate) node_name: Option<String>,
    /// `status.phase` of pods.
    pub(crate) phase: Option<String>,
    pub(crate) json: Bytes,
}

impl Obj {
    pub(crate) fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

impl Fields for Obj {
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn field<'a>(&'a self, path: &str, doc: &'a std::cell::OnceCell<Value>) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        match path {
            "metadata.name" => Cow::Borrowed(&self.name),
            "metadata.namespace" => Cow::Borrowed(&self.namespace),
            "spec.nodeName" => Cow::Borrowed(self.node_name.as_deref().unwrap_or("")),
            "status.phase" => Cow::Borrowed(self.phase.as_deref().unwrap_or("")),
            // Other fields (an Event's) are read from the object itself,
            // parsed once per match.
            path => {
                let doc = doc.get_or_init(|| serde_json::from_slice(&self.json).unwrap_or_default());
                let found = path.split('.').try_fold(doc, |d, seg| d.get(seg));
                Cow::Borrowed(found.and_then(Value::as_str).unwrap_or(""))
            }
        }
    }
}

/// A watch event as stored in the history.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) kind: Kind,
    pub(crate) event_type: &'static str,
    pub(crate) obj: Arc<Obj>,
    /// The object before a MODIFIED event (selector transitions).
    pub(crate) prev: Option<Arc<Obj>>,
}

/// One kind's watch history and broadcast channel (like the API server's
/// per-resource watch cache).
struct Feed {
    history: VecDeque<Arc<Event>>,
    /// Events at or below this resource version are no longer available.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

type Key = (String, String);

/// A consistent list snapshot for `continue` tokens.
struct Snapshot {
    items: Arc<Vec<Arc<Obj>>>,
    rv: u64,
    /// The request the snapshot answers (kind, namespace, selectors).
    request: String,
    taken: std::time::Instant,
}

/// How long a list snapshot (and its continue tokens) lives.
const SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The outcome of a list request.
pub(crate) struct ListPage {
    pub(crate) items: Vec<Arc<Obj>>,
    pub(crate) rv: u64,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: usize,
}

/// What a watch starts from.
pub(crate) struct WatchStart {
    pub(crate) initial: Vec<Arc<Event>>,
    pub(crate) rx: broadcast::Receiver<Arc<Event>>,
    pub(crate) rv: u64,
}

/// All objects, the resource version counter and the watch history.
pub(crate) struct Store {
    rv: u64,
    uid: u64,
    objects: HashMap<Kind, BTreeMap<Key, Arc<Obj>>>,
    feeds: HashMap<Kind, Feed>,
    history_cap: usize,
    channel_cap: usize,
    /// Largest JSON an object may have ([`crate::Limits::max_object_bytes`]).
    max_object_bytes: usize,
    snapshots: HashMap<u64, Snapshot>,
    snapshot_order: VecDeque<u64>,
    next_snapshot: u64,
}

const MAX_SNAPSHOTS: usize = 1024;

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn meta_mut(v: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let obj = v.as_object_mut().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let meta = obj.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().ok_or_else(|| ApiError::invalid("metadata", "metadata must be an object"))
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

impl Store {
    pub(crate) fn new(history_cap: usize, channel_cap: usize, max_object_bytes: usize) -> Self {
        let channel_cap = channel_cap.max(16);
        Store {
            rv: 1,
            uid: 0,
            objects: HashMap::new(),
            feeds: HashMap::new(),
            history_cap: history_cap.max(1),
            channel_cap,
            max_object_bytes,
            snapshots: HashMap::new(),
            snapshot_order: VecDeque::new(),
            next_snapshot: 0,
        }
    }

    pub(crate) fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Forgets the whole watch history: any watch from an older resource
    /// version gets 410 Gone, open watches end, and list snapshots expire.
    pub(crate) fn compact(&mut self) {
        // As if writes happened and were compacted away: watching from any
        // version seen so far is now too old. Open watches are closed, so
        // their clients resume from their last version and get 410.
        self.rv += 1;
        for feed in self.feeds.values_mut() {
            feed.history.clear();
            feed.compacted = self.rv;
        }
        self.snapshots.clear();
        self.snapshot_order.clear();
        self.close_watches();
    }

    fn feed(&mut self, kind: Kind) -> &mut Feed {
        let cap = self.channel_cap;
        self.feeds.entry(kind).or_insert_with(|| Feed {
            history: VecDeque::new(),
            compacted: 1,
            tx: broadcast::channel(cap).0,
        })
    }

    /// Ends every open watch (their streams see the channel close).
    pub(crate) fn close_watches(&mut self) {
        let cap = self.channel_cap;
        for feed in self.feeds.values_mut() {
            feed.tx = broadcast::channel(cap).0;
        }
    }

    fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("5e1a0000-0000-4000-8000-{:012x}", self.uid)
    }

    /// Validates `v` as `kind` (a typed round trip), rejecting unknown
    /// fields when `strict`, then stamps the resource version and stores it.
    /// Returns the stored object and the unknown fields that were dropped.
    fn put(
        &mut self,
        kind: Kind,
        v: Value,
        event_type: &'static str,
        strict: bool,
    ) -> Result<(Arc<Obj>, Vec<String>), ApiError> {
        let mut out = kind.roundtrip(v.clone()).map_err(|e| ApiError::invalid(kind.def().kind_name, &e))?;
        let unknown = unknown_fields(&v, &out);
        if strict && !unknown.is_empty() {
            return Err(ApiError::bad_request(&format!(
                "strict decoding error: unknown field \"{}\"",
                unknown.iter().map(|f| f.trim_start_matches('.')).collect::<Vec<_>>().join("\", unknown field \"")
            )));
        }
        // The version is taken only once the object is known to fit.
        let rv = self.rv + 1;
        meta_mut(&mut out)?.insert("resourceVersion".into(), Value::String(rv.to_string()));
        let namespace = meta_str(&out, "namespace").unwrap_or_default().to_owned();
        let name = meta_str(&out, "name").unwrap_or_default().to_owned();
        let labels = out
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        let node_name = out.get("spec").and_then(|s| s.get("nodeName")).and_then(Value::as_str).map(str::to_owned);
        let phase = out.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str).map(str::to_owned);
        let json = Bytes::from(serde_json::to_vec(&out).map_err(|e| ApiError::internal(&e.to_string()))?);
        if json.len() > self.max_object_bytes {
            return Err(ApiError::entity_too_large(&format!(
                "the {} would be {} bytes, limit is {} (max_object_bytes)",
                kind.def().kind_name,
                json.len(),
                self.max_object_bytes
            )));
        }
        self.rv = rv;
        let obj = Arc::new(Obj { namespace, name, rv, labels, node_name, phase, json });
        let key = (obj.namespace.clone(), obj.name.clone());
        let prev = self.objects.entry(kind).or_default().insert(key, Arc::clone(&obj));
        self.record(kind, event_type, Arc::clone(&obj), prev);
        Ok((obj, unknown))
    }

    fn record(&mut self, kind: Kind, event_type: &'static str, obj: Arc<Obj>, prev: Option<Arc<Obj>>) {
        let ev = Arc::new(Event { kind, event_type, obj, prev });
        let cap = self.history_cap;
        let feed = self.feed(kind);
        if feed.history.len() == cap
            && let Some(old) = feed.history.pop_front()
        {
            feed.compacted = old.obj.rv;
        }
        feed.history.push_back(Arc::clone(&ev));
        // No receiver is fine: nobody watches.
        let _ = feed.tx.send(ev);
    }

    pub(crate) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Obj>> {
        self.objects.get(&kind)?.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Creates an object; fills uid, creationTimestamp and generation.
    pub(crate) fn create(
        &mut self,
        kind: Kind,
        mut v: Value,
        strict: bool,
    ) -> Result<(Arc<Obj>, Vec<String>), ApiError> {
        let def = kind.def();
        let name = meta_str(&v, "name").unwrap_or_default().to_owned();
        let generate = meta_str(&v, "generateName").map(str::to_owned);
        let name = match (name.is_empty(), generate) {
            (false, _) => name,
            (true, Some(prefix)) => {
                let n = format!("{prefix}{:05x}", self.uid + 1);
                meta_mut(&mut v)?.insert("name".into(), Value::String(n.clone()));
                n
            }
            (true, None) => {
                return Err(ApiError::invalid_field(
                    def.kind_name,
                    "",
                    "metadata.name",
                    "name or generateName is required",
                ));
            }
        };
        validate_name(def.kind_name, &name)?;
        let namespace = meta_str(&v, "namespace").unwrap_or_default().to_owned();
        if self.get(kind, &namespace, &name).is_some() {
            return Err(ApiError::already_exists(def.plural, &name));
        }
        let uid = self.next_uid();
        let meta = meta_mut(&mut v)?;
        meta.insert("uid".into(), Value::String(uid));
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        meta.insert("generation".into(), Value::from(1));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        self.put(kind, v, "ADDED", strict)
    }

    /// Replaces an object. `expected_rv` (from the body's metadata) must match.
    pub(crate) fn update(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut v: Value,
        keep: Keep,
        strict: bool,
    ) -> Result<(Arc<Obj>, Vec<String>), ApiError> {
        let def = kind.def();
        let current = self.get(kind, namespace, name).ok_or_else(|| ApiError::not_found(def.plural, name))?;
        let body_name = meta_str(&v, "name").unwrap_or(name);
        if body_name != name {
            return Err(ApiError::bad_request(&format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = meta_str(&v, "resourceVersion")
            && !rv.is_empty()
            && rv != current.rv.to_string()
        {
            return Err(ApiError::conflict(def.plural, name));
        }
        let old = current.value();
        // Server-owned metadata is kept.
        {
            let meta = meta_mut(&mut v)?;
            for k in ["uid", "creationTimestamp", "generation"] {
                if let Some(x) = old.get("metadata").and_then(|m| m.get(k)) {
                    meta.insert(k.into(), x.clone());
                }
            }
            meta.insert("name".into(), Value::String(name.to_owned()));
            if def.namespaced {
                meta.insert("namespace".into(), Value::String(namespace.to_owned()));
            }
        }
        match keep {
            Keep::Status => copy_field(&old, &mut v, "status"),
            Keep::Spec => {
                copy_field(&old, &mut v, "spec");
                copy_field(&old, &mut v, "metadata");
            }
            Keep::Nothing => {}
        }
        self.put(kind, v, "MODIFIED", strict)
    }

    /// Deletes an object, optionally only at `precondition_rv`.
    pub(crate) fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Arc<Obj>, ApiError> {
        let def = kind.def();
        let current = self.get(kind, namespace, name).ok_or_else(|| ApiError::not_found(def.plural, name))?;
        if let Some(rv) = precondition_rv
            && rv != current.rv.to_string()
        {
            return Err(ApiError::conflict(def.plural, name));
        }
        self.rv += 1;
        let mut v = current.value();
        if let Ok(meta) = meta_mut(&mut v) {
            meta.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        }
        let json = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
        let gone = Arc::new(Obj {
            namespace: current.namespace.clone(),
            name: current.name.clone(),
            rv: self.rv,
            labels: current.labels.clone(),
            node_name: current.node_name.clone(),
            phase: current.phase.clone(),
            json,
        });
        if let Some(m) = self.objects.get_mut(&kind) {
            m.remove(&(namespace.to_owned(), name.to_owned()));
        }
        self.record(kind, "DELETED", Arc::clone(&gone), None);
        Ok(gone)
    }

    /// Every object of `kind` in `namespace` (all namespaces when `None`)
    /// matching the selectors.
    pub(crate) fn matching(&self, kind: Kind, namespace: Option<&str>, sel: &Selectors) -> Vec<Arc<Obj>> {
        let pick = |o: &&Arc<Obj>| namespace.is_none_or(|ns| ns == o.namespace) && sel.matches(o.as_ref());
        let mut out: Vec<Arc<Obj>> =
            self.objects.get(&kind).map(|m| m.values().filter(pick).cloned().collect()).unwrap_or_default();
        if kind == Kind::Event
            && let Some(v1) = self.objects.get(&Kind::EventV1)
        {
            // One storage, two APIs: events.k8s.io Events (kube-rs's recorder
            // writes those) also show as core Events (kubectl reads those).
            out.extend(v1.values().filter(pick).map(|o| Arc::new(core_event(o))));
            out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        }
        out
    }

    /// A list page. The first page takes a snapshot; `continue` tokens read
    /// the same snapshot, so pages are consistent at the first page's version.
    pub(crate) fn list(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        sel: &Selectors,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let request = format!("{kind:?}|{}|{sel:?}", namespace.unwrap_or(""));
        let (id, offset, items, rv) = match continue_token {
            Some(token) => {
                let (id, offset) = parse_continue(token)?;
                let snap = self.snapshots.get(&id).ok_or_else(ApiError::expired_continue)?;
                if snap.request != request {
                    return Err(ApiError::bad_request(&format!(
                        "the continue token {token:?} belongs to a different list request (other resource, namespace or selectors)"
                    )));
                }
                if snap.taken.elapsed() > SNAPSHOT_TTL {
                    return Err(ApiError::expired_continue());
                }
                (id, offset, Arc::clone(&snap.items), snap.rv)
            }
            None => {
                let items = Arc::new(self.matching(kind, namespace, sel));
                let rv = self.rv;
                match limit {
                    Some(l) if l < items.len() => {
                        let id = self.next_snapshot;
                        self.next_snapshot += 1;
                        let taken = std::time::Instant::now();
                        self.snapshots.insert(id, Snapshot { items: Arc::clone(&items), rv, request, taken });
                        self.snapshot_order.push_back(id);
                        while self.snapshot_order.len() > MAX_SNAPSHOTS {
                            if let Some(old) = self.snapshot_order.pop_front() {
                                self.snapshots.remove(&old);
                            }
                        }
                        (id, 0, items, rv)
                    }
                    _ => (0, 0, items, rv),
                }
            }
        };
        let end = limit.map_or(items.len(), |l| offset.saturating_add(l.max(1)).min(items.len()));
        let page = items.get(offset.min(items.len())..end).unwrap_or_default().to_vec();
        let remaining = items.len() - end;
        let continue_token = (remaining > 0).then(|| format!("{id}.{end}"));
        Ok(ListPage { items: page, rv, continue_token, remaining })
    }

    /// Starts a watch from `from_rv` (`None`: the current state as ADDED events).
    pub(crate) fn watch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        sel: &Selectors,
        from_rv: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        if let Some(rv) = from_rv
            && rv > self.rv
        {
            return Err(ApiError::too_large_rv(rv, self.rv));
        }
        let feed = self.feed(kind);
        let rx = feed.tx.subscribe();
        let compacted = feed.compacted;
        let initial = match from_rv {
            None => self
                .matching(kind, namespace, sel)
                .into_iter()
                .map(|obj| Arc::new(Event { kind, event_type: "ADDED", obj, prev: None }))
                .collect(),
            Some(rv) => {
                if rv < compacted {
                    return Err(ApiError::gone(rv, compacted));
                }
                let history = &self.feed(kind).history;
                // The history is ordered by version: skip to the first newer event.
                let start = history.partition_point(|e| e.obj.rv <= rv);
                history.range(start..).cloned().collect()
            }
        };
        Ok(WatchStart { initial, rx, rv: self.rv })
    }
}

/// An events.k8s.io/v1 Event as the core/v1 API shows it.
fn core_event(o: &Obj) -> Obj {
    let v = o.value();
    let time = v.get("eventTime").or_else(|| v.get("deprecatedLastTimestamp")).cloned().unwrap_or(Value::Null);
    let mut core = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": v["metadata"].clone(),
        "involvedObject": v["regarding"].clone(),
        "reason": v["reason"].clone(),
        "message": v["note"].clone(),
        "type": v["type"].clone(),
        "source": {"component": v["reportingController"].clone(), "host": v["reportingInstance"].clone()},
        "reportingComponent": v["reportingController"].clone(),
        "reportingInstance": v["reportingInstance"].clone(),
        "action": v["action"].clone(),
        "eventTime": v["eventTime"].clone(),
        "firstTimestamp": time.clone(),
        "lastTimestamp": time,
        "count": v["series"]["count"].as_i64().or_else(|| v["deprecatedCount"].as_i64()).unwrap_or(1),
    });
    if let Some(m) = core.as_object_mut() {
        m.retain(|_, x| !x.is_null());
    }
    Obj {
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        rv: o.rv,
        labels: o.labels.clone(),
        node_name: None,
        phase: None,
        json: Bytes::from(serde_json::to_vec(&core).unwrap_or_default()),
    }
}

/// Which part of the stored object an update must not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// A write to the main resource keeps the status.
    Status,
    /// A write to the status subresource keeps spec and metadata.
    Spec,
    /// Resources without a status subresource.
    Nothing,
}

fn copy_field(from: &Value, to: &mut Value, field: &str) {
    if let Some(obj) = to.as_object_mut() {
        match from.get(field) {
            Some(x) => {
                obj.insert(field.to_owned(), x.clone());
            }
            None => {
                obj.remove(field);
            }
        }
    }
}

fn parse_continue(token: &str) -> Result<(u64, usize), ApiError> {
    let bad = || ApiError::bad_request(&format!("invalid continue token {token:?}"));
    let (id, off) = token.split_once('.').ok_or_else(bad)?;
    Ok((id.parse().map_err(|_| bad())?, off.parse().map_err(|_| bad())?))
}

/// RFC 1123 subdomain names, as Kubernetes requires for most objects.
fn validate_name(kind: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && name.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            kind,
            name,
            "metadata.name",
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ))
    }
}
