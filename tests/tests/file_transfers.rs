//! File transfers (issue: "an scp download of 5 MB became an 18.5 MB recording holding the
//! file; an upload is barely recorded"): sftp, scp (sftp-based and legacy) and rsync sessions
//! audit each file (`file_transfer`) instead of recording its bytes, unless
//! `recording.file_transfers = "full"`; a shell hidden behind a transfer command is recorded.

use std::{
    ffi::OsStr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser,
    casts::{ended_recording, play_raw},
    require_root,
    ssh::run,
};

const SFTP_SERVER: &str = "Subsystem sftp /usr/lib/openssh/sftp-server";
const SIZE: usize = 5 << 20;

/// A directory the test user owns, with a 5 MiB file of incompressible bytes in it.
fn user_dir(user: &TestUser) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("enf-ft-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("payload.bin");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&file, bytes).unwrap();
    for p in [dir.path(), file.as_path()] {
        std::os::unix::fs::chown(p, Some(user.uid), None).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, file)
}

/// scp (or sftp, rsync) with the options `TestSshd::ssh` uses.
fn client(program: &str, sshd_port: u16, user: &TestUser) -> Command {
    let mut c = Command::new(program);
    let opts = [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ];
    if program == "rsync" {
        let ssh = format!(
            "ssh {} -i {} -p {sshd_port}",
            opts.join(" "),
            user.key.display()
        );
        c.args(["-e", &ssh]);
    } else {
        c.args(opts)
            .arg("-i")
            .arg(&user.key)
            .args(["-P", &sshd_port.to_string()]);
    }
    c.stdin(Stdio::null());
    c
}

fn with_args(mut c: Command, args: &[&OsStr]) -> Command {
    c.args(args);
    c
}

fn remote(user: &TestUser, path: &Path) -> String {
    format!("{}@127.0.0.1:{}", user.name, path.display())
}

/// The `file_transfer` record of `path` going `direction`.
fn transfer(d: &TestDaemon, path: &Path, direction: &str) -> serde_json::Value {
    let p = path.display().to_string();
    d.wait_audit(&format!("file_transfer {direction} {p}"), |r| {
        r["event"] == "file_transfer" && r["path"] == p.as_str() && r["direction"] == direction
    })
}

fn recording_len(d: &TestDaemon, user: &TestUser) -> usize {
    let rec = ended_recording(d, user);
    play_raw(d, rec["id"].as_u64().unwrap()).len()
}

#[test]
fn scp_and_sftp_transfers_are_audited_per_file_not_recorded() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let u = TestUser::create("ft");
    let sshd = TestSshd::start(d.pam(), &[&u], SFTP_SERVER);
    let (dir, file) = user_dir(&u);
    let local = tempfile::tempdir().unwrap();

    // scp (the sftp protocol since OpenSSH 9), download: the reported case.
    let got = local.path().join("down.bin");
    run(with_args(
        client("scp", sshd.port, &u),
        &[OsStr::new(&remote(&u, &file)), OsStr::new(&&got)],
    ));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&file).unwrap());
    let t = transfer(&d, &file, "download");
    assert_eq!(
        (t["protocol"].as_str(), t["bytes"].as_u64()),
        (Some("sftp"), Some(SIZE as u64)),
        "{t}"
    );
    assert_eq!(t["user"], u.name.as_str());
    assert!(t["session_id"].is_u64() && t["conn_id"].is_u64(), "{t}");
    let len = recording_len(&d, &u);
    assert!(
        len < 4096,
        "the recording holds {len} bytes, not the file's {SIZE}"
    );

    // Upload.
    let up = dir.path().join("up.bin");
    run(with_args(
        client("scp", sshd.port, &u),
        &[OsStr::new(&&got), OsStr::new(&remote(&u, &up))],
    ));
    let t = transfer(&d, &up, "upload");
    assert_eq!(t["bytes"].as_u64(), Some(SIZE as u64), "{t}");

    // sftp in batch mode: a get and a put in one session.
    let batch = local.path().join("batch");
    let back = local.path().join("back.bin");
    let put = dir.path().join("put.bin");
    std::fs::write(
        &batch,
        format!(
            "get {} {}\nput {} {}\n",
            file.display(),
            back.display(),
            got.display(),
            put.display()
        ),
    )
    .unwrap();
    let mut sftp = client("sftp", sshd.port, &u);
    sftp.args(["-b"])
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", u.name));
    run(sftp);
    let t = transfer(&d, &put, "upload");
    assert_eq!(t["bytes"].as_u64(), Some(SIZE as u64));
    assert!(
        d.audit()
            .iter()
            .filter(|r| r["event"] == "file_transfer"
                && r["path"] == file.display().to_string().as_str())
            .count()
            >= 2
    );

    // Legacy scp (`scp -O`: `scp -f` / `scp -t` on the server).
    let legacy = local.path().join("legacy.bin");
    run(with_args(
        client("scp", sshd.port, &u),
        &[
            OsStr::new("-O"),
            OsStr::new(&remote(&u, &file)),
            OsStr::new(&&legacy),
        ],
    ));
    let t = d.wait_audit("legacy scp download", |r| {
        r["event"] == "file_transfer" && r["protocol"] == "scp" && r["direction"] == "download"
    });
    assert_eq!(
        (
            t["path"].as_str(),
            t["bytes"].as_u64(),
            t["file_size"].as_u64()
        ),
        (
            Some(file.to_str().unwrap()),
            Some(SIZE as u64),
            Some(SIZE as u64)
        )
    );
    let into = dir.path().join("legacy-up.bin");
    run(with_args(
        client("scp", sshd.port, &u),
        &[
            OsStr::new("-O"),
            OsStr::new(&&legacy),
            OsStr::new(&remote(&u, &into)),
        ],
    ));
    let t = transfer(&d, &into, "upload");
    assert_eq!(
        (t["protocol"].as_str(), t["bytes"].as_u64()),
        (Some("scp"), Some(SIZE as u64))
    );

    // rsync: paths and bytes, one record per session.
    let synced = local.path().join("synced.bin");
    run(with_args(
        client("rsync", sshd.port, &u),
        &[OsStr::new(&remote(&u, &file)), OsStr::new(&&synced)],
    ));
    let t = d.wait_audit("rsync download", |r| {
        r["event"] == "file_transfer" && r["protocol"] == "rsync"
    });
    assert_eq!(t["direction"], "download");
    assert_eq!(t["path"].as_str(), Some(file.to_str().unwrap()));
    assert!(t["bytes"].as_u64().unwrap() >= SIZE as u64 / 2, "{t}");

    // No session of these recorded a file's bytes.
    for r in d
        .recordings()
        .iter()
        .filter(|r| r["user"] == u.name.as_str())
    {
        let n = play_raw(&d, r["id"].as_u64().unwrap()).len();
        assert!(n < 64 << 10, "recording {} holds {n} bytes: {r}", r["id"]);
    }
    // The audit log says why the recordings are short.
    let rec = ended_recording(&d, &u);
    let path = rec["path"].as_str().unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains("file transfer: contents not recorded"),
        "{text}"
    );
}

