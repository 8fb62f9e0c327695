//! Host mode, black-box: the built `node-agent host ...` processes against a
//! real etcd (Debian's `etcd-server`) on loopback.
//!
//! A "reboot" is a script that records when it ran, applies the update
//! (removes the sentinel), changes the host's fake boot id and kills its
//! agent with SIGKILL, as a reboot would; a supervisor (systemd's part)
//! starts the agent again after a simulated boot time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_node-agent");

mod common;
use common::{etcd, etcd_with, free_port};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("node-agent-host-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(path, perms).unwrap();
}

/// One host's directory: boot id, sentinel, gate and reboot scripts, config.
fn host(root: &Path, name: &str, etcd: &str, extra: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("bootid"), "boot-0\n").unwrap();
    std::fs::write(d.join("reboot-required"), "").unwrap();
    let dir = d.display();
    write_exec(
        &d.join("gate.sh"),
        &format!("#!/bin/sh\n[ ! -e {dir}/unhealthy ] || {{ echo \"{name} is sick\"; exit 1; }}\n"),
    );
    // Records the reboot, applies the update, changes the boot id, and
    // brings the agent down as a reboot does.
    write_exec(
        &d.join("reboot.sh"),
        &format!(
            "#!/bin/sh\necho $(date +%s%3N) >> {dir}/reboots\nrm -f {dir}/reboot-required\necho boot-$(date +%s%N) > {dir}/bootid\n[ -e {dir}/no-kill ] || kill -9 $PPID\n"
        ),
    );
    let config = format!(
        r#"[host]
name = "{name}"
boot_id_file = "{dir}/bootid"
interval = "300ms"
jitter = "200ms"
[[detectors]]
kind = "file"
path = "{dir}/reboot-required"
[gate]
command = ["{dir}/gate.sh"]
timeout = "5s"
[etcd]
endpoints = ["{etcd}"]
prefix = "/fleet"
[coordination]
lock_ttl = "3s"
call_timeout = "1s"
lock_wait = "1s"
health_ttl = "4s"
[safety]
kill_switch = "{dir}/kill"
cooldown = "2s"
backoff = "200ms"
max_backoff = "1s"
[reboot]
command = ["{dir}/reboot.sh"]
timeout = "5s"
hold = "6s"
[server]
metrics_port = 0
{extra}"#
    );
    std::fs::write(d.join("host.toml"), config).unwrap();
    d
}

fn reboots(d: &Path) -> Vec<u64> {
    std::fs::read_to_string(d.join("reboots")).unwrap_or_default().lines().map(|l| l.trim().parse().unwrap()).collect()
}

async fn once(d: &Path, args: &[&str]) -> (i32, String) {
    once_with(d, "host.toml", args).await
}

async fn once_with(d: &Path, config: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["host", "--config"])
        .arg(d.join(config))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// What a supervisor saw.
#[derive(Debug)]
enum Seen {
    /// The agent died (a reboot).
    Down(String),
    /// The agent was started again after the boot time, at this time.
    Up(String, u64),
    /// The agent logged that its reboot completed (lock released).
    Completed,
}

