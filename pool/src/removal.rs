//! Which VMs go first when a pool removes some on purpose, shared by the agent's
//! scale-down and `pmctl shed` so that a shed without a selector picks what a scale-down
//! would; and the labels an observed key keeps for `pmctl shed --selector`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use pm_gce::template::{validate_label_key, validate_label_value};

use crate::disruption::DRAINING_LABEL;
use crate::naming::POOL_LABEL;

/// What the removal order of one VM is decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalRank<'a> {
    /// It has another revision than the pool's.
    pub old: bool,
    /// It is RUNNING.
    pub running: bool,
    /// When it was created, Unix ms.
    pub created_unix_ms: i64,
    /// Its name: the last tie-break, so the order never depends on input order.
    pub name: &'a str,
}

/// Least useful first: old revisions, then VMs not yet running, then the newest (the
/// oldest have proven they survive, and have warmed up), then the last names.
pub fn removal_order(a: &RemovalRank<'_>, b: &RemovalRank<'_>) -> Ordering {
    b.old
        .cmp(&a.old)
        .then_with(|| a.running.cmp(&b.running))
        .then_with(|| b.created_unix_ms.cmp(&a.created_unix_ms))
        .then_with(|| b.name.cmp(a.name))
}

/// The labels an observed key records of a listed VM: all but `pm-pool`, which every
/// pool VM has, and `pm-state`, which pm sets while it drains the VM.
pub fn recorded_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| k.as_str() != POOL_LABEL && k.as_str() != DRAINING_LABEL.0)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A `KEY=VALUE` label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The label key.
    pub key: String,
    /// The value it must have.
    pub value: String,
}

impl Selector {
    /// Parses `KEY=VALUE`, both valid GCE label parts; a key pm records no value of
    /// (`pm-pool`, `pm-state`) is refused, since it would match all VMs or none.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!(
                "selector {text:?} is not KEY=VALUE (for example tier=batch)"
            ));
        };
        validate_label_key(key).map_err(|e| format!("selector {text:?}: {e}"))?;
        validate_label_value(value).map_err(|e| format!("selector {text:?}: {e}"))?;
        if key == POOL_LABEL || key == DRAINING_LABEL.0 {
            return Err(format!(
                "selector {text:?}: {key} is pm's own label and selects nothing useful"
            ));
        }
        Ok(Self {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// Whether recorded `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(name: &str, old: bool, running: bool, created: i64) -> RemovalRank<'_> {
        RemovalRank {
            old,
            running,
            created_unix_ms: created,
            name,
        }
    }

    #[test]
    fn old_then_not_running_then_newest_go_first() {
        let mut vms = [
            rank("a", false, true, 10),
            rank("b", false, true, 30),
            rank("c", false, false, 5),
            rank("d", true, true, 1),
            rank("e", false, true, 30),
        ];
        vms.sort_by(removal_order);
        let names: Vec<&str> = vms.iter().map(|r| r.name).collect();
        assert_eq!(names, ["d", "c", "e", "b", "a"]);
    }

    #[test]
    fn recorded_labels_leave_out_pm_pool_and_pm_state() {
        let labels: BTreeMap<String, String> = [
            ("pm-pool", "web"),
            ("pm-state", "draining"),
            ("pm-rev", "r1"),
            ("tier", "batch"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kept = recorded_labels(&labels);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["pm-rev", "tier"]);
    }

    #[test]
    fn selectors_parse_and_match() {
        let s = Selector::parse("tier=batch").expect("valid");
        let mut labels = BTreeMap::new();
        assert!(!s.matches(&labels));
        labels.insert("tier".to_string(), "batch".to_string());
        assert!(s.matches(&labels));
        assert!(Selector::parse("empty=")
            .expect("empty value")
            .value
            .is_empty());
        for (bad, needle) in [
            ("tier", "KEY=VALUE"),
            ("Tier=x", "lowercase"),
            ("tier=Batch", "not allowed"),
            ("pm-state=draining", "pm's own label"),
            ("pm-pool=web", "pm's own label"),
        ] {
            let e = Selector::parse(bad).expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
