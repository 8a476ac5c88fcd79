//! asciicast v2 as enforcer writes it, and reads it back.
//!
//! A recording is a header line and one JSON array `[time, code, data]` per line, as asciinema
//! plays it: `"o"` output, `"i"` input, `"r"` resize ("COLSxROWS"), `"m"` marker. Output that is
//! not valid UTF-8 (binary) cannot be a JSON string losslessly, so such a chunk is written as an
//! `"o"` event with U+FFFD where bytes were invalid (what a player can show) followed by a `"b"`
//! event with the chunk's exact bytes in base64; asciinema ignores codes it does not know, and
//! [`read_output`] puts the exact bytes back.

use std::{borrow::Cow, io::Write as _};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::escape::escape_into;

/// The first line. Extra keys are allowed by the format; enforcer's own go under `enforcer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub width: u16,
    pub height: u16,
    /// Unix time the session started.
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub enforcer: Meta,
}

/// Who and what was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub session_id: u64,
    pub conn_id: u64,
    pub user: String,
    pub uid: Option<u32>,
    pub kind: String,
    pub tty: Option<String>,
    pub client: Option<String>,
    /// RFC 3339.
    pub started: String,
    /// Where a `kubectl exec` session ran (absent for SSH sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeMeta>,
}

/// The pod and exec of a `kubectl exec` recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeMeta {
    pub node: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub container_id: String,
    pub exec_id: String,
    /// The Kubernetes user behind the exec (the admission webhook's grant), and their groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kube_groups: Vec<String>,
    /// Not every group fit in the header (the audit records carry the grant's groups, up to
    /// 8 KiB of them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kube_groups_truncated: bool,
}

/// Appends one event line, newline included, to `out`.
pub fn write_event(out: &mut Vec<u8>, time: f64, code: &str, data: &str) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "[{time:.6},\"{code}\",\"");
    escape_into(out, data);
    out.extend_from_slice(b"\"]\n");
}

/// The text of a loss marker (an `"m"` event; `watch` shows the same line).
pub fn lost_text(bytes: u64) -> String {
    format!("enforcer: {bytes} bytes lost here")
}

/// One event line (without the newline).
#[cfg(test)]
pub fn event_line(time: f64, code: &str, data: &str) -> String {
    let mut line = Vec::with_capacity(data.len() + 24);
    write_event(&mut line, time, code, data);
    line.pop();
    String::from_utf8(line).expect("escaped text is UTF-8")
}

/// What one chunk of output becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Text for the `"o"` event (empty when the chunk only started a multi-byte character).
    pub text: Cow<'a, str>,
    /// The exact bytes behind `text` when they were not valid UTF-8 (for a `"b"` event).
    pub exact: Option<Vec<u8>>,
}

/// Incremental UTF-8 decoding of one direction of a stream: a character split across two reads
/// is carried over, not mangled; truly invalid bytes are kept exactly (see module docs).
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    pub fn push<'a>(&mut self, bytes: &'a [u8]) -> Decoded<'a> {
        if self.carry.is_empty() {
            // The common case: nothing carried over, so the chunk is used in place.
            // Keep back an incomplete sequence at the very end (at most 3 bytes).
            let keep = incomplete_tail(bytes);
            let (body, tail) = bytes.split_at(bytes.len() - keep);
            self.carry.extend_from_slice(tail);
            return match simdutf8::basic::from_utf8(body) {
                Ok(text) => Decoded {
                    text: Cow::Borrowed(text),
                    exact: None,
                },
                Err(_) => Decoded {
                    text: String::from_utf8_lossy(body),
                    exact: Some(body.to_vec()),
                },
            };
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(bytes);
        // Keep back an incomplete sequence at the very end (at most 3 bytes).
        let keep = incomplete_tail(&buf);
        self.carry = buf.split_off(buf.len() - keep);
        if simdutf8::basic::from_utf8(&buf).is_ok() {
            // SAFETY: validated just above.
            let text = unsafe { String::from_utf8_unchecked(buf) };
            return Decoded {
                text: Cow::Owned(text),
                exact: None,
            };
        }
        Decoded {
            text: Cow::Owned(String::from_utf8_lossy(&buf).into_owned()),
            exact: Some(buf),
        }
    }

    /// Whatever is still carried (at the end of the stream).
    pub fn finish(&mut self) -> Decoded<'static> {
        let rest = std::mem::take(&mut self.carry);
        if rest.is_empty() {
            return Decoded {
                text: Cow::Borrowed(""),
                exact: None,
            };
        }
        Decoded {
            text: Cow::Owned(String::from_utf8_lossy(&rest).into_owned()),
            exact: Some(rest),
        }
    }
}

