//! pm-scheduler's settings: flags, `PM_*` variables, an optional config file.

use std::time::Duration;

use pm_etcd::cli::{default_id, parse_duration, EtcdArgs, LogFormat};

/// The elected leader that spreads pools over zones.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "pm-scheduler",
    version,
    about = "pm's scheduler: every replica campaigns; the leader writes per-zone desired counts and exhaustion leases into etcd",
    after_help = "Example:\n  pm-scheduler --etcd http://127.0.0.1:2379 --lease-ttl 3s --metrics 0.0.0.0:9464\n\nEvery flag can also be set as a PM_* variable (PM_ETCD, PM_LEASE_TTL, ...) or in --config FILE."
)]
pub struct SchedulerConfig {
    /// How to reach etcd.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// TTL of the leader's lease: a dead leader is replaced within about this long.
    #[arg(long, env = "PM_LEASE_TTL", value_parser = parse_duration, default_value = "3s")]
    pub lease_ttl: Duration,
    /// This replica's id in the election and in events; default host name and pid.
    #[arg(long, env = "PM_ID")]
    pub id: Option<String>,
    /// A zone whose agents have all been gone this long gets no new instances.
    #[arg(long, env = "PM_AGENT_GRACE", value_parser = parse_duration, default_value = "30s")]
    pub agent_grace: Duration,
    /// Period of the leader's full re-read of etcd, on top of its watches.
    #[arg(long, env = "PM_RESYNC", value_parser = parse_duration, default_value = "30s")]
    pub resync: Duration,
    /// How long events are kept.
    #[arg(long, env = "PM_EVENT_RETENTION", value_parser = parse_duration, default_value = "24h")]
    pub event_retention: Duration,
    /// Serve /metrics, /healthz and /readyz on this address (port 0: any free port,
    /// logged); no server when absent.
    #[arg(long, env = "PM_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "PM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl SchedulerConfig {
    /// The id to campaign with.
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(default_id)
    }

    /// Checks the settings that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(format!(
                "--lease-ttl {:?} is below etcd's minimum of 1s",
                self.lease_ttl
            ));
        }
        if self.resync < Duration::from_millis(100) {
            return Err(format!("--resync {:?} is below 100ms", self.resync));
        }
        self.etcd.options().map_err(|e| e.to_string())?;
        self.etcd.keyspace().map_err(|e| e.to_string())?;
        Ok(())
    }
}
