//! `[recording.store]` end to end: recordings of real sshd sessions shipped to a real
//! S3-compatible server (s3s-fs, SigV4 enforced) on loopback while the sessions run; a store
//! that is down, refuses credentials or loses the daemon mid-upload loses nothing; playback of
//! recordings only the store has.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    casts::ended_recording,
    require_root,
    s3::{self, SECRET_KEY, TestS3},
    ssh::wait_until,
};

/// 5 MiB parts (S3's smallest), flushed after a second.
const SMALL_PARTS: &str = "part_size = 5242880\nflush_after = \"1s\"";

fn setup() -> Option<PathBuf> {
    if !require_root() {
        return None;
    }
    s3::s3s_fs()
}

/// Starts `remote` in a pty session of `user`, its output read and discarded.
fn session(sshd: &TestSshd, user: &TestUser, remote: &str) -> Child {
    sshd.ssh_with(user, &["-tt"], remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `n` bytes of base64 text on the terminal.
fn output(n: u64) -> String {
    format!("base64 -w 76 /dev/urandom | head -c {n}; echo")
}

/// The live recording of `user`'s session, once it exists.
fn live_recording(d: &TestDaemon, user: &TestUser) -> serde_json::Value {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(20), || {
        found = d
            .recordings()
            .into_iter()
            .find(|r| r["user"] == user.name.as_str() && r["live"] == true);
        found.is_some()
    });
    assert!(ok, "no live recording of {}: {}", user.name, d.log());
    found.unwrap()
}

/// The object key of a local recording (`enf/<node>/<path below recording.dir>`).
fn key_of(d: &TestDaemon, rec: &serde_json::Value, node: &str) -> String {
    let path = Path::new(rec["path"].as_str().unwrap());
    let rel = path.strip_prefix(d.dir.path().join("recordings")).unwrap();
    format!("enf/{node}/{}", rel.display())
}

fn store_status(d: &TestDaemon) -> enforcer_proto::StoreStatus {
    d.status().store.expect("status has a store section")
}

/// Waits until the store holds `key` exactly as `want`.
fn wait_object(s3: &TestS3, d: &TestDaemon, key: &str, want: &[u8], secs: u64) {
    let ok = wait_until(Duration::from_secs(secs), || {
        s3.object(key).as_deref() == Some(want)
    });
    assert!(
        ok,
        "object {key} is not the local file ({} bytes; store has {:?} bytes); status {:?}\n{}",
        want.len(),
        s3.object(key).map(|o| o.len()),
        d.status().store,
        d.log()
    );
}

#[test]
fn a_long_session_goes_up_in_parts_while_it_runs_and_the_object_is_the_file() {
    let Some(bin) = setup() else { return };
    let s3 = TestS3::start(bin);
    let d = TestDaemon::start(&s3.store_config(SECRET_KEY, "node-a", SMALL_PARTS));
    let u = TestUser::create("sa");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    let mut ssh = session(&sshd, &u, &format!("{}; sleep 12", output(12_000_000)));
    let rec = live_recording(&d, &u);
    // Parts reach the store while the session still runs.
    let ok = wait_until(Duration::from_secs(30), || s3.pending_parts() >= 2);
    assert!(
        ok,
        "no parts while the session runs: {:?}\n{}",
        d.status().store,
        d.log()
    );
    assert_eq!(
        live_recording(&d, &u)["id"],
        rec["id"],
        "the session ended early"
    );
    let st = store_status(&d);
    assert!(
        st.parts_uploaded >= 2 && st.pending_recordings == 1,
        "{st:?}"
    );
    assert!(ssh.wait().unwrap().success());
    let rec = ended_recording(&d, &u);
    let key = key_of(&d, &rec, "node-a");
    let local = std::fs::read(rec["path"].as_str().unwrap()).unwrap();
    assert!(local.len() > 12_000_000);
    wait_object(&s3, &d, &key, &local, 30);
    let st = store_status(&d);
    assert_eq!((st.pending_bytes, st.objects_stored), (0, 1), "{st:?}");
    assert_eq!(s3.pending_parts(), 0);
    // keep_local (7 days by default): the local copy stays.
    assert!(Path::new(rec["path"].as_str().unwrap()).is_file());
    // Listed from the store with the metadata the node stored.
    let listed = d.ctl_json(&["recordings", "--store"]);
    let r = &listed.as_array().unwrap()[0];
    assert_eq!(r["id"], rec["id"]);
    assert_eq!(r["node"], "node-a");
    assert_eq!(r["user"], u.name.as_str());
    assert_eq!(r["kind"], rec["kind"]);
    assert_eq!(r["size_bytes"], local.len() as u64);
}

#[test]
fn a_store_down_for_the_first_half_gets_the_complete_object_later() {
    let Some(bin) = setup() else { return };
    let mut s3 = TestS3::new(bin);
    let d = TestDaemon::start(&s3.store_config(SECRET_KEY, "node-a", SMALL_PARTS));
    let u = TestUser::create("sb");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    let mut ssh = session(
        &sshd,
        &u,
        &format!(
            "{}; sleep 8; {}; sleep 4",
            output(7_000_000),
            output(4_000_000)
        ),
    );
    live_recording(&d, &u);
    let ok = wait_until(Duration::from_secs(20), || {
        let st = store_status(&d);
        st.errors > 0 && st.pending_bytes > 5_000_000
    });
    let st = store_status(&d);
    assert!(ok, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("endpoint reachable"),
        "{st:?}"
    );
    assert!(st.oldest_pending_id.is_some() && st.oldest_pending_started.is_some());
    s3.start_again();
    assert!(ssh.wait().unwrap().success());
    let rec = ended_recording(&d, &u);
    let local = std::fs::read(rec["path"].as_str().unwrap()).unwrap();
    wait_object(&s3, &d, &key_of(&d, &rec, "node-a"), &local, 60);
    assert_eq!(store_status(&d).pending_recordings, 0);
}

#[test]
fn a_wrong_secret_is_a_clear_status_error_and_nothing_is_lost() {
    let Some(bin) = setup() else { return };
    let s3 = TestS3::start(bin);
    let mut d = TestDaemon::start(&s3.store_config("not-the-secret", "node-a", SMALL_PARTS));
    let u = TestUser::create("sc");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    let mut ssh = session(&sshd, &u, "echo wrong-secret-text; sleep 1");
    assert!(ssh.wait().unwrap().success());
    let rec = ended_recording(&d, &u);
    let path = PathBuf::from(rec["path"].as_str().unwrap());
    let local = std::fs::read(&path).unwrap();
    let ok = wait_until(Duration::from_secs(30), || {
        store_status(&d).last_error.is_some()
    });
    let st = store_status(&d);
    assert!(ok, "{st:?}");
    let err = st.last_error.unwrap();
    assert!(
        err.contains("SignatureDoesNotMatch") && err.contains("credentials"),
        "{err}"
    );
    assert!(d.ctl_ok(&["status"]).contains("SignatureDoesNotMatch"));
    assert_eq!((st.pending_recordings, st.objects_stored), (1, 0));
    // Nothing lost: the local recording is intact and goes up once the secret is right.
    assert_eq!(std::fs::read(&path).unwrap(), local);
    s3::write_credentials(&s3.credentials(), SECRET_KEY);
    d.restart();
    wait_object(&s3, &d, &key_of(&d, &rec, "node-a"), &local, 30);
}

#[test]
fn an_upload_killed_with_the_daemon_resumes_after_restart() {
    let Some(bin) = setup() else { return };
    let s3 = TestS3::start(bin);
    let mut d = TestDaemon::start(&s3.store_config(SECRET_KEY, "node-a", SMALL_PARTS));
    let u = TestUser::create("sd");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    let mut ssh = session(
        &sshd,
        &u,
        &format!(
            "{}; sleep 10; {}; sleep 3",
            output(6_000_000),
            output(6_000_000)
        ),
    );
    let rec = live_recording(&d, &u);
    let state = d
        .dir
        .path()
        .join("state/uploads")
        .join(format!("{}.json", rec["id"]));
    let read_state = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&state).ok()?).ok()
    };
    let ok = wait_until(Duration::from_secs(30), || {
        read_state().is_some_and(|s| s["parts"].as_array().is_some_and(|p| !p.is_empty()))
    });
    assert!(ok, "no part confirmed: {:?}\n{}", d.status().store, d.log());
    let before = read_state().unwrap();
    d.kill9();
    d.start_again();
    assert!(ssh.wait().unwrap().success());
    let rec = ended_recording(&d, &u);
    let local = std::fs::read(rec["path"].as_str().unwrap()).unwrap();
    wait_object(&s3, &d, &key_of(&d, &rec, "node-a"), &local, 60);
    // The same multipart upload went on: its first part was not sent again.
    let after = read_state().unwrap();
    assert_eq!(after["upload_id"], before["upload_id"], "{after}");
    assert_eq!(after["parts"][0], before["parts"][0]);
    assert!(d.log().contains("resuming upload"));
}

