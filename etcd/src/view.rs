//! The one typed view of the `pools/` keyspace that the scheduler, the agent and pmctl
//! read: per pool its config, per zone its `desired`, `exhausted`, `report` and
//! `witnessed` keys and
//! its observed instances, each decoded with the revision it was written at.
//!
//! A [`PoolsView`] is built from a listing ([`PoolsView::load`]) and kept up to date with
//! watch batches ([`PoolsView::apply`], a [`WatchBatch::Resync`] included); a writer
//! records its own writes at their revision ([`PoolsView::record`]). Every key keeps the
//! newest revision the view knows of it, a deleted key too until the watch has passed
//! it, and a put or delete no newer than that is ignored: a stale watch event never undoes
//! a newer write. A listing made at a revision below the newest the view has seen means
//! etcd was restored from a snapshot: the view then takes the listing as it is, whatever
//! the revisions it knew. Loading and applying return the [`Change`]s they made, each with the
//! values it concerns, so a caller keeps what it derives (counts, wake-ups, notices) up to
//! date without recomputing it; an event costs a few map lookups, whatever the size of
//! the view.
//!
//! A value that does not decode is kept out of the view (the key keeps what it held) and
//! reported as [`Change::Undecodable`] with its error; a key outside pm's layout is
//! reported as [`Change::Malformed`]. A view made [`PoolsView::for_zone`] keeps only the
//! zone keys of that zone (and every pool's config).

use std::collections::{BTreeMap, HashMap, HashSet};

use pm_proto::{
    DrainRequest, ExhaustionReport, ObservedInstance, PoolConfig, Rollout, Witnessed, ZoneDesired,
    ZoneExhaustion,
};

use crate::error::{Error, Result};
use crate::keys::{Key, Keyspace};
use crate::store::decode;
use crate::watch::{StoredKey, WatchBatch, WatchEvent};

/// A decoded value with the revision it was written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped<M> {
    /// The decoded value.
    pub value: M,
    /// Revision of the write.
    pub mod_revision: i64,
}

/// A decoded value of one of the keys the view holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `pools/<pool>/config`.
    Config(PoolConfig),
    /// `pools/<pool>/rollout`.
    Rollout(Rollout),
    /// `pools/<pool>/zones/<zone>/desired`.
    Desired(ZoneDesired),
    /// `pools/<pool>/zones/<zone>/exhausted`.
    Exhausted(ZoneExhaustion),
    /// `pools/<pool>/zones/<zone>/report`.
    Report(ExhaustionReport),
    /// `pools/<pool>/zones/<zone>/instances/<name>`.
    Instance(ObservedInstance),
    /// `pools/<pool>/zones/<zone>/witnessed`.
    Witnessed(Witnessed),
    /// `pools/<pool>/zones/<zone>/drain/<name>`.
    DrainRequest(DrainRequest),
}

impl Value {
    /// Decodes the value stored under `key` (spelled `raw`); `None` for keys the view does
    /// not hold (events, agent members).
    fn decode(key: &Key, raw: &str, bytes: &[u8]) -> Option<Result<Value>> {
        Some(match key {
            Key::PoolConfig { .. } => decode(raw, bytes).map(Value::Config),
            Key::Rollout { .. } => decode(raw, bytes).map(Value::Rollout),
            Key::ZoneDesired { .. } => decode(raw, bytes).map(Value::Desired),
            Key::Exhausted { .. } => decode(raw, bytes).map(Value::Exhausted),
            Key::Report { .. } => decode(raw, bytes).map(Value::Report),
            Key::Instance { .. } => decode(raw, bytes).map(Value::Instance),
            Key::Witnessed { .. } => decode(raw, bytes).map(Value::Witnessed),
            Key::DrainRequest { .. } => decode(raw, bytes).map(Value::DrainRequest),
            Key::DrainSlot { .. }
            | Key::Workflow { .. }
            | Key::Event { .. }
            | Key::AgentMember { .. } => return None,
        })
    }
}

/// The types a [`Value`] holds, each in its own slot of the view.
trait Slot: Sized {
    /// The value, when it is of this type.
    fn from_value(value: Value) -> Option<Self>;
    /// The value, wrapped.
    fn into_value(self) -> Value;
}

