//! Projects: `projects.get` with the project's common instance metadata, and
//! `projects.setCommonInstanceMetadata`, which GCE checks as it checks every metadata
//! write: the request's fingerprint must be the current one (412 `conditionNotMet`
//! otherwise, a missing one included), keys match `[a-zA-Z0-9-_]{1,128}` and appear
//! once, a value holds at most 256 KB and all of them together less than 512 KB. The
//! write is a global operation (`globalOperations.get` and `.wait`).

use std::collections::BTreeMap;

use pm_gce::resources::Operation;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::operations::{operation_view, Scope, SimOperation};
use super::{ApiError, World, URL_ROOT};
use crate::clock::resource_id;

/// Largest metadata value GCE takes.
const MAX_VALUE_BYTES: usize = 256 * 1024;

/// GCE's bound on all keys and values of one metadata together.
const MAX_TOTAL_BYTES: usize = 512 * 1024;

/// What the world keeps of one project.
#[derive(Default)]
pub(super) struct ProjectState {
    /// Its numeric id, drawn when the project is first used.
    id: u64,
    /// `commonInstanceMetadata.items`, in the order written.
    items: Vec<(String, String)>,
    /// Bumped by every write; the fingerprint is derived from it.
    generation: u64,
    /// Its global operations, by name.
    pub(super) operations: BTreeMap<String, SimOperation>,
}

impl ProjectState {
    fn fingerprint(&self) -> String {
        use base64::Engine;
        let bytes = (self.id ^ self.generation.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// Problems of metadata items, as GCE words them.
fn check_items(items: &[(String, String)]) -> Result<(), ApiError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for (i, (key, value)) in items.iter().enumerate() {
        let key_ok = (1..=128).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !key_ok {
            return Err(ApiError::invalid_field(
                &format!("resource.items[{i}].key"),
                key,
                "Must be a match of regex '[a-zA-Z0-9-_]{1,128}'",
            ));
        }
        if !seen.insert(key.as_str()) {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'resource.items[{i}].key': '{key}'. Duplicate keys are not allowed."
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'resource.items[{i}].value': the value of metadata key '{key}' exceeds 262144 bytes."
            )));
        }
        total += key.len() + value.len();
    }
    if total >= MAX_TOTAL_BYTES {
        return Err(ApiError::invalid(
            "Invalid value for field 'resource': metadata must be less than 524288 bytes in total.",
        ));
    }
    Ok(())
}

impl World {
    fn project_state(&mut self, project: &str) -> &mut ProjectState {
        let rng = &mut self.rng;
        self.projects
            .entry(project.to_string())
            .or_insert_with(|| ProjectState {
                id: resource_id(rng),
                ..ProjectState::default()
            })
    }

