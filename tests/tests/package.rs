//! The Debian package, installed the way a node's administrator would: `apt install ./….deb`
//! into a clean Debian root (debootstrap base with openssh-server, overlay per test), then the
//! root's own sshd with its own stock PAM configuration, then `apt purge`.

use std::{path::Path, process::Command, time::Duration};

use enforcer_tests::{
    debroot::{self, DebRoot},
    require_root,
    sshd::free_port,
};

/// The root's own sshd (its /etc/pam.d/sshd, as shipped by Debian) on 127.0.0.1, and a user in
/// the root whose key the client holds.
struct RootSshd {
    port: u16,
    key: std::path::PathBuf,
    user: &'static str,
}

impl RootSshd {
    /// `uid`: one no host user has, and a different one per test: a lock ends every process
    /// of the uid host-wide (the kernel programs see the host, not the root's user database),
    /// so a lock in one test would cut another test's logins.
    fn start(root: &mut DebRoot, uid: u32) -> Self {
        let user = "enfdeb";
        root.run(
            "useradd",
            &[
                "--create-home",
                "--shell",
                "/bin/sh",
                "--uid",
                &uid.to_string(),
                user,
            ],
        );
        let key = root.dir().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(out.success());
        std::fs::create_dir_all(root.path("/home/enfdeb/.ssh")).unwrap();
        std::fs::copy(
            key.with_extension("pub"),
            root.path("/home/enfdeb/.ssh/authorized_keys"),
        )
        .unwrap();
        root.run("chown", &["-R", "enfdeb:enfdeb", "/home/enfdeb/.ssh"]);
        std::fs::create_dir_all(root.path("/run/sshd")).unwrap();
        let port = free_port();
        root.run(
            "/usr/sbin/sshd",
            &[
                "-p",
                &port.to_string(),
                "-o",
                "ListenAddress=127.0.0.1",
                "-o",
                "PidFile=/run/sshd-enf-test.pid",
                "-E",
                "/tmp/sshd.log",
            ],
        );
        root.pid_file("/run/sshd-enf-test.pid");
        RootSshd { port, key, user }
    }

    /// `ssh user@127.0.0.1 remote`: (success, stdout + stderr).
    fn ssh(&self, remote: &str) -> (bool, String) {
        let out = self.command(remote).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// The client command for `remote`. Default log level: ssh shows PAM's refusal (a banner)
    /// only at INFO.
    fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
        .arg("-i")
        .arg(&self.key)
        .args(["-p", &self.port.to_string()])
        .arg(format!("{}@127.0.0.1", self.user))
        .arg(remote);
        c
    }
}

