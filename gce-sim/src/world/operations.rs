//! Operations: their status over time (slowed or hung by faults), storing and
//! replaying them by `requestId`, and `zoneOperations.get` / `.list` with the wait
//! bound's remaining time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use pm_gce::compute::is_valid_request_id;
use pm_gce::resources::{Operation, OperationError, OperationErrorItem, OperationStatus};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::paging::{list_reply, paginate, ListQuery, Order};
use super::zones::ProjectZone;
use super::{zone_url, ApiError, World};
use crate::clock::{operation_name, resource_id, rfc3339};

/// An operation failure as GCE reports it in the operation.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) code: &'static str,
    pub(super) message: String,
    /// `errorDetails`, as GCE sends them.
    pub(super) details: Vec<Value>,
    pub(super) http_status: u16,
    pub(super) http_message: &'static str,
}

/// One operation, as the world keeps it.
pub(super) struct SimOperation {
    pub(super) id: u64,
    pub(super) operation_type: &'static str,
    pub(super) target_name: String,
    pub(super) target_id: u64,
    pub(super) user: &'static str,
    pub(super) status_message: Option<&'static str>,
    pub(super) inserted: SystemTime,
    pub(super) inserted_at: Instant,
    pub(super) delay: Duration,
    /// Started while operations hang: RUNNING after half its delay, never DONE.
    pub(super) hung: bool,
    pub(super) failure: Option<Failure>,
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
    pub(super) fn done_at(&self) -> Option<Instant> {
        (!self.hung).then(|| self.inserted_at + self.delay)
    }
}

/// An operation not stored yet, with its name.
pub(super) type NewOperation = (String, SimOperation);

