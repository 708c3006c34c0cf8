//! What the active agent knows of each pool in its zone: the config, the zone's desired
//! count and exhaustion mark, the observed keys (from etcd's listing and watch), the
//! operations in flight, why creates are paused, and when the pool is due next.
//!
//! Every stored config is checked with [`pm_pool::check_stored`], the rules pmctl
//! applies: a config that fails, or does not decode, leaves the pool as it was, and its
//! problem is reported once as an event.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_backoff::{Attempts, Backoff};
use pm_etcd::{decode, Key, Keyspace, StoredKey, WatchBatch, WatchEvent};
use pm_pool::Problem;
use pm_proto::{ObservedInstance, PoolConfig, ZoneDesired};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::decide::InFlight;

/// Back-off of a pool's creates after quota, rate-limit and transient errors.
pub const CREATE_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_secs(1), Duration::from_secs(120));

/// Why creates in a pool are paused.
#[derive(Debug, Clone)]
pub struct CreatePause {
    /// Until when.
    pub until: Instant,
    /// What caused it, for logs.
    pub reason: String,
    /// A stockout pause also ends when the scheduler's exhausted key goes away.
    pub stockout: bool,
}

/// One pool as the agent of this zone sees it.
pub struct PoolState {
    /// The last valid config; `None` until one is read (nothing is done without it).
    pub config: Option<PoolConfig>,
    /// Why the stored config was refused, while it is; reported once.
    pub config_problem: Option<String>,
    /// Whether `config_problem` has been reported.
    pub config_problem_reported: bool,
    /// Desired count for this zone; `None`: the scheduler has not placed the pool here,
    /// so nothing is created or scaled down.
    pub desired: Option<ZoneDesired>,
    /// Whether the exhausted key of this zone exists.
    pub exhausted: bool,
    /// Observed keys with the revision they were last written at.
    pub observed: BTreeMap<String, (ObservedInstance, i64)>,
    /// Revisions at which observed keys were removed, until the watch has passed them.
    pub removed: BTreeMap<String, i64>,
    /// Operations in flight by instance name; they count in decisions.
    pub in_flight: BTreeMap<String, InFlight>,
    /// Creates paused, and why.
    pub pause: Option<CreatePause>,
    /// Growing delays after create failures; reset on success.
    pub retry: Attempts,
    /// When to list GCE for this pool next.
    pub next_sync: Instant,
    /// The last problem reported as an event, so it is reported once, not every sync.
    pub reported: Option<String>,
    /// Instances already logged for a status pm does not know (logged once each).
    pub unrecognized_logged: BTreeSet<String>,
    /// Fresh creates still waiting for a slot give up when this fires (a stockout in the
    /// zone): their inserts would only fail too. Replaced after it fires.
    pub create_gate: CancellationToken,
}

impl Default for PoolState {
    fn default() -> Self {
        Self {
            config: None,
            config_problem: None,
            config_problem_reported: false,
            desired: None,
            exhausted: false,
            observed: BTreeMap::new(),
            removed: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            pause: None,
            retry: CREATE_BACKOFF.attempts(),
            next_sync: Instant::now(),
            reported: None,
            unrecognized_logged: BTreeSet::new(),
            create_gate: CancellationToken::new(),
        }
    }
}

impl PoolState {
    /// The newest revision this view knows of `name`'s key, written or removed.
    fn known_revision(&self, name: &str) -> i64 {
        let observed = self.observed.get(name).map_or(0, |(_, rev)| *rev);
        observed.max(self.removed.get(name).copied().unwrap_or(0))
    }

    /// The resync period (`secondsToRest`).
    pub fn rest(&self) -> Duration {
        self.config
            .as_ref()
            .map_or_else(|| pm_pool::rest(&PoolConfig::default()), pm_pool::rest)
    }

    /// The base back-off of a stockout (`secondsForExhaustion`).
    pub fn exhaustion_base(&self) -> Duration {
        self.config.as_ref().map_or_else(
            || pm_pool::exhaustion_base(&PoolConfig::default()),
            pm_pool::exhaustion_base,
        )
    }

