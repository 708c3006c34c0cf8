//! The flags that say how to reach etcd, shared by every pm binary, and the connection
//! they describe.

use std::path::PathBuf;
use std::time::Duration;

use pm_etcd::{Error, EtcdOptions, Keyspace, Result, Secret, Store, TlsFiles};
use tokio_util::sync::CancellationToken;

use crate::duration::parse_duration;

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
    #[arg(long, env = "PM_PREFIX", default_value = pm_etcd::keys::DEFAULT_PREFIX)]
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
    /// Interval of the HTTP/2 keep-alive pings (a silent member is given up after as long
    /// again); `None`: pm-etcd's default. Not a flag: a daemon derives it from its lease
    /// TTL ([`crate::DaemonArgs::etcd_args`]).
    #[arg(skip)]
    pub keep_alive: Option<Duration>,
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
        if let Some(keep_alive) = self.keep_alive {
            options.keep_alive = keep_alive;
        }
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
    pub async fn store_when_reachable(&self, shutdown: &CancellationToken) -> Option<Store> {
        let mut retry = crate::terms::RETRY.attempts();
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(args: &[&str]) -> EtcdArgs {
        let cmd = EtcdArgs::augment_args(clap::Command::new("demo"));
        let matches = cmd.try_get_matches_from(args).unwrap();
        EtcdArgs::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn tls_turns_endpoints_to_https_and_user_needs_a_password() {
        let d = parse(&["demo", "--etcd", "http://a:1", "--etcd-cacert", "/ca.pem"]);
        assert_eq!(d.options().unwrap().endpoints, vec!["https://a:1"]);
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let p = pw.to_string_lossy().to_string();
        let d = parse(&["demo", "--etcd-user", "pm", "--etcd-password-file", &p]);
        let (user, secret) = d.options().unwrap().user.unwrap();
        assert_eq!((user.as_str(), secret.expose()), ("pm", "s3cret"));
    }
}
