//! The Civo executor: hard reboot and pool replacement through the Civo API.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use health_core::retry::{RetryAfter, RetryPolicy, retry};
use health_core::{Action, ExecError, Executor};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::ExecTarget;

/// Installs the ring crypto provider for rustls as the process default.
/// For binaries only (the agent calls it first thing): this crate's own
/// clients never need it, and never call it. Installing twice is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client builder on rustls with ring handed to it (not
/// installed for the process), trusting the platform's roots.
fn tls_client_builder() -> Result<reqwest::ClientBuilder, CivoError> {
    let bad = |e: String| CivoError::InvalidConfig { field: "api_url", message: format!("cannot set up TLS: {e}") };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new(std::sync::Arc::clone(&provider)).map_err(|e| bad(e.to_string()))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
}

/// An API key that never shows in Debug or Display output.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Settings of the Civo executor (the Civo agent's `CIVO_*` variables).
#[derive(Clone, Debug)]
pub struct CivoConfig {
    /// `CIVO_API_URL`, e.g. `https://api.civo.com`.
    pub api_url: String,
    /// `CIVO_API_KEY`.
    pub api_key: ApiKey,
    /// `CIVO_CLUSTER_ID`.
    pub cluster_id: String,
    /// `CIVO_REGION`, e.g. `LON1`.
    pub region: String,
    /// Time limit of one HTTP call.
    pub call_timeout: Duration,
    /// Retries of calls that are safe to repeat (listing, deleting).
    pub max_retries: u32,
    /// The first retry delay (doubling; with jitter each delay is drawn
    /// between its half and itself).
    pub retry_base: Duration,
    /// The longest retry delay (default 10s). A `Retry-After` from Civo
    /// longer than this ends the retries: the error goes back to the engine,
    /// whose own back-off then spaces the next attempt.
    pub retry_max_delay: Duration,
    /// The agent's name and version for the User-Agent, e.g. `node-agent/0.1.0`.
    pub agent: String,
    /// The largest answer read from Civo (default 4 MiB); a larger one is an
    /// error, and is never held in memory whole.
    pub max_body_bytes: usize,
    /// Allow plain `http://` to a host that is not loopback (the key would
    /// cross the network in clear). Off by default; for test servers only.
    pub allow_insecure_http: bool,
}

/// The longest Civo error reason kept in an error (and so in logs), in bytes.
const MAX_REASON_CHARS: usize = 512;

/// Whether `url`'s host is loopback (`localhost`, `127.0.0.0/8`, `::1`).
#[must_use]
pub fn is_loopback_url(url: &str) -> bool {
    let Some(url) = reqwest::Url::parse(url).ok() else { return false };
    let Some(host) = url.host_str() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `text` cut to at most `max` bytes (at a character boundary), saying how
/// much was cut.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let at = (0..=max).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    format!("{}… ({} more bytes)", &text[..at], text.len() - at)
}

