//! `--record` and `node-agent replay`: the agent's engine observations and
//! decisions as JSON lines (size-bounded, rotated), and what-if replays of
//! them under another policy. The format and its guarantees are those of
//! [`health_core::tape`]; this module adds the files and the command.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use health_core::tape::{self, CheckerSpec, Decided, LineSink, Replayed, Setup, TapeRecorder};
use health_core::{EngineConfig, HealthChecker, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::node::NodeRef;

/// The smallest accepted `record.max_bytes` (1 MiB).
pub const MIN_RECORD_BYTES: u64 = 1 << 20;

/// `[record]`: where `--record` writes, and how much it keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordSection {
    /// The recording file (`--record FILE`); none: no recording.
    pub path: Option<PathBuf>,
    /// A file is rotated (to `FILE.1`, `FILE.2`, ...) before it grows past
    /// this many bytes. Default 256 MiB, at least 1 MiB.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (the oldest are deleted).
    /// Default 4.
    pub keep: u32,
}

impl Default for RecordSection {
    fn default() -> Self {
        RecordSection { path: None, max_bytes: 256 << 20, keep: 4 }
    }
}

impl RecordSection {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::invalid("record.path", "must be a file path (or left out: no recording)"));
        }
        if self.max_bytes < MIN_RECORD_BYTES {
            return Err(ConfigError::invalid(
                "record.max_bytes",
                format!("must be at least {MIN_RECORD_BYTES} (1 MiB), got {}", self.max_bytes),
            ));
        }
        if self.keep > 100 {
            return Err(ConfigError::invalid("record.keep", format!("must be at most 100, got {}", self.keep)));
        }
        Ok(())
    }
}

/// `FILE.k`.
fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// A file of lines rotated before it passes `max_bytes`; every file begins
/// with the recording's first line (its `start` line), so each can be read
/// on its own and the rotated ones are recognised as one recording.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    written: u64,
    start: Option<String>,
}

impl std::fmt::Debug for RotatingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingFile")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("keep", &self.keep)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl RotatingFile {
    /// Starts a recording at `path`; an earlier recording there is rotated
    /// away first.
    pub fn create(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            shift(path, keep)?;
        }
        let file = open(path)?;
        Ok(RotatingFile { path: path.to_owned(), max_bytes, keep, file, written: 0, start: None })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        shift(&self.path, self.keep)?;
        self.file = open(&self.path)?;
        self.written = 0;
        if let Some(start) = self.start.clone() {
            self.put(&start)?;
        }
        Ok(())
    }

    fn put(&mut self, text: &str) -> std::io::Result<()> {
        self.file.write_all(text.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.file.flush()?;
        self.written += text.len() as u64 + 1;
        Ok(())
    }
}

fn open(path: &Path) -> std::io::Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(BufWriter::with_capacity(1 << 16, f))
}

/// `FILE` becomes `FILE.1`, `FILE.1` becomes `FILE.2`, ...; beyond `keep`
/// the oldest is deleted (with `keep` 0, `FILE` itself).
fn shift(path: &Path, keep: u32) -> std::io::Result<()> {
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    if keep == 0 {
        return gone(std::fs::remove_file(path));
    }
    gone(std::fs::remove_file(rotated(path, keep)))?;
    for k in (1..keep).rev() {
        gone(std::fs::rename(rotated(path, k), rotated(path, k + 1)))?;
    }
    gone(std::fs::rename(path, rotated(path, 1)))
}

impl LineSink for RotatingFile {
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        if self.start.is_none() {
            self.start = Some(text.to_owned());
        } else if self.written + text.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        self.put(text)
    }
}

/// Lines written by a thread of their own, so that the engine (which calls
/// its observers synchronously) never waits for the disk unless 4,096 lines
/// are queued. Dropping it writes out the queue and waits for the thread.
pub struct WriterThread {
    tx: Option<std::sync::mpsc::SyncSender<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriterThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterThread").finish_non_exhaustive()
    }
}

impl WriterThread {
    /// Starts the thread writing to `sink`.
    pub fn spawn(mut sink: impl LineSink + 'static) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4096);
        let thread = std::thread::Builder::new().name("node-agent-record".into()).spawn(move || {
            let mut failing = false;
            for line in rx {
                match sink.line(&line) {
                    Ok(()) => failing = false,
                    Err(e) => {
                        if !failing {
                            tracing::error!(error = %e, "recording: a line could not be written (further failures are not logged until a write succeeds)");
                        }
                        failing = true;
                    }
                }
            }
        })?;
        Ok(WriterThread { tx: Some(tx), thread: Some(thread) })
    }
}

