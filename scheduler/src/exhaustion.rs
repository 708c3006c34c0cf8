//! Exhaustion of a zone, from an agent's stockout report to the lease running out.
//!
//! - A report is consumed by [`consume_report`]: [`decide_report`] drops it (the zone is
//!   exhausted already or no longer in use) or grants an [`ExhaustionGrant`]; the grant's
//!   `exhausted` key is written bound to an etcd lease of the back-off, in one fenced
//!   transaction with the report's deletion and the zone's `desired` (no new instances,
//!   the back-off and capacity hint remembered).
//! - The back-off doubles on repeated stockouts up to [`MAX_MULTIPLIER`] and resets after
//!   [`HEALTHY_AFTER_BASES`] healthy bases ([`next_backoff`]).
//! - What was written is recorded in the leader's model ([`ExhaustionGrant::record`]), so
//!   the watch's echo of it changes nothing.
//! - On expiry etcd deletes the key with its lease; the model notices
//!   ([`crate::model::Notice::ZoneUsable`]), the zone is usable again at the next
//!   placement, and [`usable_again`] is the event.

use std::time::Duration;

use etcd_client::TxnOp;
use pm_etcd::{put_op, Fence, Key, Store, Value};
use pm_proto::{
    ExhaustionClass, ExhaustionReport, PoolConfig, Severity, ZoneDesired, ZoneExhaustion,
};

use crate::model::{Model, PoolView};
use crate::pool_event::PoolEvent;

/// The largest back-off multiplier: 16 × `secondsForExhaustion`.
pub const MAX_MULTIPLIER: u32 = 16;

/// A zone counts as healthy again once this many base back-offs passed since its last
/// exhaustion ended without a new stockout; its multiplier and capacity hint reset then.
pub const HEALTHY_AFTER_BASES: u32 = 10;

/// How long a new exhaustion of a zone lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExhaustionBackoff {
    /// 1, 2, 4, 8 or 16.
    pub multiplier: u32,
    /// base × multiplier.
    pub ttl: Duration,
    /// `now + ttl` in Unix milliseconds.
    pub until_unix_ms: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a zone whose last exhaustion is recorded in `desired` is still within its
/// probation window at `now_ms`: its back-off keeps growing and its capacity hint holds.
pub fn in_probation(base: Duration, desired: &ZoneDesired, now_ms: i64) -> bool {
    desired.last_exhausted_until_unix_ms > 0
        && now_ms.saturating_sub(desired.last_exhausted_until_unix_ms)
            < millis(base.saturating_mul(HEALTHY_AFTER_BASES))
}

/// The back-off of a stockout seen at `now_ms`, given the zone's last recorded exhaustion.
pub fn next_backoff(base: Duration, last: Option<&ZoneDesired>, now_ms: i64) -> ExhaustionBackoff {
    let multiplier = match last {
        Some(d) if d.backoff_multiplier > 0 && in_probation(base, d, now_ms) => {
            d.backoff_multiplier.saturating_mul(2).min(MAX_MULTIPLIER)
        }
        _ => 1,
    };
    let ttl = base.saturating_mul(multiplier);
    ExhaustionBackoff {
        multiplier,
        ttl,
        until_unix_ms: now_ms.saturating_add(millis(ttl)),
    }
}

/// The pool's base back-off: its `secondsForExhaustion`, the default applied.
pub fn base_backoff(config: Option<&PoolConfig>) -> Duration {
    pm_pool::exhaustion_base(config.unwrap_or(&PoolConfig::default()))
}

/// An exhaustion to record for a zone after a stockout.
#[derive(Debug, Clone, PartialEq)]
pub struct ExhaustionGrant {
    /// How long the exhaustion lasts.
    pub backoff: ExhaustionBackoff,
    /// The `exhausted` key, bound to a lease of `backoff.ttl`.
    pub exhaustion: ZoneExhaustion,
    /// The zone's next `desired`: no new instances, the back-off and the capacity hint
    /// (the live instances GCE confirmed) remembered for the next stockout.
    pub desired: ZoneDesired,
}

impl ExhaustionGrant {
    /// Records the grant, written at `revision`, in the leader's model of `zone` of
    /// `pool`: exhausted, the report consumed, the new `desired`.
    pub fn record(
        &self,
        model: &mut Model,
        pool: &str,
        zone: &str,
        revision: i64,
    ) -> pm_etcd::Result<()> {
        let (pool, zone) = (pool.to_string(), zone.to_string());
        let exhausted = Key::Exhausted {
            pool: pool.clone(),
            zone: zone.clone(),
        };
        let exhaustion = Value::Exhausted(self.exhaustion.clone());
        model.record(&exhausted, Some(exhaustion), revision)?;
        let report = Key::Report {
            pool: pool.clone(),
            zone: zone.clone(),
        };
        model.record(&report, None, revision)?;
        let desired = Some(Value::Desired(self.desired.clone()));
        model.record(&Key::ZoneDesired { pool, zone }, desired, revision)
    }

