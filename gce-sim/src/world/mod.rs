//! The simulated cloud: zones with capacity, instances and operations, whose
//! lifecycles are computed lazily from timestamps so that 20,000 instances cost nothing
//! while nobody looks at them.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::clock::{operation_name, resource_id, rfc3339, system_event_name};
use crate::control::{Counters, Faults, InstanceReport, PoolReport, ZoneReport};
use crate::SimConfig;
use pm_gce::compute::{is_valid_request_id, MAX_PAGE_SIZE};
use pm_gce::filter::Filter;
use pm_gce::resources::{
    BulkInsertRequest, Instance, InstanceStatus, Operation, OperationError, OperationErrorItem,
    OperationStatus,
};
use pm_gce::template::{
    validate_label_key, validate_label_value, validate_name, validate_resource_name,
};

/// Root of the resource URLs GCE hands out (selfLink, zone, targetLink).
pub const URL_ROOT: &str = "https://www.googleapis.com/compute/v1/";

/// Fields of an instance that the server owns; whatever a client sends for them is
/// replaced.
const SERVER_FIELDS: [&str; 12] = [
    "kind",
    "id",
    "name",
    "zone",
    "status",
    "statusMessage",
    "selfLink",
    "creationTimestamp",
    "labels",
    "labelFingerprint",
    "lastStartTimestamp",
    "lastStopTimestamp",
];

/// Most labels one resource may carry.
const MAX_LABELS: usize = 64;

/// A synchronous API error, rendered in GCE's error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `errors[].reason`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            reason: "invalid",
            message: message.into(),
        }
    }

    fn invalid_field(field: &str, value: &str, problem: &str) -> ApiError {
        ApiError::invalid(format!(
            "Invalid value for field '{field}': '{value}'. {problem}"
        ))
    }

    fn not_found(resource: &str) -> ApiError {
        ApiError {
            status: 404,
            reason: "notFound",
            message: format!("The resource '{resource}' was not found"),
        }
    }

    fn already_exists(resource: &str) -> ApiError {
        ApiError {
            status: 409,
            reason: "alreadyExists",
            message: format!("The resource '{resource}' already exists"),
        }
    }

    fn not_ready(resource: &str) -> ApiError {
        ApiError {
            status: 400,
            reason: "resourceNotReady",
            message: format!("The resource '{resource}' is not ready"),
        }
    }
}

/// How an instance is doing; with the time it entered the phase this gives its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// PROVISIONING, then STAGING, then RUNNING (each boot-delay half).
    Booting,
    /// STOPPING for the boot delay, then TERMINATED.
    Stopping,
    /// STOPPING until it is removed (delete, or preemption with action DELETE).
    Deleting,
}

struct SimInstance {
    id: u64,
    /// The client's fields minus [`SERVER_FIELDS`], machineType expanded to a URL, each
    /// kept as compact JSON text: a tenth of the memory of a `serde_json::Map`.
    body: Box<[(Box<str>, Box<RawValue>)]>,
    /// Sorted by key.
    labels: Box<[(String, String)]>,
    label_fingerprint: String,
    created: SystemTime,
    last_start: SystemTime,
    last_stop: Option<SystemTime>,
    phase: Phase,
    phase_since: Instant,
    delete_on_preempt: bool,
}

impl SimInstance {
    fn status(&self, now: Instant, boot_delay: Duration) -> InstanceStatus {
        let elapsed = now.saturating_duration_since(self.phase_since);
        match self.phase {
            Phase::Booting if elapsed >= boot_delay => InstanceStatus::Running,
            Phase::Booting if elapsed >= boot_delay / 2 => InstanceStatus::Staging,
            Phase::Booting => InstanceStatus::Provisioning,
            Phase::Stopping if elapsed >= boot_delay => InstanceStatus::Terminated,
            Phase::Stopping | Phase::Deleting => InstanceStatus::Stopping,
        }
    }

    /// Counts against the zone's capacity.
    fn is_live(&self) -> bool {
        self.phase == Phase::Booting
    }
}

/// An operation failure as GCE reports it in the operation.
#[derive(Debug, Clone)]
struct Failure {
    code: &'static str,
    message: String,
    http_status: u16,
    http_message: &'static str,
}

struct SimOperation {
    id: u64,
    operation_type: &'static str,
    target_name: String,
    target_id: u64,
    user: &'static str,
    status_message: Option<&'static str>,
    inserted: SystemTime,
    inserted_at: Instant,
    delay: Duration,
    /// Started while operations hang: RUNNING after half its delay, never DONE.
    hung: bool,
    failure: Option<Failure>,
}

impl SimOperation {
    fn status(&self, now: Instant) -> OperationStatus {
        let elapsed = now.saturating_duration_since(self.inserted_at);
        if !self.hung && elapsed >= self.delay {
            OperationStatus::Done
        } else if elapsed >= self.delay / 2 {
            OperationStatus::Running
        } else {
            OperationStatus::Pending
        }
    }

    /// When it is DONE; never for a hung one.
    fn done_at(&self) -> Option<Instant> {
        (!self.hung).then(|| self.inserted_at + self.delay)
    }
}

#[derive(Default)]
struct ProjectZone {
    instances: BTreeMap<String, SimInstance>,
    operations: BTreeMap<String, SimOperation>,
}

struct Zone {
    capacity: u64,
    /// Number of instances with `is_live()`, over all projects.
    live: u64,
    projects: BTreeMap<String, ProjectZone>,
    /// (when, project, name) of instances in [`Phase::Deleting`], removed once due.
    removals: BTreeSet<(Instant, String, String)>,
}

impl Zone {
    fn new(capacity: u64) -> Zone {
        Zone {
            capacity,
            live: 0,
            projects: BTreeMap::new(),
            removals: BTreeSet::new(),
        }
    }

    /// Removes the instances whose deletion is due.
    fn sweep(&mut self, now: Instant) {
        while let Some(first) = self.removals.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, project, name)) = self.removals.pop_first() {
                if let Some(pz) = self.projects.get_mut(&project) {
                    pz.instances.remove(&name);
                }
            }
        }
    }
}

/// The whole simulated cloud. Every method runs under the server's lock.
pub struct World {
    config: SimConfig,
    zones: BTreeMap<String, Zone>,
    /// (project, zone, requestId) → operation name.
    request_ids: HashMap<(String, String, String), String>,
    rng: StdRng,
    counters: Counters,
    faults: Faults,
    /// method → outcome → count.
    stats: BTreeMap<String, BTreeMap<String, u64>>,
    /// Live instances now and at most, per project and value of the `pm-pool` label.
    pools: BTreeMap<(String, String), PoolReport>,
    /// Calls that change an existing instance (delete, start, stop, setLabels), whatever
    /// their outcome, per (project, zone, instance) and method.
    changes: HashMap<(String, String, String), BTreeMap<String, u64>>,
}

/// The label whose values [`World`] counts live instances by: pm's pool label.
const POOL_LABEL: &str = "pm-pool";

/// The `pm-pool` label among sorted `labels`.
fn pool_of(labels: &[(String, String)]) -> Option<String> {
    labels
        .iter()
        .find(|(k, _)| k == POOL_LABEL)
        .map(|(_, v)| v.clone())
}

