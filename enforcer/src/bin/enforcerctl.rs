//! enforcerctl — inspect and steer a running enforcerd.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use enforcer_proto::{Client, DEFAULT_SOCKET, Reply, Request};

/// Inspect and steer enforcerd.
#[derive(Parser)]
#[command(name = "enforcerctl", version, about)]
struct Cli {
    /// enforcerd's control socket.
    #[arg(long, global = true, env = "ENFORCER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// How long to wait for the daemon.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Daemon, kernel and BPF state: programs, maps, feature probes, event and drop counters.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enforcerctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = Client::connect(&cli.socket, cli.timeout)?;
    match cli.cmd {
        Cmd::Status { json } => {
            let Reply::Status(status) = client.call(&Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", enforcer::ctl::render_status(&status));
            }
        }
    }
    Ok(())
}
