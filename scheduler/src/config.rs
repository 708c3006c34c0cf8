//! pm-scheduler's settings: flags, `PM_*` variables, an optional config file.

use std::time::Duration;

use pm_daemon::{parse_duration, DaemonArgs};

use crate::sink::SinkMode;

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
    /// Deliver every pm event to this HTTP(S) URL as a CloudEvent 1.0 (leader only).
    #[arg(long, env = "PM_EVENTS_SINK", value_name = "URL", value_parser = parse_sink_url)]
    pub events_sink: Option<reqwest::Url>,
    /// How events go to --events-sink: `binary` (ce-* headers, JSON body) or
    /// `structured` (application/cloudevents+json).
    #[arg(long, env = "PM_EVENTS_SINK_MODE", value_enum, default_value_t = SinkMode::Binary)]
    pub events_sink_mode: SinkMode,
}

/// An `--events-sink` URL: absolute, http or https, with a host.
fn parse_sink_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

impl SchedulerConfig {
    /// Checks the settings that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.daemon.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_url_must_be_http_with_a_host() {
        assert!(parse_sink_url("http://127.0.0.1:8080/events").is_ok());
        assert!(parse_sink_url("https://events.example.com").is_ok());
        let ftp = parse_sink_url("ftp://example.com/").unwrap_err();
        assert!(ftp.contains("http or https"), "{ftp}");
        let relative = parse_sink_url("/events").unwrap_err();
        assert!(relative.contains("not a URL"), "{relative}");
    }
}
