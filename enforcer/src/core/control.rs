//! What the control socket lets unprivileged peers hold (pure): connection caps per uid and in
//! total, and rate-limited auditing of denied requests.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Why a control connection was closed by the daemon (counted per reason in status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlDrop {
    /// The uid already holds `control.max_connections_per_uid` connections.
    PerUidCap,
    /// Non-root peers together hold `control.max_connections_non_root` connections.
    NonRootCap,
    /// The announced frame is larger than the peer may send.
    FrameTooLarge,
    /// A frame did not complete within `control.read_timeout` of its first byte.
    ReadTimeout,
    /// A non-root connection sent nothing for `control.idle_timeout`.
    IdleTimeout,
}

impl ControlDrop {
    /// Every reason, in the order status lists them.
    pub const ALL: [ControlDrop; 5] = [
        ControlDrop::PerUidCap,
        ControlDrop::NonRootCap,
        ControlDrop::FrameTooLarge,
        ControlDrop::ReadTimeout,
        ControlDrop::IdleTimeout,
    ];

    /// The status counter name.
    pub fn counter(self) -> &'static str {
        match self {
            ControlDrop::PerUidCap => "drop_control_per_uid_cap",
            ControlDrop::NonRootCap => "drop_control_non_root_cap",
            ControlDrop::FrameTooLarge => "drop_control_frame_too_large",
            ControlDrop::ReadTimeout => "drop_control_read_timeout",
            ControlDrop::IdleTimeout => "drop_control_idle_timeout",
        }
    }

    /// The one line sent to the peer before closing, when it can be sent without waiting.
    pub fn message(self) -> &'static str {
        match self {
            ControlDrop::PerUidCap => {
                "too many control connections from your uid (control.max_connections_per_uid); close some and retry"
            }
            ControlDrop::NonRootCap => {
                "too many control connections from unprivileged users (control.max_connections_non_root); retry later"
            }
            ControlDrop::FrameTooLarge => {
                "request too large for an unprivileged peer (control.max_frame_bytes)"
            }
            ControlDrop::ReadTimeout => "request not completed in time (control.read_timeout)",
            ControlDrop::IdleTimeout => "idle control connection closed (control.idle_timeout)",
        }
    }
}

/// Connection caps for non-root uids (root is never counted nor refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnCaps {
    pub per_uid: u32,
    pub non_root: u32,
}

/// Open control connections per non-root uid.
#[derive(Debug, Default)]
pub struct ConnTable {
    per_uid: HashMap<u32, u32>,
    non_root: u32,
}

impl ConnTable {
    /// Takes a slot for a new connection of `uid`, or says why not.
    pub fn open(&mut self, uid: u32, caps: ConnCaps) -> Result<(), ControlDrop> {
        if uid == 0 {
            return Ok(());
        }
        let held = self.per_uid.get(&uid).copied().unwrap_or(0);
        if held >= caps.per_uid {
            return Err(ControlDrop::PerUidCap);
        }
        if self.non_root >= caps.non_root {
            return Err(ControlDrop::NonRootCap);
        }
        *self.per_uid.entry(uid).or_insert(0) += 1;
        self.non_root += 1;
        Ok(())
    }

    /// Gives back the slot of a closed connection of `uid`.
    pub fn close(&mut self, uid: u32) {
        if uid == 0 {
            return;
        }
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n -= 1;
            self.non_root -= 1;
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }

    /// Connections held by non-root peers.
    pub fn non_root(&self) -> u32 {
        self.non_root
    }
}

/// Connections the public socket turns away per second, sustained, before its accept loop
/// pauses (bursts of [`REFUSAL_BURST`] pass at once).
pub const REFUSALS_PER_SEC: f64 = 200.0;
/// Refusals allowed back to back before pacing starts.
pub const REFUSAL_BURST: f64 = 100.0;

/// Paces turning connections away: a peer over its cap that reconnects in a loop would otherwise
/// have the daemon accept, check and close thousands of connections a second, and spin itself.
/// Past the budget the accept loop pauses, so further connects wait in the kernel's listen
/// backlog, costing neither side CPU (a token bucket: [`REFUSALS_PER_SEC`], [`REFUSAL_BURST`]).
#[derive(Debug)]
pub struct RefusalPacer {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for RefusalPacer {
    fn default() -> Self {
        RefusalPacer {
            tokens: REFUSAL_BURST,
            last: None,
        }
    }
}

impl RefusalPacer {
    /// Records a refusal at `now`; returns how long the accept loop should pause before it
    /// accepts again (zero while within the budget).
    pub fn refused(&mut self, now: Instant) -> Duration {
        if let Some(last) = self.last {
            let refill = now.duration_since(last).as_secs_f64() * REFUSALS_PER_SEC;
            self.tokens = (self.tokens + refill).min(REFUSAL_BURST);
        }
        self.last = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / REFUSALS_PER_SEC)
        }
    }
}

/// How long denials of one uid are aggregated after the one audited at once.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(10);

/// What to do with one denied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialAudit {
    /// Audit it now (the first of its uid in a window), after the summary of the uid's previous
    /// window when that ended with suppressed denials no flush has reported yet.
    Record(Option<DenialSummary>),
    /// Counted; reported in the uid's aggregate record when the window ends.
    Aggregate,
}

/// Denials of one uid since its last audited record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    opened: Instant,
    suppressed: u64,
}

/// One aggregate audit record: `count` denials of `uid` not audited one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialSummary {
    pub uid: u32,
    pub count: u64,
    pub window: Duration,
}

