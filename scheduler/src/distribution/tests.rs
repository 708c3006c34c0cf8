//! Tests of [`compute_desired`]: examples of each rule, and properties over random pools.

use super::*;
use proptest::prelude::*;

fn zone(name: &str, live: u64) -> ZoneState {
    ZoneState {
        zone: name.to_owned(),
        allowed: true,
        live,
        usable: true,
        capacity: None,
        last_success_unix_ms: None,
    }
}

fn exhausted(name: &str, live: u64) -> ZoneState {
    ZoneState {
        usable: false,
        ..zone(name, live)
    }
}

fn not_allowed(name: &str, live: u64) -> ZoneState {
    ZoneState {
        allowed: false,
        ..zone(name, live)
    }
}

fn with_capacity(zone: ZoneState, capacity: u64) -> ZoneState {
    ZoneState {
        capacity: Some(capacity),
        ..zone
    }
}

fn with_success(zone: ZoneState, unix_ms: u64) -> ZoneState {
    ZoneState {
        last_success_unix_ms: Some(unix_ms),
        ..zone
    }
}

fn plan(target: i64, policy: Distribution, zones: Vec<ZoneState>) -> DistributionPlan {
    computed(&DistributionInput {
        target,
        policy,
        zones,
    })
}

/// Desired counts in zone-name order.
fn desired(plan: &DistributionPlan) -> Vec<i64> {
    plan.zones.iter().map(|zone| zone.desired).collect()
}

/// One example of a rule: a pool's target, policy and zones, and the plan for them.
struct Example {
    /// The rule the example shows.
    rule: &'static str,
    target: i64,
    policy: Distribution,
    zones: Vec<ZoneState>,
    /// Desired counts in zone-name order.
    desired: &'static [i64],
    outcome: PlacementOutcome,
    /// The zones planned with `accept_new == false`; every other zone accepts new ones.
    closed: &'static [&'static str],
}

