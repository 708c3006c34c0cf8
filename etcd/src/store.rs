//! Typed reads and writes of pm's protobuf values, plain, fenced and compare-and-swap.

use std::collections::BTreeSet;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use prost::Message;

use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::keys::{prefix_range_end, Keyspace};
use crate::range::{self, Span};
use crate::retry;
use crate::watch::StoredKey;

/// A decoded value with its etcd metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<M> {
    /// The decoded value.
    pub value: M,
    /// Revision of the last write of the key; the token for compare-and-swap.
    pub mod_revision: i64,
    /// Revision at which the key was created.
    pub create_revision: i64,
    /// Lease the key is bound to, 0 for none.
    pub lease: i64,
}

/// The keys under a prefix, decoded, as of one revision.
#[derive(Debug)]
pub struct Listing<M> {
    /// Keys whose value decoded, in key order.
    pub items: Vec<(String, Versioned<M>)>,
    /// Keys whose value did not decode; the caller logs and skips them.
    pub invalid: Vec<Error>,
    /// The store revision the listing reflects; watch from `revision + 1` to follow it.
    pub revision: i64,
}

/// What an agent of one zone reads of `pools/` ([`Store::list_zone`]).
#[derive(Debug)]
pub struct ZoneListing {
    /// Every pool's config and the pools' keys of the zone, in key order.
    pub keys: Vec<StoredKey>,
    /// The pools found holding any key (new ones), or any key read (known ones), in name
    /// order.
    pub pools: Vec<String>,
    /// The revision of the read.
    pub revision: i64,
}

/// Decodes a value stored under `key` as `M`, naming the key on failure.
pub fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| Error::Decode {
        key: key.to_string(),
        type_name: std::any::type_name::<M>(),
        source,
    })
}

fn key_string(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

fn versioned<M: Message + Default>(kv: &KeyValue) -> Result<Versioned<M>> {
    Ok(Versioned {
        value: decode(&key_string(kv), kv.value())?,
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
    })
}

/// etcd's default limit of operations in one transaction is 128; pm stays below it.
pub const MAX_TXN_OPS: usize = 100;

/// Typed access to pm's keyspace. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The etcd client; clones share one connection.
    client: Client,
    /// Key builders of this installation.
    keys: Keyspace,
}

impl Store {
    /// A store over a connected client.
    pub fn new(client: Client, keys: Keyspace) -> Self {
        Self { client, keys }
    }

    /// The keyspace.
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    /// The underlying client, for leases, elections and watches.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads one key. `Ok(None)` when absent; an error naming the key when its value does
    /// not decode.
    pub async fn get<M: Message + Default>(&self, key: &str) -> Result<Option<Versioned<M>>> {
        let resp = retry::kv(
            &self.client,
            || format!("get {key}"),
            |mut kv| async move { kv.get(key, None).await },
        )
        .await?;
        resp.kvs().first().map(versioned).transpose()
    }

    /// Reads every key under `prefix` at one revision. Values that do not decode are set
    /// aside in `invalid`, so one bad key cannot hide the others.
    pub async fn list<M: Message + Default>(&self, prefix: &str) -> Result<Listing<M>> {
        let (keys, revision) = self.list_raw(prefix).await?;
        let mut items = Vec::with_capacity(keys.len());
        let mut invalid = Vec::new();
        for kv in keys {
            match decode(&kv.key, &kv.value) {
                Ok(value) => items.push((
                    kv.key,
                    Versioned {
                        value,
                        mod_revision: kv.mod_revision,
                        create_revision: kv.create_revision,
                        lease: kv.lease,
                    },
                )),
                Err(e) => invalid.push(e),
            }
        }
        Ok(Listing {
            items,
            invalid,
            revision,
        })
    }

    /// Reads every key under `prefix` undecoded, in bounded pages at one revision, with
    /// that revision: the starting point of a [`crate::ResumableWatch`] at `revision + 1`.
    pub async fn list_raw(&self, prefix: &str) -> Result<(Vec<StoredKey>, i64)> {
        self.read_prefix(prefix, false).await
    }

    /// Every key under `prefix`, values too unless `keys_only`, in bounded pages at one
    /// revision.
    async fn read_prefix(&self, prefix: &str, keys_only: bool) -> Result<(Vec<StoredKey>, i64)> {
        let end = prefix_range_end(prefix.as_bytes());
        let span = Span {
            start: prefix.as_bytes(),
            end: &end,
        };
        range::read(&self.client, prefix, span, keys_only).await
    }