/// Runs `host run` for one host, restarting it after each "reboot" unless
/// the host has a `dead` file (it never comes back). Its log goes to
/// `agent.log`; a completed reboot is reported as it is logged.
fn supervise(d: PathBuf, name: String, tx: tokio::sync::mpsc::UnboundedSender<Seen>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut child = Command::new(BIN)
                .args(["host", "--config"])
                .arg(d.join("host.toml"))
                .arg("run")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("agent.log")).unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"reboot_completed\"") {
                    let _ = tx.send(Seen::Completed);
                }
                let _ = std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes());
            }
            let _ = child.wait().await;
            let _ = tx.send(Seen::Down(name.clone()));
            if d.join("dead").exists() {
                return;
            }
            // Boot time.
            tokio::time::sleep(Duration::from_millis(800)).await;
            let _ = tx.send(Seen::Up(name.clone(), now_ms()));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reboots_one_host_at_a_time_and_survives_a_holder_that_never_comes_back() {
    let e = etcd("fleet").await;
    let root = scratch("fleet");
    let names: Vec<String> = (0..5).map(|i| format!("host-{i}")).collect();
    let dirs: Vec<PathBuf> = names.iter().map(|n| host(&root, n, &e.endpoint, "")).collect();
    // host-0 reboots first and never comes back (killed mid-reboot).
    std::fs::write(dirs[0].join("dead"), "").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = vec![supervise(dirs[0].clone(), names[0].clone(), tx.clone())];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ups: Vec<(String, u64)> = Vec::new();
    let mut completed = 0;
    while completed < 4 {
        let seen = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the fleet did not finish in time; back so far: {ups:?}"))
            .unwrap();
        match seen {
            Seen::Down(n) if n == names[0] => {
                // Only now the rest of the fleet starts.
                for i in 1..5 {
                    tasks.push(supervise(dirs[i].clone(), names[i].clone(), tx.clone()));
                }
            }
            Seen::Down(_) => {}
            Seen::Up(n, at) => ups.push((n, at)),
            Seen::Completed => completed += 1,
        }
    }
    for t in &tasks {
        t.abort();
    }

    // Every host rebooted exactly once.
    let mut starts: Vec<(u64, String)> = Vec::new();
    for (d, n) in dirs.iter().zip(&names) {
        let r = reboots(d);
        assert_eq!(r.len(), 1, "{n} rebooted {} times", r.len());
        starts.push((r[0], n.clone()));
        assert!(!d.join("reboot-required").exists());
    }
    starts.sort();
    let t0 = starts[0].0;
    eprintln!(
        "reboot starts (ms after the first): {:?}",
        starts.iter().map(|(t, n)| (n.as_str(), t - t0)).collect::<Vec<_>>()
    );
    assert_eq!(starts[0].1, "host-0");
    // The dead holder's lock freed itself within reboot.hold (6 s), not before.
    let gap = starts[1].0 - starts[0].0;
    assert!((5_000..=14_000).contains(&gap), "the next reboot came {gap} ms after the dead holder's");
    // Never two at once: each reboot starts after the previous host is back
    // (and then after the cooldown of 2 s).
    for w in starts[1..].windows(2) {
        let (prev_start, prev) = (&w[0].0, &w[0].1);
        let back = ups.iter().find(|(n, _)| n == prev).map(|(_, at)| *at).unwrap();
        assert!(back > *prev_start);
        assert!(w[1].0 >= back + 1_900, "{} rebooted {} ms after {prev} was back", w[1].1, w[1].0 - back);
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_windows_the_kill_switch_and_the_lock_hold_every_host_with_their_exit_codes() {
    let e = etcd("gates").await;
    let root = scratch("gates");
    let a = host(&root, "a", &e.endpoint, "");
    let b = host(&root, "b", &e.endpoint, "");
    let c = host(&root, "c", &e.endpoint, "");

    // simulate: detectors only.
    let (code, out) = once(&a, &["simulate"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reboot required"), "{out}");
    let (code, out) = once(&a, &["simulate", "--json"]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["detectors"][0]["result"], "needed");

    // b's gate fails: b is blocked by its own gate, a by b's marker.
    std::fs::write(b.join("unhealthy"), "").unwrap();
    let (code, out) = once(&b, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 3, "{out}");
    let (code, out) = once(&a, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("host b reports unhealthy: ") && out.contains("b is sick"), "{out}");
    let (code, out) = once(&a, &["status"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("unhealthy [b (") && out.contains("b is sick"), "{out}");
    // b recovers: the block clears.
    std::fs::remove_file(b.join("unhealthy")).unwrap();
    let (code, out) = once(&b, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = once(&a, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dry run: every check allows a reboot"), "{out}");
    assert!(reboots(&a).is_empty(), "a dry run never reboots");

    // The kill switch stops every host.
    for d in [&a, &b, &c] {
        std::fs::write(d.join("kill"), "").unwrap();
        let (code, out) = once(d, &["run", "--once"]).await;
        assert_eq!(code, 5, "{out}");
        std::fs::remove_file(d.join("kill")).unwrap();
    }

    // A closed window defers every host (a deny rule covering every day).
    let closed =
        "[[safety.windows]]\naction = \"deny\"\nstart = \"00:00\"\nend = \"00:00\"\ntime_zone = \"Europe/Berlin\"\n";
    for d in [&a, &b, &c] {
        let text = std::fs::read_to_string(d.join("host.toml")).unwrap();
        std::fs::write(d.join("closed.toml"), text.replace("[reboot]", &format!("{closed}[reboot]"))).unwrap();
        let (code, out) = once_with(d, "closed.toml", &["run", "--once"]).await;
        assert_eq!(code, 7, "{out}");
        assert!(out.contains("inside deny window"), "{out}");
    }
    assert!([&a, &b, &c].iter().all(|d| reboots(d).is_empty()));

    // a reboots (its script does not kill it here): the lock stays held
    // through the reboot, readable with etcdctl, and c meets contention.
    std::fs::write(a.join("no-kill"), "").unwrap();
    let (code, out) = once(&a, &["run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(reboots(&a).len(), 1);
    let mut client = etcd_client::Client::connect([e.endpoint.as_str()], None).await.unwrap();
    let r = client.get("/fleet/lock/slot-0", None).await.unwrap();
    let holder: serde_json::Value = serde_json::from_slice(r.kvs()[0].value()).unwrap();
    assert_eq!(holder["node"], "a");
    assert!(holder["pid"].as_u64().is_some() && holder["acquired_at"].as_str().is_some(), "{holder}");
    assert_eq!(holder["boot_id"], "boot-0");
    let (code, out) = once(&c, &["run", "--once"]).await;
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("is held by a (pid"), "{out}");
    let (code, out) = once(&c, &["status"]).await;
    assert_eq!(code, 4, "{out}");
    let (code, _) = once(&c, &["status", "--skip-lock"]).await;
    assert_eq!(code, 0, "--skip-lock does not look at the lock");
    // a comes back: it releases the lock and the cooldown starts.
    let (code, out) = once(&a, &["run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reboot_completed"), "{out}");
    let (code, out) = once(&c, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("cooldown: a rebooted"), "{out}");

    // etcd unreachable: a runtime failure, nothing reboots.
    let lost = host(&root, "lost", &format!("http://127.0.0.1:{}", free_port()), "");
    let (code, out) = once(&lost, &["run", "--once"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(reboots(&lost).is_empty());

    // Usage errors are 64; cluster-mode flags are refused in host mode.
    let (code, _) = once(&a, &["run", "--bogus"]).await;
    assert_eq!(code, 64);
    let out = Command::new(BIN).args(["--active", "host", "simulate"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(64));

    // A failing detector makes simulate exit 6.
    let broken = host(&root, "broken", &e.endpoint, "");
    let text = std::fs::read_to_string(broken.join("host.toml")).unwrap();
    let text = text.replacen(
        "[gate]",
        "[[detectors]]\nkind = \"command\"\ncommand = [\"/nonexistent/needs-reboot\"]\n[gate]",
        1,
    );
    std::fs::write(broken.join("host.toml"), text).unwrap();
    let (code, out) = once(&broken, &["simulate"]).await;
    assert_eq!(code, 6, "{out}");
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_names_the_field_of_each_broken_config() {
    let root = scratch("validate");
    let cases: &[(&str, &str)] = &[
        ("[host]\ninterval = \"soon\"\n", "host.interval"),
        ("[host]\nintervall = \"1m\"\n", "intervall"),
        ("[gate]\ncommand = [\"\"]\n", "gate.command"),
        ("[[detectors]]\nkind = \"magic\"\n", "magic"),
        ("[[detectors]]\nkind = \"command\"\ncommand = [\"x\"]\nreboot_exit_codes = [300]\n", "reboot_exit_codes"),
        ("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n", "etcd.endpoints"),
        ("[coordination]\nlock_ttl = \"3s\"\ncall_timeout = \"5s\"\n", "coordination.call_timeout"),
        ("[policy]\nmin_healthy_fraction = 1.5\n", "policy.min_healthy_fraction"),
        ("[policy]\nmin_healthy = 5\nexpected_hosts = 3\n", "policy.min_healthy"),
        (
            "[[safety.windows]]\naction = \"allow\"\nstart = \"01:00\"\nend = \"02:00\"\ntime_zone = \"Europe/Atlantis\"\n",
            "safety.windows[0].time_zone",
        ),
        (
            "[[safety.windows]]\naction = \"sometimes\"\nstart = \"01:00\"\nend = \"02:00\"\n",
            "safety.windows[0].action",
        ),
        ("[reboot]\ncommand = []\n", "reboot.command"),
        ("[server]\nmetrics_port = 70000\n", "metrics_port"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let path = root.join(format!("broken-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out =
            Command::new(BIN).args(["host", "--config"]).arg(&path).arg("validate-config").output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
    }
    let out = Command::new(BIN)
        .args(["host", "validate-config"])
        .env("NODE_AGENT_SAFETY__DRY_RUN", "maybe")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NODE_AGENT_SAFETY__DRY_RUN"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/host.toml");
    let out = Command::new(BIN).args(["host", "--config", example, "validate-config"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_lease_backend_gates_serializes_and_holds_through_a_reboot() {
    use cluster_sim::{ClusterConfig, Ports, SimServer};
    use k8s_openapi::api::coordination::v1::Lease;
    let sim = SimServer::start(ClusterConfig { nodes: 1, gpu_nodes: 0, ..ClusterConfig::default() }, Ports::default())
        .await
        .expect("simulator starts");
    let root = scratch("kube");
    let kubeconfig = root.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let kube = format!(
        "[kubernetes]\nkubeconfig = \"{}\"\nnamespace = \"default\"\nname_prefix = \"fleet\"\n",
        kubeconfig.display()
    );
    let on_leases = |d: &Path| {
        let text = std::fs::read_to_string(d.join("host.toml")).unwrap();
        let text = text
            .replace("[coordination]\n", "[coordination]\nbackend = \"kubernetes\"\n")
            .replace("[server]", &format!("{kube}[server]"));
        std::fs::write(d.join("host.toml"), text).unwrap();
    };
    let unused = "http://127.0.0.1:1";
    let (a, b, c) = (host(&root, "a", unused, ""), host(&root, "b", unused, ""), host(&root, "c", unused, ""));
    for d in [&a, &b, &c] {
        on_leases(d);
    }

    let (code, out) = once(&a, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");
    std::fs::write(b.join("unhealthy"), "").unwrap();
    let (code, out) = once(&b, &["run", "--once"]).await;
    assert_eq!(code, 3, "{out}");
    let (code, out) = once(&a, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("host b reports unhealthy"), "{out}");
    std::fs::remove_file(b.join("unhealthy")).unwrap();
    let (code, out) = once(&b, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");

    // a reboots holding the lock Lease; c meets contention.
    std::fs::write(a.join("no-kill"), "").unwrap();
    let (code, out) = once(&a, &["run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(reboots(&a).len(), 1);
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, "default");
    let lock = leases.get("fleet-lock").await.unwrap();
    let spec = lock.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(6), "held for reboot.hold");
    let holder: serde_json::Value =
        serde_json::from_str(&lock.metadata.annotations.as_ref().unwrap()["node-agent.io/holder"]).unwrap();
    assert_eq!(holder["boot_id"], "boot-0");
    let (code, out) = once(&c, &["run", "--once"]).await;
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("is held by a"), "{out}");

    // a is back (new boot id): it releases, and the cooldown holds c.
    let (code, out) = once(&a, &["run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reboot_completed"), "{out}");
    let lock = leases.get("fleet-lock").await.unwrap();
    assert_eq!(lock.spec.unwrap().holder_identity, None, "released");
    let (code, out) = once(&c, &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("cooldown: a rebooted"), "{out}");
    let markers = leases.list(&kube::api::ListParams::default().labels("node-agent.io/fleet=fleet")).await.unwrap();
    assert_eq!(markers.items.len(), 3, "one health marker Lease per host");
    let _ = std::fs::remove_dir_all(&root);
}

/// Runs openssl (Debian's; it comes with the system) in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a certificate and key it signs for `name` (valid for 127.0.0.1).
fn pki(dir: &Path, ca: &str, name: &str) {
    if !dir.join(format!("{ca}.pem")).exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}-key.pem"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates_and_a_wrong_ca_refused() {
    let root = scratch("tls");
    let pkid = root.join("pki");
    std::fs::create_dir_all(&pkid).unwrap();
    pki(&pkid, "ca", "server");
    pki(&pkid, "ca", "client");
    pki(&pkid, "other-ca", "stranger");
    let f = |n: &str| pkid.join(n).display().to_string();
    let flags = vec![
        "--cert-file".to_owned(),
        f("server.pem"),
        "--key-file".to_owned(),
        f("server-key.pem"),
        "--trusted-ca-file".to_owned(),
        f("ca.pem"),
        "--client-cert-auth".to_owned(),
    ];
    let e = etcd_with("tls", "https", &flags).await;
    let tls = |ca: &str, cert: &str| {
        let mut t = format!("ca_file = \"{}\"\n", f(ca));
        if !cert.is_empty() {
            t.push_str(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                f(&format!("{cert}.pem")),
                f(&format!("{cert}-key.pem"))
            ));
        }
        t
    };
    let with = |d: &Path, file: &str, settings: &str| {
        let text = std::fs::read_to_string(d.join("host.toml")).unwrap();
        std::fs::write(
            d.join(file),
            text.replace("prefix = \"/fleet\"\n", &format!("prefix = \"/fleet\"\n{settings}")),
        )
        .unwrap();
    };
    let a = host(&root, "a", &e.endpoint, "");
    with(&a, "good.toml", &tls("ca.pem", "client"));
    with(&a, "wrong-ca.toml", &tls("other-ca.pem", "client"));
    with(&a, "no-client-cert.toml", &tls("ca.pem", ""));
    with(&a, "untrusted-client.toml", &tls("ca.pem", "stranger"));

    let (code, out) = once_with(&a, "good.toml", &["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dry run: every check allows a reboot"), "{out}");
    for bad in ["wrong-ca.toml", "no-client-cert.toml", "untrusted-client.toml"] {
        let (code, out) = once_with(&a, bad, &["run", "--once"]).await;
        assert_eq!(code, 1, "{bad}: {out}");
        assert!(out.contains("TLS: check etcd.ca_file"), "{bad}: {out}");
    }
    // https without a CA is a configuration error naming the key.
    with(&a, "no-ca.toml", "");
    let (code, out) = once_with(&a, "no-ca.toml", &["validate-config"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("etcd.ca_file"), "{out}");
    let _ = std::fs::remove_dir_all(&root);
}
