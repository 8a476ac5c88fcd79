//! When to ask the fleet again who an exec session is (pure). One read of the pod's grants
//! gives up after a few seconds; a session whose first ask met a stalled or unreachable etcd
//! would otherwise stay without its Kubernetes user for good — not counted against the user's
//! fleet-wide exec limit and not ended by a lock of the user. So it is asked again, backing
//! off, for as long as it lives, and for [`ENDED_WAIT`] after it ended (its audit and
//! recording still want the name). A definite answer (a grant, none, several) is final.

use std::time::Duration;

/// How long an ended exec session waits for the fleet's answer about its user.
pub const ENDED_WAIT: Duration = Duration::from_secs(60);

/// The first ask again comes this long after a failed ask; each next one waits twice as long,
/// up to [`ASK_AGAIN_MAX`].
pub const ASK_AGAIN_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two asks (the grant an ask looks for lives a minute by default).
pub const ASK_AGAIN_MAX: Duration = Duration::from_secs(8);

/// The wait before the next ask, after `failures` asks (≥ 1) met no answer; `None`: stop
/// asking. `ended_for`: how long ago the session ended (`None`: it lives).
pub fn ask_again_after(failures: u32, ended_for: Option<Duration>) -> Option<Duration> {
    let shift = failures.saturating_sub(1).min(16);
    let wait = ASK_AGAIN_FIRST
        .saturating_mul(1 << shift)
        .min(ASK_AGAIN_MAX);
    match ended_for {
        None => Some(wait),
        Some(ended) => (ended + wait < ENDED_WAIT).then_some(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_session_is_asked_again_backing_off_to_the_cap_and_never_given_up() {
        let waits: Vec<u64> = (1..=6)
            .map(|n| ask_again_after(n, None).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        assert_eq!(ask_again_after(u32::MAX, None), Some(ASK_AGAIN_MAX));
    }

    #[test]
    fn an_ended_session_is_asked_again_only_within_its_wait() {
        assert_eq!(
            ask_again_after(1, Some(Duration::from_secs(2))),
            Some(ASK_AGAIN_FIRST)
        );
        assert_eq!(
            ask_again_after(4, Some(Duration::from_secs(51))),
            Some(ASK_AGAIN_MAX)
        );
        assert_eq!(ask_again_after(4, Some(Duration::from_secs(52))), None);
        assert_eq!(ask_again_after(1, Some(ENDED_WAIT)), None);
    }
}
