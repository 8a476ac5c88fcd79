//! Reading kernel structures through offsets from the daemon (no CO-RE in Rust BPF here).

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_probe_read_kernel,
    generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
};
use enforcer_common::{
    events::{CWD_DEPTH, CWD_NAME_LEN, TTY_LEN},
    offsets::ABSENT,
};

use crate::config::off;

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn field<T>(base: u64, offset: u32) -> Result<T, i32> {
    if base == 0 || offset == ABSENT {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}

/// The current task_struct.
#[inline(always)]
pub fn current() -> u64 {
    // SAFETY: always valid in tracing programs.
    unsafe { bpf_get_current_task() }
}

#[inline(always)]
pub fn start_ns(task: u64) -> Result<u64, i32> {
    field(task, off!(task_start_boottime))
}

/// Whether `task` lives in the host's pid namespace. True when this kernel's BTF lacks the
/// members (nothing to tell by; the callers' other checks stand alone then).
#[inline(always)]
pub fn in_host_pid_ns(task: u64) -> bool {
    if off!(task_thread_pid) == ABSENT || off!(pid_level) == ABSENT {
        return true;
    }
    field::<u64>(task, off!(task_thread_pid))
        .and_then(|pid| field::<u32>(pid, off!(pid_level)))
        .is_ok_and(|level| level == 0)
}

/// The thread-group id of the task's parent.
#[inline(always)]
pub fn ppid(task: u64) -> Result<u32, i32> {
    let parent: u64 = field(task, off!(task_real_parent))?;
    field(parent, off!(task_tgid))
}

/// Wait status being reported for the task (set by do_exit before the exit tracepoint).
#[inline(always)]
pub fn exit_code(task: u64) -> Result<u32, i32> {
    field(task, off!(task_exit_code))
}

/// Copies argv (NUL-separated, as /proc/PID/cmdline) into `dst`; returns (bytes, truncated).
#[inline(always)]
pub fn argv<const N: usize>(task: u64, dst: &mut [u8; N]) -> Result<(u32, bool), i32> {
    let mm: u64 = field(task, off!(task_mm))?;
    let start: u64 = field(mm, off!(mm_arg_start))?;
    let end: u64 = field(mm, off!(mm_arg_end))?;
    let total = end.saturating_sub(start);
    let n = if total > N as u64 { N as u64 } else { total };
    // SAFETY: `n` ≤ dst's length; the helper validates the user address.
    let r = unsafe { bpf_probe_read_user(dst.as_mut_ptr().cast(), n as u32, start as *const _) };
    if r < 0 {
        return Err(r as i32);
    }
    Ok((n as u32, total > N as u64))
}

/// Whether `task` leads its session (it called setsid()); false when unknown.
#[inline(always)]
pub fn session_leader(task: u64) -> bool {
    field::<u64>(task, off!(task_signal))
        .and_then(|signal| field::<i32>(signal, off!(signal_leader)))
        .is_ok_and(|l| l != 0)
}

/// The controlling terminal's name ("pts/3") into `dst`; false when there is none.
#[inline(always)]
pub fn tty(task: u64, dst: &mut [u8; TTY_LEN]) -> bool {
    let Ok(signal) = field::<u64>(task, off!(task_signal)) else {
        return false;
    };
    let Ok(tty) = field::<u64>(signal, off!(signal_tty)) else {
        return false;
    };
    if tty == 0 || off!(tty_name) == ABSENT {
        return false;
    }
    // SAFETY: bounded copy of a NUL-terminated kernel string into `dst`.
    let r = unsafe {
        bpf_probe_read_kernel_str(
            dst.as_mut_ptr().cast(),
            TTY_LEN as u32,
            (tty + off!(tty_name) as u64) as *const _,
        )
    };
    r > 0
}

/// The working directory's components, innermost first, following mount points up to the
/// root; returns (slots used, truncated). Slot `i` is always filled in iteration `i` — with a
/// name, or empty where the walk crossed a mount point — so every branch leaves the verifier the
/// same state and the loop stays cheap to verify. The reader skips empty slots.
#[inline(always)]
pub fn cwd(task: u64, dst: &mut [[u8; CWD_NAME_LEN]; CWD_DEPTH]) -> Result<(u32, bool), i32> {
    let fs: u64 = field(task, off!(task_fs))?;
    let pwd = fs + off!(fs_pwd) as u64;
    let mut dentry: u64 = field(pwd, off!(path_dentry))?;
    let mut vfsmnt: u64 = field(pwd, off!(path_mnt))?;
    let mount_mnt = off!(mount_mnt) as u64;
    for (i, slot) in dst.iter_mut().enumerate() {
        let mnt_root: u64 = field(vfsmnt, off!(vfsmount_root))?;
        if dentry == mnt_root {
            let mount = vfsmnt - mount_mnt;
            let parent: u64 = field(mount, off!(mount_parent))?;
            if parent == mount {
                return Ok((i as u32, false));
            }
            dentry = field(mount, off!(mount_mountpoint))?;
            vfsmnt = parent + mount_mnt;
            slot[0] = 0;
            continue;
        }
        let parent: u64 = field(dentry, off!(dentry_parent))?;
        if parent == dentry {
            return Ok((i as u32, false));
        }
        let name: u64 = field(dentry + off!(dentry_name) as u64, off!(qstr_name))?;
        // SAFETY: bounded copy into a fixed-size slot.
        let r = unsafe {
            bpf_probe_read_kernel_str(
                slot.as_mut_ptr().cast(),
                CWD_NAME_LEN as u32,
                name as *const _,
            )
        };
        if r < 0 {
            slot[0] = b'?';
            slot[1] = 0;
        }
        dentry = parent;
    }
    Ok((CWD_DEPTH as u32, true))
}

const S_IFMT: u16 = 0o170000;
const S_IFCHR: u16 = 0o020000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;
/// The ptmx multiplexer, MKDEV(5, 2) in the kernel's dev_t encoding (major << 20 | minor).
const PTMX_RDEV: u32 = (5 << 20) | 2;

/// A task's open-file table: its `struct file *` array and the array's size.
#[derive(Clone, Copy)]
pub struct FdTable {
    array: u64,
    max: u32,
}

/// `task`'s open-file table.
#[inline(always)]
pub fn fd_table(task: u64) -> Result<FdTable, i32> {
    let files: u64 = field(task, off!(task_files))?;
    let fdt: u64 = field(files, off!(files_fdt))?;
    Ok(FdTable {
        array: field(fdt, off!(fdtable_fd))?,
        max: field(fdt, off!(fdtable_max_fds))?,
    })
}

/// The `struct file *` at `fd` of a table.
#[inline(always)]
pub fn fd_at(table: FdTable, fd: u64) -> Result<u64, i32> {
    if fd >= table.max as u64 {
        return Err(-1);
    }
    field(table.array + fd * 8, 0)
}

/// The `struct file *` behind `fd` of `task`.
#[inline(always)]
pub fn fd_file(task: u64, fd: u64) -> Result<u64, i32> {
    fd_at(fd_table(task)?, fd)
}

/// A file's inode number (0 when unreadable).
#[inline(always)]
pub fn file_ino(file: u64) -> u64 {
    field::<u64>(file, off!(file_inode))
        .and_then(|inode| field(inode, off!(inode_ino)))
        .unwrap_or(0)
}

/// The inode number of a socket file; `None` for anything else.
#[inline(always)]
pub fn socket_ino(file: u64) -> Option<u64> {
    let inode: u64 = field(file, off!(file_inode)).ok()?;
    let mode: u16 = field(inode, off!(inode_mode)).ok()?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    field(inode, off!(inode_ino)).ok()
}

/// What a channel file is, from its inode: a pipe or a pty master.
enum Channel {
    /// A pipe's inode number.
    Pipe(u64),
    /// A pty master: its inode (to find its devpts instance) and pty index.
    Pty { inode: u64, index: u32 },
}

#[inline(always)]
fn channel_of(file: u64) -> Option<Channel> {
    let inode: u64 = field(file, off!(file_inode)).ok()?;
    let mode: u16 = field(inode, off!(inode_mode)).ok()?;
    match mode & S_IFMT {
        S_IFIFO => field(inode, off!(inode_ino)).ok().map(Channel::Pipe),
        S_IFCHR => {
            let rdev: u32 = field(inode, off!(inode_rdev)).ok()?;
            if rdev != PTMX_RDEV {
                return None;
            }
            let private: u64 = field(file, off!(file_private_data)).ok()?;
            let tty: u64 = field(private, off!(tty_file_private_tty)).ok()?;
            let index: i32 = field(tty, off!(tty_index)).ok()?;
            Some(Channel::Pty {
                inode,
                index: index as u32,
            })
        }
        _ => None,
    }
}

/// What a session channel file is: `IO_PTY | index` for a pty master, the inode number for a
/// pipe; `None` for anything else (the client's TCP socket, sshd's own sockets and files).
#[inline(always)]
pub fn channel_object(file: u64) -> Option<u64> {
    match channel_of(file)? {
        Channel::Pipe(ino) => Some(ino),
        Channel::Pty { index, .. } => Some(enforcer_common::io::IO_PTY | index as u64),
    }
}

/// The channel object of a file a containerd shim reads or writes for a `kubectl exec`
/// (`enforcer_common::io::IO_EXEC`): a pipe (its inode), or a pty master (its devpts instance
/// and index: each container has its own /dev/pts).
#[inline(always)]
pub fn exec_object(file: u64) -> Option<u64> {
    match channel_of(file)? {
        Channel::Pipe(ino) => Some(enforcer_common::io::IO_EXEC | ino),
        Channel::Pty { inode, index } => {
            let sb: u64 = field(inode, off!(inode_sb)).ok()?;
            let dev: u32 = field(sb, off!(sb_dev)).ok()?;
            Some(enforcer_common::io::exec_pty_object(dev, index))
        }
    }
}
