//! Checking a pool's `instance` template the way the agent will use it: `{project}`,
//! `{zone}` and `{name}` replaced in every string, the name set by pm, the label
//! `pm-pool=<pool>` added, and the fields pm and GCE depend on of the right type.
//!
//! pmctl depends on `proto` and `etcd` only, so this mirrors the agent's renderer for what a
//! config can get wrong; GCE itself still judges the rest (machine types, images) on insert.

use serde_json::{Map, Value};

use crate::validation::{json_type, Problem, MAX_NAME_LEN};

/// The label that marks an instance as a member of a pool.
pub const POOL_LABEL: &str = "pm-pool";

/// Fields GCE sets and a template must not: they would be ignored or refused.
const OUTPUT_ONLY: [&str; 7] = [
    "id",
    "status",
    "selfLink",
    "creationTimestamp",
    "lastStartTimestamp",
    "lastStopTimestamp",
    "labelFingerprint",
];

/// The values substituted for one instance.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// Replaces `{project}`.
    pub project: &'a str,
    /// Replaces `{zone}`.
    pub zone: &'a str,
    /// Replaces `{name}`.
    pub name: &'a str,
}

/// `value` with the placeholders replaced in every string.
pub fn substitute(value: &Value, vars: Vars<'_>) -> Value {
    match value {
        Value::String(text) => Value::String(
            text.replace("{project}", vars.project)
                .replace("{zone}", vars.zone)
                .replace("{name}", vars.name),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, vars)))
                .collect(),
        ),
        Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
    }
}

/// Problems of a label key or value: at most 63 of lowercase letters, digits, `-`, `_`;
/// a key is non-empty and starts with a letter.
fn label_problem(text: &str, key: bool) -> Option<String> {
    let what = if key { "label key" } else { "label value" };
    if text.chars().count() > MAX_NAME_LEN {
        return Some(format!(
            "{what} {text:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if key && !text.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some(format!(
            "{what} {text:?} must start with a lowercase letter"
        ));
    }
    text.chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        .map(|c| format!("{what} {text:?} holds {c:?}; only lowercase letters, digits, '-' and '_' are allowed"))
}

/// Checks that `object[field]`, when present, satisfies `ok`.
fn typed(
    object: &Map<String, Value>,
    path: &str,
    field: &str,
    expected: &str,
    ok: fn(&Value) -> bool,
    problems: &mut Vec<Problem>,
) {
    if let Some(value) = object.get(field) {
        if !ok(value) {
            problems.push(Problem {
                field: format!("{path}.{field}"),
                message: format!("must be {expected}, found {}", json_type(value)),
            });
        }
    }
}

fn is_list_of_objects(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| items.iter().all(Value::is_object))
}

fn is_list_of_strings(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| items.iter().all(Value::is_string))
}

/// Checks a string field against the values GCE accepts.
fn one_of(
    object: &Map<String, Value>,
    path: &str,
    field: &str,
    allowed: &[&str],
    problems: &mut Vec<Problem>,
) {
    let Some(value) = object.get(field) else {
        return;
    };
    if !value.as_str().is_some_and(|v| allowed.contains(&v)) {
        problems.push(Problem {
            field: format!("{path}.{field}"),
            message: format!("must be one of {}, found {value}", allowed.join(", ")),
        });
    }
}