macro_rules! slot {
    ($type:ty, $variant:ident) => {
        impl Slot for $type {
            fn from_value(value: Value) -> Option<Self> {
                match value {
                    Value::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_value(self) -> Value {
                Value::$variant(self)
            }
        }
    };
}

slot!(PoolConfig, Config);
slot!(Rollout, Rollout);
slot!(ZoneDesired, Desired);
slot!(ZoneExhaustion, Exhausted);
slot!(ExhaustionReport, Report);
slot!(ObservedInstance, Instance);
slot!(Witnessed, Witnessed);
slot!(DrainRequest, DrainRequest);

/// The keys of one pool in one zone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZoneKeys {
    /// The scheduler's desired count for the zone.
    pub desired: Option<Stamped<ZoneDesired>>,
    /// The exhaustion mark, while its lease lives.
    pub exhausted: Option<Stamped<ZoneExhaustion>>,
    /// An agent's stockout report, until the scheduler consumes it.
    pub report: Option<Stamped<ExhaustionReport>>,
    /// Observed instances by name.
    pub instances: BTreeMap<String, Stamped<ObservedInstance>>,
    /// Another zone's count of the zone's live instances, while the zone has no agent.
    pub witnessed: Option<Stamped<Witnessed>>,
    /// pmctl's drain requests by instance name.
    pub drains: BTreeMap<String, Stamped<DrainRequest>>,
}

impl ZoneKeys {
    /// A zone without keys.
    pub const EMPTY: ZoneKeys = ZoneKeys {
        desired: None,
        exhausted: None,
        report: None,
        instances: BTreeMap::new(),
        witnessed: None,
        drains: BTreeMap::new(),
    };

    /// Whether the zone holds no key.
    pub fn is_empty(&self) -> bool {
        self.desired.is_none()
            && self.exhausted.is_none()
            && self.report.is_none()
            && self.instances.is_empty()
            && self.witnessed.is_none()
            && self.drains.is_empty()
    }
}

/// What [`PoolKeys::zone`] and [`PoolsView::zone`] lend for a zone without keys.
static EMPTY_ZONE: ZoneKeys = ZoneKeys::EMPTY;

/// The keys of one pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolKeys {
    /// The stored config, as stored (the daemons check it; the view only decodes it).
    pub config: Option<Stamped<PoolConfig>>,
    /// The scheduler's rollout state.
    pub rollout: Option<Stamped<Rollout>>,
    /// Zones holding keys of the pool; a zone goes when its last key does.
    pub zones: BTreeMap<String, ZoneKeys>,
}

impl PoolKeys {
    /// The keys of `zone`; [`ZoneKeys::EMPTY`] when it holds none.
    pub fn zone(&self, zone: &str) -> &ZoneKeys {
        self.zones.get(zone).unwrap_or(&EMPTY_ZONE)
    }

    fn is_empty(&self) -> bool {
        self.config.is_none() && self.rollout.is_none() && self.zones.is_empty()
    }
}

/// One change a listing or a watch batch made to the view, in the order made.
#[derive(Debug)]
pub enum Change {
    /// `key` was written with `new`; `old` is what it replaced. (The view may hold a later
    /// value already: a batch's changes are told after the whole batch is applied.)
    Put {
        /// The key.
        key: Key,
        /// Its previous value; `None` when the view held none.
        old: Option<Value>,
        /// The value written, boxed: it is the bulk of the change.
        new: Box<Value>,
    },
    /// `key` was deleted (or its lease ran out).
    Delete {
        /// The key.
        key: Key,
        /// What the view held; `None` when nothing (a value that never decoded).
        old: Option<Value>,
    },
    /// A value written to `key` does not decode: the view keeps what it held for the key.
    Undecodable {
        /// The key.
        key: Key,
        /// The decoder's error, naming the key ([`Error::Decode`]).
        error: Error,
    },
    /// A key outside pm's layout, skipped.
    Malformed {
        /// Why it does not parse ([`Error::MalformedKey`]).
        error: Error,
    },
}

impl Change {
    /// The key changed; `None` for a malformed key.
    pub fn key(&self) -> Option<&Key> {
        match self {
            Change::Put { key, .. }
            | Change::Delete { key, .. }
            | Change::Undecodable { key, .. } => Some(key),
            Change::Malformed { .. } => None,
        }
    }
}