/// Whether `id` is a Civo id (letters, digits, `-`, `_`; at most 128): it
/// goes into URL paths.
fn is_civo_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl CivoConfig {
    /// A configuration with defaults: 10s per call, 3 retries from 500ms
    /// (at most 10s apart).
    pub fn new(
        api_url: impl Into<String>,
        api_key: ApiKey,
        cluster_id: impl Into<String>,
        region: impl Into<String>,
    ) -> Self {
        CivoConfig {
            api_url: api_url.into(),
            api_key,
            cluster_id: cluster_id.into(),
            region: region.into(),
            call_timeout: Duration::from_secs(10),
            max_retries: 3,
            retry_base: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(10),
            agent: format!("node-health-recovery-exec/{}", env!("CARGO_PKG_VERSION")),
            max_body_bytes: 4 << 20,
            allow_insecure_http: false,
        }
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), CivoError> {
        let bad =
            |field: &'static str, message: &str| Err(CivoError::InvalidConfig { field, message: message.to_owned() });
        let url = self.api_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(url).ok().filter(|u| u.host().is_some() && u.query().is_none());
        match parsed.as_ref().map(reqwest::Url::scheme) {
            Some("https") => {}
            Some("http") if self.allow_insecure_http || is_loopback_url(url) => {}
            Some("http") => {
                return bad(
                    "api_url",
                    "must use https for a host that is not loopback (plain http would send the API key in clear; allow_insecure_http is for test servers)",
                );
            }
            _ => return bad("api_url", "must be an http(s) URL such as https://api.civo.com"),
        }
        if self.api_key.expose().trim().is_empty() {
            return bad("api_key", "must not be empty");
        }
        if self.api_key.expose().chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("api_key", "must not contain whitespace");
        }
        let id_ok =
            !self.cluster_id.is_empty() && self.cluster_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !id_ok {
            return bad(
                "cluster_id",
                "must be a cluster id (letters, digits and '-'), e.g. 3f2b1c9e-8d41-4a2f-9c55-000000000001",
            );
        }
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 16
            && self.region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !region_ok {
            return bad("region", "must be a Civo region such as LON1 or NYC1");
        }
        if self.call_timeout.is_zero() {
            return bad("call_timeout", "must be a positive duration");
        }
        if self.max_retries > 10 {
            return bad("max_retries", "must be at most 10");
        }
        if self.retry_base.is_zero() {
            return bad("retry_base", "must be a positive duration");
        }
        if self.retry_max_delay < self.retry_base {
            return bad("retry_max_delay", "must be at least retry_base");
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        Ok(())
    }
}

/// What went wrong talking to Civo. Never contains the API key; reasons
/// quoted from Civo are cut to 512 bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CivoError {
    /// A setting is invalid.
    #[error("invalid Civo configuration: {field} {message}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is accepted.
        message: String,
    },
    /// The key was refused.
    #[error("Civo refused the API key ({status}, {code})")]
    Auth {
        /// HTTP status.
        status: u16,
        /// Civo's error code.
        code: String,
    },
    /// Something does not exist.
    #[error("Civo: not found ({code}): {reason}")]
    NotFound {
        /// Civo's error code.
        code: String,
        /// Civo's reason.
        reason: String,
    },
    /// Too many requests.
    #[error("Civo rate-limited the request ({})", after_text("429", *retry_after))]
    RateLimited {
        /// The wait Civo asked for (`Retry-After` in seconds), if any.
        retry_after: Option<Duration>,
    },
    /// Civo failed.
    #[error("Civo server error {status} ({}): {reason}", after_text(code, *retry_after))]
    Server {
        /// HTTP status.
        status: u16,
        /// The wait Civo asked for (`Retry-After` in seconds), if any.
        retry_after: Option<Duration>,
        /// Civo's error code.
        code: String,
        /// Civo's reason.
        reason: String,
    },
    /// Civo rejected the request.
    #[error("Civo rejected the request ({status}, {code}): {reason}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Civo's error code.
        code: String,
        /// Civo's reason.
        reason: String,
    },
    /// No answer in time.
    #[error("Civo did not answer {what} within {after:?}")]
    Timeout {
        /// The call.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The request could not be sent or read.
    #[error("cannot reach Civo for {what}: {message}")]
    Transport {
        /// The call.
        what: String,
        /// Why (without URL secrets: the key is a header, never in a URL).
        message: String,
        /// Whether the request certainly never reached Civo.
        not_sent: bool,
    },
    /// No instance of the cluster has the node's hostname.
    #[error("no Civo instance of cluster {cluster} is named {node:?}")]
    NoInstance {
        /// The node.
        node: String,
        /// The cluster.
        cluster: String,
    },
    /// Several instances have the node's hostname.
    #[error("{count} Civo instances of cluster {cluster} are named {node:?}; refusing to guess")]
    AmbiguousInstance {
        /// The node.
        node: String,
        /// The cluster.
        cluster: String,
        /// How many.
        count: usize,
    },
    /// The node has no pool label.
    #[error("node {node:?} has no kubernetes.civo.com/civo-node-pool label; cannot tell its pool")]
    NoPool {
        /// The node.
        node: String,
    },
    /// The node's pool label is not a pool id.
    #[error("node {node:?} has the pool label {pool:?}, which is not a Civo pool id (letters, digits, '-', '_')")]
    InvalidPool {
        /// The node.
        node: String,
        /// The label's value.
        pool: String,
    },
    /// Civo answered something unexpected.
    #[error("unexpected answer from Civo to {what}: {message}")]
    Unexpected {
        /// The call.
        what: String,
        /// What was odd.
        message: String,
    },
}

