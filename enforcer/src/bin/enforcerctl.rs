//! enforcerctl — inspect and steer a running enforcerd.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use enforcer::ctl::{self, clock::Clock, pam};
use enforcer_proto::{
    Client, DEFAULT_PAM_SOCKET, DEFAULT_SOCKET, HistoryQuery, LockRequest, Reply, Request,
    WatchFrameMsg,
};
use serde::Serialize;

/// Inspect and steer enforcerd.
#[derive(clap::Parser)]
#[command(name = "enforcerctl", version)]
struct Cli {
    /// enforcerd's control socket [default: the root-only /run/enforcer/pam.sock when run as
    /// root and it exists (never queued behind unprivileged peers), else
    /// /run/enforcer/enforcerd.sock].
    #[arg(long, global = true, env = "ENFORCER_SOCKET")]
    socket: Option<PathBuf>,
    /// How long to wait for the daemon.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

/// What a lock applies to.
#[derive(Clone, Copy, ValueEnum)]
enum Target {
    User,
    /// A node of the fleet (`[fleet]` only): every login there is refused.
    Node,
    /// A Kubernetes group (`[fleet]` only): the admission webhook refuses `kubectl exec` and
    /// `attach` to every user in it (`enforcerd webhook`).
    Group,
    /// A pod, as NAMESPACE/NAME (`[kubernetes]` only): its `kubectl exec` sessions on this
    /// node are ended and refused.
    Pod,
    /// A namespace (`[kubernetes]` only): its `kubectl exec` sessions on this node are ended
    /// and refused.
    Namespace,
}

impl Target {
    fn kube(self) -> Option<enforcer_proto::KubeLockKind> {
        match self {
            Target::User | Target::Node | Target::Group => None,
            Target::Pod => Some(enforcer_proto::KubeLockKind::Pod),
            Target::Namespace => Some(enforcer_proto::KubeLockKind::Namespace),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Target::User => "user",
            Target::Node => "node",
            Target::Group => "group",
            Target::Pod => "pod",
            Target::Namespace => "namespace",
        }
    }
}

/// What `kill` terminates.
#[derive(Clone, Copy, ValueEnum)]
enum KillWhat {
    /// One session and everything below it.
    Session,
    /// A whole connection: sshd's monitor and every process carrying its identity.
    Connection,
}

#[derive(Subcommand)]
enum Cmd {
    /// Daemon, kernel and BPF state: programs, maps, feature probes, event and drop counters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Live SSH connections (yours only, unless you are root or an auditor).
    Sessions {
        #[arg(long)]
        json: bool,
        /// Only this user's connections.
        #[arg(long)]
        user: Option<String>,
        /// Every node's live connections, from etcd (`[fleet]`; root and auditors).
        #[arg(long)]
        fleet: bool,
    },
    /// The fleet's nodes: version, start, last seen, live connections (`[fleet]`).
    Nodes {
        #[arg(long)]
        json: bool,
    },
    /// Ended connections, newest first, from the audit log (root and auditors).
    History {
        #[arg(long)]
        json: bool,
        /// Only this user's connections.
        #[arg(long)]
        user: Option<String>,
        /// Only connections live at or after this: 2h, 1d, today, yesterday, 2026-11-23
        /// (local midnight), or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// Lock a user: end their SSH connections, what those left running and (unless
    /// `locks.all_processes` is off) every process of theirs; refuse their logins and execs
    /// until `unlock` or the TTL ends.
    Lock {
        target: Target,
        name: String,
        /// Lock expires after this long, e.g. "2h".
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Shown to the user when a login is refused, and in the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// Lock the name even though no such user is known on this node.
        #[arg(long)]
        force: bool,
        /// Replace the reason and expiry of an existing lock.
        #[arg(long)]
        replace: bool,
        /// With `[fleet]`: lock on this node only (a lock file), not fleet-wide.
        #[arg(long)]
        local: bool,
    },
    /// Remove a user's (or, with `[fleet]`, a node's) lock.
    Unlock {
        target: Target,
        name: String,
        /// With `[fleet]`: remove this node's lock file only.
        #[arg(long)]
        local: bool,
    },
    /// Current locks (from the daemon's lock directory).
    Locks {
        #[arg(long)]
        json: bool,
    },
    /// Terminate a session or connection (ids from `enforcerctl sessions`).
    Kill { what: KillWhat, id: u64 },
    /// Recorded sessions (yours only, unless you are root or an auditor).
    Recordings {
        #[arg(long)]
        json: bool,
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only those started at or after this: 2h, 1d, today, yesterday, 2026-11-23 (local
        /// midnight), or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// List the recordings in the store ([recording.store]) of every node instead.
        #[arg(long)]
        store: bool,
    },
    /// Replay a recording in this terminal, with its timing (from the store when it is not on
    /// this node).
    Play {
        /// Session id (from `enforcerctl recordings`).
        id: u64,
        /// The node that recorded it, when the store has session ID from several nodes.
        #[arg(long)]
        node: Option<String>,
        /// Playback speed (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Shorten pauses longer than this, e.g. "2s".
        #[arg(long, value_parser = humantime::parse_duration)]
        idle_limit: Option<Duration>,
        /// Write the exact output bytes at once (no timing, no markers).
        #[arg(long)]
        raw: bool,
    },
    /// Follow a live session's terminal read-only, from its current screen on, until it ends.
    Watch {
        /// Session id (from `enforcerctl sessions`)
        id: u64,
    },
    /// Re-read enforcerd's config file and apply it to new and live connections, or keep the
    /// running config and say why (a bad file, or keys only a restart applies).
    Reload,
}

fn main() -> ExitCode {
    if let Some(code) =
        enforcer::docs::generate_if_requested(<Cli as clap::CommandFactory>::command, "1")
    {
        return code;
    }
    let cli = match enforcer::usage::parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enforcerctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text(value));
    }
    Ok(())
}

fn unexpected(reply: Reply) -> anyhow::Error {
    anyhow::anyhow!(
        "unexpected answer from enforcerd ({reply:?}); are enforcerctl and enforcerd the same version?"
    )
}

/// The socket to ask: the one given, else root's own socket when root may use it.
fn socket(given: Option<&std::path::Path>) -> PathBuf {
    if let Some(path) = given {
        return path.to_owned();
    }
    let root_only = std::path::Path::new(DEFAULT_PAM_SOCKET);
    if nix::unistd::geteuid().is_root() && root_only.exists() {
        return root_only.to_owned();
    }
    PathBuf::from(DEFAULT_SOCKET)
}

/// Where the PAM configuration that decides the fail mode lives.
const PAM_DIR: &str = "/etc/pam.d";

/// `status --json`: the daemon's report plus this host's pam_enforcer.so account lines.
#[derive(Serialize)]
struct StatusOut<'a> {
    #[serde(flatten)]
    report: &'a enforcer_proto::StatusReport,
    pam_account_hooks: &'a [pam::AccountHook],
}

