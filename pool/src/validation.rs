//! Checking a parsed pool config document and turning it into a [`PoolConfig`], and
//! checking a stored [`PoolConfig`] with the same rules ([`check_stored`]), so pmctl and
//! the daemons agree on what a valid config is.
//!
//! The document is prevmtable's (DESIGN.md "Pool config"): field names match
//! case-insensitively, as Go's decoder does, but unknown fields are errors. Every problem
//! is collected, each naming its field (`allowedZones[1]`, `hooks.create`,
//! `instance.labels`), so one run of `pmctl config set` reports them all.
//!
//! A `null` value counts as not given: YAML's `project:` with nothing after it means "no
//! project", as Go's decoder would read it.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use pm_gce::template::TemplateVars;
use pm_proto::{Distribution, Hooks, OnPreempted, PoolConfig};
use serde_json::{Map, Value};

use crate::disruption::check_disruption;
use crate::document::ConfigDocument;
use crate::fields::{
    DISTRIBUTIONS, FIELDS, MAX_SPARES, MAX_TARGET_VM_COUNT, ON_PREEMPTED, REQUIRED,
    SECONDS_FOR_EXHAUSTION, SECONDS_TO_REST,
};
use crate::hooks::{check_hook_name, HookEvent, HOOKS};
use crate::instance_template;
use crate::naming::{check_prefix, is_valid_zone, MAX_NAME_LEN, NAME_SUFFIX_LEN};
use crate::problem::{did_you_mean, json_type, shown, unknown, Problem};
use crate::update::check_update;

/// The fields of an object matched case-insensitively to `known` names. Unknown and
/// repeated names become problems; `null` values are left out.
pub(crate) fn match_fields<'v>(
    object: &'v Map<String, Value>,
    known: &[&'static str],
    what: &str,
    path: impl Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> BTreeMap<&'static str, &'v Value> {
    let mut found: BTreeMap<&'static str, (&'v str, &'v Value)> = BTreeMap::new();
    for (key, value) in object {
        let Some(canonical) = known.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
            problems.push(Problem::new(path(key), unknown(what, key, known)));
            continue;
        };
        if let Some((first, _)) = found.get(canonical) {
            problems.push(Problem::new(
                path(canonical),
                format!("given twice, as {first:?} and {key:?} (names are case-insensitive)"),
            ));
            continue;
        }
        found.insert(canonical, (key.as_str(), value));
    }
    found
        .into_iter()
        .filter(|(_, (_, value))| !value.is_null())
        .map(|(name, (_, value))| (name, value))
        .collect()
}

/// A whole number within `range`.
pub(crate) fn whole_number(value: &Value, range: &RangeInclusive<i64>) -> Result<i64, String> {
    let Value::Number(number) = value else {
        return Err(format!(
            "must be a whole number, found {} {}",
            json_type(value),
            shown(value)
        ));
    };
    let Some(n) = number.as_i64() else {
        return Err(if number.is_f64() {
            format!("must be a whole number, found {number}")
        } else {
            format!("{number} is too large (at most {})", range.end())
        });
    };
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is out of range ({}..={})",
            range.start(),
            range.end()
        ))
    }
}

/// A string, or a problem naming the type found.
fn string<'v>(value: &'v Value, expected: &str) -> Result<&'v str, String> {
    value.as_str().ok_or_else(|| {
        format!(
            "must be {expected}, found {} {}",
            json_type(value),
            shown(value)
        )
    })
}

/// Problems of a GCE project id (loosely: `[a-z][-a-z0-9.:]*`, at most 63 characters, so
/// domain-scoped ids like `example.com:proj` pass).
fn check_project(project: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME_LEN).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && !project.ends_with('-')
        && project
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'));
    if ok {
        Ok(())
    } else if project.is_empty() {
        Err("is empty; leave it out to use the agent's --project".into())
    } else {
        Err(format!(
            "{project:?} is not a GCE project id (lowercase letters, digits and '-', starting with a letter)"
        ))
    }
}

/// One of `choices`, case-insensitively.
pub(crate) fn choice<T: Copy>(value: &Value, choices: &[(&'static str, T)]) -> Result<T, String> {
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let text = string(value, &format!("one of {}", names.join(", ")))?;
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, v)| *v)
        .ok_or_else(|| match did_you_mean(text, &names) {
            Some(close) => format!(
                "{text:?} is not one of {} (did you mean {close:?}?)",
                names.join(", ")
            ),
            None => format!("{text:?} is not one of {}", names.join(", ")),
        })
}

