//! GCE errors and their classification, in one place.
//!
//! Every failure of a Compute call is a [`GceError`]; [`GceError::class`] maps it to one
//! [`ErrorClass`], the only thing callers decide on. The table of GCE reasons and
//! operation error codes lives here and nowhere else.

use std::time::Duration;

use crate::compute::ApiCall;
use crate::resources::{ErrorItem, OperationErrorItem};

/// What a caller does about an error: each class has one reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The zone has no capacity for the request: stop creating there for a while.
    Stockout,
    /// A project quota is exhausted: creating more will fail until quota frees up.
    Quota,
    /// Too many requests: retry later, slower.
    RateLimit,
    /// The resource does not exist.
    NotFound,
    /// A resource of that name already exists.
    AlreadyExists,
    /// A transient failure (5xx, timeout, connection): retry with back-off.
    Retryable,
    /// The request itself is wrong (bad template, permission): retrying cannot help.
    Permanent,
}

impl ErrorClass {
    /// Whether retrying the same call after a back-off may succeed.
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorClass::RateLimit | ErrorClass::Retryable => true,
            ErrorClass::Stockout
            | ErrorClass::Quota
            | ErrorClass::NotFound
            | ErrorClass::AlreadyExists
            | ErrorClass::Permanent => false,
        }
    }
}

/// What a stockout's `errorDetails` say (GCE sends an `ErrorInfo` with `reason`
/// `resource_availability` or `configuration_availability`, and `metadatas.zonesAvailable`
/// such as `"us-central1-a,us-central1-f"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockoutDetails {
    /// `resource_availability` (clears with time) or `configuration_availability` (does
    /// not: the configuration is not offered in the zone).
    pub reason: Option<String>,
    /// Zones GCE says have capacity for the request.
    pub zones_available: Vec<String>,
}