    /// Brings the next pass forward to within `within` from now.
    pub fn wake_within(&mut self, within: Duration) {
        self.next_sync = self.next_sync.min(Instant::now() + within);
    }

    /// Holds the next pass off until at least `at`.
    pub fn hold_until(&mut self, at: Instant) {
        self.next_sync = self.next_sync.max(at);
    }

    /// Pauses creates for `for_`, and passes again when the pause ends.
    pub fn pause_creates(&mut self, for_: Duration, reason: String, stockout: bool) {
        tracing::info!(?for_, %reason, "pausing creates");
        let until = Instant::now() + for_;
        self.pause = Some(CreatePause {
            until,
            reason,
            stockout,
        });
        self.next_sync = self.next_sync.min(until);
    }

    /// Records what the agent itself wrote to (`Some`) or removed from (`None`) the
    /// observed key `name`, at `revision`.
    pub fn record_written(&mut self, name: &str, value: Option<ObservedInstance>, revision: i64) {
        match value {
            Some(o) => {
                self.removed.remove(name);
                self.observed.insert(name.to_string(), (o, revision));
            }
            None => {
                self.observed.remove(name);
                self.removed.insert(name.to_string(), revision);
            }
        }
    }

    /// Whether the agent of `zone` has anything to do for this pool.
    pub fn concerns(&self, zone: &str) -> bool {
        let allowed = self
            .config
            .as_ref()
            .is_some_and(|c| c.allowed_zones.iter().any(|z| z == zone));
        allowed || self.desired.is_some() || !self.observed.is_empty()
    }

    /// Whether nothing of the pool is left in etcd: the agent can forget it. A pool
    /// whose only config was refused stays, so that its problem is reported.
    pub fn is_gone(&self) -> bool {
        self.config.is_none()
            && self.config_problem.is_none()
            && self.observed.is_empty()
            && self.desired.is_none()
    }

    fn set_config(&mut self, pool: &str, config: Result<PoolConfig, String>) {
        let config = config.and_then(|c| match pm_pool::check_stored(pool, &c) {
            Ok(()) => Ok(c),
            Err(problems) => Err(Problem::joined(&problems)),
        });
        match config {
            Ok(config) => {
                self.config_problem = None;
                if self.config.as_ref() != Some(&config) {
                    self.config = Some(config);
                    self.pause = self.pause.take().filter(|p| p.stockout);
                    self.reported = None;
                    self.wake_within(Duration::ZERO);
                }
            }
            Err(problem) => {
                tracing::warn!(%pool, %problem, "refusing the stored config; keeping the last valid one");
                if self.config_problem.as_ref() != Some(&problem) {
                    self.config_problem = Some(problem);
                    self.config_problem_reported = false;
                    self.wake_within(Duration::ZERO);
                }
            }
        }
    }
}

/// Every pool the agent of one zone follows, fed from etcd.
pub struct Pools {
    /// The zone served; keys of other zones are ignored.
    zone: String,
    /// To parse keys.
    keys: Keyspace,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolState>,
}

impl Pools {
    /// No pools yet, for the agent of `zone`.
    pub fn new(zone: &str, keys: Keyspace) -> Self {
        Self {
            zone: zone.to_string(),
            keys,
            pools: BTreeMap::new(),
        }
    }

    fn parse(&self, raw: &str) -> Option<Key> {
        let key = self.keys.parse(raw.as_bytes()).ok()?;
        match key.zone() {
            Some(zone) if zone != self.zone => None,
            _ => Some(key),
        }
    }

    fn pool(&mut self, pool: String) -> &mut PoolState {
        self.pools.entry(pool).or_default()
    }

