//! A private containerd (Debian's 1.6, with runc) for the kube exec tests: its own config,
//! root, state, gRPC socket and runc root in a temp dir, the CRI plugin on with
//! `restrict_oom_score_adj` (root lacks CAP_SYS_RESOURCE here), no CNI (hostNetwork pods only),
//! the streaming server on 127.0.0.1, and [`IMAGE`] imported as its sandbox image.
//!
//! containerd 1.6 still puts two things under /run/containerd whatever its config says: shim
//! sockets (`/run/containerd/s/<sha256 of socket path, namespace, id>`, so distinct per
//! instance) and the client-side fifo dir of `ctr run` (not used here). runc's state goes to
//! the runtime option `Root` inside the temp dir. So several instances, and the system's own,
//! do not clash.
//!
//! Cleanup is by pid and path only: pods are stopped and removed through the CRI, containerd
//! is stopped by its pid, leftover shims are found by our socket path in their command line,
//! mounts under the temp dir are detached, and the pods' cgroups (the parents handed out by
//! [`TestContainerd::pod_cgroup_parent`]) are removed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

pub use crate::busybox_image::IMAGE;
use crate::{busybox_image, cri::CriClient, procs};

/// The containerd namespace the CRI plugin uses.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// A running private containerd.
pub struct TestContainerd {
    /// Config, root, state, socket, logs.
    pub dir: tempfile::TempDir,
    /// The gRPC socket (CRI and containerd API).
    pub socket: PathBuf,
    child: Option<Child>,
    /// Pod cgroup parents handed out, removed on drop.
    cgroups: Arc<Mutex<Vec<String>>>,
}

/// The containerd binary: under CI a missing one fails the test, elsewhere `None` skips it.
pub fn containerd_installed() -> bool {
    let ok = [
        "/usr/bin/containerd",
        "/usr/bin/ctr",
        "/usr/sbin/runc",
        busybox_image::BUSYBOX,
    ]
    .iter()
    .all(|p| Path::new(p).is_file());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!(
                "containerd, runc or busybox-static is missing and CI is set: run `cargo xtask setup`"
            );
        }
        eprintln!("SKIPPED: containerd/runc/busybox-static missing (run `cargo xtask setup`)");
    }
    ok
}

fn config(dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Snapshotters that cannot work here only add noise to the log.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{d}/debug.sock"
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{IMAGE}"
  # runc cannot raise oom_score_adj without CAP_SYS_RESOURCE (shared/DESIGN.md part B).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.cni]
    # Empty: no pod network; hostNetwork pods need none.
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        # Else runc keeps its state in /run/containerd/runc, shared with other instances.
        Root = "{d}/runc"
        SystemdCgroup = false
"#,
        sock = socket.display(),
    )
}

impl TestContainerd {
    /// Starts containerd, waits for its socket, and imports the busybox image into the CRI's
    /// namespace.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("enf-ctrd-")
            .tempdir()
            .expect("temp dir for containerd");
        let socket = dir.path().join("containerd.sock");
        for sub in ["cni/bin", "cni/conf"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let conf = dir.path().join("config.toml");
        std::fs::write(&conf, config(dir.path(), &socket)).unwrap();
        let child = spawn(dir.path());
        let mut c = TestContainerd {
            dir,
            socket,
            child: Some(child),
            cgroups: Arc::default(),
        };
        c.wait_ready(Duration::from_secs(30));
        c.import_image();
        c
    }

