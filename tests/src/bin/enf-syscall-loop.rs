//! A syscall-bound workload for `bench syscall`, run by the bench directly or inside an SSH
//! session, so both report the same way: one line `wall_ns=… cpu_ns=… syscalls=…`.
//!
//! - `enf-syscall-loop mixed ITERS`: each iteration writes and reads 1 byte on a pipe and on a
//!   socket pair, stat()s `/` and calls getpid(): 6 syscalls, 4 of them read/write. Times
//!   itself (wall, and its CPU from getrusage, which is the scheduler's exact run time).
//! - `enf-syscall-loop run CMD ARGS…`: runs CMD (e.g. dd) and reports its wall and CPU (rusage of
//!   children), `syscalls=0` (unknown here).

use std::{
    ffi::CString,
    time::{Duration, Instant},
};

fn tv(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
}

fn cpu(ru: &libc::rusage) -> Duration {
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn check(r: isize, what: &str) {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
}

fn mixed(iters: u64) -> (Duration, Duration, u64) {
    let (mut pipe, mut pair) = ([0i32; 2], [0i32; 2]);
    // SAFETY: plain syscalls on fds this function owns; buffers outlive every call.
    unsafe {
        check(libc::pipe(pipe.as_mut_ptr()) as isize, "pipe");
        check(
            libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) as isize,
            "socketpair",
        );
    }
    let root = CString::new("/").unwrap();
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let mut b = [0u8; 1];
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let (cpu0, t0) = (cpu(&ru), Instant::now());
    for _ in 0..iters {
        // SAFETY: as above.
        unsafe {
            check(libc::write(pipe[1], b.as_ptr().cast(), 1), "pipe write");
            check(libc::read(pipe[0], b.as_mut_ptr().cast(), 1), "pipe read");
            check(libc::write(pair[0], b.as_ptr().cast(), 1), "socket write");
            check(libc::read(pair[1], b.as_mut_ptr().cast(), 1), "socket read");
            check(libc::stat(root.as_ptr(), &mut st) as isize, "stat");
            // The raw syscall: a libc could cache getpid.
            libc::syscall(libc::SYS_getpid);
        }
    }
    let wall = t0.elapsed();
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (wall, cpu(&ru) - cpu0, iters * 6)
}

fn run(argv: &[String]) -> (Duration, Duration, u64) {
    // This process has no other child, so its children's rusage is exactly CMD's.
    let children = || {
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct we pass.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
        cpu(&ru)
    };
    let (cpu0, t0) = (children(), Instant::now());
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
    let wall = t0.elapsed();
    assert!(status.success(), "{argv:?} failed: {status}");
    (wall, children() - cpu0, 0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (wall, cpu, syscalls) = match args.first().map(String::as_str) {
        Some("mixed") => mixed(args.get(1).and_then(|n| n.parse().ok()).expect("ITERS")),
        Some("run") if args.len() > 1 => run(&args[1..]),
        _ => {
            eprintln!("usage: enf-syscall-loop mixed ITERS | run CMD [ARGS…]");
            std::process::exit(2);
        }
    };
    println!(
        "wall_ns={} cpu_ns={} syscalls={syscalls}",
        wall.as_nanos(),
        cpu.as_nanos()
    );
}
