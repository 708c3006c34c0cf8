//! pm-agent's metrics: what the agent did in its zone (instances, stockouts, GCE calls,
//! reconciles, hooks) and whether it is the zone's active agent.

use pm_telemetry::{EtcdErrorLabels, MetricDef, ETCD_ERRORS, ETCD_LARGEST_REPLY};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::effects::Notice;
use crate::hooks::HookRunLabels;

/// `pm_agent_active{zone}`.
pub const AGENT_ACTIVE: MetricDef = MetricDef::gauge(
    "pm_agent_active",
    "1 while this agent is the active agent of its zone, 0 while it stands by",
);
/// `pm_instances_created_total{pool,zone}`.
pub const INSTANCES_CREATED: MetricDef = MetricDef::counter(
    "pm_instances_created",
    "Instances whose insert finished successfully",
);
/// `pm_instances_deleted_total{pool,zone}`.
pub const INSTANCES_DELETED: MetricDef = MetricDef::counter(
    "pm_instances_deleted",
    "Instances pm deleted (surplus, preempted, or a delete found finished)",
);
/// `pm_instances_vanished_total{pool,zone}`.
pub const INSTANCES_VANISHED: MetricDef = MetricDef::counter(
    "pm_instances_vanished",
    "Instances gone from GCE without pm deleting them and without a preemption record",
);
/// `pm_instances_preempted_total{pool,zone}`.
pub const INSTANCES_PREEMPTED: MetricDef = MetricDef::counter(
    "pm_instances_preempted",
    "Preemptions seen: instances found TERMINATED, or gone with a preemption operation",
);
/// `pm_stockouts_total{pool,zone}`.
pub const STOCKOUTS: MetricDef = MetricDef::counter(
    "pm_stockouts",
    "Creates or restarts that failed because the zone had no capacity (ZONE_RESOURCE_POOL_EXHAUSTED)",
);
/// `pm_gce_calls_total{zone,method,result}`.
pub const GCE_CALLS: MetricDef = MetricDef::counter(
    "pm_gce_calls",
    "Compute API calls by method and result: ok, or the error class (stockout, quota, rate_limit, not_found, already_exists, retryable, permanent); a zoneOperations.wait that returns a failed operation counts with the operation's error class",
);
/// `pm_gce_call_duration_seconds{zone,method}`.
pub const GCE_CALL_DURATION: MetricDef = MetricDef::histogram(
    "pm_gce_call_duration_seconds",
    "Latency of Compute API calls, retries included",
);
/// `pm_reconcile_duration_seconds{zone}`.
pub const RECONCILE_DURATION: MetricDef = MetricDef::histogram(
    "pm_reconcile_duration_seconds",
    "Time of one reconcile pass over one pool in the zone: list GCE, decide, record, start operations",
);
/// `pm_instance_lifetime_seconds{pool,zone}`.
pub const INSTANCE_LIFETIME: MetricDef = MetricDef::histogram(
    "pm_instance_lifetime_seconds",
    "How long instances GCE took away (preempted or vanished) lived, from creation to the loss being seen",
);
/// `pm_hook_runs_total{zone,event,result}`.
pub const HOOK_RUNS: MetricDef = MetricDef::counter(
    "pm_hook_runs",
    "Hook runs by event and result: ok, failed, timed_out, not_runnable, bad_name, no_hooks_dir, dropped",
);

/// Every metric pm-agent exports: what dashboards and alert rules may use.
pub const METRICS: &[MetricDef] = &[
    AGENT_ACTIVE,
    INSTANCES_CREATED,
    INSTANCES_DELETED,
    INSTANCES_VANISHED,
    INSTANCES_PREEMPTED,
    STOCKOUTS,
    GCE_CALLS,
    GCE_CALL_DURATION,
    RECONCILE_DURATION,
    INSTANCE_LIFETIME,
    HOOK_RUNS,
    ETCD_ERRORS,
    ETCD_LARGEST_REPLY,
];

/// Labels of per-zone series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ZoneLabels {
    /// Zone name.
    pub zone: String,
}

/// Labels of per-pool counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PoolZoneLabels {
    /// Pool name.
    pub pool: String,
    /// Zone name.
    pub zone: String,
}

