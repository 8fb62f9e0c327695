//! `cluster-sim serve`: a simulated Kubernetes and Civo API for kubectl and agents.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cluster_sim::{ClusterConfig, Ports, Scenario, SimServer};

#[derive(Parser)]
#[command(name = "cluster-sim", version, about = "A simulated Kubernetes API and Civo API on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a simulated cluster until SIGINT or SIGTERM.
    Serve {
        /// Standard nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// GPU nodes.
        #[arg(long = "gpu-nodes", default_value_t = 0)]
        gpu_nodes: u32,
        /// Pools the standard nodes are spread over.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        pools: u32,
        /// A scenario file (TOML); its cluster section overrides the size flags.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Write a kubeconfig for the simulated cluster here.
        #[arg(long = "kubeconfig-out")]
        kubeconfig_out: Option<PathBuf>,
        /// The Civo API key the simulated Civo API accepts.
        #[arg(long = "civo-key", default_value = "sim-civo-key", hide_default_value = true)]
        civo_key: String,
        /// Kubernetes API port (0: any free port).
        #[arg(long = "kube-port", default_value_t = 0)]
        kube_port: u16,
        /// Civo API port (0: any free port).
        #[arg(long = "civo-port", default_value_t = 0)]
        civo_port: u16,
    },
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(cmd: Command) -> Result<(), String> {
    let Command::Serve { nodes, gpu_nodes, pools, scenario, kubeconfig_out, civo_key, kube_port, civo_port } = cmd;
    let scenario = match scenario {
        Some(path) => Some(Scenario::load(&path).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut config = ClusterConfig { nodes, gpu_nodes, pools, civo_key, ..ClusterConfig::default() };
    if let Some(s) = &scenario {
        s.apply_config(&mut config);
    }
    let server =
        SimServer::start(config, Ports { kube: kube_port, civo: civo_port }).await.map_err(|e| e.to_string())?;
    if let Some(s) = scenario {
        s.spawn(server.cluster().clone()).map_err(|e| e.to_string())?;
    }
    let kubeconfig = match kubeconfig_out {
        Some(path) => {
            server.write_kubeconfig(&path).map_err(|e| e.to_string())?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let line =
        serde_json::json!({"kube_url": server.kube_url(), "civo_url": server.civo_url(), "kubeconfig": kubeconfig});
    println!("{line}");
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster-sim: {e}");
            ExitCode::from(2)
        }
    }
}
