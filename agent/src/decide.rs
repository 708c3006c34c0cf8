//! The agent's decisions for one pool in its zone, as a pure function of what it knows:
//! the desired count, what GCE lists, what etcd records, and what is in flight.
//!
//! Level-triggered: the same inputs give the same decision, and acting on a decision
//! twice is harmless (creates carry stable requestIds, deletes of missing instances
//! succeed).

use std::collections::{BTreeMap, BTreeSet};

use pm_gce::resources::InstanceStatus;
use pm_pool::disruption::DRAINING_LABEL;
use pm_pool::removal::{recorded_labels, removal_order, RemovalRank};
use pm_proto::{DrainCause, DrainRequest, InstanceState, ObservedInstance, OnPreempted};

/// What is being done to an instance right now by this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// An insert was issued and has not finished.
    Creating,
    /// A delete was issued and has not finished.
    Deleting,
    /// A start (restart after preemption) was issued and has not finished.
    Starting,
    /// A `setLabels` claiming the VM for the pool (adopt mode) has not finished.
    Labelling,
}

/// One of the pool's instances as GCE listed it (already filtered to the pool's label
/// and prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Instance name.
    pub name: String,
    /// Its status.
    pub status: InstanceStatus,
    /// GCE's id.
    pub id: String,
    /// Creation time, Unix ms (0 when GCE gave none).
    pub created_unix_ms: i64,
    /// Its `pm-rev` label; empty when it has none (from before revisions).
    pub revision: String,
    /// The GCE project it was listed in.
    pub project: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// GCE's fingerprint of its labels, for `setLabels`.
    pub label_fingerprint: String,
}

impl Listed {
    /// What its removal order is decided on, in a pool of `revision`.
    pub fn rank(&self, revision: &str) -> RemovalRank<'_> {
        RemovalRank {
            old: self.revision != revision,
            running: self.status == InstanceStatus::Running,
            created_unix_ms: self.created_unix_ms,
            name: &self.name,
        }
    }

    /// Whether it carries `pm-state=draining`.
    pub fn labelled_draining(&self) -> bool {
        self.labels.get(DRAINING_LABEL.0).map(String::as_str) == Some(DRAINING_LABEL.1)
    }
}

/// A VM to start draining, when the pool's budget has a slot for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainStart {
    /// The VM.
    pub name: String,
    /// Why.
    pub cause: DrainCause,
    /// Why, in words.
    pub reason: String,
    /// Delete at once, without waiting for the drain hook.
    pub hard: bool,
    /// The pmctl workflow that asked for it.
    pub workflow_id: String,
}

/// The zone's part of a rollout, while the agent's config has the revision rolled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roll {
    /// VMs over the desired count the zone may hold while old ones are replaced.
    pub surge: i64,
    /// Old VMs it may delete before their replacements are ready (without surge).
    pub unavailable: i64,
    /// Paused: no surge and no old VM deleted for the rollout.
    pub paused: bool,
    /// A new VM is ready once RUNNING this long (ms).
    pub min_ready_ms: i64,
}

/// Everything one decision is made from.
#[derive(Debug, Clone)]
pub struct PoolInputs {
    /// Desired live instances in the zone (absent desired key: 0).
    pub desired: i64,
    /// Whether new instances may be created (desired key says so, no local block).
    pub may_create: bool,
    /// What to do with preempted instances.
    pub on_preempted: OnPreempted,
    /// The pool's instances in GCE, by name.
    pub listed: BTreeMap<String, Listed>,
    /// The pool's observed keys in etcd for this zone, by name.
    pub observed: BTreeMap<String, ObservedInstance>,
    /// Operations in flight, by instance name.
    pub in_flight: BTreeMap<String, InFlight>,
    /// Unix ms now.
    pub now_ms: i64,
    /// An insert older than this (ms) that GCE still does not show has failed for good.
    pub insert_expiry_ms: i64,
    /// The pool's revision: what new VMs get.
    pub revision: String,
    /// The rollout in the zone, if any.
    pub roll: Option<Roll>,
    /// pmctl's drain requests, by instance name.
    pub drain_requests: BTreeMap<String, DrainRequest>,
    /// The VMs the zone's desired count already leaves out for `pmctl shed`: a shed
    /// request starts draining only once its VM is named here, so nothing replaces it.
    pub shed_counted: BTreeSet<String>,
    /// How long (ms) a soft drain waits for its hook.
    pub drain_wait_ms: i64,
    /// Draining VMs whose `pm-state=draining` label GCE refused for good: not labelled
    /// again.
    pub label_refused: BTreeSet<String>,
}

