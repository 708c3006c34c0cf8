//! Retrying requests that did not get an answer from etcd.
//!
//! The client balances over all endpoints. When a member is down, a request routed to it
//! fails to connect and was never sent, so trying again (and reaching a live member) is
//! safe for any request, reads, writes and transactions alike. When a member goes silent
//! (a partition), a request already sent to it fails once the HTTP/2 keep-alive pings
//! time out, and whether it was applied is unknown. Requests that may be applied twice
//! with the effect of once ([`kv`], [`idempotent`], [`idempotent_txn`]: reads, plain puts
//! and deletes, lease grants, fenced or create-if-absent transactions) are then tried
//! again, on another member (the balancer avoids the one holding the hung request); any
//! other transaction ([`txn`]: compare-and-swap, guarded) only when it provably never
//! left.

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

/// True when the member the request went to did not answer: it could not be reached, or
/// its connection failed (keep-alive timed out, reset) before the reply.
fn unanswered(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                || (status.code() == tonic::Code::Unknown
                    && status.message().contains("transport error"))
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

fn kv_client(client: &Client) -> KvClient {
    client
        .kv_client()
        .max_decoding_message_size(crate::range::DECODE_LIMIT)
}

/// Runs an idempotent KV request (a read, an unconditional put or delete), retrying it
/// while no member answered it.
pub(crate) async fn kv<T, F, Fut>(client: &Client, op: impl Fn() -> String, call: F) -> Result<T>
where
    F: Fn(KvClient) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    idempotent(op, || call(kv_client(client))).await
}

/// Runs an idempotent request (a read, a put or delete, a lease grant, which at worst
/// leaves a lease nobody uses to run out), retrying it while no member answered it.
pub(crate) async fn idempotent<T, F, Fut>(op: impl Fn() -> String, call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    UNSENT_BACKOFF
        .retry(UNSENT_ATTEMPTS, unanswered, call)
        .await
        .map_err(|e| Error::etcd(op(), e))
}

/// Sends `txn`, retrying it while `again` says no member took it.
async fn send_txn(
    client: &Client,
    op: impl Fn() -> String,
    txn: etcd_client::Txn,
    again: fn(&etcd_client::Error) -> bool,
) -> Result<etcd_client::TxnResponse> {
    UNSENT_BACKOFF
        .retry(UNSENT_ATTEMPTS, again, || {
            let (mut kv, txn) = (kv_client(client), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| Error::etcd(op(), e))
}

/// Runs a transaction, retrying it while it could not be sent to any member: one sent to a
/// member that went silent may have been applied.
pub(crate) async fn txn(
    client: &Client,
    op: impl Fn() -> String,
    txn: etcd_client::Txn,
) -> Result<etcd_client::TxnResponse> {
    send_txn(client, op, txn, never_sent).await
}

/// Runs a transaction that may be applied twice with the effect of once (its only
/// compares are a fence or create-if-absent, and its writes are plain puts and deletes),
/// retrying it while no member answered it.
pub(crate) async fn idempotent_txn(
    client: &Client,
    op: impl Fn() -> String,
    txn: etcd_client::Txn,
) -> Result<etcd_client::TxnResponse> {
    send_txn(client, op, txn, unanswered).await
}
