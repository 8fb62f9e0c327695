//! Control-plane repair: when the Kubernetes API server itself stays
//! unreachable, restart the control plane's service (k3s, kubelet) on each
//! control-plane host in turn instead of touching any worker.
//!
//! Meant for the agent deployed on a control-plane VM with the file store
//! (a Deployment cannot be scheduled while the API is down). The rules:
//!
//! * An outage shorter than `grace` (2m) is tolerated: nothing runs.
//! * A repair is skipped while the last one ended less than `backoff` (5m)
//!   ago, across restarts (the attempts are kept in `state_file`).
//! * A repair takes an exclusive lock on `state_file` + `.lock`: two agents
//!   on the VM never repair at once.
//! * Hosts are repaired one at a time, in the configured order; after each,
//!   the agent waits up to `host_wait` for the API to answer and stops as
//!   soon as it does.
//! * Workers are never touched while the API is down: the node watch is
//!   stale, so every worker action is held (`SourceStale`).
//!
//! Every attempt is logged, counted
//! (`civo_node_agent_control_plane_repairs_total{host,result}`) and kept in
//! the state file (the last 50).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{Action, Clock, Executor, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, duration_str};
use crate::repairs::{RepairConfig, RepairKind};

/// The repair's name: `ACTION` of a command, `{repair}` of a URL.
pub const REPAIR_NAME: &str = "restart-control-plane";

fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

/// `[control_plane]`: repair of the control plane when the API server is down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneSection {
    /// Repair the control plane (off by default).
    pub enabled: bool,
    /// The control-plane hosts, repaired one at a time in this order.
    pub hosts: Vec<String>,
    /// Outages shorter than this are tolerated. Default 2m.
    #[serde(with = "duration_str")]
    pub grace: Duration,
    /// No repair within this long of the last one. Default 5m.
    #[serde(with = "duration_str")]
    pub backoff: Duration,
    /// After a host's repair, how long to wait for the API before the next host. Default 2m.
    #[serde(with = "duration_str", default = "two_minutes")]
    pub host_wait: Duration,
    /// How often the API server is asked whether it answers. Default 10s.
    #[serde(with = "duration_str")]
    pub probe_interval: Duration,
    /// Where attempts are kept (unset or empty: `control-plane.json` beside
    /// the file store; required with another store).
    pub state_file: Option<PathBuf>,
    /// How a host is repaired: `kind = "command"` (with `NODE_NAME` set to
    /// the host), `"http"` (`{node}` is the host) or `"grpc"` (the remote
    /// executor of `[executor]`, asked for `ACTION_REPAIR`
    /// `restart-control-plane` on the host). `attempts` and `wait` do not
    /// apply (`host_wait` does).
    pub repair: Option<RepairConfig>,
}

impl Default for ControlPlaneSection {
    fn default() -> Self {
        ControlPlaneSection {
            enabled: false,
            hosts: Vec::new(),
            grace: Duration::from_secs(120),
            backoff: Duration::from_secs(300),
            host_wait: two_minutes(),
            probe_interval: Duration::from_secs(10),
            state_file: None,
            repair: None,
        }
    }
}

impl ControlPlaneSection {
    /// Checks the section, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let invalid = |f: &str, m: String| Err(ConfigError::invalid(format!("control_plane.{f}"), m));
        if self.hosts.is_empty() {
            return invalid(
                "hosts",
                "must name the control-plane hosts, such as [\"cp-1\", \"cp-2\", \"cp-3\"]".into(),
            );
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.trim().is_empty() || self.hosts[..i].contains(h) {
                return invalid("hosts", format!("{h:?}: each host must be named once"));
            }
        }
        for (f, d) in [
            ("grace", self.grace),
            ("backoff", self.backoff),
            ("host_wait", self.host_wait),
            ("probe_interval", self.probe_interval),
        ] {
            if d.is_zero() {
                return invalid(f, "must be a positive duration such as \"2m\"".into());
            }
        }
        let Some(repair) = &self.repair else {
            return invalid("repair", "must say how a host is repaired: kind = \"command\" or \"http\"".into());
        };
        if !matches!(repair.kind, RepairKind::Command | RepairKind::Http | RepairKind::Grpc) {
            return invalid(
                "repair.kind",
                "must be \"command\", \"http\" or \"grpc\" (the remote executor): restart-pods needs the API server"
                    .into(),
            );
        }
        if repair.url.as_deref().is_some_and(|u| u.contains("{internal_ip}")) {
            return invalid(
                "repair.url",
                "a control-plane host has no Node to read {internal_ip} from: use {node} (the host's name)".into(),
            );
        }
        // grpc needs executor.kind = "grpc": checked with the whole configuration.
        crate::repairs::check_repair("control_plane.repair", repair, true)
    }

    /// The state file for a file store at `store_path`.
    #[must_use]
    pub fn state_path(&self, store_path: &Path) -> PathBuf {
        match &self.state_file {
            Some(p) if !p.as_os_str().is_empty() => p.clone(),
            _ => store_path.with_file_name("control-plane.json"),
        }
    }
}

