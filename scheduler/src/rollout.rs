//! A pool's rollout, as a pure function of the leader's view: when its revision
//! ([`pm_pool::revision`]) differs from that of some of its VMs, the old ones are
//! replaced within the update policy's budgets ([`pm_pool::budgets`]).
//!
//! The budgets are shared out to zones as *allotments*: a zone may hold `surge` VMs over
//! its desired count while it replaces its old VMs, and, when it has no surge, delete
//! `unavailable` old VMs before their replacements are ready. The agent of the zone does
//! the replacing ([`ZoneRoll`] in its desired key), since it alone knows at once what it
//! created and what is ready. A zone keeps its allotment until the leader sees no old VM
//! left in it; only then can the allotment move to another zone. Because the zone's agent
//! surges only while it still has old VMs, an allotment never moves while the zone holds
//! VMs over its count, so the allotments never add up to more than the budgets, through
//! any failover: they live in the rollout key.
//!
//! The rollout pauses itself (state `failed`) when the new revision does not come up: a
//! zone refuses its inserts for good after the rollout started, or no VM of the revision
//! is RUNNING within the progress deadline. Paused, no zone surges or deletes old VMs;
//! `pmctl rollout resume` (the config's `rollout_resumes` growing) goes on.

use std::collections::BTreeMap;

use pm_proto::{
    ExhaustionClass, PoolConfig, RevisionRecord, Rollout, RolloutState, Severity, UpdateMode,
    ZoneAllotment,
};

use crate::model::PoolView;
use crate::pool_event::PoolEvent;

/// Revisions kept in the rollout key for `pmctl rollout undo`.
pub const HISTORY: usize = 5;

/// What a zone's desired key says of the rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneRoll {
    /// The revision replaced to; empty: no rollout in the zone.
    pub revision: String,
    /// VMs over the count the zone may hold.
    pub surge: u32,
    /// Old VMs the zone may delete ahead of their replacements.
    pub unavailable: u32,
    /// Paused: no surge, no deletion of old VMs.
    pub paused: bool,
}

/// The rollout step of one pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutPlan {
    /// The rollout key to write, when it changes.
    pub write: Option<Rollout>,
    /// Each zone's part, by zone; zones absent have none.
    pub zones: BTreeMap<String, ZoneRoll>,
    /// Events of the step.
    pub events: Vec<PoolEvent>,
}

/// The rollout step of `pool` at `now_ms`; `usable` tells whether a zone may get new VMs
/// (allowed, not exhausted, with an agent).
pub fn plan(
    pool: &str,
    view: &PoolView,
    usable: impl Fn(&str) -> bool,
    scheduler_id: &str,
    now_ms: i64,
) -> RolloutPlan {
    let Some(config) = view.config.as_ref().filter(|c| !c.deleted) else {
        return RolloutPlan::default();
    };
    let revision = pm_pool::revision(config);
    let budgets = pm_pool::budgets(config);
    let old: BTreeMap<&str, u64> = view
        .zones
        .iter()
        .map(|(zone, z)| (zone.as_str(), z.counts.other_revisions(&revision)))
        .collect();
    let old_total: u64 = old.values().sum();
    let new_running: u64 = view
        .zones
        .values()
        .filter_map(|z| z.counts.revisions.get(&revision))
        .map(|c| c.running)
        .sum();
    let stored = view.rollout.clone();
    let mut next = stored.clone().unwrap_or_default();
    let mut events = Vec::new();
    let event = |kind, severity, message: String| PoolEvent::pool(pool, kind, severity, message);

    // A new revision, or VMs of another one showing up in a complete pool (adopted, or
    // written by an agent older than revisions) start a rollout.
    let new_revision = next.revision != revision;
    let reopened = !new_revision && next.state() == RolloutState::Complete && old_total > 0;
    if new_revision || reopened {
        if new_revision {
            remember(&mut next.history, config, &revision, now_ms);
        }
        let first = next.revision.is_empty();
        next.revision.clone_from(&revision);
        next.started_unix_ms = now_ms;
        next.reason.clear();
        if old_total == 0 {
            next.state = RolloutState::Complete as i32;
            next.allotments.clear();
        } else {
            next.state = RolloutState::Progressing as i32;
            let how = match budgets.mode {
                UpdateMode::Proactive => format!(
                    "maxSurge {}, maxUnavailable {}",
                    budgets.max_surge, budgets.max_unavailable
                ),
                UpdateMode::Opportunistic => "opportunistic: as VMs are lost".into(),
            };
            let from = if first {
                "VMs from before revisions"
            } else {
                "old VMs"
            };
            events.push(event(
                "rollout-started",
                Severity::Info,
                format!("replacing {old_total} {from} with revision {revision} ({how})"),
            ));
        }
    }

    let state = next.state();
    if state != RolloutState::Complete && old_total == 0 {
        next.state = RolloutState::Complete as i32;
        next.reason.clear();
        next.allotments.clear();
        events.push(event(
            "rollout-completed",
            Severity::Info,
            format!("every VM has revision {revision}"),
        ));
    } else if state != RolloutState::Complete {
        step(
            &mut next,
            config,
            view,
            (old_total, new_running),
            now_ms,
            &mut events,
            pool,
        );
        share(&mut next, config, view, &old, &usable);
    }

    let zones =
        if next.state() == RolloutState::Complete || budgets.mode == UpdateMode::Opportunistic {
            BTreeMap::new()
        } else {
            let paused = next.state() != RolloutState::Progressing;
            next.allotments
                .iter()
                .map(|(zone, a)| {
                    let roll = ZoneRoll {
                        revision: revision.clone(),
                        surge: a.surge,
                        unavailable: a.unavailable,
                        paused,
                    };
                    (zone.clone(), roll)
                })
                .chain(
                    old.iter()
                        .filter(|(z, n)| **n > 0 && !next.allotments.contains_key(**z))
                        .map(|(z, _)| {
                            let roll = ZoneRoll {
                                revision: revision.clone(),
                                paused,
                                ..ZoneRoll::default()
                            };
                            (z.to_string(), roll)
                        }),
                )
                .collect()
        };
    let changed = stored.as_ref().is_none_or(|s| {
        let mut s = s.clone();
        s.updated_unix_ms = next.updated_unix_ms;
        s.scheduler_id.clone_from(&next.scheduler_id);
        s != next
    });
    let write = changed.then(|| {
        next.updated_unix_ms = now_ms;
        next.scheduler_id = scheduler_id.to_string();
        next
    });
    RolloutPlan {
        write,
        zones,
        events,
    }
}

