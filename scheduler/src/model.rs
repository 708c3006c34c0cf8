//! The leader's model of the keyspace: pm-etcd's keyspace view of the pools
//! ([`PoolsView`], fed by listings, watch batches and the leader's own writes) and, beside
//! it, what is the scheduler's own: each zone's instance counts ([`ZoneCounts`], kept up
//! to date from the view's changes, never recounted per event), each pool's last valid
//! config (stored configs are checked with [`pm_pool::check_stored`]), the pools changed
//! since the last pass, notices, and the agents: registered, and those that reconcile
//! (an active agent whose member key says it completes passes, `AgentInfo.reconciling`).
//!
//! [`Model::pool`] assembles one pool's [`PoolView`], what placement and exhaustion read.
//! Values that do not decode are logged and skipped, so one bad key never stops the
//! scheduler; an undecodable stockout report still counts as a stockout.

use std::collections::{BTreeMap, BTreeSet};

use pm_etcd::{Change, Key, Keyspace, PoolsView, StoredKey, Value, WatchBatch, WatchEvent};
use pm_proto::{
    AgentInfo, ExhaustionReport, InstanceState, ObservedInstance, PoolConfig, Rollout, Witnessed,
    ZoneDesired, ZoneExhaustion,
};

pub use pm_pool::{is_live, ObservedStatus};

/// What the scheduler counts of one revision's observed instances in a zone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RevisionCounts {
    /// Instance keys of the revision, whatever their state: the zone holds the revision
    /// until the last one goes.
    pub instances: u64,
    /// Those RUNNING and not preempted.
    pub running: u64,
}

/// What the scheduler counts of one zone's observed instances.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ZoneCounts {
    /// Live instances ([`is_live`]).
    pub live: u64,
    /// Live instances GCE confirmed (its insert finished, or a list showed it past
    /// PROVISIONING): what an exhausted zone really keeps, since its inserts in flight
    /// are about to fail.
    pub live_confirmed: u64,
    /// Instances by status, in the order of [`ObservedStatus::ALL`]; they sum to the
    /// zone's instance keys.
    pub by_status: [u64; 4],
    /// Latest creation time (Unix ms) of an instance seen RUNNING: the zone's last
    /// success.
    pub last_success_unix_ms: Option<u64>,
    /// Instances by revision (`""`: from before revisions).
    pub revisions: BTreeMap<String, RevisionCounts>,
    /// Instances by the project their key records (`""`: the pool's, from before
    /// projects were recorded).
    pub projects: BTreeMap<String, u64>,
}

impl ZoneCounts {
    /// Counts an instance key that appeared.
    pub fn add(&mut self, instance: &ObservedInstance) {
        let live = is_live(instance);
        self.live += u64::from(live);
        self.live_confirmed += u64::from(live && is_confirmed(instance));
        self.by_status[ObservedStatus::of(instance) as usize] += 1;
        let revision = self.revisions.entry(instance.revision.clone()).or_default();
        revision.instances += 1;
        revision.running += u64::from(is_running(instance));
        *self.projects.entry(instance.project.clone()).or_default() += 1;
        if instance.state() == InstanceState::Running {
            let created = u64::try_from(instance.created_unix_ms).unwrap_or_default();
            self.last_success_unix_ms = self.last_success_unix_ms.max(Some(created));
        }
    }

    /// Stops counting an instance key that went (or was replaced).
    pub fn remove(&mut self, instance: &ObservedInstance) {
        let live = is_live(instance);
        self.live = self.live.saturating_sub(u64::from(live));
        let confirmed = u64::from(live && is_confirmed(instance));
        self.live_confirmed = self.live_confirmed.saturating_sub(confirmed);
        let status = &mut self.by_status[ObservedStatus::of(instance) as usize];
        *status = status.saturating_sub(1);
        if let Some(revision) = self.revisions.get_mut(&instance.revision) {
            revision.instances = revision.instances.saturating_sub(1);
            revision.running = revision
                .running
                .saturating_sub(u64::from(is_running(instance)));
            if revision.instances == 0 {
                self.revisions.remove(&instance.revision);
            }
        }
        if let Some(count) = self.projects.get_mut(&instance.project) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.projects.remove(&instance.project);
            }
        }
    }

    /// Instances of any other revision than `revision`.
    pub fn other_revisions(&self, revision: &str) -> u64 {
        let others = self.revisions.iter().filter(|(r, _)| *r != revision);
        others.map(|(_, c)| c.instances).sum()
    }

    /// The number of observed instances in `status`.
    pub fn count(&self, status: ObservedStatus) -> u64 {
        self.by_status[status as usize]
    }

    /// The number of observed instances.
    pub fn instances(&self) -> u64 {
        self.by_status.iter().sum()
    }
}

