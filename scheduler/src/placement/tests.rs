//! Tests of the placement rules: examples of each, properties over random pools, and a
//! simulation of zones coming and going while agents create toward what they were told.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_proto::{Distribution, ExhaustionReport, PoolConfig, ZoneExhaustion};
use proptest::prelude::*;

use super::*;
use crate::agent_presence::AgentPresence;
use crate::distribution::PlacementOutcome;
use crate::exhaustion::{decide_report, ReportDecision};
use crate::model::ZoneCounts;

const NOW: i64 = 1_000_000;

fn desired(count: i64, accept_new: bool) -> ZoneDesired {
    ZoneDesired {
        count,
        accept_new,
        ..Default::default()
    }
}

/// A zone with `confirmed` instances GCE has and `in_flight` inserts not yet confirmed.
fn zone_view(confirmed: u64, in_flight: u64, desired: Option<ZoneDesired>) -> ZoneView {
    let mut zone = ZoneView {
        desired,
        ..Default::default()
    };
    set_instances(&mut zone, confirmed, in_flight);
    zone
}

fn set_instances(zone: &mut ZoneView, confirmed: u64, in_flight: u64) {
    let live = confirmed + in_flight;
    zone.counts = ZoneCounts {
        revisions: BTreeMap::new(),
        projects: BTreeMap::new(),
        live,
        live_confirmed: confirmed,
        by_status: [live, 0, 0, 0],
        last_success_unix_ms: None,
    };
}

fn pool(target: i64, policy: Distribution, allowed: &[&str]) -> PoolView {
    PoolView {
        rollout: None,
        config_refused: false,
        config: Some(PoolConfig {
            target_vm_count: target,
            allowed_zones: allowed.iter().map(|z| z.to_string()).collect(),
            distribution: policy as i32,
            ..Default::default()
        }),
        zones: BTreeMap::new(),
    }
}

fn placed(view: &PoolView, agent_ok: impl Fn(&str) -> bool) -> Placement {
    match place(
        view,
        agent_ok,
        &BTreeMap::new(),
        &Requests::new(),
        "s1",
        NOW,
    ) {
        Ok(placement) => placement,
        Err(e) => panic!("valid pool refused: {e}"),
    }
}

#[test]
fn an_orphaned_zone_keeps_only_what_its_witness_counted_and_the_witness_is_asked() {
    let mut view = pool(6, Distribution::Even, &["a", "b", "c"]);
    for zone in ["a", "b", "c"] {
        view.zones
            .insert(zone.into(), zone_view(2, 0, Some(desired(2, true))));
    }
    let agent_ok = |z: &str| z != "b";
    let orphaned = BTreeSet::from(["b".to_string()]);
    let witnesses = BTreeSet::from(["a".to_string(), "c".to_string()]);
    let requests = witness::requests(&view, &orphaned, &witnesses, NOW);
    let place_now = |view: &PoolView| {
        place(view, agent_ok, &BTreeMap::new(), &requests, "s1", NOW).expect("placed")
    };
    // Asked, not answered: b keeps what it recorded, and a's desired carries the request.
    let asked = place_now(&view);
    assert_eq!(
        counts(&asked),
        [("a".into(), 2), ("b".into(), 2), ("c".into(), 2)]
    );
    let to_a = asked
        .writes
        .iter()
        .find(|w| w.zone == "a")
        .expect("a written");
    let request = &to_a.next.as_ref().expect("a put").witness;
    assert_eq!(request.len(), 1);
    assert_eq!(
        (request[0].zone.as_str(), request[0].requested_unix_ms),
        ("b", NOW)
    );
    // a answers: b's two were preempted while it had no agent; their share moves.
    view.zone_mut("b").witnessed = Some(pm_proto::Witnessed {
        witness_zone: "a".into(),
        live: 0,
        requested_unix_ms: NOW,
        ..Default::default()
    });
    let moved = place_now(&view);
    assert_eq!(
        counts(&moved),
        [("a".into(), 3), ("b".into(), 0), ("c".into(), 3)]
    );
    // An answer to another request does not count.
    view.zone_mut("b")
        .witnessed
        .as_mut()
        .unwrap()
        .requested_unix_ms = NOW - 1;
    let stale = place_now(&view);
    assert_eq!(
        counts(&stale),
        [("a".into(), 2), ("b".into(), 2), ("c".into(), 2)]
    );
}

