//! The leader's in-memory view of the keyspace, fed by listings and watch events.
//!
//! The view is level state: applying the same key twice changes nothing, and a full
//! re-list rebuilds it. Values that do not decode are logged and skipped, so one bad key
//! never stops the scheduler.

use std::collections::{BTreeMap, BTreeSet};

use pm_etcd::{decode, Key, Keyspace, StoredKey, WatchBatch, WatchEvent};
use pm_proto::{
    ExhaustionReport, InstanceState, ObservedInstance, PoolConfig, ZoneDesired, ZoneExhaustion,
};

pub use pm_pool::{is_live, ObservedStatus};

/// What the view keeps of one observed instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceSummary {
    /// Whether it counts toward the zone's live instances ([`is_live`]).
    pub live: bool,
    /// How it shows in status counts.
    pub status: ObservedStatus,
    /// Whether GCE has it: its insert finished, or a list showed it past PROVISIONING.
    /// An unconfirmed one is an insert in flight, which in a stocked-out zone is about
    /// to fail.
    pub confirmed: bool,
}

/// One zone of one pool.
#[derive(Debug, Default, Clone)]
pub struct ZoneView {
    /// Observed instances by name. `live` is the number of those that are live.
    pub instances: BTreeMap<String, InstanceSummary>,
    /// Number of live instances; always equals the `true`s in `instances`.
    pub live: u64,
    /// Latest creation time (Unix ms) of a RUNNING instance: the zone's last success.
    pub last_success_unix_ms: Option<u64>,
    /// The desired key as stored (or as last written by this leader).
    pub desired: Option<ZoneDesired>,
    /// The revision `desired` is from; watch events older than it are echoes of writes
    /// this leader already applied, and are ignored.
    pub desired_revision: i64,
    /// The exhausted key, while it exists.
    pub exhausted: Option<ZoneExhaustion>,
    /// An agent's stockout report waiting to be handled.
    pub report: Option<ExhaustionReport>,
}

impl ZoneView {
    /// Takes a desired value (or its deletion) of `revision`, unless a newer one is held.
    pub fn set_desired(&mut self, desired: Option<ZoneDesired>, revision: i64) {
        if revision >= self.desired_revision {
            self.desired = desired;
            self.desired_revision = revision;
        }
    }

