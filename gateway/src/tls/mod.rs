//! `wss://` on the public listener (rustls with the ring provider).
//!
//! Certificates are read once at start-up; a bad file stops the node with an
//! error naming the setting. The admin listener never speaks TLS: keep it on
//! an internal network. Connections are served by [`stream::TlsStream`],
//! which keeps no buffer while a connection is idle.

mod stream;

pub use stream::{Acceptor, TlsStream};

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::KeyError;

/// Builds the acceptor for `cert_file` (PEM chain, leaf first) and `key_file`
/// (PEM PKCS#8, PKCS#1 or SEC1 private key).
///
/// # Errors
/// A [`KeyError`] naming `tls.cert_file` or `tls.key_file`.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<Acceptor, KeyError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| KeyError {
            setting: "tls.cert_file",
            message: format!("{}: {e}", cert_file.display()),
        })?;
    if certs.is_empty() {
        return Err(KeyError {
            setting: "tls.cert_file",
            message: format!("{} holds no certificate", cert_file.display()),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| KeyError {
        setting: "tls.key_file",
        message: format!("{}: {e}", key_file.display()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KeyError {
            setting: "tls.cert_file",
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| KeyError {
            setting: "tls.key_file",
            message: format!("does not match the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Acceptor::new(Arc::new(config)))
}
