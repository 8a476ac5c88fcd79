//! Sessions: one per shell/exec/subsystem channel of a connection. sshd starts each as a child
//! that calls setsid(); the kernel reports that, and everything below the leader belongs to it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What the channel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// Started, nothing executed yet (or an in-process subsystem such as internal-sftp).
    Starting,
    /// A login shell (`ssh host`).
    Shell,
    /// A command (`ssh host cmd`).
    Exec,
    /// An sftp (or other `*-server`) subsystem.
    Subsystem,
}

impl SessionKind {
    /// Every kind (the metrics show each, zero or not).
    pub const ALL: [SessionKind; 4] = [
        SessionKind::Starting,
        SessionKind::Shell,
        SessionKind::Exec,
        SessionKind::Subsystem,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Starting => "starting",
            SessionKind::Shell => "shell",
            SessionKind::Exec => "exec",
            SessionKind::Subsystem => "subsystem",
        }
    }
}

/// One live session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: u64,
    pub conn_id: u64,
    /// The kernel's key for it: the leader's task id.
    pub kernel_id: u64,
    pub leader_pid: u32,
    pub leader_start_ns: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_activity: OffsetDateTime,
    pub kind: SessionKind,
    /// Controlling terminal ("pts/3") for pty sessions.
    pub tty: Option<String>,
    /// The command of an exec or subsystem session.
    pub command: Option<String>,
    /// Programs executed in the session so far.
    pub commands: u64,
    /// The channel objects sshd moves its bytes through (`enforcer_common::io::IoKey::object`):
    /// the pty, or the stdio pipes.
    #[serde(default)]
    pub channels: Vec<u64>,
    /// When the session started on the kernel's clock (`bpf_ktime_get_boot_ns`): recording
    /// times count from it.
    #[serde(default)]
    pub started_boot_ns: u64,
}

/// A connection's live sessions, in id order. A connection has a few (sshd's MaxSessions
/// defaults to 10), so a vector of exactly that many: a map would allocate room for eleven,
/// ~1.9 KB per connection for the usual single session. Stored as a map by id, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    list: Vec<Session>,
    /// The latest `started_at`, kept here so the idle check reads it without following the
    /// vector to the heap (thousands of connections, four times a second).
    latest_start: Option<OffsetDateTime>,
}

impl Sessions {
    fn new(list: Vec<Session>) -> Self {
        let latest_start = list.iter().map(|s| s.started_at).max();
        Sessions { list, latest_start }
    }

    /// When the latest session started.
    pub fn latest_start(&self) -> Option<OffsetDateTime> {
        self.latest_start
    }

    pub fn get(&self, id: u64) -> Option<&Session> {
        self.list.iter().find(|s| s.id == id)
    }

    /// Adds a session (replacing one with the same id).
    pub fn insert(&mut self, session: Session) {
        self.remove(session.id);
        self.latest_start = self.latest_start.max(Some(session.started_at));
        let at = self.list.partition_point(|s| s.id < session.id);
        self.list.reserve_exact(1);
        self.list.insert(at, session);
    }

    pub fn remove(&mut self, id: u64) -> Option<Session> {
        let at = self.list.iter().position(|s| s.id == id)?;
        let s = self.list.remove(at);
        self.list.shrink_to_fit();
        self.latest_start = self.list.iter().map(|s| s.started_at).max();
        Some(s)
    }

    pub fn values(&self) -> std::slice::Iter<'_, Session> {
        self.list.iter()
    }

    /// Sessions to update in place (their `started_at` stays as it is).
    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, Session> {
        self.list.iter_mut()
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.list.iter().map(|s| s.id)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Serialize for Sessions {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(self.list.iter().map(|s| (s.id, s)))
    }
}

impl<'de> Deserialize<'de> for Sessions {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let by_id = std::collections::BTreeMap::<u64, Session>::deserialize(de)?;
        Ok(Sessions::new(by_id.into_values().collect()))
    }
}

/// Classifies a session by its leader's first exec: sshd runs a login shell as `-bash` (argv[0]
/// prefixed with '-') and a command as `$SHELL -c COMMAND`.
pub fn classify(argv: &[String]) -> (SessionKind, Option<String>) {
    match argv {
        [arg0, ..] if arg0.starts_with('-') => (SessionKind::Shell, None),
        [_, flag, command, ..] if flag == "-c" => {
            let program = command.split_whitespace().next().unwrap_or_default();
            let kind = if program.ends_with("-server") {
                SessionKind::Subsystem
            } else {
                SessionKind::Exec
            };
            (kind, Some(command.clone()))
        }
        [] => (SessionKind::Starting, None),
        other => (SessionKind::Exec, Some(other.join(" "))),
    }
}

/// How a process ended, from its wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn from_wait(status: u32) -> Self {
        let sig = (status & 0x7f) as i32;
        if sig == 0 {
            ExitStatus::Code(((status >> 8) & 0xff) as i32)
        } else {
            ExitStatus::Signal(sig)
        }
    }

    /// Signal name, e.g. "SIGKILL".
    pub fn signal_name(self) -> Option<String> {
        match self {
            ExitStatus::Signal(s) => Some(
                nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| format!("signal {s}")),
            ),
            ExitStatus::Code(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classifies_what_sshd_runs() {
        assert_eq!(classify(&v(&["-bash"])), (SessionKind::Shell, None));
        assert_eq!(
            classify(&v(&["bash", "-c", "uptime"])),
            (SessionKind::Exec, Some("uptime".into()))
        );
        assert_eq!(
            classify(&v(&["sh", "-c", "/usr/lib/openssh/sftp-server"])),
            (
                SessionKind::Subsystem,
                Some("/usr/lib/openssh/sftp-server".into())
            )
        );
        assert_eq!(classify(&v(&[])), (SessionKind::Starting, None));
    }

    #[test]
    fn sessions_keep_id_order_and_are_stored_as_a_map_by_id() {
        let s = |id| Session {
            id,
            started_at: OffsetDateTime::UNIX_EPOCH + std::time::Duration::from_secs(id),
            ..crate::core::conn::tests::session(1, id)
        };
        let mut all = Sessions::default();
        for id in [5, 2, 9] {
            all.insert(s(id));
        }
        assert_eq!(all.keys().collect::<Vec<_>>(), [2, 5, 9]);
        assert_eq!(all.get(5).map(|x| x.id), Some(5));
        let at = |secs| Some(OffsetDateTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(all.latest_start(), at(9));
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(
            json.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["2", "5", "9"]
        );
        let as_map: std::collections::BTreeMap<u64, Session> =
            serde_json::from_value(json.clone()).unwrap();
        assert_eq!(as_map.len(), 3, "the format of a map by id");
        assert_eq!(serde_json::from_value::<Sessions>(json).unwrap(), all);
        assert_eq!(all.remove(9).map(|x| x.id), Some(9));
        assert!(all.remove(9).is_none());
        assert_eq!(all.latest_start(), at(5));
        assert_eq!(
            (all.len(), all.list.capacity()),
            (2, 2),
            "no spare room kept"
        );
    }

    #[test]
    fn wait_statuses() {
        assert_eq!(ExitStatus::from_wait(0), ExitStatus::Code(0));
        assert_eq!(ExitStatus::from_wait(3 << 8), ExitStatus::Code(3));
        assert_eq!(ExitStatus::from_wait(9), ExitStatus::Signal(9));
        assert_eq!(
            ExitStatus::from_wait(9).signal_name().as_deref(),
            Some("SIGKILL")
        );
        assert_eq!(ExitStatus::from_wait(0).signal_name(), None);
    }
}
