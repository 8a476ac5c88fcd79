//! Which containerd started a process: its containerd shim names containerd's socket.

use std::{os::unix::fs::MetadataExt, path::Path};

/// Ancestors looked at: an exec's command is runc's child until runc exits, then the shim's.
const ANCESTORS: usize = 3;

/// Whether the nearest `containerd-shim*` ancestor of `pid` serves the containerd at `socket`
/// (its `-address`, resolved in the shim's own mount namespace, is the same socket file:
/// enforcerd may see it under another path, e.g. a host mount). `None`: no shim above it.
pub fn started_by(pid: u32, socket: &Path) -> Option<bool> {
    let ours = std::fs::metadata(socket).ok().map(|m| (m.dev(), m.ino()));
    let mut p = pid;
    for _ in 0..ANCESTORS {
        p = ppid(p)?;
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_shim = args.first().is_some_and(|a| {
            a.rsplit(|&b| b == b'/')
                .next()
                .is_some_and(|n| n.starts_with(b"containerd-shim"))
        });
        if !is_shim {
            continue;
        }
        let address = args
            .windows(2)
            .find(|w| w[0] == b"-address" || w[0] == b"--address")
            .map(|w| String::from_utf8_lossy(w[1]).into_owned())?;
        let theirs = std::fs::metadata(format!("/proc/{p}/root{address}"))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        return Some(ours.is_some() && ours == theirs);
    }
    None
}

/// The parent's pid, from /proc/PID/stat (field 4, counted after the command's ')').
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&c| c == b')')?;
    let field = stat[close + 1..]
        .split(|&c| c == b' ')
        .filter(|f| !f.is_empty())
        .nth(1)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}
