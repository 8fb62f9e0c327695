//! Runs the built `node-agent` binary against an in-process cluster-sim and
//! reads its JSON log lines: tests wait for what the agent says it did, never
//! for a fixed time.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cluster_sim::{ClusterConfig, Ports, SimServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// The longest a test waits for one log line.
pub const WAIT: Duration = Duration::from_secs(40);

/// A policy at test speed: thresholds 1s, reboot waits 2s, two retries.
pub const FAST_POLICY: &str = r#"
[agent]
metrics_port = 0
metrics_address = "127.0.0.1"

[admin]
listen = "127.0.0.1:0"

[store]
backend = "memory"

[kube]
events = true

[policy]
reboot_wait = "2s"
gpu_reboot_wait = "2s"
max_reboot_retries = 2
history_reset_after = "1m"
verify_for = "1s"

[policy.failure_backoff]
initial = "200ms"
max = "1s"

[policy.escalation]
replace_wait = "30s"

[policy.gates]
startup_grace = "0s"
max_in_flight = "100%"

[[checkers]]
kind = "node-ready"
threshold = "1s"

[[checkers]]
kind = "gpu"
threshold = "1s"
"#;

/// Starts a simulated cluster.
pub async fn sim(nodes: u32, gpu_nodes: u32, pools: u32) -> SimServer {
    let config = ClusterConfig {
        nodes,
        gpu_nodes,
        pools,
        reboot_takes: Duration::from_millis(300),
        replace_takes: Duration::from_millis(500),
        ..ClusterConfig::default()
    };
    SimServer::start(config, Ports::default()).await.expect("simulator starts")
}

/// A scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("node-agent-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A real etcd (Debian's `etcd-server`) on loopback ports, killed on drop.
pub struct Etcd {
    _child: Child,
    dir: PathBuf,
    /// Its client URL.
    pub endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts etcd and waits (reading its log) until it serves clients.
pub async fn etcd(tag: &str) -> Etcd {
    etcd_with(tag, "http", &[]).await
}

/// The same, with extra flags (TLS) and the client URL scheme.
pub async fn etcd_with(tag: &str, scheme: &str, extra: &[String]) -> Etcd {
    let dir = scratch(&format!("etcd-{tag}"));
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("{scheme}://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new("etcd")
        .args(["--name", "test", "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcd is installed (scripts/install-deps.sh installs Debian's etcd-server)");
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
    Etcd { _child: child, dir, endpoint }
}

/// The agent process and its log.
pub struct Agent {
    pub child: Child,
    lines: Lines<BufReader<ChildStderr>>,
    /// Every line read so far.
    pub seen: Vec<Value>,
    /// The bound metrics address, once logged.
    pub metrics: Option<SocketAddr>,
    /// The bound admin API address, once logged.
    pub admin: Option<SocketAddr>,
}

/// The environment a Civo user sets, pointed at the simulator.
pub fn civo_env(sim: &SimServer) -> Vec<(String, String)> {
    let c = sim.cluster().config();
    vec![
        ("CIVO_API_KEY".into(), c.civo_key.clone()),
        ("CIVO_API_URL".into(), sim.civo_url()),
        ("CIVO_CLUSTER_ID".into(), c.cluster_id.clone()),
        ("CIVO_REGION".into(), c.region.clone()),
    ]
}

/// Writes the kubeconfig and config file, and starts `node-agent run`.
pub async fn spawn(sim: &SimServer, dir: &std::path::Path, config: &str, env: &[(String, String)]) -> Agent {
    spawn_via(sim, dir, config, env, &sim.kube_url()).await
}

/// The same, reaching the Kubernetes API at `kube_url` (a proxy).
pub async fn spawn_via(
    sim: &SimServer,
    dir: &std::path::Path,
    config: &str,
    env: &[(String, String)],
    kube_url: &str,
) -> Agent {
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let text = std::fs::read_to_string(&kubeconfig).unwrap().replace(&sim.kube_url(), kube_url);
    std::fs::write(&kubeconfig, text).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-agent"));
    cmd.arg("--config")
        .arg(&file)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--log-format")
        .arg("json")
        .arg("run")
        .env_clear()
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("node-agent starts");
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut agent = Agent { child, lines, seen: Vec::new(), metrics: None, admin: None };
    let serving = agent.wait_for("the HTTP port", |v| message(v) == "serving /metrics, /healthz, /readyz").await;
    agent.metrics = field(&serving, "address").and_then(|a| a.parse().ok());
    if !config.contains("[admin]\nenabled = false") {
        let admin = agent.wait_for("the admin port", |v| message(v).starts_with("serving the admin API")).await;
        agent.admin = field(&admin, "address").and_then(|a| a.parse().ok());
    }
    agent
}

/// Runs `node-agent <args>` to its end: (exit code, stdout, stderr).
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_node-agent")).args(args).env_clear().output().await.expect("node-agent runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `message` of a log line.
pub fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or("")
}

/// A field of a log line.
pub fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["fields"][name].as_str()
}

impl Agent {
    /// Reads log lines until one matches (panics after [`WAIT`] or at exit).
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; log so far:\n{}", self.dump()));
            let Some(line) = line.expect("reads the log") else {
                panic!("node-agent exited while waiting for {what}; log:\n{}", self.dump());
            };
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    /// Waits for a phase transition of `node` to `to`.
    pub async fn transition(&mut self, node: &str, to: &str) -> Value {
        let n = node.to_owned();
        let t = to.to_owned();
        self.wait_for(&format!("{node} -> {to}"), move |v| {
            message(v) == "phase changed" && field(v, "node") == Some(&n) && field(v, "to") == Some(&t)
        })
        .await
    }

