//! Logging from inside sshd: syslog, facility authpriv, never stdout/stderr (they may be the
//! client's session) and never openlog() (that would change sshd's own ident).

use std::ffi::CString;

use crate::logic::Log;

/// syslog(3) at LOG_AUTHPRIV.
pub struct Syslog;

impl Log for Syslog {
    fn log(&self, level: crate::logic::Level, msg: &str) {
        let prio = match level {
            crate::logic::Level::Error => libc::LOG_ERR,
            crate::logic::Level::Warn => libc::LOG_WARNING,
            crate::logic::Level::Notice => libc::LOG_NOTICE,
            crate::logic::Level::Debug => libc::LOG_DEBUG,
        };
        let Ok(line) = CString::new(format!("pam_enforcer: {}", msg.replace('\0', " "))) else {
            return;
        };
        // SAFETY: constant format string, one NUL-terminated argument.
        unsafe { libc::syslog(libc::LOG_AUTHPRIV | prio, c"%s".as_ptr(), line.as_ptr()) };
    }
}
