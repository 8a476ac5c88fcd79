//! The control-socket protocol between `enforcerd` and its clients (`enforcerctl`,
//! `pam_enforcer.so`).
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. A client sends one
//! [`Request`] frame and reads one [`Response`] frame; a connection may carry several exchanges.
//! The daemon authorises each request from the peer credentials of the socket (SO_PEERCRED).

pub mod client;
pub mod frame;
pub mod msg;

pub use client::{Client, ClientError};
pub use frame::FrameError;
pub use msg::*;

/// Default control socket path (overridable in the daemon config and with `--socket`).
pub const DEFAULT_SOCKET: &str = "/run/enforcer/enforcerd.sock";

/// Default root-only socket of the PAM module (`daemon.pam_socket`, module argument `socket=`).
pub const DEFAULT_PAM_SOCKET: &str = "/run/enforcer/pam.sock";
