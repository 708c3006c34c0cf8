//! A watch that survives stream errors, etcd restarts and compaction.
//!
//! etcd-client's watch stream ends on any error and never resumes. [`ResumableWatch`]
//! remembers the next revision it owes its consumer and re-opens the stream from there.
//! When that revision was compacted away it re-lists the range and hands the consumer a
//! full snapshot ([`WatchBatch::Resync`]) before following on. Either way every change is
//! delivered exactly once, in revision order.

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchStream};
use pm_backoff::{Attempts, Backoff};

use crate::error::{Error, Result};
use crate::retry;

/// Delays between attempts to re-open a broken watch stream.
const RESUME_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_millis(50), Duration::from_secs(2));

/// One key as stored, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key.
    pub key: String,
    /// Its raw value; decode with [`crate::decode`].
    pub value: Vec<u8>,
    /// Revision of its last write.
    pub mod_revision: i64,
    /// Revision at which it was created.
    pub create_revision: i64,
    /// Lease it is bound to, 0 for none.
    pub lease: i64,
}

impl From<&KeyValue> for StoredKey {
    fn from(kv: &KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

/// One change of a watched range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or written.
    Put(StoredKey),
    /// The key was deleted (or its lease expired).
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        mod_revision: i64,
    },
}

impl WatchEvent {
    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// What [`ResumableWatch::next`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// Changes, in revision order, none seen before.
    Events(Vec<WatchEvent>),
    /// The changes since the last batch were compacted away: this is the whole range as
    /// of `revision`. The consumer replaces what it knows of the range with it.
    Resync {
        /// The revision of the snapshot.
        revision: i64,
        /// Every key of the range at that revision.
        keys: Vec<StoredKey>,
    },
}

/// Which keys a watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchRange {
    /// One key.
    Key(String),
    /// Every key starting with the prefix.
    Prefix(String),
}

impl WatchRange {
    fn key(&self) -> &str {
        match self {
            WatchRange::Key(k) | WatchRange::Prefix(k) => k,
        }
    }
}

/// A watch that resumes from the last delivered revision + 1 after any error, and re-lists
/// after compaction. `next` is cancel-safe: dropping its future loses nothing.
pub struct ResumableWatch {
    /// Client the stream is (re-)opened on.
    client: Client,
    /// The watched keys.
    range: WatchRange,
    /// First revision not yet delivered to the consumer; every later event is >= it.
    next_revision: i64,
    /// The open stream, `None` after an error until re-opened.
    stream: Option<WatchStream>,
    /// Delays between failed attempts to (re-)open the stream.
    retry: Attempts,
}

impl ResumableWatch {
    /// Watches `range` from `start_revision` on; pass a listing's revision + 1 to follow
    /// that listing without a gap.
    pub fn new(client: Client, range: WatchRange, start_revision: i64) -> Self {
        Self {
            client,
            range,
            next_revision: start_revision.max(1),
            stream: None,
            retry: RESUME_BACKOFF.attempts(),
        }
    }

    /// The first revision not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    fn options(&self) -> WatchOptions {
        let options = WatchOptions::new()
            .with_start_revision(self.next_revision)
            .with_progress_notify();
        match &self.range {
            WatchRange::Key(_) => options,
            WatchRange::Prefix(_) => options.with_prefix(),
        }
    }

    /// Waits for the next changes. It only returns errors that retrying cannot cure;
    /// etcd being down is waited out (with backoff) until it is back.
    pub async fn next(&mut self) -> Result<WatchBatch> {
        loop {
            match self.step().await {
                Ok(Some(batch)) => {
                    self.retry.reset();
                    return Ok(batch);
                }
                Ok(None) => {}
                Err(e) => {
                    self.stream = None;
                    let delay = self.retry.next_delay();
                    tracing::debug!(range = ?self.range, error = %e, ?delay, "watch interrupted; resuming");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One step: open the stream if needed, read one message. `Ok(None)` when the message
    /// carried nothing new.
    async fn step(&mut self) -> Result<Option<WatchBatch>> {
        if self.stream.is_none() {
            let stream = self
                .client
                .watch_client()
                .watch(self.range.key(), Some(self.options()))
                .await
                .map_err(|e| Error::etcd(format!("watch {:?}", self.range), e))?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        let message = stream
            .message()
            .await
            .map_err(|e| Error::etcd(format!("watch {:?}", self.range), e))?;
        let Some(resp) = message else {
            return Err(Error::Config(format!(
                "watch stream of {:?} ended",
                self.range
            )));
        };
        if resp.compact_revision() > 0 {
            self.stream = None;
            return self.resync().await.map(Some);
        }
        if resp.canceled() {
            return Err(Error::Config(format!(
                "watch of {:?} cancelled by etcd: {}",
                self.range,
                resp.cancel_reason()
            )));
        }
        let floor = self.next_revision;
        let events: Vec<WatchEvent> = resp
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                (kv.mod_revision() >= floor).then(|| match event.event_type() {
                    EventType::Put => WatchEvent::Put(StoredKey::from(kv)),
                    EventType::Delete => WatchEvent::Delete {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        mod_revision: kv.mod_revision(),
                    },
                })
            })
            .collect();
        match events.last() {
            Some(last) => {
                self.next_revision = last.revision() + 1;
                Ok(Some(WatchBatch::Events(events)))
            }
            None => Ok(None),
        }
    }

    async fn resync(&mut self) -> Result<WatchBatch> {
        let options = match &self.range {
            WatchRange::Key(_) => None,
            WatchRange::Prefix(_) => Some(GetOptions::new().with_prefix()),
        };
        let key = self.range.key();
        let resp = retry::kv(
            &self.client,
            || format!("re-list {key}"),
            |mut kv| {
                let options = options.clone();
                async move { kv.get(key, options).await }
            },
        )
        .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.next_revision = revision + 1;
        Ok(WatchBatch::Resync {
            revision,
            keys: resp.kvs().iter().map(StoredKey::from).collect(),
        })
    }
}
