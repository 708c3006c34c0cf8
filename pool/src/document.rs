//! A stored [`PoolConfig`] written back as the config document `pmctl config set` accepts,
//! with DESIGN.md's field names, so `config get -o json | jq .config` round-trips.

use std::collections::BTreeMap;

use pm_proto::{Hooks, PoolConfig};
use serde::Serialize;
use serde_json::Value;

use crate::disruption::disruption_document;
use crate::fields::{distribution_name, on_preempted_name};
use crate::update::update_document;

/// A pool config document. Fields left at their default in the stored config are left
/// out, so the document reads back into the same stored value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigDocument {
    /// Instances to keep alive.
    #[serde(rename = "targetVMCount")]
    pub target_vm_count: i64,
    /// Zones the pool may use.
    #[serde(rename = "allowedZones")]
    pub allowed_zones: Vec<String>,
    /// Instance name prefix.
    pub prefix: String,
    /// The GCE Instance template; a string when the stored text is not JSON.
    pub instance: Value,
    /// Agent resync period; absent: the default.
    #[serde(rename = "secondsToRest", skip_serializing_if = "Option::is_none")]
    pub seconds_to_rest: Option<u32>,
    /// Back-off of an exhausted zone; absent: the default.
    #[serde(
        rename = "secondsForExhaustion",
        skip_serializing_if = "Option::is_none"
    )]
    pub seconds_for_exhaustion: Option<u32>,
    /// Hook names; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksDocument>,
    /// GCE project; absent: the agent's `--project`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `even`, `balanced` or `any`.
    pub distribution: &'static str,
    /// `delete` or `restart`.
    #[serde(rename = "onPreempted")]
    pub on_preempted: &'static str,
    /// The update policy; absent: the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<BTreeMap<&'static str, Value>>,
    /// Adopt mode (VMs with the prefix and no pm-pool label become the pool's); absent:
    /// off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
    /// VMs kept beyond the target; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spares: Option<u32>,
    /// The disruption budget; absent: the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disruption: Option<BTreeMap<&'static str, Value>>,
}

/// The hooks of a document; only the hooks that are set appear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HooksDocument {
    /// Runs after a create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create: Option<String>,
    /// Runs after a delete by pm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
    /// Runs when an instance vanished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vanished: Option<String>,
    /// Runs on a stockout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
    /// Runs when an instance was preempted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preempted: Option<String>,
    /// Runs when pm starts removing an instance on purpose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

impl HooksDocument {
    fn from_hooks(hooks: &Hooks) -> Option<Self> {
        let document = Self {
            create: non_empty(&hooks.create),
            delete: non_empty(&hooks.delete),
            vanished: non_empty(&hooks.vanished),
            exhausted: non_empty(&hooks.exhausted),
            preempted: non_empty(&hooks.preempted),
            drain: non_empty(&hooks.drain),
        };
        let none = Self {
            create: None,
            delete: None,
            vanished: None,
            exhausted: None,
            preempted: None,
            drain: None,
        };
        (document != none).then_some(document)
    }

    /// The hooks that are set, as `name=executable` pairs.
    pub fn pairs(&self) -> Vec<String> {
        [
            ("create", &self.create),
            ("delete", &self.delete),
            ("vanished", &self.vanished),
            ("exhausted", &self.exhausted),
            ("preempted", &self.preempted),
            ("drain", &self.drain),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
        .collect()
    }
}

impl ConfigDocument {
    /// The document of a stored config.
    pub fn from_config(config: &PoolConfig) -> Self {
        let instance = serde_json::from_str(&config.instance_json)
            .unwrap_or_else(|_| Value::String(config.instance_json.clone()));
        Self {
            target_vm_count: config.target_vm_count,
            allowed_zones: config.allowed_zones.clone(),
            prefix: config.prefix.clone(),
            instance,
            seconds_to_rest: (config.seconds_to_rest > 0).then_some(config.seconds_to_rest),
            seconds_for_exhaustion: (config.seconds_for_exhaustion > 0)
                .then_some(config.seconds_for_exhaustion),
            hooks: config.hooks.as_ref().and_then(HooksDocument::from_hooks),
            project: non_empty(&config.project),
            distribution: distribution_name(config.distribution()),
            on_preempted: on_preempted_name(config.on_preempted()),
            update: config.update.as_ref().and_then(update_document),
            adopt: config.adopt,
            spares: (config.spares > 0).then_some(config.spares),
            disruption: config.disruption.as_ref().and_then(disruption_document),
        }
    }
}