    /// Waits for an action log line of `node` (`action` or `action failed`).
    pub async fn action(&mut self, node: &str, action: &str) -> Value {
        let n = node.to_owned();
        let a = action.to_owned();
        self.wait_for(&format!("{action} of {node}"), move |v| {
            (message(v) == "action" || message(v) == "action failed")
                && field(v, "node") == Some(&n)
                && field(v, "action") == Some(&a)
        })
        .await
    }

    /// The log so far, one line per entry.
    pub fn dump(&self) -> String {
        self.seen.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
    }

    /// GETs a path of the agent's HTTP port.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics.expect("metrics address logged");
        recovery_exec::install_crypto_provider();
        let r = reqwest::get(format!("http://{addr}{path}")).await.expect("the agent answers");
        let code = r.status().as_u16();
        (code, r.text().await.unwrap_or_default())
    }

    /// Sends SIGKILL.
    pub async fn kill9(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Hard reboot calls the simulated Civo API answered, any status.
pub fn hard_reboots(sim: &SimServer) -> usize {
    sim.cluster().civo_calls().iter().filter(|c| c.method == "POST" && c.path.contains("/hard_reboots")).count()
}

/// Pool deletions the simulated Civo API received.
pub fn pool_deletes(sim: &SimServer) -> usize {
    sim.cluster().civo_calls().iter().filter(|c| c.method == "DELETE" && c.path.contains("/pools/")).count()
}

/// A TCP proxy that can turn into a black hole: connections stay open but
/// every byte is dropped, as in a network partition.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    black: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`).
    pub async fn start(target: String) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let black = std::sync::Arc::new(AtomicBool::new(false));
        let flag = black.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                for (mut from, mut to, black) in [
                    (
                        Box::new(ri) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(wo) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                        flag.clone(),
                    ),
                    (Box::new(ro), Box::new(wi), flag.clone()),
                ] {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) if !black.load(Ordering::SeqCst) => {
                                    if to.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {}
                            }
                        }
                    });
                }
            }
        });
        Proxy { url, black }
    }

    /// Cuts (true) or restores (false) the connection.
    pub fn cut(&self, on: bool) {
        self.black.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}
