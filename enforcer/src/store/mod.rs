//! Recordings in S3-compatible storage (`[recording.store]`): the client edge, the uploader task
//! that ships recordings while their sessions run, what it remembers across restarts, and the
//! catalog that lists and finds stored recordings of every node. Decisions are in
//! `core::upload`.

pub mod catalog;
mod client;
mod spool;
mod uploader;

pub use client::{ObjectHead, PartDone, Store, StoreError};
pub use uploader::{StoreStats, start};
