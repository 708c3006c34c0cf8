//! Leader election over etcd, with fencing and a token that fires on loss of leadership.
//!
//! The recipe is etcd's own (`clientv3/concurrency`): each candidate puts
//! `<election>/<lease-id-hex>` bound to its session lease; the candidate whose key has the
//! lowest create_revision leads; the others each wait for the deletion of the key just
//! ahead of theirs. The layout is the one etcd's Election API uses, so `etcdctl elect -l`
//! and the Election `Leader` RPC see the same leader.

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::retry;
use crate::session::Session;
use crate::watch::{ResumableWatch, WatchBatch, WatchEvent, WatchRange};

/// The current holder of an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's election key.
    pub key: String,
    /// The value it campaigned with (pm uses its id).
    pub value: String,
    /// The key's create_revision: the leader's fencing revision.
    pub create_revision: i64,
    /// The leader's lease.
    pub lease: i64,
}

/// One election, identified by its name (a key prefix without the trailing slash).
#[derive(Clone)]
pub struct Election {
    /// Client for the election's keys.
    client: Client,
    /// `<name>/`: every candidate key starts with it.
    prefix: String,
}

/// Leadership won in an election. Fencing proof and loss notification in one.
pub struct Leadership {
    /// The fence to guard every write with.
    fence: Fence,
    /// Fires when leadership ends: lease lost, key deleted, or resigned.
    lost: CancellationToken,
    /// Client to resign with.
    client: Client,
    /// Watches the election key; cancelled with `lost`.
    monitor: tokio::task::JoinHandle<()>,
}

impl Election {
    /// The election called `name`, e.g. `/pm/v1/scheduler/election`.
    pub fn new(client: Client, name: &str) -> Self {
        Self {
            client,
            prefix: format!("{}/", name.trim_end_matches('/')),
        }
    }

    /// Campaigns with `value` until this session leads, the session's lease is lost, or
    /// `cancel` fires (then the candidacy is withdrawn). Campaigning again with the same
    /// session resumes the same place in line.
    pub async fn campaign(
        &self,
        session: &Session,
        value: &str,
        cancel: &CancellationToken,
    ) -> Result<Leadership> {
        let key = format!("{}{:x}", self.prefix, session.lease_id());
        let lost = session.lost();
        let outcome = tokio::select! {
            r = self.wait_for_turn(&key, session.lease_id(), value) => r,
            _ = lost.cancelled() => Err(Error::LeaseLost(session.lease_id())),
            _ = cancel.cancelled() => Err(Error::Cancelled),
        };
        match outcome {
            Ok(revision) => Ok(Leadership::start(
                self.client.clone(),
                Fence::new(key, revision),
                session.lost().child_token(),
            )),
            Err(e) => {
                if matches!(e, Error::Cancelled) {
                    let fence = self.candidate_fence(&key).await;
                    if let Ok(Some(fence)) = fence {
                        resign_key(&self.client, &fence).await.ok();
                    }
                }
                Err(e)
            }
        }
    }

