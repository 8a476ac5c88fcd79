//! Session recording, end to end under the real sshd: exact bytes, input and masking, asciinema
//! compatibility, live watching, who may see what, and loss that is never silent.

use std::{
    io::{Read, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    process::{Command, Stdio},
    time::Duration,
};

use enforcer_tests::{
    TestDaemon, TestGroup, TestSshd, TestUser,
    casts::{ended_recording, play_raw},
    require_root,
    ssh::{PtySsh, run, wait_until},
};

/// A mix of everything a terminal stream can carry.
fn mixed_stream(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < len {
        for _ in 0..2048 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.push(x as u8);
        }
        out.extend_from_slice("UTF-8: héllo ✓ 🦀 日本語\r\n".as_bytes());
        out.extend_from_slice(b"\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x07\x08\t\x00\r\n");
    }
    out.truncate(len);
    out
}

#[test]
fn a_pty_session_is_recorded_byte_for_byte_including_50_mb_of_binary() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let ra = TestUser::create("ra");
    let sshd = TestSshd::start(d.pam(), &[&ra], "");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("stream.bin");
    let stream = mixed_stream(50 << 20);
    std::fs::write(&file, &stream).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // raw: no output processing, so the client must receive the file exactly.
    let out = run(sshd.ssh_with(
        &ra,
        &["-tt"],
        &format!("stty raw -echo; cat {}", file.display()),
    ));
    let log = d.log();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert_eq!(
        out.stdout.len(),
        stream.len(),
        "client got {} bytes; ssh said {}; daemon log ends:\n{}",
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr),
        tail.join("\n")
    );
    assert!(out.stdout == stream, "the pty path changed the bytes");
    let rec = ended_recording(&d, &ra);
    let played = play_raw(&d, rec["id"].as_u64().unwrap());
    assert_eq!(played.len(), out.stdout.len());
    assert!(
        played == out.stdout,
        "recording differs from what the client received"
    );
    // Root-only, findable by date, user and session id.
    let path = std::path::PathBuf::from(rec["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert!(
        path.starts_with(d.dir.path().join("recordings").join(&today).join(&ra.name)),
        "{}",
        path.display()
    );
    assert!(
        path.ends_with(format!("session-{}.cast", rec["id"])),
        "{}",
        path.display()
    );
    let s = d.status();
    assert_eq!(s.dropped.values().sum::<u64>(), 0, "{:?}", s.dropped);
}

#[test]
fn input_is_recorded_and_a_password_typed_without_echo_is_masked() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let rb = TestUser::create("rb");
    let sshd = TestSshd::start(d.pam(), &[&rb], "");
    let mut pty = PtySsh::open(&sshd, &rb);
    pty.type_text("echo visible-$((20+3))\n");
    assert!(pty.wait_for("visible-23", Duration::from_secs(5)));
    pty.type_text("stty -echo; echo ready-for-password; read pw; stty echo; echo length-${#pw}\n");
    assert!(
        pty.wait_for("ready-for-password\r\n", Duration::from_secs(5)),
        "{}",
        pty.output()
    );
    std::thread::sleep(Duration::from_millis(200));
    pty.type_text("hunter2-secret\n");
    assert!(
        pty.wait_for("length-14", Duration::from_secs(5)),
        "{}",
        pty.output()
    );
    pty.type_text("exit\n");
    assert!(pty.wait_closed(Duration::from_secs(5)));
    let rec = ended_recording(&d, &rb);
    let text = std::fs::read_to_string(rec["path"].as_str().unwrap()).unwrap();
    assert!(
        text.contains(r#","i","echo visible-$((20+3))\n"]"#),
        "input missing:\n{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the password reached the recording:\n{text}"
    );
    assert!(
        text.contains(&format!(r#","i","{}"]"#, "*".repeat(15))),
        "masked input missing:\n{text}"
    );
}

#[test]
fn asciinema_plays_the_recording() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let rc = TestUser::create("rc");
    let sshd = TestSshd::start(d.pam(), &[&rc], "");
    let mut pty = PtySsh::open(&sshd, &rc);
    pty.type_text(
        "printf 'asciinema-sees-%s\\n' \"$((6*7))\"; printf '\\033[32mgreen ✓\\033[0m\\n'\n",
    );
    assert!(pty.wait_for("asciinema-sees-42", Duration::from_secs(5)));
    pty.type_text("exit\n");
    assert!(pty.wait_closed(Duration::from_secs(5)));
    let rec = ended_recording(&d, &rc);
    let path = rec["path"].as_str().unwrap();
    let play = Command::new("asciinema")
        .args(["play", "-s", "100", "-i", "0.01", path])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        play.status.success(),
        "asciinema play failed: {}",
        String::from_utf8_lossy(&play.stderr)
    );
    // `asciinema cat` insists on a terminal: give it one.
    let cat = Command::new("script")
        .args([
            "-q",
            "-e",
            "-c",
            &format!("asciinema cat {path}"),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    let shown = String::from_utf8_lossy(&cat.stdout);
    assert!(
        shown.contains("asciinema-sees-42") && shown.contains("green ✓"),
        "{shown}"
    );
    let header: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().unwrap() > 0 && header["height"].as_u64().unwrap() > 0);
    assert_eq!(header["enforcer"]["user"], rc.name.as_str());
    assert_eq!(header["enforcer"]["kind"], "shell");
    assert!(header["env"]["SHELL"].is_string());
}

#[test]
fn exec_sessions_record_stdout_and_stderr() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let rd = TestUser::create("rd");
    let sshd = TestSshd::start(d.pam(), &[&rd], "");
    let out = run(sshd.ssh(&rd, "echo to-stdout; echo to-stderr >&2"));
    assert!(out.status.success());
    let rec = ended_recording(&d, &rd);
    assert_eq!(rec["kind"], "exec");
    assert_eq!(rec["command"], "echo to-stdout; echo to-stderr >&2");
    let played = String::from_utf8(play_raw(&d, rec["id"].as_u64().unwrap())).unwrap();
    assert!(
        played.contains("to-stdout\n") && played.contains("to-stderr\n"),
        "{played:?}"
    );
}

