//! Session recordings: every pty session's terminal stream (output, input, window size), and the
//! stdout/stderr of exec sessions, as asciicast v2 files, written while the session runs.
//!
//! A dedicated thread (the recorder) owns the kernel's data ring and the open files; the state
//! actor tells it when a session starts (which channels are its) and ends. `store` finds and
//! describes recordings on disk; `index` keeps that in memory (scanned once, then updated by the
//! recorder) for listing and playback.

pub mod cast;
mod escape;
mod file;
mod header;
mod index;
mod recorder;
pub mod store;
mod transfer;

pub use index::RecordingIndex;
pub use recorder::{
    RecorderHandle, RecorderMaps, RecorderStats, Resume, StartRecording, WatchFrame, start,
};
pub use transfer::TransferStart;
