//! The active agent of a zone: follows its pools in etcd, reconciles each against GCE,
//! runs operations concurrently, records what it observed (fenced), runs hooks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::TxnOp;
use pm_backoff::{Attempts, Backoff};
use pm_etcd::{
    decode, now_unix_ms, put_op, EventLog, Fence, Key, ResumableWatch, Store, StoredKey,
    WatchBatch, WatchEvent, WatchRange,
};
use pm_gce::compute::{request_id_for, wait_until_done, Compute};
use pm_gce::error::{ErrorClass, GceError};
use pm_gce::resources::{Instance, Operation};
use pm_gce::template::{render_text, TemplateVars};
use pm_proto::{
    ExhaustionReport, InstanceState, ObservedInstance, PoolConfig, Severity, ZoneDesired,
};
use pm_telemetry::Readiness;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::decide::{decide, InFlight, Listed, PoolInputs};
use crate::hooks::{HookCall, HookEvent, HookRunner};
use crate::metrics::{AgentMetrics, PoolCount, ZoneLabels};
use crate::AGENT_CONDITION;
use pm_pool::{is_pool_member, new_instance_name, pool_filter};

/// etcd's default limit of operations in one transaction is 128; stay below it.
const MAX_TXN_OPS: usize = 100;

/// Back-off of a pool's creates after quota, rate-limit and transient errors.
const CREATE_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_secs(1), Duration::from_secs(120));

/// How long a permanent error (a bad template) blocks creates unless the config changes.
const PERMANENT_BLOCK: Duration = Duration::from_secs(300);

/// After operations finish, the pool is listed again this soon (coalescing many).
const SETTLE: Duration = Duration::from_millis(500);

/// The default resync period (`secondsToRest`).
const DEFAULT_REST: Duration = Duration::from_secs(5);

/// The default base back-off of a stockout (`secondsForExhaustion`).
const DEFAULT_EXHAUSTION: Duration = Duration::from_secs(120);

/// What every term of an agent shares.
pub struct AgentContext {
    /// etcd.
    pub store: Store,
    /// GCE.
    pub compute: Arc<dyn Compute>,
    /// Hook runner.
    pub hooks: HookRunner,
    /// Event writer.
    pub events: Arc<EventLog>,
    /// Where what the agent does is counted.
    pub metrics: AgentMetrics,
    /// The agent's readiness; an active agent meets [`AGENT_CONDITION`] once it has
    /// listed GCE.
    pub readiness: Readiness,
    /// The zone served.
    pub zone: String,
    /// This agent's id.
    pub agent_id: String,
    /// Project of pools naming none.
    pub default_project: Option<String>,
    /// Operations in flight at once.
    pub max_concurrent: usize,
    /// Longest wait for one operation.
    pub operation_timeout: Duration,
}

/// Why creates in a pool are paused.
#[derive(Debug, Clone)]
struct Block {
    /// Until when.
    until: Instant,
    /// What caused it, for logs.
    reason: String,
    /// A stockout block also ends when the scheduler's exhausted key goes away.
    stockout: bool,
}

/// One pool as the agent of this zone sees it.
struct PoolState {
    /// The config; `None` until read (nothing is done without it).
    config: Option<PoolConfig>,
    /// Desired count for this zone; `None`: the scheduler has not placed the pool here,
    /// so nothing is created or scaled down.
    desired: Option<ZoneDesired>,
    /// Whether the exhausted key of this zone exists.
    exhausted: bool,
    /// Observed keys with the revision they were last written at.
    observed: BTreeMap<String, (ObservedInstance, i64)>,
    /// Revisions at which observed keys were removed, until the watch has passed them.
    removed: BTreeMap<String, i64>,
    /// Operations in flight by instance name; they count in decisions.
    in_flight: BTreeMap<String, InFlight>,
    /// Creates paused, and why.
    block: Option<Block>,
    /// Growing delays after create failures; reset on success.
    retry: Attempts,
    /// When to list GCE for this pool next.
    next_sync: Instant,
    /// The last problem reported as an event, so it is reported once, not every sync.
    reported: Option<String>,
    /// Fresh creates still waiting for a slot give up when this fires (a stockout in the
    /// zone): their inserts would only fail too. Replaced after it fires.
    create_gate: CancellationToken,
}

impl PoolState {
    fn new() -> Self {
        Self {
            config: None,
            desired: None,
            exhausted: false,
            observed: BTreeMap::new(),
            removed: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            block: None,
            retry: CREATE_BACKOFF.attempts(),
            next_sync: Instant::now(),
            reported: None,
            create_gate: CancellationToken::new(),
        }
    }

    fn known_revision(&self, name: &str) -> i64 {
        let observed = self.observed.get(name).map_or(0, |(_, rev)| *rev);
        observed.max(self.removed.get(name).copied().unwrap_or(0))
    }