/// Length of a trailing, so far valid but incomplete UTF-8 sequence.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0xc0 == 0x80 {
            continue; // continuation byte: look further back for the lead
        }
        let need = match byte {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// Appends the lines for one output chunk: `"o"`, plus `"b"` when the bytes were not valid
/// UTF-8.
pub fn write_output(out: &mut Vec<u8>, time: f64, d: &Decoded) {
    if d.text.is_empty() && d.exact.is_none() {
        return;
    }
    write_event(out, time, "o", &d.text);
    if let Some(exact) = &d.exact {
        let b64 = base64::engine::general_purpose::STANDARD.encode(exact);
        write_event(out, time, "b", &b64);
    }
}

/// [`write_output`] as separate lines, for tests.
#[cfg(test)]
pub fn output_lines(time: f64, d: &Decoded) -> Vec<String> {
    let mut out = Vec::new();
    write_output(&mut out, time, d);
    String::from_utf8(out)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A parsed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: f64,
    pub code: String,
    pub data: String,
}

/// Parses one event line.
pub fn parse_event(line: &str) -> Option<Event> {
    let (time, code, data): (f64, String, String) = serde_json::from_str(line).ok()?;
    Some(Event { time, code, data })
}

/// Output events with exact bytes: each `"o"` event's text, replaced by the bytes of a `"b"`
/// event right after it.
pub fn exact_output(events: &[Event]) -> Vec<(f64, Vec<u8>)> {
    let mut out: Vec<(f64, Vec<u8>)> = Vec::new();
    for e in events {
        match e.code.as_str() {
            "o" => out.push((e.time, e.data.clone().into_bytes())),
            "b" => {
                if let (Some(last), Ok(bytes)) = (
                    out.last_mut(),
                    base64::engine::general_purpose::STANDARD.decode(&e.data),
                ) {
                    last.1 = bytes;
                }
            }
            _ => {}
        }
    }
    out
}

/// Every output byte of a recording (header line skipped), exactly as the client received it.
pub fn read_output(recording: &str) -> Vec<u8> {
    let events: Vec<Event> = recording.lines().skip(1).filter_map(parse_event).collect();
    exact_output(&events)
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Utf8Stream::default();
        let mut lines = vec!["{}".to_owned()];
        for c in chunks {
            lines.extend(output_lines(0.0, &s.push(c)));
        }
        lines.extend(output_lines(0.0, &s.finish()));
        read_output(&lines.join("\n"))
    }

    #[test]
    fn utf8_split_across_reads_stays_text() {
        let text = "héllo ✓ 🦀";
        let b = text.as_bytes();
        let mut s = Utf8Stream::default();
        let mut got = String::new();
        for chunk in b.chunks(1) {
            let d = s.push(chunk);
            assert!(d.exact.is_none(), "split characters are not 'invalid'");
            got.push_str(&d.text);
        }
        assert_eq!(got, text);
    }

    #[test]
    fn binary_and_control_sequences_survive_exactly() {
        let mut stream: Vec<u8> = (0..=255u8).collect();
        stream.extend_from_slice("\x1b[31mred\x1b[0m ✓\r\n".as_bytes());
        stream.extend_from_slice(&[0xe2, 0x9c]); // truncated char at the very end
        let chunks: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(roundtrip(&chunks), stream);
    }

    #[test]
    fn lines_are_valid_asciicast_for_asciinema() {
        let mut s = Utf8Stream::default();
        let lines = output_lines(1.5, &s.push(&[b'a', 0xff, b'b']));
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v, serde_json::json!([1.5, "o", "a\u{fffd}b"]));
        let e = parse_event(&lines[1]).unwrap();
        assert_eq!(e.code, "b");
    }

    #[test]
    fn incomplete_tails() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(&[b'a', 0xe2]), 1);
        assert_eq!(incomplete_tail(&[b'a', 0xe2, 0x9c]), 2);
        assert_eq!(incomplete_tail(&[0xe2, 0x9c, 0x93]), 0, "complete");
        assert_eq!(incomplete_tail(&[0xf0, 0x9f, 0xa6]), 3);
        assert_eq!(incomplete_tail(&[0x80]), 0, "stray continuation");
    }
}
