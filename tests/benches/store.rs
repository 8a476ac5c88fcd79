//! `cargo xtask bench store [throughput] [lag]`: what shipping recordings to S3-compatible
//! storage (`[recording.store]`, s3s-fs on loopback) costs a session, and how far the store
//! lags behind.
//!
//! Part 1 — throughput: `cat` of a 32 MiB text file in a pty session through sshd, timed inside
//! the session, under a daemon that ships recordings to the store and under one that keeps them
//! local only (both daemons run side by side, each with its own sshd). Per round: local, store,
//! local again (an A/A pair: the noise floor). Reported: the median of per-round ratios
//! local/store (target ≥ 0.97) next to the A/A ratio.
//!
//! Part 2 — lag at 10 MB/s: an exec session writes 10 MB/s (`pv -L`) for 30 s under the store
//! daemon; every second the bytes not yet in a confirmed part are read from `status`, and after
//! the session the time until the store confirmed the complete object.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use enforcer_tests::{
    TestDaemon, TestSshd, TestUser, require_root,
    s3::{self, SECRET_KEY, TestS3},
    stats::{median, ratio_range},
};

const FILE_BYTES: usize = 32 << 20;
const ROUNDS: usize = 7;

/// Runs `body` in a pty session and returns the time it took inside the session.
fn timed(sshd: &TestSshd, user: &TestUser, body: &str, elapsed: &Path) -> Duration {
    let _ = std::fs::remove_file(elapsed);
    let script = format!(
        "stty -echo; s=$(date +%s%N); {body}; e=$(date +%s%N); echo $((e-s)) > {}",
        elapsed.display()
    );
    let out = sshd
        .ssh_with(user, &["-tt"], &script)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns: u64 = std::fs::read_to_string(elapsed)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Duration::from_nanos(ns)
}

fn throughput(s3: &TestS3, user: &TestUser, work: &Path) {
    let file = work.join("text.txt");
    let line = "the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ\n";
    std::fs::write(&file, line.repeat(FILE_BYTES / line.len())).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let elapsed = work.join("elapsed");
    let stored = TestDaemon::start(&s3.store_config(SECRET_KEY, "bench", ""));
    let local = TestDaemon::start("");
    let sshd_s = TestSshd::start(stored.pam(), &[user], "");
    let sshd_l = TestSshd::start(local.pam(), &[user], "");
    let body = format!("cat {}", file.display());
    let (mut t_local, mut t_store, mut store_ratio, mut aa_ratio) =
        (vec![], vec![], vec![], vec![]);
    // A warm-up round of each, not counted.
    timed(&sshd_l, user, &body, &elapsed);
    timed(&sshd_s, user, &body, &elapsed);
    for _ in 0..ROUNDS {
        let a = timed(&sshd_l, user, &body, &elapsed);
        let s = timed(&sshd_s, user, &body, &elapsed);
        let b = timed(&sshd_l, user, &body, &elapsed);
        store_ratio.push(a.as_secs_f64() / s.as_secs_f64());
        aa_ratio.push(a.as_secs_f64() / b.as_secs_f64());
        t_local.extend([a, b]);
        t_store.push(s);
    }
    let mb = FILE_BYTES as f64 / 1e6;
    let rate = |d: Duration| format!("{:.1} MB/s", mb / d.as_secs_f64());
    println!("throughput: cat of {mb:.0} MB in a pty session, {ROUNDS} rounds");
    println!(
        "  local only   median {:?} ({})",
        median(t_local.clone()),
        rate(median(t_local))
    );
    println!(
        "  store on     median {:?} ({})",
        median(t_store.clone()),
        rate(median(t_store))
    );
    println!(
        "  local/store  {}   (target >= 0.97)",
        ratio_range(store_ratio)
    );
    println!("  A/A local    {}", ratio_range(aa_ratio));
    let st = stored.status().store.unwrap();
    println!(
        "  store: {} objects, {} parts, {} errors, {} bytes pending",
        st.objects_stored, st.parts_uploaded, st.errors, st.pending_bytes
    );
}

fn lag(s3: &TestS3, user: &TestUser) {
    let d = TestDaemon::start(&s3.store_config(SECRET_KEY, "bench", ""));
    let sshd = TestSshd::start(d.pam(), &[user], "");
    let secs = 30;
    let started = Instant::now();
    let mut ssh = sshd
        .ssh_with(
            user,
            &["-c", "aes128-gcm@openssh.com"],
            &format!(
                "yes 'lag test line 0123456789' | pv -q -L 10m | head -c {}",
                secs * 10_000_000
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pending = Vec::new();
    while ssh.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_secs(1));
        pending.push(d.status().store.unwrap().pending_bytes);
    }
    let ended = Instant::now();
    let mut done = None;
    while ended.elapsed() < Duration::from_secs(60) {
        if d.status().store.unwrap().objects_stored >= 1 {
            done = Some(ended.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pending.sort();
    let p = |q: f64| pending[((pending.len() - 1) as f64 * q) as usize] as f64 / 1e6;
    println!(
        "lag: exec session at 10 MB/s for {:?} (part_size 8 MiB, flush_after 10 s)",
        ended - started
    );
    println!(
        "  pending in local files only: median {:.1} MB, p90 {:.1} MB, max {:.1} MB (≈ {:.1} s of output at most)",
        p(0.5),
        p(0.9),
        p(1.0),
        p(1.0) / 10.0
    );
    match done {
        Some(t) => println!("  complete object confirmed {t:?} after the session ended"),
        None => println!("  complete object NOT confirmed within 60 s after the session ended"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require_root() {
        return;
    }
    let Some(bin) = s3::s3s_fs() else { return };
    let s3 = TestS3::start(bin);
    let user = TestUser::create("bs");
    let work = tempfile::tempdir().unwrap();
    // The session writes its timing here.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |part: &str| named.is_empty() || named.iter().any(|a| a == part);
    if wanted("throughput") {
        throughput(&s3, &user, work.path());
    }
    if wanted("lag") {
        lag(&s3, &user);
    }
}
