//! Typed Compute v1 resources: the fields `pm` reads, with everything else kept.
//!
//! The same types are what the REST client decodes and what gce-sim and the fake
//! produce, so a field the client expects cannot silently be missing from a fake.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A Compute Engine instance (`compute#instance`).
///
/// Only `name` is required; output-only fields are absent in templates. Fields `pm`
/// does not interpret are kept in `extra`, so a rendered template round-trips whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Instance name, unique in its zone (see [`crate::template::validate_name`]).
    pub name: String,
    /// Server-assigned numeric id, sent as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Lifecycle status; absent in templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InstanceStatus>,
    /// URL of the zone the instance lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Labels; `pm-pool` marks pool membership.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Fingerprint of `labels`, required by `setLabels` for optimistic locking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_fingerprint: Option<String>,
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// RFC 3339 time of the last start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_start_timestamp: Option<String>,
    /// RFC 3339 time of the last stop (set after a preemption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stop_timestamp: Option<String>,
    /// Scheduling options: preemptible/Spot, termination action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// Machine type URL (`zones/ZONE/machineTypes/TYPE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Minimum CPU platform, e.g. `Intel Cascade Lake`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpu_platform: Option<String>,
    /// Custom hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Whether the instance may send packets with other source addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_ip_forward: Option<bool>,
    /// Whether deletes are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,
    /// Attached disks (kept as GCE's objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<Map<String, Value>>>,
    /// Network interfaces (kept as GCE's objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interfaces: Option<Vec<Map<String, Value>>>,
    /// Service accounts (kept as GCE's objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<Map<String, Value>>>,
    /// Accelerators (kept as GCE's objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_accelerators: Option<Vec<Map<String, Value>>>,
    /// Metadata: key/value items for the guest (startup scripts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Network tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    /// Canonical URL of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An instance's metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<MetadataItem>>,
    /// Every other field (`fingerprint`, `kind`), kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Metadata {
    /// The `fingerprint` GCE showed with these items, which a write of them must send
    /// back (optimistic locking); `None` when absent.
    pub fn fingerprint(&self) -> Option<&str> {
        self.extra.get("fingerprint").and_then(Value::as_str)
    }

    /// The value of item `key`: `None` when there is no such item, `Some("")` for an
    /// item without a value.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .flatten()
            .find(|item| item.key == key)
            .map(|item| item.value.as_deref().unwrap_or(""))
    }

    /// The items' keys, in GCE's order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.items.iter().flatten().map(|item| item.key.as_str())
    }
}

/// A project (`compute#project`) as `projects.get` returns it: what pm reads of it is its
/// `commonInstanceMetadata`; every other field is kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    /// The project id.
    pub name: String,
    /// The project-wide metadata (prevmtable keeps its config there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_instance_metadata: Option<Metadata>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One metadata entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataItem {
    /// The key.
    pub key: String,
    /// The value; GCE allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// An instance's network tags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tags {
    /// The tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<String>>,
    /// Every other field (`fingerprint`), kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `scheduling.provisioningModel`, as the discovery document lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProvisioningModel {
    /// Spot VM.
    Spot,
    /// A standard VM (or a legacy preemptible one with `preemptible: true`).
    Standard,
}

/// `scheduling.instanceTerminationAction`: what a preemption does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TerminationAction {
    /// Stop it: it stays TERMINATED and can be started again.
    Stop,
    /// Delete it.
    Delete,
}

/// `scheduling.onHostMaintenance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnHostMaintenance {
    /// Live-migrate to another host.
    Migrate,
    /// Stop (the only choice for preemptible and Spot VMs).
    Terminate,
}

/// Status of an instance, as listed in the Compute v1 discovery document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    /// Resources are being allocated.
    Provisioning,
    /// Resources are acquired; the instance is being prepared for first boot.
    Staging,
    /// The instance is booting or running.
    Running,
    /// The instance is being stopped (by a user, a preemption or a failure).
    Stopping,
    /// The instance is stopped (legacy spelling of TERMINATED).
    Stopped,
    /// The instance is stopped; it can be started again.
    Terminated,
    /// The instance is being suspended.
    Suspending,
    /// The instance is suspended.
    Suspended,
    /// The instance is being repaired.
    Repairing,
    /// The instance is waiting to be created.
    Pending,
    /// A stop is pending.
    PendingStop,
    /// Resources are being released.
    Deprovisioning,
    /// A status this version of pm does not know (GCE adds new ones): such an instance
    /// counts as not live and is left alone, and a list page holding one still decodes.
    #[serde(other)]
    Unrecognized,
}

