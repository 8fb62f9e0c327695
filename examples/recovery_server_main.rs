//! `cargo run -p examples --example recovery_server -- [--listen ADDR] [--token-file FILE] [--command PROGRAM]`
//!
//! A reference remote executor for node-agent (`[executor] kind = "grpc"`).
//! Each action runs `PROGRAM <action> <node>` (exit 0: done); without
//! `--command` it only prints what it would do. Keys are kept in memory:
//! a restarted server forgets them (a real one keeps them for as long as
//! the agent may retry, minutes).

use std::process::ExitCode;
use std::sync::Arc;

use examples::recovery_server::ReferenceServer;
use node_agent_proto::{RequireBearer, Token};

fn usage(e: &str) -> ExitCode {
    eprintln!(
        "recovery_server: {e}\nusage: recovery_server [--listen 127.0.0.1:9700] [--token-file FILE] [--command PROGRAM]"
    );
    ExitCode::from(64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut listen = "127.0.0.1:9700".to_owned();
    let mut token = None;
    let mut command: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let Some(v) = args.next() else { return usage(&format!("{a} needs a value")) };
        match a.as_str() {
            "--listen" => listen = v,
            "--token-file" => match Token::from_file(std::path::Path::new(&v)) {
                Ok(t) => token = Some(t),
                Err(e) => return usage(&e.to_string()),
            },
            "--command" => command = Some(v),
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        return usage(&format!("--listen {listen:?}: expected host:port such as 127.0.0.1:9700"));
    };
    if token.is_none() && !addr.ip().is_loopback() {
        return usage("a non-loopback --listen needs --token-file");
    }
    let server = ReferenceServer::new(Arc::new(move |action, node, repair: &str| {
        // A soft repair is named by itself (`restart-kubelet`, checked: it
        // becomes an argument), every other action by the action.
        let verb = if action == node_agent_proto::v1::Action::Repair {
            health_core::Repair::new(repair).map_err(|e| e.to_string())?.as_str().to_owned()
        } else {
            action.as_str_name().trim_start_matches("ACTION_").to_ascii_lowercase()
        };
        match &command {
            None => {
                println!("would {verb} {node}");
                Ok(format!("dry run: {verb} {node}"))
            }
            Some(cmd) => {
                let out =
                    std::process::Command::new(cmd).arg(&verb).arg(node).output().map_err(|e| format!("{cmd}: {e}"))?;
                if out.status.success() {
                    println!("{verb} {node}: done");
                    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
                } else {
                    Err(format!("{cmd} {verb} {node}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
                }
            }
        }
    }));
    println!("recovery_server listening on {addr}");
    let result = tonic::transport::Server::builder()
        .add_service(server.service(RequireBearer::new(token)))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recovery_server: {e}");
            ExitCode::FAILURE
        }
    }
}
