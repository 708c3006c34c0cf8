//! Reading what etcd holds about pools (into pm-etcd's keyspace view, [`PoolsView`]),
//! agents and the scheduler into one snapshot; GCE's word for an observed state.

use std::collections::{BTreeMap, BTreeSet};

use pm_etcd::{decode, Change, Election, Key, LeaderInfo, PoolKeys, PoolsView, Store};
use pm_proto::{AgentInfo, InstanceState};

use crate::error::Result;

/// GCE's word for an observed state: `RUNNING`, `TERMINATED`, ...
pub fn state_name(state: InstanceState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("INSTANCE_STATE_").unwrap_or(name)
}

/// The zones to show of a pool: the ones its stored config allows and every zone
/// holding keys, sorted.
pub fn zone_names(pool: &PoolKeys) -> BTreeSet<String> {
    let allowed = pool
        .config
        .iter()
        .flat_map(|c| c.value.allowed_zones.iter());
    allowed.chain(pool.zones.keys()).cloned().collect()
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
    /// Pools by name, as stored.
    pub pools: BTreeMap<String, PoolKeys>,
    /// Agents by zone.
    pub agents: BTreeMap<String, ZoneAgents>,
    /// The scheduler leader.
    pub leader: Option<LeaderInfo>,
    /// Values that could not be decoded; shown, never fatal.
    pub warnings: Vec<String>,
}

/// Reads the keys of one pool (or of all) into the keyspace view's pools and zones.
/// Events are skipped. Returns the pools, the listing's revision, and warnings about
/// values that do not decode.
pub async fn read_pools(
    store: &Store,
    pool: Option<&str>,
) -> Result<(BTreeMap<String, PoolKeys>, i64, Vec<String>)> {
    let keys = store.keys();
    let prefix = match pool {
        Some(pool) => keys.pool_prefix(pool)?,
        None => keys.pools_prefix(),
    };
    let (stored, revision) = store.list_raw(&prefix).await?;
    let mut view = PoolsView::new(keys.clone());
    let warnings = view
        .load(&stored, revision)
        .into_iter()
        .filter_map(|change| match change {
            Change::Undecodable { error, .. } => Some(error.to_string()),
            Change::Put { .. } | Change::Delete { .. } | Change::Malformed { .. } => None,
        })
        .collect();
    Ok((view.into_pools(), revision, warnings))
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
    let zones: BTreeSet<String> = pools.values().flat_map(zone_names).collect();
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