/// Counts an instance of `pool` in `project` becoming live (`up`) or not live any more.
fn count_live(
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

/// Validated instance fields of an insert.
struct InstanceSpec {
    name: String,
    body: Box<[(Box<str>, Box<RawValue>)]>,
    labels: BTreeMap<String, String>,
    delete_on_preempt: bool,
}

fn zone_url(project: &str, zone: &str) -> String {
    format!("{URL_ROOT}projects/{project}/zones/{zone}")
}

fn instance_path(project: &str, zone: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{name}")
}

/// Labels' fingerprint: 8 bytes of a hash of the sorted labels, base64 like GCE's.
fn label_fingerprint(labels: &BTreeMap<String, String>) -> String {
    use base64::Engine;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in labels {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    base64::engine::general_purpose::STANDARD.encode(hash.to_be_bytes())
}

fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid_field("pageToken", token, "Invalid page token.");
    if token.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// The page size asked for: 1 to 500; absent or 0 means 500.
pub fn page_size(max_results: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = max_results else {
        return Ok(MAX_PAGE_SIZE as usize);
    };
    match text.parse::<u32>() {
        Ok(0) => Ok(MAX_PAGE_SIZE as usize),
        Ok(n) if n <= MAX_PAGE_SIZE => Ok(n as usize),
        Ok(_) | Err(_) => Err(ApiError::invalid_field(
            "maxResults",
            text,
            "Must be an integer between 0 and 500.",
        )),
    }
}

fn parse_filter(filter: Option<&str>) -> Result<Filter, ApiError> {
    Filter::parse(filter.unwrap_or("")).map_err(|e| {
        ApiError::invalid_field("filter", filter.unwrap_or(""), &format!("{}.", e.problem))
    })
}

/// Takes up to `size` items after the start; returns them and the next page token.
fn paginate<T>(
    mut items: impl Iterator<Item = (String, T)>,
    size: usize,
) -> (Vec<T>, Option<String>) {
    let mut page = Vec::new();
    let mut last_key = None;
    for (key, item) in items.by_ref() {
        if page.len() == size {
            return (page, last_key.as_deref().map(encode_token));
        }
        last_key = Some(key);
        page.push(item);
    }
    (page, None)
}

fn stockout(project: &str, zone: &str) -> Failure {
    Failure {
        code: "ZONE_RESOURCE_POOL_EXHAUSTED",
        message: format!(
            "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request."
        ),
        http_status: 503,
        http_message: "SERVICE UNAVAILABLE",
    }
}

/// A list page of instances, serialized straight from the world (no copies).
pub struct InstancePage<'a> {
    items: Vec<InstanceView<'a>>,
    next_page_token: Option<String>,
    self_link: String,
}

impl Serialize for InstancePage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", "compute#instanceList")?;
        map.serialize_entry("id", self.self_link.trim_start_matches(URL_ROOT))?;
        if !self.items.is_empty() {
            map.serialize_entry("items", &self.items)?;
        }
        if let Some(token) = &self.next_page_token {
            map.serialize_entry("nextPageToken", token)?;
        }
        map.serialize_entry("selfLink", &self.self_link)?;
        map.end()
    }
}

/// Sorted label pairs serialized as a JSON object.
struct LabelMap<'a>(&'a [(String, String)]);

impl Serialize for LabelMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One instance as GCE renders it.
pub struct InstanceView<'a> {
    instance: &'a SimInstance,
    project: &'a str,
    zone: &'a str,
    name: &'a str,
    status: InstanceStatus,
}

impl Serialize for InstanceView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let i = self.instance;
        let zone = zone_url(self.project, self.zone);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", "compute#instance")?;
        map.serialize_entry("id", &i.id.to_string())?;
        map.serialize_entry("creationTimestamp", &rfc3339(i.created))?;
        map.serialize_entry("name", self.name)?;
        for (key, value) in &i.body {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("status", self.status.as_str())?;
        map.serialize_entry("zone", &zone)?;
        map.serialize_entry("selfLink", &format!("{zone}/instances/{}", self.name))?;
        if !i.labels.is_empty() {
            map.serialize_entry("labels", &LabelMap(&i.labels))?;
        }
        map.serialize_entry("labelFingerprint", &i.label_fingerprint)?;
        map.serialize_entry("lastStartTimestamp", &rfc3339(i.last_start))?;
        if let Some(stop) = i.last_stop {
            map.serialize_entry("lastStopTimestamp", &rfc3339(stop))?;
        }
        map.end()
    }
}

impl InstanceView<'_> {
    /// A field for list filters.
    fn field(&self, field: &str) -> Option<Cow<'_, str>> {
        let i = self.instance;
        match field {
            "name" => Some(Cow::Borrowed(self.name)),
            "status" => Some(Cow::Borrowed(self.status.as_str())),
            "id" => Some(Cow::Owned(i.id.to_string())),
            "zone" => Some(Cow::Owned(zone_url(self.project, self.zone))),
            "labelFingerprint" => Some(Cow::Borrowed(&i.label_fingerprint)),
            _ => {
                if let Some(key) = field.strip_prefix("labels.") {
                    return i
                        .labels
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| Cow::Borrowed(v.as_str()));
                }
                let mut parts = field.split('.');
                let first = parts.next()?;
                let (_, raw) = i.body.iter().find(|(key, _)| key.as_ref() == first)?;
                let parsed: Value = serde_json::from_str(raw.get()).ok()?;
                let mut value = &parsed;
                for part in parts {
                    value = value.get(part)?;
                }
                match value {
                    Value::String(s) => Some(Cow::Owned(s.clone())),
                    Value::Bool(b) => Some(Cow::Owned(b.to_string())),
                    Value::Number(n) => Some(Cow::Owned(n.to_string())),
                    Value::Null | Value::Array(_) | Value::Object(_) => None,
                }
            }
        }
    }
}

/// Result of a preemption request.
pub struct Preempted {
    /// Names preempted now.
    pub preempted: Vec<String>,
    /// Names not found, or not live (already stopping, stopped or deleting).
    pub missing: Vec<String>,
}

impl World {
    /// A fresh world for `config`.
    pub fn new(config: SimConfig) -> World {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let zones = config
            .zones
            .iter()
            .map(|z| (z.clone(), Zone::new(config.capacity_of(z))))
            .collect();
        World {
            config,
            zones,
            request_ids: HashMap::new(),
            rng,
            counters: Counters::default(),
            faults: Faults::default(),
            stats: BTreeMap::new(),
            pools: BTreeMap::new(),
            changes: HashMap::new(),
        }
    }

    /// Back to the state at start: configured zones and capacities, no instances,
    /// operations, faults, counters or stats; the random source re-seeded.
    pub fn reset(&mut self) {
        *self = World::new(self.config.clone());
    }

    /// The bound on one `zoneOperations.wait`.
    pub fn wait_bound(&self) -> Duration {
        self.config.wait_bound
    }

    /// The current fault settings.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Replaces the fault settings.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// A uniform draw in [0, 1) from the world's random source.
    pub fn draw(&mut self) -> f64 {
        self.rng.random()
    }

