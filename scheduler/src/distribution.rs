//! Where a pool's instances should be: the desired instance count of each zone.
//!
//! [`compute_desired`] is pure: it reads one pool's target, policy and per-zone state and
//! returns per-zone desired counts. The leader feeds it from etcd and writes the result
//! back; nothing here knows about etcd, GCE or time.
//!
//! The rules (DESIGN.md, "Desired counts"):
//! - A zone that is not allowed gets 0, and its instances are replaced elsewhere.
//! - Live instances stay where they are (no churn). Growth goes to the usable zones with
//!   the fewest instances; shrinkage comes first from allowed zones that are not usable
//!   (largest first), then from the largest usable zones.
//! - A zone that is allowed but not usable (exhausted, or its agent gone past the grace
//!   period) keeps what it has and gets nothing new; its deficit goes to the usable zones
//!   in the same computation.
//! - Ties go to zones in name order: growth gives the extra instance to the first names,
//!   shrinkage takes it from the last. The result does not depend on input order.
//!
//! Growth and shrinkage are water-filling: a binary search for the common level the
//! affected zones reach, so the work is O(zones · (log zones + log target)), never one
//! step per instance.

use std::cmp::Reverse;

use pm_proto::Distribution;

/// One zone of a pool as the leader sees it when it computes desired counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneState {
    /// Zone name, e.g. `us-central1-a`. Unique within one [`DistributionInput`].
    pub zone: String,
    /// The pool's `allowedZones` lists this zone. A zone seen only in observations has
    /// `allowed == false` and gets desired 0.
    pub allowed: bool,
    /// Instances of the pool in this zone that are not lost: one being deleted or
    /// preempted is not counted.
    pub live: u64,
    /// The zone may receive new instances: not exhausted, and its agent is live or gone
    /// for less than the grace period. Ignored when `allowed` is false.
    pub usable: bool,
    /// Most live instances the zone is known to hold; `None` when unknown, which counts
    /// as unbounded. `Balanced` and `Any` never grow a zone past it; `Even` ignores it.
    pub capacity: Option<u64>,
    /// Unix milliseconds of the last successful create in this zone, `None` if none is
    /// known. `Any` sends new instances to the most recent one first.
    pub last_success_unix_ms: Option<u64>,
}

/// Everything [`compute_desired`] needs about one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionInput {
    /// Instances to keep alive over all zones (`targetVMCount`). Must be >= 0.
    pub target: i64,
    /// How new instances are spread over the usable zones.
    pub policy: Distribution,
    /// Every zone the pool is allowed or has live instances in, each named once, in any
    /// order.
    pub zones: Vec<ZoneState>,
}

/// The desired state of one zone, as written to its `desired` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneAllocation {
    /// Zone name, as in the input.
    pub zone: String,
    /// Live instances wanted in the zone. Always >= 0; 0 when the zone is not allowed;
    /// at most the zone's live count when `accept_new` is false.
    pub desired: i64,
    /// The zone may receive new instances: it is allowed and usable. When false the
    /// agent creates nothing there even when below `desired`.
    pub accept_new: bool,
}

/// Whether the target could be placed, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementOutcome {
    /// The desired counts add up to the target.
    Placed,
    /// The pool must grow but no zone is usable; every zone keeps what it has.
    /// The caller reports this as the "no usable zone" event.
    NoUsableZone {
        /// Instances of the target that have no zone. Always > 0.
        unplaced: i64,
    },
    /// The pool must grow but the usable zones are full to their known capacity
    /// (`Balanced` and `Any` only).
    CapacityShort {
        /// Instances of the target that do not fit. Always > 0.
        unplaced: i64,
    },
}

/// The result of [`compute_desired`] for one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionPlan {
    /// One entry per input zone, sorted by zone name.
    pub zones: Vec<ZoneAllocation>,
    /// `Placed` exactly when the desired counts add up to the target; otherwise the
    /// target minus their sum is the outcome's `unplaced`.
    pub outcome: PlacementOutcome,
}