fn counts(placement: &Placement) -> Vec<(String, i64)> {
    placement
        .plan
        .zones
        .iter()
        .map(|alloc| (alloc.zone.clone(), alloc.desired))
        .collect()
}

#[test]
fn spares_are_placed_beyond_the_target() {
    let mut view = pool(4, Distribution::Even, &["a", "b", "c"]);
    if let Some(config) = view.config.as_mut() {
        config.spares = 2;
    }
    let placement = placed(&view, |_| true);
    assert_eq!(placement.target, 6);
    let total: i64 = counts(&placement).iter().map(|(_, n)| n).sum();
    assert_eq!(total, 6, "{:?}", counts(&placement));
}

#[test]
fn a_zone_commits_to_the_count_it_was_told_while_it_could_create() {
    let mut z = ZoneView::default();
    assert_eq!(committed(&z), 0);
    z.desired = Some(desired(5, true));
    assert_eq!(committed(&z), 5);
    z.desired = Some(desired(3, false));
    assert_eq!(committed(&z), 0, "an exhausted zone creates nothing");
    z.desired = Some(desired(-1, true));
    assert_eq!(committed(&z), 0);
}

#[test]
fn what_a_zone_keeps_depends_on_whether_it_can_create() {
    let mut zone = zone_view(2, 1, Some(desired(6, true)));
    assert_eq!(
        kept(&zone, true),
        6,
        "usable: the count its agent creates toward"
    );
    assert_eq!(
        kept(&zone, false),
        3,
        "not usable (not allowed, or its agent gone): its live instances"
    );
    zone.exhausted = Some(ZoneExhaustion::default());
    assert_eq!(kept(&zone, false), 2, "exhausted: what GCE confirmed");
    assert!(!is_usable(true, &zone, true));
}

#[test]
fn a_deleted_pool_places_nothing_and_forgets_its_zones() {
    let mut view = pool(5, Distribution::Even, &["a", "b"]);
    view.zones
        .insert("a".into(), zone_view(0, 0, Some(desired(3, true))));
    if let Some(config) = view.config.as_mut() {
        config.deleted = true;
    }
    assert!(allowed_zones(&view).is_empty());
    let placement = placed(&view, |_| true);
    assert_eq!(placement.target, 0);
    assert_eq!(
        placement.writes,
        vec![DesiredWrite {
            zone: "a".into(),
            next: None
        }]
    );
    assert!(placement.counts_changed);
}

#[test]
fn zones_seen_only_in_observations_are_placed_and_emptied() {
    let mut view = pool(4, Distribution::Even, &["a"]);
    view.zones.insert("old".into(), zone_view(2, 0, None));
    let placement = placed(&view, |_| true);
    assert_eq!(counts(&placement), [("a".into(), 4), ("old".into(), 0)]);
    assert_eq!(placement.summary(), "a=4 old=0");
}

#[test]
fn an_unchanged_placement_writes_nothing() {
    let mut view = pool(4, Distribution::Even, &["a", "b"]);
    let first = placed(&view, |_| true);
    for write in &first.writes {
        view.zone_mut(&write.zone).desired = write.next.clone();
    }
    let again = placed(&view, |_| true);
    assert!(again.writes.is_empty());
    assert!(!again.counts_changed);
}

#[test]
fn the_capacity_hint_holds_only_while_the_probation_lasts() {
    let base = Duration::from_secs(120);
    let hinted = ZoneDesired {
        capacity_hint: Some(3),
        last_exhausted_until_unix_ms: NOW,
        backoff_multiplier: 1,
        ..desired(3, true)
    };
    let zone = zone_view(3, 0, Some(hinted));
    assert_eq!(capacity(&zone, base, NOW + 1), Some(3));
    let healthy = NOW + 10 * 120_000;
    assert_eq!(capacity(&zone, base, healthy), None);

    let mut view = pool(8, Distribution::Balanced, &["a", "b"]);
    view.zones.insert("a".into(), zone);
    let placement = match place(
        &view,
        |_| true,
        &BTreeMap::new(),
        &Requests::new(),
        "s1",
        healthy,
    ) {
        Ok(placement) => placement,
        Err(e) => panic!("{e}"),
    };
    let a = placement.writes.iter().find(|w| w.zone == "a");
    let hint = a.and_then(|w| w.next.as_ref()).map(|d| d.capacity_hint);
    assert_eq!(
        hint,
        Some(None),
        "the hint is dropped once the zone is healthy"
    );
    assert_eq!(counts(&placement), [("a".into(), 4), ("b".into(), 4)]);
}

