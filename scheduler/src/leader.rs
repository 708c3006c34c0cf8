//! What the elected scheduler does while it leads: follow the keyspace, turn stockout
//! reports into exhaustion leases, and write each zone's desired count, fenced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, TxnOp};
use pm_etcd::{
    now_unix_ms, put_op, EventLog, Fence, Leadership, ResumableWatch, Store, WatchRange,
};
use pm_proto::{Severity, ZoneDesired, ZoneExhaustion};
use prost::Message;
use tokio::time::Instant;
use tracing::Instrument;

use crate::distribution::{compute_desired, DistributionInput, PlacementOutcome, ZoneState};
use crate::exhaustion::{in_probation, next_backoff, DEFAULT_BASE};
use crate::metrics::SchedulerMetrics;
use crate::model::{Model, Notice, PoolView};

/// etcd's default limit of operations in one transaction is 128; stay below it.
const MAX_TXN_OPS: usize = 100;

/// How often time-based conditions (agent grace) are re-evaluated, and the leader's view
/// is published as metrics at most.
const TICK: Duration = Duration::from_secs(1);

/// Settings of the leader's work.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// This scheduler's id, written into desired keys and events.
    pub id: String,
    /// A zone without agents for this long gets no new instances.
    pub agent_grace: Duration,
    /// Period of full re-reads.
    pub resync: Duration,
}

/// The leader's state for one term.
struct Term<'a> {
    /// Where everything is read and written.
    store: &'a Store,
    /// Event writer.
    events: &'a EventLog,
    /// Settings.
    settings: &'a LeaderSettings,
    /// Where the view is published.
    metrics: &'a SchedulerMetrics,
    /// When the view was last published; `None` before the first time.
    published: Option<Instant>,
    /// This term's fence; every write carries it.
    fence: Fence,
    /// The keyspace as last read or written.
    model: Model,
    /// Unix ms when this term began: zones never seen with an agent count from here.
    started_ms: i64,
    /// Last Unix ms each zone was seen with at least one agent.
    agent_seen_ms: BTreeMap<String, i64>,
    /// Each pool's last placement outcome, so "no usable zone" is reported once.
    outcomes: BTreeMap<String, PlacementOutcome>,
    /// Pools whose config cannot be placed at all, already reported.
    unplaceable: BTreeSet<String>,
    /// (pool, zone) pairs of allowed zones without an agent past the grace, already
    /// reported; an entry goes when an agent is back.
    agentless: BTreeSet<(String, String)>,
}

/// Why a term ended.
#[derive(Debug)]
pub enum TermEnd {
    /// Leadership was lost (fenced out, lease gone, resigned).
    Lost,
    /// etcd failed in a way watches could not ride out.
    Failed(pm_etcd::Error),
}

/// Leads until leadership is lost. Never returns while it still leads.
pub async fn lead(
    store: &Store,
    events: &EventLog,
    settings: &LeaderSettings,
    metrics: &SchedulerMetrics,
    leadership: &Leadership,
) -> TermEnd {
    let mut term = Term {
        store,
        events,
        settings,
        metrics,
        published: None,
        fence: leadership.fence().clone(),
        model: Model::default(),
        started_ms: now_unix_ms(),
        agent_seen_ms: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        unplaceable: BTreeSet::new(),
        agentless: BTreeSet::new(),
    };
    let lost = leadership.lost();
    tokio::select! {
        _ = lost.cancelled() => TermEnd::Lost,
        end = term.run() => end,
    }
}