impl DistributionPlan {
    /// The entry of `zone`, if the input had that zone.
    pub fn zone(&self, zone: &str) -> Option<&ZoneAllocation> {
        self.zones.iter().find(|allocation| allocation.zone == zone)
    }

    /// Sum of the desired counts over all zones.
    pub fn total_desired(&self) -> i64 {
        self.zones.iter().map(|allocation| allocation.desired).sum()
    }
}

/// Input that [`compute_desired`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistributionError {
    /// The target instance count is below zero.
    #[error("target instance count is {0}, must be >= 0")]
    NegativeTarget(i64),
    /// Two zone entries have the same name, so their counts would be ambiguous.
    #[error("zone {0:?} is listed more than once")]
    DuplicateZone(String),
}

/// Computes the desired instance count of every zone of one pool.
///
/// See the module documentation for the rules. The result depends only on the input's
/// contents, not on the order of its zones.
pub fn compute_desired(input: &DistributionInput) -> Result<DistributionPlan, DistributionError> {
    let target = u64::try_from(input.target)
        .map(u128::from)
        .map_err(|_| DistributionError::NegativeTarget(input.target))?;
    let mut zones: Vec<&ZoneState> = input.zones.iter().collect();
    zones.sort_unstable_by(|a, b| a.zone.cmp(&b.zone));
    if let Some(pair) = zones.windows(2).find(|pair| pair[0].zone == pair[1].zone) {
        return Err(DistributionError::DuplicateZone(pair[0].zone.clone()));
    }

    // What each zone keeps before growth or shrinkage: its live instances if allowed.
    // Indices below refer to `zones`, which is in name order, so ascending index order
    // is the tie-break order.
    let mut counts: Vec<u128> = zones
        .iter()
        .map(|zone| {
            if zone.allowed {
                u128::from(zone.live)
            } else {
                0
            }
        })
        .collect();
    let kept: u128 = counts.iter().sum();
    let usable: Vec<usize> = (0..zones.len())
        .filter(|&i| zones[i].allowed && zones[i].usable)
        .collect();

    let outcome = if kept > target {
        let excess = kept - target;
        let stuck: Vec<usize> = (0..zones.len())
            .filter(|&i| zones[i].allowed && !zones[i].usable)
            .collect();
        let removed = shrink_largest(&mut counts, &stuck, excess);
        shrink_largest(&mut counts, &usable, excess - removed);
        PlacementOutcome::Placed
    } else if kept == target {
        PlacementOutcome::Placed
    } else if usable.is_empty() {
        PlacementOutcome::NoUsableZone {
            unplaced: to_count(target - kept),
        }
    } else {
        let deficit = target - kept;
        let capped = |i: usize| -> (usize, Option<u128>) {
            let room = zones[i]
                .capacity
                .map(|capacity| u128::from(capacity).saturating_sub(counts[i]));
            (i, room)
        };
        let placed = match input.policy {
            Distribution::Even => {
                let members: Vec<_> = usable.iter().map(|&i| (i, None)).collect();
                fill_evenly(&mut counts, &members, deficit)
            }
            Distribution::Balanced => {
                let members: Vec<_> = usable.iter().map(|&i| capped(i)).collect();
                fill_evenly(&mut counts, &members, deficit)
            }
            Distribution::Any => {
                let mut members: Vec<_> = usable.iter().map(|&i| capped(i)).collect();
                // Most recent success first, then most room (unknown capacity is
                // unbounded), then fewest instances, then name.
                members.sort_unstable_by_key(|&(i, room)| {
                    (
                        Reverse(zones[i].last_success_unix_ms),
                        Reverse(room.unwrap_or(u128::MAX)),
                        counts[i],
                        i,
                    )
                });
                fill_in_order(&mut counts, &members, deficit)
            }
        };
        if placed == deficit {
            PlacementOutcome::Placed
        } else {
            PlacementOutcome::CapacityShort {
                unplaced: to_count(deficit - placed),
            }
        }
    };

    let zones = zones
        .iter()
        .zip(counts)
        .map(|(zone, count)| ZoneAllocation {
            zone: zone.zone.clone(),
            desired: to_count(count),
            accept_new: zone.allowed && zone.usable,
        })
        .collect();
    Ok(DistributionPlan { zones, outcome })
}

