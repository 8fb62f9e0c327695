//! Soft repairs as HTTP calls: a node's sidecar `mark-ready`, a fleet
//! controller's "restart kubelet on this host" endpoint, a webhook.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{Action, ExecError, Executor};

use crate::ExecTarget;

/// The placeholders a URL template may use.
const PLACEHOLDERS: [&str; 4] = ["{node}", "{pool}", "{repair}", "{internal_ip}"];

/// A URL template that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL template {template:?}: {why}")]
pub struct UrlTemplateError {
    template: String,
    why: String,
}

/// Performs a soft repair with one HTTP request.
///
/// The URL is a template: `{node}`, `{pool}`, `{repair}` and
/// `{internal_ip}` are replaced by the node's name, its pool id, the
/// repair's name and its internal IP address (IPv6 in brackets),
/// percent-encoded; a URL naming `{internal_ip}` for a node without a
/// known address fails without a request. The
/// body is JSON: `{"node": ..., "pool": ..., "repair": ...}`. A 2xx answer
/// succeeds; any other status fails with the status and the start of the
/// body; no answer within the timeout leaves the outcome unknown (the
/// request may have been acted on). A bearer token, when given, is sent in
/// `Authorization` and never shown by `Debug`, errors or logs.
///
/// The caller passes the [`reqwest::Client`], so it chooses the TLS roots
/// and the rustls crypto provider; this crate installs none.
#[derive(Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
    method: reqwest::Method,
    url: String,
    timeout: Duration,
    token: Option<String>,
}

impl fmt::Debug for HttpExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpExecutor")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpExecutor {
    /// Calls `method url` (a template, see the type's documentation) with
    /// `client`, waiting at most `timeout` for the answer.
    pub fn new(
        client: reqwest::Client,
        method: reqwest::Method,
        url: &str,
        timeout: Duration,
    ) -> Result<Self, UrlTemplateError> {
        Self::check_template(url)?;
        if timeout.is_zero() {
            return Err(UrlTemplateError { template: url.to_owned(), why: "the timeout must be positive".into() });
        }
        Ok(HttpExecutor { client, method, url: url.to_owned(), timeout, token: None })
    }

    /// Checks a URL template without building anything (no client, no
    /// crypto provider): for validating configuration.
    pub fn check_template(url: &str) -> Result<(), UrlTemplateError> {
        let bad = |why: &str| UrlTemplateError { template: url.to_owned(), why: why.to_owned() };
        let mut probe = url.to_owned();
        for p in PLACEHOLDERS {
            probe = probe.replace(p, "x");
        }
        if probe.contains('{') || probe.contains('}') {
            return Err(bad("the only placeholders are {node}, {pool}, {repair} and {internal_ip}"));
        }
        let parsed =
            reqwest::Url::parse(&probe).map_err(|e| bad(&format!("{e} (expected an http:// or https:// URL)")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("expected an http:// or https:// URL"));
        }
        Ok(())
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    #[must_use]
    pub fn with_bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    fn url_for(&self, node: &str, pool: &str, repair: &str, ip: &str) -> String {
        let ip = if ip.contains(':') { format!("[{ip}]") } else { encode(ip) };
        self.url
            .replace("{node}", &encode(node))
            .replace("{pool}", &encode(pool))
            .replace("{repair}", &encode(repair))
            .replace("{internal_ip}", &ip)
    }
}

