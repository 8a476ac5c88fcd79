//! Stand-in sshd connections for `bench idle`, cheap enough for 10 000 of them:
//! `enf-stand-in COUNT` forks COUNT stand-in monitors and prints each one's pid on a line of
//! its own. A monitor waits for SIGUSR1 (sent once the bench has admitted it over the PAM
//! protocol, so the kernel tracks it), then does what sshd does for one channel: it forks a
//! per-connection child (the aux, like `sshd: user@notty`), which forks the session leader with
//! its stdio on pipes the aux holds; the leader calls setsid() and execs `/bin/sleep infinity`.
//! Three processes per session, as under sshd, with no shell in between.
//!
//! Every process dies with its parent (PR_SET_PDEATHSIG): killing this spawner ends them all.

use std::{
    ffi::CString,
    io::Write,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::OFlag,
    sys::{
        signal::{SigSet, SigmaskHow, Signal, sigprocmask},
        wait::waitpid,
    },
    unistd::{ForkResult, dup2_stderr, dup2_stdin, dup2_stdout, execv, fork, pipe2, setsid},
};

/// Dies (SIGKILL) when the parent does; exits at once if the parent is already gone.
fn die_with_parent(parent: nix::unistd::Pid) {
    // SAFETY: plain prctl on the calling process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != parent {
        // SAFETY: exit without running the parent's atexit handlers or flushing its buffers.
        unsafe { libc::_exit(1) };
    }
}

/// Reaps children until there are none, then waits for a signal that ends the process.
fn wait_forever() -> ! {
    loop {
        if waitpid(None, None).is_err() {
            // No child left (ECHILD): only a signal ends us now.
            // SAFETY: plain syscall.
            unsafe { libc::pause() };
        }
    }
}

/// The session leader: stdin, stdout and stderr on the channel, its own session, then a real
/// program (the kernel starts the session at setsid or at a session leader's first exec).
fn leader(stdin: &OwnedFd, output: &OwnedFd) -> ! {
    let _ = dup2_stdin(stdin);
    let _ = dup2_stdout(output);
    let _ = dup2_stderr(output);
    let _ = setsid();
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let path = CString::new("/bin/sleep").unwrap();
    let argv = [path.clone(), CString::new("infinity").unwrap()];
    let _ = execv(&path, &argv);
    // SAFETY: exec failed; leave without touching the parent's state.
    unsafe { libc::_exit(127) }
}

/// sshd's per-connection child: holds the channel (pipes to the leader's stdio, opened
/// close-on-exec: the leader keeps only its dup2'd copies) and moves one byte of input, so the
/// kernel keeps an idle clock for the channel.
fn aux() -> ! {
    let me = nix::unistd::getpid();
    let (Ok((in_r, in_w)), Ok((out_r, out_w))) = (pipe2(OFlag::O_CLOEXEC), pipe2(OFlag::O_CLOEXEC))
    else {
        // SAFETY: leave without touching the parent's state.
        unsafe { libc::_exit(1) }
    };
    // SAFETY: single-threaded process; the child only calls async-signal-safe functions.
    if let Ok(ForkResult::Child) = unsafe { fork() } {
        die_with_parent(me);
        leader(&in_r, &out_w);
    }
    drop((in_r, out_w));
    let _ = nix::unistd::write(&in_w, b"\n");
    // Both ends stay open (the leader's stdin is never at EOF, its output never EPIPE).
    let _keep = (in_w, out_r);
    wait_forever()
}

/// The stand-in monitor: waits until admitted, then starts its one session.
fn monitor() -> ! {
    let mut go = SigSet::empty();
    go.add(Signal::SIGUSR1);
    let _ = go.wait();
    let me = nix::unistd::getpid();
    // SAFETY: single-threaded process; the child only calls async-signal-safe functions.
    if let Ok(ForkResult::Child) = unsafe { fork() } {
        die_with_parent(me);
        aux();
    }
    wait_forever()
}

fn quiet_stdio(null: RawFd) {
    // SAFETY: `null` stays open for the life of the process.
    let null = unsafe { std::os::fd::BorrowedFd::borrow_raw(null) };
    let _ = dup2_stdin(null);
    let _ = dup2_stdout(null);
    let _ = dup2_stderr(null);
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("usage: enf-stand-in COUNT");
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    // Blocked before fork, so a SIGUSR1 sent right after the pid is printed is never lost.
    let mut go = SigSet::empty();
    go.add(Signal::SIGUSR1);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&go), None).expect("block SIGUSR1");
    let spawner = nix::unistd::getpid();
    let mut out = std::io::stdout().lock();
    for _ in 0..count {
        // SAFETY: single-threaded; the child only calls async-signal-safe functions before it
        // execs or waits.
        match unsafe { fork() }.expect("fork a stand-in monitor") {
            ForkResult::Child => {
                die_with_parent(spawner);
                quiet_stdio(null.as_raw_fd());
                monitor();
            }
            ForkResult::Parent { child } => {
                // Flushed per line: the bench admits monitors while later ones are forked.
                writeln!(out, "{child}")
                    .and_then(|_| out.flush())
                    .expect("stdout");
            }
        }
    }
    drop(out);
    quiet_stdio(null.as_raw_fd());
    wait_forever()
}
