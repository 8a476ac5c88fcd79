//! A pod's processes as the node sees them, and Debian's kubectl.
//!
//! Node view (shared/DESIGN.md, "Kubernetes exec"): `containerd-shim-runc-v2 -namespace k8s.io
//! -id <sandbox> …` (reparented to init) is the parent of the sandbox process, of every
//! container's main process and of every exec'd process; they all share the container's
//! cgroup, so only ancestry tells an exec from the pod's own processes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{containerd::cmdline, procs};

/// Debian's kubectl (kubernetes-client 1.20): unpacked into `target/kubernetes-client` by
/// `cargo xtask setup` where another package owns /usr/bin/kubectl, else /usr/bin/kubectl.
/// `KUBECTL` overrides both.
pub fn kubectl() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL") {
        return k.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let unpacked = target.join("kubernetes-client/usr/bin/kubectl");
    if unpacked.is_file() {
        unpacked
    } else {
        PathBuf::from("/usr/bin/kubectl")
    }
}

/// [`kubectl`] with `--kubeconfig KUBECONFIG ARGS…`, `HOME` (its cache) in `home`; panics if
/// kubectl is not installed.
pub fn kubectl_command(kubeconfig: &Path, home: &Path, args: &[&str]) -> Command {
    let k = kubectl();
    assert!(
        k.is_file(),
        "{} is missing: `cargo xtask setup` installs Debian's kubectl",
        k.display()
    );
    let mut cmd = Command::new(k);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", home)
        .env("TERM", "xterm");
    cmd
}

/// The parent pid of `pid`, from /proc.
pub fn ppid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The shim of the pod whose sandbox process is `sandbox_pid` (its parent); panics if that
/// parent is not a `containerd-shim-runc-v2`.
pub fn shim_of(sandbox_pid: u32) -> u32 {
    let shim = ppid(sandbox_pid).unwrap_or_else(|| panic!("sandbox pid {sandbox_pid} is gone"));
    let args = cmdline(shim);
    assert!(
        args.first()
            .is_some_and(|a| a.ends_with("containerd-shim-runc-v2")),
        "parent {shim} of sandbox {sandbox_pid} is not a shim: {args:?}"
    );
    shim
}

/// One process under a pod's shim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProcess {
    pub pid: u32,
    pub ppid: u32,
    pub cmdline: Vec<String>,
}

/// Every process below `shim` (sandbox, containers, execs and their children).
pub fn pod_processes(shim: u32) -> Vec<PodProcess> {
    procs::descendants(shim)
        .into_iter()
        .filter_map(|pid| {
            Some(PodProcess {
                pid,
                ppid: ppid(pid)?,
                cmdline: cmdline(pid),
            })
        })
        .collect()
}

/// The exec'd process running `cmd`, as a test finds it: a child of the shim with that
/// command line that is none of `not` (the sandbox and containers' main processes).
pub fn find_exec(shim: u32, cmd: &[&str], not: &[u32]) -> Option<u32> {
    pod_processes(shim)
        .into_iter()
        .find(|p| p.ppid == shim && p.cmdline == cmd && !not.contains(&p.pid))
        .map(|p| p.pid)
}

/// `/proc/<pid>/cgroup` as hierarchy id → path (`0` is the v2 "unified" one).
pub fn cgroups_of(pid: u32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let key = if controllers.is_empty() {
                id
            } else {
                controllers
            };
            Some((key.to_owned(), path.to_owned()))
        })
        .collect()
}
