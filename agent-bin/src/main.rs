//! `node-agent`: parses the command line, loads the configuration, installs
//! tracing and the metrics recorder, and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_bin::agent::{self, Deps};
use agent_bin::cli::{
    AdminArgs, Cli, Command, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, GlobalArgs, HostCommand, ReplayArgs,
};
use agent_bin::config::{Config, LogFormat, process_env};
use agent_bin::grpc::{AgentState, Role};
use agent_bin::host::config::{DEFAULT_HOST_CONFIG, HostConfig};
use agent_bin::host::run::{self as host_run, EXIT_DETECTOR, HostAgent, PassOptions};
use agent_bin::recorder::AgentRecorder;
use agent_bin::{check, host, http, simulate};
use clap::Parser;
use health_core::HealthManager;
use node_agent_proto::{ClientSettings, RequireBearer, Token};

/// `print!` that ignores a closed stdout (`node-agent ... | head` must not panic).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `println!` that ignores a closed stdout.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // kube-client's HTTP trace layer logs every failed request at ERROR
    // ("failed with error client error (Connect)") without saying which
    // request; the agent reports each such failure itself, with what it
    // means. `RUST_LOG=kube_client=debug` (any directive naming kube_client)
    // brings them back.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube_client"))
        && let Ok(quiet) = "kube_client::client::builder=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The first SIGTERM/SIGINT resolves; a second one exits at once.
async fn shutdown_signal(draining: Arc<AtomicBool>, state: Option<Arc<AgentState>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; the agent stops only when killed");
        return std::future::pending().await;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    draining.store(true, Ordering::SeqCst);
    if let Some(s) = state {
        s.begin_draining().await;
    }
    tracing::info!("signal received: readiness is now false, nothing new starts; a second signal exits at once");
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(EXIT_FAILURE);
    });
}

/// `node-agent replay`: exit 0, 1 (the recording cannot be read or
/// replayed) or 2 (a configuration is invalid).
async fn replay_main(config: Option<PathBuf>, args: ReplayArgs) -> i32 {
    use agent_bin::record::{CompareReport, ReplayReport, replay_blocking, setup_of};
    let load = |p: &std::path::Path| {
        Config::load_policy(p).and_then(|c| setup_of(&c)).map_err(|e| format!("{}: {e}", p.display()))
    };
    let file = args.file.clone();
    if let Some(pair) = args.compare.clone() {
        let (a, b) = match (load(&pair[0]), load(&pair[1])) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("node-agent: invalid configuration: {e}");
                return EXIT_CONFIG;
            }
        };
        let run = tokio::task::spawn_blocking(move || {
            Ok::<_, health_core::tape::TapeError>((replay_blocking(&file, Some(a))?, replay_blocking(&file, Some(b))?))
        })
        .await;
        let (a, b) = (pair[0].display().to_string(), pair[1].display().to_string());
        return report(&args, run, |(ra, rb)| CompareReport::new(a, b, &ra, &rb), CompareReport::render);
    }
    let setup = match config.as_deref().map(load).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("node-agent: invalid configuration: {e}");
            return EXIT_CONFIG;
        }
    };
    let policy = config.map_or_else(|| "recorded".to_owned(), |p| p.display().to_string());
    let run = tokio::task::spawn_blocking(move || replay_blocking(&file, setup)).await;
    report(&args, run, |r| ReplayReport::new(policy, r), ReplayReport::render)
}