/// Converts a count back to the API's `i64`. Every count here is at most the target,
/// which came in as an `i64`, so the saturation never happens.
fn to_count(count: u128) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Instances a zone at `count` with `room` left gets when filled up to `level`.
fn added_up_to(count: u128, room: Option<u128>, level: u128) -> u128 {
    let wanted = level.saturating_sub(count);
    room.map_or(wanted, |room| wanted.min(room))
}

/// Adds up to `deficit` instances to `members` (zone index and room left, `None` for
/// unbounded; in name order), raising the smallest first. Returns how many were added,
/// which is less than `deficit` only when every member is full.
fn fill_evenly(counts: &mut [u128], members: &[(usize, Option<u128>)], deficit: u128) -> u128 {
    let bounded_room: Option<u128> = members.iter().map(|&(_, room)| room).sum();
    if let Some(room) = bounded_room.filter(|&room| room <= deficit) {
        for &(i, room) in members {
            counts[i] += room.unwrap_or(0);
        }
        return room;
    }

    let added_at = |counts: &[u128], level: u128| -> u128 {
        members
            .iter()
            .map(|&(i, room)| added_up_to(counts[i], room, level))
            .sum()
    };
    // Find the highest level the members can all be raised to within the deficit.
    // Invariant: added_at(low) <= deficit < added_at(high). The upper bound holds because
    // the members have more room than the deficit.
    let highest = members.iter().map(|&(i, _)| counts[i]).max().unwrap_or(0);
    let (mut low, mut high) = (0, highest + deficit + 1);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if added_at(counts, mid) <= deficit {
            low = mid;
        } else {
            high = mid;
        }
    }
    // Fewer than the number of members that can still pass `low` remain: give them one
    // each, first names first.
    let mut rest = deficit - added_at(counts, low);
    for &(i, room) in members {
        let added = added_up_to(counts[i], room, low);
        let one_more = rest > 0 && added_up_to(counts[i], room, low + 1) > added;
        counts[i] += added + u128::from(one_more);
        rest -= u128::from(one_more);
    }
    deficit
}

/// Adds up to `deficit` instances to `members` in the given order, filling each to its
/// room (`None` is unbounded) before the next. Returns how many were added.
fn fill_in_order(counts: &mut [u128], members: &[(usize, Option<u128>)], deficit: u128) -> u128 {
    let mut rest = deficit;
    for &(i, room) in members {
        let added = room.map_or(rest, |room| room.min(rest));
        counts[i] += added;
        rest -= added;
    }
    deficit - rest
}

/// Removes up to `excess` instances from `members` (zone indices in name order), lowering
/// the largest first. Returns how many were removed, which is less than `excess` only when
/// every member reached 0.
fn shrink_largest(counts: &mut [u128], members: &[usize], excess: u128) -> u128 {
    let removed_at = |counts: &[u128], level: u128| -> u128 {
        members
            .iter()
            .map(|&i| counts[i].saturating_sub(level))
            .sum()
    };
    let total = removed_at(counts, 0);
    if total <= excess {
        for &i in members {
            counts[i] = 0;
        }
        return total;
    }

    // Find the lowest level the members can all be cut to within the excess.
    // Invariant: removed_at(low) > excess >= removed_at(high); so high >= 1 at the end.
    let largest = members.iter().map(|&i| counts[i]).max().unwrap_or(0);
    let (mut low, mut high) = (0, largest);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if removed_at(counts, mid) <= excess {
            high = mid;
        } else {
            low = mid;
        }
    }
    // Fewer than the number of members at `high` after the cut remain: take one from
    // each, last names first.
    let mut rest = excess - removed_at(counts, high);
    for &i in members.iter().rev() {
        let one_less = rest > 0 && counts[i] >= high;
        counts[i] = counts[i].min(high) - u128::from(one_less);
        rest -= u128::from(one_less);
    }
    excess
}

#[cfg(test)]
mod tests {
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
}