/// The problems of `template` rendered for one instance of `pool` with `vars`; empty when
/// the agent can build a valid Instance from it.
pub fn check(template: &Value, pool: &str, vars: Vars<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let problem = |field: &str, message: String| Problem {
        field: field.to_string(),
        message,
    };
    let Value::Object(raw) = template else {
        return vec![problem(
            "instance",
            format!(
                "must be an object (a GCE Instance resource), found {}",
                json_type(template)
            ),
        )];
    };
    if let Some(name) = raw.get("name") {
        if name.as_str() != Some("{name}") {
            problems.push(problem(
                "instance.name",
                format!("must be \"{{name}}\" or left out (pm names each instance), found {name}"),
            ));
        }
    }
    for field in OUTPUT_ONLY {
        if raw.contains_key(field) {
            problems.push(problem(
                &format!("instance.{field}"),
                "is set by GCE; leave it out of the template".into(),
            ));
        }
    }
    let Value::Object(object) = substitute(template, vars) else {
        return problems;
    };
    match object.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (key, value) in labels {
                let path = format!("instance.labels.{key}");
                let Some(text) = value.as_str() else {
                    problems.push(problem(
                        &path,
                        format!("must be a string, found {}", json_type(value)),
                    ));
                    continue;
                };
                if key == POOL_LABEL && text != pool {
                    problems.push(problem(
                        &path,
                        format!("pm sets this label to the pool name {pool:?}; leave it out"),
                    ));
                } else if let Some(message) =
                    label_problem(key, true).or_else(|| label_problem(text, false))
                {
                    problems.push(problem(&path, message));
                }
            }
        }
        Some(other) => problems.push(problem(
            "instance.labels",
            format!("must be an object of strings, found {}", json_type(other)),
        )),
    }
    let string = |v: &Value| v.is_string();
    let boolean = |v: &Value| v.is_boolean();
    let path = "instance";
    for field in [
        "machineType",
        "description",
        "minCpuPlatform",
        "hostname",
        "zone",
    ] {
        typed(&object, path, field, "a string", string, &mut problems);
    }
    for field in ["canIpForward", "deletionProtection"] {
        typed(
            &object,
            path,
            field,
            "true or false",
            boolean,
            &mut problems,
        );
    }
    for field in [
        "disks",
        "networkInterfaces",
        "serviceAccounts",
        "guestAccelerators",
    ] {
        typed(
            &object,
            path,
            field,
            "a list of objects",
            is_list_of_objects,
            &mut problems,
        );
    }
    typed(
        &object,
        path,
        "metadata",
        "an object",
        Value::is_object,
        &mut problems,
    );
    typed(
        &object,
        path,
        "tags",
        "an object",
        Value::is_object,
        &mut problems,
    );
    typed(
        &object,
        path,
        "scheduling",
        "an object",
        Value::is_object,
        &mut problems,
    );
    if let Some(Value::Object(metadata)) = object.get("metadata") {
        typed(
            metadata,
            "instance.metadata",
            "items",
            "a list of {key, value} objects",
            |items| {
                items.as_array().is_some_and(|items| {
                    items.iter().all(|item| {
                        item.get("key").is_some_and(Value::is_string)
                            && item.get("value").is_none_or(Value::is_string)
                    })
                })
            },
            &mut problems,
        );
    }
    if let Some(Value::Object(tags)) = object.get("tags") {
        typed(
            tags,
            "instance.tags",
            "items",
            "a list of strings",
            is_list_of_strings,
            &mut problems,
        );
    }
    if let Some(Value::Object(scheduling)) = object.get("scheduling") {
        let path = "instance.scheduling";
        for field in ["preemptible", "automaticRestart"] {
            typed(
                scheduling,
                path,
                field,
                "true or false",
                boolean,
                &mut problems,
            );
        }
        one_of(
            scheduling,
            path,
            "provisioningModel",
            &["SPOT", "STANDARD"],
            &mut problems,
        );
        one_of(
            scheduling,
            path,
            "instanceTerminationAction",
            &["STOP", "DELETE"],
            &mut problems,
        );
        one_of(
            scheduling,
            path,
            "onHostMaintenance",
            &["MIGRATE", "TERMINATE"],
            &mut problems,
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VARS: Vars<'static> = Vars {
        project: "proj",
        zone: "us-central1-a",
        name: "web-x0x0x0x0",
    };

    #[test]
    fn placeholders_are_replaced_everywhere() {
        let template = json!({"a": ["{zone}", {"b": "projects/{project}/x/{name}"}], "n": 1});
        assert_eq!(
            substitute(&template, VARS),
            json!({"a": ["us-central1-a", {"b": "projects/proj/x/web-x0x0x0x0"}], "n": 1})
        );
    }

    #[test]
    fn labels_are_checked_after_substitution() {
        let ok = json!({"labels": {"zone": "{zone}", "pm-pool": "web"}});
        assert_eq!(check(&ok, "web", VARS), vec![]);
        let bad = json!({"labels": {"Team": "x", "env": "{project}!", "pm-pool": "other", "n": 1}});
        let fields: Vec<String> = check(&bad, "web", VARS)
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "instance.labels.Team",
                "instance.labels.env",
                "instance.labels.n",
                "instance.labels.pm-pool"
            ]
        );
    }

    #[test]
    fn types_of_the_fields_pm_and_gce_need_are_checked() {
        let template = json!({
            "name": "fixed",
            "id": "123",
            "machineType": 5,
            "disks": {"boot": true},
            "metadata": {"items": [{"key": "a", "value": 1}]},
            "tags": {"items": ["ok", 2]},
            "scheduling": {"preemptible": "yes", "provisioningModel": "spot"}
        });
        let fields: Vec<String> = check(&template, "web", VARS)
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "instance.name",
                "instance.id",
                "instance.machineType",
                "instance.disks",
                "instance.metadata.items",
                "instance.tags.items",
                "instance.scheduling.preemptible",
                "instance.scheduling.provisioningModel",
            ]
        );
        assert_eq!(check(&json!("x"), "web", VARS)[0].field, "instance");
    }
}
