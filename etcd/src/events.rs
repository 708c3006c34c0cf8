//! Recording events under `events/<pool>/`, bound to retention leases, in bounded numbers.
//!
//! Events are a record for people, so their volume must never grow with a failure that
//! repeats:
//! - the same event (pool, zone, kind, instance and message) recorded again within
//!   [`REPEAT_WINDOW`] updates the count of the first one instead of writing a new key;
//! - each pool gets at most [`RATE_CAP`] event writes per [`RATE_WINDOW`] from one
//!   process; the rest are counted, and the next event after the window records one
//!   `events-suppressed` event with their number;
//! - retention leases are granted per [`LEASE_BUCKET`], so one lease's expiry deletes a
//!   minute's events of one process, never a multi-MiB range.

use std::collections::HashMap;
use std::time::Duration;

use pm_proto::{Event, Severity};
use rand::Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::Result;
use crate::store::Store;

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// How long one retention lease is reused before a new one is granted. Events live between
/// `retention` and `retention + LEASE_BUCKET`.
pub const LEASE_BUCKET: Duration = Duration::from_secs(60);

/// A repeat of an event within this long of its first recording updates its count.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(600);

/// Event writes per pool and process within one [`RATE_WINDOW`].
pub const RATE_CAP: u32 = 60;

/// The window of [`RATE_CAP`].
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The kind of the event that tells how many events the rate cap held back.
pub const SUPPRESSED_KIND: &str = "events-suppressed";

/// Recent events remembered for counting repeats; past it, repeats write new keys.
const MAX_REMEMBERED: usize = 4096;

/// What makes two events the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    pool: String,
    zone: String,
    kind: String,
    instance: String,
    message: String,
}

/// An event written recently, which repeats update.
#[derive(Debug)]
struct Recent {
    key: String,
    event: Event,
    lease: i64,
    first: Instant,
}

/// One pool's rate window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// What to do with one event, decided without I/O.
#[derive(Debug, PartialEq)]
enum Admission {
    /// Write it; after writing `suppressed` (when not 0) as a summary of the last window.
    Write { suppressed: u64 },
    /// The pool is over its rate cap: count it and write nothing.
    Suppress,
}

/// The rate windows of the pools.
#[derive(Debug, Default)]
struct Rates {
    windows: HashMap<String, Window>,
}

impl Rates {
    fn admit(&mut self, pool: &str, now: Instant) -> Admission {
        let window = self.windows.entry(pool.to_string()).or_insert(Window {
            start: now,
            written: 0,
            suppressed: 0,
        });
        let mut held_back = 0;
        if now.duration_since(window.start) >= RATE_WINDOW {
            held_back = window.suppressed;
            *window = Window {
                start: now,
                written: 0,
                suppressed: 0,
            };
        }
        if window.written >= RATE_CAP {
            window.suppressed += 1;
            return Admission::Suppress;
        }
        window.written += 1;
        Admission::Write {
            suppressed: held_back,
        }
    }
}

/// What the log remembers between events.
#[derive(Debug, Default)]
struct State {
    /// The retention lease events are bound to, and when it was granted; `None` until the
    /// first event or after a failed put.
    lease: Option<(i64, Instant)>,
    recent: HashMap<Identity, Recent>,
    rates: Rates,
}

/// Writes events for one process (an agent, a scheduler, pmctl).
pub struct EventLog {
    /// Where events go.
    store: Store,
    /// Recorded as each event's `source`.
    source: String,
    /// How long events are kept at least.
    retention: Duration,
    state: Mutex<State>,
}

impl EventLog {
    /// An event log writing as `source`, keeping events for `retention` (default 24 h).
    pub fn new(store: Store, source: impl Into<String>, retention: Duration) -> Self {
        Self {
            store,
            source: source.into(),
            retention: retention.max(Duration::from_secs(1)),
            state: Mutex::new(State::default()),
        }
    }

    /// The default retention of DESIGN.md: 24 hours.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

    async fn lease(&self, state: &mut State) -> Result<i64> {
        if let Some((id, granted)) = state.lease {
            if granted.elapsed() < LEASE_BUCKET {
                return Ok(id);
            }
        }
        let id = self
            .store
            .grant_lease(self.retention + LEASE_BUCKET)
            .await?;
        state.lease = Some((id, Instant::now()));
        Ok(id)
    }

