//! File-transfer sessions from the state actor's side: which sessions' commands are transfers,
//! and whether their leader really executed the transfer program with nothing else running in
//! the session (the recorder holds their bytes until told; see `recording::transfer`).

use time::OffsetDateTime;

use super::state::State;
use crate::{
    audit::AuditRecord,
    bpf::Exec,
    core::{
        audit::AuditEvent,
        session::{Session, SessionKind},
        transfer::{self, TransferPlan},
    },
    recording::TransferStart,
};

/// A transfer session being watched: its plan, and the process running its program.
#[derive(Debug)]
pub(super) struct TransferWatch {
    plan: TransferPlan,
    program_pid: Option<u32>,
}

impl State {
    /// At a session's first exec: the transfer its command runs, if any (its recording then
    /// starts held). In every mode: "full" audits the files too, "off" records no bytes.
    pub(super) fn transfer_start(
        &mut self,
        s: &Session,
        audit: AuditRecord,
    ) -> Option<TransferStart> {
        if !matches!(s.kind, SessionKind::Exec | SessionKind::Subsystem) {
            return None;
        }
        let plan = transfer::plan(s.command.as_deref()?)?;
        self.transfers.insert(
            s.id,
            TransferWatch {
                plan: plan.clone(),
                program_pid: None,
            },
        );
        Some(TransferStart {
            plan,
            mode: self.config.recording.file_transfers,
            audit,
        })
    }

    /// The audit fields every `file_transfer` record of a session carries.
    pub(super) fn transfer_record(&self, conn_id: u64, s: &Session) -> AuditRecord {
        let mut rec = AuditRecord::new(AuditEvent::FileTransfer, OffsetDateTime::now_utc());
        if let Some(c) = self.registry.get(conn_id) {
            rec = rec.with_conn(c);
        }
        rec.with_session(s)
    }

    /// An exec in a session that may be a transfer: the system's transfer program executed by
    /// its leader (bash runs a lone command so) or by the leader's child (dash forks and waits),
    /// with no other process in the session, starts it; anything else records the session in
    /// full from here.
    /// `first`: the session's first exec (its shell, unless sshd ran the program directly).
    pub(super) async fn transfer_exec(
        &mut self,
        session_id: u64,
        leader_pid: u32,
        exec: &Exec,
        first: bool,
    ) {
        let Some(w) = self.transfers.get(&session_id) else {
            return;
        };
        let origin = &exec.origin;
        let program = w.program_pid.is_none()
            && (origin.pid == leader_pid || exec.ppid == leader_pid)
            && transfer::is_program(&w.plan, &exec.filename);
        if first && !program {
            // The shell that runs the command: its exec of the program comes next.
            return;
        }
        let alone = program
            && self
                .alone_in_session(origin.conn_id, origin.session_id, origin.pid)
                .await;
        let Some(recorder) = &self.recorder else {
            return;
        };
        if alone {
            if let Some(w) = self.transfers.get_mut(&session_id) {
                w.program_pid = Some(origin.pid);
            }
            recorder.transfer_started(session_id, origin.boot_ns);
        } else {
            self.transfers.remove(&session_id);
            recorder.transfer_aborted(session_id, origin.boot_ns, false);
        }
    }

    /// A process of a session ended: the transfer program's end ends the transfer (whatever
    /// its shell does afterwards is recorded).
    pub(super) fn transfer_exit(&mut self, session_id: u64, pid: u32, boot_ns: u64) {
        let ended = self
            .transfers
            .get(&session_id)
            .is_some_and(|w| w.program_pid == Some(pid));
        if !ended {
            return;
        }
        self.transfers.remove(&session_id);
        if let Some(recorder) = &self.recorder {
            recorder.transfer_aborted(session_id, boot_ns, true);
        }
    }

    /// Whether the session holds only its leader and the program's process `pid`: a process
    /// started before (by the shell's startup files, say) could share the channel with it.
    async fn alone_in_session(&self, conn_id: u64, session_id: u64, pid: u32) -> bool {
        match self.bpf.census().await {
            Ok(tasks) => {
                let others: Vec<u32> = tasks
                    .iter()
                    .filter(|(tid, t)| {
                        t.conn_id == conn_id
                            && t.session_id == session_id
                            && u64::from(*tid) != session_id
                            && *tid != pid
                    })
                    .map(|(tid, _)| *tid)
                    .collect();
                if !others.is_empty() {
                    tracing::info!(
                        conn = conn_id,
                        ?others,
                        "a transfer session has other processes: recorded in full"
                    );
                }
                others.is_empty()
            }
            Err(e) => {
                tracing::warn!(error = %e, "task census failed; transfer session recorded in full");
                false
            }
        }
    }

    /// The session ended.
    pub(super) fn transfer_ended(&mut self, session_id: u64) {
        self.transfers.remove(&session_id);
    }
}
