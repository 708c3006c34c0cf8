//! Rendering a pool's instance template into an [`Instance`], and GCE name rules.

use serde_json::{Map, Value};

use crate::resources::Instance;

/// The label that marks an instance as a member of a pool.
pub const POOL_LABEL: &str = "pm-pool";

/// Longest name, label key or label value GCE accepts.
pub const MAX_NAME_LEN: usize = 63;

/// What a name or label breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty where a value is required.
    #[error("{what} is empty")]
    Empty {
        /// What was checked ("instance name", "label key", ...).
        what: &'static str,
    },
    /// Longer than [`MAX_NAME_LEN`].
    #[error("{what} {value:?} is {len} characters long; the limit is 63")]
    TooLong {
        /// What was checked.
        what: &'static str,
        /// The value.
        value: String,
        /// Its length in characters.
        len: usize,
    },
    /// A character outside the allowed set, or in a place where it is not allowed.
    #[error("{what} {value:?}: {problem}")]
    BadCharacter {
        /// What was checked.
        what: &'static str,
        /// The value.
        value: String,
        /// Which character and why.
        problem: String,
    },
}

/// Checks an instance name: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    validate_resource_name("instance name", name)
}

/// Checks any GCE resource name (zone, instance, ...) against the rule of
/// [`validate_name`]; errors call it `what`.
pub fn validate_resource_name(what: &'static str, name: &str) -> Result<(), NameError> {
    check_length(what, name, false)?;
    let bad = |problem: String| NameError::BadCharacter {
        what,
        value: name.to_string(),
        problem,
    };
    let first = name.chars().next().unwrap_or('a');
    if !first.is_ascii_lowercase() {
        return Err(bad(format!(
            "must start with a lowercase letter, not {first:?}"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(bad(format!(
            "{c:?} is not allowed (only lowercase letters, digits and '-')"
        )));
    }
    if name.ends_with('-') {
        return Err(bad("must not end with '-'".to_string()));
    }
    Ok(())
}

/// Checks a label key: starts with a lowercase letter, then lowercase letters, digits,
/// `-` and `_`, at most 63 characters.
pub fn validate_label_key(key: &str) -> Result<(), NameError> {
    const WHAT: &str = "label key";
    check_length(WHAT, key, false)?;
    let first = key.chars().next().unwrap_or('a');
    if !first.is_ascii_lowercase() {
        return Err(NameError::BadCharacter {
            what: WHAT,
            value: key.to_string(),
            problem: format!("must start with a lowercase letter, not {first:?}"),
        });
    }
    check_label_chars(WHAT, key)
}

/// Checks a label value: lowercase letters, digits, `-` and `_`, at most 63 characters,
/// possibly empty.
pub fn validate_label_value(value: &str) -> Result<(), NameError> {
    const WHAT: &str = "label value";
    check_length(WHAT, value, true)?;
    check_label_chars(WHAT, value)
}

fn check_length(what: &'static str, value: &str, empty_ok: bool) -> Result<(), NameError> {
    let len = value.chars().count();
    if len == 0 && !empty_ok {
        return Err(NameError::Empty { what });
    }
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            value: value.to_string(),
            len,
        });
    }
    Ok(())
}

fn check_label_chars(what: &'static str, value: &str) -> Result<(), NameError> {
    match value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(NameError::BadCharacter {
            what,
            value: value.to_string(),
            problem: format!("{c:?} is not allowed (only lowercase letters, digits, '-' and '_')"),
        }),
        None => Ok(()),
    }
}

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template text is not JSON.
    #[error("instance template is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// The template is JSON but not an object.
    #[error("instance template must be a JSON object, not {found}")]
    NotAnObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// The template's `name` renders to something other than the instance's name.
    #[error("instance template field `name` renders to {rendered}, expected {expected:?} (use \"{{name}}\" or omit it)")]
    NameMismatch {
        /// The rendered value (as JSON).
        rendered: String,
        /// The instance name.
        expected: String,
    },
    /// `labels` is not an object of strings.
    #[error("instance template field `labels` must be an object of strings: {problem}")]
    Labels {
        /// What is wrong.
        problem: String,
    },
    /// The instance name or a label breaks GCE's rules.
    #[error("instance template: invalid name")]
    Name(#[source] NameError),
    /// A field has the wrong type for an Instance.
    #[error("instance template field `{path}` is invalid: {problem}")]
    Field {
        /// Path of the field, e.g. `scheduling.preemptible`.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// The values substituted into a template for one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateVars<'a> {
    /// Replaces `{project}`.
    pub project: &'a str,
    /// Replaces `{zone}`.
    pub zone: &'a str,
    /// Replaces `{name}` and becomes the instance name.
    pub name: &'a str,
    /// Value of the `pm-pool` label.
    pub pool: &'a str,
}

/// Parses template text (JSON) and renders it, see [`render`].
pub fn render_text(template: &str, vars: TemplateVars<'_>) -> Result<Instance, TemplateError> {
    let value: Value = serde_json::from_str(template).map_err(TemplateError::Json)?;
    render(&value, vars)
}

/// Renders `template` for one instance: replaces `{project}`, `{zone}` and `{name}` in
/// every string, sets the name, adds the label `pm-pool=<pool>`, and checks that the
/// result is a valid Instance.
pub fn render(template: &Value, vars: TemplateVars<'_>) -> Result<Instance, TemplateError> {
    let Value::Object(object) = template else {
        return Err(TemplateError::NotAnObject {
            found: json_type(template),
        });
    };
    let mut object: Map<String, Value> = object
        .iter()
        .map(|(key, value)| (key.clone(), substitute(value, &vars)))
        .collect();
    validate_name(vars.name).map_err(TemplateError::Name)?;
    match object.get("name") {
        None => {}
        Some(Value::String(rendered)) if rendered == vars.name => {}
        Some(other) => {
            return Err(TemplateError::NameMismatch {
                rendered: other.to_string(),
                expected: vars.name.to_string(),
            })
        }
    }
    object.insert("name".into(), Value::String(vars.name.to_string()));
    let labels = object
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(labels) = labels else {
        return Err(TemplateError::Labels {
            problem: format!("found {}", json_type(labels)),
        });
    };
    for (key, value) in labels.iter() {
        let Value::String(value) = value else {
            return Err(TemplateError::Labels {
                problem: format!("label {key:?} is {}", json_type(value)),
            });
        };
        validate_label_key(key).map_err(TemplateError::Name)?;
        validate_label_value(value).map_err(TemplateError::Name)?;
    }
    validate_label_value(vars.pool).map_err(TemplateError::Name)?;
    labels.insert(POOL_LABEL.into(), Value::String(vars.pool.to_string()));
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| TemplateError::Field {
        path: e.path().to_string(),
        problem: e.inner().to_string(),
    })
}

