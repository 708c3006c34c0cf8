//! The active agent of a zone, for one term: the loop. It follows its pools in etcd
//! (pm-etcd's keyspace view and the agent's own state beside it, [`crate::pool_state`]),
//! runs a reconcile pass over each pool when it is due
//! ([`crate::reconcile`]), carries out what the pass returns (fenced writes of the
//! observed keys, events, hooks, operations), and reacts to each operation's outcome
//! ([`crate::operations`], [`crate::failure`]). Its member key says whether its passes
//! complete ([`crate::heartbeat`]), written only when that changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use pm_daemon::TermEnd;
use pm_etcd::{now_unix_ms, EventLog, Fence, Store};
use pm_gce::compute::Compute;
use pm_gce::error::GceError;
use pm_pool::HookEvent;
use pm_proto::{ExhaustionClass, PoolConfig, Severity};
use pm_telemetry::Readiness;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::decide::InFlight;
use crate::effects::{Effects, Notice};
use crate::failure::{self, Action, PERMANENT_PAUSE};
use crate::heartbeat::{Heartbeat, Member};
use crate::hooks::{HookCall, HookRunner};
use crate::lists::{Lists, Returned};
use crate::metrics::{AgentMetrics, PoolCount, ZoneLabels};
use crate::notice::{self, Notices};
use crate::operations::{Op, OpResult, Operations, Outcome, Slots};
use crate::pool_state::{PoolState, Pools};
use crate::reconcile::{continue_pass, start_pass, Pass, PassContext, Report, Start};
use crate::zone_watch::{ZoneWatches, DISCOVERY};
use crate::{witness, zone_report, AGENT_CONDITION};

mod drain;
mod writes;

/// After operations finish, the pool is listed again this soon (coalescing many).
const SETTLE: Duration = Duration::from_millis(500);

/// How long the loop sleeps when no pool is due (none known yet).
const IDLE: Duration = Duration::from_secs(5);

/// How long a pool whose list is in flight is not due; the pass sets the real time when
/// the list returns (the client's own timeout ends a list well before).
const LIST_IN_FLIGHT: Duration = Duration::from_secs(3600);

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
    /// Operations in flight and waited on at once.
    pub slots: Slots,
    /// Longest wait for one operation.
    pub operation_timeout: Duration,
    /// An active agent without a completed pass for this long is stalled.
    pub stall_after: Duration,
    /// Period of the full re-read of the pools prefix, on top of the watch (`--resync`).
    pub resync: Duration,
    /// How often to look for preemption notices (`--notice-interval`); `None`: never.
    pub notice_interval: Option<Duration>,
}

/// The active agent for one term.
pub struct ActiveAgent<'a> {
    /// Shared parts.
    ctx: &'a AgentContext,
    /// This term's fence; every etcd write carries it.
    fence: Fence,
    /// Fires when the term ends; cancels every operation in flight.
    lost: CancellationToken,
    /// The pools followed.
    pools: Pools,
    /// Operations in flight.
    ops: Operations,
    /// The member key the heartbeat is written to.
    member: Member,
    /// Whether passes complete, and what the member key says of it.
    heartbeat: Heartbeat,
    /// The GCE lists of passes in flight.
    lists: Lists,
    /// Where drain hooks report their outcome.
    drain_hooks: drain::DrainHooks,
}

