//! User locks as stored in `locks.dir/<user>`: optional TOML with `reason` and `expires`.
//! An entry locks its name whatever its content (fail closed): bytes that are not UTF-8 or not
//! TOML, a symlink, a directory all lock, and say why. Entry names that cannot be user names
//! lock nobody and are reported.

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use enforcer_proto::LockInfo;

use super::rfc3339;

/// File content. Everything optional: an empty file is a lock without reason or expiry.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked_by: Option<String>,
}

/// One lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub user: String,
    pub reason: Option<String>,
    pub expires: Option<OffsetDateTime>,
    pub since: Option<OffsetDateTime>,
    pub by: Option<String>,
    /// Why the file could not be read as written (the lock still applies), or why the entry
    /// locks nobody (`valid_name` false).
    pub error: Option<String>,
    /// False for a directory entry whose name cannot be a user name: reported, never applied.
    pub valid_name: bool,
}

/// What a name in the lock directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A user's lock.
    User(String),
    /// Not a user name (shown lossily): reported by `locks`, locks nobody.
    Invalid(String),
    /// The daemon's own temporary file (`.NAME.tmp`) while it writes a lock.
    Ignored,
}

/// Classifies a lock directory entry by its raw name; `check` says what a valid name is.
pub fn entry(name: &[u8], check: fn(&str) -> Result<(), String>) -> Entry {
    let Ok(text) = std::str::from_utf8(name) else {
        return Entry::Invalid(String::from_utf8_lossy(name).into_owned());
    };
    if let Some(inner) = text.strip_prefix('.').and_then(|t| t.strip_suffix(".tmp")) {
        if check(inner).is_ok() {
            return Entry::Ignored;
        }
    }
    match check(text) {
        Ok(()) => Entry::User(text.to_owned()),
        Err(_) => Entry::Invalid(text.to_owned()),
    }
}

impl Lock {
    /// A lock made by `enforcerctl lock`.
    pub fn new(
        user: &str,
        reason: Option<String>,
        ttl: Option<std::time::Duration>,
        by: String,
        now: OffsetDateTime,
    ) -> Self {
        Lock {
            user: user.to_owned(),
            reason,
            expires: ttl.map(|t| now + t),
            since: Some(now),
            by: Some(by),
            error: None,
            valid_name: true,
        }
    }

    /// A lock whose file could not be read as one (symlink, not a regular file, unreadable,
    /// too large): it locks anyway and says why.
    pub fn unreadable(user: &str, why: &str, mtime: Option<OffsetDateTime>) -> Self {
        Lock {
            error: Some(format!("lock entry {why}; locking anyway")),
            ..Self::bare(user, mtime)
        }
    }

    /// An entry whose name cannot be a user name.
    pub fn invalid_name(name: &str) -> Self {
        Lock {
            error: Some(format!(
                "{}; this entry locks nobody (rename it to the user's name)",
                check_user_name(name).err().unwrap_or_default()
            )),
            valid_name: false,
            ..Self::bare(name, None)
        }
    }

    fn bare(user: &str, mtime: Option<OffsetDateTime>) -> Self {
        Lock {
            user: user.to_owned(),
            reason: None,
            expires: None,
            since: mtime,
            by: None,
            error: None,
            valid_name: true,
        }
    }

    /// Reads a lock file's bytes, whatever they are; `mtime` stands in for `locked_at` when
    /// the file has none.
    pub fn parse(user: &str, bytes: &[u8], mtime: Option<OffsetDateTime>) -> Self {
        let mut lock = Self::bare(user, mtime);
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                lock.error = Some(format!(
                    "lock file is not UTF-8 text (invalid byte at offset {}), locking anyway",
                    e.valid_up_to()
                ));
                return lock;
            }
        };
        let file: LockFile = match toml::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                lock.error = Some(format!(
                    "unparseable lock file, locking anyway: {}",
                    e.message()
                ));
                return lock;
            }
        };
        lock.reason = file.reason;
        lock.by = file.locked_by;
        if let Some(at) = file
            .locked_at
            .as_deref()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        {
            lock.since = Some(at);
        }
        if let Some(exp) = file.expires {
            match OffsetDateTime::parse(&exp, &Rfc3339) {
                Ok(t) => lock.expires = Some(t),
                Err(_) => {
                    lock.error = Some(format!(
                        "expires {exp:?} is not an RFC 3339 time; the lock does not expire"
                    ));
                }
            }
        }
        lock
    }

    /// File content for this lock.
    pub fn to_file(&self) -> String {
        let f = LockFile {
            reason: self.reason.clone(),
            expires: self.expires.map(rfc3339),
            locked_at: self.since.map(rfc3339),
            locked_by: self.by.clone(),
        };
        toml::to_string(&f).unwrap_or_default()
    }

    /// Whether the lock applies at `now`.
    pub fn active(&self, now: OffsetDateTime) -> bool {
        self.valid_name && self.expires.is_none_or(|e| now < e)
    }

    /// What the user is told when a login is refused.
    pub fn refusal_message(&self) -> String {
        let mut m = format!("account {} is locked", self.user);
        if let Some(r) = &self.reason {
            m.push_str(&format!(": {r}"));
        }
        if let Some(e) = self.expires {
            m.push_str(&format!(" (until {})", rfc3339(e)));
        }
        m
    }

    pub fn info(&self, now: OffsetDateTime) -> LockInfo {
        LockInfo {
            user: self.user.clone(),
            reason: self.reason.clone(),
            expires: self.expires.map(rfc3339),
            since: self.since.map(rfc3339),
            by: self.by.clone(),
            active: self.active(now),
            error: self.error.clone(),
            origin: None,
            target: None,
            node: None,
            current: None,
        }
    }
}

