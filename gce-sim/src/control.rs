//! gce-sim's control API (`/sim/v1/...`): the endpoints DESIGN.md fixes, plus
//! `GET /sim/v1/instances` for tests that watch every instance past fault injection
//! and `POST /sim/v1/instances/<zone>/<name>/status` for statuses the lifecycle never
//! reaches.
//! Its message types, its handlers, and [`SimControl`], a client for tests and tools.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::respond;
use crate::world::ApiError;
use crate::Shared;

/// Fault injection for the compute API (`POST /sim/v1/faults` replaces all of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Share of compute requests answered with `status`, 0 to 1.
    #[serde(default)]
    pub error_rate: f64,
    /// HTTP status of injected errors, 400 to 599 (default 503).
    #[serde(default = "default_fault_status")]
    pub status: u16,
    /// Delay added before every compute request is handled, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// `errors[].reason` of injected errors; by default derived from `status`
    /// (403 and 429 `rateLimitExceeded`, 404 `notFound`, 5xx `backendError`, ...).
    /// Set `quotaExceeded` to simulate exhausted quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Only these methods get injected errors (e.g. `compute.instances.insert`); absent:
    /// every compute method. Latency applies to all of them either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Milliseconds that operations started while this is set take from PENDING to
    /// DONE, in place of `--op-delay-ms` (slow operations). What they do to instances
    /// keeps its usual pace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_delay_ms: Option<u64>,
    /// Operations started while this is true never reach DONE (they stay RUNNING), as
    /// when GCE loses track of one; what they do to instances still happens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang_operations: bool,
    /// Injected errors carry `Retry-After: <this>` (seconds), as GCE's front end may on
    /// quota and rate-limit answers; absent: no such header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// Share of inserts, 0 to 1, whose operation ends DONE with an error instead of
    /// creating the instance, as GCE reports a backend failure inside an operation:
    /// `INTERNAL_ERROR`, `httpErrorStatusCode` 500. The instance shows PROVISIONING
    /// until then, and is gone after.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub operation_error_rate: f64,
    /// Only calls for these projects get the latency and the injected errors; absent:
    /// every project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
}

fn is_zero(rate: &f64) -> bool {
    *rate == 0.0
}

fn default_fault_status() -> u16 {
    503
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            status: default_fault_status(),
            latency_ms: 0,
            reason: None,
            methods: None,
            op_delay_ms: None,
            hang_operations: false,
            retry_after_seconds: None,
            operation_error_rate: 0.0,
            projects: None,
        }
    }
}

impl Faults {
    /// Longest latency accepted, so a typo cannot hang every client for hours.
    pub const MAX_LATENCY_MS: u64 = 600_000;

    /// Longest operation delay accepted.
    pub const MAX_OP_DELAY_MS: u64 = 3_600_000;

    /// Whether latency and errors apply to a call at `path` (`/compute/v1/projects/P/...`).
    pub fn covers(&self, path: &str) -> bool {
        let project = path
            .strip_prefix("/compute/v1/projects/")
            .and_then(|rest| rest.split('/').next());
        self.projects
            .as_ref()
            .is_none_or(|projects| project.is_some_and(|p| projects.iter().any(|q| q == p)))
    }

    /// Whether errors are injected into calls of `method`.
    pub fn targets(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m == method))
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "errorRate {} is not between 0 and 1",
                self.error_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.operation_error_rate) {
            return Err(format!(
                "operationErrorRate {} is not between 0 and 1",
                self.operation_error_rate
            ));
        }
        if !(400..=599).contains(&self.status) {
            return Err(format!("status {} is not between 400 and 599", self.status));
        }
        if self.latency_ms > Self::MAX_LATENCY_MS {
            return Err(format!(
                "latencyMs {} exceeds {}",
                self.latency_ms,
                Self::MAX_LATENCY_MS
            ));
        }
        if let Some(op_delay) = self.op_delay_ms.filter(|ms| *ms > Self::MAX_OP_DELAY_MS) {
            return Err(format!(
                "opDelayMs {op_delay} exceeds {}; use hangOperations for operations that never finish",
                Self::MAX_OP_DELAY_MS
            ));
        }
        Ok(())
    }

    /// The reason injected errors carry.
    pub fn effective_reason(&self) -> String {
        if let Some(reason) = &self.reason {
            return reason.clone();
        }
        match self.status {
            400 => "invalid",
            403 | 429 => "rateLimitExceeded",
            404 => "notFound",
            409 => "alreadyExists",
            412 => "conditionNotMet",
            500..=599 => "backendError",
            _ => "failed",
        }
        .to_string()
    }
}

