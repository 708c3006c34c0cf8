//! `--events-sink`: the leader delivers every pm event to an HTTP receiver as a
//! CloudEvent 1.0 ([`crate::cloud_event`]), at least once and in order.
//!
//! - Order is etcd's: events go out by the revision that created them, so each pool's
//!   events arrive in the order they were recorded. Repeats of an event (its `count`
//!   growing) are not sent again.
//! - The cursor at `<root>sink/cursor` is the create revision up to which every event was
//!   delivered. The leader writes it, fenced, after each batch of at most
//!   [`MAX_BATCH`] events; a new leader starts after it, so a failover repeats at most
//!   the batch in flight and loses nothing. Without a cursor, every retained event is
//!   delivered.
//! - While the sink is down or answers 3xx, 401, 403, 404, 405, 408, 429 or 5xx, the
//!   same event is retried with back-off up to [`RETRY_MAX`]; events wait in etcd for as
//!   long as their retention. Any other 4xx, or an event that cannot be encoded, drops
//!   the event with an `events-sink-rejected` warning event.
//! - After a snapshot restore, delivery resumes after the restored cursor (every listing
//!   and re-listing reads it), or from the start when etcd's revision is below even the
//!   cursor; what was delivered since the snapshot may come again, and receivers
//!   deduplicate by id.

use std::time::Duration;

use cloudevents::binding::reqwest::{RequestBuilderExt, RequestSerializer};
use cloudevents::message::StructuredDeserializer;
use cloudevents::{AttributesReader, Event as CloudEvent};
use pm_backoff::Backoff;
use pm_etcd::{
    decode, now_unix_ms, EventLog, Fence, Key, ResumableWatch, Store, StoredKey, WatchBatch,
    WatchEvent, WatchRange,
};
use pm_proto::{Event, Severity, SinkCursor};
use pm_telemetry::Readiness;

use crate::cloud_event::to_cloud_event;
use crate::metrics::SinkMetrics;

/// Most events delivered between two cursor writes.
pub const MAX_BATCH: usize = 100;

/// The longest wait between two attempts at the same event.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Delays between attempts at one event.
const RETRY: Backoff = Backoff::from_consts(Duration::from_millis(200), RETRY_MAX);

/// How long one delivery may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of the warning recorded when the sink refuses an event.
pub const REJECTED_KIND: &str = "events-sink-rejected";

/// The readiness condition of the sink's watch: its own, so that the leader's watch
/// recovering does not hide that this one is refused.
const SINK_WATCH_CONDITION: &str = "events-sink-watch";

/// Most characters of a refusal's body quoted in the warning event.
const QUOTED_BODY: usize = 200;

/// How the events go over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkMode {
    /// Attributes in `ce-*` headers, the JSON data as the body.
    Binary,
    /// The whole event as an `application/cloudevents+json` body.
    Structured,
}

/// Where and how the events go.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// The receiver.
    pub url: reqwest::Url,
    /// The HTTP encoding.
    pub mode: SinkMode,
    /// The client the deliveries share.
    pub client: reqwest::Client,
}

/// One key past the cursor, in creation order.
struct Pending {
    /// The revision that created it.
    revision: i64,
    /// Its key.
    key: String,
    /// The event to deliver, or why the key cannot be one: skipped, but the cursor still
    /// passes it, so a re-listing does not count it again.
    item: Result<Ready, String>,
}

/// One event ready to go out.
struct Ready {
    /// Its pool, for the warning of a refusal.
    pool: String,
    /// What it recorded.
    event: Event,
    /// What goes out.
    cloud: CloudEvent,
}

/// What became of one event.
enum Outcome {
    /// The sink took it.
    Delivered,
    /// It was dropped: the sink refused it for good (the status and the start of the
    /// body), or it cannot be sent at all.
    Dropped(String),
}

/// Why one attempt failed.
enum Failure {
    /// The request cannot be built or encoded: the same every time, so the event is
    /// dropped.
    Unsendable(String),
    /// No answer (connection, timeout): tried again.
    Unanswered(String),
}

/// The deliverer of one leader term.
pub struct Sink<'a> {
    /// Where events and the cursor are.
    pub store: &'a Store,
    /// Where refusals are recorded.
    pub events: &'a EventLog,
    /// Where and how.
    pub settings: &'a SinkSettings,
    /// The numbers.
    pub metrics: &'a SinkMetrics,
    /// Where the watch tells an error that retrying cannot fix.
    pub readiness: &'a Readiness,
    /// This term's fence; the cursor is written under it.
    pub fence: Fence,
    /// This scheduler's id, written into the cursor.
    pub id: String,
}