/// The typed view of the `pools/` keyspace, optionally of one zone.
#[derive(Debug, Clone)]
pub struct PoolsView {
    /// To parse and build keys.
    keys: Keyspace,
    /// The only zone whose zone keys are kept; `None`: every zone.
    zone: Option<String>,
    /// Pools holding keys; a pool goes when its last key does.
    pools: BTreeMap<String, PoolKeys>,
    /// The revision each deleted key was deleted at, until the watch has passed it.
    removed: HashMap<String, i64>,
    /// The newest revision listed or applied from a watch (not the writer's records: a
    /// listing may have started before a write it is applied after); a listing below it
    /// means etcd was restored from a snapshot.
    seen: i64,
}

impl PoolsView {
    /// An empty view of every zone.
    pub fn new(keys: Keyspace) -> Self {
        Self {
            keys,
            zone: None,
            pools: BTreeMap::new(),
            removed: HashMap::new(),
            seen: 0,
        }
    }

    /// An empty view that keeps only the zone keys of `zone` (and every pool's config).
    pub fn for_zone(keys: Keyspace, zone: &str) -> Self {
        Self {
            zone: Some(zone.to_string()),
            ..Self::new(keys)
        }
    }

    /// Pools by name.
    pub fn pools(&self) -> &BTreeMap<String, PoolKeys> {
        &self.pools
    }

    /// The pools, leaving the view.
    pub fn into_pools(self) -> BTreeMap<String, PoolKeys> {
        self.pools
    }

    /// One pool, if it holds any key.
    pub fn pool(&self, pool: &str) -> Option<&PoolKeys> {
        self.pools.get(pool)
    }

    /// The keys of `pool` in `zone`; [`ZoneKeys::EMPTY`] when it holds none.
    pub fn zone(&self, pool: &str, zone: &str) -> &ZoneKeys {
        self.pools.get(pool).map_or(&EMPTY_ZONE, |p| p.zone(zone))
    }

    /// Takes a listing of the pools prefix (or of one pool's) made at `revision`: every
    /// listed key newer than the view's, and the deletion of every key the view holds
    /// from before `revision` that the listing lacks. A `revision` below the newest the
    /// view has seen (etcd restored from a snapshot) makes the listing the whole truth:
    /// every listed key is taken and every other key deleted.
    pub fn load(&mut self, listing: &[StoredKey], revision: i64) -> Vec<Change> {
        if revision < self.seen {
            self.forget_revisions();
            self.seen = revision;
        }
        self.seen = self.seen.max(revision);
        let mut changes = Vec::new();
        for kv in listing {
            self.put(kv, false, &mut changes);
        }
        let listed: HashSet<&str> = listing.iter().map(|kv| kv.key.as_str()).collect();
        for (key, held) in self.held() {
            let Ok(raw) = self.keys.build(&key) else {
                continue;
            };
            if held <= revision && !listed.contains(raw.as_str()) {
                self.delete(key, raw, revision, false, &mut changes);
            }
        }
        changes
    }

    /// Applies a watch batch: its events in order, or the whole listing of a
    /// [`WatchBatch::Resync`]. Deletions the watch has now passed are forgotten.
    pub fn apply(&mut self, batch: WatchBatch) -> Vec<Change> {
        match batch {
            WatchBatch::Events(events) => self.apply_events(events, |_| true),
            WatchBatch::Resync { revision, keys } => {
                let changes = self.load(&keys, revision);
                self.removed.retain(|_, deleted| *deleted > revision);
                changes
            }
        }
    }

    /// Applies a batch of a watch of one span of the keyspace (`[span.0, span.1)`), one of
    /// several a consumer follows each on its own: a deletion is forgotten once this
    /// watch has passed it only in its span, and a resync is the whole truth of the span
    /// ([`PoolsView::load_span`]).
    pub fn apply_span(&mut self, batch: WatchBatch, span: (&str, &[u8])) -> Vec<Change> {
        match batch {
            WatchBatch::Events(events) => self.apply_events(events, |raw| in_span(raw, span)),
            WatchBatch::Resync { revision, keys } => self.load_span(&keys, revision, span),
        }
    }

