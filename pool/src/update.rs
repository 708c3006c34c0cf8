//! Revisions and the update policy of a pool (DESIGN.md "Wave 2 additions").
//!
//! A pool's [`revision`] is a short hash of what makes its VMs differ: the instance
//! template before the per-instance substitutions, the project and the prefix. Every VM
//! pm creates carries it as the label `pm-rev`; a VM with another revision (or none, from
//! before revisions) is replaced by a rollout, within the pool's `update` policy: at most
//! maxSurge VMs over the target, at most maxUnavailable under it RUNNING.

use std::collections::BTreeMap;

use pm_proto::{Amount, PoolConfig, UpdateMode, UpdatePolicy};
use ring::digest::{digest, SHA256};
use serde::Serialize;
use serde_json::Value;

use crate::problem::{json_type, shown, Problem};
use crate::validation::{choice, match_fields, whole_number};

/// The label that carries a VM's revision.
pub const REVISION_LABEL: &str = "pm-rev";

/// The fields of the `update` block.
pub const UPDATE_FIELDS: [&str; 5] = [
    "maxSurge",
    "maxUnavailable",
    "minReadySeconds",
    "mode",
    "progressDeadlineSeconds",
];

/// The values of `update.mode`.
pub const MODES: [(&str, UpdateMode); 2] = [
    ("proactive", UpdateMode::Proactive),
    ("opportunistic", UpdateMode::Opportunistic),
];

/// A rollout with no new VM RUNNING this long pauses itself, unless the pool says.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;

/// Hex digits of a revision: 40 bits, so two configs of one pool never share one by
/// chance.
const REVISION_LEN: usize = 10;

/// The pool's revision: the first hex digits of the SHA-256 of its template (keys in
/// sorted order, so reformatting the JSON changes nothing), project and prefix.
pub fn revision(config: &PoolConfig) -> String {
    let template = serde_json::from_str::<Value>(&config.instance_json)
        .map_or_else(|_| config.instance_json.clone(), |v| v.to_string());
    let text = [
        "pm-rev/1",
        template.as_str(),
        config.project.as_str(),
        config.prefix.as_str(),
    ]
    .join("\0");
    digest(&SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..REVISION_LEN]
        .to_string()
}

/// What a rollout of the pool may do, its defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// VMs over the target.
    pub max_surge: u64,
    /// VMs under the target RUNNING.
    pub max_unavailable: u64,
    /// Milliseconds RUNNING before a new VM counts as ready.
    pub min_ready_ms: i64,
    /// Proactive or opportunistic.
    pub mode: UpdateMode,
    /// Milliseconds a rollout may go without a new VM RUNNING before it pauses itself.
    pub progress_deadline_ms: i64,
}

/// `amount` of `target` (a percentage rounded up), or `default` when not given.
pub(crate) fn resolve(amount: Option<&Amount>, target: i64, default: u64) -> u64 {
    let target = u64::try_from(target).unwrap_or(0);
    match amount {
        None => default,
        Some(a) if a.percent => (target * u64::from(a.value)).div_ceil(100),
        Some(a) => u64::from(a.value),
    }
}

/// The pool's rollout budgets: percentages of targetVMCount rounded up, and each budget
/// the number of allowed zones when not given (as GCE's regional MIGs).
pub fn budgets(config: &PoolConfig) -> Budgets {
    let policy = config.update.unwrap_or_default();
    let zones = u64::try_from(config.allowed_zones.len()).unwrap_or(0);
    let target = config.target_vm_count;
    let deadline = if policy.progress_deadline_seconds == 0 {
        DEFAULT_PROGRESS_DEADLINE_SECONDS
    } else {
        policy.progress_deadline_seconds
    };
    Budgets {
        max_surge: resolve(policy.max_surge.as_ref(), target, zones),
        max_unavailable: resolve(policy.max_unavailable.as_ref(), target, zones),
        min_ready_ms: i64::from(policy.min_ready_seconds) * 1000,
        mode: policy.mode(),
        progress_deadline_ms: i64::from(deadline) * 1000,
    }
}

