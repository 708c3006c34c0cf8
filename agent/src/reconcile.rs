//! One reconcile pass over one pool in the zone: list the pool's instances in GCE,
//! decide ([`crate::decide`]) and work out the effects ([`crate::effects`]). A pass
//! calls GCE only to read; it returns what to write and do, and when the pool is due
//! next, so it is tested against the in-process fake without etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_etcd::{now_unix_ms, ZoneKeys};
use pm_gce::compute::Compute;
use pm_gce::error::GceError;
use pm_gce::resources::{Instance, Operation};
use pm_pool::{carries_pool_label, is_pool_member, new_instance_name, pool_filter, REVISION_LABEL};
use pm_proto::{DrainCause, InstanceState, PoolConfig, Severity, WitnessRequest};
use tokio::time::Instant;

use crate::claim::{adopt_filter, claims};
use crate::decide::{decide, is_stopped, InFlight, Listed, PoolInputs, Roll};
use crate::effects::{effects, EffectInputs, Effects};
use crate::pool_state::PoolState;
use crate::throttle::told;

/// What a pass needs besides the pool's state.
pub struct PassContext<'a> {
    /// GCE.
    pub compute: &'a dyn Compute,
    /// The zone served.
    pub zone: &'a str,
    /// This agent's id.
    pub agent_id: &'a str,
    /// Project of pools naming none (`--project`).
    pub default_project: Option<&'a str>,
    /// Longest wait for one operation; an insert not visible after twice this is
    /// given up.
    pub operation_timeout: Duration,
}

/// A problem to report as an event, once while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The event's kind.
    pub kind: &'static str,
    /// Its severity.
    pub severity: Severity,
    /// Its message.
    pub message: String,
}

/// What one pass found.
#[derive(Debug)]
pub struct Pass {
    /// Whether GCE was listed (the agent's readiness).
    pub listed: bool,
    /// Problems to report once.
    pub reports: Vec<Report>,
    /// What to do, with the pool's project; `None` when nothing can be done.
    pub effects: Option<(String, Effects)>,
    /// When the pool is due next.
    pub next_sync: Instant,
}

fn report(kind: &'static str, severity: Severity, message: String) -> Report {
    Report {
        kind,
        severity,
        message,
    }
}

/// What a pass asks GCE to list before it can decide, and the pass so far.
pub struct ListRequest {
    /// The pool's project.
    pub project: String,
    /// Other projects its observed keys record VMs in (before a project change), listed
    /// too until the rollout replaced those VMs.
    pub other_projects: Vec<String>,
    /// The label filter of the pool's instances.
    pub filter: String,
    /// In adopt mode, the name filter of the VMs the pool may claim, listed in its project.
    pub adopt_filter: Option<String>,
    /// Zones without agents the scheduler asks this agent to count ([`crate::witness`]).
    pub witness: Vec<WitnessRequest>,
    /// The config the pass decides with.
    pub config: Box<PoolConfig>,
    /// What the pass found so far.
    pub pass: Pass,
}

impl ListRequest {
    /// The projects to list: the pool's, then the others its keys name.
    pub fn projects(&self) -> Vec<String> {
        let others = self.other_projects.iter().cloned();
        std::iter::once(self.project.clone())
            .chain(others)
            .collect()
    }
}

/// Lists the pool's instances (`filter`) in the zone of each of `projects`, each with
/// its project, and in adopt mode the VMs `adopt_filter` names in the first (the pool's)
/// project, each once; one failed list fails the whole.
pub async fn list_projects(
    compute: &dyn Compute,
    projects: &[String],
    zone: &str,
    filter: &str,
    adopt_filter: Option<&str>,
) -> Result<Vec<(String, Instance)>, GceError> {
    let mut all = Vec::new();
    for project in projects {
        let listed = compute.list(project, zone, Some(filter)).await?;
        all.extend(listed.into_iter().map(|i| (project.clone(), i)));
    }
    if let (Some(adopt_filter), Some(project)) = (adopt_filter, projects.first()) {
        let seen: BTreeSet<String> = all
            .iter()
            .filter(|(p, _)| p == project)
            .map(|(_, i)| i.name.clone())
            .collect();
        let named = compute.list(project, zone, Some(adopt_filter)).await?;
        all.extend(
            named
                .into_iter()
                .filter(|i| !seen.contains(&i.name))
                .map(|i| (project.clone(), i)),
        );
    }
    Ok(all)
}

/// How a pass begins: done at once (nothing to list), or with a list to make.
pub enum Start {
    /// The pass is over without calling GCE.
    Done(Pass),
    /// The pass goes on once GCE listed the pool's instances.
    List(ListRequest),
}

