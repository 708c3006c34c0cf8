//! An event about one pool that the leader records: decided by pure code, written by the
//! leader afterwards, so the decisions are tested without etcd.

use pm_etcd::EventLog;
use pm_proto::Severity;

/// One event of a pool, as `pmctl events` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEvent {
    /// The pool it is about.
    pub pool: String,
    /// What happened, e.g. `zone-exhausted`: stable, for filtering.
    pub kind: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// The zone it is about; empty for the whole pool.
    pub zone: String,
    /// What happened, for people.
    pub message: String,
}

impl PoolEvent {
    /// An event about the whole pool.
    pub fn pool(
        pool: &str,
        kind: &'static str,
        severity: Severity,
        message: impl Into<String>,
    ) -> Self {
        Self::zone(pool, kind, severity, "", message)
    }

    /// An event about one zone of the pool.
    pub fn zone(
        pool: &str,
        kind: &'static str,
        severity: Severity,
        zone: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            pool: pool.to_string(),
            kind,
            severity,
            zone: zone.to_string(),
            message: message.into(),
        }
    }

    /// Logs the event and records it in `log` (logging instead when etcd refuses it).
    pub async fn emit(&self, log: &EventLog) {
        log.emit(
            &self.pool,
            self.kind,
            self.severity,
            &self.zone,
            "",
            self.message.as_str(),
        )
        .await;
    }
}
