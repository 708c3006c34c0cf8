//! `pmctl shed POOL N`: lowers the pool's targetVMCount by N and removes N of its VMs,
//! those the selector picks or, without one, those a scale-down would pick. One
//! transaction lowers the target (only while the config is the one read), writes the
//! workflow and a shed request per VM. The scheduler lowers each chosen VM's zone by it,
//! and the zone's agent drains it once its count leaves it out, so none is replaced.

use std::time::Duration;

use pm_etcd::etcd_client::{Compare, CompareOp};
use pm_etcd::{now_unix_ms, put_op, Store};
use pm_pool::removal::{removal_order, RemovalRank, Selector};
use pm_pool::{revision, ObservedStatus};
use pm_proto::{
    DrainRequest, InstanceState, ObservedInstance, Severity, Workflow, WorkflowInstance,
    WorkflowKind,
};

use crate::drain::{new_workflow_id, submit, WorkflowView, MAX_DRAIN};
use crate::error::{Error, Result};
use crate::events::record;
use crate::output::{self, OutputFormat};
use crate::snapshot;

/// What `pmctl shed` is asked.
#[derive(Debug, Clone)]
pub struct ShedArgs {
    /// The pool.
    pub pool: String,
    /// How many VMs go, and how much the target goes down.
    pub count: usize,
    /// Only VMs of this zone.
    pub zone: Option<String>,
    /// Only VMs with this label.
    pub selector: Option<Selector>,
    /// Delete at once, without waiting for the drain hook.
    pub hard: bool,
    /// Why.
    pub reason: String,
    /// A shed of the pool less than this ago refuses this one.
    pub min_interval: Duration,
    /// Shed even within `min_interval` of the last.
    pub force: bool,
}

/// A VM that may be shed, with what its removal order is decided on.
struct Candidate<'a> {
    zone: &'a str,
    name: &'a str,
    instance: &'a ObservedInstance,
}

impl<'a> Candidate<'a> {
    fn rank(&self, revision: &str) -> RemovalRank<'a> {
        RemovalRank {
            old: self.instance.revision != revision,
            running: self.instance.state() == InstanceState::Running,
            created_unix_ms: self.instance.created_unix_ms,
            name: self.name,
        }
    }
}

