//! The etcd store and remediation lock against a real etcd (Debian's
//! `etcd-server`), started on loopback ports with a temporary data dir.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use state_store::{EtcdStore, Holder, LockError, RemediationLock, StateStore, conformance, etcd_client};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

struct Etcd {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts etcd and waits (reading its log, not sleeping) until it serves clients.
async fn etcd(tag: &str) -> Etcd {
    etcd_with(tag, "http", &[]).await
}

/// Starts etcd serving clients over `scheme` with `extra` flags.
async fn etcd_with(tag: &str, scheme: &str, extra: &[String]) -> Etcd {
    let dir = std::env::temp_dir().join(format!("state-store-etcd-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("{scheme}://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = tokio::process::Command::new("etcd")
        .args(["--name", "test", "--data-dir"])
        .arg(&dir)
        .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcd is installed (scripts/test.sh installs Debian's etcd-server)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("ready to serve client requests") {
                return;
            }
        }
        panic!("etcd exited before serving clients");
    })
    .await
    .expect("etcd did not start within 60s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Etcd { child, dir, endpoint }
}

async fn client(e: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([e.endpoint.as_str()], None).await.unwrap()
}

/// More records than one answer may carry are listed in pages, all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_listing_comes_in_pages() {
    let e = etcd("pages").await;
    let store = EtcdStore::new(client(&e).await, "/pages/");
    let other = EtcdStore::new(client(&e).await, "/pages-other/");
    other.save("x", &health_core::NodeRecord::default(), None).await.unwrap();
    let mut saves = tokio::task::JoinSet::new();
    for i in 0..2_500 {
        let store = store.clone();
        saves
            .spawn(async move { store.save(&format!("node-{i:05}"), &health_core::NodeRecord::default(), None).await });
        if saves.len() >= 64 {
            saves.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = saves.join_next().await {
        r.unwrap().unwrap();
    }
    let all = store.list().await.unwrap();
    assert_eq!(all.len(), 2_500);
    assert_eq!(all.first().map(|(n, _)| n.as_str()), Some("node-00000"));
    assert_eq!(all.last().map(|(n, _)| n.as_str()), Some("node-02499"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conforms() {
    let e = etcd("conform").await;
    let store = EtcdStore::new(client(&e).await, "/node-health/state/");
    conformance::basic(&store, "node-a", "node-b").await.unwrap();
    conformance::racing_writers(Arc::new(store.clone()), "race", 8, 10).await.unwrap();
    let c2 = client(&e).await;
    conformance::survives_restart(store, move || Ok(EtcdStore::new(c2, "/node-health/state/")), "restart")
        .await
        .unwrap();
    // Another prefix is another store.
    let other = EtcdStore::new(client(&e).await, "/other/");
    assert!(other.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_serialises_and_a_dead_holder_frees_it_within_the_ttl() {
    let e = etcd("lock").await;
    let ttl = Duration::from_secs(2);
    let lock_a = RemediationLock::new(client(&e).await, "/node-health/locks/reboot", 1, ttl).unwrap();
    let lock_b = RemediationLock::new(client(&e).await, "/node-health/locks/reboot", 1, ttl).unwrap();
    let a = lock_a.try_acquire(&Holder::now("node-a")).await.unwrap().expect("a gets the slot");
    assert!(lock_b.try_acquire(&Holder::now("node-b")).await.unwrap().is_none(), "b must wait");
    let holders = lock_b.holders().await.unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!((holders[0].node.as_str(), holders[0].pid), ("node-a", std::process::id()));
    assert!(holders[0].acquired_at.ends_with('Z'));

    // The holder stays while alive (its keep-alive outlasts several TTLs).
    let err = lock_b.acquire(&Holder::now("node-b"), Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains("stayed taken"), "{err}");

    // The holder dies without releasing: b gets the slot within the TTL.
    let died = Instant::now();
    drop(a);
    let b = lock_b.acquire(&Holder::now("node-b"), Duration::from_secs(15)).await.unwrap();
    let waited = died.elapsed();
    assert!(waited <= ttl + Duration::from_secs(3), "took {waited:?}");
    assert_eq!(lock_a.holders().await.unwrap()[0].node, "node-b");
    b.release().await.unwrap();
    assert!(lock_a.holders().await.unwrap().is_empty(), "release frees at once");

    // A semaphore of two.
    let sem = RemediationLock::new(client(&e).await, "/node-health/locks/drain", 2, ttl).unwrap();
    let one = sem.try_acquire(&Holder::now("n1")).await.unwrap().unwrap();
    let two = sem.try_acquire(&Holder::now("n2")).await.unwrap().unwrap();
    assert!(sem.try_acquire(&Holder::now("n3")).await.unwrap().is_none());
    assert_ne!(one.key(), two.key());
    one.release().await.unwrap();
    assert!(sem.try_acquire(&Holder::now("n3")).await.unwrap().is_some());
    assert!(RemediationLock::new(client(&e).await, "/x", 0, ttl).is_err());
}

/// A TCP proxy in front of etcd that can turn into a black hole: it keeps
/// every connection open and accepts new ones, but drops every byte, as a
/// partition does.
struct Proxy {
    endpoint: String,
    black: Arc<AtomicBool>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    black: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if !black.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            // Partitioned: the bytes are lost.
            Ok(_) => {}
        }
    }
}

async fn proxy(e: &Etcd) -> Proxy {
    let upstream = e.endpoint.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let black = Arc::new(AtomicBool::new(false));
    let b = Arc::clone(&black);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, Arc::clone(&b)));
            tokio::spawn(pump(sr, cw, Arc::clone(&b)));
        }
    });
    Proxy { endpoint, black }
}

