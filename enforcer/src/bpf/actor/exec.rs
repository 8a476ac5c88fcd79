//! The channels of `kubectl exec` sessions the shim probes record (`ENF_EXEC_CHANS`).

use super::{Actor, batch, map_err};
use crate::bpf::BpfError;

impl Actor {
    /// Files `objects` under exec session `conn_id`. An object another (ended) session left
    /// behind — a pty index reused in the same container — is taken over. A claimed pty's
    /// unclaimed-bytes allowance starts again for whoever gets it next.
    pub(super) fn set_exec_channels(
        &mut self,
        conn_id: u64,
        objects: &[u64],
    ) -> Result<(), BpfError> {
        for o in objects {
            self.exec_channels
                .insert(*o, conn_id, 0)
                .map_err(map_err("ENF_EXEC_CHANS"))?;
            let _ = self.unclaimed.remove(o);
        }
        Ok(())
    }

    /// Removes `objects`; with `conn_id`, only those still filed under it.
    pub(super) fn remove_exec_channels(&mut self, conn_id: Option<u64>, objects: &[u64]) {
        for o in objects {
            let owned = conn_id.is_none_or(|c| self.exec_channels.get(o, 0).is_ok_and(|v| v == c));
            if owned {
                let _ = self.exec_channels.remove(o);
            }
        }
    }

    pub(super) fn retain_exec_channels(&mut self, keep: &[u64]) -> Result<usize, BpfError> {
        let stale: Vec<u64> = batch::entries(&self.exec_channels)
            .map_err(map_err("ENF_EXEC_CHANS"))?
            .into_iter()
            .map(|(o, _)| o)
            .filter(|o| !keep.contains(o))
            .collect();
        self.remove_exec_channels(None, &stale);
        Ok(stale.len())
    }
}