/// Labels of GCE call counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GceCallLabels {
    /// Zone of the call.
    pub zone: String,
    /// Compute v1 method, e.g. `compute.instances.insert`.
    pub method: &'static str,
    /// `ok` or the error class.
    pub result: &'static str,
}

/// Labels of GCE call latencies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GceMethodLabels {
    /// Zone of the call.
    pub zone: String,
    /// Compute v1 method.
    pub method: &'static str,
}

/// What happened to a pool's instances, each counted per pool and zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolCount {
    /// An insert finished.
    Created,
    /// pm deleted an instance.
    Deleted,
    /// An instance vanished.
    Vanished,
    /// An instance was preempted.
    Preempted,
    /// A create or restart hit a stockout.
    Stockout,
}

impl PoolCount {
    /// Every kind, for removing a pool's series.
    const ALL: [PoolCount; 5] = [
        PoolCount::Created,
        PoolCount::Deleted,
        PoolCount::Vanished,
        PoolCount::Preempted,
        PoolCount::Stockout,
    ];
}

/// A latency histogram family.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of GCE calls: 5 ms to about 41 s.
fn gce_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Buckets of reconcile passes: 1 ms to about 16 s.
fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Buckets of instance lifetimes: 30 s to about 11 days.
fn lifetime_histogram() -> Histogram {
    Histogram::new(exponential_buckets(30.0, 2.0, 16))
}

/// The agent's metrics. Cheap to clone; clones share the series.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// 1 while active.
    pub active: Family<ZoneLabels, Gauge>,
    /// Finished inserts.
    created: Family<PoolZoneLabels, Counter>,
    /// Deletions by pm.
    deleted: Family<PoolZoneLabels, Counter>,
    /// Vanished instances.
    vanished: Family<PoolZoneLabels, Counter>,
    /// Preemptions.
    preempted: Family<PoolZoneLabels, Counter>,
    /// Stockouts.
    stockouts: Family<PoolZoneLabels, Counter>,
    /// GCE calls.
    pub gce_calls: Family<GceCallLabels, Counter>,
    /// GCE latencies.
    pub gce_latency: LatencyFamily<GceMethodLabels>,
    /// Reconcile pass durations.
    pub reconcile: LatencyFamily<ZoneLabels>,
    /// Lifetimes of instances GCE took away.
    lifetime: LatencyFamily<PoolZoneLabels>,
    /// Hook runs; the hook runner counts into it.
    pub hook_runs: Family<HookRunLabels, Counter>,
    /// etcd failures.
    pub etcd_errors: Family<EtcdErrorLabels, Counter>,
    /// `pm_etcd_largest_reply_bytes`.
    pub etcd_largest_reply: Gauge,
}

impl AgentMetrics {
    /// Registers every metric of [`METRICS`] in `registry`. `pm_agent_active` starts at
    /// 0 for `zone`.
    pub fn new(registry: &mut Registry, zone: &str) -> Self {
        let metrics = Self {
            active: Family::default(),
            created: Family::default(),
            deleted: Family::default(),
            vanished: Family::default(),
            preempted: Family::default(),
            stockouts: Family::default(),
            gce_calls: Family::default(),
            gce_latency: Family::new_with_constructor(gce_histogram as fn() -> Histogram),
            reconcile: Family::new_with_constructor(reconcile_histogram as fn() -> Histogram),
            lifetime: Family::new_with_constructor(lifetime_histogram as fn() -> Histogram),
            hook_runs: Family::default(),
            etcd_errors: Family::default(),
            etcd_largest_reply: Gauge::default(),
        };
        AGENT_ACTIVE.register(registry, metrics.active.clone());
        INSTANCES_CREATED.register(registry, metrics.created.clone());
        INSTANCES_DELETED.register(registry, metrics.deleted.clone());
        INSTANCES_VANISHED.register(registry, metrics.vanished.clone());
        INSTANCES_PREEMPTED.register(registry, metrics.preempted.clone());
        STOCKOUTS.register(registry, metrics.stockouts.clone());
        GCE_CALLS.register(registry, metrics.gce_calls.clone());
        GCE_CALL_DURATION.register(registry, metrics.gce_latency.clone());
        RECONCILE_DURATION.register(registry, metrics.reconcile.clone());
        INSTANCE_LIFETIME.register(registry, metrics.lifetime.clone());
        HOOK_RUNS.register(registry, metrics.hook_runs.clone());
        ETCD_ERRORS.register(registry, metrics.etcd_errors.clone());
        ETCD_LARGEST_REPLY.register(registry, metrics.etcd_largest_reply.clone());
        metrics.set_active(zone, false);
        metrics
    }