/// Whether the instance is RUNNING and not preempted.
fn is_running(instance: &ObservedInstance) -> bool {
    ObservedStatus::of(instance) == ObservedStatus::Running
}

/// Whether GCE has the instance: its insert finished, or a list showed it past
/// PROVISIONING. An unconfirmed one is an insert in flight.
fn is_confirmed(instance: &ObservedInstance) -> bool {
    !instance.gce_id.is_empty()
        || !matches!(
            instance.state(),
            InstanceState::Provisioning | InstanceState::Unknown
        )
}

/// One zone of one pool, as placement and exhaustion read it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ZoneView {
    /// Its observed instances, counted.
    pub counts: ZoneCounts,
    /// The desired key as stored (or as last written by this leader).
    pub desired: Option<ZoneDesired>,
    /// The exhausted key, while it exists.
    pub exhausted: Option<ZoneExhaustion>,
    /// An agent's stockout report waiting to be handled.
    pub report: Option<ExhaustionReport>,
    /// Another zone's count of its live instances ([`crate::witness`]).
    pub witnessed: Option<Witnessed>,
    /// Its live VMs that `pmctl shed` asked to remove: they no longer count as kept.
    pub shedding: BTreeSet<String>,
}

/// One pool, as placement and exhaustion read it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PoolView {
    /// The last valid config; `None` when the key is absent (or no valid one was seen).
    pub config: Option<PoolConfig>,
    /// Whether the stored config was refused by [`pm_pool::check_stored`]: the pool
    /// keeps its last valid config, or, without one, is left as it is.
    pub config_refused: bool,
    /// Zones that have any key of this pool.
    pub zones: BTreeMap<String, ZoneView>,
    /// The rollout key, as stored (or as last written by this leader).
    pub rollout: Option<Rollout>,
}

impl PoolView {
    /// Whether the pool is being removed: tombstoned or without a config.
    pub fn is_deleted(&self) -> bool {
        self.config.as_ref().is_none_or(|c| c.deleted)
    }

    /// The zone view, created empty when absent.
    pub fn zone_mut(&mut self, zone: &str) -> &mut ZoneView {
        self.zones.entry(zone.to_string()).or_default()
    }

    /// Whether no instance key is left in any zone.
    pub fn has_no_instances(&self) -> bool {
        self.zones.values().all(|z| z.counts.instances() == 0)
    }
}

/// Something that happened to the view that the leader reports as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An exhausted key went away (its lease expired or it was cleared).
    ZoneUsable {
        /// Pool.
        pool: String,
        /// Zone.
        zone: String,
    },
    /// A stored config was refused (reported once per problem).
    ConfigRefused {
        /// Pool.
        pool: String,
        /// What is wrong.
        problem: String,
    },
}

/// What the scheduler keeps of one zone beside its keys.
#[derive(Debug, Default, Clone)]
struct ZoneState {
    /// Its instance keys, counted.
    counts: ZoneCounts,
    /// Whether its report key holds a value that does not decode: still a stockout.
    undecodable_report: bool,
}

/// What the scheduler keeps of one pool beside its keys: every pool that had a config,
/// an instance or an undecodable report since the leader last removed it has one.
#[derive(Debug, Default, Clone)]
struct PoolState {
    /// The last valid config; `None` when the key is absent (or no valid one was seen).
    config: Option<PoolConfig>,
    /// Whether the stored config is refused.
    config_refused: bool,
    /// Zones that had a key.
    zones: BTreeMap<String, ZoneState>,
}

