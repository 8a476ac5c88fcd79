//! Times as `enforcerctl` shows them: local time to the second in tables (the JSON keeps the
//! daemon's RFC 3339 UTC), idle durations, and `--since` as people write it.

use std::time::Duration;

use time::{
    Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset,
    format_description::well_known::Rfc3339, macros::format_description,
};

/// "now" and the local UTC offset at any moment: the system's, or fixed ones in tests.
#[derive(Clone, Copy)]
pub struct Clock {
    pub now: OffsetDateTime,
    pub offset: fn(OffsetDateTime) -> UtcOffset,
}

impl Clock {
    /// The system clock and time zone (TZ, /etc/localtime).
    pub fn system() -> Self {
        Clock {
            now: OffsetDateTime::now_utc(),
            offset: local_offset,
        }
    }

    /// `now` in local time.
    pub fn local_now(&self) -> OffsetDateTime {
        self.now.to_offset((self.offset)(self.now))
    }

    /// An RFC 3339 time from the daemon as local time to the second ("2026-11-23 11:04:05");
    /// anything unparsable is shown as it is.
    pub fn local(&self, rfc3339: &str) -> String {
        match OffsetDateTime::parse(rfc3339, &Rfc3339) {
            Ok(t) => t
                .to_offset((self.offset)(t))
                .format(format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .unwrap_or_else(|_| rfc3339.to_owned()),
            Err(_) => rfc3339.to_owned(),
        }
    }

    /// How long ago an RFC 3339 time was ("4m 12s"); "-" when unparsable.
    pub fn ago(&self, rfc3339: &str) -> String {
        OffsetDateTime::parse(rfc3339, &Rfc3339)
            .map(|t| human((self.now - t).try_into().unwrap_or_default()))
            .unwrap_or_else(|_| "-".into())
    }

    /// How long until an RFC 3339 time ("10m 48s"; "now" once past).
    pub fn until(&self, rfc3339: &str) -> String {
        match OffsetDateTime::parse(rfc3339, &Rfc3339) {
            Ok(t) if t > self.now => human((t - self.now).try_into().unwrap_or_default()),
            Ok(_) => "now".into(),
            Err(_) => "-".into(),
        }
    }
}

/// Seconds precision, e.g. "1h 2m 3s", "0s".
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The local UTC offset at `t` (the C library's time zone rules; UTC when unknown).
pub fn local_offset(t: OffsetDateTime) -> UtcOffset {
    let secs = t.unix_timestamp() as libc::time_t;
    // SAFETY: localtime_r only writes into `tm`, a plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    ok.then(|| UtcOffset::from_whole_seconds(tm.tm_gmtoff as i32).ok())
        .flatten()
        .unwrap_or(UtcOffset::UTC)
}

/// A `--since` the daemon cannot take as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--since {0:?}: use a duration back from now (2h, 30m, 1d), today, yesterday, a date (2026-11-23, local midnight) or an RFC 3339 time"
)]
pub struct SinceError(String);

/// Parses `--since` against local time `now`: a duration back from now ("2h", "1d 6h"),
/// "today" or "yesterday" (local midnight), a local date or date and time, or RFC 3339.
pub fn parse_since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, SinceError> {
    let t = text.trim();
    let midnight = |d: Date| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_offset(now.offset());
    match t {
        "today" => return Ok(midnight(now.date())),
        "yesterday" => return Ok(midnight(now.date().previous_day().unwrap_or(now.date()))),
        _ => {}
    }
    if let Ok(d) = humantime::parse_duration(t) {
        return Ok(now - d);
    }
    if let Ok(at) = OffsetDateTime::parse(t, &Rfc3339) {
        return Ok(at);
    }
    if let Ok(d) = Date::parse(t, format_description!("[year]-[month]-[day]")) {
        return Ok(midnight(d));
    }
    for f in [
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day] [hour]:[minute]"),
    ] {
        if let Ok(at) = PrimitiveDateTime::parse(t, f) {
            return Ok(at.assume_offset(now.offset()));
        }
    }
    Err(SinceError(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, offset};

    fn clock() -> Clock {
        Clock {
            now: datetime!(2026-11-23 12:00:00 UTC),
            offset: |_| offset!(+1),
        }
    }

    #[test]
    fn tables_show_local_time_to_the_second() {
        let c = clock();
        assert_eq!(
            c.local("2026-11-23T10:04:05.123456Z"),
            "2026-11-23 11:04:05"
        );
        assert_eq!(c.local("not a time"), "not a time");
        assert_eq!(c.ago("2026-11-23T11:55:48Z"), "4m 12s");
        assert_eq!(c.until("2026-11-23T12:10:48Z"), "10m 48s");
        assert_eq!(c.until("2026-11-23T11:00:00Z"), "now");
    }

    #[test]
    fn since_as_people_write_it() {
        let now = clock().local_now();
        let p = |s| parse_since(s, now).map(|t| t.to_offset(UtcOffset::UTC));
        assert_eq!(p("2h"), Ok(datetime!(2026-11-23 10:00:00 UTC)));
        assert_eq!(p("1d 6h"), Ok(datetime!(2026-11-22 06:00:00 UTC)));
        // Local midnight (+01:00).
        assert_eq!(p("today"), Ok(datetime!(2026-11-22 23:00:00 UTC)));
        assert_eq!(p("yesterday"), Ok(datetime!(2026-11-21 23:00:00 UTC)));
        assert_eq!(p("2026-11-20"), Ok(datetime!(2026-11-19 23:00:00 UTC)));
        assert_eq!(
            p("2026-11-20 08:30"),
            Ok(datetime!(2026-11-20 07:30:00 UTC))
        );
        assert_eq!(
            p("2026-11-20T08:30:00Z"),
            Ok(datetime!(2026-11-20 08:30:00 UTC))
        );
        let e = p("last tuesday").unwrap_err().to_string();
        assert!(e.contains("yesterday") && e.contains("2h"), "{e}");
    }
}
