//! The control sockets: length-prefixed JSON requests, authorised per request from the peer's
//! SO_PEERCRED credentials. Unprivileged peers are held to caps (connections per uid, frame
//! size, read and idle deadlines); the PAM module has a root-only socket of its own.

pub mod authz;
mod conn;
mod fleet;
mod limits;
mod peer;
mod server;
mod stored;
mod stream;

pub use authz::{Role, authorize};
pub use conn::Ctx;
pub use limits::{ControlSettings, ControlStats, SharedSettings, Slots};
pub use peer::Peer;
pub use server::{ControlError, Lane, Server};