/// `--since` as the daemon takes it (RFC 3339).
fn since_rfc3339(since: Option<&str>, clock: &Clock) -> anyhow::Result<Option<String>> {
    since
        .map(|s| {
            let at = ctl::clock::parse_since(s, clock.local_now())?;
            Ok(enforcer::core::rfc3339(at.to_offset(time::UtcOffset::UTC)))
        })
        .transpose()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let clock = Clock::system();
    let mut client = Client::connect(&socket(cli.socket.as_deref()), cli.timeout)?;
    match cli.cmd {
        Cmd::Status { json } => match client.call(&Request::Status)? {
            Reply::Status(s) => {
                // The fail mode lives in this host's PAM configuration, not in the daemon.
                let hooks = pam::scan(std::path::Path::new(PAM_DIR));
                let report = StatusOut {
                    report: &s,
                    pam_account_hooks: &hooks,
                };
                print(json, &report, |r| {
                    ctl::render_status(r.report, &clock, &pam::describe(r.pam_account_hooks))
                })
            }
            other => Err(unexpected(other)),
        },
        Cmd::Sessions {
            json,
            user,
            fleet: true,
        } => match client.call(&Request::FleetSessions)? {
            Reply::FleetSessions(mut s) => {
                if let Some(u) = &user {
                    s.retain(|c| &c.user == u);
                }
                print(json, &s, |s| ctl::render_fleet_sessions(s, &clock))
            }
            other => Err(unexpected(other)),
        },
        Cmd::Nodes { json } => match client.call(&Request::Nodes)? {
            Reply::Nodes(n) => print(json, &n, |n| ctl::render_nodes(n, &clock)),
            other => Err(unexpected(other)),
        },
        Cmd::Sessions { json, user, .. } => match client.call(&Request::Sessions)? {
            Reply::Sessions(s) => {
                let s = ctl::filter_user(s, user.as_deref());
                print(json, &s, |s| ctl::render_sessions(s, &clock))
            }
            other => Err(unexpected(other)),
        },
        Cmd::History { json, user, since } => {
            let since = since_rfc3339(since.as_deref(), &clock)?;
            match client.call(&Request::History(HistoryQuery { user, since }))? {
                Reply::History(h) => print(json, &h, |h| ctl::render_history(h, &clock)),
                other => Err(unexpected(other)),
            }
        }
        Cmd::Lock {
            target,
            name,
            ttl,
            reason,
            force,
            replace,
            local,
        } => {
            if ttl.is_some_and(|t| t.is_zero()) {
                bail!("--ttl must be longer than zero (omit it for a lock without expiry)");
            }
            let req = LockRequest {
                user: name,
                ttl_secs: ttl.map(|t| t.as_secs().max(1)),
                reason,
                force,
                replace,
                local,
                node: matches!(target, Target::Node),
                group: matches!(target, Target::Group),
                kube: target.kube(),
            };
            match client.call(&Request::Lock(req))? {
                Reply::Locked(l) => {
                    let until = l.expires.map(|e| format!(" until {e}")).unwrap_or_default();
                    let what = l.target.as_deref().unwrap_or("user");
                    let scope = match l.origin.as_deref() {
                        Some("fleet") => " on every node",
                        _ => "",
                    };
                    println!("locked {what} {}{scope}{until}", l.user);
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        }
        Cmd::Unlock {
            target,
            name,
            local,
        } => match client.call(&Request::UnlockTarget(enforcer_proto::UnlockRequest {
            name: name.clone(),
            local,
            node: matches!(target, Target::Node),
            group: matches!(target, Target::Group),
            kube: target.kube(),
        }))? {
            Reply::Done => {
                println!("unlocked {} {name}", target.as_str());
                Ok(())
            }
            other => Err(unexpected(other)),
        },
        Cmd::Locks { json } => match client.call(&Request::Locks)? {
            Reply::Locks(l) => print(json, &l, |l| ctl::render_locks(l, &clock)),
            other => Err(unexpected(other)),
        },
        Cmd::Recordings {
            json,
            user,
            since,
            store,
        } => {
            let since = since_rfc3339(since.as_deref(), &clock)?;
            let req = if store {
                Request::StoreRecordings { user, since }
            } else {
                Request::Recordings { user, since }
            };
            match client.call(&req)? {
                Reply::Recordings(r) => print(json, &r, |r| ctl::render_recordings(r, &clock)),
                other => Err(unexpected(other)),
            }
        }
        Cmd::Play {
            id,
            node,
            speed,
            idle_limit,
            raw,
        } => {
            if !(speed > 0.0 && speed.is_finite()) {
                bail!("--speed must be a positive number");
            }
            let mut client = client.without_deadline();
            let mut text = String::new();
            let mut reply = client.call(&Request::Play { id, node })?;
            loop {
                match reply {
                    Reply::RecordingData { text: t } => text.push_str(&t),
                    Reply::End => break,
                    other => return Err(unexpected(other)),
                }
                reply = client.read_response()?;
            }
            let opts = enforcer::ctl::play::PlayOptions {
                speed,
                idle_limit,
                raw,
            };
            enforcer::ctl::play::play(&text, &mut std::io::stdout().lock(), opts)?;
            Ok(())
        }
        Cmd::Watch { id } => {
            use base64::Engine;
            use std::io::Write;
            let mut client = client.without_deadline();
            let mut reply = client.call(&Request::Watch { id })?;
            let mut out = std::io::stdout().lock();
            loop {
                match reply {
                    Reply::Watch(WatchFrameMsg::Output { data }) => {
                        out.write_all(&base64::engine::general_purpose::STANDARD.decode(data)?)?;
                        out.flush()?;
                    }
                    Reply::Watch(WatchFrameMsg::Resize { .. }) => {}
                    Reply::Watch(WatchFrameMsg::Lost { bytes }) => {
                        out.write_all(
                            enforcer::ctl::play::marker_line(
                                &enforcer::recording::cast::lost_text(bytes),
                            )
                            .as_bytes(),
                        )?;
                    }
                    Reply::Watch(WatchFrameMsg::End) => {}
                    Reply::End => return Ok(()),
                    other => return Err(unexpected(other)),
                }
                reply = client.read_response()?;
            }
        }
        Cmd::Reload => match client.call(&Request::Reload)? {
            Reply::Reloaded(r) if r.changes.is_empty() => {
                println!("reloaded {}: no changes", r.config_path);
                Ok(())
            }
            Reply::Reloaded(r) => {
                let n = r.changes.len();
                let s = if n == 1 { "" } else { "s" };
                println!("reloaded {}: {n} change{s}", r.config_path);
                for c in &r.changes {
                    println!("  {c}");
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        },
        Cmd::Kill { what, id } => {
            let (req, noun) = match what {
                KillWhat::Session => (Request::KillSession { id }, "session"),
                KillWhat::Connection => (Request::KillConnection { id }, "connection"),
            };
            match client.call(&req)? {
                Reply::Killed { processes } => {
                    println!("killed {noun} {id} ({processes} processes)");
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        }
    }
}
