//! gce-sim's Compute v1 endpoints, and the middleware that enforces the front end's
//! framing, injects faults and counts requests for them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::world::{ApiError, ListQuery, Mutation};
use crate::Shared;

const ZONES: &str = "/compute/v1/projects/{project}/zones";
const ZONE: &str = "/compute/v1/projects/{project}/zones/{zone}";
const INSTANCES: &str = "/compute/v1/projects/{project}/zones/{zone}/instances";
const BULK_INSERT: &str = "/compute/v1/projects/{project}/zones/{zone}/instances/bulkInsert";
const INSTANCE: &str = "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}";
const START: &str = "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}/start";
const STOP: &str = "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}/stop";
const RESUME: &str = "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}/resume";
const SET_LABELS: &str =
    "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}/setLabels";
const AGGREGATED: &str = "/compute/v1/projects/{project}/aggregated/instances";
const OPERATIONS: &str = "/compute/v1/projects/{project}/zones/{zone}/operations";
const OPERATION: &str = "/compute/v1/projects/{project}/zones/{zone}/operations/{operation}";
const WAIT: &str = "/compute/v1/projects/{project}/zones/{zone}/operations/{operation}/wait";
const PROJECT: &str = "/compute/v1/projects/{project}";
const SET_METADATA: &str = "/compute/v1/projects/{project}/setCommonInstanceMetadata";
const GLOBAL_OPERATION: &str = "/compute/v1/projects/{project}/global/operations/{operation}";
const GLOBAL_WAIT: &str = "/compute/v1/projects/{project}/global/operations/{operation}/wait";

/// The Compute v1 routes.
pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(ZONES, get(list_zones))
        .route(ZONE, get(get_zone))
        .route(
            INSTANCES,
            get(list_instances)
                .post(|s, p, q, b| create(|body| Mutation::Insert(body), s, p, q, b)),
        )
        .route(
            BULK_INSERT,
            post(|s, p, q, b| create(|body| Mutation::BulkInsert(body), s, p, q, b)),
        )
        .route(
            INSTANCE,
            get(get_instance).delete(|s, p, q| change(|name| Mutation::Delete(name), s, p, q)),
        )
        .route(
            START,
            post(|s, p, q| change(|name| Mutation::Start(name), s, p, q)),
        )
        .route(
            STOP,
            post(|s, p, q| change(|name| Mutation::Stop(name), s, p, q)),
        )
        .route(
            RESUME,
            post(|s, p, q| change(|name| Mutation::Resume(name), s, p, q)),
        )
        .route(SET_LABELS, post(set_labels))
        .route(AGGREGATED, get(aggregated_instances))
        .route(OPERATIONS, get(list_operations))
        .route(OPERATION, get(get_operation))
        .route(WAIT, post(wait_operation))
        .route(PROJECT, get(get_project))
        .route(SET_METADATA, post(set_common_instance_metadata))
        .route(GLOBAL_OPERATION, get(get_global_operation))
        .route(GLOBAL_WAIT, post(wait_global_operation))
}

/// The Compute v1 method a request calls, for `/sim/v1/stats`.
fn method_name(method: &Method, route: Option<&str>) -> &'static str {
    let Some(route) = route else {
        return "unknown";
    };
    match (method.as_str(), route) {
        ("GET", ZONES) => "compute.zones.list",
        ("GET", ZONE) => "compute.zones.get",
        ("GET", INSTANCES) => "compute.instances.list",
        ("POST", INSTANCES) => "compute.instances.insert",
        ("POST", BULK_INSERT) => "compute.instances.bulkInsert",
        ("GET", INSTANCE) => "compute.instances.get",
        ("DELETE", INSTANCE) => "compute.instances.delete",
        ("POST", START) => "compute.instances.start",
        ("POST", STOP) => "compute.instances.stop",
        ("POST", RESUME) => "compute.instances.resume",
        ("POST", SET_LABELS) => "compute.instances.setLabels",
        ("GET", AGGREGATED) => "compute.instances.aggregatedList",
        ("GET", OPERATIONS) => "compute.zoneOperations.list",
        ("GET", OPERATION) => "compute.zoneOperations.get",
        ("POST", WAIT) => "compute.zoneOperations.wait",
        ("GET", PROJECT) => "compute.projects.get",
        ("POST", SET_METADATA) => "compute.projects.setCommonInstanceMetadata",
        ("GET", GLOBAL_OPERATION) => "compute.globalOperations.get",
        ("POST", GLOBAL_WAIT) => "compute.globalOperations.wait",
        _ => "unknown",
    }
}

