//! A file store: one JSON document, atomically replaced, locked against a
//! second process.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use health_core::{NodeRecord, StateStore, StoreError, Stored, Version};
use serde::{Deserialize, Serialize};

/// The document format this build writes and reads.
pub const FILE_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format_version: u32,
    next_version: u64,
    records: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    version: u64,
    record: NodeRecord,
}

/// State in one JSON file (for the daemon on a control-plane VM).
///
/// Every write replaces the file atomically (write a temporary file, fsync,
/// rename, fsync the directory). A corrupt file, or one written by a newer
/// format, is an error at open: the store never silently starts empty over
/// existing state. An advisory lock on `<path>.lock` keeps a second process out.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    doc: tokio::sync::Mutex<Doc>,
    _lock: File,
}

fn backend(message: String, source: std::io::Error) -> StoreError {
    StoreError::Backend { message, source: Some(Box::new(source)) }
}

impl FileStore {
    /// Opens (or, when absent, starts) the store at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let lock_path = sibling(&path, "lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| backend(format!("cannot open the lock file {}", lock_path.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Backend {
                    message: format!(
                        "{} is locked by another process (lock file {})",
                        path.display(),
                        lock_path.display()
                    ),
                    source: None,
                });
            }
            Err(TryLockError::Error(e)) => return Err(backend(format!("cannot lock {}", lock_path.display()), e)),
        }
        let doc = match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Doc { format_version: FILE_FORMAT_VERSION, ..Doc::default() }
            }
            Err(e) => return Err(backend(format!("cannot read {}", path.display()), e)),
        };
        Ok(FileStore { path, doc: tokio::sync::Mutex::new(doc), _lock: lock })
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Doc, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt { key: path.display().to_string(), message };
        #[derive(Deserialize)]
        struct Head {
            format_version: Option<u32>,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a state document: {e}")))?;
        match head.format_version {
            Some(FILE_FORMAT_VERSION) => {}
            Some(v) if v > FILE_FORMAT_VERSION => {
                return Err(corrupt(format!(
                    "written by a newer version (format {v}); this build reads format {FILE_FORMAT_VERSION}: upgrade the agent or move the file away"
                )));
            }
            other => {
                return Err(corrupt(format!("unsupported format_version {other:?}; expected {FILE_FORMAT_VERSION}")));
            }
        }
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("a record is unreadable: {e}")))
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `doc` atomically. `Err((true, e))`: the new document is in
    /// place but making the rename durable failed.
    async fn write(&self, doc: &Doc) -> Result<(), (bool, StoreError)> {
        let bytes = serde_json::to_vec_pretty(doc).map_err(|e| {
            (false, StoreError::Backend { message: format!("cannot encode the state: {e}"), source: None })
        })?;
        let tmp = sibling(&self.path, "tmp");
        let io = |what: &str| {
            let what = format!("{what} {}", tmp.display());
            move |e| (false, backend(what, e))
        };
        {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::File::create(&tmp).await.map_err(io("cannot create"))?;
            f.write_all(&bytes).await.map_err(io("cannot write"))?;
            f.sync_all().await.map_err(io("cannot fsync"))?;
        }
        tokio::fs::rename(&tmp, &self.path)
            .await
            .map_err(|e| (false, backend(format!("cannot replace {}", self.path.display()), e)))?;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let d = tokio::fs::File::open(dir)
            .await
            .map_err(|e| (true, backend(format!("cannot open {}", dir.display()), e)))?;
        d.sync_all().await.map_err(|e| (true, backend(format!("cannot fsync {}", dir.display()), e)))?;
        Ok(())
    }
}

/// `<path>.<suffix>` (appended, so `state.tmp` and `state.lock` never collide
/// with the data file).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn parse_version(v: &Version) -> Option<u64> {
    v.as_str().parse().ok()
}

#[async_trait]
impl StateStore for FileStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let doc = self.doc.lock().await;
        Ok(doc.records.get(key).map(|e| Stored { record: e.record.clone(), version: Version::from_u64(e.version) }))
    }

    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        let mut doc = self.doc.lock().await;
        let current = doc.records.get(key).map(|e| e.version);
        let matches = match (current, expected) {
            (None, None) => true,
            (Some(c), Some(e)) => parse_version(e) == Some(c),
            _ => false,
        };
        if !matches {
            return Err(StoreError::conflict(key, expected, current.map(Version::from_u64).as_ref()));
        }
        let mut next = doc.clone();
        next.next_version += 1;
        let v = next.next_version;
        next.records.insert(key.to_owned(), Entry { version: v, record: record.clone() });
        match self.write(&next).await {
            Ok(()) => {
                *doc = next;
                Ok(Version::from_u64(v))
            }
            // The file already holds the new document: keep memory in step
            // (a later load sees it) but report the durability failure.
            Err((true, e)) => {
                *doc = next;
                Err(e)
            }
            Err((false, e)) => Err(e),
        }
    }

    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        let mut doc = self.doc.lock().await;
        let current = doc.records.get(key).map(|e| e.version);
        if let Some(exp) = expected
            && current != parse_version(exp)
        {
            return Err(StoreError::conflict(key, expected, current.map(Version::from_u64).as_ref()));
        }
        if current.is_none() {
            return Ok(());
        }
        let mut next = doc.clone();
        next.records.remove(key);
        match self.write(&next).await {
            Ok(()) => {
                *doc = next;
                Ok(())
            }
            Err((true, e)) => {
                *doc = next;
                Err(e)
            }
            Err((false, e)) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        let doc = self.doc.lock().await;
        Ok(doc
            .records
            .iter()
            .map(|(k, e)| (k.clone(), Stored { record: e.record.clone(), version: Version::from_u64(e.version) }))
            .collect())
    }
}