/// The longest user name: the lock file's temporary name (`.NAME.tmp`) must fit in a file
/// name (255 bytes).
pub const USER_NAME_MAX: usize = 250;

/// Whether `name` can be a user name and a lock file name (no path tricks): a Unix account,
/// or a Kubernetes user (`system:serviceaccount:NS:NAME`, `oidc:alice@example.com`), whose
/// names are longer and carry `:`. A `/` can never be in a file name.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= USER_NAME_MAX
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$' | '@' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid user name (1-{USER_NAME_MAX} characters from a-z A-Z 0-9 _ - . $ @ :, not starting with - or .; a Kubernetes user with other characters is locked through one of their groups)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn empty_file_is_a_permanent_lock() {
        let l = Lock::parse("alice", b"", None);
        assert!(l.active(OffsetDateTime::now_utc()));
        assert_eq!(l.reason, None);
        assert_eq!(l.error, None);
    }

    #[test]
    fn reason_and_expiry() {
        let l = Lock::parse(
            "alice",
            b"reason = \"incident 42\"\nexpires = \"2026-12-01T00:00:00Z\"\n",
            None,
        );
        assert_eq!(l.reason.as_deref(), Some("incident 42"));
        assert!(l.active(datetime!(2026-11-30 23:59 UTC)));
        assert!(!l.active(datetime!(2026-12-01 00:00 UTC)));
        assert_eq!(
            l.refusal_message(),
            "account alice is locked: incident 42 (until 2026-12-01T00:00:00Z)"
        );
    }

    #[test]
    fn garbage_still_locks_and_says_why() {
        let l = Lock::parse("bob", b"this is not toml = = =", None);
        assert!(l.active(OffsetDateTime::now_utc()));
        assert!(l.error.unwrap().contains("locking anyway"));
        let l = Lock::parse("bob", b"resaon = \"typo\"\n", None);
        assert!(l.error.is_some(), "unknown keys are reported");
        assert!(l.active(OffsetDateTime::now_utc()));
    }

    #[test]
    fn bytes_that_are_not_utf8_still_lock() {
        let l = Lock::parse("bob", b"reason = \"\xff\xfe\"\n", None);
        assert!(l.active(OffsetDateTime::now_utc()));
        assert!(l.error.unwrap().contains("not UTF-8"));
        let l = Lock::unreadable("bob", "is a symbolic link (not followed)", None);
        assert!(l.active(OffsetDateTime::now_utc()));
        assert!(l.error.unwrap().contains("symbolic link"));
    }

    #[test]
    fn entries_by_name() {
        assert_eq!(
            entry(b"alice", check_user_name),
            Entry::User("alice".into())
        );
        assert_eq!(entry(b".alice.tmp", check_user_name), Entry::Ignored);
        for k8s in [
            "system:serviceaccount:team-a:deployer",
            "oidc:alice@example.com",
        ] {
            assert_eq!(
                entry(k8s.as_bytes(), check_user_name),
                Entry::User(k8s.into())
            );
        }
        let long = "a".repeat(256);
        for bad in [
            &b"bob~"[..],
            b"a b",
            b".hidden",
            b"\xffx",
            b"-x",
            b"a/b",
            long.as_bytes(),
        ] {
            assert!(
                matches!(entry(bad, check_user_name), Entry::Invalid(_)),
                "{bad:?}"
            );
        }
        let l = Lock::invalid_name("bob~");
        assert!(!l.active(OffsetDateTime::now_utc()), "locks nobody");
        assert!(l.error.unwrap().contains("locks nobody"));
    }

    #[test]
    fn bad_expiry_does_not_unlock() {
        let l = Lock::parse("bob", b"expires = \"tomorrow\"\n", None);
        assert!(l.active(OffsetDateTime::now_utc()));
        assert!(l.error.unwrap().contains("does not expire"));
    }

    #[test]
    fn file_round_trip() {
        let now = datetime!(2026-11-23 12:00 UTC);
        let l = Lock::new(
            "carol",
            Some("leaver".into()),
            Some(std::time::Duration::from_secs(3600)),
            "uid 0".into(),
            now,
        );
        let back = Lock::parse("carol", l.to_file().as_bytes(), None);
        assert_eq!(back, l);
        assert_eq!(back.expires, Some(datetime!(2026-11-23 13:00 UTC)));
    }

    #[test]
    fn user_names() {
        for ok in [
            "alice",
            "bob_2",
            "svc-deploy",
            "ad.user",
            "machine$",
            "system:serviceaccount:ci:deployer",
            &"a".repeat(USER_NAME_MAX),
        ] {
            assert!(check_user_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "../etc",
            "x y",
            &"a".repeat(USER_NAME_MAX + 1),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