#[test]
fn examples_of_each_rule() {
    let examples = [
        Example {
            rule: "even growth from empty differs by at most one",
            target: 10,
            policy: Distribution::Even,
            zones: vec![zone("c", 0), zone("a", 0), zone("b", 0)],
            desired: &[4, 3, 3],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "growth goes to the smallest zones",
            target: 9,
            policy: Distribution::Even,
            zones: vec![zone("a", 5), zone("b", 1), zone("c", 0)],
            desired: &[5, 2, 2],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "live instances are not moved to rebalance",
            target: 10,
            policy: Distribution::Even,
            zones: vec![zone("a", 10), zone("b", 0), zone("c", 0)],
            desired: &[10, 0, 0],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "an exhausted zone keeps its count and gets nothing new",
            target: 9,
            policy: Distribution::Even,
            zones: vec![exhausted("a", 2), zone("b", 2), zone("c", 2)],
            desired: &[2, 4, 3],
            outcome: PlacementOutcome::Placed,
            closed: &["a"],
        },
        Example {
            // Zone a lost its 3 instances and is exhausted: b and c replace them at once.
            rule: "an exhausted zone's deficit moves to the others",
            target: 9,
            policy: Distribution::Even,
            zones: vec![exhausted("a", 0), zone("b", 3), zone("c", 3)],
            desired: &[0, 5, 4],
            outcome: PlacementOutcome::Placed,
            closed: &["a"],
        },
        Example {
            rule: "a zone not allowed gets zero and its instances are replaced",
            target: 3,
            policy: Distribution::Even,
            zones: vec![not_allowed("a", 3), zone("b", 0), zone("c", 0)],
            desired: &[0, 2, 1],
            outcome: PlacementOutcome::Placed,
            closed: &["a"],
        },
        Example {
            rule: "a zone not allowed gets nothing even if its usable flag is set",
            target: 4,
            policy: Distribution::Even,
            zones: vec![not_allowed("a", 0), zone("b", 0)],
            desired: &[0, 4],
            outcome: PlacementOutcome::Placed,
            closed: &["a"],
        },
        Example {
            rule: "shrinking takes from the largest zones",
            target: 6,
            policy: Distribution::Even,
            zones: vec![zone("a", 5), zone("b", 3), zone("c", 1)],
            desired: &[3, 2, 1],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "shrinking takes from zones that are not usable first",
            target: 5,
            policy: Distribution::Even,
            zones: vec![exhausted("a", 4), zone("b", 4)],
            desired: &[1, 4],
            outcome: PlacementOutcome::Placed,
            closed: &["a"],
        },
        Example {
            rule: "shrinking to zero empties every zone",
            target: 0,
            policy: Distribution::Even,
            zones: vec![exhausted("a", 4), zone("b", 7), not_allowed("c", 2)],
            desired: &[0, 0, 0],
            outcome: PlacementOutcome::Placed,
            closed: &["a", "c"],
        },
        Example {
            rule: "with no usable zone the observed counts stay and the plan says so",
            target: 5,
            policy: Distribution::Even,
            zones: vec![exhausted("a", 2), exhausted("b", 1), not_allowed("c", 1)],
            desired: &[2, 1, 0],
            outcome: PlacementOutcome::NoUsableZone { unplaced: 2 },
            closed: &["a", "b", "c"],
        },
        Example {
            rule: "with no usable zone the pool still shrinks to its target",
            target: 4,
            policy: Distribution::Even,
            zones: vec![exhausted("a", 3), exhausted("b", 3)],
            desired: &[2, 2],
            outcome: PlacementOutcome::Placed,
            closed: &["a", "b"],
        },
        Example {
            rule: "a pool without zones cannot be placed",
            target: 3,
            policy: Distribution::Even,
            zones: Vec::new(),
            desired: &[],
            outcome: PlacementOutcome::NoUsableZone { unplaced: 3 },
            closed: &[],
        },
        Example {
            rule: "a pool without zones and a target of zero is placed",
            target: 0,
            policy: Distribution::Even,
            zones: Vec::new(),
            desired: &[],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "even ignores capacity",
            target: 4,
            policy: Distribution::Even,
            zones: vec![
                with_capacity(zone("a", 0), 1),
                with_capacity(zone("b", 0), 1),
            ],
            desired: &[2, 2],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "balanced caps zones at capacity and overflows to the others",
            target: 12,
            policy: Distribution::Balanced,
            zones: vec![
                with_capacity(zone("a", 0), 2),
                zone("b", 0),
                with_capacity(zone("c", 0), 10),
            ],
            desired: &[2, 5, 5],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "balanced reports the instances that do not fit",
            target: 7,
            policy: Distribution::Balanced,
            zones: vec![
                with_capacity(zone("a", 0), 2),
                with_capacity(zone("b", 1), 3),
            ],
            desired: &[2, 3],
            outcome: PlacementOutcome::CapacityShort { unplaced: 2 },
            closed: &[],
        },
        Example {
            rule: "balanced keeps live instances above a lowered capacity",
            target: 8,
            policy: Distribution::Balanced,
            zones: vec![with_capacity(zone("a", 5), 2), zone("b", 0)],
            desired: &[5, 3],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "any puts new instances in the zone that succeeded last",
            target: 5,
            policy: Distribution::Any,
            zones: vec![
                with_success(zone("a", 0), 100),
                with_success(zone("b", 0), 200),
                zone("c", 0),
            ],
            desired: &[0, 5, 0],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "any overflows in order of success when a zone is full",
            target: 5,
            policy: Distribution::Any,
            zones: vec![
                with_success(zone("a", 0), 100),
                with_capacity(with_success(zone("b", 0), 200), 3),
                zone("c", 0),
            ],
            desired: &[2, 3, 0],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "any without successes prefers the most room, then the fewest instances",
            target: 6,
            policy: Distribution::Any,
            zones: vec![with_capacity(zone("a", 1), 5), zone("b", 3), zone("c", 0)],
            desired: &[1, 3, 2],
            outcome: PlacementOutcome::Placed,
            closed: &[],
        },
        Example {
            rule: "any keeps live instances and skips exhausted zones",
            target: 6,
            policy: Distribution::Any,
            zones: vec![with_success(exhausted("a", 2), 500), zone("b", 1)],
            desired: &[2, 4],
            outcome: PlacementOutcome::Placed,
            closed: &["a"],
        },
    ];
    for example in examples {
        let rule = example.rule;
        let result = plan(example.target, example.policy, example.zones);
        assert_eq!(desired(&result), example.desired, "{rule}");
        assert_eq!(result.outcome, example.outcome, "{rule}");
        for allocation in &result.zones {
            let open = !example.closed.contains(&allocation.zone.as_str());
            assert_eq!(allocation.accept_new, open, "{rule}: {}", allocation.zone);
        }
    }
}

