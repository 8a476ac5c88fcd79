//! Poses as containerd's `runc … exec …` for the hostile tests: copied to a file named `runc`
//! and run by an unprivileged user with an `exec` argument, it starts THREADS threads (each a
//! task the kernel side would mark as part of a runc exec, were it trusted), prints
//! `ready PID THREADS` and keeps them alive until its stdin closes.
//!
//! `runc --root DIR exec THREADS`

use std::{
    io::{Read, Write},
    sync::{Arc, Barrier},
};

fn main() {
    let threads: usize = std::env::args()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: runc --root DIR exec THREADS");
            std::process::exit(2);
        });
    let all_up = Arc::new(Barrier::new(threads + 1));
    for i in 0..threads {
        let all_up = all_up.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                all_up.wait();
                loop {
                    std::thread::park();
                }
            });
        if let Err(e) = spawned {
            eprintln!("runc: thread {i}: {e}");
            std::process::exit(1);
        }
    }
    all_up.wait();
    println!("ready {} {threads}", std::process::id());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
