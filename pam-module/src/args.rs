//! Module arguments from the PAM configuration line.

use std::{path::PathBuf, time::Duration};

/// What the module does when enforcerd cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse the login (default): no login without the daemon's decision.
    Closed,
    /// Let the login through: availability over enforcement.
    Open,
}

/// Parsed module arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleArgs {
    pub socket: PathBuf,
    /// Budget for connect + request + answer, per hook.
    pub timeout: Duration,
    pub fail: FailMode,
    pub debug: bool,
}

impl Default for ModuleArgs {
    fn default() -> Self {
        ModuleArgs {
            socket: enforcer_proto::DEFAULT_PAM_SOCKET.into(),
            timeout: Duration::from_millis(2000),
            fail: FailMode::Closed,
            debug: false,
        }
    }
}

impl ModuleArgs {
    /// Parses `socket=PATH timeout_ms=N fail=open|closed debug`. Unknown arguments are errors:
    /// a typo in `fail=` must not silently change the failure mode.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut out = ModuleArgs::default();
        for arg in args {
            match arg.split_once('=') {
                Some(("socket", p)) if p.starts_with('/') => out.socket = p.into(),
                Some(("socket", p)) => return Err(format!("socket={p}: must be an absolute path")),
                Some(("timeout_ms", n)) => {
                    let ms: u64 = n
                        .parse()
                        .map_err(|_| format!("timeout_ms={n}: not a number of milliseconds"))?;
                    if !(1..=60_000).contains(&ms) {
                        return Err(format!("timeout_ms={ms}: must be between 1 and 60000"));
                    }
                    out.timeout = Duration::from_millis(ms);
                }
                Some(("fail", "closed")) => out.fail = FailMode::Closed,
                Some(("fail", "open")) => out.fail = FailMode::Open,
                Some(("fail", v)) => return Err(format!("fail={v}: use fail=closed or fail=open")),
                None if arg == "debug" => out.debug = true,
                _ => {
                    return Err(format!(
                        "unknown argument {arg:?} (known: socket=, timeout_ms=, fail=, debug)"
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<ModuleArgs, String> {
        ModuleArgs::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_fail_closed() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.fail, FailMode::Closed);
        assert_eq!(a.socket, PathBuf::from("/run/enforcer/pam.sock"));
        assert_eq!(a.timeout, Duration::from_secs(2));
    }

    #[test]
    fn all_arguments() {
        let a = parse(&["socket=/tmp/x.sock", "timeout_ms=250", "fail=open", "debug"]).unwrap();
        assert_eq!(
            a,
            ModuleArgs {
                socket: "/tmp/x.sock".into(),
                timeout: Duration::from_millis(250),
                fail: FailMode::Open,
                debug: true
            }
        );
    }

    #[test]
    fn typos_are_errors_not_defaults() {
        assert!(
            parse(&["fail=opne"])
                .unwrap_err()
                .contains("fail=closed or fail=open")
        );
        assert!(
            parse(&["timeout=5"])
                .unwrap_err()
                .contains("unknown argument")
        );
        assert!(parse(&["timeout_ms=0"]).is_err());
        assert!(parse(&["timeout_ms=abc"]).is_err());
        assert!(parse(&["socket=relative.sock"]).is_err());
    }
}
