//! The Kubernetes user behind an exec recording, written into its header once the fleet
//! found out (see `recording::header`). Until then the recording is not uploaded, so the
//! stored copy has the final header too.

use std::time::Instant;

use super::{Recorder, add};
use crate::recording::{
    header::{self, Held},
    store::Stored,
};

impl Recorder {
    /// Keeps what the header of a just created recording needs to be rewritten.
    pub(super) fn hold_header(&mut self, id: u64, stored: &Stored) {
        self.held.insert(
            id,
            Held {
                path: stored.path.clone(),
                header: stored.header.clone(),
                line_len: stored.size as usize,
                since: Instant::now(),
            },
        );
    }

    /// Writes the user and groups (`who`) into the header of session `id`'s recording; either
    /// way the header is final from now on.
    pub(super) fn identified(&mut self, id: u64, who: Option<(String, Vec<String>)>) {
        let Some(held) = self.held.remove(&id) else {
            return;
        };
        let mut settled = None;
        if let Some((user, groups)) = who {
            match header::with_user(&held.header, &user, &groups, held.line_len) {
                Some((h, line)) => match header::rewrite(&held.path, &line) {
                    Ok(()) => settled = Some(h),
                    Err(e) => {
                        add(&self.stats.write_errors, 1);
                        tracing::error!(session = id, path = %held.path.display(), error = %e, "cannot write the Kubernetes user into the recording's header; it is in the audit log");
                    }
                },
                None => {
                    tracing::warn!(session = id, kube_user = %user, "the Kubernetes user does not fit in the recording's header; it is in the audit log")
                }
            }
        }
        self.index.header_settled(id, settled);
    }

    /// Headers whose answer never came are final as they are.
    pub(super) fn expire_held_headers(&mut self) {
        let late: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.since.elapsed() > header::HOLD_MAX)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            tracing::warn!(
                session = id,
                "no answer about the exec's Kubernetes user; its recording stays without"
            );
            self.identified(id, None);
        }
    }
}