/// Things that happened since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Instances created (inserts and bulk inserts that got capacity).
    pub inserted: u64,
    /// Creates and starts refused for lack of capacity.
    pub stockouts: u64,
    /// Instances deleted.
    pub deleted: u64,
    /// Instances preempted.
    pub preempted: u64,
    /// TERMINATED instances started again.
    pub started: u64,
    /// Instances stopped by `instances.stop`.
    pub stopped: u64,
    /// SUSPENDED instances resumed.
    #[serde(default)]
    pub resumed: u64,
}

/// One zone in [`SimState`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneReport {
    /// Most live instances the zone holds before creates stock out.
    pub capacity: u64,
    /// Instances counting against capacity (PROVISIONING, STAGING, RUNNING).
    pub live: u64,
    /// Instance count by status, all projects.
    pub instances: BTreeMap<String, u64>,
    /// Operations kept, all projects.
    pub operations: u64,
}

/// Body of `GET /sim/v1/state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimState {
    /// Zones by name.
    pub zones: BTreeMap<String, ZoneReport>,
    /// Event counters.
    pub counters: Counters,
    /// Current fault injection.
    pub faults: Faults,
}

/// One instance in the reply to `GET /sim/v1/instances`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// Its project.
    pub project: String,
    /// Its zone.
    pub zone: String,
    /// Its name.
    pub name: String,
    /// Its id, which changes when an instance of the same name is created again.
    pub id: String,
    /// Its status (`PROVISIONING`, `RUNNING`, `TERMINATED`, ...).
    pub status: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Calls naming it that change an instance (`compute.instances.delete`, `.start`,
    /// `.stop`, `.setLabels`) by method, whatever their outcome, injected errors
    /// included; an instance deleted and created again under its name keeps the count.
    #[serde(default)]
    pub changes: BTreeMap<String, u64>,
}

/// Live instances of one pool (a value of the `pm-pool` label) in one project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolReport {
    /// The project.
    pub project: String,
    /// The `pm-pool` label's value.
    pub pool: String,
    /// Instances that are PROVISIONING, STAGING or RUNNING now.
    pub live: u64,
    /// The most that ever were at once, since start or the last reset.
    pub peak: u64,
}

/// Body of `GET /sim/v1/instances`: every instance of every project and zone, read
/// past fault injection and latency, for tests that watch what GCE holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancesReport {
    /// The instances, by zone, project and name.
    pub instances: Vec<InstanceReport>,
    /// Live instances now and at most, per pool, so a test sees a peak however briefly
    /// it lasted.
    #[serde(default)]
    pub pools: Vec<PoolReport>,
}

/// Body of `GET /sim/v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    /// Compute API requests by method (`compute.instances.insert`, ...) and outcome
    /// (the HTTP status, e.g. `"200"`, `"503"`).
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// All compute API requests.
    pub total: u64,
}

impl SimStats {
    /// Requests of `method`, all outcomes.
    pub fn count(&self, method: &str) -> u64 {
        self.requests
            .get(method)
            .map_or(0, |outcomes| outcomes.values().sum())
    }
}

/// Body of `GET /sim/v1/tokens` and of the reply to `POST /sim/v1/tokens/revoke`:
/// access tokens issued by the token endpoint, and compute calls refused for want of
/// one (with `--require-auth`), since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensReport {
    /// Tokens issued.
    pub issued: u64,
    /// Tokens accepted now.
    pub active: u64,
    /// Tokens revoked.
    pub revoked: u64,
    /// Compute calls answered 401.
    pub refused: u64,
}

/// Body of `POST /sim/v1/zones/<zone>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityRequest {
    /// Most live instances the zone holds.
    pub capacity: u64,
}

/// Body of `POST /sim/v1/preempt`: `zone` and `count`, or `names`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreemptRequest {
    /// Zone to preempt `count` random live instances in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// How many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Instances to preempt by name, in any zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// Reply to `POST /sim/v1/preempt`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreemptResponse {
    /// Instances preempted now.
    pub preempted: Vec<String>,
    /// Requested names that were not found or not live.
    #[serde(default)]
    pub missing: Vec<String>,
}

