//! The pool config's fields: their names as written in a config document, the values
//! of its choices, the accepted ranges, and the defaults every reader of a stored
//! [`PoolConfig`] applies (a stored field left at zero means "the default").

use std::ops::RangeInclusive;
use std::time::Duration;

use pm_proto::{Distribution, OnPreempted, PoolConfig};

/// The fields of a pool config, by canonical (DESIGN.md) name.
pub const FIELDS: [&str; 14] = [
    "targetVMCount",
    "allowedZones",
    "prefix",
    "instance",
    "secondsToRest",
    "secondsForExhaustion",
    "hooks",
    "project",
    "distribution",
    "onPreempted",
    "update",
    "adopt",
    "spares",
    "disruption",
];

/// The fields a config must give.
pub const REQUIRED: [&str; 4] = ["targetVMCount", "allowedZones", "prefix", "instance"];

/// The values of `distribution`, as written in a config.
pub const DISTRIBUTIONS: [(&str, Distribution); 3] = [
    ("even", Distribution::Even),
    ("balanced", Distribution::Balanced),
    ("any", Distribution::Any),
];

/// The values of `onPreempted`, as written in a config.
pub const ON_PREEMPTED: [(&str, OnPreempted); 2] = [
    ("delete", OnPreempted::Delete),
    ("restart", OnPreempted::Restart),
];

/// Largest `targetVMCount` accepted: far beyond any real pool, low enough to catch a typo.
pub const MAX_TARGET_VM_COUNT: i64 = 100_000;

/// Largest `spares`; `targetVMCount` + `spares` stays within [`MAX_TARGET_VM_COUNT`] too.
pub const MAX_SPARES: i64 = 10_000;

/// Accepted `secondsToRest`: the agent's resync period.
pub const SECONDS_TO_REST: RangeInclusive<i64> = 1..=3600;

/// Accepted `secondsForExhaustion`: the base back-off of an exhausted zone.
pub const SECONDS_FOR_EXHAUSTION: RangeInclusive<i64> = 1..=86_400;

/// `secondsToRest` when the config gives none.
pub const DEFAULT_SECONDS_TO_REST: u32 = 5;

/// `secondsForExhaustion` when the config gives none.
pub const DEFAULT_SECONDS_FOR_EXHAUSTION: u32 = 120;

/// `secondsToRest` of a stored config, the default applied.
pub fn seconds_to_rest(config: &PoolConfig) -> u32 {
    or_default(config.seconds_to_rest, DEFAULT_SECONDS_TO_REST)
}

/// `secondsForExhaustion` of a stored config, the default applied.
pub fn seconds_for_exhaustion(config: &PoolConfig) -> u32 {
    or_default(
        config.seconds_for_exhaustion,
        DEFAULT_SECONDS_FOR_EXHAUSTION,
    )
}

/// The agent's resync period of a pool (`secondsToRest`).
pub fn rest(config: &PoolConfig) -> Duration {
    Duration::from_secs(u64::from(seconds_to_rest(config)))
}

/// The base back-off of a stocked-out zone of a pool (`secondsForExhaustion`).
pub fn exhaustion_base(config: &PoolConfig) -> Duration {
    Duration::from_secs(u64::from(seconds_for_exhaustion(config)))
}

/// The GCE project of a pool: its own, else `fallback` (the agent's `--project`).
pub fn project_or(config: &PoolConfig, fallback: Option<&str>) -> Option<String> {
    if config.project.is_empty() {
        fallback.map(str::to_string)
    } else {
        Some(config.project.clone())
    }
}

/// The config-file name of a distribution.
pub fn distribution_name(distribution: Distribution) -> &'static str {
    DISTRIBUTIONS
        .iter()
        .find(|(_, d)| *d == distribution)
        .map_or("even", |(name, _)| name)
}

/// The config-file name of an `onPreempted` action.
pub fn on_preempted_name(action: OnPreempted) -> &'static str {
    ON_PREEMPTED
        .iter()
        .find(|(_, a)| *a == action)
        .map_or("delete", |(name, _)| name)
}

fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 {
        default
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_the_default() {
        let mut config = PoolConfig::default();
        assert_eq!(rest(&config), Duration::from_secs(5));
        assert_eq!(exhaustion_base(&config), Duration::from_secs(120));
        config.seconds_to_rest = 7;
        config.seconds_for_exhaustion = 60;
        assert_eq!(rest(&config), Duration::from_secs(7));
        assert_eq!(exhaustion_base(&config), Duration::from_secs(60));
        assert!(SECONDS_TO_REST.contains(&i64::from(DEFAULT_SECONDS_TO_REST)));
        assert!(SECONDS_FOR_EXHAUSTION.contains(&i64::from(DEFAULT_SECONDS_FOR_EXHAUSTION)));
    }

    #[test]
    fn the_project_falls_back_to_the_agents() {
        let mut config = PoolConfig::default();
        assert_eq!(project_or(&config, None), None);
        assert_eq!(project_or(&config, Some("p")), Some("p".into()));
        config.project = "own".into();
        assert_eq!(project_or(&config, Some("p")), Some("own".into()));
    }

    #[test]
    fn choices_have_names() {
        assert_eq!(distribution_name(Distribution::Balanced), "balanced");
        assert_eq!(on_preempted_name(OnPreempted::Restart), "restart");
    }
}
