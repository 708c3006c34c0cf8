//! The agent's watches: per pool, its config key and its keys of the agent's zone.
//!
//! A watch of all of `pools/` would hand every agent every other zone's changes: with Z
//! zones, etcd sends and each agent decodes Z times what it needs, and the total grows
//! with the square of the zones. So an agent follows two spans per pool, each with its own
//! [`ResumableWatch`], and finds new pools every [`DISCOVERY`] by reading the gaps
//! between the pools it follows ([`pm_etcd::Store::new_pools`], one small read per pool).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::select_all;
use pm_etcd::{ResumableWatch, Store, WatchBatch, WatchRange};
use pm_telemetry::{Readiness, WATCH_CONDITION};

/// How often the agent looks for pools it does not follow yet.
pub const DISCOVERY: Duration = Duration::from_secs(1);

/// One followed span `[start, end)`.
struct Span {
    start: String,
    end: Vec<u8>,
    watch: ResumableWatch,
}

/// What one watch heard.
pub struct Heard {
    /// The span's first key.
    pub start: String,
    /// The end of the span, exclusive.
    pub end: Vec<u8>,
    /// Its changes.
    pub batch: WatchBatch,
}

/// The watches of the pools followed in one zone.
pub struct ZoneWatches {
    store: Store,
    zone: String,
    readiness: Readiness,
    pools: BTreeMap<String, Vec<Span>>,
}

impl ZoneWatches {
    /// No watches yet, for the agent of `zone`.
    pub fn new(store: Store, zone: &str, readiness: Readiness) -> Self {
        Self {
            store,
            zone: zone.to_string(),
            readiness,
            pools: BTreeMap::new(),
        }
    }

    /// The pools followed.
    pub fn followed(&self) -> BTreeSet<String> {
        self.pools.keys().cloned().collect()
    }

    /// Follows `pool` from `revision` on (a listing's revision + 1); a pool followed
    /// already keeps its watches.
    pub fn follow(&mut self, pool: &str, revision: i64) -> pm_etcd::Result<()> {
        if self.pools.contains_key(pool) {
            return Ok(());
        }
        let spans = self.store.keys().zone_spans(pool, &self.zone)?;
        let [(config, config_end), (zone, zone_end)] = spans;
        let client = self.store.client().clone();
        let reporter = || self.readiness.reporter(WATCH_CONDITION);
        let config_watch =
            ResumableWatch::new(client.clone(), WatchRange::Key(config.clone()), revision)
                .with_health(reporter());
        let zone_watch = ResumableWatch::new(client, WatchRange::Prefix(zone.clone()), revision)
            .with_health(reporter());
        let spans = vec![
            Span {
                start: config,
                end: config_end,
                watch: config_watch,
            },
            Span {
                start: zone,
                end: zone_end,
                watch: zone_watch,
            },
        ];
        self.pools.insert(pool.to_string(), spans);
        Ok(())
    }

    /// Stops following `pool`.
    pub fn forget(&mut self, pool: &str) {
        self.pools.remove(pool);
    }

    /// The next changes any watch heard; pending while no pool is followed. Cancel-safe,
    /// as [`ResumableWatch::next`] is.
    pub async fn next(&mut self) -> pm_etcd::Result<Heard> {
        // Collected first: a lazy map of borrowing futures does not prove Send.
        let nexts: Vec<_> = self
            .pools
            .values_mut()
            .flatten()
            .map(|span| {
                Box::pin(async move {
                    let batch = span.watch.next().await;
                    (span.start.clone(), span.end.clone(), batch)
                })
            })
            .collect();
        if nexts.is_empty() {
            return std::future::pending().await;
        }
        let ((start, end, batch), _, _) = select_all(nexts).await;
        Ok(Heard {
            start,
            end,
            batch: batch?,
        })
    }
}
