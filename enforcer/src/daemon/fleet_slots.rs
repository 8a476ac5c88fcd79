//! Fleet-wide connection slots on the actor's side: asked for, adopted when taken early,
//! decided, kept or freed.
//!
//! Slots taken as the account request arrives (`fleet::EarlySlot`): etcd counts
//! the user's slots while NSS answers and the actor decides, so a login under a fleet-wide
//! limit waits for the slower of the two instead of both in turn. The early slot is put under
//! the name PAM gave; the actor adopts it only for a login it admits under a fleet limit whose
//! account is that name (`core::fleet::early_slot_fits`), and deletes it in every other case —
//! a refusal, no limit for this user, a stale view, another spelling of the account. Its
//! outcome and the login's decision may come in either order: whichever comes second settles
//! it. Exactness is the one-transaction count's (`core::fleet::slot_decision`): a login holds
//! a slot only when its own key's transaction counted the account's keys within the limit.

use enforcer_proto::{Admission, ErrorKind, ErrorReply, Reply};
use time::OffsetDateTime;

use super::state::State;
use crate::{
    config::OnUnreachable,
    core::{
        fleet::{self as core_fleet, early_slot_fits},
        policy::Refusal,
    },
    fleet::{EarlySlot, SLOT_DEADLINE, SlotOutcome},
};

/// The slot a connection waits for.
#[derive(Debug)]
pub(super) struct PendingSlot {
    pub key: String,
    pub limit: u32,
    /// Taken early: its outcome is a count, and its key is the actor's to keep or free (the
    /// slot task keeps or frees the others' itself).
    pub early: bool,
}

impl PendingSlot {
    /// One asked for under `limit` once the login was decided.
    pub fn asked(key: String, limit: u32) -> Self {
        PendingSlot {
            key,
            limit,
            early: false,
        }
    }

    /// The outcome under this slot's limit (an early slot's count is decided here).
    pub fn decide(&self, outcome: SlotOutcome) -> SlotOutcome {
        match outcome {
            SlotOutcome::Counted(count) => SlotOutcome::decided(count, self.limit),
            o => o,
        }
    }
}

/// Where an early slot stands while its outcome or its login's decision is missing.
#[derive(Debug)]
pub(super) enum EarlyWait {
    /// The outcome came first.
    Arrived(SlotOutcome),
    /// Adopted by this connection, whose answer waits for the outcome.
    Adopted(u64),
    /// Not the login's slot: its key goes once the transaction answered.
    Dropped(String),
}

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
            match self.adopt_early_slot(e, conn_id, &account, limit) {
                None => return,
                Some(e) => self.drop_early_slot(e),
            }
        }
        let Some(f) = &self.fleet else { return };
        let key = f.acquire(&account, conn_id, limit, SLOT_DEADLINE);
        self.fleet_state
            .pending
            .insert(conn_id, PendingSlot::asked(key, limit));
    }

    /// A slot's outcome: answer the parked account request.
    pub(super) async fn on_slot(&mut self, conn_id: u64, outcome: SlotOutcome) {
        let Some(pending) = self.fleet_state.pending.remove(&conn_id) else {
            return;
        };
        let outcome = pending.decide(outcome);
        let asked_limit = pending.limit;
        let Some(reply) = self.fleet_state.awaiting.remove(&conn_id) else {
            self.settle_slot(pending, &outcome, false);
            return;
        };
        let now = OffsetDateTime::now_utc();
        if self.registry.get(conn_id).is_none() {
            // Its monitor ended meanwhile (released): free a slot it got.
            self.settle_slot(pending, &outcome, false);
            let _ = reply.send(Err(ErrorReply::new(
                ErrorKind::BadRequest,
                "the connection ended while its fleet-wide slot was taken",
            )));
            return;
        }
        let taken = outcome == SlotOutcome::Taken;
        if let Some(key) = self.settle_slot(pending, &outcome, taken) {
            self.fleet_state.slots.insert(conn_id, key);
        }
        let refusal = match outcome {
            SlotOutcome::Taken => None,
            // (`Counted` cannot remain after `decide`; refused if it ever did.)
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
        match self.fleet_state.early.remove(&n) {
            Some(EarlyWait::Adopted(conn_id)) => self.on_slot(conn_id, outcome).await,
            Some(EarlyWait::Dropped(key)) => self.free_early_key(&key, &outcome),
            Some(EarlyWait::Arrived(_)) | None => {
                self.fleet_state
                    .early
                    .insert(n, EarlyWait::Arrived(outcome));
            }
        }
    }

    /// Makes `early` connection `conn_id`'s slot under `limit` when it was taken under the
    /// login's account; gives it back otherwise (to be dropped).
    pub(super) fn adopt_early_slot(
        &mut self,
        early: EarlySlot,
        conn_id: u64,
        account: &str,
        limit: u32,
    ) -> Option<EarlySlot> {
        if !early_slot_fits(&early.user, account) {
            return Some(early);
        }
        self.fleet_state.pending.insert(
            conn_id,
            PendingSlot {
                key: early.key,
                limit,
                early: true,
            },
        );
        match self.fleet_state.early.remove(&early.n) {
            // Answered when the reply is parked (`pam_account_or_wait`).
            Some(EarlyWait::Arrived(outcome)) => {
                self.fleet_state.ready.insert(conn_id, outcome);
            }
            _ => {
                self.fleet_state
                    .early
                    .insert(early.n, EarlyWait::Adopted(conn_id));
            }
        }
        None
    }

    /// `early` is not its login's slot: its key is deleted (now, or once it is answered).
    pub(super) fn drop_early_slot(&mut self, early: EarlySlot) {
        match self.fleet_state.early.remove(&early.n) {
            Some(EarlyWait::Arrived(outcome)) => self.free_early_key(&early.key, &outcome),
            _ => {
                self.fleet_state
                    .early
                    .insert(early.n, EarlyWait::Dropped(early.key));
            }
        }
    }

    /// Keeps (`keep`, when taken) or frees the key of `slot` after `outcome`; returns the key
    /// kept. An unanswered transaction's key is freed by the slot task already.
    pub(super) fn settle_slot(
        &self,
        slot: PendingSlot,
        outcome: &SlotOutcome,
        keep: bool,
    ) -> Option<String> {
        let f = self.fleet.as_ref()?;
        match (outcome, keep) {
            (SlotOutcome::Taken, true) => {
                if slot.early {
                    f.keep_slot(&slot.key);
                }
                Some(slot.key)
            }
            (SlotOutcome::Taken, false) => {
                f.drop_slot(&slot.key);
                None
            }
            (SlotOutcome::Full { .. } | SlotOutcome::Counted(_), _) if slot.early => {
                f.drop_slot(&slot.key);
                None
            }
            _ => None,
        }
    }

    fn free_early_key(&self, key: &str, outcome: &SlotOutcome) {
        if let (Some(f), false) = (&self.fleet, matches!(outcome, SlotOutcome::Unreachable(_))) {
            f.drop_slot(key);
        }
    }
}
