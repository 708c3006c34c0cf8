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
    let input = DistributionInput {
        target,
        policy,
        zones,
    };
    match compute_desired(&input) {
        Ok(plan) => plan,
        Err(error) => panic!("valid input refused: {error}"),
    }
}

/// Desired counts in zone-name order.
fn desired(plan: &DistributionPlan) -> Vec<i64> {
    plan.zones.iter().map(|zone| zone.desired).collect()
}

#[test]
fn even_growth_from_empty_differs_by_at_most_one() {
    let result = plan(
        10,
        Distribution::Even,
        vec![zone("c", 0), zone("a", 0), zone("b", 0)],
    );
    assert_eq!(desired(&result), [4, 3, 3]);
    assert_eq!(result.outcome, PlacementOutcome::Placed);
}

#[test]
fn growth_goes_to_the_smallest_zones() {
    let result = plan(
        9,
        Distribution::Even,
        vec![zone("a", 5), zone("b", 1), zone("c", 0)],
    );
    assert_eq!(desired(&result), [5, 2, 2]);
}

#[test]
fn live_instances_are_not_moved_to_rebalance() {
    let result = plan(
        10,
        Distribution::Even,
        vec![zone("a", 10), zone("b", 0), zone("c", 0)],
    );
    assert_eq!(desired(&result), [10, 0, 0]);
}

#[test]
fn exhausted_zone_keeps_its_count_and_gets_nothing_new() {
    let result = plan(
        9,
        Distribution::Even,
        vec![exhausted("a", 2), zone("b", 2), zone("c", 2)],
    );
    assert_eq!(desired(&result), [2, 4, 3]);
    let a = result.zone("a");
    assert_eq!(a.map(|a| a.accept_new), Some(false));
    assert_eq!(result.zone("b").map(|b| b.accept_new), Some(true));
}

#[test]
fn exhausted_zone_deficit_moves_to_others() {
    // Zone a lost its 3 instances and is exhausted: b and c replace them at once.
    let result = plan(
        9,
        Distribution::Even,
        vec![exhausted("a", 0), zone("b", 3), zone("c", 3)],
    );
    assert_eq!(desired(&result), [0, 5, 4]);
    assert_eq!(result.outcome, PlacementOutcome::Placed);
}

#[test]
fn not_allowed_zone_gets_zero_and_its_instances_are_replaced() {
    let result = plan(
        3,
        Distribution::Even,
        vec![not_allowed("a", 3), zone("b", 0), zone("c", 0)],
    );
    assert_eq!(desired(&result), [0, 2, 1]);
    assert_eq!(result.zone("a").map(|a| a.accept_new), Some(false));
}

#[test]
fn not_allowed_zone_gets_nothing_even_if_usable_flag_is_set() {
    let result = plan(
        4,
        Distribution::Even,
        vec![not_allowed("a", 0), zone("b", 0)],
    );
    assert_eq!(desired(&result), [0, 4]);
}

#[test]
fn shrink_takes_from_the_largest_zones() {
    let result = plan(
        6,
        Distribution::Even,
        vec![zone("a", 5), zone("b", 3), zone("c", 1)],
    );
    assert_eq!(desired(&result), [3, 2, 1]);
}

#[test]
fn shrink_takes_from_not_usable_zones_first() {
    let result = plan(5, Distribution::Even, vec![exhausted("a", 4), zone("b", 4)]);
    assert_eq!(desired(&result), [1, 4]);
}

#[test]
fn shrink_to_zero_empties_every_zone() {
    let result = plan(
        0,
        Distribution::Even,
        vec![exhausted("a", 4), zone("b", 7), not_allowed("c", 2)],
    );
    assert_eq!(desired(&result), [0, 0, 0]);
    assert_eq!(result.outcome, PlacementOutcome::Placed);
}

#[test]
fn no_usable_zone_keeps_observed_counts_and_says_so() {
    let result = plan(
        5,
        Distribution::Even,
        vec![exhausted("a", 2), exhausted("b", 1), not_allowed("c", 1)],
    );
    assert_eq!(desired(&result), [2, 1, 0]);
    assert_eq!(
        result.outcome,
        PlacementOutcome::NoUsableZone { unplaced: 2 }
    );
}

#[test]
fn no_usable_zone_still_shrinks_to_target() {
    let result = plan(
        4,
        Distribution::Even,
        vec![exhausted("a", 3), exhausted("b", 3)],
    );
    assert_eq!(desired(&result), [2, 2]);
    assert_eq!(result.outcome, PlacementOutcome::Placed);
}

#[test]
fn pool_without_zones_cannot_be_placed() {
    let result = plan(3, Distribution::Even, Vec::new());
    assert!(result.zones.is_empty());
    assert_eq!(
        result.outcome,
        PlacementOutcome::NoUsableZone { unplaced: 3 }
    );
    let empty = plan(0, Distribution::Even, Vec::new());
    assert_eq!(empty.outcome, PlacementOutcome::Placed);
}

