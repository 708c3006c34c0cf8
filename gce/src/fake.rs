//! An in-memory [`Compute`] for unit tests of decisions made on top of it: it records
//! every call, fails the next call on demand, and finishes every operation at once.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use serde_json::Map;

use crate::compute::{
    is_valid_request_id, operation_result, ApiCall, BoxFuture, Compute, PageRequest, MAX_PAGE_SIZE,
};
use crate::error::GceError;
use crate::filter::Filter;
use crate::resources::{
    BulkInsertRequest, Instance, InstanceList, InstanceStatus, Operation, OperationError,
    OperationErrorItem, OperationStatus,
};

const URL_ROOT: &str = "https://www.googleapis.com/compute/v1/";

/// One call made to a [`FakeCompute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    /// Which method.
    pub call: ApiCall,
    /// The project argument.
    pub project: String,
    /// The zone argument.
    pub zone: String,
    /// The instance or operation name, for calls that take one.
    pub name: Option<String>,
    /// The `requestId`, for inserts.
    pub request_id: Option<String>,
    /// The filter, for list calls.
    pub filter: Option<String>,
}

/// What the next matching call does instead of its normal work.
enum Injected {
    /// Return this error.
    Error(GceError),
    /// (Inserts and starts only) return an operation that is DONE with these errors.
    FailedOperation {
        http_status: u16,
        errors: Vec<OperationErrorItem>,
    },
}

type Key = (String, String, String);

#[derive(Default)]
struct FakeState {
    instances: BTreeMap<Key, Instance>,
    operations: BTreeMap<Key, Operation>,
    request_ids: HashMap<Key, Operation>,
    calls: Vec<FakeCall>,
    injected: VecDeque<(Option<ApiCall>, Injected)>,
    next_id: u64,
    /// Operations started from now on stay RUNNING (their effect still happens).
    hang: bool,
}

/// In-memory [`Compute`]. Instances are created with status `initial_status` (RUNNING
/// by default); operations are DONE when returned. Change the world with
/// [`FakeCompute::put_instance`], [`FakeCompute::set_status`],
/// [`FakeCompute::remove_instance`] and [`FakeCompute::record_preemption`].
pub struct FakeCompute {
    state: Mutex<FakeState>,
    initial_status: InstanceStatus,
}

impl Default for FakeCompute {
    fn default() -> Self {
        FakeCompute::new()
    }
}

impl FakeCompute {
    /// An empty fake whose inserts make RUNNING instances.
    pub fn new() -> FakeCompute {
        FakeCompute::with_initial_status(InstanceStatus::Running)
    }

    /// An empty fake whose inserts make instances with `status`.
    pub fn with_initial_status(status: InstanceStatus) -> FakeCompute {
        FakeCompute {
            state: Mutex::new(FakeState::default()),
            initial_status: status,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The calls of one method so far.
    pub fn calls_of(&self, call: ApiCall) -> Vec<FakeCall> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.call == call)
            .cloned()
            .collect()
    }

    /// Makes the next call of `call` (any call when `None`) fail with `error`. Several
    /// injections queue up in order.
    pub fn fail_next(&self, call: Option<ApiCall>, error: GceError) {
        self.lock()
            .injected
            .push_back((call, Injected::Error(error)));
    }

    /// Makes the next insert, bulk insert or start return an operation that is DONE with
    /// the error `code` and `httpErrorStatusCode` `http_status` (e.g.
    /// `ZONE_RESOURCE_POOL_EXHAUSTED`, 503); nothing is created.
    pub fn fail_next_operation(&self, call: ApiCall, code: &str, http_status: u16) {
        self.lock().injected.push_back((
            Some(call),
            Injected::FailedOperation {
                http_status,
                errors: vec![OperationErrorItem {
                    code: code.to_string(),
                    message: Some(format!("injected {code}")),
                    location: None,
                    error_details: Vec::new(),
                }],
            },
        ));
    }

