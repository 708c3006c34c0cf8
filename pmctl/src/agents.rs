//! `pmctl agents` and `pmctl leader`: who serves each zone, and who schedules.

use std::collections::BTreeSet;

use pm_etcd::{now_unix_ms, Store};
use pm_proto::AgentInfo;
use serde::Serialize;

use crate::error::Result;
use crate::output::{self, Align, OutputFormat, Render, Table};
use crate::snapshot;
use crate::status::Leader;

/// An agent's role in its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Elected: it creates and deletes in the zone.
    Active,
    /// Registered, waiting to take over.
    Standby,
}

/// One agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    /// The zone it serves.
    pub zone: String,
    /// Its id.
    pub agent_id: String,
    /// Active or standby.
    pub role: Role,
    /// The host it runs on; empty when it holds the election without registering.
    pub hostname: String,
    /// Its pm version.
    pub version: String,
    /// When it started (Unix ms); 0 when unknown.
    pub started_unix_ms: i64,
    /// Whether it completes reconcile passes as its zone's active agent (what the
    /// scheduler counts as the zone having an agent); `null` for an agent older than
    /// the field, which the scheduler counts by its member key alone.
    pub reconciling: Option<bool>,
    /// Its last completed pass when `reconciling` was last written (Unix ms); 0: none.
    pub last_pass_unix_ms: i64,
}

impl AgentRow {
    fn new(zone: &str, agent_id: &str, role: Role, info: AgentInfo) -> Self {
        Self {
            zone: zone.to_string(),
            agent_id: agent_id.to_string(),
            role,
            hostname: info.hostname,
            version: info.version,
            started_unix_ms: info.started_unix_ms,
            reconciling: info.reconciling,
            last_pass_unix_ms: info.last_pass_unix_ms,
        }
    }

    /// The RECONCILING column: yes, no (for an active agent: stalled, with its last
    /// pass), or unknown for an agent older than the field.
    fn reconciling_cell(&self, now_ms: i64) -> String {
        match (self.reconciling, self.role) {
            (None, _) => "unknown".into(),
            (Some(true), _) => "yes".into(),
            (Some(false), Role::Standby) => "no".into(),
            (Some(false), Role::Active) if self.last_pass_unix_ms > 0 => format!(
                "no (stalled; last pass {} ago)",
                output::age(self.last_pass_unix_ms, now_ms)
            ),
            (Some(false), Role::Active) => "no (no pass completed yet)".into(),
        }
    }
}

/// What `pmctl agents` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentsView {
    /// When the uptimes in the table are measured from (Unix ms).
    pub now_unix_ms: i64,
    /// Every agent, by zone, the active one first.
    pub agents: Vec<AgentRow>,
}

impl Render for AgentsView {
    fn table(&self) -> String {
        if self.agents.is_empty() {
            return "no agents registered\n".into();
        }
        let mut table = Table::new(&[
            ("ZONE", Align::Left),
            ("AGENT", Align::Left),
            ("ROLE", Align::Left),
            ("HOST", Align::Left),
            ("VERSION", Align::Left),
            ("UPTIME", Align::Right),
            ("RECONCILING", Align::Left),
        ]);
        for a in &self.agents {
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            table.row(vec![
                a.zone.clone(),
                a.agent_id.clone(),
                match a.role {
                    Role::Active => "active".into(),
                    Role::Standby => "standby".into(),
                },
                dash(&a.hostname),
                dash(&a.version),
                output::age(a.started_unix_ms, self.now_unix_ms),
                a.reconciling_cell(self.now_unix_ms),
            ]);
        }
        table.render()
    }
}

/// `pmctl agents`.
pub async fn show_agents(store: &Store, format: OutputFormat) -> Result<()> {
    let (zones, warnings) = snapshot::read_agents(store, &BTreeSet::new()).await?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let mut agents = Vec::new();
    for (zone, zone_agents) in zones {
        if let Some(active) = &zone_agents.active {
            let info = zone_agents.members.get(active).cloned().unwrap_or_default();
            agents.push(AgentRow::new(&zone, active, Role::Active, info));
        }
        for id in zone_agents.standbys() {
            let info = zone_agents.members.get(&id).cloned().unwrap_or_default();
            agents.push(AgentRow::new(&zone, &id, Role::Standby, info));
        }
    }
    let view = AgentsView {
        now_unix_ms: now_unix_ms(),
        agents,
    };
    output::emit(format, &view)
}

/// What `pmctl leader` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderView {
    /// The scheduler leader; `null` when none is elected.
    pub leader: Option<Leader>,
}

impl Render for LeaderView {
    fn table(&self) -> String {
        match &self.leader {
            Some(l) => format!(
                "scheduler leader: {} (election key {}, fencing revision {}, lease {:x})\n",
                l.id, l.key, l.create_revision, l.lease
            ),
            None => "scheduler leader: NONE (no pm-scheduler is elected; desired counts are not being updated)\n".into(),
        }
    }
}

/// `pmctl leader`.
pub async fn show_leader(store: &Store, format: OutputFormat) -> Result<()> {
    let leader = snapshot::read_leader(store).await?;
    let view = LeaderView {
        leader: leader.as_ref().map(Leader::new),
    };
    output::emit(format, &view)
}