#[test]
fn invalid_input_is_refused() {
    let cases = [
        (
            -1,
            vec![zone("a", 0)],
            DistributionError::NegativeTarget(-1),
        ),
        (
            1,
            vec![zone("a", 0), zone("b", 0), zone("a", 1)],
            DistributionError::DuplicateZone("a".to_owned()),
        ),
    ];
    for (target, zones, error) in cases {
        let input = DistributionInput {
            target,
            policy: Distribution::Even,
            zones,
        };
        assert_eq!(compute_desired(&input), Err(error));
    }
}

/// Fifty empty zones, `z00` to `z49`.
fn fifty_empty_zones() -> Vec<ZoneState> {
    (0..50).map(|i| zone(&format!("z{i:02}"), 0)).collect()
}

#[test]
fn huge_target_is_computed_without_per_instance_work() {
    // One step per instance would take hours here; water-filling takes microseconds.
    let zones = fifty_empty_zones();
    let started = std::time::Instant::now();
    let result = plan(1_000_000_000_000, Distribution::Even, zones.clone());
    let balanced = plan(1_000_000_000_000, Distribution::Balanced, zones);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(result.total_desired(), 1_000_000_000_000);
    assert!(desired(&result).iter().all(|&d| d == 20_000_000_000));
    assert_eq!(balanced, result);
}

#[test]
fn ten_thousand_over_fifty_zones_is_even() {
    let result = plan(10_000, Distribution::Even, fifty_empty_zones());
    assert!(desired(&result).iter().all(|&d| d == 200));
}

/// Fields of a generated zone before it gets its name.
type ZoneFields = (bool, u64, bool, Option<u64>, Option<u64>);

fn zone_fields() -> impl Strategy<Value = ZoneFields> {
    (
        prop::bool::weighted(0.85),
        0u64..40,
        prop::bool::weighted(0.7),
        prop::option::of(0u64..60),
        prop::option::of(0u64..4),
    )
}

fn named(fields: Vec<ZoneFields>) -> Vec<ZoneState> {
    fields
        .into_iter()
        .enumerate()
        .map(
            |(i, (allowed, live, usable, capacity, last_success_unix_ms))| ZoneState {
                zone: format!("zone-{i}"),
                allowed,
                live,
                usable,
                capacity,
                last_success_unix_ms,
            },
        )
        .collect()
}

fn policy() -> impl Strategy<Value = Distribution> {
    prop_oneof![
        Just(Distribution::Even),
        Just(Distribution::Balanced),
        Just(Distribution::Any),
    ]
}

fn input_with(
    policy: impl Strategy<Value = Distribution>,
) -> impl Strategy<Value = DistributionInput> {
    (
        0i64..300,
        policy,
        prop::collection::vec(zone_fields(), 0..8),
    )
        .prop_map(|(target, policy, fields)| DistributionInput {
            target,
            policy,
            zones: named(fields),
        })
}

fn input() -> impl Strategy<Value = DistributionInput> {
    input_with(policy())
}

/// Inputs whose target is below the live instances of the allowed zones.
fn shrinking_input() -> impl Strategy<Value = DistributionInput> {
    input()
        .prop_filter("no live instance to remove", |input| {
            allowed_live(input) > 0
        })
        .prop_flat_map(|input| {
            let targets = 0..allowed_live(&input);
            (Just(input), targets)
        })
        .prop_map(|(input, target)| DistributionInput { target, ..input })
}

