//! A node for `kubectl exec` tests: a private containerd with a pod running `sleep`, the
//! apiserver stand-in serving its Node with the enforcement label, and enforcerd pointed at
//! both.

use std::time::Duration;

use serde_json::Value;

use crate::{
    TestDaemon,
    containerd::TestContainerd,
    cri::{CriClient, Pod},
    kube::{find_exec, shim_of},
    kube_api::KubeApi,
    ssh::wait_until,
};

/// How long the tests wait for something that should happen.
pub const T: Duration = Duration::from_secs(15);
/// The enforcement label the stand-in's Node carries.
pub const LABEL: (&str, &str) = ("enforcer.dev/enforce", "true");

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The field of `/proc/PID/stat` after the command (0 = state, 1 = ppid, 3 = session id).
pub fn stat_field(pid: u32, n: usize) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.split(' ').nth(n)?.parse().ok()
}

/// Every process whose command line is exactly `cmd`.
pub fn pids_running(cmd: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| crate::containerd::cmdline(*pid) == cmd)
        .collect()
}

/// A node with a containerd, a pod running `sleep`, the apiserver stand-in and enforcerd.
pub struct Bed {
    pub ctrd: TestContainerd,
    pub api: KubeApi,
    pub kc: tempfile::TempDir,
    pub node: String,
    pub pod: Pod,
    pub cid: String,
    pub main_pid: u32,
    pub sandbox_pid: u32,
    pub shim: u32,
}

impl Bed {
    /// containerd and the pod (no daemon yet: [`Bed::daemon`]).
    pub fn new(tag: &str) -> Self {
        let ctrd = TestContainerd::start();
        let node = format!("ks-{tag}-{}", std::process::id());
        let api = KubeApi::start(&node, &[LABEL]).unwrap();
        let kc = tempfile::tempdir().unwrap();
        api.write_kubeconfig(&kc.path().join("kubeconfig")).unwrap();
        let cri = ctrd.cri();
        let pod = cri.run_pod("web", "team-a");
        let cid = cri.start_container(&pod, "main", &["/bin/sleep", "100000"]);
        let main_pid = cri.container_pid(&cid);
        let sandbox_pid = cri.sandbox_pid(&pod.id);
        let shim = shim_of(sandbox_pid);
        Bed {
            ctrd,
            api,
            kc,
            node,
            pod,
            cid,
            main_pid,
            sandbox_pid,
            shim,
        }
    }

    pub fn daemon(&self) -> TestDaemon {
        self.daemon_with("")
    }

    /// enforcerd for this node, with more `[kubernetes]` keys (and sections after them).
    pub fn daemon_with(&self, more: &str) -> TestDaemon {
        TestDaemon::start(&format!(
            "[kubernetes]\nenabled = true\nnode_name = \"{}\"\nkubeconfig = \"{}\"\ncontainerd_socket = \"{}\"\nlocks_dir = \"{}\"\n{more}",
            self.node,
            self.kc.path().join("kubeconfig").display(),
            self.ctrd.socket.display(),
            self.kc.path().join("kube-locks.d").display(),
        ))
    }

    /// [`Bed::daemon_with`], once it is connected to containerd (it sees every exec from then).
    pub fn daemon_connected(&self, more: &str) -> TestDaemon {
        let d = self.daemon_with(more);
        assert!(
            wait_until(Duration::from_secs(15), || d
                .ctl_ok(&["status"])
                .contains("containerd connected")),
            "{}",
            d.ctl_ok(&["status"])
        );
        d
    }

    pub fn cri(&self) -> CriClient {
        self.ctrd.cri()
    }

    /// Waits for the exec'd process running `cmd` (a child of the pod's shim) and returns it.
    pub fn wait_exec(&self, cmd: &[&str]) -> u32 {
        let mut pid = None;
        assert!(
            wait_until(T, || {
                pid = find_exec(self.shim, cmd, &[self.sandbox_pid, self.main_pid]);
                pid.is_some()
            }),
            "exec'd {cmd:?} not found under shim {}",
            self.shim
        );
        pid.unwrap()
    }

    /// A tty shell in the pod (`kubectl exec -it web -- sh`), ready for input.
    pub fn shell(&self) -> crate::exec_stream::ExecStream {
        let sh = crate::exec_stream::ExecStream::connect(&self.cri().exec(
            &self.cid,
            &["sh"],
            true,
            true,
        ));
        sh.send_stdin("echo ready-$((20+1))\n");
        assert!(
            sh.read_until("ready-21", T),
            "shell: {:?}",
            sh.output_text()
        );
        sh
    }

    /// With `first` the pod's only allowed exec (`max_exec_sessions_per_pod = 1`): `refusals`
    /// execs of `touch MARK` are refused with the reason on their stderr and never run it;
    /// once `first` exits, the same command runs.
    pub fn check_refusals_never_run(
        &self,
        d: &TestDaemon,
        first: crate::exec_stream::ExecStream,
        mark: &str,
        refusals: usize,
    ) {
        let seen = format!("/proc/{}/root{mark}", self.main_pid);
        let _ = std::fs::remove_file(&seen);
        let touch = || {
            crate::exec_stream::ExecStream::connect(&self.cri().exec(
                &self.cid,
                &["/bin/touch", mark],
                false,
                false,
            ))
        };
        for _ in 0..refusals {
            let refused = touch();
            assert!(
                wait_until(T, || String::from_utf8_lossy(&refused.stderr()).contains(
                    "enforcer: exec refused: pod team-a/web already has 1 of 1"
                )),
                "stderr {:?} out {:?}\n{}",
                String::from_utf8_lossy(&refused.stderr()),
                refused.output_text(),
                d.log()
            );
            assert!(wait_until(T, || refused.is_closed()));
            assert!(
                !std::path::Path::new(&seen).exists(),
                "the refused command ran\n{}",
                d.log()
            );
        }
        // Once the slot is free the same command runs, held only for the decision.
        first.send_stdin("exit\n");
        assert!(wait_until(T, || exec_entries(d).is_empty()));
        assert_eq!(touch().wait_exit(T), Some(0), "{}", d.log());
        assert!(std::path::Path::new(&seen).exists());
    }

    /// The exec id containerd gave the exec whose process is `pid` (`ctr tasks ps`).
    pub fn exec_id_of(&self, pid: u32) -> Option<String> {
        let out = self.ctrd.ctr(&["tasks", "ps", &self.cid]);
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))?;
        let i = line.find("ExecID:")? + "ExecID:".len();
        Some(
            line[i..]
                .trim_start_matches('"')
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .next()?
                .to_owned(),
        )
    }
}

/// The `kube_exec` entries of `sessions --json`.
pub fn exec_entries(d: &TestDaemon) -> Vec<Value> {
    d.sessions()
        .into_iter()
        .filter(|c| c["kind"] == "kube_exec")
        .collect()
}

/// Waits for the `kube_exec` entry whose exec'd process is `pid`.
pub fn wait_listed(d: &TestDaemon, pid: u32) -> Value {
    let mut found = None;
    assert!(
        wait_until(T, || {
            found = exec_entries(d)
                .into_iter()
                .find(|c| c["kube"]["pid"] == pid);
            found.is_some()
        }),
        "exec process {pid} never listed: {:#?}\n{}",
        d.sessions(),
        d.log()
    );
    found.unwrap()
}
