//! Decisions of the recording uploader (`[recording.store]`), pure: where a recording goes in
//! the store, when the next part goes up and how much of the spooled file it takes, how long a
//! failed part waits, and when the local copy may go.
//!
//! S3 multipart rules shape all of it: every part but the last is at least 5 MiB, at most
//! 10 000 parts. So a part goes up once `part_size` bytes wait, or once `flush_after` passed and
//! at least 5 MiB wait; anything less stays in the local file (the spool) until the session
//! ends, when the rest goes up as the last part. A part that is not the last ends at a line end,
//! so that what the store has is never cut back by a restart (which trims a half-written last
//! line of a recording).

use std::time::Duration;

/// S3's smallest part that is not the last.
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part number.
pub const MAX_PARTS: usize = 10_000;
/// How far past `part_size` a part that is not the last may reach to end at a line end (an
/// event line of a recording is far shorter).
pub const LINE_SLACK: u64 = 1 << 20;

/// Where recordings go: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

/// Parses `s3://bucket[/prefix]`.
pub fn parse_url(url: &str) -> Result<StoreUrl, String> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        format!(
            "{url:?} is not an S3 URL; write it as \"s3://bucket/prefix\" (or \"\" for local only)"
        )
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    if !valid_bucket {
        return Err(format!(
            "bucket {bucket:?} in {url:?} is not a valid bucket name (3-63 characters: a-z, 0-9, '-', '.')"
        ));
    }
    Ok(StoreUrl {
        bucket: bucket.to_owned(),
        prefix: prefix.trim_matches('/').to_owned(),
    })
}

/// The object key of a recording: `<prefix>/<node>/<path below recording.dir>`.
pub fn object_key(prefix: &str, node: &str, relative: &str) -> String {
    let relative = relative.trim_start_matches('/');
    match prefix {
        "" => format!("{node}/{relative}"),
        p => format!("{p}/{node}/{relative}"),
    }
}

/// What an object key says about its recording (the inverse of [`object_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts {
    pub node: String,
    pub date: String,
    pub user: String,
    pub session_id: u64,
}

/// Splits `<prefix>/<node>/<date>/<user>/session-<id>.cast`; `None` for anything else.
pub fn parse_key(prefix: &str, key: &str) -> Option<KeyParts> {
    let rest = match prefix {
        "" => key,
        p => key.strip_prefix(p)?.strip_prefix('/')?,
    };
    let mut it = rest.split('/');
    let (node, date, user, file) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let id = file
        .strip_prefix("session-")?
        .strip_suffix(".cast")?
        .parse()
        .ok()?;
    Some(KeyParts {
        node: node.into(),
        date: date.into(),
        user: user.into(),
        session_id: id,
    })
}

/// One recording as the uploader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spool {
    /// Bytes of the file the store has (in confirmed parts).
    pub uploaded: u64,
    /// Length of the local file now.
    pub len: u64,
    /// Parts uploaded so far.
    pub parts: usize,
    /// The recording is closed: nothing more will be written to it.
    pub ended: bool,
    /// Time since the last part went up (or since the upload began).
    pub since_part: Duration,
}

/// What to do next for one recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet: too little is waiting.
    Wait,
    /// Upload the bytes from `from`, at most `max` of them. `last`: this is the final part (all
    /// that remains of a closed recording). `cut`: the recording is still written, so end the
    /// part at a line end ([`cut`] on what was read); a closed recording's parts are taken whole.
    Part {
        from: u64,
        max: u64,
        last: bool,
        cut: bool,
    },
    /// Every byte is in a part: complete the object.
    Complete,
}

/// The next step for a recording with `part_size` and `flush_after` in force.
pub fn next_step(s: &Spool, part_size: u64, flush_after: Duration) -> Step {
    let pending = s.len.saturating_sub(s.uploaded);
    if s.ended {
        if pending == 0 && s.parts > 0 {
            return Step::Complete;
        }
        // The last part has no minimum; one that must leave room for parts after it is full.
        // Near the part limit everything left goes in one part (S3 allows 5 GiB).
        let last = pending <= part_size || s.parts + 1 >= MAX_PARTS;
        return Step::Part {
            from: s.uploaded,
            max: if last { pending } else { part_size },
            last,
            cut: false,
        };
    }
    let due = pending >= part_size || (pending >= MIN_PART && s.since_part >= flush_after);
    // Keep the last allowed part number for the end.
    if due && s.parts + 1 < MAX_PARTS {
        Step::Part {
            from: s.uploaded,
            max: pending.min(part_size + LINE_SLACK),
            last: false,
            cut: true,
        }
    } else {
        Step::Wait
    }
}

/// Where a part that is not the last ends in `data` (what was read for it, from the part's
/// start): at the end of the line that holds its `part_size`th byte; with less than that read
/// (or no line end after it), after the last line end, if that leaves at least [`MIN_PART`].
/// `None`: wait for more.
pub fn cut(data: &[u8], part_size: u64) -> Option<usize> {
    let target = part_size.max(MIN_PART) as usize;
    if data.len() >= target {
        if let Some(i) = data[target - 1..].iter().position(|&c| c == b'\n') {
            return Some(target + i);
        }
    }
    let end = data.iter().rposition(|&c| c == b'\n')? + 1;
    (end as u64 >= MIN_PART).then_some(end)
}

