//! HTTP(S) GET probes: pass on the expected status (any 2xx by default)
//! and, when asked, a body containing a given text; fail otherwise.
//!
//! The probe's client uses rustls with ring handed to it directly: this
//! crate never installs a process-wide crypto provider, so an embedder keeps
//! its own choice. HTTPS trusts the platform's roots plus an optional CA
//! file.

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
    /// A PEM file of CA certificates trusted for https besides the platform's.
    pub ca_file: Option<PathBuf>,
    /// The statuses that pass (empty: any 2xx).
    pub expect_status: Vec<u16>,
    /// A text the body must contain (read up to [`MAX_BODY`] bytes).
    pub body_contains: Option<String>,
}

/// `: cause: its cause...` of an error, each distinct cause once.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// The most of a body a probe reads to look for `body_contains`.
pub const MAX_BODY: usize = 64 * 1024;

/// A reqwest client builder on rustls with ring, trusting the platform's
/// roots plus the certificates of `extra_ca_pem`, without installing a
/// process-wide crypto provider.
pub fn tls_client_builder(extra_ca_pem: Option<&[u8]>) -> Result<reqwest::ClientBuilder, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match extra_ca_pem {
        None => Vec::new(),
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("not PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err("no PEM certificate in it".into());
            }
            certs
        }
    };
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, std::sync::Arc::clone(&provider))
        .map_err(|e| format!("cannot set up certificate verification: {e}"))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
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
            ca_file: None,
            expect_status: Vec::new(),
            body_contains: None,
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
    /// Not an `http://` or `https://` URL.
    #[error("{url:?} must start with http:// or https://")]
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

/// Checks a URL template: `http://` or `https://`, known placeholders only.
pub fn validate_template(url: &str) -> Result<(), TemplateError> {
    if !url.starts_with("http://") && !url.starts_with("https://") {
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
        if config.expect_status.iter().any(|s| !(100..=599).contains(s)) {
            return Err(field("expect_status", "statuses are numbers from 100 to 599, such as [200, 204]".into()));
        }
        if config.body_contains.as_deref().is_some_and(str::is_empty) {
            return Err(field("body_contains", "must not be empty (leave it out to ignore the body)".into()));
        }
        let ca = match &config.ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| field("ca_file", format!("cannot read {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let builder = tls_client_builder(ca.as_deref()).map_err(|e| {
            let what = config.ca_file.as_ref().map_or_else(String::new, |p| format!("{}: ", p.display()));
            field("ca_file", format!("{what}{e}"))
        })?;
        let client = builder
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| field("url", format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpProbe { config, client })
    }

    /// A probe on the caller's client (its TLS roots, provider, proxy and
    /// timeouts); `ca_file` and the timeouts of `config` are then not used.
    pub fn with_client(config: HttpProbeConfig, client: reqwest::Client) -> Result<Self, ConfigError> {
        let field =
            |f: &'static str, m: String| ConfigError::Field { entry: config.name.clone(), field: f, message: m };
        validate_template(&config.url).map_err(|e| field("url", e.to_string()))?;
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
            Ok(mut resp) => {
                let status = resp.status();
                let expected = if self.config.expect_status.is_empty() {
                    status.is_success()
                } else {
                    self.config.expect_status.contains(&status.as_u16())
                };
                if !expected {
                    let reason = match status.as_u16() {
                        400..=499 => "HTTPStatus4xx",
                        500..=599 => "HTTPStatus5xx",
                        _ => "HTTPStatusNotOK",
                    };
                    return Ok(CheckOutcome::fail_with(reason, format!("GET {url}: {status}")));
                }
                let Some(want) = &self.config.body_contains else {
                    return Ok(CheckOutcome::Pass);
                };
                let mut body: Vec<u8> = Vec::new();
                while body.len() < MAX_BODY {
                    match resp.chunk().await {
                        Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(MAX_BODY - body.len())]),
                        Ok(None) => break,
                        Err(e) if e.is_timeout() => {
                            return Ok(CheckOutcome::fail_with(
                                "Timeout",
                                format!("GET {url}: the body did not arrive within {:?}", self.config.timeout),
                            ));
                        }
                        Err(e) => {
                            return Err(CheckError::new(format!("GET {url}: reading the body: {}", e.without_url())));
                        }
                    }
                }
                if String::from_utf8_lossy(&body).contains(want.as_str()) {
                    Ok(CheckOutcome::Pass)
                } else {
                    Ok(CheckOutcome::fail_with(
                        "HTTPBodyMismatch",
                        format!("GET {url}: {status}, but the body (first {} bytes) lacks {want:?}", body.len()),
                    ))
                }
            }
            Err(e) if e.is_timeout() => {
                Ok(CheckOutcome::fail_with("Timeout", format!("GET {url}: no answer within {:?}", self.config.timeout)))
            }
            Err(e) if e.is_connect() => {
                // The causes say why: refused, unreachable, a certificate not trusted.
                Ok(CheckOutcome::fail_with("Unreachable", format!("GET {url}: cannot connect{}", causes(&e))))
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
