//! What the active agent knows of each pool in its zone: pm-etcd's keyspace view of the
//! zone ([`PoolsView::for_zone`]: the stored config, the zone's desired count and
//! exhaustion mark, the observed keys with their revisions, fed from etcd's listing and
//! watch, and the agent's own writes) and, beside it, what is the agent's own: the last
//! valid config, the operations in flight, why creates are paused, the back-offs of
//! failed lists, failed operations and throttled creates (each its own), and when the
//! pool is due next.
//!
//! Every stored config is checked with [`pm_pool::check_stored`], the rules pmctl
//! applies: a config that fails, or does not decode, leaves the pool as it was, and its
//! problem is reported once as an event. A change of the config, or of the desired
//! count, `accept_new` or witness requests, brings the pool's next pass forward to now; the exhausted key
//! going away ends a pause for the zone's own trouble (a stockout, a zone error).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_backoff::{Attempts, Backoff};
use pm_etcd::{Change, Key, Keyspace, PoolsView, StoredKey, Value, WatchBatch, ZoneKeys};
use pm_gce::error::GceError;
use pm_pool::Problem;
use pm_proto::{ObservedInstance, PoolConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::decide::InFlight;
use crate::reconcile::Report;
use crate::throttle::{self, Throttle};

/// Back-off of a pool's operations after transient errors (and of deletes after quota
/// and rate limits); quota and rate limits of creates have the throttle's own.
pub const CREATE_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_secs(1), Duration::from_secs(120));

/// Back-off of a pool's passes after failed lists.
pub const LIST_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_secs(1), Duration::from_secs(120));

/// Why creates in a pool are paused.
#[derive(Debug, Clone)]
pub struct CreatePause {
    /// Until when.
    pub until: Instant,
    /// What caused it, for logs.
    pub reason: String,
    /// A pause for the zone's own trouble (a stockout, a zone error) also ends when the
    /// scheduler's exhausted key goes away.
    pub ends_with_exhaustion: bool,
}

/// What the agent of this zone keeps of one pool beside the keyspace view.
pub struct PoolState {
    /// The last valid config; `None` until one is read (nothing is done without it).
    pub config: Option<PoolConfig>,
    /// Why the stored config was refused, while it is; reported once.
    pub config_problem: Option<String>,
    /// Whether `config_problem` has been reported.
    pub config_problem_reported: bool,
    /// Operations in flight by instance name; they count in decisions.
    pub in_flight: BTreeMap<String, InFlight>,
    /// Creates paused, and why.
    pub pause: Option<CreatePause>,
    /// Growing delays after failed operations ([`CREATE_BACKOFF`]); reset when a create
    /// succeeds.
    pub create_retry: Attempts,
    /// Growing delays after failed lists ([`LIST_BACKOFF`]); reset when a list succeeds.
    pub list_retry: Attempts,
    /// Creates throttled by quota or a rate limit: one probe, then a ramp.
    pub throttle: Throttle,
    /// When to list GCE for this pool next.
    pub next_sync: Instant,
    /// The last problem reported as an event, so it is reported once, not every sync.
    pub reported: Option<String>,
    /// Instances already logged for a status pm does not know (logged once each).
    pub unrecognized_logged: BTreeSet<String>,
    /// Fresh creates still waiting for a slot give up when this fires (a stockout in the
    /// zone): their inserts would only fail too. Replaced after it fires.
    pub create_gate: CancellationToken,
    /// VMs whose `setLabels` GCE refused for another reason than a changed fingerprint,
    /// reported once: a claim (adopt mode) leaves the VM alone, a drain goes on without
    /// its `pm-state=draining` label. Pruned to what each list shows.
    pub label_refused: BTreeSet<String>,
    /// The answer last written for each zone counted for the scheduler: live instances
    /// and the request answered ([`crate::witness`]).
    pub witnessed: BTreeMap<String, (u32, i64)>,
    /// The drains whose hook this term started, by VM and the drain's start: after a
    /// failover the next term runs an unfinished one again.
    pub drain_hooks_run: BTreeSet<(String, i64)>,
}