/// Body of `POST /sim/v1/instances/<zone>/<name>/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// The status to show: `SUSPENDING`, `SUSPENDED`, `PENDING`, `PENDING_STOP`,
    /// `DEPROVISIONING`, or any other upper-case name (one no client knows); not one the
    /// lifecycle produces (`PROVISIONING`, `STAGING`, `RUNNING`, `STOPPING`,
    /// `TERMINATED`).
    pub status: String,
    /// Only the instance of this project; absent: the instance of that name in every
    /// project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Reply to `POST /sim/v1/instances/<zone>/<name>/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// The projects whose instance now shows the status.
    pub projects: Vec<String>,
    /// The status set.
    pub status: String,
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

pub(super) async fn state(State(sim): State<Arc<Shared>>) -> Response {
    let mut world = sim.world();
    let (zones, counters) = world.report();
    let faults = world.faults().clone();
    respond(Ok(SimState {
        zones,
        counters,
        faults,
    }))
}

pub(super) async fn instances(State(sim): State<Arc<Shared>>) -> Response {
    let mut world = sim.world();
    let instances = world.instance_reports();
    let pools = world.pool_reports();
    respond(Ok(InstancesReport { instances, pools }))
}

pub(super) async fn set_capacity(
    State(sim): State<Arc<Shared>>,
    Path(zone): Path<String>,
    body: Bytes,
) -> Response {
    respond(parse_body::<CapacityRequest>(&body).and_then(|request| {
        let mut world = sim.world();
        world.set_capacity(&zone, request.capacity)?;
        let (zones, _) = world.report();
        Ok(zones.get(&zone).cloned().unwrap_or_default())
    }))
}

pub(super) async fn preempt(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    respond(parse_body::<PreemptRequest>(&body).and_then(|request| {
        let mut world = sim.world();
        match request {
            PreemptRequest {
                zone: Some(zone),
                count: Some(count),
                names: None,
            } => Ok(PreemptResponse {
                preempted: world.preempt_count(&zone, count)?,
                missing: Vec::new(),
            }),
            PreemptRequest {
                zone: None,
                count: None,
                names: Some(names),
            } => {
                let result = world.preempt_names(&names);
                Ok(PreemptResponse {
                    preempted: result.preempted,
                    missing: result.missing,
                })
            }
            _ => Err(ApiError::invalid(
                "send {\"zone\": Z, \"count\": N} or {\"names\": [...]}",
            )),
        }
    }))
}

