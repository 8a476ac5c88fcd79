//! Holds a `kubectl exec`'s command before its first instruction, so enforcerd decides on it
//! before it runs (a refused exec's command never runs, an admitted one cannot fork away
//! before it is followed).
//!
//! containerd's shim starts every exec as `runc … exec …`; runc re-executes itself (`runc
//! init`, possibly from a memfd copy), joins the container and execs the command. So a task
//! that exec's the runc binary with an `exec` argument is marked (`ENF_RUNC_EXECS`), with its
//! cgroup; its forks inherit the mark; the first exec of a marked task from another cgroup
//! (runc's parent moved it into the container's) is the command. It is stopped (SIGSTOP,
//! taken before it returns to user mode) while `ENF_HOLD_EXECS` says so; enforcerd resumes
//! or refuses it once containerd reports the exec. A pod's own processes never carry the mark
//! (`runc create`/`run` start them). Only the host's root's runc is marked (real uid 0 in the
//! host's user namespace, in the host's pid namespace, as containerd's shim runs it): anyone can
//! name a program `runc` and give it an `exec` argument, and a user — or root in a container
//! without a user namespace, uid 0 on the host too — whose fake runc marked its thousands of
//! threads would crowd genuine marks out of the map (LRU), so real execs would run unheld. A
//! fake run by the host's root can only stop its own children. (A rootless containerd's execs,
//! and those of a containerd in a container without the host's pid namespace, are therefore not
//! held.)
//!
//! A stop is only a signal state, and any process of the pod that may signal the command (root
//! in the container, or its own uid) can end it with `SIGCONT` — a loop of `kill -CONT -1`
//! in another exec of that pod resumed every held command at once, which then ran and forked
//! away before enforcerd followed it (found by review). So a held command is also marked
//! (`ENF_HELD_TASKS`) until the host's root — enforcerd — sends it `SIGCONT` (seen at
//! `signal_generate`): a marked task that forks or execs is killed (its child keeps the mark).
//! A command resumed from its pod can thus run only what it is, without starting anything,
//! until enforcerd decides.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_uid_gid};
use enforcer_common::{counters::Counter, events::EventKind, tasks::TrackedTask};

use crate::{
    kernel,
    maps::{
        ENF_ARGS, ENF_HELD_TASKS, ENF_HOLD_EXECS, ENF_RUNC_EXECS, SIGCONT, SIGSTOP, count, emit,
        kill_current, signal_current,
    },
};

/// How much of a runc command line is searched for its `exec` subcommand (global flags with
/// containerd's paths come first: ~200 bytes).
pub const ARGS_SCAN: usize = 512;

/// A task forked: a marked parent marks its child; a held one dies for it.
#[inline(always)]
pub fn on_fork(parent_tid: u32, child_tid: u32) {
    if let Some(cg) = unsafe { ENF_RUNC_EXECS.get(&parent_tid) }.copied() {
        let _ = ENF_RUNC_EXECS.insert(&child_tid, &cg, 0);
    }
    if let Some(root) = unsafe { ENF_HELD_TASKS.get(&parent_tid) }.copied() {
        // Running although held: someone in its pod resumed it.
        if ENF_HELD_TASKS.insert(&child_tid, &root, 0).is_err() {
            count(Counter::DropHeldFull);
        }
        kill_held(root);
    }
}

/// Kills the current task, a task of the held command `root` that was resumed from its pod,
/// and tells enforcerd.
#[inline(always)]
fn kill_held(root: u32) {
    kill_current(Counter::KilledHeld);
    let (pid, tid) = crate::process::current_ids();
    let task = TrackedTask {
        conn_id: 0,
        session_id: root as u64,
        start_ns: 0,
        flags: 0,
        _pad: 0,
    };
    emit(&crate::process::header(
        EventKind::HoldBroken,
        pid,
        tid,
        &task,
    ));
}

/// A task ended: its mark goes. (Looked up first: every task on the host ends here, and a
/// lookup takes no lock where a delete does.)
#[inline(always)]
pub fn on_exit(tid: u32) {
    if unsafe { ENF_RUNC_EXECS.get(&tid) }.is_some() {
        let _ = ENF_RUNC_EXECS.remove(&tid);
    }
    if unsafe { ENF_HELD_TASKS.get(&tid) }.is_some() {
        let _ = ENF_HELD_TASKS.remove(&tid);
    }
}

