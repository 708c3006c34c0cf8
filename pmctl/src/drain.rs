//! `pmctl drain POOL NAME...`: asks the agents to drain these VMs and replace them. One
//! transaction writes the workflow (`pools/<pool>/workflows/<id>`) and a drain request per
//! VM (`pools/<pool>/zones/<zone>/drain/<name>`), and only while every VM's observed key
//! still exists; the zone's active agent drains each within the pool's disruption budget
//! and removes its request when the VM is gone, through any failover.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_etcd::etcd_client::{Compare, CompareOp, TxnOp};
use pm_etcd::{now_unix_ms, put_op, Store};
use pm_proto::{DrainRequest, Severity, Workflow, WorkflowInstance, WorkflowKind};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::events::record;
use crate::output::{self, OutputFormat, Render};
use crate::snapshot;

/// Most VMs one `pmctl drain` or `pmctl shed` takes: its two guards per VM (its key is
/// there, no request for it yet) stay within etcd's default `--max-txn-ops` of 128.
pub const MAX_DRAIN: usize = 60;

/// How long a workflow's record is kept.
const WORKFLOW_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `pmctl drain` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowView {
    /// The pool.
    pub pool: String,
    /// The workflow's id.
    pub workflow_id: String,
    /// The VMs it drains.
    pub selected: Vec<String>,
    /// `requested`: written, for the agents to carry out.
    pub state: &'static str,
}

impl Render for WorkflowView {
    fn table(&self) -> String {
        format!(
            "workflow {} of pool {}: {} VM(s) {}: {}\n",
            self.workflow_id,
            self.pool,
            self.selected.len(),
            self.state,
            self.selected.join(", ")
        )
    }
}

/// `pmctl drain POOL NAME... [--hard] [--reason TEXT]`.
pub async fn drain(
    store: &Store,
    pool: &str,
    names: &[String],
    hard: bool,
    reason: &str,
    format: OutputFormat,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    let names: Vec<String> = names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect();
    if names.len() > MAX_DRAIN {
        return Err(Error::Refused(format!(
            "{} VMs named; one drain takes at most {MAX_DRAIN}",
            names.len()
        )));
    }
    let (pools, _, _) = snapshot::read_pools(store, Some(pool)).await?;
    let stored = pools.get(pool);
    if stored.is_none_or(|p| p.config.as_ref().is_none_or(|c| c.value.deleted)) {
        return Err(Error::NoSuchPool {
            pool: pool.to_string(),
        });
    }
    // The zone of each of the pool's observed VMs.
    let zones: BTreeMap<&str, &str> = stored
        .into_iter()
        .flat_map(|p| &p.zones)
        .flat_map(|(zone, keys)| {
            keys.instances
                .keys()
                .map(move |name| (name.as_str(), zone.as_str()))
        })
        .collect();
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| !zones.contains_key(n.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Refused(format!(
            "pool {pool:?} has no VM named {}; nothing was written (pmctl instances {pool} lists them)",
            unknown.join(", ")
        )));
    }
    let asked: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let request = stored?.zone(zones[n.as_str()]).drains.get(n)?;
            Some(format!("{n} (workflow {})", request.value.workflow_id))
        })
        .collect();
    if !asked.is_empty() {
        return Err(Error::Refused(format!(
            "already asked to drain or shed: {}; nothing was written (pmctl workflows {pool} shows them)",
            asked.join(", ")
        )));
    }
    let now = now_unix_ms();
    let workflow_id = new_workflow_id(now);
    let reason = if reason.is_empty() {
        "pmctl drain".to_string()
    } else {
        reason.to_string()
    };
    let selected: Vec<WorkflowInstance> = names
        .iter()
        .map(|n| WorkflowInstance {
            zone: zones[n.as_str()].to_string(),
            name: n.clone(),
        })
        .collect();
    let workflow = Workflow {
        kind: WorkflowKind::Drain as i32,
        selected: selected.clone(),
        reason: reason.clone(),
        hard,
        created_unix_ms: now,
        shed: 0,
    };
    let request = DrainRequest {
        reason: reason.clone(),
        hard,
        workflow_id: workflow_id.clone(),
        shed: false,
        requested_unix_ms: now,
    };
    submit(
        store,
        pool,
        &workflow_id,
        &workflow,
        &request,
        Vec::new(),
        Vec::new(),
    )
    .await?;
    let mode = if hard { "hard" } else { "soft" };
    let message = format!("drain of {} asked ({mode}): {reason}", names.join(", "));
    record(store, pool, "drain-requested", Severity::Info, "", message).await;
    let view = WorkflowView {
        pool: pool.to_string(),
        workflow_id,
        selected: names.to_vec(),
        state: "requested",
    };
    output::emit(format, &view)
}

/// A new workflow's id: its time first, so ids sort as they were made.
pub(crate) fn new_workflow_id(now_ms: i64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{now_ms}-{:x}{nanos:08x}", std::process::id())
}

/// Writes `workflow` as `workflow_id` and `request` for each VM it selects, in one
/// transaction with `ops`, only while the workflow is new, every selected VM's observed
/// key exists, none has a request yet, and `guards` hold.
pub(crate) async fn submit(
    store: &Store,
    pool: &str,
    workflow_id: &str,
    workflow: &Workflow,
    request: &DrainRequest,
    mut guards: Vec<Compare>,
    mut ops: Vec<TxnOp>,
) -> Result<()> {
    let keys = store.keys();
    let lease = store.grant_lease(WORKFLOW_RETENTION).await?;
    let workflow_key = keys.workflow(pool, workflow_id)?;
    guards.push(Compare::version(workflow_key.clone(), CompareOp::Equal, 0));
    ops.push(put_op(&workflow_key, workflow, lease));
    for vm in &workflow.selected {
        let instance = keys.instance(pool, &vm.zone, &vm.name)?;
        guards.push(Compare::create_revision(instance, CompareOp::Greater, 0));
        let request_key = keys.drain_request(pool, &vm.zone, &vm.name)?;
        guards.push(Compare::version(request_key.clone(), CompareOp::Equal, 0));
        ops.push(put_op(&request_key, request, 0));
    }
    match store
        .txn_if(guards, "every selected VM still there", ops)
        .await
    {
        Ok(_) => Ok(()),
        Err(pm_etcd::Error::GuardFailed { .. }) => Err(Error::Refused(
            "meanwhile a selected VM went away or was asked to drain, or the pool changed; nothing was written, run it again"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}