/// Prints a replay's report (JSON with `--json`), or why it failed.
fn report<T, R: serde::Serialize>(
    args: &ReplayArgs,
    run: Result<Result<T, health_core::tape::TapeError>, tokio::task::JoinError>,
    make: impl FnOnce(T) -> R,
    render: fn(&R) -> String,
) -> i32 {
    match run {
        Ok(Ok(t)) => {
            let r = make(t);
            if args.json {
                print_json(&r);
            } else {
                out!("{}", render(&r));
            }
            EXIT_OK
        }
        Ok(Err(e)) => {
            eprintln!("node-agent: {}: {e}", args.file.display());
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("node-agent: the replay failed: {e}");
            EXIT_FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => EXIT_OK,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return exit(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node-agent: cannot start the runtime: {e}");
            return exit(EXIT_FAILURE);
        }
    };
    exit(runtime.block_on(real_main(cli)))
}

async fn real_main(cli: Cli) -> i32 {
    let command = cli.command.unwrap_or(Command::Run { once: false, record: None });
    if let Command::Version = command {
        outln!("node-agent {} (commit {})", env!("CARGO_PKG_VERSION"), agent_bin::grpc::COMMIT);
        return EXIT_OK;
    }
    let recorder = AgentRecorder::new();
    if recorder.install().is_err() {
        eprintln!("node-agent: a metrics recorder is already installed");
        return EXIT_FAILURE;
    }
    if let Command::Host(h) = command {
        return host_main(cli.global, h, recorder).await;
    }
    if let Command::Replay(args) = command {
        init_tracing(cli.global.log_format.unwrap_or_default(), "warn");
        return replay_main(cli.global.config, args).await;
    }
    if let Command::Simulate(args) = &command {
        let scenario = match &args.scenario {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => (p.display().to_string(), text),
                Err(e) => {
                    eprintln!("node-agent: --scenario {}: {e}", p.display());
                    return EXIT_CONFIG;
                }
            },
            None => ("built-in scenario".to_owned(), simulate::DEFAULT_SCENARIO.to_owned()),
        };
        init_tracing(
            cli.global.log_format.unwrap_or_default(),
            if args.json { "error" } else { "error,agent_bin=off" },
        );
        let opts = simulate::SimulateOptions {
            scenario,
            speed: args.speed,
            duration: args.duration,
            live: !args.json,
            metrics_port: args.metrics_port,
            record: args.record.clone(),
        };
        return match simulate::simulate(opts, recorder).await {
            Ok(summary) => {
                if args.json {
                    print_json(&summary);
                } else {
                    outln!("\n{}", simulate::table(&summary));
                }
                EXIT_OK
            }
            Err(e @ simulate::SimulateError::Scenario(_)) => {
                eprintln!("node-agent: {e}");
                EXIT_CONFIG
            }
            Err(e) => {
                eprintln!("node-agent: simulation failed: {e}");
                EXIT_FAILURE
            }
        };
    }

    let config = match Config::load(cli.global.config.as_deref(), &process_env(), &cli.global.overrides()) {
        Ok(c) => c,
        // status, pause and resume only talk to the admin API: with --admin
        // they work where the agent's own settings are not all there (a shell
        // on the VM without the Civo key, say).
        Err(_) if admin_flag_given(&command) => Config::default(),
        Err(e) => {
            eprintln!("node-agent: invalid configuration: {e}");
            if matches!(command, Command::Status { .. } | Command::Pause { .. } | Command::Resume { .. }) {
                eprintln!("node-agent: (status, pause and resume also work without it: pass --admin HOST:PORT)");
            }
            return EXIT_CONFIG;
        }
    };
    init_tracing(config.agent.log_format, "info,kube_client=off");
    match command {
        Command::ValidateConfig => {
            // The files the agent reads at start-up must be readable now.
            let tokens = [
                ("admin.token_file", config.admin.token_file.as_ref()),
                ("heartbeat.token_file", config.heartbeat.token_file.as_ref()),
                ("executor.token_file", config.executor.token_file.as_ref()),
            ];
            for (field, path) in tokens {
                if let Some(p) = path
                    && let Err(e) = Token::from_file(p)
                {
                    eprintln!("node-agent: invalid configuration: {field}: {e}");
                    return EXIT_CONFIG;
                }
            }
            for (field, path) in [
                ("heartbeat.ca_file", config.heartbeat.ca_file.as_ref()),
                ("executor.ca_file", config.executor.ca_file.as_ref()),
            ] {
                if let Some(p) = path
                    && let Err(e) = std::fs::read(p)
                {
                    eprintln!("node-agent: invalid configuration: {field}: {}: {e}", p.display());
                    return EXIT_CONFIG;
                }
            }
            outln!("configuration is valid");
            outln!("{config:#?}");
            EXIT_OK
        }
        Command::Check { json } => {
            let kc = match agent::kube_config(&config).await {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("node-agent: {e}");
                    return EXIT_FAILURE;
                }
            };
            match check::check(&config, kc).await {
                Ok(rows) => {
                    if json {
                        print_json(&rows);
                    } else {
                        out!("{}", check::table(&rows));
                    }
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("node-agent: {e}");
                    EXIT_FAILURE
                }
            }
        }
        Command::Run { once, record } => {
            let mut config = config;
            if record.is_some() {
                config.record.path = record;
            }
            let health = Arc::new(HealthManager::new());
            let draining = Arc::new(AtomicBool::new(false));
            let ip = config.agent.metrics_address.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let addr = SocketAddr::new(ip, config.agent.metrics_port);
            let state =
                http::HttpState { recorder: recorder.clone(), health: health.clone(), draining: draining.clone() };
            let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
            let server = match http::serve(addr, state, async move {
                let _ = http_stopped.await;
            })
            .await
            {
                Ok((bound, handle)) => {
                    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
                    handle
                }
                Err(e) => {
                    eprintln!("node-agent: cannot listen on {addr} (CIVO_NODE_AGENT_METRICS_PORT): {e}");
                    return EXIT_FAILURE;
                }
            };
            let state = AgentState::new(&config, health.clone(), draining.clone());
            let (stop_grpc, grpc_stopped) = tokio::sync::watch::channel(false);
            let mut grpc_tasks = Vec::new();
            if config.admin.enabled && !once {
                let token = match config.admin.token_file.as_deref().map(Token::from_file).transpose() {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("node-agent: invalid configuration: admin.token_file: {e}");
                        return EXIT_CONFIG;
                    }
                };
                let addr: SocketAddr = match config.admin.listen.parse() {
                    Ok(a) => a,
                    Err(_) => {
                        eprintln!("node-agent: invalid configuration: admin.listen {:?}", config.admin.listen);
                        return EXIT_CONFIG;
                    }
                };
                let mut stopped = grpc_stopped.clone();
                let stop = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                match agent_bin::grpc::serve(addr, state.clone(), RequireBearer::new(token), stop).await {
                    Ok((bound, task)) => {
                        tracing::info!(address = %bound, "serving the admin API (nodeagent.v1.AgentAdmin) and grpc.health.v1");
                        grpc_tasks.push(task);
                    }
                    Err(e) => {
                        eprintln!("node-agent: cannot listen on {addr} (admin.listen): {e}");
                        return EXIT_FAILURE;
                    }
                }
            }
            if !config.heartbeat.endpoint.is_empty() && !once {
                let h = &config.heartbeat;
                let mut client = ClientSettings::new(h.endpoint.clone());
                client.timeout = h.timeout;
                client.ca_file.clone_from(&h.ca_file);
                match h.token_file.as_deref().map(Token::from_file).transpose() {
                    Ok(t) => client.token = t,
                    Err(e) => {
                        eprintln!("node-agent: invalid configuration: heartbeat.token_file: {e}");
                        return EXIT_CONFIG;
                    }
                }
                if let Err(e) = client.connect() {
                    eprintln!("node-agent: invalid configuration: heartbeat.endpoint: {e}");
                    return EXIT_CONFIG;
                }
                let mut stopped = grpc_stopped.clone();
                let stop = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                tracing::info!(endpoint = %h.endpoint, interval = ?h.interval, "sending heartbeats");
                grpc_tasks.push(tokio::spawn(agent_bin::grpc::heartbeat::run(state.clone(), client, h.interval, stop)));
            }
            let shutdown = shutdown_signal(draining, Some(state.clone()));
            tokio::pin!(shutdown);
            let leadership = if config.ha.enabled {
                let client = match agent::kube_config(&config).await.and_then(|mut kc| {
                    kc.read_timeout = Some(config.kube.call_timeout);
                    kube::Client::try_from(kc).map_err(|e| agent::RunError::Kube(e.to_string()))
                }) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("node-agent: {e}");
                        return EXIT_FAILURE;
                    }
                };
                if once {
                    match agent_bin::ha::try_lead(client, &config).await {
                        Ok(Some(l)) => Some(l),
                        Ok(None) => {
                            eprintln!("node-agent: another replica leads (ha.enabled): --once runs no pass beside it");
                            return EXIT_FAILURE;
                        }
                        Err(e) => {
                            eprintln!("node-agent: {e}");
                            return EXIT_FAILURE;
                        }
                    }
                } else {
                    tokio::select! {
                    l = agent_bin::ha::lead(client, &config, &health) => Some(l),
                        () = &mut shutdown => {
                            let _ = stop_http.send(());
                            let _ = stop_grpc.send(true);
                            let _ = server.await;
                            stop_grpc_tasks(grpc_tasks).await;
                            tracing::info!("node-agent stopped while standby");
                            return EXIT_OK;
                        }
                    }
                }
            } else {
                None
            };
            if leadership.is_some() {
                state.set_role(Role::Leader).await;
            }
            let deps = Deps { recorder, health, once, state: Some(state.clone()), ..Deps::default() };
            // The fence is watched from a task of its own (a busy pass cannot delay it).
            let watchdog = leadership.map(agent_bin::ha::Leadership::watchdog);
            let result = agent::run(config, deps, &mut shutdown).await;
            if let Some(w) = watchdog {
                w.abort();
            }
            let _ = stop_http.send(());
            let _ = stop_grpc.send(true);
            let _ = server.await;
            stop_grpc_tasks(grpc_tasks).await;
            match result {
                Ok(summary) => {
                    tracing::info!(passes = summary.passes, nodes = summary.nodes, "node-agent stopped");
                    EXIT_OK
                }
                Err(e) => {
                    tracing::error!(error = %e, "node-agent failed");
                    eprintln!("node-agent: {e}");
                    EXIT_FAILURE
                }
            }
        }
        Command::Status { node, phase, json, admin } => {
            let (addr, token) = admin_target(&config, &admin);
            match agent_bin::grpc::client::status(&addr, token.as_deref(), node.as_deref(), phase.as_deref(), json)
                .await
            {
                Ok(out) => {
                    out!("{out}");
                    if json {
                        outln!();
                    }
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("node-agent status: {e}");
                    EXIT_FAILURE
                }
            }
        }
        Command::Pause { reason, admin } => pause_cmd(&config, &admin, Some(&reason)).await,
        Command::Resume { admin } => pause_cmd(&config, &admin, None).await,
        Command::Simulate(_) | Command::Host(_) | Command::Replay(_) | Command::Version => EXIT_OK,
    }
}

