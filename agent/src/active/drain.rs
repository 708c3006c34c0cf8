//! The drain path of the active agent: every removal pm makes on purpose (scale-down,
//! rollout replacement, pmctl drain and shed) first takes a slot of the pool's
//! disruption budget (`pools/<pool>/drain-slots/<i>`, i < maxConcurrent) in the same
//! transaction that records the drain on the instance's key, so the budget holds across
//! zones and failovers. The VM is then labelled `pm-state=draining`, the event is
//! recorded and the drain hook runs; the decision deletes it when the hook finished or
//! drainSeconds passed (a hard drain at once). Writing its key as deleting (or removing
//! it) gives the slot back.

use std::collections::BTreeSet;

use etcd_client::{Compare, CompareOp, TxnOp};
use pm_etcd::{now_unix_ms, put_op, Error as EtcdError};
use pm_pool::HookEvent;
use pm_proto::{Drain, DrainSlot, InstanceState, ObservedInstance, PoolConfig, Severity};
use prost::Message;
use tokio::sync::mpsc;

use super::ActiveAgent;
use crate::claim::Claim;
use crate::decide::{DrainStart, InFlight};
use crate::hooks::{HookCall, HookError};
use crate::operations::Op;

/// Drain hooks whose outcome waits to be recorded, at most (their tasks wait for room).
const HOOK_RESULTS: usize = 256;

/// A drain hook finished.
#[derive(Debug)]
pub struct DrainHookDone {
    /// Pool.
    pub pool: String,
    /// The draining VM.
    pub name: String,
    /// The drain it ran for (its start).
    pub started_unix_ms: i64,
    /// "ok" or the hook's error.
    pub outcome: String,
}

/// Where drain hooks report back to the loop.
pub struct DrainHooks {
    tx: mpsc::Sender<DrainHookDone>,
    /// The outcomes, in the order they finished.
    pub rx: mpsc::Receiver<DrainHookDone>,
}

impl Default for DrainHooks {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(HOOK_RESULTS);
        Self { tx, rx }
    }
}

/// The value of the slot a drain holds, as stored: the guard of its release.
fn slot_value(zone: &str, name: &str, drain: &Drain) -> DrainSlot {
    DrainSlot {
        zone: zone.to_string(),
        instance: name.to_string(),
        started_unix_ms: drain.started_unix_ms,
    }
}

/// Whether the write `new` ends the drain `old` holds a slot for.
pub fn ends_drain(old: &ObservedInstance, new: Option<&ObservedInstance>) -> bool {
    old.drain.is_some()
        && new.is_none_or(|n| n.state() == InstanceState::Deleting || n.drain.is_none())
}

