//! enforcer: host-level session enforcement for the stock OpenSSH sshd (and kubectl exec).
//!
//! Layout (shared/DESIGN.md part A):
//! - [`config`]: the TOML configuration;
//! - [`core`]: the pure session model and policy (connections, limits, locks, identities);
//! - [`host`], [`locks`], [`audit`], [`lines`]: the edges — /proc and NSS, lock files, the audit
//!   log, files kept valid line by line;
//! - [`bpf`]: the kernel side (loader, feature probes, the actor owning the aya object);
//! - [`control`]: the control socket (framing, peer credentials, authorisation);
//! - [`daemon`]: `enforcerd` itself — the state actor and the wiring;
//! - [`metrics`]: Prometheus metrics on `[metrics] listen`;
//! - [`listen`]: bounded accepting on a TCP port anyone may reach (metrics, webhook);
//! - [`webhook`]: `enforcerd webhook`, the admission webhook for `kubectl exec`;
//! - [`fleet`]: locks, live sessions and fleet-wide limits across nodes, on etcd;
//! - [`kube`]: the apiserver side of `[kubernetes]` (this node's enforcement label);
//! - [`ctl`]: `enforcerctl`'s rendering of answers.
//! - [`docs`]: man pages and completions generated from the CLI definitions;
//! - [`usage`]: argument errors as one line, exit 2.

pub mod audit;
pub mod bpf;
pub mod config;
pub mod control;
pub mod core;
pub mod ctl;
pub mod daemon;
pub mod docs;
pub mod fleet;
pub mod host;
pub mod kube;
pub mod lines;
pub mod listen;
pub mod locks;
pub mod metrics;
pub mod recording;
pub mod store;
pub mod usage;
pub mod webhook;
