//! Range reads in bounded pages, at one revision.
//!
//! etcd answers a range with every key in it in one reply, and the client refuses a reply
//! larger than its decode limit: an unpaginated read of a large prefix fails for good once
//! the installation grows past it. So every range read of pm goes through [`read`], which
//! asks for the range a page at a time. The first page fixes the revision, and every later
//! page is read at that revision, so the pages together are one consistent snapshot. The
//! page size adapts to the sizes of the values seen so far, aiming at [`PAGE_BYTES`], and
//! a page refused as too large is asked for again with fewer keys. When the revision is
//! compacted away between two pages, the read starts over at a newer one.
//!
//! The largest reply (a page, or a watch response) any read of the process received is
//! kept for the benchmarks and the metrics ([`largest_reply_bytes`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_client::{Client, GetOptions, GetResponse};
use prost::Message;

use crate::error::{Error, Result};
use crate::retry;
use crate::watch::StoredKey;

/// The size a page aims at.
pub const PAGE_BYTES: usize = 512 * 1024;

/// The decode limit of pm's etcd clients. etcd keeps one value under 1.5 MiB by default, so
/// a page of one key always fits; this is a safety margin above the pages pm asks for,
/// never the way large ranges are read.
pub const DECODE_LIMIT: usize = 16 * 1024 * 1024;

/// Keys in the first page, before any value size is known.
const FIRST_PAGE_KEYS: i64 = 256;

/// The most keys one page asks for, however small the values.
const MAX_PAGE_KEYS: i64 = 10_000;

/// Times a read starts over after its revision was compacted away.
const COMPACTED_RESTARTS: u32 = 5;

/// The largest reply received so far, in bytes.
static LARGEST_REPLY: AtomicUsize = AtomicUsize::new(0);

/// The largest reply (range page or watch response) this process received from etcd, in
/// bytes of its encoding.
pub fn largest_reply_bytes() -> usize {
    LARGEST_REPLY.load(Ordering::Relaxed)
}

/// Records the size of a reply.
pub(crate) fn note_reply(bytes: usize) {
    LARGEST_REPLY.fetch_max(bytes, Ordering::Relaxed);
}

/// What to read: the keys from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy)]
pub struct Span<'a> {
    /// First key.
    pub start: &'a [u8],
    /// The end of the range, exclusive.
    pub end: &'a [u8],
}

/// Reads every key of `span` in pages at one revision; `what` names the read in errors.
/// Returns the keys in key order and the revision they reflect.
pub(crate) async fn read(
    client: &Client,
    what: &str,
    span: Span<'_>,
    keys_only: bool,
) -> Result<(Vec<StoredKey>, i64)> {
    restarting(what, || read_at(client, what, span, keys_only, 0)).await
}

/// Runs a read made of several requests at one revision, again from the start (at a
/// newer revision) while that revision is compacted away between its requests.
pub(crate) async fn restarting<T, F, Fut>(what: &str, mut read: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut restarts = 0;
    loop {
        match read().await {
            Err(e) if compacted(&e) && restarts < COMPACTED_RESTARTS => {
                restarts += 1;
                tracing::debug!(what, "revision compacted between requests; reading again");
            }
            other => return other,
        }
    }
}

/// Reads every key of `span` in pages at `revision` (0: the current one, fixed by the
/// first page), without starting over when that revision is compacted.
pub(crate) async fn read_at(
    client: &Client,
    what: &str,
    span: Span<'_>,
    keys_only: bool,
    mut revision: i64,
) -> Result<(Vec<StoredKey>, i64)> {
    let mut keys = Vec::new();
    let mut from = span.start.to_vec();
    let mut limit = FIRST_PAGE_KEYS;
    loop {
        let mut options = GetOptions::new().with_range(span.end).with_limit(limit);
        if revision != 0 {
            options = options.with_revision(revision);
        }
        if keys_only {
            options = options.with_keys_only();
        }
        let resp = match page(client, what, &from, options).await {
            Err(e) if too_large(&e) && limit > 1 => {
                limit = (limit / 4).max(1);
                continue;
            }
            other => other?,
        };
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        }
        let bytes = resp.0.encoded_len();
        note_reply(bytes);
        let kvs = resp.kvs();
        keys.extend(kvs.iter().map(StoredKey::from));
        let Some(last) = kvs.last() else {
            return Ok((keys, revision));
        };
        if !resp.more() {
            return Ok((keys, revision));
        }
        from = last.key().to_vec();
        from.push(0);
        limit = next_limit(bytes, kvs.len());
    }
}

async fn page(
    client: &Client,
    what: &str,
    from: &[u8],
    options: GetOptions,
) -> Result<GetResponse> {
    retry::kv(
        client,
        || format!("list {what}"),
        |mut kv| {
            let options = options.clone();
            async move { kv.get(from, Some(options)).await }
        },
    )
    .await
}

/// The first key of `span` at `revision` (0: now), with the revision of the read.
pub(crate) async fn first_key(
    client: &Client,
    what: &str,
    span: Span<'_>,
    revision: i64,
) -> Result<(Option<StoredKey>, i64)> {
    let mut options = GetOptions::new()
        .with_range(span.end)
        .with_limit(1)
        .with_keys_only();
    if revision != 0 {
        options = options.with_revision(revision);
    }
    let resp = page(client, what, span.start, options).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok((resp.kvs().first().map(StoredKey::from), revision))
}

/// The keys of the next page: as many as fit [`PAGE_BYTES`] at the mean size of the last.
fn next_limit(bytes: usize, keys: usize) -> i64 {
    let mean = (bytes / keys.max(1)).max(1);
    i64::try_from(PAGE_BYTES / mean)
        .unwrap_or(MAX_PAGE_KEYS)
        .clamp(1, MAX_PAGE_KEYS)
}

fn status(e: &Error) -> Option<&tonic::Status> {
    match e {
        Error::Etcd {
            source: etcd_client::Error::GRpcStatus(status),
            ..
        } => Some(status),
        _ => None,
    }
}

/// Whether the client refused a reply over its decode limit.
fn too_large(e: &Error) -> bool {
    status(e).is_some_and(|s| s.message().contains("message length too large"))
}

/// Whether etcd refused a read at a revision it has compacted away.
fn compacted(e: &Error) -> bool {
    status(e).is_some_and(|s| s.message().contains("compacted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_aim_at_the_page_size() {
        assert_eq!(next_limit(PAGE_BYTES, 1000), 1000);
        assert_eq!(next_limit(10, 1), MAX_PAGE_KEYS, "tiny values: the key cap");
        assert_eq!(next_limit(4 * PAGE_BYTES, 2), 1, "huge values: one a page");
        assert_eq!(next_limit(0, 0), MAX_PAGE_KEYS);
    }

    #[test]
    fn replies_are_remembered_by_the_largest() {
        note_reply(10);
        note_reply(5);
        assert!(largest_reply_bytes() >= 10);
    }
}
