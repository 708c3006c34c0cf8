//! pm-agent: one process per zone (more for standby). It registers, campaigns for its
//! zone, and while active keeps every pool's instances in the zone at the scheduler's
//! desired count through GCE, records what it observes, and runs the operator's hooks.
//!
//! - [`active`]: the active agent's loop for one term: follows etcd, runs passes when
//!   due, carries out what they return, reacts to operations' outcomes.
//! - [`pool_state`]: what the agent keeps of each pool beside pm-etcd's keyspace view
//!   of its zone (`pm_etcd::PoolsView`): the last valid config, operations in flight,
//!   pauses, and when the pool is due.
//! - [`reconcile`]: one pass over one pool: list GCE, decide, work out the effects.
//! - [`decide`]: the pure decision for one pool.
//! - [`claim`]: adopt mode: VMs under the prefix without a pool label are labelled the
//!   pool's.
//! - [`effects`]: the pure effects of a decision: keys, events, hooks, calls.
//! - [`operations`]: operations in flight, each in its own task.
//! - [`failure`]: the pure reaction to a failed operation (error class to action).
//! - [`zone_report`]: the report of a zone that can take no more: stockout, quota, 400.
//! - [`hooks`]: the hook runner.
//! - [`heartbeat`]: whether the active agent completes passes, in its member key.
//! - [`metrics`]: what `--metrics` exports; [`metered`] measures the GCE client.

pub mod active;
pub mod claim;
pub mod config;
pub mod decide;
pub mod effects;
pub mod failure;
pub mod heartbeat;
pub mod hooks;
pub mod lists;
pub mod metered;
pub mod metrics;
pub mod notice;
pub mod operations;
pub mod pool_state;
pub mod reconcile;
pub mod throttle;
pub mod witness;
pub mod zone_report;
pub mod zone_watch;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pm_daemon::{Candidate, TermEnd};
use pm_etcd::{now_unix_ms, EventLog, Leadership, Session};
use pm_gce::compute::Compute;
use pm_proto::AgentInfo;
use pm_telemetry::{EtcdErrorLabels, Readiness};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::operations::Slots;

use active::{ActiveAgent, AgentContext};
pub use config::AgentConfig;
use heartbeat::Member;
use hooks::HookRunner;
use metered::MeteredCompute;
use metrics::AgentMetrics;

/// The readiness condition of the agent's role: met while it stands by registered, or
/// while it is active and has listed GCE in this term (or no pool uses its zone).
pub const AGENT_CONDITION: &str = "agent";

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The settings are unusable.
    #[error("invalid settings: {0}")]
    Config(String),
    /// The GCE client could not be built (bad credentials file, bad endpoint).
    #[error("GCE client: {0}")]
    Gce(#[source] pm_gce::error::GceError),
    /// The metrics server cannot listen on its address.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The `--metrics` address.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

/// Builds the REST client the settings describe.
pub async fn compute_client(config: &AgentConfig) -> Result<Arc<dyn Compute>, AgentError> {
    let client = config.gce.client().await.map_err(AgentError::Gce)?;
    Ok(Arc::new(client))
}

/// Runs an agent until `shutdown` fires, with the REST client the settings describe.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.validate().map_err(AgentError::Config)?;
    let compute = compute_client(&config).await?;
    run_with(config, compute, shutdown).await
}