impl CivoError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            CivoError::RateLimited { .. }
                | CivoError::Server { .. }
                | CivoError::Timeout { .. }
                | CivoError::Transport { .. }
        )
    }
}

impl RetryAfter for CivoError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            CivoError::RateLimited { retry_after } | CivoError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `code`, then `; retry after 30s` when Civo asked for a wait (without
/// the separator when there is no code), for an error's text.
fn after_text(code: &str, after: Option<Duration>) -> String {
    match after {
        Some(d) if code.is_empty() => format!("retry after {}s", d.as_secs()),
        Some(d) => format!("{code}; retry after {}s", d.as_secs()),
        None => code.to_owned(),
    }
}

/// A `Retry-After` header in its seconds form (at most a day). The HTTP-date
/// form is not read: the back-off's own delay applies.
fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(86_400)))
}

#[derive(Deserialize)]
struct CivoErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct Instance {
    id: String,
    hostname: String,
}

/// The typed error for a Civo answer with a failure `status` and `body`
/// (and the wait it asked for).
fn error_from(status: u16, body: &[u8], retry_after: Option<Duration>) -> CivoError {
    let body: Option<CivoErrorBody> = serde_json::from_slice(body).ok();
    let (code, reason) = body.map(|b| (b.code, b.reason)).unwrap_or_default();
    let (code, reason) = (truncated(&code, 64), truncated(&reason, MAX_REASON_CHARS));
    let auth_code = code.starts_with("authentication") || code == "database_account_not_found";
    match status {
        401 | 403 => CivoError::Auth { status, code },
        404 if auth_code => CivoError::Auth { status: 404, code },
        404 => CivoError::NotFound { code, reason },
        429 => CivoError::RateLimited { retry_after },
        s if s >= 500 => CivoError::Server { status: s, retry_after, code, reason },
        s => CivoError::Rejected { status: s, code, reason },
    }
}

/// The id of the one instance named `node` in a listing.
fn pick_instance(body: &[u8], node: &str, cluster: &str) -> Result<String, CivoError> {
    let instances: Vec<Instance> = serde_json::from_slice(body).map_err(|e| CivoError::Unexpected {
        what: "list instances".into(),
        message: truncated(&format!("not a list of instances: {e}"), MAX_REASON_CHARS),
    })?;
    let matching: Vec<&Instance> = instances.iter().filter(|i| i.hostname.eq_ignore_ascii_case(node)).collect();
    match matching.as_slice() {
        [one] if !is_civo_id(&one.id) => Err(CivoError::Unexpected {
            what: "list instances".into(),
            message: format!(
                "instance {node:?} has the id {:?}, which is not a Civo id (letters, digits, '-', '_'); refusing to use it in a URL",
                truncated(&one.id, 64)
            ),
        }),
        [one] => Ok(one.id.clone()),
        [] => Err(CivoError::NoInstance { node: node.to_owned(), cluster: cluster.to_owned() }),
        many => {
            Err(CivoError::AmbiguousInstance { node: node.to_owned(), cluster: cluster.to_owned(), count: many.len() })
        }
    }
}

