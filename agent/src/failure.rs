//! The pure reaction to a failed operation: the kind of operation and GCE's error in,
//! what happens next out. This is the one place a failure maps to an action; the loop
//! in [`crate::active`] only carries the action out.

use std::time::Duration;

use pm_gce::compute::ApiCall;
use pm_gce::error::{ErrorClass, GceError};
use pm_proto::Severity;

use crate::decide::InFlight;
use crate::throttle;

/// How long a permanent error (a bad template) pauses creates unless the config changes.
pub const PERMANENT_PAUSE: Duration = Duration::from_secs(300);

/// What a failure leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The insert certainly failed and left no instance: remove its observed key. Only an
    /// insert whose outcome is unknown (no answer, or one that could not be read) keeps its
    /// key, to be resumed with its requestId: resuming a failed one would only replay its
    /// failure, since GCE answers a repeated requestId with the same operation.
    pub forget_intent: bool,
    /// What else to do.
    pub action: Action,
}

/// The action part of a [`Reaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GCE took the call and only its operation is slow to finish: follow the instance in
    /// the lists, without backing off (GCE's operations can lag for minutes while the
    /// instances are long up).
    FollowInLists,
    /// The zone is out of capacity: cancel the creates still queued, report the
    /// stockout to the scheduler, pause creates for the pool's exhaustion base, and run
    /// the exhausted hook.
    Stockout,
    /// Quota or a rate limit refused a create or restart: cancel the creates still
    /// queued and throttle creates ([`crate::throttle`]): one probe after the back-off,
    /// then a ramp as probes succeed. Events mark entering and leaving the throttle, not
    /// each refusal.
    Throttle,
    /// A transient failure, or quota or a rate limit refusing a delete: pause creates for
    /// `delay` (when the operation was a create or restart) and hold the next list for at
    /// least `min(delay, secondsToRest)`.
    BackOff {
        /// The next delay of the pool's operation back-off, or the `Retry-After` GCE sent
        /// when that is longer.
        delay: Duration,
        /// Whether creates pause.
        pause_creates: bool,
    },
    /// Retrying cannot help (a bad template, a missing resource): pause creates for
    /// [`PERMANENT_PAUSE`] (when the operation was a create or restart).
    Permanent {
        /// Whether creates pause.
        pause_creates: bool,
    },
    /// The instance already exists: the next list adopts it.
    Adopt,
    /// The instance or operation is gone (404 on `start` or on an operation `wait`):
    /// list again soon; creates are not paused.
    Relist,
}

/// What the operation was, in messages.
pub fn what(kind: InFlight) -> &'static str {
    match kind {
        InFlight::Creating => "create",
        InFlight::Deleting => "delete",
        InFlight::Starting => "restart",
        InFlight::Labelling => "adopt",
    }
}

/// The reaction to `error` of an operation of `kind`. `next_delay` advances the pool's
/// operation back-off; it is called only for [`Action::BackOff`].
pub fn react(kind: InFlight, error: &GceError, next_delay: impl FnOnce() -> Duration) -> Reaction {
    let class = error.class();
    let creating = matches!(kind, InFlight::Creating | InFlight::Starting);
    // A 404 of a start or a wait says nothing about the template: the instance or its
    // operation is gone, and only a list tells what is left.
    let gone = class == ErrorClass::NotFound
        && matches!(error.call(), Some(ApiCall::Start | ApiCall::WaitOperation));
    if gone {
        return Reaction {
            forget_intent: false,
            action: Action::Relist,
        };
    }
    let forget_intent = kind == InFlight::Creating
        && !error.outcome_unknown()
        && class != ErrorClass::AlreadyExists;
    let action = if let GceError::OperationTimeout { .. } = error {
        Action::FollowInLists
    } else {
        match class {
            ErrorClass::Stockout if creating => Action::Stockout,
            ErrorClass::Quota | ErrorClass::RateLimit if creating => Action::Throttle,
            ErrorClass::Quota
            | ErrorClass::RateLimit
            | ErrorClass::Retryable
            | ErrorClass::Stockout => Action::BackOff {
                delay: next_delay().max(throttle::told(error.retry_after())),
                pause_creates: creating,
            },
            ErrorClass::Permanent | ErrorClass::NotFound => Action::Permanent {
                pause_creates: creating,
            },
            ErrorClass::AlreadyExists => Action::Adopt,
        }
    };
    Reaction {
        forget_intent,
        action,
    }
}

