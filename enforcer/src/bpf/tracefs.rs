//! tracefs: make sure it is mounted (aya resolves tracepoint ids through it) and read the record
//! layouts of the tracepoints we use, so field offsets are never hardcoded for one kernel.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::BpfError;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Offsets (bytes into the tracepoint record) the BPF programs need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracepointLayout {
    pub exec_filename: u32,
    pub exec_old_pid: u32,
    /// `sched_process_exit.group_dead` (kernel ≥ 6.14); `None` before.
    pub exit_group_dead: Option<u32>,
    /// `sys_exit_setsid.ret`.
    pub setsid_ret: u32,
    /// `sys_enter_write`: fd, buf, count.
    pub write_fd: u32,
    pub write_buf: u32,
    pub write_count: u32,
    /// `sys_enter_read`: fd, buf; `sys_exit_read`: ret.
    pub read_fd: u32,
    pub read_buf: u32,
    pub read_ret: u32,
    /// `sys_exit_write`: ret; `sys_enter_ioctl`: fd, cmd, arg.
    pub write_ret: u32,
    pub ioctl_fd: u32,
    pub ioctl_cmd: u32,
    pub ioctl_arg: u32,
    /// `signal_generate`: sig, pid (the target).
    pub signal_sig: u32,
    pub signal_pid: u32,
}

/// Returns the tracefs root, mounting tracefs at /sys/kernel/tracing when nothing is there.
/// The mount is left in place: other tools (and other enforcerd instances) may rely on it.
pub fn ensure_mounted() -> Result<PathBuf, BpfError> {
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").is_dir() {
            return Ok(root.into());
        }
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| BpfError::Tracefs(e.to_string()))?;
    tracing::info!(path = TRACEFS, "mounted tracefs");
    Ok(TRACEFS.into())
}

/// Field name → (offset, size) from a tracepoint `format` file.
pub fn parse_format(text: &str) -> HashMap<String, (u32, u32)> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let (mut offset, mut size) = (None, None);
        for part in rest.split(';').map(str::trim) {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part);
            }
        }
        // "unsigned short common_type", "__data_loc char[] filename", "char comm[16]"
        let name = decl
            .and_then(|d| d.split_whitespace().last())
            .map(|n| n.split('[').next().unwrap_or(n));
        if let (Some(name), Some(o), Some(s)) = (name, offset, size) {
            out.insert(name.to_owned(), (o, s));
        }
    }
    out
}

fn field(root: &Path, event: &str, name: &str, size: u32) -> Result<Option<u32>, BpfError> {
    let path = root.join("events").join(event).join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| BpfError::Format {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match parse_format(&text).get(name) {
        Some(&(off, sz)) if sz == size => Ok(Some(off)),
        Some(&(_, sz)) => Err(BpfError::Format {
            path,
            message: format!("field {name} has size {sz}, expected {size}"),
        }),
        None => Ok(None),
    }
}

fn required(root: &Path, event: &str, name: &str, size: u32) -> Result<u32, BpfError> {
    field(root, event, name, size)?.ok_or_else(|| BpfError::Format {
        path: root.join("events").join(event).join("format"),
        message: format!("no field {name}"),
    })
}

/// Reads the layouts of the tracepoints the BPF programs parse.
pub fn read_layout(root: &Path) -> Result<TracepointLayout, BpfError> {
    Ok(TracepointLayout {
        exec_filename: required(root, "sched/sched_process_exec", "filename", 4)?,
        exec_old_pid: required(root, "sched/sched_process_exec", "old_pid", 4)?,
        exit_group_dead: field(root, "sched/sched_process_exit", "group_dead", 1)?,
        setsid_ret: required(root, "syscalls/sys_exit_setsid", "ret", 8)?,
        write_fd: required(root, "syscalls/sys_enter_write", "fd", 8)?,
        write_buf: required(root, "syscalls/sys_enter_write", "buf", 8)?,
        write_count: required(root, "syscalls/sys_enter_write", "count", 8)?,
        read_fd: required(root, "syscalls/sys_enter_read", "fd", 8)?,
        read_buf: required(root, "syscalls/sys_enter_read", "buf", 8)?,
        read_ret: required(root, "syscalls/sys_exit_read", "ret", 8)?,
        write_ret: required(root, "syscalls/sys_exit_write", "ret", 8)?,
        ioctl_fd: required(root, "syscalls/sys_enter_ioctl", "fd", 8)?,
        ioctl_cmd: required(root, "syscalls/sys_enter_ioctl", "cmd", 8)?,
        ioctl_arg: required(root, "syscalls/sys_enter_ioctl", "arg", 8)?,
        signal_sig: required(root, "signal/signal_generate", "sig", 4)?,
        signal_pid: required(root, "signal/signal_generate", "pid", 4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork
ID: 318
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";

    const FORK_6_1: &str = "format:
\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    #[test]
    fn parses_data_loc_and_arrays() {
        let f = parse_format(FORK_6_18);
        assert_eq!(f["child_pid"], (20, 4));
        assert_eq!(f["parent_comm"], (8, 4));
        assert_eq!(f["common_type"], (0, 2));
    }

    #[test]
    fn older_layout_gives_other_offsets() {
        let f = parse_format(FORK_6_1);
        assert_eq!(f["child_pid"], (44, 4));
        assert_eq!(f["child_comm"], (28, 16));
    }

    #[test]
    fn layout_from_a_fake_tracefs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let write = |ev: &str, text: &str| {
            let p = dir.path().join("events").join(ev);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("format"), text).unwrap();
        };
        let ret = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        write("syscalls/sys_exit_setsid", ret);
        write("syscalls/sys_exit_read", ret);
        write("syscalls/sys_exit_write", ret);
        write(
            "syscalls/sys_enter_ioctl",
            "\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:unsigned int cmd;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:unsigned long arg;\toffset:32;\tsize:8;\tsigned:0;\n",
        );
        let rw = "\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;\n";
        write("syscalls/sys_enter_write", rw);
        write("syscalls/sys_enter_read", rw);
        write(
            "sched/sched_process_exec",
            "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n",
        );
        write(
            "sched/sched_process_exit",
            "\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n",
        );
        write(
            "signal/signal_generate",
            "\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:36;\tsize:4;\tsigned:1;\n",
        );
        let l = read_layout(dir.path()).unwrap();
        assert_eq!((l.signal_sig, l.signal_pid), (8, 36));
        assert_eq!(l.setsid_ret, 16);
        assert_eq!(
            (l.write_fd, l.write_buf, l.write_count, l.read_ret),
            (16, 24, 32, 16)
        );
        assert_eq!(l.exec_old_pid, 16);
        assert_eq!(
            l.exit_group_dead, None,
            "pre-6.14 kernels have no group_dead"
        );
    }
}