/// The whole model.
#[derive(Debug)]
pub struct Model {
    /// To parse agent keys.
    keys: Keyspace,
    /// The pools' keys as last read or written.
    view: PoolsView,
    /// The scheduler's own state of each pool.
    pools: BTreeMap<String, PoolState>,
    /// Live agent members by zone; a zone without members is absent.
    pub agents: BTreeMap<String, BTreeSet<String>>,
    /// The members of each zone that say they reconcile; a zone without is absent.
    pub reconciling: BTreeMap<String, BTreeSet<String>>,
    /// Pools changed since the last `take_dirty`.
    dirty: BTreeSet<String>,
    /// The problem of each pool's refused config, kept across reloads so that it is
    /// reported once.
    refused: BTreeMap<String, String>,
    /// Notices gathered, until taken.
    notices: Vec<Notice>,
}

impl Model {
    /// An empty model of the keyspace `keys`.
    pub fn new(keys: Keyspace) -> Self {
        Self {
            view: PoolsView::new(keys.clone()),
            keys,
            pools: BTreeMap::new(),
            agents: BTreeMap::new(),
            reconciling: BTreeMap::new(),
            dirty: BTreeSet::new(),
            refused: BTreeMap::new(),
            notices: Vec::new(),
        }
    }

    /// Pools whose inputs changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    /// Notices gathered while applying changes (refused configs, usable zones) since the
    /// last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Marks every pool for recomputation.
    pub fn mark_all_dirty(&mut self) {
        let names = self.pool_names();
        self.dirty.extend(names);
    }

    /// Every pool with keys, or known since it last had some.
    pub fn pool_names(&self) -> BTreeSet<String> {
        let known = self.pools.keys().chain(self.view.pools().keys());
        known.cloned().collect()
    }

    /// One pool, assembled from its keys and what the scheduler keeps of it.
    pub fn pool(&self, pool: &str) -> Option<PoolView> {
        let keys = self.view.pool(pool);
        let own = self.pools.get(pool);
        if keys.is_none() && own.is_none() {
            return None;
        }
        let mut view = PoolView {
            config: own.and_then(|p| p.config.clone()),
            config_refused: own.is_some_and(|p| p.config_refused),
            zones: BTreeMap::new(),
            rollout: keys
                .and_then(|k| k.rollout.as_ref())
                .map(|r| r.value.clone()),
        };
        let own_zone = |zone: &str| own.and_then(|p| p.zones.get(zone));
        for (zone, zk) in keys.map(|k| &k.zones).into_iter().flatten() {
            view.zones.insert(
                zone.clone(),
                ZoneView {
                    counts: own_zone(zone).map(|z| z.counts.clone()).unwrap_or_default(),
                    desired: zk.desired.as_ref().map(|d| d.value.clone()),
                    exhausted: zk.exhausted.as_ref().map(|x| x.value.clone()),
                    report: zk.report.as_ref().map(|r| r.value.clone()),
                    witnessed: zk.witnessed.as_ref().map(|w| w.value.clone()),
                    shedding: zk
                        .drains
                        .iter()
                        .filter(|(name, request)| {
                            request.value.shed
                                && zk.instances.get(*name).is_some_and(|o| is_live(&o.value))
                        })
                        .map(|(name, _)| name.clone())
                        .collect(),
                },
            );
        }
        let undecodable = own.into_iter().flat_map(|p| &p.zones);
        for (zone, state) in undecodable.filter(|(_, z)| z.undecodable_report) {
            let zone_view = view.zone_mut(zone);
            zone_view.counts = state.counts.clone();
            zone_view.report = Some(ExhaustionReport {
                message: "undecodable report".into(),
                ..Default::default()
            });
        }
        Some(view)
    }

    /// Takes a listing of the pools prefix made at `revision`.
    pub fn load_pools(&mut self, listing: &[StoredKey], revision: i64) {
        let changes = self.view.load(listing, revision);
        self.take(changes);
        self.mark_all_dirty();
    }

