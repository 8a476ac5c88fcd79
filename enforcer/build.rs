//! Embeds the BPF object built by `cargo xtask build-ebpf` so `enforcerd` is self-contained.
//!
//! The object is taken from `ENFORCER_BPF_OBJECT` (xtask sets it), else from the workspace's
//! release, then debug, BPF target dir. Without one the crate still builds (pure unit tests need
//! no BPF toolchain) and `enforcerd` refuses to start with a message saying how to build it.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ENFORCER_BPF_OBJECT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target"));
    let candidates: Vec<PathBuf> = match env::var_os("ENFORCER_BPF_OBJECT") {
        Some(p) => vec![PathBuf::from(p)],
        None => ["release", "debug"]
            .iter()
            .map(|p| {
                target_dir
                    .join("bpfel-unknown-none")
                    .join(p)
                    .join("enforcer-ebpf")
            })
            .collect(),
    };
    for c in &candidates {
        println!("cargo:rerun-if-changed={}", c.display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("enforcer.bpf.o");
    match candidates.iter().find(|c| c.is_file()) {
        Some(obj) => {
            fs::copy(obj, &out).expect("copy BPF object into OUT_DIR");
        }
        None => {
            println!(
                "cargo:warning=no BPF object found ({}); enforcerd will refuse to start. Run `cargo xtask build-ebpf` first, or build with `cargo xtask build`.",
                candidates[0].display()
            );
            fs::write(&out, b"").expect("write empty BPF placeholder");
        }
    }
}
