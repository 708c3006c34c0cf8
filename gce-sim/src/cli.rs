//! Command line of the gce-sim binary.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Sim, SimConfig, SimConfigError};

/// gce-sim: a local Compute Engine v1 API with zone capacity, preemption and faults.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gce-sim", version)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port. The chosen address is printed as
    /// `gce-sim listening on http://HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Zones served, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "us-central1-a,us-central1-b,us-central1-c"
    )]
    pub zones: Vec<String>,
    /// Live instances each zone holds before creates stock out.
    #[arg(long, default_value_t = 100_000)]
    pub capacity: u64,
    /// Milliseconds an operation takes from PENDING to DONE.
    #[arg(long, default_value_t = 100)]
    pub op_delay_ms: u64,
    /// Milliseconds an instance takes from PROVISIONING to RUNNING.
    #[arg(long, default_value_t = 300)]
    pub boot_delay_ms: u64,
    /// Random preemptions per live instance per hour.
    #[arg(long, default_value_t = 0.0)]
    pub preempt_rate: f64,
    /// Milliseconds a preempted instance is STOPPING (its preempted operation recorded
    /// at the start) before it is TERMINATED or deleted: GCE's 30 s notice, scaled 1:100
    /// like the default delays.
    #[arg(long, default_value_t = 300)]
    pub preempt_notice_ms: u64,
    /// Refuse compute calls without a bearer token (401), and serve a token endpoint,
    /// `POST /token`, that issues them for a service account's signed JWT.
    #[arg(long)]
    pub require_auth: bool,
    /// Seed of the random source, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Machine types every zone offers, comma-separated; absent: f1-micro, g1-small and
    /// the common e2, n1, n2 and n2d types.
    #[arg(long, value_delimiter = ',')]
    pub machine_types: Option<Vec<String>>,
    /// A Compute v1 discovery document (e.g. google-api-python-client's
    /// compute.v1.json) to check request bodies against, in place of the trimmed copy
    /// compiled in.
    #[arg(long, value_name = "FILE")]
    pub discovery_document: Option<PathBuf>,
}

impl Args {
    /// The simulator settings these flags describe, validated.
    pub fn config(&self) -> Result<SimConfig, SimConfigError> {
        let config = SimConfig {
            zones: self.zones.iter().map(|z| z.trim().to_string()).collect(),
            capacity: self.capacity,
            op_delay: Duration::from_millis(self.op_delay_ms),
            boot_delay: Duration::from_millis(self.boot_delay_ms),
            preempt_rate: self.preempt_rate,
            preempt_notice: Duration::from_millis(self.preempt_notice_ms),
            require_auth: self.require_auth,
            seed: self.seed,
            machine_types: self
                .machine_types
                .as_ref()
                .map_or_else(crate::default_machine_types, |list| {
                    list.iter().map(|m| m.trim().to_string()).collect()
                }),
            discovery_document: self.discovery_document.clone(),
            ..SimConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// Binds, prints the address line (flushed, for callers that parse it), and serves
/// until `shutdown` is cancelled.
pub async fn run(
    config: SimConfig,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let sim = Sim::builder()
        .config(config)
        .build()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = crate::listen(listen)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "gce-sim listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%addr, "gce-sim serving");
    sim.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn flags_map_to_the_config() {
        let args = Args::try_parse_from([
            "gce-sim",
            "--listen",
            "127.0.0.1:0",
            "--zones",
            "a-1,b-2",
            "--capacity",
            "7",
            "--op-delay-ms",
            "5",
            "--boot-delay-ms",
            "6",
            "--preempt-rate",
            "1.5",
            "--seed",
            "9",
            "--machine-types",
            "e2-small, n2-standard-2",
            "--discovery-document",
            "/tmp/compute.v1.json",
            "--preempt-notice-ms",
            "40",
            "--require-auth",
        ])
        .expect("parses");
        let config = args.config().expect("valid");
        assert_eq!(config.zones, vec!["a-1", "b-2"]);
        assert_eq!(config.capacity, 7);
        assert_eq!(config.op_delay, Duration::from_millis(5));
        assert_eq!(config.boot_delay, Duration::from_millis(6));
        assert_eq!(config.preempt_rate, 1.5);
        assert_eq!(config.seed, Some(9));
        assert_eq!(config.machine_types, vec!["e2-small", "n2-standard-2"]);
        assert_eq!(
            config.discovery_document.as_deref(),
            Some(std::path::Path::new("/tmp/compute.v1.json"))
        );
        assert_eq!(config.preempt_notice, Duration::from_millis(40));
        assert!(config.require_auth);
        let defaults = Args::try_parse_from(["gce-sim"]).expect("parses");
        let config = defaults.config().expect("valid");
        assert_eq!(config.machine_types, crate::default_machine_types());
        assert_eq!(config.discovery_document, None);
        assert_eq!(config.preempt_notice, SimConfig::default().preempt_notice);
        assert!(!config.require_auth);
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(Args::try_parse_from(["gce-sim", "--capacity", "-1"]).is_err());
        assert!(Args::try_parse_from(["gce-sim", "--listen", "nowhere"]).is_err());
        assert!(Args::try_parse_from(["gce-sim", "--bogus"]).is_err());
        let args = Args::try_parse_from(["gce-sim", "--zones", "Bad_Zone"]).expect("parses");
        assert!(matches!(args.config(), Err(SimConfigError::BadZone(_))));
        let args = Args::try_parse_from(["gce-sim", "--preempt-rate=-2"]).expect("parses");
        assert!(matches!(
            args.config(),
            Err(SimConfigError::BadPreemptRate(_))
        ));
        let args = Args::try_parse_from(["gce-sim", "--zones", "a,a"]).expect("parses");
        assert!(matches!(
            args.config(),
            Err(SimConfigError::DuplicateZone(_))
        ));
        let args =
            Args::try_parse_from(["gce-sim", "--machine-types", "e2-small,E2"]).expect("parses");
        assert!(matches!(
            args.config(),
            Err(SimConfigError::BadMachineType(..))
        ));
        let args = Args::try_parse_from(["gce-sim", "--machine-types", "a,a"]).expect("parses");
        assert!(matches!(
            args.config(),
            Err(SimConfigError::DuplicateMachineType(_))
        ));
    }
}
