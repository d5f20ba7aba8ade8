//! TLS on the TCP and WebSocket listeners, with rustls through tokio-rustls.
//!
//! The whole dependency tree uses one rustls crypto provider, *ring*, chosen explicitly here
//! (no process-wide default is installed), so the server and the client library cannot
//! disagree about which provider is active. Without the `tls` feature a configured
//! certificate is a start-up error, never a silent fall-back to plain TCP.

use std::path::PathBuf;
#[cfg(feature = "tls")]
use std::sync::Arc;

use serde::Deserialize;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::pki_types::pem::PemObject;
#[cfg(feature = "tls")]
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
#[cfg(feature = "tls")]
use tokio_rustls::rustls::{self, RootCertStore};
#[cfg(feature = "tls")]
pub(crate) use tokio_rustls::TlsAcceptor;
#[cfg(feature = "tls")]
use tokio_rustls::TlsConnector;

use crate::config::ConfigError;

/// `[tls]` settings: both set serves TLS, neither serves plain TCP.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Without the `tls` feature there is no acceptor to hold.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
pub(crate) enum TlsAcceptor {}

#[cfg(feature = "tls")]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

impl TlsConfig {
    /// The acceptor this config describes, or `None` for plain TCP.
    #[cfg(not(feature = "tls"))]
    pub(crate) fn acceptor(&self) -> Result<Option<TlsAcceptor>, ConfigError> {
        if self.cert.is_none() && self.key.is_none() {
            return Ok(None);
        }
        Err(invalid(
            "tls.cert",
            "heartwire was built without the `tls` feature".into(),
        ))
    }

    /// The acceptor this config describes, or `None` for plain TCP.
    #[cfg(feature = "tls")]
    pub(crate) fn acceptor(&self) -> Result<Option<TlsAcceptor>, ConfigError> {
        Ok(self
            .server_config()?
            .map(|config| TlsAcceptor::from(Arc::new(config))))
    }

    /// The rustls server configuration this config describes, or `None` without TLS: the
    /// same for the TCP listener, the WebSocket listener and the HTTP API (`http.tls`).
    #[cfg(feature = "tls")]
    pub(crate) fn server_config(&self) -> Result<Option<rustls::ServerConfig>, ConfigError> {
        let (cert, key) = match (&self.cert, &self.key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(invalid("tls.key", "tls.cert is set without tls.key".into()))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.cert",
                    "tls.key is set without tls.cert".into(),
                ))
            }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| invalid("tls.cert", format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(invalid(
                "tls.cert",
                format!("{}: no certificate found", cert.display()),
            ));
        }
        let private_key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| invalid("tls.key", format!("{}: {e}", key.display())))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls.cert", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| invalid("tls.key", format!("certificate and key do not fit: {e}")))?;
        Ok(Some(config))
    }
}

/// A TLS connector trusting the CA certificates in `ca_pem` (a PEM file), for clients of a
/// server with a private CA.
#[cfg(feature = "tls")]
pub fn connector_with_ca(ca_pem: &std::path::Path) -> Result<TlsConnector, ConfigError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_pem)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("tls_ca", format!("{}: {e}", ca_pem.display())))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| invalid("tls_ca", format!("{}: {e}", ca_pem.display())))?;
    }
    if roots.is_empty() {
        return Err(invalid(
            "tls_ca",
            format!("{}: no certificate found", ca_pem.display()),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls_ca", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
