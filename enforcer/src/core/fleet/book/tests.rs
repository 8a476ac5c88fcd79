use super::*;

fn early(n: u64, user: &str) -> EarlySlot {
    EarlySlot {
        n,
        user: user.into(),
        key: format!("/enforcer/slots/{user}/node-a/early-1-{n}"),
    }
}

/// The login's decision comes before etcd's count: the count, when it comes, decides the
/// parked connection; within the limit it is held and its key remembered.
#[test]
fn an_adopted_slot_is_decided_when_its_count_comes() {
    let mut book = SlotBook::default();
    let e = early(1, "alice");
    let key = e.key.clone();
    assert_eq!(book.adopt(e, 7, "alice", 2), Ok(()));
    assert_eq!(book.take_ready(7), None);
    let step = book.early_outcome(1, SlotOutcome::Counted(2));
    assert_eq!(step, EarlyStep::Decide(7, SlotOutcome::Counted(2)));
    let EarlyStep::Decide(conn, outcome) = step else {
        unreachable!()
    };
    let d = book.outcome(conn, outcome).unwrap();
    assert_eq!(d.outcome, SlotOutcome::Taken);
    assert_eq!(
        d.settle(true),
        Settled::Held {
            key,
            remember: true
        }
    );
    assert_eq!(book.in_flight(), 0);
}

/// etcd's count comes before the login's decision: it waits, and is ready once the login is
/// adopted; over the limit the early key is deleted.
#[test]
fn a_count_that_came_first_waits_for_its_login() {
    let mut book = SlotBook::default();
    assert_eq!(
        book.early_outcome(3, SlotOutcome::Counted(3)),
        EarlyStep::Wait
    );
    let e = early(3, "alice");
    let key = e.key.clone();
    book.adopt(e, 9, "alice", 2).unwrap();
    let ready = book.take_ready(9).unwrap();
    let d = book.outcome(9, ready).unwrap();
    assert_eq!(d.outcome, SlotOutcome::Full { held: 2 });
    // Refused or not, the early key is the actor's to delete.
    assert_eq!(d.settle(false), Settled::Delete(key.clone()));
    assert_eq!(d.settle(true), Settled::Delete(key));
    assert_eq!(book.in_flight(), 0);
}

/// A slot that is not its login's (refused, no limit, another name) is deleted whichever
/// comes first — unless etcd never answered: the slot task deletes that key itself.
#[test]
fn a_dropped_slot_is_deleted_in_either_order() {
    let mut book = SlotBook::default();
    let e = early(4, "alice");
    let key = e.key.clone();
    assert_eq!(book.drop_early(e), None);
    assert_eq!(
        book.early_outcome(4, SlotOutcome::Counted(1)),
        EarlyStep::Delete(key)
    );

    let e = early(5, "alice");
    let key = e.key.clone();
    assert_eq!(
        book.early_outcome(5, SlotOutcome::Counted(1)),
        EarlyStep::Wait
    );
    assert_eq!(book.drop_early(e), Some(key));

    let unanswered = || SlotOutcome::Unreachable("no answer within 3s".into());
    assert_eq!(book.drop_early(early(6, "alice")), None);
    assert_eq!(book.early_outcome(6, unanswered()), EarlyStep::Wait);
    assert_eq!(book.early_outcome(7, unanswered()), EarlyStep::Wait);
    assert_eq!(book.drop_early(early(7, "alice")), None);
    assert_eq!(book.in_flight(), 0);
}

/// A slot taken under another spelling of the account counts apart from the account's keys:
/// it is given back to be dropped, and the login asks for its own.
#[test]
fn a_slot_under_another_name_is_not_adopted() {
    let mut book = SlotBook::default();
    let e = early(8, "ALICE");
    let back = book.adopt(e.clone(), 1, "alice", 2).unwrap_err();
    assert_eq!(back, e);
    assert_eq!(book.drop_early(back), None);
    book.asked(1, "/enforcer/slots/alice/node-a/1".into(), 2);
    let d = book.outcome(1, SlotOutcome::Taken).unwrap();
    assert_eq!(
        d.settle(true),
        Settled::Held {
            key: "/enforcer/slots/alice/node-a/1".into(),
            remember: false
        }
    );
    assert_eq!(
        book.early_outcome(8, SlotOutcome::Counted(1)),
        EarlyStep::Delete(e.key)
    );
    assert_eq!(book.in_flight(), 0);
}

/// A slot asked for after the decision: its task keeps or deletes its key by itself, except a
/// taken slot whose connection went away meanwhile (the actor deletes it).
#[test]
fn a_late_slot_leaves_its_key_to_its_task_unless_taken_and_unwanted() {
    let mut book = SlotBook::default();
    let key = "/enforcer/slots/bob/node-a/2".to_owned();
    book.asked(2, key.clone(), 1);
    let d = book.outcome(2, SlotOutcome::Taken).unwrap();
    assert_eq!(d.settle(false), Settled::Delete(key.clone()));
    book.asked(3, key.clone(), 1);
    let d = book.outcome(3, SlotOutcome::Full { held: 1 }).unwrap();
    assert_eq!(d.settle(false), Settled::Nothing);
    assert_eq!(d.settle(true), Settled::Nothing);
    book.asked(4, key, 1);
    let d = book
        .outcome(4, SlotOutcome::Unreachable("down".into()))
        .unwrap();
    assert_eq!(d.settle(true), Settled::Nothing);
    assert_eq!(book.outcome(4, SlotOutcome::Taken), None);
    assert_eq!(book.in_flight(), 0);
}

/// An adopted early slot whose connection went away before its count came: a slot it got is
/// deleted; an unanswered one's key is left to the slot task.
#[test]
fn an_adopted_slot_of_a_gone_connection_is_freed_unless_unanswered() {
    let mut book = SlotBook::default();
    let e = early(10, "carol");
    let key = e.key.clone();
    book.adopt(e, 11, "carol", 3).unwrap();
    let EarlyStep::Decide(conn, outcome) = book.early_outcome(10, SlotOutcome::Counted(1)) else {
        panic!("an adopted slot's count decides its connection")
    };
    let d = book.outcome(conn, outcome).unwrap();
    assert_eq!(d.outcome, SlotOutcome::Taken);
    assert_eq!(d.settle(false), Settled::Delete(key));

    book.adopt(early(12, "carol"), 13, "carol", 3).unwrap();
    let unanswered = SlotOutcome::Unreachable("no answer within 3s".into());
    let EarlyStep::Decide(conn, outcome) = book.early_outcome(12, unanswered.clone()) else {
        panic!("an adopted slot's outcome decides its connection")
    };
    let d = book.outcome(conn, outcome).unwrap();
    assert_eq!(d.outcome, unanswered);
    assert_eq!(d.settle(false), Settled::Nothing);
    assert_eq!(d.settle(true), Settled::Nothing);
    assert_eq!(book.in_flight(), 0);
}
