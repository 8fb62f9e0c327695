//! Starting the two HTTP servers on loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::cluster::{Cluster, ClusterConfig};
use crate::limits::Limits;

/// Where the simulator listens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// Kubernetes API port (0: any free port).
    pub kube: u16,
    /// Civo API port (0: any free port).
    pub civo: u16,
}

/// The simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A port could not be bound.
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid cluster configuration: {0}")]
    Config(#[from] crate::cluster::ConfigError),
    /// The kubeconfig could not be written.
    #[error("cannot write the kubeconfig to {path}: {source}")]
    Kubeconfig {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running simulator: a cluster with its Kubernetes and Civo APIs served on loopback.
pub struct SimServer {
    cluster: Cluster,
    kube_addr: SocketAddr,
    civo_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("kube", &self.kube_addr)
            .field("civo", &self.civo_addr)
            .finish_non_exhaustive()
    }
}

/// Connections the kernel queues for each API while every connection slot is
/// taken (the standard library's 128 would make further clients retry their
/// SYN after a second or more).
const LISTEN_BACKLOG: u32 = 1024;

fn bind(port: u16) -> Result<TcpListener, SimError> {
    let err = |source| SimError::Bind { port, source };
    let socket = TcpSocket::new_v4().map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind((Ipv4Addr::LOCALHOST, port).into()).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Serves `app` on `listener` until `stop` turns true (or its sender goes).
///
/// Each connection is an HTTP/1 connection with a header read timeout and
/// holds one of `limits.max_connections` permits; the loop waits for a
/// permit before it accepts, so connections beyond the limit wait in the
/// listen backlog. On stop it accepts no more, asks every connection to
/// finish (idle ones close at once, requests in flight complete), and aborts
/// those still open after `limits.header_read_timeout`.
///
/// Owned here: the permits, the connection tasks (in `connections`) and the
/// `drain` channel that tells them to finish.
async fn serve(mut listener: TcpListener, app: Router, limits: Limits, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let (drain, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        // A stop while waiting for a permit or a connection ends the loop.
        let accepted = tokio::select! {
            accepted = async {
                let permit = Arc::clone(&permits).acquire_owned().await;
                (permit, Listener::accept(&mut listener).await)
            } => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (Ok(permit), (tcp, _)) = accepted else { break };
        while connections.try_join_next().is_some() {}
        let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        connections.spawn(connection(conn, permit, draining.clone()));
    }
    drop(listener);
    let _ = drain.send(true);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.header_read_timeout, finished).await.is_err() {
        connections.shutdown().await;
    }
}

/// Drives one connection to its end, or to a graceful end once `draining`
/// turns true; its permit is released when it returns.
async fn connection(
    conn: http1::Connection<TokioIo<TcpStream>, TowerToHyperService<Router>>,
    _permit: OwnedSemaphorePermit,
    mut draining: watch::Receiver<bool>,
) {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        // Errors (a header read timeout, a client gone) only end the connection.
        _ = conn.as_mut() => return,
        _ = draining.wait_for(|d| *d) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

impl SimServer {
    /// Builds a cluster from `config` and serves it; returns once both
    /// servers accept connections.
    pub async fn start(config: ClusterConfig, ports: Ports) -> Result<SimServer, SimError> {
        config.validate().map_err(SimError::Config)?;
        Self::serve_cluster(Cluster::new(config), ports).await
    }

    /// Serves an existing cluster (its [`Limits`] must be valid).
    pub async fn serve_cluster(cluster: Cluster, ports: Ports) -> Result<SimServer, SimError> {
        cluster.config().limits.validate().map_err(SimError::Config)?;
        let kube = bind(ports.kube)?;
        let civo = bind(ports.civo)?;
        let kube_addr = kube.local_addr().map_err(|source| SimError::Bind { port: ports.kube, source })?;
        let civo_addr = civo.local_addr().map_err(|source| SimError::Bind { port: ports.civo, source })?;
        let (stop, rx) = watch::channel(false);
        let kube_app = crate::kube_api::router(cluster.clone());
        let limits = &cluster.config().limits;
        let mut tasks = vec![
            tokio::spawn(serve(kube, kube_app, limits.clone(), rx.clone())),
            tokio::spawn(serve(civo, crate::civo::router(cluster.clone()), limits.clone(), rx.clone())),
        ];
        let every = cluster.config().lease_renew_interval;
        if !every.is_zero() {
            let c = cluster.clone();
            let mut rx = rx;
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let c = c.clone();
                            // Thousands of writes: keep them off the async workers.
                            let _ = tokio::task::spawn_blocking(move || c.renew_leases()).await;
                        }
                        r = rx.changed() => if r.is_err() || *rx.borrow() { break },
                    }
                }
            }));
        }
        Ok(SimServer { cluster, kube_addr, civo_addr, stop, tasks })
    }

    /// The cluster, for scenario control.
    #[must_use]
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// `http://127.0.0.1:PORT` of the Kubernetes API.
    #[must_use]
    pub fn kube_url(&self) -> String {
        format!("http://{}", self.kube_addr)
    }

    /// `http://127.0.0.1:PORT` of the Civo API.
    #[must_use]
    pub fn civo_url(&self) -> String {
        format!("http://{}", self.civo_addr)
    }

    /// A kubeconfig document pointing at the Kubernetes API.
    #[must_use]
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster-sim\n  cluster:\n    server: {}\ncontexts:\n- name: cluster-sim\n  context:\n    cluster: cluster-sim\n    user: cluster-sim\n    namespace: default\ncurrent-context: cluster-sim\nusers:\n- name: cluster-sim\n  user: {{}}\n",
            self.kube_url()
        )
    }

    /// Writes [`SimServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, self.kubeconfig())
            .map_err(|source| SimError::Kubeconfig { path: path.display().to_string(), source })
    }

    /// Stops the servers and waits for them: no connection is accepted any
    /// more, idle connections close, requests in flight complete (open
    /// watches end), and connections still open after
    /// [`Limits::header_read_timeout`] are cut.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // Long-lived watch responses would hold graceful shutdown open.
        self.cluster.close_watches();
        // Reboots, replacements and scenario faults still pending stop here.
        let mut pending = std::mem::take(&mut *self.cluster.inner.tasks.lock());
        pending.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
