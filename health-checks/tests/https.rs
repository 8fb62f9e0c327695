//! HTTPS probes against a local TLS server with certificates made by the
//! test (rcgen): a custom CA, expected statuses and a body match; and the
//! library never installs a process-wide rustls crypto provider.
#![cfg(feature = "http")]

use std::sync::Arc;
use std::time::Duration;

use health_checks::*;
use health_core::CheckOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Host;

impl NodeIdentity for Host {
    fn node_name(&self) -> &str {
        "node-1"
    }
    fn internal_ip(&self) -> Option<&str> {
        Some("127.0.0.1")
    }
}

/// A CA (PEM) and a server certificate and key for 127.0.0.1 signed by it.
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "probe test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// Serves HTTPS on 127.0.0.1:0: every request gets `status` and `body`.
async fn serve(cert_pem: &str, key_pem: &str, status: &'static str, body: &'static str) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    // The provider is handed over, not installed: the process has none.
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn config(port: u16, ca: Option<&std::path::Path>) -> HttpProbeConfig {
    let mut c = HttpProbeConfig::new("Sidecar", format!("https://{{internal_ip}}:{port}/v0/healthz"));
    c.timeout = Duration::from_secs(5);
    c.connect_timeout = Duration::from_secs(5);
    c.ca_file = ca.map(std::path::Path::to_path_buf);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probes_with_a_custom_ca_expected_statuses_and_a_body_match() {
    let dir = std::env::temp_dir().join(format!("https-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_pem, cert, key) = pki();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let ready = serve(&cert, &key, "200 OK", "{\"status\":\"ready\"}").await;
    let teapot = serve(&cert, &key, "418 I'm a teapot", "short and stout").await;

    // Trusted through the CA file: passes.
    let p = HttpProbe::new(config(ready, Some(&ca))).unwrap();
    assert_eq!(p.probe(&Host).await.unwrap(), CheckOutcome::Pass);

    // Without it the server's certificate is not trusted: never a pass, and
    // the detail says why.
    let p = HttpProbe::new(config(ready, None)).unwrap();
    let out = p.probe(&Host).await.unwrap();
    assert!(out.is_fail(), "{out:?}");
    let CheckOutcome::Fail { detail: Some(detail), .. } = &out else { panic!("{out:?}") };
    assert!(detail.contains("certificate") || detail.contains("UnknownIssuer"), "{detail}");

    // Expected statuses: 418 passes when asked for, 200 then fails.
    let mut c = config(teapot, Some(&ca));
    c.expect_status = vec![418];
    assert_eq!(HttpProbe::new(c.clone()).unwrap().probe(&Host).await.unwrap(), CheckOutcome::Pass);
    c.url = format!("https://{{internal_ip}}:{ready}/v0/healthz");
    assert_eq!(HttpProbe::new(c).unwrap().probe(&Host).await.unwrap().reason(), Some("HTTPStatusNotOK"));

    // A body match.
    let mut c = config(ready, Some(&ca));
    c.body_contains = Some("\"ready\"".into());
    assert_eq!(HttpProbe::new(c.clone()).unwrap().probe(&Host).await.unwrap(), CheckOutcome::Pass);
    c.body_contains = Some("\"serving\"".into());
    let out = HttpProbe::new(c).unwrap().probe(&Host).await.unwrap();
    assert_eq!(out.reason(), Some("HTTPBodyMismatch"), "{out:?}");

    // Nothing above installed a process-wide provider.
    assert!(rustls::crypto::CryptoProvider::get_default().is_none(), "a library installed a global crypto provider");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_https_settings_name_the_field() {
    let dir = std::env::temp_dir().join(format!("https-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    type Set<'a> = Box<dyn Fn(&mut HttpProbeConfig) + 'a>;
    let cases: [(Set<'_>, &str); 4] = [
        (Box::new(|c| c.ca_file = Some("/nonexistent/ca.pem".into())), "ca_file: cannot read /nonexistent/ca.pem"),
        (Box::new(|c| c.ca_file = Some(not_pem.clone())), "no PEM certificate"),
        (Box::new(|c| c.expect_status = vec![200, 999]), "expect_status: statuses are numbers from 100 to 599"),
        (Box::new(|c| c.body_contains = Some(String::new())), "body_contains: must not be empty"),
    ];
    for (set, want) in cases {
        let mut c = config(443, None);
        set(&mut c);
        let e = HttpProbe::new(c).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
    let e = validate_template("ftp://x/").unwrap_err().to_string();
    assert!(e.contains("must start with http:// or https://"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
