//! pam_enforcer.so's module arguments (the PAM configuration line): any argument list parses or
//! is refused with a message; never a panic inside sshd.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pam_enforcer::args::ModuleArgs;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text.split([' ', '\0', '\n']).map(str::to_owned).collect();
    if let Ok(parsed) = ModuleArgs::parse(&args) {
        assert!(parsed.socket.is_absolute());
        assert!(!parsed.timeout.is_zero());
    }
});
