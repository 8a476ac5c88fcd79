//! Idle connections: from the kernel's per-channel activity, each session's last activity and
//! which connections to warn or cut, and when the next such moment can come at the earliest.
//! Activity only ever moves a connection's moments later, so until then (or until a connection
//! or session comes or goes) there is nothing to read or decide: with 10 000 idle sessions a
//! check costs milliseconds, a tick without one microseconds.

use std::time::Duration;

use enforcer_common::io::IO_FORWARD;
use time::OffsetDateTime;

use super::conn::Registry;

/// How idle time is counted (`[idle]`).
#[derive(Debug, Clone, Copy)]
pub struct IdleSettings {
    /// Output counts as activity too (`activity = "any"`), not only input.
    pub any_activity: bool,
    /// How long before the cut the user is warned; zero = no warning.
    pub warn_before: Duration,
    /// Traffic through forwarding channels counts, either way (`forwarding = "active"`).
    pub forwarding: bool,
}

/// Output within this long after our own warning is the warning itself, not activity.
pub const OWN_OUTPUT: Duration = Duration::from_secs(1);

/// One channel's last input and output as the kernel keeps them (`ENF_ACTIVITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelActivity {
    pub conn_id: u64,
    /// The pty or pipe the bytes moved through (`Session::channels`), or a forward's socket
    /// inode with [`IO_FORWARD`] set.
    pub object: u64,
    pub input: Option<OffsetDateTime>,
    pub output: Option<OffsetDateTime>,
    /// Bytes in each direction so far (shown for forwards).
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// What one check found.
#[derive(Debug, Default, PartialEq)]
pub struct IdleCheck {
    /// Connections to warn now, with the time left before their cut.
    pub warn: Vec<(u64, Duration)>,
    /// Connections past their timeout: (id, idle for, timeout).
    pub cut: Vec<(u64, Duration, Duration)>,
    /// Channels of connections that no longer exist: their kernel entries can go.
    pub orphans: Vec<(u64, u64)>,
    /// A warning was recorded or cleared (the connection table changed).
    pub changed: bool,
    /// The earliest moment a connection may be due for a warning or its cut, if no activity
    /// comes before.
    pub next_due: Option<OffsetDateTime>,
    /// Each connection's last activity that counts for its idle timeout, when sessions were
    /// asked for (`enforcerctl sessions` shows IDLE and the time of the cut).
    pub idle_since: Vec<(u64, OffsetDateTime)>,
}

/// When the idle check has something to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// [`Registry::changes`] at the last check (`None`: never checked).
    pub changes: Option<u64>,
    /// [`IdleCheck::next_due`] of the last check.
    pub next_due: Option<OffsetDateTime>,
}

impl Schedule {
    /// Whether a check is due at `now` for a table at `changes`: something became due, or a
    /// connection or session came or went since (an ended session no longer counts as
    /// activity, so a moment can come earlier).
    pub fn is_due(&self, changes: u64, now: OffsetDateTime) -> bool {
        self.changes != Some(changes) || self.next_due.is_some_and(|t| now >= t)
    }
}