/// `value` with `{project}`, `{zone}` and `{name}` replaced in every string (object keys
/// are left alone), as [`render`] does before building the Instance.
pub fn substitute(value: &Value, vars: &TemplateVars<'_>) -> Value {
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

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VARS: TemplateVars<'static> = TemplateVars {
        project: "proj",
        zone: "us-central1-a",
        name: "web-0001",
        pool: "web",
    };

    #[test]
    fn renders_placeholders_name_and_pool_label() {
        let template = json!({
            "name": "{name}",
            "machineType": "zones/{zone}/machineTypes/e2-small",
            "disks": [{"initializeParams": {"diskName": "{name}-boot",
                "sourceImage": "projects/{project}/global/images/x"}}],
            "labels": {"team": "infra"},
            "scheduling": {"preemptible": true}
        });
        let instance = render(&template, VARS).expect("renders");
        assert_eq!(instance.name, "web-0001");
        assert_eq!(
            instance.labels.get("pm-pool").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            instance.labels.get("team").map(String::as_str),
            Some("infra")
        );
        assert_eq!(
            instance.machine_type.as_deref().unwrap_or_default(),
            "zones/us-central1-a/machineTypes/e2-small"
        );
        assert_eq!(
            instance.disks.as_ref().expect("disks")[0]["initializeParams"]["diskName"],
            "web-0001-boot"
        );
        assert_eq!(
            instance.disks.as_ref().expect("disks")[0]["initializeParams"]["sourceImage"],
            "projects/proj/global/images/x"
        );
        assert_eq!(instance.scheduling.and_then(|s| s.preemptible), Some(true));
    }

    #[test]
    fn template_without_name_or_labels_gets_them() {
        let instance = render_text(r#"{"machineType": "m"}"#, VARS).expect("renders");
        assert_eq!(instance.name, "web-0001");
        assert_eq!(instance.labels.len(), 1);
    }

    #[test]
    fn errors_name_the_problem() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([1, 2]), "must be a JSON object, not an array"),
            (json!("x"), "not a string"),
            (json!({"name": 5}), "`name` renders to 5"),
            (json!({"name": "other"}), "`name` renders to \"other\""),
            (
                json!({"labels": []}),
                "`labels` must be an object of strings: found an array",
            ),
            (json!({"labels": {"a": 1}}), "label \"a\" is a number"),
            (
                json!({"scheduling": {"preemptible": "yes"}}),
                "`scheduling.preemptible`",
            ),
            (json!({"scheduling": 3}), "`scheduling`"),
            (json!({"status": 5}), "`status`"),
        ];
        for (template, expected) in cases {
            let error = render(&template, VARS).expect_err("must fail");
            let text = error.to_string();
            assert!(text.contains(expected), "{text:?} lacks {expected:?}");
        }
        let error = render_text("{not json", VARS).expect_err("bad JSON");
        assert!(matches!(error, TemplateError::Json(_)));
        let error = render(&json!({"labels": {"Bad": "x"}}), VARS).expect_err("bad key");
        assert!(matches!(
            error,
            TemplateError::Name(NameError::BadCharacter { .. })
        ));
        let vars = TemplateVars {
            pool: "Web Pool",
            ..VARS
        };
        assert!(matches!(
            render(&json!({}), vars),
            Err(TemplateError::Name(_))
        ));
        let vars = TemplateVars {
            name: "Web",
            ..VARS
        };
        assert!(matches!(
            render(&json!({}), vars),
            Err(TemplateError::Name(_))
        ));
    }

    #[test]
    fn name_rules() {
        for good in ["a", "web-1", "a1", &"a".repeat(63)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in ["", "1a", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
    }

    #[test]
    fn label_rules() {
        assert!(validate_label_key("pm-pool").is_ok());
        assert!(validate_label_key("a_b").is_ok());
        assert!(validate_label_key("").is_err());
        assert!(validate_label_key("1a").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value("1-a_b").is_ok());
        assert!(validate_label_value("A").is_err());
        assert!(validate_label_value(&"a".repeat(64)).is_err());
    }
}
