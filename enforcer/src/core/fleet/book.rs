//! The state actor's book of fleet-wide connection slots: the slot each connection waits for,
//! and the slots taken as account requests arrived ([`EarlySlot`]), whose transaction's
//! outcome and whose login's decision come in either order — whichever comes second settles
//! the slot. Pure: it says which key to keep, to delete, and which connection to answer; the
//! actor does it.
//!
//! An early slot is put under the name PAM gave, before the login's rules are known: the
//! actor adopts it only for a login it admits under a fleet limit whose account is that name
//! ([`super::early_slot_fits`]), and its key is deleted in every other case. Exactness stays
//! the one-transaction count's ([`super::slot_decision`]): a login holds a slot only when its
//! own key's transaction counted the account's keys within the limit.

use std::collections::HashMap;

use super::slot_decision;

/// What became of a slot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// The slot is this connection's.
    Taken,
    /// An early slot's key is put; the user holds `count` keys with it (the limit decides).
    Counted(i64),
    /// `held` slots (≥ the limit) are taken across the fleet.
    Full { held: usize },
    /// etcd could not be asked in time (the text says why). Its key, if the transaction
    /// committed after all, is deleted by the slot task.
    Unreachable(String),
}

impl SlotOutcome {
    /// What `count` keys of the user (the login's own among them) mean under `limit`.
    pub fn decided(count: i64, limit: u32) -> Self {
        match slot_decision(count, limit) {
            Ok(()) => SlotOutcome::Taken,
            Err(held) => SlotOutcome::Full { held },
        }
    }
}

/// A connection slot asked for as the login's account request arrived, in parallel with the
/// NSS lookup and the local decision, under the name PAM gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlySlot {
    pub n: u64,
    pub user: String,
    pub key: String,
}

/// The slot a connection waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSlot {
    pub key: String,
    pub limit: u32,
    /// Taken early: its outcome is a count, and its key is the actor's to keep or delete (the
    /// slot task keeps or deletes the others' itself).
    pub early: bool,
}

/// Where an early slot stands while its outcome or its login's decision is missing.
#[derive(Debug)]
enum EarlyWait {
    /// The outcome came first.
    Arrived(SlotOutcome),
    /// Adopted by this connection, whose answer waits for the outcome.
    Adopted(u64),
    /// Not the login's slot: its key goes once the transaction answered.
    Dropped(String),
}

/// What an early slot's outcome leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum EarlyStep {
    /// Adopted by this connection: decide it with the outcome ([`SlotBook::outcome`]).
    Decide(u64, SlotOutcome),
    /// Not its login's slot: delete this key.
    Delete(String),
    /// Kept until its login is decided (or nothing to do).
    Wait,
}

/// A connection's slot with its outcome under the slot's limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Decided {
    pub slot: PendingSlot,
    pub outcome: SlotOutcome,
}

/// What to do with a decided slot's key.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// The connection holds the slot under `key`; `remember`: keep the key under the node's
    /// lease from now on (an early slot's, which its task left to the actor).
    Held { key: String, remember: bool },
    /// Delete this key.
    Delete(String),
    /// Nothing: nothing was put, or the slot task deletes it.
    Nothing,
}

/// The actor's fleet-wide connection slots in flight (see the module doc).
#[derive(Debug, Default)]
pub struct SlotBook {
    pending: HashMap<u64, PendingSlot>,
    early: HashMap<u64, EarlyWait>,
    /// Outcomes of adopted early slots that came before their answer was parked.
    ready: HashMap<u64, SlotOutcome>,
}

impl SlotBook {
    /// Connection `conn` waits for slot `key`, asked for under `limit` once it was decided.
    pub fn asked(&mut self, conn: u64, key: String, limit: u32) {
        let slot = PendingSlot {
            key,
            limit,
            early: false,
        };
        self.pending.insert(conn, slot);
    }

