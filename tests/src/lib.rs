//! Harness for enforcer's end-to-end tests: locating the built binaries, privilege checks that
//! fail (not skip) under CI, and daemons, sshd instances, users and a private containerd (with
//! a CRI client playing the kubelet) started per test and cleaned up by pid/path.

pub mod bpfstats;
pub mod busybox_image;
pub mod casts;
pub mod cgroup;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod debroot;
pub mod env;
pub mod etcd;
pub mod exec_stream;
pub mod fleet;
pub mod hostile;
pub mod http;
pub mod kube;
pub mod kube_api;
pub mod kube_api_exec;
pub mod kube_bed;
pub mod kube_discovery;
pub mod procs;
pub mod prometheus;
pub mod pty;
pub mod s3;
pub mod ssh;
pub mod sshd;
pub mod stats;
pub mod users;
pub mod webhook;

pub use daemon::TestDaemon;
pub use env::{bin, bin_dir, require_root};
pub use sshd::{Pam, TestSshd};
pub use users::{TestGroup, TestUser};
