//! Argument errors of both binaries as one line on stderr and exit status 2 (clap's own are
//! several lines), so scripts and people read the same thing: what is wrong, the usage, where
//! the help is. `--help` and `--version` print as usual and exit 0.

use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};

/// Exit status of an argument error (other failures exit 1).
pub const EXIT_USAGE: u8 = 2;

/// Parses the command line, or prints why not and returns the exit code to end with.
pub fn parse<P: Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        kind => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            let path = command_path(P::command(), &args);
            let line = match kind {
                // clap would print the whole help here.
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    missing_command(&path, &P::command())
                }
                _ => one_line(&path, &e.render().to_string()),
            };
            eprintln!("{line}");
            ExitCode::from(EXIT_USAGE)
        }
    })
}

/// No (sub)command given: which ones there are.
fn missing_command(path: &str, root: &clap::Command) -> String {
    let mut cmd = root;
    for name in path.split(' ').skip(1) {
        cmd = cmd.find_subcommand(name).unwrap_or(cmd);
    }
    let names: Vec<&str> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .map(|c| c.get_name())
        .collect();
    let bin = root.get_name();
    format!(
        "{bin}: a command is required: {}; see `{path} --help`",
        names.join(", ")
    )
}

/// The (sub)command the arguments name, e.g. "enforcerctl lock": where the help is.
fn command_path(mut cmd: clap::Command, args: &[String]) -> String {
    let mut path = vec![cmd.get_name().to_owned()];
    for arg in args {
        let Some(sub) = cmd.find_subcommand(arg).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_owned());
        cmd = sub;
    }
    path.join(" ")
}

/// clap's rendered error as one line: its message, its tips, the usage, and the help of
/// `path` (the command and subcommands given).
fn one_line(path: &str, rendered: &str) -> String {
    let mut message = Vec::new();
    let mut tips = Vec::new();
    let mut usage = None;
    for (i, paragraph) in rendered.split("\n\n").enumerate() {
        let lines = paragraph.lines().map(str::trim).filter(|l| !l.is_empty());
        if i == 0 {
            message.extend(lines.map(|l| l.strip_prefix("error: ").unwrap_or(l)));
        } else if let Some(u) = paragraph.trim().strip_prefix("Usage: ") {
            usage = u.lines().next().map(str::trim);
        } else {
            tips.extend(lines.filter(|l| l.starts_with("tip:")));
        }
    }
    let bin = path.split(' ').next().unwrap_or(path);
    let mut out = format!("{bin}: {}", message.join(" "));
    for tip in tips {
        out.push_str(&format!(" ({tip})"));
    }
    if let Some(u) = usage {
        out.push_str(&format!("; usage: {u}"));
    }
    out.push_str(&format!("; see `{path} --help`"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "tool")]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Lock {
            name: String,
            #[arg(long)]
            ttl: Option<u32>,
        },
        Locks,
    }

    fn error(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        let rest: Vec<String> = args[1..].iter().map(|a| a.to_string()).collect();
        one_line(
            &command_path(<Cli as clap::CommandFactory>::command(), &rest),
            &e.render().to_string(),
        )
    }

    #[test]
    fn a_missing_command_lists_the_commands() {
        let line = missing_command("tool", &<Cli as clap::CommandFactory>::command());
        assert_eq!(
            line,
            "tool: a command is required: lock, locks; see `tool --help`"
        );
    }

    #[test]
    fn errors_become_one_line_with_usage_and_help() {
        for (args, wants) in [
            (
                &["tool", "lock"][..],
                &[
                    "required arguments were not provided: <NAME>",
                    "usage: tool lock",
                    "see `tool lock --help`",
                ][..],
            ),
            (
                &["tool", "lock", "a", "--ttl", "x"],
                &[
                    "invalid value 'x' for '--ttl <TTL>'",
                    "see `tool lock --help`",
                ],
            ),
            (
                &["tool", "lokcs"],
                &["unrecognized subcommand 'lokcs'", "tip:", "'locks'"],
            ),
            (
                &["tool", "locks", "--bogus"],
                &["unexpected argument '--bogus'", "see `tool locks --help`"],
            ),
        ] {
            let line = error(args);
            assert_eq!(line.lines().count(), 1, "{line}");
            assert!(line.starts_with("tool: "), "{line}");
            for w in wants {
                assert!(line.contains(w), "{args:?}: {line:?} lacks {w:?}");
            }
        }
    }
}