#[tokio::test(start_paused = true)]
async fn a_zone_without_agent_past_the_grace_gets_nothing_new_and_its_share_moves() {
    let grace = Duration::from_secs(30);
    let start = tokio::time::Instant::now();
    let now = || NOW + i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
    let mut presence = AgentPresence::new(grace, now());
    let mut view = pool(6, Distribution::Even, &["a", "b"]);
    view.zones
        .insert("a".into(), zone_view(1, 0, Some(desired(3, true))));
    view.zones
        .insert("b".into(), zone_view(3, 0, Some(desired(3, true))));
    presence.seen(&["a".to_string(), "b".to_string()], now());
    let has_agent = |zone: &str| zone == "b";
    let at = |presence: &AgentPresence, now: i64| {
        let agent_ok = |zone: &str| presence.is_ok(zone, has_agent(zone), now);
        match place(
            &view,
            agent_ok,
            &BTreeMap::new(),
            &Requests::new(),
            "s1",
            now,
        ) {
            Ok(placement) => placement,
            Err(e) => panic!("{e}"),
        }
    };
    tokio::time::advance(grace - Duration::from_millis(1)).await;
    let within = at(&presence, now());
    assert!(
        within.writes.is_empty(),
        "a is committed to 3 while in grace"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let past = at(&presence, now());
    assert_eq!(
        counts(&past),
        [("a".into(), 1), ("b".into(), 5)],
        "a keeps what it has and gets nothing new; the rest goes to b"
    );
    let a = past.plan.zone("a").map(|alloc| alloc.accept_new);
    assert_eq!(a, Some(false));
}

/// A random zone: (allowed, exhausted, agent ok, confirmed, in flight, desired).
type ZoneFacts = (bool, bool, bool, u64, u64, Option<(i64, bool)>);

fn zone_facts() -> impl Strategy<Value = ZoneFacts> {
    (
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.8),
        0u64..15,
        0u64..4,
        prop::option::of((0i64..25, any::<bool>())),
    )
}

fn policy() -> impl Strategy<Value = Distribution> {
    prop_oneof![
        Just(Distribution::Even),
        Just(Distribution::Balanced),
        Just(Distribution::Any),
    ]
}

/// A pool with random zones, and which of its zones have an agent.
fn random_pool() -> impl Strategy<Value = (PoolView, BTreeSet<String>)> {
    (
        0i64..80,
        policy(),
        prop::collection::vec(zone_facts(), 1..6),
    )
        .prop_map(|(target, policy, facts)| {
            let mut view = pool(target, policy, &[]);
            let mut agents = BTreeSet::new();
            for (i, (allowed, exhausted, agent, confirmed, in_flight, d)) in
                facts.into_iter().enumerate()
            {
                let name = format!("zone-{i}");
                let mut zone = zone_view(confirmed, in_flight, d.map(|(c, a)| desired(c, a)));
                if exhausted {
                    zone.exhausted = Some(ZoneExhaustion::default());
                }
                if let (true, Some(config)) = (allowed, view.config.as_mut()) {
                    config.allowed_zones.push(name.clone());
                }
                if agent {
                    agents.insert(name.clone());
                }
                view.zones.insert(name, zone);
            }
            (view, agents)
        })
}