/// What to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// In GCE but unknown to etcd: record them (an insert whose result was never seen, or
    /// an instance created before a crash).
    pub adopt: Vec<(String, InstanceState)>,
    /// Known to etcd with another state than GCE shows: record the new state.
    pub update: Vec<(String, InstanceState)>,
    /// Known to etcd, gone from GCE, not deleted by pm: vanished or preempted-and-gone.
    pub lost: Vec<String>,
    /// Inserts issued (recorded in etcd) whose result was never seen: issue them again
    /// with the same requestId; GCE de-duplicates.
    pub resume_insert: Vec<String>,
    /// Inserts recorded long ago that never showed up: forget them.
    pub expired_insert: Vec<String>,
    /// Deletes that finished while nobody watched: remove the key, run the delete hook.
    pub finish_delete: Vec<String>,
    /// Newly seen preempted (TERMINATED) instances: run the preempted hook, then delete or
    /// restart them per `on_preempted`.
    pub preempted: Vec<String>,
    /// Instances to delete: preempted ones (on_preempted = delete), interrupted deletes,
    /// and drained ones.
    pub delete: Vec<String>,
    /// Instances to start draining (the surplus when scaling down, old VMs a rollout
    /// replaces, pmctl's requests), first the requested ones; as many as the pool's
    /// budget has slots for start.
    pub drain: Vec<DrainStart>,
    /// Draining instances that do not carry `pm-state=draining` yet.
    pub label_draining: Vec<String>,
    /// Draining instances whose drain hook has not finished: an agent that has not run
    /// it in its term runs it (again, after a failover).
    pub drain_hook_pending: Vec<String>,
    /// Drain requests for instances the zone does not have: removed.
    pub stale_requests: Vec<String>,
    /// Preempted instances to start again (on_preempted = restart).
    pub restart: Vec<String>,
    /// Suspended instances to resume (on_preempted = restart).
    pub resume: Vec<String>,
    /// Instances in a status pm does not know: not live, left alone.
    pub unrecognized: Vec<String>,
    /// New instances to create.
    pub create: usize,
    /// Live instances counted (GCE, plus inserts not visible yet).
    pub live: i64,
    /// Of those, the ones of another revision than the pool's.
    pub old: i64,
    /// When to pass again for the rollout (Unix ms): a new VM RUNNING becomes ready, or
    /// one booting is looked at again ([`BOOT_POLL_MS`]).
    pub next_ready_unix_ms: Option<i64>,
}

/// While a rollout replaces VMs, a pass comes this soon (ms) after one that saw a new VM
/// still booting, so the old VM it replaces goes when it is RUNNING, not a rest later.
pub const BOOT_POLL_MS: i64 = 1000;

/// How long after its creation a booting VM is looked at every [`BOOT_POLL_MS`].
pub const BOOT_POLL_FOR_MS: i64 = 300_000;

/// Whether a GCE status is one a preempted (or otherwise stopped) instance has.
pub fn is_stopped(status: InstanceStatus) -> bool {
    match status {
        InstanceStatus::Stopping
        | InstanceStatus::Stopped
        | InstanceStatus::Terminated
        | InstanceStatus::Suspending
        | InstanceStatus::Suspended
        | InstanceStatus::PendingStop
        | InstanceStatus::Deprovisioning => true,
        InstanceStatus::Provisioning
        | InstanceStatus::Staging
        | InstanceStatus::Running
        | InstanceStatus::Repairing
        | InstanceStatus::Pending
        | InstanceStatus::Unrecognized => false,
    }
}

