//! Building the BPF object, the userspace binaries, and running them and the tests.

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::Context;

use crate::{
    cmd::{cargo, run as run_cmd, target_dir},
    setup::BPF_TOOLCHAIN,
};

/// Builds the BPF object and returns its path.
pub fn ebpf(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = Command::new("cargo");
    c.current_dir(crate::cmd::workspace_root())
        .arg(format!("+{BPF_TOOLCHAIN}"))
        .args([
            "build",
            "--package",
            "enforcer-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        // BTF lets bpftool and the kernel show our map and program types; cpu v3 has the
        // fetch-and-add instruction the session counters use (enforcer-ebpf/src/atomic.rs).
        .env(
            "RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3",
        )
        // The stable cargo that runs xtask exports these; they must not leak into nightly's build.
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    if release {
        c.arg("--release");
    }
    run_cmd(&mut c)?;
    let profile = if release { "release" } else { "debug" };
    let obj = target_dir()
        .join("bpfel-unknown-none")
        .join(profile)
        .join("enforcer-ebpf");
    anyhow::ensure!(obj.is_file(), "BPF build produced no {}", obj.display());
    Ok(obj)
}

/// What a full build produced.
pub struct Built {
    pub bpf_object: PathBuf,
    /// Directory of enforcerd, enforcerctl and libpam_enforcer.so.
    pub bin_dir: PathBuf,
}

/// Builds the BPF object (always optimised: it is what ships) and every userspace crate of the
/// workspace's default members (the BPF crate is not one).
pub fn all(release: bool) -> anyhow::Result<Built> {
    let bpf_object = ebpf(true)?;
    let mut c = cargo();
    c.args(["build", "--bins", "--lib"])
        .env("ENFORCER_BPF_OBJECT", &bpf_object);
    if release {
        c.arg("--release");
    }
    run_cmd(&mut c)?;
    Ok(Built {
        bpf_object,
        bin_dir: target_dir().join(if release { "release" } else { "debug" }),
    })
}

/// Builds enforcerd (release) and replaces this process with it.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let obj = ebpf(true)?;
    run_cmd(
        cargo()
            .args(["build", "--release", "--package", "enforcer", "--bins"])
            .env("ENFORCER_BPF_OBJECT", &obj),
    )?;
    let bin = target_dir().join("release").join("enforcerd");
    eprintln!("+ {} {}", bin.display(), args.join(" "));
    let err = Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("cannot exec {}", bin.display()))
}

/// Builds everything and runs every test; end-to-end tests drive the release binaries (what
/// ships, and fast enough that a 50 MB recording test measures enforcer, not debug code),
/// found through `ENFORCER_BIN_DIR`; the package test installs the .deb (`ENFORCER_DEB`) into an
/// overlay of a debootstrap root (`ENFORCER_DEB_ROOT`).
pub fn test(filter: Option<&str>) -> anyhow::Result<()> {
    let built = all(true)?;
    let deb = crate::deb::build(&built)?;
    let deb_root = crate::setup::deb_root()?;
    // The benchmarks are not run here, but they must build: one that did not (an enum grew a
    // variant its match lacked) went unnoticed until the next `bench fleet`.
    run_cmd(cargo().args(["bench", "--package", "enforcer-tests", "--no-run"]))?;
    let mut c = cargo();
    c.args(["test", "--no-fail-fast"])
        .env("ENFORCER_BPF_OBJECT", &built.bpf_object)
        .env("ENFORCER_BIN_DIR", &built.bin_dir)
        .env("ENFORCER_DEB", &deb)
        .env("ENFORCER_DEB_ROOT", &deb_root);
    if let Some(f) = filter {
        c.arg("--").arg(f);
    }
    run_cmd(&mut c)
}

/// Benchmarks live in the tests crate (they reuse its sshd/daemon harness).
const BENCHES: &[&str] = &[
    "pam",
    "exec",
    "idle",
    "recording",
    "lock",
    "syscall",
    "store",
    "fleet",
    "kube",
];

/// Builds release binaries and runs one benchmark against them.
pub fn bench(name: &str, parts: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        BENCHES.contains(&name),
        "unknown benchmark {name:?}; known: {}",
        BENCHES.join(", ")
    );
    let built = all(true)?;
    run_cmd(
        cargo()
            .args([
                "bench",
                "--package",
                "enforcer-tests",
                "--bench",
                name,
                "--",
            ])
            .args(parts)
            .env("ENFORCER_BPF_OBJECT", &built.bpf_object)
            .env("ENFORCER_BIN_DIR", &built.bin_dir)
            // Daemons at the default log level, as in production (the tests log debug).
            .env("ENFORCER_TEST_DAEMON_LOG", "info"),
    )
}
