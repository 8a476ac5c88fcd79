//! `cargo xtask <command>` — everything a newcomer or CI needs, installed idempotently.

mod build;
mod cmd;
mod deb;
mod fuzz;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "enforcer project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (apt packages, rust-src, bpf-linker); idempotent.
    Setup,
    /// Build the BPF object (nightly, -Z build-std=core, bpf-linker).
    BuildEbpf {
        #[arg(long)]
        release: bool,
    },
    /// Build the BPF object and every userspace binary (the BPF object is embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run enforcerd in the foreground (embedded default config unless given args).
    Run {
        /// Arguments for enforcerd, e.g. `-- --config /etc/enforcer/enforcer.toml`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a benchmark (release build, as root): `pam`, `exec`, `idle`, `recording`, `lock`,
    /// `syscall`, `store`, `fleet`, `kube`.
    Bench {
        /// Which benchmark.
        name: String,
        /// Only these parts of it (`recording`: `sessions`, `rates`; `store`: `throughput`,
        /// `lag`); all when none given.
        parts: Vec<String>,
    },
    /// Build the Debian package (release) into target/debian/.
    Deb,
    /// Fuzz every parser of untrusted input (cargo-fuzz, nightly) and report executions and
    /// crashes per target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Stop a target after this many executions (whichever comes first).
        #[arg(long)]
        runs: Option<u64>,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Set up, build, and run every test (unit and privileged end-to-end).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => {
            setup::toolchain()?;
            setup::cargo_deb()?;
            setup::test_packages()
        }
        Cmd::BuildEbpf { release } => build::ebpf(release).map(|_| ()),
        Cmd::Build { release } => {
            setup::toolchain()?;
            build::all(release).map(|b| eprintln!("built into {}", b.bin_dir.display()))
        }
        Cmd::Run { args } => {
            setup::toolchain()?;
            build::run(&args)
        }
        Cmd::Bench { name, parts } => {
            setup::toolchain()?;
            setup::test_packages()?;
            build::bench(&name, &parts)
        }
        Cmd::Deb => {
            setup::toolchain()?;
            setup::cargo_deb()?;
            deb::build(&build::all(true)?).map(|_| ())
        }
        Cmd::Fuzz {
            seconds,
            runs,
            targets,
        } => {
            setup::toolchain()?;
            fuzz::install()?;
            fuzz::fuzz(&targets, seconds, runs)
        }
        Cmd::Test { filter } => {
            setup::toolchain()?;
            setup::cargo_deb()?;
            setup::test_packages()?;
            build::test(filter.as_deref())
        }
    }
}
