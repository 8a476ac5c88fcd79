//! The recorder's side of file-transfer sessions: their items pass through
//! [`TransferSession`] before (or instead of) reaching the recording.

use super::{Recorder, add};
use crate::recording::{
    file::Item,
    transfer::{HOLD_TTL, Out},
};

impl Recorder {
    /// The item to write into session `id`'s recording, if any is left once a transfer took
    /// its share.
    pub(super) fn through_transfer<'a>(&mut self, id: u64, item: Item<'a>) -> Option<Item<'a>> {
        let Some(t) = self.transfers.get_mut(&id) else {
            return Some(item);
        };
        match t.take(item, &self.audit) {
            Ok(item) => item,
            Err(held) => {
                // Too much before the program ran: not a transfer to wait for.
                self.transfers.remove(&id);
                self.apply(id, held);
                None
            }
        }
    }

    pub(super) fn transfer_started(&mut self, id: u64, boot_ns: u64) {
        if let Some(t) = self.transfers.get_mut(&id) {
            let out = t.started(boot_ns, &self.audit);
            self.apply(id, out);
        }
    }

    pub(super) fn transfer_aborted(&mut self, id: u64, since_ns: u64, program_ended: bool) {
        if let Some(t) = self.transfers.remove(&id) {
            let out = t.abort(since_ns, program_ended, &self.audit);
            self.apply(id, out);
        }
    }

    /// The session ended: its open files are audited, bytes still held recorded.
    pub(super) fn finish_transfer(&mut self, id: u64) {
        if let Some(t) = self.transfers.remove(&id) {
            let out = t.finish(&self.audit);
            self.apply(id, out);
        }
    }

    /// Sessions held past [`HOLD_TTL`] without word from the state actor: recorded in full.
    pub(super) fn expire_held_transfers(&mut self) {
        let stale: Vec<u64> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.held() && t.since.elapsed() > HOLD_TTL)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.transfer_aborted(id, 0, false);
        }
    }

    fn apply(&mut self, id: u64, out: Vec<Out>) {
        let Some(r) = self.recordings.get_mut(&id) else {
            return;
        };
        for o in out {
            match o {
                Out::Item(item) => {
                    if let Item::Lost { bytes } = &item {
                        add(&self.stats.bytes_lost, *bytes);
                    }
                    r.write(item, &self.stats);
                }
                Out::Marker(boot_ns, text) => r.marker(boot_ns, &text, &self.stats),
            }
        }
    }
}
