//! HTTP GET probes: pass on 2xx, fail with the status otherwise.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{CheckContext, CheckError, CheckOutcome, CheckResult, HealthChecker};

use crate::{ConfigError, NodeIdentity};

/// The placeholders an URL template may use.
pub const PLACEHOLDERS: &[&str] = &["{name}", "{internal_ip}", "{external_ip}", "{hostname}"];

/// Settings of an HTTP probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbeConfig {
    /// The checker name.
    pub name: String,
    /// URL template, e.g. `http://{internal_ip}:8080/v0/healthz`.
    pub url: String,
    /// Threshold.
    pub threshold: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout of the request.
    pub timeout: Duration,
    /// A file holding a bearer token (read on every probe, so rotation works).
    pub bearer_token_file: Option<PathBuf>,
}

impl HttpProbeConfig {
    /// A probe of `url` with default timeouts (connect 2s, total 5s) and threshold 5m.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        HttpProbeConfig {
            name: name.into(),
            url: url.into(),
            threshold: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            bearer_token_file: None,
        }
    }
}

/// An HTTP GET probe.
pub struct HttpProbe {
    config: HttpProbeConfig,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token file path is shown, the token never.
        f.debug_struct("HttpProbe").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A URL template that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// Not an `http://` URL.
    #[error("{url:?} must start with http:// (https is not supported by this build)")]
    NotHttp {
        /// The template.
        url: String,
    },
    /// A `{` without its `}`.
    #[error("{url:?} has an unclosed '{{'")]
    Unclosed {
        /// The template.
        url: String,
    },
    /// A placeholder that is not in [`PLACEHOLDERS`].
    #[error("unknown placeholder {placeholder} in {url:?}: accepted are {}", PLACEHOLDERS.join(", "))]
    UnknownPlaceholder {
        /// The placeholder, with its braces.
        placeholder: String,
        /// The template.
        url: String,
    },
}

/// Checks a URL template: `http://`, known placeholders only.
pub fn validate_template(url: &str) -> Result<(), TemplateError> {
    if !url.starts_with("http://") {
        return Err(TemplateError::NotHttp { url: url.to_owned() });
    }
    let mut rest = url;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or_else(|| TemplateError::Unclosed { url: url.to_owned() })? + open;
        let placeholder = &rest[open..=close];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(TemplateError::UnknownPlaceholder { placeholder: placeholder.to_owned(), url: url.to_owned() });
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

pub(crate) fn render(url: &str, node: &dyn NodeIdentity) -> Result<String, CheckError> {
    let mut out = url.replace("{name}", node.node_name());
    for (placeholder, value, what) in [
        ("{internal_ip}", node.internal_ip(), "InternalIP"),
        ("{external_ip}", node.external_ip(), "ExternalIP"),
        ("{hostname}", node.hostname(), "Hostname"),
    ] {
        if out.contains(placeholder) {
            let v = value.ok_or_else(|| CheckError::new(format!("node {} has no {what} address", node.node_name())))?;
            out = out.replace(placeholder, v);
        }
    }
    Ok(out)
}

impl HttpProbe {
    /// Builds a probe; the template and timeouts are checked.
    pub fn new(config: HttpProbeConfig) -> Result<Self, ConfigError> {
        let field =
            |f: &'static str, m: String| ConfigError::Field { entry: config.name.clone(), field: f, message: m };
        validate_template(&config.url).map_err(|e| field("url", e.to_string()))?;
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(field("timeout", "timeouts must be positive durations such as \"5s\"".into()));
        }
        // reqwest may be built with rustls but no default crypto provider
        // (another crate of the binary may ask for that): install ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| field("url", format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpProbe { config, client })
    }

    /// Probes one node.
    pub async fn probe(&self, node: &dyn NodeIdentity) -> CheckResult {
        let url = render(&self.config.url, node)?;
        let mut req = self.client.get(&url);
        if let Some(path) = &self.config.bearer_token_file {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| CheckError::new(format!("cannot read the bearer token file {}: {e}", path.display())))?;
            req = req.bearer_auth(token.trim());
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    return Ok(CheckOutcome::Pass);
                }
                let reason = match status.as_u16() {
                    400..=499 => "HTTPStatus4xx",
                    500..=599 => "HTTPStatus5xx",
                    _ => "HTTPStatusNotOK",
                };
                Ok(CheckOutcome::fail_with(reason, format!("GET {url}: {status}")))
            }
            Err(e) if e.is_timeout() => {
                Ok(CheckOutcome::fail_with("Timeout", format!("GET {url}: no answer within {:?}", self.config.timeout)))
            }
            Err(e) if e.is_connect() => {
                Ok(CheckOutcome::fail_with("Unreachable", format!("GET {url}: cannot connect")))
            }
            Err(e) => Err(CheckError::new(format!("GET {url}: {}", e.without_url()))),
        }
    }
}

#[async_trait]
impl<T: NodeIdentity> HealthChecker<T> for HttpProbe {
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
