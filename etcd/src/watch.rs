//! A watch that survives stream errors, etcd restarts and compaction.
//!
//! etcd-client's watch stream ends on any error and never resumes. [`ResumableWatch`]
//! remembers the next revision it owes its consumer and re-opens the stream from there.
//! When that revision was compacted away it re-lists the range and hands the consumer a
//! full snapshot ([`WatchBatch::Resync`]) before following on. Either way every change is
//! delivered exactly once, in revision order. A revision that etcd splits over several
//! replies (a transaction or lease expiry that deletes many keys: the stream asks for
//! fragments, so no reply exceeds etcd's request size) is handed out whole.
//!
//! A stream can also freeze without an error: the member behind it may be cut off while
//! its connection still answers. So the watch asks for a progress notification whenever
//! the stream has been quiet for [`PROGRESS_INTERVAL`], and re-opens a stream that has
//! said nothing at all for [`STALL_BOUND`] (etcd's `require_leader`, set by
//! [`crate::EtcdOptions::connect`], makes a member without a leader end its streams).
//! Every reply's header is checked too: a revision below what was already delivered, or
//! another cluster id, means etcd was restored from a snapshot, and the range is re-listed
//! ([`WatchBatch::Resync`]). Errors that retrying cannot fix (permission denied) are
//! logged at warn and told to the health callback ([`ResumableWatch::with_health`]) while
//! they last.

use std::time::Duration;

use etcd_client::{
    Client, EventType, KeyValue, WatchOptions, WatchRequestSender, WatchResponse,
    WatchResponseStream,
};
use pm_backoff::{Attempts, Backoff};
use prost::Message;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::keys::{key_range_end, prefix_range_end};
use crate::range::{self, note_reply, Span, DECODE_LIMIT};

/// Delays between attempts to re-open a broken watch stream.
const RESUME_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_millis(50), Duration::from_secs(2));

/// A stream quiet for this long is asked for a progress notification.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// A stream that has said nothing (no event, no progress notification) for this long is
/// re-opened.
pub const STALL_BOUND: Duration = Duration::from_secs(6);

/// Delay between attempts while an error that retrying cannot fix lasts (say, until an
/// operator grants the missing permission).
const REFUSED_RETRY: Duration = Duration::from_secs(10);

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
    /// The changes since the last batch were compacted away, or etcd was restored from a
    /// snapshot (its revisions went back): this is the whole range as of `revision`. The
    /// consumer replaces what it knows of the range with it; after a restore `revision`
    /// may be lower than revisions delivered before.
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

/// Told `Some(reason)` while a watch is stopped by an error that retrying cannot fix, and
/// `None` once it works again (or is dropped).
type HealthReport = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// An open stream and when it was last heard from.
struct Open {
    /// To ask for progress notifications.
    requests: WatchRequestSender,
    /// The replies.
    responses: WatchResponseStream,
    /// When the stream last said anything.
    heard: Instant,
    /// Whether a progress notification was asked for since then.
    probed: bool,
    /// The events of a revision etcd split over several replies (`fragment`), until its
    /// last reply: a revision is handed out whole or not at all.
    fragments: Vec<WatchEvent>,
}