/// Latency, the front end's framing rules, injected errors and request counting for
/// the compute API.
pub(super) async fn faults_and_stats(
    State(sim): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_name(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let path = request.uri().path().to_string();
    let changed = changed_instance(method, &path);
    let (latency, injected) = {
        let mut world = sim.world();
        let faults = world.faults().clone();
        let covered = faults.covers(&path);
        let fail = covered
            && faults.error_rate > 0.0
            && faults.targets(method)
            && world.draw() < faults.error_rate;
        let injected = fail.then(|| {
            (
                faults.status,
                faults.effective_reason(),
                faults.retry_after_seconds,
            )
        });
        let latency = if covered { faults.latency_ms } else { 0 };
        (Duration::from_millis(latency), injected)
    };
    hold(&sim, latency).await;
    let response = match (crate::framing::refusal(&request), injected) {
        (Some(refused), _) => refused,
        (None, Some((status, reason, retry_after))) => {
            let mut response = envelope(
                status,
                &reason,
                &format!("Injected fault: HTTP {status} {reason}"),
            );
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            }
            response
        }
        (None, None) => next.run(request).await,
    };
    let mut world = sim.world();
    world.count_request(method, response.status().as_str());
    if let Some((project, zone, name)) = changed {
        world.count_change(project, zone, name, method);
    }
    drop(world);
    response
}

/// (project, zone, instance) of a call that changes an existing instance, from its path
/// `/compute/v1/projects/P/zones/Z/instances/NAME[/VERB]`.
fn changed_instance<'a>(method: &str, path: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    if !matches!(
        method,
        "compute.instances.delete"
            | "compute.instances.start"
            | "compute.instances.stop"
            | "compute.instances.resume"
            | "compute.instances.setLabels"
    ) {
        return None;
    }
    let mut parts = path.strip_prefix("/compute/v1/projects/")?.split('/');
    let project = parts.next()?;
    let zone = parts.nth(1)?;
    let name = parts.nth(1)?;
    Some((project, zone, name))
}

/// An [`ApiError`] in GCE's error envelope.
pub(super) fn error_response(error: &ApiError) -> Response {
    envelope(error.status, error.reason, &error.message)
}

fn envelope(status: u16, reason: &str, message: &str) -> Response {
    let domain = match reason {
        "rateLimitExceeded" | "quotaExceeded" => "usageLimits",
        _ => "global",
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {
        "code": status,
        "message": message,
        "errors": [{"domain": domain, "reason": reason, "message": message}],
    }});
    (code, Json(body)).into_response()
}

/// 404 in GCE's envelope for paths the sim does not serve.
pub(super) async fn unknown_path(uri: Uri) -> Response {
    error_response(&ApiError {
        status: 404,
        reason: "notFound",
        message: format!(
            "The requested URL {} was not found on this server.",
            uri.path()
        ),
    })
}

/// Waits `pause`, or until the server stops.
async fn hold(sim: &Shared, pause: Duration) {
    if !pause.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = sim.shutdown.cancelled() => {}
        }
    }
}

/// A JSON reply of `result`, an error in GCE's envelope.
pub(super) fn respond<T: Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(error) => error_response(&error),
    }
}

type SharedState = State<Arc<Shared>>;
type ZonePath = Path<(String, String)>;
type ResourcePath = Path<(String, String, String)>;
type Params = Query<HashMap<String, String>>;

fn param<'a>(query: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    query.get(name).map(String::as_str)
}

/// The filter and paging parameters of a list call.
fn list_query(query: &HashMap<String, String>) -> ListQuery<'_> {
    ListQuery {
        filter: param(query, "filter"),
        max_results: param(query, "maxResults"),
        page_token: param(query, "pageToken"),
        order_by: param(query, "orderBy"),
    }
}

async fn list_zones(State(sim): SharedState, Path(project): Path<String>) -> Response {
    respond(Ok(sim.world().list_zones(&project)))
}

async fn get_zone(State(sim): SharedState, Path((project, zone)): ZonePath) -> Response {
    respond(sim.world().get_zone(&project, &zone))
}