/// Reboots and replaces Civo instances behind nodes.
pub struct CivoExecutor {
    config: CivoConfig,
    base: String,
    client: reqwest::Client,
}

impl fmt::Debug for CivoExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CivoExecutor").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How a call may be repeated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Safe to repeat on any transient failure (GET, DELETE).
    Safe,
    /// Only when the request certainly never left (a reboot).
    OnlyIfNotSent,
    /// Safe to repeat, and a 404 after an attempt whose outcome is unknown
    /// means the earlier attempt worked (a delete).
    Delete,
}

impl CivoExecutor {
    /// Validates the configuration and builds the HTTP client (rustls with
    /// ring handed to the client: no process-wide provider is installed).
    pub fn new(config: CivoConfig) -> Result<Self, CivoError> {
        config.validate()?;
        let user_agent = format!("{} (cluster {})", config.agent, config.cluster_id);
        let client =
            tls_client_builder()?.timeout(config.call_timeout).user_agent(user_agent).build().map_err(|e| {
                CivoError::InvalidConfig { field: "api_url", message: format!("cannot build an HTTP client: {e}") }
            })?;
        Self::with_client(config, client)
    }

    /// Validates the configuration and uses the caller's client (its TLS
    /// settings, proxy and timeouts; each call is still bounded by
    /// `call_timeout`).
    pub fn with_client(config: CivoConfig, client: reqwest::Client) -> Result<Self, CivoError> {
        config.validate()?;
        let base = config.api_url.trim_end_matches('/').to_owned();
        Ok(CivoExecutor { config, base, client })
    }

    async fn call_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<(StatusCode, Vec<u8>), CivoError> {
        let url = format!("{}{path}?region={}", self.base, self.config.region);
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("bearer {}", self.config.api_key.expose())).map_err(
                |_| CivoError::InvalidConfig { field: "api_key", message: "is not a valid header value".into() },
            )?;
        auth.set_sensitive(true);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header("authorization", auth)
            .header("accept", "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                CivoError::Timeout { what: what.to_owned(), after: self.config.call_timeout }
            } else {
                let not_sent = e.is_connect();
                CivoError::Transport { what: what.to_owned(), message: e.without_url().to_string(), not_sent }
            }
        })?;
        let status = resp.status();
        let retry_after = retry_after_header(resp.headers());
        let bytes = self.read_body(resp, what, status.is_success()).await?;
        if status.is_success() {
            return Ok((status, bytes));
        }
        Err(error_from(status.as_u16(), &bytes, retry_after))
    }

    /// Reads an answer of at most `max_body_bytes`. A larger success is an
    /// error; a larger error answer is cut (its reason is only for humans).
    async fn read_body(&self, mut resp: reqwest::Response, what: &str, success: bool) -> Result<Vec<u8>, CivoError> {
        let max = self.config.max_body_bytes;
        let too_big = || CivoError::Unexpected {
            what: what.to_owned(),
            message: format!("the answer is larger than {max} bytes (max_body_bytes); not reading it"),
        };
        if success && resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    CivoError::Timeout { what: what.to_owned(), after: self.config.call_timeout }
                } else {
                    CivoError::Transport {
                        what: what.to_owned(),
                        message: e.without_url().to_string(),
                        not_sent: false,
                    }
                }
            })?;
            let Some(chunk) = chunk else { return Ok(body) };
            if body.len() + chunk.len() > max {
                if success {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk[..max - body.len()]);
                return Ok(body);
            }
            body.extend_from_slice(&chunk);
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        what: &str,
        repeat: Repeat,
    ) -> Result<Vec<u8>, CivoError> {
        let policy = RetryPolicy::new(self.config.retry_base, self.config.retry_max_delay, self.config.max_retries);
        let body = body.as_ref();
        retry(
            &policy,
            what,
            |attempt| {
                let method = &method;
                async move {
                    match self.call_once(method, path, body, what).await {
                        Ok((_, bytes)) => Ok(bytes),
                        // An earlier attempt whose answer was lost did the deletion.
                        Err(CivoError::NotFound { .. }) if repeat == Repeat::Delete && attempt > 0 => Ok(Vec::new()),
                        Err(e) => Err(e),
                    }
                }
            },
            |err| match repeat {
                Repeat::Safe | Repeat::Delete => err.retryable(),
                Repeat::OnlyIfNotSent => matches!(err, CivoError::Transport { not_sent: true, .. }),
            },
        )
        .await
    }

    /// The id of the instance whose hostname is `node` (case-insensitive, exact).
    pub async fn find_instance(&self, node: &str) -> Result<String, CivoError> {
        let path = format!("/v2/kubernetes/clusters/{}/instances", self.config.cluster_id);
        let bytes = self.call(Method::GET, &path, None, "list instances", Repeat::Safe).await?;
        pick_instance(&bytes, node, &self.config.cluster_id)
    }

    /// Hard-reboots the instance behind `node`. The reboot call is never
    /// repeated once it may have reached Civo: a timeout is reported as such.
    pub async fn reboot(&self, node: &str) -> Result<(), CivoError> {
        let id = self.find_instance(node).await?;
        let path = format!("/v2/instances/{id}/hard_reboots");
        let body = serde_json::json!({"region": self.config.region});
        tracing::info!(node, instance = %id, "requesting a hard reboot from Civo");
        self.call(Method::POST, &path, Some(body), "hard reboot", Repeat::OnlyIfNotSent).await.map(|_| ())
    }

    /// Deletes the instance behind `node` from `pool`, so the pool replaces it.
    pub async fn replace(&self, node: &str, pool: &str) -> Result<(), CivoError> {
        if !is_civo_id(pool) {
            return Err(CivoError::InvalidPool { node: node.to_owned(), pool: truncated(pool, 64) });
        }
        let id = self.find_instance(node).await?;
        let path = format!("/v2/kubernetes/clusters/{}/pools/{pool}/instances/{id}", self.config.cluster_id);
        tracing::info!(node, instance = %id, pool, "asking Civo to replace the instance");
        self.call(Method::DELETE, &path, None, "delete pool instance", Repeat::Delete).await.map(|_| ())
    }
}