/// A control-plane host, as an executor's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host(pub String);

impl recovery_exec::ExecTarget for Host {
    fn node_name(&self) -> &str {
        &self.0
    }
    fn pool_id(&self) -> Option<&str> {
        None
    }
}

/// Whether the API server answers.
#[async_trait]
pub trait ApiProbe: Send + Sync {
    /// True when the API server answered within the probe's time limit.
    async fn reachable(&self) -> bool;
}

/// Asks the API server for its version (`GET /version`).
pub struct KubeProbe {
    /// The client.
    pub client: kube::Client,
    /// Time limit of one probe.
    pub timeout: Duration,
}

#[async_trait]
impl ApiProbe for KubeProbe {
    async fn reachable(&self) -> bool {
        matches!(tokio::time::timeout(self.timeout, self.client.apiserver_version()).await, Ok(Ok(_)))
    }
}

/// One repair of one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The host.
    pub host: String,
    /// When it started.
    pub started_at: Timestamp,
    /// `succeeded`, `failed` or `unknown` (the executor's outcome).
    pub result: String,
    /// The executor's error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The API answered again within `host_wait` after it.
    pub api_back: bool,
}

/// What is kept in the state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// When the last repair ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair_at: Option<Timestamp>,
    /// The last attempts, oldest first (at most [`MAX_ATTEMPTS_KEPT`]).
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// Attempts kept in the state file.
pub const MAX_ATTEMPTS_KEPT: usize = 50;

impl State {
    /// Reads the state file (absent: empty).
    pub fn load(path: &Path) -> Result<State, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the state file atomically (a temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("{}: {e}", path.display()))
    }

    fn push(&mut self, a: Attempt) {
        self.attempts.push(a);
        let over = self.attempts.len().saturating_sub(MAX_ATTEMPTS_KEPT);
        self.attempts.drain(..over);
    }
}

/// How one repair round ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// The API answered again after repairing this host.
    Recovered(String),
    /// Every host was repaired and the API still does not answer.
    Exhausted,
    /// Another process holds the lock.
    Locked,
    /// A repair ended too recently (seen once the lock was taken).
    Backoff(Timestamp),
    /// The attempt could not be recorded before acting: held, rather than
    /// risk repeating it after a restart.
    Unrecorded(String),
}

/// Runs the control-plane repair loop until `stop` resolves.
pub struct Repairer {
    /// The settings.
    pub config: ControlPlaneSection,
    /// The state file.
    pub state_path: PathBuf,
    /// Repairs one host.
    pub executor: Arc<dyn Executor<Host>>,
    /// Asks the API server.
    pub probe: Arc<dyn ApiProbe>,
    /// The action asked of the executor (`Action::Repair` named [`REPAIR_NAME`]).
    pub action: Action,
    /// The wall clock (for the recorded times and the backoff).
    pub clock: Arc<dyn Clock>,
    /// When this process last ended a round: the backoff holds from it even
    /// if the state file is lost.
    pub last_round: parking_lot::Mutex<Option<Timestamp>>,
}