impl Default for PoolState {
    fn default() -> Self {
        Self {
            config: None,
            config_problem: None,
            config_problem_reported: false,
            in_flight: BTreeMap::new(),
            pause: None,
            create_retry: CREATE_BACKOFF.attempts(),
            list_retry: LIST_BACKOFF.attempts(),
            throttle: Throttle::default(),
            next_sync: Instant::now(),
            reported: None,
            unrecognized_logged: BTreeSet::new(),
            create_gate: CancellationToken::new(),
            label_refused: BTreeSet::new(),
            witnessed: BTreeMap::new(),
            drain_hooks_run: BTreeSet::new(),
        }
    }
}

impl PoolState {
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

    /// Pauses creates for `for_`, and passes again when the pause ends; with
    /// `ends_with_exhaustion`, also when the zone's exhausted key goes away.
    pub fn pause_creates(&mut self, for_: Duration, reason: String, ends_with_exhaustion: bool) {
        tracing::info!(?for_, %reason, "pausing creates");
        let until = Instant::now() + for_;
        self.pause = Some(CreatePause {
            until,
            reason,
            ends_with_exhaustion,
        });
        self.next_sync = self.next_sync.min(until);
    }

    /// Fresh creates still waiting for a slot give up (their inserts would only fail
    /// too); later creates get a new gate.
    pub fn cancel_queued_creates(&mut self) {
        std::mem::replace(&mut self.create_gate, CancellationToken::new()).cancel();
    }

    /// Quota or a rate limit refused a create or restart with `error`: the queued creates
    /// are cancelled and creates are throttled until the probe after the throttle's
    /// back-off (and the next list held as long, at most `secondsToRest`). Returns the
    /// event of entering the throttle when this refusal entered it.
    pub fn throttle_creates(&mut self, error: &GceError) -> Option<Report> {
        self.cancel_queued_creates();
        let refused = self.throttle.refused(error.class(), error.retry_after())?;
        self.pause_creates(refused.delay, format!("{:?}", error.class()), false);
        self.hold_until(Instant::now() + refused.delay.min(self.rest()));
        refused
            .entered
            .then(|| throttle::entered(error, refused.delay))
    }

    /// A create or restart succeeded: the operation back-off starts over and the
    /// throttle's window grows. Returns the event of leaving the throttle when this ends
    /// it.
    pub fn create_succeeded(&mut self) -> Option<Report> {
        self.create_retry.reset();
        self.reported = None;
        self.throttle.succeeded().map(throttle::left)
    }

    /// Whether the agent of `zone` has anything to do for this pool, whose keys in the
    /// zone are `keys`: the pool allows the zone, or has a desired count or observed
    /// instances there.
    pub fn concerns(&self, zone: &str, keys: &ZoneKeys) -> bool {
        let allowed = self
            .config
            .as_ref()
            .is_some_and(|c| c.allowed_zones.iter().any(|z| z == zone));
        allowed || keys.desired.is_some() || !keys.instances.is_empty()
    }

