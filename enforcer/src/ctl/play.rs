//! Replaying a recording in the terminal (`enforcerctl play`) and showing a live one
//! (`enforcerctl watch`).

use std::{
    io::{self, Write},
    time::Duration,
};

use crate::recording::cast::{self, Event};

/// How to play.
#[derive(Debug, Clone, Copy)]
pub struct PlayOptions {
    /// 2.0 = twice as fast.
    pub speed: f64,
    /// Longest pause kept between two events.
    pub idle_limit: Option<Duration>,
    /// Write the exact output bytes at once, no timing, no markers.
    pub raw: bool,
}

/// A loss marker as the viewer sees it.
pub fn marker_line(text: &str) -> String {
    format!("\r\n\x1b[7m[{text}]\x1b[0m\r\n")
}

/// Plays an asciicast v2 recording (as enforcer writes it) to `out`.
pub fn play(recording: &str, out: &mut impl Write, opts: PlayOptions) -> io::Result<()> {
    let mut lines = recording.lines();
    let header = lines.next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(header).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an asciicast v2 recording: {e}"),
        )
    })?;
    if v["version"] != 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an asciicast v2 recording",
        ));
    }
    let events: Vec<Event> = lines.filter_map(cast::parse_event).collect();
    if opts.raw {
        for (_, bytes) in cast::exact_output(&events) {
            out.write_all(&bytes)?;
        }
        return out.flush();
    }
    // Output (with exact bytes) and markers, in time order.
    let mut timeline: Vec<(f64, Vec<u8>)> = cast::exact_output(&events);
    timeline.extend(
        events
            .iter()
            .filter(|e| e.code == "m")
            .map(|e| (e.time, marker_line(&e.data).into_bytes())),
    );
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut last = 0.0;
    for (t, bytes) in timeline {
        let mut gap = gap(t - last, opts.speed);
        if let Some(limit) = opts.idle_limit {
            gap = gap.min(limit);
        }
        if !gap.is_zero() {
            out.flush()?;
            std::thread::sleep(gap);
        }
        last = t;
        out.write_all(&bytes)?;
    }
    out.flush()
}

/// The pause before an event `secs` after the previous one. A recording is untrusted input:
/// times that go backwards, are not numbers or are too large for a `Duration` must not panic.
fn gap(secs: f64, speed: f64) -> Duration {
    let scaled = secs / speed;
    if !scaled.is_finite() || scaled <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(scaled).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording() -> String {
        let mut s = cast::Utf8Stream::default();
        let mut lines = vec![r#"{"version":2,"width":80,"height":24}"#.to_owned()];
        lines.extend(cast::output_lines(0.0, &s.push(b"hello \xff")));
        lines.push(cast::event_line(0.0, "i", "typed"));
        lines.push(cast::event_line(0.01, "m", "enforcer: 5 bytes lost here"));
        lines.extend(cast::output_lines(0.02, &s.push(b"world")));
        lines.join("\n")
    }

    #[test]
    fn raw_is_exact_output_only() {
        let mut out = Vec::new();
        play(
            &recording(),
            &mut out,
            PlayOptions {
                speed: 1.0,
                idle_limit: None,
                raw: true,
            },
        )
        .unwrap();
        assert_eq!(out, b"hello \xffworld");
    }

    #[test]
    fn timed_play_shows_markers() {
        let mut out = Vec::new();
        play(
            &recording(),
            &mut out,
            PlayOptions {
                speed: 100.0,
                idle_limit: Some(Duration::ZERO),
                raw: false,
            },
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("[enforcer: 5 bytes lost here]") && text.ends_with("world"),
            "{text}"
        );
    }

    #[test]
    fn huge_backward_or_nan_times_do_not_panic() {
        // Found by `cargo xtask fuzz asciicast`: Duration::from_secs_f64 panics past u64 seconds.
        for t in ["1e300", "-5", "1e308"] {
            let rec = format!("{{\"version\":2}}\n[{t},\"o\",\"x\"]\n[0.5,\"o\",\"y\"]");
            let mut out = Vec::new();
            let opts = PlayOptions {
                speed: 1.0,
                idle_limit: Some(Duration::ZERO),
                raw: false,
            };
            play(&rec, &mut out, opts).unwrap();
            assert_eq!(out.len(), 2, "{t}: both events played");
        }
        assert_eq!(
            gap(1.0, 0.0),
            Duration::ZERO,
            "speed 0 is no pause, not infinity"
        );
        assert_eq!(gap(f64::NAN, 1.0), Duration::ZERO);
        assert_eq!(gap(1e300, 1.0), Duration::MAX);
    }

    #[test]
    fn rejects_non_recordings() {
        let mut out = Vec::new();
        assert!(
            play(
                "not json",
                &mut out,
                PlayOptions {
                    speed: 1.0,
                    idle_limit: None,
                    raw: true
                }
            )
            .is_err()
        );
    }
}
