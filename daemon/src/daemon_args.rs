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

    /// The etcd settings of the daemon's connection: keep-alive pings every quarter of the
    /// lease TTL (250 ms to 2 s), so a member that goes silent (a partition) is given up,
    /// and its requests tried on another member, well before the daemon's lease runs out.
    pub fn etcd_args(&self) -> EtcdArgs {
        let keep_alive =
            (self.lease_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(2));
        EtcdArgs {
            keep_alive: Some(keep_alive),
            ..self.etcd.clone()
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(args: &[&str]) -> DaemonArgs {
        let cmd = DaemonArgs::augment_args(clap::Command::new("demo"));
        let matches = cmd.try_get_matches_from(args).unwrap();
        DaemonArgs::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn keep_alive_pings_follow_the_lease_ttl() {
        let keep_alive = |ttl: &str| {
            let d = parse(&["demo", "--lease-ttl", ttl]);
            assert_eq!(d.etcd.options().unwrap().keep_alive, Duration::from_secs(2));
            d.etcd_args().options().unwrap().keep_alive
        };
        assert_eq!(keep_alive("3s"), Duration::from_millis(750));
        assert_eq!(keep_alive("1s"), Duration::from_millis(250));
        assert_eq!(keep_alive("1m"), Duration::from_secs(2));
    }
}