/// Applies `activity` to the sessions' last activity and decides, at `now`, which connections
/// are warned (their `idle_warned_at` set) or cut. Activity since a warning clears it.
/// Connections for which `terminating` holds are being ended already and left alone.
/// Sessions' last activity is updated only when `sessions` is set (a listing shows it; the
/// decisions need only each connection's latest).
pub fn check(
    registry: &mut Registry,
    mut activity: Vec<ChannelActivity>,
    now: OffsetDateTime,
    settings: IdleSettings,
    sessions: bool,
    terminating: impl Fn(u64) -> bool,
) -> IdleCheck {
    let mut out = IdleCheck::default();
    // In connection order, so both are walked once, side by side.
    activity.sort_unstable_by_key(|a| a.conn_id);
    let mut rest = &activity[..];
    let warn_before = settings.warn_before;
    // What to change once the walk is done, only where something changes (a connection the
    // writer thread still shares is copied when changed): `idle_warned_at` set or cleared,
    // and sessions' new last activity (connection, session, time).
    let mut warned: Vec<(u64, Option<OffsetDateTime>)> = Vec::new();
    let mut touched: Vec<(u64, u64, OffsetDateTime)> = Vec::new();
    let mut forwards: Vec<(u64, &ChannelActivity)> = Vec::new();
    for c in registry.iter() {
        let id = c.id;
        // Stepped over, not searched: the next entries are the ones at the front.
        let before = rest.iter().take_while(|a| a.conn_id < id).count();
        out.orphans
            .extend(rest[..before].iter().map(|a| (a.conn_id, a.object)));
        let n = rest[before..]
            .iter()
            .take_while(|a| a.conn_id == id)
            .count();
        let (mine, after) = rest[before..].split_at(n);
        rest = after;
        // Latest counted activity of the connection.
        let mut latest: Option<OffsetDateTime> = None;
        for a in mine {
            if a.object & IO_FORWARD != 0 {
                // A tunnel's traffic either way is the client's doing.
                if settings.forwarding {
                    latest = latest.max(a.input.max(a.output));
                }
                if sessions {
                    forwards.push((id, a));
                }
                continue;
            }
            let warned = c.idle_warned_at;
            let output = a
                .output
                .filter(|t| warned.is_none_or(|w| *t < w || *t > w + OWN_OUTPUT));
            let counted = if settings.any_activity {
                a.input.max(output)
            } else {
                a.input
            };
            latest = latest.max(counted);
            if let Some(t) = a.input.max(output).filter(|_| sessions) {
                touched.extend(
                    c.sessions
                        .values()
                        .filter(|s| s.channels.contains(&a.object) && t > s.last_activity)
                        .map(|s| (id, s.id, t)),
                );
            }
        }
        if terminating(id) {
            continue;
        }
        // Opening a channel is the client's doing too; a connection without any is idle from
        // its start.
        let last = c
            .sessions
            .latest_start()
            .into_iter()
            .chain(latest)
            .chain(c.forward_event_at.filter(|_| settings.forwarding))
            .fold(c.admitted_at, OffsetDateTime::max);
        if sessions {
            out.idle_since.push((id, last));
        }
        if !c.idle_timeout.is_zero() {
            let idle: Duration = (now - last).try_into().unwrap_or_default();
            let timeout = c.idle_timeout.0;
            let warn_pending = !warn_before.is_zero() && c.idle_warned_at.is_none_or(|w| w < last);
            let due = if idle >= timeout {
                out.cut.push((id, idle, timeout));
                None
            } else if warn_pending && idle + warn_before >= timeout {
                warned.push((id, Some(now)));
                out.warn.push((id, timeout - idle));
                Some(timeout)
            } else {
                if c.idle_warned_at.is_some_and(|w| w < last) {
                    // Activity since the warning: the clock starts over.
                    warned.push((id, None));
                }
                Some(if warn_pending {
                    timeout.saturating_sub(warn_before)
                } else {
                    timeout
                })
            };
            let due = due.and_then(|d| last.checked_add(d.try_into().ok()?));
            out.next_due = match (out.next_due, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    out.changed = !warned.is_empty();
    for (id, at) in warned {
        if let Some(c) = registry.get_mut(id) {
            c.idle_warned_at = at;
        }
    }
    for (id, session_id, t) in touched {
        let session = registry
            .get_mut(id)
            .and_then(|c| c.sessions.values_mut().find(|s| s.id == session_id));
        if let Some(s) = session {
            s.last_activity = s.last_activity.max(t);
        }
    }
    for (id, a) in forwards {
        let forward = registry
            .get_mut(id)
            .and_then(|c| c.forwards.get_mut(&(a.object & !IO_FORWARD)));
        if let Some(f) = forward {
            f.bytes_in = a.input_bytes;
            f.bytes_out = a.output_bytes;
            if let Some(t) = a.input.max(a.output).filter(|t| *t > f.last_activity) {
                f.last_activity = t;
            }
        }
    }
    out.orphans
        .extend(rest.iter().map(|a| (a.conn_id, a.object)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Dur,
        core::conn::tests::{conn, session},
    };

    const T0: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

    fn at(secs: u64) -> OffsetDateTime {
        T0 + Duration::from_secs(secs)
    }

    fn settings(any_activity: bool, warn: u64) -> IdleSettings {
        IdleSettings {
            any_activity,
            warn_before: Duration::from_secs(warn),
            forwarding: true,
        }
    }

    /// One connection admitted at T0 with a 100 s timeout and a session on channel 7.
    fn registry() -> (Registry, u64) {
        let mut r = Registry::default();
        let mut c = conn("alice", 10, "10.0.0.1:1");
        c.idle_timeout = Dur::secs(100);
        let id = r.insert(c);
        let mut s = session(id, 500);
        s.channels = vec![7];
        r.add_session(s).unwrap();
        (r, id)
    }

    fn input(conn_id: u64, object: u64, secs: u64) -> ChannelActivity {
        ChannelActivity {
            conn_id,
            object,
            input: Some(at(secs)),
            output: None,
            input_bytes: 1,
            output_bytes: 0,
        }
    }

    fn output(conn_id: u64, secs: u64) -> ChannelActivity {
        ChannelActivity {
            conn_id,
            object: 7,
            input: None,
            output: Some(at(secs)),
            input_bytes: 0,
            output_bytes: 1,
        }
    }

    fn run(r: &mut Registry, activity: Vec<ChannelActivity>, now: u64, warn: u64) -> IdleCheck {
        check(r, activity, at(now), settings(false, warn), true, |_| false)
    }

    #[test]
    fn warns_then_cuts_an_idle_connection() {
        let (mut r, id) = registry();
        let early = run(&mut r, vec![], 50, 30);
        assert!(early.warn.is_empty() && early.cut.is_empty() && !early.changed);
        assert_eq!(early.next_due, Some(at(70)), "the warning is due next");
        let warned = run(&mut r, vec![], 80, 30);
        assert_eq!(warned.warn, vec![(id, Duration::from_secs(20))]);
        assert!(warned.changed);
        assert_eq!(r.get(id).unwrap().idle_warned_at, Some(at(80)));
        assert_eq!(warned.next_due, Some(at(100)), "then the cut");
        // Warned once only.
        let again = run(&mut r, vec![], 90, 30);
        assert!(again.warn.is_empty() && !again.changed);
        assert_eq!(again.next_due, Some(at(100)));
        let cut = run(&mut r, vec![], 101, 30);
        assert_eq!(
            cut.cut,
            vec![(id, Duration::from_secs(101), Duration::from_secs(100))]
        );
        assert_eq!(cut.next_due, None, "nothing else to watch");
        // A connection already being terminated is left alone.
        let ending = check(&mut r, vec![], at(101), settings(false, 30), true, |c| {
            c == id
        });
        assert!(ending.cut.is_empty());
    }

    #[test]
    fn input_resets_the_clock_and_clears_the_warning() {
        let (mut r, id) = registry();
        run(&mut r, vec![], 80, 30);
        let typed = run(&mut r, vec![input(id, 7, 85)], 86, 30);
        assert!(typed.changed && typed.warn.is_empty() && typed.cut.is_empty());
        assert_eq!(r.get(id).unwrap().idle_warned_at, None);
        assert_eq!(r.sessions_of(id).next().unwrap().last_activity, at(85));
        assert_eq!(
            typed.next_due,
            Some(at(155)),
            "warned again 30 s before 185"
        );
        let later = run(&mut r, vec![input(id, 7, 85)], 150, 30);
        assert!(later.cut.is_empty(), "85 + 100 s not reached");
    }

    #[test]
    fn sessions_are_left_alone_unless_asked_for() {
        let (mut r, id) = registry();
        let out = check(
            &mut r,
            vec![input(id, 7, 85)],
            at(86),
            settings(false, 30),
            false,
            |_| false,
        );
        assert_eq!(out.next_due, Some(at(155)), "the connection's clock moved");
        assert_eq!(r.sessions_of(id).next().unwrap().last_activity, T0);
    }

    #[test]
    fn output_counts_only_with_any_and_never_our_own_warning() {
        let (mut r, id) = registry();
        let input_only = run(&mut r, vec![output(id, 90)], 101, 0);
        assert_eq!(input_only.cut.len(), 1, "output is not input");
        assert_eq!(
            r.sessions_of(id).next().unwrap().last_activity,
            at(90),
            "but it is the session's last activity"
        );
        let (mut r, id) = registry();
        let any = check(
            &mut r,
            vec![output(id, 90)],
            at(101),
            settings(true, 0),
            true,
            |_| false,
        );
        assert!(any.cut.is_empty());
        assert_eq!(any.next_due, Some(at(190)));
        // The warning's own echo (within OWN_OUTPUT of it) is not activity.
        let (mut r, id) = registry();
        check(&mut r, vec![], at(80), settings(true, 30), true, |_| false);
        let echo = check(
            &mut r,
            vec![output(id, 80)],
            at(101),
            settings(true, 30),
            true,
            |_| false,
        );
        assert_eq!(echo.cut.len(), 1);
    }

    #[test]
    fn activity_of_connections_that_are_gone_is_orphaned() {
        let (mut r, id) = registry();
        let mut other = conn("bob", 11, "10.0.0.1:2");
        other.idle_timeout = Dur::secs(100);
        let id2 = r.insert(other);
        r.remove(id);
        let out = run(
            &mut r,
            vec![input(id2 + 1, 3, 10), input(id2, 9, 10), input(id, 7, 10)],
            20,
            0,
        );
        assert_eq!(out.orphans, vec![(id, 7), (id2 + 1, 3)]);
        assert_eq!(out.next_due, Some(at(110)), "bob's input counts");
    }

    #[test]
    fn a_connection_without_timeout_is_never_due() {
        let (mut r, id) = registry();
        r.get_mut(id).unwrap().idle_timeout = Dur::ZERO;
        let out = run(&mut r, vec![], 10_000, 30);
        assert_eq!(
            out,
            IdleCheck {
                idle_since: vec![(id, T0)],
                ..IdleCheck::default()
            },
            "shown idle since its admission, never due"
        );
    }

    #[test]
    fn a_check_is_due_when_its_moment_comes_or_the_table_changes() {
        let (mut r, id) = registry();
        let never = Schedule::default();
        assert!(never.is_due(r.changes(), at(0)), "never checked");
        let out = run(&mut r, vec![], 50, 30);
        let s = Schedule {
            changes: Some(r.changes()),
            next_due: out.next_due,
        };
        assert!(!s.is_due(r.changes(), at(69)));
        assert!(s.is_due(r.changes(), at(70)));
        // A session that ends no longer counts as activity: its end changes the table.
        r.remove_session_by_kernel(id, 500);
        assert!(s.is_due(r.changes(), at(51)));
    }

    #[test]
    fn forward_traffic_either_way_is_activity_unless_ignored() {
        let (mut r, id) = registry();
        let mut f = crate::core::conn::tests::forward();
        f.last_activity = T0;
        r.get_mut(id).unwrap().forwards.insert(42, f);
        let traffic = ChannelActivity {
            conn_id: id,
            object: 42 | IO_FORWARD,
            input: None,
            output: Some(at(90)),
            input_bytes: 10,
            output_bytes: 2000,
        };
        let active = run(&mut r, vec![traffic], 101, 0);
        assert!(
            active.cut.is_empty(),
            "output of a tunnel counts: {active:?}"
        );
        assert_eq!(active.next_due, Some(at(190)));
        let shown = &r.get(id).unwrap().forwards[&42];
        assert_eq!(
            (shown.bytes_in, shown.bytes_out, shown.last_activity),
            (10, 2000, at(90))
        );
        assert_eq!(
            r.sessions_of(id).next().unwrap().last_activity,
            T0,
            "a forward is no session's channel"
        );
        let ignored = IdleSettings {
            forwarding: false,
            ..settings(true, 0)
        };
        let cut = check(&mut r, vec![traffic], at(101), ignored, true, |_| false);
        assert_eq!(cut.cut.len(), 1, "forwarding = ignore");
        // Opening or closing a forward moves the clock too (short-lived tunnel requests).
        r.get_mut(id).unwrap().forward_event_at = Some(at(95));
        let opened = run(&mut r, vec![], 101, 0);
        assert_eq!(opened.next_due, Some(at(195)));
    }
}
