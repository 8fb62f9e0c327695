//! Where an operator's pause is kept, so that a restarted agent (or the
//! replica that takes over) is still paused.
//!
//! | state store | pause kept in |
//! |---|---|
//! | file | `admin.pause_file` (default `pause.json` beside `store.path`), written atomically |
//! | kubernetes | annotations of the Lease `<ha.lease_name>-pause` in the HA namespace |
//! | memory | memory (a restart resumes) |

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};

/// The pause switch as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseState {
    /// Remediation is paused.
    pub paused: bool,
    /// Why (the operator's words).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When it was paused (seconds since the epoch; 0 when not paused).
    #[serde(default)]
    pub since: u64,
}

impl PauseState {
    /// Paused now, for `reason`.
    #[must_use]
    pub fn paused(reason: &str) -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PauseState { paused: true, reason: reason.to_owned(), since }
    }
}

/// Keeps the pause switch.
#[async_trait]
pub trait PauseStore: Send + Sync {
    /// The stored state (not paused when nothing was ever stored).
    async fn load(&self) -> Result<PauseState, String>;
    /// Stores `state`.
    async fn save(&self, state: &PauseState) -> Result<(), String>;
    /// Where it is kept, for logs.
    fn location(&self) -> String;
}

/// In memory (the memory state store): a restart resumes.
#[derive(Debug, Default)]
pub struct MemoryPause(parking_lot::Mutex<PauseState>);

#[async_trait]
impl PauseStore for MemoryPause {
    async fn load(&self) -> Result<PauseState, String> {
        Ok(self.0.lock().clone())
    }
    async fn save(&self, state: &PauseState) -> Result<(), String> {
        *self.0.lock() = state.clone();
        Ok(())
    }
    fn location(&self) -> String {
        "memory (a restart resumes)".into()
    }
}

/// A JSON file, replaced atomically (write, fsync, rename).
#[derive(Debug)]
pub struct FilePause(pub PathBuf);

#[async_trait]
impl PauseStore for FilePause {
    async fn load(&self) -> Result<PauseState, String> {
        let path = self.0.clone();
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!("{}: not a pause file ({e}); fix or delete it (deleting resumes remediation)", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PauseState::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn save(&self, state: &PauseState) -> Result<(), String> {
        let path = self.0.clone();
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let tmp = path.with_extension(format!("json.{}-{:x}.tmp", std::process::id(), fastrand::u64(..)));
            let write = || -> std::io::Result<()> {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("{}: {e}", path.display())
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn location(&self) -> String {
        self.0.display().to_string()
    }
}

const PAUSED: &str = "node-health.io/paused";
const REASON: &str = "node-health.io/pause-reason";
const SINCE: &str = "node-health.io/paused-since";

/// Annotations of a Lease (the agent may already get/create/patch Leases in
/// its namespace; no other permission is needed).
pub struct LeasePause {
    api: kube::Api<Lease>,
    name: String,
    namespace: String,
    timeout: Duration,
}

impl LeasePause {
    /// The Lease `name` in `namespace`; calls time out after `timeout`.
    #[must_use]
    pub fn new(client: kube::Client, namespace: &str, name: &str, timeout: Duration) -> Self {
        LeasePause {
            api: kube::Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            timeout,
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what} Lease {}/{}: {e}", self.namespace, self.name)),
            Err(_) => {
                Err(format!("{what} Lease {}/{}: no answer within {:?}", self.namespace, self.name, self.timeout))
            }
        }
    }
}

#[async_trait]
impl PauseStore for LeasePause {
    async fn load(&self) -> Result<PauseState, String> {
        let Some(lease) = self.bounded("reading", self.api.get_opt(&self.name)).await? else {
            return Ok(PauseState::default());
        };
        let ann = lease.metadata.annotations.unwrap_or_default();
        let paused = match ann.get(PAUSED).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "Lease {}/{}: annotation {PAUSED}={other:?}: expected \"true\" or \"false\"",
                    self.namespace, self.name
                ));
            }
        };
        Ok(PauseState {
            paused,
            reason: ann.get(REASON).cloned().unwrap_or_default(),
            since: ann.get(SINCE).and_then(|s| s.parse().ok()).unwrap_or(0),
        })
    }

    async fn save(&self, state: &PauseState) -> Result<(), String> {
        let annotations = serde_json::json!({
            PAUSED: state.paused.to_string(),
            REASON: state.reason,
            SINCE: state.since.to_string(),
        });
        let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
        let params = PatchParams::default();
        let merge = Patch::Merge(&patch);
        match tokio::time::timeout(self.timeout, self.api.patch(&self.name, &params, &merge)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                let lease: Lease = serde_json::from_value(serde_json::json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": { "name": self.name, "namespace": self.namespace, "annotations": annotations },
                    "spec": {},
                }))
                .map_err(|e| e.to_string())?;
                self.bounded("creating", self.api.create(&PostParams::default(), &lease)).await.map(|_| ())
            }
            Ok(Err(e)) => Err(format!("patching Lease {}/{}: {e}", self.namespace, self.name)),
            Err(_) => {
                Err(format!("patching Lease {}/{}: no answer within {:?}", self.namespace, self.name, self.timeout))
            }
        }
    }

    fn location(&self) -> String {
        format!("Lease {}/{} (annotations)", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_file_survives_and_a_damaged_one_is_named() {
        let dir = std::env::temp_dir().join(format!("node-agent-pause-{}", std::process::id()));
        let store = FilePause(dir.join("sub/pause.json"));
        assert_eq!(store.load().await, Ok(PauseState::default()), "no file: not paused");
        let p = PauseState::paused("change freeze");
        store.save(&p).await.expect("saved");
        assert_eq!(FilePause(dir.join("sub/pause.json")).load().await, Ok(p));
        std::fs::write(dir.join("sub/pause.json"), b"{paused").expect("write");
        let err = store.load().await.unwrap_err();
        assert!(err.contains("pause.json") && err.contains("not a pause file"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