/// Whether `command` is status, pause or resume with `--admin` given.
fn admin_flag_given(command: &Command) -> bool {
    match command {
        Command::Status { admin, .. } | Command::Pause { admin, .. } | Command::Resume { admin } => {
            admin.admin.is_some()
        }
        _ => false,
    }
}

/// Waits (at most 5 s) for the admin server and the heartbeat to stop,
/// then aborts them: a client's open grpc.health Watch stream must not
/// hold the exit.
async fn stop_grpc_tasks(tasks: Vec<tokio::task::JoinHandle<()>>) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    for mut t in tasks {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
        }
    }
}

/// The admin API address and token file: the flags, else the configuration.
fn admin_target(config: &Config, args: &AdminArgs) -> (String, Option<std::path::PathBuf>) {
    // An agent listening on every address (0.0.0.0, [::]) is reached on loopback.
    let listen = match config.admin.listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let lo =
                if a.is_ipv4() { std::net::IpAddr::from([127, 0, 0, 1]) } else { std::net::Ipv6Addr::LOCALHOST.into() };
            SocketAddr::new(lo, a.port()).to_string()
        }
        _ => config.admin.listen.clone(),
    };
    let addr = args.admin.clone().unwrap_or(listen);
    (addr, args.token_file.clone().or_else(|| config.admin.token_file.clone()))
}

