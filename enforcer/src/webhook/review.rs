//! One AdmissionReview in, one out: parse, decide (`core::kube::admission`, etcd through
//! [`Grants`]), answer. A body that is not an AdmissionReview gets HTTP 400 and says what is
//! wrong; a review of anything but CONNECT pods/exec or pods/attach is denied with the fix;
//! etcd not answering is HTTP 500 (the apiserver's `failurePolicy` decides).

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use time::OffsetDateTime;

use super::grants::{Decided, Grants};
use crate::core::kube::admission::grant_of;

/// An AdmissionReview of a CONNECT is a few KiB; anything near this is not one. Small, so
/// the bounded number of connections cannot take much memory with bodies being parsed.
const MAX_BODY: usize = 64 * 1024;
/// The whole body must have come this long after the headers: a client that sends headers
/// and then nothing must not hold a connection slot (the apiserver waits 5 s at most).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers reviews.
pub struct Reviewer {
    pub grants: Grants,
    /// `[kubernetes] max_exec_sessions_per_user` (0 = none).
    pub limit: u32,
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text + "\n")));
    *r.status_mut() = status;
    r
}

/// A denial the kubectl user reads: HTTP 403 Forbidden in the Status, as the apiserver's own
/// authorization refusals.
fn deny(response: AdmissionResponse, message: String) -> Response<Full<Bytes>> {
    let mut r = response.deny(message);
    r.result.code = 403;
    r.result.reason = "Forbidden".into();
    json(r.into_review())
}

fn json(review: AdmissionReview<DynamicObject>) -> Response<Full<Bytes>> {
    match serde_json::to_vec(&review) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().expect("static"));
            r
        }
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

impl Reviewer {
    pub async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST an AdmissionReview (admission.k8s.io/v1)".into(),
            );
        }
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body unreadable or over {MAX_BODY} bytes: {e}"),
                );
            }
            Err(_) => {
                return plain(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body did not come within {BODY_TIMEOUT:?}"),
                );
            }
        };
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("not an AdmissionReview (admission.k8s.io/v1): {e}"),
                );
            }
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "the AdmissionReview has no request (or is not admission.k8s.io/v1)".into(),
                );
            }
        };
        let response = AdmissionResponse::from(&request);
        let now = OffsetDateTime::now_utc();
        let grant = match grant_of(&request, now) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(uid = request.uid, error = %e, "review refused: not an exec or attach");
                return deny(response, e.to_string());
            }
        };
        if request.dry_run {
            // The ValidatingWebhookConfiguration says `sideEffects: NoneOnDryRun`: no grant.
            // (CONNECT is never a dry run today; nothing runs on one.)
            return json(response.into_review());
        }
        match self.grants.decide(&grant, self.limit, now).await {
            Ok(Decided::Allowed) => {
                tracing::info!(
                    user = grant.user, namespace = grant.namespace, pod = grant.pod,
                    container = ?grant.container, command = ?grant.command,
                    subresource = ?grant.subresource, "exec allowed; grant written"
                );
                json(response.into_review())
            }
            Ok(Decided::Denied(d)) => {
                tracing::info!(
                    user = grant.user,
                    namespace = grant.namespace,
                    pod = grant.pod,
                    reason = d.code(),
                    "exec refused"
                );
                deny(response, d.message(&grant.user))
            }
            Err(e) => {
                tracing::warn!(user = grant.user, error = %e, "cannot decide an exec: etcd did not answer");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "enforcer: etcd did not answer ({e}); the webhook's failurePolicy applies"
                    ),
                )
            }
        }
    }
}