#[test]
fn even_ignores_capacity() {
    let result = plan(
        4,
        Distribution::Even,
        vec![
            with_capacity(zone("a", 0), 1),
            with_capacity(zone("b", 0), 1),
        ],
    );
    assert_eq!(desired(&result), [2, 2]);
}

#[test]
fn balanced_caps_zones_at_capacity_and_overflows_to_others() {
    let result = plan(
        12,
        Distribution::Balanced,
        vec![
            with_capacity(zone("a", 0), 2),
            zone("b", 0),
            with_capacity(zone("c", 0), 10),
        ],
    );
    assert_eq!(desired(&result), [2, 5, 5]);
    assert_eq!(result.outcome, PlacementOutcome::Placed);
}

#[test]
fn balanced_reports_the_instances_that_do_not_fit() {
    let result = plan(
        7,
        Distribution::Balanced,
        vec![
            with_capacity(zone("a", 0), 2),
            with_capacity(zone("b", 1), 3),
        ],
    );
    assert_eq!(desired(&result), [2, 3]);
    assert_eq!(
        result.outcome,
        PlacementOutcome::CapacityShort { unplaced: 2 }
    );
}

#[test]
fn balanced_keeps_live_instances_above_a_lowered_capacity() {
    let result = plan(
        8,
        Distribution::Balanced,
        vec![with_capacity(zone("a", 5), 2), zone("b", 0)],
    );
    assert_eq!(desired(&result), [5, 3]);
}

#[test]
fn any_puts_new_instances_in_the_zone_that_succeeded_last() {
    let result = plan(
        5,
        Distribution::Any,
        vec![
            with_success(zone("a", 0), 100),
            with_success(zone("b", 0), 200),
            zone("c", 0),
        ],
    );
    assert_eq!(desired(&result), [0, 5, 0]);
}

#[test]
fn any_overflows_in_order_of_success_when_a_zone_is_full() {
    let result = plan(
        5,
        Distribution::Any,
        vec![
            with_success(zone("a", 0), 100),
            with_capacity(with_success(zone("b", 0), 200), 3),
            zone("c", 0),
        ],
    );
    assert_eq!(desired(&result), [2, 3, 0]);
}

#[test]
fn any_without_successes_prefers_most_room_then_fewest_instances() {
    let result = plan(
        6,
        Distribution::Any,
        vec![with_capacity(zone("a", 1), 5), zone("b", 3), zone("c", 0)],
    );
    assert_eq!(desired(&result), [1, 3, 2]);
}

#[test]
fn any_keeps_live_instances_and_skips_exhausted_zones() {
    let result = plan(
        6,
        Distribution::Any,
        vec![with_success(exhausted("a", 2), 500), zone("b", 1)],
    );
    assert_eq!(desired(&result), [2, 4]);
}

#[test]
fn negative_target_is_refused() {
    let input = DistributionInput {
        target: -1,
        policy: Distribution::Even,
        zones: vec![zone("a", 0)],
    };
    assert_eq!(
        compute_desired(&input),
        Err(DistributionError::NegativeTarget(-1))
    );
}

#[test]
fn duplicate_zone_is_refused() {
    let input = DistributionInput {
        target: 1,
        policy: Distribution::Even,
        zones: vec![zone("a", 0), zone("b", 0), zone("a", 1)],
    };
    assert_eq!(
        compute_desired(&input),
        Err(DistributionError::DuplicateZone("a".to_owned()))
    );
}

#[test]
fn huge_target_is_computed_without_per_instance_work() {
    // One step per instance would take hours here; water-filling takes microseconds.
    let zones: Vec<ZoneState> = (0..50).map(|i| zone(&format!("z{i:02}"), 0)).collect();
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
    let zones: Vec<ZoneState> = (0..50).map(|i| zone(&format!("z{i:02}"), 0)).collect();
    let result = plan(10_000, Distribution::Even, zones);
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
        for (state, allocation) in &pairs {
            if allocation.desired > live(state) {
                prop_assert!(smallest.is_some_and(|min| allocation.desired <= min + 1));
            }
        }
    }

    #[test]
    fn balanced_growth_respects_capacity_and_stays_even_where_there_is_room(
        input in input_with(Just(Distribution::Balanced)),
    ) {
        let plan = computed(&input);
        let pairs = paired(&input, &plan);
        for (state, allocation) in &pairs {
            if allocation.desired > live(state) {
                if let Some(capacity) = state.capacity {
                    prop_assert!(allocation.desired <= capacity as i64);
                }
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
    }

    #[test]
    fn any_growth_fills_zones_in_order_of_recent_success(
        input in input_with(Just(Distribution::Any)),
    ) {
        let plan = computed(&input);
        let pairs = paired(&input, &plan);
        for (state, allocation) in &pairs {
            if allocation.desired > live(state) {
                if let Some(capacity) = state.capacity {
                    prop_assert!(allocation.desired <= capacity as i64);
                }
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
