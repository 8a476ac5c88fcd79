//! Building the `ENF_OFFSETS` global from the running kernel's BTF and tracefs formats.

use enforcer_common::offsets::{ABSENT, KernelOffsets};

use super::{
    BpfError,
    btf::{Btf, BtfError},
    tracefs::TracepointLayout,
};

/// Struct members the BPF programs read: (struct, member). Required ones fail the load when
/// missing; optional ones only lose the field they feed (reported in status).
const REQUIRED: &[(&str, &str)] = &[
    ("task_struct", "pid"),
    ("task_struct", "tgid"),
    ("task_struct", "start_boottime"),
    ("task_struct", "real_parent"),
    ("task_struct", "exit_code"),
    ("task_struct", "mm"),
];

fn get(btf: &Btf, s: &str, m: &str, missing: &mut Vec<String>) -> u32 {
    match btf.offset_of(s, m) {
        Ok(o) => o,
        Err(e) => {
            missing.push(e.to_string());
            ABSENT
        }
    }
}

/// The offsets, and descriptions of optional members this kernel lacks.
pub fn build(btf: &Btf, tp: &TracepointLayout) -> Result<(KernelOffsets, Vec<String>), BpfError> {
    for (s, m) in REQUIRED {
        btf.offset_of(s, m)
            .map_err(|e: BtfError| BpfError::Btf(e.to_string()))?;
    }
    let mut missing = Vec::new();
    let mut g = |s: &str, m: &str| get(btf, s, m, &mut missing);
    let o = KernelOffsets {
        task_pid: g("task_struct", "pid"),
        task_tgid: g("task_struct", "tgid"),
        task_start_boottime: g("task_struct", "start_boottime"),
        task_thread_pid: g("task_struct", "thread_pid"),
        pid_level: g("pid", "level"),
        task_real_parent: g("task_struct", "real_parent"),
        task_exit_code: g("task_struct", "exit_code"),
        task_mm: g("task_struct", "mm"),
        task_fs: g("task_struct", "fs"),
        task_signal: g("task_struct", "signal"),
        mm_arg_start: g("mm_struct", "arg_start"),
        mm_arg_end: g("mm_struct", "arg_end"),
        fs_pwd: g("fs_struct", "pwd"),
        path_mnt: g("path", "mnt"),
        path_dentry: g("path", "dentry"),
        dentry_parent: g("dentry", "d_parent"),
        dentry_name: g("dentry", "d_name"),
        qstr_name: g("qstr", "name"),
        vfsmount_root: g("vfsmount", "mnt_root"),
        mount_mnt: g("mount", "mnt"),
        mount_parent: g("mount", "mnt_parent"),
        mount_mountpoint: g("mount", "mnt_mountpoint"),
        signal_tty: g("signal_struct", "tty"),
        signal_leader: g("signal_struct", "leader"),
        tty_name: g("tty_struct", "name"),
        task_files: g("task_struct", "files"),
        files_fdt: g("files_struct", "fdt"),
        fdtable_max_fds: g("fdtable", "max_fds"),
        fdtable_fd: g("fdtable", "fd"),
        file_inode: g("file", "f_inode"),
        file_private_data: g("file", "private_data"),
        inode_mode: g("inode", "i_mode"),
        inode_rdev: g("inode", "i_rdev"),
        inode_ino: g("inode", "i_ino"),
        inode_sb: g("inode", "i_sb"),
        sb_dev: g("super_block", "s_dev"),
        tty_file_private_tty: g("tty_file_private", "tty"),
        tty_index: g("tty_struct", "index"),
        tty_link: g("tty_struct", "link"),
        tty_termios: g("tty_struct", "termios"),
        ktermios_lflag: g("ktermios", "c_lflag"),
        task_cred: g("task_struct", "cred"),
        cred_euid: g("cred", "euid"),
        cred_suid: g("cred", "suid"),
        tp_exec_filename: tp.exec_filename,
        tp_exec_old_pid: tp.exec_old_pid,
        tp_exit_group_dead: tp.exit_group_dead.unwrap_or(ABSENT),
        tp_setsid_ret: tp.setsid_ret,
        tp_write_fd: tp.write_fd,
        tp_write_buf: tp.write_buf,
        tp_read_fd: tp.read_fd,
        tp_read_buf: tp.read_buf,
        tp_read_ret: tp.read_ret,
        tp_write_ret: tp.write_ret,
        tp_ioctl_fd: tp.ioctl_fd,
        tp_ioctl_cmd: tp.ioctl_cmd,
        tp_ioctl_arg: tp.ioctl_arg,
        tp_signal_sig: tp.signal_sig,
        tp_signal_pid: tp.signal_pid,
    };
    Ok((o, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_has_every_member() {
        let Ok(btf) = Btf::from_sys_fs() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI machines have kernel BTF"
            );
            return;
        };
        let tp = TracepointLayout {
            exec_filename: 8,
            exec_old_pid: 16,
            exit_group_dead: Some(32),
            setsid_ret: 16,
            write_fd: 16,
            write_buf: 24,
            write_count: 32,
            read_fd: 16,
            read_buf: 24,
            read_ret: 16,
            write_ret: 16,
            ioctl_fd: 16,
            ioctl_cmd: 24,
            ioctl_arg: 32,
            signal_sig: 8,
            signal_pid: 36,
        };
        let (o, missing) = build(&btf, &tp).unwrap();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(o.mm_arg_end, o.mm_arg_start + 8);
        assert_ne!(o.task_pid, o.task_tgid);
        assert_ne!(o.task_thread_pid, o.pid_level);
    }
}