    /// Counts one API request.
    pub fn count_request(&mut self, method: &str, outcome: &str) {
        *self
            .stats
            .entry(method.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Request counts by method and outcome.
    pub fn stats(&self) -> &BTreeMap<String, BTreeMap<String, u64>> {
        &self.stats
    }

    /// Sets a zone's capacity, adding the zone if it is new.
    pub fn set_capacity(&mut self, zone: &str, capacity: u64) -> Result<(), ApiError> {
        validate_resource_name("zone name", zone).map_err(|e| ApiError::invalid(e.to_string()))?;
        self.zones
            .entry(zone.to_string())
            .or_insert_with(|| Zone::new(capacity))
            .capacity = capacity;
        Ok(())
    }

    /// Zones, capacities, instances by status and counters.
    pub fn report(&mut self) -> (BTreeMap<String, ZoneReport>, Counters) {
        let now = Instant::now();
        let boot = self.config.boot_delay;
        let zones = self
            .zones
            .iter_mut()
            .map(|(name, zone)| {
                zone.sweep(now);
                let mut instances: BTreeMap<String, u64> = BTreeMap::new();
                let mut operations = 0;
                for pz in zone.projects.values() {
                    operations += pz.operations.len() as u64;
                    for instance in pz.instances.values() {
                        *instances
                            .entry(instance.status(now, boot).as_str().to_string())
                            .or_default() += 1;
                    }
                }
                let report = ZoneReport {
                    capacity: zone.capacity,
                    live: zone.live,
                    instances,
                    operations,
                };
                (name.clone(), report)
            })
            .collect();
        (zones, self.counters.clone())
    }

    /// Every instance of every project and zone, as the control API lists them.
    pub fn instance_reports(&mut self) -> Vec<InstanceReport> {
        let now = Instant::now();
        let boot = self.config.boot_delay;
        let mut out = Vec::new();
        for (zone_name, zone) in &mut self.zones {
            zone.sweep(now);
            for (project, pz) in &zone.projects {
                for (name, instance) in &pz.instances {
                    out.push(InstanceReport {
                        project: project.clone(),
                        zone: zone_name.clone(),
                        name: name.clone(),
                        id: instance.id.to_string(),
                        status: instance.status(now, boot).as_str().to_string(),
                        labels: instance.labels.iter().cloned().collect(),
                        changes: self
                            .changes
                            .get(&(project.clone(), zone_name.clone(), name.clone()))
                            .cloned()
                            .unwrap_or_default(),
                    });
                }
            }
        }
        out
    }

    /// Live instances now and at most per project and `pm-pool` label, since start or
    /// the last reset.
    pub fn pool_reports(&self) -> Vec<PoolReport> {
        self.pools
            .iter()
            .map(|((project, pool), report)| PoolReport {
                project: project.clone(),
                pool: pool.clone(),
                ..report.clone()
            })
            .collect()
    }

    /// Counts a call of `method` that changes instance `name`, whatever its outcome.
    pub fn count_change(&mut self, project: &str, zone: &str, name: &str, method: &str) {
        *self
            .changes
            .entry((project.to_string(), zone.to_string(), name.to_string()))
            .or_default()
            .entry(method.to_string())
            .or_default() += 1;
    }

    /// An instance of `pool` in `zone` became live (`up`) or stopped being live: counts
    /// it against the zone's capacity and in the pool's live count and peak.
    fn live_changed(
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

    fn zone_mut(&mut self, project: &str, zone: &str) -> Result<&mut Zone, ApiError> {
        let found = self
            .zones
            .get_mut(zone)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project}/zones/{zone}")))?;
        found.sweep(Instant::now());
        Ok(found)
    }

    fn new_operation(
        &mut self,
        operation_type: &'static str,
        target_name: &str,
        target_id: u64,
        failure: Option<Failure>,
    ) -> (String, SimOperation) {
        let wall = SystemTime::now();
        let name = operation_name(&mut self.rng, wall);
        let op = SimOperation {
            id: resource_id(&mut self.rng),
            operation_type,
            target_name: target_name.to_string(),
            target_id,
            user: "pm@gce-sim",
            status_message: None,
            inserted: wall,
            inserted_at: Instant::now(),
            delay: self
                .faults
                .op_delay_ms
                .map_or(self.config.op_delay, Duration::from_millis),
            hung: self.faults.hang_operations,
            failure,
        };
        (name, op)
    }

    /// Stores an operation made by [`World::new_operation`], remembers it under the
    /// call's `requestId`, and returns its view.
    fn store_operation(
        &mut self,
        project: &str,
        zone: &str,
        request_id: Option<&str>,
        (name, op): (String, SimOperation),
    ) -> Result<Operation, ApiError> {
        let view = operation_view(project, zone, &name, &op, Instant::now());
        self.zone_mut(project, zone)?
            .projects
            .entry(project.to_string())
            .or_default()
            .operations
            .insert(name.clone(), op);
        if let Some(request_id) = request_id {
            self.request_ids.insert(
                (
                    project.to_string(),
                    zone.to_string(),
                    request_id.to_string(),
                ),
                name,
            );
        }
        Ok(view)
    }

    /// The operation a repeated `requestId` refers to, if any.
    fn replay(
        &mut self,
        project: &str,
        zone: &str,
        request_id: Option<&str>,
    ) -> Result<Option<Operation>, ApiError> {
        let Some(request_id) = request_id else {
            return Ok(None);
        };
        if !is_valid_request_id(request_id) {
            return Err(ApiError::invalid_field(
                "requestId",
                request_id,
                "The request ID must be a valid UUID with the exception that zero UUID is not supported.",
            ));
        }
        let key = (
            project.to_string(),
            zone.to_string(),
            request_id.to_string(),
        );
        match self.request_ids.get(&key) {
            Some(op_name) => {
                let op_name = op_name.clone();
                self.get_operation(project, zone, &op_name).map(Some)
            }
            None => Ok(None),
        }
    }

    /// `instances.insert`.
    pub fn insert(
        &mut self,
        project: &str,
        zone: &str,
        body: &[u8],
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(op) = self.replay(project, zone, request_id)? {
            return Ok(op);
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| ApiError {
            status: 400,
            reason: "parseError",
            message: format!("Invalid JSON payload received. {e}"),
        })?;
        let spec = parse_instance(value, project, zone, false)?;
        let id = resource_id(&mut self.rng);
        let z = self.zone_mut(project, zone)?;
        if z.projects
            .get(project)
            .is_some_and(|pz| pz.instances.contains_key(&spec.name))
        {
            return Err(ApiError::already_exists(&instance_path(
                project, zone, &spec.name,
            )));
        }
        let failure = if z.live >= z.capacity {
            self.counters.stockouts += 1;
            Some(stockout(project, zone))
        } else {
            self.create(project, zone, id, &spec)?;
            None
        };
        let op = self.new_operation("insert", &spec.name, id, failure);
        self.store_operation(project, zone, request_id, op)
    }

    fn create(
        &mut self,
        project: &str,
        zone: &str,
        id: u64,
        spec: &InstanceSpec,
    ) -> Result<(), ApiError> {
        let wall = SystemTime::now();
        let instance = SimInstance {
            id,
            body: spec.body.clone(),
            label_fingerprint: label_fingerprint(&spec.labels),
            labels: spec.labels.clone().into_iter().collect(),
            created: wall,
            last_start: wall,
            last_stop: None,
            phase: Phase::Booting,
            phase_since: Instant::now(),
            delete_on_preempt: spec.delete_on_preempt,
        };
        let pool = pool_of(&instance.labels);
        self.zone_mut(project, zone)?
            .projects
            .entry(project.to_string())
            .or_default()
            .instances
            .insert(spec.name.clone(), instance);
        self.live_changed(project, zone, pool, true)?;
        self.counters.inserted += 1;
        Ok(())
    }

    /// `instances.bulkInsert`.
    pub fn bulk_insert(
        &mut self,
        project: &str,
        zone: &str,
        body: &[u8],
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(op) = self.replay(project, zone, request_id)? {
            return Ok(op);
        }
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let request: BulkInsertRequest = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| {
                ApiError::invalid(format!(
                    "Invalid value for field 'resource.{}': {}",
                    e.path(),
                    e.inner()
                ))
            })?;
        if request.count == 0 {
            return Err(ApiError::invalid_field(
                "resource.count",
                "0",
                "Must be at least 1.",
            ));
        }
        let min_count = request.min_count.unwrap_or(request.count);
        if min_count > request.count {
            return Err(ApiError::invalid_field(
                "resource.minCount",
                &min_count.to_string(),
                "Must not exceed count.",
            ));
        }
        if request.extra.contains_key("sourceInstanceTemplate") {
            return Err(ApiError::invalid(
                "sourceInstanceTemplate is not supported by gce-sim; send instanceProperties",
            ));
        }
        let Some(properties) = request.instance_properties.clone() else {
            return Err(ApiError::invalid_field(
                "resource.instanceProperties",
                "",
                "Instance properties are required.",
            ));
        };
        let names = self.bulk_names(project, zone, &request)?;
        let mut specs = Vec::with_capacity(names.len());
        for name in &names {
            let mut body = properties.clone();
            body.insert("name".into(), Value::String(name.clone()));
            specs.push(parse_instance(Value::Object(body), project, zone, true)?);
        }
        let z = self.zone_mut(project, zone)?;
        let available = z.capacity.saturating_sub(z.live);
        let creatable = available.min(request.count) as usize;
        let first = names.first().cloned().unwrap_or_default();
        let failure = if (creatable as u64) < min_count {
            self.counters.stockouts += 1;
            Some(stockout(project, zone))
        } else {
            for spec in specs.iter().take(creatable) {
                let id = resource_id(&mut self.rng);
                self.create(project, zone, id, spec)?;
            }
            None
        };
        let op = self.new_operation("bulkInsert", &first, 0, failure);
        self.store_operation(project, zone, request_id, op)
    }

    /// The names a bulk insert creates: the explicit ones, then from the pattern.
    fn bulk_names(
        &mut self,
        project: &str,
        zone: &str,
        request: &BulkInsertRequest,
    ) -> Result<Vec<String>, ApiError> {
        let z = self.zone_mut(project, zone)?;
        let exists = |name: &str| {
            z.projects
                .get(project)
                .is_some_and(|pz| pz.instances.contains_key(name))
        };
        let mut names = Vec::new();
        for name in request.per_instance_properties.keys() {
            validate_name(name).map_err(|e| {
                ApiError::invalid_field("resource.perInstanceProperties", name, &e.to_string())
            })?;
            if exists(name) {
                return Err(ApiError::already_exists(&instance_path(
                    project, zone, name,
                )));
            }
            names.push(name.clone());
        }
        let wanted = usize::try_from(request.count).unwrap_or(usize::MAX);
        if names.len() >= wanted {
            names.truncate(wanted);
            return Ok(names);
        }
        let Some(pattern) = &request.name_pattern else {
            return Err(ApiError::invalid_field(
                "resource.namePattern",
                "",
                "A name pattern is required when perInstanceProperties names fewer than count instances.",
            ));
        };
        let bad_pattern = || {
            ApiError::invalid_field(
                "resource.namePattern",
                pattern,
                "Must contain one run of 1 to 9 '#' characters.",
            )
        };
        let start = pattern.find('#').ok_or_else(bad_pattern)?;
        // '#' is one byte, so these offsets are character boundaries.
        let width = pattern[start..].bytes().take_while(|b| *b == b'#').count();
        let (prefix, suffix) = (&pattern[..start], &pattern[start + width..]);
        if width > 9 || suffix.contains('#') {
            return Err(bad_pattern());
        }
        let limit = 10u64.pow(width as u32);
        let mut number = 1;
        while names.len() < wanted {
            if number >= limit {
                return Err(ApiError::invalid_field(
                    "resource.namePattern",
                    pattern,
                    "Not enough names left for count instances.",
                ));
            }
            let name = format!("{prefix}{number:0width$}{suffix}");
            number += 1;
            if !exists(&name) && !names.contains(&name) {
                validate_name(&name).map_err(|e| {
                    ApiError::invalid_field("resource.namePattern", pattern, &e.to_string())
                })?;
                names.push(name);
            }
        }
        Ok(names)
    }

    /// `instances.get`, serialized.
    pub fn get_instance(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        let (name, instance) = z
            .projects
            .get(project)
            .and_then(|pz| pz.instances.get_key_value(name))
            .ok_or_else(|| ApiError::not_found(&instance_path(project, zone, name)))?;
        let view = InstanceView {
            instance,
            project,
            zone,
            name,
            status: instance.status(now, boot),
        };
        serde_json::to_value(view).map_err(|e| ApiError {
            status: 500,
            reason: "backendError",
            message: e.to_string(),
        })
    }

    /// `instances.list`, serialized.
    pub fn list_instances(
        &mut self,
        project: &str,
        zone: &str,
        filter: Option<&str>,
        max_results: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Vec<u8>, ApiError> {
        let filter = parse_filter(filter)?;
        let size = page_size(max_results)?;
        let after = page_token.map(decode_token).transpose()?;
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        let empty = BTreeMap::new();
        let instances = z.projects.get(project).map_or(&empty, |pz| &pz.instances);
        let lower = match &after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let views = instances
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(name, instance)| InstanceView {
                instance,
                project,
                zone,
                name,
                status: instance.status(now, boot),
            })
            .filter(|view| filter.matches(|f| view.field(f)))
            .map(|view| (view.name.to_string(), view));
        let (items, next_page_token) = paginate(views, size);
        let page = InstancePage {
            items,
            next_page_token,
            self_link: format!("{}/instances", zone_url(project, zone)),
        };
        serde_json::to_vec(&page).map_err(|e| ApiError {
            status: 500,
            reason: "backendError",
            message: e.to_string(),
        })
    }

    /// `instances.aggregatedList`, serialized. Pages run over (zone, name).
    pub fn aggregated_instances(
        &mut self,
        project: &str,
        filter: Option<&str>,
        max_results: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let filter = parse_filter(filter)?;
        let size = page_size(max_results)?;
        let after = page_token.map(decode_token).transpose()?;
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let empty = BTreeMap::new();
        let mut views = Vec::new();
        for (zone_name, zone) in self.zones.iter_mut() {
            zone.sweep(now);
            let instances = zone
                .projects
                .get(project)
                .map_or(&empty, |pz| &pz.instances);
            for (name, instance) in instances {
                let key = format!("{zone_name}/{name}");
                if after
                    .as_ref()
                    .is_some_and(|after| key.as_str() <= after.as_str())
                {
                    continue;
                }
                let view = InstanceView {
                    instance,
                    project,
                    zone: zone_name,
                    name,
                    status: instance.status(now, boot),
                };
                if filter.matches(|f| view.field(f)) {
                    views.push((key, view));
                }
            }
        }
        let (page, next_page_token) = paginate(views.into_iter(), size);
        let mut by_zone: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for view in page {
            let zone = view.zone.to_string();
            let value = serde_json::to_value(&view).map_err(|e| ApiError {
                status: 500,
                reason: "backendError",
                message: e.to_string(),
            })?;
            by_zone.entry(zone).or_default().push(value);
        }
        let items: Map<String, Value> = self
            .zones
            .keys()
            .map(|zone| {
                let scope = format!("zones/{zone}");
                let entry = match by_zone.remove(zone.as_str()) {
                    Some(instances) => json!({ "instances": instances }),
                    None => json!({"warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": format!("There are no results for scope '{scope}' on this page."),
                        "data": [{"key": "scope", "value": scope}],
                    }}),
                };
                (scope, entry)
            })
            .collect();
        let mut result = json!({
            "kind": "compute#instanceAggregatedList",
            "id": format!("projects/{project}/aggregated/instances"),
            "items": items,
            "selfLink": format!("{URL_ROOT}projects/{project}/aggregated/instances"),
        });
        if let (Some(token), Value::Object(map)) = (next_page_token, &mut result) {
            map.insert("nextPageToken".into(), Value::String(token));
        }
        Ok(result)
    }