    /// The `zone-exhausted` event.
    pub fn event(&self, pool: &str, zone: &str) -> PoolEvent {
        PoolEvent::zone(
            pool,
            "zone-exhausted",
            Severity::Warning,
            zone,
            format!(
                "zone exhausted for {}s (back-off x{}) after {}: {}",
                self.backoff.ttl.as_secs(),
                self.backoff.multiplier,
                cause(self.exhaustion.class()),
                self.exhaustion.reason
            ),
        )
    }
}

/// What to do with a zone's stockout report.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportDecision {
    /// Delete the report: the zone is exhausted already, or the pool no longer uses it.
    Drop,
    /// Exhaust the zone.
    Exhaust(Box<ExhaustionGrant>),
}

/// Decides on the report of `zone` in `view` seen at `now_ms`; `None` when the zone has
/// no report. The grant is signed `scheduler_id`.
pub fn decide_report(
    view: &PoolView,
    zone: &str,
    scheduler_id: &str,
    now_ms: i64,
) -> Option<ReportDecision> {
    let zv = view.zones.get(zone)?;
    let report = zv.report.as_ref()?;
    let allowed = view
        .config
        .as_ref()
        .is_some_and(|c| !c.deleted && c.allowed_zones.iter().any(|z| z == zone));
    if !allowed || zv.exhausted.is_some() {
        return Some(ReportDecision::Drop);
    }
    let backoff = next_backoff(
        base_backoff(view.config.as_ref()),
        zv.desired.as_ref(),
        now_ms,
    );
    let exhaustion = ZoneExhaustion {
        since_unix_ms: now_ms,
        until_unix_ms: backoff.until_unix_ms,
        backoff_multiplier: backoff.multiplier,
        reason: reason(report),
        set_by: scheduler_id.to_string(),
        class: report.class,
    };
    let mut desired = zv.desired.clone().unwrap_or_default();
    desired.backoff_multiplier = backoff.multiplier;
    desired.last_exhausted_until_unix_ms = backoff.until_unix_ms;
    desired.capacity_hint = Some(zv.counts.live_confirmed);
    desired.accept_new = false;
    desired.updated_unix_ms = now_ms;
    desired.scheduler_id = scheduler_id.to_string();
    Some(ReportDecision::Exhaust(Box::new(ExhaustionGrant {
        backoff,
        exhaustion,
        desired,
    })))
}

/// What a report of `class` is, for the event.
fn cause(class: ExhaustionClass) -> &'static str {
    match class {
        ExhaustionClass::Stockout => "a stockout",
        ExhaustionClass::Quota => "a regional quota",
        ExhaustionClass::ZoneError => "an error of the zone",
    }
}

/// The exhaustion's reason: the report's message, after its GCE code when it has one.
fn reason(report: &ExhaustionReport) -> String {
    if report.code.is_empty() {
        report.message.clone()
    } else {
        format!("{}: {}", report.code, report.message)
    }
}

/// Consumes the stockout report of `zone` in `pool` at `now_ms`: drops it or exhausts
/// the zone, fenced by `fence`, and records what it wrote in `model`. Returns the event
/// to record, if any.
pub async fn consume_report(
    store: &Store,
    fence: &Fence,
    scheduler_id: &str,
    pool: &str,
    zone: &str,
    model: &mut Model,
    now_ms: i64,
) -> pm_etcd::Result<Option<PoolEvent>> {
    let Some(view) = model.pool(pool) else {
        return Ok(None);
    };
    let keys = store.keys();
    let report_key = keys.report(pool, zone)?;
    match decide_report(&view, zone, scheduler_id, now_ms) {
        None => Ok(None),
        Some(ReportDecision::Drop) => {
            let revision = store.delete_fenced(fence, &report_key).await?;
            let report = Key::Report {
                pool: pool.to_string(),
                zone: zone.to_string(),
            };
            model.record(&report, None, revision)?;
            Ok(None)
        }
        Some(ReportDecision::Exhaust(grant)) => {
            let lease = store.grant_lease(grant.backoff.ttl).await?;
            let ops = vec![
                put_op(&keys.exhausted(pool, zone)?, &grant.exhaustion, lease),
                TxnOp::delete(report_key.as_str(), None),
                put_op(&keys.zone_desired(pool, zone)?, &grant.desired, 0),
            ];
            let revision = store.txn_fenced(fence, ops).await?;
            grant.record(model, pool, zone, revision)?;
            Ok(Some(grant.event(pool, zone)))
        }
    }
}