    /// Whether nothing of the pool is left in etcd (`keys`: its keys in the zone): the
    /// agent can forget it. A pool whose only config was refused stays, so that its
    /// problem is reported.
    pub fn is_gone(&self, keys: &ZoneKeys) -> bool {
        self.config.is_none()
            && self.config_problem.is_none()
            && keys.instances.is_empty()
            && keys.desired.is_none()
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
                    self.pause = self.pause.take().filter(|p| p.ends_with_exhaustion);
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

/// Every pool the agent of one zone follows: the view of the zone's keys, fed from etcd,
/// and the agent's own state of each pool.
pub struct Pools {
    /// The zone served.
    zone: String,
    /// The pools' keys in the zone (and every pool's config).
    view: PoolsView,
    /// The agent's own state by pool: every pool with a config, a refused config, or a
    /// key of the zone has one, until it is gone ([`PoolState::is_gone`]).
    pub pools: BTreeMap<String, PoolState>,
}

impl Pools {
    /// No pools yet, for the agent of `zone`.
    pub fn new(zone: &str, keys: Keyspace) -> Self {
        Self {
            zone: zone.to_string(),
            view: PoolsView::for_zone(keys, zone),
            pools: BTreeMap::new(),
        }
    }

    /// Takes a listing of the pools prefix made at `revision`.
    pub fn load(&mut self, listing: &[StoredKey], revision: i64) {
        let changes = self.view.load(listing, revision);
        self.take(changes);
    }

    /// Applies a batch of the watch of one span (a pool's config key, or its keys of the
    /// zone).
    pub fn apply_span(&mut self, batch: WatchBatch, span: (&str, &[u8])) {
        let changes = self.view.apply_span(batch, span);
        self.take(changes);
    }

    /// Takes a fresh listing of one span as the whole truth of it.
    pub fn load_span(&mut self, listing: &[StoredKey], revision: i64, span: (&str, &[u8])) {
        let changes = self.view.load_span(listing, revision, span);
        self.take(changes);
    }

    /// The keys of `pool` in the zone.
    pub fn zone_keys(&self, pool: &str) -> &ZoneKeys {
        self.view.zone(pool, &self.zone)
    }

    /// The agent's state of `pool` (created when absent) and the pool's keys in the zone.
    pub fn state_and_keys(&mut self, pool: &str) -> (&mut PoolState, &ZoneKeys) {
        let state = self.pools.entry(pool.to_string()).or_default();
        (state, self.view.zone(pool, &self.zone))
    }

    /// Whether any pool uses the zone.
    pub fn any_concerns_zone(&self) -> bool {
        self.pools
            .iter()
            .any(|(pool, state)| state.concerns(&self.zone, self.zone_keys(pool)))
    }

    /// Records what the agent itself wrote to (`Some`) or removed from (`None`) the
    /// observed key `name` of `pool`, at `revision`.
    pub fn record_written(
        &mut self,
        pool: &str,
        name: &str,
        value: Option<ObservedInstance>,
        revision: i64,
    ) -> pm_etcd::Result<()> {
        let key = Key::Instance {
            pool: pool.to_string(),
            zone: self.zone.clone(),
            name: name.to_string(),
        };
        self.view.record(&key, value.map(Value::Instance), revision)
    }

    fn pool(&mut self, pool: &str) -> &mut PoolState {
        self.pools.entry(pool.to_string()).or_default()
    }

    /// Keeps the agent's own state up to date with what the view changed.
    fn take(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Put { key, old, new } => self.put(&key, old, *new),
                Change::Delete { key, .. } => self.deleted(&key),
                Change::Undecodable {
                    key: Key::PoolConfig { pool },
                    error,
                } => self.pool(&pool).set_config(&pool, Err(error.to_string())),
                Change::Undecodable { error, .. } => {
                    tracing::warn!(error = %error, "skipping a value that does not decode");
                }
                Change::Malformed { .. } => {}
            }
        }
    }

    fn put(&mut self, key: &Key, old: Option<Value>, new: Value) {
        let Some(pool) = key.pool() else {
            return;
        };
        match (key, new) {
            (Key::PoolConfig { .. }, Value::Config(config)) => {
                self.pool(pool).set_config(pool, Ok(config));
            }
            (Key::ZoneDesired { .. }, Value::Desired(desired)) => {
                let before = match old {
                    Some(Value::Desired(d)) => Some((d.count, d.accept_new, d.witness)),
                    _ => None,
                };
                let state = self.pool(pool);
                let now = (desired.count, desired.accept_new, desired.witness);
                if before != Some(now) {
                    state.wake_within(Duration::ZERO);
                }
            }
            (Key::DrainRequest { .. }, _) => {
                self.pool(pool).wake_within(Duration::ZERO);
            }
            (Key::Exhausted { .. } | Key::Instance { .. }, _) => {
                self.pool(pool);
            }
            _ => {}
        }
    }

