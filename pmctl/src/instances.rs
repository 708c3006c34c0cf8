//! `pmctl instances POOL [--zone Z]`: the observed instances of a pool.

use pm_etcd::{now_unix_ms, Store};
use pm_proto::ObservedInstance;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::output::{self, Align, OutputFormat, Render, Table};
use pm_pool::ObservedStatus;

use crate::snapshot::{self, state_name};

/// One observed instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRow {
    /// Its zone.
    pub zone: String,
    /// Its GCE name.
    pub name: String,
    /// How it counts: running, starting, lost or deleting.
    pub status: ObservedStatus,
    /// The state the agent last observed: RUNNING, STAGING, TERMINATED, ...
    pub state: &'static str,
    /// Whether it was seen preempted.
    pub preempted: bool,
    /// GCE's numeric id; empty until assigned.
    pub gce_id: String,
    /// The agent that wrote it.
    pub agent_id: String,
    /// When pm issued its insert (Unix ms).
    pub created_unix_ms: i64,
    /// When its state last changed (Unix ms).
    pub state_changed_unix_ms: i64,
    /// Its GCE labels as last listed, without pm-pool and pm-state.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl InstanceRow {
    fn new(zone: &str, name: &str, instance: &ObservedInstance) -> Self {
        Self {
            zone: zone.to_string(),
            name: name.to_string(),
            status: ObservedStatus::of(instance),
            state: state_name(instance.state()),
            preempted: instance.preempted,
            gce_id: instance.gce_id.clone(),
            agent_id: instance.agent_id.clone(),
            created_unix_ms: instance.created_unix_ms,
            state_changed_unix_ms: instance.state_changed_unix_ms,
            labels: instance.labels.clone(),
        }
    }
}

/// What `pmctl instances` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstancesView {
    /// The pool.
    pub pool: String,
    /// When the ages in the table are measured from (Unix ms).
    pub now_unix_ms: i64,
    /// Its instances, by zone and name.
    pub instances: Vec<InstanceRow>,
}

impl Render for InstancesView {
    fn table(&self) -> String {
        if self.instances.is_empty() {
            return format!("pool {} has no observed instances\n", self.pool);
        }
        let mut table = Table::new(&[
            ("ZONE", Align::Left),
            ("NAME", Align::Left),
            ("STATUS", Align::Left),
            ("STATE", Align::Left),
            ("AGE", Align::Right),
            ("IN STATE", Align::Right),
            ("AGENT", Align::Left),
            ("GCE ID", Align::Left),
        ]);
        for i in &self.instances {
            let state = if i.preempted {
                format!("{} (preempted)", i.state)
            } else {
                i.state.to_string()
            };
            table.row(vec![
                i.zone.clone(),
                i.name.clone(),
                i.status.word().to_string(),
                state,
                output::age(i.created_unix_ms, self.now_unix_ms),
                output::age(i.state_changed_unix_ms, self.now_unix_ms),
                i.agent_id.clone(),
                if i.gce_id.is_empty() {
                    "-".into()
                } else {
                    i.gce_id.clone()
                },
            ]);
        }
        table.render()
    }
}

/// `pmctl instances POOL [--zone Z]`.
pub async fn show(
    store: &Store,
    pool: &str,
    zone: Option<&str>,
    format: OutputFormat,
) -> Result<()> {
    let (pools, _, warnings) = snapshot::read_pools(store, Some(pool)).await?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let Some(state) = pools.get(pool) else {
        return Err(Error::NoSuchPool {
            pool: pool.to_string(),
        });
    };
    let instances = state
        .zones
        .iter()
        .filter(|(z, _)| zone.is_none_or(|wanted| wanted == z.as_str()))
        .flat_map(|(z, zs)| {
            zs.instances
                .iter()
                .map(move |(n, i)| InstanceRow::new(z, n, &i.value))
        })
        .collect();
    let view = InstancesView {
        pool: pool.to_string(),
        now_unix_ms: now_unix_ms(),
        instances,
    };
    output::emit(format, &view)
}
