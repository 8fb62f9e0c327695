//! The agent's metrics recorder: a [`metrics::Recorder`] whose series can be
//! deleted, rendered in the Prometheus text format.
//!
//! `metrics-exporter-prometheus`'s own recorder cannot delete a series (only
//! expire idle ones, which would also drop a steady node's counters), so the
//! agent keeps its series in a `metrics-util` registry, deletes a departed
//! node's series when the engine says so ([`SeriesRemover`]), and renders with
//! the exporter's formatting helpers. Every metric carries HELP text.
//!
//! Per-node counters and gauges (every key with a `node` label) are kept
//! apart, compactly: a fleet of 65,536 nodes has half a million of them, and
//! a registry entry (the key with its label strings, a hash slot, the
//! atomic) costs about 250 bytes each. Here a series costs its atomic and a
//! 16-byte entry in its node's list; the metric name and the other labels
//! are one shared shape.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use health_core::metrics::{SeriesKind, SeriesRemover};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::LabelSet;
use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, sanitize_metric_name, write_help_line, write_metric_line, write_type_line,
};
use metrics_util::registry::{AtomicStorage, Registry};
use parking_lot::Mutex;

/// Histogram buckets (seconds): from a millisecond to ten seconds.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct HistState {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counter or gauge (per-node histograms are not used, and stay in the registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Counter,
    Gauge,
}

/// A per-node series without its node: the metric name and its other
/// labels, already in the text format on either side of the `node` label
/// (`{checker="GPU",` and `,result="pass"}` around `node="n1"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Shape {
    kind: Kind,
    name: Box<str>,
    before: Box<str>,
    after: Box<str>,
}

impl Shape {
    /// The shape of `key` (which has a `node` label, found at `node_at`).
    /// Names, keys and values are cleaned and escaped as the exporter does
    /// for every other series.
    fn of(kind: Kind, key: &Key) -> Shape {
        let mut seen_node = false;
        let (mut before, mut after) = (String::from("{"), String::new());
        for l in key.labels() {
            if !seen_node && l.key() == "node" {
                seen_node = true;
                continue;
            }
            let text = format!("{}=\"{}\"", sanitize_label_key(l.key()), sanitize_label_value(l.value()));
            if seen_node {
                after.push(',');
                after.push_str(&text);
            } else {
                before.push_str(&text);
                before.push(',');
            }
        }
        after.push('}');
        let name = sanitize_metric_name(key.name()).into();
        Shape { kind, name, before: before.into(), after: after.into() }
    }
}

/// A per-node key without its node, as the caller wrote it (not cleaned):
/// finds a shape's id from a key without rendering anything, so counting
/// through the facade on every evaluation allocates nothing here.
#[derive(PartialEq, Eq)]
struct RawShape {
    kind: Kind,
    name: Box<str>,
    /// The labels other than the node, in order.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// How many labels precede the node label.
    node_at: usize,
}

/// A borrowed [`RawShape`]: a key and where its node label is.
struct RawQuery<'a> {
    kind: Kind,
    key: &'a Key,
    node_at: usize,
}

impl RawQuery<'_> {
    fn others(&self) -> impl Iterator<Item = &Label> {
        self.key.labels().enumerate().filter(|&(i, _)| i != self.node_at).map(|(_, l)| l)
    }
}

/// One hash for a raw shape and its query (they must agree).
fn hash_raw<'a, H: std::hash::Hasher>(
    kind: Kind,
    name: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)>,
    node_at: usize,
    h: &mut H,
) {
    use std::hash::Hash;
    kind.hash(h);
    name.hash(h);
    for (k, v) in labels {
        k.hash(h);
        v.hash(h);
    }
    node_at.hash(h);
}

impl std::hash::Hash for RawShape {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        hash_raw(self.kind, &self.name, self.labels.iter().map(|(k, v)| (&**k, &**v)), self.node_at, h);
    }
}

impl std::hash::Hash for RawQuery<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        hash_raw(self.kind, self.key.name(), self.others().map(|l| (l.key(), l.value())), self.node_at, h);
    }
}

