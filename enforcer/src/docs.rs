//! Man pages and shell completions generated from the binaries' clap definitions, so the
//! packaged documentation never drifts from the CLI. `cargo xtask deb` runs both binaries with
//! `ENFORCER_GENERATE_DOCS=DIR` (an environment variable, not a hidden option: completion
//! scripts would offer hidden options).

use std::{
    io,
    path::{Path, PathBuf},
};

use clap_complete::Shell;

/// The environment variable that makes a binary write its docs instead of running.
pub const GENERATE_ENV: &str = "ENFORCER_GENERATE_DOCS";

/// When `ENFORCER_GENERATE_DOCS=DIR` is set: writes `command()`'s docs into DIR ([`write_all`])
/// and returns the exit code for the binary, which then exits instead of running.
pub fn generate_if_requested(
    command: impl FnOnce() -> clap::Command,
    section: &str,
) -> Option<std::process::ExitCode> {
    let dir = std::env::var_os(GENERATE_ENV)?;
    Some(match write_all(command(), section, Path::new(&dir)) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "cannot write the docs into {}: {e}",
                Path::new(&dir).display()
            );
            std::process::ExitCode::FAILURE
        }
    })
}

/// Writes into `dir`: the man page `NAME.SECTION`, one page `NAME-SUB.SECTION` per visible
/// subcommand (as git and cargo do), and `NAME.bash`, `_NAME` (zsh), `NAME.fish`. `cmd`'s
/// name is the binary's; `section` is 8 for daemons in /usr/sbin, 1 for user commands.
/// Returns the files written.
pub fn write_all(mut cmd: clap::Command, section: &str, dir: &Path) -> io::Result<Vec<PathBuf>> {
    cmd.build(); // propagates global options into the subcommands' pages
    let name = cmd.get_name().to_string();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let mut written = Vec::new();
    let mut write = |file: String, bytes: Vec<u8>| -> io::Result<()> {
        let path = dir.join(file);
        std::fs::write(&path, bytes)?;
        written.push(path);
        Ok(())
    };
    write(format!("{name}.{section}"), man_page(cmd.clone(), section)?)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let page = sub
            .clone()
            .display_name(format!("{name}-{}", sub.get_name()))
            .version(version.clone())
            .bin_name(format!("{name} {}", sub.get_name()));
        write(
            format!("{name}-{}.{section}", sub.get_name()),
            man_page(page, section)?,
        )?;
    }
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut script);
        write(file, script)?;
    }
    Ok(written)
}

fn man_page(cmd: clap::Command, section: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .render(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_per_subcommand_and_completions_name_the_options() {
        let cmd = clap::Command::new("sample")
            .about("A sample tool")
            .arg(clap::Arg::new("socket").long("socket").global(true))
            .subcommand(
                clap::Command::new("status")
                    .about("Show status")
                    .arg(clap::Arg::new("json").long("json").num_args(0)),
            )
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(cmd, "1", dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "sample.1",
                "sample-status.1",
                "sample.bash",
                "_sample",
                "sample.fish"
            ]
        );
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let status = read("sample-status.1");
        assert!(
            status.contains("sample status") && status.contains("json"),
            "{status}"
        );
        assert!(
            status.contains("socket"),
            "global options missing: {status}"
        );
        for f in ["sample.bash", "_sample", "sample.fish"] {
            assert!(read(f).contains("status"), "{f}");
        }
    }
}