    fn deleted(&mut self, key: &Key) {
        let Some(state) = key.pool().and_then(|pool| self.pools.get_mut(pool)) else {
            return;
        };
        match key {
            Key::PoolConfig { .. } => {
                state.config = None;
                state.config_problem = None;
            }
            Key::Exhausted { .. } => {
                if state.pause.as_ref().is_some_and(|p| p.ends_with_exhaustion) {
                    state.pause = None;
                }
                state.wake_within(Duration::ZERO);
            }
            Key::ZoneDesired { .. }
            | Key::Rollout { .. }
            | Key::Instance { .. }
            | Key::Report { .. }
            | Key::Witnessed { .. }
            | Key::DrainRequest { .. }
            | Key::DrainSlot { .. }
            | Key::Workflow { .. }
            | Key::Event { .. }
            | Key::AgentMember { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use pm_etcd::testing::{self, stored};
    use pm_proto::{InstanceState, OnPreempted, ZoneDesired, ZoneExhaustion};
    use prost::Message;

    use super::*;

    const LATER: Duration = Duration::from_secs(3600);

    /// The span of every key.
    const ALL: (&str, &[u8]) = ("", &[0xff]);

    fn put(key: String, value: Vec<u8>, revision: i64) -> WatchBatch {
        WatchBatch::Events(vec![testing::put(key, value, revision)])
    }

    fn delete(key: String, revision: i64) -> WatchBatch {
        WatchBatch::Events(vec![testing::delete(key, revision)])
    }

    fn desired(count: i64, accept_new: bool, updated_unix_ms: i64) -> Vec<u8> {
        ZoneDesired {
            count,
            accept_new,
            updated_unix_ms,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn config(target: i64) -> PoolConfig {
        PoolConfig {
            target_vm_count: target,
            ..crate::reconcile::tests::config(OnPreempted::Delete)
        }
    }

    /// Pools of zone-a with the pool `web` configured, placed and exhausted, not due.
    fn pools() -> (Pools, Keyspace) {
        let ks = Keyspace::default();
        let mut pools = Pools::new("zone-a", ks.clone());
        pools.load(
            &[
                stored(ks.pool_config("web").unwrap(), config(2).encode_to_vec(), 2),
                stored(
                    ks.zone_desired("web", "zone-a").unwrap(),
                    desired(2, true, 1),
                    3,
                ),
                stored(
                    ks.exhausted("web", "zone-a").unwrap(),
                    ZoneExhaustion::default().encode_to_vec(),
                    4,
                ),
            ],
            4,
        );
        pools.pools.get_mut("web").unwrap().next_sync = Instant::now() + LATER;
        (pools, ks)
    }

    fn due_now(pools: &Pools) -> bool {
        pools.pools["web"].next_sync <= Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn desired_changes_wake_the_pool_only_when_count_or_accept_new_change() {
        let (mut pools, ks) = pools();
        let dk = ks.zone_desired("web", "zone-a").unwrap();
        assert!(pools.zone_keys("web").exhausted.is_some());
        pools.apply_span(put(dk.clone(), desired(2, true, 99), 5), ALL);
        assert!(!due_now(&pools), "only its bookkeeping changed");
        pools.apply_span(put(dk.clone(), desired(2, false, 99), 6), ALL);
        assert!(due_now(&pools), "accept_new changed");
        pools.pools.get_mut("web").unwrap().next_sync = Instant::now() + LATER;
        pools.apply_span(put(dk.clone(), desired(3, false, 99), 7), ALL);
        assert!(due_now(&pools), "the count changed");
        pools.pools.get_mut("web").unwrap().next_sync = Instant::now() + LATER;
        let other = ks.zone_desired("web", "zone-b").unwrap();
        pools.apply_span(put(other, desired(9, true, 1), 8), ALL);
        assert!(
            !due_now(&pools),
            "another zone's desired is not this agent's"
        );
        pools.apply_span(delete(dk, 9), ALL);
        assert!(pools.zone_keys("web").desired.is_none());
        assert!(
            !due_now(&pools),
            "a desired key going away waits for the pass"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stockout_pause_ends_when_the_exhausted_key_goes_away() {
        let (mut pools, ks) = pools();
        let state = pools.pools.get_mut("web").unwrap();
        state.pause_creates(LATER, "stockout".into(), true);
        state.next_sync = Instant::now() + LATER;
        pools.apply_span(delete(ks.exhausted("web", "zone-a").unwrap(), 5), ALL);
        let state = &pools.pools["web"];
        assert!(state.pause.is_none() && due_now(&pools));
        assert!(pools.zone_keys("web").exhausted.is_none());

        let state = pools.pools.get_mut("web").unwrap();
        state.pause_creates(LATER, "Quota".into(), false);
        let xk = ks.exhausted("web", "zone-a").unwrap();
        pools.apply_span(
            put(xk.clone(), ZoneExhaustion::default().encode_to_vec(), 6),
            ALL,
        );
        pools.apply_span(delete(xk, 7), ALL);
        assert!(
            pools.pools["web"].pause.is_some(),
            "a pause of another cause stays"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_change_wakes_the_pool_and_a_refused_one_keeps_the_last_valid() {
        let (mut pools, ks) = pools();
        let ck = ks.pool_config("web").unwrap();
        let state = pools.pools.get_mut("web").unwrap();
        state.pause_creates(LATER, "Quota".into(), false);
        state.reported = Some("cannot list".into());
        state.next_sync = Instant::now() + LATER;
        pools.apply_span(put(ck.clone(), config(2).encode_to_vec(), 5), ALL);
        assert!(!due_now(&pools), "the same config again changes nothing");
        pools.apply_span(put(ck.clone(), config(4).encode_to_vec(), 6), ALL);
        let state = &pools.pools["web"];
        assert!(due_now(&pools));
        assert!(state.pause.is_none() && state.reported.is_none());
        assert_eq!(state.config.as_ref().map(|c| c.target_vm_count), Some(4));

        pools.pools.get_mut("web").unwrap().next_sync = Instant::now() + LATER;
        pools.apply_span(put(ck.clone(), config(-1).encode_to_vec(), 7), ALL);
        let state = &pools.pools["web"];
        assert!(due_now(&pools), "a refused config is reported at once");
        assert_eq!(state.config.as_ref().map(|c| c.target_vm_count), Some(4));
        assert!(state.config_problem.is_some() && !state.config_problem_reported);
        let both = WatchBatch::Events(vec![
            testing::put(ck.clone(), config(5).encode_to_vec(), 8),
            testing::put(ck.clone(), config(-2).encode_to_vec(), 9),
        ]);
        pools.apply_span(both, ALL);
        let state = &pools.pools["web"];
        assert_eq!(
            state.config.as_ref().map(|c| c.target_vm_count),
            Some(5),
            "the last valid config of a batch is kept"
        );
        pools.apply_span(delete(ck, 10), ALL);
        let state = &pools.pools["web"];
        assert!(state.config.is_none() && state.config_problem.is_none());
        assert!(!state.is_gone(pools.zone_keys("web")), "placed here still");
    }

    #[tokio::test(start_paused = true)]
    async fn the_agents_own_writes_are_not_undone_by_stale_watch_events() {
        let (mut pools, ks) = pools();
        let ik = ks.instance("web", "zone-a", "web-a1").unwrap();
        let provisioning = ObservedInstance {
            state: InstanceState::Provisioning as i32,
            ..Default::default()
        };
        pools.apply_span(put(ik.clone(), provisioning.encode_to_vec(), 5), ALL);
        pools.record_written("web", "web-a1", None, 8).unwrap();
        pools.apply_span(put(ik.clone(), provisioning.encode_to_vec(), 6), ALL);
        assert!(pools.zone_keys("web").instances.is_empty());
        let running = ObservedInstance {
            state: InstanceState::Running as i32,
            ..Default::default()
        };
        pools
            .record_written("web", "web-a1", Some(running.clone()), 9)
            .unwrap();
        pools.apply_span(delete(ik, 8), ALL);
        let held = &pools.zone_keys("web").instances["web-a1"];
        assert_eq!((&held.value, held.mod_revision), (&running, 9));
    }
}
