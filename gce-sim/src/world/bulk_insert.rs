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
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let request: BulkInsertRequest = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| ApiError::undecodable(&e))?;
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
        for name in &names {
            let mut body = properties.clone();
            body.insert("name".into(), Value::String(name.clone()));
            specs.push(parse_instance(Value::Object(body), project, zone, true)?);
        }
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

    use crate::world::test_support::world;
    use crate::world::{ApiError, Mutation, World};

    fn bulk_insert(w: &mut World, request: &Value) -> Result<Operation, ApiError> {
        let body = serde_json::to_vec(request).expect("json");
        w.mutate("p", "z1", Mutation::BulkInsert(&body), None)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bulk_insert_creates_names_from_the_pattern_and_respects_min_count() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let request = json!({
            "count": "2", "namePattern": "web-##",
            "instanceProperties": {"machineType": "e2-small", "labels": {"pm-pool": "web"}}
        });
        let op = bulk_insert(&mut w, &request).expect("bulk");
        assert!(op.error.is_none());
        assert!(w.get_instance("p", "z1", "web-01").is_ok());
        assert!(w.get_instance("p", "z1", "web-02").is_ok());
        let request = json!({
            "count": "3", "minCount": "2", "namePattern": "web-##",
            "instanceProperties": {"machineType": "e2-small"}
        });
        let op = bulk_insert(&mut w, &request).expect("bulk");
        assert!(op.error.is_some(), "one slot left, minCount 2");
        assert!(w.get_instance("p", "z1", "web-03").is_err());
        for pattern in ["web", "a#é#", "a##b#", "x##########"] {
            let request = json!({
                "count": "1", "namePattern": pattern,
                "instanceProperties": {"machineType": "e2-small"}
            });
            let error = bulk_insert(&mut w, &request).expect_err(pattern);
            assert!(error.message.contains("namePattern"), "{}", error.message);
        }
    }
}
