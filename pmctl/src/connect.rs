//! Connecting to etcd for one command, failing fast and clearly when it cannot be reached.
//!
//! etcd-client connects lazily and pm-etcd retries requests that could not be sent, which
//! suits daemons. An operator at a prompt wants to know within seconds: pmctl first makes
//! one cheap read, retried for at most [`REACH_BOUND`], and reports the endpoints and the
//! last error when nothing answered. Passwords never appear in the message.

use std::time::Duration;

use pm_daemon::EtcdArgs;
use pm_etcd::etcd_client::{self, GetOptions};
use pm_etcd::Store;

use crate::error::{Error, Result};

/// Bound on establishing a connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long pmctl tries to reach etcd before giving up.
pub const REACH_BOUND: Duration = Duration::from_secs(3);

/// Pause between attempts to reach etcd.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// True for errors that mean "nobody answered" rather than "etcd said no".
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// The most useful line of a client error: its innermost cause ("Connection refused").
fn cause(e: &etcd_client::Error) -> String {
    let (mut text, mut source) = match e {
        etcd_client::Error::GRpcStatus(status) => (
            status.message().to_string(),
            std::error::Error::source(status),
        ),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    while let Some(inner) = source {
        text = inner.to_string();
        source = inner.source();
    }
    text
}

/// Endpoints for messages, without any `user:password@` part.
fn shown_endpoints(endpoints: &[String]) -> String {
    endpoints
        .iter()
        .map(|e| match e.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) => format!("{scheme}://{host}"),
                None => e.clone(),
            },
            None => e.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects to the etcd `args` name and checks within [`REACH_BOUND`] that it answers.
pub async fn connect(args: &EtcdArgs) -> Result<Store> {
    let keys = args.keyspace()?;
    let mut options = args.options()?;
    options.connect_timeout = CONNECT_TIMEOUT;
    let endpoints = shown_endpoints(&options.endpoints);
    let fail = |reason: String| Error::Unreachable {
        endpoints: endpoints.clone(),
        bound: REACH_BOUND,
        reason,
    };
    let client = match tokio::time::timeout(REACH_BOUND, options.connect()).await {
        Ok(client) => client?,
        Err(_) => return Err(fail("no answer".into())),
    };
    let root = keys.root().to_string();
    let mut last = String::from("no answer");
    let probe = async {
        loop {
            let get = client
                .kv_client()
                .get(root.as_str(), Some(GetOptions::new().with_count_only()))
                .await;
            match get {
                Ok(_) => return Ok(()),
                Err(e) if unreachable(&e) => {
                    last = cause(&e);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(source) => {
                    return Err(Error::Etcd(pm_etcd::Error::Etcd {
                        op: format!("read {root}"),
                        source,
                    }))
                }
            }
        }
    };
    let outcome = tokio::time::timeout(REACH_BOUND, probe).await;
    match outcome {
        Ok(Ok(())) => Ok(Store::new(client, keys)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(fail(last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_endpoints_are_not_shown() {
        let endpoints = vec![
            "http://root:hunter2@10.0.0.1:2379".to_string(),
            "10.0.0.2:2379".to_string(),
        ];
        let shown = shown_endpoints(&endpoints);
        assert_eq!(shown, "http://10.0.0.1:2379,10.0.0.2:2379");
    }
}