proptest! {
    #[test]
    fn the_input_follows_the_rules((view, agents) in random_pool()) {
        let input = distribution_input(&view, |z| agents.contains(z), &Requests::new(), NOW);
        let allowed = allowed_zones(&view);
        for state in &input.zones {
            let zone = &view.zones[&state.zone];
            let usable = allowed.contains(&state.zone)
                && zone.exhausted.is_none()
                && agents.contains(&state.zone);
            prop_assert_eq!(state.usable, usable);
            let expected = if zone.exhausted.is_some() {
                zone.counts.live_confirmed
            } else if usable {
                zone.counts.live.max(committed(zone))
            } else {
                zone.counts.live
            };
            prop_assert_eq!(state.live, expected);
        }
    }

    #[test]
    fn placement_keeps_the_distribution_properties((view, agents) in random_pool()) {
        let input = distribution_input(&view, |z| agents.contains(z), &Requests::new(), NOW);
        let placement = placed(&view, |z| agents.contains(z));
        let kept_total: i64 = input
            .zones
            .iter()
            .filter(|z| z.allowed)
            .map(|z| z.live as i64)
            .sum();
        let any_usable = input.zones.iter().any(|z| z.allowed && z.usable);
        let unbounded = input.zones.iter().all(|z| z.capacity.is_none());
        if kept_total >= input.target || (any_usable && unbounded) {
            prop_assert_eq!(placement.plan.outcome, PlacementOutcome::Placed);
            prop_assert_eq!(placement.plan.total_desired(), input.target);
        }
        for state in &input.zones {
            let alloc = placement.plan.zone(&state.zone);
            let desired = alloc.map_or(0, |a| a.desired);
            if !(state.allowed && state.usable) {
                prop_assert!(desired <= state.live as i64, "{state:?} grew");
            } else if kept_total <= input.target {
                // A usable zone is never told less than it may be creating toward.
                prop_assert!(desired as u64 >= committed(&view.zones[&state.zone]));
            }
        }
    }

    #[test]
    fn even_placement_from_empty_differs_by_at_most_one(
        target in 0i64..200,
        zones in prop::collection::vec((any::<bool>(), any::<bool>()), 1..7),
    ) {
        let names: Vec<String> = (0..zones.len()).map(|i| format!("zone-{i}")).collect();
        let allowed: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut view = pool(target, Distribution::Even, &allowed);
        let mut agents = BTreeSet::new();
        for (name, (exhausted, agent)) in names.iter().zip(zones) {
            let zone = view.zone_mut(name);
            if exhausted {
                zone.exhausted = Some(ZoneExhaustion::default());
            }
            if agent {
                agents.insert(name.clone());
            }
        }
        let placement = placed(&view, |z| agents.contains(z));
        let usable: Vec<i64> = placement
            .plan
            .zones
            .iter()
            .filter(|a| a.accept_new)
            .map(|a| a.desired)
            .collect();
        if let (Some(min), Some(max)) = (usable.iter().min(), usable.iter().max()) {
            prop_assert!(max - min <= 1, "{usable:?}");
        }
    }
}

/// One thing that happens to a zone of the simulated pool.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The agent reports a stockout; the leader exhausts the zone and its inserts in
    /// flight fail.
    Stockout(usize),
    /// The exhaustion lease runs out.
    Expire(usize),
    /// The zone's agents are gone past the grace; they stop creating, and what they
    /// recorded is written off (it may survive in GCE).
    LoseAgent(usize),
    /// An agent is back, with the instances that survived; it has not read the zone's
    /// desired yet.
    RegainAgent(usize),
    /// The agent deletes one instance above the zone's desired count.
    Shed(usize),
    /// The agent reads the zone's desired count and creates toward it from now on.
    Read(usize),
    /// The agent starts one insert, if below the count it creates toward.
    Create(usize),
    /// GCE confirms one insert in flight.
    Confirm(usize),
    /// A confirmed instance is preempted or vanishes.
    Lose(usize),
}

fn step(zones: usize) -> impl Strategy<Value = Step> {
    let z = 0..zones;
    prop_oneof![
        1 => z.clone().prop_map(Step::Stockout),
        1 => z.clone().prop_map(Step::Expire),
        1 => z.clone().prop_map(Step::LoseAgent),
        1 => z.clone().prop_map(Step::RegainAgent),
        2 => z.clone().prop_map(Step::Shed),
        3 => z.clone().prop_map(Step::Read),
        6 => z.clone().prop_map(Step::Create),
        3 => z.clone().prop_map(Step::Confirm),
        1 => z.prop_map(Step::Lose),
    ]
}

/// One simulated zone: what GCE and its agent do, and the leader's view of it.
#[derive(Debug, Clone, Default)]
struct SimZone {
    /// Instances GCE has.
    confirmed: u64,
    /// Inserts sent, not yet confirmed.
    in_flight: u64,
    /// The count the agent creates toward: the desired count it last read while it could
    /// create, 0 when it was told to create nothing or has not read since it came back.
    toward: u64,
    /// An agent runs in the zone.
    agent: bool,
    /// Instances the zone had when its agent was lost, as far as they survive: the
    /// leader stopped counting on them, so other zones replaced them.
    written_off: u64,
    /// The leader's view of the zone.
    view: ZoneView,
}

