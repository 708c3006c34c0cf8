//! `instances.bulkInsert`: request checks, the names it creates (explicit ones, then
//! from the name pattern), and `minCount` against the zone's free capacity.

use pm_gce::resources::BulkInsertRequest;
use pm_gce::template::validate_name;
use serde_json::Value;

use super::instance_spec::parse_instance;
use super::operations::NewOperation;
use super::{instance_path, ApiError, World};
use crate::clock::resource_id;

impl World {
    /// `instances.bulkInsert`.
    pub(super) fn bulk_insert(
        &mut self,
        project: &str,
        zone: &str,
        body: &[u8],
    ) -> Result<NewOperation, ApiError> {
        let value = self.request_body(body, "BulkInsertInstanceResource")?;
        let request: BulkInsertRequest =
            serde_path_to_error::deserialize(value).map_err(|e| ApiError::undecodable(&e))?;
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
        let place = self.placement(project, zone)?;
        for name in &names {
            let mut body = properties.clone();
            body.insert("name".into(), Value::String(name.clone()));
            specs.push(parse_instance(Value::Object(body), &place, true)?);
        }
        self.check_disk_names(project, zone, specs.iter().flat_map(|s| &s.disks))?;
        let z = self.zone_mut(project, zone)?;
        let available = z.capacity.saturating_sub(z.live);
        let creatable = available.min(request.count) as usize;
        let first = names.first().cloned().unwrap_or_default();
        let failure = if (creatable as u64) < min_count {
            let body = specs.first().map_or(&[][..], |spec| &spec.body[..]);
            Some(self.stockout(project, zone, body))
        } else {
            for spec in specs.iter().take(creatable) {
                let id = resource_id(&mut self.rng);
                self.create(project, zone, id, spec)?;
            }
            None
        };
        Ok(self.new_operation("bulkInsert", &first, 0, failure))
    }

    /// The names a bulk insert creates: the explicit ones, then from the pattern.
    fn bulk_names(
        &mut self,
        project: &str,
        zone: &str,
        request: &BulkInsertRequest,
    ) -> Result<Vec<String>, ApiError> {
        let z = self.zone_mut(project, zone)?;
        let exists = |name: &str| z.holds(project, name);
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pm_gce::resources::Operation;
    use serde_json::{json, Value};

    use crate::world::test_support::{instance, world};
    use crate::world::{ApiError, Mutation, World};

    fn bulk_insert(w: &mut World, request: &Value) -> Result<Operation, ApiError> {
        let body = serde_json::to_vec(request).expect("json");
        w.mutate("p", "z1", Mutation::BulkInsert(&body), None)
    }

    /// Instance properties of a valid instance, with a bare machine type.
    fn properties() -> Value {
        let mut properties = instance("unused");
        let fields = properties.as_object_mut().expect("object");
        fields.remove("name");
        fields.insert("machineType".into(), json!("e2-small"));
        properties
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bulk_insert_creates_names_from_the_pattern_and_respects_min_count() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let request = json!({
            "count": "2", "namePattern": "web-##", "instanceProperties": properties()
        });
        let op = bulk_insert(&mut w, &request).expect("bulk");
        assert!(op.error.is_none());
        assert!(w.get_instance("p", "z1", "web-01").is_ok());
        assert!(w.get_instance("p", "z1", "web-02").is_ok());
        let request = json!({
            "count": "3", "minCount": "2", "namePattern": "web-##",
            "instanceProperties": properties()
        });
        let op = bulk_insert(&mut w, &request).expect("bulk");
        assert!(op.error.is_some(), "one slot left, minCount 2");
        assert!(w.get_instance("p", "z1", "web-03").is_err());
        for pattern in ["web", "a#é#", "a##b#", "x##########"] {
            let request = json!({
                "count": "1", "namePattern": pattern, "instanceProperties": properties()
            });
            let error = bulk_insert(&mut w, &request).expect_err(pattern);
            assert!(error.message.contains("namePattern"), "{}", error.message);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bulk_insert_checks_the_request_and_its_properties() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let mut fixed_disk = properties();
        fixed_disk["disks"][0]["initializeParams"]["diskName"] = json!("shared");
        let request =
            json!({"count": "2", "namePattern": "web-#", "instanceProperties": fixed_disk});
        let error = bulk_insert(&mut w, &request).expect_err("one disk name for two");
        assert_eq!((error.status, error.reason), (409, "alreadyExists"));
        assert!(
            error.message.contains("'projects/p/zones/z1/disks/shared'"),
            "{}",
            error.message
        );
        assert!(
            w.get_instance("p", "z1", "web-1").is_err(),
            "nothing created"
        );
        let mut unknown = properties();
        unknown["machineType"] = json!("e2-nonesuch");
        let cases = [
            (
                json!({"count": "1", "namePattern": "a-#", "bogus": 1}),
                "Unknown name \"bogus\" at 'resource'",
            ),
            (
                json!({"count": "one", "namePattern": "a-#", "instanceProperties": properties()}),
                "'resource.count' (TYPE_INT64)",
            ),
            (
                json!({"count": "1", "namePattern": "a-#", "instanceProperties": unknown}),
                "Machine type with name 'e2-nonesuch' does not exist in zone 'z1'",
            ),
        ];
        for (request, expected) in cases {
            let error = bulk_insert(&mut w, &request).expect_err(expected);
            assert_eq!(error.status, 400, "{request}");
            assert!(
                error.message.contains(expected),
                "{} lacks {expected}",
                error.message
            );
        }
    }
}
