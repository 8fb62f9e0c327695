//! A file store: one JSON document, atomically replaced, locked against a
//! second process.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use health_core::{NodeRecord, StateStore, StoreError, Stored, Version};

use crate::decode_record_value;
use serde::{Deserialize, Serialize};

/// The document format this build writes and reads.
pub const FILE_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize)]
struct Doc {
    format_version: u32,
    next_version: u64,
    records: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, Serialize)]
struct Entry {
    version: u64,
    record: NodeRecord,
}

/// The document as read: records stay JSON values until each is decoded
/// with its format checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    format_version: u32,
    next_version: u64,
    records: BTreeMap<String, RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    version: u64,
    record: serde_json::Value,
}

/// State in one JSON file (for the daemon on a control-plane VM).
///
/// Every write replaces the file atomically: a temporary file is written,
/// its length checked and fsynced, renamed over the document, and the
/// directory fsynced. A write reports success only once the bytes are
/// durable; on any failure (a full disk among them) the previous document
/// stays intact, the temporary file is removed and memory keeps the
/// previous state. A corrupt file, a record of a newer format, or a version
/// counter below a stored version is an error at open: the store never
/// silently starts empty over existing state.
///
/// An advisory lock on `<path>.lock` keeps a second process out. Each write
/// first checks that the lock file is still the one locked at open: if it
/// was deleted or replaced (so another process may have locked a new one),
/// the store refuses to write.
///
/// Writes run on Tokio's blocking pool and complete even when the calling
/// future is dropped, so a cancelled `save` either happened entirely (and is
/// visible to the next `load`) or not at all.
#[derive(Debug)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    lock: File,
    /// The committed document; replaced only after a durable write.
    doc: Mutex<Arc<Doc>>,
    /// Serialises writers (held across the file write, not by readers).
    writer: Mutex<()>,
}

fn backend(message: String, source: std::io::Error) -> StoreError {
    StoreError::Backend { message, source: Some(Box::new(source)) }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `handle` is still the file at `path` (same device and inode).
#[cfg(unix)]
fn same_file(handle: &File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let a = handle.metadata()?;
    match std::fs::metadata(path) {
        Ok(b) => Ok(a.dev() == b.dev() && a.ino() == b.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn same_file(_handle: &File, path: &Path) -> std::io::Result<bool> {
    Ok(path.exists())
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
        // The file may have been removed between open and lock by a process
        // that then created and locked a new one.
        if !same_file(&lock, &lock_path).map_err(|e| backend(format!("cannot stat {}", lock_path.display()), e))? {
            return Err(StoreError::Backend {
                message: format!(
                    "the lock file {} was replaced while it was being locked: another process is starting on {}",
                    lock_path.display(),
                    path.display()
                ),
                source: None,
            });
        }
        let doc = match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Doc { format_version: FILE_FORMAT_VERSION, ..Doc::default() }
            }
            Err(e) => return Err(backend(format!("cannot read {}", path.display()), e)),
        };
        // A temporary file left by a crash mid-write is not state.
        let _ = std::fs::remove_file(sibling(&path, "tmp"));
        let inner = Inner { path, lock_path, lock, doc: Mutex::new(Arc::new(doc)), writer: Mutex::new(()) };
        Ok(FileStore { inner: Arc::new(inner) })
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
        let raw: RawDoc = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("a record is unreadable: {e}")))?;
        let mut records = BTreeMap::new();
        for (key, e) in raw.records {
            if e.version > raw.next_version {
                return Err(corrupt(format!(
                    "next_version {} is below the version {} of {key:?}: the version counter would repeat, so a stale writer could win a compare-and-swap; the file was edited or damaged",
                    raw.next_version, e.version
                )));
            }
            let record = decode_record_value(&key, e.record)?;
            records.insert(key, Entry { version: e.version, record });
        }
        Ok(Doc { format_version: raw.format_version, next_version: raw.next_version, records })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn snapshot(&self) -> Arc<Doc> {
        Arc::clone(&locked(&self.inner.doc))
    }

    /// Runs `change` on a copy of the committed document, writes the result
    /// durably and commits it, all on the blocking pool (so the caller's
    /// cancellation cannot split the write from the commit).
    async fn update<T, F>(&self, change: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Doc) -> Result<(T, Changed), StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _writer = locked(&inner.writer);
            let mut next = Doc::clone(&locked(&inner.doc));
            let (out, changed) = change(&mut next)?;
            if changed == Changed::No {
                return Ok(out);
            }
            match inner.write(&next) {
                Ok(()) => {
                    *locked(&inner.doc) = Arc::new(next);
                    Ok(out)
                }
                // The file already holds the new document: keep memory in
                // step (a later load sees it) but report the durability failure.
                Err((true, e)) => {
                    *locked(&inner.doc) = Arc::new(next);
                    Err(e)
                }
                Err((false, e)) => Err(e),
            }
        })
        .await
        .map_err(|e| StoreError::Backend { message: format!("the state write task failed: {e}"), source: None })?
    }
}

