//! The TLS client configuration every outgoing connection shares (Redis
//! with `rediss://`, the `jwt.jwks_url` fetch): the ring provider and the
//! platform's roots (`rustls-native-certs` honours `SSL_CERT_FILE`), built
//! once per process.

use std::sync::{Arc, OnceLock};

/// The shared client configuration.
///
/// # Errors
/// When no trusted root certificate can be found, or the provider refuses
/// the default protocol versions (it does not).
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no trusted root certificates (set SSL_CERT_FILE)".to_owned());
            }
            client_config_with(roots).map(Arc::new)
        })
        .clone()
}

/// A client configuration trusting `roots` only, on the ring provider.
///
/// # Errors
/// When the provider refuses the default protocol versions (it does not).
pub fn client_config_with(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