    fn instance_mut(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<(&mut SimInstance, u64, u64), ApiError> {
        let z = self.zone_mut(project, zone)?;
        let (live, capacity) = (z.live, z.capacity);
        z.projects
            .get_mut(project)
            .and_then(|pz| pz.instances.get_mut(name))
            .map(|i| (i, live, capacity))
            .ok_or_else(|| ApiError::not_found(&instance_path(project, zone, name)))
    }

    /// `instances.delete`.
    pub fn delete(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(op) = self.replay(project, zone, request_id)? {
            return Ok(op);
        }
        let remove_at = Instant::now() + self.config.op_delay;
        let (instance, _, _) = self.instance_mut(project, zone, name)?;
        let id = instance.id;
        let was_live = instance.is_live();
        let pool = pool_of(&instance.labels);
        if instance.phase != Phase::Deleting {
            instance.phase = Phase::Deleting;
            instance.phase_since = Instant::now();
            self.zone_mut(project, zone)?.removals.insert((
                remove_at,
                project.to_string(),
                name.to_string(),
            ));
            if was_live {
                self.live_changed(project, zone, pool, false)?;
            }
            self.counters.deleted += 1;
        }
        let op = self.new_operation("delete", name, id, None);
        self.store_operation(project, zone, request_id, op)
    }

    /// `instances.start`: a TERMINATED instance boots again if the zone has room.
    pub fn start(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(op) = self.replay(project, zone, request_id)? {
            return Ok(op);
        }
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let (instance, live, capacity) = self.instance_mut(project, zone, name)?;
        let id = instance.id;
        let pool = pool_of(&instance.labels);
        let failure = match (instance.phase, instance.status(now, boot)) {
            (Phase::Booting, _) => None,
            (Phase::Stopping, InstanceStatus::Terminated) if live < capacity => {
                instance.phase = Phase::Booting;
                instance.phase_since = now;
                instance.last_start = SystemTime::now();
                self.live_changed(project, zone, pool, true)?;
                self.counters.started += 1;
                None
            }
            (Phase::Stopping, InstanceStatus::Terminated) => {
                self.counters.stockouts += 1;
                Some(stockout(project, zone))
            }
            (Phase::Stopping | Phase::Deleting, _) => {
                return Err(ApiError::not_ready(&instance_path(project, zone, name)))
            }
        };
        let op = self.new_operation("start", name, id, failure);
        self.store_operation(project, zone, request_id, op)
    }

    /// `instances.stop`.
    pub fn stop(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(op) = self.replay(project, zone, request_id)? {
            return Ok(op);
        }
        let (instance, _, _) = self.instance_mut(project, zone, name)?;
        let id = instance.id;
        let pool = pool_of(&instance.labels);
        match instance.phase {
            Phase::Booting => {
                instance.phase = Phase::Stopping;
                instance.phase_since = Instant::now();
                instance.last_stop = Some(SystemTime::now());
                self.live_changed(project, zone, pool, false)?;
                self.counters.stopped += 1;
            }
            Phase::Stopping => {}
            Phase::Deleting => {
                return Err(ApiError::not_ready(&instance_path(project, zone, name)))
            }
        }
        let op = self.new_operation("stop", name, id, None);
        self.store_operation(project, zone, request_id, op)
    }

    /// `instances.setLabels`: 412 `conditionNotMet` on a stale fingerprint.
    pub fn set_labels(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        body: &[u8],
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(op) = self.replay(project, zone, request_id)? {
            return Ok(op);
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| ApiError {
            status: 400,
            reason: "parseError",
            message: format!("Invalid JSON payload received. {e}"),
        })?;
        let labels = parse_labels(value.get("labels"), "labels")?;
        let fingerprint = value.get("labelFingerprint").and_then(Value::as_str);
        let (instance, _, _) = self.instance_mut(project, zone, name)?;
        if fingerprint != Some(instance.label_fingerprint.as_str()) {
            return Err(ApiError {
                status: 412,
                reason: "conditionNotMet",
                message: "Labels fingerprint either invalid or resource labels have changed"
                    .to_string(),
            });
        }
        instance.label_fingerprint = label_fingerprint(&labels);
        instance.labels = labels.into_iter().collect();
        let id = instance.id;
        let op = self.new_operation("setLabels", name, id, None);
        self.store_operation(project, zone, request_id, op)
    }

    /// `zoneOperations.get`.
    pub fn get_operation(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Operation, ApiError> {
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        z.projects
            .get(project)
            .and_then(|pz| pz.operations.get(name))
            .map(|op| operation_view(project, zone, name, op, now))
            .ok_or_else(|| {
                ApiError::not_found(&format!(
                    "projects/{project}/zones/{zone}/operations/{name}"
                ))
            })
    }

    /// How long until the operation is DONE (zero if it is).
    pub fn operation_remaining(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Duration, ApiError> {
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        z.projects
            .get(project)
            .and_then(|pz| pz.operations.get(name))
            .map(|op| {
                op.done_at()
                    .map_or(Duration::MAX, |done| done.saturating_duration_since(now))
            })
            .ok_or_else(|| {
                ApiError::not_found(&format!(
                    "projects/{project}/zones/{zone}/operations/{name}"
                ))
            })
    }

    /// `zoneOperations.list`.
    pub fn list_operations(
        &mut self,
        project: &str,
        zone: &str,
        filter: Option<&str>,
        max_results: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let filter = parse_filter(filter)?;
        let size = page_size(max_results)?;
        let after = page_token.map(decode_token).transpose()?;
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        let empty = BTreeMap::new();
        let operations = z.projects.get(project).map_or(&empty, |pz| &pz.operations);
        let lower = match &after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let views = operations
            .range::<str, _>((lower, Bound::Unbounded))
            .filter(|(name, op)| {
                filter.matches(|field| operation_field(project, zone, name, op, now, field))
            })
            .map(|(name, op)| (name.clone(), operation_view(project, zone, name, op, now)));
        let (items, next_page_token) = paginate(views, size);
        let self_link = format!("{}/operations", zone_url(project, zone));
        let mut result = json!({
            "kind": "compute#operationList",
            "id": format!("projects/{project}/zones/{zone}/operations"),
            "items": items,
            "selfLink": self_link,
        });
        if let (Some(token), Value::Object(map)) = (next_page_token, &mut result) {
            map.insert("nextPageToken".into(), Value::String(token));
        }
        Ok(result)
    }

    /// `zones.list`.
    pub fn list_zones(&self, project: &str) -> Value {
        let items: Vec<Value> = self
            .zones
            .keys()
            .map(|zone| zone_resource(project, zone))
            .collect();
        json!({
            "kind": "compute#zoneList",
            "id": format!("projects/{project}/zones"),
            "items": items,
            "selfLink": format!("{URL_ROOT}projects/{project}/zones"),
        })
    }

    /// `zones.get`.
    pub fn get_zone(&self, project: &str, zone: &str) -> Result<Value, ApiError> {
        if self.zones.contains_key(zone) {
            Ok(zone_resource(project, zone))
        } else {
            Err(ApiError::not_found(&format!(
                "projects/{project}/zones/{zone}"
            )))
        }
    }

    /// Preempts `count` live instances of `zone`, chosen at random.
    pub fn preempt_count(&mut self, zone: &str, count: u64) -> Result<Vec<String>, ApiError> {
        let z = self
            .zones
            .get_mut(zone)
            .ok_or_else(|| ApiError::not_found(&format!("zones/{zone}")))?;
        z.sweep(Instant::now());
        let live: Vec<(String, String)> = z
            .projects
            .iter()
            .flat_map(|(project, pz)| {
                pz.instances
                    .iter()
                    .filter(|(_, i)| i.is_live())
                    .map(move |(name, _)| (project.clone(), name.clone()))
            })
            .collect();
        let amount = usize::try_from(count).unwrap_or(usize::MAX).min(live.len());
        let chosen: Vec<(String, String)> = live
            .choose_multiple(&mut self.rng, amount)
            .cloned()
            .collect();
        let mut names = Vec::with_capacity(chosen.len());
        for (project, name) in chosen {
            self.preempt_one(&project, zone, &name);
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Preempts the live instances named (in any project and zone).
    pub fn preempt_names(&mut self, names: &[String]) -> Preempted {
        let now = Instant::now();
        let mut targets = Vec::new();
        let mut missing = Vec::new();
        for wanted in names {
            let mut found = false;
            for (zone_name, zone) in self.zones.iter_mut() {
                zone.sweep(now);
                for (project, pz) in &zone.projects {
                    if pz.instances.get(wanted).is_some_and(SimInstance::is_live) {
                        targets.push((project.clone(), zone_name.clone(), wanted.clone()));
                        found = true;
                    }
                }
            }
            if !found {
                missing.push(wanted.clone());
            }
        }
        let mut preempted = Vec::new();
        for (project, zone, name) in targets {
            self.preempt_one(&project, &zone, &name);
            preempted.push(name);
        }
        Preempted { preempted, missing }
    }

    /// Stops (or deletes, per `instanceTerminationAction`) one live instance and records
    /// a `compute.instances.preempted` operation.
    fn preempt_one(&mut self, project: &str, zone: &str, name: &str) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let remove_at = now + self.config.boot_delay;
        let Some(z) = self.zones.get_mut(zone) else {
            return;
        };
        let Some(instance) = z
            .projects
            .get_mut(project)
            .and_then(|pz| pz.instances.get_mut(name))
        else {
            return;
        };
        if !instance.is_live() {
            return;
        }
        instance.last_stop = Some(wall);
        instance.phase_since = now;
        instance.phase = if instance.delete_on_preempt {
            z.removals
                .insert((remove_at, project.to_string(), name.to_string()));
            Phase::Deleting
        } else {
            Phase::Stopping
        };
        let id = instance.id;
        z.live = z.live.saturating_sub(1);
        count_live(&mut self.pools, project, pool_of(&instance.labels), false);
        self.counters.preempted += 1;
        let op_name = system_event_name(&mut self.rng, wall);
        let op = SimOperation {
            id: resource_id(&mut self.rng),
            operation_type: "compute.instances.preempted",
            target_name: name.to_string(),
            target_id: id,
            user: "system",
            status_message: Some("Instance was preempted."),
            inserted: wall,
            inserted_at: now,
            delay: Duration::ZERO,
            hung: false,
            failure: None,
        };
        z.projects
            .entry(project.to_string())
            .or_default()
            .operations
            .insert(op_name, op);
    }

    /// Random preemptions over `elapsed`: each live instance is preempted at
    /// `--preempt-rate` per hour (a Poisson process per zone).
    pub fn preempt_randomly(&mut self, elapsed: Duration) {
        let rate_per_hour = self.config.preempt_rate;
        if rate_per_hour <= 0.0 {
            return;
        }
        let zones: Vec<(String, u64)> = self
            .zones
            .iter()
            .map(|(name, zone)| (name.clone(), zone.live))
            .collect();
        for (zone, live) in zones {
            let rate_per_second = rate_per_hour * live as f64 / 3600.0;
            if rate_per_second <= 0.0 {
                continue;
            }
            let mut count = 0;
            let mut t = 0.0;
            loop {
                let u: f64 = self.rng.random();
                t += -(1.0 - u).ln() / rate_per_second;
                if t > elapsed.as_secs_f64() {
                    break;
                }
                count += 1;
            }
            if count > 0 {
                if let Err(error) = self.preempt_count(&zone, count) {
                    tracing::warn!(zone, message = %error.message, "random preemption failed");
                }
            }
        }
    }
}

fn zone_resource(project: &str, zone: &str) -> Value {
    let region = zone.rsplit_once('-').map_or(zone, |(region, _)| region);
    json!({
        "kind": "compute#zone",
        "id": format!("{}", 2000 + zone.len()),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": zone,
        "description": zone,
        "status": "UP",
        "region": format!("{URL_ROOT}projects/{project}/regions/{region}"),
        "selfLink": zone_url(project, zone),
        "supportsPzs": false,
    })
}

fn operation_view(
    project: &str,
    zone: &str,
    name: &str,
    op: &SimOperation,
    now: Instant,
) -> Operation {
    let status = op.status(now);
    let zone_link = zone_url(project, zone);
    let started = op.inserted + op.delay / 2;
    let ended = op.inserted + op.delay;
    let done = status == OperationStatus::Done;
    let failure = op.failure.as_ref().filter(|_| done);
    Operation {
        kind: Some("compute#operation".into()),
        id: Some(op.id.to_string()),
        name: name.to_string(),
        zone: Some(zone_link.clone()),
        operation_type: Some(op.operation_type.into()),
        target_link: Some(format!("{zone_link}/instances/{}", op.target_name)),
        target_id: Some(op.target_id.to_string()),
        status,
        status_message: op.status_message.map(str::to_string),
        progress: Some(match status {
            OperationStatus::Pending => 0,
            OperationStatus::Running => 50,
            OperationStatus::Done => 100,
        }),
        insert_time: Some(rfc3339(op.inserted)),
        start_time: (status != OperationStatus::Pending).then(|| rfc3339(started)),
        end_time: done.then(|| rfc3339(ended)),
        self_link: Some(format!("{zone_link}/operations/{name}")),
        user: Some(op.user.into()),
        error: failure.map(|f| OperationError {
            errors: vec![OperationErrorItem {
                code: f.code.into(),
                message: Some(f.message.clone()),
                location: None,
                error_details: Vec::new(),
            }],
        }),
        http_error_status_code: failure.map(|f| f.http_status),
        http_error_message: failure.map(|f| f.http_message.into()),
        extra: Map::new(),
    }
}

fn operation_field<'a>(
    project: &str,
    zone: &str,
    name: &'a str,
    op: &'a SimOperation,
    now: Instant,
    field: &str,
) -> Option<Cow<'a, str>> {
    match field {
        "name" => Some(Cow::Borrowed(name)),
        "operationType" => Some(Cow::Borrowed(op.operation_type)),
        "status" => Some(Cow::Borrowed(op.status(now).as_str())),
        "targetId" => Some(Cow::Owned(op.target_id.to_string())),
        "targetLink" => Some(Cow::Owned(format!(
            "{}/instances/{}",
            zone_url(project, zone),
            op.target_name
        ))),
        "user" => Some(Cow::Borrowed(op.user)),
        "id" => Some(Cow::Owned(op.id.to_string())),
        _ => None,
    }
}

fn parse_labels(value: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = value else {
        return Err(ApiError::invalid_field(
            field,
            &value.to_string(),
            "Labels must be an object.",
        ));
    };
    if map.len() > MAX_LABELS {
        return Err(ApiError::invalid_field(
            field,
            &map.len().to_string(),
            "At most 64 labels are allowed.",
        ));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in map {
        let Value::String(text) = value else {
            return Err(ApiError::invalid_field(
                &format!("{field}.{key}"),
                &value.to_string(),
                "Label values must be strings.",
            ));
        };
        validate_label_key(key)
            .and_then(|()| validate_label_value(text))
            .map_err(|e| {
                ApiError::invalid_field(&format!("{field}.{key}"), text, &e.to_string())
            })?;
        labels.insert(key.clone(), text.clone());
    }
    Ok(labels)
}

/// Validates an instance body as GCE would and keeps the client's fields.
/// `bare_machine_type` accepts `e2-small` (instance properties of a bulk insert).
fn parse_instance(
    value: Value,
    project: &str,
    zone: &str,
    bare_machine_type: bool,
) -> Result<InstanceSpec, ApiError> {
    let Value::Object(mut body) = value else {
        return Err(ApiError::invalid(
            "The instance resource must be a JSON object.",
        ));
    };
    let name = match body.get("name") {
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "resource.name",
                &other.to_string(),
                "Must be a string.",
            ))
        }
        None => {
            return Err(ApiError::invalid_field(
                "resource.name",
                "",
                "Must be a match of regex '[a-z]([-a-z0-9]*[a-z0-9])?'",
            ))
        }
    };
    validate_name(&name).map_err(|e| {
        ApiError::invalid_field(
            "resource.name",
            &name,
            &format!("Must be a match of regex '[a-z]([-a-z0-9]*[a-z0-9])?' ({e})"),
        )
    })?;
    let labels = parse_labels(body.get("labels"), "resource.labels")?;
    let machine_type = match body.get("machineType") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(other) => {
            return Err(ApiError::invalid_field(
                "resource.machineType",
                &other.to_string(),
                "Invalid machine type.",
            ))
        }
        None => {
            return Err(ApiError::invalid_field(
                "resource.machineType",
                "",
                "Machine type is required.",
            ))
        }
    };
    let expanded = expand_machine_type(&machine_type, project, zone, bare_machine_type)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "resource.machineType",
                &machine_type,
                "Expected a URL or a partial URL like zones/ZONE/machineTypes/TYPE.",
            )
        })?;
    body.insert("machineType".into(), Value::String(expanded));
    let typed: Instance =
        serde_path_to_error::deserialize(Value::Object(body.clone())).map_err(|e| {
            ApiError::invalid(format!(
                "Invalid value for field 'resource.{}': {}",
                e.path(),
                e.inner()
            ))
        })?;
    let mut scheduling = typed.scheduling.unwrap_or_default();
    let spot = scheduling.preemptible == Some(true)
        || scheduling.provisioning_model.as_deref() == Some("SPOT");
    if spot {
        if scheduling.on_host_maintenance.as_deref() == Some("MIGRATE") {
            return Err(ApiError::invalid(
                "Scheduling must have preemptible be false when OnHostMaintenance isn't TERMINATE.",
            ));
        }
        if scheduling.automatic_restart == Some(true) {
            return Err(ApiError::invalid(
                "Scheduling must have preemptible be false when AutomaticRestart is true.",
            ));
        }
        scheduling.on_host_maintenance = Some("TERMINATE".into());
        scheduling.automatic_restart = Some(false);
    } else {
        scheduling
            .on_host_maintenance
            .get_or_insert_with(|| "MIGRATE".into());
        scheduling.automatic_restart.get_or_insert(true);
    }
    scheduling.preemptible.get_or_insert(false);
    scheduling
        .provisioning_model
        .get_or_insert_with(|| "STANDARD".into());
    let delete_on_preempt = scheduling.instance_termination_action.as_deref() == Some("DELETE");
    let scheduling =
        serde_json::to_value(&scheduling).map_err(|e| ApiError::invalid(e.to_string()))?;
    body.insert("scheduling".into(), scheduling);
    for field in SERVER_FIELDS {
        body.remove(field);
    }
    let body = body
        .into_iter()
        .map(
            |(key, value)| match serde_json::value::to_raw_value(&value) {
                Ok(raw) => Ok((key.into_boxed_str(), raw)),
                Err(e) => Err(ApiError::invalid(format!("field {key:?}: {e}"))),
            },
        )
        .collect::<Result<_, _>>()?;
    Ok(InstanceSpec {
        name,
        body,
        labels,
        delete_on_preempt,
    })
}

