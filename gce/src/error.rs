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
                errors,
                ..
            } => classify_http(*call, *status, errors),
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

    /// Shorthand for `class() == Stockout`.
    pub fn is_stockout(&self) -> bool {
        self.class() == ErrorClass::Stockout
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
        _ => None,
    }
}

/// Class of an operation error code (`error.errors[].code`), if it decides one.
fn class_of_code(code: &str) -> Option<ErrorClass> {
    match code {
        "ZONE_RESOURCE_POOL_EXHAUSTED" | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS" => {
            Some(ErrorClass::Stockout)
        }
        "QUOTA_EXCEEDED" => Some(ErrorClass::Quota),
        "RATE_LIMIT_EXCEEDED" => Some(ErrorClass::RateLimit),
        "RESOURCE_NOT_FOUND" => Some(ErrorClass::NotFound),
        "RESOURCE_ALREADY_EXISTS" => Some(ErrorClass::AlreadyExists),
        _ => None,
    }
}

/// Class of a bare HTTP status on `call`.
fn class_of_status(call: ApiCall, status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::RateLimit,
        404 => ErrorClass::NotFound,
        409 => ErrorClass::AlreadyExists,
        503 if call.creates_instances() => ErrorClass::Stockout,
        408 | 500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// The most urgent class among several: a stockout beats a quota beats the rest.
fn first_by_priority(classes: impl Iterator<Item = ErrorClass>) -> Option<ErrorClass> {
    const PRIORITY: [ErrorClass; 5] = [
        ErrorClass::Stockout,
        ErrorClass::Quota,
        ErrorClass::RateLimit,
        ErrorClass::NotFound,
        ErrorClass::AlreadyExists,
    ];
    let found: Vec<ErrorClass> = classes.collect();
    PRIORITY.into_iter().find(|c| found.contains(c))
}

fn classify_http(call: ApiCall, status: u16, errors: &[ErrorItem]) -> ErrorClass {
    first_by_priority(errors.iter().filter_map(|e| class_of_reason(&e.reason)))
        .unwrap_or_else(|| class_of_status(call, status))
}

fn classify_operation(http_status: Option<u16>, errors: &[OperationErrorItem]) -> ErrorClass {
    if let Some(class) = first_by_priority(errors.iter().filter_map(|e| class_of_code(&e.code))) {
        return class;
    }
    match http_status {
        Some(500..=599) => ErrorClass::Retryable,
        Some(_) | None => ErrorClass::Permanent,
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
                AlreadyExists,
            ),
            (
                op_error(
                    Some(403),
                    &["QUOTA_EXCEEDED", "ZONE_RESOURCE_POOL_EXHAUSTED"],
                ),
                Stockout,
            ),
            (http(Insert, 503, "backendError"), Stockout),
            (http(BulkInsert, 503, ""), Stockout),
            (http(Start, 503, ""), Stockout),
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
            (http(Insert, 409, "alreadyExists"), AlreadyExists),
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
