//! The conformance suite on the memory and file stores, and the file store's
//! corruption, version and locking rules.

use std::path::PathBuf;
use std::sync::Arc;

use health_core::{NodeRecord, StoreError};
use state_store::{FileStore, MemoryStore, StateStore, conformance};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("state-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("state.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    let store = Arc::new(MemoryStore::new());
    conformance::basic(&*store, "a", "b").await.unwrap();
    conformance::racing_writers(store, "race", 8, 20).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conforms_and_survives_restarts() {
    let path = temp("conform");
    let store = Arc::new(FileStore::open(&path).unwrap());
    conformance::basic(&*store, "a", "b").await.unwrap();
    conformance::racing_writers(Arc::clone(&store), "race", 8, 10).await.unwrap();
    let store = Arc::try_unwrap(store).unwrap();
    let p = path.clone();
    conformance::survives_restart(store, move || FileStore::open(&p).map_err(|e| e.to_string()), "restart")
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn a_second_process_cannot_share_the_file() {
    let path = temp("lock");
    let first = FileStore::open(&path).unwrap();
    let err = FileStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("is locked by another process"), "{err}");
    drop(first);
    FileStore::open(&path).unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn a_corrupt_or_future_file_is_an_error_and_is_left_alone() {
    let path = temp("corrupt");
    {
        let store = FileStore::open(&path).unwrap();
        store.save("node-1", &NodeRecord::default(), None).await.unwrap();
        store.save("node-2", &NodeRecord::default(), None).await.unwrap();
    }
    let good = std::fs::read(&path).unwrap();

    std::fs::write(&path, b"{\"format_version\": 1, \"records\": {\"node-1\": ").unwrap();
    match FileStore::open(&path).unwrap_err() {
        StoreError::Corrupt { key, message } => {
            assert_eq!(key, path.display().to_string());
            assert!(message.contains("not a state document"), "{message}");
        }
        other => panic!("{other}"),
    }
    let text = String::from_utf8(good.clone()).unwrap().replace("\"format_version\": 1", "\"format_version\": 7");
    std::fs::write(&path, text).unwrap();
    let err = FileStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("written by a newer version (format 7); this build reads format 1"), "{err}");
    // Nothing was overwritten: restoring the good bytes brings both records back.
    std::fs::write(&path, &good).unwrap();
    let store = FileStore::open(&path).unwrap();
    assert_eq!(store.list().await.unwrap().len(), 2);
    drop(store);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
