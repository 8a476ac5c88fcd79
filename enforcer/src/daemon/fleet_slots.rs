//! Fleet-wide connection slots on the actor's side: asked for, adopted when taken early,
//! decided, kept or freed — as `core::fleet::book` says; this module does what it says
//! (answers the parked login, keeps or deletes keys in etcd).

use enforcer_proto::{Admission, ErrorKind, ErrorReply, Reply};
use time::OffsetDateTime;

use super::state::State;
use crate::{
    config::OnUnreachable,
    core::{
        fleet::{
            self as core_fleet,
            book::{EarlyStep, Settled},
        },
        policy::Refusal,
    },
    fleet::{EarlySlot, SLOT_DEADLINE, SlotOutcome},
};

impl State {
    /// Takes a fleet-wide slot for connection `conn_id` under `limit`: adopts the one taken
    /// early when it is this login's, else asks for one now.
    pub(super) fn fleet_acquire(
        &mut self,
        conn_id: u64,
        limit: u32,
        early: Option<crate::fleet::EarlySlot>,
    ) {
        let account = match self.registry.get(conn_id) {
            Some(c) if self.fleet.is_some() => c.account().to_owned(),
            _ => {
                if let Some(e) = early {
                    self.drop_early_slot(e);
                }
                return;
            }
        };
        if let Some(e) = early {
            match self.fleet_state.book.adopt(e, conn_id, &account, limit) {
                Ok(()) => return,
                Err(e) => self.drop_early_slot(e),
            }
        }
        let Some(f) = &self.fleet else { return };
        let key = f.acquire(&account, conn_id, limit, SLOT_DEADLINE);
        self.fleet_state.book.asked(conn_id, key, limit);
    }

    /// A slot's outcome: answer the parked account request.
    pub(super) async fn on_slot(&mut self, conn_id: u64, outcome: SlotOutcome) {
        let Some(decided) = self.fleet_state.book.outcome(conn_id, outcome) else {
            return;
        };
        let Some(reply) = self.fleet_state.awaiting.remove(&conn_id) else {
            self.settle_slot(conn_id, decided.settle(false));
            return;
        };
        let now = OffsetDateTime::now_utc();
        if self.registry.get(conn_id).is_none() {
            // Its monitor ended meanwhile (released): free a slot it got.
            self.settle_slot(conn_id, decided.settle(false));
            let _ = reply.send(Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "the connection ended while its fleet-wide slot was taken",
            )));
            return;
        }
        self.settle_slot(conn_id, decided.settle(true));
        let asked_limit = decided.slot.limit;
        let outcome = decided.outcome;
        let refusal = match outcome {
            SlotOutcome::Taken => None,
            // (`Counted` cannot remain after `SlotBook::outcome`; refused if it ever did.)
            SlotOutcome::Full { .. } | SlotOutcome::Counted(_) => {
                let limit = self.registry.get(conn_id).map_or(asked_limit, |c| {
                    core_fleet::fleet_connection_limit(&self.config, c.who())
                });
                Some(Refusal::FleetUserLimit { limit })
            }
            SlotOutcome::Unreachable(why) => {
                tracing::warn!(conn = conn_id, error = %why, "no fleet-wide slot: etcd did not answer");
                match self.config.fleet.on_unreachable {
                    OnUnreachable::Strict => Some(Refusal::FleetUnreachable),
                    OnUnreachable::BestEffort => None,
                }
            }
        };
        let answer = match refusal {
            Some(r) => match self.registry.remove(conn_id) {
                Some(conn) => {
                    self.dirty = true;
                    self.unregister_refused(&conn).await;
                    self.refuse(&conn, &r, now)
                }
                None => Admission::Refused {
                    reason: r.code().into(),
                    message: r.message(""),
                },
            },
            // The kernel follows it since `pam_account`.
            None => Admission::Admitted { conn_id },
        };
        let _ = reply.send(Ok(Reply::Admission(answer)));
    }

    /// An early slot's transaction answered.
    pub(super) async fn on_early_slot(&mut self, n: u64, outcome: SlotOutcome) {
        match self.fleet_state.book.early_outcome(n, outcome) {
            EarlyStep::Decide(conn_id, outcome) => self.on_slot(conn_id, outcome).await,
            EarlyStep::Delete(key) => self.delete_slot_key(&key),
            EarlyStep::Wait => {}
        }
    }

    /// `early` is not its login's slot: its key is deleted (now, or once it is answered).
    pub(super) fn drop_early_slot(&mut self, early: EarlySlot) {
        if let Some(key) = self.fleet_state.book.drop_early(early) {
            self.delete_slot_key(&key);
        }
    }

    /// Does what the book says of connection `conn_id`'s decided slot: a held one is the
    /// connection's (freed at its logout).
    fn settle_slot(&mut self, conn_id: u64, settled: Settled) {
        match settled {
            Settled::Held { key, remember } => {
                let Some(f) = &self.fleet else { return };
                if remember {
                    f.keep_slot(&key);
                }
                self.fleet_state.slots.insert(conn_id, key);
            }
            Settled::Delete(key) => self.delete_slot_key(&key),
            Settled::Nothing => {}
        }
    }

    fn delete_slot_key(&self, key: &str) {
        if let Some(f) = &self.fleet {
            f.drop_slot(key);
        }
    }
}
