//! The control socket: length-prefixed JSON requests, authorised per request from the peer's
//! SO_PEERCRED credentials.

pub mod authz;
mod peer;
mod server;
mod stream;

pub use authz::{Role, authorize};
pub use peer::Peer;
pub use server::{ControlError, Server};
