//! Connecting to etcd: endpoints, TLS, user/password, timeouts.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::error::{Error, Result};

/// A secret string (an etcd password) that never shows in `Debug` or `Display` output, so it
/// cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Files for TLS to etcd. The client certificate and key come together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA bundle that signed the etcd servers' certificates.
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key: Option<PathBuf>,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`. Non-empty.
    pub endpoints: Vec<String>,
    /// TLS settings; `None` for plain HTTP.
    pub tls: Option<TlsFiles>,
    /// User name and password for etcd's auth.
    pub user: Option<(String, Secret)>,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on each unary request.
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings; a member that stops answering them is
    /// considered dead after the same time again.
    pub keep_alive: Duration,
}

impl EtcdOptions {
    /// Options for the given endpoints with pm's default timeouts.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            user: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(2),
        }
    }

    /// Parses a comma-separated endpoint list such as `http://a:2379,http://b:2379`.
    pub fn from_endpoint_list(list: &str) -> Result<Self> {
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        let options = Self::new(endpoints);
        options.validate()?;
        Ok(options)
    }

    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint given".into()));
        }
        let tls = self.tls.is_some();
        for endpoint in &self.endpoints {
            let scheme_ok = match endpoint.split_once("://") {
                Some(("http", rest)) | Some(("https", rest)) => !rest.is_empty(),
                Some(_) => false,
                None => !endpoint.is_empty(),
            };
            if !scheme_ok {
                return Err(Error::Config(format!(
                    "endpoint {endpoint:?} is not host:port or an http(s):// URL"
                )));
            }
            if endpoint.starts_with("https://") && !tls {
                return Err(Error::Config(format!(
                    "endpoint {endpoint:?} is https but no TLS option (CA, cert, key) is set"
                )));
            }
        }
        if let Some(files) = &self.tls {
            if files.cert.is_some() != files.key.is_some() {
                return Err(Error::Config(
                    "the etcd client certificate and key must be given together".into(),
                ));
            }
        }
        if let Some((user, _)) = &self.user {
            if user.is_empty() {
                return Err(Error::Config("the etcd user name is empty".into()));
            }
        }
        Ok(())
    }

    fn tls_options(files: &TlsFiles) -> Result<TlsOptions> {
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read etcd {what} {}: {e}", path.display()))
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &files.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read("CA", ca)?));
        }
        if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        Ok(tls)
    }

    /// Connects. With user auth this authenticates at once, so a wrong password is an error
    /// here; otherwise connections are made lazily and each request is bounded by
    /// `request_timeout`. Every request requires a leader (etcd's `require_leader`): a
    /// member cut off from the others refuses it at once ("etcdserver: no leader") and
    /// ends its watch streams, so the client moves on to a member that has one.
    pub async fn connect(&self) -> Result<Client> {
        self.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(self.keep_alive, self.keep_alive)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(files) = &self.tls {
            options = options.with_tls(Self::tls_options(files)?);
        }
        if let Some((user, password)) = &self.user {
            options = options
                .with_user(user.clone(), password.expose().to_string())
                .with_auto_token_refresh(true);
        }
        let connect = Client::connect(&self.endpoints, Some(options));
        let bound = self.connect_timeout + self.request_timeout;
        match tokio::time::timeout(bound, connect).await {
            Ok(result) => result.map_err(|e| Error::etcd("connect", e)),
            Err(_) => Err(Error::Config(format!(
                "no answer from etcd at {} within {bound:?}",
                self.endpoints.join(",")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        let mut o = EtcdOptions::new(vec!["http://127.0.0.1:2379".into()]);
        o.user = Some(("root".into(), s));
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn endpoint_lists_are_checked() {
        assert!(EtcdOptions::from_endpoint_list("").is_err());
        assert!(EtcdOptions::from_endpoint_list("ftp://x:1").is_err());
        assert!(EtcdOptions::from_endpoint_list("https://x:1").is_err());
        let o = EtcdOptions::from_endpoint_list("http://a:1, http://b:2").expect("valid");
        assert_eq!(o.endpoints, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn cert_without_key_is_rejected() {
        let mut o = EtcdOptions::new(vec!["https://a:1".into()]);
        o.tls = Some(TlsFiles {
            ca: None,
            cert: Some("c.pem".into()),
            key: None,
        });
        assert!(o.validate().is_err());
    }
}
