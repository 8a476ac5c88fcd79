//! `kubectl exec` sessions on this node (pure): who they are (pod, container, containerd's exec
//! id), which kernel identity their processes carry, and the table the daemon keeps of them.
//! containerd tells the daemon about an exec; the kernel follows its processes; nothing here
//! does I/O.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use super::{ExecCensus, PodRef, idle::InputClock};

/// CRI labels containerd keeps on every container the kubelet created.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// The container an exec runs in, as containerd names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMeta {
    pub pod: PodRef,
    pub pod_uid: String,
    /// The container's name in the pod spec.
    pub container: String,
    /// containerd's container id.
    pub container_id: String,
}

impl ContainerMeta {
    /// From a container's CRI labels; `None` for containers the kubelet did not create (no pod
    /// labels), which are never exec sessions.
    pub fn from_labels(container_id: &str, labels: &HashMap<String, String>) -> Option<Self> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Some(ContainerMeta {
            pod: PodRef {
                namespace: get(LABEL_POD_NAMESPACE)?,
                name: get(LABEL_POD_NAME)?,
            },
            pod_uid: get(LABEL_POD_UID).unwrap_or_default(),
            // A sandbox (pause) container has no container name: it is no exec target anyway.
            container: get(LABEL_CONTAINER_NAME)?,
            container_id: container_id.to_owned(),
        })
    }
}

/// One live exec session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSession {
    /// The session id `enforcerctl sessions` shows and `kill session` takes (shared with SSH
    /// sessions' ids).
    pub id: u64,
    /// The kernel identity its processes carry (`TrackedTask::conn_id`; drawn from the
    /// connection ids so it never collides with an SSH connection's).
    pub kernel_id: u64,
    /// containerd's exec id (the kubelet makes one per exec).
    pub exec_id: String,
    pub meta: ContainerMeta,
    /// The exec'd process (the session's root; its task id is the kernel session id).
    pub pid: u32,
    /// Its start time (ns since boot): with `pid` it names the process unambiguously.
    pub start_ns: u64,
    pub started_at: OffsetDateTime,
    /// The root's command line, space-joined.
    pub command: String,
    /// The pty ("pts/0" of the container's devpts) when the exec has one.
    pub tty: Option<String>,
    /// Programs executed in the session after it was tracked.
    pub commands: u64,
    pub last_activity: OffsetDateTime,
    /// Still runc's own init when tracked (containerd reports an exec once runc has its pid,
    /// often before runc's init has exec'd the command): `command` and the `session_started`
    /// record wait for the root's first exec.
    pub awaiting_exec: bool,
    /// When input last came (the idle timeout counts from it).
    pub input: InputClock,
    /// The idle warning went out for the current idle spell.
    pub idle_warned: bool,
    /// Its stdio as the shim's probes key it (see [`channel_object`]), recorded under
    /// `kernel_id` while the session lives.
    pub channels: Vec<u64>,
    /// The Kubernetes user behind it, once the admission webhook's grant was matched.
    pub identity: Option<super::admission::KubeIdentity>,
    /// The fleet was asked who it is and has not answered yet (its recording waits).
    pub identifying: bool,
}

impl ExecSession {
    /// The audit and listing `kind`.
    pub const KIND: &'static str = "kube_exec";

    /// A session of exec process `pid` (started at `start_ns`), nothing run or known in it yet.
    pub fn new(
        (id, kernel_id): (u64, u64),
        exec_id: String,
        meta: ContainerMeta,
        (pid, start_ns): (u32, u64),
        started_at: OffsetDateTime,
    ) -> Self {
        ExecSession {
            id,
            kernel_id,
            exec_id,
            meta,
            pid,
            start_ns,
            started_at,
            command: String::new(),
            tty: None,
            commands: 0,
            last_activity: started_at,
            awaiting_exec: false,
            input: InputClock::new(started_at),
            idle_warned: false,
            channels: Vec::new(),
            identity: None,
            identifying: false,
        }
    }
}

/// What [`ExecSessions::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// containerd reported an exec already tracked (a re-discovery after a reconnect, or the
    /// event and the discovery of the same exec).
    Known,
}

