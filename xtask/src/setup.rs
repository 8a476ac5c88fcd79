//! Installing prerequisites on a fresh Debian 12 machine, idempotently: nothing is reinstalled
//! when it is already there.

use std::process::Command;

use anyhow::{Context, bail};

use crate::cmd::{output, run, target_dir};

/// Toolchain that builds the BPF object.
pub const BPF_TOOLCHAIN: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and benchmarks use.
const TEST_PACKAGES: &[&str] = &[
    "openssh-server", // the real sshd the end-to-end tests drive
    "openssh-client",
    "bpftool",   // tests check nothing of ours stays attached
    "pamtester", // drives the PAM module through real libpam without sshd
    "procps",
    "asciinema",      // recordings must play in it; a peer in `bench recording`
    "tlog",           // peer in `bench recording`
    "bsdutils",       // script(1): peer in `bench recording`, and a terminal for `asciinema cat`
    "pv",             // rate-limited output for `bench recording`
    "debootstrap",    // a clean Debian root to `apt install` the .deb into
    "lintian",        // the .deb must be lintian-clean
    "rsync",          // file transfers: rsync sessions are audited, not recorded
    "etcd-client",    // etcdctl: the fleet tests read and write the cluster with it
    "runc",           // kube exec tests: the OCI runtime under the private containerd
    "busybox-static", // kube exec tests: the one binary the tests build their image from
];
// Debian's `prometheus` (server + promtool) too, installed without starting it: `prometheus()`.

/// Debian packages any build needs (the daemon and the module alike).
const BUILD_PACKAGES: &[&str] = &[
    "libpam0g-dev",      // links pam_enforcer.so
    "protobuf-compiler", // etcd-client's build script compiles etcd's gRPC protos
    "libprotobuf-dev",   // ... and imports google/protobuf/*.proto from it
];

/// Build packages, rust-src for the BPF toolchain and bpf-linker built against that
/// toolchain's own LLVM.
pub fn toolchain() -> anyhow::Result<()> {
    apt_install(BUILD_PACKAGES)?;
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", BPF_TOOLCHAIN]))
        .with_context(|| format!("the {BPF_TOOLCHAIN} toolchain is missing; install it with `rustup toolchain install {BPF_TOOLCHAIN}`"))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            BPF_TOOLCHAIN,
        ]))?;
    }
    bpf_linker()
}

/// Debian release of the clean root the package test installs the .deb into (this machine's).
const DEB_ROOT_SUITE: &str = "bookworm";

/// A minimal Debian root with openssh-server (debootstrap), built once into target/deb-root;
/// the package test mounts an overlay of it per test, so it stays clean.
pub fn deb_root() -> anyhow::Result<std::path::PathBuf> {
    let dir = target_dir().join("deb-root").join(DEB_ROOT_SUITE);
    let done = dir.join(".complete");
    if done.is_file() {
        return Ok(dir);
    }
    if dir.exists() {
        // A debootstrap that was interrupted: start over.
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=openssh-server",
            DEB_ROOT_SUITE,
        ])
        .arg(&dir)
        .arg("http://deb.debian.org/debian"))?;
    std::fs::write(&done, b"")?;
    Ok(dir)
}

/// cargo-deb builds the .deb from `[package.metadata.deb]` in enforcer/Cargo.toml.
const CARGO_DEB_VERSION: &str = "3.7.0";

/// Installs cargo-deb at the pinned version unless it is there.
pub fn cargo_deb() -> anyhow::Result<()> {
    cargo_tool("deb", "cargo-deb", CARGO_DEB_VERSION)
}

/// Installs the cargo subcommand `sub` (crate `krate`) at `version` unless that version is
/// what `cargo SUB --version` reports.
pub fn cargo_tool(sub: &str, krate: &str, version: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("cargo").args([sub, "--version"]));
    if installed.as_deref().is_some_and(|v| v.contains(version)) {
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        "--locked",
        krate,
        "--version",
        version,
        "--force",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    // Run through rustup so the toolchain's libLLVM is on the library path, as during builds.
    let version =
        output(Command::new("rustup").args(["run", BPF_TOOLCHAIN, "bpf-linker", "--version"]));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustc").args([&format!("+{BPF_TOOLCHAIN}"), "--print", "sysroot"]))
            .context("cannot ask the BPF toolchain for its sysroot")?;
    let lib = std::path::Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))?;
    // "libLLVM.so.22.1-rust-1.97.0-nightly" → 22
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("cannot read the LLVM version from {llvm}"))?;
    // bpf-linker links against `<prefix>/lib/libLLVM.so`; point both names at the toolchain's.
    let prefix = target_dir().join("llvm-prefix");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so".to_owned(), llvm.clone()] {
        let link = plib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    }
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]))?;
    Ok(())
}

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let st = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]));
            st.as_deref() != Some("install ok installed")
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs missing Debian packages (never upgrades what is there).
pub fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "missing packages {missing:?}; run as root (or `sudo apt-get install {}`)",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    let install = || {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))
    };
    // A first install that upgrades libpam0g can fail once (shared/DESIGN.md part B).
    install().or_else(|e| {
        eprintln!("apt-get install failed ({e}); retrying once");
        install()
    })
}

