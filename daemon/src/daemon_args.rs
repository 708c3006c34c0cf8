//! The flags every pm daemon (pm-scheduler, pm-agent) shares, and its default id.

use std::time::Duration;

use crate::duration::parse_duration;
use crate::etcd_args::EtcdArgs;
use crate::logging::LogFormat;

/// The settings every pm daemon (pm-scheduler, pm-agent) shares; flattened into their
/// flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// How to reach etcd.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// TTL of the daemon's lease: a dead leader (or active agent) is replaced within about
    /// this long.
    #[arg(long, env = "PM_LEASE_TTL", value_parser = parse_duration, default_value = "3s")]
    pub lease_ttl: Duration,
    /// This process's id in elections and events; default host name and pid.
    #[arg(long, env = "PM_ID")]
    pub id: Option<String>,
    /// How long events are kept.
    #[arg(long, env = "PM_EVENT_RETENTION", value_parser = parse_duration, default_value = "24h")]
    pub event_retention: Duration,
    /// Serve /metrics, /healthz and /readyz on this address (port 0: any free port,
    /// logged); no server when absent.
    #[arg(long, env = "PM_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Period of the daemon's full re-read of etcd, on top of its watches (the scheduler's
    /// leader and the active agent both re-list their view this often).
    #[arg(long, env = "PM_RESYNC", value_parser = parse_duration, default_value = "30s")]
    pub resync: Duration,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "PM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl DaemonArgs {
    /// The id to campaign and record events with.
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(default_id)
    }

    /// Checks what clap cannot: the lease TTL, the resync period, the id, the etcd
    /// settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.resync < Duration::from_millis(100) {
            return Err(format!("--resync {:?} is below 100ms", self.resync));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(format!(
                "--lease-ttl {:?} is below etcd's minimum of 1s",
                self.lease_ttl
            ));
        }
        pm_etcd::keys::validate_agent_id(&self.id()).map_err(|e| format!("--id: {e}"))?;
        self.etcd.options().map_err(|e| e.to_string())?;
        self.etcd.keyspace().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// `<host>-<pid>`, made safe for keys: the default id of an agent or scheduler.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{clean}-{}", std::process::id())
}