/// The event a reaction records: kind, severity and message; `None` for an adoption,
/// which is only logged, and for a throttle, whose events mark its state changes
/// ([`crate::throttle::entered`], [`crate::throttle::left`]).
pub fn event(
    kind: InFlight,
    name: &str,
    error: &GceError,
    action: &Action,
) -> Option<(String, Severity, String)> {
    let what = what(kind);
    let class = error.class();
    match action {
        Action::FollowInLists => Some((
            format!("{what}-slow"),
            Severity::Warning,
            format!("{what} of {name} not finished yet; following it in the lists: {error}"),
        )),
        Action::Stockout => {
            let details = error.stockout_details().describe();
            let details = if details.is_empty() {
                String::new()
            } else {
                format!(" ({details})")
            };
            Some((
                "stockout".into(),
                Severity::Warning,
                format!("{what} of {name} failed: zone out of capacity{details}: {error}"),
            ))
        }
        Action::BackOff { delay, .. } => Some((
            format!("{what}-failed"),
            Severity::Warning,
            format!("{what} of {name} failed ({class:?}), backing off {delay:?}: {error}"),
        )),
        Action::Permanent { .. } => {
            let cause = match error.existing_resource() {
                Some(resource) => format!(
                    "the template names {resource}, which already exists (a fixed diskName?); "
                ),
                None => String::new(),
            };
            Some((
                format!("{what}-failed"),
                Severity::Error,
                format!("{what} of {name} failed permanently: {cause}{error}"),
            ))
        }
        Action::Relist => Some((
            format!("{what}-gone"),
            Severity::Info,
            format!(
                "{what} of {name}: the instance or its operation is gone; listing again: {error}"
            ),
        )),
        Action::Adopt | Action::Throttle => None,
    }
}