impl<'a> ActiveAgent<'a> {
    /// An active agent for a term with `fence`, ending when `lost` fires, registered as
    /// `member`.
    pub fn new(
        ctx: &'a AgentContext,
        fence: Fence,
        lost: CancellationToken,
        member: Member,
    ) -> Self {
        let ops = Operations::new(
            ctx.compute.clone(),
            ctx.slots.clone(),
            &ctx.zone,
            ctx.operation_timeout,
            lost.clone(),
        );
        Self {
            ctx,
            fence,
            lost,
            pools: Pools::new(&ctx.zone, ctx.store.keys().clone()),
            ops,
            member,
            heartbeat: Heartbeat::new(ctx.stall_after),
            lists: Lists::default(),
            drain_hooks: drain::DrainHooks::default(),
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
        let ctx = self.ctx;
        let mut watches = ZoneWatches::new(ctx.store.clone(), &ctx.zone, ctx.readiness.clone());
        self.relist(&mut watches).await?;
        let served: Vec<String> = self
            .pools
            .pools
            .iter()
            .filter(|(pool, state)| state.concerns(&ctx.zone, self.pools.zone_keys(pool)))
            .map(|(pool, _)| pool.clone())
            .collect();
        for pool in served {
            let message = format!("agent {} is the active agent of the zone", ctx.agent_id);
            self.emit(&pool, "agent-active", Severity::Info, "", message)
                .await;
        }
        let mut resync = tokio::time::interval(ctx.resync);
        resync.tick().await;
        let mut discovery = tokio::time::interval(DISCOVERY);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut notices = ctx.notice_interval.map(Notices::new);
        loop {
            self.reconcile_due().await?;
            self.beat().await?;
            let wake = self
                .pools
                .pools
                .values()
                .map(|p| p.next_sync)
                .chain(self.heartbeat.deadline())
                .min()
                .unwrap_or_else(|| Instant::now() + IDLE);
            tokio::select! {
                heard = watches.next() => {
                    let heard = heard?;
                    self.pools.apply_span(heard.batch, (&heard.start, &heard.end));
                }
                Some(result) = self.ops.next() => self.handle_result(result).await?,
                returned = self.lists.next() => self.listed(returned).await?,
                Some(done) = self.drain_hooks.rx.recv() => self.drain_hook_finished(done).await?,
                _ = tokio::time::sleep_until(wake) => {}
                _ = discovery.tick() => self.discover(&mut watches).await?,
                _ = resync.tick() => self.relist(&mut watches).await?,
                Some(step) = notice::step(notices.as_mut()) => if let Some(n) = notices.as_mut() {
                    n.take(step, ctx, &mut self.pools, &self.lists);
                },
            }
        }
    }

    /// Reads every pool's config and keys of the zone again as the whole truth, and
    /// follows the pools not followed yet.
    async fn relist(&mut self, watches: &mut ZoneWatches) -> pm_etcd::Result<()> {
        let known = watches.followed();
        let listing = self.ctx.store.list_zone(&self.ctx.zone, &known).await?;
        self.pools.load(&listing.keys, listing.revision);
        for pool in &listing.pools {
            watches.follow(pool, listing.revision + 1)?;
        }
        self.drop_gone(watches, &listing.pools);
        Ok(())
    }

    /// Follows the pools that appeared since the last look, each from a listing of its
    /// spans.
    async fn discover(&mut self, watches: &mut ZoneWatches) -> pm_etcd::Result<()> {
        let store = &self.ctx.store;
        let (found, _) = store.new_pools(&watches.followed()).await?;
        for pool in &found {
            let (keys, revision) = store.list_pool_zone(pool, &self.ctx.zone, 0).await?;
            for (start, end) in store.keys().zone_spans(pool, &self.ctx.zone)? {
                self.pools.load_span(&keys, revision, (&start, &end));
            }
            watches.follow(pool, revision + 1)?;
        }
        Ok(())
    }

    /// Stops following the pools that the listing found no key of and that the agent
    /// has forgotten; one that still holds keys elsewhere is found again as new.
    fn drop_gone(&self, watches: &mut ZoneWatches, present: &[String]) {
        for pool in watches.followed() {
            if !present.contains(&pool) && !self.pools.pools.contains_key(&pool) {
                watches.forget(&pool);
            }
        }
    }

    /// Writes the member key when what it says of the passes changed.
    async fn beat(&mut self) -> pm_etcd::Result<()> {
        let Some(value) = self.heartbeat.change(&self.member.info, Instant::now()) else {
            return Ok(());
        };
        if value.reconciling == Some(false) {
            tracing::warn!(stall_after = ?self.ctx.stall_after, "no reconcile pass completed; the zone counts as without agent");
        }
        let member = &self.member;
        self.ctx
            .store
            .put_fenced(&self.fence, &member.key, &value, member.lease)
            .await?;
        self.heartbeat.recorded(&value);
        Ok(())
    }

    async fn emit(&self, pool: &str, kind: &str, severity: Severity, name: &str, message: String) {
        self.ctx
            .events
            .emit(pool, kind, severity, &self.ctx.zone, name, message)
            .await;
    }

    fn state(&mut self, pool: &str) -> &mut PoolState {
        self.pools.pools.entry(pool.to_string()).or_default()
    }

    async fn reconcile_due(&mut self) -> pm_etcd::Result<()> {
        let now = Instant::now();
        let due: Vec<String> = self
            .pools
            .pools
            .iter()
            .filter(|(_, s)| s.next_sync <= now)
            .map(|(name, _)| name.clone())
            .collect();
        let mut live = BTreeSet::new();
        for pool in due {
            let keys = self.pools.zone_keys(&pool);
            if self.pools.pools.get(&pool).is_some_and(|s| s.is_gone(keys)) {
                self.pools.pools.remove(&pool);
                self.ctx.metrics.forget_pool(&pool, &self.ctx.zone);
            } else {
                live.insert(pool);
            }
        }
        for pool in live {
            if self.lists.full() {
                break;
            }
            if !self.lists.busy(&pool) {
                self.start_pass(&pool).await?;
            }
        }
        if !self.pools.any_concerns_zone() {
            // No pool uses the zone: there is nothing to list, and nothing in the way.
            self.ctx.readiness.met(AGENT_CONDITION);
            self.heartbeat.passed(now, now_unix_ms());
        }
        Ok(())
    }

    fn pass_context(&self) -> PassContext<'a> {
        let ctx = self.ctx;
        PassContext {
            compute: ctx.compute.as_ref(),
            zone: &ctx.zone,
            agent_id: &ctx.agent_id,
            default_project: ctx.default_project.as_deref(),
            operation_timeout: ctx.operation_timeout,
        }
    }

