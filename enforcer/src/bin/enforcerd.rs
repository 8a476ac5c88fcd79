//! enforcerd — the enforcer daemon (foreground; run it as root).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use enforcer::config::Config;

/// Host-level SSH session enforcer daemon.
///
/// Runs in the foreground (as root) until SIGTERM or SIGINT; SIGHUP re-reads the config file
/// (as `enforcerctl reload` does). Its kernel programs stay attached (pinned under
/// daemon.bpf_pin_dir) so enforcement goes on across restarts and upgrades; `enforcerd --detach`
/// removes them (uninstall).
#[derive(clap::Parser)]
#[command(name = "enforcerd", version)]
struct Args {
    /// Config file (TOML). Without it the embedded defaults are used
    /// (the same as the shipped /etc/enforcer/enforcer.toml).
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Only validate the config, print "config OK" and exit.
    #[arg(long)]
    check_config: bool,
    /// Detach every kernel program and free every map by removing daemon.bpf_pin_dir, then
    /// exit (for uninstalling; a running daemon should be stopped first).
    #[arg(long)]
    detach: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Serve the Kubernetes validating admission webhook for `kubectl exec` and `attach`
    /// (HTTPS on [webhook] listen): refuse locked users and groups and users over
    /// [kubernetes] max_exec_sessions_per_user, and write a grant to the fleet's etcd for
    /// each exec allowed. Runs as a Deployment, not on the nodes; needs [fleet] and
    /// [webhook] tls_cert/tls_key.
    Webhook,
}

fn main() -> ExitCode {
    if let Some(code) =
        enforcer::docs::generate_if_requested(<Args as clap::CommandFactory>::command, "8")
    {
        return code;
    }
    let args = match enforcer::usage::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENFORCER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enforcerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    if args.check_config {
        println!("config OK");
        return Ok(());
    }
    if let Some(Command::Webhook) = args.command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("enforcerd-webhook")
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(enforcer::webhook::run(config))?;
        return Ok(());
    }
    if args.detach {
        let dir = &config.daemon.bpf_pin_dir;
        match enforcer::bpf::detach_all(dir)? {
            true => println!("detached: removed {}", dir.display()),
            false => println!("nothing attached: {} does not exist", dir.display()),
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("enforcerd")
        // This runtime serves the public control socket: below the core runtime (actors, PAM).
        .on_thread_start(enforcer::daemon::public_thread)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(enforcer::daemon::run(config, args.config))?;
    Ok(())
}
