//! The rules that turn the leader's view of one pool into the input of
//! [`compute_desired`], and its answer into the `desired` keys to write. Pure: the leader
//! gathers the facts (the view, which zones have agents, the time) and writes the result.
//!
//! The rules:
//! - A zone is *usable* when the pool allows it, it is not exhausted, and its agent is
//!   alive or gone for less than the grace ([`is_usable`]).
//! - What a zone *keeps* ([`kept`]): nothing once its agent is gone past the grace (no
//!   agent replaces what it loses, so what it recorded is no longer known to be there:
//!   its share moves to other zones); an exhausted zone what GCE confirmed (its inserts
//!   in flight will fail); a usable zone at least the count it is *committed* to
//!   ([`committed`]), since its agent may be creating toward it; any other zone its live
//!   instances ([`crate::model::is_live`]).
//!   A zone without any agent keeps no more than its witness counted in GCE
//!   ([`crate::witness`]).
//! - A zone's capacity hint holds while its exhaustion's probation lasts ([`capacity`]).
//! - A zone the pool no longer allows, with nothing left in it, loses its `desired` key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_proto::{WitnessRequest, ZoneDesired};

use crate::distribution::{
    compute_desired, DistributionError, DistributionInput, DistributionPlan, ZoneAllocation,
    ZoneState,
};
use crate::exhaustion::{base_backoff, in_probation};
use crate::model::{PoolView, ZoneView};
use crate::rollout::ZoneRoll;
use crate::witness::{self, Requests};

/// The zones the pool may place instances in: its allowed zones, none once it is deleted.
pub fn allowed_zones(view: &PoolView) -> BTreeSet<String> {
    match &view.config {
        Some(config) if !view.is_deleted() => config.allowed_zones.iter().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

/// The count the zone's agent was last told to reach while it could create: it may be
/// creating toward it now, whatever it has recorded so far. 0 when the zone was last told
/// to create nothing.
pub fn committed(zone: &ZoneView) -> u64 {
    zone.desired
        .as_ref()
        .filter(|d| d.accept_new)
        .map_or(0, |d| u64::try_from(d.count).unwrap_or(0))
}

/// Whether the zone may receive new instances: the pool allows it, it is not exhausted,
/// and `agent_ok` (an agent is alive, or was less than the grace ago).
pub fn is_usable(allowed: bool, zone: &ZoneView, agent_ok: bool) -> bool {
    allowed && zone.exhausted.is_none() && agent_ok
}

/// The instances the zone counts as keeping when the pool is placed.
///
/// A zone that is not usable (not allowed, or its agent gone past the grace) keeps its
/// live instances: they still exist, and handing their share to other zones would
/// overshoot target + zones when they come back (the fault suite saw 16 for 12 + 3). An exhausted
/// zone keeps what GCE has, not the inserts about to fail. A usable zone keeps what its
/// agent was told to reach: the agent may be creating those instances already, so
/// handing them to another zone before it records them would have two agents create them.
///
/// VMs a rollout's surge holds over the zone's count are not counted: they replace old
/// VMs that are about to go, and counting them would move the count of the zone, or
/// trim another zone, each pass.
///
/// VMs `pmctl shed` removes are not counted either: the target went down by them, and
/// the count of their own zone is what drops. A count written before the scheduler saw
/// a shed still includes its VMs; one written since names them in `shed`.
pub fn kept(zone: &ZoneView, usable: bool) -> u64 {
    let counts = &zone.counts;
    let desired = zone.desired.as_ref();
    let shedding = len(zone.shedding.len());
    let in_count = zone
        .shedding
        .iter()
        .filter(|name| desired.is_none_or(|d| !d.shed.contains(name)))
        .count();
    let live = counts.live.saturating_sub(shedding);
    let held = if zone.exhausted.is_some() {
        counts.live_confirmed.saturating_sub(shedding)
    } else if usable {
        live.max(committed(zone).saturating_sub(len(in_count)))
    } else {
        live
    };
    let (count, surge) = desired.map_or((0, 0), |d| {
        (u64::try_from(d.count).unwrap_or(0), u64::from(d.surge))
    });
    held - held.saturating_sub(count).min(surge)
}

fn len(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The most instances the zone is known to hold at `now_ms`: the capacity hint of its last
/// exhaustion while its probation lasts (`base` is the pool's base back-off).
pub fn capacity(zone: &ZoneView, base: Duration, now_ms: i64) -> Option<u64> {
    zone.desired
        .as_ref()
        .filter(|d| in_probation(base, d, now_ms))
        .and_then(|d| d.capacity_hint)
}

/// The input of [`compute_desired`] for the pool at `now_ms`, where `agent_ok` tells
/// whether a zone's agent is alive (or within the grace) and `requests` are the witness
/// requests that stand. Every allowed zone and every zone with a key of the pool is in it.
pub fn distribution_input(
    view: &PoolView,
    agent_ok: impl Fn(&str) -> bool,
    requests: &Requests,
    now_ms: i64,
) -> DistributionInput {
    let config = view.config.clone().unwrap_or_default();
    let allowed = allowed_zones(view);
    let base = base_backoff(view.config.as_ref());
    let mut names = allowed.clone();
    names.extend(view.zones.keys().cloned());
    let empty = ZoneView::default();
    let zones = names
        .into_iter()
        .map(|name| {
            let zv = view.zones.get(&name).unwrap_or(&empty);
            let is_allowed = allowed.contains(&name);
            let agent = agent_ok(&name);
            let usable = is_usable(is_allowed, zv, agent);
            let kept = kept(zv, usable);
            let counted = witness::counted(zv, requests.get(&name));
            ZoneState {
                allowed: is_allowed,
                // What a witness counted in GCE still holds the zone's shed VMs.
                live: counted.map_or(kept, |seen| {
                    kept.min(seen.saturating_sub(len(zv.shedding.len())))
                }),
                usable,
                capacity: capacity(zv, base, now_ms),
                last_success_unix_ms: zv.counts.last_success_unix_ms,
                zone: name,
            }
        })
        .collect();
    DistributionInput {
        target: if view.is_deleted() {
            0
        } else {
            config
                .target_vm_count
                .saturating_add(i64::from(config.spares))
        },
        policy: config.distribution(),
        zones,
    }
}

/// A change of one zone's `desired` key.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredWrite {
    /// The zone.
    pub zone: String,
    /// The value to put; `None` deletes the key.
    pub next: Option<ZoneDesired>,
}

/// The placement of one pool: the plan and what it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The target placed (0 for a deleted pool).
    pub target: i64,
    /// The computed plan.
    pub plan: DistributionPlan,
    /// The `desired` keys that change, in zone order.
    pub writes: Vec<DesiredWrite>,
    /// Whether some zone's count or `accept_new` changes (not only its bookkeeping).
    pub counts_changed: bool,
}

impl Placement {
    /// Each zone's desired count, `zone=count` separated by spaces, in zone order.
    pub fn summary(&self) -> String {
        let counts: Vec<String> = self
            .plan
            .zones
            .iter()
            .map(|alloc| format!("{}={}", alloc.zone, alloc.desired))
            .collect();
        counts.join(" ")
    }
}

/// Places the pool at `now_ms` ([`distribution_input`], then [`compute_desired`]) and works
/// out the `desired` keys that change, each with its zone's part of the rollout
/// (`rolls`) and the witness requests it is to answer (of `requests`); new values are
/// signed `scheduler_id`.
pub fn place(
    view: &PoolView,
    agent_ok: impl Fn(&str) -> bool,
    rolls: &BTreeMap<String, ZoneRoll>,
    requests: &Requests,
    scheduler_id: &str,
    now_ms: i64,
) -> Result<Placement, DistributionError> {
    let input = distribution_input(view, agent_ok, requests, now_ms);
    let plan = compute_desired(&input)?;
    let allowed = allowed_zones(view);
    let base = base_backoff(view.config.as_ref());
    let empty = ZoneView::default();
    let writes: Vec<DesiredWrite> = plan
        .zones
        .iter()
        .filter_map(|alloc| {
            let zv = view.zones.get(&alloc.zone).unwrap_or(&empty);
            let is_allowed = allowed.contains(&alloc.zone);
            let roll = rolls.get(&alloc.zone).cloned().unwrap_or_default();
            let zone = ZoneWrite {
                zone: zv,
                allowed: is_allowed,
                roll,
                witness: witness::asked_of(view, requests, &alloc.zone),
            };
            desired_write(&zone, alloc, base, scheduler_id, now_ms)
        })
        .collect();
    let counts_changed = writes.iter().any(|write| {
        let before = view
            .zones
            .get(&write.zone)
            .and_then(|z| z.desired.as_ref())
            .map(|d| (d.count, d.accept_new));
        before != write.next.as_ref().map(|d| (d.count, d.accept_new))
    });
    Ok(Placement {
        target: input.target,
        plan,
        writes,
        counts_changed,
    })
}

/// What a zone's `desired` key is written from beside its allocation.
struct ZoneWrite<'a> {
    zone: &'a ZoneView,
    allowed: bool,
    roll: ZoneRoll,
    witness: Vec<WitnessRequest>,
}

