//! The active agent's fenced writes of its keys: observed instances (ending a drain
//! gives its budget slot back, removing a key answers its drain request) and witness
//! answers.

use std::collections::BTreeMap;

use etcd_client::TxnOp;
use pm_etcd::put_op;
use pm_proto::{ObservedInstance, Witnessed};

use super::drain::ends_drain;
use super::ActiveAgent;

impl ActiveAgent<'_> {
    /// Writes the answers to the scheduler's witness requests, fenced.
    pub(super) async fn answer(
        &self,
        pool: &str,
        answers: Vec<(String, Witnessed)>,
    ) -> pm_etcd::Result<()> {
        let keys = self.ctx.store.keys();
        for (zone, answer) in &answers {
            tracing::info!(%pool, %zone, live = answer.live, "counted a zone without agents");
        }
        let op = |(zone, answer): &(String, Witnessed)| {
            Ok(put_op(&keys.witnessed(pool, zone)?, answer, 0))
        };
        self.ctx
            .store
            .txn_fenced_chunks(&self.fence, &answers, op, |_, _| Ok(()))
            .await
    }

    /// Writes (or removes, for `None`) observed keys in fenced transactions and updates
    /// the view with the revision written.
    pub(super) async fn write_observed(
        &mut self,
        pool: &str,
        writes: BTreeMap<String, Option<ObservedInstance>>,
    ) -> pm_etcd::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let keys = self.ctx.store.keys().clone();
        let zone = &self.ctx.zone;
        let held = self.pools.zone_keys(pool);
        let mut ended = Vec::new();
        let mut answered = Vec::new();
        for (name, new) in &writes {
            let old = held.instances.get(name).map(|o| &o.value);
            if let Some(drain) = old
                .filter(|o| ends_drain(o, new.as_ref()))
                .and_then(|o| o.drain.clone())
            {
                ended.push((name.clone(), drain));
            }
            if new.is_none() && held.drains.contains_key(name) {
                answered.push(name.clone());
            }
        }
        let entries: Vec<(String, Option<ObservedInstance>)> = writes.into_iter().collect();
        let op = |(name, value): &(String, Option<ObservedInstance>)| {
            let key = keys.instance(pool, zone, name)?;
            Ok(match value {
                Some(o) => put_op(&key, o, 0),
                None => TxnOp::delete(key.as_str(), None),
            })
        };
        let pools = &mut self.pools;
        let recorded = |chunk: &[(String, Option<ObservedInstance>)], revision| {
            for (name, value) in chunk {
                pools.record_written(pool, name, value.clone(), revision)?;
            }
            Ok(())
        };
        self.ctx
            .store
            .txn_fenced_chunks(&self.fence, &entries, op, recorded)
            .await?;
        self.release_slots(pool, ended).await?;
        self.remove_requests(pool, answered).await
    }

    pub(super) async fn write_one(
        &mut self,
        pool: &str,
        name: &str,
        value: Option<ObservedInstance>,
    ) -> pm_etcd::Result<()> {
        self.write_observed(pool, BTreeMap::from([(name.to_string(), value)]))
            .await
    }
}