    /// Stops containerd (SIGTERM, by pid) and starts it again on the same config and state,
    /// as a node's containerd restarts: its shims, pods and exec processes keep running.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.dir.path()));
        self.wait_ready(Duration::from_secs(30));
    }

    /// Stops containerd: SIGTERM by pid, SIGKILL after 10 s.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("containerd running")
    }

    /// containerd's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Waits until the CRI answers Version (the socket exists before the CRI plugin is up).
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("containerd exited ({st}) at start:\n{}", self.log());
            }
            if self.socket.exists() && CriClient::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI not up within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr` against this instance, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", K8S_NAMESPACE])
            .args(args)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn import_image(&self) {
        let archive = self.dir.path().join("busybox-image.tar");
        busybox_image::write_docker_archive(&archive);
        self.ctr(&["images", "import", archive.to_str().unwrap()]);
        std::fs::remove_file(&archive).unwrap();
    }

    /// A CRI client playing the kubelet against this instance.
    pub fn cri(&self) -> CriClient {
        CriClient::connect(&self.socket)
            .unwrap_or_else(|e| panic!("CRI connect: {e}\n{}", self.log()))
            .with_cgroup_registry(self.cgroups.clone())
    }

    /// The kubelet's (cgroupfs driver) cgroup parent for a BestEffort pod, remembered so the
    /// pod's cgroups are removed on drop.
    pub fn pod_cgroup_parent(&self, uid: &str) -> String {
        register_cgroup_parent(&self.cgroups, uid)
    }

    /// The shim processes started by this instance (found by our socket in their command line).
    pub fn shim_pids(&self) -> Vec<u32> {
        shims_of(&self.socket)
    }

    /// Stops every pod through the CRI, then containerd, then leftovers; see the module doc.
    fn cleanup(&mut self) {
        if self.child.is_some() {
            if let Ok(cri) = CriClient::connect(&self.socket) {
                cri.remove_all_pods();
            }
        }
        self.stop();
        // Shims outlive containerd by design; ours are the ones naming our socket.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let shims = shims_of(&self.socket);
            if shims.is_empty() || Instant::now() > deadline {
                break;
            }
            for s in shims {
                procs::kill_tree(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        remove_shim_sockets(self.dir.path());
        unmount_under(self.dir.path());
        // A killed process can hold its cgroup for a moment (until it is reaped): retry.
        let parents: Vec<String> = self.cgroups.lock().unwrap().drain(..).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        for parent in parents {
            while {
                remove_cgroup(&parent);
                !cgroup_dirs(&parent).is_empty() && Instant::now() < deadline
            } {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Starts containerd on `dir`'s config (its log appended to `dir`/containerd.log).
fn spawn(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    let mut cmd = Command::new("/usr/bin/containerd");
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        // The shims it starts look runc (Debian: /usr/sbin/runc) up on this PATH.
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // Its own process group: a Ctrl-C of the test run does not reach it half-way.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
        .expect("containerd (Debian containerd) must be installed: cargo xtask setup")
}

/// Remembers and returns `/kubepods/besteffort/pod<uid>`.
pub(crate) fn register_cgroup_parent(registry: &Mutex<Vec<String>>, uid: &str) -> String {
    let parent = format!("/kubepods/besteffort/pod{uid}");
    registry.lock().unwrap().push(parent.clone());
    parent
}

/// The NUL-separated command line of `pid`, as arguments.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Every pid on the machine.
pub(crate) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `containerd-shim-runc-v2 … -address <socket>` processes of the containerd at `socket`.
fn shims_of(socket: &Path) -> Vec<u32> {
    let sock = socket.to_string_lossy();
    all_pids()
        .into_iter()
        .filter(|&p| {
            let args = cmdline(p);
            args.first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && args.windows(2).any(|w| w[0] == "-address" && w[1] == *sock)
        })
        .collect()
}

/// A SIGKILLed shim leaves its socket in /run/containerd/s; its task dir names it.
fn remove_shim_sockets(dir: &Path) {
    let tasks = dir
        .join("state/io.containerd.runtime.v2.task")
        .join(K8S_NAMESPACE);
    for e in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        let Ok(addr) = std::fs::read_to_string(e.path().join("address")) else {
            continue;
        };
        let path = addr.trim().trim_start_matches("unix://");
        if path.starts_with("/run/containerd/s/") {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Mount points under `dir` (this process's view), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as \0xx; our temp paths have none.
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out.dedup();
    out
}

/// Detaches overlay rootfs and shm mounts a killed containerd left.
fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The cgroup hierarchies mounted here (v1 controllers and the v2 "unified" one).
fn cgroup_roots() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// Where `parent` exists, in every hierarchy.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(parent.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .collect()
}

/// Removes `parent` and the cgroups below it (leaves first) in every hierarchy.
fn remove_cgroup(parent: &str) {
    fn rmdir_tree(d: &Path) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
        // A cgroup dir is removed with rmdir alone (its files are not real files).
        let _ = std::fs::remove_dir(d);
    }
    for d in cgroup_dirs(parent) {
        rmdir_tree(&d);
    }
}
