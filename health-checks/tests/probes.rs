//! HTTP probes against a local server, commands with real scripts, file sentinels.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use health_checks::*;
use health_core::CheckOutcome;

struct Host {
    name: String,
    ip: Option<String>,
}

impl NodeIdentity for Host {
    fn node_name(&self) -> &str {
        &self.name
    }
    fn internal_ip(&self) -> Option<&str> {
        self.ip.as_deref()
    }
}

fn host() -> Host {
    Host { name: "node-1".into(), ip: Some("127.0.0.1".into()) }
}

async fn server() -> u16 {
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/down", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "draining") }))
        .route("/hang", get(|| async { std::future::pending::<&str>().await }))
        .route(
            "/auth",
            get(|h: HeaderMap| async move {
                match h.get("authorization").and_then(|v| v.to_str().ok()) {
                    Some("Bearer s3cret-token") => StatusCode::OK,
                    _ => StatusCode::UNAUTHORIZED,
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

fn probe(url: String, token: Option<std::path::PathBuf>) -> HttpProbe {
    let mut c = HttpProbeConfig::new("Sidecar", url);
    c.timeout = Duration::from_millis(500);
    c.connect_timeout = Duration::from_millis(500);
    c.bearer_token_file = token;
    HttpProbe::new(c).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_outcomes() {
    let port = server().await;
    let url = |p: &str| format!("http://{{internal_ip}}:{port}/{p}");
    assert_eq!(probe(url("ok"), None).probe(&host()).await.unwrap(), CheckOutcome::Pass);
    let down = probe(url("down"), None).probe(&host()).await.unwrap();
    assert_eq!(down.reason(), Some("HTTPStatus5xx"));
    assert!(matches!(&down, CheckOutcome::Fail { detail: Some(d), .. } if d.contains("503")), "{down:?}");
    let hang = probe(url("hang"), None).probe(&host()).await.unwrap();
    assert_eq!(hang.reason(), Some("Timeout"));
    // Refused: a port nobody listens on.
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let refused = probe(format!("http://127.0.0.1:{free}/healthz"), None).probe(&host()).await.unwrap();
    assert_eq!(refused.reason(), Some("Unreachable"));
    // A node without the address the template needs: the checker cannot tell.
    let e = probe(url("ok"), None).probe(&Host { name: "n".into(), ip: None }).await.unwrap_err();
    assert_eq!(e.to_string(), "node n has no InternalIP address");
    // Bearer token from a file; it never shows in Debug or errors.
    let dir = std::env::temp_dir().join(format!("health-checks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let p = probe(url("auth"), Some(token.clone()));
    assert_eq!(p.probe(&host()).await.unwrap(), CheckOutcome::Pass);
    assert!(!format!("{p:?}").contains("s3cret"));
    assert_eq!(probe(url("auth"), None).probe(&host()).await.unwrap().reason(), Some("HTTPStatus4xx"));
    let missing = probe(url("auth"), Some(dir.join("nope"))).probe(&host()).await.unwrap_err();
    assert!(missing.to_string().contains("cannot read the bearer token file"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn http_templates_are_validated() {
    assert_eq!(validate_template("http://{internal_ip}:8080/healthz"), Ok(()));
    let e = validate_template("http://{ip}:8080/").unwrap_err();
    assert!(matches!(&e, TemplateError::UnknownPlaceholder { placeholder, .. } if placeholder == "{ip}"));
    let e = e.to_string();
    assert!(e.contains("unknown placeholder {ip}") && e.contains("{internal_ip}"), "{e}");
    assert_eq!(validate_template("https://{name}/healthz"), Ok(()));
    let e = validate_template("ftp://x/").unwrap_err();
    assert!(matches!(e, TemplateError::NotHttp { .. }) && e.to_string().contains("must start with http://"));
    assert!(matches!(validate_template("http://{name"), Err(TemplateError::Unclosed { .. })));
}

fn sh(name: &str, script: &str, timeout: Duration) -> CommandChecker {
    let mut c = CommandConfig::new(name, "/bin/sh", vec!["-c".into(), script.into()]);
    c.timeout = timeout;
    c.max_output = 64;
    CommandChecker::new(c).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_outcomes() {
    let t = Duration::from_secs(20);
    assert_eq!(
        sh("ok", "test \"$NODE_NAME\" = node-1 && test \"$NODE_INTERNAL_IP\" = 127.0.0.1", t)
            .run(&host())
            .await
            .unwrap(),
        CheckOutcome::Pass
    );
    let fail = sh("fail", "echo kubelet is dead; exit 1", t).run(&host()).await.unwrap();
    assert_eq!(fail, CheckOutcome::fail_with("CommandFailed", "kubelet is dead"));
    let seven = sh("seven", "echo odd >&2; exit 7", t).run(&host()).await.unwrap_err();
    assert_eq!(seven.to_string(), "/bin/sh exited with 7: odd");
    // A program that hangs is killed at its timeout.
    let started = std::time::Instant::now();
    let hang = sh("hang", "sleep 60", Duration::from_millis(300)).run(&host()).await.unwrap_err();
    assert!(hang.to_string().contains("did not finish within 300ms and was killed"), "{hang}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Huge output is drained (the program does not block) and truncated.
    let huge = sh("huge", "head -c 5000000 /dev/zero | tr '\\0' x; exit 1", t).run(&host()).await.unwrap();
    match huge {
        CheckOutcome::Fail { detail: Some(d), .. } => {
            assert!(d.starts_with(&"x".repeat(64)), "{}", &d[..80.min(d.len())]);
            assert!(d.ends_with("[... 4999936 more bytes]"), "{d}");
        }
        other => panic!("{other:?}"),
    }
    let missing = CommandChecker::new(CommandConfig::new("m", "/no/such/program", vec![]))
        .unwrap()
        .run(&host())
        .await
        .unwrap_err();
    assert!(missing.to_string().starts_with("cannot start /no/such/program"));
}

#[tokio::test]
async fn file_sentinel() {
    let path = std::env::temp_dir().join(format!("reboot-required-{}", std::process::id()));
    let s = FileSentinel::new("RebootRequired", &path).with_reason("RebootRequired");
    assert_eq!(s.look().await.unwrap(), CheckOutcome::Pass);
    std::fs::write(&path, "").unwrap();
    assert_eq!(s.look().await.unwrap().reason(), Some("RebootRequired"));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(s.look().await.unwrap(), CheckOutcome::Pass);
    let usual: Arc<dyn health_core::HealthChecker<()>> = Arc::new(FileSentinel::reboot_required());
    assert_eq!(usual.name(), "RebootRequired");
}