    async fn candidate_fence(&self, key: &str) -> Result<Option<Fence>> {
        let resp = retry::kv(
            &self.client,
            || format!("get {key}"),
            |mut kv| async move { kv.get(key, None).await },
        )
        .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| Fence::new(key, kv.create_revision())))
    }

    /// Puts the candidate key (or finds it) and waits until no older candidate is left.
    /// Returns the key's create_revision.
    async fn wait_for_turn(&self, key: &str, lease: i64, value: &str) -> Result<i64> {
        let put = etcd_client::PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Some(put))])
            .or_else([TxnOp::get(key, None)]);
        // Create-if-absent, else read: a second application finds the key the first put.
        let resp = retry::idempotent_txn(&self.client, || format!("campaign {key}"), txn).await?;
        let my_revision = if resp.succeeded() {
            resp.header().map(|h| h.revision()).unwrap_or_default()
        } else {
            resp.op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.create_revision()),
                    _ => None,
                })
                .ok_or_else(|| Error::LeaseLost(lease))?
        };
        loop {
            let options = GetOptions::new()
                .with_prefix()
                .with_max_create_revision(my_revision - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1);
            let prefix = self.prefix.as_str();
            let ahead = retry::kv(
                &self.client,
                || format!("campaign {key}"),
                |mut kv| {
                    let options = options.clone();
                    async move { kv.get(prefix, Some(options)).await }
                },
            )
            .await?;
            let revision = ahead.header().map(|h| h.revision()).unwrap_or_default();
            let Some(previous) = ahead.kvs().first() else {
                return Ok(my_revision);
            };
            let previous = String::from_utf8_lossy(previous.key()).into_owned();
            wait_deleted(&self.client, &previous, revision + 1).await?;
        }
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let prefix = self.prefix.as_str();
        let resp = retry::kv(
            &self.client,
            || format!("leader of {prefix}"),
            |mut kv| async move {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1);
                kv.get(prefix, Some(options)).await
            },
        )
        .await?;
        Ok(resp.kvs().first().map(|kv| LeaderInfo {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }))
    }

    /// Follows the leader: the receiver holds the current leader and changes whenever it
    /// does, until `cancel` fires. Survives etcd restarts like any [`ResumableWatch`].
    pub async fn observe(
        &self,
        cancel: CancellationToken,
    ) -> Result<tokio::sync::watch::Receiver<Option<LeaderInfo>>> {
        let current = self.leader().await?;
        let prefix = self.prefix.as_str();
        let resp = retry::kv(
            &self.client,
            || format!("observe {prefix}"),
            |mut kv| async move {
                kv.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
            },
        )
        .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let (tx, rx) = tokio::sync::watch::channel(current);
        let election = self.clone();
        let mut watch = ResumableWatch::new(
            self.client.clone(),
            WatchRange::Prefix(self.prefix.clone()),
            revision + 1,
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tx.closed() => return,
                    batch = watch.next() => if batch.is_err() { return },
                }
                if let Ok(leader) = election.leader().await {
                    tx.send_if_modified(|old| {
                        let changed = *old != leader;
                        *old = leader;
                        changed
                    });
                }
            }
        });
        Ok(rx)
    }
}

/// Waits until `key` is deleted, watching from `from_revision`.
async fn wait_deleted(client: &Client, key: &str, from_revision: i64) -> Result<()> {
    let mut watch = ResumableWatch::new(
        client.clone(),
        WatchRange::Key(key.to_string()),
        from_revision,
    );
    loop {
        match watch.next().await? {
            WatchBatch::Events(events) => {
                if events
                    .iter()
                    .any(|e| matches!(e, WatchEvent::Delete { .. }))
                {
                    return Ok(());
                }
            }
            WatchBatch::Resync { keys, .. } => {
                if keys.is_empty() {
                    return Ok(());
                }
            }
        }
    }
}

/// Deletes the election key if it is still the one `fence` names.
async fn resign_key(client: &Client, fence: &Fence) -> Result<()> {
    let txn = Txn::new()
        .when([fence.compare()])
        .and_then([TxnOp::delete(fence.election_key(), None)]);
    retry::txn(client, || format!("resign {}", fence.election_key()), txn).await?;
    Ok(())
}

impl Leadership {
    fn start(client: Client, fence: Fence, lost: CancellationToken) -> Self {
        let monitor = tokio::spawn({
            let client = client.clone();
            let key = fence.election_key().to_string();
            let revision = fence.revision();
            let lost = lost.clone();
            async move {
                tokio::select! {
                    _ = lost.cancelled() => {}
                    r = wait_deleted(&client, &key, revision + 1) => {
                        if r.is_ok() {
                            tracing::warn!(%key, "election key deleted; leadership lost");
                        }
                        lost.cancel();
                    }
                }
            }
        });
        Self {
            fence,
            lost,
            client,
            monitor,
        }
    }

    /// The fence for this leadership's writes.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Fires when leadership is lost: the session's lease went, the key was deleted, or
    /// [`Leadership::resign`] was called. Cancel all leader work with it.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether leadership was lost already.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Gives up leadership: the token fires first, then the key is deleted so the next
    /// candidate takes over at once. The session's lease stays.
    pub async fn resign(self) -> Result<()> {
        self.lost.cancel();
        resign_key(&self.client, &self.fence).await
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}