impl StockoutDetails {
    /// The details for an event or a report: empty when GCE sent none.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(reason) = &self.reason {
            parts.push(format!("reason {reason}"));
        }
        if !self.zones_available.is_empty() {
            parts.push(format!(
                "zones with capacity: {}",
                self.zones_available.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// A failed Compute call.
#[derive(Debug, thiserror::Error)]
pub enum GceError {
    /// The API answered with an HTTP error status (body decoded when it was GCE's
    /// error envelope, otherwise `message` holds the start of the body).
    #[error("{call} {url}: HTTP {status}: {message}{}", reasons_suffix(.errors))]
    Http {
        /// The call that failed.
        call: ApiCall,
        /// The request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Top-level message, or the start of a body that was not GCE's envelope.
        message: String,
        /// `error.errors[]` of GCE's envelope (empty when the body was not one).
        errors: Vec<ErrorItem>,
        /// The answer's `Retry-After` (delta-seconds form), when it had one: the server's
        /// word on when to try again.
        retry_after: Option<Duration>,
    },
    /// An operation finished with `error` set.
    #[error(
        "operation {operation} ({operation_type}) on {target} failed{}: {}",
        http_suffix(*.http_status, .http_message.as_deref()),
        codes_summary(.errors)
    )]
    OperationFailed {
        /// Operation name.
        operation: String,
        /// Its `operationType`.
        operation_type: String,
        /// Its `targetLink`.
        target: String,
        /// `httpErrorStatusCode`, if set.
        http_status: Option<u16>,
        /// `httpErrorMessage`, if set.
        http_message: Option<String>,
        /// `error.errors[]`.
        errors: Vec<OperationErrorItem>,
    },
    /// An operation did not reach DONE within the caller's deadline.
    #[error("operation {operation} not DONE after {waited:?} (last status {last_status})")]
    OperationTimeout {
        /// Operation name.
        operation: String,
        /// How long the caller waited.
        waited: Duration,
        /// The last status seen.
        last_status: String,
    },
    /// No response within the client's timeout.
    #[error("{call} {url}: timed out after {timeout:?}")]
    Timeout {
        /// The call that timed out.
        call: ApiCall,
        /// The request URL.
        url: String,
        /// The timeout that expired.
        timeout: Duration,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The connection could not be made or broke before a full response arrived.
    #[error("{call} {url}: transport error")]
    Transport {
        /// The call that failed.
        call: ApiCall,
        /// The request URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A success status with a body that is not the expected resource: HTML, truncated
    /// JSON, a missing field or an unknown enum value (`problem` names it).
    #[error("{call} {url}: HTTP {status} with an undecodable body ({problem}): {snippet:?}")]
    Decode {
        /// The call whose response was bad.
        call: ApiCall,
        /// The request URL.
        url: String,
        /// HTTP status code of the response.
        status: u16,
        /// What is wrong, e.g. "missing field `status` at line 1 column 20".
        problem: String,
        /// The start of the body.
        snippet: String,
    },
    /// A decodable response that breaks the API's contract (e.g. a page token loop).
    #[error("{call} {url}: invalid response: {problem}")]
    InvalidResponse {
        /// The call whose response was bad.
        call: ApiCall,
        /// The request URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The request could not be built (e.g. an unusable base URL).
    #[error("invalid request: {problem}")]
    InvalidRequest {
        /// What is wrong.
        problem: String,
    },
    /// No access token could be obtained.
    #[error("cannot obtain an access token")]
    Auth {
        /// The credentials error.
        #[source]
        source: gcp_auth::Error,
    },
}

fn reasons_suffix(errors: &[ErrorItem]) -> String {
    let reasons: Vec<&str> = errors
        .iter()
        .map(|e| e.reason.as_str())
        .filter(|r| !r.is_empty())
        .collect();
    if reasons.is_empty() {
        String::new()
    } else {
        format!(" (reason {})", reasons.join(", "))
    }
}

fn http_suffix(status: Option<u16>, message: Option<&str>) -> String {
    match (status, message) {
        (Some(s), Some(m)) => format!(" with HTTP {s} {m}"),
        (Some(s), None) => format!(" with HTTP {s}"),
        (None, _) => String::new(),
    }
}

fn codes_summary(errors: &[OperationErrorItem]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| match &e.message {
            Some(m) => format!("{}: {m}", e.code),
            None => e.code.clone(),
        })
        .collect();
    if parts.is_empty() {
        "no error detail".to_string()
    } else {
        parts.join("; ")
    }
}

impl GceError {
    /// The class of this error: the one match that decides how `pm` reacts.
    pub fn class(&self) -> ErrorClass {
        match self {
            GceError::Http {
                call,
                status,
                message,
                errors,
                ..
            } => classify_http(*call, *status, message, errors),
            GceError::OperationFailed {
                http_status,
                errors,
                ..
            } => classify_operation(*http_status, errors),
            GceError::OperationTimeout { .. }
            | GceError::Timeout { .. }
            | GceError::Transport { .. }
            | GceError::Auth { .. } => ErrorClass::Retryable,
            GceError::Decode { status, .. } => {
                if *status >= 500 {
                    ErrorClass::Retryable
                } else {
                    ErrorClass::Permanent
                }
            }
            GceError::InvalidResponse { .. } | GceError::InvalidRequest { .. } => {
                ErrorClass::Permanent
            }
        }
    }

    /// How long the server asked the caller to wait before trying again (`Retry-After`);
    /// `None` when it did not say.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GceError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Shorthand for `class() == Stockout`.
    pub fn is_stockout(&self) -> bool {
        self.class() == ErrorClass::Stockout
    }

    /// The call that failed, when the error comes from one call (not an operation).
    pub fn call(&self) -> Option<ApiCall> {
        match self {
            GceError::Http { call, .. }
            | GceError::Timeout { call, .. }
            | GceError::Transport { call, .. }
            | GceError::Decode { call, .. }
            | GceError::InvalidResponse { call, .. } => Some(*call),
            GceError::OperationFailed { .. }
            | GceError::OperationTimeout { .. }
            | GceError::InvalidRequest { .. }
            | GceError::Auth { .. } => None,
        }
    }

    /// Whether the call may have taken effect although it errored: its answer never came
    /// (a timeout, a broken connection, an operation still running) or could not be
    /// read. Every other error is GCE saying the call failed.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            GceError::OperationTimeout { .. }
            | GceError::Timeout { .. }
            | GceError::Transport { .. }
            | GceError::Decode { .. } => true,
            GceError::Http { .. }
            | GceError::OperationFailed { .. }
            | GceError::InvalidResponse { .. }
            | GceError::InvalidRequest { .. }
            | GceError::Auth { .. } => false,
        }
    }

    /// The messages GCE sent with the error.
    fn messages(&self) -> Vec<&str> {
        match self {
            GceError::Http {
                message, errors, ..
            } => std::iter::once(message.as_str())
                .chain(errors.iter().map(|e| e.message.as_str()))
                .collect(),
            GceError::OperationFailed { errors, .. } => {
                errors.iter().filter_map(|e| e.message.as_deref()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The resource a 409 "The resource '...' already exists" names, e.g.
    /// `projects/p/zones/z/disks/web-boot`.
    pub fn existing_resource(&self) -> Option<String> {
        self.messages().into_iter().find_map(|m| {
            let (_, rest) = m.split_once("The resource '")?;
            let (resource, tail) = rest.split_once('\'')?;
            tail.trim_start()
                .starts_with("already exists")
                .then(|| resource.to_string())
        })
    }

    /// What GCE's `errorDetails` tell about a stockout: the `ErrorInfo` reason and the
    /// zones it says have capacity.
    pub fn stockout_details(&self) -> StockoutDetails {
        let GceError::OperationFailed { errors, .. } = self else {
            return StockoutDetails::default();
        };
        let mut details = StockoutDetails::default();
        for info in errors
            .iter()
            .flat_map(|e| e.error_details.iter())
            .filter_map(|d| d.get("errorInfo"))
        {
            if let Some(reason) = info.get("reason").and_then(|r| r.as_str()) {
                details.reason.get_or_insert_with(|| reason.to_string());
            }
            let zones = info
                .get("metadatas")
                .and_then(|m| m.get("zonesAvailable"))
                .and_then(|z| z.as_str())
                .unwrap_or_default();
            for zone in zones.split(',').map(str::trim).filter(|z| !z.is_empty()) {
                if !details.zones_available.iter().any(|z| z == zone) {
                    details.zones_available.push(zone.to_string());
                }
            }
        }
        details
    }

    /// An HTTP error in GCE's shape, with one `errors[]` entry of `reason`; for fakes
    /// and tests.
    pub fn http(call: ApiCall, status: u16, reason: &str, message: &str) -> GceError {
        GceError::Http {
            call,
            url: String::new(),
            status,
            message: message.to_string(),
            errors: vec![ErrorItem {
                domain: "global".to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
            }],
            retry_after: None,
        }
    }
}

/// Class of a synchronous error reason (`error.errors[].reason`), if it decides one.
fn class_of_reason(reason: &str) -> Option<ErrorClass> {
    match reason {
        "quotaExceeded" => Some(ErrorClass::Quota),
        "rateLimitExceeded" | "userRateLimitExceeded" => Some(ErrorClass::RateLimit),
        "insufficientCapacity" | "resourcePoolExhausted" => Some(ErrorClass::Stockout),
        "notFound" => Some(ErrorClass::NotFound),
        "alreadyExists" => Some(ErrorClass::AlreadyExists),
        "resourceNotReady" => Some(ErrorClass::Retryable),
        _ => None,
    }
}

/// GCE's wording of a stockout, in a message that carries no stockout code or reason
/// (a synchronous 503 on insert says so only in its message).
const STOCKOUT_WORDING: &str = "does not have enough resources";

/// Whether a message names an instance resource (`.../instances/NAME`): GCE's 409
/// "The resource '...' already exists" means the instance is there only then; the same
/// error naming a disk is a template that fixes a disk name.
fn names_instance(message: &str) -> bool {
    message.contains("/instances/")
}

/// Class of an operation error code (`error.errors[].code`), if it decides one.
fn class_of_code(code: &str) -> Option<ErrorClass> {
    match code {
        "ZONE_RESOURCE_POOL_EXHAUSTED" | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS" => {
            Some(ErrorClass::Stockout)
        }
        "QUOTA_EXCEEDED" => Some(ErrorClass::Quota),
        "RESOURCE_NOT_FOUND" => Some(ErrorClass::NotFound),
        "RESOURCE_ALREADY_EXISTS" => Some(ErrorClass::AlreadyExists),
        "RESOURCE_NOT_READY" => Some(ErrorClass::Retryable),
        // RATE_LIMIT_EXCEEDED, RESOURCE_OPERATION_RATE_EXCEEDED, ...
        code if code.ends_with("_RATE_EXCEEDED") || code == "RATE_LIMIT_EXCEEDED" => {
            Some(ErrorClass::RateLimit)
        }
        _ => None,
    }
}

/// Class of a bare HTTP status.
fn class_of_status(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::RateLimit,
        404 => ErrorClass::NotFound,
        409 => ErrorClass::AlreadyExists,
        408 | 500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// The most urgent class among several: a stockout beats a quota beats the rest.
fn first_by_priority(classes: impl Iterator<Item = ErrorClass>) -> Option<ErrorClass> {
    const PRIORITY: [ErrorClass; 6] = [
        ErrorClass::Stockout,
        ErrorClass::Quota,
        ErrorClass::RateLimit,
        ErrorClass::NotFound,
        ErrorClass::AlreadyExists,
        ErrorClass::Retryable,
    ];
    let found: Vec<ErrorClass> = classes.collect();
    PRIORITY.into_iter().find(|c| found.contains(c))
}

fn classify_http(call: ApiCall, status: u16, message: &str, errors: &[ErrorItem]) -> ErrorClass {
    let messages = || std::iter::once(message).chain(errors.iter().map(|e| e.message.as_str()));
    let class = first_by_priority(errors.iter().filter_map(|e| class_of_reason(&e.reason)))
        .unwrap_or_else(|| {
            if status == 503
                && call.creates_instances()
                && messages().any(|m| m.contains(STOCKOUT_WORDING))
            {
                ErrorClass::Stockout
            } else {
                class_of_status(status)
            }
        });
    match class {
        ErrorClass::AlreadyExists if !messages().any(names_instance) => ErrorClass::Permanent,
        class => class,
    }
}

fn classify_operation(http_status: Option<u16>, errors: &[OperationErrorItem]) -> ErrorClass {
    let class = first_by_priority(errors.iter().filter_map(|e| class_of_code(&e.code))).unwrap_or(
        match http_status {
            Some(500..=599) => ErrorClass::Retryable,
            Some(_) | None => ErrorClass::Permanent,
        },
    );
    let names_instance = errors
        .iter()
        .any(|e| e.message.as_deref().is_some_and(names_instance));
    match class {
        ErrorClass::AlreadyExists if !names_instance => ErrorClass::Permanent,
        class => class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_error(http_status: Option<u16>, codes: &[&str]) -> GceError {
        GceError::OperationFailed {
            operation: "op".into(),
            operation_type: "insert".into(),
            target: "t".into(),
            http_status,
            http_message: None,
            errors: codes
                .iter()
                .map(|c| OperationErrorItem {
                    code: c.to_string(),
                    message: None,
                    location: None,
                    error_details: vec![],
                })
                .collect(),
        }
    }

    fn op_error_saying(http_status: Option<u16>, code: &str, message: &str) -> GceError {
        let mut error = op_error(http_status, &[code]);
        if let GceError::OperationFailed { errors, .. } = &mut error {
            errors[0].message = Some(message.into());
        }
        error
    }

    #[test]
    fn the_resource_that_exists_and_the_stockout_details_are_read() {
        let disk = GceError::http(
            ApiCall::Insert,
            409,
            "alreadyExists",
            "The resource 'projects/p/zones/z/disks/web-boot' already exists",
        );
        assert_eq!(
            disk.existing_resource().as_deref(),
            Some("projects/p/zones/z/disks/web-boot")
        );
        assert_eq!(
            GceError::http(ApiCall::Insert, 409, "alreadyExists", "m").existing_resource(),
            None
        );
        let mut stockout = op_error_saying(
            Some(503),
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
            "The zone 'projects/p/zones/us-central1-b' does not have enough resources available to fulfill the request.",
        );
        if let GceError::OperationFailed { errors, .. } = &mut stockout {
            errors[0].error_details = vec![
                serde_json::json!({"help": {"links": []}}),
                serde_json::json!({"errorInfo": {
                    "domain": "compute.googleapis.com",
                    "reason": "resource_availability",
                    "metadatas": {"vmType": "n1-standard-4", "zone": "us-central1-b",
                        "zonesAvailable": "us-central1-a,us-central1-f"}
                }}),
            ];
        }
        let details = stockout.stockout_details();
        assert_eq!(details.reason.as_deref(), Some("resource_availability"));
        assert_eq!(details.zones_available, ["us-central1-a", "us-central1-f"]);
        assert_eq!(
            details.describe(),
            "reason resource_availability; zones with capacity: us-central1-a, us-central1-f"
        );
        assert_eq!(disk.stockout_details(), StockoutDetails::default());
        assert_eq!(disk.call(), Some(ApiCall::Insert));
        assert_eq!(stockout.call(), None);
    }

    #[test]
    fn classification_table() {
        use ApiCall::*;
        use ErrorClass::*;
        let http = |call, status, reason: &str| GceError::http(call, status, reason, "m");
        let cases: Vec<(GceError, ErrorClass)> = vec![
            (
                op_error(Some(503), &["ZONE_RESOURCE_POOL_EXHAUSTED"]),
                Stockout,
            ),
            (
                op_error(Some(503), &["ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"]),
                Stockout,
            ),
            (op_error(Some(403), &["QUOTA_EXCEEDED"]), Quota),
            (op_error(Some(400), &["INVALID_FIELD_VALUE"]), Permanent),
            (op_error(None, &["SOMETHING"]), Permanent),
            (op_error(Some(500), &["INTERNAL_ERROR"]), Retryable),
            (op_error(Some(503), &["UNAVAILABLE"]), Retryable),
            (
                op_error(Some(409), &["RESOURCE_ALREADY_EXISTS"]),
                Permanent,
            ),
            (
                op_error_saying(
                    Some(409),
                    "RESOURCE_ALREADY_EXISTS",
                    "The resource 'projects/p/zones/z/instances/web-1' already exists",
                ),
                AlreadyExists,
            ),
            (op_error(Some(400), &["RESOURCE_NOT_READY"]), Retryable),
            (
                op_error(Some(403), &["RESOURCE_OPERATION_RATE_EXCEEDED"]),
                RateLimit,
            ),
            (op_error(Some(403), &["RATE_LIMIT_EXCEEDED"]), RateLimit),
            (op_error(Some(404), &["RESOURCE_NOT_FOUND"]), NotFound),
            (
                op_error(
                    Some(403),
                    &["QUOTA_EXCEEDED", "ZONE_RESOURCE_POOL_EXHAUSTED"],
                ),
                Stockout,
            ),
            (http(Insert, 503, "backendError"), Retryable),
            (http(BulkInsert, 503, ""), Retryable),
            (http(Start, 503, ""), Retryable),
            (
                GceError::http(Insert, 503, "", "The zone 'projects/p/zones/z' does not have enough resources available to fulfill the request."),
                Stockout,
            ),
            (
                GceError::http(Get, 503, "", "The zone 'projects/p/zones/z' does not have enough resources available to fulfill the request."),
                Retryable,
            ),
            (http(Insert, 503, "insufficientCapacity"), Stockout),
            (http(Start, 400, "resourceNotReady"), Retryable),
            (http(BulkInsert, 400, "insufficientCapacity"), Stockout),
            (http(Get, 503, "backendError"), Retryable),
            (http(List, 500, ""), Retryable),
            (http(Delete, 502, ""), Retryable),
            (http(Insert, 403, "quotaExceeded"), Quota),
            (http(Insert, 403, "rateLimitExceeded"), RateLimit),
            (http(List, 403, "userRateLimitExceeded"), RateLimit),
            (http(List, 429, ""), RateLimit),
            (http(Get, 404, "notFound"), NotFound),
            (http(Get, 404, ""), NotFound),
            (http(Insert, 409, "alreadyExists"), Permanent),
            (
                GceError::http(Insert, 409, "alreadyExists", "The resource 'projects/p/zones/z/instances/web-1' already exists"),
                AlreadyExists,
            ),
            (
                GceError::http(Insert, 409, "alreadyExists", "The resource 'projects/p/zones/z/disks/web-boot' already exists"),
                Permanent,
            ),
            (http(Insert, 400, "invalid"), Permanent),
            (http(Insert, 403, "forbidden"), Permanent),
            (http(Insert, 412, "conditionNotMet"), Permanent),
            (http(Get, 408, ""), Retryable),
            (
                GceError::InvalidRequest {
                    problem: "x".into(),
                },
                Permanent,
            ),
            (
                GceError::Decode {
                    call: Get,
                    url: String::new(),
                    status: 200,
                    problem: "p".into(),
                    snippet: String::new(),
                },
                Permanent,
            ),
            (
                GceError::Decode {
                    call: Get,
                    url: String::new(),
                    status: 502,
                    problem: "p".into(),
                    snippet: String::new(),
                },
                Retryable,
            ),
            (
                GceError::OperationTimeout {
                    operation: "op".into(),
                    waited: Duration::from_secs(1),
                    last_status: "RUNNING".into(),
                },
                Retryable,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.class(), expected, "{error}");
        }
    }

    #[test]
    fn only_rate_limit_and_retryable_are_retried() {
        let retried: Vec<ErrorClass> = [
            ErrorClass::Stockout,
            ErrorClass::Quota,
            ErrorClass::RateLimit,
            ErrorClass::NotFound,
            ErrorClass::AlreadyExists,
            ErrorClass::Retryable,
            ErrorClass::Permanent,
        ]
        .into_iter()
        .filter(|c| c.is_retryable())
        .collect();
        assert_eq!(retried, vec![ErrorClass::RateLimit, ErrorClass::Retryable]);
    }

    #[test]
    fn messages_name_reason_and_codes() {
        let http = GceError::http(
            ApiCall::Insert,
            403,
            "quotaExceeded",
            "Quota 'CPUS' exceeded",
        );
        assert!(http.to_string().contains("reason quotaExceeded"), "{http}");
        let op = GceError::OperationFailed {
            operation: "op-1".into(),
            operation_type: "insert".into(),
            target: "web-1".into(),
            http_status: Some(503),
            http_message: Some("SERVICE UNAVAILABLE".into()),
            errors: vec![OperationErrorItem {
                code: "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
                message: Some("no room".into()),
                location: None,
                error_details: vec![],
            }],
        };
        let text = op.to_string();
        assert!(
            text.contains("ZONE_RESOURCE_POOL_EXHAUSTED: no room"),
            "{text}"
        );
        assert!(text.contains("HTTP 503 SERVICE UNAVAILABLE"), "{text}");
    }
}