/// The change of one zone's `desired` key for its allocation, if any. The back-off of
/// its last exhaustion is kept, and its capacity hint while the probation lasts.
fn desired_write(
    write: &ZoneWrite<'_>,
    alloc: &ZoneAllocation,
    base: Duration,
    scheduler_id: &str,
    now_ms: i64,
) -> Option<DesiredWrite> {
    let zone = write.zone;
    let stale_zone = !write.allowed
        && alloc.desired == 0
        && zone.counts.instances() == 0
        && zone.exhausted.is_none()
        && zone.report.is_none();
    if stale_zone {
        return zone.desired.is_some().then(|| DesiredWrite {
            zone: alloc.zone.clone(),
            next: None,
        });
    }
    let previous = zone.desired.clone().unwrap_or_default();
    let probation = zone
        .desired
        .as_ref()
        .is_some_and(|d| in_probation(base, d, now_ms));
    let next = ZoneDesired {
        count: alloc.desired,
        accept_new: alloc.accept_new,
        updated_unix_ms: now_ms,
        scheduler_id: scheduler_id.to_string(),
        backoff_multiplier: previous.backoff_multiplier,
        last_exhausted_until_unix_ms: previous.last_exhausted_until_unix_ms,
        capacity_hint: if probation {
            previous.capacity_hint
        } else {
            None
        },
        rollout_revision: write.roll.revision.clone(),
        surge: write.roll.surge,
        unavailable: write.roll.unavailable,
        rollout_paused: write.roll.paused,
        witness: write.witness.clone(),
        shed: zone.shedding.iter().cloned().collect(),
    };
    let same = zone.desired.as_ref().is_some_and(|d| {
        d.count == next.count
            && d.accept_new == next.accept_new
            && d.backoff_multiplier == next.backoff_multiplier
            && d.last_exhausted_until_unix_ms == next.last_exhausted_until_unix_ms
            && d.capacity_hint == next.capacity_hint
            && d.rollout_revision == next.rollout_revision
            && (d.surge, d.unavailable, d.rollout_paused)
                == (next.surge, next.unavailable, next.rollout_paused)
            && d.witness == next.witness
            && d.shed == next.shed
    });
    (!same).then(|| DesiredWrite {
        zone: alloc.zone.clone(),
        next: Some(next),
    })
}

#[cfg(test)]
mod tests;
