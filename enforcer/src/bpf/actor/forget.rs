//! What the kernel keeps about a connection once it has ended: its channels' activity, its
//! forwards' sockets and their count.

use enforcer_common::io::{IO_FORWARD, IoKey};

use super::{Actor, batch};

impl Actor {
    /// Drops activity entries of ended connections (session channels and forwards).
    pub(super) fn forget_activity(&mut self, keys: Vec<IoKey>) {
        for k in keys {
            let map = if k.object & IO_FORWARD != 0 {
                &mut self.fwd_activity
            } else {
                &mut self.activity
            };
            let _ = map.remove(&k);
        }
    }

    /// Drops a released connection's forward count and the sockets of forwards it still had:
    /// they died with sshd's process, which closed none of them.
    pub(super) fn forget_forwards(&mut self, conn_id: u64) {
        let _ = self.fwd_count.remove(&conn_id);
        let Ok(all) = batch::entries(&self.forwards) else {
            return;
        };
        for (ino, _) in all.into_iter().filter(|(_, conn)| *conn == conn_id) {
            let _ = self.forwards.remove(&ino);
        }
    }
}