    fn family(&self, count: PoolCount) -> &Family<PoolZoneLabels, Counter> {
        match count {
            PoolCount::Created => &self.created,
            PoolCount::Deleted => &self.deleted,
            PoolCount::Vanished => &self.vanished,
            PoolCount::Preempted => &self.preempted,
            PoolCount::Stockout => &self.stockouts,
        }
    }

    /// Counts one `count` of `pool` in `zone`.
    pub fn count(&self, count: PoolCount, pool: &str, zone: &str) {
        let labels = PoolZoneLabels {
            pool: pool.to_string(),
            zone: zone.to_string(),
        };
        self.family(count).get_or_create(&labels).inc();
    }

    /// Counts what `notice` counts, and the lifetime it reports.
    pub fn count_notice(&self, notice: &Notice, pool: &str, zone: &str) {
        if let Some(count) = notice.count {
            self.count(count, pool, zone);
        }
        if let Some(ms) = notice.lifetime_ms {
            let labels = PoolZoneLabels {
                pool: pool.to_string(),
                zone: zone.to_string(),
            };
            self.lifetime
                .get_or_create(&labels)
                .observe(ms as f64 / 1000.0);
        }
    }

    /// Removes the series of a pool that no longer exists.
    pub fn forget_pool(&self, pool: &str, zone: &str) {
        let labels = PoolZoneLabels {
            pool: pool.to_string(),
            zone: zone.to_string(),
        };
        for count in PoolCount::ALL {
            self.family(count).remove(&labels);
        }
        self.lifetime.remove(&labels);
    }

    /// Sets `pm_agent_active` of `zone`.
    pub fn set_active(&self, zone: &str, active: bool) {
        let labels = ZoneLabels {
            zone: zone.to_string(),
        };
        self.active.get_or_create(&labels).set(i64::from(active));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use std::collections::BTreeSet;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn every_listed_metric_is_registered_and_nothing_else() {
        let mut registry = Registry::default();
        AgentMetrics::new(&mut registry, "z1");
        let exposed: BTreeSet<(String, String)> = pm_telemetry::exposed_families(&text(&registry))
            .into_iter()
            .collect();
        let listed: BTreeSet<(String, String)> = METRICS
            .iter()
            .map(|m| (m.name.to_string(), m.kind.as_str().to_string()))
            .collect();
        assert_eq!(exposed, listed);
        assert_eq!(listed.len(), METRICS.len(), "each name listed once");
    }

    #[test]
    fn pool_counts_go_with_the_pool() {
        let mut registry = Registry::default();
        let metrics = AgentMetrics::new(&mut registry, "z1");
        assert!(text(&registry).contains("pm_agent_active{zone=\"z1\"} 0"));
        metrics.set_active("z1", true);
        metrics.count(PoolCount::Created, "web", "z1");
        metrics.count(PoolCount::Created, "web", "z1");
        metrics.count(PoolCount::Stockout, "web", "z1");
        metrics.count(PoolCount::Preempted, "api", "z1");
        let out = text(&registry);
        for line in [
            "pm_agent_active{zone=\"z1\"} 1",
            "pm_instances_created_total{pool=\"web\",zone=\"z1\"} 2",
            "pm_stockouts_total{pool=\"web\",zone=\"z1\"} 1",
            "pm_instances_preempted_total{pool=\"api\",zone=\"z1\"} 1",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        metrics.forget_pool("web", "z1");
        let out = text(&registry);
        assert!(!out.contains("pool=\"web\""), "{out}");
        assert!(out.contains("pool=\"api\""), "{out}");
    }
}
