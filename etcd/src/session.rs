//! A lease kept alive in its own task, with a token that fires when it is lost.

use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// A granted lease and the task that keeps it alive.
///
/// [`Session::lost`] fires as soon as the lease can no longer be trusted: etcd said it is
/// gone (revoked or expired), or no keep-alive succeeded for a whole TTL (etcd unreachable),
/// or the session was closed. The deadline is counted from when the last successful
/// keep-alive was *sent*, so the token fires no later than etcd expires the lease.
pub struct Session {
    /// Client used for the keep-alives and the final revoke.
    client: Client,
    /// The lease id.
    lease_id: i64,
    /// The TTL granted.
    ttl: Duration,
    /// Fires once when the lease is lost or the session closes; never reset.
    lost: CancellationToken,
    /// The keep-alive task; ends when `lost` fires.
    keeper: JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1 s) and starts
    /// keeping it alive.
    pub async fn grant(client: &Client, ttl: Duration) -> Result<Self> {
        let secs = i64::try_from(ttl.as_secs_f64().ceil() as u64)
            .unwrap_or(i64::MAX)
            .max(1);
        let sent = Instant::now();
        let resp = crate::retry::idempotent(
            || "lease grant".to_string(),
            || {
                let mut leases = client.lease_client();
                async move { leases.grant(secs, None).await }
            },
        )
        .await?;
        let lease_id = resp.id();
        let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(1).max(1));
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            lease_id,
            granted,
            sent + granted,
            lost.clone(),
        ));
        Ok(Self {
            client: client.clone(),
            lease_id,
            ttl: granted,
            lost,
            keeper,
        })
    }

    /// The lease id, to bind keys to.
    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    /// The TTL etcd granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token that fires when the lease is lost; hand it (or children of it) to every task
    /// that must stop when the lease goes.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether the lease was lost already.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops the keep-alives and revokes the lease, deleting every key bound to it.
    pub async fn close(self) -> Result<()> {
        self.lost.cancel();
        let revoke = self.client.lease_client().revoke(self.lease_id).await;
        match revoke {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::etcd(format!("lease revoke {:x}", self.lease_id), e)),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.lost.cancel();
        self.keeper.abort();
    }
}

/// The keep-alive loop: renews every TTL/3, retries quickly after failures, and fires
/// `lost` when etcd reports the lease gone or the deadline passes without a renewal.
async fn keep_alive(
    client: Client,
    lease_id: i64,
    ttl: Duration,
    mut deadline: Instant,
    lost: CancellationToken,
) {
    let interval = (ttl / 3).max(Duration::from_millis(100));
    let retry = Duration::from_millis(100).min(interval);
    let mut channel: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut wait = interval;
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let sent = Instant::now();
        if sent >= deadline {
            tracing::warn!(lease = %format!("{lease_id:x}"), "no keep-alive succeeded within the lease TTL; lease lost");
            lost.cancel();
            return;
        }
        // One attempt may take a renewal interval, not the whole TTL: a stream on a member
        // that went silent is dropped, and the next one is balanced onto another member
        // (the silent one holds the hung request, so the balancer avoids it).
        let attempt = renew(&client, lease_id, &mut channel);
        match tokio::time::timeout_at(deadline.min(sent + interval), attempt).await {
            Ok(Ok(Renewal::Renewed(granted))) => {
                deadline = sent + granted;
                wait = interval;
            }
            Ok(Ok(Renewal::Gone)) => {
                tracing::warn!(lease = %format!("{lease_id:x}"), "etcd reports the lease gone");
                lost.cancel();
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(lease = %format!("{lease_id:x}"), error = %e, "keep-alive failed; retrying");
                channel = None;
                wait = retry;
            }
            Err(_) => {
                channel = None;
                wait = Duration::ZERO;
            }
        }
    }
}

/// The outcome of one keep-alive round trip.
enum Renewal {
    /// The lease lives on for this long.
    Renewed(Duration),
    /// etcd no longer knows the lease.
    Gone,
}

async fn renew(
    client: &Client,
    lease_id: i64,
    channel: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<Renewal> {
    let op = || format!("lease keep-alive {lease_id:x}");
    if channel.is_none() {
        // Opening the stream sends one keep-alive and reads its answer.
        return match client.lease_client().keep_alive(lease_id).await {
            Ok(opened) => {
                *channel = Some(opened);
                let ttl = client
                    .lease_client()
                    .time_to_live(lease_id, None)
                    .await
                    .map_err(|e| Error::etcd(op(), e))?
                    .ttl();
                Ok(ttl_renewal(ttl))
            }
            Err(etcd_client::Error::LeaseKeepAliveError(reason)) if reason == "lease not found" => {
                Ok(Renewal::Gone)
            }
            Err(e) => Err(Error::etcd(op(), e)),
        };
    }
    let Some((keeper, stream)) = channel.as_mut() else {
        return Err(Error::LeaseLost(lease_id));
    };
    keeper
        .keep_alive()
        .await
        .map_err(|e| Error::etcd(op(), e))?;
    match stream.message().await.map_err(|e| Error::etcd(op(), e))? {
        Some(resp) => Ok(ttl_renewal(resp.ttl())),
        None => Err(Error::etcd(
            op(),
            etcd_client::Error::LeaseKeepAliveError("keep-alive stream ended".into()),
        )),
    }
}

fn ttl_renewal(ttl: i64) -> Renewal {
    match u64::try_from(ttl) {
        Ok(secs) if secs > 0 => Renewal::Renewed(Duration::from_secs(secs)),
        _ => Renewal::Gone,
    }
}