    fn apply_events(
        &mut self,
        events: Vec<WatchEvent>,
        passed: impl Fn(&str) -> bool,
    ) -> Vec<Change> {
        let horizon = events.last().map_or(0, |e| e.revision() + 1);
        self.seen = self.seen.max(horizon - 1);
        let mut changes = Vec::new();
        for event in events {
            match event {
                WatchEvent::Put(kv) => self.put(&kv, false, &mut changes),
                WatchEvent::Delete { key, mod_revision } => match self.keys.parse(key.as_bytes()) {
                    Ok(parsed) => self.delete(parsed, key, mod_revision, false, &mut changes),
                    Err(error) => changes.push(Change::Malformed { error }),
                },
            }
        }
        self.removed
            .retain(|raw, deleted| *deleted >= horizon || !passed(raw));
        changes
    }

    /// Takes a fresh listing of the keys from `span.0` (inclusive) to `span.1` (exclusive),
    /// made at `revision`, as the whole truth of that span: every listed key, and the
    /// deletion of every other key the view holds there, whatever revisions it knew of
    /// them. A fresh listing is newer than anything the view learnt of the span, and after
    /// a snapshot restore its revision is below them.
    pub fn load_span(
        &mut self,
        listing: &[StoredKey],
        revision: i64,
        span: (&str, &[u8]),
    ) -> Vec<Change> {
        let inside = |raw: &str| in_span(raw, span);
        self.removed.retain(|raw, _| !inside(raw));
        let mut changes = Vec::new();
        for kv in listing.iter().filter(|kv| inside(&kv.key)) {
            self.put(kv, true, &mut changes);
        }
        let listed: HashSet<&str> = listing.iter().map(|kv| kv.key.as_str()).collect();
        for (key, _) in self.held() {
            let Ok(raw) = self.keys.build(&key) else {
                continue;
            };
            if inside(&raw) && !listed.contains(raw.as_str()) {
                self.delete(key, raw, revision, true, &mut changes);
            }
        }
        changes
    }

    /// Records the writer's own write of `key` at `revision`: `Some` value written, `None`
    /// deleted. The watch's echo of it, and anything older, is then ignored. A value of
    /// another kind than the key's is not recorded.
    pub fn record(&mut self, key: &Key, value: Option<Value>, revision: i64) -> Result<()> {
        let raw = self.keys.build(key)?;
        if !self.holds(key) || revision <= self.known_revision(key, &raw) {
            return Ok(());
        }
        match value {
            Some(value) => {
                if self.set(key, Some(value), revision).is_some() {
                    self.removed.remove(&raw);
                }
            }
            None => {
                self.set(key, None, revision);
                self.removed.insert(raw, revision);
            }
        }
        Ok(())
    }

    /// Records the writer's own deletion of every key of `pool` the view holds, at
    /// `revision` (a deleted prefix).
    pub fn record_pool_deleted(&mut self, pool: &str, revision: i64) -> Result<()> {
        let held = self.pools.get(pool).map(|p| held_in(pool, p));
        for (key, _) in held.into_iter().flatten() {
            self.record(&key, None, revision)?;
        }
        Ok(())
    }

    /// Forgets the revision of every key held and deleted, so that a listing from a
    /// restored etcd replaces them all.
    fn forget_revisions(&mut self) {
        self.removed.clear();
        for pool in self.pools.values_mut() {
            if let Some(config) = &mut pool.config {
                config.mod_revision = 0;
            }
            if let Some(rollout) = &mut pool.rollout {
                rollout.mod_revision = 0;
            }
            for zone in pool.zones.values_mut() {
                let singles = [
                    zone.desired.as_mut().map(|s| &mut s.mod_revision),
                    zone.exhausted.as_mut().map(|s| &mut s.mod_revision),
                    zone.report.as_mut().map(|s| &mut s.mod_revision),
                    zone.witnessed.as_mut().map(|s| &mut s.mod_revision),
                ];
                let instances = zone.instances.values_mut().map(|s| &mut s.mod_revision);
                let drains = zone.drains.values_mut().map(|s| &mut s.mod_revision);
                for revision in singles.into_iter().flatten().chain(instances).chain(drains) {
                    *revision = 0;
                }
            }
        }
    }