/// A [`Mutation`] in a zone and its answer, once per `requestId`.
fn mutate(
    sim: &Shared,
    (project, zone): (&str, &str),
    mutation: Mutation<'_>,
    query: &HashMap<String, String>,
) -> Response {
    respond(
        sim.world()
            .mutate(project, zone, mutation, param(query, "requestId")),
    )
}

/// `instances.insert` and `.bulkInsert`: a body posted to a zone.
async fn create(
    mutation: fn(&[u8]) -> Mutation<'_>,
    State(sim): SharedState,
    Path((project, zone)): ZonePath,
    Query(query): Params,
    body: Bytes,
) -> Response {
    mutate(&sim, (&project, &zone), mutation(&body), &query)
}

/// `instances.delete`, `.start`, `.stop` and `.resume`: a call on one instance.
async fn change(
    mutation: fn(&str) -> Mutation<'_>,
    State(sim): SharedState,
    Path((project, zone, name)): ResourcePath,
    Query(query): Params,
) -> Response {
    mutate(&sim, (&project, &zone), mutation(&name), &query)
}

async fn set_labels(
    State(sim): SharedState,
    Path((project, zone, name)): ResourcePath,
    Query(query): Params,
    body: Bytes,
) -> Response {
    let mutation = Mutation::SetLabels(&name, &body);
    mutate(&sim, (&project, &zone), mutation, &query)
}

async fn get_instance(
    State(sim): SharedState,
    Path((project, zone, name)): ResourcePath,
) -> Response {
    respond(sim.world().get_instance(&project, &zone, &name))
}

async fn list_instances(
    State(sim): SharedState,
    Path((project, zone)): ZonePath,
    Query(query): Params,
) -> Response {
    match sim
        .world()
        .list_instances(&project, &zone, &list_query(&query))
    {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(error) => error_response(&error),
    }
}

async fn aggregated_instances(
    State(sim): SharedState,
    Path(project): Path<String>,
    Query(query): Params,
) -> Response {
    respond(
        sim.world()
            .aggregated_instances(&project, &list_query(&query)),
    )
}

async fn get_operation(
    State(sim): SharedState,
    Path((project, zone, name)): ResourcePath,
) -> Response {
    respond(sim.world().get_operation(&project, &zone, &name))
}

async fn list_operations(
    State(sim): SharedState,
    Path((project, zone)): ZonePath,
    Query(query): Params,
) -> Response {
    respond(
        sim.world()
            .list_operations(&project, &zone, &list_query(&query)),
    )
}

/// Holds the request until the operation is DONE or the wait bound passes.
async fn wait_operation(
    State(sim): SharedState,
    Path((project, zone, name)): ResourcePath,
) -> Response {
    let pause = {
        let mut world = sim.world();
        let bound = world.wait_bound();
        match world.operation_remaining(&project, &zone, &name) {
            Ok(remaining) => remaining.min(bound),
            Err(error) => return error_response(&error),
        }
    };
    hold(&sim, pause).await;
    respond(sim.world().get_operation(&project, &zone, &name))
}

async fn get_project(State(sim): SharedState, Path(project): Path<String>) -> Response {
    Json(sim.world().get_project(&project)).into_response()
}

async fn set_common_instance_metadata(
    State(sim): SharedState,
    Path(project): Path<String>,
    Query(query): Params,
    body: Bytes,
) -> Response {
    let request_id = param(&query, "requestId");
    respond(
        sim.world()
            .set_common_instance_metadata(&project, &body, request_id),
    )
}

async fn get_global_operation(
    State(sim): SharedState,
    Path((project, name)): ZonePath,
) -> Response {
    respond(sim.world().get_global_operation(&project, &name))
}

/// Holds the request until the global operation is DONE or the wait bound passes.
async fn wait_global_operation(
    State(sim): SharedState,
    Path((project, name)): ZonePath,
) -> Response {
    let pause = {
        let mut world = sim.world();
        let bound = world.wait_bound();
        match world.global_operation_remaining(&project, &name) {
            Ok(remaining) => remaining.min(bound),
            Err(error) => return error_response(&error),
        }
    };
    hold(&sim, pause).await;
    respond(sim.world().get_global_operation(&project, &name))
}