impl World {
    /// A new operation and its name, taking the delay and hang faults now set.
    pub(super) fn new_operation(
        &mut self,
        operation_type: &'static str,
        target_name: &str,
        target_id: u64,
        failure: Option<Failure>,
    ) -> NewOperation {
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
    pub(super) fn store_operation(
        &mut self,
        project: &str,
        zone: &str,
        request_id: Option<&str>,
        (name, op): NewOperation,
    ) -> Result<Operation, ApiError> {
        let view = operation_view(&Scope::Zone(project, zone), &name, &op, Instant::now());
        self.zone_mut(project, zone)?
            .projects
            .entry(project.to_string())
            .or_default()
            .insert_operation(name.clone(), op);
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
    pub(super) fn replay(
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

    /// `zoneOperations.get`.
    pub fn get_operation(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Operation, ApiError> {
        let now = Instant::now();
        let op = self.operation(project, zone, name)?;
        Ok(operation_view(&Scope::Zone(project, zone), name, op, now))
    }

    /// How long until the operation is DONE (zero if it is).
    pub fn operation_remaining(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<Duration, ApiError> {
        let now = Instant::now();
        let op = self.operation(project, zone, name)?;
        Ok(op
            .done_at()
            .map_or(Duration::MAX, |done| done.saturating_duration_since(now)))
    }

    /// The operation `name` of `project` in `zone`.
    fn operation(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<&SimOperation, ApiError> {
        self.zone_mut(project, zone)?
            .projects
            .get(project)
            .and_then(|pz| pz.operations.get(name))
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
        query: &ListQuery<'_>,
    ) -> Result<Value, ApiError> {
        let page = query.check()?;
        let now = Instant::now();
        let z = self.zone_mut(project, zone)?;
        let empty = BTreeMap::new();
        let operations = z.projects.get(project).map_or(&empty, |pz| &pz.operations);
        let matching = |(name, op): &(&String, &SimOperation)| {
            page.filter
                .matches(|field| operation_field(project, zone, name, op, now, field))
        };
        let view = |(name, op): (&String, &SimOperation)| {
            operation_view(&Scope::Zone(project, zone), name, op, now)
        };
        let (items, next_page_token) = match page.order {
            Order::Name => {
                let views = operations
                    .range::<str, _>(page.keys())
                    .filter(matching)
                    .map(|entry| (entry.0.clone(), view(entry)));
                paginate(views, page.size)
            }
            Order::NewestFirst => {
                let empty_index = BTreeMap::new();
                let index = z
                    .projects
                    .get(project)
                    .map_or(&empty_index, |pz| &pz.by_newest);
                let views = index
                    .range::<str, _>(page.keys())
                    .filter_map(|(key, name)| {
                        operations
                            .get_key_value(name)
                            .map(|entry| (key.clone(), entry))
                    })
                    .filter(|(_, entry)| matching(entry))
                    .map(|(key, entry)| (key, view(entry)));
                paginate(views, page.size)
            }
        };
        Ok(list_reply(
            "compute#operationList",
            &format!("projects/{project}/zones/{zone}/operations"),
            items,
            next_page_token,
        ))
    }
}

impl ProjectZone {
    /// Stores an operation and indexes it newest first.
    pub(super) fn insert_operation(&mut self, name: String, op: SimOperation) {
        if let Some(old) = self.operations.get(&name) {
            self.by_newest.remove(&newest_first_key(&name, old));
        }
        self.by_newest
            .insert(newest_first_key(&name, &op), name.clone());
        self.operations.insert(name, op);
    }
}

/// Where an operation lives: a zone of a project, or the project (global).
pub(super) enum Scope<'a> {
    /// `projects/P/zones/Z/operations/...`; its target is an instance of the zone.
    Zone(&'a str, &'a str),
    /// `projects/P/global/operations/...`; its target is the project.
    Global(&'a str),
}

/// An operation as GCE renders it at `now`.
pub(super) fn operation_view(
    scope: &Scope<'_>,
    name: &str,
    op: &SimOperation,
    now: Instant,
) -> Operation {
    let status = op.status(now);
    let (scope_link, zone, target_link) = match scope {
        Scope::Zone(project, zone) => {
            let link = zone_url(project, zone);
            let target = format!("{link}/instances/{}", op.target_name);
            (link.clone(), Some(link), target)
        }
        Scope::Global(project) => {
            let project_link = format!("{}projects/{project}", super::URL_ROOT);
            (format!("{project_link}/global"), None, project_link)
        }
    };
    let started = op.inserted + op.delay / 2;
    let ended = op.inserted + op.delay;
    let done = status == OperationStatus::Done;
    let failure = op.failure.as_ref().filter(|_| done);
    Operation {
        kind: Some("compute#operation".into()),
        id: Some(op.id.to_string()),
        name: name.to_string(),
        zone,
        operation_type: Some(op.operation_type.into()),
        target_link: Some(target_link),
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
        self_link: Some(format!("{scope_link}/operations/{name}")),
        user: Some(op.user.into()),
        error: failure.map(|f| OperationError {
            errors: vec![OperationErrorItem {
                code: f.code.into(),
                message: Some(f.message.clone()),
                location: None,
                error_details: f.details.clone(),
            }],
        }),
        http_error_status_code: failure.map(|f| f.http_status),
        http_error_message: failure.map(|f| f.http_message.into()),
        extra: Map::new(),
    }
}

/// The sort key of an operation in a newest-first listing (and its page tokens).
fn newest_first_key(name: &str, op: &SimOperation) -> String {
    let millis = op
        .inserted
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!("{:020}/{name}", u64::MAX - millis)
}

/// A field of an operation for list filters.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Faults;
    use crate::world::test_support::{body, status_of, world};
    use crate::world::Mutation;

    #[tokio::test(flavor = "current_thread")]
    async fn faults_slow_down_or_hang_operations_but_not_instances() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        w.set_faults(Faults {
            op_delay_ms: Some(60_000),
            ..Faults::default()
        });
        let slow = w
            .mutate("p", "z1", Mutation::Insert(&body("slow")), None)
            .expect("insert");
        let remaining = w
            .operation_remaining("p", "z1", &slow.name)
            .expect("operation");
        assert!(remaining > Duration::from_secs(50), "{remaining:?}");
        w.set_faults(Faults {
            hang_operations: true,
            ..Faults::default()
        });
        let hung = w
            .mutate("p", "z1", Mutation::Insert(&body("hung")), None)
            .expect("insert");
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
        let quick = w
            .mutate("p", "z1", Mutation::Insert(&body("quick")), None)
            .expect("insert");
        assert_eq!(quick.status, OperationStatus::Done);
        assert_eq!(
            w.get_operation("p", "z1", &hung.name).expect("get").status,
            OperationStatus::Running
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn operations_list_newest_first_in_pages_when_asked() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let mut names = Vec::new();
        for name in ["a", "b", "c"] {
            let op = w
                .mutate("p", "z1", Mutation::Insert(&body(name)), None)
                .expect("insert");
            names.push(op.name);
        }
        // Insert times one second apart, oldest first, whatever the names' order.
        let zone = w.zone_mut("p", "z1").expect("zone");
        let pz = zone.projects.get_mut("p").expect("project");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for (i, name) in names.iter().enumerate() {
            let mut op = pz.operations.remove(name).expect("operation");
            pz.by_newest.retain(|_, indexed| indexed != name);
            op.inserted = start + Duration::from_secs(u64::try_from(names.len() - i).unwrap());
            pz.insert_operation(name.clone(), op);
        }
        let newest = ListQuery {
            order_by: Some("creationTimestamp desc"),
            max_results: Some("2"),
            ..ListQuery::default()
        };
        let page = w.list_operations("p", "z1", &newest).expect("list");
        let listed = |page: &Value| -> Vec<String> {
            let items = page["items"].as_array().expect("items");
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(listed(&page), [names[0].clone(), names[1].clone()]);
        let token = page["nextPageToken"].as_str().expect("token").to_string();
        let next = ListQuery {
            page_token: Some(&token),
            ..newest
        };
        let page = w.list_operations("p", "z1", &next).expect("list");
        assert_eq!(listed(&page), [names[2].clone()]);
        assert!(page.get("nextPageToken").is_none());
        let by_name = w
            .list_operations("p", "z1", &ListQuery::default())
            .expect("list");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(listed(&by_name), sorted);
        let bad = ListQuery {
            order_by: Some("creationTimestamp"),
            ..ListQuery::default()
        };
        let refused = w.list_operations("p", "z1", &bad).expect_err("refused");
        assert_eq!(refused.status, 400);
        let instances = ListQuery {
            order_by: Some("creationTimestamp desc"),
            ..ListQuery::default()
        };
        let refused = w
            .list_instances("p", "z1", &instances)
            .expect_err("refused");
        assert_eq!(refused.status, 400);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn request_ids_replay_the_first_operation() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let rid = pm_gce::compute::request_id_for("a");
        let first = w
            .mutate("p", "z1", Mutation::Insert(&body("a")), Some(&rid))
            .expect("insert");
        let again = w
            .mutate("p", "z1", Mutation::Insert(&body("a")), Some(&rid))
            .expect("replay");
        assert_eq!(first.name, again.name);
    }
}