/// Moves a rollout in progress between progressing, paused and failed.
fn step(
    next: &mut Rollout,
    config: &PoolConfig,
    view: &PoolView,
    (old_total, new_running): (u64, u64),
    now_ms: i64,
    events: &mut Vec<PoolEvent>,
    pool: &str,
) {
    let budgets = pm_pool::budgets(config);
    let revision = next.revision.clone();
    let mut event = |kind, severity, message: String| {
        events.push(PoolEvent::pool(pool, kind, severity, message));
    };
    let resumed = match next.state() {
        RolloutState::Failed => config.rollout_resumes > next.paused_at_resumes,
        RolloutState::Paused => !config.rollout_paused,
        RolloutState::Progressing | RolloutState::Complete => false,
    };
    if resumed {
        next.state = RolloutState::Progressing as i32;
        next.reason.clear();
        next.started_unix_ms = now_ms;
        event(
            "rollout-resumed",
            Severity::Info,
            format!("resumed the rollout to revision {revision}"),
        );
    }
    if next.state() != RolloutState::Progressing {
        return;
    }
    if config.rollout_paused {
        next.state = RolloutState::Paused as i32;
        next.reason = "paused by pmctl rollout pause".into();
        event(
            "rollout-paused",
            Severity::Info,
            format!("the rollout to revision {revision} is paused"),
        );
        return;
    }
    if budgets.mode == UpdateMode::Opportunistic {
        return;
    }
    let refused = view.zones.iter().find_map(|(zone, z)| {
        z.exhausted
            .as_ref()
            .filter(|x| x.class() == ExhaustionClass::ZoneError)
            .filter(|x| x.since_unix_ms >= next.started_unix_ms)
            .map(|x| format!("zone {zone} refuses revision {revision}: {}", x.reason))
    });
    let stalled = (new_running == 0
        && old_total > 0
        && now_ms.saturating_sub(next.started_unix_ms) >= budgets.progress_deadline_ms)
        .then(|| {
            format!(
                "no VM of revision {revision} RUNNING within {} s",
                budgets.progress_deadline_ms / 1000
            )
        });
    if let Some(reason) = refused.or(stalled) {
        next.state = RolloutState::Failed as i32;
        next.paused_at_resumes = config.rollout_resumes;
        event(
            "rollout-paused",
            Severity::Error,
            format!("paused the rollout, no old VM is deleted for it: {reason}"),
        );
        next.reason = reason;
    }
}

/// What the leader sees of one zone, for its allotment.
#[derive(Debug, Clone, Copy, Default)]
struct ZoneSeen {
    /// VMs of another revision.
    old: u64,
    /// VMs of the rollout's revision RUNNING.
    new_running: u64,
    /// Live VMs.
    live: u64,
    /// Its desired count, and whether it may create.
    desired: u64,
    accepts: bool,
}

impl ZoneSeen {
    fn of(view: &PoolView, zone: &str, revision: &str) -> Self {
        let Some(z) = view.zones.get(zone) else {
            return Self::default();
        };
        let desired = z.desired.as_ref();
        Self {
            old: z.counts.other_revisions(revision),
            new_running: z.counts.revisions.get(revision).map_or(0, |c| c.running),
            live: z.counts.live,
            desired: desired.map_or(0, |d| u64::try_from(d.count).unwrap_or(0)),
            accepts: desired.is_some_and(|d| d.accept_new),
        }
    }
}

