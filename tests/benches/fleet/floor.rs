//! etcd's own floor for an admission's slot: the same transaction the daemon's slot task sends
//! (put the slot under a lease, count the user's slots), timed from this process over a
//! client connected like the daemon's (every member's endpoint), and over one connected to the
//! leader only (a follower forwards each proposal to the leader: one more hop).

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};

/// A client like the daemon's, and one to the leader only.
pub struct Floor {
    rt: tokio::runtime::Runtime,
    all: Client,
    leader: Client,
    lease: i64,
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
            let lease = all.lease_grant(3600, None).await.unwrap().id();
            (all, leader.expect("the cluster has a leader"), lease)
        });
        Floor {
            rt,
            all,
            leader,
            lease,
            n: 0,
        }
    }

    /// One slot transaction (then its delete, untimed) over every endpoint or the leader's.
    pub fn slot(&mut self, leader_only: bool) -> Duration {
        self.n += 1;
        let key = format!("{PREFIX}{}", self.n);
        let txn = Txn::new().and_then([
            TxnOp::put(
                key.clone(),
                "node",
                Some(PutOptions::new().with_lease(self.lease)),
            ),
            TxnOp::get(
                PREFIX,
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        ]);
        let c = if leader_only {
            &mut self.leader
        } else {
            &mut self.all
        };
        self.rt.block_on(async {
            let t = Instant::now();
            c.txn(txn).await.unwrap();
            let took = t.elapsed();
            c.delete(key, None).await.unwrap();
            took
        })
    }
}
