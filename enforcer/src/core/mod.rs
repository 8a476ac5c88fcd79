//! The pure core: what a connection is, who may log in, what a lock says. No I/O here — the
//! daemon feeds in what it read from the kernel, /proc and disk, and acts on the answers.

pub mod conn;
pub mod identity;
pub mod lock;
pub mod policy;
pub mod session;