/// Whether an update changed the document (and so must be written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Changed {
    Yes,
    No,
}

impl Inner {
    /// Writes `doc` atomically. `Err((true, e))`: the new document is in
    /// place but making the rename durable failed.
    fn write(&self, doc: &Doc) -> Result<(), (bool, StoreError)> {
        let not_written = |e| (false, e);
        match same_file(&self.lock, &self.lock_path) {
            Ok(true) => {}
            Ok(false) => {
                return Err(not_written(StoreError::Backend {
                    message: format!(
                        "the lock file {} was deleted or replaced while this store held it; refusing to write {}, another process may own it now: restart the agent",
                        self.lock_path.display(),
                        self.path.display()
                    ),
                    source: None,
                }));
            }
            Err(e) => return Err(not_written(backend(format!("cannot stat {}", self.lock_path.display()), e))),
        }
        let bytes = serde_json::to_vec_pretty(doc).map_err(|e| {
            not_written(StoreError::Backend { message: format!("cannot encode the state: {e}"), source: None })
        })?;
        let tmp = sibling(&self.path, "tmp");
        if let Err(e) = write_file(&tmp, &bytes) {
            let _ = std::fs::remove_file(&tmp);
            return Err(not_written(e));
        }
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(not_written(backend(format!("cannot replace {}", self.path.display()), e)));
        }
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (true, backend(format!("cannot fsync the directory {}", dir.display()), e)))
    }
}

/// Writes `bytes` to a new file at `path` and makes them durable: every
/// write and the fsync are checked, and so is the length on disk.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let at = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e| backend(what, e)
    };
    let mut f = File::create(path).map_err(at("cannot create"))?;
    f.write_all(bytes).map_err(at("cannot write"))?;
    f.sync_all().map_err(at("cannot fsync"))?;
    let len = f.metadata().map_err(at("cannot stat"))?.len();
    if len != bytes.len() as u64 {
        return Err(StoreError::Backend {
            message: format!(
                "{} holds {len} bytes after writing {}; not replacing the state",
                path.display(),
                bytes.len()
            ),
            source: None,
        });
    }
    Ok(())
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
        let doc = self.snapshot();
        Ok(doc.records.get(key).map(|e| Stored { record: e.record.clone(), version: Version::from_u64(e.version) }))
    }

    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        let (key, record, expected) = (key.to_owned(), record.clone(), expected.cloned());
        self.update(move |doc| {
            let current = doc.records.get(&key).map(|e| e.version);
            let matches = match (current, expected.as_ref()) {
                (None, None) => true,
                (Some(c), Some(e)) => parse_version(e) == Some(c),
                _ => false,
            };
            if !matches {
                return Err(StoreError::conflict(&key, expected.as_ref(), current.map(Version::from_u64).as_ref()));
            }
            let v = doc.next_version.checked_add(1).ok_or_else(|| StoreError::Backend {
                message: "the version counter of the state file is exhausted (u64::MAX); move the file away to start a new one".to_owned(),
                source: None,
            })?;
            doc.next_version = v;
            doc.records.insert(key, Entry { version: v, record });
            Ok((Version::from_u64(v), Changed::Yes))
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        let (key, expected) = (key.to_owned(), expected.cloned());
        self.update(move |doc| {
            let current = doc.records.get(&key).map(|e| e.version);
            if let Some(exp) = expected.as_ref()
                && current != parse_version(exp)
            {
                return Err(StoreError::conflict(&key, Some(exp), current.map(Version::from_u64).as_ref()));
            }
            if current.is_none() {
                return Ok(((), Changed::No));
            }
            doc.records.remove(&key);
            Ok(((), Changed::Yes))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        let doc = self.snapshot();
        Ok(doc
            .records
            .iter()
            .map(|(k, e)| (k.clone(), Stored { record: e.record.clone(), version: Version::from_u64(e.version) }))
            .collect())
    }
}
