//! Idle `kubectl exec` sessions (pure). The client's bytes reach an exec through the pod's
//! shim, which holds the pty master (or writes the stdin pipe) for every exec of the pod, so
//! they are not seen per session in the kernel the way sshd's are. What the kernel does keep
//! per exec is its stdin's timestamps: a terminal's access time moves when the session reads
//! what was typed (Linux updates it at most every 8 s: the clock's resolution); `w(1)` reads
//! idle time the same way. A user inside the container can set those times (`touch
//! /dev/pts/0`), but the kernel's own updates never move a terminal's change time and a
//! `touch` always does: a look at which the change time moved is taken as tampering, not input.
//!
//! Anonymous pipes carry no timestamps on current kernels, so for a non-tty exec the input
//! evidence is its root process reading (`rchar` of /proc/PID/io): reads of files count too,
//! which a user in the container can use to look busy — a documented limit.

use std::time::Duration;

use time::OffsetDateTime;

/// One look at an exec: its stdin as `stat(2)` shows it, and its root's reads so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdinTimes {
    pub kind: StdinKind,
    pub atime: OffsetDateTime,
    pub mtime: OffsetDateTime,
    pub ctime: OffsetDateTime,
    /// Bytes the root process has read (`rchar`).
    pub read_bytes: u64,
    /// When the look was taken.
    pub at: OffsetDateTime,
}

/// What an exec's stdin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinKind {
    /// A pty slave (`kubectl exec -t`).
    Tty,
    /// A pipe from the shim (`kubectl exec -i` without `-t`).
    Pipe,
    /// Anything else (`/dev/null` without `-i`): no input can come.
    None,
}

/// What one look at stdin found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Input came since the last look (at this time, to the clock's resolution).
    Input(OffsetDateTime),
    Nothing,
    /// The terminal's attributes were changed (its change time moved): its times are not
    /// taken this once.
    Tampered,
}

/// One exec's input clock: the last input seen and the stdin times of the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputClock {
    pub last_input: OffsetDateTime,
    seen: Option<StdinTimes>,
}

impl InputClock {
    /// A clock for a session that started (or was found) at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        InputClock {
            last_input: start,
            seen: None,
        }
    }

    /// Folds in a look at stdin. The first look is the baseline: a terminal's access time then
    /// is input before it (a session found at the daemon's start keeps its real idle time).
    pub fn observe(&mut self, now: StdinTimes) -> Observed {
        let before = self.seen.replace(now);
        let input = match (now.kind, before) {
            (StdinKind::None, _) => return Observed::Nothing,
            (StdinKind::Tty, Some(b)) if b.ctime != now.ctime => return Observed::Tampered,
            (StdinKind::Tty, None) => now.atime,
            (StdinKind::Tty, Some(b)) if now.atime > b.atime => now.atime,
            (StdinKind::Pipe, Some(b)) if now.read_bytes > b.read_bytes => now.at,
            _ => return Observed::Nothing,
        };
        if input <= self.last_input {
            return Observed::Nothing;
        }
        self.last_input = input;
        Observed::Input(input)
    }
}

/// What an exec session's idle clock comes to at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleStep {
    Nothing,
    /// Warn the user: the cut comes in this long unless they type.
    Warn(Duration),
    /// Past the timeout: idle this long.
    Cut(Duration),
}

/// The step for a session whose last input was `last_input`, with `timeout` (zero: never
/// cut), warned `warn_before` the cut (zero: no warning); `warned` once a warning for this
/// idle spell went out.
pub fn idle_step(
    last_input: OffsetDateTime,
    timeout: Duration,
    warn_before: Duration,
    warned: bool,
    now: OffsetDateTime,
) -> IdleStep {
    if timeout.is_zero() {
        return IdleStep::Nothing;
    }
    let idle: Duration = (now - last_input).try_into().unwrap_or(Duration::ZERO);
    if idle >= timeout {
        return IdleStep::Cut(idle);
    }
    let left = timeout - idle;
    if !warned && !warn_before.is_zero() && left <= warn_before {
        return IdleStep::Warn(left);
    }
    IdleStep::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s)
    }

    fn tty(a: i64, m: i64, c: i64) -> StdinTimes {
        StdinTimes {
            kind: StdinKind::Tty,
            atime: t(a),
            mtime: t(m),
            ctime: t(c),
            read_bytes: 0,
            at: t(1000),
        }
    }

    #[test]
    fn a_terminal_read_is_input_and_a_touch_is_not() {
        let mut c = InputClock::new(t(100));
        // Found with its last read before the start: the start counts.
        assert_eq!(c.observe(tty(90, 90, 10)), Observed::Nothing);
        assert_eq!(c.last_input, t(100));
        assert_eq!(c.observe(tty(120, 125, 10)), Observed::Input(t(120)));
        // Output alone (mtime) is not input.
        assert_eq!(c.observe(tty(120, 200, 10)), Observed::Nothing);
        // `touch /dev/pts/0`: every time moves, the change time too.
        assert_eq!(c.observe(tty(300, 300, 300)), Observed::Tampered);
        assert_eq!(c.last_input, t(120));
        // Later real input still counts (change time as after the touch).
        assert_eq!(c.observe(tty(310, 300, 300)), Observed::Input(t(310)));
    }

    #[test]
    fn a_found_terminal_keeps_its_real_idle_time() {
        let mut c = InputClock::new(t(50));
        assert_eq!(c.observe(tty(80, 80, 10)), Observed::Input(t(80)));
    }

    #[test]
    fn a_pipe_counts_its_roots_reads_and_dev_null_nothing() {
        let pipe = |read, at| StdinTimes {
            kind: StdinKind::Pipe,
            atime: t(0),
            mtime: t(0),
            ctime: t(0),
            read_bytes: read,
            at: t(at),
        };
        let mut c = InputClock::new(t(100));
        assert_eq!(c.observe(pipe(10, 101)), Observed::Nothing);
        assert_eq!(c.observe(pipe(10, 120)), Observed::Nothing);
        assert_eq!(c.observe(pipe(25, 130)), Observed::Input(t(130)));
        let mut n = InputClock::new(t(100));
        let null = StdinTimes {
            kind: StdinKind::None,
            ..pipe(10, 200)
        };
        assert_eq!(n.observe(null), Observed::Nothing);
        assert_eq!(
            n.observe(StdinTimes {
                read_bytes: 99,
                ..null
            }),
            Observed::Nothing
        );
        assert_eq!(n.last_input, t(100));
    }

    #[test]
    fn warned_then_cut() {
        let (timeout, warn) = (Duration::from_secs(60), Duration::from_secs(10));
        assert_eq!(
            idle_step(t(0), timeout, warn, false, t(40)),
            IdleStep::Nothing
        );
        assert_eq!(
            idle_step(t(0), timeout, warn, false, t(52)),
            IdleStep::Warn(Duration::from_secs(8))
        );
        assert_eq!(
            idle_step(t(0), timeout, warn, true, t(55)),
            IdleStep::Nothing
        );
        assert_eq!(
            idle_step(t(0), timeout, warn, true, t(61)),
            IdleStep::Cut(Duration::from_secs(61))
        );
        // No warning configured; no timeout.
        assert_eq!(
            idle_step(t(0), timeout, Duration::ZERO, false, t(55)),
            IdleStep::Nothing
        );
        assert_eq!(
            idle_step(t(0), Duration::ZERO, warn, false, t(9999)),
            IdleStep::Nothing
        );
    }
}
