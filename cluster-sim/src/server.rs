//! Starting the two HTTP servers on loopback.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterConfig};

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
    Config(String),
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

async fn bind(port: u16) -> Result<TcpListener, SimError> {
    TcpListener::bind(("127.0.0.1", port)).await.map_err(|source| SimError::Bind { port, source })
}

fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    })
}

impl SimServer {
    /// Builds a cluster from `config` and serves it; returns once both
    /// servers accept connections.
    pub async fn start(config: ClusterConfig, ports: Ports) -> Result<SimServer, SimError> {
        config.validate().map_err(SimError::Config)?;
        Self::serve_cluster(Cluster::new(config), ports).await
    }

    /// Serves an existing cluster (its [`Limits`](crate::Limits) must be valid).
    pub async fn serve_cluster(cluster: Cluster, ports: Ports) -> Result<SimServer, SimError> {
        cluster.config().limits.validate().map_err(SimError::Config)?;
        let kube = bind(ports.kube).await?;
        let civo = bind(ports.civo).await?;
        let kube_addr = kube.local_addr().map_err(|source| SimError::Bind { port: ports.kube, source })?;
        let civo_addr = civo.local_addr().map_err(|source| SimError::Bind { port: ports.civo, source })?;
        let (stop, rx) = watch::channel(false);
        let kube_app = crate::kube_api::router(cluster.clone());
        let mut tasks =
            vec![serve(kube, kube_app, rx.clone()), serve(civo, crate::civo::router(cluster.clone()), rx.clone())];
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

    /// Stops the servers and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // Long-lived watch responses would hold graceful shutdown open.
        self.cluster.inner.store.lock().close_watches();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
