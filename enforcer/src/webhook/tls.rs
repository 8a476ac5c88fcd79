//! The webhook's serving certificate (rustls with ring, as the rest of enforcer), and the
//! apiserver's client certificate it requires when `[webhook] client_ca` is set: without it,
//! anyone who reaches the port could plant grants.

use std::{path::Path, sync::Arc};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

use super::WebhookError;

fn read(p: &Path) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(p).map_err(|error| WebhookError::TlsFile {
        path: p.to_owned(),
        error,
    })
}

/// The certificates of the PEM file `p` (at least one).
fn certificates(p: &Path) -> Result<Vec<CertificateDer<'static>>, WebhookError> {
    let all = CertificateDer::pem_slice_iter(&read(p)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", p.display())))?;
    if all.is_empty() {
        return Err(WebhookError::Tls(format!(
            "{} holds no certificate",
            p.display()
        )));
    }
    Ok(all)
}

/// An acceptor for the PEM chain in `cert` and its key in `key`; with `client_ca`, clients
/// must present a certificate it issued.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, WebhookError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca)? {
                roots
                    .add(c)
                    .map_err(|e| WebhookError::Tls(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| WebhookError::Tls(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| WebhookError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
