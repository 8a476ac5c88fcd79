//! A container image made here, with no registry and no network: one layer holding Debian's
//! busybox-static as `/bin/busybox` plus a symlink per applet, written as a docker-archive
//! (the `docker save` layout) that `ctr images import` takes.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The image's name: the CRI `sandbox_image` and every test container use it.
pub const IMAGE: &str = "enforcer.test/busybox:1";

/// Where busybox-static puts its binary (installed by `cargo xtask setup`).
pub const BUSYBOX: &str = "/bin/busybox";

/// The image's default command: what the pod sandbox (the "pause" container) runs. PID 1 of its
/// own pid namespace, so only SIGKILL (as StopPodSandbox sends) ends it.
const DEFAULT_CMD: &[&str] = &["/bin/sleep", "2147483647"];

/// A minimal ustar writer: directories, regular files and symlinks are all the layer needs.
struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8, link: &str) {
        assert!(
            name.len() < 100 && link.len() < 100,
            "tar name too long: {name}"
        );
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
        let octal = |width: usize, v: u64| format!("{v:0w$o}\0", w = width - 1).into_bytes();
        put(&mut h, 0, name.as_bytes());
        put(&mut h, 100, &octal(8, mode.into()));
        put(&mut h, 108, &octal(8, 0)); // uid root
        put(&mut h, 116, &octal(8, 0)); // gid root
        put(&mut h, 124, &octal(12, size as u64));
        put(&mut h, 136, &octal(12, 0)); // mtime: fixed, so the digest is too
        h[156] = kind;
        put(&mut h, 157, link.as_bytes());
        put(&mut h, 257, b"ustar\x0000");
        put(&mut h, 265, b"root");
        put(&mut h, 297, b"root");
        // The checksum is computed with its own field read as spaces.
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
    }

    fn dir(&mut self, name: &str) {
        self.header(
            &format!("{}/", name.trim_end_matches('/')),
            0o755,
            0,
            b'5',
            "",
        );
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, mode, data.len(), b'0', "");
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, 0o777, 0, b'2', target);
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The root filesystem: busybox, its applets (from `busybox --list-full`), and the few
/// directories and files runc and containerd expect.
fn layer() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e}; install busybox-static (`cargo xtask setup`)"));
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    let applets = String::from_utf8(out.stdout).expect("applet list is text");
    let mut t = Tar(Vec::new());
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "root",
        "run", "var",
    ] {
        t.dir(d);
    }
    t.file("bin/busybox", 0o755, &busybox);
    t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    t.file("etc/group", 0o644, b"root:x:0:\n");
    for a in applets
        .lines()
        .filter(|a| a.contains('/') && *a != "bin/busybox")
    {
        t.symlink(a, BUSYBOX);
    }
    t.finish()
}

/// Writes the docker-archive of [`IMAGE`] to `path`.
pub fn write_docker_archive(path: &Path) {
    let layer = layer();
    let diff_id = sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": DEFAULT_CMD,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    })
    .to_string()
    .into_bytes();
    let config_name = format!("{}.json", sha256_hex(&config));
    let layer_name = format!("{diff_id}/layer.tar");
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [IMAGE],
        "Layers": [layer_name],
    }])
    .to_string()
    .into_bytes();
    let mut t = Tar(Vec::new());
    t.dir(&diff_id);
    t.file(&layer_name, 0o644, &layer);
    t.file(&config_name, 0o644, &config);
    t.file("manifest.json", 0o644, &manifest);
    std::fs::write(path, t.finish()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
