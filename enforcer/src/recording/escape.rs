//! JSON string escaping for the recorder's hot path. Terminal output is mostly bytes that need
//! no escaping, so the next byte that does is found a block at a time and everything before it
//! is copied in one go; the result is byte for byte what serde_json writes.

/// Appends `s` JSON-escaped (without the surrounding quotes) to `out`.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 16);
    let mut i = 0;
    loop {
        let next = next_special(b, i);
        out.extend_from_slice(&b[i..next]);
        let Some(&c) = b.get(next) else {
            return;
        };
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ]),
        }
        i = next + 1;
    }
}

fn special(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\'
}

/// Index of the first byte at or after `from` that must be escaped (`b.len()` if none).
#[cfg(target_arch = "x86_64")]
fn next_special(b: &[u8], from: usize) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut i = from;
    while i + 16 <= b.len() {
        // SAFETY: SSE2 is part of x86_64; the 16 bytes at `i` are in bounds (checked above) and
        // the load is unaligned.
        let mask = unsafe {
            let v = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned v < 0x20 exactly when min(v, 0x1f) == v.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
        };
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    i + b[i..]
        .iter()
        .position(|&c| special(c))
        .unwrap_or(b.len() - i)
}

/// Index of the first byte at or after `from` that must be escaped (`b.len()` if none), eight
/// bytes at a time in a `u64`.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn next_special_swar(b: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    // High bit set in each byte below `n` (n ≤ 0x80). Bits above the lowest set one may be
    // spurious (borrows), so only the lowest is used.
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGHS;
    let mut i = from;
    while let Some(word) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let mask = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if mask != 0 {
            return i + mask.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| special(c))
        .unwrap_or(b.len() - i)
}

#[cfg(not(target_arch = "x86_64"))]
use next_special_swar as next_special;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) {
        let mut out = Vec::new();
        escape_into(&mut out, s);
        let want = serde_json::to_string(s).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            want[1..want.len() - 1],
            "{s:?}"
        );
        let b = s.as_bytes();
        for from in 0..=b.len() {
            let want = (from..b.len()).find(|&i| special(b[i])).unwrap_or(b.len());
            assert_eq!(next_special(b, from), want, "{s:?} from {from}");
            assert_eq!(next_special_swar(b, from), want, "{s:?} from {from}");
        }
    }

    #[test]
    fn same_as_serde_json_for_every_ascii_byte_at_every_offset() {
        for c in 0..=0x7fu8 {
            for pos in 0..33 {
                let mut s = "x".repeat(33);
                s.replace_range(pos..pos + 1, &char::from(c).to_string());
                check(&s);
            }
        }
    }

    #[test]
    fn same_as_serde_json_for_terminal_text() {
        check("");
        check("\x1b[1;31mred ✓ ─┼─ 🦀\x1b[0m\r\n\"quoted\" back\\slash\ttab\u{7f}\u{fffd}");
        check(&"plain text line of terminal output ✓\r\n".repeat(20));
        check(&"\x00\x01\x1f\"\\".repeat(9));
        check(&"é\u{1f}".repeat(17));
    }
}
