//! `cargo xtask deb`: the Debian package. cargo-deb packs it from `[package.metadata.deb]` in
//! enforcer/Cargo.toml; man pages and shell completions are generated here from the built
//! binaries' own CLI definitions, so they never drift from the CLI.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{
    build::Built,
    cmd::{cargo, run as run_cmd, run_stdout, target_dir},
};

/// Builds the .deb from a release build; returns the package's path.
pub fn build(built: &Built) -> anyhow::Result<PathBuf> {
    // The PAM module's destination in the metadata is amd64's multiarch directory.
    if !cfg!(target_arch = "x86_64") {
        bail!(
            "the package metadata installs pam_enforcer.so into /usr/lib/x86_64-linux-gnu/security; \
             add a cargo-deb variant with this architecture's multiarch directory"
        );
    }
    generate_docs(&built.bin_dir)?;
    let out_dir = target_dir().join("debian");
    fs::create_dir_all(&out_dir)?;
    // --strip: Debian wants stripped binaries (lintian unstripped-binary-or-object).
    let stdout = run_stdout(
        cargo()
            .args([
                "deb",
                "--package",
                "enforcer",
                "--no-build",
                "--strip",
                "--output",
            ])
            .arg(&out_dir),
    )
    .context("building the package (is cargo-deb installed? `cargo xtask setup`)")?;
    // cargo-deb prints the package's path as its last line.
    let deb = stdout
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_file())
        .context("cargo deb did not print the path of a package")?;
    eprintln!("built {}", deb.display());
    Ok(deb)
}

/// Writes man pages (gzipped, as Debian wants them) and completions into `<bin_dir>/deb-gen`
/// by running the binaries with `ENFORCER_GENERATE_DOCS`.
fn generate_docs(bin_dir: &Path) -> anyhow::Result<()> {
    let dir = bin_dir.join("deb-gen");
    if dir.exists() {
        fs::remove_dir_all(&dir)?; // no stale page of a removed subcommand
    }
    fs::create_dir_all(&dir)?;
    for bin in ["enforcerd", "enforcerctl"] {
        run_cmd(Command::new(bin_dir.join(bin)).env("ENFORCER_GENERATE_DOCS", &dir))?;
    }
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("1" | "8")) {
            run_cmd(Command::new("gzip").arg("-9n").arg(&path))?;
        }
    }
    Ok(())
}