/// A signal is generated for task `target`: the host's root's `SIGCONT` lets a held command go
/// (enforcerd resumes it, or another enforcerd on the host does); anyone else's only resumes
/// it, mark kept.
#[inline(always)]
pub fn on_signal(sig: u32, target: u32) {
    if sig != SIGCONT || unsafe { ENF_HELD_TASKS.get(&target) }.is_none() {
        return;
    }
    // The low half is the real uid.
    if bpf_get_current_uid_gid() as u32 == 0 && kernel::in_host_pid_ns(kernel::current()) {
        let _ = ENF_HELD_TASKS.remove(&target);
    } else {
        count(Counter::ExecHoldBroken);
    }
}

/// The current task exec'd (`old_tid`: the thread id it had, when a non-leader thread exec'd).
#[inline(always)]
pub fn on_exec(tid: u32, old_tid: u32) {
    let held = unsafe { ENF_HELD_TASKS.get(&tid) }.or_else(|| match old_tid != tid {
        true => unsafe { ENF_HELD_TASKS.get(&old_tid) },
        false => None,
    });
    if let Some(root) = held.copied() {
        // Held, yet it runs another program: resumed from its pod (see `on_fork`).
        kill_held(root);
        return;
    }
    let marked = unsafe { ENF_RUNC_EXECS.get(&tid) }
        .or_else(|| unsafe { ENF_RUNC_EXECS.get(&old_tid) })
        .copied();
    if let Some(origin) = marked {
        // SAFETY: helper without arguments.
        if unsafe { bpf_get_current_cgroup_id() } == origin {
            // runc re-executing itself before it joins the container.
            return;
        }
        let _ = ENF_RUNC_EXECS.remove(&tid);
        let _ = ENF_RUNC_EXECS.remove(&old_tid);
        if ENF_HOLD_EXECS.get(0).is_some_and(|h| *h != 0) {
            signal_current(SIGSTOP);
            count(Counter::ExecHeld);
            if ENF_HELD_TASKS.insert(&tid, &tid, 0).is_err() {
                count(Counter::DropHeldFull);
            }
            let (pid, tid) = crate::process::current_ids();
            let untracked = TrackedTask {
                conn_id: 0,
                session_id: 0,
                start_ns: 0,
                flags: 0,
                _pad: 0,
            };
            emit(&crate::process::header(
                EventKind::ExecHeld,
                pid,
                tid,
                &untracked,
            ));
        }
        return;
    }
    // The low half is the real uid.
    if bpf_get_current_uid_gid() as u32 == 0
        && kernel::in_host_pid_ns(kernel::current())
        && runc_exec()
    {
        // SAFETY: helper without arguments.
        let cg = unsafe { bpf_get_current_cgroup_id() };
        let _ = ENF_RUNC_EXECS.insert(&tid, &cg, 0);
    }
}

/// Whether the current program is runc (its comm) run with an `exec` argument.
#[inline(always)]
fn runc_exec() -> bool {
    match bpf_get_current_comm() {
        Ok(c) if c[..5] == *b"runc\0" => {}
        _ => return false,
    }
    let Some(buf) = ENF_ARGS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch, only this program uses it on this CPU right now.
    let buf = unsafe { &mut *buf };
    let Ok((n, _)) = kernel::argv(kernel::current(), buf) else {
        return false;
    };
    has_exec_word(buf, n as usize)
}

/// Whether `buf[..n]` (NUL-separated words, argv[0] first) holds the word `exec`: the last
/// six bytes seen, as one number, are NUL `exec` NUL. (One unknown scalar per iteration keeps
/// the verifier's walk linear; per-letter state would multiply its paths.)
#[inline(always)]
fn has_exec_word(buf: &[u8; ARGS_SCAN], n: usize) -> bool {
    const WORD: u64 = u64::from_be_bytes([0, 0, 0, b'e', b'x', b'e', b'c', 0]);
    const WINDOW: u64 = (1 << 48) - 1;
    let mut last = 0u64;
    for i in 0..ARGS_SCAN {
        if i >= n {
            break;
        }
        last = ((last << 8) | buf[i] as u64) & WINDOW;
        if last == WORD {
            return true;
        }
    }
    false
}
