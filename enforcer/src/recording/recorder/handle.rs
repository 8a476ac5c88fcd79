//! How the rest of the daemon talks to the recorder thread: its commands and a cloneable
//! handle that sends them and wakes the thread.

use std::{
    sync::{
        Arc,
        mpsc::{self, Sender},
    },
    time::Duration,
};

use nix::sys::eventfd::EventFd;

use super::{RecorderStats, StartRecording, WatchFrame};

pub(super) enum Command {
    Start(Box<StartRecording>),
    End {
        session_id: u64,
    },
    Watch {
        session_id: u64,
        frames: tokio::sync::mpsc::Sender<WatchFrame>,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// A transfer session's leader executed its program at `boot_ns`.
    TransferStarted {
        session_id: u64,
        boot_ns: u64,
    },
    /// Not (or no longer) a transfer: record in full from `since_ns`.
    TransferAborted {
        session_id: u64,
        since_ns: u64,
        program_ended: bool,
    },
    /// The Kubernetes user behind an exec session (`None`: not found out): its header is
    /// final.
    Identified {
        session_id: u64,
        who: Option<(String, Vec<String>)>,
    },
    Shutdown(Sender<()>),
}

/// Talks to the recorder thread.
#[derive(Clone)]
pub struct RecorderHandle {
    pub(super) tx: Sender<Command>,
    /// Wakes the thread from its poll so commands do not wait for the next timer.
    pub(super) wake: Arc<EventFd>,
    pub stats: Arc<RecorderStats>,
}

impl RecorderHandle {
    fn send(&self, cmd: Command) -> Result<(), ()> {
        self.tx.send(cmd).map_err(|_| ())?;
        let _ = self.wake.write(1);
        Ok(())
    }

    pub fn start_recording(&self, s: StartRecording) {
        let _ = self.send(Command::Start(Box::new(s)));
    }

    pub fn end_recording(&self, session_id: u64) {
        let _ = self.send(Command::End { session_id });
    }

    /// The fleet answered who exec session `session_id` is (`who`: user and groups; `None`:
    /// nobody found): its recording's header gets them, and it may be uploaded from now on.
    pub fn identified(&self, session_id: u64, who: Option<(String, Vec<String>)>) {
        let _ = self.send(Command::Identified { session_id, who });
    }

    pub fn transfer_started(&self, session_id: u64, boot_ns: u64) {
        let _ = self.send(Command::TransferStarted {
            session_id,
            boot_ns,
        });
    }

    /// `program_ended`: the transfer program exited (else: something else ran).
    pub fn transfer_aborted(&self, session_id: u64, since_ns: u64, program_ended: bool) {
        let _ = self.send(Command::TransferAborted {
            session_id,
            since_ns,
            program_ended,
        });
    }

    /// Subscribes to a live session: the current screen first, then what follows.
    pub async fn watch(
        &self,
        session_id: u64,
        frames: tokio::sync::mpsc::Sender<WatchFrame>,
    ) -> Result<(), String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Watch {
            session_id,
            frames,
            reply,
        })
        .map_err(|_| "the recorder has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the recorder has stopped".to_owned())?
    }

    /// Flushes and closes every recording.
    pub fn shutdown(&self) {
        let (tx, rx) = mpsc::channel();
        if self.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}
