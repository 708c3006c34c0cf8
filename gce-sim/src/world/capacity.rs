//! Capacity: how instances going live count against their zone's capacity (until
//! they are off) and in their pool's live count and peak, setting a zone's capacity,
//! and the stockout an insert, start or resume gets (and is counted) when the zone is
//! full, with GCE's `errorDetails`.

use std::collections::BTreeMap;

use pm_gce::template::validate_resource_name;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::operations::Failure;
use super::zones::Zone;
use super::{instance_path, ApiError, World};
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

    /// Counts a create, start or resume that finds `zone` full, and returns the
    /// failure its operation reports, shaped like GCE's
    /// `ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS` (as quoted in kubernetes/k8s.io#9834):
    /// the machine type asked for, from the instance `body`, and the other zones that
    /// have room.
    pub(super) fn stockout(
        &mut self,
        project: &str,
        zone: &str,
        body: &[(Box<str>, Box<RawValue>)],
    ) -> Failure {
        self.counters.stockouts += 1;
        let vm_type = machine_type_of(body);
        let available: Vec<&str> = self
            .zones
            .iter()
            .filter(|(name, z)| *name != zone && z.live < z.capacity)
            .map(|(name, _)| name.as_str())
            .collect();
        let advice = if available.is_empty() {
            String::new()
        } else {
            format!(
                " Consider trying your request in the {} zone(s), which currently has capacity to accommodate your request.",
                available.join(", ")
            )
        };
        let mut metadatas = json!({"vmType": vm_type, "zone": zone});
        if !available.is_empty() {
            metadatas["zonesAvailable"] = Value::String(available.join(","));
        }
        Failure {
            code: "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
            message: format!(
                "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request.  '(resource type:compute)'."
            ),
            details: vec![
                json!({"help": {"links": [{
                    "description": "Troubleshooting documentation",
                    "url": "https://cloud.google.com/compute/docs/resource-error",
                }]}}),
                json!({"localizedMessage": {
                    "locale": "en-US",
                    "message": format!(
                        "A {vm_type} VM instance is currently unavailable in the {zone} zone.{advice} Alternatively, you can try your request again with a different VM hardware configuration or at a later time. For more information, see the troubleshooting documentation."
                    ),
                }}),
                json!({"errorInfo": {
                    "reason": "resource_availability",
                    "domain": "compute.googleapis.com",
                    "metadatas": metadatas,
                }}),
            ],
            http_status: 503,
            http_message: "SERVICE UNAVAILABLE",
        }
    }

    /// Instance `name` went live: it holds capacity in its zone (once) and counts in its
    /// pool's live count.
    pub(super) fn went_live(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let z = self.zone_mut(project, zone)?;
        let instance = z
            .projects
            .get_mut(project)
            .and_then(|pz| pz.instances.get_mut(name))
            .ok_or_else(|| ApiError::not_found(&instance_path(project, zone, name)))?;
        let pool = pool_of(&instance.labels);
        if !std::mem::replace(&mut instance.holds_capacity, true) {
            z.live += 1;
        }
        count_live(&mut self.pools, project, pool, true);
        Ok(())
    }
}

/// The machine type's name in an instance body (`e2-small` of
/// `.../machineTypes/e2-small`).
fn machine_type_of(body: &[(Box<str>, Box<RawValue>)]) -> String {
    body.iter()
        .find(|(key, _)| key.as_ref() == "machineType")
        .and_then(|(_, raw)| serde_json::from_str::<String>(raw.get()).ok())
        .map(|url| url.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use crate::world::test_support::{body, status_of, world};
    use crate::world::Mutation;
    use pm_gce::resources::OperationStatus;
    use serde_json::json;
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
        assert_eq!(
            error.errors[0].code,
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
        );
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

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stocked_out_insert_is_provisioning_until_its_operation_fails_as_gce_reports_it() {
        let mut w = world(Duration::from_millis(100), Duration::ZERO);
        for name in ["a0", "a1", "a2"] {
            w.mutate("p", "z1", Mutation::Insert(&body(name)), None)
                .expect("insert");
        }
        let op = w
            .mutate("p", "z1", Mutation::Insert(&body("late")), None)
            .expect("accepted");
        assert_eq!(op.status, OperationStatus::Pending);
        assert!(
            op.error.is_none(),
            "the failure shows once the operation is DONE"
        );
        assert_eq!(status_of(&mut w, "late"), "PROVISIONING");
        let again = w
            .mutate("p", "z1", Mutation::Insert(&body("late")), None)
            .expect_err("the name is taken while it is PROVISIONING");
        assert_eq!(again.status, 409);
        assert_eq!(
            w.report().0["z1"].live,
            3,
            "a refused instance holds nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            w.get_instance("p", "z1", "late").expect_err("gone").status,
            404
        );
        let done = w.get_operation("p", "z1", &op.name).expect("operation");
        assert_eq!(done.status, OperationStatus::Done);
        assert_eq!(done.http_error_status_code, Some(503));
        assert_eq!(
            done.http_error_message.as_deref(),
            Some("SERVICE UNAVAILABLE")
        );
        let failed = pm_gce::compute::operation_result(done.clone()).expect_err("failed");
        assert_eq!(failed.class(), pm_gce::error::ErrorClass::Stockout);
        assert_eq!(failed.stockout_details().zones_available, ["z2"]);
        let item = &done.error.expect("error").errors[0];
        assert_eq!(item.code, "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS");
        assert_eq!(
            item.message.as_deref(),
            Some("The zone 'projects/p/zones/z1' does not have enough resources available to fulfill the request.  '(resource type:compute)'.")
        );
        assert_eq!(
            item.error_details[0]["help"]["links"][0]["description"],
            "Troubleshooting documentation"
        );
        let localized = item.error_details[1]["localizedMessage"]["message"]
            .as_str()
            .expect("localized message");
        assert!(
            localized.starts_with("A e2-small VM instance is currently unavailable in the z1 zone. Consider trying your request in the z2 zone(s)"),
            "{localized}"
        );
        assert_eq!(
            item.error_details[2],
            json!({"errorInfo": {
                "reason": "resource_availability",
                "domain": "compute.googleapis.com",
                "metadatas": {"vmType": "e2-small", "zone": "z1", "zonesAvailable": "z2"},
            }})
        );
    }
}
