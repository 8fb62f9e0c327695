//! gRPC health probes (`grpc.health.v1.Health/Check`) of node-local
//! daemons: pass on SERVING, fail with the reason otherwise.

use std::time::Duration;

use async_trait::async_trait;
use health_core::{CheckContext, CheckError, CheckOutcome, CheckResult, HealthChecker};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::http::{render, validate_template};
use crate::{ConfigError, NodeIdentity};

/// Settings of a gRPC health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcProbeConfig {
    /// The checker name.
    pub name: String,
    /// Endpoint template, e.g. `http://{internal_ip}:50051` (plaintext HTTP/2).
    pub url: String,
    /// The service asked about (`""`: the server as a whole).
    pub service: String,
    /// Threshold.
    pub threshold: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout of the call.
    pub timeout: Duration,
}

impl GrpcProbeConfig {
    /// A probe of `url` (whole server) with connect 2s, total 5s, threshold 5m.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        GrpcProbeConfig {
            name: name.into(),
            url: url.into(),
            service: String::new(),
            threshold: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A `grpc.health.v1` probe.
#[derive(Debug)]
pub struct GrpcHealthProbe {
    config: GrpcProbeConfig,
}

impl GrpcHealthProbe {
    /// Builds a probe; the template and timeouts are checked.
    pub fn new(config: GrpcProbeConfig) -> Result<Self, ConfigError> {
        let field =
            |f: &'static str, m: String| ConfigError::Field { entry: config.name.clone(), field: f, message: m };
        // http:// only: h2c to a node-local daemon (no TLS settings here).
        validate_template(&config.url).map_err(|e| field("url", e.to_string()))?;
        if !config.url.starts_with("http://") {
            return Err(field(
                "url",
                format!("{:?} must start with http:// (grpc-health probes are plaintext)", config.url),
            ));
        }
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(field("timeout", "timeouts must be positive durations such as \"5s\"".into()));
        }
        Ok(GrpcHealthProbe { config })
    }

    /// Probes one node.
    pub async fn probe(&self, node: &dyn NodeIdentity) -> CheckResult {
        let url = render(&self.config.url, node)?;
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| CheckError::new(format!("{url}: {e}")))?
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.timeout);
        let service = &self.config.service;
        let what = if service.is_empty() { url.clone() } else { format!("{url} service {service:?}") };
        let call = async {
            let channel = endpoint.connect().await.map_err(|e| Err(chain(&e)))?;
            HealthClient::new(channel)
                .check(HealthCheckRequest { service: service.clone() })
                .await
                .map(tonic::Response::into_inner)
                .map_err(Ok)
        };
        match tokio::time::timeout(self.config.timeout, call).await {
            Err(_) => {
                Ok(CheckOutcome::fail_with("Timeout", format!("{what}: no answer within {:?}", self.config.timeout)))
            }
            Ok(Err(Err(e))) => Ok(CheckOutcome::fail_with("Unreachable", format!("{what}: cannot connect: {e}"))),
            Ok(Err(Ok(status))) => match status.code() {
                tonic::Code::NotFound => {
                    Ok(CheckOutcome::fail_with("ServiceUnknown", format!("{what}: the server does not know it")))
                }
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Ok(CheckOutcome::fail_with(
                    "Timeout",
                    format!("{what}: no answer within {:?}", self.config.timeout),
                )),
                tonic::Code::Unavailable => {
                    Ok(CheckOutcome::fail_with("Unreachable", format!("{what}: {}", status.message())))
                }
                code => Err(CheckError::new(format!("{what}: {code:?}: {}", status.message()))),
            },
            Ok(Ok(resp)) => match resp.status() {
                ServingStatus::Serving => Ok(CheckOutcome::Pass),
                ServingStatus::NotServing => Ok(CheckOutcome::fail_with("NotServing", format!("{what}: NOT_SERVING"))),
                ServingStatus::ServiceUnknown => {
                    Ok(CheckOutcome::fail_with("ServiceUnknown", format!("{what}: SERVICE_UNKNOWN")))
                }
                ServingStatus::Unknown => Ok(CheckOutcome::fail_with("HealthUnknown", format!("{what}: UNKNOWN"))),
            },
        }
    }
}

/// An error with its causes ("transport error: tcp connect error: Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[async_trait]
impl<T: NodeIdentity> HealthChecker<T> for GrpcHealthProbe {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn threshold(&self) -> Duration {
        self.config.threshold
    }
    async fn check(&self, target: &T, _ctx: &CheckContext) -> CheckResult {
        self.probe(target).await
    }
}
