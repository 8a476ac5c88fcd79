//! Lock files (anything configuration management or an attacker with write access drops into
//! locks.dir): every content locks, and what the daemon writes back reads the same.
#![no_main]

use enforcer::core::lock::Lock;
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

fuzz_target!(|data: &[u8]| {
    let lock = Lock::parse("alice", data, None);
    assert!(
        lock.expires.is_some() || lock.active(OffsetDateTime::now_utc()),
        "a lock without expiry always applies"
    );
    let _ = lock.refusal_message();
    let back = Lock::parse("alice", lock.to_file().as_bytes(), None);
    assert_eq!(back.reason, lock.reason);
    assert_eq!(back.expires, lock.expires);
});