async fn pause_cmd(config: &Config, args: &AdminArgs, reason: Option<&str>) -> i32 {
    let (addr, token) = admin_target(config, args);
    match agent_bin::grpc::client::set_pause(&addr, token.as_deref(), reason).await {
        Ok(out) => {
            out!("{out}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("node-agent: {e}");
            EXIT_FAILURE
        }
    }
}

/// Prints `v` as pretty JSON (an output that cannot be written as JSON is
/// said on stderr, not printed empty).
fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => outln!("{text}"),
        Err(e) => eprintln!("node-agent: cannot write the output as JSON: {e}"),
    }
}

async fn host_main(global: GlobalArgs, command: HostCommand, recorder: AgentRecorder) -> i32 {
    if global.kubeconfig.is_some() || global.monitor_only || global.active {
        eprintln!(
            "node-agent host: --kubeconfig, --monitor-only and --active are cluster-mode flags; host mode is set up \
             by its configuration file (--config, default {DEFAULT_HOST_CONFIG})"
        );
        return EXIT_USAGE;
    }
    let path = global.config.clone().or_else(|| {
        let d = std::path::PathBuf::from(DEFAULT_HOST_CONFIG);
        d.is_file().then_some(d)
    });
    let config = match HostConfig::load(path.as_deref(), &process_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("node-agent host: invalid configuration: {e}");
            return EXIT_CONFIG;
        }
    };
    // A report's table is the output of status and simulate: their logs say only what went wrong.
    let level = if matches!(command, HostCommand::Run { .. }) { "info" } else { "warn" };
    init_tracing(global.log_format.unwrap_or(config.server.log_format), level);
    host_run::describe_metrics();
    match command {
        HostCommand::ValidateConfig => {
            outln!("configuration is valid");
            match toml::to_string_pretty(&config) {
                Ok(text) => out!("{text}"),
                Err(_) => outln!("{config:#?}"),
            }
            EXIT_OK
        }
        HostCommand::Simulate { json } => match host::simulate(&config).await {
            Ok(report) => {
                if json {
                    print_json(&report);
                } else {
                    out!("{}", host::simulate_table(&report));
                }
                if report.failed() { EXIT_DETECTOR } else { EXIT_OK }
            }
            Err(e) => {
                eprintln!("node-agent host: {e}");
                EXIT_FAILURE
            }
        },
        HostCommand::Status { skip_health, skip_lock, json } => {
            let agent = match HostAgent::new(config, Arc::new(HealthManager::new()), String::new()).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("node-agent host: {e}");
                    return EXIT_FAILURE;
                }
            };
            let opts = PassOptions { status: true, dry_run: true, skip_health, skip_lock };
            let report = agent.pass(opts).await;
            if json {
                print_json(&report);
            } else {
                out!("{}", host::status_table(&report));
            }
            report.outcome.exit_code()
        }
        HostCommand::Run { once, dry_run } => {
            let health = Arc::new(HealthManager::new());
            let draining = Arc::new(AtomicBool::new(false));
            let mut endpoint = String::new();
            let mut server = None;
            let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
            if config.server.metrics_port != 0 && !once {
                let ip = config.server.metrics_address.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
                let addr = SocketAddr::new(ip, config.server.metrics_port);
                let state =
                    http::HttpState { recorder: recorder.clone(), health: health.clone(), draining: draining.clone() };
                match http::serve(addr, state, async move {
                    let _ = http_stopped.await;
                })
                .await
                {
                    Ok((bound, handle)) => {
                        tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");
                        endpoint = format!("http://{bound}/metrics");
                        server = Some(handle);
                    }
                    Err(e) => {
                        eprintln!("node-agent host: cannot listen on {addr} (server.metrics_port): {e}");
                        return EXIT_FAILURE;
                    }
                }
            }
            let agent = match HostAgent::new(config, health, endpoint).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "host agent cannot start");
                    eprintln!("node-agent host: {e}");
                    return EXIT_FAILURE;
                }
            };
            tracing::info!(event = "started", node = %agent.node(), once, dry_run, "host agent started");
            let outcome = host_run::run(&agent, once, dry_run, shutdown_signal(draining, None)).await;
            let _ = stop_http.send(());
            if let Some(s) = server {
                let _ = s.await;
            }
            if once { outcome.exit_code() } else { EXIT_OK }
        }
    }
}