#[test]
fn full_mode_records_the_bytes_and_still_audits_the_file() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("[recording]\nfile_transfers = \"full\"\n");
    let u = TestUser::create("ftfull");
    let sshd = TestSshd::start(d.pam(), &[&u], SFTP_SERVER);
    let (_dir, file) = user_dir(&u);
    let local = tempfile::tempdir().unwrap();
    run(with_args(
        client("scp", sshd.port, &u),
        &[
            OsStr::new(&remote(&u, &file)),
            OsStr::new(&local.path().join("x")),
        ],
    ));
    transfer(&d, &file, "download");
    let len = recording_len(&d, &u);
    assert!(
        len >= SIZE,
        "full mode recorded {len} bytes of a {SIZE}-byte download"
    );
}

/// The attacks: a shell behind a transfer command, or a background process sharing the
/// transfer's channel, must not make a session unrecorded.
#[test]
fn a_shell_hidden_behind_a_transfer_command_is_recorded() {
    if !require_root() {
        return;
    }
    let d = TestDaemon::start("");
    let u = TestUser::create("fthide");
    let sshd = TestSshd::start(d.pam(), &[&u], SFTP_SERVER);
    // A command that runs sftp-server and something else.
    let out = run(sshd.ssh(
        &u,
        "/usr/lib/openssh/sftp-server </dev/null; echo HIDDEN-ONE",
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("HIDDEN-ONE"));
    let rec = ended_recording(&d, &u);
    let played = play_raw(&d, rec["id"].as_u64().unwrap());
    assert!(String::from_utf8_lossy(&played).contains("HIDDEN-ONE"));

    // A plain transfer command, but the login shell's startup file leaves a process behind
    // that talks on the same channel once sftp-server runs.
    let v = TestUser::create("fthide2");
    let mut usermod = Command::new("usermod");
    usermod.args(["-s", "/bin/bash", &v.name]);
    run(usermod);
    let home = nix::unistd::User::from_name(&v.name).unwrap().unwrap().dir;
    std::fs::write(home.join(".bashrc"), "( sleep 1; echo HIDDEN-TWO ) &\n").unwrap();
    drop(sshd);
    let sshd = TestSshd::start(d.pam(), &[&v], SFTP_SERVER);
    let mut c = sshd.ssh(&v, "/usr/lib/openssh/sftp-server");
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HIDDEN-TWO"),
        "bash did not run .bashrc: the attack needs it"
    );
    let rec = ended_recording(&d, &v);
    let played = play_raw(&d, rec["id"].as_u64().unwrap());
    assert!(
        String::from_utf8_lossy(&played).contains("HIDDEN-TWO"),
        "the background process's output is missing from the recording"
    );
    assert!(
        !d.audit()
            .iter()
            .any(|r| r["event"] == "file_transfer" && r["user"] == v.name.as_str())
    );
}
