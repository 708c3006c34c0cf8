//! Back-off of exhausted zones: doubling on repeated stockouts, reset after health.

use std::time::Duration;

use pm_proto::ZoneDesired;

/// The largest back-off multiplier: 16 × `secondsForExhaustion`.
pub const MAX_MULTIPLIER: u32 = 16;

/// A zone counts as healthy again once this many base back-offs passed since its last
/// exhaustion ended without a new stockout; its multiplier and capacity hint reset then.
pub const HEALTHY_AFTER_BASES: u32 = 10;

/// The default base back-off (`secondsForExhaustion`).
pub const DEFAULT_BASE: Duration = Duration::from_secs(120);

/// How long a new exhaustion of a zone lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExhaustionBackoff {
    /// 1, 2, 4, 8 or 16.
    pub multiplier: u32,
    /// base × multiplier.
    pub ttl: Duration,
    /// `now + ttl` in Unix milliseconds.
    pub until_unix_ms: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a zone whose last exhaustion is recorded in `desired` is still within its
/// probation window at `now_ms`: its back-off keeps growing and its capacity hint holds.
pub fn in_probation(base: Duration, desired: &ZoneDesired, now_ms: i64) -> bool {
    desired.last_exhausted_until_unix_ms > 0
        && now_ms.saturating_sub(desired.last_exhausted_until_unix_ms)
            < millis(base.saturating_mul(HEALTHY_AFTER_BASES))
}

/// The back-off of a stockout seen at `now_ms`, given the zone's last recorded exhaustion.
pub fn next_backoff(base: Duration, last: Option<&ZoneDesired>, now_ms: i64) -> ExhaustionBackoff {
    let multiplier = match last {
        Some(d) if d.backoff_multiplier > 0 && in_probation(base, d, now_ms) => {
            d.backoff_multiplier.saturating_mul(2).min(MAX_MULTIPLIER)
        }
        _ => 1,
    };
    let ttl = base.saturating_mul(multiplier);
    ExhaustionBackoff {
        multiplier,
        ttl,
        until_unix_ms: now_ms.saturating_add(millis(ttl)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(60);

    fn after(backoff: ExhaustionBackoff) -> ZoneDesired {
        ZoneDesired {
            backoff_multiplier: backoff.multiplier,
            last_exhausted_until_unix_ms: backoff.until_unix_ms,
            ..Default::default()
        }
    }

    #[test]
    fn first_stockout_backs_off_the_base() {
        let b = next_backoff(BASE, None, 1_000);
        assert_eq!((b.multiplier, b.ttl, b.until_unix_ms), (1, BASE, 61_000));
    }

    #[test]
    fn repeated_stockouts_double_up_to_sixteen() {
        let mut now = 0;
        let mut last = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let b = next_backoff(BASE, last.as_ref(), now);
            seen.push(b.multiplier);
            now = b.until_unix_ms + 1_000;
            last = Some(after(b));
        }
        assert_eq!(seen, vec![1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn a_zone_healthy_long_enough_starts_over() {
        let b = next_backoff(BASE, None, 0);
        let b = next_backoff(BASE, Some(&after(b)), b.until_unix_ms + 1);
        assert_eq!(b.multiplier, 2);
        let healthy = b.until_unix_ms + millis(BASE) * i64::from(HEALTHY_AFTER_BASES);
        let c = next_backoff(BASE, Some(&after(b)), healthy);
        assert_eq!(c.multiplier, 1);
        let d = next_backoff(BASE, Some(&after(b)), healthy - 1);
        assert_eq!(d.multiplier, 4);
    }
}