/// An RFC 3339 time as GCE sends it (with an offset, often Pacific:
/// `2026-04-16T16:19:12.606-07:00`) in Unix milliseconds; `None` when it does not parse.
pub fn unix_ms(timestamp: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(timestamp)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl Instance {
    /// `creationTimestamp` in Unix milliseconds, when present and valid.
    pub fn created_unix_ms(&self) -> Option<i64> {
        self.creation_timestamp.as_deref().and_then(unix_ms)
    }
}

impl InstanceStatus {
    /// The status as GCE spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Provisioning => "PROVISIONING",
            InstanceStatus::Staging => "STAGING",
            InstanceStatus::Running => "RUNNING",
            InstanceStatus::Stopping => "STOPPING",
            InstanceStatus::Stopped => "STOPPED",
            InstanceStatus::Terminated => "TERMINATED",
            InstanceStatus::Suspending => "SUSPENDING",
            InstanceStatus::Suspended => "SUSPENDED",
            InstanceStatus::Repairing => "REPAIRING",
            InstanceStatus::Pending => "PENDING",
            InstanceStatus::PendingStop => "PENDING_STOP",
            InstanceStatus::Deprovisioning => "DEPROVISIONING",
            InstanceStatus::Unrecognized => "UNRECOGNIZED",
        }
    }
}

/// Scheduling options of an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Legacy preemptible VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemptible: Option<bool>,
    /// `SPOT` or `STANDARD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_model: Option<ProvisioningModel>,
    /// What a preemption does: `STOP` (keep it TERMINATED) or `DELETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_termination_action: Option<TerminationAction>,
    /// Restart after a host failure (must be false for preemptible VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_restart: Option<bool>,
    /// `MIGRATE` or `TERMINATE` (must be TERMINATE for preemptible VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_host_maintenance: Option<OnHostMaintenance>,
    /// Every other scheduling field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A zonal operation (`compute#operation`), the handle of every mutating call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Always `compute#operation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Numeric id as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Operation name, the handle for get/wait.
    pub name: String,
    /// URL of the operation's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `insert`, `delete`, `start`, `bulkInsert`, `compute.instances.preempted`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_type: Option<String>,
    /// URL of the resource the operation acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_link: Option<String>,
    /// Numeric id of the target resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    /// PENDING, RUNNING or DONE.
    pub status: OperationStatus,
    /// Human-readable status detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Progress from 0 to 100 (not monotonic, not reliable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<i64>,
    /// RFC 3339 time the operation was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert_time: Option<String>,
    /// RFC 3339 time the operation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// RFC 3339 time the operation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Canonical URL of the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    /// Who requested it (`system` for preemptions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The errors of a failed operation (set only when DONE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
    /// HTTP status a synchronous call would have returned for this failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_status_code: Option<u16>,
    /// Reason phrase matching `http_error_status_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_message: Option<String>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Operation {
    /// Whether the operation has finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.status == OperationStatus::Done
    }

    /// The zone name (last segment of the `zone` URL), if the operation has one.
    pub fn zone_name(&self) -> Option<&str> {
        self.zone.as_deref().and_then(last_segment)
    }

    /// The target's name (last segment of `target_link`), if any.
    pub fn target_name(&self) -> Option<&str> {
        self.target_link.as_deref().and_then(last_segment)
    }
}

/// The last non-empty `/`-separated segment of a resource URL.
pub fn last_segment(url: &str) -> Option<&str> {
    url.rsplit('/').find(|segment| !segment.is_empty())
}

/// Status of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationStatus {
    /// Accepted, not started.
    Pending,
    /// In progress.
    Running,
    /// Finished; `error` tells whether it failed.
    Done,
}

impl OperationStatus {
    /// The status as GCE spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Pending => "PENDING",
            OperationStatus::Running => "RUNNING",
            OperationStatus::Done => "DONE",
        }
    }
}

/// The `error` object of a failed operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperationError {
    /// One entry per error; `code` is what classification reads.
    #[serde(default)]
    pub errors: Vec<OperationErrorItem>,
}

/// One error of a failed operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationErrorItem {
    /// Error type, e.g. `ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`.
    pub code: String,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Field of the request that caused the error, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Structured details (quota info, help links), kept as sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_details: Vec<Value>,
}