/// Rate limit for `request_denied` audit records: per uid, the first denial is audited at once,
/// the rest within [`DENIAL_WINDOW`] become one record with a count.
#[derive(Debug, Default)]
pub struct DenialLimiter {
    windows: HashMap<u32, Window>,
}

impl DenialLimiter {
    /// Classifies a denial of `uid` at `now`.
    pub fn on_denial(&mut self, uid: u32, now: Instant) -> DenialAudit {
        match self.windows.get_mut(&uid) {
            Some(w) if now.duration_since(w.opened) < DENIAL_WINDOW => {
                w.suppressed += 1;
                DenialAudit::Aggregate
            }
            _ => {
                let fresh = Window {
                    opened: now,
                    suppressed: 0,
                };
                let ended = self.windows.insert(uid, fresh);
                DenialAudit::Record(ended.filter(|w| w.suppressed > 0).map(|w| DenialSummary {
                    uid,
                    count: w.suppressed,
                    window: now.duration_since(w.opened),
                }))
            }
        }
    }

    /// Closes the windows that ended by `now`; returns one summary per window that held
    /// suppressed denials.
    pub fn flush(&mut self, now: Instant) -> Vec<DenialSummary> {
        let mut out = Vec::new();
        self.windows.retain(|&uid, w| {
            if now.duration_since(w.opened) < DENIAL_WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                out.push(DenialSummary {
                    uid,
                    count: w.suppressed,
                    window: now.duration_since(w.opened),
                });
            }
            false
        });
        out.sort_by_key(|s| s.uid);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_pass_in_a_burst_then_are_paced_to_the_sustained_rate() {
        let mut p = RefusalPacer::default();
        let t0 = Instant::now();
        for _ in 0..REFUSAL_BURST as usize {
            assert_eq!(p.refused(t0), Duration::ZERO);
        }
        let pause = p.refused(t0);
        assert_eq!(pause, Duration::from_secs_f64(1.0 / REFUSALS_PER_SEC));
        // A storm that keeps coming right after each pause is held to the sustained rate.
        let mut t = t0 + pause;
        let mut refused = 0;
        while t < t0 + Duration::from_secs(1) {
            t += p.refused(t).max(Duration::from_micros(1));
            refused += 1;
        }
        assert!(refused <= REFUSALS_PER_SEC as usize + 1, "{refused}");
        // Quiet for a while: the burst is back.
        let later = t + Duration::from_secs(5);
        assert_eq!(p.refused(later), Duration::ZERO);
    }

    const CAPS: ConnCaps = ConnCaps {
        per_uid: 2,
        non_root: 3,
    };

    #[test]
    fn per_uid_cap_then_global_cap_root_exempt() {
        let mut t = ConnTable::default();
        assert_eq!(t.open(1000, CAPS), Ok(()));
        assert_eq!(t.open(1000, CAPS), Ok(()));
        assert_eq!(t.open(1000, CAPS), Err(ControlDrop::PerUidCap));
        assert_eq!(t.open(1001, CAPS), Ok(()));
        assert_eq!(t.open(1002, CAPS), Err(ControlDrop::NonRootCap));
        for _ in 0..100 {
            assert_eq!(t.open(0, CAPS), Ok(()));
        }
        assert_eq!(t.non_root(), 3);
        t.close(1000);
        assert_eq!(t.open(1002, CAPS), Ok(()));
        t.close(0);
        assert_eq!(t.non_root(), 3);
    }

    #[test]
    fn closing_frees_the_uid_entry() {
        let mut t = ConnTable::default();
        t.open(7, CAPS).unwrap();
        t.close(7);
        t.close(7); // a stray close does not underflow
        assert_eq!(t.non_root(), 0);
        assert!(t.per_uid.is_empty());
    }

    #[test]
    fn first_denial_audited_rest_aggregated_per_uid() {
        let mut l = DenialLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.on_denial(1000, t0), DenialAudit::Record(None));
        for i in 1..=1700 {
            let t = t0 + Duration::from_millis(i);
            assert_eq!(l.on_denial(1000, t), DenialAudit::Aggregate);
        }
        // Another uid is not hidden behind the first one's flood.
        assert_eq!(l.on_denial(1001, t0), DenialAudit::Record(None));
        assert!(l.flush(t0 + Duration::from_secs(5)).is_empty());
        let s = l.flush(t0 + DENIAL_WINDOW);
        assert_eq!(
            s,
            [DenialSummary {
                uid: 1000,
                count: 1700,
                window: DENIAL_WINDOW
            }]
        );
        // The window is over: the next denial is audited at once again.
        assert_eq!(
            l.on_denial(1000, t0 + DENIAL_WINDOW),
            DenialAudit::Record(None)
        );
    }

    #[test]
    fn a_late_denial_opens_a_new_window_even_before_flush() {
        let mut l = DenialLimiter::default();
        let t0 = Instant::now();
        l.on_denial(5, t0);
        l.on_denial(5, t0 + Duration::from_secs(1));
        // No flush ran before the window ended: its summary comes with the next record.
        let late = t0 + DENIAL_WINDOW + Duration::from_secs(1);
        assert_eq!(
            l.on_denial(5, late),
            DenialAudit::Record(Some(DenialSummary {
                uid: 5,
                count: 1,
                window: DENIAL_WINDOW + Duration::from_secs(1)
            }))
        );
        assert!(l.flush(late).is_empty());
    }
}