/// Packages the test suite needs.
pub fn test_packages() -> anyhow::Result<()> {
    apt_install(TEST_PACKAGES)?;
    prometheus()?;
    s3s_fs()?;
    // A real etcd (3.4) for the fleet tests: a private 3-member cluster on loopback ports.
    without_service("etcd-server", "etcd")?;
    // Kube exec tests run a private containerd (own config, root, socket); never the service.
    without_service("containerd", "containerd")?;
    kubernetes_client()
}

/// Where Debian's kubectl is unpacked when another package already owns /usr/bin/kubectl.
const KUBECTL_DIR: &str = "kubernetes-client";

/// Debian's kubectl (kubernetes-client), which the kube exec tests drive. Some machines carry
/// another package's /usr/bin/kubectl (the Cloud SDK's `kubectl`), which dpkg refuses to
/// overwrite: there the Debian package is unpacked into `target/kubernetes-client/` instead,
/// where the tests look first (`enforcer_tests::kube::kubectl()`).
fn kubernetes_client() -> anyhow::Result<()> {
    const PKG: &str = "kubernetes-client";
    if missing_packages(&[PKG]).is_empty() {
        return Ok(());
    }
    let owner = output(Command::new("dpkg-query").args(["-S", "/usr/bin/kubectl"]));
    let Some(owner) = owner.filter(|o| !o.starts_with(PKG)) else {
        return apt_install(&[PKG]);
    };
    let dir = target_dir().join(KUBECTL_DIR);
    if dir.join("usr/bin/kubectl").is_file() {
        return Ok(());
    }
    eprintln!(
        "/usr/bin/kubectl belongs to {}: unpacking {PKG} into {}",
        owner.trim(),
        dir.display()
    );
    let dl = target_dir().join("apt-download");
    std::fs::create_dir_all(&dl)?;
    run(Command::new("apt-get")
        .current_dir(&dl)
        .args(["download", PKG]))?;
    let deb = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{PKG}_")))
        })
        .with_context(|| format!("apt-get download {PKG} left no .deb in {}", dl.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::remove_dir_all(&dl)?;
    Ok(())
}

/// The S3-compatible server the `[recording.store]` tests upload to (SigV4 enforced, multipart;
/// shared/DESIGN.md "Fleet and storage servers"). 0.17 needs a newer rustc.
const S3S_FS_VERSION: &str = "0.14.1";

/// Installs s3s-fs (with its binary) at the pinned version unless that is what is installed.
fn s3s_fs() -> anyhow::Result<()> {
    let installed = output(Command::new("s3s-fs").arg("--version"));
    if installed
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == S3S_FS_VERSION))
    {
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        "--locked",
        "s3s-fs",
        "--version",
        S3S_FS_VERSION,
        "--features",
        "binary",
        "--force",
    ]))
}

/// Where a temporary policy-rc.d goes while Prometheus is installed.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Debian's Prometheus server and promtool: the metrics test scrapes enforcerd with a private
/// instance of it (own config, data dir and port). Its own service must never run: a
/// policy-rc.d that forbids starting services is put in place for the install (unless one is
/// there already), and the service is disabled afterwards (sysvinit links and systemd unit).
fn prometheus() -> anyhow::Result<()> {
    without_service("prometheus", "prometheus")
}

/// Installs `package` (unless it is there) without ever starting its `service`, and leaves
/// that service disabled.
fn without_service(package: &str, service: &str) -> anyhow::Result<()> {
    if missing_packages(&[package]).is_empty() {
        return Ok(());
    }
    let policy = std::path::Path::new(POLICY_RC_D);
    let ours = !policy.exists();
    if ours {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(policy, "#!/bin/sh\n# cargo xtask setup: no service starts during its apt-get install\nexit 101\n")
            .with_context(|| format!("writing {POLICY_RC_D}; run as root"))?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = apt_install(&[package]);
    if ours {
        std::fs::remove_file(policy).with_context(|| format!("removing {POLICY_RC_D}"))?;
    }
    installed?;
    // Best effort: either init system's enablement may be absent on this machine.
    let _ = output(Command::new("update-rc.d").args([service, "disable"]));
    let unit = format!("{service}.service");
    // deb-systemd-helper does nothing unless it believes dpkg called it.
    let _ = output(
        Command::new("deb-systemd-helper")
            .env("DPKG_MAINTSCRIPT_PACKAGE", package)
            .args(["disable", unit.as_str()]),
    );
    Ok(())
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}
