//! `pmctl zone exhaust|clear`: set or remove a zone's exhaustion mark by hand.
//!
//! The mark is the same key the scheduler leader writes after a stockout, bound to a lease
//! whose TTL is the duration, so etcd removes it when the time is up and no process has to
//! stay around. The scheduler watches these keys and moves the zone's deficit elsewhere.

use std::time::Duration;

use pm_etcd::etcd_client::LeaseTimeToLiveOptions;
use pm_etcd::{now_unix_ms, Store};
use pm_proto::{ExhaustionClass, PoolConfig, Severity, ZoneExhaustion};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::events::record;
use crate::output::{self, OutputFormat, Render};
use crate::status::Exhaustion;

/// What `pmctl zone exhaust` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExhaustView {
    /// The pool.
    pub pool: String,
    /// The zone.
    pub zone: String,
    /// The mark written.
    pub exhausted: Exhaustion,
    /// The lease the mark is bound to.
    pub lease: i64,
}

impl Render for ExhaustView {
    fn table(&self) -> String {
        format!(
            "zone {} of pool {}: exhausted until {}\n",
            self.zone,
            self.pool,
            self.exhausted.until_text()
        )
    }
}

/// What `pmctl zone clear` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClearView {
    /// The pool.
    pub pool: String,
    /// The zone.
    pub zone: String,
    /// Whether there was a mark to remove.
    pub cleared: bool,
}

impl Render for ClearView {
    fn table(&self) -> String {
        if self.cleared {
            format!(
                "zone {} of pool {}: exhaustion cleared\n",
                self.zone, self.pool
            )
        } else {
            format!(
                "zone {} of pool {} was not exhausted; nothing to clear\n",
                self.zone, self.pool
            )
        }
    }
}

/// The pool's config, which must exist and not be deleted, with `zone` allowed.
async fn usable_config(store: &Store, pool: &str, zone: &str) -> Result<PoolConfig> {
    let key = store.keys().pool_config(pool)?;
    let Some(config) = store.get::<PoolConfig>(&key).await? else {
        return Err(Error::NoSuchPool {
            pool: pool.to_string(),
        });
    };
    let config = config.value;
    if config.deleted {
        return Err(Error::Refused(format!(
            "pool {pool:?} is being deleted; its zones no longer matter"
        )));
    }
    if !config.allowed_zones.iter().any(|z| z == zone) {
        return Err(Error::Refused(format!(
            "zone {zone:?} is not one of pool {pool:?}'s allowedZones ({})",
            config.allowed_zones.join(", ")
        )));
    }
    Ok(config)
}

/// Revokes `lease` if no key is bound to it any more, so a replaced or cleared mark leaves
/// no lease behind. A lease still holding keys is left alone.
async fn revoke_if_unused(store: &Store, lease: i64) {
    if lease == 0 {
        return;
    }
    let mut leases = store.client().lease_client();
    let options = LeaseTimeToLiveOptions::new().with_keys();
    match leases.time_to_live(lease, Some(options)).await {
        Ok(ttl) if ttl.keys().is_empty() && ttl.ttl() > 0 => {
            if let Err(e) = leases.revoke(lease).await {
                tracing::debug!(lease, error = %e, "could not revoke an unused lease");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(lease, error = %e, "could not look up a lease"),
    }
}

/// `pmctl zone exhaust POOL ZONE --for DURATION`.
pub async fn exhaust(
    store: &Store,
    pool: &str,
    zone: &str,
    duration: Duration,
    format: OutputFormat,
) -> Result<()> {
    usable_config(store, pool, zone).await?;
    let key = store.keys().exhausted(pool, zone)?;
    let previous = store.get::<ZoneExhaustion>(&key).await.ok().flatten();
    // Whole seconds, as the lease has them.
    let ttl = Duration::from_secs(duration.as_secs_f64().ceil() as u64);
    let lease = store.grant_lease(ttl).await?;
    let since = now_unix_ms();
    let mark = ZoneExhaustion {
        since_unix_ms: since,
        until_unix_ms: since + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        backoff_multiplier: 1,
        reason: "manual".into(),
        set_by: crate::events::SOURCE.into(),
        class: ExhaustionClass::Stockout as i32,
    };
    store.put(&key, &mark, lease).await?;
    if let Some(previous) = previous {
        revoke_if_unused(store, previous.lease).await;
    }
    record(
        store,
        pool,
        "zone-exhausted",
        Severity::Warning,
        zone,
        format!(
            "zone marked exhausted by hand for {}",
            output::span(ttl.as_secs() as i64)
        ),
    )
    .await;
    let view = ExhaustView {
        pool: pool.to_string(),
        zone: zone.to_string(),
        exhausted: Exhaustion::new(&mark, since),
        lease,
    };
    output::emit(format, &view)
}

/// `pmctl zone clear POOL ZONE`. Clearing a zone that is not exhausted succeeds.
pub async fn clear(store: &Store, pool: &str, zone: &str, format: OutputFormat) -> Result<()> {
    let key = store.keys().exhausted(pool, zone)?;
    let current = store.get::<ZoneExhaustion>(&key).await?;
    let cleared = match &current {
        Some(mark) => {
            // A mark replaced meanwhile is someone else's fresh decision: leave it.
            match store.delete_if_revision(&key, mark.mod_revision).await {
                Ok(_) => true,
                Err(pm_etcd::Error::Conflict { .. }) => {
                    return Err(Error::Refused(format!(
                        "the exhaustion of zone {zone:?} of pool {pool:?} changed while clearing it; run the command again"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => false,
    };
    if let Some(mark) = current {
        revoke_if_unused(store, mark.lease).await;
        record(
            store,
            pool,
            "zone-cleared",
            Severity::Info,
            zone,
            "zone exhaustion cleared by hand".into(),
        )
        .await;
    }
    let view = ClearView {
        pool: pool.to_string(),
        zone: zone.to_string(),
        cleared,
    };
    output::emit(format, &view)
}