/// A watch that resumes from the last delivered revision + 1 after any error, re-opens a
/// stream that went silent, and re-lists after compaction or a snapshot restore. `next`
/// is cancel-safe: dropping its future loses nothing.
pub struct ResumableWatch {
    /// Client the stream is (re-)opened on.
    client: Client,
    /// The watched keys.
    range: WatchRange,
    /// First revision not yet delivered to the consumer; every later event is >= it.
    next_revision: i64,
    /// The open stream, `None` after an error until re-opened.
    stream: Option<Open>,
    /// Delays between failed attempts to (re-)open the stream.
    retry: Attempts,
    /// The cluster id of the replies so far.
    cluster_id: Option<u64>,
    /// Where unfixable errors are told.
    health: Option<HealthReport>,
    /// Whether an unfixable error was told and not yet cleared.
    refused: bool,
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
            cluster_id: None,
            health: None,
            refused: false,
        }
    }

    /// Tells `report` the reason while an error that retrying cannot fix (permission
    /// denied, ...) stops the watch, and `None` once it works again; a daemon turns it
    /// into a readiness condition.
    pub fn with_health(mut self, report: impl Fn(Option<&str>) + Send + Sync + 'static) -> Self {
        self.health = Some(Box::new(report));
        self
    }

    /// The first revision not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    fn options(&self) -> WatchOptions {
        let options = WatchOptions::new()
            .with_start_revision(self.next_revision)
            .with_progress_notify()
            .with_fragment();
        match &self.range {
            WatchRange::Key(_) => options,
            WatchRange::Prefix(_) => options.with_prefix(),
        }
    }

    /// Waits for the next changes. It never returns an error: etcd being down is waited
    /// out (with backoff) until it is back, and an error that retrying cannot fix is
    /// logged, told to the health callback, and retried every 10 s.
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
                    if unfixable(&e) {
                        tracing::warn!(range = ?self.range, error = %e, retry = ?REFUSED_RETRY, "watch refused by etcd");
                        self.tell(Some(&e.to_string()));
                        tokio::time::sleep(REFUSED_RETRY).await;
                    } else {
                        let delay = self.retry.next_delay();
                        tracing::debug!(range = ?self.range, error = %e, ?delay, "watch interrupted; resuming");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    /// Tells the health callback, on changes only.
    fn tell(&mut self, reason: Option<&str>) {
        if self.refused == reason.is_none() {
            if let Some(report) = &self.health {
                report(reason);
            }
        }
        self.refused = reason.is_some();
    }

    fn error(&self, e: etcd_client::Error) -> Error {
        Error::etcd(format!("watch {:?}", self.range), e)
    }

    /// One step: open the stream if needed, read one message (asking for progress when
    /// it is quiet). `Ok(None)` when the message carried nothing new.
    async fn step(&mut self) -> Result<Option<WatchBatch>> {
        if self.stream.is_none() {
            let stream = self
                .client
                .watch_client()
                .max_decoding_message_size(DECODE_LIMIT)
                .watch(self.range.key(), Some(self.options()))
                .await
                .map_err(|e| self.error(e))?;
            let (requests, responses) = stream.split();
            self.stream = Some(Open {
                requests,
                responses,
                heard: Instant::now(),
                probed: false,
                fragments: Vec::new(),
            });
        }
        let Some(open) = self.stream.as_mut() else {
            return Ok(None);
        };
        let probe_at = open.heard + PROGRESS_INTERVAL;
        let stall_at = open.heard + STALL_BOUND;
        let message = tokio::select! {
            message = open.responses.message() => message,
            _ = tokio::time::sleep_until(probe_at), if !open.probed => {
                open.probed = true;
                let sent = open.requests.request_progress().await;
                return sent.map(|()| None).map_err(|e| self.error(e));
            }
            _ = tokio::time::sleep_until(stall_at) => {
                return Err(Error::Config(format!(
                    "watch stream of {:?} silent for {STALL_BOUND:?}",
                    self.range
                )));
            }
        };
        open.heard = Instant::now();
        open.probed = false;
        let Some(resp) = message.map_err(|e| self.error(e))? else {
            return Err(Error::Config(format!(
                "watch stream of {:?} ended",
                self.range
            )));
        };
        note_reply(resp.0.encoded_len());
        if resp.compact_revision() > 0 {
            self.stream = None;
            return self.resync().await.map(Some);
        }
        if resp.canceled() {
            return Err(Error::WatchCancelled {
                range: format!("{:?}", self.range),
                reason: resp.cancel_reason().to_string(),
            });
        }
        self.tell(None);
        if self.restored(&resp) {
            self.stream = None;
            return self.resync().await.map(Some);
        }
        let floor = self.next_revision;
        let events = resp.events().iter().filter_map(|event| {
            let kv = event.kv()?;
            (kv.mod_revision() >= floor).then(|| match event.event_type() {
                EventType::Put => WatchEvent::Put(StoredKey::from(kv)),
                EventType::Delete => WatchEvent::Delete {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    mod_revision: kv.mod_revision(),
                },
            })
        });
        let Some(open) = self.stream.as_mut() else {
            return Ok(None);
        };
        open.fragments.extend(events);
        if resp.0.fragment {
            return Ok(None);
        }
        let events = std::mem::take(&mut open.fragments);
        match events.last() {
            Some(last) => {
                self.next_revision = last.revision() + 1;
                Ok(Some(WatchBatch::Events(events)))
            }
            None => Ok(None),
        }
    }

    /// Whether a reply says etcd was restored from a snapshot: its store is at a revision
    /// below one already delivered, or it is another cluster.
    fn restored(&mut self, resp: &WatchResponse) -> bool {
        let Some(header) = resp.header() else {
            return false;
        };
        let other_cluster = self
            .cluster_id
            .replace(header.cluster_id())
            .is_some_and(|id| id != header.cluster_id());
        let went_back = header.revision() < self.next_revision - 1;
        if other_cluster || went_back {
            tracing::warn!(
                range = ?self.range,
                revision = header.revision(),
                expected = self.next_revision - 1,
                other_cluster,
                "etcd's revision went back (restored from a snapshot?); re-listing"
            );
        }
        other_cluster || went_back
    }

    async fn resync(&mut self) -> Result<WatchBatch> {
        let key = self.range.key().as_bytes();
        let end = match &self.range {
            WatchRange::Key(_) => key_range_end(key),
            WatchRange::Prefix(_) => prefix_range_end(key),
        };
        let what = format!("re-list {:?}", self.range);
        let span = Span {
            start: key,
            end: &end,
        };
        let (keys, revision) = range::read(&self.client, &what, span, false).await?;
        self.next_revision = revision + 1;
        Ok(WatchBatch::Resync { revision, keys })
    }
}

impl Drop for ResumableWatch {
    fn drop(&mut self) {
        self.tell(None);
    }
}

/// Whether retrying cannot fix `e`: etcd refuses the watch itself (permissions, bad
/// credentials, a bad request), not the way to it.
fn unfixable(e: &Error) -> bool {
    match e {
        Error::WatchCancelled { reason, .. } => {
            reason.contains("permission denied") || reason.contains("invalid auth")
        }
        Error::Etcd {
            source: etcd_client::Error::GRpcStatus(status),
            ..
        } => matches!(
            status.code(),
            tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument
        ),
        _ => false,
    }
}