    /// Replaces the agent part of the model with a listing of the agents prefix. Returns
    /// the zones whose membership changed.
    pub fn load_agents(&mut self, listing: &[StoredKey]) -> BTreeSet<String> {
        let before = std::mem::take(&mut self.agents);
        self.reconciling.clear();
        for kv in listing {
            self.agent_put(kv);
        }
        let mut changed = BTreeSet::new();
        for zone in before.keys().chain(self.agents.keys()) {
            if before.get(zone) != self.agents.get(zone) {
                changed.insert(zone.clone());
            }
        }
        self.mark_all_dirty();
        changed
    }

    /// Applies a watch batch of the pools prefix; returns what deserves an event.
    pub fn apply_pools(&mut self, batch: WatchBatch) -> Vec<Notice> {
        let resync = matches!(batch, WatchBatch::Resync { .. });
        let changes = self.view.apply(batch);
        self.take(changes);
        if resync {
            self.mark_all_dirty();
        }
        self.take_notices()
    }

    /// Applies a watch batch of the agents prefix.
    pub fn apply_agents(&mut self, batch: WatchBatch) {
        match batch {
            WatchBatch::Events(events) => {
                for event in events {
                    match event {
                        WatchEvent::Put(kv) => self.agent_put(&kv),
                        WatchEvent::Delete { key, .. } => self.agent_left(&key),
                    }
                }
            }
            WatchBatch::Resync { keys, .. } => {
                self.load_agents(&keys);
            }
        }
    }

    /// Records this leader's own write of `key` (`None`: deleted) at `revision`.
    pub fn record(
        &mut self,
        key: &Key,
        value: Option<Value>,
        revision: i64,
    ) -> pm_etcd::Result<()> {
        if let Key::Report { pool, zone } = key {
            self.report_decoded(pool, zone);
        }
        self.view.record(key, value, revision)
    }

    /// Records this leader's removal of every key of `pool` at `revision`, and forgets
    /// the pool.
    pub fn record_removed(&mut self, pool: &str, revision: i64) -> pm_etcd::Result<()> {
        self.pools.remove(pool);
        self.view.record_pool_deleted(pool, revision)
    }

    /// Keeps the scheduler's own state up to date with what the view changed.
    fn take(&mut self, changes: Vec<Change>) {
        for change in changes {
            if let Some(pool) = change.key().and_then(Key::pool) {
                self.dirty.insert(pool.to_string());
            }
            match change {
                Change::Put { key, old, new } => self.put(key, old, *new),
                Change::Delete { key, old } => self.deleted(key, old),
                Change::Undecodable { key, error } => {
                    tracing::warn!(%error, "skipping a value that does not decode");
                    match key {
                        Key::PoolConfig { pool } => self.put_config(pool, Err(error.to_string())),
                        Key::Report { pool, zone } => {
                            self.zone_state(&pool, &zone).undecodable_report = true;
                        }
                        _ => {}
                    }
                }
                Change::Malformed { error } => {
                    tracing::warn!(%error, "skipping a key outside pm's layout");
                }
            }
        }
    }

    fn put(&mut self, key: Key, old: Option<Value>, new: Value) {
        match (key, new) {
            (Key::PoolConfig { pool }, Value::Config(config)) => self.put_config(pool, Ok(config)),
            (Key::Instance { pool, zone, .. }, Value::Instance(new)) => {
                let counts = &mut self.zone_state(&pool, &zone).counts;
                if let Some(Value::Instance(old)) = old {
                    counts.remove(&old);
                }
                counts.add(&new);
            }
            (Key::Report { pool, zone }, _) => self.report_decoded(&pool, &zone),
            _ => {}
        }
    }

    fn deleted(&mut self, key: Key, old: Option<Value>) {
        match key {
            Key::PoolConfig { pool } => {
                self.refused.remove(&pool);
                if let Some(state) = self.pools.get_mut(&pool) {
                    state.config = None;
                    state.config_refused = false;
                }
            }
            Key::Instance { pool, zone, .. } => {
                if let Some(Value::Instance(old)) = old {
                    self.zone_state(&pool, &zone).counts.remove(&old);
                }
            }
            Key::Exhausted { pool, zone } => {
                if old.is_some() {
                    self.notices.push(Notice::ZoneUsable { pool, zone });
                }
            }
            Key::Report { pool, zone } => self.report_decoded(&pool, &zone),
            Key::ZoneDesired { .. }
            | Key::Rollout { .. }
            | Key::Witnessed { .. }
            | Key::DrainRequest { .. }
            | Key::DrainSlot { .. }
            | Key::Workflow { .. }
            | Key::Event { .. }
            | Key::AgentMember { .. } => {}
        }
    }