impl LineSink for WriterThread {
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| std::io::Error::other("the recording was closed"))?;
        tx.send(text.to_owned()).map_err(|_| std::io::Error::other("the recording's writer thread stopped"))
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The recorder `[record]` asks for, if any (the agent adds it to its
/// engine's observers).
pub fn recorder(
    config: &Config,
    checkers: &[Arc<dyn HealthChecker<NodeRef>>],
    engine: &EngineConfig,
) -> std::io::Result<Option<TapeRecorder>> {
    let Some(path) = &config.record.path else { return Ok(None) };
    let file = WriterThread::spawn(RotatingFile::create(path, config.record.max_bytes, config.record.keep)?)?;
    tracing::info!(
        path = %path.display(),
        max_bytes = config.record.max_bytes,
        keep = config.record.keep,
        "recording observations and decisions (node-agent replay {} shows them again)",
        path.display()
    );
    Ok(Some(TapeRecorder::new(Box::new(file), &config.policy, checkers, engine)))
}

fn first_line(path: &Path) -> Option<String> {
    let mut line = String::new();
    BufReader::new(File::open(path).ok()?).read_line(&mut line).ok()?;
    Some(line.trim_end().to_owned())
}

/// The files of the recording at `path`, oldest first: the rotated
/// `FILE.k` that begin with the same `start` line as `FILE`, then `FILE`.
#[must_use]
pub fn tape_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    let Some(start) = first_line(path) else { return files };
    for k in 1.. {
        let p = rotated(path, k);
        if first_line(&p).as_deref() != Some(start.as_str()) {
            break;
        }
        files.insert(0, p);
    }
    files
}

/// The replay setup of a configuration: its policy and its checkers.
pub fn setup_of(config: &Config) -> Result<Setup, ConfigError> {
    let checkers = config
        .checkers_config()
        .build::<NodeRef>()
        .map_err(|e| ConfigError::invalid("checkers", e.to_string()))?
        .iter()
        .map(|c| CheckerSpec { name: c.name().to_owned(), threshold: c.threshold(), validation: c.validation_only() })
        .collect();
    Ok(Setup { policy: config.policy.clone(), checkers })
}

/// What `replay` prints as JSON.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    /// The policy replayed: `recorded` or the configuration file.
    pub policy: String,
    /// Evaluations replayed.
    pub passes: u64,
    /// Node observations replayed.
    pub observations: u64,
    /// The first and last recorded time.
    pub from: Option<Timestamp>,
    /// The last recorded time.
    pub to: Option<Timestamp>,
    /// Every decision, in order.
    pub decisions: Vec<Decided>,
    /// Counts by kind.
    pub summary: Summary,
    /// Decisions on tape.
    pub recorded_decisions: usize,
    /// The replay took exactly the recorded decisions.
    pub identical_to_recording: bool,
}

/// Decisions counted by kind.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Actions by name.
    pub actions: BTreeMap<String, u32>,
    /// Holds by gate.
    pub holds: BTreeMap<String, u32>,
    /// Phase changes.
    pub phase_changes: u32,
}

fn summary(d: &[Decided]) -> Summary {
    let mut s = Summary::default();
    for x in d {
        match x {
            Decided::Action { a, .. } => *s.actions.entry(a.clone()).or_default() += 1,
            Decided::Hold { why, .. } => *s.holds.entry(why.clone()).or_default() += 1,
            Decided::Phase { .. } => s.phase_changes += 1,
        }
    }
    s
}

fn counts(m: &BTreeMap<String, u32>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

impl ReplayReport {
    /// The report of one replay.
    #[must_use]
    pub fn new(policy: String, r: Replayed) -> Self {
        ReplayReport {
            policy,
            passes: r.passes,
            observations: r.observations,
            from: r.span.map(|s| s.0),
            to: r.span.map(|s| s.1),
            summary: summary(&r.decisions),
            recorded_decisions: r.recorded.len(),
            identical_to_recording: r.decisions == r.recorded,
            decisions: r.decisions,
        }
    }

    /// The report as text: one line per decision, then a summary.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.decisions {
            out.push_str(&format!("{}  {:<40} {d}\n", d.at(), d.node()));
        }
        let span = match (self.from, self.to) {
            (Some(a), Some(b)) => format!(" from {a} to {b}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "\nreplayed {} evaluations ({} node observations){span} under the {} policy\n",
            self.passes,
            self.observations,
            if self.policy == "recorded" {
                "recorded".to_owned()
            } else {
                format!("{} ", self.policy).trim_end().to_owned()
            }
        ));
        out.push_str(&format!(
            "actions: {}\nholds: {}\nphase changes: {}\n",
            counts(&self.summary.actions),
            counts(&self.summary.holds),
            self.summary.phase_changes
        ));
        if self.identical_to_recording {
            out.push_str(&format!("identical to the recording ({} decisions)\n", self.recorded_decisions));
        } else {
            out.push_str(&format!(
                "differs from the recording: {} decisions replayed, {} recorded\n",
                self.decisions.len(),
                self.recorded_decisions
            ));
        }
        out
    }
}