/// The start of a pass over `pool`, whose keys in the zone are `keys`, before GCE is
/// called: what the config allows. Then GCE lists the pool's instances (beside other
/// pools' lists, [`crate::lists`]) and [`continue_pass`] decides. A pass updates what only
/// it decides in `state` (an expired pause is lifted; a failed list advances the list
/// back-off, and waits at least the `Retry-After` GCE sent) and returns the rest. Fresh
/// creates are limited to what the throttle allows ([`crate::throttle`]).
pub fn start_pass(
    ctx: &PassContext<'_>,
    pool: &str,
    state: &mut PoolState,
    keys: &ZoneKeys,
) -> Start {
    let mut pass = Pass {
        listed: false,
        reports: Vec::new(),
        effects: None,
        next_sync: Instant::now() + state.rest(),
    };
    if let Some(problem) = &state.config_problem {
        if !state.config_problem_reported {
            state.config_problem_reported = true;
            pass.reports.push(report(
                "invalid-config",
                Severity::Error,
                format!(
                    "the stored config is refused, the pool keeps its last valid config: {problem}"
                ),
            ));
        }
    }
    let Some(config) = state.config.clone() else {
        return Start::Done(pass);
    };
    if !state.concerns(ctx.zone, keys) {
        return Start::Done(pass);
    }
    let Some(project) = pm_pool::project_or(&config, ctx.default_project) else {
        pass.reports.push(report(
            "no-project",
            Severity::Error,
            "the pool names no project and the agent has no --project".into(),
        ));
        return Start::Done(pass);
    };
    let other_projects: BTreeSet<String> = keys
        .instances
        .values()
        .map(|o| o.value.project.clone())
        .filter(|p| !p.is_empty() && *p != project)
        .collect();
    Start::List(ListRequest {
        other_projects: other_projects.into_iter().collect(),
        project,
        filter: pool_filter(pool),
        adopt_filter: adopt_filter(&config),
        witness: keys
            .desired
            .as_ref()
            .map(|d| d.value.witness.clone())
            .unwrap_or_default(),
        config: Box::new(config),
        pass,
    })
}