    /// Starts a pass over `pool`: done at once when there is nothing to list, else its
    /// GCE list runs beside the other pools' ([`Lists`]) and the pass goes on in
    /// [`Self::listed`].
    async fn start_pass(&mut self, pool: &str) -> pm_etcd::Result<()> {
        let pass_ctx = self.pass_context();
        let (state, keys) = self.pools.state_and_keys(pool);
        match start_pass(&pass_ctx, pool, state, keys) {
            Start::Done(pass) => {
                state.next_sync = pass.next_sync;
                let span = tracing::info_span!("reconcile", pool = %pool, zone = %self.ctx.zone);
                self.finish_pass(pool, pass, None).instrument(span).await
            }
            Start::List(request) => {
                // Not due again while its list runs: the pass sets the next time.
                state.next_sync = Instant::now() + LIST_IN_FLIGHT;
                let compute = self.ctx.compute.clone();
                self.lists.start(pool, request, compute, &self.ctx.zone);
                Ok(())
            }
        }
    }

    /// Goes on with a pass whose list returned. A pool gone meanwhile, or whose config
    /// changed, is passed over again with what is stored now.
    async fn listed(&mut self, returned: Returned) -> pm_etcd::Result<()> {
        let Returned {
            pool,
            request,
            started,
            listed,
            counted,
        } = returned;
        let pass_ctx = self.pass_context();
        let Some(state) = self.pools.pools.get_mut(&pool) else {
            return Ok(());
        };
        if state.config.as_ref() != Some(&*request.config) {
            state.next_sync = Instant::now();
            return Ok(());
        }
        let (state, keys) = self.pools.state_and_keys(&pool);
        let timed = state.concerns(&self.ctx.zone, keys);
        let span = tracing::info_span!("reconcile", pool = %pool, zone = %self.ctx.zone);
        let pass = continue_pass(&pass_ctx, &pool, state, keys, request, listed)
            .instrument(span.clone())
            .await;
        state.next_sync = pass.next_sync;
        let answers = witness::answers(
            counted,
            &mut state.witnessed,
            &self.ctx.zone,
            &self.ctx.agent_id,
        );
        self.answer(&pool, answers).await?;
        self.finish_pass(&pool, pass, timed.then_some(started))
            .instrument(span)
            .await
    }

