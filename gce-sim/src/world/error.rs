//! [`ApiError`]: a synchronous Compute API error as gce-sim answers it, and the
//! kinds of it the world raises.

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
    /// 400 `invalid` with `message`.
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            reason: "invalid",
            message: message.into(),
        }
    }

    /// 400 `invalid` naming the field, the value sent and what is wrong with it.
    pub(super) fn invalid_field(field: &str, value: &str, problem: &str) -> ApiError {
        ApiError::invalid(format!(
            "Invalid value for field '{field}': '{value}'. {problem}"
        ))
    }

    /// 400 `invalid` naming the field of the sent resource that does not decode, and why.
    pub(super) fn undecodable(error: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
        ApiError::invalid(format!(
            "Invalid value for field 'resource.{}': {}",
            error.path(),
            error.inner()
        ))
    }

    /// 400 `invalid` for a field of the sent body whose JSON does not fit its type in
    /// the discovery document, worded as Google's front end words it.
    pub(super) fn invalid_value(field: &str, proto_type: &str, shown: &str) -> ApiError {
        ApiError::invalid(format!(
            "Invalid value at '{field}' ({proto_type}), {shown}"
        ))
    }

    /// 400 `invalid` for a field `name` that the schema at `at` does not have, worded as
    /// Google's front end words it.
    pub(super) fn unknown_name(name: &str, at: &str) -> ApiError {
        ApiError::invalid(format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        ))
    }

    /// 400 `badRequest` with `message` (GCE's reason for some scheduling conflicts).
    pub(super) fn bad_request(message: &str) -> ApiError {
        ApiError {
            status: 400,
            reason: "badRequest",
            message: message.to_string(),
        }
    }

    /// 400 `parseError`: the body is not JSON.
    pub(super) fn parse_error(error: &serde_json::Error) -> ApiError {
        ApiError {
            status: 400,
            reason: "parseError",
            message: format!("Invalid JSON payload received. {error}"),
        }
    }

    /// 500 `backendError`: a reply could not be rendered.
    pub(super) fn backend(error: &serde_json::Error) -> ApiError {
        ApiError {
            status: 500,
            reason: "backendError",
            message: error.to_string(),
        }
    }

    /// 404 `notFound` for `resource`.
    pub(super) fn not_found(resource: &str) -> ApiError {
        ApiError {
            status: 404,
            reason: "notFound",
            message: format!("The resource '{resource}' was not found"),
        }
    }

    /// 409 `alreadyExists` for `resource`.
    pub(super) fn already_exists(resource: &str) -> ApiError {
        ApiError {
            status: 409,
            reason: "alreadyExists",
            message: format!("The resource '{resource}' already exists"),
        }
    }

    /// 400 `resourceNotReady` for `resource`.
    pub(super) fn not_ready(resource: &str) -> ApiError {
        ApiError {
            status: 400,
            reason: "resourceNotReady",
            message: format!("The resource '{resource}' is not ready"),
        }
    }
}
