//! The agent's metrics recorder: a [`metrics::Recorder`] whose series can be
//! deleted, rendered in the Prometheus text format.
//!
//! `metrics-exporter-prometheus`'s own recorder cannot delete a series (only
//! expire idle ones, which would also drop a steady node's counters), so the
//! agent keeps its series in a `metrics-util` registry, deletes a departed
//! node's series when the engine says so ([`SeriesRemover`]), and renders with
//! the exporter's formatting helpers. Every metric carries HELP text.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use health_core::metrics::{SeriesKind, SeriesRemover};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::LabelSet;
use metrics_exporter_prometheus::formatting::{write_help_line, write_metric_line, write_type_line};
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

struct Inner {
    registry: Registry<Key, AtomicStorage>,
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
        let help = self.inner.help.lock();
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str| {
            let text = help.get(name).map_or("No description.", |(h, _)| h.as_ref());
            write_help_line(out, name, None, None, text);
            write_type_line(out, name, None, None, kind);
        };
        for (name, series) in &counters {
            header(&mut out, name, "counter");
            for (labels, v) in series {
                write_metric_line::<&str, u64>(&mut out, name, None, labels, None, *v, None);
            }
        }
        for (name, series) in &gauges {
            header(&mut out, name, "gauge");
            for (labels, v) in series {
                write_metric_line::<&str, f64>(&mut out, name, None, labels, None, *v, None);
            }
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
                !counters.contains_key(*name) && !gauges.contains_key(*name) && !histograms.contains_key(*name)
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
        self.inner.registry.get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        self.inner.registry.get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        self.inner.registry.get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

impl SeriesRemover for AgentRecorder {
    fn remove_series(&self, kind: SeriesKind, key: &Key) {
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
}