impl Sink<'_> {
    /// Delivers until an etcd error ends the term (fenced out: leadership is lost).
    pub async fn run(&self) -> pm_etcd::Result<()> {
        let keys = self.store.keys().clone();
        // Nothing delivered yet this term: `catch_up` starts from the stored cursor.
        let mut cursor = i64::MAX;
        let (listed, revision) = self.store.list_raw(&keys.all_events_prefix()).await?;
        self.catch_up(listed, revision, &mut cursor).await?;
        let mut watch = ResumableWatch::new(
            self.store.client().clone(),
            WatchRange::Prefix(keys.all_events_prefix()),
            revision + 1,
        )
        .with_health(self.readiness.reporter(SINK_WATCH_CONDITION));
        loop {
            self.metrics.lag.set(0.0);
            match watch.next().await? {
                WatchBatch::Events(changes) => {
                    let created = changes.into_iter().filter_map(|change| match change {
                        WatchEvent::Put(kv) if kv.create_revision == kv.mod_revision => Some(kv),
                        _ => None,
                    });
                    let pending = self.pending(created, cursor);
                    self.deliver(pending, &mut cursor).await?;
                }
                WatchBatch::Resync { revision, keys } => {
                    self.catch_up(keys, revision, &mut cursor).await?;
                }
            }
        }
    }

    /// Delivers what a listing at `revision` holds past the cursor. A listing older than
    /// the cursor means etcd was restored from a snapshot: everything listed goes out.
    async fn catch_up(
        &self,
        listed: Vec<StoredKey>,
        revision: i64,
        cursor: &mut i64,
    ) -> pm_etcd::Result<()> {
        // After a restore the stored cursor is the snapshot's: what was delivered past it
        // was at revisions etcd hands out again.
        *cursor = (*cursor).min(self.stored_cursor().await?);
        if revision < *cursor {
            tracing::warn!(
                revision,
                cursor = *cursor,
                "etcd's revision is below the events sink's cursor (restored from a snapshot?); delivering every retained event"
            );
            *cursor = 0;
        }
        let pending = self.pending(listed, *cursor);
        self.deliver(pending, cursor).await
    }

    /// The keys of `keys` created after `cursor`, in creation order.
    fn pending(&self, keys: impl IntoIterator<Item = StoredKey>, cursor: i64) -> Vec<Pending> {
        let mut pending: Vec<Pending> = keys
            .into_iter()
            .filter(|kv| kv.create_revision > cursor)
            .map(|kv| Pending {
                revision: kv.create_revision,
                item: self.prepare(&kv),
                key: kv.key,
            })
            .collect();
        pending.sort_by_key(|p| p.revision);
        pending
    }

    fn prepare(&self, kv: &StoredKey) -> Result<Ready, String> {
        let Key::Event { pool, seq } = self
            .store
            .keys()
            .parse(kv.key.as_bytes())
            .map_err(|e| e.to_string())?
        else {
            return Err("not an event key".into());
        };
        let event: Event = decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
        let cloud = to_cloud_event(&pool, &seq, &event)?;
        Ok(Ready { pool, event, cloud })
    }

    /// Delivers `pending` in order, writing the cursor after each batch. A batch ends at
    /// a revision boundary, so the cursor never splits the events of one revision. A key
    /// that is not an event or does not decode is logged and counted as dropped, once.
    async fn deliver(&self, pending: Vec<Pending>, cursor: &mut i64) -> pm_etcd::Result<()> {
        let mut in_batch = 0;
        let mut iter = pending.into_iter().peekable();
        while let Some(item) = iter.next() {
            match &item.item {
                Ok(ready) => self.deliver_one(ready).await,
                Err(reason) => {
                    tracing::warn!(key = %item.key, %reason, "event not delivered to the events sink");
                    self.metrics.dropped.inc();
                }
            }
            in_batch += 1;
            let boundary = iter
                .peek()
                .is_none_or(|next| next.revision != item.revision);
            if boundary && (in_batch >= MAX_BATCH || iter.peek().is_none()) {
                self.write_cursor(item.revision).await?;
                *cursor = item.revision;
                in_batch = 0;
            }
        }
        Ok(())
    }

    /// The cursor etcd holds; 0 without one.
    async fn stored_cursor(&self) -> pm_etcd::Result<i64> {
        let key = self.store.keys().sink_cursor();
        let stored = self.store.get::<SinkCursor>(&key).await?;
        Ok(stored.map_or(0, |c| c.value.revision))
    }

    async fn write_cursor(&self, revision: i64) -> pm_etcd::Result<()> {
        let value = SinkCursor {
            revision,
            scheduler_id: self.id.clone(),
            updated_unix_ms: now_unix_ms(),
        };
        let key = self.store.keys().sink_cursor();
        self.store
            .put_fenced(&self.fence, &key, &value, 0)
            .await
            .map(drop)
    }

    /// Delivers one event, retrying until the sink takes or refuses it; a refusal is
    /// recorded as a warning event unless it refused such a warning (which would loop).
    async fn deliver_one(&self, item: &Ready) {
        match self.attempt_until_answered(item).await {
            Outcome::Delivered => {
                self.metrics.delivered.inc();
            }
            Outcome::Dropped(why) => {
                self.metrics.dropped.inc();
                let kind = &item.event.kind;
                tracing::warn!(%why, id = %item.cloud.id(), "an event is dropped instead of delivered to the events sink");
                if kind != REJECTED_KIND {
                    let message = format!(
                        "a {kind} event is dropped instead of delivered to the events sink {}: {why}",
                        self.settings.url
                    );
                    self.events
                        .emit(
                            &item.pool,
                            REJECTED_KIND,
                            Severity::Warning,
                            &item.event.zone,
                            &item.event.instance,
                            message,
                        )
                        .await;
                }
            }
        }
    }

    async fn attempt_until_answered(&self, item: &Ready) -> Outcome {
        let mut attempts = RETRY.attempts();
        loop {
            let waited_ms = now_unix_ms().saturating_sub(item.event.unix_ms).max(0);
            self.metrics.lag.set(waited_ms as f64 / 1000.0);
            let failure = match self.post(item.cloud.clone()).await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Outcome::Delivered;
                    }
                    if !retried(status) {
                        let body = response.text().await.unwrap_or_default();
                        let why = format!("refused with HTTP {status}: {}", quoted(&body));
                        return Outcome::Dropped(why);
                    }
                    format!("HTTP {status}")
                }
                Err(Failure::Unsendable(why)) => return Outcome::Dropped(why),
                Err(Failure::Unanswered(why)) => why,
            };
            self.metrics.failures.inc();
            let delay = attempts.next_delay();
            tracing::warn!(url = %self.settings.url, %failure, retry_in = ?delay, "events sink delivery failed");
            tokio::time::sleep(delay).await;
        }
    }

    async fn post(&self, event: CloudEvent) -> Result<reqwest::Response, Failure> {
        let request = self
            .settings
            .client
            .post(self.settings.url.clone())
            .timeout(REQUEST_TIMEOUT);
        let request = match self.settings.mode {
            SinkMode::Binary => request.event(event),
            SinkMode::Structured => StructuredDeserializer::deserialize_structured(
                event,
                RequestSerializer::new(request),
            ),
        }
        .map_err(|e| Failure::Unsendable(format!("cannot encode it: {e}")))?;
        request.send().await.map_err(|e| {
            if e.is_builder() {
                Failure::Unsendable(format!("cannot build its request: {}", chain(&e)))
            } else {
                Failure::Unanswered(chain(&e))
            }
        })
    }
}

/// An error with its causes, `a: b: c`: reqwest's own message hides why a request failed.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Whether a delivery answered with `status` is tried again: 408, 429 and 5xx are the
/// receiver's passing trouble; a redirect (never followed: it would turn the POST into a
/// bodiless GET), 401, 403, 404 and 405 say the URL or its credentials are wrong, which
/// the operator fixes, not something about this event. Any other answer is final.
fn retried(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    status.is_redirection()
        || status.is_server_error()
        || [
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED,
        ]
        .contains(&status)
}

/// The start of a refusal's body, on one line.
fn quoted(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(QUOTED_BODY) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_trouble_and_a_wrong_url_are_retried() {
        for code in [301, 307, 401, 403, 404, 405, 408, 429, 500, 502, 503, 504] {
            assert!(
                retried(reqwest::StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 400, 409, 413, 415, 422] {
            assert!(
                !retried(reqwest::StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn a_refusal_body_is_quoted_on_one_bounded_line() {
        assert_eq!(quoted("bad\n  request"), "bad request");
        let long = "é".repeat(500);
        let q = quoted(&long);
        assert_eq!(q.chars().count(), QUOTED_BODY + 1);
        assert!(q.ends_with('…'));
    }
}
