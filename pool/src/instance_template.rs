//! Checking a pool's `instance` template the way the agent will use it.
//!
//! The agent's own renderer, [`pm_gce::template::render`], must accept the template:
//! `{project}`, `{zone}` and `{name}` replaced in every string, the name set by pm, the
//! label `pm-pool=<pool>` added, and the result a valid, typed Instance (so the types of
//! `machineType`, `disks`, `metadata.items`, `scheduling.provisioningModel`, ... are
//! checked by its fields' types). Where it refuses a field, that field is left out and the
//! template rendered again, so one run reports every field it refuses. On top, this
//! checks what the renderer lets through but GCE or pm would not (output-only fields, a
//! `pm-pool` label naming another pool), reporting each label on its own. GCE itself still judges the
//! rest (machine types, images) on insert.

use pm_gce::template::{
    render, substitute, validate_label_key, validate_label_value, TemplateError, TemplateVars,
    POOL_LABEL,
};
use serde_json::Value;

use crate::problem::{json_type, Problem};

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

/// Removes the field at `path` (`a.b.c`) from `template`; false when there is none.
fn remove(template: &mut Value, path: &str) -> bool {
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().unwrap_or_default();
    let mut object = template;
    for key in keys {
        match object.get_mut(key) {
            Some(inner) => object = inner,
            None => return false,
        }
    }
    object
        .as_object_mut()
        .and_then(|object| object.remove(last))
        .is_some()
}

/// What [`render`] refuses in `template`, each on the field at fault (`instance` when the
/// error names none); the field is then left out and the rest rendered again.
fn render_problems(template: &Value, vars: TemplateVars<'_>) -> Vec<Problem> {
    let mut template = template.clone();
    let mut problems = Vec::new();
    while let Err(error) = render(&template, vars) {
        let path = match &error {
            TemplateError::NameMismatch { .. } => "name",
            TemplateError::Labels { .. } | TemplateError::Name(_) => "labels",
            // A problem inside a list is reported on (and removes) the whole list.
            TemplateError::Field { path, .. } => path.split('[').next().unwrap_or_default(),
            TemplateError::Json(_) | TemplateError::NotAnObject { .. } => "",
        }
        .to_string();
        let removed = remove(&mut template, &path);
        problems.push(Problem {
            field: if removed {
                format!("instance.{path}")
            } else {
                "instance".into()
            },
            message: match &error {
                TemplateError::Name(cause) => format!("{error}: {cause}"),
                _ => error.to_string(),
            },
        });
        if !removed {
            break;
        }
    }
    problems
}

/// What the renderer lets through but GCE or pm would not, one problem per field.
fn own_problems(template: &Value, vars: TemplateVars<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Value::Object(raw) = template else {
        return problems;
    };
    let problem = |field: &str, message: String| Problem {
        field: field.to_string(),
        message,
    };
    // Checked before substitution: a literal equal to one rendered name would pass render.
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
    let Value::Object(object) = substitute(template, &vars) else {
        return problems;
    };
    if let Some(Value::Object(labels)) = object.get("labels") {
        for (key, value) in labels {
            let path = format!("instance.labels.{key}");
            let Some(text) = value.as_str() else {
                problems.push(problem(
                    &path,
                    format!("must be a string, found {}", json_type(value)),
                ));
                continue;
            };
            if key == POOL_LABEL && text != vars.pool {
                problems.push(problem(
                    &path,
                    format!(
                        "pm sets this label to the pool name {:?}; leave it out",
                        vars.pool
                    ),
                ));
            } else if let Err(error) =
                validate_label_key(key).and_then(|()| validate_label_value(text))
            {
                problems.push(problem(&path, error.to_string()));
            }
        }
    }
    problems
}

/// The problems of `template` rendered for one instance with `vars`; empty when the agent
/// can build a valid Instance from it. A renderer's problem on a field pmctl already
/// reported (or on `labels`, whose labels pmctl reports one by one) is not repeated.
pub fn check(template: &Value, vars: TemplateVars<'_>) -> Vec<Problem> {
    let mut problems = own_problems(template, vars);
    for problem in render_problems(template, vars) {
        let inside = format!("{}.", problem.field);
        let covered = problems.iter().any(|p| {
            p.field == problem.field
                || (problem.field != "instance" && p.field.starts_with(&inside))
        });
        if !covered {
            problems.push(problem);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VARS: TemplateVars<'static> = TemplateVars {
        project: "proj",
        zone: "us-central1-a",
        name: "web-x0x0x0x0",
        pool: "web",
    };

    fn fields(template: &Value) -> Vec<String> {
        check(template, VARS).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn labels_are_checked_after_substitution() {
        let ok = json!({"labels": {"zone": "{zone}", "pm-pool": "web"}});
        assert_eq!(check(&ok, VARS), vec![]);
        let bad = json!({"labels": {"Team": "x", "env": "{project}!", "pm-pool": "other", "n": 1}});
        assert_eq!(
            fields(&bad),
            vec![
                "instance.labels.Team",
                "instance.labels.env",
                "instance.labels.n",
                "instance.labels.pm-pool"
            ]
        );
        let problems = check(&json!({"labels": null}), VARS);
        assert_eq!(problems[0].field, "instance.labels");
        assert!(problems[0].message.contains("object of strings"));
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
        let mut found = fields(&template);
        found.sort_unstable();
        assert_eq!(
            found,
            vec![
                "instance.disks",
                "instance.id",
                "instance.machineType",
                "instance.metadata.items",
                "instance.name",
                "instance.scheduling.preemptible",
                "instance.scheduling.provisioningModel",
                "instance.tags.items",
            ]
        );
        let problems = check(&template, VARS);
        let model = problems
            .iter()
            .find(|p| p.field == "instance.scheduling.provisioningModel")
            .expect("reported");
        assert!(model.message.contains("SPOT"), "{model:?}");
        assert_eq!(fields(&json!("x")), vec!["instance"]);
    }

    #[test]
    fn every_field_the_renderer_refuses_is_reported_with_its_message() {
        let template = json!({
            "zone": 5,
            "scheduling": {"preemptible": "yes", "automaticRestart": 1}
        });
        let problems = check(&template, VARS);
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "instance.scheduling.automaticRestart",
                "instance.scheduling.preemptible",
                "instance.zone",
            ]
        );
        assert!(
            problems[1]
                .message
                .contains("`scheduling.preemptible` is invalid"),
            "{problems:?}"
        );
        let vars = TemplateVars {
            pool: "Web Pool",
            ..VARS
        };
        let problems = check(&json!({}), vars);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "instance");
        assert!(problems[0].message.contains("\"Web Pool\""), "{problems:?}");
    }
}
