//! Capacity delivered, as a Spot user pays for it: RUNNING instance-seconds (up to the
//! target) over target instance-seconds, over the last [`WINDOW_MS`]; its cost, live
//! instance-seconds (spares and VMs booting included) over target instance-seconds; and
//! the seconds each pool spent below its target. The window is kept in minutes: the
//! oldest minute counts for the part of it still inside the hour, and goes once it has
//! wholly passed out of it. The leader integrates its view each time it publishes its
//! metrics; a new leader starts its window afresh.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The window of the capacity-delivered ratio.
pub const WINDOW_MS: i64 = 3_600_000;

/// Width of one bucket of the window.
const BUCKET_MS: i64 = 60_000;

/// One bucket: instance-milliseconds delivered and asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    /// Start of the bucket, Unix ms.
    start_ms: i64,
    /// The first instant it holds, Unix ms: later than `start_ms` in the first bucket of
    /// a meter (a new pool, a new leader) and after a gap.
    from_ms: i64,
    /// RUNNING instance-ms, each instant capped at the target.
    delivered: f64,
    /// Target instance-ms.
    asked: f64,
    /// Live instance-ms.
    paid: f64,
}

/// One pool's meter.
#[derive(Debug, Clone, Default)]
struct Meter {
    /// When the pool was last observed, and what it held then.
    last: Option<Sample>,
    /// The window's buckets, oldest first; at most `WINDOW_MS / BUCKET_MS` + 1.
    buckets: VecDeque<Bucket>,
}

/// What a pool held at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Unix ms.
    pub at_ms: i64,
    /// Its target.
    pub target: u64,
    /// Its RUNNING instances.
    pub running: u64,
    /// Its live instances: RUNNING and starting.
    pub live: u64,
}

/// The meters of every pool.
#[derive(Debug, Clone, Default)]
pub struct Capacity {
    meters: BTreeMap<String, Meter>,
}

/// What one observation adds and shows of a pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Seconds below target since the last observation.
    pub below_target_seconds: f64,
    /// Capacity delivered over the window so far; 1 while nothing was asked.
    pub delivered_ratio: f64,
    /// Live instance-seconds over target instance-seconds in the window; 1 while
    /// nothing was asked.
    pub cost_ratio: f64,
}

impl Capacity {
    /// Observes `pool` as `now`, integrating what it held since its last observation
    /// (the previous sample holds until this one), and returns its reading.
    pub fn observe(&mut self, pool: &str, now: Sample) -> Reading {
        let meter = self.meters.entry(pool.to_string()).or_default();
        let mut below = 0.0;
        if let Some(last) = meter.last.filter(|l| now.at_ms > l.at_ms) {
            let span = (now.at_ms - last.at_ms) as f64;
            if last.running < last.target {
                below = span / 1000.0;
            }
            // Only the window's part of a long gap (a clock jump) is added.
            meter.add(last.at_ms.max(now.at_ms - WINDOW_MS), now.at_ms, last);
        }
        meter.last = Some(now);
        while meter
            .buckets
            .front()
            .is_some_and(|b| b.start_ms + BUCKET_MS <= now.at_ms - WINDOW_MS)
        {
            meter.buckets.pop_front();
        }
        // The oldest bucket counts for its part still in the window, as if what it holds
        // was spread evenly over the part of its minute it covers: the window spans the
        // hour, not 60 to 61 minutes.
        let window_start = now.at_ms - WINDOW_MS;
        let (delivered, asked, paid) = meter.buckets.iter().fold((0.0, 0.0, 0.0), |t, b| {
            let end = b.start_ms + BUCKET_MS;
            let covered = (end - b.from_ms).max(1);
            let inside = (end - b.from_ms.max(window_start)).clamp(0, covered);
            let weight = inside as f64 / covered as f64;
            (
                t.0 + b.delivered * weight,
                t.1 + b.asked * weight,
                t.2 + b.paid * weight,
            )
        });
        let ratio = |x: f64| if asked > 0.0 { x / asked } else { 1.0 };
        Reading {
            below_target_seconds: below,
            delivered_ratio: ratio(delivered),
            cost_ratio: ratio(paid),
        }
    }