impl ActiveAgent<'_> {
    /// The pool's budget slots held now. When fewer than `wanted` of the `budget` are
    /// free, the stale ones ([`Self::slot_is_stale`]) are freed first.
    async fn held_slots(
        &self,
        pool: &str,
        budget: u32,
        wanted: usize,
    ) -> pm_etcd::Result<BTreeSet<u32>> {
        let keys = self.ctx.store.keys();
        let (listed, _) = self
            .ctx
            .store
            .list_raw(&keys.drain_slots_prefix(pool)?)
            .await?;
        let slots: Vec<_> = listed
            .iter()
            .filter_map(|stored| match keys.parse(stored.key.as_bytes()) {
                Ok(pm_etcd::Key::DrainSlot { slot, .. }) => Some((slot, stored)),
                _ => None,
            })
            .collect();
        let mut held: BTreeSet<u32> = slots.iter().map(|(slot, _)| *slot).collect();
        let free = usize::try_from(budget).unwrap_or(usize::MAX)
            - held.iter().filter(|s| **s < budget).count();
        if free >= wanted {
            return Ok(held);
        }
        for (slot, stored) in slots {
            let holder = pm_etcd::decode::<DrainSlot>(&stored.key, &stored.value).ok();
            if self.slot_is_stale(pool, holder.as_ref()).await? {
                let key = keys.drain_slot(pool, slot)?;
                let unchanged = Compare::mod_revision(key, CompareOp::Equal, stored.mod_revision);
                self.free_slot(pool, slot, unchanged).await?;
                held.remove(&slot);
            }
        }
        Ok(held)
    }

    /// Starts the drains the budget has slots for, in order; the others wait for a later
    /// pass.
    pub(super) async fn start_drains(
        &mut self,
        pool: &str,
        config: &PoolConfig,
        starts: Vec<(DrainStart, Claim, String)>,
    ) -> pm_etcd::Result<()> {
        if starts.is_empty() {
            return Ok(());
        }
        let ctx = self.ctx;
        let keys = ctx.store.keys().clone();
        let budget = u32::try_from(pm_pool::disruption::max_concurrent(config)).unwrap_or(u32::MAX);
        let held = self.held_slots(pool, budget, starts.len()).await?;
        let mut free = (0..budget).filter(|s| !held.contains(s));
        let hook = HookEvent::Drain.configured(config.hooks.as_ref());
        let wait = pm_pool::disruption::drain_wait(config);
        for (start, label, project) in starts {
            let Some(current) = self.pools.zone_keys(pool).instances.get(&start.name) else {
                continue;
            };
            let mut o = current.value.clone();
            let now = now_unix_ms();
            let waits = hook.is_some() && !start.hard;
            let mut drain = Drain {
                reason: start.reason.clone(),
                hard: start.hard,
                started_unix_ms: now,
                workflow_id: start.workflow_id.clone(),
                slot: 0,
                hook_finished_unix_ms: if waits { 0 } else { now },
                hook_outcome: if hook.is_some() {
                    String::new()
                } else {
                    "none".into()
                },
                cause: start.cause as i32,
            };
            let instance_key = keys.instance(pool, &ctx.zone, &start.name)?;
            let mut written = None;
            for slot in free.by_ref() {
                drain.slot = slot;
                o.drain = Some(drain.clone());
                let slot_key = keys.drain_slot(pool, slot)?;
                let guards = vec![Compare::create_revision(
                    slot_key.as_str(),
                    CompareOp::Equal,
                    0,
                )];
                let ops = vec![
                    put_op(&slot_key, &slot_value(&ctx.zone, &start.name, &drain), 0),
                    put_op(&instance_key, &o, 0),
                ];
                match ctx
                    .store
                    .txn_fenced_if(&self.fence, guards, "a free drain slot", ops)
                    .await
                {
                    Ok(revision) => {
                        written = Some(revision);
                        break;
                    }
                    // Another zone took it since the listing: try the next.
                    Err(EtcdError::GuardFailed { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            let Some(revision) = written else {
                tracing::info!(%pool, budget, "the disruption budget is spent; drains wait");
                break;
            };
            self.pools
                .record_written(pool, &start.name, Some(o), revision)?;
            let how = if start.hard {
                "hard: deleting at once".to_string()
            } else if waits {
                format!("soft: waiting up to {}s for the drain hook", wait.as_secs())
            } else {
                "soft: no drain hook".to_string()
            };
            let message = format!("draining {} ({}); {how}", start.name, start.reason);
            self.emit(pool, "draining", Severity::Info, &start.name, message)
                .await;
            let state = self.state(pool);
            state.wake_within(std::time::Duration::ZERO);
            if !start.hard {
                state
                    .in_flight
                    .insert(start.name.clone(), InFlight::Labelling);
                let op = Op::SetLabels {
                    labels: label.labels,
                    fingerprint: label.fingerprint,
                };
                self.ops.spawn(pool, &project, start.name.clone(), op);
            }
            self.run_drain_hook(pool, &project, config, &start.name, drain);
        }
        Ok(())
    }

    /// Runs the drain hook of `name`'s drain, and records its outcome when it ends.
    pub(super) fn run_drain_hook(
        &mut self,
        pool: &str,
        project: &str,
        config: &PoolConfig,
        name: &str,
        drain: Drain,
    ) {
        let Some(hook) = HookEvent::Drain.configured(config.hooks.as_ref()) else {
            return;
        };
        self.state(pool)
            .drain_hooks_run
            .insert((name.to_string(), drain.started_unix_ms));
        let wait = pm_pool::disruption::drain_wait(config);
        let handle = self.ctx.hooks.spawn(HookCall {
            name: hook,
            event: HookEvent::Drain,
            pool: pool.to_string(),
            project: project.to_string(),
            zone: self.ctx.zone.clone(),
            instance: name.to_string(),
            env: vec![
                ("REASON", drain.reason.clone()),
                ("HARD", if drain.hard { "1" } else { "0" }.to_string()),
                ("DRAIN_SECONDS", wait.as_secs().to_string()),
            ],
        });
        let tx = self.drain_hooks.tx.clone();
        let done = DrainHookDone {
            pool: pool.to_string(),
            name: name.to_string(),
            started_unix_ms: drain.started_unix_ms,
            outcome: String::new(),
        };
        tokio::spawn(async move {
            let outcome = match handle.await {
                Ok(Ok(())) => "ok".to_string(),
                // Never run (the hook queue was full, and its event says so): the drain
                // waits out drainSeconds, as for a hook that does not finish.
                Ok(Err(HookError::Dropped { .. })) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("did not finish: {e}"),
            };
            // The loop is gone when the term ended: the next term runs the hook again.
            let _ = tx.send(DrainHookDone { outcome, ..done }).await;
        });
    }

    /// Runs the drain hooks this term has not run for drains still waiting on theirs
    /// (begun in an earlier term); each VM is given with its project.
    pub(super) fn resume_drain_hooks(
        &mut self,
        pool: &str,
        config: &PoolConfig,
        pending: Vec<(String, String)>,
    ) {
        for (project, name) in pending {
            let drain = self
                .pools
                .zone_keys(pool)
                .instances
                .get(&name)
                .and_then(|o| o.value.drain.clone());
            let Some(drain) = drain else { continue };
            let key = (name.clone(), drain.started_unix_ms);
            if !self.state(pool).drain_hooks_run.contains(&key) {
                tracing::info!(%pool, instance = %name, "running the drain hook of a drain begun in an earlier term");
                self.run_drain_hook(pool, &project, config, &name, drain);
            }
        }
    }

    /// Records a drain hook's outcome on its drain (still going on), and passes again.
    pub(super) async fn drain_hook_finished(&mut self, done: DrainHookDone) -> pm_etcd::Result<()> {
        let DrainHookDone {
            pool,
            name,
            started_unix_ms,
            outcome,
        } = done;
        let Some(current) = self.pools.zone_keys(&pool).instances.get(&name) else {
            return Ok(());
        };
        let mut o = current.value.clone();
        if o.state() == InstanceState::Deleting {
            return Ok(());
        }
        let Some(drain) = o
            .drain
            .as_mut()
            .filter(|d| d.started_unix_ms == started_unix_ms && d.hook_finished_unix_ms == 0)
        else {
            return Ok(());
        };
        drain.hook_finished_unix_ms = now_unix_ms();
        drain.hook_outcome = outcome;
        self.write_one(&pool, &name, Some(o)).await?;
        if let Some(state) = self.pools.pools.get_mut(&pool) {
            state.wake_within(std::time::Duration::ZERO);
        }
        Ok(())
    }

    /// Whether the slot held by `holder` is no longer held by a drain going on: its
    /// instance's key is gone, deleting, stopped (preempted while draining: its agent
    /// deletes it), records another drain, or cannot be read as a slot's holder at all.
    /// Another zone's key is read from etcd; its agent wrote the slot and the drain in
    /// one transaction.
    async fn slot_is_stale(&self, pool: &str, holder: Option<&DrainSlot>) -> pm_etcd::Result<bool> {
        let Some(holder) = holder else {
            tracing::warn!(%pool, "freeing a drain slot whose value cannot be decoded");
            return Ok(true);
        };
        let instance = if holder.zone == self.ctx.zone {
            self.pools
                .zone_keys(pool)
                .instances
                .get(&holder.instance)
                .map(|o| o.value.clone())
        } else {
            let key = match self
                .ctx
                .store
                .keys()
                .instance(pool, &holder.zone, &holder.instance)
            {
                Ok(key) => key,
                Err(e) => {
                    tracing::warn!(%pool, error = %e, "freeing a drain slot naming no instance");
                    return Ok(true);
                }
            };
            match self.ctx.store.get::<ObservedInstance>(&key).await {
                Ok(v) => v.map(|v| v.value),
                Err(e @ EtcdError::Decode { .. }) => {
                    tracing::warn!(%pool, error = %e, "freeing a drain slot held by an unreadable key");
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
        };
        let held = instance.is_some_and(|o| {
            !matches!(
                o.state(),
                InstanceState::Deleting | InstanceState::Terminated
            ) && o
                .drain
                .as_ref()
                .is_some_and(|d| d.started_unix_ms == holder.started_unix_ms)
        });
        Ok(!held)
    }

    /// Deletes drain slot `slot` while `guard` holds (it still is what was read).
    async fn free_slot(&self, pool: &str, slot: u32, guard: Compare) -> pm_etcd::Result<()> {
        let key = self.ctx.store.keys().drain_slot(pool, slot)?;
        let ops = vec![TxnOp::delete(key.as_str(), None)];
        match self
            .ctx
            .store
            .txn_fenced_if(&self.fence, vec![guard], "the drain slot unchanged", ops)
            .await
        {
            Ok(_) | Err(EtcdError::GuardFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Gives back the slots of drains that `ended` (VM and its drain), each only while
    /// it still holds that drain.
    pub(super) async fn release_slots(
        &self,
        pool: &str,
        ended: Vec<(String, Drain)>,
    ) -> pm_etcd::Result<()> {
        let keys = self.ctx.store.keys();
        for (name, drain) in ended {
            let key = keys.drain_slot(pool, drain.slot)?;
            let value = slot_value(&self.ctx.zone, &name, &drain).encode_to_vec();
            let guard = Compare::value(key.as_str(), CompareOp::Equal, value);
            self.free_slot(pool, drain.slot, guard).await?;
        }
        Ok(())
    }

    /// Removes the drain requests of `names` (their VMs are gone, or unknown).
    pub(super) async fn remove_requests(
        &self,
        pool: &str,
        names: Vec<String>,
    ) -> pm_etcd::Result<()> {
        let keys = self.ctx.store.keys();
        let zone = &self.ctx.zone;
        let op = |name: &String| {
            Ok(TxnOp::delete(
                keys.drain_request(pool, zone, name)?.as_str(),
                None,
            ))
        };
        self.ctx
            .store
            .txn_fenced_chunks(&self.fence, &names, op, |_, _| Ok(()))
            .await
    }
}
