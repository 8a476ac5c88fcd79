//! The backstop sweep for connections whose sshd monitor ended unnoticed: when it has to read
//! the kernel's task table.

/// How often, at the least, the sweep for ended monitors reads the kernel's task table even
/// though no event was lost (in sweeps): a bound on anything unforeseen.
pub const CENSUS_AT_LEAST_EVERY: u32 = 12;

/// When the backstop sweep for ended monitors has to read the kernel's task table. The kernel
/// reports every monitor's exit; the table is only needed after it lost events (the drop
/// counters moved), while some monitor is not in it, or at least every
/// [`CENSUS_AT_LEAST_EVERY`] sweeps. Reading it costs ~10 ms with 30 000 tracked tasks.
#[derive(Debug, Default)]
pub struct MonitorSweep {
    /// Events lost so far when the table was last read.
    drops_seen: Option<u64>,
    /// Sweeps since then.
    skipped: u32,
}

impl MonitorSweep {
    /// Whether this sweep reads the table, `drops` being the events lost so far and `unsure`
    /// whether some connection has no entry in it (or released ones may still have processes).
    pub fn census_needed(&self, drops: u64, unsure: bool) -> bool {
        unsure || self.drops_seen != Some(drops) || self.skipped + 1 >= CENSUS_AT_LEAST_EVERY
    }

    /// Records a sweep: with a census, everything lost up to `drops` was accounted for.
    pub fn done(&mut self, drops: u64, census: bool) {
        if census {
            self.drops_seen = Some(drops);
            self.skipped = 0;
        } else {
            self.skipped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_table_is_read_after_lost_events_or_now_and_then() {
        let mut m = MonitorSweep::default();
        assert!(m.census_needed(0, false), "first sweep");
        m.done(0, true);
        assert!(!m.census_needed(0, false));
        assert!(m.census_needed(0, true), "a monitor the table lacks");
        assert!(m.census_needed(3, false), "events were lost");
        for _ in 0..CENSUS_AT_LEAST_EVERY - 2 {
            m.done(0, false);
            assert!(!m.census_needed(0, false));
        }
        m.done(0, false);
        assert!(m.census_needed(0, false), "bounded");
        m.done(0, true);
        assert!(!m.census_needed(0, false));
    }
}