/// Keeps each zone's allotment while it may be in use, takes back what budgets that
/// shrank no longer cover, and shares what is free, one VM at a time, to usable zones
/// that still have old VMs, those with the most first.
///
/// A zone keeps its allotment while it has old VMs, and an `unavailable` share until
/// its new VMs RUNNING reach its count (it may have deleted its last old VM ahead of its
/// replacement). A zone that may not create and holds no VM over its count gives its
/// surge back: its agent cannot use it. When maxSurge or maxUnavailable shrink (edited,
/// a percentage of a lower target, fewer zones), the largest shares give back first, so
/// the zones over their new cap delete down to it.
fn share(
    next: &mut Rollout,
    config: &PoolConfig,
    view: &PoolView,
    old: &BTreeMap<&str, u64>,
    usable: &impl Fn(&str) -> bool,
) {
    let revision = next.revision.clone();
    next.allotments.retain(|zone, a| {
        let seen = ZoneSeen::of(view, zone, &revision);
        if !seen.accepts && seen.live <= seen.desired {
            a.surge = 0;
        }
        let booting = a.unavailable > 0 && seen.new_running < seen.desired;
        (seen.old > 0 || booting) && (a.surge > 0 || a.unavailable > 0)
    });
    let budgets = pm_pool::budgets(config);
    trim(next, budgets.max_surge, |a| &mut a.surge);
    trim(next, budgets.max_unavailable, |a| &mut a.unavailable);
    next.allotments
        .retain(|_, a| a.surge > 0 || a.unavailable > 0);
    if budgets.mode == UpdateMode::Opportunistic || next.state() != RolloutState::Progressing {
        return;
    }
    let mut candidates: Vec<(&str, u64)> = old
        .iter()
        .filter(|(zone, n)| **n > 0 && usable(zone))
        .map(|(zone, n)| (*zone, *n))
        .collect();
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let used = |next: &Rollout, f: fn(&ZoneAllotment) -> u32| -> u64 {
        next.allotments.values().map(|a| u64::from(f(a))).sum()
    };
    let mut free = budgets.max_surge.saturating_sub(used(next, |a| a.surge));
    hand_out(next, &candidates, &mut free, |a| &mut a.surge, |_| true);
    let mut free = budgets
        .max_unavailable
        .saturating_sub(used(next, |a| a.unavailable));
    hand_out(
        next,
        &candidates,
        &mut free,
        |a| &mut a.unavailable,
        |a| a.surge == 0,
    );
}

/// Takes one at a time from the largest share (the last zone of equal ones) until the
/// shares of `slot` sum to at most `budget`.
fn trim(next: &mut Rollout, budget: u64, slot: fn(&mut ZoneAllotment) -> &mut u32) {
    loop {
        let mut shares: Vec<(u32, &String)> = Vec::new();
        let mut used = 0u64;
        for (zone, a) in next.allotments.iter_mut() {
            let n = *slot(a);
            used += u64::from(n);
            shares.push((n, zone));
        }
        if used <= budget {
            return;
        }
        let Some((_, zone)) = shares.into_iter().filter(|(n, _)| *n > 0).max() else {
            return;
        };
        let zone = zone.clone();
        if let Some(a) = next.allotments.get_mut(&zone) {
            *slot(a) -= 1;
        }
    }
}

/// Hands `free` out, one at a time round the `candidates` (each up to its old VMs), to
/// the field `slot` of allotments that `eligible`.
fn hand_out(
    next: &mut Rollout,
    candidates: &[(&str, u64)],
    free: &mut u64,
    slot: fn(&mut ZoneAllotment) -> &mut u32,
    eligible: fn(&ZoneAllotment) -> bool,
) {
    while *free > 0 {
        let mut gave = false;
        for (zone, old) in candidates {
            if *free == 0 {
                break;
            }
            let allotment = next.allotments.entry(zone.to_string()).or_default();
            if eligible(allotment) && u64::from(*slot(allotment)) < *old {
                *slot(allotment) += 1;
                *free -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    next.allotments
        .retain(|_, a| a.surge > 0 || a.unavailable > 0);
}

/// Records the config's revision last in the history, at most [`HISTORY`] long.
fn remember(history: &mut Vec<RevisionRecord>, config: &PoolConfig, revision: &str, now: i64) {
    history.retain(|r| r.revision != revision);
    history.push(RevisionRecord {
        revision: revision.to_string(),
        instance_json: config.instance_json.clone(),
        project: config.project.clone(),
        prefix: config.prefix.clone(),
        started_unix_ms: now,
    });
    let extra = history.len().saturating_sub(HISTORY);
    history.drain(..extra);
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