impl indexmap::Equivalent<RawShape> for RawQuery<'_> {
    fn equivalent(&self, raw: &RawShape) -> bool {
        self.kind == raw.kind
            && self.node_at == raw.node_at
            && self.key.name() == &*raw.name
            && self.key.labels().len() == raw.labels.len() + 1
            && self.others().zip(raw.labels.iter()).all(|(l, (k, v))| l.key() == &**k && l.value() == &**v)
    }
}

/// The per-node counters and gauges.
#[derive(Default)]
struct PerNode {
    /// Every shape seen, by id.
    shapes: indexmap::IndexSet<Shape>,
    /// Shape ids by the key as written (keys that render alike share an id).
    raw: indexmap::IndexMap<RawShape, usize>,
    /// Per node: its series, as (shape id, value). The key is the label's
    /// own string: a clone shares it when the caller built the label from
    /// an `Arc<str>` (as the engine does), so no copy of the name is kept.
    nodes: HashMap<SharedString, Vec<(usize, Arc<AtomicU64>)>>,
}

impl PerNode {
    /// The node label of `key` and its shape id (registering the shape on
    /// first sight), or `None` when the key has no node label.
    fn shape_of<'k>(&mut self, kind: Kind, key: &'k Key) -> Option<(&'k Label, usize)> {
        let node_at = key.labels().position(|l| l.key() == "node")?;
        let node = key.labels().nth(node_at)?;
        let query = RawQuery { kind, key, node_at };
        if let Some(&id) = self.raw.get(&query) {
            return Some((node, id));
        }
        let (id, _) = self.shapes.insert_full(Shape::of(kind, key));
        let raw = RawShape {
            kind,
            name: key.name().into(),
            labels: query.others().map(|l| (l.key().into(), l.value().into())).collect(),
            node_at,
        };
        self.raw.insert(raw, id);
        Some((node, id))
    }

    /// The value of `key`'s series, created at zero on first use; `None`
    /// when the key has no node label.
    fn get_or_create(&mut self, kind: Kind, key: &Key) -> Option<Arc<AtomicU64>> {
        let (node, id) = self.shape_of(kind, key)?;
        let series = match self.nodes.get_mut(node.value()) {
            Some(s) => s,
            None => self.nodes.entry(node.clone().into_parts().1).or_default(),
        };
        if let Some((_, v)) = series.iter().find(|(s, _)| *s == id) {
            return Some(Arc::clone(v));
        }
        let v = Arc::new(AtomicU64::new(0));
        series.push((id, Arc::clone(&v)));
        series.shrink_to_fit();
        Some(v)
    }

    /// Deletes `key`'s series; `false` when the key has no node label.
    fn remove(&mut self, kind: Kind, key: &Key) -> bool {
        let Some((node, id)) = self.shape_of(kind, key) else { return false };
        let Some(series) = self.nodes.get_mut(node.value()) else { return true };
        series.retain(|(s, _)| *s != id);
        if series.is_empty() {
            self.nodes.remove(node.value());
        }
        true
    }

    /// The series count.
    fn len(&self) -> usize {
        self.nodes.values().map(Vec::len).sum()
    }
}

struct Inner {
    registry: Registry<Key, AtomicStorage>,
    per_node: Mutex<PerNode>,
    help: Mutex<HashMap<String, (SharedString, &'static str)>>,
    hist: Mutex<HashMap<Key, HistState>>,
    global: indexmap::IndexMap<String, String>,
}

/// A recorder with deletable series. Clones share the series.
#[derive(Clone)]
pub struct AgentRecorder {
    inner: Arc<Inner>,
}

impl Default for AgentRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for AgentRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRecorder").finish_non_exhaustive()
    }
}

impl AgentRecorder {
    /// An empty recorder.
    #[must_use]
    pub fn new() -> Self {
        AgentRecorder {
            inner: Arc::new(Inner {
                registry: Registry::atomic(),
                per_node: Mutex::new(PerNode::default()),
                help: Mutex::new(HashMap::new()),
                hist: Mutex::new(HashMap::new()),
                global: indexmap::IndexMap::new(),
            }),
        }
    }

    /// Installs a clone as the process-wide recorder (once per process).
    pub fn install(&self) -> Result<(), metrics::SetRecorderError<AgentRecorder>> {
        metrics::set_global_recorder(self.clone())
    }

