//! Recordings as the store has them, for `enforcerctl recordings --store` and for `play` of a
//! recording that is not (or no longer) on this node. Runs on the control connection's task,
//! never on the state actor.

use enforcer_proto::RecordingInfo;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::client::{ObjectHead, Store, StoreError};
use crate::core::upload::{self, KeyParts};

/// Objects listed with `--store` at most (each needs a HEAD for its metadata).
pub const LIST_MAX: usize = 10_000;

/// One stored recording: its key, what the key says and its metadata.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: String,
    pub parts: KeyParts,
    pub head: ObjectHead,
}

impl StoredObject {
    /// The owner's uid as the recording node knew it.
    pub fn uid(&self) -> Option<u32> {
        self.head.metadata.get("uid").and_then(|u| u.parse().ok())
    }

    fn started(&self) -> Option<OffsetDateTime> {
        let s = self.head.metadata.get("start")?;
        OffsetDateTime::parse(s, &Rfc3339).ok()
    }

    /// As `recordings` lists it (`path` is the object's URL).
    pub fn info(&self, bucket: &str) -> RecordingInfo {
        let m = &self.head.metadata;
        RecordingInfo {
            id: self.parts.session_id,
            conn_id: m.get("conn-id").and_then(|c| c.parse().ok()).unwrap_or(0),
            user: m
                .get("user")
                .cloned()
                .unwrap_or_else(|| self.parts.user.clone()),
            uid: self.uid(),
            started: m.get("start").cloned().unwrap_or_default(),
            duration_secs: None,
            live: false,
            kind: m.get("kind").cloned().unwrap_or_default(),
            command: None,
            tty: None,
            client: None,
            size_bytes: self.head.size.max(0) as u64,
            path: format!("s3://{bucket}/{}", self.key),
            node: Some(self.parts.node.clone()),
        }
    }
}

/// Stored recordings of every node that `keep` accepts (given the object's uid), filtered by
/// user and start, oldest first.
pub async fn list(
    store: &Store,
    user: Option<&str>,
    since: Option<OffsetDateTime>,
    keep: impl Fn(Option<u32>) -> bool,
) -> Result<Vec<RecordingInfo>, StoreError> {
    // Keys carry the day of the start (UTC): skip whole days before `since` without a HEAD.
    let since_day = since.map(|t| t.date().previous_day().unwrap_or(t.date()).to_string());
    let mut found = Vec::new();
    for (key, _) in store.list().await? {
        let Some(parts) = upload::parse_key(&store.prefix, &key) else {
            continue;
        };
        if user.is_some_and(|u| parts.user != u)
            || since_day
                .as_ref()
                .is_some_and(|d| parts.date.as_str() < d.as_str())
        {
            continue;
        }
        if found.len() >= LIST_MAX {
            break;
        }
        let head = store.head(&key).await?;
        let o = StoredObject { key, parts, head };
        if !keep(o.uid()) || since.is_some_and(|t| o.started().is_none_or(|s| s < t)) {
            continue;
        }
        found.push(o);
    }
    found.sort_by(|a, b| {
        let sa = a.head.metadata.get("start");
        let sb = b.head.metadata.get("start");
        sa.cmp(&sb)
            .then(a.parts.session_id.cmp(&b.parts.session_id))
    });
    Ok(found.iter().map(|o| o.info(&store.bucket)).collect())
}

/// Why a stored recording could not be found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no recording of session {0} here or in the store; see `enforcerctl recordings --store`"
    )]
    NotFound(u64),
    #[error("session {id} was recorded on several nodes ({nodes}); say which with --node")]
    Ambiguous { id: u64, nodes: String },
}

/// The stored recording of session `id` (of `node`, when given).
pub async fn find(store: &Store, id: u64, node: Option<&str>) -> Result<StoredObject, FindError> {
    let mut matches: Vec<(String, KeyParts)> = store
        .list()
        .await?
        .into_iter()
        .filter_map(|(key, _)| upload::parse_key(&store.prefix, &key).map(|p| (key, p)))
        .filter(|(_, p)| p.session_id == id && node.is_none_or(|n| p.node == n))
        .collect();
    match matches.len() {
        0 => Err(FindError::NotFound(id)),
        1 => {
            let (key, parts) = matches.remove(0);
            let head = store.head(&key).await?;
            Ok(StoredObject { key, parts, head })
        }
        _ => Err(FindError::Ambiguous {
            id,
            nodes: matches
                .iter()
                .map(|(_, p)| p.node.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