/// The GCE error code of a stockout, for the scheduler's report.
pub fn stockout_code(error: &GceError) -> String {
    match error {
        GceError::OperationFailed { errors, .. } => errors
            .iter()
            .map(|x| x.code.clone())
            .find(|c| c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED"))
            .unwrap_or_else(|| "ZONE_RESOURCE_POOL_EXHAUSTED".into()),
        _ => "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
    }
}

#[cfg(test)]
mod tests {
    use pm_gce::compute::ApiCall;

    use super::*;

    const DELAY: Duration = Duration::from_secs(4);

    fn stockout_operation() -> GceError {
        GceError::OperationFailed {
            operation: "op-1".into(),
            operation_type: "insert".into(),
            target: "w-a".into(),
            http_status: Some(503),
            http_message: Some("Service Unavailable".into()),
            errors: vec![pm_gce::OperationErrorItem {
                code: "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS".into(),
                message: Some("no capacity".into()),
                location: None,
                error_details: Vec::new(),
            }],
        }
    }

    fn timeout() -> GceError {
        GceError::OperationTimeout {
            operation: "op-1".into(),
            waited: Duration::from_secs(60),
            last_status: "RUNNING".into(),
        }
    }

    #[test]
    fn a_stockout_of_a_create_reports_the_zone_and_forgets_the_intent() {
        let r = react(InFlight::Creating, &stockout_operation(), || DELAY);
        assert_eq!(
            r,
            Reaction {
                forget_intent: true,
                action: Action::Stockout
            }
        );
        assert_eq!(
            stockout_code(&stockout_operation()),
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
        );
        let (kind, severity, message) =
            event(InFlight::Creating, "w-a", &stockout_operation(), &r.action).expect("event");
        assert_eq!((kind.as_str(), severity), ("stockout", Severity::Warning));
        assert!(message.contains("zone out of capacity"), "{message}");
        let restart = react(InFlight::Starting, &stockout_operation(), || DELAY);
        assert_eq!(restart.action, Action::Stockout);
        assert!(!restart.forget_intent, "a restart has no intent to forget");
    }

    #[test]
    fn quota_and_rate_limits_throttle_creates_without_an_event_per_call() {
        for error in [
            GceError::http(ApiCall::Insert, 403, "quotaExceeded", "quota"),
            GceError::http(ApiCall::Insert, 429, "rateLimitExceeded", "slow down"),
            GceError::http(ApiCall::Insert, 403, "rateLimitExceeded", "slow down"),
        ] {
            let r = react(InFlight::Creating, &error, || {
                panic!("the throttle has its own back-off")
            });
            assert!(r.forget_intent, "{error}");
            assert_eq!(r.action, Action::Throttle, "{error}");
            assert_eq!(event(InFlight::Creating, "w-a", &error, &r.action), None);
            let restart = react(InFlight::Starting, &error, || DELAY);
            assert_eq!(restart.action, Action::Throttle, "{error}");
        }
        let transient = GceError::http(ApiCall::Insert, 503, "backendError", "oops");
        let r = react(InFlight::Creating, &transient, || DELAY);
        let (kind, _, message) =
            event(InFlight::Creating, "w-a", &transient, &r.action).expect("event");
        assert_eq!(kind, "create-failed");
        assert!(message.contains("backing off 4s"), "{message}");
        let mut limited = GceError::http(ApiCall::Delete, 429, "rateLimitExceeded", "slow down");
        let delete = react(InFlight::Deleting, &limited, || DELAY);
        assert_eq!(
            delete,
            Reaction {
                forget_intent: false,
                action: Action::BackOff {
                    delay: DELAY,
                    pause_creates: false
                }
            }
        );
        if let GceError::Http { retry_after, .. } = &mut limited {
            *retry_after = Some(Duration::from_secs(30));
        }
        let told = react(InFlight::Deleting, &limited, || DELAY);
        assert_eq!(
            told.action,
            Action::BackOff {
                delay: Duration::from_secs(30),
                pause_creates: false
            },
            "the Retry-After GCE sent is waited"
        );
    }

    #[test]
    fn a_slow_operation_is_followed_without_back_off() {
        let r = react(InFlight::Creating, &timeout(), || {
            panic!("a slow operation must not advance the back-off")
        });
        assert_eq!(
            r,
            Reaction {
                forget_intent: false,
                action: Action::FollowInLists
            }
        );
        let (kind, ..) = event(InFlight::Creating, "w-a", &timeout(), &r.action).expect("event");
        assert_eq!(kind, "create-slow");
    }

    #[test]
    fn a_start_or_wait_that_finds_nothing_lists_again_without_pausing() {
        for (kind, call) in [
            (InFlight::Starting, ApiCall::Start),
            (InFlight::Creating, ApiCall::WaitOperation),
            (InFlight::Deleting, ApiCall::WaitOperation),
        ] {
            let gone = GceError::http(call, 404, "notFound", "The resource was not found");
            let r = react(kind, &gone, || panic!("no back-off"));
            assert_eq!(
                r,
                Reaction {
                    forget_intent: false,
                    action: Action::Relist
                },
                "{call}"
            );
            let (event, severity, _) = event(kind, "w-a", &gone, &r.action).expect("event");
            assert!(event.ends_with("-gone"), "{event}");
            assert_eq!(severity, Severity::Info);
        }
        let missing_image = GceError::http(ApiCall::Insert, 404, "notFound", "image not found");
        let r = react(InFlight::Creating, &missing_image, || DELAY);
        assert_eq!(
            r.action,
            Action::Permanent {
                pause_creates: true
            },
            "a 404 of the insert itself is the template's"
        );
    }

    #[test]
    fn a_disk_that_exists_is_a_template_error_naming_the_disk() {
        let disk = GceError::http(
            ApiCall::Insert,
            409,
            "alreadyExists",
            "The resource 'projects/p/zones/z/disks/web-boot' already exists",
        );
        let r = react(InFlight::Creating, &disk, || DELAY);
        assert_eq!(
            r,
            Reaction {
                forget_intent: true,
                action: Action::Permanent {
                    pause_creates: true
                }
            }
        );
        let (_, severity, message) =
            event(InFlight::Creating, "w-a", &disk, &r.action).expect("event");
        assert_eq!(severity, Severity::Error);
        assert!(
            message.contains("the template names projects/p/zones/z/disks/web-boot"),
            "{message}"
        );
    }

    #[test]
    fn stockout_details_are_kept_on_the_event() {
        let mut error = stockout_operation();
        if let GceError::OperationFailed { errors, .. } = &mut error {
            errors[0].error_details = vec![serde_json::json!({"errorInfo": {
                "reason": "configuration_availability",
                "metadatas": {"zonesAvailable": "us-central1-a,us-central1-f"}
            }})];
        }
        let r = react(InFlight::Creating, &error, || DELAY);
        let (_, _, message) = event(InFlight::Creating, "w-a", &error, &r.action).expect("event");
        assert!(
            message.contains(
                "(reason configuration_availability; zones with capacity: us-central1-a, us-central1-f)"
            ),
            "{message}"
        );
    }

    #[test]
    fn permanent_errors_pause_creates_and_existing_instances_are_adopted() {
        let bad = GceError::http(ApiCall::Insert, 400, "invalid", "bad machine type");
        let r = react(InFlight::Creating, &bad, || DELAY);
        assert_eq!(
            r,
            Reaction {
                forget_intent: true,
                action: Action::Permanent {
                    pause_creates: true
                }
            }
        );
        let (_, severity, _) = event(InFlight::Creating, "w-a", &bad, &r.action).expect("event");
        assert_eq!(severity, Severity::Error);
        let exists = GceError::http(
            ApiCall::Insert,
            409,
            "alreadyExists",
            "The resource 'projects/p/zones/z/instances/w-a' already exists",
        );
        let r = react(InFlight::Creating, &exists, || DELAY);
        assert_eq!(
            r,
            Reaction {
                forget_intent: false,
                action: Action::Adopt
            }
        );
        assert_eq!(event(InFlight::Creating, "w-a", &exists, &r.action), None);
    }

    #[test]
    fn only_an_insert_whose_outcome_is_unknown_keeps_its_intent() {
        let mut failed_operation = stockout_operation();
        if let GceError::OperationFailed {
            errors,
            http_status,
            ..
        } = &mut failed_operation
        {
            errors[0].code = "INTERNAL_ERROR".into();
            *http_status = Some(500);
        }
        assert_eq!(failed_operation.class(), ErrorClass::Retryable);
        let r = react(InFlight::Creating, &failed_operation, || DELAY);
        assert!(
            r.forget_intent,
            "a DONE operation with an error failed: not resumed"
        );
        let refused = GceError::http(ApiCall::Insert, 500, "backendError", "oops");
        assert!(react(InFlight::Creating, &refused, || DELAY).forget_intent);
        assert!(!react(InFlight::Creating, &timeout(), || DELAY).forget_intent);
        let garbled = GceError::Decode {
            call: ApiCall::Insert,
            url: String::new(),
            status: 200,
            problem: "EOF".into(),
            snippet: String::new(),
        };
        assert!(
            !react(InFlight::Creating, &garbled, || DELAY).forget_intent,
            "an answer that cannot be read may hide a created instance"
        );
    }
}