impl Repairer {
    /// The loop: probe every `probe_interval`; once the API has been
    /// unreachable for `grace` and the backoff allows, run a round.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let reachable = metrics::gauge!(format!("{}_api_server_reachable", crate::agent::METRICS_PREFIX));
        let mut down_since: Option<tokio::time::Instant> = None;
        let mut said_tolerating = false;
        loop {
            let ok = tokio::select! {
                ok = self.probe.reachable() => ok,
                () = &mut stop => return,
            };
            reachable.set(if ok { 1.0 } else { 0.0 });
            if ok {
                if let Some(since) = down_since.take() {
                    tracing::info!(down_for = ?since.elapsed(), "the API server answers again");
                }
                said_tolerating = false;
            } else {
                let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                let down_for = since.elapsed();
                if down_for < self.config.grace {
                    if !said_tolerating {
                        tracing::warn!(grace = ?self.config.grace, "the API server does not answer; waiting out the grace before repairing the control plane (workers are held meanwhile)");
                        said_tolerating = true;
                    }
                } else if let Some(until) = self.backoff_until() {
                    tracing::warn!(%until, down_for = ?down_for, "the API server still does not answer; a control-plane repair ran recently: the next may start at {until}");
                } else {
                    match self.round(&mut stop).await {
                        Some(Round::Recovered(host)) => {
                            tracing::info!(%host, "control-plane repair worked: the API server answers again");
                            down_since = None;
                            said_tolerating = false;
                        }
                        Some(Round::Exhausted) => tracing::error!(
                            hosts = ?self.config.hosts,
                            backoff = ?self.config.backoff,
                            "every control-plane host was repaired and the API server still does not answer; an operator is needed (retrying after the backoff)"
                        ),
                        Some(Round::Locked) => {
                            tracing::warn!(lock = %self.lock_path().display(), "another control-plane repair holds the lock; not starting one")
                        }
                        Some(Round::Backoff(until)) => {
                            tracing::warn!(%until, "another agent repaired the control plane meanwhile; the next repair may start at {until}")
                        }
                        Some(Round::Unrecorded(e)) => tracing::error!(
                            error = %e,
                            "cannot record a control-plane repair before starting it; not repairing (a repair that restarts this host would otherwise repeat)"
                        ),
                        None => return,
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.probe_interval) => {}
                () = &mut stop => return,
            }
        }
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.state_path.clone().into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// When the backoff after the last repair ends, if it has not yet.
    fn backoff_until(&self) -> Option<Timestamp> {
        let state = match State::load(&self.state_path) {
            Ok(s) => s,
            Err(e) => {
                // Unreadable history: hold back rather than repeat a repair.
                tracing::error!(error = %e, "cannot read the control-plane repair history; not repairing");
                return Some(self.clock.now() + self.config.backoff);
            }
        };
        let last = match (state.last_repair_at, *self.last_round.lock()) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        let until = last + self.config.backoff;
        (until > self.clock.now()).then_some(until)
    }

    /// One round: each host in turn until the API answers. `None`: stopped.
    pub async fn round(&self, stop: &mut (impl std::future::Future<Output = ()> + Unpin)) -> Option<Round> {
        if let Some(dir) = self.state_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let lock = match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(self.lock_path()) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, lock = %self.lock_path().display(), "cannot open the control-plane repair lock; not repairing");
                return Some(Round::Locked);
            }
        };
        if lock.try_lock().is_err() {
            return Some(Round::Locked);
        }
        // Another agent may have finished a round between our check and the lock.
        if let Some(until) = self.backoff_until() {
            return Some(Round::Backoff(until));
        }
        let counter = |host: &str, result: &'static str| {
            metrics::counter!(
                format!("{}_control_plane_repairs_total", crate::agent::METRICS_PREFIX),
                "host" => host.to_owned(),
                "result" => result
            )
            .increment(1);
        };
        let mut state = State::load(&self.state_path).unwrap_or_default();
        let mut outcome = Round::Exhausted;
        for host in &self.config.hosts {
            let started_at = self.clock.now();
            // Recorded before acting: a repair that restarts this very host
            // (and the agent) is not repeated inside the backoff.
            state.push(Attempt {
                host: host.clone(),
                started_at,
                result: "started".into(),
                error: None,
                api_back: false,
            });
            state.last_repair_at = Some(started_at);
            *self.last_round.lock() = Some(started_at);
            if let Err(e) = state.save(&self.state_path) {
                return Some(Round::Unrecorded(e));
            }
            tracing::warn!(%host, "repairing the control plane on this host");
            let target = Host(host.clone());
            let done = tokio::select! {
                r = self.executor.execute(self.action, &target) => r,
                () = &mut *stop => return None,
            };
            let (result, error) = match &done {
                Ok(()) => ("succeeded", None),
                Err(health_core::ExecError::Unknown { .. } | health_core::ExecError::Timeout { .. }) => {
                    ("unknown", done.as_ref().err().map(ToString::to_string))
                }
                Err(e) => ("failed", Some(e.to_string())),
            };
            counter(host, result);
            match &error {
                None => tracing::info!(%host, "control-plane repair done; waiting for the API server"),
                Some(e) => tracing::error!(%host, error = %e, "control-plane repair failed"),
            }
            // Wait for the API server to answer (not after a certain failure).
            let mut api_back = false;
            if result != "failed" {
                let deadline = tokio::time::Instant::now() + self.config.host_wait;
                while tokio::time::Instant::now() < deadline {
                    let ok = tokio::select! {
                        ok = self.probe.reachable() => ok,
                        () = &mut *stop => return None,
                    };
                    if ok {
                        api_back = true;
                        break;
                    }
                    let next = (tokio::time::Instant::now() + self.config.probe_interval).min(deadline);
                    tokio::select! {
                        () = tokio::time::sleep_until(next) => {}
                        () = &mut *stop => return None,
                    }
                }
            }
            if let Some(last) = state.attempts.last_mut() {
                *last = Attempt { host: host.clone(), started_at, result: result.to_owned(), error, api_back };
            }
            let now = self.clock.now();
            state.last_repair_at = Some(now);
            *self.last_round.lock() = Some(now);
            if let Err(e) = state.save(&self.state_path) {
                tracing::error!(error = %e, "cannot record the control-plane repair's outcome");
            }
            if api_back {
                outcome = Round::Recovered(host.clone());
                break;
            }
        }
        drop(lock);
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use health_core::{ExecError, Repair, TokioClock};
    use parking_lot::Mutex;

    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// The API answers while `up`; repairing `fixer` brings it up.
    struct World {
        up: AtomicBool,
        fixer: Option<&'static str>,
        start: tokio::time::Instant,
        repairs: Mutex<Vec<(String, Duration)>>,
    }

    #[async_trait]
    impl ApiProbe for World {
        async fn reachable(&self) -> bool {
            self.up.load(Ordering::SeqCst)
        }
    }

    struct Exec(Arc<World>);

    #[async_trait]
    impl Executor<Host> for Exec {
        async fn execute(&self, action: Action, host: &Host) -> Result<(), ExecError> {
            assert_eq!(action.as_str(), REPAIR_NAME);
            self.0.repairs.lock().push((host.0.clone(), self.0.start.elapsed()));
            tokio::time::sleep(Duration::from_secs(5)).await;
            if self.0.fixer == Some(host.0.as_str()) {
                self.0.up.store(true, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    fn section() -> ControlPlaneSection {
        ControlPlaneSection {
            enabled: true,
            hosts: vec!["cp-1".into(), "cp-2".into(), "cp-3".into()],
            ..ControlPlaneSection::default()
        }
    }

    fn setup(tag: &str, fixer: Option<&'static str>) -> (Arc<World>, Repairer, PathBuf) {
        let dir = std::env::temp_dir().join(format!("cp-repair-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let world = Arc::new(World {
            up: AtomicBool::new(false),
            fixer,
            start: tokio::time::Instant::now(),
            repairs: Mutex::new(Vec::new()),
        });
        let state_path = dir.join("control-plane.json");
        let r = Repairer {
            config: section(),
            state_path: state_path.clone(),
            executor: Arc::new(Exec(Arc::clone(&world))),
            probe: Arc::clone(&world) as Arc<dyn ApiProbe>,
            action: Action::Repair(Repair::new(REPAIR_NAME).unwrap()),
            clock: Arc::new(TokioClock::starting_at(Timestamp::from_secs(1_800_000_000))),
            last_round: parking_lot::Mutex::new(None),
        };
        (world, r, dir)
    }

    fn hosts(w: &World) -> Vec<(String, u64)> {
        w.repairs.lock().iter().map(|(h, t)| (h.clone(), t.as_secs())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_are_repaired_one_at_a_time_after_the_grace_until_the_api_answers() {
        let (world, r, dir) = setup("order", Some("cp-2"));
        let path = r.state_path.clone();
        let run = tokio::spawn(r.run(tokio::time::sleep(30 * MIN)));
        tokio::time::sleep(MIN + MIN / 2).await;
        assert!(hosts(&world).is_empty(), "an outage under the 2m grace is tolerated");
        run.await.unwrap();
        // cp-1 at the grace, then cp-2 after cp-1's 2m wait (+5s of its
        // repair); the API is back after cp-2: cp-3 is never touched.
        assert_eq!(hosts(&world), [("cp-1".to_owned(), 120), ("cp-2".to_owned(), 245)]);
        let state = State::load(&path).unwrap();
        let summary: Vec<(&str, &str, bool)> =
            state.attempts.iter().map(|a| (a.host.as_str(), a.result.as_str(), a.api_back)).collect();
        assert_eq!(summary, [("cp-1", "succeeded", false), ("cp-2", "succeeded", true)]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The repair restarts the host the agent runs on: the attempt is on
    /// record before the executor runs, so the restarted agent holds.
    #[tokio::test(start_paused = true)]
    async fn an_attempt_is_recorded_before_it_runs_and_an_unwritable_record_holds() {
        let (world, r, dir) = setup("recorded", None);
        struct Killed(Arc<World>, PathBuf);
        #[async_trait]
        impl Executor<Host> for Killed {
            async fn execute(&self, _: Action, host: &Host) -> Result<(), ExecError> {
                let state = State::load(&self.1).unwrap();
                let last = state.attempts.last().expect("on record before acting");
                assert_eq!((last.host.as_str(), last.result.as_str()), (host.0.as_str(), "started"));
                self.0.repairs.lock().push((host.0.clone(), Duration::ZERO));
                std::future::pending::<()>().await;
                Ok(())
            }
        }
        let r = Repairer { executor: Arc::new(Killed(Arc::clone(&world), r.state_path.clone())), ..r };
        // The agent dies during the repair (the future is dropped).
        let mut stop = std::pin::pin!(tokio::time::sleep(MIN));
        assert_eq!(r.round(&mut stop).await, None);
        // The restarted agent (no memory) sees the attempt and holds.
        let fresh = Repairer { last_round: parking_lot::Mutex::new(None), ..r };
        assert!(fresh.backoff_until().is_some(), "the attempt on record holds a new round");
        assert_eq!(hosts(&world).len(), 1);
        // A state file that cannot be written: nothing runs.
        let blocked = Repairer { state_path: dir.join("missing-dir/x/state.json"), ..fresh };
        std::fs::write(dir.join("missing-dir"), "a file where the directory should be").unwrap();
        let mut stop = std::pin::pin!(std::future::pending::<()>());
        assert!(matches!(blocked.round(&mut stop).await, Some(Round::Unrecorded(_)) | Some(Round::Locked)));
        assert_eq!(hosts(&world).len(), 1, "no repair without a record");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfixable_outage_repairs_each_host_once_per_backoff() {
        let (world, r, dir) = setup("backoff", None);
        r.run(tokio::time::sleep(20 * MIN)).await;
        let got = hosts(&world);
        // Round 1 at 2m: cp-1, cp-2 (+2m5s), cp-3 (+2m5s), ending at 8m15s;
        // round 2 after the 5m backoff (13m15s..).
        let names: Vec<&str> = got.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(names, ["cp-1", "cp-2", "cp-3", "cp-1", "cp-2", "cp-3"], "{got:?}");
        assert_eq!(got[0].1, 120);
        assert!(got[3].1 >= got[2].1 + 125 + 300, "the backoff spaces the rounds: {got:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_repair_on_record_or_a_held_lock_holds_a_new_one() {
        let (world, r, dir) = setup("held", Some("cp-1"));
        // A restarted agent: the last repair ended a minute ago.
        let recent = State { last_repair_at: Some(r.clock.now() - MIN), attempts: Vec::new() };
        recent.save(&r.state_path).unwrap();
        assert_eq!(r.backoff_until(), Some(r.clock.now() + 4 * MIN));
        // Another agent holds the lock.
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(r.lock_path()).unwrap();
        lock.lock().unwrap();
        let mut stop = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(r.round(&mut stop).await, Some(Round::Locked));
        assert!(hosts(&world).is_empty());
        drop(lock);
        // With the lock, the backoff is checked again: still too recent.
        assert_eq!(r.round(&mut stop).await, Some(Round::Backoff(r.clock.now() + 4 * MIN)));
        std::fs::remove_file(&r.state_path).unwrap();
        assert_eq!(r.round(&mut stop).await, Some(Round::Recovered("cp-1".into())));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_section_is_validated_with_the_field_named() {
        let repair = |kind: &str| -> RepairConfig {
            toml::from_str(&format!("kind = \"{kind}\"\ncommand = [\"/usr/local/sbin/restart-k3s\"]")).unwrap()
        };
        let cases = [
            (ControlPlaneSection { hosts: vec![], ..section() }, "control_plane.hosts: must name"),
            (section(), "control_plane.repair: must say how"),
            (
                ControlPlaneSection { repair: Some(repair("restart-pods")), ..section() },
                "control_plane.repair.kind: must be \"command\", \"http\" or \"grpc\"",
            ),
            (
                ControlPlaneSection { grace: Duration::ZERO, repair: Some(repair("command")), ..section() },
                "control_plane.grace: must be a positive duration",
            ),
            (
                ControlPlaneSection {
                    hosts: vec!["a".into(), "a".into()],
                    repair: Some(repair("command")),
                    ..section()
                },
                "each host must be named once",
            ),
        ];
        for (s, want) in cases {
            let e = s.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e}\nwanted: {want}");
        }
        assert!(ControlPlaneSection { repair: Some(repair("command")), ..section() }.validate().is_ok());
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::{CliOverrides, Config, EnvMap};

    fn load(text: &str) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("cp-config-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        let out = Config::load(Some(&path), &EnvMap::new(), &CliOverrides::default()).map_err(|e| e.to_string());
        std::fs::remove_dir_all(dir).unwrap();
        out
    }

    const BASE: &str =
        "[ha]\nenabled = false\n[store]\nbackend = \"file\"\n[control_plane]\nenabled = true\nhosts = [\"cp-1\"]\n";

    #[test]
    fn the_control_plane_repair_is_checked_against_the_rest_of_the_configuration() {
        let grpc = format!("{BASE}[control_plane.repair]\nkind = \"grpc\"\n");
        let e = load(&grpc).unwrap_err();
        assert!(e.contains("control_plane.repair.kind") && e.contains("executor.kind = \"grpc\""), "{e}");
        let remote = format!("{grpc}[executor]\nkind = \"grpc\"\nendpoint = \"http://127.0.0.1:9700\"\n");
        assert!(load(&remote).is_ok(), "{:?}", load(&remote).err());

        let cmd = "[control_plane.repair]\nkind = \"command\"\ncommand = [\"/usr/local/sbin/cp-repair\"]\n";
        let ha = format!("{}{cmd}", BASE.replace("enabled = false", "enabled = true"));
        let e = load(&ha).unwrap_err();
        assert!(e.contains("control_plane.enabled") && e.contains("ha.enabled"), "{e}");
        let kube_store = format!("{}{cmd}", BASE.replace("backend = \"file\"", "backend = \"kubernetes\""));
        let e = load(&kube_store).unwrap_err();
        assert!(e.contains("control_plane.state_file: must be set"), "{e}");
        let ip = format!("{BASE}[control_plane.repair]\nkind = \"http\"\nurl = \"http://{{internal_ip}}/restart\"\n");
        let e = load(&ip).unwrap_err();
        assert!(e.contains("control_plane.repair.url"), "{e}");
        assert!(load(&format!("{BASE}{cmd}")).is_ok());
    }
}