    /// The pools holding any key whose names are not in `known`, now, with the revision
    /// of the reads. It reads only the gaps between the known pools' ranges, one
    /// keys-only read of limit 1 per gap and per pool found: etcd counts every key of a
    /// range it reads, so reading past the known pools would cost what they hold, on
    /// every look.
    pub async fn new_pools(&self, known: &BTreeSet<String>) -> Result<(Vec<String>, i64)> {
        let pools = self.keys.pools_prefix();
        // By the bytes of their ranges, which is not always the order of the names.
        let mut ranges: Vec<Vec<u8>> = known
            .iter()
            .map(|p| format!("{pools}{p}/").into_bytes())
            .collect();
        ranges.sort();
        let mut gaps = Vec::with_capacity(ranges.len() + 1);
        let mut start = pools.as_bytes().to_vec();
        for range in ranges {
            let next = prefix_range_end(&range);
            gaps.push((start, range));
            start = next;
        }
        gaps.push((start, prefix_range_end(pools.as_bytes())));
        let mut revision = 0;
        let mut found = Vec::new();
        for (mut from, end) in gaps {
            loop {
                let span = Span {
                    start: &from,
                    end: &end,
                };
                let (first, at) = range::first_key(&self.client, &pools, span, revision).await?;
                revision = at;
                let Some(first) = first else {
                    break;
                };
                let rest = &first.key[pools.len()..];
                let pool = rest.split('/').next().unwrap_or(rest).to_string();
                from = prefix_range_end(format!("{pools}{pool}/").as_bytes());
                found.push(pool);
            }
        }
        Ok((found, revision))
    }

    /// Reads `pool`'s spans of `zone` ([`Keyspace::zone_spans`]) at `revision` (0: now);
    /// returns the keys and the revision.
    pub async fn list_pool_zone(
        &self,
        pool: &str,
        zone: &str,
        revision: i64,
    ) -> Result<(Vec<StoredKey>, i64)> {
        let mut revision = revision;
        let mut out = Vec::new();
        for (start, end) in self.keys.zone_spans(pool, zone)? {
            let span = Span {
                start: start.as_bytes(),
                end: &end,
            };
            let (keys, at) = range::read_at(&self.client, &start, span, false, revision).await?;
            revision = at;
            out.extend(keys);
        }
        Ok((out, revision))
    }

    /// Reads what an agent of `zone` holds of `pools/` at one revision: for the `known`
    /// pools and every other pool holding any key ([`Store::new_pools`]), each one's
    /// config and its keys of that zone, not the other zones'. Its cost grows with the
    /// pools and the zone's own keys, not with the size of the others.
    pub async fn list_zone(&self, zone: &str, known: &BTreeSet<String>) -> Result<ZoneListing> {
        range::restarting(zone, || self.list_zone_once(zone, known)).await
    }

    async fn list_zone_once(&self, zone: &str, known: &BTreeSet<String>) -> Result<ZoneListing> {
        let (found, revision) = self.new_pools(known).await?;
        let mut keys = Vec::new();
        let mut pools: BTreeSet<String> = found.iter().cloned().collect();
        for pool in known.iter().chain(&found) {
            let (listed, _) = self.list_pool_zone(pool, zone, revision).await?;
            if !listed.is_empty() {
                pools.insert(pool.clone());
            }
            keys.extend(listed);
        }
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(ZoneListing {
            keys,
            pools: pools.into_iter().collect(),
            revision,
        })
    }