    /// Carries out one pass over `pool`.
    async fn finish_pass(
        &mut self,
        pool: &str,
        pass: Pass,
        started: Option<Instant>,
    ) -> pm_etcd::Result<()> {
        let ctx = self.ctx;
        if pass.listed {
            ctx.readiness.met(AGENT_CONDITION);
            self.heartbeat.passed(Instant::now(), now_unix_ms());
        }
        for report in pass.reports {
            self.report_once(pool, report).await;
        }
        if let Some((project, effects)) = pass.effects {
            self.carry_out(pool, &project, effects).await?;
        }
        if let Some(started) = started {
            let labels = ZoneLabels {
                zone: ctx.zone.clone(),
            };
            ctx.metrics
                .reconcile
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn report_once(&mut self, pool: &str, report: Report) {
        let state = self.state(pool);
        if state.reported.as_deref() == Some(report.message.as_str()) {
            return;
        }
        state.reported = Some(report.message.clone());
        self.emit(pool, report.kind, report.severity, "", report.message)
            .await;
    }

    /// Records a change of the pool's state as an event (always: each change happens
    /// once).
    async fn report_change(&self, pool: &str, report: Report) {
        self.emit(pool, report.kind, report.severity, "", report.message)
            .await;
    }

    /// Carries out a pass's effects: keys first (every insert is recorded before it is
    /// sent), then events and hooks, then the calls.
    async fn carry_out(&mut self, pool: &str, project: &str, fx: Effects) -> pm_etcd::Result<()> {
        let Some(config) = self.state(pool).config.clone() else {
            return Ok(());
        };
        for early in &fx.early_events {
            self.emit(
                pool,
                early.kind,
                early.severity,
                &early.instance,
                early.message.clone(),
            )
            .await;
        }
        if let Some(e) = fx.template_error {
            self.state(pool)
                .pause_creates(PERMANENT_PAUSE, format!("template: {e}"), false);
            let report = Report {
                kind: "bad-template",
                severity: Severity::Error,
                message: format!("cannot render the instance template: {e}"),
            };
            self.report_once(pool, report).await;
        }
        self.write_observed(pool, fx.writes).await?;
        for notice in &fx.notices {
            self.ctx.metrics.count_notice(notice, pool, &self.ctx.zone);
        }
        for notice in fx.notices {
            self.notify(pool, project, &config, notice).await;
        }
        let state = self.state(pool);
        for name in &fx.deletes {
            state.in_flight.insert(name.clone(), InFlight::Deleting);
        }
        for name in fx.restarts.iter().chain(fx.resumes_suspended.iter()) {
            state.in_flight.insert(name.clone(), InFlight::Starting);
        }
        for insert in fx.creates.iter().chain(fx.resumes.iter()) {
            state
                .in_flight
                .insert(insert.name.clone(), InFlight::Creating);
        }
        for claim in fx.claims.iter().chain(&fx.drain_labels) {
            state
                .in_flight
                .insert(claim.name.clone(), InFlight::Labelling);
        }
        // Creates first: replacing lost capacity matters more than cleaning up.
        let gate = state.create_gate.clone();
        for insert in fx.creates {
            let op = Op::Insert {
                request_id: insert.request_id,
                instance: Box::new(insert.instance),
                gate: Some(gate.clone()),
            };
            self.ops.spawn(pool, project, insert.name, op);
        }
        for insert in fx.resumes {
            // A resumed insert may have reached GCE in an earlier term: always send it.
            let op = Op::Insert {
                request_id: insert.request_id,
                instance: Box::new(insert.instance),
                gate: None,
            };
            self.ops.spawn(pool, project, insert.name, op);
        }
        // Each call goes to its instance's own project: one from before a project change,
        // else the pool's.
        let elsewhere = fx.elsewhere;
        let project_of = |name: &str| elsewhere.get(name).map_or(project, String::as_str);
        for name in fx.restarts {
            self.ops.spawn(pool, project_of(&name), name, Op::Start);
        }
        for name in fx.resumes_suspended {
            self.ops.spawn(pool, project_of(&name), name, Op::Resume);
        }
        for name in fx.deletes {
            self.ops.spawn(pool, project_of(&name), name, Op::Delete);
        }
        for claim in fx.claims.into_iter().chain(fx.drain_labels) {
            let op = Op::SetLabels {
                labels: claim.labels,
                fingerprint: claim.fingerprint,
            };
            self.ops
                .spawn(pool, project_of(&claim.name), claim.name, op);
        }
        let pending = fx.drain_hook_pending.into_iter();
        let pending = pending.map(|name| (project_of(&name).to_string(), name));
        self.resume_drain_hooks(pool, &config, pending.collect());
        self.remove_requests(pool, fx.stale_requests).await?;
        let drains = fx.drains.into_iter();
        let drains = drains.map(|(start, label)| {
            let in_project = project_of(&start.name).to_string();
            (start, label, in_project)
        });
        self.start_drains(pool, &config, drains.collect()).await
    }

    /// Whether `name` is draining.
    fn is_draining(&self, pool: &str, name: &str) -> bool {
        let instance = self.pools.zone_keys(pool).instances.get(name);
        instance.is_some_and(|o| o.value.drain.is_some())
    }

    /// Counts a notice, records its event and runs its hook.
    async fn count_and_notify(
        &self,
        pool: &str,
        project: &str,
        config: &PoolConfig,
        notice: Notice,
    ) {
        self.ctx.metrics.count_notice(&notice, pool, &self.ctx.zone);
        self.notify(pool, project, config, notice).await;
    }

    /// Records a notice's event and runs its hook.
    async fn notify(&self, pool: &str, project: &str, config: &PoolConfig, notice: Notice) {
        self.emit(
            pool,
            notice.kind,
            notice.severity,
            &notice.instance,
            notice.message,
        )
        .await;
        if let Some(hook) = notice.hook {
            self.run_hook(pool, project, config, hook, &notice.instance);
        }
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
                env: Vec::new(),
            });
        }
    }

    async fn handle_result(&mut self, r: OpResult) -> pm_etcd::Result<()> {
        let Some(state) = self.pools.pools.get_mut(&r.pool) else {
            return Ok(());
        };
        state.in_flight.remove(&r.name);
        state.wake_within(SETTLE);
        let Some(config) = state.config.clone() else {
            return Ok(());
        };
        let project =
            pm_pool::project_or(&config, self.ctx.default_project.as_deref()).unwrap_or_default();
        let pool = r.pool.as_str();
        let name = r.name.as_str();
        match (r.kind, r.outcome) {
            (InFlight::Creating, Outcome::Done(target_id)) => {
                // The insert is done: record it, so that an instance missing from GCE
                // from now on is a loss, not an insert to resume.
                if let Some(left) = self.state(pool).create_succeeded() {
                    self.report_change(pool, left).await;
                }
                let recorded = self.pools.zone_keys(pool).instances.get(name);
                let recorded = recorded.map(|o| o.value.clone());
                if let Some(mut o) = recorded.filter(|o| o.gce_id.is_empty()) {
                    o.gce_id = target_id.unwrap_or_else(|| "created".into());
                    self.write_one(pool, name, Some(o)).await?;
                }
                let notice = Notice {
                    hook: Some(HookEvent::Create),
                    kind: "created",
                    instance: name.to_string(),
                    severity: Severity::Info,
                    message: format!("created {name}"),
                    count: Some(PoolCount::Created),
                    lifetime_ms: None,
                };
                self.count_and_notify(pool, &project, &config, notice).await;
            }
            (InFlight::Deleting, Outcome::Done(_)) => {
                self.write_one(pool, name, None).await?;
                let notice = Notice {
                    hook: Some(HookEvent::Delete),
                    kind: "deleted",
                    instance: name.to_string(),
                    severity: Severity::Info,
                    message: format!("deleted {name}"),
                    count: Some(PoolCount::Deleted),
                    lifetime_ms: None,
                };
                self.count_and_notify(pool, &project, &config, notice).await;
            }
            (InFlight::Starting, Outcome::Done(_)) => {
                if let Some(left) = self.state(pool).create_succeeded() {
                    self.report_change(pool, left).await;
                }
                let message = format!("restarted preempted {name}");
                self.emit(pool, "restarted", Severity::Info, name, message)
                    .await;
            }
            (InFlight::Labelling, Outcome::Done(_)) if !self.is_draining(pool, name) => {
                let message = format!("adopted {name}: labelled pm-pool={pool}");
                self.emit(pool, "adopted", Severity::Info, name, message)
                    .await;
            }
            (InFlight::Labelling, Outcome::Done(_)) => {}
            (InFlight::Labelling, Outcome::Failed(e)) => self.label_failed(pool, name, e).await,
            (InFlight::Creating, Outcome::NotSent) => self.write_one(pool, name, None).await?,
            (InFlight::Deleting | InFlight::Starting | InFlight::Labelling, Outcome::NotSent) => {}
            (kind, Outcome::Failed(e)) => {
                self.handle_failure(pool, &project, &config, kind, name, e)
                    .await?
            }
        }
        Ok(())
    }

    /// A `setLabels` GCE refused: a changed fingerprint (the labels changed since the
    /// list) is decided again on the next list; any other refusal is for good, with an
    /// event: a claim leaves the VM alone, a drain goes on without its label.
    async fn label_failed(&mut self, pool: &str, name: &str, e: GceError) {
        if matches!(e, GceError::Http { status: 412, .. }) {
            tracing::info!(instance = %name, "its labels changed since the list; deciding again");
            return;
        }
        let (kind, message) = if self.is_draining(pool, name) {
            let message =
                format!("cannot label {name} pm-state=draining, draining it without: {e}");
            ("drain-label-failed", message)
        } else {
            (
                "adopt-failed",
                format!("cannot adopt {name}, leaving it alone: {e}"),
            )
        };
        self.state(pool).label_refused.insert(name.to_string());
        self.emit(pool, kind, Severity::Warning, name, message)
            .await;
    }

    /// Reports to the scheduler that the zone can take no more instances of `pool`, as
    /// `error` of `class` (with GCE's `code`) says: its share is to move.
    async fn report_zone(
        &self,
        pool: &str,
        error: &GceError,
        class: ExhaustionClass,
        code: String,
    ) -> pm_etcd::Result<()> {
        let ctx = self.ctx;
        let report = zone_report::report(error, class, code, &ctx.agent_id, now_unix_ms());
        let key = ctx.store.keys().report(pool, &ctx.zone)?;
        ctx.store.put_fenced(&self.fence, &key, &report, 0).await?;
        Ok(())
    }

    /// Carries out [`failure::react`]'s reaction to a failed operation.
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
        let state = self.state(pool);
        let reaction = failure::react(kind, &e, || state.create_retry.next_delay());
        if reaction.forget_intent {
            self.write_one(pool, name, None).await?;
        }
        let zone_error =
            zone_report::zone_error_class(&e, &zone).filter(|_| kind == InFlight::Creating);
        let state = self.state(pool);
        match &reaction.action {
            // The result already brings the next pass forward (SETTLE).
            Action::FollowInLists | Action::Relist => {}
            Action::Stockout => {
                state.cancel_queued_creates();
                let base = state.exhaustion_base();
                let code = failure::stockout_code(&e);
                self.ctx.metrics.count(PoolCount::Stockout, pool, &zone);
                self.report_zone(pool, &e, ExhaustionClass::Stockout, code)
                    .await?;
                self.state(pool)
                    .pause_creates(base, "stockout".into(), true);
            }
            Action::Throttle => {
                tracing::info!(%name, error = %e, "create refused; creates throttled");
                if let Some(entered) = state.throttle_creates(&e) {
                    self.report_change(pool, entered).await;
                }
            }
            Action::BackOff {
                delay,
                pause_creates,
            } => {
                if *pause_creates {
                    state.pause_creates(*delay, format!("{:?}", e.class()), false);
                }
                let hold = (*delay).min(state.rest());
                state.hold_until(Instant::now() + hold);
            }
            Action::Permanent { pause_creates } => {
                if *pause_creates {
                    // A zone error's pause ends with the zone's exhaustion, as a stockout's
                    // does: the zone tries (and reports) again as soon as the scheduler
                    // gives it a share, instead of missing that share for PERMANENT_PAUSE.
                    let zone_own = zone_error == Some(ExhaustionClass::ZoneError);
                    let reason = if zone_own {
                        "zone error"
                    } else {
                        "permanent error"
                    };
                    state.pause_creates(PERMANENT_PAUSE, reason.into(), zone_own);
                }
            }
            Action::Adopt => {
                tracing::info!(%name, "insert found the instance already there; adopting it");
            }
        }
        if let Some(class) = zone_error {
            self.report_zone(pool, &e, class, String::new()).await?;
        }
        if let Some((kind, severity, message)) = failure::event(kind, name, &e, &reaction.action) {
            self.emit(pool, &kind, severity, name, message).await;
        }
        if reaction.action == Action::Stockout {
            self.run_hook(pool, project, config, HookEvent::Exhausted, "");
        }
        Ok(())
    }
}