    /// Records an event of `pool`. Fills in the time and source; a repeat updates the
    /// first recording's count, and an event over the pool's rate cap is only counted. On
    /// failure the event is lost but the caller goes on: events are a record, never a
    /// reason to stop.
    pub async fn record(
        &self,
        pool: &str,
        kind: &str,
        severity: Severity,
        zone: &str,
        instance: &str,
        message: impl Into<String>,
    ) -> Result<()> {
        let identity = Identity {
            pool: pool.to_string(),
            zone: zone.to_string(),
            kind: kind.to_string(),
            instance: instance.to_string(),
            message: message.into(),
        };
        let now = Instant::now();
        let mut state = self.state.lock().await;
        let suppressed = match state.rates.admit(pool, now) {
            Admission::Suppress => return Ok(()),
            Admission::Write { suppressed } => suppressed,
        };
        let result = self
            .write(&mut state, identity, severity, suppressed, now)
            .await;
        if result.is_err() {
            // The lease may be gone (etcd restored, revoked): grant a new one next time.
            state.lease = None;
        }
        result
    }

    async fn write(
        &self,
        state: &mut State,
        identity: Identity,
        severity: Severity,
        suppressed: u64,
        now: Instant,
    ) -> Result<()> {
        if suppressed > 0 {
            let summary = Identity {
                pool: identity.pool.clone(),
                zone: String::new(),
                kind: SUPPRESSED_KIND.into(),
                instance: String::new(),
                message: format!(
                    "suppressed {suppressed} events: more than {RATE_CAP} in {RATE_WINDOW:?} from {}",
                    self.source
                ),
            };
            self.write_new(state, summary, Severity::Warning, now)
                .await?;
        }
        if let Some(recent) = state.recent.get_mut(&identity) {
            if now.duration_since(recent.first) < REPEAT_WINDOW {
                recent.event.count = recent.event.count.max(1) + 1;
                recent.event.last_unix_ms = now_unix_ms();
                self.store
                    .put(&recent.key, &recent.event, recent.lease)
                    .await?;
                return Ok(());
            }
        }
        self.write_new(state, identity, severity, now).await
    }

    async fn write_new(
        &self,
        state: &mut State,
        identity: Identity,
        severity: Severity,
        now: Instant,
    ) -> Result<()> {
        let event = Event {
            unix_ms: now_unix_ms(),
            kind: identity.kind.clone(),
            zone: identity.zone.clone(),
            instance: identity.instance.clone(),
            message: identity.message.clone(),
            source: self.source.clone(),
            severity: severity as i32,
            count: 1,
            last_unix_ms: 0,
        };
        let seq = format!("{:013}-{:08x}", event.unix_ms, rand::rng().random::<u32>());
        let key = self.store.keys().event(&identity.pool, &seq)?;
        let lease = self.lease(state).await?;
        self.store.put(&key, &event, lease).await?;
        if state.recent.len() >= MAX_REMEMBERED {
            state
                .recent
                .retain(|_, r| now.duration_since(r.first) < REPEAT_WINDOW);
        }
        if state.recent.len() < MAX_REMEMBERED {
            let recent = Recent {
                key,
                event,
                lease,
                first: now,
            };
            state.recent.insert(identity, recent);
        }
        Ok(())
    }

    /// Records an event and logs it, logging instead of failing when etcd refuses it.
    pub async fn emit(
        &self,
        pool: &str,
        kind: &str,
        severity: Severity,
        zone: &str,
        instance: &str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        match severity {
            Severity::Info => tracing::info!(%pool, %zone, %instance, kind, "{message}"),
            Severity::Warning => tracing::warn!(%pool, %zone, %instance, kind, "{message}"),
            Severity::Error => tracing::error!(%pool, %zone, %instance, kind, "{message}"),
        }
        if let Err(e) = self
            .record(pool, kind, severity, zone, instance, message)
            .await
        {
            tracing::warn!(%pool, kind, error = %e, "could not record event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_over_its_cap_is_counted_and_summed_up_in_the_next_window() {
        let start = Instant::now();
        let mut rates = Rates::default();
        for _ in 0..RATE_CAP {
            assert_eq!(
                rates.admit("web", start),
                Admission::Write { suppressed: 0 }
            );
        }
        assert_eq!(rates.admit("web", start), Admission::Suppress);
        assert_eq!(rates.admit("web", start), Admission::Suppress);
        assert_eq!(
            rates.admit("db", start),
            Admission::Write { suppressed: 0 },
            "pools have their own caps"
        );
        let later = start + RATE_WINDOW;
        assert_eq!(
            rates.admit("web", later),
            Admission::Write { suppressed: 2 }
        );
        assert_eq!(
            rates.admit("web", later),
            Admission::Write { suppressed: 0 },
            "told once"
        );
    }
}