    /// From now on (`true`) or no longer, operations stay RUNNING forever, as GCE's
    /// sometimes lag: their effect on instances still happens, but no wait sees them
    /// DONE.
    pub fn hang_operations(&self, hang: bool) {
        self.lock().hang = hang;
    }

    /// Forgets all instances, operations, calls and injected failures.
    pub fn reset(&self) {
        *self.lock() = FakeState::default();
    }

    /// Adds or replaces an instance as it is (status included).
    pub fn put_instance(&self, project: &str, zone: &str, instance: Instance) {
        let key = (project.to_string(), zone.to_string(), instance.name.clone());
        self.lock().instances.insert(key, instance);
    }

    /// Sets an instance's status; returns false when there is no such instance.
    pub fn set_status(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        status: InstanceStatus,
    ) -> bool {
        let key = (project.to_string(), zone.to_string(), name.to_string());
        match self.lock().instances.get_mut(&key) {
            Some(instance) => {
                instance.status = Some(status);
                true
            }
            None => false,
        }
    }

    /// Removes an instance without an operation (a loss); returns whether it existed.
    pub fn remove_instance(&self, project: &str, zone: &str, name: &str) -> bool {
        let key = (project.to_string(), zone.to_string(), name.to_string());
        self.lock().instances.remove(&key).is_some()
    }

    /// Preempts an instance: status TERMINATED and a `compute.instances.preempted`
    /// operation recorded. Returns false when there is no such instance.
    pub fn record_preemption(&self, project: &str, zone: &str, name: &str) -> bool {
        if !self.set_status(project, zone, name, InstanceStatus::Terminated) {
            return false;
        }
        let mut state = self.lock();
        let op = new_operation(
            &mut state,
            project,
            zone,
            "compute.instances.preempted",
            name,
        );
        state
            .operations
            .insert((project.into(), zone.into(), op.name.clone()), op);
        true
    }

    /// The instances of one zone matching `filter`, by name.
    fn matching_instances(
        &self,
        project: &str,
        zone: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Instance>, GceError> {
        let filter = parse_filter(ApiCall::List, filter)?;
        Ok(self
            .instances(project, zone)
            .into_iter()
            .filter(|instance| match serde_json::to_value(instance) {
                Ok(json) => filter.matches(|field| json_field(&json, field)),
                Err(_) => false,
            })
            .collect())
    }

    /// The instances of one zone, by name.
    pub fn instances(&self, project: &str, zone: &str) -> Vec<Instance> {
        self.lock()
            .instances
            .iter()
            .filter(|((p, z, _), _)| p == project && z == zone)
            .map(|(_, instance)| instance.clone())
            .collect()
    }
}

fn new_operation(
    state: &mut FakeState,
    project: &str,
    zone: &str,
    operation_type: &str,
    target: &str,
) -> Operation {
    state.next_id += 1;
    let zone_url = format!("{URL_ROOT}projects/{project}/zones/{zone}");
    let name = format!("operation-fake-{:06}", state.next_id);
    Operation {
        kind: Some("compute#operation".into()),
        id: Some(state.next_id.to_string()),
        self_link: Some(format!("{zone_url}/operations/{name}")),
        name,
        operation_type: Some(operation_type.into()),
        target_link: Some(format!("{zone_url}/instances/{target}")),
        target_id: None,
        status: OperationStatus::Done,
        status_message: None,
        progress: Some(100),
        insert_time: None,
        start_time: None,
        end_time: None,
        user: None,
        error: None,
        http_error_status_code: None,
        http_error_message: None,
        zone: Some(zone_url),
        extra: Map::new(),
    }
}

fn not_found(call: ApiCall, what: String) -> GceError {
    GceError::http(
        call,
        404,
        "notFound",
        &format!("The resource '{what}' was not found"),
    )
}

impl FakeCompute {
    /// Records the call and pops an injected failure meant for it, if any.
    fn begin(&self, record: FakeCall) -> Option<Injected> {
        let mut state = self.lock();
        let call = record.call;
        state.calls.push(record);
        let position = state
            .injected
            .iter()
            .position(|(target, _)| target.is_none_or(|t| t == call))?;
        state
            .injected
            .remove(position)
            .map(|(_, injected)| injected)
    }