#[test]
fn keep_local_0_deletes_only_after_confirmation_and_play_reads_the_store() {
    let Some(bin) = setup() else { return };
    let mut s3 = TestS3::new(bin);
    let d = TestDaemon::start(&s3.store_config(SECRET_KEY, "node-a", "keep_local = \"0\""));
    let u = TestUser::create("se");
    let other = TestUser::create("sf");
    let sshd = TestSshd::start(d.pam(), &[&u], "");
    let mut ssh = session(&sshd, &u, "echo only-in-the-store; sleep 1");
    assert!(ssh.wait().unwrap().success());
    let rec = ended_recording(&d, &u);
    let id = rec["id"].as_u64().unwrap().to_string();
    let path = PathBuf::from(rec["path"].as_str().unwrap());
    let local = std::fs::read(&path).unwrap();
    // The store is down: the recording stays.
    std::thread::sleep(Duration::from_secs(7));
    assert!(path.is_file(), "deleted before the store had it");
    s3.start_again();
    let key = key_of(&d, &rec, "node-a");
    wait_object(&s3, &d, &key, &local, 60);
    assert!(
        wait_until(Duration::from_secs(10), || !path.exists()),
        "not deleted once stored"
    );
    // The uploader drops it from the list and counts it just after the file is gone.
    let forgotten = wait_until(Duration::from_secs(5), || {
        d.recordings().iter().all(|r| r["id"] != rec["id"]) && store_status(&d).local_deleted == 1
    });
    assert!(forgotten, "{:#?}\n{:?}", d.recordings(), store_status(&d));
    // `play` of a recording only the store has: root, its owner, not another user.
    let played = d.ctl(&["play", &id, "--raw"]);
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
    assert!(String::from_utf8_lossy(&played.stdout).contains("only-in-the-store"));
    let own = d.ctl_as(&u, &["play", &id, "--raw"]);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    let theirs = d.ctl_as(&other, &["play", &id, "--raw"]);
    assert!(!theirs.status.success());
    assert!(String::from_utf8_lossy(&theirs.stderr).contains("permission denied"));
    let audited = wait_until(Duration::from_secs(5), || {
        d.audit()
            .iter()
            .any(|r| r["event"] == "request_denied" && r["request"] == "play")
    });
    assert!(audited, "the denied play is not audited");
    let listed = d.ctl_as(&other, &["recordings", "--store", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
}
