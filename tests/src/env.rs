//! Where the binaries are, and whether this test may run here.

use std::path::PathBuf;

/// Directory of the built binaries: `ENFORCER_BIN_DIR` (set by `cargo xtask test`), else the
/// workspace's debug target dir.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("ENFORCER_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"))
}

/// Path of a built binary; panics with how to build it when absent.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not built; run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

/// True when this test may use root-only features. Without root: under CI (`CI` set) this
/// fails the test; elsewhere the test is skipped with a note.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root (BPF, sshd, users) and CI is set: run the suite as root");
    }
    eprintln!("SKIPPED: needs root (run `sudo -E cargo xtask test`)");
    false
}

/// A program the test needs: `$override_var` if set, else `name` on PATH. Missing: under CI
/// the test fails (setup installs it), elsewhere it is skipped with a note (`None`).
pub fn require_program(name: &str, override_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(override_var) {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed and CI is set: run `cargo xtask setup` (or set {override_var})"
        );
        eprintln!("SKIPPED: {name} is not installed");
    }
    found
}