    fn record(call: ApiCall, project: &str, zone: &str, name: Option<&str>) -> FakeCall {
        FakeCall {
            call,
            project: project.into(),
            zone: zone.into(),
            name: name.map(str::to_string),
            request_id: None,
            filter: None,
        }
    }

    /// An injected failure as an error, for calls that return no operation (a failed
    /// operation becomes [`GceError::OperationFailed`]).
    fn injected_error(
        &self,
        injected: Injected,
        project: &str,
        zone: &str,
        call: ApiCall,
    ) -> GceError {
        match self.injected_outcome(injected, project, zone, call.method(), "") {
            Ok(op) => match operation_result(op) {
                Err(error) => error,
                Ok(op) => GceError::InvalidResponse {
                    call,
                    url: String::new(),
                    problem: format!("injected operation {} has no error", op.name),
                },
            },
            Err(error) => error,
        }
    }

    /// Applies an injected failure: an error, or a failed operation (stored and returned).
    fn injected_outcome(
        &self,
        injected: Injected,
        project: &str,
        zone: &str,
        operation_type: &str,
        target: &str,
    ) -> Result<Operation, GceError> {
        match injected {
            Injected::Error(error) => Err(error),
            Injected::FailedOperation {
                http_status,
                errors,
            } => {
                let mut state = self.lock();
                let mut op = new_operation(&mut state, project, zone, operation_type, target);
                op.error = Some(OperationError { errors });
                op.http_error_status_code = Some(http_status);
                op.http_error_message = Some(reason_phrase(http_status).into());
                state
                    .operations
                    .insert((project.into(), zone.into(), op.name.clone()), op.clone());
                Ok(op)
            }
        }
    }

    fn create(&self, project: &str, zone: &str, mut instance: Instance) -> Result<(), GceError> {
        let mut state = self.lock();
        let key = (project.to_string(), zone.to_string(), instance.name.clone());
        if state.instances.contains_key(&key) {
            return Err(GceError::http(
                ApiCall::Insert,
                409,
                "alreadyExists",
                &format!(
                    "The resource 'projects/{project}/zones/{zone}/instances/{}' already exists",
                    instance.name
                ),
            ));
        }
        state.next_id += 1;
        instance.id = Some(state.next_id.to_string());
        instance.status = Some(self.initial_status);
        instance.zone = Some(format!("{URL_ROOT}projects/{project}/zones/{zone}"));
        instance.self_link = Some(format!(
            "{URL_ROOT}projects/{project}/zones/{zone}/instances/{}",
            instance.name
        ));
        state.instances.insert(key, instance);
        Ok(())
    }

