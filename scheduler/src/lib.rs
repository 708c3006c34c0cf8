//! pm-scheduler: every replica campaigns in an etcd election; the leader spreads each
//! pool's target over its usable zones and turns stockout reports into exhaustion leases.
//! It never calls GCE.
//!
//! - [`distribution`]: the pure placement algorithm, `compute_desired`.
//! - [`placement`]: the rules that build its input from the view (live, committed,
//!   usable zones) and turn its answer into the `desired` keys to write.
//! - [`agent_presence`]: the agent grace, when a zone's agents are alive enough.
//! - [`witness`]: zones without agents counted in GCE by another zone's agent.
//! - [`exhaustion`]: a stockout report's way to an exhaustion lease, its back-off, expiry.
//! - [`placement_events`]: which events a placement pass deserves.
//! - [`pool_event`]: an event decided by pure code, recorded by the leader.
//! - [`model`]: the leader's model: pm-etcd's keyspace view (`pm_etcd::PoolsView`) and
//!   what it keeps beside it (instance counts, last valid configs, dirty pools, notices).
//! - [`leader`]: the leader's work for one term: gather facts, call the above, write.
//! - [`sink`] and [`cloud_event`]: `--events-sink`, every event out as a CloudEvent.
//! - [`capacity`]: capacity delivered and time below target, for the metrics.
//! - [`metrics`]: what `--metrics` exports.
//! - [`run`]: campaign, lead, lose, campaign again, through [`pm_daemon::run_elected`].

pub mod agent_presence;
pub mod capacity;
pub mod cloud_event;
pub mod config;
pub mod distribution;
pub mod exhaustion;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod placement;
pub mod placement_events;
pub mod pool_event;
pub mod rollout;
pub mod sink;
pub mod witness;

use std::net::SocketAddr;
use std::sync::Arc;

use pm_daemon::{Candidate, TermEnd};
use pm_etcd::{EventLog, Leadership, Store};
use pm_telemetry::{EtcdErrorLabels, Readiness};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use config::SchedulerConfig;
use leader::{lead, LeaderSettings};
use metrics::SchedulerMetrics;
use sink::SinkSettings;

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The settings are unusable.
    #[error("invalid settings: {0}")]
    Config(String),
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

/// Runs a scheduler replica until `shutdown` fires: campaigns, leads while it wins,
/// campaigns again after losing. On shutdown it resigns so a standby takes over at once.
///
/// With `--metrics ADDR` it serves its metrics there; it is ready while etcd answers.
pub async fn run(
    config: SchedulerConfig,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    config.validate().map_err(SchedulerError::Config)?;
    let id = config.daemon.id();
    let sink = match config.events_sink.clone() {
        None => None,
        Some(url) => Some(SinkSettings {
            url,
            mode: config.events_sink_mode,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| SchedulerError::Config(format!("--events-sink: {e}")))?,
        }),
    };
    let settings = LeaderSettings {
        id: id.clone(),
        agent_grace: config.agent_grace,
        resync: config.daemon.resync,
        sink,
    };
    let mut registry = Registry::default();
    let metrics = SchedulerMetrics::new(&mut registry);
    let readiness = Readiness::new();
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
    .map_err(|(addr, source)| SchedulerError::Metrics { addr, source })?
    else {
        return Ok(());
    };
    let events = Arc::new(EventLog::new(
        store.clone(),
        id.clone(),
        config.daemon.event_retention,
    ));
    tracing::info!(%id, prefix = %config.daemon.etcd.prefix, "scheduler started");
    let count_error = |_: &pm_etcd::Error| {
        metrics
            .etcd_errors
            .get_or_create(&EtcdErrorLabels { op: "term" })
            .inc();
    };
    let leader = SchedulerTerm {
        store: &store,
        events: &events,
        settings: &settings,
        metrics: &metrics,
        readiness: &readiness,
    };
    pm_daemon::run_elected(
        &store,
        &store.keys().scheduler_election(),
        &id,
        config.daemon.lease_ttl,
        &shutdown,
        count_error,
        &leader,
    )
    .await;
    tracing::info!(%id, "scheduler stopped");
    Ok(())
}

/// What the scheduler does in each term of [`pm_daemon::run_elected`].
struct SchedulerTerm<'a> {
    store: &'a Store,
    events: &'a EventLog,
    settings: &'a LeaderSettings,
    metrics: &'a SchedulerMetrics,
    readiness: &'a Readiness,
}

impl Candidate for SchedulerTerm<'_> {
    fn elected(&self, leadership: &Leadership) {
        tracing::info!(id = %self.settings.id, revision = leadership.fence().revision(), "elected leader");
        self.metrics.leader.set(1);
    }

    async fn lead(&self, leadership: &Leadership) -> TermEnd {
        lead(
            self.store,
            self.events,
            self.settings,
            self.metrics,
            self.readiness,
            leadership,
        )
        .await
    }

    fn stepped_down(&self, end: Option<&TermEnd>) {
        self.metrics.leader.set(0);
        self.metrics.clear_view();
        match end {
            None => tracing::info!("shutting down: resigning leadership"),
            Some(TermEnd::Lost) => {
                tracing::warn!(id = %self.settings.id, "leadership lost; campaigning again");
            }
            Some(TermEnd::Failed(e)) => {
                tracing::warn!(error = %e, "leader failed; resigning and campaigning again");
            }
        }
    }
}
