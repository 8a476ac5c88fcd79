//! pam_enforcer.so — the `extern "C"` edge. sshd calls `acct_mgmt` (admit or refuse the login),
//! `open_session` and `close_session` in its privileged monitor, once per connection; each asks
//! enforcerd over its control socket with a hard deadline. The decisions live in [`logic`],
//! behind traits, so they are tested without sshd.
//!
//! Module arguments: `socket=PATH` (default /run/enforcer/pam.sock, the daemon's root-only PAM
//! socket), `timeout_ms=N` (default 2000; sshd is never held longer), `fail=closed|open` (what to
//! do when the daemon cannot answer; default closed), `debug` (log every decision to syslog).

pub mod args;
pub mod logic;
mod syslog;

use std::ffi::{CStr, c_char};

use pam::{
    constants::{PAM_ERROR_MSG, PAM_SILENT, PamFlag, PamResultCode},
    conv::Conv,
    items::{RHost, Service, Tty},
    module::{PamHandle, PamHooks},
    pam_hooks,
};

use crate::{
    args::ModuleArgs,
    logic::{Log, Login, SocketLink, Verdict},
    syslog::Syslog,
};

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_getenv(pamh: *mut PamHandle, name: *const c_char) -> *const c_char;
}

/// Key under which acct_mgmt leaves the connection id for the session hooks.
const CONN_ID_KEY: &str = "pam_enforcer_conn_id";

struct PamEnforcer;
pam_hooks!(PamEnforcer);

fn env(pamh: &mut PamHandle, name: &CStr) -> Option<String> {
    // SAFETY: pamh is the live handle PAM passed in; pam_getenv returns NULL or a string owned
    // by PAM that stays valid while we copy it.
    let p = unsafe { pam_getenv(pamh, name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    (!s.is_empty()).then_some(s)
}

fn item<'a, T: pam::items::Item<'a> + std::ops::Deref<Target = &'a CStr>>(
    pamh: &'a PamHandle,
) -> Option<String> {
    pamh.get_item::<T>()
        .ok()
        .flatten()
        .map(|v| v.to_string_lossy().into_owned())
}

fn login(pamh: &mut PamHandle) -> Option<Login> {
    let user = pamh.get_user(None).ok()?;
    Some(Login {
        user,
        service: item::<Service>(pamh).unwrap_or_default(),
        rhost: item::<RHost>(pamh),
        tty: item::<Tty>(pamh),
        pid: std::process::id(),
        ssh_connection: env(pamh, c"SSH_CONNECTION"),
        auth_info: env(pamh, c"SSH_AUTH_INFO_0"),
    })
}

fn conn_id(pamh: &PamHandle) -> Option<u64> {
    // SAFETY: only this module stores under CONN_ID_KEY, always a u64.
    unsafe { pamh.get_data::<u64>(CONN_ID_KEY) }.ok().copied()
}

/// Common prologue: parse arguments and read the login, or fail in a way the admin can see.
fn prepare(
    pamh: &mut PamHandle,
    args: &[&CStr],
    log: &Syslog,
) -> Result<(ModuleArgs, Login), PamResultCode> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args = ModuleArgs::parse(&args).map_err(|e| {
        log.error(&format!(
            "bad module arguments: {e}; refusing (fix the PAM configuration)"
        ));
        PamResultCode::PAM_SERVICE_ERR
    })?;
    let login = login(pamh).ok_or_else(|| {
        log.error("cannot read PAM_USER");
        PamResultCode::PAM_USER_UNKNOWN
    })?;
    Ok((args, login))
}

impl PamHooks for PamEnforcer {
    fn acct_mgmt(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        let log = Syslog;
        let (args, login) = match prepare(pamh, &args, &log) {
            Ok(v) => v,
            Err(code) => return code,
        };
        let link = SocketLink::new(&args);
        match logic::account(&login, &args, &link, &log) {
            Verdict::Allow { conn_id } => {
                if let Some(id) = conn_id {
                    let _ = pamh.set_data(CONN_ID_KEY, Box::new(id));
                }
                PamResultCode::PAM_SUCCESS
            }
            Verdict::Deny { message } => {
                if flags & PAM_SILENT == 0 {
                    if let Ok(Some(conv)) = pamh.get_item::<Conv>() {
                        let _ = conv.send(PAM_ERROR_MSG, &message);
                    }
                }
                PamResultCode::PAM_PERM_DENIED
            }
        }
    }

    fn sm_open_session(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        session_hook(pamh, &args, logic::open_session)
    }

    fn sm_close_session(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        session_hook(pamh, &args, logic::close_session)
    }
}

/// What open_session and close_session share: read the login, call `hook`, always succeed.
fn session_hook(
    pamh: &mut PamHandle,
    args: &[&CStr],
    hook: fn(&Login, Option<u64>, &dyn logic::DaemonLink, &dyn Log),
) -> PamResultCode {
    let log = Syslog;
    let (args, login) = match prepare(pamh, args, &log) {
        Ok(v) => v,
        Err(code) => return code,
    };
    hook(&login, conn_id(pamh), &SocketLink::new(&args), &log);
    PamResultCode::PAM_SUCCESS
}