fn to_exec(action: Action, e: CivoError) -> ExecError {
    match e {
        // A reboot that timed out may still happen.
        CivoError::Timeout { after, .. } => ExecError::Timeout { action, after },
        // A gateway or server error may come after Civo acted.
        CivoError::Server { status, ref code, .. } => ExecError::Unknown {
            action,
            message: format!("Civo answered {status} ({code}); the action may have happened"),
        },
        CivoError::Transport { not_sent: false, ref message, .. } => {
            ExecError::Unknown { action, message: format!("the answer was lost: {message}") }
        }
        other => ExecError::Failed { action, message: other.to_string(), source: Some(Box::new(other)) },
    }
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for CivoExecutor {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        let node = target.node_name();
        match action {
            Action::Reboot => self.reboot(node).await.map_err(|e| to_exec(action, e)),
            Action::Replace => {
                let pool =
                    target.pool_id().ok_or_else(|| to_exec(action, CivoError::NoPool { node: node.to_owned() }))?;
                self.replace(node, pool).await.map_err(|e| to_exec(action, e))
            }
            Action::Drain | Action::Uncordon | Action::Repair(_) => Err(ExecError::Unsupported { action }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> u32 {
        std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
    }

    /// A listing-shaped answer: instances with arbitrary ids and hostnames,
    /// or arbitrary bytes.
    fn listing() -> impl Strategy<Value = Vec<u8>> {
        let instance = ("\\PC{0,40}", prop_oneof![Just("node-1".to_owned()), "\\PC{0,12}"], any::<bool>()).prop_map(
            |(id, hostname, extra)| {
                let mut v = serde_json::json!({"id": id, "hostname": hostname});
                if extra {
                    v["size"] = serde_json::json!({"nested": [1, 2]});
                }
                v
            },
        );
        prop_oneof![
            prop::collection::vec(instance, 0..5).prop_map(|v| serde_json::to_vec(&v).unwrap()),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    /// An error-shaped answer: code and reason of any type and length, or bytes.
    fn error_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            ("\\PC{0,80}", "\\PC{0,2000}")
                .prop_map(|(c, r)| serde_json::to_vec(&serde_json::json!({"code": c, "reason": r})).unwrap()),
            any::<i64>().prop_map(|n| serde_json::to_vec(&serde_json::json!({"code": n, "reason": [n]})).unwrap()),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn listings_never_panic_and_ids_are_always_safe(body in listing()) {
            if let Ok(id) = pick_instance(&body, "node-1", "c-1") {
                prop_assert!(is_civo_id(&id), "{id:?}");
            }
        }

        #[test]
        fn error_answers_never_panic_and_stay_short(status in 400u16..600, body in error_body()) {
            let e = error_from(status, &body, Some(Duration::from_secs(86_400))).to_string();
            prop_assert!(e.len() < 1024, "{} bytes", e.len());
        }
    }

    #[test]
    fn retry_after_is_read_in_its_seconds_form() {
        let header = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from_str(v).unwrap());
            retry_after_header(&h)
        };
        assert_eq!(header("30"), Some(Duration::from_secs(30)));
        assert_eq!(header(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(header("99999999"), Some(Duration::from_secs(86_400)), "at most a day");
        assert_eq!(header("Wed, 21 Oct 2015 07:28:00 GMT"), None, "the date form: the back-off's own delay");
        assert_eq!(header("-1"), None);
        assert_eq!(retry_after_header(&reqwest::header::HeaderMap::new()), None);
        let e = error_from(503, b"{}", Some(Duration::from_secs(5)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert_eq!(e.to_string(), "Civo server error 503 (retry after 5s): ");
        let e = error_from(503, br#"{"code":"busy","reason":"later"}"#, Some(Duration::from_secs(5)));
        assert_eq!(e.to_string(), "Civo server error 503 (busy; retry after 5s): later");
        assert_eq!(error_from(500, b"{}", None).to_string(), "Civo server error 500 (): ");
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("http://127.1.2.3"));
        assert!(is_loopback_url("http://localhost/x"));
        assert!(is_loopback_url("http://[::1]:9/"));
        assert!(!is_loopback_url("http://10.0.0.1"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.com"));
        assert!(!is_loopback_url("http://user@evil.com"));
        assert!(!is_loopback_url("not a url"));
    }

    #[test]
    fn reasons_are_cut_and_ids_checked() {
        assert_eq!(truncated("short", 10), "short");
        assert_eq!(truncated("abcdef", 3), "abc… (3 more bytes)");
        assert_eq!(truncated("ééé", 3), "é… (4 more bytes)");
        assert!(is_civo_id("0f9c7a52-3b1e-4d6a-9f20-000000000001"));
        for bad in ["", "x?region=evil#", "../x", "a/b", "a b", "é"] {
            assert!(!is_civo_id(bad), "{bad}");
        }
    }

    #[test]
    fn plain_http_needs_loopback_or_the_opt_out() {
        let cfg = |url: &str| CivoConfig::new(url, ApiKey::new("k"), "c-1", "LON1");
        assert!(cfg("https://api.civo.com").validate().is_ok());
        assert!(cfg("http://127.0.0.1:9").validate().is_ok());
        let err = cfg("http://api.civo.com").validate().unwrap_err().to_string();
        assert!(err.contains("api_url must use https"), "{err}");
        let mut c = cfg("http://api.civo.com");
        c.allow_insecure_http = true;
        assert!(c.validate().is_ok());
        assert!(cfg("ftp://x").validate().is_err());
        assert!(cfg("https://api.civo.com?region=x").validate().is_err());
    }
}