/// Runs an agent with the given Compute client until `shutdown` fires: registers,
/// campaigns for the zone, acts while active, stands by otherwise.
///
/// With `--metrics ADDR` it serves its metrics there. It is ready while etcd answers and
/// its role's condition ([`AGENT_CONDITION`]) holds.
pub async fn run_with(
    config: AgentConfig,
    compute: Arc<dyn Compute>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config.validate().map_err(AgentError::Config)?;
    let id = config.daemon.id();
    let mut registry = Registry::default();
    let metrics = AgentMetrics::new(&mut registry, &config.zone);
    let readiness = Readiness::new();
    readiness.unmet(AGENT_CONDITION, "not registered yet");
    let Some(store) = pm_telemetry::serve_then_connect(
        config.daemon.metrics,
        registry,
        &readiness,
        metrics.etcd_errors.clone(),
        metrics.etcd_largest_reply.clone(),
        &config.daemon.etcd_args(),
        &shutdown,
    )
    .await
    .map_err(|(addr, source)| AgentError::Metrics { addr, source })?
    else {
        return Ok(());
    };
    let events = Arc::new(EventLog::new(
        store.clone(),
        id.clone(),
        config.daemon.event_retention,
    ));
    let hooks = HookRunner::new(
        config.hooks_dir.clone(),
        config.hook_timeout,
        config.hook_concurrency,
        events.clone(),
    )
    .with_queue(config.hook_queue)
    .passing_env(config.hook_env.clone())
    .counting_runs_in(metrics.hook_runs.clone());
    let ctx = AgentContext {
        store,
        compute: Arc::new(MeteredCompute::new(compute, metrics.clone())),
        hooks,
        events,
        metrics,
        readiness,
        zone: config.zone.clone(),
        agent_id: id.clone(),
        default_project: config.project.clone(),
        slots: Slots::new(config.max_concurrent, config.max_waiting),
        operation_timeout: config.operation_timeout,
        stall_after: config.stall_after,
        resync: config.daemon.resync,
        notice_interval: (!config.notice_interval.is_zero()).then_some(config.notice_interval),
    };
    tracing::info!(%id, zone = %config.zone, "agent started");
    let count_error = |_: &pm_etcd::Error| {
        ctx.metrics
            .etcd_errors
            .get_or_create(&EtcdErrorLabels { op: "term" })
            .inc();
    };
    let keys = ctx.store.keys();
    let agent = AgentTerm {
        member: keys
            .agent_member(&ctx.zone, &ctx.agent_id)
            .map_err(|e| AgentError::Config(e.to_string()))?,
        registered: Mutex::new(None),
        ctx: &ctx,
    };
    let election = keys
        .agent_election(&ctx.zone)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    pm_daemon::run_elected(
        &ctx.store,
        &election,
        &id,
        config.daemon.lease_ttl,
        &shutdown,
        count_error,
        &agent,
    )
    .await;
    tracing::info!(%id, "agent stopped");
    Ok(())
}

/// What the agent does in each term of [`pm_daemon::run_elected`]: registers, stands by,
/// and acts for the zone while active.
struct AgentTerm<'a> {
    /// The agent's shared state.
    ctx: &'a AgentContext,
    /// The agent's member key, bound to each term's session.
    member: String,
    /// What this term registered, for the active agent's heartbeat.
    registered: Mutex<Option<Member>>,
}

impl Candidate for AgentTerm<'_> {
    fn starting(&self) {
        self.ctx
            .readiness
            .unmet(AGENT_CONDITION, "registering in etcd");
    }

    async fn stand_by(&self, session: &Session) -> pm_etcd::Result<()> {
        let ctx = self.ctx;
        let info = AgentInfo {
            agent_id: ctx.agent_id.clone(),
            zone: ctx.zone.clone(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string(),
            started_unix_ms: now_unix_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            // Said from the start, so the scheduler never takes this agent for an older
            // one, which it counts by its member key alone.
            reconciling: Some(false),
            ..Default::default()
        };
        ctx.store
            .put(&self.member, &info, session.lease_id())
            .await?;
        let member = Member {
            key: self.member.clone(),
            info,
            lease: session.lease_id(),
        };
        *self.registered.lock().unwrap_or_else(|e| e.into_inner()) = Some(member);
        ctx.readiness.met(AGENT_CONDITION);
        tracing::info!(zone = %ctx.zone, "registered; standing by for the zone");
        Ok(())
    }

    fn elected(&self, leadership: &Leadership) {
        let ctx = self.ctx;
        tracing::info!(zone = %ctx.zone, revision = leadership.fence().revision(), "active agent of the zone");
        ctx.readiness
            .unmet(AGENT_CONDITION, "active, and has not listed GCE yet");
        ctx.metrics.set_active(&ctx.zone, true);
    }

    async fn lead(&self, leadership: &Leadership) -> TermEnd {
        let registered = self.registered.lock().map(|m| m.clone());
        let Some(member) = registered.unwrap_or_else(|e| e.into_inner().clone()) else {
            return TermEnd::Lost;
        };
        let fence = leadership.fence().clone();
        let agent = ActiveAgent::new(self.ctx, fence, leadership.lost(), member);
        agent.run().await
    }

    fn stepped_down(&self, end: Option<&TermEnd>) {
        let ctx = self.ctx;
        ctx.metrics.set_active(&ctx.zone, false);
        match end {
            None => tracing::info!("shutting down: handing the zone over"),
            Some(TermEnd::Lost) => {
                tracing::warn!(zone = %ctx.zone, "no longer the active agent; stopped acting, campaigning again");
            }
            Some(TermEnd::Failed(_)) => {}
        }
    }
}
