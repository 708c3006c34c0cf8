//! What the elected scheduler does while it leads: follow the keyspace, and for each
//! changed pool consume its stockout reports ([`crate::exhaustion`]), place it
//! ([`crate::placement`]), write the `desired` keys that change, fenced, then record the
//! events of the pass ([`crate::placement_events`]).

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, TxnOp};
use pm_daemon::TermEnd;
use pm_etcd::{
    now_unix_ms, put_op, EventLog, Fence, Key, Leadership, ResumableWatch, Store, Value, WatchRange,
};
use pm_proto::Severity;
use pm_telemetry::{Readiness, WATCH_CONDITION};
use prost::Message;
use tokio::time::Instant;
use tracing::Instrument;

use crate::agent_presence::AgentPresence;
use crate::capacity::Capacity;
use crate::exhaustion;
use crate::metrics::SchedulerMetrics;
use crate::model::{Model, Notice, PoolView, ZoneView};
use crate::placement::{self, DesiredWrite};
use crate::placement_events::{PlacementEvents, PlacementReport};
use crate::pool_event::PoolEvent;
use crate::rollout;
use crate::sink::{Sink, SinkSettings};
use crate::witness;

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
    /// `--events-sink`, when set.
    pub sink: Option<SinkSettings>,
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
    /// Where the watches tell an error that retrying cannot fix.
    readiness: &'a Readiness,
    /// When the view was last published; `None` before the first time.
    published: Option<Instant>,
    /// This term's fence; every write carries it.
    fence: Fence,
    /// The keyspace view as last read or written, and what the leader keeps beside it.
    model: Model,
    /// When each zone was last seen with a reconciling agent; brought up to date at the
    /// start of each pass ([`Term::reconcile_dirty`]).
    agents: AgentPresence,
    /// The placement conditions already reported.
    reported: PlacementEvents,
    /// Capacity delivered and time below target, integrated as the view is published.
    capacity: Capacity,
}

/// Leads until leadership is lost. Never returns while it still leads.
pub async fn lead(
    store: &Store,
    events: &EventLog,
    settings: &LeaderSettings,
    metrics: &SchedulerMetrics,
    readiness: &Readiness,
    leadership: &Leadership,
) -> TermEnd {
    let mut term = Term {
        store,
        events,
        settings,
        metrics,
        readiness,
        published: None,
        fence: leadership.fence().clone(),
        model: Model::new(store.keys().clone()),
        agents: AgentPresence::new(settings.agent_grace, now_unix_ms()),
        reported: PlacementEvents::default(),
        capacity: Capacity::default(),
    };
    let lost = leadership.lost();
    let deliver = async {
        let Some(sink) = &settings.sink else {
            return std::future::pending().await;
        };
        let sink = Sink {
            store,
            events,
            settings: sink,
            metrics: &metrics.sink,
            readiness,
            fence: leadership.fence().clone(),
            id: settings.id.clone(),
        };
        ended(sink.run().await)
    };
    tokio::select! {
        _ = lost.cancelled() => TermEnd::Lost,
        end = term.run() => end,
        end = deliver => end,
    }
}

/// How a term ends after `result`: fenced out (or returning at all) means lost.
fn ended(result: pm_etcd::Result<()>) -> TermEnd {
    match result {
        Ok(()) => TermEnd::Lost,
        Err(e) if e.is_fenced_out() => TermEnd::Lost,
        Err(e) => TermEnd::Failed(e),
    }
}