/// Every file in the root's /etc/pam.d that mentions pam_enforcer.
fn pam_files_with_enforcer(root: &DebRoot) -> Vec<String> {
    std::fs::read_dir(root.path("/etc/pam.d"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.contains("pam_enforcer")
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

fn assert_file(root: &DebRoot, path: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(root.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(meta.is_file(), "{path} is not a file");
    assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}: mode");
}

/// `+bpf,+perfmon,…` from the installed unit's CapabilityBoundingSet.
fn unit_capabilities(root: &DebRoot) -> String {
    let unit =
        std::fs::read_to_string(root.path("/usr/lib/systemd/system/enforcerd.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts enforcerd as the init.d script would, but through setpriv with only the unit's
/// capabilities and no_new_privs; returns its pid once it answers.
fn start_confined(root: &mut DebRoot) -> u32 {
    let bounding = format!("-all,{}", unit_capabilities(root));
    root.run(
        "start-stop-daemon",
        &[
            "--start",
            "--background",
            "--make-pidfile",
            "--pidfile",
            "/run/enforcerd.pid",
            "--output",
            "/var/log/enforcer/enforcerd.log",
            "--startas",
            "/usr/bin/setpriv",
            "--",
            "--bounding-set",
            &bounding,
            "--no-new-privs",
            "/usr/sbin/enforcerd",
            "--config",
            "/etc/enforcer/enforcer.toml",
        ],
    );
    let pid = root.pid_file("/run/enforcerd.pid");
    let answers = enforcer_tests::ssh::wait_until(Duration::from_secs(10), || {
        root.command("enforcerctl", &["status"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let log =
        std::fs::read_to_string(root.path("/var/log/enforcer/enforcerd.log")).unwrap_or_default();
    assert!(answers, "confined enforcerd does not answer:\n{log}");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_ne!(field("CapBnd:"), "000001ffffffffff", "not confined");
    assert_eq!(field("NoNewPrivs:"), "1");
    pid
}

fn status_json(root: &DebRoot) -> serde_json::Value {
    serde_json::from_str(&root.run("enforcerctl", &["status", "--json"])).unwrap()
}

#[test]
fn apt_install_enforces_under_the_stock_sshd_and_purge_leaves_logins_working() {
    if !require_root() {
        return;
    }
    let mut root = DebRoot::new(true);
    let deb = root.copy_package();
    let out = root.run("apt", &["install", "-y", &deb]);
    assert!(
        out.contains("Starting enforcer daemon"),
        "postinst did not start enforcerd:\n{out}"
    );

    // Files where they belong.
    for (path, mode) in [
        ("/usr/sbin/enforcerd", 0o755),
        ("/usr/bin/enforcerctl", 0o755),
        ("/usr/lib/x86_64-linux-gnu/security/pam_enforcer.so", 0o644),
        ("/etc/enforcer/enforcer.toml", 0o644),
        ("/etc/init.d/enforcerd", 0o755),
        ("/usr/lib/systemd/system/enforcerd.service", 0o644),
        ("/usr/share/pam-configs/enforcer", 0o644),
        ("/usr/share/man/man8/enforcerd.8.gz", 0o644),
        ("/usr/share/man/man1/enforcerctl.1.gz", 0o644),
        ("/usr/share/man/man1/enforcerctl-lock.1.gz", 0o644),
        ("/usr/share/bash-completion/completions/enforcerctl", 0o644),
        ("/usr/share/zsh/vendor-completions/_enforcerctl", 0o644),
        (
            "/usr/share/fish/vendor_completions.d/enforcerctl.fish",
            0o644,
        ),
    ] {
        assert_file(&root, path, mode);
    }
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/enforcer.toml"));
    assert_eq!(
        std::fs::read(root.path("/etc/enforcer/enforcer.toml")).ok(),
        shipped.ok()
    );
    let conffiles = root.run(
        "dpkg-query",
        &["--showformat=${Conffiles}", "--show", "enforcer"],
    );
    assert!(
        conffiles.contains("/etc/enforcer/enforcer.toml"),
        "{conffiles}"
    );
    assert!(root.path("/etc/enforcer/locks.d").is_dir());
    root.run("getent", &["group", "enforcer-auditors"]);
    let man = Command::new("zcat")
        .arg(root.path("/usr/share/man/man1/enforcerctl.1.gz"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&man.stdout).contains("recordings"),
        "man page lacks subcommands"
    );
    // The installed bash completion completes subcommands.
    let completion = root.run(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/enforcerctl; \
             COMP_WORDS=(enforcerctl reco); COMP_CWORD=1; \
             _enforcerctl enforcerctl reco enforcerctl; echo \"${COMPREPLY[@]}\"",
        ],
    );
    assert_eq!(completion.trim(), "recordings");

    assert!(
        root.run(
            "enforcerd",
            &["--config", "/etc/enforcer/enforcer.toml", "--check-config"]
        )
        .contains("config OK")
    );

    // The unit parses, and its hardening does not regress (exposure 3.7 when written).
    let analyze = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=45"])
        .arg(format!("--root={}", root.root.display()))
        .arg("enforcerd.service")
        .output()
        .unwrap();
    assert!(
        analyze.status.success(),
        "{}",
        String::from_utf8_lossy(&analyze.stdout)
    );

    // sshd's stock PAM stack now reaches pam_enforcer, for sshd only.
    let sshd_pam = std::fs::read_to_string(root.path("/etc/pam.d/sshd")).unwrap();
    assert!(
        sshd_pam.contains("@include common-account")
            && sshd_pam.contains("@include common-session")
    );
    let account = std::fs::read_to_string(root.path("/etc/pam.d/common-account")).unwrap();
    assert!(
        account.contains("pam_succeed_if.so quiet service notin sshd"),
        "{account}"
    );
    assert!(account.contains("required\tpam_enforcer.so"), "{account}");
    let session = std::fs::read_to_string(root.path("/etc/pam.d/common-session")).unwrap();
    assert!(session.contains("pam_enforcer.so"), "{session}");

    // The daemon the package started answers.
    let first = root.pid_file("/run/enforcerd.pid");
    status_json(&root);

    // Upgrade path (a reinstall runs it): the edited conffile stays, the profile stays enabled,
    // the daemon is restarted.
    let config = root.path("/etc/enforcer/enforcer.toml");
    let edited = std::fs::read_to_string(&config).unwrap() + "\n# local edit\n";
    std::fs::write(&config, &edited).unwrap();
    root.run("apt", &["install", "-y", "--reinstall", &deb]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert!(pam_files_with_enforcer(&root).contains(&"common-account".to_owned()));
    assert!(
        debroot::exited(first, Duration::from_secs(10)),
        "not restarted"
    );
    let started = root.pid_file("/run/enforcerd.pid");
    assert_ne!(started, first);
    status_json(&root);

    // systemd is not PID 1 here, so the unit cannot run; its capability set can: the daemon is
    // restarted confined to the unit's CapabilityBoundingSet with no_new_privs, and everything
    // below runs against that one.
    root.run("/etc/init.d/enforcerd", &["stop"]);
    assert!(debroot::exited(started, Duration::from_secs(10)));
    let daemon = start_confined(&mut root);
    let status = status_json(&root);
    let programs: Vec<u64> = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"]["state"] == "attached")
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert!(!programs.is_empty(), "{status}");

    // A login through the root's sshd works, is audited, and is enforced (a lock refuses it).
    let sshd = RootSshd::start(&mut root, 64123);
    let (ok, out) = sshd.ssh("echo hello from $(id -un)");
    assert!(ok && out.contains("hello from enfdeb"), "{out}");
    let audited = enforcer_tests::ssh::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(root.path("/var/log/enforcer/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|r| {
                r["event"] == "session_ended"
                    && r["user"] == "enfdeb"
                    && r["service"] == "sshd"
                    && r["command"] == "echo hello from $(id -un)"
                    && r["auth_method"] == "publickey"
            })
    });
    assert!(audited, "no audit record of the login's session");
    let mut held = sshd
        .command("sleep 60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = enforcer_tests::ssh::wait_until(Duration::from_secs(10), || {
        status_json(&root)["events"]["sessions_active"] == 1
    });
    assert!(seen, "the held session never showed up");
    root.run(
        "enforcerctl",
        &["lock", "user", "enfdeb", "--reason", "package test"],
    );
    // Locking cuts the live session (signals to another user's processes: CAP_KILL).
    let cut = enforcer_tests::ssh::wait_until(Duration::from_secs(10), || {
        held.try_wait().unwrap().is_some()
    });
    assert!(cut, "the locked user's live session survived");
    let (ok, out) = sshd.ssh("true");
    assert!(!ok && out.contains("locked"), "a locked user got in: {out}");
    root.run("enforcerctl", &["unlock", "user", "enfdeb"]);

    // Purge: the profile leaves the PAM stack first, the daemon stops and detaches, state goes.
    root.run("apt", &["purge", "-y", "enforcer"]);
    assert!(
        debroot::exited(daemon, Duration::from_secs(10)),
        "enforcerd {daemon} still runs"
    );
    assert_eq!(pam_files_with_enforcer(&root), Vec::<String>::new());
    for gone in [
        "/var/lib/enforcer",
        "/var/log/enforcer",
        "/etc/enforcer",
        "/run/enforcer",
        "/sys/fs/bpf/enforcer",
        "/usr/sbin/enforcerd",
        "/usr/lib/x86_64-linux-gnu/security/pam_enforcer.so",
        "/etc/init.d/enforcerd",
    ] {
        assert!(!root.path(gone).exists(), "{gone} survived the purge");
    }
    let dpkg = root
        .command("dpkg-query", &["--show", "enforcer"])
        .output()
        .unwrap();
    assert!(!dpkg.status.success(), "enforcer is still known to dpkg");
    let left: Vec<u64> = programs
        .iter()
        .copied()
        .filter(|id| {
            Command::new("bpftool")
                .args(["prog", "show", "id", &id.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    assert!(left.is_empty(), "BPF programs {left:?} outlived the purge");
    let (ok, out) = sshd.ssh("echo still in");
    assert!(
        ok && out.contains("still in"),
        "login broken after purge: {out}"
    );
}

/// Where no init system may start services (a container without policy-rc.d), postinst must
/// not lock everybody out: the fail-closed PAM profile stays off until the daemon answers.
#[test]
fn without_a_running_daemon_the_pam_profile_stays_off_until_enabled() {
    if !require_root() {
        return;
    }
    let mut root = DebRoot::new(false);
    let deb = root.copy_package();
    let out = root.run("apt", &["install", "-y", &deb]);
    assert!(
        out.contains("pam-auth-update --enable enforcer"),
        "no hint given:\n{out}"
    );
    assert_eq!(pam_files_with_enforcer(&root), Vec::<String>::new());
    let sshd = RootSshd::start(&mut root, 64124);
    let (ok, out) = sshd.ssh("true");
    assert!(ok, "login refused with the daemon down: {out}");

    // What the hint says to do.
    root.run("/etc/init.d/enforcerd", &["start"]);
    root.pid_file("/run/enforcerd.pid");
    root.run("pam-auth-update", &["--enable", "enforcer"]);
    assert!(pam_files_with_enforcer(&root).contains(&"common-account".to_owned()));
    root.run("enforcerctl", &["lock", "user", "enfdeb"]);
    let (ok, out) = sshd.ssh("true");
    assert!(!ok && out.contains("locked"), "a locked user got in: {out}");
    // Nothing may stop the daemon here (no init system), and while it runs a lock also kills
    // the user's every exec: lift it, so what is left to see is the PAM stack without enforcer.
    root.run("enforcerctl", &["unlock", "user", "enfdeb"]);
    root.run("apt", &["remove", "-y", "enforcer"]);
    assert_eq!(pam_files_with_enforcer(&root), Vec::<String>::new());
    let (ok, out) = sshd.ssh("true");
    assert!(ok, "login broken after apt remove: {out}");
}

/// Lintian-clean at every level, apart from the overrides the package documents.
#[test]
fn lintian_is_clean_apart_from_documented_overrides() {
    let out = Command::new("lintian")
        .args([
            "--display-level",
            ">=pedantic",
            "--fail-on",
            "error,warning,info,pedantic",
        ])
        .arg(debroot::package())
        .output()
        .expect("lintian is missing: run `cargo xtask setup`");
    assert!(
        out.status.success(),
        "lintian: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
