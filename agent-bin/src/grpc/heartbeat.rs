//! Heartbeats to a fleet control plane (`nodeagent.v1.HealthReporter`):
//! one every `heartbeat.interval` (±10% jitter), doubled per failure up to
//! eight times the interval (at most 5 minutes) while the endpoint does not
//! answer. The component `grpc_reporter` turns Degraded on the first
//! failure and Healthy again on the next success.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use health_core::ComponentStatus;
use node_agent_proto::ClientSettings;
use node_agent_proto::v1::health_reporter_client::HealthReporterClient;

use super::{AgentState, REPORTER_COMPONENT};

/// The wait after `failures` consecutive failures.
#[must_use]
pub fn next_wait(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(3);
    let cap = Duration::from_secs(300).max(interval);
    let base = interval.saturating_mul(factor).min(cap);
    base.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// Sends heartbeats until `shutdown`. The first goes out at once.
pub async fn run(
    state: Arc<AgentState>,
    client: ClientSettings,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let endpoint = client.endpoint.clone();
    let health = Arc::clone(&state.health);
    health.register_optional(REPORTER_COMPONENT);
    let (channel, bearer) = match client.connect() {
        Ok(c) => c,
        Err(e) => {
            // Validated at start-up; kept as a component error all the same.
            health.update(REPORTER_COMPONENT, ComponentStatus::Unhealthy, e.to_string(), BTreeMap::new());
            return;
        }
    };
    let mut rpc = HealthReporterClient::with_interceptor(channel, bearer);
    let mut failures = 0u32;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let report = state.snapshot().await;
        // One snapshot: what is logged is what is sent.
        tracing::debug!(report = ?report, "heartbeat");
        let sequence = report.sequence;
        let mut req = tonic::Request::new(report);
        req.set_timeout(client.timeout);
        let sent = tokio::select! {
            r = rpc.report_health(req) => r,
            () = &mut shutdown => return,
        };
        let mut meta =
            BTreeMap::from([("endpoint".to_owned(), endpoint.clone()), ("sequence".to_owned(), sequence.to_string())]);
        match sent {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(endpoint = %endpoint, after_failures = failures, "heartbeats reach the endpoint again");
                }
                failures = 0;
                health.update(REPORTER_COMPONENT, ComponentStatus::Healthy, "heartbeat sent", meta);
            }
            Err(status) => {
                failures = failures.saturating_add(1);
                let wait = next_wait(interval, failures);
                if failures == 1 {
                    tracing::warn!(
                        endpoint = %endpoint,
                        code = ?status.code(),
                        error = %status.message(),
                        retry_in = ?wait,
                        "heartbeat failed; backing off while the endpoint does not answer"
                    );
                }
                meta.insert("failures".to_owned(), failures.to_string());
                health.update(
                    REPORTER_COMPONENT,
                    ComponentStatus::Degraded,
                    format!("heartbeat failed ({:?}: {}); retry in {wait:?}", status.code(), status.message()),
                    meta,
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = &mut shutdown => return,
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(next_wait(interval, 0)) => {}
            () = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_per_failure_up_to_eight_times_with_jitter() {
        let i = Duration::from_secs(30);
        for (failures, base) in [(0, 30), (1, 60), (2, 120), (3, 240), (4, 240), (50, 240)] {
            let w = next_wait(i, failures).as_secs_f64();
            assert!(w >= f64::from(base) * 0.9 && w <= f64::from(base) * 1.1, "{failures}: {w}");
        }
        let w = next_wait(Duration::from_secs(120), 3).as_secs_f64();
        assert!((270.0..=330.0).contains(&w), "capped at 5m: {w}");
    }
}
