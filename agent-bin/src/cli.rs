//! The command line (clap) and its exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{CliOverrides, LogFormat};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: a runtime failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code: the configuration is invalid.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code: the command line is malformed (sysexits' EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// node-agent: watches Kubernetes nodes, and reboots or replaces the broken
/// ones through the Civo API, safely.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version, about, long_about = None)]
pub struct Cli {
    /// Options every command shares.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command shares.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// A TOML configuration file (see examples/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A kubeconfig file; empty for the in-cluster configuration
    /// [default: /etc/rancher/k3s/k3s.yaml].
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Record remediation without executing it (the default).
    #[arg(long, global = true, conflicts_with = "active")]
    pub monitor_only: bool,
    /// Execute remediation (reboots, replacements).
    #[arg(long, global = true)]
    pub active: bool,
}

impl GlobalArgs {
    /// The overrides these flags make.
    #[must_use]
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            kubeconfig: self.kubeconfig.clone(),
            monitor_only: if self.active {
                Some(false)
            } else if self.monitor_only {
                Some(true)
            } else {
                None
            },
            log_format: self.log_format,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the nodes and remediate (the default).
    Run {
        /// Run one evaluation pass and exit (0: done, 1: failed).
        #[arg(long)]
        once: bool,
        /// Record what the engine sees and decides to this file (JSON
        /// lines, rotated at `record.max_bytes`), for `node-agent replay`.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    /// Run the real agent against a simulated cluster and Civo API.
    Simulate(SimulateArgs),
    /// Run every checker on every selected node once and print a table.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load and check the configuration, print it (secrets redacted), and exit.
    ValidateConfig,
    /// Replay a recording (`run --record`, `simulate --record`) offline:
    /// every action and hold the engine takes over the recorded
    /// observations, under the recorded policy or the one of `--config`.
    Replay(ReplayArgs),
    /// Ask the running agent what it is doing (its admin API): its mode,
    /// role and pause, and a table of its nodes.
    Status {
        /// Only this node, in detail.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Only nodes in this phase (Healthy, Unhealthy, WaitingReboot, Draining, WaitingReplace, Failed).
        #[arg(long, value_name = "PHASE")]
        phase: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Pause remediation on the running agent (persisted: a restart stays
    /// paused); failing nodes are held with reason Paused.
    Pause {
        /// Why (shown in status, logs and heartbeats).
        #[arg(long)]
        reason: String,
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Resume remediation on the running agent.
    Resume {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Host mode: reboot this Linux host when it needs it, one host of the
    /// fleet at a time, coordinated through etcd.
    #[command(subcommand)]
    Host(HostCommand),
    /// Print the version.
    Version,
}

/// How `status`, `pause` and `resume` reach the agent's admin API
/// (default: `admin.listen` and `admin.token_file` of the configuration).
#[derive(Debug, Args, Clone, Default)]
pub struct AdminArgs {
    /// The admin API, `host:port` or `http(s)://host:port`.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// A file holding the admin API's bearer token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `node-agent host ...` (the configuration: `--config`, default
/// /etc/node-agent/host.toml; TOML, or YAML for .yaml/.yml).
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Watch this host and reboot it when it needs it and the fleet allows.
    Run {
        /// One pass, then exit with its outcome's code (0 done or nothing to
        /// do, 1 failure, 3 health gate, 4 lock busy, 5 kill switch, 7 deferred).
        #[arg(long)]
        once: bool,
        /// Do everything but run the reboot command.
        #[arg(long)]
        dry_run: bool,
    },
    /// A dry-run pass that reports the detectors, the gate, the fleet and the lock.
    Status {
        /// Do not run the health gate.
        #[arg(long)]
        skip_health: bool,
        /// Do not test the lock.
        #[arg(long)]
        skip_lock: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the detectors once, without etcd or the gate (exit 6 if one fails).
    Simulate {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load and check the host configuration, print it, and exit.
    ValidateConfig,
}

/// `node-agent replay`.
#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// The recording (its rotated files `FILE.1`, `FILE.2`, ... are read too).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Replay under two configurations and print where their decisions
    /// differ (node, time, decision).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "config")]
    pub compare: Option<Vec<PathBuf>>,
}

/// `node-agent simulate`.
#[derive(Debug, Args, Clone)]
pub struct SimulateArgs {
    /// A scenario file (TOML); default: the built-in scenario.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Print one JSON document instead of the live log and table.
    #[arg(long)]
    pub json: bool,
    /// Keep /metrics up on this port while the simulation runs.
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// How much faster than real time the policy runs (120: a 10m reboot wait takes 5s).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub speed: u32,
    /// How long the simulation runs.
    #[arg(long, default_value = "50s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Record the simulated run to this file, for `node-agent replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}