    /// Forgets the pools not in `pools`; returns them.
    pub fn retain(&mut self, pools: &BTreeSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .meters
            .keys()
            .filter(|pool| !pools.contains(*pool))
            .cloned()
            .collect();
        self.meters.retain(|pool, _| pools.contains(pool));
        gone
    }
}

impl Meter {
    /// Adds `held` from `from_ms` to `to_ms`, split over the buckets it spans.
    fn add(&mut self, from_ms: i64, to_ms: i64, held: Sample) {
        let mut at = from_ms;
        while at < to_ms {
            let start = at - at.rem_euclid(BUCKET_MS);
            let end = (start + BUCKET_MS).min(to_ms);
            if self.buckets.back().is_none_or(|b| b.start_ms != start) {
                self.buckets.push_back(Bucket {
                    start_ms: start,
                    from_ms: at,
                    ..Bucket::default()
                });
            }
            let span = (end - at) as f64;
            if let Some(bucket) = self.buckets.back_mut() {
                bucket.delivered += span * held.running.min(held.target) as f64;
                bucket.asked += span * held.target as f64;
                bucket.paid += span * held.live as f64;
            }
            at = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: i64, target: u64, running: u64) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            target,
            running,
            live: running,
        }
    }

    #[test]
    fn below_target_time_and_the_ratio_follow_what_was_held() {
        let mut c = Capacity::default();
        let first = c.observe("web", sample(0, 10, 5));
        assert_eq!(first.below_target_seconds, 0.0);
        assert_eq!(first.delivered_ratio, 1.0, "nothing asked yet");
        let r = c.observe("web", sample(30, 10, 10));
        assert_eq!(r.below_target_seconds, 30.0);
        assert!((r.delivered_ratio - 0.5).abs() < 1e-9, "{r:?}");
        let r = c.observe("web", sample(60, 10, 12));
        assert_eq!(r.below_target_seconds, 0.0);
        assert!((r.delivered_ratio - 0.75).abs() < 1e-9, "{r:?}");
        let r = c.observe("web", sample(90, 10, 10));
        assert!(
            (r.delivered_ratio - 2.5 / 3.0).abs() < 1e-9,
            "spares are not credit: {r:?}"
        );
        assert!(
            (r.cost_ratio - 2.7 / 3.0).abs() < 1e-9,
            "but they cost: {r:?}"
        );
    }

    #[test]
    fn the_window_forgets_what_is_older_than_an_hour() {
        let mut c = Capacity::default();
        c.observe("web", sample(0, 10, 0));
        c.observe("web", sample(600, 10, 10));
        let r = c.observe("web", sample(3600 + 1200, 10, 10));
        assert!((r.delivered_ratio - 1.0).abs() < 1e-9, "{r:?}");
        assert!(c.meters["web"].buckets.len() <= 61);
        assert_eq!(c.retain(&BTreeSet::new()), ["web"]);
        assert!(c.meters.is_empty());
    }

    #[test]
    fn the_window_spans_the_hour_not_up_to_a_minute_more() {
        let mut c = Capacity::default();
        c.observe("web", sample(0, 10, 0));
        c.observe("web", sample(60, 10, 10));
        // Half of the minute with nothing RUNNING is still inside the hour.
        let r = c.observe("web", sample(3630, 10, 10));
        let expected = 1.0 - 30.0 / 3600.0;
        assert!((r.delivered_ratio - expected).abs() < 1e-9, "{r:?}");

        // A meter that began mid-minute: all of its first, partial minute is inside.
        let mut c = Capacity::default();
        c.observe("web", sample(50, 10, 0));
        c.observe("web", sample(60, 10, 10));
        let r = c.observe("web", sample(3620, 10, 10));
        let expected = 1.0 - 10.0 / 3570.0;
        assert!((r.delivered_ratio - expected).abs() < 1e-9, "{r:?}");
    }
}
