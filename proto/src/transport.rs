//! Client channels and bearer-token authentication shared by every
//! `nodeagent.v1` client and server (the heartbeat, `node-agent status`,
//! the remote executor, the admin server).
//!
//! Tokens are read from files, compared in constant time, and never shown
//! by `Debug` or in an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// A bearer token: never shown by `Debug`, `Display` or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token (surrounding whitespace removed).
    ///
    /// # Errors
    /// An empty token, or one that cannot be an HTTP header value.
    pub fn new(token: &str) -> Result<Self, TransportError> {
        let t = token.trim();
        if t.is_empty() {
            return Err(TransportError::Token("the token is empty".into()));
        }
        if !t.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(TransportError::Token("the token must be printable ASCII without spaces".into()));
        }
        Ok(Token(t.to_owned()))
    }

    /// Reads a token file (one line; surrounding whitespace removed).
    ///
    /// # Errors
    /// The file cannot be read, or holds no usable token; the error names
    /// the file, never its content.
    pub fn from_file(path: &Path) -> Result<Self, TransportError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TransportError::Token(format!("cannot read the token file {}: {e}", path.display())))?;
        Token::new(&text).map_err(|e| TransportError::Token(format!("{}: {e}", path.display())))
    }

    /// Whether `presented` is this token (constant time in its content).
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    fn header(&self) -> AsciiMetadataValue {
        // Checked printable ASCII in `new`.
        format!("Bearer {}", self.0).parse().unwrap_or_else(|_| AsciiMetadataValue::from_static(""))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A client or server could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The endpoint is not a usable URL.
    #[error("endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The CA file cannot be used.
    #[error("CA file {path}: {message}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The token cannot be used.
    #[error("token: {0}")]
    Token(String),
}

/// How a client reaches a `nodeagent.v1` (or grpc.health.v1) server.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// PEM CA bundle to trust for `https` (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<Token>,
    /// Time limit of a TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// Time limit of each call.
    pub timeout: Duration,
}

impl ClientSettings {
    /// Settings for `endpoint` with a 5 s connect and 10 s call limit.
    #[must_use]
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientSettings {
            endpoint: endpoint.into(),
            ca_file: None,
            token: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }

    /// A lazily connecting channel (a server that is down fails the calls,
    /// not this) and the interceptor adding the token.
    ///
    /// `https` uses rustls; install a process-wide crypto provider first
    /// (ring is used when none is installed).
    ///
    /// # Errors
    /// A malformed endpoint, a scheme other than http/https, an unreadable
    /// CA file.
    pub fn connect(&self) -> Result<(Channel, Bearer), TransportError> {
        let bad = |message: String| TransportError::Endpoint { endpoint: self.endpoint.clone(), message };
        let tls = if self.endpoint.starts_with("https://") {
            true
        } else if self.endpoint.starts_with("http://") {
            false
        } else {
            return Err(bad("expected http://host:port or https://host:port".into()));
        };
        let mut ep = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| bad(format!("{e}: expected http://host:port or https://host:port")))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        if tls {
            let mut cfg = ClientTlsConfig::new();
            cfg = match &self.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| TransportError::Ca { path: path.clone(), message: e.to_string() })?;
                    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                        return Err(TransportError::Ca {
                            path: path.clone(),
                            message: "no PEM certificate in it".into(),
                        });
                    }
                    cfg.ca_certificate(Certificate::from_pem(pem))
                }
                None => cfg.with_native_roots(),
            };
            ep = ep.tls_config(cfg).map_err(|e| bad(format!("TLS: {e}")))?;
        } else if self.token.is_some() && !is_loopback_endpoint(&self.endpoint) {
            return Err(bad("a token would travel in clear over http to a remote host: use https".into()));
        }
        Ok((ep.connect_lazy(), Bearer(self.token.clone())))
    }
}

/// Whether an `http(s)://host:port` endpoint names a loopback host.
#[must_use]
pub fn is_loopback_endpoint(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    if rest.split('/').next().unwrap_or("").contains('@') {
        // userinfo@host: the host is after the '@'; never treat it as loopback.
        return false;
    }
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Client interceptor: adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone, Debug)]
pub struct Bearer(Option<Token>);

impl Bearer {
    /// No token.
    #[must_use]
    pub fn none() -> Self {
        Bearer(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.header());
        }
        Ok(req)
    }
}

/// Server interceptor: every call must carry the token (when one is set).
/// A missing or wrong token gets `UNAUTHENTICATED`, and the token is never
/// echoed.
#[derive(Clone, Debug)]
pub struct RequireBearer(Option<Token>);

impl RequireBearer {
    /// Requires `token`; `None` lets every call through.
    #[must_use]
    pub fn new(token: Option<Token>) -> Self {
        RequireBearer(token)
    }

    /// Whether the call's metadata carries the token.
    #[must_use]
    pub fn allows(&self, metadata: &MetadataMap) -> bool {
        let Some(expected) = &self.0 else { return true };
        let Some(value) = metadata.get("authorization").and_then(|v| v.to_str().ok()) else { return false };
        let presented = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or("");
        expected.matches(presented.trim())
    }
}

impl Interceptor for RequireBearer {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.allows(req.metadata()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show_and_compare_exactly() {
        let t = Token::new(" s3cret-token\n").expect("valid");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(t.matches("s3cret-token"));
        assert!(!t.matches("s3cret-toke"));
        assert!(!t.matches("s3cret-token2"));
        assert!(Token::new("  ").is_err());
        assert!(Token::new("two words").is_err());
        let err = Token::from_file(Path::new("/nonexistent/token")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn the_server_side_check_needs_the_exact_bearer() {
        let check = RequireBearer::new(Some(Token::new("abc").expect("valid")));
        let mut md = MetadataMap::new();
        assert!(!check.allows(&md), "no header");
        md.insert("authorization", "Bearer abd".parse().expect("ascii"));
        assert!(!check.allows(&md), "wrong token");
        md.insert("authorization", "abc".parse().expect("ascii"));
        assert!(!check.allows(&md), "no scheme");
        md.insert("authorization", "Bearer abc".parse().expect("ascii"));
        assert!(check.allows(&md));
        assert!(RequireBearer::new(None).allows(&MetadataMap::new()), "no token configured");
        let status =
            RequireBearer::new(Some(Token::new("abc").expect("valid"))).call(Request::new(())).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(!status.message().contains("abc"));
    }

    #[test]
    fn endpoints_are_checked() {
        let mut s = ClientSettings::new("grpc.example.com:443");
        assert!(s.connect().unwrap_err().to_string().contains("expected http://host:port"));
        s.endpoint = "http://10.0.0.5:9000".into();
        s.token = Some(Token::new("abc").expect("valid"));
        assert!(s.connect().unwrap_err().to_string().contains("in clear"));
        for (e, lo) in [
            ("http://127.0.0.1:1", true),
            ("http://localhost:1", true),
            ("http://[::1]:1/x", true),
            ("http://[::1]@fleet.example.com:80", false),
            ("http://127.0.0.1@fleet.example.com:80", false),
            ("http://10.1.1.1:1", false),
            ("https://example.com", false),
        ] {
            assert_eq!(is_loopback_endpoint(e), lo, "{e}");
        }
        s.endpoint = "https://127.0.0.1:1".into();
        s.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert!(matches!(s.connect(), Err(TransportError::Ca { .. })));
    }
}
