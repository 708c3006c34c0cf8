//! The readiness probe of etcd: a cheap read, repeated, that sets the `etcd` condition.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use pm_daemon::EtcdArgs;
use pm_etcd::etcd_client::GetOptions;
use pm_etcd::range::largest_reply_bytes;
use pm_etcd::Store;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::metric::EtcdErrorLabels;
use crate::readiness::Readiness;

/// The readiness condition the probe sets.
pub const ETCD_CONDITION: &str = "etcd";

/// How often etcd is probed; readiness follows etcd within about this long.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for one probe's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads one key (counting only, so nothing is transferred) every [`PROBE_INTERVAL`]
/// until `shutdown`: an answer marks the [`ETCD_CONDITION`] met, a failure or no answer
/// within 2 s marks it unmet and counts an etcd error with `op="probe"`. Each time it
/// also sets `largest` to the largest etcd reply the process received so far.
pub async fn probe_etcd(
    store: Store,
    readiness: Readiness,
    errors: Family<EtcdErrorLabels, Counter>,
    largest: Gauge,
    shutdown: CancellationToken,
) {
    let key = store.keys().root().to_string();
    let mut kv = store.client().kv_client();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        largest.set(i64::try_from(largest_reply_bytes()).unwrap_or(i64::MAX));
        let request = kv.get(key.as_str(), Some(GetOptions::new().with_count_only()));
        let failure = match tokio::time::timeout(PROBE_TIMEOUT, request).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("etcd request failed: {e}")),
            Err(_) => Some(format!("no answer from etcd within {PROBE_TIMEOUT:?}")),
        };
        match failure {
            None => readiness.met(ETCD_CONDITION),
            Some(reason) => {
                errors.get_or_create(&EtcdErrorLabels { op: "probe" }).inc();
                readiness.unmet(ETCD_CONDITION, reason);
            }
        }
    }
}

/// How a daemon starts: it serves `/metrics`, `/healthz` and `/readyz` at `metrics` when
/// given, waits until etcd answers, and from then on keeps the `etcd` readiness condition
/// following etcd and `largest` ([`crate::ETCD_LARGEST_REPLY`]) up to date.
/// `Ok(None)`: `shutdown` fired before etcd answered. `Err`: the
/// `metrics` address could not be bound.
pub async fn serve_then_connect(
    metrics: Option<SocketAddr>,
    registry: Registry,
    readiness: &Readiness,
    etcd_errors: Family<EtcdErrorLabels, Counter>,
    largest: Gauge,
    etcd: &EtcdArgs,
    shutdown: &CancellationToken,
) -> Result<Option<Store>, (SocketAddr, io::Error)> {
    readiness.unmet(ETCD_CONDITION, "not connected to etcd yet");
    if let Some(addr) = metrics {
        crate::serve(addr, registry, readiness.clone(), shutdown.clone())
            .await
            .map_err(|source| (addr, source))?;
    }
    let Some(store) = etcd.store_when_reachable(shutdown).await else {
        return Ok(None);
    };
    if metrics.is_some() {
        tokio::spawn(probe_etcd(
            store.clone(),
            readiness.clone(),
            etcd_errors,
            largest,
            shutdown.clone(),
        ));
    }
    Ok(Some(store))
}