    fn rest(&self) -> Duration {
        match self.config.as_ref().map(|c| c.seconds_to_rest) {
            Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs)),
            _ => DEFAULT_REST,
        }
    }

    fn exhaustion_base(&self) -> Duration {
        match self.config.as_ref().map(|c| c.seconds_for_exhaustion) {
            Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs)),
            _ => DEFAULT_EXHAUSTION,
        }
    }

    fn sync_soon(&mut self, within: Duration) {
        self.next_sync = self.next_sync.min(Instant::now() + within);
    }
}

/// An operation to run on one instance.
enum Op {
    /// `instances.insert` with the instance's requestId.
    Insert {
        /// Derived from the name; GCE de-duplicates retries with it.
        request_id: String,
        /// The rendered instance.
        instance: Box<Instance>,
        /// For fresh creates: skip the insert if this fired while waiting for a slot.
        gate: Option<CancellationToken>,
    },
    /// `instances.delete`.
    Delete,
    /// `instances.start`.
    Start,
}

impl Op {
    fn kind(&self) -> InFlight {
        match self {
            Op::Insert { .. } => InFlight::Creating,
            Op::Delete => InFlight::Deleting,
            Op::Start => InFlight::Starting,
        }
    }
}

/// What an operation task reports back.
#[derive(Debug)]
struct OpResult {
    /// Pool.
    pool: String,
    /// Instance.
    name: String,
    /// What it did.
    kind: InFlight,
    /// The outcome.
    result: Outcome,
}

/// How an operation ended.
#[derive(Debug)]
enum Outcome {
    /// Done; for a create, GCE's id of the new instance, if told.
    Done(Option<String>),
    /// GCE refused it or it failed.
    Failed(GceError),
    /// A fresh create gave up before calling GCE (its pool's zone stocked out).
    NotSent,
}

/// The active agent for one term.
pub struct ActiveAgent<'a> {
    /// Shared parts.
    ctx: &'a AgentContext,
    /// This term's fence; every etcd write carries it.
    fence: Fence,
    /// Fires when the term ends; cancels every operation in flight.
    lost: CancellationToken,
    /// Pools by name.
    pools: BTreeMap<String, PoolState>,
    /// Operation results arrive here.
    results_tx: mpsc::UnboundedSender<OpResult>,
    /// Receiving end of `results_tx`.
    results_rx: mpsc::UnboundedReceiver<OpResult>,
    /// Permits for operations in flight.
    slots: Arc<Semaphore>,
}

/// Why a term ended.
#[derive(Debug)]
pub enum TermEnd {
    /// Leadership of the zone was lost.
    Lost,
    /// etcd failed in a way the watch could not ride out.
    Failed(pm_etcd::Error),
}