    /// Whether the view keeps `key`: a pool key, of the view's zone when it has one.
    fn holds(&self, key: &Key) -> bool {
        let zone_ok = match (&self.zone, key.zone()) {
            (Some(wanted), Some(zone)) => wanted == zone,
            _ => true,
        };
        zone_ok
            && !matches!(
                key,
                Key::DrainSlot { .. }
                    | Key::Workflow { .. }
                    | Key::Event { .. }
                    | Key::AgentMember { .. }
            )
    }

    /// The newest revision the view knows of `key` (spelled `raw`), written or deleted.
    fn known_revision(&self, key: &Key, raw: &str) -> i64 {
        let held = self.held_revision(key).unwrap_or(0);
        held.max(self.removed.get(raw).copied().unwrap_or(0))
    }

    /// The revision of the value the view holds for `key`.
    fn held_revision(&self, key: &Key) -> Option<i64> {
        let pool = self.pools.get(key.pool()?)?;
        let zone = || pool.zones.get(key.zone()?);
        match key {
            Key::PoolConfig { .. } => pool.config.as_ref().map(|s| s.mod_revision),
            Key::Rollout { .. } => pool.rollout.as_ref().map(|s| s.mod_revision),
            Key::ZoneDesired { .. } => zone()?.desired.as_ref().map(|s| s.mod_revision),
            Key::Exhausted { .. } => zone()?.exhausted.as_ref().map(|s| s.mod_revision),
            Key::Report { .. } => zone()?.report.as_ref().map(|s| s.mod_revision),
            Key::Witnessed { .. } => zone()?.witnessed.as_ref().map(|s| s.mod_revision),
            Key::Instance { name, .. } => zone()?.instances.get(name).map(|s| s.mod_revision),
            Key::DrainRequest { name, .. } => zone()?.drains.get(name).map(|s| s.mod_revision),
            Key::DrainSlot { .. }
            | Key::Workflow { .. }
            | Key::Event { .. }
            | Key::AgentMember { .. } => None,
        }
    }

    /// Every key the view holds, with its revision.
    fn held(&self) -> Vec<(Key, i64)> {
        let pools = self.pools.iter();
        pools.flat_map(|(name, pool)| held_in(name, pool)).collect()
    }

    /// Takes one key written, unless it is older than what the view knows of it (and
    /// whatever the view knows when `force`).
    fn put(&mut self, kv: &StoredKey, force: bool, changes: &mut Vec<Change>) {
        let key = match self.keys.parse(kv.key.as_bytes()) {
            Ok(key) => key,
            Err(error) => return changes.push(Change::Malformed { error }),
        };
        let stale = !force && kv.mod_revision <= self.known_revision(&key, &kv.key);
        if !self.holds(&key) || stale {
            return;
        }
        match Value::decode(&key, &kv.key, &kv.value) {
            None => {}
            Some(Err(error)) => changes.push(Change::Undecodable { key, error }),
            Some(Ok(new)) => {
                if let Some(old) = self.set(&key, Some(new.clone()), kv.mod_revision) {
                    self.removed.remove(&kv.key);
                    changes.push(Change::Put {
                        key,
                        old,
                        new: Box::new(new),
                    });
                }
            }
        }
    }

    /// Takes the deletion of `key` (spelled `raw`) at `revision`, unless the view knows of
    /// a newer write (and whatever the view knows when `force`).
    fn delete(
        &mut self,
        key: Key,
        raw: String,
        revision: i64,
        force: bool,
        changes: &mut Vec<Change>,
    ) {
        let stale = !force && revision <= self.known_revision(&key, &raw);
        if !self.holds(&key) || stale {
            return;
        }
        let old = self.set(&key, None, revision).flatten();
        self.removed.insert(raw, revision);
        changes.push(Change::Delete { key, old });
    }

