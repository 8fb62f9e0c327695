//! The agent's one HTTP port: `/metrics`, `/healthz`, `/readyz` and
//! `/components/{name}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use health_core::HealthManager;

use crate::recorder::AgentRecorder;

/// What the endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// The metrics.
    pub recorder: AgentRecorder,
    /// Component health.
    pub health: Arc<HealthManager>,
    /// Set on SIGTERM: readiness fails from then on.
    pub draining: Arc<AtomicBool>,
}

/// The router (exposed for tests).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/components/{name}", get(component))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.recorder.render()).into_response()
}

fn json_status(ok: bool, body: serde_json::Value) -> Response {
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn healthz(State(s): State<HttpState>) -> Response {
    let report = s.health.check_liveness();
    json_status(report.ok, serde_json::to_value(&report).unwrap_or_default())
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let mut report = s.health.check_readiness();
    if s.draining.load(Ordering::SeqCst) {
        report.ok = false;
        report.error = Some("shutting down: no new work starts".into());
    }
    json_status(report.ok, serde_json::to_value(&report).unwrap_or_default())
}

async fn component(State(s): State<HttpState>, Path(name): Path<String>) -> Response {
    match s.health.status(&name) {
        Some(state) => {
            let ok = !matches!(state.status, health_core::ComponentStatus::Unhealthy);
            let mut body = serde_json::to_value(&state).unwrap_or_default();
            if let Some(o) = body.as_object_mut() {
                o.insert("name".into(), serde_json::Value::String(name));
            }
            json_status(ok, body)
        }
        None => {
            let known: Vec<String> = s.health.report().into_keys().collect();
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"error": format!("no component {name:?}"), "components": known})),
            )
                .into_response()
        }
    }
}

/// Binds `addr` and serves until `shutdown` resolves; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(state);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the HTTP server failed");
        }
    });
    Ok((local, handle))
}