    /// A start or resume (which only a SUSPENDED instance takes): the instance gets the
    /// initial status, or the call is a 404.
    fn bring_up(
        &self,
        call: ApiCall,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Operation, GceError> {
        let verb = match call {
            ApiCall::Resume => "resume",
            _ => "start",
        };
        if let Some(injected) = self.begin(Self::record(call, project, zone, Some(name))) {
            return self.injected_outcome(injected, project, zone, verb, name);
        }
        let status = self
            .instances(project, zone)
            .into_iter()
            .find(|i| i.name == name)
            .and_then(|i| i.status);
        if call == ApiCall::Resume && status.is_some_and(|s| s != InstanceStatus::Suspended) {
            return Err(GceError::http(
                call,
                400,
                "resourceNotReady",
                &format!("The instance '{name}' is not suspended"),
            ));
        }
        if !self.set_status(project, zone, name, self.initial_status) {
            return Err(not_found(
                call,
                format!("projects/{project}/zones/{zone}/instances/{name}"),
            ));
        }
        Ok(self.finish(project, zone, verb, name))
    }

    fn finish(&self, project: &str, zone: &str, operation_type: &str, target: &str) -> Operation {
        let mut state = self.lock();
        let mut op = new_operation(&mut state, project, zone, operation_type, target);
        if state.hang {
            op.status = OperationStatus::Running;
            op.progress = Some(0);
        }
        state
            .operations
            .insert((project.into(), zone.into(), op.name.clone()), op.clone());
        op
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "BAD REQUEST",
        403 => "FORBIDDEN",
        404 => "NOT FOUND",
        409 => "CONFLICT",
        429 => "TOO MANY REQUESTS",
        500 => "INTERNAL SERVER ERROR",
        503 => "SERVICE UNAVAILABLE",
        _ => "ERROR",
    }
}

impl Compute for FakeCompute {
    fn insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        instance: &'a Instance,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let mut record = Self::record(ApiCall::Insert, project, zone, Some(&instance.name));
            record.request_id = Some(request_id.to_string());
            let name = instance.name.as_str();
            if let Some(injected) = self.begin(record) {
                return self.injected_outcome(injected, project, zone, "insert", name);
            }
            check_request_id(ApiCall::Insert, request_id)?;
            let key = (
                project.to_string(),
                zone.to_string(),
                request_id.to_string(),
            );
            if let Some(op) = self.lock().request_ids.get(&key) {
                return Ok(op.clone());
            }
            self.create(project, zone, instance.clone())?;
            let op = self.finish(project, zone, "insert", name);
            self.lock().request_ids.insert(key, op.clone());
            Ok(op)
        })
    }

    fn bulk_insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        request: &'a BulkInsertRequest,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let mut record = Self::record(ApiCall::BulkInsert, project, zone, None);
            record.request_id = Some(request_id.to_string());
            if let Some(injected) = self.begin(record) {
                return self.injected_outcome(injected, project, zone, "bulkInsert", "");
            }
            check_request_id(ApiCall::BulkInsert, request_id)?;
            let key = (
                project.to_string(),
                zone.to_string(),
                request_id.to_string(),
            );
            if let Some(op) = self.lock().request_ids.get(&key) {
                return Ok(op.clone());
            }
            let properties = request.instance_properties.clone().unwrap_or_default();
            let names: Vec<String> = request.per_instance_properties.keys().cloned().collect();
            for name in names.iter().take(request.count as usize) {
                let mut body = properties.clone();
                body.insert("name".into(), name.clone().into());
                let instance: Instance = serde_json::from_value(body.into()).map_err(|e| {
                    GceError::http(ApiCall::BulkInsert, 400, "invalid", &e.to_string())
                })?;
                self.create(project, zone, instance)?;
            }
            let op = self.finish(project, zone, "bulkInsert", "");
            self.lock().request_ids.insert(key, op.clone());
            Ok(op)
        })
    }

    fn get<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Instance>, GceError>> {
        Box::pin(async move {
            if let Some(injected) =
                self.begin(Self::record(ApiCall::Get, project, zone, Some(name)))
            {
                return Err(self.injected_error(injected, project, zone, ApiCall::Get));
            }
            let key = (project.to_string(), zone.to_string(), name.to_string());
            Ok(self.lock().instances.get(&key).cloned())
        })
    }

    fn list_page<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        page: &'a PageRequest,
    ) -> BoxFuture<'a, Result<InstanceList, GceError>> {
        Box::pin(async move {
            let mut record = Self::record(ApiCall::List, project, zone, None);
            record.filter = page.filter.clone();
            if let Some(injected) = self.begin(record) {
                return Err(self.injected_error(injected, project, zone, ApiCall::List));
            }
            let all = self.matching_instances(project, zone, page.filter.as_deref())?;
            let start = match &page.page_token {
                Some(token) => all
                    .iter()
                    .position(|i| &i.name > token)
                    .unwrap_or(all.len()),
                None => 0,
            };
            let size = page
                .max_results
                .unwrap_or(crate::compute::MAX_PAGE_SIZE)
                .max(1) as usize;
            let items: Vec<Instance> = all.iter().skip(start).take(size).cloned().collect();
            let next_page_token = if start + items.len() < all.len() {
                items.last().map(|i| i.name.clone())
            } else {
                None
            };
            Ok(InstanceList {
                items,
                next_page_token,
            })
        })
    }

    fn list<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Instance>, GceError>> {
        Box::pin(async move {
            let mut record = Self::record(ApiCall::List, project, zone, None);
            record.filter = filter.map(str::to_string);
            if let Some(injected) = self.begin(record) {
                return Err(self.injected_error(injected, project, zone, ApiCall::List));
            }
            self.matching_instances(project, zone, filter)
        })
    }

    fn delete<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Operation>, GceError>> {
        Box::pin(async move {
            if let Some(injected) =
                self.begin(Self::record(ApiCall::Delete, project, zone, Some(name)))
            {
                return self
                    .injected_outcome(injected, project, zone, "delete", name)
                    .map(Some);
            }
            if !self.remove_instance(project, zone, name) {
                return Ok(None);
            }
            Ok(Some(self.finish(project, zone, "delete", name)))
        })
    }

    fn start<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move { self.bring_up(ApiCall::Start, project, zone, name) })
    }

    fn resume<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move { self.bring_up(ApiCall::Resume, project, zone, name) })
    }

    fn wait_operation<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        operation: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            if let Some(injected) = self.begin(Self::record(
                ApiCall::WaitOperation,
                project,
                zone,
                Some(operation),
            )) {
                return self.injected_outcome(injected, project, zone, "wait", operation);
            }
            let key = (project.to_string(), zone.to_string(), operation.to_string());
            self.lock().operations.get(&key).cloned().ok_or_else(|| {
                not_found(
                    ApiCall::WaitOperation,
                    format!("projects/{project}/zones/{zone}/operations/{operation}"),
                )
            })
        })
    }

    fn set_labels<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let record = Self::record(ApiCall::SetLabels, project, zone, Some(name));
            if let Some(injected) = self.begin(record) {
                return self.injected_outcome(injected, project, zone, "setLabels", name);
            }
            {
                let mut state = self.lock();
                let key = (project.to_string(), zone.to_string(), name.to_string());
                state.next_id += 1;
                let next = format!("fp-{}", state.next_id);
                let Some(instance) = state.instances.get_mut(&key) else {
                    return Err(not_found(
                        ApiCall::SetLabels,
                        format!("projects/{project}/zones/{zone}/instances/{name}"),
                    ));
                };
                // An instance put without a fingerprint has the empty one.
                if instance.label_fingerprint.as_deref().unwrap_or("") != fingerprint {
                    return Err(GceError::http(
                        ApiCall::SetLabels,
                        412,
                        "conditionNotMet",
                        "Labels fingerprint either invalid or resource labels have changed",
                    ));
                }
                instance.labels = labels.clone();
                instance.label_fingerprint = Some(next);
            }
            Ok(self.finish(project, zone, "setLabels", name))
        })
    }

    fn list_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>> {
        Box::pin(async move {
            let mut record = Self::record(ApiCall::ListOperations, project, zone, None);
            record.filter = filter.map(str::to_string);
            if let Some(injected) = self.begin(record) {
                return Err(self.injected_error(injected, project, zone, ApiCall::ListOperations));
            }
            let filter = parse_filter(ApiCall::ListOperations, filter)?;
            Ok(self
                .lock()
                .operations
                .iter()
                .filter(|((p, z, _), _)| p == project && z == zone)
                .map(|(_, op)| op)
                .filter(|op| match serde_json::to_value(op) {
                    Ok(json) => filter.matches(|field| json_field(&json, field)),
                    Err(_) => false,
                })
                .cloned()
                .collect())
        })
    }

    fn recent_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
        max_results: u32,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>> {
        Box::pin(async move {
            let mut all = self.list_operations(project, zone, filter).await?;
            all.sort_by(|a, b| {
                b.insert_time
                    .cmp(&a.insert_time)
                    .then_with(|| a.name.cmp(&b.name))
            });
            all.truncate(usize::try_from(max_results.clamp(1, MAX_PAGE_SIZE)).unwrap_or(1));
            Ok(all)
        })
    }
}

