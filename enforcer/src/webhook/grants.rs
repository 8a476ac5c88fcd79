//! The webhook's etcd side. ONE transaction per review reads the fleet locks that may refuse
//! it (the user's, and every group lock: one range, however many groups the user is in),
//! puts its grant and counts the user's grants; a refused
//! review then deletes its grant. An allowed exec therefore costs one round trip, and the
//! per-user limit is exact the way fleet slots are (`core::fleet::slot_decision`): of any
//! L + 1 grants alive at once, the last one's transaction counted the other L.
//!
//! Grants live under short leases shared by the reviews of a few seconds (one lease per
//! quarter of `grant_ttl`, each living `grant_ttl` and a quarter more), so a review never
//! waits for a lease of its own: a grant lives between `grant_ttl` and 1.25 × `grant_ttl`.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

use crate::{
    core::{
        fleet::{FleetLock, Keys, LockTarget, slot_decision},
        kube::admission::{Denial, ExecGrant, lock_denial, lock_targets},
    },
    fleet::timed,
};

/// What etcd decided for one review.
#[derive(Debug)]
pub enum Decided {
    /// Allowed; its grant is in etcd.
    Allowed,
    Denied(Denial),
}

/// Grants of allowed execs in etcd.
pub struct Grants {
    client: watch::Receiver<Option<Client>>,
    keys: Keys,
    ttl: Duration,
    /// The lease grants are put under now, and when it was granted.
    lease: Mutex<Option<(i64, Instant)>>,
}

impl Grants {
    pub fn new(client: watch::Receiver<Option<Client>>, keys: Keys, ttl: Duration) -> Self {
        Grants {
            client,
            keys,
            ttl,
            lease: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<Client, String> {
        self.client
            .borrow()
            .clone()
            .ok_or_else(|| "not connected to etcd yet".to_owned())
    }

    /// A lease with at least `ttl` left: the current one, or a new one once it is a quarter
    /// of `ttl` old.
    async fn lease(&self, client: &mut Client) -> Result<i64, String> {
        let bucket = self.ttl / 4;
        let mut current = self.lease.lock().await;
        if let Some((id, at)) = *current
            && at.elapsed() < bucket
        {
            return Ok(id);
        }
        let secs = (self.ttl + bucket).as_secs().max(2) as i64;
        let id = timed(client.lease_grant(secs, None)).await?.id();
        *current = Some((id, Instant::now()));
        Ok(id)
    }

    /// Decides `grant` against the fleet's locks and, when `limit` > 0, the user's grants.
    pub async fn decide(
        &self,
        grant: &ExecGrant,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Decided, String> {
        let mut client = self.client()?;
        let keys = [
            self.keys.exec_grant(&grant.user, &grant.review),
            self.keys
                .exec_grant_of_pod(&grant.namespace, &grant.pod, &grant.review),
        ];
        // Decided on every group; stored bounded.
        let value = serde_json::to_vec(&grant.bounded()).map_err(|e| e.to_string())?;
        let resp = match self
            .put_and_read(&mut client, &grant.user, &keys, &value)
            .await
        {
            // A lease that expired under us (etcd restored, clock jump): once more on a new one.
            Err(e) if e.contains("lease not found") => {
                *self.lease.lock().await = None;
                self.put_and_read(&mut client, &grant.user, &keys, &value)
                    .await?
            }
            r => r?,
        };
        // The user's lock, every group lock (one range: a user may be in hundreds of groups,
        // more than a transaction may hold operations), then the count.
        let targets = lock_targets(grant);
        let mut found = Vec::new();
        let mut count = 0;
        let group_locks = format!("{}group/", self.keys.locks());
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = op else { continue };
            match i {
                0 => {
                    found.extend(g.kvs().first().map(|kv| {
                        FleetLock::decode(LockTarget::User(grant.user.clone()), kv.value())
                    }))
                }
                1 => found.extend(g.kvs().iter().filter_map(|kv| {
                    let name = kv.key_str().ok()?.strip_prefix(&group_locks)?;
                    let target = LockTarget::Group(name.to_owned());
                    targets
                        .contains(&target)
                        .then(|| FleetLock::decode(target, kv.value()))
                })),
                _ => count = g.count(),
            }
        }
        let denial = lock_denial(&found, now).or_else(|| {
            (limit > 0)
                .then(|| slot_decision(count, limit).err())
                .flatten()
                .map(|held| Denial::ExecLimit { limit, held })
        });
        match denial {
            None => Ok(Decided::Allowed),
            Some(d) => {
                // The pod's key first (no node may claim it), then the user's: one at a time,
                // as nodes tell a lapsed grant by both going in one revision
                // (`core::kube::admission::lapsed_grants`).
                for key in keys.iter().rev() {
                    if let Err(e) = timed(client.delete(key.as_str(), None)).await {
                        // It expires with its lease; until then it counts against the user.
                        tracing::warn!(key, error = %e, "cannot delete a refused exec's grant");
                        break;
                    }
                }
                Ok(Decided::Denied(d))
            }
        }
    }

    async fn put_and_read(
        &self,
        client: &mut Client,
        user: &str,
        keys: &[String; 2],
        value: &[u8],
    ) -> Result<etcd_client::TxnResponse, String> {
        let lease = self.lease(client).await?;
        let mut ops = vec![
            TxnOp::get(self.keys.lock(&LockTarget::User(user.to_owned())), None),
            TxnOp::get(
                format!("{}group/", self.keys.locks()),
                Some(GetOptions::new().with_prefix()),
            ),
        ];
        for key in keys {
            ops.push(TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        ops.push(TxnOp::get(
            self.keys.exec_grants_of(user),
            Some(GetOptions::new().with_prefix().with_count_only()),
        ));
        timed(client.txn(Txn::new().and_then(ops))).await
    }
}