/// The observed state recorded for a GCE status.
pub fn state_of(status: InstanceStatus) -> InstanceState {
    match status {
        InstanceStatus::Provisioning | InstanceStatus::Pending => InstanceState::Provisioning,
        InstanceStatus::Staging | InstanceStatus::Repairing => InstanceState::Staging,
        InstanceStatus::Running => InstanceState::Running,
        InstanceStatus::Stopping
        | InstanceStatus::Suspending
        | InstanceStatus::PendingStop
        | InstanceStatus::Deprovisioning => InstanceState::Stopping,
        InstanceStatus::Stopped | InstanceStatus::Terminated | InstanceStatus::Suspended => {
            InstanceState::Terminated
        }
        InstanceStatus::Unrecognized => InstanceState::Unknown,
    }
}

/// Decides for one pool. See [`Decision`] for what each part means.
pub fn decide(inputs: &PoolInputs) -> Decision {
    let mut d = Decision::default();
    let deleting = |name: &str| {
        inputs.in_flight.get(name) == Some(&InFlight::Deleting)
            || inputs
                .observed
                .get(name)
                .is_some_and(|o| o.state() == InstanceState::Deleting)
    };
    let mut surplus_candidates: Vec<&Listed> = Vec::new();
    let mut live = 0i64;
    let mut old = 0i64;
    // Live VMs leaving on purpose (draining, or asked to by pmctl), and the old ones of
    // them: they count as live until deleted, and are not chosen again.
    let mut leaving = 0i64;
    let mut leaving_old = 0i64;
    let mut drain_deadlines = Vec::new();
    // Listed, not stopped, and being deleted: still there until the delete is done.
    let mut going = 0i64;
    let is_old = |revision: &str| revision != inputs.revision;
    // The key no longer says what GCE shows: another state, revision, project (a key
    // from before projects were recorded gets its own, so a later project change still
    // lists it) or labels, or a new VM RUNNING without the time it has been (its
    // readiness counts from it).
    let stale = |o: &ObservedInstance, l: &Listed, state: InstanceState| {
        o.state() != state
            || o.revision != l.revision
            || o.project != l.project
            || o.labels != recorded_labels(&l.labels)
            || (state == InstanceState::Running
                && o.running_since_unix_ms == 0
                && !is_old(&l.revision))
    };
    let observed_old = |name: &str| {
        inputs
            .observed
            .get(name)
            .is_some_and(|o| is_old(&o.revision))
    };

    for (name, listed) in &inputs.listed {
        if listed.status == InstanceStatus::Unrecognized {
            // Not live, not adopted, not lost: left alone until GCE shows a known status.
            d.unrecognized.push(name.clone());
            continue;
        }
        let state = state_of(listed.status);
        let observed = inputs.observed.get(name);
        let flight = inputs.in_flight.get(name).copied();
        match observed {
            None if flight.is_none() => d.adopt.push((name.clone(), state)),
            Some(o) if o.state() != InstanceState::Deleting && stale(o, listed, state) => {
                d.update.push((name.clone(), state));
            }
            _ => {}
        }
        if deleting(name) {
            if flight.is_none() {
                d.delete.push(name.clone());
            }
            // STOPPING while GCE deletes it: still there. Only a VM that had stopped
            // before (preempted) holds no place.
            going += i64::from(!matches!(
                listed.status,
                InstanceStatus::Terminated | InstanceStatus::Stopped | InstanceStatus::Suspended
            ));
            continue;
        }
        if is_stopped(listed.status) {
            let already = observed.is_some_and(|o| o.preempted);
            if !already && flight.is_none() {
                d.preempted.push(name.clone());
            }
            // It was leaving anyway (draining, or asked to by pmctl): it goes now
            // (deleting gives its budget slot back) and is never started again.
            let draining = observed.is_some_and(|o| o.drain.is_some())
                || inputs.drain_requests.contains_key(name);
            match inputs.on_preempted {
                _ if draining => {
                    if flight.is_none() {
                        d.delete.push(name.clone());
                    }
                }
                OnPreempted::Restart => {
                    // Coming back: counts as live so no replacement overshoots.
                    live += 1;
                    old += i64::from(is_old(&listed.revision));
                    if flight.is_none() {
                        match listed.status {
                            InstanceStatus::Terminated => d.restart.push(name.clone()),
                            InstanceStatus::Suspended => d.resume.push(name.clone()),
                            _ => {}
                        }
                    }
                }
                OnPreempted::Delete => {
                    if flight.is_none() {
                        d.delete.push(name.clone());
                    }
                }
            }
            continue;
        }
        live += 1;
        old += i64::from(is_old(&listed.revision));
        let draining = observed.and_then(|o| o.drain.as_ref());
        let requested = inputs.drain_requests.get(name);
        // A shed the desired count does not leave out yet: it stays, and is not chosen
        // for anything else, until the scheduler lowered the count for it.
        let shed_waits = requested.is_some_and(|r| r.shed && !inputs.shed_counted.contains(name));
        if draining.is_none() && shed_waits {
            continue;
        }
        if draining.is_some() || requested.is_some() {
            leaving += 1;
            leaving_old += i64::from(is_old(&listed.revision));
        }
        if let Some(drain) = draining {
            let hook_done = drain.hook_finished_unix_ms > 0;
            let deadline = drain.started_unix_ms.saturating_add(inputs.drain_wait_ms);
            let due = drain.hard || hook_done || inputs.now_ms >= deadline;
            if !due {
                d.drain_hook_pending.push(name.clone());
            }
            if flight.is_some() {
                continue;
            }
            if due {
                d.delete.push(name.clone());
            } else {
                drain_deadlines.push(deadline);
                if !listed.labelled_draining() && !inputs.label_refused.contains(name) {
                    d.label_draining.push(name.clone());
                }
            }
            continue;
        }
        if flight.is_some() {
            continue;
        }
        match requested {
            Some(r) => d.drain.push(DrainStart {
                name: name.clone(),
                cause: DrainCause::Request,
                reason: r.reason.clone(),
                hard: r.hard,
                workflow_id: r.workflow_id.clone(),
            }),
            None => surplus_candidates.push(listed),
        }
    }
    d.stale_requests = inputs
        .drain_requests
        .keys()
        .filter(|n| !inputs.listed.contains_key(*n) && !inputs.observed.contains_key(*n))
        .cloned()
        .collect();

    for (name, observed) in &inputs.observed {
        if inputs.listed.contains_key(name) {
            continue;
        }
        match inputs.in_flight.get(name) {
            Some(InFlight::Creating) => {
                live += 1;
                old += i64::from(observed_old(name));
                continue;
            }
            Some(InFlight::Deleting | InFlight::Starting | InFlight::Labelling) => continue,
            None => {}
        }
        match observed.state() {
            InstanceState::Deleting => d.finish_delete.push(name.clone()),
            InstanceState::Provisioning
                if !observed.request_id.is_empty() && observed.gce_id.is_empty() =>
            {
                // An insert of an old revision is not sent again with the new template
                // (or into another project); its key stays, counted, until it expires,
                // so a VM it made after all is still known (and replaced), and no
                // other takes its place meanwhile.
                let young = inputs.now_ms.saturating_sub(observed.created_unix_ms)
                    < inputs.insert_expiry_ms;
                if !young {
                    d.expired_insert.push(name.clone());
                } else {
                    if !is_old(&observed.revision) {
                        d.resume_insert.push(name.clone());
                    }
                    live += 1;
                    old += i64::from(observed_old(name));
                }
            }
            _ => d.lost.push(name.clone()),
        }
    }

    for (name, flight) in &inputs.in_flight {
        if *flight == InFlight::Creating
            && !inputs.observed.contains_key(name)
            && !inputs.listed.contains_key(name)
        {
            live += 1;
        }
    }

    d.live = live;
    d.old = old;
    let roll = inputs.roll.unwrap_or(Roll {
        surge: 0,
        unavailable: 0,
        paused: true,
        min_ready_ms: 0,
    });
    let new_live = live - old;
    let mut ready = 0i64;
    let replacing = !roll.paused && old > 0;
    let mut soon = |at: i64| {
        d.next_ready_unix_ms = Some(d.next_ready_unix_ms.map_or(at, |n| n.min(at)));
    };
    // A soft drain deletes when its wait ends, not a rest later.
    for at in drain_deadlines {
        soon(at);
    }
    for l in &surplus_candidates {
        if is_old(&l.revision) {
            continue;
        }
        if l.status != InstanceStatus::Running {
            // An old VM waits for it: look again soon rather than a rest later, while it
            // is young (one stuck booting gets the rest period, not a list a second).
            let booting = inputs.now_ms.saturating_sub(l.created_unix_ms) < BOOT_POLL_FOR_MS;
            if replacing && booting {
                soon(inputs.now_ms + BOOT_POLL_MS);
            }
            continue;
        }
        let since = inputs
            .observed
            .get(&l.name)
            .map_or(0, |o| o.running_since_unix_ms);
        let since = if since > 0 { since } else { inputs.now_ms };
        if inputs.now_ms - since >= roll.min_ready_ms {
            ready += 1;
        } else {
            soon(since + roll.min_ready_ms);
        }
    }
    // The zone may hold `cap`: its count, and its surge while old VMs are replaced.
    let cap = inputs.desired + if old > 0 { roll.surge } else { 0 };
    if inputs.may_create {
        // A surge counts what is still being deleted: never over the cap in GCE.
        let wanted = if roll.paused {
            inputs.desired - live
        } else {
            (inputs.desired - new_live).min(cap - live - going)
        };
        d.create = usize::try_from(wanted).unwrap_or(0);
    }
    // Old VMs go as new ones are ready; without surge, `unavailable` may go ahead.
    let old_excess = if roll.paused {
        0
    } else {
        let ahead = if roll.surge == 0 { roll.unavailable } else { 0 };
        let keep = (inputs.desired - ready - ahead).max(0);
        (old - keep - leaving_old).max(0)
    };
    surplus_candidates
        .sort_by(|a, b| removal_order(&a.rank(&inputs.revision), &b.rank(&inputs.revision)));
    let old_candidates = surplus_candidates.iter().filter(|l| is_old(&l.revision));
    let replaced: BTreeSet<&str> = old_candidates
        .take(usize::try_from(old_excess).unwrap_or(0))
        .map(|l| l.name.as_str())
        .collect();
    let surplus = live - leaving - i64::try_from(replaced.len()).unwrap_or(0) - cap;
    let shed = surplus_candidates
        .iter()
        .filter(|l| !replaced.contains(l.name.as_str()))
        .take(usize::try_from(surplus).unwrap_or(0));
    let voluntary = |name: &str, cause: DrainCause, reason: String| DrainStart {
        name: name.to_string(),
        cause,
        reason,
        hard: false,
        workflow_id: String::new(),
    };
    for l in shed {
        let reason = format!(
            "scale-down: the zone holds more than its count {}",
            inputs.desired
        );
        d.drain
            .push(voluntary(&l.name, DrainCause::ScaleDown, reason));
    }
    for name in replaced {
        let reason = format!("rollout: revision {} replaces it", inputs.revision);
        d.drain.push(voluntary(name, DrainCause::Rollout, reason));
    }
    d
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
