//! Test users and groups: created per test with unique names, removed on drop (their processes
//! killed by uid first, since a lingering process blocks userdel).

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::procs;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this test run: `enf<tag><pid36><seq>`.
pub fn unique_name(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("enf{tag}{:x}{n}", std::process::id())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A local user with an ed25519 key pair.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    /// Private key (root-owned, for the ssh client run by the test).
    pub key: PathBuf,
    /// `ssh-ed25519 AAAA… name`
    pub public_key: String,
    dir: tempfile::TempDir,
}

impl TestUser {
    pub fn create(tag: &str) -> Self {
        let name = unique_name(tag);
        let dir = tempfile::Builder::new()
            .prefix("enf-user-")
            .tempdir()
            .unwrap();
        let home = dir.path().join("home");
        run(Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", "-d"])
            .arg(&home)
            .arg(&name));
        let key = dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &name, "-f"])
            .arg(&key));
        let public_key = std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned();
        let uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        TestUser {
            name,
            uid,
            key,
            public_key,
            dir,
        }
    }

    /// `SHA256:…` of the user's key, as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.key.with_extension("pub"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }

    /// Signs the user's key with `ca` (a private key path); returns the certificate path.
    pub fn certify(&self, ca: &std::path::Path, key_id: &str) -> PathBuf {
        run(Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", key_id, "-n", &self.name, "-z", "77"])
            .arg(self.key.with_extension("pub")));
        self.dir.path().join("id_ed25519-cert.pub")
    }

    pub fn join_group(&self, group: &TestGroup) {
        self.join_group_named(&group.name);
    }

    /// Adds the user to an existing system group (e.g. `utmp`).
    pub fn join_group_named(&self, group: &str) {
        run(Command::new("usermod").args(["-a", "-G", group, &self.name]));
    }

    /// Runs `cmd` as this user (real uid/gid and groups), e.g. enforcerctl.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.uid_gid()))
            .arg("--init-groups")
            .arg(program);
        c
    }

    fn uid_gid(&self) -> u32 {
        nix::unistd::User::from_uid(self.uid.into())
            .unwrap()
            .unwrap()
            .gid
            .as_raw()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        procs::kill_uid(self.uid);
        let _ = Command::new("userdel")
            .args(["-r", "-f", &self.name])
            .output();
    }
}

/// A local group.
pub struct TestGroup {
    pub name: String,
}

impl TestGroup {
    pub fn create(tag: &str) -> Self {
        let name = unique_name(tag);
        run(Command::new("groupadd").arg(&name));
        TestGroup { name }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A second name for an account (here a passwd entry with the same uid), removed by name.
pub struct Alias(pub String);

impl Alias {
    /// A passwd entry `enf<tag>…` with `owner`'s uid.
    pub fn of(owner: &TestUser, tag: &str) -> Self {
        let alias = Alias(unique_name(tag));
        run(Command::new("useradd")
            .args(["--non-unique", "--no-create-home", "--uid"])
            .arg(owner.uid.to_string())
            .arg(&alias.0));
        alias
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}
