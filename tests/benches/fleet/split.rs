//! Where a fleet admission's time goes, from the node's own debug lines (the bench runs its
//! daemons with `enforcer::control::conn` and `enforcer::fleet::slots` at debug): for each
//! admission that took a slot as its request arrived, etcd's transaction as the daemon timed
//! it (`slot transaction answered early=N txn_us=…`), the daemon's answer from the request's
//! arrival (`PAM account answered early=N decision_us=…`), and the bench's own round trip.
//! What is left over etcd is the daemon's share (answer − transaction) and the socket's
//! (round trip − answer). Writing the two lines costs a few µs per admission, inside the
//! daemon's and the socket's shares.

use std::{collections::HashMap, time::Duration};

/// The daemon log filter the bench starts its nodes with: production's `info`, plus the two
/// timing lines per admission this module reads.
pub const LOG_FILTER: &str = "info,enforcer::control::conn=debug,enforcer::fleet::slots=debug";

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Per admission with an early slot, in the order the daemon answered: (transaction,
/// answer). Admissions without an early slot (no fleet limit) are not in it.
pub fn from_log(log: &str) -> Vec<(Duration, Duration)> {
    let mut txn = HashMap::new();
    let mut answers = Vec::new();
    for line in log.lines() {
        let Some(n) = field(line, "early") else {
            // A login whose early slot was not adopted waited for a second transaction: its
            // answer would be paired with the wrong one.
            assert!(
                !line.contains("slot transaction answered"),
                "a fleet admission took its slot late; the split cannot pair it: {line}"
            );
            continue;
        };
        if line.contains("slot transaction answered") {
            if let Some(us) = field(line, "txn_us") {
                txn.insert(n, Duration::from_micros(us));
            }
        } else if line.contains("PAM account answered") {
            if let Some(us) = field(line, "decision_us") {
                answers.push((n, Duration::from_micros(us)));
            }
        }
    }
    answers
        .into_iter()
        .filter_map(|(n, answer)| Some((*txn.get(&n)?, answer)))
        .collect()
}

/// Prints the split of `client` (the bench's round trips, in order) against the daemon's
/// lines for the same admissions.
pub fn show(client: &[Duration], daemon: &[(Duration, Duration)]) {
    assert_eq!(
        client.len(),
        daemon.len(),
        "every fleet admission must have its two timing lines in the node's log"
    );
    let (mut txn, mut own, mut socket) = (vec![], vec![], vec![]);
    for (c, (t, a)) in client.iter().zip(daemon) {
        txn.push(*t);
        own.push(a.saturating_sub(*t));
        socket.push(c.saturating_sub(*a));
    }
    super::show("  of which etcd's transaction, timed in the daemon", txn);
    super::show("  of which the daemon's answer after etcd's", own);
    super::show("  of which the PAM socket round trip", socket);
}