/// The event of an exhaustion that ended: its lease ran out or the key was cleared.
pub fn usable_again(pool: &str, zone: &str) -> PoolEvent {
    PoolEvent::zone(
        pool,
        "zone-usable",
        Severity::Info,
        zone,
        "zone is usable again",
    )
}

#[cfg(test)]
mod tests {
    use pm_etcd::testing::{delete, put, stored};
    use pm_etcd::{Keyspace, WatchBatch};
    use prost::Message;

    use super::*;

    const BASE: Duration = Duration::from_secs(60);

    fn after(backoff: ExhaustionBackoff) -> ZoneDesired {
        ZoneDesired {
            backoff_multiplier: backoff.multiplier,
            last_exhausted_until_unix_ms: backoff.until_unix_ms,
            ..Default::default()
        }
    }

    #[test]
    fn first_stockout_backs_off_the_base() {
        let b = next_backoff(BASE, None, 1_000);
        assert_eq!((b.multiplier, b.ttl, b.until_unix_ms), (1, BASE, 61_000));
    }

    #[test]
    fn repeated_stockouts_double_up_to_sixteen() {
        let mut now = 0;
        let mut last = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let b = next_backoff(BASE, last.as_ref(), now);
            seen.push(b.multiplier);
            now = b.until_unix_ms + 1_000;
            last = Some(after(b));
        }
        assert_eq!(seen, vec![1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn a_zone_healthy_long_enough_starts_over() {
        let b = next_backoff(BASE, None, 0);
        let b = next_backoff(BASE, Some(&after(b)), b.until_unix_ms + 1);
        assert_eq!(b.multiplier, 2);
        let healthy = b.until_unix_ms + millis(BASE) * i64::from(HEALTHY_AFTER_BASES);
        let c = next_backoff(BASE, Some(&after(b)), healthy);
        assert_eq!(c.multiplier, 1);
        let d = next_backoff(BASE, Some(&after(b)), healthy - 1);
        assert_eq!(d.multiplier, 4);
    }

    /// A model of the pool `web` whose zone `zone-a` (allowed or not) has 5 desired and a
    /// stockout report.
    fn model_with_report(allowed: bool, seconds_for_exhaustion: u32) -> Model {
        let keys = Keyspace::default();
        let config = PoolConfig {
            target_vm_count: 5,
            allowed_zones: vec![if allowed { "zone-a" } else { "zone-b" }.into()],
            prefix: "web-".into(),
            instance_json: "{}".into(),
            seconds_for_exhaustion,
            ..Default::default()
        };
        let report = ExhaustionReport {
            code: "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
            message: "no capacity".into(),
            ..Default::default()
        };
        let desired = ZoneDesired {
            count: 5,
            accept_new: true,
            ..Default::default()
        };
        let mut model = Model::new(keys.clone());
        model.load_pools(
            &[
                stored(keys.pool_config("web").unwrap(), config.encode_to_vec(), 1),
                stored(
                    keys.report("web", "zone-a").unwrap(),
                    report.encode_to_vec(),
                    2,
                ),
                stored(
                    keys.zone_desired("web", "zone-a").unwrap(),
                    desired.encode_to_vec(),
                    3,
                ),
            ],
            3,
        );
        model
    }

    fn pool_with_report(allowed: bool, seconds_for_exhaustion: u32) -> PoolView {
        let model = model_with_report(allowed, seconds_for_exhaustion);
        model.pool("web").expect("pool")
    }

    fn granted(view: &PoolView, now_ms: i64) -> ExhaustionGrant {
        match decide_report(view, "zone-a", "s1", now_ms) {
            Some(ReportDecision::Exhaust(grant)) => *grant,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn the_base_is_the_pools_or_the_default() {
        let default =
            Duration::from_secs(u64::from(pm_pool::fields::DEFAULT_SECONDS_FOR_EXHAUSTION));
        assert_eq!(base_backoff(None), default);
        let config = PoolConfig {
            seconds_for_exhaustion: 60,
            ..Default::default()
        };
        assert_eq!(base_backoff(Some(&config)), BASE);
        assert_eq!(base_backoff(Some(&PoolConfig::default())), default);
    }

    #[test]
    fn a_report_of_an_allowed_zone_exhausts_it_and_stops_its_growth() {
        let view = pool_with_report(true, 60);
        let grant = granted(&view, 1_000);
        assert_eq!(grant.backoff, next_backoff(BASE, None, 1_000));
        assert_eq!(
            grant.exhaustion.reason,
            "ZONE_RESOURCE_POOL_EXHAUSTED: no capacity"
        );
        assert_eq!(
            (
                grant.exhaustion.since_unix_ms,
                grant.exhaustion.until_unix_ms
            ),
            (1_000, 61_000)
        );
        assert_eq!(grant.exhaustion.set_by, "s1");
        let d = &grant.desired;
        assert_eq!(
            (d.count, d.accept_new, d.capacity_hint),
            (5, false, Some(0))
        );
        assert_eq!(
            (d.backoff_multiplier, d.last_exhausted_until_unix_ms),
            (1, 61_000)
        );
        let event = grant.event("web", "zone-a");
        assert_eq!(
            (event.kind, event.zone.as_str()),
            ("zone-exhausted", "zone-a")
        );
        assert!(event
            .message
            .starts_with("zone exhausted for 60s (back-off x1)"));

        let mut model = model_with_report(true, 60);
        grant.record(&mut model, "web", "zone-a", 10).unwrap();
        let view = model.pool("web").unwrap();
        let zone = &view.zones["zone-a"];
        assert!(zone.report.is_none());
        assert_eq!(zone.exhausted.as_ref(), Some(&grant.exhaustion));
        assert_eq!(zone.desired.as_ref(), Some(&grant.desired));
        assert_eq!(
            decide_report(&view, "zone-a", "s1", 2_000),
            None,
            "consumed"
        );
        model.take_dirty();
        let keys = Keyspace::default();
        let echo = |key: String, value: Vec<u8>| put(key, value, 10);
        model.apply_pools(WatchBatch::Events(vec![
            echo(
                keys.exhausted("web", "zone-a").unwrap(),
                grant.exhaustion.encode_to_vec(),
            ),
            echo(
                keys.zone_desired("web", "zone-a").unwrap(),
                grant.desired.encode_to_vec(),
            ),
        ]));
        assert!(
            model.take_dirty().is_empty(),
            "the watch's echo of the grant changes nothing"
        );
    }

    #[test]
    fn a_reports_class_is_kept_in_the_exhaustion_and_told_in_the_event() {
        let mut view = pool_with_report(true, 60);
        assert_eq!(
            granted(&view, 0).exhaustion.class(),
            ExhaustionClass::Stockout
        );
        let zone = view.zone_mut("zone-a");
        if let Some(report) = zone.report.as_mut() {
            report.class = ExhaustionClass::Quota as i32;
        }
        let grant = granted(&view, 0);
        assert_eq!(grant.exhaustion.class(), ExhaustionClass::Quota);
        let event = grant.event("web", "zone-a");
        assert!(
            event.message.contains("after a regional quota"),
            "{}",
            event.message
        );
    }

    #[test]
    fn a_second_stockout_after_expiry_doubles_the_back_off() {
        let mut model = model_with_report(true, 60);
        let first = granted(&model.pool("web").unwrap(), 0);
        first.record(&mut model, "web", "zone-a", 10).unwrap();
        // The lease runs out: etcd deletes the key, and another report comes.
        let keys = Keyspace::default();
        let notices = model.apply_pools(WatchBatch::Events(vec![
            delete(keys.exhausted("web", "zone-a").unwrap(), 11),
            put(
                keys.report("web", "zone-a").unwrap(),
                ExhaustionReport::default().encode_to_vec(),
                12,
            ),
        ]));
        assert_eq!(
            notices,
            [crate::model::Notice::ZoneUsable {
                pool: "web".into(),
                zone: "zone-a".into()
            }]
        );
        let second = granted(&model.pool("web").unwrap(), first.backoff.until_unix_ms + 1);
        assert_eq!(second.backoff.multiplier, 2);
        assert_eq!(second.exhaustion.reason, "");
        assert_eq!(usable_again("web", "zone-a").kind, "zone-usable");
    }

    #[test]
    fn a_report_of_an_exhausted_or_unused_zone_is_dropped() {
        let view = pool_with_report(false, 60);
        assert_eq!(
            decide_report(&view, "zone-a", "s1", 0),
            Some(ReportDecision::Drop)
        );
        let mut view = pool_with_report(true, 60);
        view.zone_mut("zone-a").exhausted = Some(ZoneExhaustion::default());
        assert_eq!(
            decide_report(&view, "zone-a", "s1", 0),
            Some(ReportDecision::Drop)
        );
        assert_eq!(decide_report(&view, "zone-b", "s1", 0), None);
    }
}
