//! What the kernel keeps about a connection once it has ended: its channels' activity, its
//! forwards' sockets and their count.

use aya::maps::{HashMap, MapData};
use enforcer_common::io::{Activity, IoKey};

use super::Actor;

/// Removes every channel of connection `conn_id` from an activity map.
fn remove_conn_keys(map: &mut HashMap<MapData, IoKey, Activity>, conn_id: u64) {
    let keys: Vec<IoKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.conn_id == conn_id)
        .collect();
    for k in keys {
        let _ = map.remove(&k);
    }
}

impl Actor {
    pub(super) fn forget(&mut self, conn_id: u64) {
        remove_conn_keys(&mut self.activity, conn_id);
        remove_conn_keys(&mut self.fwd_activity, conn_id);
        // Its forwards' sockets died with sshd's process, which closed none of them.
        let sockets: Vec<u64> = self
            .forwards
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, conn)| *conn == conn_id)
            .map(|(ino, _)| ino)
            .collect();
        for ino in sockets {
            let _ = self.forwards.remove(&ino);
        }
        let _ = self.fwd_count.remove(&conn_id);
    }
}
