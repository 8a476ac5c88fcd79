//! The control socket's frame decoder, as the daemon (requests) and clients (responses, watch
//! frames) read it: any byte stream either decodes or is refused, never a panic or a huge
//! allocation.
#![no_main]

use enforcer_proto::{Request, Response, frame::read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    // A connection may carry several frames.
    while let Ok(req) = read_frame::<Request>(&mut r) {
        let _ = req;
    }
    let mut r = data;
    while let Ok(resp) = read_frame::<Response>(&mut r) {
        let _ = resp;
    }
});
