//! Harness for enforcer's end-to-end tests: locating the built binaries, privilege checks that
//! fail (not skip) under CI, and daemons/sshd/users started per test and cleaned up by pid/path.

pub mod daemon;
pub mod env;

pub use daemon::TestDaemon;
pub use env::{bin, require_root};
