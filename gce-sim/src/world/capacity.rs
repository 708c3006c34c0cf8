//! Capacity: how instances going live or not count against their zone's capacity
//! and their pool's live count and peak, setting a zone's capacity, and the
//! stockout an insert or start gets (and is counted) when the zone is full.

use std::collections::BTreeMap;

use pm_gce::template::validate_resource_name;

use super::operations::Failure;
use super::zones::Zone;
use super::{ApiError, World};
use crate::control::PoolReport;

/// The label whose values [`World`] counts live instances by: pm's pool label.
const POOL_LABEL: &str = "pm-pool";

/// The `pm-pool` label among sorted `labels`.
pub(super) fn pool_of(labels: &[(String, String)]) -> Option<String> {
    labels
        .iter()
        .find(|(k, _)| k == POOL_LABEL)
        .map(|(_, v)| v.clone())
}

/// Counts an instance of `pool` in `project` becoming live (`up`) or not live any more.
pub(super) fn count_live(
    pools: &mut BTreeMap<(String, String), PoolReport>,
    project: &str,
    pool: Option<String>,
    up: bool,
) {
    let Some(pool) = pool else { return };
    let entry = pools.entry((project.to_string(), pool)).or_default();
    if up {
        entry.live += 1;
        entry.peak = entry.peak.max(entry.live);
    } else {
        entry.live = entry.live.saturating_sub(1);
    }
}

impl World {
    /// Sets a zone's capacity, adding the zone if it is new.
    pub fn set_capacity(&mut self, zone: &str, capacity: u64) -> Result<(), ApiError> {
        validate_resource_name("zone name", zone).map_err(|e| ApiError::invalid(e.to_string()))?;
        self.zones
            .entry(zone.to_string())
            .or_insert_with(|| Zone::new(capacity))
            .capacity = capacity;
        Ok(())
    }

    /// Counts a create or start that finds the zone full, and returns the failure its
    /// operation reports.
    pub(super) fn stockout(&mut self, project: &str, zone: &str) -> Failure {
        self.counters.stockouts += 1;
        Failure {
            code: "ZONE_RESOURCE_POOL_EXHAUSTED",
            message: format!(
                "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request."
            ),
            http_status: 503,
            http_message: "SERVICE UNAVAILABLE",
        }
    }

    /// An instance of `pool` in `zone` became live (`up`) or stopped being live: counts
    /// it against the zone's capacity and in the pool's live count and peak.
    pub(super) fn live_changed(
        &mut self,
        project: &str,
        zone: &str,
        pool: Option<String>,
        up: bool,
    ) -> Result<(), ApiError> {
        let z = self.zone_mut(project, zone)?;
        z.live = if up {
            z.live + 1
        } else {
            z.live.saturating_sub(1)
        };
        count_live(&mut self.pools, project, pool, up);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::world::test_support::{body, world};
    use crate::world::Mutation;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn capacity_turns_inserts_into_stockouts() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        for i in 0..3 {
            let op = w
                .mutate("p", "z1", Mutation::Insert(&body(&format!("a{i}"))), None)
                .expect("insert");
            assert!(op.error.is_none());
        }
        let op = w
            .mutate("p", "z1", Mutation::Insert(&body("a3")), None)
            .expect("accepted");
        let error = op.error.expect("stockout");
        assert_eq!(error.errors[0].code, "ZONE_RESOURCE_POOL_EXHAUSTED");
        assert_eq!(op.http_error_status_code, Some(503));
        assert!(w.get_instance("p", "z1", "a3").is_err());
        w.mutate("p", "z1", Mutation::Delete("a0"), None)
            .expect("delete");
        assert!(w
            .mutate("p", "z1", Mutation::Insert(&body("a3")), None)
            .expect("insert")
            .error
            .is_none());
        let (zones, counters) = w.report();
        assert_eq!(zones["z1"].live, 3);
        assert_eq!(counters.stockouts, 1);
    }
}
