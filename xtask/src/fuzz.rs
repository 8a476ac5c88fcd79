//! `cargo xtask fuzz`: runs every cargo-fuzz target (fuzz/) for a bounded time or number of
//! executions and reports executions and crashes per target.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{
    cmd::{run, workspace_root},
    setup::BPF_TOOLCHAIN,
};

/// Every target in fuzz/Cargo.toml: what reads untrusted input.
pub const TARGETS: &[&str] = &[
    "frame",
    "request",
    "config",
    "lock_file",
    "module_args",
    "asciicast",
];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Where cargo-fuzz puts what it builds (fuzz/target/<triple>/release/<target>).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Installs cargo-fuzz at the pinned version unless it is there.
pub fn install() -> anyhow::Result<()> {
    crate::setup::cargo_tool("fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// What one target's run found.
struct Outcome {
    target: &'static str,
    executions: u64,
    seconds: u64,
    crashes: Vec<PathBuf>,
}

/// Runs `targets` (all when empty), each until `seconds` pass or `runs` executions are done.
pub fn fuzz(targets: &[String], seconds: u64, runs: Option<u64>) -> anyhow::Result<()> {
    let chosen: Vec<&'static str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets
            .iter()
            .map(|t| {
                TARGETS.iter().copied().find(|k| k == t).with_context(|| {
                    format!("unknown fuzz target {t:?}; known: {}", TARGETS.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let dir = workspace_root().join("fuzz");
    // One build for every target (they share the sanitized dependency graph), so the time
    // each target gets is spent fuzzing.
    run(Command::new("cargo").current_dir(workspace_root()).args([
        &format!("+{BPF_TOOLCHAIN}"),
        "fuzz",
        "build",
    ]))?;
    let mut outcomes = Vec::new();
    for target in chosen {
        outcomes.push(run_target(&dir, target, seconds, runs)?);
    }
    println!(
        "\n{:<12} {:>14} {:>10} {:>10}  crashes",
        "target", "executions", "seconds", "exec/s"
    );
    for o in &outcomes {
        println!(
            "{:<12} {:>14} {:>10} {:>10}  {}",
            o.target,
            o.executions,
            o.seconds,
            o.executions / o.seconds.max(1),
            if o.crashes.is_empty() {
                "0".to_owned()
            } else {
                o.crashes
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.crashes.is_empty())
        .map(|o| o.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "crashes in {}: reproduce with `cargo +{BPF_TOOLCHAIN} fuzz run TARGET ARTIFACT`, \
             then add the input as a regression test",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn artifacts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

fn run_target(
    dir: &Path,
    target: &'static str,
    seconds: u64,
    runs: Option<u64>,
) -> anyhow::Result<Outcome> {
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let artifact_dir = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifact_dir)?;
    let before = artifacts(&artifact_dir);
    // The binary `cargo fuzz build` made: `cargo fuzz run` would build again first (minutes
    // with sanitizers whenever a source changed) and count that against the target's time.
    let binary = dir.join("target").join(TRIPLE).join("release").join(target);
    let mut cmd = Command::new(&binary);
    cmd.arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifact_dir.display()));
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    eprintln!(
        "+ fuzzing {target} ({seconds} s{})",
        runs.map(|n| format!(" or {n} runs")).unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let out = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let crashes: Vec<PathBuf> = artifacts(&artifact_dir)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !out.status.success() && crashes.is_empty() {
        // A build failure or a libFuzzer usage error: show it whole.
        eprintln!("{log}");
        bail!(
            "fuzzing {target} failed with {} and left no crash input",
            out.status
        );
    }
    if !crashes.is_empty() {
        // The report of the crash itself.
        eprintln!(
            "{}",
            log.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(Outcome {
        target,
        executions: stat("number_of_executed_units").unwrap_or(0),
        seconds: started.elapsed().as_secs(),
        crashes,
    })
}