/// The input zone of each plan entry (plan entries are in name order).
fn paired<'a>(
    input: &'a DistributionInput,
    plan: &'a DistributionPlan,
) -> Vec<(&'a ZoneState, &'a ZoneAllocation)> {
    plan.zones
        .iter()
        .map(|allocation| {
            let state = input.zones.iter().find(|z| z.zone == allocation.zone);
            match state {
                Some(state) => (state, allocation),
                None => panic!("plan has unknown zone {}", allocation.zone),
            }
        })
        .collect()
}

fn live(state: &ZoneState) -> i64 {
    i64::try_from(state.live).unwrap_or(i64::MAX)
}

fn allowed_live(input: &DistributionInput) -> i64 {
    input.zones.iter().filter(|z| z.allowed).map(live).sum()
}

fn takes_new(state: &ZoneState) -> bool {
    state.allowed && state.usable
}

/// The pairs whose zone is planned above its live count.
fn grown<'a>(
    pairs: &'a [(&'a ZoneState, &'a ZoneAllocation)],
) -> impl Iterator<Item = &'a (&'a ZoneState, &'a ZoneAllocation)> {
    pairs
        .iter()
        .filter(|(state, allocation)| allocation.desired > live(state))
}

/// A zone that grew stays within its known capacity.
fn within_capacity(state: &ZoneState, allocation: &ZoneAllocation) -> Result<(), TestCaseError> {
    if let Some(capacity) = state.capacity {
        prop_assert!(allocation.desired <= capacity as i64);
    }
    Ok(())
}

fn computed(input: &DistributionInput) -> DistributionPlan {
    match compute_desired(input) {
        Ok(plan) => plan,
        Err(error) => panic!("valid input refused: {error}"),
    }
}

