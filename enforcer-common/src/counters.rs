//! Slots of the per-CPU counter array `ENF_COUNTERS`.
//!
//! Every CPU counts in its own slot and userspace sums. Counters whose name starts with `drop_`
//! count something the kernel side had to give up on; every one of them is shown by
//! `enforcerctl status` (nothing is lost silently).

/// One slot of `ENF_COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `sched_process_exec` fired (any process on the host).
    ExecSeen = 0,
    /// `sched_process_fork` fired (any task on the host, threads included).
    ForkSeen = 1,
    /// `sched_process_exit` fired (any task on the host, threads included).
    ExitSeen = 2,
    /// An event was written to the ring buffer.
    EventsSent = 3,
    /// A task was created by a tracked task and inherited its identity.
    TasksInherited = 4,
    /// An event was lost because the ring buffer was full.
    DropRingbufFull = 5,
    /// A child of a tracked task could not be tracked because `ENF_TASKS` was full.
    DropTasksFull = 6,
    /// A tracepoint record or kernel structure could not be read.
    DropReadFailed = 7,
    /// Sessions started inside tracked connections.
    SessionsStarted = 8,
    /// Sessions refused by a limit.
    SessionsRefused = 9,
    /// Tasks of refused sessions killed at exec.
    KilledRefused = 10,
    /// Tasks of terminated sessions/connections killed at exec or fork.
    KilledDoomed = 11,
    /// bpf_send_signal failed (the task then runs until the daemon's kill reaches it).
    DropSignalFailed = 12,
    /// Session I/O could not be tracked because `ENF_ACTIVITY`, `ENF_PENDING` or `ENF_LOST` was
    /// full.
    DropActivityFull = 13,
    /// A chunk of session bytes could not be recorded (data ring full, unreadable buffer); the
    /// byte counts are in the affected recordings.
    DropRecordingBytes = 14,
    /// Tasks of a locked user (`ENF_LOCKED`: real, effective or saved uid) killed at exec or
    /// fork.
    KilledLocked = 15,
    /// A forwarding socket could not be tracked: its connection already had
    /// `MAX_FORWARDS_PER_CONN` live, or `ENF_FORWARDS`/`ENF_FWD_ACTIVITY` was full.
    DropForwardsFull = 16,
    /// `kubectl exec` commands stopped before their first instruction for enforcerd's
    /// decision (`ENF_HOLD_EXECS`).
    ExecHeld = 17,
    /// A held exec command was resumed by a process other than the host's root (`SIGCONT` from
    /// inside its pod): until enforcerd's decision, it is killed if it forks or execs.
    ExecHoldBroken = 18,
    /// Tasks killed for forking or exec'ing while their exec was held (see `ExecHoldBroken`).
    KilledHeld = 19,
    /// A held exec command could not be marked (`ENF_HELD_TASKS` full): a `SIGCONT` from its
    /// pod would let it fork before enforcerd follows it.
    DropHeldFull = 20,
}

/// Number of slots in `ENF_COUNTERS`; larger than the number of counters so new ones can be
/// added without resizing the map.
pub const COUNTER_SLOTS: u32 = 32;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 21] = [
        Counter::ExecSeen,
        Counter::ForkSeen,
        Counter::ExitSeen,
        Counter::EventsSent,
        Counter::TasksInherited,
        Counter::DropRingbufFull,
        Counter::DropTasksFull,
        Counter::DropReadFailed,
        Counter::SessionsStarted,
        Counter::SessionsRefused,
        Counter::KilledRefused,
        Counter::KilledDoomed,
        Counter::DropSignalFailed,
        Counter::DropActivityFull,
        Counter::DropRecordingBytes,
        Counter::KilledLocked,
        Counter::DropForwardsFull,
        Counter::ExecHeld,
        Counter::ExecHoldBroken,
        Counter::KilledHeld,
        Counter::DropHeldFull,
    ];

    /// Stable snake_case name used in `enforcerctl status` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ExecSeen => "exec_seen",
            Counter::ForkSeen => "fork_seen",
            Counter::ExitSeen => "exit_seen",
            Counter::EventsSent => "events_sent",
            Counter::TasksInherited => "tasks_inherited",
            Counter::DropRingbufFull => "drop_ringbuf_full",
            Counter::DropTasksFull => "drop_tasks_map_full",
            Counter::DropReadFailed => "drop_read_failed",
            Counter::SessionsStarted => "kernel_sessions_started",
            Counter::SessionsRefused => "kernel_sessions_refused",
            Counter::KilledRefused => "killed_at_exec_refused",
            Counter::KilledDoomed => "killed_doomed",
            Counter::DropSignalFailed => "drop_signal_failed",
            Counter::DropActivityFull => "drop_activity_map_full",
            Counter::DropRecordingBytes => "drop_recording_chunks",
            Counter::KilledLocked => "killed_user_locked",
            Counter::DropForwardsFull => "drop_forwards_full",
            Counter::ExecHeld => "kube_execs_held",
            Counter::ExecHoldBroken => "kube_exec_holds_broken",
            Counter::KilledHeld => "killed_held",
            Counter::DropHeldFull => "drop_held_map_full",
        }
    }

    /// Whether this counter counts lost work (shown under "dropped").
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DropRingbufFull
                | Counter::DropTasksFull
                | Counter::DropReadFailed
                | Counter::DropSignalFailed
                | Counter::DropActivityFull
                | Counter::DropRecordingBytes
                | Counter::DropForwardsFull
                | Counter::DropHeldFull
        )
    }
}