/// An amount: a whole number, or a percentage written `"P%"` (0 to 100).
pub(crate) fn amount(value: &Value) -> Result<Amount, String> {
    if let Value::String(text) = value {
        let digits = text
            .trim()
            .strip_suffix('%')
            .ok_or_else(|| format!("{text:?} is neither a number nor a percentage like \"25%\""))?;
        let percent: u32 = digits
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage like \"25%\""))?;
        if percent > 100 {
            return Err(format!("{text:?} is over 100%"));
        }
        return Ok(Amount {
            value: percent,
            percent: true,
        });
    }
    let n = whole_number(value, &(0..=i64::from(u32::MAX)))
        .map_err(|e| format!("{e} (or a percentage like \"25%\")"))?;
    Ok(Amount {
        value: u32::try_from(n).unwrap_or(u32::MAX),
        percent: false,
    })
}

/// Checks the `update` block and builds its policy; problems name `update.<field>`.
pub fn check_update(value: &Value, problems: &mut Vec<Problem>) -> Option<UpdatePolicy> {
    let Value::Object(object) = value else {
        problems.push(Problem::new(
            "update",
            format!(
                "must be an object like {{maxSurge: 1, maxUnavailable: 0}}, found {} {}",
                json_type(value),
                shown(value)
            ),
        ));
        return None;
    };
    let given = match_fields(
        object,
        &UPDATE_FIELDS,
        "update field",
        |key| format!("update.{key}"),
        problems,
    );
    let mut policy = UpdatePolicy::default();
    let before = problems.len();
    let mut report = |field: &str, result: Result<(), String>| {
        if let Err(message) = result {
            problems.push(Problem::new(format!("update.{field}"), message));
        }
    };
    for (field, value) in &given {
        let result = match *field {
            "maxSurge" => amount(value).map(|a| policy.max_surge = Some(a)),
            "maxUnavailable" => amount(value).map(|a| policy.max_unavailable = Some(a)),
            "minReadySeconds" => whole_number(value, &(0..=86_400))
                .map(|n| policy.min_ready_seconds = u32::try_from(n).unwrap_or_default()),
            "progressDeadlineSeconds" => whole_number(value, &(1..=604_800))
                .map(|n| policy.progress_deadline_seconds = u32::try_from(n).unwrap_or_default()),
            _ => choice(value, &MODES).map(|m| policy.mode = m as i32),
        };
        report(field, result);
    }
    let zero = |a: &Option<Amount>| a.as_ref().is_some_and(|a| a.value == 0);
    if problems.len() == before && zero(&policy.max_surge) && zero(&policy.max_unavailable) {
        problems.push(Problem::new(
            "update",
            "maxSurge and maxUnavailable are both 0: a rollout could replace nothing",
        ));
    }
    Some(policy)
}

/// An amount as a config document writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AmountDocument {
    /// A count.
    Count(u32),
    /// A percentage, `"P%"`.
    Percent(String),
}

impl AmountDocument {
    pub(crate) fn of(amount: &Amount) -> Self {
        if amount.percent {
            Self::Percent(format!("{}%", amount.value))
        } else {
            Self::Count(amount.value)
        }
    }
}

