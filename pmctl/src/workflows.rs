//! `pmctl workflows POOL [ID]`: where the pool's `pmctl drain` and `pmctl shed`
//! workflows stand. A workflow's record says what was asked; its progress is read from
//! the drain requests and observed keys of the VMs it selected.

use pm_etcd::{PoolKeys, Store};
use pm_proto::{Workflow, WorkflowKind};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::output::{self, Align, OutputFormat, Render, Table};
use crate::snapshot;

/// Where one selected VM stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Asked; its agent has not started draining it (its budget slot, or for a shed the
    /// lowered count, is not there yet).
    Requested,
    /// Labelled and draining: its drain hook runs or it waits for the delete.
    Draining,
    /// Gone: its request was removed with it.
    Done,
}

impl Step {
    fn word(self) -> &'static str {
        match self {
            Step::Requested => "requested",
            Step::Draining => "draining",
            Step::Done => "done",
        }
    }
}

/// One selected VM of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRow {
    /// Its zone.
    pub zone: String,
    /// Its name.
    pub name: String,
    /// Where it stands.
    pub state: Step,
}

/// One workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowRow {
    /// The pool.
    pub pool: String,
    /// Its id.
    pub workflow_id: String,
    /// `drain` or `shed`.
    pub kind: &'static str,
    /// The VMs it selected.
    pub selected: Vec<String>,
    /// `requested` while no VM started, `done` once all are gone, `draining` between.
    pub state: Step,
    /// Each selected VM.
    pub instances: Vec<StepRow>,
    /// Why.
    pub reason: String,
    /// Deleted at once, without waiting for the drain hook.
    pub hard: bool,
    /// When it was asked (Unix ms).
    pub created_unix_ms: i64,
}

/// What `pmctl workflows POOL` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowsView {
    /// The pool.
    pub pool: String,
    /// Its workflows, oldest first.
    pub workflows: Vec<WorkflowRow>,
}

impl Render for WorkflowsView {
    fn table(&self) -> String {
        if self.workflows.is_empty() {
            return format!("pool {} has no workflows\n", self.pool);
        }
        let mut table = Table::new(&[
            ("WORKFLOW", Align::Left),
            ("KIND", Align::Left),
            ("STATE", Align::Left),
            ("DONE", Align::Right),
            ("MODE", Align::Left),
            ("REASON", Align::Left),
        ]);
        for w in &self.workflows {
            table.row(vec![
                w.workflow_id.clone(),
                w.kind.to_string(),
                w.state.word().to_string(),
                format!("{}/{}", done(w), w.instances.len()),
                if w.hard { "hard" } else { "soft" }.to_string(),
                w.reason.clone(),
            ]);
        }
        table.render()
    }
}

impl Render for WorkflowRow {
    fn table(&self) -> String {
        let mut out = format!(
            "workflow {} of pool {} ({}, {}): {}, {}/{} done: {}\n",
            self.workflow_id,
            self.pool,
            self.kind,
            if self.hard { "hard" } else { "soft" },
            self.state.word(),
            done(self),
            self.instances.len(),
            self.reason
        );
        let mut table = Table::new(&[
            ("ZONE", Align::Left),
            ("NAME", Align::Left),
            ("STATE", Align::Left),
        ]);
        for i in &self.instances {
            table.row(vec![
                i.zone.clone(),
                i.name.clone(),
                i.state.word().to_string(),
            ]);
        }
        out.push_str(&table.render());
        out
    }
}

fn done(w: &WorkflowRow) -> usize {
    w.instances.iter().filter(|i| i.state == Step::Done).count()
}

/// The workflow as it stands in `keys`, the pool's keys.
fn row(pool: &str, id: &str, workflow: &Workflow, keys: Option<&PoolKeys>) -> WorkflowRow {
    let instances: Vec<StepRow> = workflow
        .selected
        .iter()
        .map(|vm| {
            let zone = keys.map(|k| k.zone(&vm.zone));
            let requested = zone.and_then(|z| z.drains.get(&vm.name));
            let draining = zone
                .and_then(|z| z.instances.get(&vm.name))
                .is_some_and(|o| o.value.drain.is_some());
            let state = match requested {
                Some(r) if r.value.workflow_id == id => {
                    if draining {
                        Step::Draining
                    } else {
                        Step::Requested
                    }
                }
                _ => Step::Done,
            };
            StepRow {
                zone: vm.zone.clone(),
                name: vm.name.clone(),
                state,
            }
        })
        .collect();
    let state = if instances.iter().all(|i| i.state == Step::Done) {
        Step::Done
    } else if instances.iter().all(|i| i.state == Step::Requested) {
        Step::Requested
    } else {
        Step::Draining
    };
    WorkflowRow {
        pool: pool.to_string(),
        workflow_id: id.to_string(),
        kind: match workflow.kind() {
            WorkflowKind::Drain => "drain",
            WorkflowKind::Shed => "shed",
        },
        selected: workflow.selected.iter().map(|vm| vm.name.clone()).collect(),
        state,
        instances,
        reason: workflow.reason.clone(),
        hard: workflow.hard,
        created_unix_ms: workflow.created_unix_ms,
    }
}

/// `pmctl workflows POOL [ID]`.
pub async fn show(store: &Store, pool: &str, id: Option<&str>, format: OutputFormat) -> Result<()> {
    let prefix = store.keys().workflows_prefix(pool)?;
    let listing = store.list::<Workflow>(&prefix).await?;
    for invalid in &listing.invalid {
        tracing::warn!("{invalid}");
    }
    let (pools, _, _) = snapshot::read_pools(store, Some(pool)).await?;
    let mut rows: Vec<WorkflowRow> = listing
        .items
        .iter()
        .filter_map(|(key, w)| {
            let workflow_id = key.strip_prefix(&prefix)?;
            Some(row(pool, workflow_id, &w.value, pools.get(pool)))
        })
        .collect();
    if rows.is_empty() && !pools.contains_key(pool) {
        return Err(Error::NoSuchPool {
            pool: pool.to_string(),
        });
    }
    rows.sort_by_key(|r| (r.created_unix_ms, r.workflow_id.clone()));
    match id {
        Some(id) => {
            let Some(found) = rows.into_iter().find(|r| r.workflow_id == id) else {
                return Err(Error::Refused(format!(
                    "pool {pool:?} has no workflow {id:?} (kept for 7 days; pmctl workflows {pool} lists them)"
                )));
            };
            output::emit(format, &found)
        }
        None => output::emit(
            format,
            &WorkflowsView {
                pool: pool.to_string(),
                workflows: rows,
            },
        ),
    }
}
