//! No state document, however damaged, panics a store: it loads, or it is
//! an error naming what is wrong. `FUZZ_CASES` cases per property (default
//! 100,000).

use health_core::{Action, FailingCheck, NodeClass, NodeRecord, Phase, StoreError, Timestamp};
use proptest::prelude::*;
use state_store::{FileStore, StateStore, decode_record};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

fn busy_record() -> NodeRecord {
    NodeRecord {
        phase: Phase::WaitingReboot,
        class: NodeClass::Gpu,
        failing: vec![FailingCheck::new("NodeReady", "KubeletNotReady", Timestamp::from_secs(1_000))],
        unhealthy_since: Some(Timestamp::from_secs(1_800_000_000)),
        last_action_at: Some(Timestamp::from_secs(1_800_000_600)),
        last_action: Some(Action::Reboot),
        reboot_count: 2,
        ..NodeRecord::default()
    }
}

fn edits() -> impl Strategy<Value = Vec<(u16, u8, u8)>> {
    prop::collection::vec((0u16..1000, 0u8..3, any::<u8>()), 1..8)
}

fn mutate(doc: &[u8], edits: &[(u16, u8, u8)]) -> Vec<u8> {
    let mut d = doc.to_vec();
    for &(at, op, b) in edits {
        let i = (d.len() * usize::from(at)) / 1000;
        match op {
            0 if i < d.len() => d[i] = b,
            1 => d.insert(i.min(d.len()), b),
            _ if i < d.len() => {
                d.remove(i);
            }
            _ => {}
        }
    }
    d
}

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,16}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A record with some fields replaced by arbitrary values.
fn record_shaped() -> impl Strategy<Value = serde_json::Value> {
    let fields = prop::sample::select(vec![
        "format_version",
        "phase",
        "class",
        "failing",
        "unhealthy_since",
        "last_action_at",
        "last_action",
        "reboot_count",
        "not_before",
        "cordoned",
        "unknown_field",
    ]);
    prop::collection::vec((fields, json()), 0..4).prop_map(|changes| {
        let mut v = serde_json::to_value(busy_record()).unwrap();
        for (field, value) in changes {
            v[field] = value;
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_records_decode_or_fail_cleanly(e in edits()) {
        thread_local!(static DOC: Vec<u8> = serde_json::to_vec(&busy_record()).unwrap());
        let doc = DOC.with(|d| mutate(d, &e));
        match decode_record("node-1", &doc) {
            Ok(r) => prop_assert_eq!(decode_record("node-1", &serde_json::to_vec(&r).unwrap()).ok(), Some(r)),
            Err(StoreError::Corrupt { key, .. } | StoreError::NewerFormat { key, .. }) => prop_assert_eq!(key, "node-1"),
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }

    #[test]
    fn record_shaped_values_decode_or_fail_cleanly(v in record_shaped()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        match decode_record("node-1", &bytes) {
            Ok(r) => prop_assert_eq!(decode_record("node-1", &serde_json::to_vec(&r).unwrap()).ok(), Some(r)),
            Err(StoreError::Corrupt { .. } | StoreError::NewerFormat { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }

    /// The file store's document, damaged on disk: open loads it or refuses
    /// it; it never panics and never starts empty over it.
    #[test]
    fn damaged_state_files_open_or_fail_cleanly(e in edits()) {
        thread_local!(static CASE: (std::path::PathBuf, Vec<u8>) = {
            let dir = std::env::temp_dir().join(format!("state-store-fuzz-{}-{:?}", std::process::id(), std::thread::current().id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("state.json");
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let store = FileStore::open(&path).unwrap();
                for i in 0..3 {
                    store.save(&format!("node-{i}"), &busy_record(), None).await.unwrap();
                }
            });
            let doc = std::fs::read(&path).unwrap();
            (path, doc)
        });
        CASE.with(|(path, doc)| {
            let damaged = mutate(doc, &e);
            std::fs::write(path, &damaged).unwrap();
            match FileStore::open(path) {
                Ok(store) => {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    let n = rt.block_on(store.list()).unwrap().len();
                    // An edit may rename or drop a record, never empty the store silently.
                    prop_assert!(n >= 1 || !damaged.windows(7).any(|w| w == b"node-0\"" ), "{n} records");
                }
                Err(StoreError::Corrupt { .. } | StoreError::NewerFormat { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
            }
            Ok(())
        })?;
    }
}