    /// The report key of the zone holds a decodable value, or none.
    fn report_decoded(&mut self, pool: &str, zone: &str) {
        let state = self.pools.get_mut(pool).and_then(|p| p.zones.get_mut(zone));
        if let Some(state) = state {
            state.undecodable_report = false;
        }
    }

    fn put_config(&mut self, pool: String, config: Result<PoolConfig, String>) {
        let config = config.and_then(|c| match pm_pool::check_stored(&pool, &c) {
            Ok(()) => Ok(c),
            Err(problems) => Err(pm_pool::Problem::joined(&problems)),
        });
        match config {
            Ok(config) => {
                self.refused.remove(&pool);
                let state = self.pool_state(&pool);
                state.config = Some(config);
                state.config_refused = false;
            }
            Err(problem) => {
                tracing::warn!(%pool, %problem, "refusing the stored config");
                self.pool_state(&pool).config_refused = true;
                if self.refused.get(&pool) != Some(&problem) {
                    self.refused.insert(pool.clone(), problem.clone());
                    self.notices.push(Notice::ConfigRefused { pool, problem });
                }
            }
        }
    }

    /// An agent's member key was written: it is registered, and reconciling as its
    /// value says (a value that does not decode says it is not; one without the field,
    /// from an agent older than it, counts as reconciling, as member keys did before).
    fn agent_put(&mut self, kv: &StoredKey) {
        if let Some((zone, agent_id)) = self.agent_key(&kv.key) {
            let reconciling = match pm_etcd::decode::<AgentInfo>(&kv.key, &kv.value) {
                Ok(info) => info.reconciling.unwrap_or(true),
                Err(error) => {
                    tracing::warn!(%error, "an agent member value does not decode");
                    false
                }
            };
            self.agents
                .entry(zone.clone())
                .or_default()
                .insert(agent_id.clone());
            if reconciling {
                self.reconciling.entry(zone).or_default().insert(agent_id);
            } else {
                drop_member(&mut self.reconciling, &zone, &agent_id);
            }
            self.mark_all_dirty();
        }
    }

    fn agent_left(&mut self, raw: &str) {
        if let Some((zone, agent_id)) = self.agent_key(raw) {
            drop_member(&mut self.agents, &zone, &agent_id);
            drop_member(&mut self.reconciling, &zone, &agent_id);
            self.mark_all_dirty();
        }
    }

    /// The zone and agent id of an agent member key; election keys, which live under the
    /// same prefix, are skipped silently, anything else malformed with a warning.
    fn agent_key(&self, raw: &str) -> Option<(String, String)> {
        match self.keys.parse(raw.as_bytes()) {
            Ok(Key::AgentMember { zone, agent_id }) => Some((zone, agent_id)),
            Ok(_) => None,
            Err(e) => {
                if !raw.contains("/election/") {
                    tracing::warn!(error = %e, "skipping a key outside pm's layout");
                }
                None
            }
        }
    }

    fn pool_state(&mut self, pool: &str) -> &mut PoolState {
        self.pools.entry(pool.to_string()).or_default()
    }

    fn zone_state(&mut self, pool: &str, zone: &str) -> &mut ZoneState {
        let state = self.pool_state(pool);
        state.zones.entry(zone.to_string()).or_default()
    }
}

/// Removes `agent_id` from the members of `zone`, and the zone once it has none.
fn drop_member(zones: &mut BTreeMap<String, BTreeSet<String>>, zone: &str, agent_id: &str) {
    if let Some(members) = zones.get_mut(zone) {
        members.remove(agent_id);
        if members.is_empty() {
            zones.remove(zone);
        }
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
