//! The narrow Compute interface `pm` needs, implemented over REST ([`crate::rest`]),
//! in memory ([`crate::fake`]), and served by gce-sim (the `gce-sim` crate).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::GceError;
use crate::resources::{BulkInsertRequest, Instance, InstanceList, Operation};

/// A boxed, sendable future: what [`Compute`] methods return, so the trait stays
/// usable as `Arc<dyn Compute>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The API call a request or an error belongs to (names follow the Compute v1 methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiCall {
    /// `instances.insert`
    Insert,
    /// `instances.bulkInsert`
    BulkInsert,
    /// `instances.get`
    Get,
    /// `instances.list`
    List,
    /// `instances.delete`
    Delete,
    /// `instances.start`
    Start,
    /// `instances.resume`
    Resume,
    /// `zoneOperations.wait`
    WaitOperation,
    /// `zoneOperations.list`
    ListOperations,
    /// `instances.setLabels`
    SetLabels,
    /// `projects.get`
    GetProject,
    /// `projects.setCommonInstanceMetadata`
    SetCommonInstanceMetadata,
    /// `globalOperations.wait`
    WaitGlobalOperation,
}

impl ApiCall {
    /// The Compute v1 method name, e.g. `compute.instances.insert`.
    pub fn method(self) -> &'static str {
        match self {
            ApiCall::Insert => "compute.instances.insert",
            ApiCall::BulkInsert => "compute.instances.bulkInsert",
            ApiCall::Get => "compute.instances.get",
            ApiCall::List => "compute.instances.list",
            ApiCall::Delete => "compute.instances.delete",
            ApiCall::Start => "compute.instances.start",
            ApiCall::Resume => "compute.instances.resume",
            ApiCall::WaitOperation => "compute.zoneOperations.wait",
            ApiCall::ListOperations => "compute.zoneOperations.list",
            ApiCall::SetLabels => "compute.instances.setLabels",
            ApiCall::GetProject => "compute.projects.get",
            ApiCall::SetCommonInstanceMetadata => "compute.projects.setCommonInstanceMetadata",
            ApiCall::WaitGlobalOperation => "compute.globalOperations.wait",
        }
    }

    /// Whether the call brings instances up, so that an HTTP 503 means a stockout.
    pub fn creates_instances(self) -> bool {
        match self {
            ApiCall::Insert | ApiCall::BulkInsert | ApiCall::Start | ApiCall::Resume => true,
            ApiCall::Get
            | ApiCall::List
            | ApiCall::Delete
            | ApiCall::WaitOperation
            | ApiCall::ListOperations
            | ApiCall::SetLabels
            | ApiCall::GetProject
            | ApiCall::SetCommonInstanceMetadata
            | ApiCall::WaitGlobalOperation => false,
        }
    }
}

impl fmt::Display for ApiCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method())
    }
}

/// Where a list call starts and how much it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// A GCE filter expression, e.g. `labels.pm-pool = "web"`.
    pub filter: Option<String>,
    /// Page size, 1 to 500 (the server default is 500).
    pub max_results: Option<u32>,
    /// `nextPageToken` of the previous page.
    pub page_token: Option<String>,
}

/// Largest page the API serves; list-all methods ask for it.
pub const MAX_PAGE_SIZE: u32 = 500;

/// The Compute Engine calls `pm` makes, all zonal. Every method takes the project, so
/// one client serves pools of several projects.
///
/// Errors are [`GceError`]; decide on them with [`GceError::class`]. Implementations
/// retry retryable classes themselves (the REST client does, with [`pm_backoff::Backoff`]).
pub trait Compute: Send + Sync {
    /// Creates `instance` in `zone`. `request_id` (a UUID-shaped string, derived by the
    /// caller from the instance name) makes the call idempotent: repeating it returns the
    /// same operation and never creates a second VM. Returns the operation, which may
    /// still fail later (stockout, quota): wait for it with [`wait_until_done`].
    /// A duplicate name is [`crate::ErrorClass::AlreadyExists`]; a stockout reported as
    /// HTTP 503 is [`crate::ErrorClass::Stockout`].
    fn insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        instance: &'a Instance,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>>;

    /// Creates up to `request.count` instances in one call; with `min_count` set, fewer
    /// than that many creatable means none is kept and the operation fails. `request_id`
    /// makes it idempotent like [`Compute::insert`].
    fn bulk_insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        request: &'a BulkInsertRequest,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>>;

    /// The instance named `name`, or `Ok(None)` when it does not exist (GCE answers an
    /// unknown zone the same way: list the zone to tell the two apart).
    fn get<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Instance>, GceError>>;