impl SimZone {
    fn live(&self) -> u64 {
        self.confirmed + self.in_flight
    }
}

/// Runs the steps; the instances left at the end, or what broke.
fn simulate(
    target: i64,
    policy: Distribution,
    count: usize,
    steps: &[Step],
) -> Result<u64, String> {
    let names: Vec<String> = (0..count).map(|i| format!("zone-{i}")).collect();
    let allowed: Vec<&str> = names.iter().map(String::as_str).collect();
    let config = pool(target, policy, &allowed).config;
    let mut zones: Vec<SimZone> = (0..count)
        .map(|_| SimZone {
            agent: true,
            ..Default::default()
        })
        .collect();
    let bound = u64::try_from(target).unwrap_or(0) + count as u64;
    for (i, step) in steps.iter().enumerate() {
        let now = NOW + 1_000 * i as i64;
        match *step {
            Step::Stockout(z) => {
                let mut view = PoolView {
                    rollout: None,
                    config_refused: false,
                    config: config.clone(),
                    zones: BTreeMap::new(),
                };
                let zone = view.zone_mut(&names[z]);
                *zone = zones[z].view.clone();
                zone.report = Some(ExhaustionReport::default());
                if let Some(ReportDecision::Exhaust(grant)) =
                    decide_report(&view, &names[z], "s1", now)
                {
                    let sim = &mut zones[z];
                    sim.in_flight = 0;
                    sim.toward = 0;
                    set_instances(&mut sim.view, sim.confirmed, 0);
                    sim.view.exhausted = Some(grant.exhaustion);
                    sim.view.desired = Some(grant.desired);
                }
            }
            Step::Expire(z) => zones[z].view.exhausted = None,
            Step::LoseAgent(z) => {
                let sim = &mut zones[z];
                if sim.agent {
                    sim.written_off = sim.live();
                }
                sim.agent = false;
                sim.toward = 0;
            }
            Step::RegainAgent(z) => zones[z].agent = true,
            Step::Read(z) => {
                let sim = &mut zones[z];
                if sim.agent {
                    sim.toward = committed(&sim.view);
                }
            }
            Step::Create(z) => {
                let sim = &mut zones[z];
                if sim.agent && sim.view.exhausted.is_none() && sim.live() < sim.toward {
                    sim.in_flight += 1;
                }
            }
            Step::Confirm(z) => {
                let sim = &mut zones[z];
                if sim.in_flight > 0 {
                    sim.in_flight -= 1;
                    sim.confirmed += 1;
                }
            }
            Step::Lose(z) => {
                let sim = &mut zones[z];
                sim.confirmed = sim.confirmed.saturating_sub(1);
            }
            Step::Shed(z) => {
                let sim = &mut zones[z];
                let told = sim.view.desired.as_ref().map_or(0, |d| d.count);
                if sim.agent && sim.confirmed > 0 && sim.live() as i64 > told {
                    sim.confirmed -= 1;
                }
            }
        }
        for sim in &mut zones {
            let (confirmed, in_flight) = (sim.confirmed, sim.in_flight);
            set_instances(&mut sim.view, confirmed, in_flight);
            sim.written_off = sim.written_off.min(sim.live());
        }
        let view = PoolView {
            rollout: None,
            config_refused: false,
            config: config.clone(),
            zones: names
                .iter()
                .cloned()
                .zip(zones.iter().map(|z| z.view.clone()))
                .collect(),
        };
        let agent_ok = |zone: &str| {
            names
                .iter()
                .position(|n| n == zone)
                .is_some_and(|z| zones[z].agent)
        };
        let placement = place(
            &view,
            agent_ok,
            &BTreeMap::new(),
            &Requests::new(),
            "s1",
            now,
        )
        .map_err(|e| e.to_string())?;
        for write in placement.writes {
            if let Some(z) = names.iter().position(|n| *n == write.zone) {
                zones[z].view.desired = write.next;
            }
        }
        for sim in &zones {
            if sim.view.exhausted.is_some() {
                let told = sim.view.desired.as_ref().map_or(0, |d| d.count);
                if told > sim.confirmed as i64 {
                    return Err(format!("after {step:?}: exhausted zone grew: {sim:?}"));
                }
            }
        }
        // Only instances written off while their agent was gone may be above the bound.
        let total: u64 = zones.iter().map(|z| z.live().max(z.toward)).sum();
        let written_off: u64 = zones.iter().map(|z| z.written_off).sum();
        if total > bound + written_off {
            return Err(format!(
                "after step {i} {step:?}: {total} > {bound} + {written_off}: {zones:#?}"
            ));
        }
    }
    Ok(zones.iter().map(SimZone::live).sum())
}

