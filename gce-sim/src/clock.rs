//! Wall-clock formatting as GCE does it (Pacific offsets), and the ids and names it assigns.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, Offset, SecondsFormat, Utc};
use rand::Rng;

/// Pacific Daylight Time's offset from UTC, which GCE's timestamps carry
/// (`2026-04-16T16:19:12.606-07:00`); the sim uses it all year rather than switching to
/// `-08:00` in winter.
const PACIFIC_OFFSET_SECS: i32 = -7 * 3600;

/// RFC 3339 with milliseconds at the Pacific offset, as GCE writes it, e.g.
/// `2024-04-30T22:06:07.123-07:00`.
pub fn rfc3339(time: SystemTime) -> String {
    let pacific = FixedOffset::east_opt(PACIFIC_OFFSET_SECS).unwrap_or_else(|| Utc.fix());
    DateTime::<Utc>::from(time)
        .with_timezone(&pacific)
        .to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_millis(time: SystemTime) -> u128 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
}

/// A numeric resource id (never 0), sent as a decimal string.
pub fn resource_id<R: Rng + ?Sized>(rng: &mut R) -> u64 {
    rng.random_range(1_000_000_000_000_000_000..u64::MAX)
}

/// An operation name shaped like GCE's: `operation-<millis>-<hex>-<hex>-<hex>`.
pub fn operation_name<R: Rng + ?Sized>(rng: &mut R, now: SystemTime) -> String {
    format!(
        "operation-{}-{:013x}-{:08x}-{:08x}",
        unix_millis(now),
        rng.random_range(0..1u64 << 52),
        rng.random::<u32>(),
        rng.random::<u32>()
    )
}

/// The name GCE gives system events such as preemptions: `systemevent-<millis>-<hex>`.
pub fn system_event_name<R: Rng + ?Sized>(rng: &mut R, now: SystemTime) -> String {
    format!(
        "systemevent-{}-{:08x}",
        unix_millis(now),
        rng.random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn formats_like_gce() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_539_967_123);
        assert_eq!(rfc3339(time), "2024-04-30T22:06:07.123-07:00");
        assert_eq!(
            pm_gce::resources::unix_ms(&rfc3339(time)),
            Some(1_714_539_967_123)
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let name = operation_name(&mut rng, time);
        assert!(name.starts_with("operation-1714539967123-"), "{name}");
        assert!(pm_gce::template::validate_name(&name).is_ok(), "{name}");
        assert!(system_event_name(&mut rng, time).starts_with("systemevent-1714539967123-"));
        assert!(resource_id(&mut rng) > 0);
    }
}