/// The `update` block of a config document; fields at their default are left out.
pub fn update_document(policy: &UpdatePolicy) -> Option<BTreeMap<&'static str, Value>> {
    let mut fields = BTreeMap::new();
    let mut put = |name: &'static str, value: Value| {
        fields.insert(name, value);
    };
    if let Some(a) = &policy.max_surge {
        put(
            "maxSurge",
            serde_json::to_value(AmountDocument::of(a)).ok()?,
        );
    }
    if let Some(a) = &policy.max_unavailable {
        put(
            "maxUnavailable",
            serde_json::to_value(AmountDocument::of(a)).ok()?,
        );
    }
    if policy.min_ready_seconds > 0 {
        put("minReadySeconds", policy.min_ready_seconds.into());
    }
    if policy.mode() != UpdateMode::Proactive {
        put("mode", "opportunistic".into());
    }
    if policy.progress_deadline_seconds > 0 {
        put(
            "progressDeadlineSeconds",
            policy.progress_deadline_seconds.into(),
        );
    }
    (!fields.is_empty()).then_some(fields)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(template: &str) -> PoolConfig {
        PoolConfig {
            target_vm_count: 10,
            allowed_zones: vec!["a-1-a".into(), "a-1-b".into(), "a-1-c".into()],
            prefix: "w-".into(),
            instance_json: template.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_revision_follows_template_project_and_prefix_only() {
        let base = config(r#"{"machineType": "e2-small", "labels": {"a": "b"}}"#);
        let rev = revision(&base);
        assert_eq!(rev.len(), REVISION_LEN);
        assert!(rev.chars().all(|c| c.is_ascii_hexdigit()));
        let reformatted = config(r#"{ "labels": {"a":"b"}, "machineType":"e2-small" }"#);
        assert_eq!(revision(&reformatted), rev, "formatting is not a change");
        let mut scaled = base.clone();
        scaled.target_vm_count = 99;
        scaled.allowed_zones.pop();
        scaled.seconds_to_rest = 9;
        assert_eq!(revision(&scaled), rev, "scaling is not a change");
        let mut changed = base.clone();
        changed.instance_json = r#"{"machineType": "e2-medium", "labels": {"a": "b"}}"#.into();
        assert_ne!(revision(&changed), rev);
        let mut moved = base.clone();
        moved.project = "other".into();
        assert_ne!(revision(&moved), rev);
        let mut renamed = base;
        renamed.prefix = "v-".into();
        assert_ne!(revision(&renamed), rev);
    }

    #[test]
    fn budgets_default_to_the_zones_and_percentages_round_up() {
        let mut c = config("{}");
        let b = budgets(&c);
        assert_eq!((b.max_surge, b.max_unavailable), (3, 3));
        assert_eq!((b.min_ready_ms, b.mode), (0, UpdateMode::Proactive));
        assert_eq!(b.progress_deadline_ms, 600_000);
        c.update = Some(UpdatePolicy {
            max_surge: Some(Amount {
                value: 25,
                percent: true,
            }),
            max_unavailable: Some(Amount {
                value: 0,
                percent: false,
            }),
            min_ready_seconds: 30,
            ..Default::default()
        });
        let b = budgets(&c);
        assert_eq!((b.max_surge, b.max_unavailable), (3, 0), "25% of 10 is 3");
        assert_eq!(b.min_ready_ms, 30_000);
    }

    fn problems(value: Value) -> Vec<Problem> {
        let mut problems = Vec::new();
        check_update(&value, &mut problems);
        problems
    }

    #[test]
    fn the_update_block_is_checked_field_by_field() {
        let ok = problems(
            json!({"MaxSurge": "20%", "maxunavailable": 1, "mode": "Opportunistic",
            "minReadySeconds": 5, "progressDeadlineSeconds": 60}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let cases = [
            (json!({"maxSurge": "120%"}), "update.maxSurge", "over 100%"),
            (json!({"maxSurge": "lots"}), "update.maxSurge", "percentage"),
            (json!({"maxSurge": -1}), "update.maxSurge", "out of range"),
            (
                json!({"maxUnavailable": 1.5}),
                "update.maxUnavailable",
                "whole number",
            ),
            (json!({"mode": "eager"}), "update.mode", "not one of"),
            (
                json!({"minReadySeconds": 90_000}),
                "update.minReadySeconds",
                "out of range",
            ),
            (
                json!({"maxSurge": 0, "maxUnavailable": "0%"}),
                "update",
                "both 0",
            ),
            (json!({"maxSurg": 1}), "update.maxSurg", "maxSurge"),
            (json!([1]), "update", "must be an object"),
        ];
        for (value, field, text) in cases {
            let found = problems(value.clone());
            assert_eq!(found.len(), 1, "{value}: {found:?}");
            assert_eq!(found[0].field, field, "{value}");
            assert!(found[0].message.contains(text), "{value}: {found:?}");
        }
    }

    #[test]
    fn the_document_round_trips() {
        let value = json!({"maxSurge": "20%", "maxUnavailable": 0, "minReadySeconds": 5,
            "mode": "opportunistic", "progressDeadlineSeconds": 60});
        let mut found = Vec::new();
        let policy = check_update(&value, &mut found).expect("policy");
        let written = serde_json::to_value(update_document(&policy)).expect("json");
        assert_eq!(written, value);
        assert_eq!(update_document(&UpdatePolicy::default()), None);
    }
}