impl<'a> ActiveAgent<'a> {
    /// An active agent for a term with `fence`, ending when `lost` fires.
    pub fn new(ctx: &'a AgentContext, fence: Fence, lost: CancellationToken) -> Self {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Self {
            ctx,
            fence,
            lost,
            pools: BTreeMap::new(),
            results_tx,
            results_rx,
            slots: Arc::new(Semaphore::new(ctx.max_concurrent.max(1))),
        }
    }

    /// Acts until the term ends.
    pub async fn run(mut self) -> TermEnd {
        let lost = self.lost.clone();
        let end = tokio::select! {
            _ = lost.cancelled() => Ok(()),
            r = self.follow() => r,
        };
        lost.cancel();
        match end {
            Ok(()) => TermEnd::Lost,
            Err(e) if e.is_fenced_out() => TermEnd::Lost,
            Err(e) => TermEnd::Failed(e),
        }
    }

    async fn follow(&mut self) -> pm_etcd::Result<()> {
        let keys = self.ctx.store.keys().clone();
        let prefix = keys.pools_prefix();
        let (listing, revision) = self.ctx.store.list_raw(&prefix).await?;
        for kv in &listing {
            self.apply_put(kv);
        }
        let served: Vec<String> = self
            .pools
            .iter()
            .filter(|(_, state)| self.concerns(state))
            .map(|(pool, _)| pool.clone())
            .collect();
        for pool in served {
            self.ctx
                .events
                .emit(
                    &pool,
                    "agent-active",
                    Severity::Info,
                    &self.ctx.zone,
                    "",
                    format!(
                        "agent {} is the active agent of the zone",
                        self.ctx.agent_id
                    ),
                )
                .await;
        }
        let mut watch = ResumableWatch::new(
            self.ctx.store.client().clone(),
            WatchRange::Prefix(prefix),
            revision + 1,
        );
        loop {
            self.reconcile_due().await?;
            let wake = self
                .pools
                .values()
                .map(|p| p.next_sync)
                .min()
                .unwrap_or_else(|| Instant::now() + DEFAULT_REST);
            tokio::select! {
                batch = watch.next() => {
                    self.apply_batch(batch?);
                    let horizon = watch.next_revision();
                    for pool in self.pools.values_mut() {
                        pool.removed.retain(|_, rev| *rev >= horizon);
                    }
                }
                Some(result) = self.results_rx.recv() => self.handle_result(result).await?,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn apply_batch(&mut self, batch: WatchBatch) {
        match batch {
            WatchBatch::Events(events) => {
                for event in events {
                    match event {
                        WatchEvent::Put(kv) => self.apply_put(&kv),
                        WatchEvent::Delete { key, mod_revision } => {
                            self.apply_delete(&key, mod_revision)
                        }
                    }
                }
            }
            WatchBatch::Resync { keys, .. } => {
                for pool in self.pools.values_mut() {
                    pool.config = None;
                    pool.desired = None;
                    pool.exhausted = false;
                    pool.observed.clear();
                    pool.removed.clear();
                }
                for kv in &keys {
                    self.apply_put(kv);
                }
            }
        }
    }

    fn parse(&self, raw: &str) -> Option<Key> {
        let key = self.ctx.store.keys().parse(raw.as_bytes()).ok()?;
        match key.zone() {
            Some(zone) if zone != self.ctx.zone => None,
            _ => Some(key),
        }
    }

    fn apply_put(&mut self, kv: &StoredKey) {
        let Some(key) = self.parse(&kv.key) else {
            return;
        };
        let skip =
            |e: pm_etcd::Error| tracing::warn!(error = %e, "skipping a value that does not decode");
        match key {
            Key::PoolConfig { pool } => match decode::<PoolConfig>(&kv.key, &kv.value) {
                Ok(config) => {
                    let state = self.pools.entry(pool).or_insert_with(PoolState::new);
                    let changed = state.config.as_ref() != Some(&config);
                    state.config = Some(config);
                    if changed {
                        state.block = state.block.take().filter(|b| b.stockout);
                        state.reported = None;
                        state.sync_soon(Duration::ZERO);
                    }
                }
                Err(e) => skip(e),
            },
            Key::ZoneDesired { pool, .. } => match decode::<ZoneDesired>(&kv.key, &kv.value) {
                Ok(desired) => {
                    let state = self.pools.entry(pool).or_insert_with(PoolState::new);
                    let changed = state.desired.as_ref().map(|d| (d.count, d.accept_new))
                        != Some((desired.count, desired.accept_new));
                    state.desired = Some(desired);
                    if changed {
                        state.sync_soon(Duration::ZERO);
                    }
                }
                Err(e) => skip(e),
            },
            Key::Exhausted { pool, .. } => {
                let state = self.pools.entry(pool).or_insert_with(PoolState::new);
                state.exhausted = true;
            }
            Key::Instance { pool, name, .. } => {
                match decode::<ObservedInstance>(&kv.key, &kv.value) {
                    Ok(observed) => {
                        let state = self.pools.entry(pool).or_insert_with(PoolState::new);
                        if kv.mod_revision > state.known_revision(&name) {
                            state.removed.remove(&name);
                            state.observed.insert(name, (observed, kv.mod_revision));
                        }
                    }
                    Err(e) => skip(e),
                }
            }
            Key::Report { .. } | Key::Event { .. } | Key::AgentMember { .. } => {}
        }
    }

    fn apply_delete(&mut self, raw: &str, revision: i64) {
        let Some(key) = self.parse(raw) else {
            return;
        };
        match key {
            Key::PoolConfig { pool } => {
                if let Some(state) = self.pools.get_mut(&pool) {
                    state.config = None;
                }
            }
            Key::ZoneDesired { pool, .. } => {
                if let Some(state) = self.pools.get_mut(&pool) {
                    state.desired = None;
                }
            }
            Key::Exhausted { pool, .. } => {
                if let Some(state) = self.pools.get_mut(&pool) {
                    state.exhausted = false;
                    if state.block.as_ref().is_some_and(|b| b.stockout) {
                        state.block = None;
                    }
                    state.sync_soon(Duration::ZERO);
                }
            }
            Key::Instance { pool, name, .. } => {
                if let Some(state) = self.pools.get_mut(&pool) {
                    if revision > state.known_revision(&name) {
                        state.observed.remove(&name);
                        state.removed.insert(name, revision);
                    }
                }
            }
            Key::Report { .. } | Key::Event { .. } | Key::AgentMember { .. } => {}
        }
    }

    fn project_of(&self, config: &PoolConfig) -> Option<String> {
        if config.project.is_empty() {
            self.ctx.default_project.clone()
        } else {
            Some(config.project.clone())
        }
    }

    /// Whether this agent has anything to do for the pool in its zone.
    fn concerns(&self, state: &PoolState) -> bool {
        let allowed = state
            .config
            .as_ref()
            .is_some_and(|c| c.allowed_zones.contains(&self.ctx.zone));
        allowed || state.desired.is_some() || !state.observed.is_empty()
    }

    async fn reconcile_due(&mut self) -> pm_etcd::Result<()> {
        let now = Instant::now();
        let due: Vec<String> = self
            .pools
            .iter()
            .filter(|(_, s)| s.next_sync <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for pool in due {
            let Some(state) = self.pools.get_mut(&pool) else {
                continue;
            };
            state.next_sync = now + state.rest();
            if state.config.is_none() && state.observed.is_empty() && state.desired.is_none() {
                self.pools.remove(&pool);
                self.ctx.metrics.forget_pool(&pool, &self.ctx.zone);
                continue;
            }
            // Passes over pools that do not use the zone do nothing and are not timed.
            let timed = self
                .pools
                .get(&pool)
                .is_some_and(|state| state.config.is_some() && self.concerns(state));
            let span = tracing::info_span!("reconcile", pool = %pool, zone = %self.ctx.zone);
            let started = Instant::now();
            self.reconcile_pool(&pool).instrument(span).await?;
            if timed {
                let labels = ZoneLabels {
                    zone: self.ctx.zone.clone(),
                };
                self.ctx
                    .metrics
                    .reconcile
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        if !self.pools.values().any(|state| self.concerns(state)) {
            // No pool uses the zone: there is nothing to list, and nothing in the way.
            self.ctx.readiness.met(AGENT_CONDITION);
        }
        Ok(())
    }

    async fn report_once(&mut self, pool: &str, kind: &str, severity: Severity, message: String) {
        let Some(state) = self.pools.get_mut(pool) else {
            return;
        };
        if state.reported.as_deref() == Some(message.as_str()) {
            return;
        }
        state.reported = Some(message.clone());
        self.ctx
            .events
            .emit(pool, kind, severity, &self.ctx.zone, "", message)
            .await;
    }

    /// Lists the pool's instances in GCE, decides, records and acts.
    async fn reconcile_pool(&mut self, pool: &str) -> pm_etcd::Result<()> {
        let Some(state) = self.pools.get(pool) else {
            return Ok(());
        };
        let Some(config) = state.config.clone() else {
            return Ok(());
        };
        if !self.concerns(state) {
            return Ok(());
        }
        let Some(project) = self.project_of(&config) else {
            self.report_once(
                pool,
                "no-project",
                Severity::Error,
                "the pool names no project and the agent has no --project".into(),
            )
            .await;
            return Ok(());
        };
        let filter = pool_filter(pool);
        let listed = match self
            .ctx
            .compute
            .list(&project, &self.ctx.zone, Some(&filter))
            .await
        {
            Ok(list) => {
                self.ctx.readiness.met(AGENT_CONDITION);
                list
            }
            Err(e) => {
                let delay = self.pools.get_mut(pool).map_or(DEFAULT_REST, |state| {
                    let delay = state.retry.next_delay();
                    state.next_sync = Instant::now() + delay;
                    delay
                });
                tracing::warn!(error = %e, ?delay, "cannot list instances");
                self.report_once(
                    pool,
                    "gce-error",
                    Severity::Warning,
                    format!("cannot list instances: {e}"),
                )
                .await;
                return Ok(());
            }
        };
        let listed: BTreeMap<String, Listed> = listed
            .into_iter()
            .filter(|i| is_pool_member(i, pool, &config.prefix))
            .filter_map(|i| {
                let status = i.status?;
                Some((
                    i.name.clone(),
                    Listed {
                        name: i.name.clone(),
                        status,
                        id: i.id.clone().unwrap_or_default(),
                        created: i.creation_timestamp.clone().unwrap_or_default(),
                    },
                ))
            })
            .collect();
        let Some(state) = self.pools.get_mut(pool) else {
            return Ok(());
        };
        let now_instant = Instant::now();
        if state.block.as_ref().is_some_and(|b| b.until <= now_instant) {
            state.block = None;
        }
        let may_create = state.desired.as_ref().is_some_and(|d| d.accept_new)
            && !state.exhausted
            && state.block.is_none()
            && !config.deleted;
        let inputs = PoolInputs {
            desired: state.desired.as_ref().map_or(-1, |d| d.count),
            may_create,
            on_preempted: config.on_preempted(),
            listed: listed.clone(),
            observed: state
                .observed
                .iter()
                .map(|(n, (o, _))| (n.clone(), o.clone()))
                .collect(),
            in_flight: state.in_flight.clone(),
            now_ms: now_unix_ms(),
            insert_expiry_ms: i64::try_from(self.ctx.operation_timeout.as_millis() * 2)
                .unwrap_or(i64::MAX),
        };
        let mut decision = decide(&inputs);
        if let Some(block) = &state.block {
            if decision.live < inputs.desired {
                tracing::info!(reason = %block.reason, deficit = inputs.desired - decision.live, "creates paused");
            }
        }
        if state.desired.is_none() {
            // Not placed here by the scheduler: never scale down on a guess.
            decision.delete.retain(|n| {
                listed
                    .get(n)
                    .is_some_and(|l| crate::decide::is_stopped(l.status))
                    || state
                        .observed
                        .get(n)
                        .is_some_and(|(o, _)| o.state() == InstanceState::Deleting)
            });
        }
        self.apply_decision(pool, &project, &config, &listed, decision)
            .await
    }

    async fn apply_decision(
        &mut self,
        pool: &str,
        project: &str,
        config: &PoolConfig,
        listed: &BTreeMap<String, Listed>,
        decision: crate::decide::Decision,
    ) -> pm_etcd::Result<()> {
        let zone = self.ctx.zone.clone();
        let now = now_unix_ms();
        let agent_id = self.ctx.agent_id.clone();
        let preempted_ops = if decision.lost.is_empty() {
            Vec::new()
        } else {
            let filter = "operationType = \"compute.instances.preempted\"";
            match self
                .ctx
                .compute
                .list_operations(project, &zone, Some(filter))
                .await
            {
                Ok(ops) => ops,
                Err(e) => {
                    self.report_once(
                        pool,
                        "gce-error",
                        Severity::Warning,
                        format!("cannot list preemption operations; losses are reported as vanished: {e}"),
                    )
                    .await;
                    Vec::new()
                }
            }
        };
        let was_preempted = |name: &str| {
            preempted_ops
                .iter()
                .any(|op: &Operation| op.target_name() == Some(name))
        };

        let snapshot: BTreeMap<String, ObservedInstance> = self
            .pools
            .get(pool)
            .map(|s| {
                s.observed
                    .iter()
                    .map(|(n, (o, _))| (n.clone(), o.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let current = |name: &str| snapshot.get(name).cloned();
        let mut writes: BTreeMap<String, Option<ObservedInstance>> = BTreeMap::new();
        let mut notes: Vec<(HookEvent, String, String, Severity, String)> = Vec::new();
        // What `notes` report, counted once the observed keys are written.
        let mut counts: Vec<PoolCount> = Vec::new();

        for (name, new_state) in decision.adopt.iter().chain(decision.update.iter()) {
            let mut o = current(name).unwrap_or_else(|| ObservedInstance {
                created_unix_ms: now,
                ..Default::default()
            });
            o.state = *new_state as i32;
            o.gce_id = listed.get(name).map(|l| l.id.clone()).unwrap_or_default();
            o.state_changed_unix_ms = now;
            o.agent_id = agent_id.clone();
            if *new_state == InstanceState::Running {
                o.preempted = false;
            }
            writes.insert(name.clone(), Some(o));
        }
        for name in &decision.preempted {
            let mut o = writes
                .get(name)
                .cloned()
                .flatten()
                .or_else(|| current(name))
                .unwrap_or_default();
            o.preempted = true;
            o.state = InstanceState::Terminated as i32;
            o.state_changed_unix_ms = now;
            o.agent_id = agent_id.clone();
            writes.insert(name.clone(), Some(o));
            counts.push(PoolCount::Preempted);
            notes.push((
                HookEvent::Preempted,
                "preempted".into(),
                name.clone(),
                Severity::Warning,
                format!("instance {name} was preempted"),
            ));
        }
        for name in &decision.lost {
            writes.insert(name.clone(), None);
            if was_preempted(name) {
                counts.push(PoolCount::Preempted);
                notes.push((
                    HookEvent::Preempted,
                    "preempted".into(),
                    name.clone(),
                    Severity::Warning,
                    format!("instance {name} was preempted and is gone"),
                ));
            } else {
                counts.push(PoolCount::Vanished);
                notes.push((
                    HookEvent::Vanished,
                    "vanished".into(),
                    name.clone(),
                    Severity::Warning,
                    format!("instance {name} vanished from GCE without pm deleting it"),
                ));
            }
        }
        for name in &decision.expired_insert {
            writes.insert(name.clone(), None);
            self.ctx
                .events
                .emit(
                    pool,
                    "insert-expired",
                    Severity::Warning,
                    &zone,
                    name,
                    format!("insert of {name} never showed up in GCE; forgotten"),
                )
                .await;
        }
        for name in &decision.finish_delete {
            writes.insert(name.clone(), None);
            counts.push(PoolCount::Deleted);
            notes.push((
                HookEvent::Delete,
                "deleted".into(),
                name.clone(),
                Severity::Info,
                format!("deleted {name}"),
            ));
        }
        for name in &decision.delete {
            let mut o = writes
                .get(name)
                .cloned()
                .flatten()
                .or_else(|| current(name))
                .unwrap_or_default();
            o.state = InstanceState::Deleting as i32;
            o.state_changed_unix_ms = now;
            o.agent_id = agent_id.clone();
            writes.insert(name.clone(), Some(o));
        }
        let mut creates = Vec::with_capacity(decision.create);
        let mut template_error = None;
        for _ in 0..decision.create {
            let name = new_instance_name(&config.prefix);
            let vars = TemplateVars {
                project,
                zone: &zone,
                name: &name,
                pool,
            };
            match render_text(&config.instance_json, vars) {
                Ok(instance) => {
                    let request_id = request_id_for(&name);
                    writes.insert(
                        name.clone(),
                        Some(ObservedInstance {
                            state: InstanceState::Provisioning as i32,
                            request_id: request_id.clone(),
                            created_unix_ms: now,
                            state_changed_unix_ms: now,
                            agent_id: agent_id.clone(),
                            ..Default::default()
                        }),
                    );
                    creates.push((name, request_id, instance));
                }
                Err(e) => {
                    template_error = Some(e.to_string());
                    break;
                }
            }
        }
        let mut resumes = Vec::new();
        for name in &decision.resume_insert {
            let Some(o) = current(name) else { continue };
            let vars = TemplateVars {
                project,
                zone: &zone,
                name,
                pool,
            };
            if let Ok(instance) = render_text(&config.instance_json, vars) {
                resumes.push((name.clone(), o.request_id.clone(), instance));
            }
        }

        if let Some(e) = template_error {
            self.block(pool, PERMANENT_BLOCK, format!("template: {e}"), false);
            self.report_once(
                pool,
                "bad-template",
                Severity::Error,
                format!("cannot render the instance template: {e}"),
            )
            .await;
        }
        self.write_observed(pool, writes).await?;

        for count in counts {
            self.ctx.metrics.count(count, pool, &zone);
        }
        for (event, kind, name, severity, message) in notes {
            self.ctx
                .events
                .emit(pool, &kind, severity, &zone, &name, message)
                .await;
            self.run_hook(pool, project, config, event, &name);
        }
        // The pool was looked up above and nothing removes it while this runs.
        let state = self
            .pools
            .entry(pool.to_string())
            .or_insert_with(PoolState::new);
        for name in &decision.delete {
            state.in_flight.insert(name.clone(), InFlight::Deleting);
        }
        for name in &decision.restart {
            state.in_flight.insert(name.clone(), InFlight::Starting);
        }
        for (name, _, _) in creates.iter().chain(resumes.iter()) {
            state.in_flight.insert(name.clone(), InFlight::Creating);
        }
        // Creates first: replacing lost capacity matters more than cleaning up.
        let gate = state.create_gate.clone();
        for (name, request_id, instance) in creates {
            let op = Op::Insert {
                request_id,
                instance: Box::new(instance),
                gate: Some(gate.clone()),
            };
            self.spawn_op(pool, project, name, op);
        }
        for (name, request_id, instance) in resumes {
            // A resumed insert may have reached GCE in an earlier term: always send it.
            let op = Op::Insert {
                request_id,
                instance: Box::new(instance),
                gate: None,
            };
            self.spawn_op(pool, project, name, op);
        }
        for name in decision.restart {
            self.spawn_op(pool, project, name, Op::Start);
        }
        for name in decision.delete {
            self.spawn_op(pool, project, name, Op::Delete);
        }
        Ok(())
    }

    fn block(&mut self, pool: &str, for_: Duration, reason: String, stockout: bool) {
        if let Some(state) = self.pools.get_mut(pool) {
            tracing::info!(%pool, ?for_, %reason, "pausing creates");
            state.block = Some(Block {
                until: Instant::now() + for_,
                reason,
                stockout,
            });
            state.next_sync = state.next_sync.min(Instant::now() + for_);
        }
    }

    /// Writes (or removes, for `None`) observed keys in fenced transactions and updates
    /// the view with the revision written.
    async fn write_observed(
        &mut self,
        pool: &str,
        writes: BTreeMap<String, Option<ObservedInstance>>,
    ) -> pm_etcd::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let keys = self.ctx.store.keys().clone();
        let entries: Vec<(String, Option<ObservedInstance>)> = writes.into_iter().collect();
        for chunk in entries.chunks(MAX_TXN_OPS) {
            let mut ops = Vec::with_capacity(chunk.len());
            for (name, value) in chunk {
                let key = keys.instance(pool, &self.ctx.zone, name)?;
                ops.push(match value {
                    Some(o) => put_op(&key, o, 0),
                    None => TxnOp::delete(key.as_str(), None),
                });
            }
            let revision = self.ctx.store.txn_fenced(&self.fence, ops).await?;
            let state = self
                .pools
                .entry(pool.to_string())
                .or_insert_with(PoolState::new);
            for (name, value) in chunk {
                match value {
                    Some(o) => {
                        state.removed.remove(name);
                        state.observed.insert(name.clone(), (o.clone(), revision));
                    }
                    None => {
                        state.observed.remove(name);
                        state.removed.insert(name.clone(), revision);
                    }
                }
            }
        }
        Ok(())
    }

    fn run_hook(
        &self,
        pool: &str,
        project: &str,
        config: &PoolConfig,
        event: HookEvent,
        instance: &str,
    ) {
        if let Some(name) = event.configured(config.hooks.as_ref()) {
            self.ctx.hooks.spawn(HookCall {
                name,
                event,
                pool: pool.to_string(),
                project: project.to_string(),
                zone: self.ctx.zone.clone(),
                instance: instance.to_string(),
            });
        }
    }

    /// Runs one operation in the background: the call to GCE holds one of the
    /// `--max-concurrent` slots; waiting for the operation to finish does not.
    fn spawn_op(&self, pool: &str, project: &str, name: String, op: Op) {
        let compute = self.ctx.compute.clone();
        let slots = self.slots.clone();
        let tx = self.results_tx.clone();
        let cancel = self.lost.clone();
        let zone = self.ctx.zone.clone();
        let project = project.to_string();
        let pool = pool.to_string();
        let timeout = self.ctx.operation_timeout;
        let kind = op.kind();
        tokio::spawn(async move {
            let work = async {
                let started = {
                    let Ok(_permit) = slots.acquire_owned().await else {
                        return Outcome::NotSent;
                    };
                    let call = match &op {
                        Op::Insert {
                            request_id,
                            instance,
                            gate,
                        } => {
                            if gate.as_ref().is_some_and(CancellationToken::is_cancelled) {
                                return Outcome::NotSent;
                            }
                            compute
                                .insert(&project, &zone, instance, request_id)
                                .await
                                .map(Some)
                        }
                        Op::Delete => compute.delete(&project, &zone, &name).await,
                        Op::Start => compute.start(&project, &zone, &name).await.map(Some),
                    };
                    match call {
                        Ok(started) => started,
                        Err(e) => return Outcome::Failed(e),
                    }
                };
                match started {
                    Some(op) => {
                        match wait_until_done(compute.as_ref(), &project, op, timeout).await {
                            Ok(done) => Outcome::Done(done.target_id),
                            Err(e) => Outcome::Failed(e),
                        }
                    }
                    None => Outcome::Done(None),
                }
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = work => r,
            };
            tx.send(OpResult {
                pool,
                name,
                kind,
                result,
            })
            .ok();
        });
    }

    async fn handle_result(&mut self, r: OpResult) -> pm_etcd::Result<()> {
        let zone = self.ctx.zone.clone();
        let Some(state) = self.pools.get_mut(&r.pool) else {
            return Ok(());
        };
        state.in_flight.remove(&r.name);
        state.sync_soon(SETTLE);
        let Some(config) = state.config.clone() else {
            return Ok(());
        };
        let project = self.project_of(&config).unwrap_or_default();
        let pool = r.pool.clone();
        match (r.kind, r.result) {
            (InFlight::Creating, Outcome::Done(target_id)) => {
                // The insert is done: record it, so that an instance missing from GCE
                // from now on is a loss, not an insert to resume.
                let recorded = self.pools.get_mut(&pool).and_then(|state| {
                    state.retry.reset();
                    state.reported = None;
                    state.observed.get(&r.name).map(|(o, _)| o.clone())
                });
                if let Some(mut o) = recorded.filter(|o| o.gce_id.is_empty()) {
                    o.gce_id = target_id.unwrap_or_else(|| "created".into());
                    self.write_observed(&pool, BTreeMap::from([(r.name.clone(), Some(o))]))
                        .await?;
                }
                self.ctx.metrics.count(PoolCount::Created, &pool, &zone);
                self.ctx
                    .events
                    .emit(
                        &pool,
                        "created",
                        Severity::Info,
                        &zone,
                        &r.name,
                        format!("created {}", r.name),
                    )
                    .await;
                self.run_hook(&pool, &project, &config, HookEvent::Create, &r.name);
            }
            (InFlight::Deleting, Outcome::Done(_)) => {
                self.write_observed(&pool, BTreeMap::from([(r.name.clone(), None)]))
                    .await?;
                self.ctx.metrics.count(PoolCount::Deleted, &pool, &zone);
                self.ctx
                    .events
                    .emit(
                        &pool,
                        "deleted",
                        Severity::Info,
                        &zone,
                        &r.name,
                        format!("deleted {}", r.name),
                    )
                    .await;
                self.run_hook(&pool, &project, &config, HookEvent::Delete, &r.name);
            }
            (InFlight::Starting, Outcome::Done(_)) => {
                self.ctx
                    .events
                    .emit(
                        &pool,
                        "restarted",
                        Severity::Info,
                        &zone,
                        &r.name,
                        format!("restarted preempted {}", r.name),
                    )
                    .await;
            }
            (InFlight::Creating, Outcome::NotSent) => {
                self.write_observed(&pool, BTreeMap::from([(r.name.clone(), None)]))
                    .await?;
            }
            (InFlight::Deleting | InFlight::Starting, Outcome::NotSent) => {}
            (kind, Outcome::Failed(e)) => {
                self.handle_failure(&pool, &project, &config, kind, &r.name, e)
                    .await?
            }
        }
        Ok(())
    }

    /// The one place a failed operation maps to a reaction.
    async fn handle_failure(
        &mut self,
        pool: &str,
        project: &str,
        config: &PoolConfig,
        kind: InFlight,
        name: &str,
        e: GceError,
    ) -> pm_etcd::Result<()> {
        let zone = self.ctx.zone.clone();
        let class = e.class();
        let creating = matches!(kind, InFlight::Creating | InFlight::Starting);
        let what = match kind {
            InFlight::Creating => "create",
            InFlight::Deleting => "delete",
            InFlight::Starting => "restart",
        };
        // An insert that definitely failed leaves no instance: forget its key. One whose
        // outcome is unknown keeps it, to be resumed with the same requestId.
        let forget = kind == InFlight::Creating
            && match class {
                ErrorClass::Stockout
                | ErrorClass::Quota
                | ErrorClass::RateLimit
                | ErrorClass::Permanent
                | ErrorClass::NotFound => true,
                ErrorClass::Retryable | ErrorClass::AlreadyExists => false,
            };
        if forget {
            self.write_observed(pool, BTreeMap::from([(name.to_string(), None)]))
                .await?;
        }
        if let GceError::OperationTimeout { .. } = &e {
            // GCE took the call; only its operation is slow to finish. The next lists
            // show what it did (an insert's key stays, so it is adopted or resumed with
            // its requestId). Backing off creates would only stall the pool: GCE's
            // operations can lag for minutes while the instances are long up.
            self.ctx
                .events
                .emit(
                    pool,
                    &format!("{what}-slow"),
                    Severity::Warning,
                    &zone,
                    name,
                    format!("{what} of {name} not finished yet; following it in the lists: {e}"),
                )
                .await;
            return Ok(());
        }
        let base = self
            .pools
            .get(pool)
            .map_or(DEFAULT_EXHAUSTION, |s| s.exhaustion_base());
        let delay = self
            .pools
            .get_mut(pool)
            .map_or(Duration::from_secs(1), |s| s.retry.next_delay());
        match class {
            ErrorClass::Stockout if creating => {
                if let Some(state) = self.pools.get_mut(pool) {
                    std::mem::replace(&mut state.create_gate, CancellationToken::new()).cancel();
                }
                let report = ExhaustionReport {
                    observed_unix_ms: now_unix_ms(),
                    code: stockout_code(&e),
                    message: e.to_string(),
                    agent_id: self.ctx.agent_id.clone(),
                };
                let key = self.ctx.store.keys().report(pool, &zone)?;
                self.ctx.metrics.count(PoolCount::Stockout, pool, &zone);
                self.ctx
                    .store
                    .put_fenced(&self.fence, &key, &report, 0)
                    .await?;
                self.block(pool, base, "stockout".into(), true);
                self.ctx
                    .events
                    .emit(
                        pool,
                        "stockout",
                        Severity::Warning,
                        &zone,
                        name,
                        format!("{what} of {name} failed: zone out of capacity: {e}"),
                    )
                    .await;
                self.run_hook(pool, project, config, HookEvent::Exhausted, "");
            }
            ErrorClass::Quota
            | ErrorClass::RateLimit
            | ErrorClass::Retryable
            | ErrorClass::Stockout => {
                if creating {
                    self.block(pool, delay, format!("{class:?}"), false);
                }
                if let Some(state) = self.pools.get_mut(pool) {
                    state.next_sync = state
                        .next_sync
                        .max(Instant::now() + delay.min(state.rest()));
                }
                self.ctx
                    .events
                    .emit(
                        pool,
                        &format!("{what}-failed"),
                        Severity::Warning,
                        &zone,
                        name,
                        format!("{what} of {name} failed ({class:?}), backing off {delay:?}: {e}"),
                    )
                    .await;
            }
            ErrorClass::Permanent | ErrorClass::NotFound => {
                if creating {
                    self.block(pool, PERMANENT_BLOCK, "permanent error".into(), false);
                }
                self.ctx
                    .events
                    .emit(
                        pool,
                        &format!("{what}-failed"),
                        Severity::Error,
                        &zone,
                        name,
                        format!("{what} of {name} failed permanently: {e}"),
                    )
                    .await;
            }
            ErrorClass::AlreadyExists => {
                tracing::info!(%name, "insert found the instance already there; adopting it");
            }
        }
        Ok(())
    }
}

/// The GCE error code of a stockout, for the report.
fn stockout_code(e: &GceError) -> String {
    match e {
        GceError::OperationFailed { errors, .. } => errors
            .iter()
            .map(|x| x.code.clone())
            .find(|c| c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED"))
            .unwrap_or_else(|| "ZONE_RESOURCE_POOL_EXHAUSTED".into()),
        _ => "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
    }
}
