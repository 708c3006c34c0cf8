//! `pmctl config diff POOL -f FILE`: what `config set` with the file would change, field
//! by field (nested fields of the instance template by their path), and whether it
//! starts a rollout: the revision (template, project, prefix) changes.

use std::collections::BTreeMap;

use pm_etcd::Store;
use pm_pool::ConfigDocument;
use pm_proto::PoolConfig;
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::output::{self, OutputFormat, Render};
use crate::pool_config::current;

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// Its path, e.g. `targetVMCount` or `instance.machineType`.
    pub field: String,
    /// The stored value; `null` when absent.
    pub from: Value,
    /// The file's value; `null` when absent.
    pub to: Value,
}

/// What `pmctl config diff` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffView {
    /// The pool.
    pub pool: String,
    /// Whether the pool has a stored config (without one, every field is new).
    pub exists: bool,
    /// The fields that differ, in path order.
    pub changes: Vec<FieldChange>,
    /// The stored config's revision; empty without one.
    pub revision_from: String,
    /// The file's revision.
    pub revision_to: String,
    /// Whether applying the file starts a rollout of the pool's VMs.
    pub rollout: bool,
}

impl Render for DiffView {
    fn table(&self) -> String {
        let mut out = String::new();
        if self.changes.is_empty() {
            out.push_str(&format!("pool {}: no change\n", self.pool));
        }
        for c in &self.changes {
            let shown = |v: &Value| match v {
                Value::Null => "(none)".to_string(),
                v => v.to_string(),
            };
            out.push_str(&format!(
                "{}: {} -> {}\n",
                c.field,
                shown(&c.from),
                shown(&c.to)
            ));
        }
        if self.rollout {
            out.push_str(&format!(
                "applying it starts a rollout: revision {} -> {}\n",
                self.revision_from, self.revision_to
            ));
        } else if self.exists {
            out.push_str(&format!(
                "no rollout: the revision stays {}\n",
                self.revision_to
            ));
        }
        out
    }
}

/// Every leaf of a document by dotted path; arrays are leaves.
fn flatten(value: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(v, &field, out);
            }
        }
        other => {
            out.insert(path.to_string(), other.clone());
        }
    }
}

fn fields(config: Option<&PoolConfig>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(config) = config {
        let document = serde_json::to_value(ConfigDocument::from_config(config));
        flatten(&document.unwrap_or_default(), "", &mut out);
    }
    out
}

/// The difference between a stored config and a new one.
pub fn diff(pool: &str, stored: Option<&PoolConfig>, new: &PoolConfig) -> DiffView {
    let (before, after) = (fields(stored), fields(Some(new)));
    let mut paths: Vec<&String> = before.keys().chain(after.keys()).collect();
    paths.sort();
    paths.dedup();
    let changes = paths
        .into_iter()
        .filter_map(|path| {
            let from = before.get(path).cloned().unwrap_or(Value::Null);
            let to = after.get(path).cloned().unwrap_or(Value::Null);
            (from != to).then(|| FieldChange {
                field: path.clone(),
                from,
                to,
            })
        })
        .collect();
    let revision_from = stored.map(pm_pool::revision).unwrap_or_default();
    let revision_to = pm_pool::revision(new);
    DiffView {
        pool: pool.to_string(),
        exists: stored.is_some(),
        changes,
        rollout: stored.is_some() && revision_from != revision_to,
        revision_from,
        revision_to,
    }
}

/// `pmctl config diff POOL -f FILE`.
pub async fn show(store: &Store, pool: &str, new: &PoolConfig, format: OutputFormat) -> Result<()> {
    let stored = current(store, pool).await?;
    let view = diff(pool, stored.as_ref().map(|s| &s.value), new);
    output::emit(format, &view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(machine: &str, target: i64) -> PoolConfig {
        PoolConfig {
            target_vm_count: target,
            allowed_zones: vec!["zone-a".into()],
            prefix: "w-".into(),
            instance_json: format!(r#"{{"machineType": "{machine}", "labels": {{"a": "b"}}}}"#),
            ..Default::default()
        }
    }

    #[test]
    fn a_template_change_is_a_rollout_and_a_scale_is_not() {
        let stored = config("e2-small", 3);
        let view = diff("web", Some(&stored), &config("e2-medium", 3));
        assert!(view.rollout);
        assert_eq!(view.changes.len(), 1, "{:?}", view.changes);
        assert_eq!(view.changes[0].field, "instance.machineType");
        assert_eq!(view.changes[0].from, "e2-small");
        assert!(view.table().contains("starts a rollout"));
        let view = diff("web", Some(&stored), &config("e2-small", 5));
        assert!(!view.rollout);
        assert_eq!(view.changes[0].field, "targetVMCount");
        assert!(view.table().contains("no rollout"));
        let same = diff("web", Some(&stored), &stored);
        assert!(same.changes.is_empty() && !same.rollout);
        let new = diff("web", None, &stored);
        assert!(!new.exists && !new.rollout);
        assert!(new.changes.iter().all(|c| c.from.is_null()));
    }
}