/// The rest of a pass, with what GCE listed: decide and work out the effects.
pub async fn continue_pass(
    ctx: &PassContext<'_>,
    pool: &str,
    state: &mut PoolState,
    keys: &ZoneKeys,
    request: ListRequest,
    listed: Result<Vec<(String, Instance)>, GceError>,
) -> Pass {
    let ListRequest {
        project,
        config,
        mut pass,
        ..
    } = request;
    let listed = match listed {
        Ok(list) => list,
        Err(e) => {
            let delay = state.list_retry.next_delay().max(told(e.retry_after()));
            pass.next_sync = Instant::now() + delay;
            tracing::warn!(error = %e, ?delay, "cannot list instances");
            pass.reports.push(report(
                "gce-error",
                Severity::Warning,
                format!("cannot list instances: {e}"),
            ));
            return pass;
        }
    };
    pass.listed = true;
    state.list_retry.reset();
    let revision = pm_pool::revision(&config);
    state
        .label_refused
        .retain(|name| listed.iter().any(|(_, i)| &i.name == name));
    let claimed = claims(
        pool,
        &project,
        &config,
        &revision,
        &listed,
        &state.in_flight,
        &state.label_refused,
    );
    if claimed.pending {
        // Labelled first, counted then: the operations' results bring the next pass.
        pass.effects = Some((
            project,
            Effects {
                claims: claimed.send,
                ..Effects::default()
            },
        ));
        return pass;
    }
    // Members: the label and the prefix in the pool's project, or the label and an
    // observed key (a VM made under an earlier prefix or in an earlier project, replaced
    // by the rollout, never orphaned).
    let recorded = |in_project: &str, i: &Instance| {
        keys.instances.get(&i.name).is_some_and(|o| {
            let o = &o.value;
            let same_project = o.project.is_empty() || o.project == in_project;
            // GCE's id, once recorded (a number), must be this VM's.
            let known_id = o.gce_id.parse::<u64>().is_ok();
            let same_vm = !known_id || Some(&o.gce_id) == i.id.as_ref();
            same_project && same_vm
        })
    };
    let member = |in_project: &str, i: &Instance| {
        (in_project == project && is_pool_member(i, pool, &config.prefix))
            || (carries_pool_label(i, pool) && recorded(in_project, i))
    };
    let listed: BTreeMap<String, Listed> = listed
        .into_iter()
        .filter(|(in_project, i)| member(in_project, i))
        .filter_map(|(in_project, i)| {
            let status = i.status?;
            Some((
                i.name.clone(),
                Listed {
                    name: i.name.clone(),
                    status,
                    id: i.id.clone().unwrap_or_default(),
                    created_unix_ms: i.created_unix_ms().unwrap_or_default(),
                    revision: i.labels.get(REVISION_LABEL).cloned().unwrap_or_default(),
                    project: in_project,
                    label_fingerprint: i.label_fingerprint.clone().unwrap_or_default(),
                    labels: i.labels,
                },
            ))
        })
        .collect();
    if state
        .pause
        .as_ref()
        .is_some_and(|p| p.until <= Instant::now())
    {
        state.pause = None;
    }
    let desired = keys.desired.as_ref().map(|d| &d.value);
    let may_create = desired.is_some_and(|d| d.accept_new)
        && keys.exhausted.is_none()
        && state.pause.is_none()
        && !config.deleted;
    let observed: BTreeMap<_, _> = keys
        .instances
        .iter()
        .map(|(n, o)| (n.clone(), o.value.clone()))
        .collect();
    let min_ready_ms = pm_pool::budgets(&config).min_ready_ms;
    let roll = desired
        .filter(|d| !d.rollout_revision.is_empty() && d.rollout_revision == revision)
        .map(|d| Roll {
            surge: i64::from(d.surge),
            unavailable: i64::from(d.unavailable),
            paused: d.rollout_paused,
            min_ready_ms,
        });
    let inputs = PoolInputs {
        desired: desired.map_or(-1, |d| d.count),
        may_create,
        on_preempted: config.on_preempted(),
        listed,
        observed,
        in_flight: state.in_flight.clone(),
        now_ms: now_unix_ms(),
        insert_expiry_ms: i64::try_from(ctx.operation_timeout.as_millis() * 2).unwrap_or(i64::MAX),
        revision,
        roll,
        drain_requests: keys
            .drains
            .iter()
            .map(|(n, r)| (n.clone(), r.value.clone()))
            .collect(),
        shed_counted: desired
            .map(|d| d.shed.iter().cloned().collect())
            .unwrap_or_default(),
        drain_wait_ms: i64::try_from(pm_pool::disruption::drain_wait(&config).as_millis())
            .unwrap_or(i64::MAX),
        label_refused: state.label_refused.clone(),
    };
    let mut decision = decide(&inputs);
    if let Some(at) = decision.next_ready_unix_ms {
        let wait = u64::try_from(at.saturating_sub(inputs.now_ms)).unwrap_or(0);
        pass.next_sync = pass
            .next_sync
            .min(Instant::now() + Duration::from_millis(wait));
    }
    let creating = state
        .in_flight
        .values()
        .filter(|k| **k == InFlight::Creating)
        .count();
    let allowed = state.throttle.allow(decision.create, creating);
    if allowed < decision.create {
        tracing::info!(
            cause = ?state.throttle.cause(),
            wanted = decision.create,
            allowed,
            "creates throttled"
        );
        decision.create = allowed;
    }
    for name in &decision.unrecognized {
        if state.unrecognized_logged.insert(name.clone()) {
            tracing::warn!(instance = %name, "GCE shows the instance in a status pm does not know; leaving it alone");
        }
    }
    state
        .unrecognized_logged
        .retain(|n| decision.unrecognized.contains(n));
    if let Some(pause) = &state.pause {
        // Creates go on when the pause ends, not a rest later.
        pass.next_sync = pass.next_sync.min(pause.until);
        if decision.live < inputs.desired {
            tracing::info!(reason = %pause.reason, deficit = inputs.desired - decision.live, "creates paused");
        }
    }
    if desired.is_none() {
        // Not placed here by the scheduler: never scale down on a guess (what pmctl asked
        // for, and drains begun, go on).
        decision.delete.retain(|n| {
            inputs.listed.get(n).is_some_and(|l| is_stopped(l.status))
                || inputs
                    .observed
                    .get(n)
                    .is_some_and(|o| o.state() == InstanceState::Deleting || o.drain.is_some())
        });
        decision.drain.retain(|s| s.cause == DrainCause::Request);
    }
    let preempted_ops = if decision.lost.is_empty() {
        Vec::new()
    } else {
        preemption_operations(ctx, &project, &mut pass.reports).await
    };
    let effect_inputs = EffectInputs {
        pool,
        project: &project,
        zone: ctx.zone,
        agent_id: ctx.agent_id,
        now_ms: now_unix_ms(),
        config: &config,
        revision: &inputs.revision,
        listed: &inputs.listed,
        observed: &inputs.observed,
        preempted_ops: &preempted_ops,
    };
    let fx = effects(&decision, &effect_inputs, || {
        new_instance_name(&config.prefix)
    });
    pass.effects = Some((project, fx));
    pass
}

/// The zone's preemption operations; on failure, a report and none (losses are then
/// reported as vanished).
async fn preemption_operations(
    ctx: &PassContext<'_>,
    project: &str,
    reports: &mut Vec<Report>,
) -> Vec<Operation> {
    let filter = "operationType = \"compute.instances.preempted\"";
    match ctx
        .compute
        .list_operations(project, ctx.zone, Some(filter))
        .await
    {
        Ok(ops) => ops,
        Err(e) => {
            reports.push(report(
                "gce-error",
                Severity::Warning,
                format!("cannot list preemption operations; losses are reported as vanished: {e}"),
            ));
            Vec::new()
        }
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
pub(crate) mod tests;