    fn describe(&self, key: KeyName, kind: &'static str, help: SharedString) {
        self.inner.help.lock().insert(key.as_str().to_owned(), (help, kind));
    }

    /// How many per-node series are held (for memory figures and tests).
    #[must_use]
    pub fn node_series(&self) -> usize {
        self.inner.per_node.lock().len()
    }

    /// Renders every series in the Prometheus text format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut counters: BTreeMap<String, Vec<(LabelSet, u64)>> = BTreeMap::new();
        self.inner.registry.visit_counters(|key, c| {
            let labels = LabelSet::from_key_and_global(key, &self.inner.global);
            counters.entry(key.name().to_owned()).or_default().push((labels, c.load(Ordering::Relaxed)));
        });
        let mut gauges: BTreeMap<String, Vec<(LabelSet, f64)>> = BTreeMap::new();
        self.inner.registry.visit_gauges(|key, g| {
            let labels = LabelSet::from_key_and_global(key, &self.inner.global);
            gauges.entry(key.name().to_owned()).or_default().push((labels, f64::from_bits(g.load(Ordering::Relaxed))));
        });
        let mut hist = self.inner.hist.lock();
        let mut histograms: BTreeMap<String, Vec<(LabelSet, Key)>> = BTreeMap::new();
        self.inner.registry.visit_histograms(|key, h| {
            let state = hist.entry(key.clone()).or_default();
            h.clear_with(|values| {
                for &v in values {
                    state.count += 1;
                    state.sum += v;
                    for (i, b) in BUCKETS.iter().enumerate() {
                        if v <= *b {
                            state.counts[i] += 1;
                        }
                    }
                }
            });
            let labels = LabelSet::from_key_and_global(key, &self.inner.global);
            histograms.entry(key.name().to_owned()).or_default().push((labels, key.clone()));
        });
        for series in counters.values_mut() {
            series.sort_by_cached_key(|(l, _)| l.to_strings().collect::<Vec<_>>());
        }
        for series in gauges.values_mut() {
            series.sort_by_cached_key(|(l, _)| l.to_strings().collect::<Vec<_>>());
        }
        // Held while the text is written (tens of milliseconds at 65,536
        // nodes, linear in the series): it only delays the registration of
        // a new series; values are updated through their atomics meanwhile.
        let per_node = self.inner.per_node.lock();
        // Per-node metric names, with the shape ids of each, by kind.
        let mut node_metrics: BTreeMap<(Kind, &str), Vec<usize>> = BTreeMap::new();
        for (id, shape) in per_node.shapes.iter().enumerate() {
            node_metrics.entry((shape.kind, &*shape.name)).or_default().push(id);
        }
        let mut node_names: Vec<(&str, String)> =
            per_node.nodes.keys().map(|n| (&**n, sanitize_label_value(n))).collect();
        node_names.sort_unstable();
        let help = self.inner.help.lock();
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str| {
            let text = help.get(name).map_or("No description.", |(h, _)| h.as_ref());
            write_help_line(out, name, None, None, text);
            write_type_line(out, name, None, None, kind);
        };
        // The per-node series of one metric name: by node, then by the
        // shape's other labels.
        let write_node_series = |out: &mut String, kind: Kind, name: &str| {
            let Some(ids) = node_metrics.get(&(kind, name)) else { return };
            let mut ids = ids.clone();
            ids.sort_by_key(|id| {
                let shape = &per_node.shapes[*id];
                (&shape.before, &shape.after)
            });
            for (node, escaped) in &node_names {
                let series = &per_node.nodes[*node];
                for id in &ids {
                    let Some((_, v)) = series.iter().find(|(s, _)| s == id) else { continue };
                    let (shape, v) = (&per_node.shapes[*id], v.load(Ordering::Relaxed));
                    let (before, after) = (&shape.before, &shape.after);
                    // Values as write_metric_line writes them (Display).
                    let _ = match kind {
                        Kind::Counter => writeln!(out, "{name}{before}node=\"{escaped}\"{after} {v}"),
                        Kind::Gauge => writeln!(out, "{name}{before}node=\"{escaped}\"{after} {}", f64::from_bits(v)),
                    };
                }
            }
        };
        // Shapes some node still has (a shape outlives its last series).
        let mut used = vec![false; per_node.shapes.len()];
        for (id, _) in per_node.nodes.values().flatten() {
            used[*id] = true;
        }
        let has_nodes =
            |kind: Kind, name: &str| node_metrics.get(&(kind, name)).is_some_and(|ids| ids.iter().any(|id| used[*id]));
        let mut counter_names: Vec<&str> = counters.keys().map(String::as_str).collect();
        counter_names
            .extend(node_metrics.keys().filter(|(k, n)| *k == Kind::Counter && has_nodes(*k, n)).map(|(_, n)| *n));
        counter_names.sort_unstable();
        counter_names.dedup();
        for name in &counter_names {
            header(&mut out, name, "counter");
            for (labels, v) in counters.get(*name).into_iter().flatten() {
                write_metric_line::<&str, u64>(&mut out, name, None, labels, None, *v, None);
            }
            write_node_series(&mut out, Kind::Counter, name);
        }
        let mut gauge_names: Vec<&str> = gauges.keys().map(String::as_str).collect();
        gauge_names.extend(node_metrics.keys().filter(|(k, n)| *k == Kind::Gauge && has_nodes(*k, n)).map(|(_, n)| *n));
        gauge_names.sort_unstable();
        gauge_names.dedup();
        for name in &gauge_names {
            header(&mut out, name, "gauge");
            for (labels, v) in gauges.get(*name).into_iter().flatten() {
                write_metric_line::<&str, f64>(&mut out, name, None, labels, None, *v, None);
            }
            write_node_series(&mut out, Kind::Gauge, name);
        }
        for (name, series) in &histograms {
            header(&mut out, name, "histogram");
            for (labels, key) in series {
                let Some(state) = hist.get(key) else { continue };
                for (i, b) in BUCKETS.iter().enumerate() {
                    write_metric_line(&mut out, name, Some("bucket"), labels, Some(("le", *b)), state.counts[i], None);
                }
                write_metric_line(&mut out, name, Some("bucket"), labels, Some(("le", "+Inf")), state.count, None);
                write_metric_line::<&str, f64>(&mut out, name, Some("sum"), labels, None, state.sum, None);
                write_metric_line::<&str, u64>(&mut out, name, Some("count"), labels, None, state.count, None);
            }
        }
        // Described metrics without a series yet (no action so far, say) still
        // announce themselves, so dashboards and `promtool` see every name.
        let mut idle: Vec<(&String, &'static str)> = help
            .iter()
            .filter(|(name, _)| {
                !counter_names.contains(&name.as_str())
                    && !gauge_names.contains(&name.as_str())
                    && !histograms.contains_key(*name)
            })
            .map(|(name, (_, kind))| (name, *kind))
            .collect();
        idle.sort();
        for (name, kind) in idle {
            header(&mut out, name, kind);
        }
        out
    }
}