/// How long a recording waits after `failures` failed attempts in a row: 1 s, doubling, at
/// most a minute.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Whether the local copy of a recording the store confirmed `stored_ago` ago may be deleted.
pub fn may_delete(stored_ago: Duration, keep_local: Duration) -> bool {
    stored_ago >= keep_local
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn spool(uploaded: u64, len: u64, ended: bool, since: u64) -> Spool {
        Spool {
            uploaded,
            len,
            parts: (uploaded / (8 * MIB)) as usize,
            ended,
            since_part: Duration::from_secs(since),
        }
    }

    #[test]
    fn urls_and_keys() {
        let u = parse_url("s3://rec-bucket/a/b/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("rec-bucket", "a/b")
        );
        assert_eq!(parse_url("s3://rec-bucket").unwrap().prefix, "");
        assert!(
            parse_url("http://x/y")
                .unwrap_err()
                .contains("s3://bucket/prefix")
        );
        assert!(parse_url("s3://Bad_Bucket/x").is_err());
        let key = object_key("a/b", "node1", "2026-12-02/alice/session-7.cast");
        assert_eq!(key, "a/b/node1/2026-12-02/alice/session-7.cast");
        assert_eq!(
            parse_key("a/b", &key),
            Some(KeyParts {
                node: "node1".into(),
                date: "2026-12-02".into(),
                user: "alice".into(),
                session_id: 7
            })
        );
        assert_eq!(parse_key("", "n/d/u/session-3.cast").unwrap().session_id, 3);
        assert_eq!(parse_key("a/b", "a/b/n/d/u/other.txt"), None);
        assert_eq!(parse_key("a/b", "c/n/d/u/session-3.cast"), None);
    }

    #[test]
    fn parts_go_up_when_full_or_due_with_five_mib() {
        let ten = Duration::from_secs(10);
        // Less than 5 MiB waits, however long.
        assert_eq!(
            next_step(&spool(0, 4 * MIB, false, 3600), 8 * MIB, ten),
            Step::Wait
        );
        // 6 MiB: only once flush_after passed.
        assert_eq!(
            next_step(&spool(0, 6 * MIB, false, 5), 8 * MIB, ten),
            Step::Wait
        );
        assert_eq!(
            next_step(&spool(0, 6 * MIB, false, 10), 8 * MIB, ten),
            Step::Part {
                from: 0,
                max: 6 * MIB,
                last: false,
                cut: true
            }
        );
        // A full part at once: part_size and the rest of its last line.
        assert_eq!(
            next_step(&spool(8 * MIB, 30 * MIB, false, 0), 8 * MIB, ten),
            Step::Part {
                from: 8 * MIB,
                max: 9 * MIB,
                last: false,
                cut: true
            }
        );
    }

    #[test]
    fn a_closed_recording_finishes_with_a_last_part_then_completes() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            next_step(&spool(0, 100, true, 0), 8 * MIB, ten),
            Step::Part {
                from: 0,
                max: 100,
                last: true,
                cut: false
            }
        );
        assert_eq!(
            next_step(&spool(8 * MIB, 20 * MIB, true, 0), 8 * MIB, ten),
            Step::Part {
                from: 8 * MIB,
                max: 8 * MIB,
                last: false,
                cut: false
            }
        );
        assert_eq!(
            next_step(&spool(8 * MIB, 8 * MIB, true, 0), 8 * MIB, ten),
            Step::Complete
        );
        // An empty file still becomes an object (one empty last part).
        assert_eq!(
            next_step(&spool(0, 0, true, 0), 8 * MIB, ten),
            Step::Part {
                from: 0,
                max: 0,
                last: true,
                cut: false
            }
        );
    }

    #[test]
    fn the_last_part_number_is_kept_for_the_end() {
        let s = Spool {
            uploaded: 0,
            len: 100 * MIB,
            parts: MAX_PARTS - 1,
            ended: false,
            since_part: Duration::ZERO,
        };
        assert_eq!(next_step(&s, 8 * MIB, Duration::from_secs(1)), Step::Wait);
        let s = Spool { ended: true, ..s };
        assert_eq!(
            next_step(&s, 8 * MIB, Duration::from_secs(1)),
            Step::Part {
                from: 0,
                max: 100 * MIB,
                last: true,
                cut: false
            }
        );
    }

    #[test]
    fn parts_end_at_a_line_end_with_at_least_five_mib() {
        let m = MIB as usize;
        // Fewer than part_size bytes (flush_after): after the last line end, if ≥ 5 MiB.
        let mut data = vec![b'x'; 6 * m];
        assert_eq!(cut(&data, 8 * MIB), None);
        data[5 * m] = b'\n';
        assert_eq!(cut(&data, 8 * MIB), Some(5 * m + 1));
        data[5 * m] = b'x';
        data[4 * m] = b'\n';
        assert_eq!(cut(&data, 8 * MIB), None);
        // A full part: the line holding its last byte is finished, even with part_size 5 MiB.
        let mut data = vec![b'x'; 6 * m];
        data[5 * m - 10] = b'\n';
        data[5 * m + 20] = b'\n';
        data[5 * m + 30] = b'\n';
        assert_eq!(cut(&data, 5 * MIB), Some(5 * m + 21));
        // Its last byte ends a line.
        data[5 * m - 1] = b'\n';
        assert_eq!(cut(&data, 5 * MIB), Some(5 * m));
        // No line end after it yet: the last one before, if that still makes 5 MiB.
        let mut data = vec![b'x'; 9 * m];
        data[7 * m] = b'\n';
        assert_eq!(cut(&data, 8 * MIB), Some(7 * m + 1));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let s: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(may_delete(Duration::ZERO, Duration::ZERO));
        assert!(!may_delete(Duration::from_secs(5), Duration::from_secs(6)));
    }
}
