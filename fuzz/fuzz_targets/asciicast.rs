//! The asciicast reader behind `enforcerctl play` and recordings shipped between hosts: any
//! file either plays or is refused, never a panic (huge or negative times, bad base64, …).
#![no_main]

use std::time::Duration;

use enforcer::{
    ctl::play::{PlayOptions, play},
    recording::cast,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = cast::read_output(&text);
    for raw in [true, false] {
        let opts = PlayOptions {
            speed: 1.0,
            // No real pauses while fuzzing; the gap arithmetic still runs.
            idle_limit: Some(Duration::ZERO),
            raw,
        };
        let _ = play(&text, &mut std::io::sink(), opts);
    }
});