impl Recorder for AgentRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let _ = unit;
        self.describe(key, "counter", description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let _ = unit;
        self.describe(key, "gauge", description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        let _ = unit;
        self.describe(key, "histogram", description);
    }
    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        if let Some(v) = self.inner.per_node.lock().get_or_create(Kind::Counter, key) {
            return Counter::from_arc(v);
        }
        self.inner.registry.get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        if let Some(v) = self.inner.per_node.lock().get_or_create(Kind::Gauge, key) {
            return Gauge::from_arc(v);
        }
        self.inner.registry.get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        self.inner.registry.get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

impl SeriesRemover for AgentRecorder {
    fn remove_series(&self, kind: SeriesKind, key: &Key) {
        let node_kind = match kind {
            SeriesKind::Counter => Some(Kind::Counter),
            SeriesKind::Gauge => Some(Kind::Gauge),
            _ => None,
        };
        if let Some(k) = node_kind
            && self.inner.per_node.lock().remove(k, key)
        {
            return;
        }
        match kind {
            SeriesKind::Counter => {
                self.inner.registry.delete_counter(key);
            }
            SeriesKind::Gauge => {
                self.inner.registry.delete_gauge(key);
            }
            SeriesKind::Histogram => {
                self.inner.registry.delete_histogram(key);
                self.inner.hist.lock().remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Label;

    #[test]
    fn renders_help_types_and_deletes_series() {
        let r = AgentRecorder::new();
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        r.describe_counter("x_total".into(), None, "Things counted.".into());
        let a = Key::from_parts("x_total", vec![Label::new("node", "a")]);
        let b = Key::from_parts("x_total", vec![Label::new("node", "b")]);
        r.register_counter(&a, &meta).increment(2);
        r.register_counter(&b, &meta).increment(1);
        r.register_gauge(&Key::from_name("g"), &meta).set(1.5);
        r.register_histogram(&Key::from_name("h_seconds"), &meta).record(0.003);
        let text = r.render();
        assert!(text.contains("# HELP x_total Things counted.\n# TYPE x_total counter\n"), "{text}");
        assert!(text.contains("x_total{node=\"a\"} 2\n"), "{text}");
        assert!(text.contains("g 1.5\n"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("h_seconds_count 1\n"), "{text}");
        r.remove_series(SeriesKind::Counter, &a);
        let text = r.render();
        assert!(!text.contains("node=\"a\""), "{text}");
        assert!(text.contains("x_total{node=\"b\"} 1\n"), "{text}");
    }

    #[test]
    fn per_node_series_are_shared_ordered_escaped_and_deleted() {
        let r = AgentRecorder::new();
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        r.describe_counter("checks_total".into(), None, "Checks.".into());
        r.describe_gauge("phase".into(), None, "Phase.".into());
        let check = |node: &str, checker: &str, result: &'static str| {
            Key::from_parts(
                "checks_total",
                vec![
                    Label::new("node", node.to_owned()),
                    Label::new("checker", checker.to_owned()),
                    Label::new("result", result),
                ],
            )
        };
        // One handle per series: registering again returns the same value.
        r.register_counter(&check("n2", "GPU", "pass"), &meta).increment(2);
        r.register_counter(&check("n2", "GPU", "pass"), &meta).increment(1);
        r.register_counter(&check("n1", "Ready", "fail"), &meta).increment(1);
        r.register_counter(&check("n1", "GPU", "pass"), &meta).increment(4);
        // A non-node series of the same name lives in the registry.
        r.register_counter(&Key::from_parts("checks_total", vec![Label::new("checker", "x")]), &meta).increment(9);
        // The node label need not come first; values are escaped.
        let phase = Key::from_parts("phase", vec![Label::new("phase", "Healthy"), Label::new("node", "we\"ird\\n\n")]);
        r.register_gauge(&phase, &meta).set(1.0);
        assert_eq!(r.node_series(), 4);
        let text = r.render();
        let want = "# HELP checks_total Checks.\n# TYPE checks_total counter\n\
            checks_total{checker=\"x\"} 9\n\
            checks_total{node=\"n1\",checker=\"GPU\",result=\"pass\"} 4\n\
            checks_total{node=\"n1\",checker=\"Ready\",result=\"fail\"} 1\n\
            checks_total{node=\"n2\",checker=\"GPU\",result=\"pass\"} 3\n\
            # HELP phase Phase.\n# TYPE phase gauge\n\
            phase{phase=\"Healthy\",node=\"we\\\"ird\\\\n\\n\"} 1\n";
        assert_eq!(text, want);
        // Deleting a node's series leaves nothing of it; the shape stays for others.
        r.remove_series(SeriesKind::Counter, &check("n1", "GPU", "pass"));
        r.remove_series(SeriesKind::Counter, &check("n1", "Ready", "fail"));
        r.remove_series(SeriesKind::Gauge, &phase);
        assert_eq!(r.node_series(), 1);
        let text = r.render();
        assert!(!text.contains("n1") && !text.contains("ird"), "{text}");
        assert!(text.contains("checks_total{node=\"n2\",checker=\"GPU\",result=\"pass\"} 3\n"), "{text}");
        assert!(
            text.contains("# TYPE phase gauge\n"),
            "a described metric without series still announces itself: {text}"
        );
    }
}
