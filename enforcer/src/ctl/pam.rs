//! What happens to SSH logins while enforcerd is down: decided by pam_enforcer.so's `fail=`
//! argument on the `account` lines of this host's PAM configuration (the daemon cannot know
//! it), so `enforcerctl status` reads /etc/pam.d itself.

use std::path::Path;

use serde::Serialize;

/// What the module does when it cannot reach the daemon, from one `account` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "fail", content = "detail")]
pub enum FailMode {
    /// `fail=closed` (the default): the login is refused.
    Closed,
    /// `fail=open`: the login is admitted unchecked.
    Open,
    /// The module refuses every login whatever the daemon says, and names the argument in
    /// syslog.
    BadArguments(String),
}

/// One `account` line that runs pam_enforcer.so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountHook {
    /// The PAM service file, e.g. `/etc/pam.d/common-account`.
    pub file: String,
    pub line: usize,
    #[serde(flatten)]
    pub mode: FailMode,
}

/// The fail mode of arguments as the module reads them (see pam-module/src/args.rs).
fn fail_mode<'a>(args: impl Iterator<Item = &'a str>) -> FailMode {
    let mut mode = FailMode::Closed;
    for arg in args {
        match arg.split_once('=') {
            Some(("fail", "closed")) => mode = FailMode::Closed,
            Some(("fail", "open")) => mode = FailMode::Open,
            Some(("socket" | "timeout_ms", _)) => {}
            None if arg == "debug" => {}
            _ => return FailMode::BadArguments(arg.to_owned()),
        }
    }
    mode
}

/// The `account` lines of one PAM file that run pam_enforcer.so.
pub fn account_hooks(file: &str, text: &str) -> Vec<AccountHook> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        let mut rest = line;
        let Some(kind) = next_token(&mut rest) else {
            continue;
        };
        if kind.trim_start_matches('-') != "account" {
            continue;
        }
        let _control = next_token(&mut rest);
        let Some(module) = next_token(&mut rest) else {
            continue;
        };
        // The installed name, or the build's own (`target/release/libpam_enforcer.so`).
        let name = Path::new(module).file_name().and_then(|n| n.to_str());
        if !name.is_some_and(|n| n.ends_with("pam_enforcer.so")) {
            continue;
        }
        out.push(AccountHook {
            file: file.to_owned(),
            line: i + 1,
            mode: fail_mode(rest.split_whitespace()),
        });
    }
    out
}

/// The next field of a PAM line; a `[...]` control field is one field even with spaces.
fn next_token<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = if s.starts_with('[') {
        s.find(']').map(|i| i + 1).unwrap_or(s.len())
    } else {
        s.find(char::is_whitespace).unwrap_or(s.len())
    };
    *rest = &s[end..];
    Some(&s[..end])
}

/// Every pam_enforcer.so `account` line under `dir` (normally /etc/pam.d).
pub fn scan(dir: &Path) -> Vec<AccountHook> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .iter()
        .filter(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= 1 << 16)
        })
        .filter_map(|p| Some((p, std::fs::read_to_string(p).ok()?)))
        .flat_map(|(p, text)| account_hooks(&p.display().to_string(), &text))
        .collect()
}

/// One line per hook saying what a login meets while enforcerd is down.
pub fn describe(hooks: &[AccountHook]) -> Vec<String> {
    if hooks.is_empty() {
        return vec![
            "no PAM service here runs pam_enforcer.so's account hook: enforcerd decides no SSH login (see README, \"Under sshd\")".into(),
        ];
    }
    hooks
        .iter()
        .map(|h| {
            let what = match &h.mode {
                FailMode::Closed => "fail=closed: SSH logins are REFUSED while enforcerd is down".to_owned(),
                FailMode::Open => "fail=open: SSH logins are ADMITTED UNCHECKED while enforcerd is down (no limits, locks or audit)".to_owned(),
                FailMode::BadArguments(arg) => format!("bad module argument {arg:?}: every SSH login is REFUSED, daemon or not"),
            };
            format!("{}:{}: {what}", h.file, h.line)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fail_mode_of_account_lines() {
        let text = "\
# comment: account required pam_enforcer.so fail=open
account [success=1 default=ignore]\tpam_succeed_if.so quiet service notin sshd
account\trequired\tpam_enforcer.so socket=/run/enforcer/pam.sock timeout_ms=2000 fail=closed
session required pam_enforcer.so fail=open
-account [default=bad success=ok] /usr/lib/x86_64-linux-gnu/security/pam_enforcer.so fail=open debug
account required pam_enforcer.so
account required pam_enforcer.so fail=maybe
account required pam_enforcer.sox fail=open
account required /src/target/release/libpam_enforcer.so timeout_ms=3000 fail=open
";
        let hooks = account_hooks("/etc/pam.d/common-account", text);
        let modes: Vec<(usize, FailMode)> =
            hooks.iter().map(|h| (h.line, h.mode.clone())).collect();
        assert_eq!(
            modes,
            [
                (3, FailMode::Closed),
                (5, FailMode::Open),
                (6, FailMode::Closed),
                (7, FailMode::BadArguments("fail=maybe".into())),
                (9, FailMode::Open),
            ]
        );
        let lines = describe(&hooks);
        assert!(
            lines[0].starts_with("/etc/pam.d/common-account:3: fail=closed"),
            "{lines:?}"
        );
        assert!(lines[1].contains("ADMITTED UNCHECKED"), "{lines:?}");
        assert!(lines[3].contains("every SSH login is REFUSED"), "{lines:?}");
    }

    #[test]
    fn no_hook_says_logins_are_not_checked() {
        assert!(account_hooks("x", "account required pam_unix.so\n").is_empty());
        assert!(describe(&[])[0].contains("decides no SSH login"));
    }
}
