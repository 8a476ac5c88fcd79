//! Driving `enf-hostile` (tests/src/bin) as an unprivileged user, and what the daemon holds
//! meanwhile (fds, RSS).

use std::{
    path::Path,
    process::{Child, Stdio},
};

use crate::TestUser;

/// Starts `exe` (the `enf-hostile` binary: pass `env!("CARGO_BIN_EXE_enf-hostile")`) as `user`
/// against `socket`: COUNT connections in MODE for SECS seconds.
pub fn spawn(
    exe: &str,
    user: &TestUser,
    socket: &Path,
    mode: &str,
    count: usize,
    secs: f64,
) -> Child {
    user.command(Path::new(exe))
        .arg(socket)
        .args([mode, &count.to_string(), &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn enf-hostile")
}

/// Waits for a hostile peer and returns its final report.
pub fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("enf-hostile");
    assert!(out.status.success(), "enf-hostile failed: {:?}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "enf-hostile report {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Open fds of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Writes `n` small recordings of `user` (uid `uid`) under `dir` as the recorder lays them
/// out, session ids from `first_id`.
pub fn fake_recordings(dir: &Path, user: &str, uid: u32, first_id: u64, n: u64) {
    use enforcer::recording::cast::{Header, Meta, write_event};
    let day = dir.join("2026-11-23").join(user);
    std::fs::create_dir_all(&day).unwrap();
    for id in first_id..first_id + n {
        let header = Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 1_795_000_000 + id as i64,
            command: None,
            title: None,
            env: Default::default(),
            enforcer: Meta {
                session_id: id,
                conn_id: id,
                user: user.into(),
                uid: Some(uid),
                kind: "shell".into(),
                tty: Some("pts/1".into()),
                client: Some("127.0.0.1".into()),
                started: "2026-11-23T10:00:00Z".into(),
                kube: None,
            },
        };
        let mut body = serde_json::to_vec(&header).unwrap();
        body.push(b'\n');
        write_event(&mut body, 0.5, "o", "hello");
        std::fs::write(day.join(format!("session-{id}.cast")), body).unwrap();
    }
}
