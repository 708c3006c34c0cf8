//! The report an agent writes when a zone cannot take more instances of a pool, for the
//! scheduler to exhaust the zone and move its share: a stockout, and the other create
//! errors that are the zone's, not the pool's, each with its class
//! ([`zone_error_class`]): a quota of the zone's region, or a 400 that names the zone,
//! quoted (a machine type it does not offer, or one of another zone).

use pm_gce::error::{ErrorClass, GceError};
use pm_proto::{ExhaustionClass, ExhaustionReport};

/// The class of a failed create that is the zone's own persistent problem, other than a
/// stockout; `None` for one that moving to another zone would not cure.
pub fn zone_error_class(error: &GceError, zone: &str) -> Option<ExhaustionClass> {
    let text = error.to_string();
    match error.class() {
        ErrorClass::Quota if text.contains("region") => Some(ExhaustionClass::Quota),
        ErrorClass::Permanent if text.contains(&format!("'{zone}'")) => {
            Some(ExhaustionClass::ZoneError)
        }
        _ => None,
    }
}

/// The report of `error`, of `class`, GCE's error `code` (empty when there is none to
/// tell), by `agent_id`, seen at `observed_unix_ms`.
pub fn report(
    error: &GceError,
    class: ExhaustionClass,
    code: String,
    agent_id: &str,
    observed_unix_ms: i64,
) -> ExhaustionReport {
    ExhaustionReport {
        observed_unix_ms,
        code,
        message: error.to_string(),
        agent_id: agent_id.to_string(),
        class: class as i32,
    }
}

#[cfg(test)]
mod tests {
    use pm_gce::compute::ApiCall;
    use pm_gce::resources::ErrorItem;

    use super::*;

    fn http(status: u16, reason: &str, message: &str) -> GceError {
        GceError::Http {
            call: ApiCall::Insert,
            url: "https://compute/zones/z1/instances".into(),
            status,
            message: message.into(),
            errors: vec![ErrorItem {
                reason: reason.into(),
                message: message.into(),
                domain: String::new(),
            }],
            retry_after: None,
        }
    }

    #[test]
    fn a_regional_quota_and_a_400_naming_the_zone_are_the_zones() {
        let regional = http(
            403,
            "quotaExceeded",
            "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1.",
        );
        assert_eq!(
            zone_error_class(&regional, "z1"),
            Some(ExhaustionClass::Quota)
        );
        let machine = http(
            400,
            "invalid",
            "Invalid value for field 'resource.machineType': 'zones/z1/machineTypes/e2-huge'. Machine type with name 'e2-huge' does not exist in zone 'z1'.",
        );
        assert_eq!(
            zone_error_class(&machine, "z1"),
            Some(ExhaustionClass::ZoneError)
        );
        let report = report(&machine, ExhaustionClass::ZoneError, String::new(), "a1", 7);
        assert_eq!(report.class(), ExhaustionClass::ZoneError);
        assert_eq!(
            (report.agent_id.as_str(), report.observed_unix_ms),
            ("a1", 7)
        );
    }

    #[test]
    fn a_project_quota_or_a_bad_template_is_not() {
        let global = http(403, "quotaExceeded", "Quota 'INSTANCES' exceeded.");
        assert_eq!(zone_error_class(&global, "z1"), None);
        let template = http(400, "invalid", "Invalid value for field 'resource.name'.");
        assert_eq!(zone_error_class(&template, "z1"), None);
        let other_zone = http(400, "invalid", "does not exist in zone 'z2'.");
        assert_eq!(zone_error_class(&other_zone, "z"), None, "not a prefix");
        assert_eq!(zone_error_class(&other_zone, "z1"), None);
    }
}
