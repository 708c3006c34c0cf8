//! pm-scheduler's metrics: whether this replica leads and, while it does, every pool's
//! and zone's numbers as the leader's view holds them. A replica that does not lead
//! exports no per-pool series, so a dashboard sees each number once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;

use pm_telemetry::{EtcdErrorLabels, GaugeSet, MetricDef, ETCD_ERRORS, ETCD_LARGEST_REPLY};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::capacity::{Capacity, Sample};
use crate::model::{Model, ObservedStatus, ZoneView};

/// `pm_scheduler_leader`: 1 while this replica leads.
pub const LEADER: MetricDef = MetricDef::gauge(
    "pm_scheduler_leader",
    "1 while this scheduler replica is the elected leader, else 0",
);
/// `pm_pool_target_instances{pool}`.
pub const POOL_TARGET: MetricDef = MetricDef::gauge(
    "pm_pool_target_instances",
    "targetVMCount of each pool (0 while a deleted pool drains), exported by the leader",
);
/// `pm_zone_desired_instances{pool,zone}`.
pub const ZONE_DESIRED: MetricDef = MetricDef::gauge(
    "pm_zone_desired_instances",
    "Desired instances of each pool in each zone, as the leader placed them",
);
/// `pm_zone_instances{pool,zone,status}`.
pub const ZONE_INSTANCES: MetricDef = MetricDef::gauge(
    "pm_zone_instances",
    "Observed instances of each pool in each zone by status: running, starting (provisioning, staging, unknown), lost (preempted, stopping, terminated), deleting",
);
/// `pm_zone_exhausted{pool,zone}`.
pub const ZONE_EXHAUSTED: MetricDef = MetricDef::gauge(
    "pm_zone_exhausted",
    "1 while the zone is exhausted for the pool (its exhausted key exists), else 0",
);
/// `pm_zone_exhaustion_remaining_seconds{pool,zone}`.
pub const ZONE_EXHAUSTION_REMAINING: MetricDef = MetricDef::gauge(
    "pm_zone_exhaustion_remaining_seconds",
    "Seconds left of the zone's exhaustion back-off for the pool; 0 when it is not exhausted",
);
/// `pm_zone_agents{zone}`.
pub const ZONE_AGENTS: MetricDef = MetricDef::gauge(
    "pm_zone_agents",
    "Agents registered for each zone that a pool allows or that has agents (active and standby)",
);

/// `pm_pool_below_target_seconds_total{pool}`.
pub const POOL_BELOW_TARGET: MetricDef = MetricDef::counter(
    "pm_pool_below_target_seconds",
    "Seconds the pool had fewer RUNNING instances than its target, as the leader saw it",
);
/// `pm_pool_capacity_delivered_ratio{pool}`.
pub const POOL_CAPACITY_DELIVERED: MetricDef = MetricDef::gauge(
    "pm_pool_capacity_delivered_ratio",
    "RUNNING instance-seconds (up to the target) over target instance-seconds in the last hour of this leader's term",
);
/// `pm_pool_cost_ratio{pool}`.
pub const POOL_COST: MetricDef = MetricDef::gauge(
    "pm_pool_cost_ratio",
    "Live instance-seconds (spares, VMs booting and VMs in their preemption notice included) over target instance-seconds in the last hour of this leader's term",
);
/// `pm_events_sink_lag_seconds`.
pub const SINK_LAG: MetricDef = MetricDef::gauge(
    "pm_events_sink_lag_seconds",
    "Age of the oldest event the leader has not yet delivered to --events-sink; 0 when caught up or not leading",
);
/// `pm_events_sink_delivered_total`.
pub const SINK_DELIVERED: MetricDef = MetricDef::counter(
    "pm_events_sink_delivered",
    "Events this replica delivered to --events-sink (the sink answered 2xx)",
);
/// `pm_events_sink_failures_total`.
pub const SINK_FAILURES: MetricDef = MetricDef::counter(
    "pm_events_sink_failures",
    "Deliveries to --events-sink that failed and are retried: no answer, 408, 429 or 5xx",
);
/// `pm_events_sink_dropped_total`.
pub const SINK_DROPPED: MetricDef = MetricDef::counter(
    "pm_events_sink_dropped",
    "Events not delivered to --events-sink: refused with a 4xx other than 408 and 429, or unreadable",
);

