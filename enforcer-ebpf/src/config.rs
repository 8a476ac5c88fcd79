//! Values the daemon fills in at load time (`EbpfLoader::override_global`).
//!
//! Tracepoint record layouts differ between kernel versions (e.g. `sched_process_fork` gained
//! `__data_loc` comm fields), so offsets are read by userspace from tracefs `format` files rather
//! than compiled in. The defaults below are the 6.18 layout.

use core::ptr::read_volatile;

/// Sentinel for "field absent on this kernel".
pub const ABSENT: u32 = u32::MAX;

#[unsafe(no_mangle)]
static FORK_CHILD_OFF: u32 = 20;
#[unsafe(no_mangle)]
static EXEC_FILENAME_OFF: u32 = 8;
#[unsafe(no_mangle)]
static EXEC_OLD_PID_OFF: u32 = 16;
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD_OFF: u32 = 32;

// `read_volatile` keeps the compiler from folding the defaults in: the loader rewrites them.
macro_rules! getter {
    ($fn:ident, $var:ident) => {
        #[inline(always)]
        pub fn $fn() -> u32 {
            unsafe { read_volatile(&$var) }
        }
    };
}

getter!(fork_child_off, FORK_CHILD_OFF);
getter!(exec_filename_off, EXEC_FILENAME_OFF);
getter!(exec_old_pid_off, EXEC_OLD_PID_OFF);
getter!(exit_group_dead_off, EXIT_GROUP_DEAD_OFF);
