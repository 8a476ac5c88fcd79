//! `[webhook]`: `enforcerd webhook`, the apiserver's validating admission webhook for
//! `kubectl exec` and `kubectl attach` (it reads `[fleet]` for etcd and
//! `[kubernetes] max_exec_sessions_per_user`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Dur;

/// `[webhook]` — used only by `enforcerd webhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Address and port the HTTPS server listens on.
    pub listen: String,
    /// Serving certificate chain and its key (PEM). The apiserver checks the certificate
    /// against the `caBundle` of the ValidatingWebhookConfiguration and the Service's DNS name.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// CA (PEM) of the client certificate the apiserver presents to webhooks (its admission
    /// kubeconfig): when set, a connection without a certificate it issued is refused in the
    /// TLS handshake. Empty: anyone who reaches the port may post reviews.
    pub client_ca: PathBuf,
    /// How long a grant for an allowed exec lives in etcd (it counts against
    /// `[kubernetes] max_exec_sessions_per_user` meanwhile).
    pub grant_ttl: Dur,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            client_ca: PathBuf::new(),
            grant_ttl: Dur::secs(60),
        }
    }
}

impl WebhookConfig {
    /// Checks the section; `Err((key, message))` names the key at fault and what to do.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("webhook.{k}"), m.to_owned()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("listen", "must be ADDRESS:PORT, e.g. \"0.0.0.0:8443\"");
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return bad("tls_cert", "give both `tls_cert` and `tls_key`, or neither");
        }
        if self.grant_ttl.0.as_secs() < 2 {
            return bad("grant_ttl", "must be at least \"2s\"");
        }
        Ok(())
    }

    /// Whether `enforcerd webhook` can run with this config; the error says what is missing.
    pub fn servable(&self, fleet: &super::FleetConfig) -> Result<(), String> {
        if self.tls_cert.as_os_str().is_empty() {
            return Err(
                "[webhook] tls_cert and tls_key are not set: the apiserver calls \
                 webhooks over HTTPS only; give the serving certificate and key (PEM)"
                    .into(),
            );
        }
        if !fleet.enabled() {
            return Err(
                "[fleet] etcd_endpoints is empty: the webhook reads locks and keeps \
                 exec grants in the fleet's etcd; set it as on the nodes"
                    .into(),
            );
        }
        Ok(())
    }
}