/// Holder A reaches etcd through a proxy that black-holes all traffic; B
/// reaches etcd directly and waits for the slot. The two timelines (one
/// monotonic clock) must not overlap: A reports the loss before B holds the
/// slot, and within the TTL of the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_reports_loss_before_another_can_hold_the_slot() {
    let e = etcd("partition").await;
    let p = proxy(&e).await;
    let ttl = Duration::from_secs(3);
    let via_proxy = etcd_client::Client::connect([p.endpoint.as_str()], None).await.unwrap();
    let lock_a = RemediationLock::new(via_proxy, "/node-health/locks/reboot", 1, ttl).unwrap();
    let lock_b = RemediationLock::new(client(&e).await, "/node-health/locks/reboot", 1, ttl).unwrap();
    let mut a = lock_a.try_acquire(&Holder::now("node-a")).await.unwrap().expect("a gets the slot");
    assert!(!a.is_lost());

    p.black.store(true, Ordering::SeqCst);
    let cut = tokio::time::Instant::now();
    let a_side = tokio::spawn(async move {
        a.lost().await;
        (tokio::time::Instant::now(), a)
    });
    let b = lock_b.acquire(&Holder::now("node-b"), Duration::from_secs(30)).await.unwrap();
    let b_from = tokio::time::Instant::now();
    let (a_lost_at, a) = tokio::time::timeout(Duration::from_secs(10), a_side).await.expect("A notices").unwrap();
    println!(
        "partition at 0 ms; A reports the loss at {} ms; B holds the slot from {} ms",
        (a_lost_at - cut).as_millis(),
        (b_from - cut).as_millis()
    );
    assert!(a_lost_at < b_from, "A still believed it held the slot when B got it");
    assert!(a_lost_at - cut <= ttl, "A noticed only after {:?}", a_lost_at - cut);
    assert!(a.is_lost());
    assert_eq!(lock_b.holders().await.unwrap()[0].node, "node-b");
    b.release().await.unwrap();

    // Calls through the partition end with a deadline instead of hanging.
    let started = tokio::time::Instant::now();
    let err = lock_a.try_acquire(&Holder::now("node-a")).await.unwrap_err();
    assert!(matches!(err, LockError::Unanswered { what: "grant a lease", .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_slot_value_is_an_error_not_a_free_slot() {
    let e = etcd("unreadable").await;
    let mut c = client(&e).await;
    c.put("/node-health/locks/reboot/slot-0", "garbage", None).await.unwrap();
    let lock = RemediationLock::new(client(&e).await, "/node-health/locks/reboot", 1, Duration::from_secs(2)).unwrap();
    match lock.holders().await {
        Err(LockError::Unreadable { key, .. }) => assert_eq!(key, "/node-health/locks/reboot/slot-0"),
        other => panic!("{other:?}"),
    }
    assert!(lock.try_acquire(&Holder::now("n1")).await.unwrap().is_none(), "the slot is taken, not free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_newer_format_is_a_typed_error() {
    let e = etcd("newer").await;
    let mut c = client(&e).await;
    let newer = r#"{"format_version":99,"phase":"Healthy","class":"standard","rung":"reimage"}"#;
    c.put("/node-health/state/node-1", newer, None).await.unwrap();
    let store = EtcdStore::new(client(&e).await, "/node-health/state/");
    match store.load("node-1").await.unwrap_err() {
        health_core::StoreError::NewerFormat { key, found: 99, .. } => assert_eq!(key, "/node-health/state/node-1"),
        other => panic!("{other}"),
    }
    assert!(store.list().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_through_a_reboot_is_reclaimed_by_its_host_or_frees_itself() {
    let e = etcd("reboot").await;
    let ttl = Duration::from_secs(2);
    let lock_a = RemediationLock::new(client(&e).await, "/node-health/locks/host", 1, ttl).unwrap();
    let lock_b = RemediationLock::new(client(&e).await, "/node-health/locks/host", 1, ttl).unwrap();

    // a parks its slot for a reboot longer than the normal TTL.
    let a = lock_a.try_acquire(&Holder::now("host-a")).await.unwrap().unwrap();
    let parked = a.hold_through(&Holder::now("host-a").rebooting("boot-1"), Duration::from_secs(6)).await.unwrap();
    assert_eq!(parked.ttl, Duration::from_secs(6));
    // The process "dies" with the reboot: nobody renews, yet the slot stays
    // taken past the normal TTL.
    let err = lock_b.acquire(&Holder::now("host-b"), ttl * 2).await.unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err}");
    let stored = lock_b.holders().await.unwrap();
    assert_eq!(stored[0].boot_id.as_deref(), Some("boot-1"));
    assert!(stored[0].rebooting_since.as_deref().is_some_and(|t| t.ends_with('Z')));

    // Back from the reboot (a new process): host-a takes its slot back, with
    // the metadata it wrote, and keeps it alive past the reboot lease.
    let fresh = RemediationLock::new(client(&e).await, "/node-health/locks/host", 1, ttl).unwrap();
    assert!(fresh.reclaim("host-b").await.unwrap().is_none(), "host-b holds nothing");
    let (guard, before) = fresh.reclaim("host-a").await.unwrap().expect("host-a's slot");
    assert_eq!(before.boot_id.as_deref(), Some("boot-1"));
    let err = lock_b.acquire(&Holder::now("host-b"), Duration::from_secs(8)).await.unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "the reclaimed slot is kept alive: {err}");
    guard.release().await.unwrap();
    assert!(lock_b.holders().await.unwrap().is_empty());

    // A host that never comes back: the slot frees itself within the reboot lease.
    let a = lock_a.try_acquire(&Holder::now("host-a")).await.unwrap().unwrap();
    let parked_at = Instant::now();
    a.hold_through(&Holder::now("host-a").rebooting("boot-2"), Duration::from_secs(3)).await.unwrap();
    let b = lock_b.acquire(&Holder::now("host-b"), Duration::from_secs(15)).await.unwrap();
    let waited = parked_at.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited <= Duration::from_secs(7), "freed after {waited:?}");
    b.release().await.unwrap();
}

/// A CA and the certificates signed by it, written as PEM files in `dir`
/// (`<name>.pem`, `<name>-key.pem`), valid for 127.0.0.1 and localhost.
#[cfg(feature = "etcd-tls")]
fn pki(dir: &std::path::Path, ca_name: &str, leaves: &[&str]) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{ca_name} test CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join(format!("{ca_name}.pem")), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for leaf in leaves {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, (*leaf).to_owned());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{leaf}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{leaf}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// Must show (production fit): the store over mTLS to an etcd that requires
/// client certificates, with certificates made by the test; a wrong CA, a
/// missing client certificate and an untrusted one are refused.
#[cfg(feature = "etcd-tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_over_mutual_tls() {
    use state_store::EtcdTls;
    let pkid = std::env::temp_dir().join(format!("state-store-pki-{}", std::process::id()));
    std::fs::create_dir_all(&pkid).unwrap();
    pki(&pkid, "ca", &["server", "client"]);
    pki(&pkid, "other-ca", &["stranger"]);
    let f = |n: &str| pkid.join(n);
    let flags: Vec<String> = [
        "--cert-file",
        &f("server.pem").display().to_string(),
        "--key-file",
        &f("server-key.pem").display().to_string(),
        "--trusted-ca-file",
        &f("ca.pem").display().to_string(),
        "--client-cert-auth",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let e = etcd_with("tls", "https", &flags).await;
    let connect = |tls: EtcdTls| {
        let endpoint = e.endpoint.clone();
        async move {
            let opts = tls.connect_options(Duration::from_secs(5)).expect("readable PEM files");
            let client = etcd_client::Client::connect([endpoint], Some(opts)).await?;
            let store = EtcdStore::new(client, "/tls/");
            let v = store.save("n1", &health_core::NodeRecord::default(), None).await;
            Ok::<_, etcd_client::Error>(v.map(|_| store))
        }
    };
    let good = EtcdTls::with_ca(f("ca.pem")).with_identity(f("client.pem"), f("client-key.pem"));
    let store = connect(good).await.expect("connects").expect("saves over mTLS");
    assert!(store.load("n1").await.unwrap().is_some(), "reads back over mTLS");

    let refused = [
        ("a wrong CA", EtcdTls::with_ca(f("other-ca.pem")).with_identity(f("client.pem"), f("client-key.pem"))),
        ("no client certificate", EtcdTls::with_ca(f("ca.pem"))),
        ("an untrusted client", EtcdTls::with_ca(f("ca.pem")).with_identity(f("stranger.pem"), f("stranger-key.pem"))),
    ];
    for (what, tls) in refused {
        let r = tokio::time::timeout(Duration::from_secs(20), connect(tls)).await.expect("refused in time");
        assert!(!matches!(r, Ok(Ok(_))), "{what}: the connection must be refused");
    }
    std::fs::remove_dir_all(&pkid).unwrap();
}
