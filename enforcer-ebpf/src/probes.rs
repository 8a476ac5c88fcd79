//! Trivial programs the daemon loads once at start to learn which program types this kernel
//! accepts (and unloads right after). Only the uprobe is attached, for a moment, to the daemon
//! itself: loading alone does not show that uprobes can be attached.

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock_addr, fentry, lsm, uprobe},
    programs::{
        BtfTracePointContext, FEntryContext, LsmContext, ProbeContext, SkBuffContext,
        SockAddrContext,
    },
};

#[fentry(function = "do_exit")]
pub fn enf_p_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[lsm(hook = "bprm_check_security")]
pub fn enf_p_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn enf_p_tpbtf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[cgroup_sock_addr(connect4)]
pub fn enf_p_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_skb]
pub fn enf_p_cgskb(_ctx: SkBuffContext) -> i32 {
    1
}

#[uprobe]
pub fn enf_p_uprobe(_ctx: ProbeContext) -> u32 {
    0
}
