//! Recording events under `pools/<pool>/events/`, bound to a retention lease.

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
/// `retention` and `retention + LEASE_REUSE`.
const LEASE_REUSE: Duration = Duration::from_secs(3600);

/// Writes events for one process (an agent, a scheduler, pmctl).
pub struct EventLog {
    /// Where events go.
    store: Store,
    /// Recorded as each event's `source`.
    source: String,
    /// How long events are kept at least.
    retention: Duration,
    /// The lease events are bound to, and when it was granted; `None` until the first
    /// event or after a failed put.
    lease: Mutex<Option<(i64, Instant)>>,
}

impl EventLog {
    /// An event log writing as `source`, keeping events for `retention` (default 24 h).
    pub fn new(store: Store, source: impl Into<String>, retention: Duration) -> Self {
        Self {
            store,
            source: source.into(),
            retention: retention.max(Duration::from_secs(1)),
            lease: Mutex::new(None),
        }
    }

    /// The default retention of DESIGN.md: 24 hours.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

    async fn lease(&self) -> Result<i64> {
        let mut guard = self.lease.lock().await;
        if let Some((id, granted)) = *guard {
            if granted.elapsed() < LEASE_REUSE {
                return Ok(id);
            }
        }
        let id = self.store.grant_lease(self.retention + LEASE_REUSE).await?;
        *guard = Some((id, Instant::now()));
        Ok(id)
    }

    /// Records an event of `pool`. Fills in the time and source. On failure the event is
    /// lost but the caller goes on: events are a record, never a reason to stop.
    pub async fn record(
        &self,
        pool: &str,
        kind: &str,
        severity: Severity,
        zone: &str,
        instance: &str,
        message: impl Into<String>,
    ) -> Result<()> {
        let event = Event {
            unix_ms: now_unix_ms(),
            kind: kind.to_string(),
            zone: zone.to_string(),
            instance: instance.to_string(),
            message: message.into(),
            source: self.source.clone(),
            severity: severity as i32,
        };
        let seq = format!("{:013}-{:08x}", event.unix_ms, rand::rng().random::<u32>());
        let key = self.store.keys().event(pool, &seq)?;
        let lease = self.lease().await?;
        match self.store.put(&key, &event, lease).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // The lease may be gone (etcd restored, revoked): grant a new one next time.
                *self.lease.lock().await = None;
                Err(e)
            }
        }
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