/// `pmctl shed POOL N [--zone Z] [--selector K=V] [--hard] [--reason] [--min-interval]
/// [--force]`.
pub async fn shed(store: &Store, args: &ShedArgs, format: OutputFormat) -> Result<()> {
    let pool = args.pool.as_str();
    if args.count == 0 || args.count > MAX_DRAIN {
        return Err(Error::Refused(format!(
            "shed {} VMs: one shed takes 1 to {MAX_DRAIN}",
            args.count
        )));
    }
    let keys = store.keys();
    let (pools, _, _) = snapshot::read_pools(store, Some(pool)).await?;
    let stored = pools.get(pool);
    let Some(config) = stored
        .and_then(|p| p.config.as_ref())
        .filter(|c| !c.value.deleted)
    else {
        return Err(Error::NoSuchPool {
            pool: pool.to_string(),
        });
    };
    let now = now_unix_ms();
    if !args.force {
        refuse_within_interval(store, pool, args.min_interval, now).await?;
    }
    let count = i64::try_from(args.count).unwrap_or(i64::MAX);
    if count > config.value.target_vm_count {
        return Err(Error::Refused(format!(
            "pool {pool:?} has targetVMCount {}; it cannot shed {count}",
            config.value.target_vm_count
        )));
    }
    let current = revision(&config.value);
    let allowed = &config.value.allowed_zones;
    if let Some(zone) = args.zone.as_ref().filter(|z| !allowed.contains(z)) {
        return Err(Error::Refused(format!(
            "pool {pool:?} does not allow zone {zone}; its VMs there go anyway"
        )));
    }
    // Only VMs GCE runs, in zones the pool allows: one being created is not yet live for
    // its agent's count, and a zone no longer allowed is emptied anyway.
    let mut candidates: Vec<Candidate<'_>> = stored
        .into_iter()
        .flat_map(|p| &p.zones)
        .filter(|(zone, _)| allowed.contains(zone))
        .filter(|(zone, _)| args.zone.as_ref().is_none_or(|z| z == *zone))
        .flat_map(|(zone, zk)| {
            zk.instances
                .iter()
                .filter(|(name, o)| {
                    ObservedStatus::of(&o.value) == ObservedStatus::Running
                        && o.value.drain.is_none()
                        && !zk.drains.contains_key(*name)
                        && args
                            .selector
                            .as_ref()
                            .is_none_or(|s| s.matches(&o.value.labels))
                })
                .map(move |(name, o)| Candidate {
                    zone,
                    name,
                    instance: &o.value,
                })
        })
        .collect();
    candidates.sort_by(|a, b| removal_order(&a.rank(&current), &b.rank(&current)));
    if candidates.len() < args.count {
        return Err(Error::Refused(format!(
            "pool {pool:?} has {} RUNNING VM(s) that may be shed{}{}, fewer than {count}; nothing was written",
            candidates.len(),
            args.zone.as_ref().map_or(String::new(), |z| format!(" in zone {z}")),
            args.selector
                .as_ref()
                .map_or(String::new(), |s| format!(" with label {}={}", s.key, s.value)),
        )));
    }
    let selected: Vec<WorkflowInstance> = candidates
        .iter()
        .take(args.count)
        .map(|c| WorkflowInstance {
            zone: c.zone.to_string(),
            name: c.name.to_string(),
        })
        .collect();
    let reason = if args.reason.is_empty() {
        "pmctl shed".to_string()
    } else {
        args.reason.clone()
    };
    let workflow_id = new_workflow_id(now);
    let workflow = Workflow {
        kind: WorkflowKind::Shed as i32,
        selected: selected.clone(),
        reason: reason.clone(),
        hard: args.hard,
        created_unix_ms: now,
        shed: count,
    };
    let request = DrainRequest {
        reason: reason.clone(),
        hard: args.hard,
        workflow_id: workflow_id.clone(),
        shed: true,
        requested_unix_ms: now,
    };
    let mut lowered = config.value.clone();
    lowered.target_vm_count -= count;
    let config_key = keys.pool_config(pool)?;
    let guards = vec![Compare::mod_revision(
        config_key.clone(),
        CompareOp::Equal,
        config.mod_revision,
    )];
    let ops = vec![put_op(&config_key, &lowered, 0)];
    submit(store, pool, &workflow_id, &workflow, &request, guards, ops).await?;
    let names: Vec<String> = selected.iter().map(|vm| vm.name.clone()).collect();
    let mode = if args.hard { "hard" } else { "soft" };
    let message = format!(
        "shed {count} ({mode}): targetVMCount {} -> {}, removing {}: {reason}",
        config.value.target_vm_count,
        lowered.target_vm_count,
        names.join(", ")
    );
    record(store, pool, "shed", Severity::Info, "", message).await;
    let view = WorkflowView {
        pool: pool.to_string(),
        workflow_id,
        selected: names,
        state: "requested",
    };
    output::emit(format, &view)
}

/// Refuses when a shed of `pool` was made less than `interval` before `now_ms`.
async fn refuse_within_interval(
    store: &Store,
    pool: &str,
    interval: Duration,
    now_ms: i64,
) -> Result<()> {
    let listing = store
        .list::<Workflow>(&store.keys().workflows_prefix(pool)?)
        .await?;
    let last = listing
        .items
        .iter()
        .filter(|(_, w)| w.value.kind() == WorkflowKind::Shed)
        .map(|(_, w)| w.value.created_unix_ms)
        .max();
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    match last {
        Some(at) if now_ms.saturating_sub(at) < interval_ms => Err(Error::Refused(format!(
            "pool {pool:?} was shed {}s ago, within --min-interval {}s; wait, or pass --force",
            now_ms.saturating_sub(at).max(0) / 1000,
            interval.as_secs()
        ))),
        _ => Ok(()),
    }
}