/// Every metric pm-scheduler exports: what dashboards and alert rules may use.
pub const METRICS: &[MetricDef] = &[
    LEADER,
    POOL_TARGET,
    ZONE_DESIRED,
    ZONE_INSTANCES,
    ZONE_EXHAUSTED,
    ZONE_EXHAUSTION_REMAINING,
    ZONE_AGENTS,
    POOL_BELOW_TARGET,
    POOL_CAPACITY_DELIVERED,
    POOL_COST,
    SINK_LAG,
    SINK_DELIVERED,
    SINK_FAILURES,
    SINK_DROPPED,
    ETCD_ERRORS,
    ETCD_LARGEST_REPLY,
];

/// Labels of per-pool series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels of per-pool, per-zone series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PoolZoneLabels {
    /// Pool name.
    pub pool: String,
    /// Zone name.
    pub zone: String,
}

/// Labels of instance counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    /// Pool name.
    pub pool: String,
    /// Zone name.
    pub zone: String,
    /// `running`, `starting`, `lost` or `deleting`.
    pub status: &'static str,
}

/// Labels of per-zone series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ZoneLabels {
    /// Zone name.
    pub zone: String,
}

/// The scheduler's metrics, registered in one registry.
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    /// 1 while leading.
    pub leader: Gauge,
    /// etcd failures.
    pub etcd_errors: Family<EtcdErrorLabels, Counter>,
    /// `pm_etcd_largest_reply_bytes`.
    pub etcd_largest_reply: Gauge,
    /// Pool targets.
    target: GaugeSet<PoolLabels>,
    /// Desired counts.
    desired: GaugeSet<PoolZoneLabels>,
    /// Observed counts by status.
    instances: GaugeSet<StatusLabels>,
    /// Exhausted zones.
    exhausted: GaugeSet<PoolZoneLabels>,
    /// Remaining back-off.
    remaining: GaugeSet<PoolZoneLabels>,
    /// Agents per zone.
    agents: GaugeSet<ZoneLabels>,
    /// Seconds below target.
    below_target: Family<PoolLabels, Counter<f64, AtomicU64>>,
    /// Capacity delivered.
    delivered: GaugeSet<PoolLabels>,
    /// Its cost.
    cost: GaugeSet<PoolLabels>,
    /// The events sink's numbers.
    pub sink: SinkMetrics,
}

/// The events sink's numbers ([`crate::sink`]).
#[derive(Debug, Clone, Default)]
pub struct SinkMetrics {
    /// Seconds the oldest undelivered event waits.
    pub lag: Gauge<f64, AtomicU64>,
    /// Events delivered.
    pub delivered: Counter,
    /// Failed attempts, retried.
    pub failures: Counter,
    /// Events given up.
    pub dropped: Counter,
}