#[test]
fn watch_follows_a_live_session_from_its_current_screen_until_it_ends() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let re = TestUser::create("re");
    let sshd = TestSshd::start(d.pam(), &[&re], "");
    let mut pty = PtySsh::open(&sshd, &re);
    pty.type_text("echo before-$((1+1))-watch\n");
    assert!(pty.wait_for("before-2-watch", Duration::from_secs(5)));
    let live = d.recordings().into_iter().find(|r| r["live"] == true);
    let id = live.unwrap_or_else(|| panic!("no live recording: {:#?}", d.recordings()))["id"]
        .as_u64()
        .unwrap();
    let (mut watch, seen) = enforcer_tests::casts::watch(&d, id);
    let has = |t: &str| seen.lock().unwrap().contains(t);
    assert!(
        wait_until(Duration::from_secs(5), || has("before-2-watch")),
        "current screen not shown: {:?}",
        seen.lock().unwrap()
    );
    pty.type_text("echo after-$((6*7))-watch\n");
    assert!(
        wait_until(Duration::from_secs(5), || has("after-42-watch")),
        "live output not shown: {:?}",
        seen.lock().unwrap()
    );
    pty.type_text("exit\n");
    assert!(pty.wait_closed(Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(10), || watch
            .try_wait()
            .unwrap()
            .is_some()),
        "watch did not end with the session"
    );
    assert!(watch.wait().unwrap().success());
}

#[test]
fn users_see_only_their_own_recordings_and_auditors_see_all() {
    if !require_root() {
        return;
    }
    let auditors = TestGroup::create("aud");
    let d = TestDaemon::start(&format!(
        "[access]\nauditor_group = \"{}\"\n",
        auditors.name
    ));
    let owner = TestUser::create("rf");
    let other = TestUser::create("rg");
    let auditor = TestUser::create("rh");
    auditor.join_group(&auditors);
    let sshd = TestSshd::start(d.pam(), &[&owner, &other], "");
    assert!(run(sshd.ssh(&owner, "echo owner-output")).status.success());
    let id = ended_recording(&d, &owner)["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let ctl = |u: &TestUser, args: &[&str]| d.ctl_as(u, args);

    let denied = ctl(&other, &["play", &id, "--raw"]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&ctl(&other, &["recordings", "--json"]).stdout).unwrap();
    assert!(
        listed.as_array().unwrap().is_empty(),
        "other user sees: {listed}"
    );
    let rec = d.wait_audit("denial", |v| {
        v["event"] == "request_denied" && v["request"] == "play"
    });
    assert_eq!(rec["by_uid"], other.uid);

    let own = ctl(&owner, &["play", &id, "--raw"]);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert!(String::from_utf8_lossy(&own.stdout).contains("owner-output"));

    let aud = ctl(&auditor, &["play", &id, "--raw"]);
    assert!(
        aud.status.success(),
        "{}",
        String::from_utf8_lossy(&aud.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&ctl(&auditor, &["recordings", "--json"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let kill = ctl(&auditor, &["kill", "connection", "1"]);
    assert!(!kill.status.success(), "auditors may not kill");
    let watch = ctl(&other, &["watch", &id]);
    assert!(!watch.status.success(), "users may not watch");
}

/// The daemon is frozen while a session streams output: the kernel cannot hand the bytes over,
/// counts them per channel, and the recording says exactly how many are missing where.
#[test]
fn bytes_that_cannot_be_recorded_are_counted_and_marked() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[recording]\nbuffer_bytes = 65536\n");
    let ri = TestUser::create("ri");
    let sshd = TestSshd::start(d.pam(), &[&ri], "");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("out.txt");
    let line =
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTU\n".repeat(1 << 14);
    std::fs::write(&file, line.repeat(8)).unwrap(); // 8.9 MB of text
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon = nix::unistd::Pid::from_raw(d.pid() as i32);
    // Let the session start and its recording open, then freeze the daemon mid-stream.
    let mut ssh = sshd
        .ssh(&ri, &format!("sleep 1; cat {}; sleep 1", file.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut received = Vec::new();
    ssh.stdout
        .take()
        .unwrap()
        .read_to_end(&mut received)
        .unwrap();
    assert!(ssh.wait().unwrap().success());
    let rec = ended_recording(&d, &ri);
    let text = std::fs::read_to_string(rec["path"].as_str().unwrap()).unwrap();
    let marked: u64 = text
        .lines()
        .filter_map(enforcer::recording::cast::parse_event)
        .filter(|e| e.code == "m")
        .map(|e| {
            e.data
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let recorded = enforcer::recording::cast::read_output(&text).len() as u64;
    let lost = d.status().dropped["drop_recording_bytes_lost"];
    assert!(lost > 0, "nothing was lost; the test did not exercise loss");
    assert_eq!(
        marked, lost,
        "markers in the recording must add up to the loss counted in status"
    );
    assert_eq!(
        recorded + lost,
        received.len() as u64,
        "recorded + lost must be everything the client got"
    );
    let _ = std::io::stdout().flush();
}
