//! Witnesses: the live instances of a zone that has lost every agent, counted by another
//! zone's agent, so that what the zone lost while nobody watched moves to other zones.
//!
//! A zone whose agents are all gone (no member key, so every agent process of the zone
//! has lost its session and stopped acting) for the agent grace creates nothing: no one
//! runs there. What its keys record can only overstate what it holds, since preemptions
//! go on. The leader asks one zone with a reconciling agent, the *witness*, to list the
//! zone in GCE (read only) through a request in the witness's `desired` key. The witness
//! answers in the zone's `witnessed` key with the request it answers. Placement then
//! counts the zone as holding no more than the witness saw, and only the answer to the
//! request that stands counts: it was listed after the zone lost its agents, so every
//! instance the zone still holds was in that list.
//!
//! The target + zones bound holds when an agent comes back: the zone held at most what
//! the witness counted, and its `desired` key has told it to create nothing since it lost
//! its agents, until the leader counts what the returning agent records.

use std::collections::{BTreeMap, BTreeSet};

use pm_proto::WitnessRequest;

use crate::model::{PoolView, ZoneView};

/// The request standing for one zone without agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The zone whose agent counts.
    pub witness: String,
    /// When the leader first asked (its clock).
    pub requested_unix_ms: i64,
}

/// The witness requests of one pool, by the zone counted.
pub type Requests = BTreeMap<String, Standing>;

/// The requests that stand for the pool at `now_ms`: one for each zone of `orphaned`
/// (without any agent for the grace) that records live instances, to a zone of
/// `witnesses` (allowed, with a reconciling agent). A request a witness still able to
/// answer holds keeps its time; others go to the first witness, asked now.
pub fn requests(
    view: &PoolView,
    orphaned: &BTreeSet<String>,
    witnesses: &BTreeSet<String>,
    now_ms: i64,
) -> Requests {
    let Some(first) = witnesses.iter().next() else {
        return Requests::new();
    };
    let held: BTreeMap<&str, Standing> = view
        .zones
        .iter()
        .filter(|(zone, _)| witnesses.contains(*zone))
        .flat_map(|(zone, zv)| {
            let asked = zv.desired.iter().flat_map(|d| &d.witness);
            asked.map(move |r| {
                let standing = Standing {
                    witness: zone.clone(),
                    requested_unix_ms: r.requested_unix_ms,
                };
                (r.zone.as_str(), standing)
            })
        })
        .collect();
    let empty = ZoneView::default();
    orphaned
        .iter()
        .filter(|zone| view.zones.get(*zone).unwrap_or(&empty).counts.live > 0)
        .map(|zone| {
            let standing = held.get(zone.as_str()).cloned().unwrap_or(Standing {
                witness: first.clone(),
                requested_unix_ms: now_ms,
            });
            (zone.clone(), standing)
        })
        .collect()
}

/// Whether some zone's `desired` key asks for `zone` to be counted: the request stands
/// until an agent of the zone reconciles again (an agent that registers but has not
/// recorded what it found yet creates nothing, being told not to).
pub fn is_requested(view: &PoolView, zone: &str) -> bool {
    let desired = view.zones.values().filter_map(|zv| zv.desired.as_ref());
    desired.flat_map(|d| &d.witness).any(|r| r.zone == zone)
}

/// What the witness of `zone` counted in answer to the request standing for it, if it
/// has answered.
pub fn counted(zone: &ZoneView, standing: Option<&Standing>) -> Option<u64> {
    let standing = standing?;
    zone.witnessed
        .as_ref()
        .filter(|w| {
            w.witness_zone == standing.witness && w.requested_unix_ms == standing.requested_unix_ms
        })
        .map(|w| u64::from(w.live))
}

/// A witness count placement applies to a zone without agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The zone counted.
    pub zone: String,
    /// The zone whose agent counted.
    pub witness: String,
    /// Live instances the zone's keys record.
    pub recorded: u64,
    /// Live instances the witness found in GCE.
    pub counted: u64,
}

/// The answers to the standing `requests` that placement counts, in zone order.
pub fn applied(view: &PoolView, requests: &Requests) -> Vec<Applied> {
    requests
        .iter()
        .filter_map(|(zone, standing)| {
            let zv = view.zones.get(zone)?;
            let counted = counted(zv, Some(standing))?;
            Some(Applied {
                zone: zone.clone(),
                witness: standing.witness.clone(),
                recorded: zv.counts.live,
                counted,
            })
        })
        .collect()
}

/// The zones holding a `witnessed` key while no request stands for them: answers to
/// requests that ended, to be removed.
pub fn unasked(view: &PoolView, requests: &Requests) -> Vec<String> {
    view.zones
        .iter()
        .filter(|(zone, zv)| zv.witnessed.is_some() && !requests.contains_key(*zone))
        .map(|(zone, _)| zone.clone())
        .collect()
}

