//! `cluster-sim serve`: a simulated Kubernetes and Civo API for kubectl and agents.

use std::path::{Path, PathBuf};
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
        /// Zones (`topology.kubernetes.io/zone`, one per pool in turn: `lon1-a`, ...; 0: no zone label).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=26))]
        zones: u32,
        /// A scenario file (TOML); its cluster section overrides the size flags.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Write a kubeconfig for the simulated cluster here.
        #[arg(long = "kubeconfig-out")]
        kubeconfig_out: Option<PathBuf>,
        /// The Civo API key the simulated Civo API accepts. Visible to every
        /// user of the machine (`ps`, /proc): prefer --civo-api-key-file or
        /// the CLUSTER_SIM_CIVO_API_KEY environment variable. Without any of
        /// the three the key is "sim-civo-key".
        #[arg(long = "civo-key", value_name = "KEY", conflicts_with = "civo_api_key_file")]
        civo_key: Option<String>,
        /// A file holding the Civo API key (surrounding whitespace is ignored).
        #[arg(long = "civo-api-key-file", value_name = "PATH")]
        civo_api_key_file: Option<PathBuf>,
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

/// The environment variable read for the Civo API key when no flag gives it.
const CIVO_KEY_ENV: &str = "CLUSTER_SIM_CIVO_API_KEY";

/// The key used when neither a flag nor the environment gives one.
const DEFAULT_CIVO_KEY: &str = "sim-civo-key";

/// The Civo API key: from `--civo-key`, else `--civo-api-key-file`, else the
/// environment (`env`: the value of [`CIVO_KEY_ENV`], empty counts as unset),
/// else [`DEFAULT_CIVO_KEY`]. Errors never include the key.
fn resolve_civo_key(flag: Option<String>, file: Option<&Path>, env: Option<String>) -> Result<String, String> {
    if let Some(key) = flag {
        return Ok(key);
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the Civo API key from {}: {e}", path.display()))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(format!("the Civo API key file {} is empty", path.display()));
        }
        return Ok(key.to_owned());
    }
    Ok(env.filter(|k| !k.is_empty()).unwrap_or_else(|| DEFAULT_CIVO_KEY.to_owned()))
}

async fn serve(cmd: Command) -> Result<(), String> {
    let Command::Serve {
        nodes,
        gpu_nodes,
        pools,
        zones,
        scenario,
        kubeconfig_out,
        civo_key: civo_key_flag,
        civo_api_key_file,
        kube_port,
        civo_port,
    } = cmd;
    let env_key = match std::env::var(CIVO_KEY_ENV) {
        Ok(k) => Some(k),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{CIVO_KEY_ENV} is not valid UTF-8")),
    };
    let civo_key = resolve_civo_key(civo_key_flag, civo_api_key_file.as_deref(), env_key)?;
    let scenario = match scenario {
        Some(path) => Some(Scenario::load(&path).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut config = ClusterConfig { nodes, gpu_nodes, pools, zones, civo_key, ..ClusterConfig::default() };
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
    // Logs on stderr (stdout carries the URLs): RUST_LOG, default warnings;
    // RUST_LOG=tower_http=debug logs every request with its status and time.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_civo_key_comes_from_the_flag_then_the_file_then_the_environment() {
        let dir = std::env::temp_dir().join(format!("cluster-sim-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "  from-file\n").unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let env = || Some("from-env".to_owned());
        assert_eq!(resolve_civo_key(Some("from-flag".into()), Some(&file), env()).unwrap(), "from-flag");
        assert_eq!(resolve_civo_key(None, Some(&file), env()).unwrap(), "from-file");
        assert_eq!(resolve_civo_key(None, None, env()).unwrap(), "from-env");
        assert_eq!(resolve_civo_key(None, None, Some(String::new())).unwrap(), DEFAULT_CIVO_KEY);
        assert_eq!(resolve_civo_key(None, None, None).unwrap(), DEFAULT_CIVO_KEY);
        let err = resolve_civo_key(None, Some(&empty), env()).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let err = resolve_civo_key(None, Some(&dir.join("missing")), env()).unwrap_err();
        assert!(err.contains("cannot read the Civo API key from"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_flags_conflict() {
        use clap::Parser;
        let both = ["cluster-sim", "serve", "--civo-key", "k", "--civo-api-key-file", "/k"];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(Cli::try_parse_from(["cluster-sim", "serve", "--civo-api-key-file", "/k"]).is_ok());
    }
}
