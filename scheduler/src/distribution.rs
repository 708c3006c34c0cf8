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
mod tests;