    /// One page of the zone's instances, ordered by name. An empty page with no
    /// `next_page_token` is the end.
    fn list_page<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        page: &'a PageRequest,
    ) -> BoxFuture<'a, Result<InstanceList, GceError>>;

    /// All of the zone's instances matching `filter`, following every page. Fails if
    /// the server repeats a page token (it would loop forever).
    fn list<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Instance>, GceError>>;

    /// Deletes `name`. Returns the delete operation, or `Ok(None)` when the instance
    /// does not exist (already gone is success).
    fn delete<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Operation>, GceError>>;

    /// Starts a TERMINATED instance again (a RUNNING one is left as it is). A missing
    /// instance is [`crate::ErrorClass::NotFound`]; no capacity is a stockout, either as
    /// HTTP 503 or in the operation.
    fn start<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>>;

    /// `instances.resume` of a SUSPENDED instance: it comes back RUNNING. A missing
    /// instance is [`crate::ErrorClass::NotFound`]; one that is not suspended is refused
    /// (HTTP 400).
    fn resume<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>>;

    /// Waits for the operation, server side, for a bounded time (GCE: about 2 minutes)
    /// and returns its state then, which may not be DONE yet. A failed operation is
    /// returned as `Ok` with `error` set: see [`operation_result`].
    fn wait_operation<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        operation: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>>;

    /// Replaces the labels of `name` with `labels`, only if its labels still have
    /// `fingerprint` (the `labelFingerprint` GCE last showed; an instance without labels
    /// has one too). A changed fingerprint is HTTP 412 `conditionNotMet`: get the
    /// instance again and decide again. A missing instance is
    /// [`crate::ErrorClass::NotFound`].
    fn set_labels<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>>;

    /// All of the zone's operations matching `filter`, following every page, e.g.
    /// `operationType = "compute.instances.preempted"` for the preemption history.
    fn list_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>>;

    /// The zone's newest operations matching `filter`, newest first: one page of at most
    /// `max_results` (1 to [`MAX_PAGE_SIZE`]), `orderBy=creationTimestamp desc`. One call
    /// however long the zone's history is.
    fn recent_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
        max_results: u32,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>>;
}

/// `Ok(op)` for an operation without error, else [`GceError::OperationFailed`] carrying
/// its error codes (classify it with [`GceError::class`]).
pub fn operation_result(op: Operation) -> Result<Operation, GceError> {
    match op.error {
        Some(error) if !error.errors.is_empty() || op.http_error_status_code.is_some() => {
            Err(GceError::OperationFailed {
                operation: op.name,
                operation_type: op.operation_type.unwrap_or_default(),
                target: op.target_link.unwrap_or_default(),
                http_status: op.http_error_status_code,
                http_message: op.http_error_message,
                errors: error.errors,
            })
        }
        Some(_) | None => Ok(op),
    }
}

/// Shortest interval between two wait calls, in case a server answers `wait` at once
/// without the operation being DONE.
pub(crate) const MIN_WAIT_INTERVAL: Duration = Duration::from_millis(200);

/// Waits until `op` is DONE, calling [`Compute::wait_operation`] repeatedly, for at most
/// `deadline`; then returns [`operation_result`]. Not DONE by then is
/// [`GceError::OperationTimeout`].
pub async fn wait_until_done(
    compute: &dyn Compute,
    project: &str,
    op: Operation,
    deadline: Duration,
) -> Result<Operation, GceError> {
    let started = tokio::time::Instant::now();
    let zone = op
        .zone_name()
        .ok_or_else(|| GceError::InvalidRequest {
            problem: format!("operation {} has no zone", op.name),
        })?
        .to_string();
    let mut current = op;
    while !current.is_done() {
        let remaining = deadline.saturating_sub(started.elapsed());
        let call_started = tokio::time::Instant::now();
        let next = tokio::time::timeout(
            remaining,
            compute.wait_operation(project, &zone, &current.name),
        )
        .await;
        match next {
            Ok(result) => current = result?,
            Err(_elapsed) => break,
        }
        if !current.is_done() {
            let pause = MIN_WAIT_INTERVAL.saturating_sub(call_started.elapsed());
            let remaining = deadline.saturating_sub(started.elapsed());
            tokio::time::sleep(pause.min(remaining)).await;
        }
        if started.elapsed() >= deadline && !current.is_done() {
            break;
        }
    }
    if !current.is_done() {
        return Err(GceError::OperationTimeout {
            operation: current.name,
            waited: started.elapsed(),
            last_status: current.status.as_str().to_string(),
        });
    }
    operation_result(current)
}

/// A `requestId` derived from `key` (e.g. the instance name): a UUID in the version-4
/// layout (GCE documents requestId as a UUID; Google's clients send v4), and stable, so
/// every retry of the same create carries the same id.
pub fn request_id_for(key: &str) -> String {
    // Two FNV-1a passes with different offsets give 128 stable bits; no secrecy needed.
    let fnv = |offset: u64| {
        key.bytes().fold(offset, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let high = fnv(0xcbf2_9ce4_8422_2325);
    let low = fnv(0x8422_2325_cbf2_9ce4) | 1;
    let bits = (u128::from(high) << 64) | u128::from(low);
    // Version 4 and the RFC 4122 variant: the layout of a random UUID, whose 122 other
    // bits here come from the hash instead of a random source.
    let bits = (bits & !(0xF << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `id` is acceptable as a `requestId`: a UUID (8-4-4-4-12 hex digits) other
/// than the zero UUID.
pub fn is_valid_request_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    let shape_ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()));
    shape_ok && id.bytes().any(|b| b.is_ascii_hexdigit() && b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_distinct_uuids() {
        let a = request_id_for("web-0001");
        assert_eq!(a, request_id_for("web-0001"));
        assert_ne!(a, request_id_for("web-0002"));
        assert!(is_valid_request_id(&a), "{a}");
        assert!(is_valid_request_id(&request_id_for("")));
        for key in ["", "web-0001", "a-much-longer-instance-name-for-the-layout"] {
            let id = request_id_for(key);
            assert_eq!(&id[14..15], "4", "version 4: {id}");
            assert!("89ab".contains(&id[19..20]), "RFC 4122 variant: {id}");
        }
    }

    #[test]
    fn request_id_validation() {
        assert!(is_valid_request_id("123e4567-e89b-12d3-a456-426614174000"));
        assert!(!is_valid_request_id("00000000-0000-0000-0000-000000000000"));
        assert!(!is_valid_request_id("web-1"));
        assert!(!is_valid_request_id("123e4567e89b12d3a456426614174000"));
        assert!(!is_valid_request_id("123e4567-e89b-12d3-a456-42661417400g"));
    }
}
