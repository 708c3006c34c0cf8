//! Reading what etcd holds about pools, agents and the scheduler into one snapshot, and
//! how an observed instance counts.

use std::collections::{BTreeMap, BTreeSet};

use pm_etcd::{decode, Election, Key, LeaderInfo, Store};
use pm_proto::{
    AgentInfo, InstanceState, ObservedInstance, PoolConfig, ZoneDesired, ZoneExhaustion,
};

use crate::error::Result;

/// GCE's word for an observed state: `RUNNING`, `TERMINATED`, ...
pub fn state_name(state: InstanceState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("INSTANCE_STATE_").unwrap_or(name)
}

/// One zone of one pool.
#[derive(Debug, Clone, Default)]
pub struct ZoneState {
    /// The scheduler's desired count; absent means 0.
    pub desired: Option<ZoneDesired>,
    /// The exhaustion mark, while its lease lives.
    pub exhausted: Option<ZoneExhaustion>,
    /// Observed instances by name.
    pub instances: BTreeMap<String, ObservedInstance>,
}

/// One pool: its config (if any) and every zone it has keys in.
#[derive(Debug, Clone, Default)]
pub struct PoolState {
    /// The stored config; `None` when only zone keys are left.
    pub config: Option<PoolConfig>,
    /// The config key's mod_revision; 0 when absent.
    pub config_revision: i64,
    /// Zones with keys of this pool.
    pub zones: BTreeMap<String, ZoneState>,
}

impl PoolState {
    /// The zones to show: the allowed ones and every zone holding keys, sorted.
    pub fn zone_names(&self) -> BTreeSet<String> {
        let allowed = self.config.iter().flat_map(|c| c.allowed_zones.iter());
        allowed.chain(self.zones.keys()).cloned().collect()
    }
}

/// The agents of one zone.
#[derive(Debug, Clone, Default)]
pub struct ZoneAgents {
    /// Id of the active agent (the election's leader), if any.
    pub active: Option<String>,
    /// Registered agents by id.
    pub members: BTreeMap<String, AgentInfo>,
}

impl ZoneAgents {
    /// Registered agents other than the active one.
    pub fn standbys(&self) -> Vec<String> {
        self.members
            .keys()
            .filter(|id| Some(*id) != self.active.as_ref())
            .cloned()
            .collect()
    }
}

/// Everything status needs, read from etcd.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Revision of the pool listing; watch from `revision + 1` to follow it.
    pub revision: i64,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolState>,
    /// Agents by zone.
    pub agents: BTreeMap<String, ZoneAgents>,
    /// The scheduler leader.
    pub leader: Option<LeaderInfo>,
    /// Values that could not be decoded; shown, never fatal.
    pub warnings: Vec<String>,
}

/// Reads the keys of one pool (or of all) and sorts them into pools and zones. Events are
/// skipped. Returns the pools, the listing's revision, and warnings about bad values.
pub async fn read_pools(
    store: &Store,
    pool: Option<&str>,
) -> Result<(BTreeMap<String, PoolState>, i64, Vec<String>)> {
    let keys = store.keys();
    let prefix = match pool {
        Some(pool) => keys.pool_prefix(pool)?,
        None => keys.pools_prefix(),
    };
    let (stored, revision) = store.list_raw(&prefix).await?;
    let mut pools: BTreeMap<String, PoolState> = BTreeMap::new();
    let mut warnings = Vec::new();
    for kv in stored {
        let Ok(key) = keys.parse(kv.key.as_bytes()) else {
            continue;
        };
        let result = match key {
            Key::PoolConfig { pool } => decode::<PoolConfig>(&kv.key, &kv.value).map(|c| {
                let state = pools.entry(pool).or_default();
                state.config = Some(c);
                state.config_revision = kv.mod_revision;
            }),
            Key::ZoneDesired { pool, zone } => decode::<ZoneDesired>(&kv.key, &kv.value)
                .map(|d| zone_of(&mut pools, pool, zone).desired = Some(d)),
            Key::Exhausted { pool, zone } => decode::<ZoneExhaustion>(&kv.key, &kv.value)
                .map(|e| zone_of(&mut pools, pool, zone).exhausted = Some(e)),
            Key::Instance { pool, zone, name } => decode::<ObservedInstance>(&kv.key, &kv.value)
                .map(|i| {
                    zone_of(&mut pools, pool, zone).instances.insert(name, i);
                }),
            Key::Report { .. } | Key::Event { .. } | Key::AgentMember { .. } => Ok(()),
        };
        if let Err(e) = result {
            warnings.push(e.to_string());
        }
    }
    Ok((pools, revision, warnings))
}

fn zone_of(pools: &mut BTreeMap<String, PoolState>, pool: String, zone: String) -> &mut ZoneState {
    pools
        .entry(pool)
        .or_default()
        .zones
        .entry(zone)
        .or_default()
}

/// Reads the registered agents of every zone, and the active agent of those zones and of
/// `also` (zones a pool allows, which may have no agent registered).
pub async fn read_agents(
    store: &Store,
    also: &BTreeSet<String>,
) -> Result<(BTreeMap<String, ZoneAgents>, Vec<String>)> {
    let keys = store.keys();
    let (stored, _) = store.list_raw(&keys.agents_prefix()).await?;
    let mut zones: BTreeMap<String, ZoneAgents> = also
        .iter()
        .map(|z| (z.clone(), ZoneAgents::default()))
        .collect();
    let mut warnings = Vec::new();
    for kv in stored {
        // Election keys live under the same prefix and do not parse as data keys.
        let Ok(Key::AgentMember { zone, agent_id }) = keys.parse(kv.key.as_bytes()) else {
            continue;
        };
        match decode::<AgentInfo>(&kv.key, &kv.value) {
            Ok(info) => {
                zones
                    .entry(zone)
                    .or_default()
                    .members
                    .insert(agent_id, info);
            }
            Err(e) => warnings.push(e.to_string()),
        }
    }
    for (zone, agents) in &mut zones {
        let election = Election::new(store.client().clone(), &keys.agent_election(zone)?);
        agents.active = election.leader().await?.map(|l| l.value);
    }
    Ok((zones, warnings))
}

/// The scheduler leader, if one is elected.
pub async fn read_leader(store: &Store) -> Result<Option<LeaderInfo>> {
    let election = Election::new(store.client().clone(), &store.keys().scheduler_election());
    Ok(election.leader().await?)
}

/// Reads pools (one or all), the agents of their zones, and the scheduler leader.
pub async fn read(store: &Store, pool: Option<&str>) -> Result<Snapshot> {
    let (pools, revision, mut warnings) = read_pools(store, pool).await?;
    let zones: BTreeSet<String> = pools.values().flat_map(PoolState::zone_names).collect();
    let (mut agents, agent_warnings) = read_agents(store, &zones).await?;
    if pool.is_some() {
        agents.retain(|zone, _| zones.contains(zone));
    }
    warnings.extend(agent_warnings);
    let leader = read_leader(store).await?;
    Ok(Snapshot {
        revision,
        pools,
        agents,
        leader,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_gce_names() {
        assert_eq!(state_name(InstanceState::Terminated), "TERMINATED");
        assert_eq!(state_name(InstanceState::Running), "RUNNING");
    }
}
