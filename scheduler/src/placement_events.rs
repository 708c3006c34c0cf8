//! Which events a placement pass deserves. Each condition (a zone without agent, a pool
//! that cannot be placed, a target not placed in full) is reported once when it begins
//! and once when it ends, so a pass that changes nothing says nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_proto::Severity;

use crate::distribution::{DistributionError, PlacementOutcome};
use crate::placement::Placement;
use crate::pool_event::PoolEvent;
use crate::witness::Applied;

/// What one placement pass of a pool found and changed.
#[derive(Debug, Clone)]
pub struct PlacementReport {
    /// The pool.
    pub pool: String,
    /// Each allowed zone and whether an agent may create there (alive or within grace).
    pub agents: Vec<(String, bool)>,
    /// The placement written, or why the pool cannot be placed.
    pub placed: Result<Placement, DistributionError>,
    /// The witness counts placement applied to zones without agents.
    pub witnessed: Vec<Applied>,
}

/// The conditions reported so far in this term.
#[derive(Debug, Clone, Default)]
pub struct PlacementEvents {
    /// Each pool's last placement outcome, so "no usable zone" is reported once.
    outcomes: BTreeMap<String, PlacementOutcome>,
    /// Pools whose config cannot be placed at all, already reported.
    unplaceable: BTreeSet<String>,
    /// (pool, zone) pairs of allowed zones without an agent past the grace, already
    /// reported; an entry goes when an agent is back.
    agentless: BTreeSet<(String, String)>,
    /// (pool, zone) pairs whose witness count was reported, with that count; an entry
    /// goes when the zone's request ends.
    witnessed: BTreeMap<(String, String), u64>,
}

impl PlacementEvents {
    /// The events of `report`, in order: agents gone or back, then the placement.
    /// `agent_grace` is named in the "without agent" event.
    pub fn events(&mut self, report: &PlacementReport, agent_grace: Duration) -> Vec<PoolEvent> {
        let pool = report.pool.as_str();
        let mut events: Vec<PoolEvent> = report
            .agents
            .iter()
            .filter_map(|(zone, agent_ok)| self.agent(pool, zone, *agent_ok, agent_grace))
            .collect();
        events.extend(self.witness_counts(pool, &report.witnessed));
        let placement = match &report.placed {
            Ok(placement) => placement,
            Err(e) => {
                if self.unplaceable.insert(pool.to_string()) {
                    events.push(PoolEvent::pool(
                        pool,
                        "invalid-config",
                        Severity::Error,
                        format!("cannot place the pool: {e}"),
                    ));
                }
                return events;
            }
        };
        self.unplaceable.remove(pool);
        let target = placement.target;
        if placement.counts_changed {
            events.push(PoolEvent::pool(
                pool,
                "distribution-changed",
                Severity::Info,
                format!("target {target}: {}", placement.summary()),
            ));
        }
        let outcome = placement.plan.outcome;
        let previous = self.outcomes.insert(pool.to_string(), outcome);
        if previous.as_ref() == Some(&outcome) {
            return events;
        }
        let event = match outcome {
            PlacementOutcome::NoUsableZone { unplaced } => Some(PoolEvent::pool(
                pool,
                "no-usable-zone",
                Severity::Error,
                format!("{unplaced} instance(s) cannot be placed: every allowed zone is exhausted or has no live agent; desired stays at what is observed"),
            )),
            PlacementOutcome::CapacityShort { unplaced } => Some(PoolEvent::pool(
                pool,
                "capacity-short",
                Severity::Warning,
                format!("{unplaced} instance(s) do not fit the zones' known capacity"),
            )),
            PlacementOutcome::Placed => previous.is_some().then(|| {
                PoolEvent::pool(
                    pool,
                    "placed",
                    Severity::Info,
                    format!("the whole target of {target} is placed again"),
                )
            }),
        };
        events.extend(event);
        events
    }

    /// Forgets the outcome, agentless zones and witness counts of a removed pool.
    pub fn forget(&mut self, pool: &str) {
        self.outcomes.remove(pool);
        self.agentless.retain(|(p, _)| p != pool);
        self.witnessed.retain(|(p, _), _| p != pool);
    }

    /// A `zone-witnessed` event for each zone whose witness count is new or changed.
    fn witness_counts(&mut self, pool: &str, applied: &[Applied]) -> Vec<PoolEvent> {
        let zones: BTreeSet<&str> = applied.iter().map(|a| a.zone.as_str()).collect();
        self.witnessed
            .retain(|(p, zone), _| p != pool || zones.contains(zone.as_str()));
        applied
            .iter()
            .filter_map(|a| {
                let pair = (pool.to_string(), a.zone.clone());
                let before = self.witnessed.insert(pair, a.counted);
                (before != Some(a.counted)).then(|| {
                    PoolEvent::zone(
                        pool,
                        "zone-witnessed",
                        Severity::Warning,
                        &a.zone,
                        format!(
                            "zone {} has no agent: zone {}'s agent counted {} live instance(s) there in GCE, its keys record {}; placement counts at most {}",
                            a.zone, a.witness, a.counted, a.recorded, a.counted
                        ),
                    )
                })
            })
            .collect()
    }

    /// The event, once per change, that an allowed zone of `pool` lost its agents for
    /// longer than the grace (it gets no new instances) or has one again.
    fn agent(
        &mut self,
        pool: &str,
        zone: &str,
        agent_ok: bool,
        agent_grace: Duration,
    ) -> Option<PoolEvent> {
        let pair = (pool.to_string(), zone.to_string());
        if !agent_ok && self.agentless.insert(pair.clone()) {
            Some(PoolEvent::zone(
                pool,
                "zone-without-agent",
                Severity::Warning,
                zone,
                format!(
                    "no agent for zone {zone} for over {agent_grace:?}: it gets no new instances"
                ),
            ))
        } else if agent_ok && self.agentless.remove(&pair) {
            Some(PoolEvent::zone(
                pool,
                "zone-agent-back",
                Severity::Info,
                zone,
                format!("zone {zone} has an agent again"),
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests;