    /// Puts (`Some`) or removes (`None`) the value of `key`; returns what it held, or
    /// `None` when the value is not of the key's kind. Empty zones and pools go.
    fn set(&mut self, key: &Key, value: Option<Value>, revision: i64) -> Option<Option<Value>> {
        let pool_name = key.pool()?;
        let pool = self.pools.entry(pool_name.to_string()).or_default();
        let old = match (key, key.zone()) {
            (Key::PoolConfig { .. }, _) => replace(&mut pool.config, value, revision),
            (Key::Rollout { .. }, _) => replace(&mut pool.rollout, value, revision),
            (_, Some(zone_name)) => {
                let zone = pool.zones.entry(zone_name.to_string()).or_default();
                let old = match key {
                    Key::ZoneDesired { .. } => replace(&mut zone.desired, value, revision),
                    Key::Exhausted { .. } => replace(&mut zone.exhausted, value, revision),
                    Key::Report { .. } => replace(&mut zone.report, value, revision),
                    Key::Witnessed { .. } => replace(&mut zone.witnessed, value, revision),
                    Key::Instance { name, .. } => {
                        replace_entry(&mut zone.instances, name, value, revision)
                    }
                    Key::DrainRequest { name, .. } => {
                        replace_entry(&mut zone.drains, name, value, revision)
                    }
                    _ => None,
                };
                if zone.is_empty() {
                    pool.zones.remove(zone_name);
                }
                old
            }
            _ => None,
        };
        if pool.is_empty() {
            self.pools.remove(pool_name);
        }
        old
    }
}

/// Whether the key `raw` lies in `[span.0, span.1)`.
fn in_span(raw: &str, span: (&str, &[u8])) -> bool {
    raw >= span.0 && raw.as_bytes() < span.1
}

/// Every key of `pool` (named `name`), with its revision.
fn held_in(name: &str, pool: &PoolKeys) -> Vec<(Key, i64)> {
    let mut held = Vec::new();
    if let Some(config) = &pool.config {
        let key = Key::PoolConfig {
            pool: name.to_string(),
        };
        held.push((key, config.mod_revision));
    }
    if let Some(rollout) = &pool.rollout {
        let key = Key::Rollout {
            pool: name.to_string(),
        };
        held.push((key, rollout.mod_revision));
    }
    for (zone, zk) in &pool.zones {
        let mut single = |revision: Option<i64>, make: fn(String, String) -> Key| {
            if let Some(revision) = revision {
                held.push((make(name.to_string(), zone.clone()), revision));
            }
        };
        single(zk.desired.as_ref().map(|s| s.mod_revision), |pool, zone| {
            Key::ZoneDesired { pool, zone }
        });
        single(
            zk.exhausted.as_ref().map(|s| s.mod_revision),
            |pool, zone| Key::Exhausted { pool, zone },
        );
        single(zk.report.as_ref().map(|s| s.mod_revision), |pool, zone| {
            Key::Report { pool, zone }
        });
        single(
            zk.witnessed.as_ref().map(|s| s.mod_revision),
            |pool, zone| Key::Witnessed { pool, zone },
        );
        for (instance, stamped) in &zk.instances {
            let key = Key::Instance {
                pool: name.to_string(),
                zone: zone.clone(),
                name: instance.clone(),
            };
            held.push((key, stamped.mod_revision));
        }
        for (instance, stamped) in &zk.drains {
            let key = Key::DrainRequest {
                pool: name.to_string(),
                zone: zone.clone(),
                name: instance.clone(),
            };
            held.push((key, stamped.mod_revision));
        }
    }
    held
}

/// Puts or takes the value of a slot; `None` when `value` is of another type.
fn replace<M: Slot>(
    slot: &mut Option<Stamped<M>>,
    value: Option<Value>,
    revision: i64,
) -> Option<Option<Value>> {
    let old = match value {
        Some(value) => slot.replace(Stamped {
            value: M::from_value(value)?,
            mod_revision: revision,
        }),
        None => slot.take(),
    };
    Some(old.map(|s| s.value.into_value()))
}

/// Puts or takes the value of `name` in a map; `None` when `value` is of another type.
fn replace_entry<M: Slot>(
    map: &mut BTreeMap<String, Stamped<M>>,
    name: &str,
    value: Option<Value>,
    revision: i64,
) -> Option<Option<Value>> {
    let old = match value {
        Some(value) => {
            let stamped = Stamped {
                value: M::from_value(value)?,
                mod_revision: revision,
            };
            map.insert(name.to_string(), stamped)
        }
        None => map.remove(name),
    };
    Some(old.map(|s| s.value.into_value()))
}

#[cfg(test)]
mod tests;