/// One difference between two policies, as `replay --compare` prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// When.
    pub at: Timestamp,
    /// The node.
    pub node: String,
    /// What the first policy decided there (none: nothing).
    pub a: Option<String>,
    /// What the second policy decided there.
    pub b: Option<String>,
}

/// What `replay --compare` prints as JSON.
#[derive(Debug, Serialize)]
pub struct CompareReport {
    /// The first configuration.
    pub a: String,
    /// The second configuration.
    pub b: String,
    /// The first's decisions by kind.
    pub a_summary: Summary,
    /// The second's.
    pub b_summary: Summary,
    /// Where they differ, in time order.
    pub differences: Vec<Difference>,
}

impl CompareReport {
    /// The comparison of two replays.
    #[must_use]
    pub fn new(a: String, b: String, ra: &Replayed, rb: &Replayed) -> Self {
        let differences = tape::differences(&ra.decisions, &rb.decisions)
            .into_iter()
            .map(|(node, at, x, y)| Difference { at, node, a: x.map(|d| d.to_string()), b: y.map(|d| d.to_string()) })
            .collect();
        CompareReport { a, b, a_summary: summary(&ra.decisions), b_summary: summary(&rb.decisions), differences }
    }

    /// The comparison as text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = format!("A: {}\nB: {}\n", self.a, self.b);
        out.push_str(&format!(
            "A: actions {}; holds {}\nB: actions {}; holds {}\n",
            counts(&self.a_summary.actions),
            counts(&self.a_summary.holds),
            counts(&self.b_summary.actions),
            counts(&self.b_summary.holds)
        ));
        if self.differences.is_empty() {
            out.push_str("no difference: both policies take the same decisions\n");
            return out;
        }
        out.push_str(&format!("{} decisions differ:\n", self.differences.len()));
        for d in &self.differences {
            let side = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
            out.push_str(&format!("{}  {:<40} A: {:<36} B: {}\n", d.at, d.node, side(&d.a), side(&d.b)));
        }
        out
    }
}

/// Replays the recording at `path` (with its rotated files) under `setup`
/// (`None`: the recorded policy), on a runtime of its own with one thread
/// (decisions must not depend on scheduling).
pub fn replay_blocking(path: &Path, setup: Option<Setup>) -> Result<Replayed, tape::TapeError> {
    let files = tape::Files(tape_files(path));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    rt.block_on(tape::replay(&files, setup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_before_max_bytes_and_each_begins_with_the_start_line() {
        let dir = std::env::temp_dir().join(format!("node-agent-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.tape");
        std::fs::write(&path, "an older recording\n").unwrap();
        let mut f = RotatingFile::create(&path, MIN_RECORD_BYTES, 2).unwrap();
        f.line("{\"k\":\"start\"}").unwrap();
        let line = "x".repeat(100_000);
        for _ in 0..45 {
            f.line(&line).unwrap();
        }
        drop(f);
        // 45 lines of 100 kB in files of at most 1 MiB: four files, of which
        // the current one and two rotated ones are kept.
        for p in [&path, &rotated(&path, 1), &rotated(&path, 2)] {
            let len = std::fs::metadata(p).unwrap().len();
            assert!(len <= MIN_RECORD_BYTES, "{}: {len}", p.display());
            assert_eq!(first_line(p).as_deref(), Some("{\"k\":\"start\"}"), "{}", p.display());
        }
        assert!(!rotated(&path, 3).exists(), "only `keep` rotated files stay");
        assert_eq!(tape_files(&path), vec![rotated(&path, 2), rotated(&path, 1), path.clone()]);
        // A recording started later does not join the rotated older one.
        let mut f = RotatingFile::create(&path, MIN_RECORD_BYTES, 2).unwrap();
        f.line("{\"k\":\"start\",\"at\":2}").unwrap();
        drop(f);
        assert_eq!(tape_files(&path), vec![path.clone()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn record_settings_are_checked() {
        let bad = |r: RecordSection| r.validate().unwrap_err().to_string();
        assert_eq!(
            bad(RecordSection { max_bytes: 1000, ..RecordSection::default() }),
            "record.max_bytes: must be at least 1048576 (1 MiB), got 1000"
        );
        assert_eq!(
            bad(RecordSection { keep: 101, ..RecordSection::default() }),
            "record.keep: must be at most 100, got 101"
        );
        assert_eq!(
            bad(RecordSection { path: Some(PathBuf::new()), ..RecordSection::default() }),
            "record.path: must be a file path (or left out: no recording)"
        );
    }
}
