//! Recordings and JSON-lines files as tests inspect them, and a small filesystem to fill.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{TestDaemon, TestUser, ssh::wait_until};

/// The recording of `user`'s only session, once it has ended.
pub fn ended_recording(d: &TestDaemon, user: &TestUser) -> serde_json::Value {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(10), || {
        found = d
            .recordings()
            .into_iter()
            .find(|r| r["user"] == user.name.as_str() && r["live"] == false);
        found.is_some()
    });
    assert!(
        ok,
        "no ended recording for {}: {:#?}",
        user.name,
        d.recordings()
    );
    // The recorder closes a recording a grace period after its session's end.
    std::thread::sleep(Duration::from_millis(2500));
    found.unwrap()
}

/// `enforcerctl watch ID` running, and what it has printed so far (collected as it comes).
pub fn watch(
    d: &TestDaemon,
    id: u64,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    let mut child = d
        .ctl_command(&["watch", &id.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    crate::ssh::collect_into(child.stdout.take().unwrap(), seen.clone());
    (child, seen)
}

/// `enforcerctl play ID --raw`: the exact bytes of a recording.
pub fn play_raw(d: &TestDaemon, id: u64) -> Vec<u8> {
    let out = d.ctl(&["play", &id.to_string(), "--raw"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Lines of a recording or audit file; panics on any line that is not JSON.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.ends_with('\n'),
        "{} ends in a half line",
        path.display()
    );
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l:?}", path.display()))
        })
        .collect()
}

/// "m" events of a recording.
pub fn markers(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|v| v[1] == "m")
        .map(|v| v[2].as_str().unwrap().to_owned())
        .collect()
}

/// A small filesystem the test mounts for recordings and the audit log, unmounted by path.
pub struct SmallFs(pub tempfile::TempDir);

impl SmallFs {
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallFs(dir)
    }

    /// Fills it to the last byte.
    pub fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.0.path().join("filler").display()))
            .stderr(Stdio::null())
            .status();
    }

    pub fn free(&self) {
        std::fs::remove_file(self.0.path().join("filler")).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
