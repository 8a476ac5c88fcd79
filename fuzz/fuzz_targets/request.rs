//! The request parser and authorisation: whatever JSON a peer sends, parsing either fails or
//! yields a request that survives a round trip and is authorised without panicking.
#![no_main]

use enforcer::control::{Role, authorize};
use enforcer_proto::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    for role in [Role::Root, Role::Auditor, Role::User] {
        let _ = authorize(role, &req);
    }
    let again = serde_json::to_vec(&req).expect("a parsed request serialises");
    let back: Request = serde_json::from_slice(&again).expect("and parses again");
    assert_eq!(back, req);
});