/// The requests `witness` is to answer, in the order of the zones counted, each with the
/// other projects the zone's keys record VMs in.
pub fn asked_of(view: &PoolView, requests: &Requests, witness: &str) -> Vec<WitnessRequest> {
    let pool_project = view.config.as_ref().map_or("", |c| c.project.as_str());
    requests
        .iter()
        .filter(|(_, standing)| standing.witness == witness)
        .map(|(zone, standing)| {
            let recorded = view.zones.get(zone).map(|zv| &zv.counts.projects);
            let projects = recorded.into_iter().flat_map(|p| p.keys());
            WitnessRequest {
                zone: zone.clone(),
                requested_unix_ms: standing.requested_unix_ms,
                projects: projects
                    .filter(|p| !p.is_empty() && p.as_str() != pool_project)
                    .cloned()
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use pm_proto::{Witnessed, ZoneDesired};

    use super::*;

    fn zones(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|z| z.to_string()).collect()
    }

    fn view_with_live(live: &[(&str, u64)]) -> PoolView {
        let mut view = PoolView::default();
        for (zone, n) in live {
            view.zone_mut(zone).counts.live = *n;
        }
        view
    }

    #[test]
    fn an_orphaned_zone_with_live_instances_asks_the_first_witness_now() {
        let view = view_with_live(&[("a", 2), ("b", 2), ("c", 0)]);
        let requests = requests(&view, &zones(&["b", "c"]), &zones(&["a"]), 1000);
        let standing = Standing {
            witness: "a".into(),
            requested_unix_ms: 1000,
        };
        assert_eq!(requests, Requests::from([("b".to_string(), standing)]));
        assert_eq!(
            asked_of(&view, &requests, "a"),
            [WitnessRequest {
                zone: "b".into(),
                requested_unix_ms: 1000,
                projects: vec![],
            }]
        );
        assert!(asked_of(&view, &requests, "b").is_empty());
        assert!(!is_requested(&view, "b"), "nothing written yet");
    }

    #[test]
    fn a_standing_request_keeps_its_time_while_its_witness_reconciles() {
        let mut view = view_with_live(&[("a", 2), ("b", 2), ("c", 2)]);
        view.zone_mut("c").desired = Some(ZoneDesired {
            witness: vec![WitnessRequest {
                zone: "b".into(),
                requested_unix_ms: 500,
                projects: vec![],
            }],
            ..Default::default()
        });
        assert!(is_requested(&view, "b") && !is_requested(&view, "a"));
        let kept = requests(&view, &zones(&["b"]), &zones(&["a", "c"]), 1000);
        assert_eq!(kept["b"].witness, "c");
        assert_eq!(kept["b"].requested_unix_ms, 500);
        // Its witness gone, the request moves to another, asked anew.
        let moved = requests(&view, &zones(&["b"]), &zones(&["a"]), 1000);
        assert_eq!(moved["b"].witness, "a");
        assert_eq!(moved["b"].requested_unix_ms, 1000);
        assert!(requests(&view, &zones(&["b"]), &zones(&[]), 1000).is_empty());
    }

    #[test]
    fn only_the_answer_to_the_standing_request_counts() {
        let mut zone = ZoneView::default();
        let standing = Standing {
            witness: "a".into(),
            requested_unix_ms: 1000,
        };
        assert_eq!(counted(&zone, Some(&standing)), None);
        let answer = |witness: &str, requested_unix_ms| Witnessed {
            witness_zone: witness.into(),
            live: 1,
            requested_unix_ms,
            ..Default::default()
        };
        zone.witnessed = Some(answer("a", 999));
        assert_eq!(counted(&zone, Some(&standing)), None, "an older request");
        zone.witnessed = Some(answer("c", 1000));
        assert_eq!(counted(&zone, Some(&standing)), None, "another witness");
        zone.witnessed = Some(answer("a", 1000));
        assert_eq!(counted(&zone, Some(&standing)), Some(1));
        assert_eq!(counted(&zone, None), None, "no request stands");
    }

    #[test]
    fn answers_apply_while_their_request_stands_and_are_removed_after() {
        let mut view = view_with_live(&[("a", 2), ("b", 3)]);
        view.zone_mut("b").witnessed = Some(Witnessed {
            witness_zone: "a".into(),
            live: 1,
            requested_unix_ms: 1000,
            ..Default::default()
        });
        let standing = Standing {
            witness: "a".into(),
            requested_unix_ms: 1000,
        };
        let requests = Requests::from([("b".to_string(), standing)]);
        let applied = applied(&view, &requests);
        assert_eq!(
            applied,
            [Applied {
                zone: "b".into(),
                witness: "a".into(),
                recorded: 3,
                counted: 1,
            }]
        );
        assert!(unasked(&view, &requests).is_empty(), "the answer is in use");
        assert_eq!(unasked(&view, &Requests::new()), ["b"], "the request ended");
        assert!(super::applied(&view, &Requests::new()).is_empty());
    }
}