impl Term<'_> {
    async fn run(&mut self) -> TermEnd {
        ended(self.follow().await)
    }

    async fn load(&mut self) -> pm_etcd::Result<(i64, i64)> {
        let keys = self.store.keys().clone();
        let (pools, pools_rev) = self.store.list_raw(&keys.pools_prefix()).await?;
        let (agents, agents_rev) = self.store.list_raw(&keys.agents_prefix()).await?;
        self.model.load_pools(&pools, pools_rev);
        self.model.load_agents(&agents);
        let notices = self.model.take_notices();
        self.announce(notices).await;
        Ok((pools_rev, agents_rev))
    }

    async fn follow(&mut self) -> pm_etcd::Result<()> {
        let keys = self.store.keys().clone();
        let (pools_rev, agents_rev) = self.load().await?;
        let client = self.store.client().clone();
        let mut pools_watch = ResumableWatch::new(
            client.clone(),
            WatchRange::Prefix(keys.pools_prefix()),
            pools_rev + 1,
        )
        .with_health(self.readiness.reporter(WATCH_CONDITION));
        let mut agents_watch = ResumableWatch::new(
            client,
            WatchRange::Prefix(keys.agents_prefix()),
            agents_rev + 1,
        )
        .with_health(self.readiness.reporter(WATCH_CONDITION));
        for pool in self.model.pool_names() {
            let message = format!("scheduler {} leads", self.settings.id);
            PoolEvent::pool(&pool, "leader-elected", Severity::Info, message)
                .emit(self.events)
                .await;
        }
        let mut tick = tokio::time::interval(TICK);
        let mut resync = tokio::time::interval(self.settings.resync);
        resync.tick().await;
        loop {
            self.reconcile_dirty().await?;
            if self.published.is_none_or(|at| at.elapsed() >= TICK) {
                self.metrics
                    .publish(&self.model, now_unix_ms(), &mut self.capacity);
                self.published = Some(Instant::now());
            }
            tokio::select! {
                batch = pools_watch.next() => {
                    let notices = self.model.apply_pools(batch?);
                    self.announce(notices).await;
                }
                batch = agents_watch.next() => self.model.apply_agents(batch?),
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
                    exhaustion::usable_again(&pool, &zone)
                        .emit(self.events)
                        .await;
                }
                Notice::ConfigRefused { pool, problem } => {
                    let message = format!(
                        "the stored config is refused; the pool is left as it was: {problem}"
                    );
                    PoolEvent::pool(&pool, "invalid-config", Severity::Error, message)
                        .emit(self.events)
                        .await;
                }
            }
        }
    }

    async fn reconcile_dirty(&mut self) -> pm_etcd::Result<()> {
        let now = now_unix_ms();
        self.agents.seen(self.model.reconciling.keys(), now);
        self.agents.registered(self.model.agents.keys(), now);
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
        let Some(view) = self.model.pool(pool) else {
            return Ok(());
        };
        if view.config.is_none() && view.config_refused {
            // No valid config known: never treat a refused one as a deletion.
            return Ok(());
        }
        for (zone, zv) in &view.zones {
            if zv.report.is_some() {
                let event = exhaustion::consume_report(
                    self.store,
                    &self.fence,
                    &self.settings.id,
                    pool,
                    zone,
                    &mut self.model,
                    now,
                )
                .await?;
                if let Some(event) = event {
                    event.emit(self.events).await;
                }
            }
        }
        let Some(view) = self.model.pool(pool) else {
            return Ok(());
        };
        if view.is_deleted() && view.has_no_instances() {
            return self.remove_pool(pool, &view).await;
        }
        let report = self.place(pool, &view, now).await?;
        for event in self.reported.events(&report, self.settings.agent_grace) {
            event.emit(self.events).await;
        }
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
        let prefixed =
            |prefix: &str| TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()));
        let ops = vec![
            prefixed(&zones_prefix),
            prefixed(&keys.drain_slots_prefix(pool)?),
            prefixed(&keys.workflows_prefix(pool)?),
            TxnOp::delete(config_key.as_str(), None),
            TxnOp::delete(keys.rollout(pool)?.as_str(), None),
        ];
        let revision = self
            .store
            .txn_fenced_if(
                &self.fence,
                vec![guard],
                &format!("config of pool {pool}"),
                ops,
            )
            .await?;
        self.model.record_removed(pool, revision)?;
        self.reported.forget(pool);
        if view.config.is_some() {
            let message = "pool scaled to 0 and its keys removed";
            PoolEvent::pool(pool, "pool-deleted", Severity::Info, message)
                .emit(self.events)
                .await;
        }
        Ok(())
    }

    /// Computes the pool's desired counts and writes those that changed. Returns what the
    /// pass found and changed, for its events.
    async fn place(
        &mut self,
        pool: &str,
        view: &PoolView,
        now: i64,
    ) -> pm_etcd::Result<PlacementReport> {
        let allowed = placement::allowed_zones(view);
        let with_agent: BTreeSet<String> = allowed
            .iter()
            .chain(view.zones.keys())
            .filter(|zone| {
                let reconciling = self.model.reconciling.contains_key(zone.as_str());
                self.agents.is_ok(zone, reconciling, now)
            })
            .cloned()
            .collect();
        let agent_ok = |zone: &str| with_agent.contains(zone);
        let agents = allowed
            .iter()
            .map(|zone| (zone.clone(), agent_ok(zone)))
            .collect();
        let empty = ZoneView::default();
        let usable = |zone: &str| {
            let zv = view.zones.get(zone).unwrap_or(&empty);
            let accepts = zv.desired.as_ref().is_none_or(|d| d.accept_new);
            accepts && placement::is_usable(allowed.contains(zone), zv, agent_ok(zone))
        };
        let rollout = rollout::plan(pool, view, usable, &self.settings.id, now);
        if let Some(next) = &rollout.write {
            let key = self.store.keys().rollout(pool)?;
            let revision = self
                .store
                .txn_fenced(&self.fence, vec![put_op(&key, next, 0)])
                .await?;
            let key = Key::Rollout {
                pool: pool.to_string(),
            };
            self.model
                .record(&key, Some(Value::Rollout(next.clone())), revision)?;
        }
        for event in &rollout.events {
            event.emit(self.events).await;
        }
        let orphaned: BTreeSet<String> = view
            .zones
            .keys()
            .filter(|zone| {
                let registered = self.model.agents.contains_key(zone.as_str());
                let reconciling = self.model.reconciling.contains_key(zone.as_str());
                self.agents.is_orphaned(zone, registered, now)
                    || (!reconciling && witness::is_requested(view, zone))
            })
            .cloned()
            .collect();
        let witnesses: BTreeSet<String> = allowed
            .iter()
            .filter(|zone| self.model.reconciling.contains_key(zone.as_str()))
            .cloned()
            .collect();
        let requests = witness::requests(view, &orphaned, &witnesses, now);
        let witnessed = witness::applied(view, &requests);
        let placed = placement::place(
            view,
            agent_ok,
            &rollout.zones,
            &requests,
            &self.settings.id,
            now,
        );
        if let Ok(placement) = &placed {
            self.write_desired(pool, &placement.writes).await?;
        }
        self.remove_answers(pool, &witness::unasked(view, &requests))
            .await?;
        Ok(PlacementReport {
            pool: pool.to_string(),
            agents,
            placed,
            witnessed,
        })
    }

    /// Deletes the `witnessed` keys of `zones`, answers no request stands for any more,
    /// fenced, in transactions of at most [`pm_etcd::MAX_TXN_OPS`].
    async fn remove_answers(&mut self, pool: &str, zones: &[String]) -> pm_etcd::Result<()> {
        let keys = self.store.keys().clone();
        let op = |zone: &String| Ok(TxnOp::delete(keys.witnessed(pool, zone)?.as_str(), None));
        let model = &mut self.model;
        let recorded = |chunk: &[String], revision| {
            for zone in chunk {
                let key = Key::Witnessed {
                    pool: pool.to_string(),
                    zone: zone.clone(),
                };
                model.record(&key, None, revision)?;
            }
            Ok(())
        };
        self.store
            .txn_fenced_chunks(&self.fence, zones, op, recorded)
            .await
    }

    /// Writes the `desired` changes of a pool, fenced, in transactions of at most
    /// [`pm_etcd::MAX_TXN_OPS`], and records each in the model.
    async fn write_desired(&mut self, pool: &str, writes: &[DesiredWrite]) -> pm_etcd::Result<()> {
        let keys = self.store.keys().clone();
        let op = |write: &DesiredWrite| {
            let key = keys.zone_desired(pool, &write.zone)?;
            Ok(match &write.next {
                Some(next) => put_op(&key, next, 0),
                None => TxnOp::delete(key.as_str(), None),
            })
        };
        let model = &mut self.model;
        let recorded = |chunk: &[DesiredWrite], revision| {
            for write in chunk {
                let key = Key::ZoneDesired {
                    pool: pool.to_string(),
                    zone: write.zone.clone(),
                };
                let value = write.next.clone().map(Value::Desired);
                model.record(&key, value, revision)?;
            }
            Ok(())
        };
        self.store
            .txn_fenced_chunks(&self.fence, writes, op, recorded)
            .await
    }
}