fn check_request_id(call: ApiCall, request_id: &str) -> Result<(), GceError> {
    if is_valid_request_id(request_id) {
        Ok(())
    } else {
        Err(GceError::http(
            call,
            400,
            "invalid",
            &format!("Invalid value for field 'requestId': '{request_id}'. Must be a UUID."),
        ))
    }
}

fn parse_filter(call: ApiCall, filter: Option<&str>) -> Result<Filter, GceError> {
    Filter::parse(filter.unwrap_or("")).map_err(|e| {
        GceError::http(
            call,
            400,
            "invalid",
            &format!("Invalid value for field 'filter': {e}"),
        )
    })
}

/// A dotted field of a JSON resource as text (strings, numbers and booleans only).
fn json_field<'a>(json: &serde_json::Value, field: &str) -> Option<Cow<'a, str>> {
    let mut value = json;
    for part in field.split('.') {
        value = value.get(part)?;
    }
    match value {
        serde_json::Value::String(s) => Some(Cow::Owned(s.clone())),
        serde_json::Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::compute::wait_until_done;
    use crate::error::ErrorClass;

    fn rid(key: &str) -> String {
        crate::compute::request_id_for(key)
    }

    fn instance(name: &str) -> Instance {
        serde_json::from_value(serde_json::json!({"name": name, "labels": {"pm-pool": "web"}}))
            .expect("instance")
    }

    #[tokio::test]
    async fn insert_get_list_delete_and_call_log() {
        let fake: Arc<dyn Compute> = Arc::new(FakeCompute::new());
        let op = fake
            .insert("p", "z", &instance("web-1"), &rid("rid-1"))
            .await
            .expect("insert");
        assert!(op.is_done());
        let got = fake
            .get("p", "z", "web-1")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got.status, Some(InstanceStatus::Running));
        assert_eq!(fake.list("p", "z", None).await.expect("list").len(), 1);
        let web = fake.list("p", "z", Some("labels.pm-pool = \"web\"")).await;
        assert_eq!(web.expect("list").len(), 1);
        let db = fake.list("p", "z", Some("labels.pm-pool = \"db\"")).await;
        assert!(db.expect("list").is_empty());
        let bad = fake.list("p", "z", Some("labels.pm-pool ~ 1")).await;
        assert_eq!(bad.expect_err("bad filter").class(), ErrorClass::Permanent);
        assert!(fake
            .list("p", "other", None)
            .await
            .expect("list")
            .is_empty());
        assert!(fake
            .delete("p", "z", "web-1")
            .await
            .expect("delete")
            .is_some());
        assert!(fake
            .delete("p", "z", "web-1")
            .await
            .expect("delete")
            .is_none());
        assert!(fake.get("p", "z", "web-1").await.expect("get").is_none());
    }

    #[tokio::test]
    async fn call_log_and_reset() {
        let fake = FakeCompute::with_initial_status(InstanceStatus::Staging);
        fake.insert("p", "z", &instance("web-1"), &rid("rid-1"))
            .await
            .expect("insert");
        fake.list("p", "z", Some("labels.pm-pool = \"web\""))
            .await
            .expect("list");
        let calls = fake.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].request_id.as_deref(), Some(rid("rid-1").as_str()));
        assert_eq!(calls[1].filter.as_deref(), Some("labels.pm-pool = \"web\""));
        assert_eq!(
            fake.instances("p", "z")[0].status,
            Some(InstanceStatus::Staging)
        );
        fake.reset();
        assert!(fake.calls().is_empty());
        assert!(fake.instances("p", "z").is_empty());
    }

    #[tokio::test]
    async fn request_id_makes_insert_idempotent_and_names_are_unique() {
        let fake = FakeCompute::new();
        let first = fake
            .insert("p", "z", &instance("a"), &rid("r"))
            .await
            .expect("insert");
        let again = fake
            .insert("p", "z", &instance("a"), &rid("r"))
            .await
            .expect("insert");
        assert_eq!(first, again);
        let error = fake
            .insert("p", "z", &instance("a"), &rid("other"))
            .await
            .expect_err("duplicate");
        assert_eq!(error.class(), ErrorClass::AlreadyExists);
        assert_eq!(fake.instances("p", "z").len(), 1);
        let error = fake
            .insert("p", "z", &instance("b"), "not-a-uuid")
            .await
            .expect_err("bad request id");
        assert_eq!(error.class(), ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn injected_errors_hit_the_next_matching_call_once() {
        let fake = FakeCompute::new();
        fake.fail_next(
            Some(ApiCall::Delete),
            GceError::http(ApiCall::Delete, 500, "backendError", "boom"),
        );
        fake.get("p", "z", "x").await.expect("get is not affected");
        let error = fake.delete("p", "z", "x").await.expect_err("injected");
        assert_eq!(error.class(), ErrorClass::Retryable);
        assert!(fake.delete("p", "z", "x").await.expect("second").is_none());

        fake.fail_next(None, GceError::http(ApiCall::List, 429, "", "slow down"));
        let error = fake.list("p", "z", None).await.expect_err("injected");
        assert_eq!(error.class(), ErrorClass::RateLimit);
    }

    #[tokio::test]
    async fn injected_stockout_surfaces_in_the_operation() {
        let fake = FakeCompute::new();
        fake.fail_next_operation(ApiCall::Insert, "ZONE_RESOURCE_POOL_EXHAUSTED", 503);
        let op = fake
            .insert("p", "z", &instance("a"), &rid("r"))
            .await
            .expect("accepted");
        let error = wait_until_done(&fake, "p", op, Duration::from_secs(1))
            .await
            .expect_err("stockout");
        assert_eq!(error.class(), ErrorClass::Stockout);
        assert!(fake.instances("p", "z").is_empty());
    }

    #[tokio::test]
    async fn preemption_is_recorded_and_listed_by_filter() {
        let fake = FakeCompute::new();
        fake.insert("p", "z", &instance("a"), &rid("r"))
            .await
            .expect("insert");
        assert!(fake.record_preemption("p", "z", "a"));
        assert!(!fake.record_preemption("p", "z", "missing"));
        let preempted = fake
            .list_operations(
                "p",
                "z",
                Some("operationType = \"compute.instances.preempted\""),
            )
            .await
            .expect("list");
        assert_eq!(preempted.len(), 1);
        assert_eq!(preempted[0].target_name(), Some("a"));
        assert_eq!(
            fake.list_operations("p", "z", None)
                .await
                .expect("all")
                .len(),
            2
        );
        let got = fake.get("p", "z", "a").await.expect("get").expect("kept");
        assert_eq!(got.status, Some(InstanceStatus::Terminated));
        fake.start("p", "z", "a").await.expect("start");
        let got = fake.get("p", "z", "a").await.expect("get").expect("kept");
        assert_eq!(got.status, Some(InstanceStatus::Running));
        let error = fake.start("p", "z", "missing").await.expect_err("missing");
        assert_eq!(error.class(), ErrorClass::NotFound);
    }

    #[tokio::test]
    async fn pages_follow_names() {
        let fake = FakeCompute::new();
        for name in ["a", "b", "c"] {
            fake.insert("p", "z", &instance(name), &rid(name))
                .await
                .expect("insert");
        }
        let mut page = PageRequest {
            max_results: Some(2),
            ..Default::default()
        };
        let first = fake.list_page("p", "z", &page).await.expect("page 1");
        assert_eq!(first.items.len(), 2);
        page.page_token = first.next_page_token;
        let second = fake.list_page("p", "z", &page).await.expect("page 2");
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.items[0].name, "c");
        assert!(second.next_page_token.is_none());
    }
}
