//! Requests answered from `[recording.store]` by the connection task (the state actor never
//! waits on the network): `recordings --store` and `play` of a recording this node does not
//! have. Access rules are those of local recordings: root and auditors all, users their own
//! (by the uid the recording node stored with the object).

use enforcer_proto::{ErrorKind, ErrorReply, Reply, Response};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::net::UnixStream;

use super::{
    conn::{Ctx, send, write_budget},
    limits::ControlSettings,
    peer::Peer,
};
use crate::store::catalog::{self, FindError};

fn no_store() -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NotFound,
        "no recording store is configured here (recording.store.url is empty)",
    )
}

/// `recordings --store`.
pub(super) async fn list(
    ctx: &Ctx,
    peer: &Peer,
    user: Option<String>,
    since: Option<String>,
) -> Response {
    let store = ctx.store.as_ref().ok_or_else(no_store)?;
    let since = since
        .map(|s| {
            OffsetDateTime::parse(&s, &Rfc3339).map_err(|_| {
                ErrorReply::new(
                    ErrorKind::BadRequest,
                    format!("--since {s:?}: use an RFC 3339 time like 2026-11-23T10:00:00Z"),
                )
            })
        })
        .transpose()?;
    catalog::list(store, user.as_deref(), since, |uid| peer.may_see(uid))
        .await
        .map(Reply::Recordings)
        .map_err(|e| {
            ErrorReply::new(
                ErrorKind::Internal,
                format!("{e}; see `enforcerctl status` (STORE)"),
            )
        })
}

/// `play ID` from the store.
pub(super) async fn play(
    stream: &mut UnixStream,
    ctx: &Ctx,
    settings: &ControlSettings,
    peer: &Peer,
    id: u64,
    node: Option<String>,
) -> bool {
    let resp = match open(ctx, peer, id, node.as_deref()).await {
        Ok(body) => {
            return super::stream::send_object(stream, body, write_budget(settings, peer.uid))
                .await;
        }
        Err(e) => Err(e),
    };
    send(stream, settings, peer.uid, &resp).await
}

async fn open(
    ctx: &Ctx,
    peer: &Peer,
    id: u64,
    node: Option<&str>,
) -> Result<aws_sdk_s3::primitives::ByteStream, ErrorReply> {
    let store = ctx.store.as_ref().ok_or_else(no_store)?;
    let found = catalog::find(store, id, node).await.map_err(|e| {
        let kind = match e {
            FindError::NotFound(_) => ErrorKind::NotFound,
            FindError::Ambiguous { .. } => ErrorKind::BadRequest,
            FindError::Store(_) => ErrorKind::Internal,
        };
        ErrorReply::new(kind, e.to_string())
    })?;
    if !peer.may_see(found.uid()) {
        let denied = ErrorReply::new(
            ErrorKind::PermissionDenied,
            "permission denied: this recording belongs to another user",
        );
        let req = enforcer_proto::Request::Play {
            id,
            node: node.map(str::to_owned),
        };
        return Err(ctx.state.denied(req, peer.clone(), denied).await);
    }
    store
        .get(&found.key)
        .await
        .map_err(|e| ErrorReply::new(ErrorKind::Internal, e.to_string()))
}