    /// Lists the raw keys under `prefix`, without values.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let (keys, _) = self.read_prefix(prefix, true).await?;
        Ok(keys.into_iter().map(|k| k.key).collect())
    }

    /// Writes a value unconditionally, bound to `lease` when non-zero. Returns the new
    /// revision. For keys without a single owner: events, reports, memberships.
    pub async fn put<M: Message>(&self, key: &str, value: &M, lease: i64) -> Result<i64> {
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let bytes = value.encode_to_vec();
        let resp = retry::kv(
            &self.client,
            || format!("put {key}"),
            |mut kv| {
                let (bytes, options) = (bytes.clone(), options.clone());
                async move { kv.put(key, bytes, options).await }
            },
        )
        .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Deletes one key. Returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let resp = retry::kv(
            &self.client,
            || format!("delete {key}"),
            |mut kv| async move { kv.delete(key, None).await },
        )
        .await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes every key under `prefix`. Returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let resp = retry::kv(
            &self.client,
            || format!("delete prefix {prefix}"),
            |mut kv| async move {
                kv.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            },
        )
        .await?;
        Ok(resp.deleted())
    }

    /// Runs `ops` in one transaction while every guard holds; [`Error::GuardFailed`]
    /// naming `what` when one does not (then nothing was written).
    pub async fn txn_if(&self, guards: Vec<Compare>, what: &str, ops: Vec<TxnOp>) -> Result<i64> {
        let txn = Txn::new().when(guards).and_then(ops);
        let resp = retry::txn(&self.client, || format!("guarded txn: {what}"), txn).await?;
        if resp.succeeded() {
            Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
        } else {
            Err(Error::GuardFailed {
                what: what.to_string(),
            })
        }
    }

    /// Compare-and-swap: writes `value` only if the key's mod_revision is still `expected`
    /// (0: the key must not exist). On a mismatch nothing is written and the error is
    /// [`Error::Conflict`] with the revision found.
    pub async fn put_if_revision<M: Message>(
        &self,
        key: &str,
        value: &M,
        expected: i64,
    ) -> Result<i64> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value.encode_to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        self.cas(key, expected, txn).await
    }

    /// Compare-and-swap delete: removes the key only if its mod_revision is still
    /// `expected`.
    pub async fn delete_if_revision(&self, key: &str, expected: i64) -> Result<i64> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        self.cas(key, expected, txn).await
    }

    async fn cas(&self, key: &str, expected: i64, txn: Txn) -> Result<i64> {
        let resp = retry::txn(&self.client, || format!("compare-and-swap {key}"), txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        let actual = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => {
                    Some(get.kvs().first().map_or(0, |kv| kv.mod_revision()))
                }
                _ => None,
            })
            .unwrap_or_default();
        Err(Error::Conflict {
            key: key.to_string(),
            expected,
            actual,
        })
    }

    /// Runs `ops` in one transaction only while `fence` still holds leadership. Returns the
    /// new revision, or [`Error::FencedOut`] when the writer was deposed: then nothing was
    /// written.
    pub async fn txn_fenced(&self, fence: &Fence, ops: Vec<TxnOp>) -> Result<i64> {
        let txn = Txn::new().when([fence.compare()]).and_then(ops);
        let op = || format!("fenced txn by {}", fence.election_key());
        // Applied twice, its puts and deletes leave what one application leaves.
        let resp = retry::idempotent_txn(&self.client, op, txn).await?;
        if resp.succeeded() {
            Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
        } else {
            Err(fence.fenced_out())
        }
    }

    /// Runs one operation per item of `items` ([`Store::txn_fenced`]), in transactions
    /// of at most [`MAX_TXN_OPS`] operations, and calls `written` with each chunk and
    /// the revision it was written at, before the next chunk goes.
    pub async fn txn_fenced_chunks<T>(
        &self,
        fence: &Fence,
        items: &[T],
        op: impl Fn(&T) -> Result<TxnOp>,
        mut written: impl FnMut(&[T], i64) -> Result<()>,
    ) -> Result<()> {
        for chunk in items.chunks(MAX_TXN_OPS) {
            let ops = chunk.iter().map(&op).collect::<Result<Vec<_>>>()?;
            let revision = self.txn_fenced(fence, ops).await?;
            written(chunk, revision)?;
        }
        Ok(())
    }

    /// Like [`Store::txn_fenced`], with more conditions. When the transaction is refused
    /// it tells which: [`Error::FencedOut`] when the fence no longer holds, else
    /// [`Error::GuardFailed`] naming `what`.
    pub async fn txn_fenced_if(
        &self,
        fence: &Fence,
        guards: Vec<Compare>,
        what: &str,
        ops: Vec<TxnOp>,
    ) -> Result<i64> {
        let mut compares = vec![fence.compare()];
        compares.extend(guards);
        let election_key = fence.election_key();
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else([TxnOp::get(election_key, None)]);
        let op = || format!("guarded txn by {election_key}");
        let resp = retry::txn(&self.client, op, txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        let holder = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.create_revision())),
            _ => None,
        });
        if holder.flatten() == Some(fence.revision()) {
            Err(Error::GuardFailed {
                what: what.to_string(),
            })
        } else {
            Err(fence.fenced_out())
        }
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1) that nobody keeps alive: keys
    /// bound to it vanish when it runs out. Returns the lease id.
    pub async fn grant_lease(&self, ttl: std::time::Duration) -> Result<i64> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = retry::idempotent(
            || format!("lease grant {secs}s"),
            || {
                let mut leases = self.client.lease_client();
                async move { leases.grant(secs, None).await }
            },
        )
        .await?;
        Ok(resp.id())
    }

    /// A fenced put: written only while `fence` holds leadership, bound to `lease` when
    /// non-zero.
    pub async fn put_fenced<M: Message>(
        &self,
        fence: &Fence,
        key: &str,
        value: &M,
        lease: i64,
    ) -> Result<i64> {
        self.txn_fenced(fence, vec![put_op(key, value, lease)])
            .await
    }

    /// A fenced delete of one key; deleting an absent key succeeds.
    pub async fn delete_fenced(&self, fence: &Fence, key: &str) -> Result<i64> {
        self.txn_fenced(fence, vec![TxnOp::delete(key, None)]).await
    }
}

/// A put operation for a transaction, bound to `lease` when non-zero.
pub fn put_op<M: Message>(key: &str, value: &M, lease: i64) -> TxnOp {
    let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
    TxnOp::put(key, value.encode_to_vec(), options)
}
