//! etcd's own floor for an admission's slot: the same transaction the daemon's slot task sends
//! (compare the user's slot prefix, put the slot under a lease), timed from this process over a
//! client connected like the daemon's (every member's endpoint), and over one connected to the
//! leader only (a follower forwards each proposal to the leader: one more hop).

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

/// A client like the daemon's, and one to the leader only.
pub struct Floor {
    rt: tokio::runtime::Runtime,
    all: Client,
    leader: Client,
    lease: i64,
    rev: i64,
    n: u64,
}

const PREFIX: &str = "/enforcer-floor/slots/u/";

impl Floor {
    pub fn connect(endpoints: &[String]) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (all, leader, lease) = rt.block_on(async {
            let mut all = Client::connect(endpoints, None).await.unwrap();
            let mut leader = None;
            for e in endpoints {
                let mut c = Client::connect([e], None).await.unwrap();
                let st = c.status().await.unwrap();
                if st.header().map(|h| h.member_id()) == Some(st.leader()) {
                    leader = Some(c);
                }
            }
            let lease = all.lease_grant(60, None).await.unwrap().id();
            (all, leader.expect("the cluster has a leader"), lease)
        });
        Floor {
            rt,
            all,
            leader,
            lease,
            rev: 0,
            n: 0,
        }
    }

    /// One slot transaction (then its delete, untimed) over every endpoint or the leader's.
    pub fn slot(&mut self, leader_only: bool) -> Duration {
        self.n += 1;
        let key = format!("{PREFIX}{}", self.n);
        let txn = Txn::new()
            .when([Compare::mod_revision(PREFIX, CompareOp::Less, self.rev + 1).with_prefix()])
            .and_then([TxnOp::put(
                key.clone(),
                "node",
                Some(PutOptions::new().with_lease(self.lease)),
            )])
            .or_else([TxnOp::get(
                PREFIX,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )]);
        let c = if leader_only {
            &mut self.leader
        } else {
            &mut self.all
        };
        let (took, rev) = self.rt.block_on(async {
            let t = Instant::now();
            let r = c.txn(txn).await.unwrap();
            let took = t.elapsed();
            c.delete(key, None).await.unwrap();
            (took, r.header().map(|h| h.revision()).unwrap_or(0))
        });
        // The delete leaves the prefix empty: any revision compares.
        self.rev = rev;
        took
    }
}
