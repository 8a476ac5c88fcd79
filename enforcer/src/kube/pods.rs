//! Which pods containerd runs on this node, for reports that concern only a pod's own node
//! (`fleet::lapsed`): one listing of the CRI's pod sandboxes over one kept connection, asked
//! again only when the last listing cannot answer.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use containerd_client::{
    services::v1::{ListContainersRequest, containers_client::ContainersClient},
    tonic::transport::Channel,
};
use time::OffsetDateTime;

use super::containerd::{ContainerdError, call, namespaced};
use crate::core::kube::exec::{LABEL_POD_NAME, LABEL_POD_NAMESPACE};

/// The label containerd's CRI puts on a pod's sandbox container.
const LABEL_KIND: &str = "io.cri-containerd.kind";
/// The longest a listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// Listings are at least this far apart, whatever is asked.
const LIST_EVERY: Duration = Duration::from_secs(1);
/// A listing made this long after a pod was known to run (somewhere) answers for it: a pod
/// not in it does not run here. Covers clock skew between this node and the one that knew.
const SKEW: Duration = Duration::from_secs(5);

/// The pods (namespace, name) containerd at a socket runs, as last listed.
pub struct PodsHere {
    socket: PathBuf,
    channel: Option<Channel>,
    pods: HashSet<(String, String)>,
    /// When the set was listed (wall clock, to compare with when a pod was known to run).
    listed: Option<OffsetDateTime>,
    /// When a listing was last tried, worked or not (the rate limit).
    tried: Option<Instant>,
}

impl PodsHere {
    pub fn new(socket: PathBuf) -> Self {
        PodsHere {
            socket,
            channel: None,
            pods: HashSet::new(),
            listed: None,
            tried: None,
        }
    }

    /// Whether pod `namespace/pod`, known to run somewhere at `known_at`, runs here. Lists
    /// again when the last listing is older than `known_at` (a pod seen here may have moved
    /// since), at most once a second (within it, the last listing answers).
    pub async fn has(
        &mut self,
        namespace: &str,
        pod: &str,
        known_at: OffsetDateTime,
    ) -> Result<bool, ContainerdError> {
        let key = (namespace.to_owned(), pod.to_owned());
        if !must_list(self.listed, self.tried, known_at, Instant::now()) {
            return Ok(self.pods.contains(&key));
        }
        self.tried = Some(Instant::now());
        let listing = tokio::time::timeout(LIST_TIMEOUT, self.list()).await;
        match listing {
            Ok(Ok(pods)) => {
                // Only a listing that worked answers later questions.
                self.pods = pods;
                self.listed = Some(OffsetDateTime::now_utc());
            }
            Ok(Err(e)) => {
                self.channel = None;
                return Err(e);
            }
            Err(_) => {
                self.channel = None;
                return Err(ContainerdError::Timeout {
                    call: "Containers.List",
                    secs: LIST_TIMEOUT.as_secs(),
                });
            }
        }
        Ok(self.pods.contains(&key))
    }

    async fn list(&mut self) -> Result<HashSet<(String, String)>, ContainerdError> {
        let channel = match &self.channel {
            Some(c) => c.clone(),
            None => {
                let c = containerd_client::connect(&self.socket)
                    .await
                    .map_err(|source| ContainerdError::Connect {
                        socket: self.socket.display().to_string(),
                        source,
                    })?;
                self.channel = Some(c.clone());
                c
            }
        };
        let mut stream = ContainersClient::new(channel)
            .list_stream(namespaced(ListContainersRequest {
                filters: vec![format!("labels.\"{LABEL_KIND}\"==sandbox")],
            }))
            .await
            .map_err(call("Containers.ListStream"))?
            .into_inner();
        let mut pods = HashSet::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(call("Containers.ListStream"))?
        {
            let Some(c) = m.container else { continue };
            if let (Some(ns), Some(name)) = (
                c.labels.get(LABEL_POD_NAMESPACE),
                c.labels.get(LABEL_POD_NAME),
            ) {
                pods.insert((ns.clone(), name.clone()));
            }
        }
        Ok(pods)
    }
}

/// Whether asking about a pod known to run (somewhere) at `known_at` needs a new listing,
/// the last good one made at `listed` and the last tried at `tried`: not when that listing is
/// recent enough to answer, nor within [`LIST_EVERY`] of the last try.
fn must_list(
    listed: Option<OffsetDateTime>,
    tried: Option<Instant>,
    known_at: OffsetDateTime,
    now: Instant,
) -> bool {
    let answers = listed.is_some_and(|wall| wall >= known_at + SKEW);
    let resting = tried.is_some_and(|t| now.duration_since(t) < LIST_EVERY);
    !answers && !resting
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_answers_for_pods_known_well_before_it_and_is_not_repeated_at_once() {
        let t0 = OffsetDateTime::now_utc();
        let m0 = Instant::now();
        assert!(must_list(None, None, t0, m0));
        // Listed 10 s after the pod was known to run: it answers, here or not.
        let listed = Some(t0 + Duration::from_secs(10));
        assert!(!must_list(
            listed,
            Some(m0),
            t0,
            m0 + Duration::from_secs(30)
        ));
        // Listed before the pod was known (or within the skew): asked again, even for a pod
        // it had (it may have moved)...
        let listed = Some(t0 + Duration::from_secs(2));
        assert!(must_list(listed, Some(m0), t0, m0 + Duration::from_secs(2)));
        // ...but never twice within a second, and a failed try counts.
        assert!(!must_list(
            listed,
            Some(m0),
            t0,
            m0 + Duration::from_millis(500)
        ));
        assert!(!must_list(
            None,
            Some(m0),
            t0,
            m0 + Duration::from_millis(500)
        ));
        assert!(must_list(None, Some(m0), t0, m0 + Duration::from_secs(1)));
    }
}
