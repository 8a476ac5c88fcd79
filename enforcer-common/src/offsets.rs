//! Where the BPF programs find things: struct member offsets from the running kernel's BTF and
//! tracepoint record offsets from tracefs, filled in by the daemon at load time (global
//! `ENF_OFFSETS`). Rust BPF gets no CO-RE relocations, so nothing is compiled in.

/// Byte offsets. `u32::MAX` marks a field the running kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_start_boottime: u32,
    /// `task_struct.thread_pid` and `pid.level`: how deep the task's pid namespace is (0: the
    /// host's).
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub task_real_parent: u32,
    pub task_exit_code: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub task_signal: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub fs_pwd: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub qstr_name: u32,
    pub vfsmount_root: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub signal_tty: u32,
    /// `signal_struct.leader`: set by setsid(), cleared in every child.
    pub signal_leader: u32,
    pub tty_name: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub inode_rdev: u32,
    pub inode_ino: u32,
    /// `inode.i_sb`, `super_block.s_dev`: which devpts a container's pty belongs to.
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub tty_file_private_tty: u32,
    pub tty_index: u32,
    pub tty_link: u32,
    pub tty_termios: u32,
    pub ktermios_lflag: u32,
    /// `task_struct.cred`, `cred.euid`, `cred.suid` (locked-user checks at exec and fork).
    pub task_cred: u32,
    pub cred_euid: u32,
    pub cred_suid: u32,
    /// `sched_process_exec`: `__data_loc` of `filename`, and `old_pid`.
    pub tp_exec_filename: u32,
    pub tp_exec_old_pid: u32,
    /// `sched_process_exit.group_dead` (kernel ≥ 6.14).
    pub tp_exit_group_dead: u32,
    /// `sys_exit_setsid.ret`.
    pub tp_setsid_ret: u32,
    /// `sys_enter_write` / `sys_enter_read`: fd, buf; `sys_exit_read`: ret.
    pub tp_write_fd: u32,
    pub tp_write_buf: u32,
    pub tp_read_fd: u32,
    pub tp_read_buf: u32,
    pub tp_read_ret: u32,
    /// `sys_exit_write.ret`; `sys_enter_ioctl`: fd, cmd, arg.
    pub tp_write_ret: u32,
    pub tp_ioctl_fd: u32,
    pub tp_ioctl_cmd: u32,
    pub tp_ioctl_arg: u32,
    /// `signal_generate`: the signal and the target task's id.
    pub tp_signal_sig: u32,
    pub tp_signal_pid: u32,
}

/// Marks an absent field.
pub const ABSENT: u32 = u32::MAX;

impl KernelOffsets {
    /// Every field absent: the BPF object's built-in value, replaced at load.
    pub const UNSET: KernelOffsets = KernelOffsets {
        task_pid: ABSENT,
        task_tgid: ABSENT,
        task_start_boottime: ABSENT,
        task_thread_pid: ABSENT,
        pid_level: ABSENT,
        task_real_parent: ABSENT,
        task_exit_code: ABSENT,
        task_mm: ABSENT,
        task_fs: ABSENT,
        task_signal: ABSENT,
        mm_arg_start: ABSENT,
        mm_arg_end: ABSENT,
        fs_pwd: ABSENT,
        path_mnt: ABSENT,
        path_dentry: ABSENT,
        dentry_parent: ABSENT,
        dentry_name: ABSENT,
        qstr_name: ABSENT,
        vfsmount_root: ABSENT,
        mount_mnt: ABSENT,
        mount_parent: ABSENT,
        mount_mountpoint: ABSENT,
        signal_tty: ABSENT,
        signal_leader: ABSENT,
        tty_name: ABSENT,
        task_files: ABSENT,
        files_fdt: ABSENT,
        fdtable_max_fds: ABSENT,
        fdtable_fd: ABSENT,
        file_inode: ABSENT,
        file_private_data: ABSENT,
        inode_mode: ABSENT,
        inode_rdev: ABSENT,
        inode_ino: ABSENT,
        inode_sb: ABSENT,
        sb_dev: ABSENT,
        tty_file_private_tty: ABSENT,
        tty_index: ABSENT,
        tty_link: ABSENT,
        tty_termios: ABSENT,
        ktermios_lflag: ABSENT,
        task_cred: ABSENT,
        cred_euid: ABSENT,
        cred_suid: ABSENT,
        tp_exec_filename: ABSENT,
        tp_exec_old_pid: ABSENT,
        tp_exit_group_dead: ABSENT,
        tp_setsid_ret: ABSENT,
        tp_write_fd: ABSENT,
        tp_write_buf: ABSENT,
        tp_read_fd: ABSENT,
        tp_read_buf: ABSENT,
        tp_read_ret: ABSENT,
        tp_write_ret: ABSENT,
        tp_ioctl_fd: ABSENT,
        tp_ioctl_cmd: ABSENT,
        tp_ioctl_arg: ABSENT,
        tp_signal_sig: ABSENT,
        tp_signal_pid: ABSENT,
    };
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, all u32.
unsafe impl aya::Pod for KernelOffsets {}