pub(super) async fn set_status(
    State(sim): State<Arc<Shared>>,
    Path((zone, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    respond(parse_body::<StatusRequest>(&body).and_then(|request| {
        let projects =
            sim.world()
                .set_status(request.project.as_deref(), &zone, &name, &request.status)?;
        Ok(StatusResponse {
            projects,
            status: request.status,
        })
    }))
}

pub(super) async fn set_faults(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    respond(parse_body::<Faults>(&body).and_then(|faults| {
        faults.validate().map_err(ApiError::invalid)?;
        sim.world().set_faults(faults.clone());
        Ok(faults)
    }))
}

pub(super) async fn reset(State(sim): State<Arc<Shared>>) -> Response {
    sim.world().reset();
    respond(Ok(serde_json::json!({})))
}

pub(super) async fn stats(State(sim): State<Arc<Shared>>) -> Response {
    let world = sim.world();
    let requests = world.stats().clone();
    let total = requests.values().flat_map(|o| o.values()).sum();
    respond(Ok(SimStats { requests, total }))
}

/// A failed control API call.
#[derive(Debug, thiserror::Error)]
pub enum SimControlError {
    /// The request did not complete.
    #[error("gce-sim control {path}: transport error: {source:?}")]
    Transport {
        /// The control path.
        path: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The sim answered with an error status.
    #[error("gce-sim control {path}: HTTP {status}: {body}")]
    Status {
        /// The control path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// The reply was not the expected JSON.
    #[error("gce-sim control {path}: undecodable reply")]
    Decode {
        /// The control path.
        path: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// Client of the control API of a gce-sim at `http://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct SimControl {
    http: reqwest::Client,
    root: String,
}

impl SimControl {
    /// A client for the sim whose root URL is `root` (e.g. `http://127.0.0.1:8089`).
    pub fn new(root: impl Into<String>) -> SimControl {
        let root = root.into().trim_end_matches('/').to_string();
        SimControl {
            http: reqwest::Client::new(),
            root,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, SimControlError> {
        let url = format!("{}/sim/v1/{path}", self.root);
        let request = match body {
            Some(body) => self.http.post(&url).json(&body),
            None => self.http.get(&url),
        };
        let transport = |source| SimControlError::Transport {
            path: path.to_string(),
            source,
        };
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(SimControlError::Status {
                path: path.to_string(),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| SimControlError::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// `GET /sim/v1/state`.
    pub async fn state(&self) -> Result<SimState, SimControlError> {
        self.call("state", None).await
    }

    /// `GET /sim/v1/instances`.
    pub async fn instances(&self) -> Result<InstancesReport, SimControlError> {
        self.call("instances", None).await
    }

    /// `GET /sim/v1/stats`.
    pub async fn stats(&self) -> Result<SimStats, SimControlError> {
        self.call("stats", None).await
    }

    /// `POST /sim/v1/zones/<zone>`: sets (or adds) a zone's capacity.
    pub async fn set_capacity(
        &self,
        zone: &str,
        capacity: u64,
    ) -> Result<ZoneReport, SimControlError> {
        let body = serde_json::json!({ "capacity": capacity });
        self.call(&format!("zones/{zone}"), Some(body)).await
    }

    /// `POST /sim/v1/preempt` with a zone and a count.
    pub async fn preempt_count(
        &self,
        zone: &str,
        count: u64,
    ) -> Result<PreemptResponse, SimControlError> {
        let body = serde_json::json!({ "zone": zone, "count": count });
        self.call("preempt", Some(body)).await
    }

    /// `POST /sim/v1/preempt` with names.
    pub async fn preempt_names(&self, names: &[&str]) -> Result<PreemptResponse, SimControlError> {
        let body = serde_json::json!({ "names": names });
        self.call("preempt", Some(body)).await
    }

    /// `POST /sim/v1/instances/<zone>/<name>/status`: shows `status` for instance `name`
    /// of `zone` (every project) until a call changes it.
    pub async fn set_status(
        &self,
        zone: &str,
        name: &str,
        status: &str,
    ) -> Result<StatusResponse, SimControlError> {
        let body = serde_json::json!({ "status": status });
        self.call(&format!("instances/{zone}/{name}/status"), Some(body))
            .await
    }

    /// `POST /sim/v1/faults`: replaces the fault injection.
    pub async fn set_faults(&self, faults: &Faults) -> Result<Faults, SimControlError> {
        let body = serde_json::to_value(faults).map_err(|source| SimControlError::Decode {
            path: "faults".to_string(),
            source,
        })?;
        self.call("faults", Some(body)).await
    }

    /// `GET /sim/v1/tokens`.
    pub async fn tokens(&self) -> Result<TokensReport, SimControlError> {
        self.call("tokens", None).await
    }

    /// `POST /sim/v1/tokens/revoke`: no token issued so far is accepted any more.
    pub async fn revoke_tokens(&self) -> Result<TokensReport, SimControlError> {
        self.call("tokens/revoke", Some(serde_json::json!({})))
            .await
    }

    /// `POST /sim/v1/reset`.
    pub async fn reset(&self) -> Result<(), SimControlError> {
        let _empty: serde_json::Value = self.call("reset", Some(serde_json::json!({}))).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_validation_and_defaults() {
        let faults: Faults = serde_json::from_str(r#"{"errorRate": 0.5}"#).expect("parses");
        assert_eq!(faults.status, 503);
        assert_eq!(faults.effective_reason(), "backendError");
        assert!(faults.validate().is_ok());
        let bad: Faults = serde_json::from_str(r#"{"errorRate": 2}"#).expect("parses");
        assert!(bad.validate().expect_err("range").contains("errorRate"));
        let bad: Faults = serde_json::from_str(r#"{"status": 200}"#).expect("parses");
        assert!(bad.validate().expect_err("range").contains("status"));
        assert!(serde_json::from_str::<Faults>(r#"{"errorrate": 1}"#).is_err());
        let quota: Faults =
            serde_json::from_str(r#"{"status": 403, "reason": "quotaExceeded"}"#).expect("parses");
        assert_eq!(quota.effective_reason(), "quotaExceeded");
        assert_eq!(quota.retry_after_seconds, None);
        let told: Faults =
            serde_json::from_str(r#"{"errorRate": 1, "retryAfterSeconds": 7}"#).expect("parses");
        assert_eq!(told.retry_after_seconds, Some(7));
    }
}