/// The live exec sessions, by session id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSessions {
    by_id: BTreeMap<u64, ExecSession>,
}

impl ExecSessions {
    /// Adds `s` unless an exec with the same container and exec id, or the same process, is
    /// already there.
    /// (An exec admitted while the kernel held it, before containerd reported it, has no exec
    /// id yet: it is told apart by its process only.)
    pub fn insert(&mut self, s: ExecSession) -> Inserted {
        if (!s.exec_id.is_empty() && self.by_exec(&s.meta.container_id, &s.exec_id).is_some())
            || self
                .by_id
                .values()
                .any(|o| o.pid == s.pid && o.start_ns == s.start_ns)
        {
            return Inserted::Known;
        }
        self.by_id.insert(s.id, s);
        Inserted::New
    }

    pub fn get(&self, id: u64) -> Option<&ExecSession> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut ExecSession> {
        self.by_id.get_mut(&id)
    }

    /// The session whose processes carry kernel identity `kernel_id`.
    pub fn by_kernel(&self, kernel_id: u64) -> Option<&ExecSession> {
        self.by_id.values().find(|s| s.kernel_id == kernel_id)
    }

    pub fn by_kernel_mut(&mut self, kernel_id: u64) -> Option<&mut ExecSession> {
        self.by_id.values_mut().find(|s| s.kernel_id == kernel_id)
    }

    pub fn by_exec(&self, container_id: &str, exec_id: &str) -> Option<&ExecSession> {
        self.by_id
            .values()
            .find(|s| s.exec_id == exec_id && s.meta.container_id == container_id)
    }