impl SchedulerMetrics {
    /// Registers every metric of [`METRICS`] in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let leader = Gauge::default();
        LEADER.register(registry, leader.clone());
        let etcd_errors = Family::default();
        ETCD_ERRORS.register(registry, etcd_errors.clone());
        let etcd_largest_reply = Gauge::default();
        ETCD_LARGEST_REPLY.register(registry, etcd_largest_reply.clone());
        let below_target = Family::default();
        POOL_BELOW_TARGET.register(registry, below_target.clone());
        let sink = SinkMetrics::default();
        SINK_LAG.register(registry, sink.lag.clone());
        SINK_DELIVERED.register(registry, sink.delivered.clone());
        SINK_FAILURES.register(registry, sink.failures.clone());
        SINK_DROPPED.register(registry, sink.dropped.clone());
        Self {
            leader,
            etcd_errors,
            etcd_largest_reply,
            target: GaugeSet::register(&POOL_TARGET, registry),
            desired: GaugeSet::register(&ZONE_DESIRED, registry),
            instances: GaugeSet::register(&ZONE_INSTANCES, registry),
            exhausted: GaugeSet::register(&ZONE_EXHAUSTED, registry),
            remaining: GaugeSet::register(&ZONE_EXHAUSTION_REMAINING, registry),
            agents: GaugeSet::register(&ZONE_AGENTS, registry),
            below_target,
            delivered: GaugeSet::register(&POOL_CAPACITY_DELIVERED, registry),
            cost: GaugeSet::register(&POOL_COST, registry),
            sink,
        }
    }

    /// Shows the leader's view at `now_ms` (Unix ms): one series per pool, per zone the
    /// pool allows or has keys in, and per zone that any pool allows or that has agents.
    /// Series of pools and zones no longer in the view are removed.
    pub fn publish(&self, model: &Model, now_ms: i64, capacity: &mut Capacity) {
        let mut target = Vec::new();
        let mut desired = Vec::new();
        let mut instances = Vec::new();
        let mut exhausted = Vec::new();
        let mut remaining = Vec::new();
        let mut delivered = Vec::new();
        let mut cost = Vec::new();
        let pools = model.pool_names();
        for pool in capacity.retain(&pools) {
            self.below_target.remove(&PoolLabels { pool });
        }
        let mut agent_zones: BTreeSet<String> = model.agents.keys().cloned().collect();
        for pool in pools {
            let Some(view) = model.pool(&pool) else {
                continue;
            };
            let config = view.config.as_ref().filter(|c| !c.deleted);
            let held = Sample {
                at_ms: now_ms,
                target: config.map_or(0, |c| u64::try_from(c.target_vm_count).unwrap_or(0)),
                running: view
                    .zones
                    .values()
                    .map(|z| z.counts.count(ObservedStatus::Running))
                    .sum(),
                live: view.zones.values().map(|z| z.counts.live).sum(),
            };
            let reading = capacity.observe(&pool, held);
            let labels = PoolLabels { pool: pool.clone() };
            self.below_target
                .get_or_create(&labels)
                .inc_by(reading.below_target_seconds);
            delivered.push((labels.clone(), reading.delivered_ratio));
            cost.push((labels, reading.cost_ratio));
            let allowed: &[String] = config.map_or(&[], |c| &c.allowed_zones);
            agent_zones.extend(allowed.iter().cloned());
            target.push((
                PoolLabels { pool: pool.clone() },
                config.map_or(0.0, |c| c.target_vm_count as f64),
            ));
            let mut zones: BTreeMap<&str, Option<&ZoneView>> =
                allowed.iter().map(|z| (z.as_str(), None)).collect();
            zones.extend(view.zones.iter().map(|(z, v)| (z.as_str(), Some(v))));
            for (zone, zv) in zones {
                let labels = PoolZoneLabels {
                    pool: pool.clone(),
                    zone: zone.to_string(),
                };
                let count = zv.and_then(|v| v.desired.as_ref()).map_or(0, |d| d.count);
                desired.push((labels.clone(), count as f64));
                for status in ObservedStatus::ALL {
                    let n = zv.map_or(0, |v| v.counts.count(status));
                    let labels = StatusLabels {
                        pool: pool.clone(),
                        zone: zone.to_string(),
                        status: status.word(),
                    };
                    instances.push((labels, n as f64));
                }
                let exhaustion = zv.and_then(|v| v.exhausted.as_ref());
                let left_ms = exhaustion.map_or(0, |x| x.until_unix_ms.saturating_sub(now_ms));
                exhausted.push((labels.clone(), f64::from(u8::from(exhaustion.is_some()))));
                remaining.push((labels, left_ms.max(0) as f64 / 1000.0));
            }
        }
        self.target.replace(target);
        self.desired.replace(desired);
        self.instances.replace(instances);
        self.exhausted.replace(exhausted);
        self.remaining.replace(remaining);
        self.delivered.replace(delivered);
        self.cost.replace(cost);
        self.agents.replace(agent_zones.into_iter().map(|zone| {
            let n = model.agents.get(&zone).map_or(0, BTreeSet::len);
            (ZoneLabels { zone }, n as f64)
        }));
    }

    /// Removes every per-pool and per-zone series and zeroes the sink lag: this replica no
    /// longer leads.
    pub fn clear_view(&self) {
        self.target.clear();
        self.desired.clear();
        self.instances.clear();
        self.exhausted.clear();
        self.remaining.clear();
        self.agents.clear();
        self.delivered.clear();
        self.cost.clear();
        self.below_target.clear();
        self.sink.lag.set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pm_etcd::testing::put;
    use pm_etcd::{Keyspace, WatchBatch};
    use pm_proto::{InstanceState, ObservedInstance, PoolConfig, ZoneDesired, ZoneExhaustion};
    use prometheus_client::encoding::text::encode;
    use prost::Message;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn every_listed_metric_is_registered_and_nothing_else() {
        let mut registry = Registry::default();
        SchedulerMetrics::new(&mut registry);
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
    fn the_view_is_published_and_deleted_pools_disappear() {
        let keys = Keyspace::default();
        let mut model = Model::new(keys.clone());
        let config = PoolConfig {
            target_vm_count: 3,
            allowed_zones: vec!["zone-a".into(), "zone-b".into()],
            prefix: "web-".into(),
            instance_json: "{}".into(),
            ..Default::default()
        };
        let running = ObservedInstance {
            state: InstanceState::Running as i32,
            ..Default::default()
        };
        let events = vec![
            put(keys.pool_config("web").unwrap(), config.encode_to_vec(), 1),
            put(
                keys.zone_desired("web", "zone-a").unwrap(),
                ZoneDesired {
                    count: 3,
                    ..Default::default()
                }
                .encode_to_vec(),
                2,
            ),
            put(
                keys.instance("web", "zone-a", "web-a").unwrap(),
                running.encode_to_vec(),
                3,
            ),
            put(
                keys.exhausted("web", "zone-b").unwrap(),
                ZoneExhaustion {
                    until_unix_ms: 61_000,
                    ..Default::default()
                }
                .encode_to_vec(),
                4,
            ),
        ];
        model.apply_pools(WatchBatch::Events(events));
        let agent = put(keys.agent_member("zone-a", "a1").unwrap(), Vec::new(), 5);
        model.apply_agents(WatchBatch::Events(vec![agent]));
        let mut registry = Registry::default();
        let metrics = SchedulerMetrics::new(&mut registry);
        let mut capacity = Capacity::default();
        metrics.publish(&model, 1_000, &mut capacity);
        metrics.publish(&model, 3_000, &mut capacity);
        let out = text(&registry);
        for line in [
            "pm_pool_target_instances{pool=\"web\"} 3.0",
            "pm_zone_desired_instances{pool=\"web\",zone=\"zone-a\"} 3.0",
            "pm_zone_desired_instances{pool=\"web\",zone=\"zone-b\"} 0.0",
            "pm_zone_instances{pool=\"web\",zone=\"zone-a\",status=\"running\"} 1.0",
            "pm_zone_instances{pool=\"web\",zone=\"zone-a\",status=\"lost\"} 0.0",
            "pm_zone_exhausted{pool=\"web\",zone=\"zone-b\"} 1.0",
            "pm_zone_exhausted{pool=\"web\",zone=\"zone-a\"} 0.0",
            "pm_zone_exhaustion_remaining_seconds{pool=\"web\",zone=\"zone-b\"} 58.0",
            "pm_zone_agents{zone=\"zone-a\"} 1.0",
            "pm_zone_agents{zone=\"zone-b\"} 0.0",
            "pm_pool_below_target_seconds_total{pool=\"web\"} 2.0",
            "pm_pool_capacity_delivered_ratio{pool=\"web\"} 0.333",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        model.record_removed("web", 6).unwrap();
        metrics.publish(&model, 4_000, &mut capacity);
        let out = text(&registry);
        assert!(!out.contains("web"), "{out}");
        assert!(out.contains("pm_zone_agents{zone=\"zone-a\"} 1.0"), "{out}");
        metrics.clear_view();
        assert!(!text(&registry).contains("zone=\"zone-a\""));
    }
}
