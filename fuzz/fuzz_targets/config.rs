//! The daemon's TOML config: any text is either a valid config or an error naming the problem.
#![no_main]

use enforcer::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, "fuzz");
    }
});