    /// Applies a watch batch (or a re-listing after compaction).
    pub fn apply_batch(&mut self, batch: WatchBatch) {
        match batch {
            WatchBatch::Events(events) => {
                for event in events {
                    match event {
                        WatchEvent::Put(kv) => self.apply_put(&kv),
                        WatchEvent::Delete { key, mod_revision } => {
                            self.apply_delete(&key, mod_revision)
                        }
                    }
                }
            }
            WatchBatch::Resync { keys, .. } => self.resync(&keys),
        }
    }

    /// Rebuilds the view from a full listing. A pool keeps its last valid config when the
    /// listing holds a config that is refused; one whose config key is gone loses it.
    pub fn resync(&mut self, listing: &[StoredKey]) {
        for pool in self.pools.values_mut() {
            pool.desired = None;
            pool.exhausted = false;
            pool.observed.clear();
            pool.removed.clear();
        }
        let mut configured = BTreeSet::new();
        for kv in listing {
            if let Some(Key::PoolConfig { pool }) = self.parse(&kv.key) {
                configured.insert(pool);
            }
            self.apply_put(kv);
        }
        for (name, pool) in &mut self.pools {
            if !configured.contains(name) {
                pool.config = None;
            }
        }
    }

    /// Applies one key written.
    pub fn apply_put(&mut self, kv: &StoredKey) {
        let Some(key) = self.parse(&kv.key) else {
            return;
        };
        let skip =
            |e: pm_etcd::Error| tracing::warn!(error = %e, "skipping a value that does not decode");
        match key {
            Key::PoolConfig { pool } => {
                let config = decode::<PoolConfig>(&kv.key, &kv.value).map_err(|e| e.to_string());
                self.pool(pool.clone()).set_config(&pool, config);
            }
            Key::ZoneDesired { pool, .. } => match decode::<ZoneDesired>(&kv.key, &kv.value) {
                Ok(desired) => {
                    let state = self.pool(pool);
                    let changed = state.desired.as_ref().map(|d| (d.count, d.accept_new))
                        != Some((desired.count, desired.accept_new));
                    state.desired = Some(desired);
                    if changed {
                        state.wake_within(Duration::ZERO);
                    }
                }
                Err(e) => skip(e),
            },
            Key::Exhausted { pool, .. } => self.pool(pool).exhausted = true,
            Key::Instance { pool, name, .. } => {
                match decode::<ObservedInstance>(&kv.key, &kv.value) {
                    Ok(observed) => {
                        let state = self.pool(pool);
                        if kv.mod_revision > state.known_revision(&name) {
                            state.removed.remove(&name);
                            state.observed.insert(name, (observed, kv.mod_revision));
                        }
                    }
                    Err(e) => skip(e),
                }
            }
            Key::Report { .. } | Key::Event { .. } | Key::AgentMember { .. } => {}
        }
    }

    /// Applies one key deleted at `revision`.
    pub fn apply_delete(&mut self, raw: &str, revision: i64) {
        let Some(key) = self.parse(raw) else {
            return;
        };
        let Some(pool) = key.pool().map(str::to_string) else {
            return;
        };
        let Some(state) = self.pools.get_mut(&pool) else {
            return;
        };
        match key {
            Key::PoolConfig { .. } => {
                state.config = None;
                state.config_problem = None;
            }
            Key::ZoneDesired { .. } => state.desired = None,
            Key::Exhausted { .. } => {
                state.exhausted = false;
                if state.pause.as_ref().is_some_and(|p| p.stockout) {
                    state.pause = None;
                }
                state.wake_within(Duration::ZERO);
            }
            Key::Instance { name, .. } => {
                if revision > state.known_revision(&name) {
                    state.observed.remove(&name);
                    state.removed.insert(name, revision);
                }
            }
            Key::Report { .. } | Key::Event { .. } | Key::AgentMember { .. } => {}
        }
    }

    /// Forgets removals the watch has passed (`horizon`: its next revision).
    pub fn forget_removed_before(&mut self, horizon: i64) {
        for pool in self.pools.values_mut() {
            pool.removed.retain(|_, rev| *rev >= horizon);
        }
    }
}
