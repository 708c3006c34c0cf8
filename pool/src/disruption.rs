//! The pool's disruption budget (DESIGN.md "Wave 2 additions"): how many of its VMs may
//! drain at once, and how long a soft removal waits for the drain hook.

use std::collections::BTreeMap;
use std::time::Duration;

use pm_proto::{Disruption, PoolConfig};
use serde_json::Value;

use crate::fields::MAX_TARGET_VM_COUNT;
use crate::problem::{json_type, shown, Problem};
use crate::update::{amount, resolve, AmountDocument};
use crate::validation::{match_fields, whole_number};

/// The label pm puts on a VM it removes on purpose, and its value.
pub const DRAINING_LABEL: (&str, &str) = ("pm-state", "draining");

/// The fields of the `disruption` block.
pub const DISRUPTION_FIELDS: [&str; 2] = ["maxConcurrent", "drainSeconds"];

/// `disruption.drainSeconds` when the config gives none.
pub const DEFAULT_DRAIN_SECONDS: u32 = 30;

/// Longest `disruption.drainSeconds`: a day.
pub const MAX_DRAIN_SECONDS: i64 = 86_400;

/// VMs of the pool that may drain at once: `maxConcurrent` (a percentage of
/// targetVMCount rounded up), at least 1 so that removals always progress; 1 when not
/// given.
pub fn max_concurrent(config: &PoolConfig) -> u64 {
    let given = config.disruption.as_ref().and_then(|d| d.max_concurrent);
    resolve(given.as_ref(), config.target_vm_count, 1).max(1)
}

/// How long a soft removal waits for the drain hook.
pub fn drain_wait(config: &PoolConfig) -> Duration {
    let seconds = config
        .disruption
        .as_ref()
        .and_then(|d| d.drain_seconds)
        .unwrap_or(DEFAULT_DRAIN_SECONDS);
    Duration::from_secs(u64::from(seconds))
}

/// Checks the `disruption` block; problems name `disruption.<field>`.
pub fn check_disruption(value: &Value, problems: &mut Vec<Problem>) -> Option<Disruption> {
    let Value::Object(object) = value else {
        problems.push(Problem::new(
            "disruption",
            format!(
                "must be an object like {{maxConcurrent: 1, drainSeconds: 30}}, found {} {}",
                json_type(value),
                shown(value)
            ),
        ));
        return None;
    };
    let given = match_fields(
        object,
        &DISRUPTION_FIELDS,
        "disruption field",
        |key| format!("disruption.{key}"),
        problems,
    );
    let mut disruption = Disruption::default();
    for (field, value) in &given {
        let result = match *field {
            "maxConcurrent" => amount(value).and_then(|a| {
                if a.value == 0 {
                    Err("must be at least 1 (or a percentage over 0%): with 0 no VM could ever be removed on purpose".to_string())
                } else if !a.percent && i64::from(a.value) > MAX_TARGET_VM_COUNT {
                    Err(format!("{} is more than {MAX_TARGET_VM_COUNT}, the most VMs a pool holds", a.value))
                } else {
                    disruption.max_concurrent = Some(a);
                    Ok(())
                }
            }),
            _ => whole_number(value, &(0..=MAX_DRAIN_SECONDS))
                .map(|n| disruption.drain_seconds = u32::try_from(n).ok()),
        };
        if let Err(message) = result {
            problems.push(Problem::new(format!("disruption.{field}"), message));
        }
    }
    Some(disruption)
}

/// The `disruption` block of a config document; fields not given are left out.
pub fn disruption_document(disruption: &Disruption) -> Option<BTreeMap<&'static str, Value>> {
    let mut fields = BTreeMap::new();
    if let Some(a) = &disruption.max_concurrent {
        fields.insert(
            "maxConcurrent",
            serde_json::to_value(AmountDocument::of(a)).ok()?,
        );
    }
    if let Some(seconds) = disruption.drain_seconds {
        fields.insert("drainSeconds", seconds.into());
    }
    (!fields.is_empty()).then_some(fields)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn checked(value: Value) -> (Option<Disruption>, Vec<Problem>) {
        let mut problems = Vec::new();
        (check_disruption(&value, &mut problems), problems)
    }

    #[test]
    fn counts_and_percentages_resolve_against_the_target() {
        let mut config = PoolConfig {
            target_vm_count: 10,
            ..Default::default()
        };
        assert_eq!(max_concurrent(&config), 1, "the default");
        assert_eq!(drain_wait(&config), Duration::from_secs(30));
        let (d, problems) = checked(json!({"maxConcurrent": "25%", "drainSeconds": 0}));
        assert!(problems.is_empty(), "{problems:?}");
        config.disruption = d;
        assert_eq!(max_concurrent(&config), 3, "25% of 10 rounded up");
        assert_eq!(
            drain_wait(&config),
            Duration::ZERO,
            "0 is given, not the default"
        );
        config.target_vm_count = 0;
        assert_eq!(max_concurrent(&config), 1, "never 0");
        let (d, _) = checked(json!({"maxConcurrent": 4}));
        config.disruption = d;
        assert_eq!(max_concurrent(&config), 4);
    }

    #[test]
    fn bad_blocks_are_named() {
        for (value, field, needle) in [
            (json!(3), "disruption", "must be an object"),
            (
                json!({"maxConcurrent": 0}),
                "disruption.maxConcurrent",
                "at least 1",
            ),
            (
                json!({"maxConcurrent": "0%"}),
                "disruption.maxConcurrent",
                "at least 1",
            ),
            (
                json!({"maxConcurrent": "150%"}),
                "disruption.maxConcurrent",
                "over 100%",
            ),
            (
                json!({"maxConcurrent": 100_001}),
                "disruption.maxConcurrent",
                "more than 100000",
            ),
            (
                json!({"maxConcurrent": "x"}),
                "disruption.maxConcurrent",
                "percentage",
            ),
            (
                json!({"drainSeconds": -1}),
                "disruption.drainSeconds",
                "range",
            ),
            (
                json!({"drainSeconds": 86_401}),
                "disruption.drainSeconds",
                "range",
            ),
            (
                json!({"maxConcurent": 1}),
                "disruption.maxConcurent",
                "maxConcurrent",
            ),
        ] {
            let (_, problems) = checked(value.clone());
            assert_eq!(problems.len(), 1, "{value}: {problems:?}");
            assert_eq!(problems[0].field, field, "{value}");
            assert!(
                problems[0].message.contains(needle),
                "{value}: {}",
                problems[0].message
            );
        }
    }

    #[test]
    fn the_document_gives_back_what_was_given() {
        let (d, _) = checked(json!({"maxConcurrent": "10%", "drainSeconds": 5}));
        let document = disruption_document(&d.expect("checked")).expect("fields");
        assert_eq!(document["maxConcurrent"], json!("10%"));
        assert_eq!(document["drainSeconds"], json!(5));
        assert!(disruption_document(&Disruption::default()).is_none());
    }
}