    /// `projects.get`: the project and its `commonInstanceMetadata`.
    pub fn get_project(&mut self, project: &str) -> Value {
        let state = self.project_state(project);
        let items: Vec<Value> = state
            .items
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value}))
            .collect();
        let mut metadata = json!({
            "kind": "compute#metadata",
            "fingerprint": state.fingerprint(),
        });
        if !items.is_empty() {
            metadata["items"] = Value::Array(items);
        }
        json!({
            "kind": "compute#project",
            "id": state.id.to_string(),
            "name": project,
            "selfLink": format!("{URL_ROOT}projects/{project}"),
            "commonInstanceMetadata": metadata,
        })
    }

    /// `projects.setCommonInstanceMetadata`: replaces every item, if the fingerprint sent
    /// is the current one. A repeated `requestId` gets the first operation back.
    pub fn set_common_instance_metadata(
        &mut self,
        project: &str,
        body: &[u8],
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(name) = request_id.and_then(|r| self.global_request(project, r)) {
            return self.get_global_operation(project, &name);
        }
        let value = self.request_body(body, "Metadata")?;
        let items: Vec<(String, String)> = value
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| {
                let text = |field: &str| {
                    item.get(field)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                (text("key"), text("value"))
            })
            .collect();
        check_items(&items)?;
        let sent = value.get("fingerprint").and_then(Value::as_str);
        let state = self.project_state(project);
        if sent != Some(state.fingerprint().as_str()) {
            return Err(ApiError {
                status: 412,
                reason: "conditionNotMet",
                message: "Supplied fingerprint does not match current metadata fingerprint.".into(),
            });
        }
        state.items = items;
        state.generation += 1;
        let id = state.id;
        let (name, op) = self.new_operation(
            "compute.projects.setCommonInstanceMetadata",
            project,
            id,
            None,
        );
        let view = operation_view(&Scope::Global(project), &name, &op, Instant::now());
        self.project_state(project)
            .operations
            .insert(name.clone(), op);
        if let Some(request_id) = request_id {
            self.global_request_ids
                .insert((project.to_string(), request_id.to_string()), name);
        }
        Ok(view)
    }

    /// The global operation a repeated `requestId` names.
    fn global_request(&self, project: &str, request_id: &str) -> Option<String> {
        let key = (project.to_string(), request_id.to_string());
        self.global_request_ids.get(&key).cloned()
    }

    fn global_operation(&mut self, project: &str, name: &str) -> Result<&SimOperation, ApiError> {
        self.project_state(project)
            .operations
            .get(name)
            .ok_or_else(|| {
                ApiError::not_found(&format!("projects/{project}/global/operations/{name}"))
            })
    }

    /// `globalOperations.get`.
    pub fn get_global_operation(
        &mut self,
        project: &str,
        name: &str,
    ) -> Result<Operation, ApiError> {
        let now = Instant::now();
        let op = self.global_operation(project, name)?;
        Ok(operation_view(&Scope::Global(project), name, op, now))
    }

    /// How long until the global operation is DONE (zero if it is).
    pub fn global_operation_remaining(
        &mut self,
        project: &str,
        name: &str,
    ) -> Result<std::time::Duration, ApiError> {
        let now = Instant::now();
        let op = self.global_operation(project, name)?;
        Ok(op.done_at().map_or(std::time::Duration::MAX, |done| {
            done.saturating_duration_since(now)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::world::test_support::world;

    fn metadata(fingerprint: &str, items: &[(&str, &str)]) -> Vec<u8> {
        let items: Vec<Value> = items
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        serde_json::to_vec(&json!({"fingerprint": fingerprint, "items": items})).unwrap()
    }

    fn fingerprint(w: &mut World) -> String {
        w.get_project("p")["commonInstanceMetadata"]["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn metadata_is_written_with_the_current_fingerprint_only() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let first = fingerprint(&mut w);
        assert!(w.get_project("p")["commonInstanceMetadata"]
            .get("items")
            .is_none());
        let op = w
            .set_common_instance_metadata("p", &metadata(&first, &[("prevmtable", "{}")]), None)
            .expect("written");
        assert_eq!(op.zone, None, "a global operation");
        assert!(op
            .self_link
            .unwrap()
            .ends_with(&format!("/global/operations/{}", op.name)));
        let got = w.get_project("p");
        assert_eq!(
            got["commonInstanceMetadata"]["items"][0]["key"],
            "prevmtable"
        );
        let second = fingerprint(&mut w);
        assert_ne!(second, first, "every write changes it");
        let stale = w
            .set_common_instance_metadata("p", &metadata(&first, &[]), None)
            .expect_err("stale");
        assert_eq!((stale.status, stale.reason), (412, "conditionNotMet"));
        let none = w
            .set_common_instance_metadata("p", br#"{"items": []}"#, None)
            .expect_err("no fingerprint");
        assert_eq!(none.status, 412);
        assert_eq!(
            w.get_global_operation("p", &op.name).expect("kept").name,
            op.name
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_items_are_refused_as_gce_refuses_them() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let f = fingerprint(&mut w);
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("bad key", "v")], "regex"),
            (vec![("k", "a"), ("k", "b")], "Duplicate"),
            (vec![("k", big.as_str())], "exceeds"),
        ];
        for (items, text) in cases {
            let e = w
                .set_common_instance_metadata("p", &metadata(&f, &items), None)
                .expect_err("refused");
            assert_eq!(e.status, 400);
            assert!(e.message.contains(text), "{}", e.message);
        }
        let unknown = w
            .set_common_instance_metadata("p", br#"{"fingerprint": "x", "itemz": []}"#, None)
            .expect_err("unknown field");
        assert!(
            unknown.message.contains("Unknown name"),
            "{}",
            unknown.message
        );
    }
}