#[async_trait]
impl<T: ExecTarget + ?Sized> Executor<T> for HttpExecutor {
    async fn execute(&self, action: Action, target: &T) -> Result<(), ExecError> {
        if !action.is_soft() {
            return Err(ExecError::Unsupported { action });
        }
        let node = target.node_name();
        let pool = target.pool_id().unwrap_or("");
        let mut ip = "";
        if self.url.contains("{internal_ip}") {
            // The address comes from the Node's status, which its kubelet
            // writes: only an IP address may steer the request (and its token).
            ip = target.internal_ip().unwrap_or("");
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ExecError::failed(
                    action,
                    format!("node {node} has no valid internal IP address ({ip:?}) for {}", self.url),
                ));
            }
        }
        let url = self.url_for(node, pool, action.as_str(), ip);
        let body = serde_json::json!({"node": node, "pool": pool, "repair": action.as_str()});
        let mut request = self.client.request(self.method.clone(), &url).timeout(self.timeout).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.map_err(|e| {
            // reqwest's error names the URL, which holds no secret (the token
            // travels in a header).
            if e.is_timeout() {
                ExecError::Timeout { action, after: self.timeout }
            } else if e.is_connect() {
                ExecError::failed(action, format!("{} {url}: cannot connect: {e}", self.method))
            } else {
                ExecError::Unknown { action, message: format!("{} {url}: {e}", self.method) }
            }
        })?;
        let status = answer.status();
        if status.is_success() {
            tracing::info!(node, repair = action.as_str(), %url, status = status.as_u16(), "repair request accepted");
            return Ok(());
        }
        let text = answer.text().await.unwrap_or_default();
        let mut start: String = text.chars().take(200).collect();
        if start.len() < text.len() {
            start.push('…');
        }
        Err(ExecError::failed(action, format!("{} {url} answered {status}: {}", self.method, start.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked_and_filled_with_encoded_values() {
        // The test is the binary here: it chooses the provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let c = reqwest::Client::new();
        let t = Duration::from_secs(5);
        let e = HttpExecutor::new(c.clone(), reqwest::Method::POST, "http://h/{node}/{nod}", t).unwrap_err();
        assert!(e.to_string().contains("the only placeholders are {node}, {pool}, {repair} and {internal_ip}"), "{e}");
        let e = HttpExecutor::new(c.clone(), reqwest::Method::POST, "ftp://h/{node}", t).unwrap_err();
        assert!(e.to_string().contains("expected an http:// or https:// URL"), "{e}");
        let e = HttpExecutor::new(c.clone(), reqwest::Method::POST, "h/{node}", t).unwrap_err();
        assert!(e.to_string().contains("expected an http:// or https:// URL"), "{e}");
        let x = HttpExecutor::new(c, reqwest::Method::POST, "https://h/v1/{pool}/{node}/{repair}", t)
            .unwrap()
            .with_bearer_token("s3cret");
        assert_eq!(x.url_for("n 1/a", "p", "mark-ready", ""), "https://h/v1/p/n%201%2Fa/mark-ready");
        let y =
            HttpExecutor::new(reqwest::Client::new(), reqwest::Method::POST, "http://{internal_ip}:9090/x", t).unwrap();
        assert_eq!(y.url_for("n", "", "r", "10.0.0.7"), "http://10.0.0.7:9090/x");
        assert_eq!(y.url_for("n", "", "r", "fd00::7"), "http://[fd00::7]:9090/x");
        assert!(!format!("{x:?}").contains("s3cret"));
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    struct Evil(&'static str);
    impl ExecTarget for Evil {
        fn node_name(&self) -> &str {
            "node-1"
        }
        fn pool_id(&self) -> Option<&str> {
            None
        }
        fn internal_ip(&self) -> Option<&str> {
            Some(self.0)
        }
    }

    #[tokio::test]
    async fn only_an_ip_address_fills_internal_ip() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let x = HttpExecutor::new(
            reqwest::Client::new(),
            reqwest::Method::POST,
            "http://{internal_ip}:9090/v0/mark-ready",
            Duration::from_secs(1),
        )
        .unwrap()
        .with_bearer_token("s3cret");
        let repair = Action::Repair(health_core::Repair::new("mark-ready").unwrap());
        for bad in ["evil.example", "1:2]@evil.example/#", "", "10.0.0.1@evil"] {
            let e = x.execute(repair, &Evil(bad)).await.unwrap_err().to_string();
            assert!(e.contains("no valid internal IP address"), "{bad:?}: {e}");
        }
    }
}