proptest! {
    #[test]
    fn sum_equals_target_whenever_a_zone_can_take_the_growth(input in input()) {
        let plan = computed(&input);
        let deficit = input.target - allowed_live(&input);
        let room: Option<i64> = input
            .zones
            .iter()
            .filter(|z| takes_new(z))
            .map(|z| match (input.policy, z.capacity) {
                (Distribution::Even, _) | (_, None) => None,
                (_, Some(capacity)) => Some(live(z).max(capacity as i64) - live(z)),
            })
            .sum();
        let any_usable = input.zones.iter().any(takes_new);
        if deficit <= 0 || (any_usable && room.is_none_or(|room| room >= deficit)) {
            prop_assert_eq!(plan.outcome, PlacementOutcome::Placed);
        }
        match plan.outcome {
            PlacementOutcome::Placed => prop_assert_eq!(plan.total_desired(), input.target),
            PlacementOutcome::NoUsableZone { unplaced } => {
                prop_assert!(!any_usable);
                prop_assert!(unplaced > 0);
                prop_assert_eq!(plan.total_desired() + unplaced, input.target);
            }
            PlacementOutcome::CapacityShort { unplaced } => {
                prop_assert!(input.policy != Distribution::Even);
                prop_assert!(unplaced > 0);
                prop_assert_eq!(plan.total_desired() + unplaced, input.target);
            }
        }
    }

    #[test]
    fn every_input_zone_gets_exactly_one_entry_in_name_order(input in input()) {
        let plan = computed(&input);
        let mut names: Vec<&str> = input.zones.iter().map(|z| z.zone.as_str()).collect();
        names.sort_unstable();
        let planned: Vec<&str> = plan.zones.iter().map(|z| z.zone.as_str()).collect();
        prop_assert_eq!(planned, names);
    }

    #[test]
    fn not_allowed_zones_get_zero_and_accept_new_means_allowed_and_usable(
        input in input(),
    ) {
        let plan = computed(&input);
        for (state, allocation) in paired(&input, &plan) {
            prop_assert!(allocation.desired >= 0);
            if !state.allowed {
                prop_assert_eq!(allocation.desired, 0);
            }
            prop_assert_eq!(allocation.accept_new, takes_new(state));
        }
    }

    #[test]
    fn exhausted_zones_never_grow(input in input()) {
        let plan = computed(&input);
        for (state, allocation) in paired(&input, &plan) {
            if !takes_new(state) {
                prop_assert!(allocation.desired <= live(state), "{state:?} grew");
            }
        }
    }

    #[test]
    fn no_live_instance_is_moved_while_the_pool_grows(input in input()) {
        prop_assume!(allowed_live(&input) <= input.target);
        let plan = computed(&input);
        for (state, allocation) in paired(&input, &plan) {
            if state.allowed {
                prop_assert!(allocation.desired >= live(state), "{state:?} shrank");
            }
        }
    }

    #[test]
    fn scale_down_takes_from_the_largest_zones(input in shrinking_input()) {
        let plan = computed(&input);
        let pairs = paired(&input, &plan);
        let allowed_where = |usable: bool| {
            pairs
                .iter()
                .filter(move |(state, _)| state.allowed && state.usable == usable)
        };
        for (state, allocation) in &pairs {
            prop_assert!(allocation.desired <= live(state));
        }
        for usable in [false, true] {
            for (state, allocation) in allowed_where(usable) {
                if allocation.desired < live(state) {
                    // Only zones above what is left in this one were cut.
                    for (_, other) in allowed_where(usable) {
                        prop_assert!(other.desired <= allocation.desired + 1);
                    }
                    // Usable zones are only cut once the not usable ones are empty.
                    if usable {
                        for (_, stuck) in allowed_where(false) {
                            prop_assert_eq!(stuck.desired, 0);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn even_growth_from_empty_differs_by_at_most_one_between_usable_zones(
        target in 0i64..500,
        fields in prop::collection::vec(zone_fields(), 1..8),
    ) {
        let zones: Vec<ZoneState> = named(fields)
            .into_iter()
            .map(|z| ZoneState { live: 0, ..z })
            .collect();
        let input = DistributionInput { target, policy: Distribution::Even, zones };
        let plan = computed(&input);
        let usable: Vec<i64> = paired(&input, &plan)
            .into_iter()
            .filter(|(state, _)| takes_new(state))
            .map(|(_, allocation)| allocation.desired)
            .collect();
        if let (Some(min), Some(max)) = (usable.iter().min(), usable.iter().max()) {
            prop_assert!(max - min <= 1, "{usable:?}");
        }
    }

    #[test]
    fn even_growth_only_fills_the_smallest_usable_zones(
        input in input_with(Just(Distribution::Even)),
    ) {
        let plan = computed(&input);
        let pairs = paired(&input, &plan);
        let smallest = pairs
            .iter()
            .filter(|(state, _)| takes_new(state))
            .map(|(_, allocation)| allocation.desired)
            .min();
        for (_, allocation) in grown(&pairs) {
            prop_assert!(smallest.is_some_and(|min| allocation.desired <= min + 1));
        }
    }

    #[test]
    fn balanced_growth_respects_capacity_and_stays_even_where_there_is_room(
        input in input_with(Just(Distribution::Balanced)),
    ) {
        let plan = computed(&input);
        let pairs = paired(&input, &plan);
        for (state, allocation) in grown(&pairs) {
            within_capacity(state, allocation)?;
            for (other_state, other) in &pairs {
                let has_room = other_state
                    .capacity
                    .is_none_or(|capacity| other.desired < capacity as i64);
                if takes_new(other_state) && has_room {
                    prop_assert!(allocation.desired <= other.desired + 1);
                }
            }
        }
    }

    #[test]
    fn any_growth_fills_zones_in_order_of_recent_success(
        input in input_with(Just(Distribution::Any)),
    ) {
        let plan = computed(&input);
        let pairs = paired(&input, &plan);
        for (state, allocation) in grown(&pairs) {
            within_capacity(state, allocation)?;
            // A more recently successful usable zone is full already.
            for (other_state, other) in &pairs {
                if takes_new(other_state)
                    && other_state.last_success_unix_ms > state.last_success_unix_ms
                {
                    prop_assert!(other_state
                        .capacity
                        .is_some_and(|capacity| other.desired >= capacity as i64));
                }
            }
        }
    }

    #[test]
    fn result_does_not_depend_on_input_order(
        (input, shuffled) in input().prop_flat_map(|input| {
            let zones = Just(input.zones.clone()).prop_shuffle();
            (Just(input), zones)
        }),
    ) {
        let reordered = DistributionInput { zones: shuffled, ..input.clone() };
        prop_assert_eq!(computed(&input), computed(&reordered));
    }
}
