//! The conformance suite every [`StateStore`] backend runs: load, save,
//! compare-and-swap conflicts, delete, list, racing writers and restarts.
//!
//! Each check returns `Err` with a description of the first violation, so a
//! backend's test is one line per check.

use std::sync::Arc;

use health_core::{NodeRecord, Phase, StateStore, Timestamp, Version};

fn record(phase: Phase, reboots: u32) -> NodeRecord {
    NodeRecord {
        phase,
        reboot_count: reboots,
        unhealthy_since: Some(Timestamp::from_secs(1_700_000_000)),
        ..NodeRecord::default()
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Load, create, update, conflicts, delete and list, on two keys that
/// start absent.
pub async fn basic<S: StateStore + ?Sized>(store: &S, a: &str, b: &str) -> Result<(), String> {
    fn e(what: &'static str) -> impl Fn(health_core::StoreError) -> String {
        move |err| format!("{what}: {err}")
    }
    ensure!(store.load(a).await.map_err(e("load absent"))?.is_none(), "{a} should start absent");
    let r1 = record(Phase::Unhealthy, 0);
    let v1 = store.save(a, &r1, None).await.map_err(e("create"))?;
    let again = store.save(a, &r1, None).await;
    ensure!(matches!(&again, Err(x) if x.is_conflict()), "creating an existing key must conflict, got {again:?}");
    let got = store.load(a).await.map_err(e("load"))?.ok_or("the created record is missing")?;
    ensure!(got.record == r1 && got.version == v1, "load returned {got:?}, saved {r1:?} at {v1:?}");

    let r2 = record(Phase::WaitingReboot, 1);
    let v2 = store.save(a, &r2, Some(&v1)).await.map_err(e("update"))?;
    ensure!(v2 != v1, "an update must change the version");
    let stale = store.save(a, &record(Phase::Failed, 9), Some(&v1)).await;
    ensure!(matches!(&stale, Err(x) if x.is_conflict()), "a stale update must conflict, got {stale:?}");
    let got = store.load(a).await.map_err(e("load after update"))?.ok_or("the record vanished")?;
    ensure!(got.record == r2 && got.version == v2, "the stale write changed the record: {got:?}");

    let zero = store.save(b, &r1, Some(&Version::from_u64(0))).await;
    ensure!(matches!(&zero, Err(x) if x.is_conflict()), "version 0 must not create an absent key, got {zero:?}");
    let missing_version = Version::new("no-such-version");
    let bad_create = store.save(b, &r1, Some(&missing_version)).await;
    ensure!(
        matches!(&bad_create, Err(x) if x.is_conflict()),
        "updating an absent key must conflict, got {bad_create:?}"
    );
    store.save(b, &record(Phase::Healthy, 0), None).await.map_err(e("create b"))?;
    let listed = store.list().await.map_err(e("list"))?;
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    ensure!(keys.contains(&a) && keys.contains(&b), "list returned {keys:?}");
    let listed_a = listed.iter().find(|(k, _)| k == a).map(|(_, s)| s.clone());
    ensure!(
        listed_a.as_ref().is_some_and(|s| s.version == v2 && s.record == r2),
        "list disagrees with load: {listed_a:?}"
    );

    let stale_delete = store.delete(a, Some(&v1)).await;
    ensure!(matches!(&stale_delete, Err(x) if x.is_conflict()), "a stale delete must conflict, got {stale_delete:?}");
    store.delete(a, Some(&v2)).await.map_err(e("delete"))?;
    ensure!(store.load(a).await.map_err(e("load deleted"))?.is_none(), "the deleted record is still there");
    store.delete(a, None).await.map_err(e("delete absent"))?;
    store.delete(b, None).await.map_err(e("delete b"))?;
    // A re-created key starts a new history.
    let v3 = store.save(a, &r1, None).await.map_err(e("re-create"))?;
    ensure!(v3 != v1 && v3 != v2, "a re-created key reused a version");
    store.delete(a, None).await.map_err(e("cleanup"))?;
    Ok(())
}

/// `writers` tasks race to update one key from the same version, `rounds`
/// times: exactly one wins each round, the others get a conflict.
pub async fn racing_writers<S: StateStore + ?Sized + 'static>(
    store: Arc<S>,
    key: &str,
    writers: u32,
    rounds: u32,
) -> Result<(), String> {
    let mut version = store.save(key, &record(Phase::Healthy, 0), None).await.map_err(|e| format!("create: {e}"))?;
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (store, key, expected) = (Arc::clone(&store), key.to_owned(), version.clone());
            tasks.push(tokio::spawn(async move {
                let r = record(Phase::Unhealthy, round * 100 + w);
                (w, store.save(&key, &r, Some(&expected)).await)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (w, result) = t.await.map_err(|e| format!("a writer panicked: {e}"))?;
            match result {
                Ok(v) => winners.push((w, v)),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(format!("round {round}: writer {w} failed with a non-conflict error: {e}")),
            }
        }
        ensure!(winners.len() == 1, "round {round}: {} writers won", winners.len());
        let (w, v) = winners.remove(0);
        let got = store.load(key).await.map_err(|e| format!("load: {e}"))?.ok_or("the key vanished")?;
        ensure!(
            got.version == v && got.record.reboot_count == round * 100 + w,
            "round {round}: the winner's write is not what was stored"
        );
        version = v;
    }
    store.delete(key, None).await.map_err(|e| format!("cleanup: {e}"))?;
    Ok(())
}

/// Writes through `before`, closes it, then reads through the store that
/// `reopen` opens on the same backing data (as after a restart).
pub async fn survives_restart<S1, S2>(
    before: S1,
    reopen: impl FnOnce() -> Result<S2, String>,
    key: &str,
) -> Result<(), String>
where
    S1: StateStore,
    S2: StateStore,
{
    let r = record(Phase::WaitingReboot, 3);
    let v = before.save(key, &r, None).await.map_err(|e| format!("save: {e}"))?;
    drop(before);
    let reopened = reopen()?;
    let got =
        reopened.load(key).await.map_err(|e| format!("load after restart: {e}"))?.ok_or("lost across the restart")?;
    ensure!(got.record == r && got.version == v, "after the restart: {got:?}");
    reopened.delete(key, Some(&v)).await.map_err(|e| format!("cleanup: {e}"))?;
    Ok(())
}
