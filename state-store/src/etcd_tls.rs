//! TLS for etcd connections: the CA that signed etcd's server certificate
//! and, when etcd requires client certificates (`--client-cert-auth`, as
//! kubeadm's and k3s's etcd do), a client certificate and key, all PEM
//! files. Built on etcd-client's `tls-ring` (rustls with ring).

use std::path::{Path, PathBuf};

/// Where the TLS files of an etcd connection are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate (PEM) that signed etcd's server certificate.
    pub ca_file: PathBuf,
    /// The client certificate and its private key (PEM), when etcd
    /// requires client certificates.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A TLS file that cannot be used: which setting (`ca_file`, `cert_file`,
/// `key_file`), the path, and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {}: {message}", path.display())]
pub struct TlsFileError {
    /// The setting that names the file.
    pub setting: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be used.
    pub message: String,
}

fn read_pem(setting: &'static str, path: &Path, expect: &[&str]) -> Result<Vec<u8>, TlsFileError> {
    let err = |message: String| TlsFileError { setting, path: path.to_owned(), message };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    if !expect.iter().any(|kind| text.contains(&format!("-----BEGIN {kind}-----"))) {
        let forms = expect.iter().map(|k| format!("\"-----BEGIN {k}-----\"")).collect::<Vec<_>>().join(" or ");
        return Err(err(format!("not a PEM file of the expected kind: expected a block {forms}")));
    }
    Ok(bytes)
}

impl EtcdTls {
    /// TLS with `ca_file` only (etcd does not ask for a client certificate).
    #[must_use]
    pub fn with_ca(ca_file: impl Into<PathBuf>) -> Self {
        EtcdTls { ca_file: ca_file.into(), identity: None }
    }

    /// Adds a client certificate and key.
    #[must_use]
    pub fn with_identity(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert_file.into(), key_file.into()));
        self
    }

    /// Reads the files into etcd-client's TLS options. The error names the
    /// setting and the file (unreadable, or not PEM of the expected kind).
    pub fn options(&self) -> Result<etcd_client::TlsOptions, TlsFileError> {
        let ca = read_pem("ca_file", &self.ca_file, &["CERTIFICATE"])?;
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
        if let Some((cert_file, key_file)) = &self.identity {
            let cert = read_pem("cert_file", cert_file, &["CERTIFICATE"])?;
            let key = read_pem("key_file", key_file, &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"])?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        Ok(tls)
    }

    /// Connect options with these TLS settings (and `connect_timeout`).
    pub fn connect_options(
        &self,
        connect_timeout: std::time::Duration,
    ) -> Result<etcd_client::ConnectOptions, TlsFileError> {
        Ok(etcd_client::ConnectOptions::new().with_connect_timeout(connect_timeout).with_tls(self.options()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_non_pem_files_name_the_setting() {
        let dir = std::env::temp_dir().join(format!("etcd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = EtcdTls::with_ca(dir.join("absent.pem")).options().unwrap_err();
        assert_eq!(missing.setting, "ca_file");
        assert!(missing.to_string().starts_with("ca_file "), "{missing}");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let json = dir.join("key.json");
        std::fs::write(&json, "{}").unwrap();
        let bad_key = EtcdTls::with_ca(&ca).with_identity(&ca, &json).options().unwrap_err();
        assert_eq!(bad_key.setting, "key_file");
        assert!(bad_key.message.contains("PRIVATE KEY"), "{bad_key}");
        let bad_cert = EtcdTls::with_ca(&ca).with_identity(&json, &json).options().unwrap_err();
        assert_eq!(bad_cert.setting, "cert_file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