    pub fn remove(&mut self, id: u64) -> Option<ExecSession> {
        self.by_id.remove(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ExecSession> {
        self.by_id.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut ExecSession> {
        self.by_id.values_mut()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The live sessions counted per pod, namespace and node, for `admit_exec`.
    pub fn census(&self) -> ExecCensus {
        ExecCensus::of(self.by_id.values().map(|s| &s.meta.pod))
    }
}

/// The space-joined command line of a `/proc/PID/cmdline` (NUL-separated).
pub fn command_line(cmdline: &[u8]) -> String {
    cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The container a process is in, from its `/proc/PID/cgroup`: runc puts an exec's process
/// into its container's cgroup, which the container id names (cgroupfs driver:
/// `…/pod<uid>/<id>`; systemd driver: `…/cri-containerd-<id>.scope`). `None` when no line's
/// path ends in a container id.
pub fn container_of_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let last = path.trim_end_matches('/').rsplit('/').next()?;
        let id = last.strip_prefix("cri-containerd-").unwrap_or(last);
        let id = id.strip_suffix(".scope").unwrap_or(id);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

/// Whether an exec's process, by its command line when it was held or reported, is still one
/// of runc's own stages (its init; or a command line not set up yet, which the command itself
/// never shows when stopped at its exec: the CRI's argv is never empty): the session's
/// command is then its next exec.
pub fn awaits_command(cmdline: &[u8]) -> bool {
    cmdline.is_empty() || is_runc_init(cmdline)
}

/// Whether a command line is runc's own init (`runc init`), not yet the exec's command.
fn is_runc_init(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    let prog = args.next().unwrap_or_default();
    (prog == b"runc" || prog.ends_with(b"/runc")) && args.next() == Some(b"init")
}

/// The terminal name ("pts/3") of a stdin that links to a pts device, else `None` (pipes,
/// /dev/null: an exec without `-t`).
pub fn tty_of_stdin(link: &str) -> Option<String> {
    let n = link.strip_prefix("/dev/pts/")?;
    n.parse::<u32>().ok().map(|n| format!("pts/{n}"))
}

/// The exec channel object (`enforcer_common::io::IO_EXEC`) of a stdio file of the exec's
/// process, from its `stat`: a pipe is its inode; a pty slave (majors 136–143) is its devpts
/// instance (`dev`, the file system's device) and index, as the shim sees the master. Anything
/// else (/dev/null, a file) carries nothing to record.
pub fn channel_object(mode: u32, dev: u64, rdev: u64, ino: u64) -> Option<u64> {
    const S_IFMT: u32 = 0o170000;
    const S_IFIFO: u32 = 0o010000;
    const S_IFCHR: u32 = 0o020000;
    let kernel_dev = |d: u64| -> Option<(u32, u32)> {
        // glibc's dev_t encoding → (major, minor).
        let major = ((d >> 8) & 0xfff) | ((d >> 32) & !0xfff);
        let minor = (d & 0xff) | ((d >> 12) & !0xff);
        Some((u32::try_from(major).ok()?, u32::try_from(minor).ok()?))
    };
    match mode & S_IFMT {
        S_IFIFO => Some(enforcer_common::io::IO_EXEC | ino),
        S_IFCHR => {
            let (major, minor) = kernel_dev(rdev)?;
            if !(136..=143).contains(&major) {
                return None;
            }
            let index = ((major - 136) << 20) | minor;
            let (fs_major, fs_minor) = kernel_dev(dev)?;
            // The kernel's own dev_t: major << 20 | minor.
            let fs = (fs_major << 20) | fs_minor;
            Some(enforcer_common::io::exec_pty_object(fs, index))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn meta(ns: &str, pod: &str, cid: &str) -> ContainerMeta {
        ContainerMeta {
            pod: PodRef {
                namespace: ns.into(),
                name: pod.into(),
            },
            pod_uid: "uid".into(),
            container: "main".into(),
            container_id: cid.into(),
        }
    }

    fn session(id: u64, cid: &str, exec: &str, pid: u32) -> ExecSession {
        ExecSession {
            command: "sh".into(),
            ..ExecSession::new(
                (id, 100 + id),
                exec.into(),
                meta("team-a", "web", cid),
                (pid, pid as u64 * 10),
                OffsetDateTime::UNIX_EPOCH,
            )
        }
    }

    #[test]
    fn the_container_of_a_process_comes_from_its_cgroup() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let v2 = format!("0::/kubepods/besteffort/pod-u1/{id}\n");
        assert_eq!(container_of_cgroup(&v2), Some(id));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podu1.slice/cri-containerd-{id}.scope\n"
        );
        assert_eq!(container_of_cgroup(&systemd), Some(id));
        // cgroup v1: the first hierarchy whose path names one.
        let v1 = format!("12:pids:/\n4:memory:/kubepods/besteffort/podu1/{id}\n0::/\n");
        assert_eq!(container_of_cgroup(&v1), Some(id));
        // The pod's cgroup, the host's, a short or non-hex name: none.
        assert_eq!(
            container_of_cgroup("0::/kubepods/besteffort/pod-u1\n"),
            None
        );
        assert_eq!(container_of_cgroup("0::/\n"), None);
        assert_eq!(container_of_cgroup("0::/x/0123abc\n"), None);
        let bad = format!("0::/k/{}\n", id.replace('a', "g"));
        assert_eq!(container_of_cgroup(&bad), None);
    }

    #[test]
    fn execs_without_an_exec_id_yet_are_told_apart_by_their_process() {
        let mut t = ExecSessions::default();
        assert_eq!(t.insert(session(1, "c1", "", 10)), Inserted::New);
        assert_eq!(t.insert(session(2, "c1", "", 11)), Inserted::New);
        assert_eq!(t.insert(session(3, "c1", "", 10)), Inserted::Known);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn container_meta_needs_the_pod_labels() {
        let l = labels(&[
            (LABEL_POD_NAME, "web"),
            (LABEL_POD_NAMESPACE, "team-a"),
            (LABEL_POD_UID, "u-1"),
            (LABEL_CONTAINER_NAME, "main"),
        ]);
        let m = ContainerMeta::from_labels("c1", &l).unwrap();
        assert_eq!(m.pod.to_string(), "team-a/web");
        assert_eq!((m.pod_uid.as_str(), m.container.as_str()), ("u-1", "main"));
        assert_eq!(m.container_id, "c1");
        // Not the kubelet's: no pod labels. A sandbox: no container name.
        assert!(ContainerMeta::from_labels("c2", &labels(&[("x", "y")])).is_none());
        let sandbox = labels(&[(LABEL_POD_NAME, "web"), (LABEL_POD_NAMESPACE, "team-a")]);
        assert!(ContainerMeta::from_labels("s", &sandbox).is_none());
    }

    #[test]
    fn an_exec_is_inserted_once_whoever_reports_it() {
        let mut t = ExecSessions::default();
        assert_eq!(t.insert(session(1, "c1", "e1", 50)), Inserted::New);
        // The same exec again (event after discovery, or a re-discovery).
        assert_eq!(t.insert(session(2, "c1", "e1", 50)), Inserted::Known);
        // The same process under another exec id cannot be two sessions.
        assert_eq!(t.insert(session(3, "c1", "e9", 50)), Inserted::Known);
        // Same exec id in another container is another exec.
        assert_eq!(t.insert(session(4, "c2", "e1", 60)), Inserted::New);
        assert_eq!(t.len(), 2);
        assert_eq!(t.by_kernel(101).map(|s| s.id), Some(1));
        assert_eq!(t.by_exec("c2", "e1").map(|s| s.id), Some(4));
        assert!(t.remove(1).is_some());
        assert!(t.by_kernel(101).is_none());
    }

    #[test]
    fn the_census_counts_live_sessions_per_pod() {
        let mut t = ExecSessions::default();
        t.insert(session(1, "c1", "e1", 50));
        t.insert(session(2, "c1", "e2", 51));
        let pod = meta("team-a", "web", "c1").pod;
        let c = t.census();
        assert_eq!((c.pod(&pod), c.namespace("team-a"), c.node()), (2, 2, 2));
        t.remove(1);
        assert_eq!(t.census().pod(&pod), 1);
    }

    #[test]
    fn command_and_tty_from_proc() {
        assert_eq!(command_line(b"sh\0-c\0echo hi\0"), "sh -c echo hi");
        assert_eq!(command_line(b""), "");
        assert_eq!(tty_of_stdin("/dev/pts/0").as_deref(), Some("pts/0"));
        assert_eq!(tty_of_stdin("pipe:[1234]"), None);
        assert_eq!(tty_of_stdin("/dev/null"), None);
        assert!(is_runc_init(b"runc\0init\0"));
        assert!(is_runc_init(b"/usr/sbin/runc\0init\0"));
        assert!(!is_runc_init(b"sh\0-c\0runc init\0"));
        assert!(!is_runc_init(b"runc\0exec\0"));
        assert!(awaits_command(b""));
        assert!(awaits_command(b"runc\0init\0"));
        assert!(!awaits_command(b"sh\0"));
    }

    #[test]
    fn stdio_files_map_to_the_objects_the_shim_probes_see() {
        use enforcer_common::io::{IO_EXEC, IO_PTY, exec_pty_object};
        // /dev/pts/3 of a container's devpts mounted as device 0:97.
        let pts3 = channel_object(0o020620, 97, (136 << 8) | 3, 6).unwrap();
        assert_eq!(pts3, exec_pty_object(97, 3));
        assert_eq!(pts3 & (IO_EXEC | IO_PTY), IO_EXEC | IO_PTY);
        // The same index in another container's devpts is another channel.
        assert_ne!(
            pts3,
            channel_object(0o020620, 98, (136 << 8) | 3, 6).unwrap()
        );
        // pts 300: minor 300 in glibc's split encoding.
        let big = (136u64 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(
            channel_object(0o020620, 97, big, 0),
            Some(exec_pty_object(97, 300))
        );
        // A pipe is its inode.
        assert_eq!(channel_object(0o010600, 14, 0, 4242), Some(IO_EXEC | 4242));
        // /dev/null (1:3), a regular file, a socket: nothing to record.
        assert_eq!(channel_object(0o020666, 5, (1 << 8) | 3, 4), None);
        assert_eq!(channel_object(0o100644, 2049, 0, 77), None);
        assert_eq!(channel_object(0o140777, 8, 0, 99), None);
    }
}
