//! pm-scheduler's settings: flags, `PM_*` variables, an optional config file.

use std::time::Duration;

use pm_daemon::{parse_duration, DaemonArgs};

/// The elected leader that spreads pools over zones.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "pm-scheduler",
    version,
    about = "pm's scheduler: every replica campaigns; the leader writes per-zone desired counts and exhaustion leases into etcd",
    after_help = "Example:\n  pm-scheduler --etcd http://127.0.0.1:2379 --lease-ttl 3s --metrics 0.0.0.0:9464\n\nEvery flag can also be set as a PM_* variable (PM_ETCD, PM_LEASE_TTL, ...) or in --config FILE."
)]
pub struct SchedulerConfig {
    /// etcd, id, lease, events, metrics, logs.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// A zone whose agents have all been gone this long gets no new instances.
    #[arg(long, env = "PM_AGENT_GRACE", value_parser = parse_duration, default_value = "30s")]
    pub agent_grace: Duration,
}

impl SchedulerConfig {
    /// Checks the settings that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.daemon.validate()?;
        Ok(())
    }
}