    /// Live instances GCE confirmed: what an exhausted zone really keeps, since its inserts
    /// in flight will fail.
    pub fn live_confirmed(&self) -> u64 {
        let n = self
            .instances
            .values()
            .filter(|i| i.live && i.confirmed)
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The number of observed instances in `status`.
    pub fn count(&self, status: ObservedStatus) -> u64 {
        let n = self
            .instances
            .values()
            .filter(|i| i.status == status)
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    fn set_instance(&mut self, name: &str, instance: Option<&ObservedInstance>) {
        let summary = instance.map(|i| InstanceSummary {
            live: is_live(i),
            status: ObservedStatus::of(i),
            confirmed: !i.gce_id.is_empty()
                || !matches!(
                    i.state(),
                    InstanceState::Provisioning | InstanceState::Unknown
                ),
        });
        let before = match summary {
            Some(s) => self.instances.insert(name.to_string(), s),
            None => self.instances.remove(name),
        };
        if before.is_some_and(|b| b.live) {
            self.live -= 1;
        }
        if summary.is_some_and(|s| s.live) {
            self.live += 1;
        }
        if let Some(i) = instance {
            if i.state() == InstanceState::Running {
                let created = u64::try_from(i.created_unix_ms).unwrap_or_default();
                self.last_success_unix_ms = self.last_success_unix_ms.max(Some(created));
            }
        }
    }
}

/// One pool.
#[derive(Debug, Default, Clone)]
pub struct PoolView {
    /// The last valid config; `None` when the key is absent (or no valid one was seen).
    pub config: Option<PoolConfig>,
    /// Whether the stored config was refused by [`pm_pool::check_stored`]: the pool
    /// keeps its last valid config, or, without one, is left as it is.
    pub config_refused: bool,
    /// Zones that have any key of this pool.
    pub zones: BTreeMap<String, ZoneView>,
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
        self.zones.values().all(|z| z.instances.is_empty())
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

/// The whole view.
#[derive(Debug, Default)]
pub struct Model {
    /// Pools by name.
    pub pools: BTreeMap<String, PoolView>,
    /// Live agent members by zone; a zone without members is absent.
    pub agents: BTreeMap<String, BTreeSet<String>>,
    /// Pools changed since the last `take_dirty`.
    dirty: BTreeSet<String>,
    /// The problem of each pool's refused config, kept across reloads so that it is
    /// reported once.
    refused: BTreeMap<String, String>,
    /// Notices of puts, until taken.
    notices: Vec<Notice>,
}

impl Model {
    /// Pools whose inputs changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    /// Notices gathered while applying puts (refused configs) since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Marks every pool for recomputation.
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.pools.keys().cloned());
    }

    /// Replaces the pool part of the view with a listing of the pools prefix.
    pub fn load_pools(&mut self, keys: &Keyspace, listing: &[StoredKey]) {
        self.pools.clear();
        for kv in listing {
            self.apply_put(keys, kv);
        }
        self.mark_all_dirty();
    }

    /// Replaces the agent part of the view with a listing of the agents prefix. Returns
    /// the zones whose membership changed.
    pub fn load_agents(&mut self, keys: &Keyspace, listing: &[StoredKey]) -> BTreeSet<String> {
        let before = std::mem::take(&mut self.agents);
        for kv in listing {
            self.apply_put(keys, kv);
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

    /// Applies a watch batch of either prefix; returns what deserves an event.
    pub fn apply(&mut self, keys: &Keyspace, batch: WatchBatch, prefix: &str) -> Vec<Notice> {
        match batch {
            WatchBatch::Events(events) => {
                for event in events {
                    match event {
                        WatchEvent::Put(kv) => self.apply_put(keys, &kv),
                        WatchEvent::Delete { key, mod_revision } => {
                            if let Some(notice) = self.apply_delete(keys, &key, mod_revision) {
                                self.notices.push(notice);
                            }
                        }
                    }
                }
            }
            WatchBatch::Resync { keys: listing, .. } => {
                if prefix == keys.agents_prefix() {
                    self.load_agents(keys, &listing);
                } else {
                    self.load_pools(keys, &listing);
                }
            }
        }
        self.take_notices()
    }

    fn put_config(&mut self, pool: String, config: Result<PoolConfig, String>) {
        let config = config.and_then(|c| match pm_pool::check_stored(&pool, &c) {
            Ok(()) => Ok(c),
            Err(problems) => Err(pm_pool::Problem::joined(&problems)),
        });
        match config {
            Ok(config) => {
                self.refused.remove(&pool);
                let view = self.pools.entry(pool).or_default();
                view.config = Some(config);
                view.config_refused = false;
            }
            Err(problem) => {
                tracing::warn!(%pool, %problem, "refusing the stored config");
                self.pools.entry(pool.clone()).or_default().config_refused = true;
                if self.refused.get(&pool) != Some(&problem) {
                    self.refused.insert(pool.clone(), problem.clone());
                    self.notices.push(Notice::ConfigRefused { pool, problem });
                }
            }
        }
    }

    fn apply_put(&mut self, keys: &Keyspace, kv: &StoredKey) {
        let Some(key) = parse(keys, &kv.key) else {
            return;
        };
        if let Some(pool) = key.pool() {
            self.dirty.insert(pool.to_string());
        }
        let bytes = &kv.value;
        let skipped = |e: pm_etcd::Error| {
            tracing::warn!(error = %e, "skipping a value that does not decode");
        };
        match key {
            Key::PoolConfig { pool } => {
                let config = decode::<PoolConfig>(&kv.key, bytes).map_err(|e| e.to_string());
                self.put_config(pool, config);
            }
            Key::ZoneDesired { pool, zone } => match decode::<ZoneDesired>(&kv.key, bytes) {
                Ok(d) => self
                    .pool_mut(&pool)
                    .zone_mut(&zone)
                    .set_desired(Some(d), kv.mod_revision),
                Err(e) => skipped(e),
            },
            Key::Instance { pool, zone, name } => {
                match decode::<ObservedInstance>(&kv.key, bytes) {
                    Ok(i) => self
                        .pool_mut(&pool)
                        .zone_mut(&zone)
                        .set_instance(&name, Some(&i)),
                    Err(e) => skipped(e),
                }
            }
            Key::Exhausted { pool, zone } => match decode::<ZoneExhaustion>(&kv.key, bytes) {
                Ok(x) => self.pool_mut(&pool).zone_mut(&zone).exhausted = Some(x),
                Err(e) => skipped(e),
            },
            Key::Report { pool, zone } => match decode::<ExhaustionReport>(&kv.key, bytes) {
                Ok(r) => self.pool_mut(&pool).zone_mut(&zone).report = Some(r),
                Err(e) => {
                    // An undecodable report still means "stockout": handle it as one.
                    skipped(e);
                    self.pool_mut(&pool).zone_mut(&zone).report = Some(ExhaustionReport {
                        message: "undecodable report".into(),
                        ..Default::default()
                    });
                }
            },
            Key::AgentMember { zone, agent_id } => {
                self.agents.entry(zone).or_default().insert(agent_id);
                self.mark_all_dirty();
            }
            Key::Event { .. } => {}
        }
    }

    fn apply_delete(&mut self, keys: &Keyspace, raw: &str, revision: i64) -> Option<Notice> {
        let key = parse(keys, raw)?;
        if let Some(pool) = key.pool() {
            self.dirty.insert(pool.to_string());
        }
        match key {
            Key::PoolConfig { pool } => {
                self.refused.remove(&pool);
                let view = self.pool_mut(&pool);
                view.config = None;
                view.config_refused = false;
                None
            }
            Key::ZoneDesired { pool, zone } => {
                self.pool_mut(&pool)
                    .zone_mut(&zone)
                    .set_desired(None, revision);
                None
            }
            Key::Instance { pool, zone, name } => {
                self.pool_mut(&pool)
                    .zone_mut(&zone)
                    .set_instance(&name, None);
                None
            }
            Key::Exhausted { pool, zone } => {
                let was = self.pool_mut(&pool).zone_mut(&zone).exhausted.take();
                was.map(|_| Notice::ZoneUsable { pool, zone })
            }
            Key::Report { pool, zone } => {
                self.pool_mut(&pool).zone_mut(&zone).report = None;
                None
            }
            Key::AgentMember { zone, agent_id } => {
                if let Some(members) = self.agents.get_mut(&zone) {
                    members.remove(&agent_id);
                    if members.is_empty() {
                        self.agents.remove(&zone);
                    }
                }
                self.mark_all_dirty();
                None
            }
            Key::Event { .. } => None,
        }
    }

    fn pool_mut(&mut self, pool: &str) -> &mut PoolView {
        self.pools.entry(pool.to_string()).or_default()
    }
}

/// Parses a key, skipping election keys silently and logging anything else malformed.
fn parse(keys: &Keyspace, raw: &str) -> Option<Key> {
    match keys.parse(raw.as_bytes()) {
        Ok(key) => Some(key),
        Err(e) => {
            if !raw.contains("/election/") {
                tracing::warn!(error = %e, "skipping a key outside pm's layout");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn kv(key: String, value: Vec<u8>) -> StoredKey {
        StoredKey {
            key,
            value,
            mod_revision: 1,
            create_revision: 1,
            lease: 0,
        }
    }

    fn instance(state: InstanceState) -> Vec<u8> {
        ObservedInstance {
            state: state as i32,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn live_counts_follow_puts_and_deletes() {
        let keys = Keyspace::default();
        let mut m = Model::default();
        let k = |n: &str| keys.instance("web", "z1", n).unwrap();
        let events = vec![
            WatchEvent::Put(kv(k("web-a"), instance(InstanceState::Running))),
            WatchEvent::Put(kv(k("web-b"), instance(InstanceState::Provisioning))),
            WatchEvent::Put(kv(k("web-c"), instance(InstanceState::Terminated))),
            WatchEvent::Put(kv(k("web-a"), instance(InstanceState::Running))),
        ];
        m.apply(&keys, WatchBatch::Events(events), &keys.pools_prefix());
        assert_eq!(m.pools["web"].zones["z1"].live, 2);
        let events = vec![
            WatchEvent::Put(kv(k("web-b"), instance(InstanceState::Deleting))),
            WatchEvent::Delete {
                key: k("web-a"),
                mod_revision: 3,
            },
            WatchEvent::Delete {
                key: k("web-a"),
                mod_revision: 4,
            },
        ];
        let z1 = &m.pools["web"].zones["z1"];
        assert_eq!(
            ObservedStatus::ALL.map(|s| z1.count(s)),
            [1, 1, 1, 0],
            "running, starting, lost, deleting"
        );
        m.apply(&keys, WatchBatch::Events(events), &keys.pools_prefix());
        assert_eq!(m.pools["web"].zones["z1"].live, 0);
        assert_eq!(m.pools["web"].zones["z1"].instances.len(), 2);
        let z1 = &m.pools["web"].zones["z1"];
        assert_eq!(ObservedStatus::ALL.map(|s| z1.count(s)), [0, 0, 1, 1]);
        assert!(m.take_dirty().contains("web"));
    }

    fn valid_config(target: i64) -> PoolConfig {
        PoolConfig {
            target_vm_count: target,
            allowed_zones: vec!["zone-a".into()],
            prefix: "web-".into(),
            instance_json: "{}".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_refused_config_keeps_the_last_valid_one_and_is_noticed_once() {
        let keys = Keyspace::default();
        let mut m = Model::default();
        let ck = keys.pool_config("web").unwrap();
        let mut bad = valid_config(4);
        bad.hooks = Some(pm_proto::Hooks {
            create: ".on-create".into(),
            ..Default::default()
        });
        m.load_pools(&keys, &[kv(ck.clone(), bad.encode_to_vec())]);
        let view = &m.pools["web"];
        assert!(
            view.config.is_none() && view.config_refused,
            "no valid config yet"
        );
        let notices = m.take_notices();
        assert!(
            matches!(&notices[..], [Notice::ConfigRefused { pool, problem }]
                if pool == "web" && problem.contains("hooks.create")),
            "{notices:?}"
        );
        m.load_pools(&keys, &[kv(ck.clone(), bad.encode_to_vec())]);
        assert!(
            m.take_notices().is_empty(),
            "reported once, also across reloads"
        );
        let put = |value: Vec<u8>| WatchBatch::Events(vec![WatchEvent::Put(kv(ck.clone(), value))]);
        assert!(m
            .apply(
                &keys,
                put(valid_config(5).encode_to_vec()),
                &keys.pools_prefix()
            )
            .is_empty());
        let mut negative = valid_config(5);
        negative.target_vm_count = -1;
        let notices = m.apply(&keys, put(negative.encode_to_vec()), &keys.pools_prefix());
        assert_eq!(notices.len(), 1, "{notices:?}");
        let view = &m.pools["web"];
        assert_eq!(view.config.as_ref().map(|c| c.target_vm_count), Some(5));
        assert!(view.config_refused);
    }

    #[test]
    fn garbage_values_are_skipped_and_keep_the_last_good_value() {
        let keys = Keyspace::default();
        let mut m = Model::default();
        let ck = keys.pool_config("web").unwrap();
        let good = valid_config(4);
        m.load_pools(&keys, &[kv(ck.clone(), good.encode_to_vec())]);
        let events = vec![
            WatchEvent::Put(kv(ck, vec![0xff, 0xff, 0xff])),
            WatchEvent::Put(kv("/pm/v1/pools/web/zones/BAD/desired".into(), vec![])),
            WatchEvent::Put(kv(
                keys.instance("web", "z1", "web-a").unwrap(),
                vec![0x08, 0xff],
            )),
        ];
        m.apply(&keys, WatchBatch::Events(events), &keys.pools_prefix());
        assert_eq!(m.pools["web"].config.as_ref().unwrap().target_vm_count, 4);
        assert!(m.pools["web"].zones.get("z1").is_none_or(|z| z.live == 0));
    }

    #[test]
    fn an_expired_exhaustion_is_noticed() {
        let keys = Keyspace::default();
        let mut m = Model::default();
        let xk = keys.exhausted("web", "z1").unwrap();
        m.load_pools(
            &keys,
            &[kv(xk.clone(), ZoneExhaustion::default().encode_to_vec())],
        );
        let notices = m.apply(
            &keys,
            WatchBatch::Events(vec![WatchEvent::Delete {
                key: xk,
                mod_revision: 9,
            }]),
            &keys.pools_prefix(),
        );
        assert_eq!(
            notices,
            vec![Notice::ZoneUsable {
                pool: "web".into(),
                zone: "z1".into()
            }]
        );
    }

    #[test]
    fn echoes_of_older_desired_writes_are_ignored() {
        let keys = Keyspace::default();
        let mut m = Model::default();
        let dk = keys.zone_desired("web", "z1").unwrap();
        let desired = |count| ZoneDesired {
            count,
            ..Default::default()
        };
        m.pools
            .entry("web".into())
            .or_default()
            .zone_mut("z1")
            .set_desired(Some(desired(5)), 10);
        let mut old = kv(dk.clone(), desired(3).encode_to_vec());
        old.mod_revision = 9;
        m.apply(
            &keys,
            WatchBatch::Events(vec![WatchEvent::Put(old)]),
            &keys.pools_prefix(),
        );
        assert_eq!(
            m.pools["web"].zones["z1"].desired.as_ref().unwrap().count,
            5
        );
        let mut new = kv(dk, desired(7).encode_to_vec());
        new.mod_revision = 11;
        m.apply(
            &keys,
            WatchBatch::Events(vec![WatchEvent::Put(new)]),
            &keys.pools_prefix(),
        );
        assert_eq!(
            m.pools["web"].zones["z1"].desired.as_ref().unwrap().count,
            7
        );
    }

    #[test]
    fn agents_come_and_go() {
        let keys = Keyspace::default();
        let mut m = Model::default();
        let a = keys.agent_member("z1", "a1").unwrap();
        let changed = m.load_agents(&keys, &[kv(a.clone(), vec![])]);
        assert!(changed.contains("z1"));
        m.apply(
            &keys,
            WatchBatch::Events(vec![WatchEvent::Delete {
                key: a,
                mod_revision: 2,
            }]),
            &keys.agents_prefix(),
        );
        assert!(m.agents.is_empty());
    }
}
