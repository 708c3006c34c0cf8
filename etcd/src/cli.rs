//! The command-line and config-file settings every pm binary shares: how to reach etcd.
//!
//! Settings come from, in order of precedence: flags, `PM_*` environment variables, an
//! optional config file (`--config FILE` or `PM_CONFIG`; TOML, YAML or JSON, keys named
//! like the long flags, `-` or `_` alike), then built-in defaults.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::connect::{EtcdOptions, Secret, TlsFiles};
use crate::error::{Error, Result};
use crate::keys::Keyspace;
use crate::store::Store;

/// The format of log lines.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing` for a binary: filtered by `RUST_LOG` (default `info`), written to
/// stderr as text or JSON.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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

/// Fires `shutdown` on SIGINT or SIGTERM, so a binary stops cleanly (a leader resigns).
pub async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// Runs `term` (one session of a daemon: campaign, act, lose) again and again until
/// `shutdown` fires. A term that fails is retried after a growing, jittered delay, reset
/// by a term that ends well; `on_error` sees each failure first (to count it).
pub async fn run_terms<F, Fut>(
    shutdown: &tokio_util::sync::CancellationToken,
    mut on_error: impl FnMut(&crate::Error),
    mut term: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    const RETRY: pm_backoff::Backoff =
        pm_backoff::Backoff::from_consts(Duration::from_millis(100), Duration::from_secs(5));
    let mut retry = RETRY.attempts();
    while !shutdown.is_cancelled() {
        match term().await {
            Ok(()) => retry.reset(),
            Err(e) => {
                on_error(&e);
                let delay = retry.next_delay();
                tracing::warn!(error = %e, ?delay, "session failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Parses a duration such as `3s`, `500ms` or `2m`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. 3s, 500ms, 2m"))
}

/// How to reach etcd; flattened into each binary's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(
        long = "etcd",
        env = "PM_ETCD",
        value_name = "URL[,URL...]",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: String,
    /// Key prefix of this pm installation.
    #[arg(long, env = "PM_PREFIX", default_value = crate::keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// PEM CA bundle of the etcd servers (enables TLS).
    #[arg(long = "etcd-cacert", env = "PM_ETCD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key).
    #[arg(long = "etcd-cert", env = "PM_ETCD_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = "etcd-key", env = "PM_ETCD_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// etcd user name. The password comes from PM_ETCD_PASSWORD or --etcd-password-file,
    /// never from a flag, so it does not show in process listings.
    #[arg(long = "etcd-user", env = "PM_ETCD_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// File holding the etcd password (first line).
    #[arg(
        long = "etcd-password-file",
        env = "PM_ETCD_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Bound on each etcd request.
    #[arg(long = "etcd-timeout", env = "PM_ETCD_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Optional config file (TOML, YAML or JSON) with any of these settings.
    #[arg(long = "config", env = "PM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl EtcdArgs {
    /// The connection options these settings describe. Reads the password file or
    /// `PM_ETCD_PASSWORD` when a user is set.
    pub fn options(&self) -> Result<EtcdOptions> {
        let mut options = EtcdOptions::from_endpoint_list(&self.endpoints)?;
        options.request_timeout = self.timeout;
        if self.cacert.is_some() || self.cert.is_some() || self.key.is_some() {
            options.tls = Some(TlsFiles {
                ca: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
            options.endpoints = options
                .endpoints
                .into_iter()
                .map(|e| e.replacen("http://", "https://", 1))
                .collect();
        }
        if let Some(user) = &self.user {
            let password = match &self.password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read etcd password file {}: {e}", path.display())))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => std::env::var("PM_ETCD_PASSWORD").map_err(|_| {
                    Error::Config(format!(
                        "etcd user {user:?} is set but no password: set PM_ETCD_PASSWORD or --etcd-password-file"
                    ))
                })?,
            };
            options.user = Some((user.clone(), Secret::new(password)));
        }
        options.validate()?;
        Ok(options)
    }

    /// The keyspace under `--prefix`.
    pub fn keyspace(&self) -> Result<Keyspace> {
        Keyspace::new(&self.prefix)
    }

    /// Connects, retrying with back-off while etcd cannot be reached, until it succeeds
    /// (`Some`) or `shutdown` fires (`None`). For daemons that must wait etcd out.
    pub async fn store_when_reachable(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<Store> {
        const RETRY: pm_backoff::Backoff =
            pm_backoff::Backoff::from_consts(Duration::from_millis(100), Duration::from_secs(5));
        let mut retry = RETRY.attempts();
        loop {
            match self.store().await {
                Ok(store) => return Some(store),
                Err(e) => {
                    let delay = retry.next_delay();
                    tracing::warn!(error = %e, ?delay, "cannot reach etcd; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Connects and returns a store over the keyspace.
    pub async fn store(&self) -> Result<Store> {
        let keys = self.keyspace()?;
        let client = self.options()?.connect().await?;
        Ok(Store::new(client, keys))
    }
}

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
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "PM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl DaemonArgs {
    /// The id to campaign and record events with.
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(default_id)
    }

    /// Checks what clap cannot: the lease TTL, the id, the etcd settings.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(format!(
                "--lease-ttl {:?} is below etcd's minimum of 1s",
                self.lease_ttl
            ));
        }
        crate::keys::validate_agent_id(&self.id()).map_err(|e| format!("--id: {e}"))?;
        self.etcd.options().map_err(|e| e.to_string())?;
        self.etcd.keyspace().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Finds `--config FILE` in `args`, else `PM_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("PM_CONFIG").map(PathBuf::from)
}

/// The sections a shared config file may hold, one per pm binary.
pub const SECTIONS: [&str; 3] = ["scheduler", "agent", "pmctl"];

/// Renders one setting's value as flag text.
fn setting_text(
    shown: &str,
    key: &str,
    value: config::Value,
) -> std::result::Result<String, String> {
    match value.kind {
        config::ValueKind::Array(items) => Ok(items
            .into_iter()
            .map(|v| v.into_string())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("config file {shown}: setting {key}: {e}"))?
            .join(",")),
        config::ValueKind::Table(_) => Err(format!(
            "config file {shown}: setting {key} must be a single value, not a table"
        )),
        other => config::Value::new(None, other)
            .into_string()
            .map_err(|e| format!("config file {shown}: setting {key}: {e}")),
    }
}

/// Reads a config file into (setting, value) pairs for the binary whose section is
/// `section`: top-level settings are shared by every binary, `[scheduler]`, `[agent]` and
/// `[pmctl]` tables hold each one's own (and override shared ones). Other binaries'
/// sections are skipped.
fn read_config_file(
    path: &Path,
    section: &str,
) -> std::result::Result<Vec<(String, String)>, String> {
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(format!(
            "config file {shown} does not exist or is not a file"
        ));
    }
    let settings = config::Config::builder()
        .add_source(config::File::from(path))
        .build()
        .map_err(|e| format!("config file {shown}: {e}"))?;
    let table = settings
        .try_deserialize::<config::Map<String, config::Value>>()
        .map_err(|e| format!("config file {shown}: {e}"))?;
    let mut shared = Vec::new();
    let mut own = Vec::new();
    for (key, value) in table {
        if key == section {
            let config::ValueKind::Table(entries) = value.kind else {
                return Err(format!(
                    "config file {shown}: [{key}] must be a table of settings"
                ));
            };
            for (inner, v) in entries {
                own.push((inner.replace('_', "-"), setting_text(&shown, &inner, v)?));
            }
        } else if SECTIONS.contains(&key.as_str()) {
            continue;
        } else {
            shared.push((key.replace('_', "-"), setting_text(&shown, &key, value)?));
        }
    }
    shared.retain(|(k, _)| !own.iter().any(|(o, _)| o == k));
    shared.extend(own);
    Ok(shared)
}

/// The long flag names of `cmd` closest to `name`, for "did you mean".
fn closest_flag(cmd: &clap::Command, name: &str) -> Option<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .map(|long| (strsim_distance(long, name), long))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, long)| long.to_string())
}

/// Levenshtein distance, small and dependency-free.
pub fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Parses the command line of a pm binary, with values from the optional config file as
/// defaults under flags and `PM_*` variables. Errors are clap errors: printed with
/// `.exit()`, usage problems exit 2.
pub fn parse_args<P: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> std::result::Result<P, clap::Error> {
    let mut cmd = P::command();
    if let Some(path) = config_path(&args) {
        let name = cmd.get_name().to_string();
        let section = name.strip_prefix("pm-").unwrap_or(&name).to_string();
        let pairs = read_config_file(&path, &section)
            .map_err(|m| cmd.error(clap::error::ErrorKind::InvalidValue, m))?;
        for (key, value) in pairs {
            let known = cmd
                .get_arguments()
                .any(|a| a.get_long() == Some(key.as_str()) && key != "config");
            if !known {
                let hint = closest_flag(&cmd, &key)
                    .map(|c| format!(" (did you mean {c}?)"))
                    .unwrap_or_default();
                return Err(cmd.error(
                    clap::error::ErrorKind::UnknownArgument,
                    format!(
                        "config file {}: unknown setting {key:?}{hint}",
                        path.display()
                    ),
                ));
            }
            let id = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .map(|a| a.get_id().clone());
            if let Some(id) = id {
                cmd = cmd.mut_arg(id, |a| a.default_value(value));
            }
        }
    }
    let matches: ArgMatches = cmd.try_get_matches_from_mut(args)?;
    P::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    struct Demo {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[arg(long, value_parser = parse_duration, default_value = "3s")]
        lease_ttl: Duration,
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("demo")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn config_file_values_sit_under_flags() {
        let dir = tempfile_dir();
        let file = dir.join("pm.toml");
        std::fs::write(
            &file,
            "etcd = \"http://10.0.0.1:2379\"\nlease_ttl = \"7s\"\nprefix = \"/x\"\n",
        )
        .unwrap();
        let f = file.to_string_lossy().to_string();
        let d: Demo = parse_args(args(&["--config", &f, "--prefix", "/flag"])).unwrap();
        assert_eq!(d.etcd.endpoints, "http://10.0.0.1:2379");
        assert_eq!(d.lease_ttl, Duration::from_secs(7));
        assert_eq!(d.etcd.prefix, "/flag");
    }

    #[test]
    fn sections_hold_each_binarys_own_settings() {
        let dir = tempfile_dir();
        let file = dir.join("pm.toml");
        std::fs::write(
            &file,
            "prefix = \"/shared\"\n[demo]\nlease-ttl = \"9s\"\nprefix = \"/own\"\n[agent]\nzone = \"z\"\n",
        )
        .unwrap();
        let f = file.to_string_lossy().to_string();
        let pairs = read_config_file(&file, "demo").unwrap();
        assert!(pairs.contains(&("lease-ttl".into(), "9s".into())));
        assert!(
            !pairs.iter().any(|(k, _)| k == "zone"),
            "other sections are skipped"
        );
        let d: Demo = parse_args(args(&["--config", &f])).unwrap();
        assert_eq!(d.etcd.prefix, "/own", "a section overrides shared settings");
        assert_eq!(d.lease_ttl, Duration::from_secs(9));
    }

    #[test]
    fn unknown_config_settings_are_rejected_with_a_hint() {
        let dir = tempfile_dir();
        let file = dir.join("pm.yaml");
        std::fs::write(&file, "lease-tll: 3s\n").unwrap();
        let f = file.to_string_lossy().to_string();
        let err = parse_args::<Demo>(args(&["--config", &f]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lease-tll") && err.contains("did you mean lease-ttl"),
            "{err}"
        );
    }

    #[test]
    fn bad_durations_and_missing_files_are_clear_errors() {
        let err = parse_args::<Demo>(args(&["--lease-ttl", "soon"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
        let err = parse_args::<Demo>(args(&["--config", "/nonexistent/pm.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn tls_turns_endpoints_to_https_and_user_needs_a_password() {
        let d: Demo =
            parse_args(args(&["--etcd", "http://a:1", "--etcd-cacert", "/ca.pem"])).unwrap();
        assert_eq!(d.etcd.options().unwrap().endpoints, vec!["https://a:1"]);
        let dir = tempfile_dir();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let p = pw.to_string_lossy().to_string();
        let d: Demo = parse_args(args(&["--etcd-user", "pm", "--etcd-password-file", &p])).unwrap();
        let (user, secret) = d.etcd.options().unwrap().user.unwrap();
        assert_eq!((user.as_str(), secret.expose()), ("pm", "s3cret"));
    }

    #[test]
    fn distance_is_levenshtein() {
        assert_eq!(strsim_distance("lease-ttl", "lease-tll"), 1);
        assert_eq!(strsim_distance("kitten", "sitting"), 3);
        assert_eq!(strsim_distance("", "abc"), 3);
        assert_eq!(strsim_distance("same", "same"), 0);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pm-cli-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