proptest! {
    #[test]
    fn no_zone_is_told_more_than_keeps_live_within_target_plus_zones(
        (target, policy, count, steps) in (0i64..25, policy(), 2usize..5).prop_flat_map(
            |(target, policy, count)| {
                let steps = prop::collection::vec(step(count), 0..120);
                (Just(target), Just(policy), Just(count), steps)
            },
        ),
    ) {
        if let Err(failure) = simulate(target, policy, count, &steps) {
            prop_assert!(false, "{}", failure);
        }
    }
}

#[test]
fn a_rollouts_surge_over_the_count_is_not_kept() {
    let mut zone = ZoneView::default();
    for _ in 0..3 {
        zone.counts.add(&pm_proto::ObservedInstance {
            state: pm_proto::InstanceState::Running as i32,
            ..Default::default()
        });
    }
    zone.desired = Some(ZoneDesired {
        count: 2,
        accept_new: true,
        surge: 1,
        ..Default::default()
    });
    assert_eq!(
        kept(&zone, true),
        2,
        "the surge VM replaces one about to go"
    );
    zone.desired = Some(ZoneDesired {
        count: 2,
        accept_new: true,
        ..Default::default()
    });
    assert_eq!(kept(&zone, true), 3, "without a surge, all count");
}

#[test]
fn a_shed_lowers_the_count_of_its_own_zone_and_only_once() {
    let shed = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let mut view = pool(8, Distribution::Even, &["a", "b"]);
    view.zones
        .insert("a".into(), zone_view(5, 0, Some(desired(5, true))));
    let mut b = zone_view(5, 0, Some(desired(5, true)));
    b.shedding = ["b-1", "b-2"].iter().map(|n| n.to_string()).collect();
    view.zones.insert("b".into(), b);
    let place_now = |view: &PoolView| {
        place(
            view,
            |_| true,
            &BTreeMap::new(),
            &Requests::new(),
            "s1",
            NOW,
        )
        .expect("placed")
    };
    let placement = place_now(&view);
    assert_eq!(placement.summary(), "a=5 b=3", "the shed zone drops, not a");
    let write = placement
        .writes
        .iter()
        .find(|w| w.zone == "b")
        .and_then(|w| w.next.clone())
        .expect("b is written");
    assert_eq!(write.shed, shed(&["b-1", "b-2"]), "the VMs it leaves out");
    assert!(
        placement.writes.iter().all(|w| w.zone != "a"),
        "a is unchanged"
    );
    // The next pass, with that count stored and both still draining: nothing moves.
    view.zones.get_mut("b").expect("b").desired = Some(write.clone());
    let placement = place_now(&view);
    assert_eq!(placement.summary(), "a=5 b=3");
    assert!(placement.writes.is_empty(), "{:?}", placement.writes);
    // One is gone and its request with it; the other drains still.
    let b = view.zones.get_mut("b").expect("b");
    set_instances(b, 4, 0);
    b.shedding.remove("b-1");
    let placement = place_now(&view);
    assert_eq!(placement.summary(), "a=5 b=3");
    let b = &placement.writes[0];
    assert_eq!(
        b.next.as_ref().map(|d| d.shed.clone()),
        Some(shed(&["b-2"]))
    );
    // Not counted yet while its zone is short of what it was told: still its own zone.
    let mut view = pool(7, Distribution::Even, &["a", "b"]);
    view.zones
        .insert("a".into(), zone_view(4, 0, Some(desired(4, true))));
    let mut b = zone_view(3, 0, Some(desired(4, true)));
    b.shedding = ["b-1"].iter().map(|n| n.to_string()).collect();
    view.zones.insert("b".into(), b);
    assert_eq!(place_now(&view).summary(), "a=4 b=3");
}