/// A machine type as the full URL GCE returns, or `None` if it is not one.
fn expand_machine_type(
    machine_type: &str,
    project: &str,
    zone: &str,
    bare_ok: bool,
) -> Option<String> {
    if machine_type.starts_with("https://") || machine_type.starts_with("http://") {
        return machine_type
            .contains("/machineTypes/")
            .then(|| machine_type.to_string());
    }
    if let Some(rest) = machine_type.strip_prefix("projects/") {
        return rest
            .contains("/machineTypes/")
            .then(|| format!("{URL_ROOT}{machine_type}"));
    }
    if machine_type.starts_with("zones/") {
        return machine_type
            .contains("/machineTypes/")
            .then(|| format!("{URL_ROOT}projects/{project}/{machine_type}"));
    }
    if bare_ok && validate_name(machine_type).is_ok() {
        return Some(format!(
            "{URL_ROOT}projects/{project}/zones/{zone}/machineTypes/{machine_type}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(op_delay: Duration, boot_delay: Duration) -> World {
        let config = SimConfig {
            zones: vec!["z1".into(), "z2".into()],
            capacity: 3,
            op_delay,
            boot_delay,
            seed: Some(1),
            ..SimConfig::default()
        };
        World::new(config)
    }

    fn body(name: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "name": name,
            "machineType": "zones/z1/machineTypes/e2-small",
            "labels": {"pm-pool": "web"},
            "scheduling": {"preemptible": true}
        }))
        .expect("json")
    }

    fn status_of(world: &mut World, name: &str) -> String {
        world.get_instance("p", "z1", name).expect("get")["status"]
            .as_str()
            .expect("status")
            .to_string()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn capacity_turns_inserts_into_stockouts() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        for i in 0..3 {
            let op = w
                .insert("p", "z1", &body(&format!("a{i}")), None)
                .expect("insert");
            assert!(op.error.is_none());
        }
        let op = w.insert("p", "z1", &body("a3"), None).expect("accepted");
        let error = op.error.expect("stockout");
        assert_eq!(error.errors[0].code, "ZONE_RESOURCE_POOL_EXHAUSTED");
        assert_eq!(op.http_error_status_code, Some(503));
        assert!(w.get_instance("p", "z1", "a3").is_err());
        w.delete("p", "z1", "a0", None).expect("delete");
        assert!(w
            .insert("p", "z1", &body("a3"), None)
            .expect("insert")
            .error
            .is_none());
        let (zones, counters) = w.report();
        assert_eq!(zones["z1"].live, 3);
        assert_eq!(counters.stockouts, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn faults_slow_down_or_hang_operations_but_not_instances() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        w.set_faults(Faults {
            op_delay_ms: Some(60_000),
            ..Faults::default()
        });
        let slow = w.insert("p", "z1", &body("slow"), None).expect("insert");
        let remaining = w
            .operation_remaining("p", "z1", &slow.name)
            .expect("operation");
        assert!(remaining > Duration::from_secs(50), "{remaining:?}");
        w.set_faults(Faults {
            hang_operations: true,
            ..Faults::default()
        });
        let hung = w.insert("p", "z1", &body("hung"), None).expect("insert");
        assert_eq!(
            w.operation_remaining("p", "z1", &hung.name)
                .expect("operation"),
            Duration::MAX
        );
        assert_eq!(
            w.get_operation("p", "z1", &hung.name).expect("get").status,
            OperationStatus::Running
        );
        assert_eq!(status_of(&mut w, "hung"), "RUNNING");
        w.set_faults(Faults::default());
        let quick = w.insert("p", "z1", &body("quick"), None).expect("insert");
        assert_eq!(quick.status, OperationStatus::Done);
        assert_eq!(
            w.get_operation("p", "z1", &hung.name).expect("get").status,
            OperationStatus::Running
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn validation_errors() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "JSON object"),
            (
                json!({"machineType": "zones/z1/machineTypes/x"}),
                "resource.name",
            ),
            (
                json!({"name": "Bad_Name", "machineType": "zones/z1/machineTypes/x"}),
                "resource.name",
            ),
            (json!({"name": "a"}), "resource.machineType"),
            (
                json!({"name": "a", "machineType": "e2-small"}),
                "resource.machineType",
            ),
            (
                json!({"name": "a", "machineType": "zones/z1/machineTypes/x", "labels": {"k": 1}}),
                "resource.labels.k",
            ),
            (
                json!({"name": "a", "machineType": "zones/z1/machineTypes/x", "scheduling": {"preemptible": "yes"}}),
                "resource.scheduling.preemptible",
            ),
            (
                json!({"name": "a", "machineType": "zones/z1/machineTypes/x", "scheduling": {"preemptible": true, "onHostMaintenance": "MIGRATE"}}),
                "OnHostMaintenance",
            ),
        ];
        for (value, expected) in cases {
            let bytes = serde_json::to_vec(&value).expect("json");
            let error = w.insert("p", "z1", &bytes, None).expect_err("invalid");
            assert_eq!(error.status, 400, "{value}");
            assert!(
                error.message.contains(expected),
                "{} lacks {expected}",
                error.message
            );
        }
        let error = w.insert("p", "z1", b"{not json", None).expect_err("parse");
        assert_eq!((error.status, error.reason), (400, "parseError"));
        let error = w
            .insert("p", "nowhere", &body("a"), None)
            .expect_err("zone");
        assert_eq!(error.status, 404);
        let error = w
            .insert("p", "z1", &body("a"), Some("abc"))
            .expect_err("request id");
        assert!(error.message.contains("requestId"));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn lifecycle_follows_the_delays() {
        let mut w = world(Duration::from_millis(200), Duration::from_millis(200));
        let op = w.insert("p", "z1", &body("a"), None).expect("insert");
        assert_eq!(op.status, OperationStatus::Pending);
        assert_eq!(status_of(&mut w, "a"), "PROVISIONING");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(status_of(&mut w, "a"), "STAGING");
        let op = w.get_operation("p", "z1", &op.name).expect("op");
        assert_eq!(op.status, OperationStatus::Running);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status_of(&mut w, "a"), "RUNNING");
        let op = w.get_operation("p", "z1", &op.name).expect("op");
        assert_eq!(op.status, OperationStatus::Done);
        assert!(op.end_time.is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn preemption_stops_or_deletes_and_records_an_operation() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        w.insert("p", "z1", &body("keep"), None).expect("insert");
        let delete_body = serde_json::to_vec(&json!({
            "name": "gone", "machineType": "zones/z1/machineTypes/x",
            "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}
        }))
        .expect("json");
        w.insert("p", "z1", &delete_body, None).expect("insert");
        let result = w.preempt_names(&["keep".into(), "gone".into(), "nobody".into()]);
        assert_eq!(result.preempted, vec!["keep", "gone"]);
        assert_eq!(result.missing, vec!["nobody"]);
        assert_eq!(status_of(&mut w, "keep"), "TERMINATED");
        let instance = w.get_instance("p", "z1", "keep").expect("get");
        assert!(instance["lastStopTimestamp"].is_string());
        assert_eq!(
            w.get_instance("p", "z1", "gone")
                .expect_err("deleted")
                .status,
            404
        );
        let ops = w
            .list_operations(
                "p",
                "z1",
                Some("operationType = \"compute.instances.preempted\""),
                None,
                None,
            )
            .expect("list");
        let items = ops["items"].as_array().expect("items");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["status"], "DONE");
        assert_eq!(items[0]["user"], "system");
        let again = w.preempt_names(&["keep".into()]);
        assert!(again.preempted.is_empty());
        let op = w.start("p", "z1", "keep", None).expect("start");
        assert!(op.error.is_none());
        assert_eq!(status_of(&mut w, "keep"), "RUNNING");
        assert_eq!(w.preempt_count("z1", 5).expect("count"), vec!["keep"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn request_ids_and_pagination() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let rid = pm_gce::compute::request_id_for("a");
        let first = w.insert("p", "z1", &body("a"), Some(&rid)).expect("insert");
        let again = w.insert("p", "z1", &body("a"), Some(&rid)).expect("replay");
        assert_eq!(first.name, again.name);
        w.insert("p", "z1", &body("b"), None).expect("insert");
        w.insert("p", "z1", &body("c"), None).expect("insert");
        let page: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", None, Some("2"), None)
                .expect("page"),
        )
        .expect("json");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
        let token = page["nextPageToken"].as_str().expect("token").to_string();
        let page: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", None, Some("2"), Some(&token))
                .expect("page"),
        )
        .expect("json");
        assert_eq!(page["items"][0]["name"], "c");
        assert!(page.get("nextPageToken").is_none());
        assert!(w
            .list_instances("p", "z1", None, Some("501"), None)
            .is_err());
        assert!(w.list_instances("p", "z1", None, None, Some("zz")).is_err());
        let filtered: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", Some("name eq 'a|c'"), None, None)
                .expect("list"),
        )
        .expect("json");
        assert_eq!(filtered["items"].as_array().map(Vec::len), Some(2));
        let by_body_field: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", Some("scheduling.preemptible = true"), None, None)
                .expect("list"),
        )
        .expect("json");
        assert_eq!(by_body_field["items"].as_array().map(Vec::len), Some(3));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bulk_insert_creates_names_from_the_pattern_and_respects_min_count() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let request = json!({
            "count": "2", "namePattern": "web-##",
            "instanceProperties": {"machineType": "e2-small", "labels": {"pm-pool": "web"}}
        });
        let op = w
            .bulk_insert(
                "p",
                "z1",
                &serde_json::to_vec(&request).expect("json"),
                None,
            )
            .expect("bulk");
        assert!(op.error.is_none());
        assert!(w.get_instance("p", "z1", "web-01").is_ok());
        assert!(w.get_instance("p", "z1", "web-02").is_ok());
        let request = json!({
            "count": "3", "minCount": "2", "namePattern": "web-##",
            "instanceProperties": {"machineType": "e2-small"}
        });
        let op = w
            .bulk_insert(
                "p",
                "z1",
                &serde_json::to_vec(&request).expect("json"),
                None,
            )
            .expect("bulk");
        assert!(op.error.is_some(), "one slot left, minCount 2");
        assert!(w.get_instance("p", "z1", "web-03").is_err());
        for pattern in ["web", "a#é#", "a##b#", "x##########"] {
            let request = json!({
                "count": "1", "namePattern": pattern,
                "instanceProperties": {"machineType": "e2-small"}
            });
            let error = w
                .bulk_insert(
                    "p",
                    "z1",
                    &serde_json::to_vec(&request).expect("json"),
                    None,
                )
                .expect_err(pattern);
            assert!(error.message.contains("namePattern"), "{}", error.message);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn set_labels_checks_the_fingerprint() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        w.insert("p", "z1", &body("a"), None).expect("insert");
        let current = w.get_instance("p", "z1", "a").expect("get")["labelFingerprint"].clone();
        let stale = json!({"labels": {"x": "y"}, "labelFingerprint": "stale"});
        let error = w
            .set_labels(
                "p",
                "z1",
                "a",
                &serde_json::to_vec(&stale).expect("json"),
                None,
            )
            .expect_err("stale");
        assert_eq!((error.status, error.reason), (412, "conditionNotMet"));
        let fresh = json!({"labels": {"x": "y"}, "labelFingerprint": current});
        w.set_labels(
            "p",
            "z1",
            "a",
            &serde_json::to_vec(&fresh).expect("json"),
            None,
        )
        .expect("set");
        let got = w.get_instance("p", "z1", "a").expect("get");
        assert_eq!(got["labels"], json!({"x": "y"}));
        assert_ne!(got["labelFingerprint"], current);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn random_preemption_follows_the_rate() {
        let config = SimConfig {
            zones: vec!["z1".into()],
            op_delay: Duration::ZERO,
            boot_delay: Duration::ZERO,
            // Ten preemptions per instance per second: over one second all three go.
            preempt_rate: 36_000.0,
            seed: Some(3),
            ..SimConfig::default()
        };
        let mut w = World::new(config.clone());
        for name in ["a", "b", "c"] {
            w.insert("p", "z1", &body(name), None).expect("insert");
        }
        w.preempt_randomly(Duration::from_micros(1));
        assert_eq!(w.report().1.preempted, 0, "1 µs at 30/s preempts nothing");
        w.preempt_randomly(Duration::from_secs(1));
        assert_eq!(w.report().1.preempted, 3);
        assert_eq!(status_of(&mut w, "a"), "TERMINATED");

        let mut calm = World::new(SimConfig {
            preempt_rate: 0.0,
            ..config
        });
        calm.insert("p", "z1", &body("a"), None).expect("insert");
        calm.preempt_randomly(Duration::from_secs(3600));
        assert_eq!(calm.report().1.preempted, 0);
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(
            decode_token(&encode_token("z1/web-1")),
            Ok("z1/web-1".to_string())
        );
        assert!(decode_token("abc").is_err());
    }
}