impl Term<'_> {
    async fn run(&mut self) -> TermEnd {
        match self.follow().await {
            Ok(()) => TermEnd::Lost,
            Err(e) if e.is_fenced_out() => TermEnd::Lost,
            Err(e) => TermEnd::Failed(e),
        }
    }

    async fn load(&mut self) -> pm_etcd::Result<(i64, i64)> {
        let keys = self.store.keys().clone();
        let (pools, pools_rev) = self.store.list_raw(&keys.pools_prefix()).await?;
        let (agents, agents_rev) = self.store.list_raw(&keys.agents_prefix()).await?;
        self.model.load_pools(&keys, &pools);
        self.model.load_agents(&keys, &agents);
        Ok((pools_rev, agents_rev))
    }

    async fn follow(&mut self) -> pm_etcd::Result<()> {
        let keys = self.store.keys().clone();
        let (pools_rev, agents_rev) = self.load().await?;
        let pools_prefix = keys.pools_prefix();
        let agents_prefix = keys.agents_prefix();
        let client = self.store.client().clone();
        let mut pools_watch = ResumableWatch::new(
            client.clone(),
            WatchRange::Prefix(pools_prefix.clone()),
            pools_rev + 1,
        );
        let mut agents_watch = ResumableWatch::new(
            client,
            WatchRange::Prefix(agents_prefix.clone()),
            agents_rev + 1,
        );
        let pools: Vec<String> = self.model.pools.keys().cloned().collect();
        for pool in pools {
            self.events
                .emit(
                    &pool,
                    "leader-elected",
                    Severity::Info,
                    "",
                    "",
                    format!("scheduler {} leads", self.settings.id),
                )
                .await;
        }
        let mut tick = tokio::time::interval(TICK);
        let mut resync = tokio::time::interval(self.settings.resync);
        resync.tick().await;
        loop {
            self.reconcile_dirty().await?;
            if self.published.is_none_or(|at| at.elapsed() >= TICK) {
                self.metrics.publish(&self.model, now_unix_ms());
                self.published = Some(Instant::now());
            }
            tokio::select! {
                batch = pools_watch.next() => {
                    let notices = self.model.apply(&keys, batch?, &pools_prefix);
                    self.announce(notices).await;
                }
                batch = agents_watch.next() => {
                    self.model.apply(&keys, batch?, &agents_prefix);
                }
                _ = tick.tick() => self.model.mark_all_dirty(),
                _ = resync.tick() => {
                    self.load().await?;
                }
            }
        }
    }

    async fn announce(&self, notices: Vec<Notice>) {
        for notice in notices {
            match notice {
                Notice::ZoneUsable { pool, zone } => {
                    self.events
                        .emit(
                            &pool,
                            "zone-usable",
                            Severity::Info,
                            &zone,
                            "",
                            "zone is usable again",
                        )
                        .await;
                }
            }
        }
    }

    /// Whether `zone` may receive new instances as far as agents go.
    /// `agent_seen_ms` is brought up to date for zones with agents at the start of each
    /// pass ([`Term::reconcile_dirty`]).
    fn agent_ok(&self, zone: &str, now: i64) -> bool {
        if self.model.agents.contains_key(zone) {
            return true;
        }
        let seen = self
            .agent_seen_ms
            .get(zone)
            .copied()
            .unwrap_or(self.started_ms);
        let grace = i64::try_from(self.settings.agent_grace.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(seen) < grace
    }

    /// Records, once per change, that an allowed zone of `pool` lost its agents for longer
    /// than the grace (it gets no new instances) or has one again.
    async fn note_agent(&mut self, pool: &str, zone: &str, agent_ok: bool) {
        let pair = (pool.to_string(), zone.to_string());
        if !agent_ok && self.agentless.insert(pair.clone()) {
            self.events
                .emit(
                    pool,
                    "zone-without-agent",
                    Severity::Warning,
                    zone,
                    "",
                    format!(
                        "no agent for zone {zone} for over {:?}: it gets no new instances",
                        self.settings.agent_grace
                    ),
                )
                .await;
        } else if agent_ok && self.agentless.remove(&pair) {
            self.events
                .emit(
                    pool,
                    "zone-agent-back",
                    Severity::Info,
                    zone,
                    "",
                    format!("zone {zone} has an agent again"),
                )
                .await;
        }
    }

    async fn reconcile_dirty(&mut self) -> pm_etcd::Result<()> {
        let now = now_unix_ms();
        let zones: Vec<String> = self.model.agents.keys().cloned().collect();
        for zone in zones {
            self.agent_seen_ms.insert(zone, now);
        }
        for pool in self.model.take_dirty() {
            let span = tracing::info_span!("reconcile", pool = %pool);
            match self.reconcile_pool(&pool, now).instrument(span).await {
                Ok(()) => {}
                Err(e) if e.is_fenced_out() => return Err(e),
                Err(pm_etcd::Error::GuardFailed { what }) => {
                    tracing::info!(%pool, %what, "write raced with a change; will retry");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn reconcile_pool(&mut self, pool: &str, now: i64) -> pm_etcd::Result<()> {
        let Some(view) = self.model.pools.get(pool).cloned() else {
            return Ok(());
        };
        for (zone, zv) in &view.zones {
            if zv.report.is_some() {
                self.handle_report(pool, zone, &view, now).await?;
            }
        }
        let Some(view) = self.model.pools.get(pool).cloned() else {
            return Ok(());
        };
        if view.is_deleted() && view.has_no_instances() {
            return self.remove_pool(pool, &view).await;
        }
        self.place(pool, &view, now).await
    }

    fn base_backoff(view: &PoolView) -> Duration {
        match view.config.as_ref().map(|c| c.seconds_for_exhaustion) {
            Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs)),
            _ => DEFAULT_BASE,
        }
    }

    /// Turns a zone's stockout report into an exhaustion lease, or drops it when the zone
    /// is already exhausted or no longer in use.
    async fn handle_report(
        &mut self,
        pool: &str,
        zone: &str,
        view: &PoolView,
        now: i64,
    ) -> pm_etcd::Result<()> {
        let keys = self.store.keys();
        let report_key = keys.report(pool, zone)?;
        let Some(zv) = view.zones.get(zone) else {
            return Ok(());
        };
        let Some(report) = zv.report.clone() else {
            return Ok(());
        };
        let allowed = view
            .config
            .as_ref()
            .is_some_and(|c| !c.deleted && c.allowed_zones.iter().any(|z| z == zone));
        if !allowed || zv.exhausted.is_some() {
            self.store.delete_fenced(&self.fence, &report_key).await?;
            self.model
                .pools
                .entry(pool.to_string())
                .or_default()
                .zone_mut(zone)
                .report = None;
            return Ok(());
        }
        let base = Self::base_backoff(view);
        let backoff = next_backoff(base, zv.desired.as_ref(), now);
        let lease = self.store.grant_lease(backoff.ttl).await?;
        let exhaustion = ZoneExhaustion {
            since_unix_ms: now,
            until_unix_ms: backoff.until_unix_ms,
            backoff_multiplier: backoff.multiplier,
            reason: if report.code.is_empty() {
                report.message.clone()
            } else {
                format!("{}: {}", report.code, report.message)
            },
            set_by: self.settings.id.clone(),
        };
        let mut desired = zv.desired.clone().unwrap_or_default();
        desired.backoff_multiplier = backoff.multiplier;
        desired.last_exhausted_until_unix_ms = backoff.until_unix_ms;
        desired.capacity_hint = Some(zv.live_confirmed());
        desired.accept_new = false;
        desired.updated_unix_ms = now;
        desired.scheduler_id = self.settings.id.clone();
        let ops = vec![
            put_op(&keys.exhausted(pool, zone)?, &exhaustion, lease),
            TxnOp::delete(report_key.as_str(), None),
            put_op(&keys.zone_desired(pool, zone)?, &desired, 0),
        ];
        let revision = self.store.txn_fenced(&self.fence, ops).await?;
        let zv = self
            .model
            .pools
            .entry(pool.to_string())
            .or_default()
            .zone_mut(zone);
        zv.exhausted = Some(exhaustion.clone());
        zv.report = None;
        zv.set_desired(Some(desired), revision);
        self.events
            .emit(
                pool,
                "zone-exhausted",
                Severity::Warning,
                zone,
                "",
                format!(
                    "zone exhausted for {}s (back-off x{}) after a stockout: {}",
                    backoff.ttl.as_secs(),
                    backoff.multiplier,
                    exhaustion.reason
                ),
            )
            .await;
        Ok(())
    }

    /// Removes every key of a deleted pool once its instances are gone. Guarded so that a
    /// pool re-created meanwhile is left alone.
    async fn remove_pool(&mut self, pool: &str, view: &PoolView) -> pm_etcd::Result<()> {
        let keys = self.store.keys();
        let config_key = keys.pool_config(pool)?;
        let zones_prefix = format!("{}zones/", keys.pool_prefix(pool)?);
        let guard = match &view.config {
            Some(config) => Compare::value(
                config_key.as_str(),
                CompareOp::Equal,
                config.encode_to_vec(),
            ),
            None => Compare::version(config_key.as_str(), CompareOp::Equal, 0),
        };
        let ops = vec![
            TxnOp::delete(
                zones_prefix.as_str(),
                Some(DeleteOptions::new().with_prefix()),
            ),
            TxnOp::delete(config_key.as_str(), None),
        ];
        self.store
            .txn_fenced_if(
                &self.fence,
                vec![guard],
                &format!("config of pool {pool}"),
                ops,
            )
            .await?;
        self.model.pools.remove(pool);
        self.outcomes.remove(pool);
        self.agentless.retain(|(p, _)| p != pool);
        if view.config.is_some() {
            self.events
                .emit(
                    pool,
                    "pool-deleted",
                    Severity::Info,
                    "",
                    "",
                    "pool scaled to 0 and its keys removed",
                )
                .await;
        }
        Ok(())
    }

    /// Computes the pool's desired counts and writes those that changed.
    async fn place(&mut self, pool: &str, view: &PoolView, now: i64) -> pm_etcd::Result<()> {
        let keys = self.store.keys().clone();
        let deleted = view.is_deleted();
        let config = view.config.clone().unwrap_or_default();
        let allowed: BTreeSet<String> = if deleted {
            BTreeSet::new()
        } else {
            config.allowed_zones.iter().cloned().collect()
        };
        let target = if deleted { 0 } else { config.target_vm_count };
        let base = Self::base_backoff(view);
        let mut zone_names: BTreeSet<String> = allowed.clone();
        zone_names.extend(view.zones.keys().cloned());
        let mut states = Vec::with_capacity(zone_names.len());
        for zone in &zone_names {
            let zv = view.zones.get(zone).cloned().unwrap_or_default();
            let is_allowed = allowed.contains(zone);
            let agent_ok = self.agent_ok(zone, now);
            if is_allowed {
                self.note_agent(pool, zone, agent_ok).await;
            }
            let usable = is_allowed && zv.exhausted.is_none() && agent_ok;
            let capacity = zv
                .desired
                .as_ref()
                .filter(|d| in_probation(base, d, now))
                .and_then(|d| d.capacity_hint);
            states.push(ZoneState {
                zone: zone.clone(),
                allowed: is_allowed,
                // An exhausted zone keeps what GCE has, not the inserts about to fail. A
                // usable zone keeps what its agent was told to reach: the agent may be
                // creating those instances already, so handing them to another zone
                // before it records them would have two agents create them.
                live: if zv.exhausted.is_some() {
                    zv.live_confirmed()
                } else if usable {
                    zv.live.max(zv.committed())
                } else {
                    zv.live
                },
                usable,
                capacity,
                last_success_unix_ms: zv.last_success_unix_ms,
            });
        }
        let input = DistributionInput {
            target,
            policy: config.distribution(),
            zones: states,
        };
        let plan = match compute_desired(&input) {
            Ok(plan) => plan,
            Err(e) => {
                if !self.unplaceable.insert(pool.to_string()) {
                    return Ok(());
                }
                self.events
                    .emit(
                        pool,
                        "invalid-config",
                        Severity::Error,
                        "",
                        "",
                        format!("cannot place the pool: {e}"),
                    )
                    .await;
                return Ok(());
            }
        };
        self.unplaceable.remove(pool);
        let mut ops = Vec::new();
        let mut written = Vec::new();
        let mut summary = Vec::new();
        for alloc in &plan.zones {
            let zv = view.zones.get(&alloc.zone).cloned().unwrap_or_default();
            let key = keys.zone_desired(pool, &alloc.zone)?;
            summary.push(format!("{}={}", alloc.zone, alloc.desired));
            let stale_zone = !allowed.contains(&alloc.zone)
                && alloc.desired == 0
                && zv.instances.is_empty()
                && zv.exhausted.is_none()
                && zv.report.is_none();
            if stale_zone {
                if zv.desired.is_some() {
                    ops.push(TxnOp::delete(key.as_str(), None));
                    written.push((alloc.zone.clone(), None));
                }
                continue;
            }
            let previous = zv.desired.clone().unwrap_or_default();
            let probation = zv
                .desired
                .as_ref()
                .is_some_and(|d| in_probation(base, d, now));
            let next = ZoneDesired {
                count: alloc.desired,
                accept_new: alloc.accept_new,
                updated_unix_ms: now,
                scheduler_id: self.settings.id.clone(),
                backoff_multiplier: previous.backoff_multiplier,
                last_exhausted_until_unix_ms: previous.last_exhausted_until_unix_ms,
                capacity_hint: if probation {
                    previous.capacity_hint
                } else {
                    None
                },
            };
            let same = zv.desired.as_ref().is_some_and(|d| {
                d.count == next.count
                    && d.accept_new == next.accept_new
                    && d.backoff_multiplier == next.backoff_multiplier
                    && d.last_exhausted_until_unix_ms == next.last_exhausted_until_unix_ms
                    && d.capacity_hint == next.capacity_hint
            });
            if !same {
                ops.push(put_op(&key, &next, 0));
                written.push((alloc.zone.clone(), Some(next)));
            }
        }
        let counts_changed = written.iter().any(|(zone, next)| {
            let before = view
                .zones
                .get(zone)
                .and_then(|z| z.desired.as_ref())
                .map(|d| (d.count, d.accept_new));
            before != next.as_ref().map(|d| (d.count, d.accept_new))
        });
        for (ops, written) in ops.chunks(MAX_TXN_OPS).zip(written.chunks(MAX_TXN_OPS)) {
            let revision = self.store.txn_fenced(&self.fence, ops.to_vec()).await?;
            let pool_view = self.model.pools.entry(pool.to_string()).or_default();
            for (zone, next) in written {
                pool_view.zone_mut(zone).set_desired(next.clone(), revision);
            }
        }
        if counts_changed {
            self.events
                .emit(
                    pool,
                    "distribution-changed",
                    Severity::Info,
                    "",
                    "",
                    format!("target {target}: {}", summary.join(" ")),
                )
                .await;
        }
        let previous = self.outcomes.insert(pool.to_string(), plan.outcome);
        if previous.as_ref() != Some(&plan.outcome) {
            match plan.outcome {
                PlacementOutcome::NoUsableZone { unplaced } => {
                    self.events
                        .emit(
                            pool,
                            "no-usable-zone",
                            Severity::Error,
                            "",
                            "",
                            format!("{unplaced} instance(s) cannot be placed: every allowed zone is exhausted or has no live agent; desired stays at what is observed"),
                        )
                        .await;
                }
                PlacementOutcome::CapacityShort { unplaced } => {
                    self.events
                        .emit(
                            pool,
                            "capacity-short",
                            Severity::Warning,
                            "",
                            "",
                            format!("{unplaced} instance(s) do not fit the zones' known capacity"),
                        )
                        .await;
                }
                PlacementOutcome::Placed => {
                    if previous.is_some() {
                        self.events
                            .emit(
                                pool,
                                "placed",
                                Severity::Info,
                                "",
                                "",
                                format!("the whole target of {target} is placed again"),
                            )
                            .await;
                    }
                }
            }
        }
        Ok(())
    }
}