/// One page of `instances.list` (`compute#instanceList`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceList {
    /// Instances of this page (absent when empty).
    #[serde(default)]
    pub items: Vec<Instance>,
    /// Token of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// One page of `zoneOperations.list` (`compute#operationList`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationList {
    /// Operations of this page (absent when empty).
    #[serde(default)]
    pub items: Vec<Operation>,
    /// Token of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Body of `instances.bulkInsert` (`BulkInsertInstanceResource`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkInsertRequest {
    /// Number of instances to create (an int64 sent as a string).
    #[serde(with = "int64_string")]
    pub count: u64,
    /// Fewer than this many creatable means none is kept (defaults to `count`).
    #[serde(
        default,
        with = "opt_int64_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_count: Option<u64>,
    /// Name pattern with a run of `#` replaced by a zero-padded number, e.g. `pm-####`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_pattern: Option<String>,
    /// Explicit instance names (the keys) and their per-instance properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_instance_properties: BTreeMap<String, Value>,
    /// Properties shared by all instances (`InstanceProperties`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_properties: Option<Map<String, Value>>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// GCE's error envelope for synchronous failures: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The body of a synchronous GCE error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// HTTP status code.
    pub code: u16,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Detailed errors; `reason` is what classification reads.
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

/// One detailed error of a synchronous failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorItem {
    /// `global`, `usageLimits`, ...
    #[serde(default)]
    pub domain: String,
    /// `notFound`, `alreadyExists`, `quotaExceeded`, `rateLimitExceeded`, ...
    #[serde(default)]
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
}

/// Serde for an int64 that the API sends as a string but may also accept as a number.
mod int64_string {
    use super::*;

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(u64),
            Text(String),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Number(n) => Ok(n),
            Repr::Text(text) => text.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!("expected an int64 string, got {text:?}"))
            }),
        }
    }
}

/// [`int64_string`] for an optional field.
mod opt_int64_string {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(n) => int64_string::serialize(n, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        int64_string::deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keeps_unknown_fields_and_reads_known_ones() {
        let json = serde_json::json!({
            "name": "web-1",
            "id": "123",
            "status": "TERMINATED",
            "labels": {"pm-pool": "web"},
            "machineType": "zones/z/machineTypes/e2-small",
            "scheduling": {"preemptible": true, "instanceTerminationAction": "STOP", "nodeAffinities": []}
        });
        let instance: Instance = serde_json::from_value(json.clone()).expect("decodes");
        assert_eq!(instance.status, Some(InstanceStatus::Terminated));
        assert_eq!(instance.labels["pm-pool"], "web");
        let scheduling = instance.scheduling.clone().expect("scheduling");
        assert_eq!(scheduling.preemptible, Some(true));
        assert!(scheduling.extra.contains_key("nodeAffinities"));
        assert_eq!(serde_json::to_value(&instance).expect("encodes"), json);
    }

    #[test]
    fn an_unknown_status_still_decodes() {
        let list: InstanceList = serde_json::from_str(
            r#"{"items":[{"name":"a","status":"MELTING"},{"name":"b","status":"DEPROVISIONING"}]}"#,
        )
        .expect("a page with a status pm does not know decodes");
        assert_eq!(list.items[0].status, Some(InstanceStatus::Unrecognized));
        assert_eq!(list.items[1].status, Some(InstanceStatus::Deprovisioning));
    }

    #[test]
    fn timestamps_are_times_whatever_their_offset() {
        let pacific = unix_ms("2026-04-16T16:19:12.606-07:00").expect("parses");
        let utc = unix_ms("2026-04-16T23:19:12.606Z").expect("parses");
        assert_eq!(pacific, utc);
        let earlier_by_text = unix_ms("2026-04-16T17:00:00-07:00").expect("parses");
        let later_by_text = unix_ms("2026-04-16T18:00:00Z").expect("parses");
        assert!(
            earlier_by_text > later_by_text,
            "compared as times, not strings"
        );
        assert_eq!(unix_ms("yesterday"), None);
    }

    #[test]
    fn bulk_insert_counts_are_int64_strings() {
        let request = BulkInsertRequest {
            count: 3,
            min_count: Some(2),
            name_pattern: Some("pm-###".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&request).expect("encodes");
        assert_eq!(json["count"], "3");
        assert_eq!(json["minCount"], "2");
        let back: BulkInsertRequest =
            serde_json::from_value(serde_json::json!({"count": 4, "minCount": "1"}))
                .expect("decodes");
        assert_eq!((back.count, back.min_count), (4, Some(1)));
        let bad = serde_json::from_value::<BulkInsertRequest>(serde_json::json!({"count": "x"}));
        assert!(bad.expect_err("bad count").to_string().contains("int64"));
    }

    #[test]
    fn operation_helpers_read_urls() {
        let op: Operation = serde_json::from_value(serde_json::json!({
            "name": "op-1",
            "status": "DONE",
            "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a",
            "targetLink": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/web-1"
        }))
        .expect("decodes");
        assert!(op.is_done());
        assert_eq!(op.zone_name(), Some("us-central1-a"));
        assert_eq!(op.target_name(), Some("web-1"));
    }
}
