//! The webhook's serving certificate (rustls with ring, as the rest of enforcer).

use std::{path::Path, sync::Arc};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

use super::WebhookError;

/// An acceptor for the PEM chain in `cert` and its key in `key`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, WebhookError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|error| WebhookError::TlsFile {
            path: p.to_owned(),
            error,
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(WebhookError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| WebhookError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