/// Checks the instance template as the agent will render it in each zone; problems that
/// every zone shares are reported once.
fn check_instance(
    instance: &Value,
    pool: &str,
    zones: &[String],
    prefix: &str,
    project: &str,
    problems: &mut Vec<Problem>,
) {
    // A name as an agent makes it: the prefix and a suffix of the full length.
    let name = format!("{prefix}{}", "x0".repeat(NAME_SUFFIX_LEN / 2));
    let mut found: Vec<Problem> = Vec::new();
    for zone in zones {
        let vars = TemplateVars {
            project,
            zone,
            name: &name,
            pool,
        };
        for problem in instance_template::check(instance, vars) {
            if !found.contains(&problem) {
                found.push(problem);
            }
        }
    }
    problems.extend(found);
}

/// Checks a pool config document for pool `pool` and builds the [`PoolConfig`] it
/// describes. Every problem is reported, each with its field.
pub fn validate(pool: &str, document: &Value) -> Result<PoolConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let Value::Object(object) = document else {
        return Err(vec![Problem::new(
            "(document)",
            format!(
                "must be an object with the pool's fields ({}), found {}",
                FIELDS.join(", "),
                json_type(document)
            ),
        )]);
    };
    let fields = match_fields(object, &FIELDS, "field", str::to_string, &mut problems);
    let mut config = PoolConfig::default();
    let mut report = |field: &str, result: Result<(), String>| {
        if let Err(message) = result {
            problems.push(Problem::new(field, message));
        }
    };
    for required in REQUIRED {
        if !fields.contains_key(required) {
            report(required, Err("is required".into()));
        }
    }
    if let Some(value) = fields.get("targetVMCount") {
        report(
            "targetVMCount",
            whole_number(value, &(0..=MAX_TARGET_VM_COUNT)).map(|n| config.target_vm_count = n),
        );
    }
    if let Some(value) = fields.get("spares") {
        let result = whole_number(value, &(0..=MAX_SPARES)).and_then(|n| {
            let total = config.target_vm_count.saturating_add(n);
            if total > MAX_TARGET_VM_COUNT {
                return Err(format!(
                    "targetVMCount + spares is {total}, more than {MAX_TARGET_VM_COUNT}"
                ));
            }
            config.spares = u32::try_from(n).unwrap_or_default();
            Ok(())
        });
        report("spares", result);
    }
    if let Some(value) = fields.get("allowedZones") {
        match value {
            Value::Array(zones) if zones.is_empty() => {
                report("allowedZones", Err("must list at least one zone".into()));
            }
            Value::Array(zones) => {
                for (i, zone) in zones.iter().enumerate() {
                    let field = format!("allowedZones[{i}]");
                    let result = string(zone, "a zone name").and_then(|zone| {
                        if !is_valid_zone(zone) {
                            Err(format!(
                                "{zone:?} is not a valid zone (like \"us-central1-a\": lowercase letters, digits and '-', ending in '-' and a letter)"
                            ))
                        } else if config.allowed_zones.iter().any(|z| z == zone) {
                            Err(format!("{zone:?} is listed twice"))
                        } else {
                            config.allowed_zones.push(zone.to_string());
                            Ok(())
                        }
                    });
                    report(&field, result);
                }
            }
            other => report(
                "allowedZones",
                Err(format!(
                    "must be a list of zones like [\"us-central1-a\"], found {}",
                    json_type(other)
                )),
            ),
        }
    }
    if let Some(value) = fields.get("prefix") {
        let result = string(value, "a string").and_then(|prefix| {
            check_prefix(prefix)?;
            config.prefix = prefix.to_string();
            Ok(())
        });
        report("prefix", result);
    }
    if let Some(value) = fields.get("secondsToRest") {
        let result = whole_number(value, &SECONDS_TO_REST);
        report(
            "secondsToRest",
            result.map(|n| config.seconds_to_rest = u32::try_from(n).unwrap_or_default()),
        );
    }
    if let Some(value) = fields.get("secondsForExhaustion") {
        let result = whole_number(value, &SECONDS_FOR_EXHAUSTION);
        report(
            "secondsForExhaustion",
            result.map(|n| config.seconds_for_exhaustion = u32::try_from(n).unwrap_or_default()),
        );
    }
    if let Some(value) = fields.get("project") {
        let result = string(value, "a string").and_then(|project| {
            check_project(project)?;
            config.project = project.to_string();
            Ok(())
        });
        report("project", result);
    }
    if let Some(value) = fields.get("distribution") {
        report(
            "distribution",
            choice(value, &DISTRIBUTIONS).map(|d| config.distribution = d as i32),
        );
    }
    if let Some(value) = fields.get("onPreempted") {
        report(
            "onPreempted",
            choice(value, &ON_PREEMPTED).map(|o| config.on_preempted = o as i32),
        );
    }
    if let Some(value) = fields.get("adopt") {
        let result = match value {
            Value::Bool(adopt) => {
                config.adopt = *adopt;
                Ok(())
            }
            other => Err(format!(
                "must be true or false, found {} {}",
                json_type(other),
                shown(other)
            )),
        };
        report("adopt", result);
    }
    if let Some(value) = fields.get("hooks") {
        config.hooks = check_hooks(value, &mut problems);
    }
    if let Some(value) = fields.get("update") {
        config.update = check_update(value, &mut problems);
    }
    if let Some(value) = fields.get("disruption") {
        config.disruption = check_disruption(value, &mut problems);
    }
    if let Some(instance) = fields.get("instance") {
        // Render with what is known; a bad prefix or zone list is reported on its own.
        let prefix = if config.prefix.is_empty() {
            "pool-"
        } else {
            &config.prefix
        };
        let zones = if config.allowed_zones.is_empty() {
            vec!["us-central1-a".to_string()]
        } else {
            config.allowed_zones.clone()
        };
        let project = if config.project.is_empty() {
            "example-project"
        } else {
            &config.project
        };
        check_instance(instance, pool, &zones, prefix, project, &mut problems);
        config.instance_json = instance.to_string();
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// Checks a config read back from etcd with the rules `pmctl config set` applies, so a
/// value that another writer (or an older pm) stored and pmctl would refuse is refused by
/// the daemons too, with the same problems. Enum fields must hold known values.
pub fn check_stored(pool: &str, config: &PoolConfig) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    if Distribution::try_from(config.distribution).is_err() {
        problems.push(Problem::new(
            "distribution",
            format!("holds the unknown value {}", config.distribution),
        ));
    }
    if OnPreempted::try_from(config.on_preempted).is_err() {
        problems.push(Problem::new(
            "onPreempted",
            format!("holds the unknown value {}", config.on_preempted),
        ));
    }
    let document = ConfigDocument::from_config(config);
    match serde_json::to_value(&document) {
        Ok(value) => {
            if let Err(found) = validate(pool, &value) {
                problems.extend(found);
            }
        }
        Err(e) => problems.push(Problem::new("(document)", e.to_string())),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The hooks object: names matched case-insensitively, each a plain file name.
fn check_hooks(value: &Value, problems: &mut Vec<Problem>) -> Option<Hooks> {
    let Value::Object(object) = value else {
        problems.push(Problem::new(
            "hooks",
            format!(
                "must be an object like {{create: \"on-create\"}}, found {}",
                json_type(value)
            ),
        ));
        return None;
    };
    let given = match_fields(
        object,
        &HOOKS,
        "hook",
        |key| format!("hooks.{key}"),
        problems,
    );
    let mut hooks = Hooks::default();
    for (name, value) in given {
        let field = format!("hooks.{name}");
        let checked = string(
            value,
            "the name of an executable in the agent's --hooks-dir",
        )
        .and_then(|text| check_hook_name(text).map(|()| text.to_string()));
        let text = match checked {
            Ok(text) => text,
            Err(message) => {
                problems.push(Problem::new(field, message));
                continue;
            }
        };
        if let Some(event) = HookEvent::ALL.iter().find(|e| e.as_str() == name) {
            *event.slot(&mut hooks) = text;
        }
    }
    (hooks != Hooks::default()).then_some(hooks)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems_of(document: Value) -> Vec<Problem> {
        validate("web", &document).expect_err("invalid")
    }

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    fn minimal() -> Value {
        json!({
            "targetVMCount": 2,
            "allowedZones": ["us-central1-a", "us-central1-b"],
            "prefix": "web-",
            "instance": {"machineType": "zones/{zone}/machineTypes/e2-small"}
        })
    }

    #[test]
    fn field_names_and_choices_are_case_insensitive() {
        let document = json!({
            "TargetVMCount": 1, "ALLOWEDZONES": ["zone-a"], "Prefix": "w-",
            "INSTANCE": {}, "SecondsToRest": 7, "secondsforexhaustion": 60,
            "Hooks": {"Create": "c", "VANISHED": "v"}, "Distribution": "EVEN",
            "onpreempted": "Restart"
        });
        let config = validate("web", &document).expect("valid");
        assert_eq!(config.seconds_to_rest, 7);
        assert_eq!(config.seconds_for_exhaustion, 60);
        assert_eq!(config.on_preempted(), OnPreempted::Restart);
        let hooks = config.hooks.expect("hooks");
        assert_eq!((hooks.create.as_str(), hooks.vanished.as_str()), ("c", "v"));
    }

    #[test]
    fn each_problem_names_its_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("targetVMCount", json!(-1), "out of range"),
            ("targetVMCount", json!(1.5), "whole number"),
            ("targetVMCount", json!("3"), "whole number, found a string"),
            ("targetVMCount", json!(1_000_000), "out of range"),
            ("allowedZones", json!([]), "at least one zone"),
            ("allowedZones", json!("us-central1-a"), "must be a list"),
            ("prefix", json!(""), "must not be empty"),
            ("prefix", json!("Web-"), "lowercase letter"),
            ("prefix", json!("web_"), "'_'"),
            ("prefix", json!("a".repeat(56)), "at most 55"),
            (
                "instance",
                json!("{}"),
                "must be a JSON object, not a string",
            ),
            ("secondsToRest", json!(0), "out of range (1..=3600)"),
            (
                "adopt",
                json!("yes"),
                "must be true or false, found a string",
            ),
            ("secondsForExhaustion", json!(86_401), "out of range"),
            ("hooks", json!(["create"]), "must be an object"),
            ("project", json!(""), "is empty"),
            ("project", json!("My Project"), "not a GCE project id"),
            ("distribution", json!("evn"), "did you mean \"even\""),
            ("onPreempted", json!("stop"), "not one of delete, restart"),
            ("spares", json!(-1), "out of range"),
            ("spares", json!(1.5), "whole number"),
            ("spares", json!(10_001), "out of range"),
        ];
        for (field, value, expected) in cases {
            let mut document = minimal();
            document[field] = value.clone();
            let problems = problems_of(document);
            assert_eq!(
                fields(&problems),
                vec![field],
                "{field} = {value}: {problems:?}"
            );
            assert!(
                problems[0].message.contains(expected),
                "{field} = {value}: {:?} lacks {expected:?}",
                problems[0].message
            );
        }
    }

    #[test]
    fn nested_problems_name_their_path() {
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            (
                "allowedZones",
                json!(["us-central1-a", "US-central"]),
                "allowedZones[1]",
                "\"US-central\" is not a valid zone",
            ),
            (
                "allowedZones",
                json!(["zone-a", "zone-a"]),
                "allowedZones[1]",
                "listed twice",
            ),
            (
                "allowedZones",
                json!(["zone-a", 7]),
                "allowedZones[1]",
                "found a number",
            ),
            (
                "hooks",
                json!({"create": "../evil"}),
                "hooks.create",
                "plain file name",
            ),
            (
                "hooks",
                json!({"delete": "bin/x"}),
                "hooks.delete",
                "no '/'",
            ),
            (
                "hooks",
                json!({"create": ".on-create"}),
                "hooks.create",
                "not starting with '.'",
            ),
            (
                "hooks",
                json!({"exhausted": ""}),
                "hooks.exhausted",
                "is empty",
            ),
            (
                "hooks",
                json!({"crate": "x"}),
                "hooks.crate",
                "did you mean \"create\"",
            ),
            (
                "instance",
                json!({"name": "fixed"}),
                "instance.name",
                "\"{name}\"",
            ),
            (
                "instance",
                json!({"labels": {"pm-pool": "other"}}),
                "instance.labels.pm-pool",
                "pool name \"web\"",
            ),
            (
                "instance",
                json!({"labels": "x"}),
                "instance.labels",
                "object of strings",
            ),
            (
                "instance",
                json!({"scheduling": true}),
                "instance.scheduling",
                "`scheduling` is invalid: invalid type: boolean `true`",
            ),
        ];
        for (field, value, path, expected) in cases {
            let mut document = minimal();
            document[field] = value.clone();
            let problems = problems_of(document);
            assert_eq!(fields(&problems), vec![path], "{value}: {problems:?}");
            assert!(
                problems[0].message.contains(expected),
                "{value}: {:?} lacks {expected:?}",
                problems[0].message
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = problems_of(json!({
            "targetVMCount": -5,
            "allowedZones": ["ok-zone-a", "BAD"],
            "prefix": "9lives",
            "instance": {"name": "x"},
            "hooks": {"create": "a/b"},
            "secondsToRest": 0,
            "colour": "blue"
        }));
        let mut found = fields(&problems);
        found.sort_unstable();
        assert_eq!(
            found,
            vec![
                "allowedZones[1]",
                "colour",
                "hooks.create",
                "instance.name",
                "prefix",
                "secondsToRest",
                "targetVMCount"
            ],
            "{problems:?}"
        );
        let text = Problem::list(&problems);
        assert!(
            text.contains("allowedZones[1]: \"BAD\" is not a valid zone"),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_a_suggestion() {
        let mut document = minimal();
        document["targetVMcont"] = json!(3);
        document["zebra"] = json!(1);
        let problems = problems_of(document);
        assert_eq!(fields(&problems), vec!["targetVMcont", "zebra"]);
        assert!(problems[0]
            .message
            .contains("did you mean \"targetVMCount\""));
        assert!(problems[1]
            .message
            .contains("known: targetVMCount, allowedZones"));
        let mut twice = minimal();
        twice["PREFIX"] = json!("other-");
        let problems = problems_of(twice);
        assert_eq!(fields(&problems), vec!["prefix"]);
        assert!(problems[0].message.contains("given twice"));
    }

    #[test]
    fn required_fields_and_whole_document_problems() {
        let problems = problems_of(json!({}));
        assert_eq!(
            fields(&problems),
            vec!["targetVMCount", "allowedZones", "prefix", "instance"]
        );
        assert!(problems.iter().all(|p| p.message == "is required"));
        let problems = problems_of(json!([1, 2]));
        assert_eq!(fields(&problems), vec!["(document)"]);
        let mut nulls = minimal();
        nulls["project"] = Value::Null;
        nulls["hooks"] = Value::Null;
        assert!(validate("web", &nulls).is_ok(), "null means not given");
    }

    #[test]
    fn names_at_full_length_fit_gce() {
        let mut document = minimal();
        document["prefix"] = json!("a".repeat(crate::naming::MAX_PREFIX_LEN));
        assert!(validate("web", &document).is_ok());
    }

    #[test]
    fn the_target_and_the_spares_stay_within_the_cap_together() {
        let mut document = minimal();
        document["targetVMCount"] = json!(MAX_TARGET_VM_COUNT - 5);
        document["spares"] = json!(6);
        let problems = problems_of(document);
        assert_eq!(fields(&problems), ["spares"], "{problems:?}");
        assert!(problems[0].message.contains("targetVMCount + spares"));
    }

    #[test]
    fn stored_configs_are_checked_with_the_same_rules() {
        let mut full = minimal();
        full["hooks"] = json!({"create": "on-create.sh", "preempted": "on_preempt"});
        full["project"] = json!("my-project");
        full["distribution"] = json!("balanced");
        full["onPreempted"] = json!("restart");
        full["adopt"] = json!(true);
        full["spares"] = json!(3);
        let mut config = validate("web", &full).expect("valid");
        assert!(config.adopt);
        assert_eq!(config.spares, 3);
        assert_eq!(check_stored("web", &config), Ok(()));
        let document = serde_json::to_value(ConfigDocument::from_config(&config)).expect("json");
        assert_eq!(validate("web", &document), Ok(config.clone()));
        config.deleted = true;
        assert_eq!(check_stored("web", &config), Ok(()), "a tombstone is valid");

        let mut bad = config.clone();
        bad.target_vm_count = -3;
        bad.hooks = Some(Hooks {
            create: ".on-create".into(),
            ..Default::default()
        });
        bad.distribution = 42;
        bad.instance_json = "not json".into();
        let problems = check_stored("web", &bad).expect_err("invalid");
        let mut found = fields(&problems);
        found.sort_unstable();
        assert_eq!(
            found,
            vec!["distribution", "hooks.create", "instance", "targetVMCount"],
            "{problems:?}"
        );
        let empty = PoolConfig {
            on_preempted: 9,
            ..Default::default()
        };
        let problems = check_stored("web", &empty).expect_err("invalid");
        assert!(fields(&problems).contains(&"onPreempted"), "{problems:?}");
        assert!(fields(&problems).contains(&"allowedZones"), "{problems:?}");
    }
}
