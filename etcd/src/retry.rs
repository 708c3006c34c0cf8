//! Retrying requests that never reached etcd.
//!
//! The client balances over all endpoints. When a member is down, a request routed to it
//! fails to connect and was never sent, so trying again (and reaching a live member) is
//! safe for any request, reads, writes and transactions alike.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, KvClient};
use pm_backoff::Backoff;

use crate::error::{Error, Result};

/// Delays between attempts at a request that could not be sent.
const UNSENT_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_millis(10), Duration::from_millis(250));

/// Attempts per request before the connect error is returned.
const UNSENT_ATTEMPTS: u32 = 8;

/// True when the request provably never reached a server.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && status.message().contains("connect")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs a KV request, retrying it while it could not be sent to any member.
pub(crate) async fn kv<T, F, Fut>(client: &Client, op: impl Fn() -> String, call: F) -> Result<T>
where
    F: Fn(KvClient) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    unsent(op, || {
        call(
            client
                .kv_client()
                .max_decoding_message_size(crate::range::DECODE_LIMIT),
        )
    })
    .await
}

/// Runs any request, retrying it while it could not be sent to any member.
pub(crate) async fn unsent<T, F, Fut>(op: impl Fn() -> String, call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    UNSENT_BACKOFF
        .retry(UNSENT_ATTEMPTS, never_sent, call)
        .await
        .map_err(|e| Error::etcd(op(), e))
}

/// Runs a transaction, retrying it while it could not be sent to any member.
pub(crate) async fn txn(
    client: &Client,
    op: impl Fn() -> String,
    txn: etcd_client::Txn,
) -> Result<etcd_client::TxnResponse> {
    kv(client, op, |mut kv| {
        let txn = txn.clone();
        async move { kv.txn(txn).await }
    })
    .await
}
