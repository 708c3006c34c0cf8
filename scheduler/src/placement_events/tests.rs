//! Tests of which events placement passes deserve: each condition once when it begins
//! and once when it ends.

use super::*;
use crate::distribution::DistributionPlan;

const GRACE: Duration = Duration::from_secs(30);

fn placement(outcome: PlacementOutcome, counts_changed: bool) -> Placement {
    Placement {
        target: 4,
        plan: DistributionPlan {
            zones: Vec::new(),
            outcome,
        },
        writes: Vec::new(),
        counts_changed,
    }
}

fn report(
    agents: &[(&str, bool)],
    placed: Result<Placement, DistributionError>,
) -> PlacementReport {
    PlacementReport {
        pool: "web".into(),
        agents: agents.iter().map(|(z, ok)| (z.to_string(), *ok)).collect(),
        placed,
        witnessed: Vec::new(),
    }
}

fn kinds(events: &[PoolEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_zone_without_agent_is_reported_once_and_again_when_back() {
    let mut reported = PlacementEvents::default();
    let placed = || Ok(placement(PlacementOutcome::Placed, false));
    let gone = report(&[("a", false), ("b", true)], placed());
    let events = reported.events(&gone, GRACE);
    assert_eq!(kinds(&events), ["zone-without-agent"]);
    assert_eq!(events[0].zone, "a");
    assert!(events[0].message.contains("30s"), "{}", events[0].message);
    assert!(reported.events(&gone, GRACE).is_empty());
    let back = report(&[("a", true), ("b", true)], placed());
    assert_eq!(kinds(&reported.events(&back, GRACE)), ["zone-agent-back"]);
    assert!(reported.events(&back, GRACE).is_empty());
}

#[test]
fn an_unplaceable_pool_is_reported_once_until_it_is_placed() {
    let mut reported = PlacementEvents::default();
    let refused = report(&[], Err(DistributionError::NegativeTarget(-1)));
    assert_eq!(kinds(&reported.events(&refused, GRACE)), ["invalid-config"]);
    assert!(reported.events(&refused, GRACE).is_empty());
    let fixed = report(&[], Ok(placement(PlacementOutcome::Placed, true)));
    assert_eq!(
        kinds(&reported.events(&fixed, GRACE)),
        ["distribution-changed"]
    );
    assert_eq!(kinds(&reported.events(&refused, GRACE)), ["invalid-config"]);
}

#[test]
fn outcomes_are_reported_when_they_change_and_placed_only_after_another() {
    let mut reported = PlacementEvents::default();
    let with = |outcome, changed| report(&[], Ok(placement(outcome, changed)));
    let first = reported.events(&with(PlacementOutcome::Placed, false), GRACE);
    assert!(first.is_empty(), "the first placed pass says nothing");
    let short = with(PlacementOutcome::NoUsableZone { unplaced: 2 }, false);
    let events = reported.events(&short, GRACE);
    assert_eq!(kinds(&events), ["no-usable-zone"]);
    assert!(events[0].message.starts_with("2 instance(s)"));
    assert!(reported.events(&short, GRACE).is_empty());
    let full = with(PlacementOutcome::CapacityShort { unplaced: 1 }, true);
    assert_eq!(
        kinds(&reported.events(&full, GRACE)),
        ["distribution-changed", "capacity-short"]
    );
    let again = reported.events(&with(PlacementOutcome::Placed, false), GRACE);
    assert_eq!(kinds(&again), ["placed"]);
    assert_eq!(again[0].message, "the whole target of 4 is placed again");
}

#[test]
fn a_removed_pool_is_forgotten() {
    let mut reported = PlacementEvents::default();
    let short = report(
        &[("a", false)],
        Ok(placement(
            PlacementOutcome::NoUsableZone { unplaced: 4 },
            false,
        )),
    );
    assert_eq!(
        kinds(&reported.events(&short, GRACE)),
        ["zone-without-agent", "no-usable-zone"]
    );
    reported.forget("web");
    assert_eq!(
        kinds(&reported.events(&short, GRACE)),
        ["zone-without-agent", "no-usable-zone"]
    );
}

#[test]
fn a_witness_count_is_reported_when_it_applies_and_when_it_changes() {
    let mut reported = PlacementEvents::default();
    let mut pass = report(
        &[("a", true)],
        Ok(placement(PlacementOutcome::Placed, false)),
    );
    let count = |counted| Applied {
        zone: "b".into(),
        witness: "a".into(),
        recorded: 3,
        counted,
    };
    pass.witnessed = vec![count(1)];
    let events = reported.events(&pass, GRACE);
    assert_eq!(kinds(&events), ["zone-witnessed"]);
    assert_eq!(events[0].zone, "b");
    assert!(
        events[0].message.contains("counted 1"),
        "{}",
        events[0].message
    );
    assert!(
        events[0].message.contains("record 3"),
        "{}",
        events[0].message
    );
    assert!(reported.events(&pass, GRACE).is_empty(), "the same count");
    pass.witnessed = vec![count(0)];
    assert_eq!(kinds(&reported.events(&pass, GRACE)), ["zone-witnessed"]);
    pass.witnessed.clear();
    assert!(reported.events(&pass, GRACE).is_empty());
    pass.witnessed = vec![count(0)];
    assert_eq!(
        kinds(&reported.events(&pass, GRACE)),
        ["zone-witnessed"],
        "a new request is reported again"
    );
}