    /// Makes `early` connection `conn`'s slot under `limit` when it was taken under the
    /// login's `account`; gives it back otherwise (to be dropped, [`SlotBook::drop_early`]).
    pub fn adopt(
        &mut self,
        early: EarlySlot,
        conn: u64,
        account: &str,
        limit: u32,
    ) -> Result<(), EarlySlot> {
        if !super::early_slot_fits(&early.user, account) {
            return Err(early);
        }
        let slot = PendingSlot {
            key: early.key,
            limit,
            early: true,
        };
        self.pending.insert(conn, slot);
        match self.early.remove(&early.n) {
            // Answered once the login's reply is parked (`take_ready`).
            Some(EarlyWait::Arrived(outcome)) => {
                self.ready.insert(conn, outcome);
            }
            _ => {
                self.early.insert(early.n, EarlyWait::Adopted(conn));
            }
        }
        Ok(())
    }

    /// `early` is not its login's slot: the key to delete now, or `None` when it goes once
    /// its transaction answered ([`SlotBook::early_outcome`]).
    pub fn drop_early(&mut self, early: EarlySlot) -> Option<String> {
        match self.early.remove(&early.n) {
            Some(EarlyWait::Arrived(outcome)) => put_key(early.key, &outcome),
            _ => {
                self.early.insert(early.n, EarlyWait::Dropped(early.key));
                None
            }
        }
    }

    /// Early slot `n`'s transaction answered.
    pub fn early_outcome(&mut self, n: u64, outcome: SlotOutcome) -> EarlyStep {
        match self.early.remove(&n) {
            Some(EarlyWait::Adopted(conn)) => EarlyStep::Decide(conn, outcome),
            Some(EarlyWait::Dropped(key)) => match put_key(key, &outcome) {
                Some(key) => EarlyStep::Delete(key),
                None => EarlyStep::Wait,
            },
            Some(EarlyWait::Arrived(_)) | None => {
                self.early.insert(n, EarlyWait::Arrived(outcome));
                EarlyStep::Wait
            }
        }
    }

    /// The outcome of `conn`'s adopted early slot when it came before the login's reply was
    /// parked.
    pub fn take_ready(&mut self, conn: u64) -> Option<SlotOutcome> {
        self.ready.remove(&conn)
    }

    /// `conn`'s slot with `outcome` decided under its limit (an early slot's count is decided
    /// here); `None` when `conn` waits for no slot.
    pub fn outcome(&mut self, conn: u64, outcome: SlotOutcome) -> Option<Decided> {
        let slot = self.pending.remove(&conn)?;
        let outcome = match outcome {
            SlotOutcome::Counted(count) => SlotOutcome::decided(count, slot.limit),
            o => o,
        };
        Some(Decided { slot, outcome })
    }

    /// Entries in flight: none once every slot is settled.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.early.len() + self.ready.len()
    }
}

impl Decided {
    /// What becomes of the key: held when the slot was taken and the connection `keep`s it
    /// (admitted and still there), deleted when it was put but is not kept.
    pub fn settle(&self, keep: bool) -> Settled {
        let key = self.slot.key.clone();
        match (&self.outcome, keep) {
            (SlotOutcome::Taken, true) => Settled::Held {
                key,
                remember: self.slot.early,
            },
            (SlotOutcome::Taken, false) => Settled::Delete(key),
            // A full count's key: the slot task deletes a late slot's, the actor an early one's.
            (SlotOutcome::Full { .. } | SlotOutcome::Counted(_), _) if self.slot.early => {
                Settled::Delete(key)
            }
            _ => Settled::Nothing,
        }
    }
}

/// `key` when its transaction put it (an unanswered one's is the slot task's to delete).
fn put_key(key: String, outcome: &SlotOutcome) -> Option<String> {
    match outcome {
        SlotOutcome::Unreachable(_) => None,
        _ => Some(key),
    }
}

#[cfg(test)]
mod tests;
