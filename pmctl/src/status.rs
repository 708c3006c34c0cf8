//! `pmctl status [POOL] [--watch]`: per zone desired, running, starting, lost, exhaustion
//! and agent; pool totals; the scheduler leader. `--watch` redraws in place on every
//! change in etcd and each second (for the time left of exhaustions).

use std::time::Duration;

use pm_etcd::{now_unix_ms, PoolKeys, ResumableWatch, Store, WatchRange};
use pm_proto::{ExhaustionClass, ObservedInstance, ZoneExhaustion};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::output::{self, Align, OutputFormat, Render, Table};
use pm_pool::fields::distribution_name;
use pm_pool::ObservedStatus;

use crate::rollout::{self, RolloutView};
use crate::snapshot::{self, zone_names, Snapshot, ZoneAgents};

/// How often `--watch` redraws when nothing changes.
const REDRAW_EVERY: Duration = Duration::from_secs(1);

/// Instance counts of a zone or a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Desired count (the scheduler's; absent key: 0).
    pub desired: i64,
    /// RUNNING and not preempted.
    pub running: u64,
    /// PROVISIONING, STAGING or unknown.
    pub starting: u64,
    /// Preempted, STOPPING or TERMINATED.
    pub lost: u64,
    /// Being deleted by pm.
    pub deleting: u64,
}

impl Counts {
    fn count(&mut self, instance: &ObservedInstance) {
        match ObservedStatus::of(instance) {
            ObservedStatus::Running => self.running += 1,
            ObservedStatus::Starting => self.starting += 1,
            ObservedStatus::Lost => self.lost += 1,
            ObservedStatus::Deleting => self.deleting += 1,
        }
    }

    fn add(&mut self, other: &Counts) {
        self.desired += other.desired;
        self.running += other.running;
        self.starting += other.starting;
        self.lost += other.lost;
        self.deleting += other.deleting;
    }
}

/// A zone's exhaustion mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exhaustion {
    /// When it began (Unix ms).
    pub since_unix_ms: i64,
    /// When its lease runs out (Unix ms).
    pub until_unix_ms: i64,
    /// Whole seconds left, as of the status's `now_unix_ms`.
    pub seconds_left: i64,
    /// Why: a GCE message, or "manual".
    pub reason: String,
    /// A scheduler id, or "pmctl".
    pub set_by: String,
    /// Back-off multiplier (1, 2, 4, ...).
    pub backoff_multiplier: u32,
    /// What the zone ran out of: `stockout`, `quota` (of its region) or `zone-error`
    /// (a create error of the zone, e.g. a machine type it does not offer).
    pub class: &'static str,
}

impl Exhaustion {
    /// The mark as of `now_ms`.
    pub fn new(mark: &ZoneExhaustion, now_ms: i64) -> Self {
        Self {
            since_unix_ms: mark.since_unix_ms,
            until_unix_ms: mark.until_unix_ms,
            seconds_left: output::seconds_until(mark.until_unix_ms, now_ms),
            reason: mark.reason.clone(),
            set_by: mark.set_by.clone(),
            backoff_multiplier: mark.backoff_multiplier,
            class: class_name(mark.class()),
        }
    }

    /// `2026-11-01T12:10:00Z (9m58s left)`, after `quota: ` or `zone-error: ` when the
    /// zone did not run out of capacity.
    pub fn until_text(&self) -> String {
        let until = format!(
            "{} ({} left)",
            output::time(self.until_unix_ms),
            output::span(self.seconds_left)
        );
        match self.class {
            "stockout" => until,
            class => format!("{class}: {until}"),
        }
    }
}

/// The name `pmctl status` gives an exhaustion's class.
fn class_name(class: ExhaustionClass) -> &'static str {
    match class {
        ExhaustionClass::Stockout => "stockout",
        ExhaustionClass::Quota => "quota",
        ExhaustionClass::ZoneError => "zone-error",
    }
}

/// The agents serving a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSummary {
    /// Id of the active agent; `null` when none is elected.
    pub active: Option<String>,
    /// Ids of the registered agents standing by.
    pub standbys: Vec<String>,
}

impl AgentSummary {
    fn new(agents: Option<&ZoneAgents>) -> Self {
        Self {
            active: agents.and_then(|a| a.active.clone()),
            standbys: agents.map(ZoneAgents::standbys).unwrap_or_default(),
        }
    }

    fn text(&self) -> String {
        let standby = match self.standbys.len() {
            0 => String::new(),
            1 => " +1 standby".into(),
            n => format!(" +{n} standbys"),
        };
        format!("{}{standby}", self.active.as_deref().unwrap_or("NONE"))
    }
}

/// One zone of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneStatus {
    /// The zone.
    pub zone: String,
    /// Whether the pool's config allows it (a zone left with instances may not be).
    pub allowed: bool,
    /// Whether the scheduler lets the agent create new instances here.
    pub accept_new: bool,
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// The exhaustion mark; `null` when the zone is usable.
    pub exhausted: Option<Exhaustion>,
    /// The zone's agents.
    pub agent: AgentSummary,
}

/// The phase of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Configured and kept at its target.
    Active,
    /// Deleted with `config delete`: scaling to 0, then its keys go.
    Deleting,
    /// Keys without a config (left over, or not created yet).
    Unconfigured,
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// The pool.
    pub pool: String,
    /// Its phase.
    pub phase: Phase,
    /// targetVMCount (0 when deleting or unconfigured).
    pub target: i64,
    /// `even`, `balanced` or `any`.
    pub distribution: &'static str,
    /// The sums over its zones.
    pub totals: Counts,
    /// Its zones, sorted by name.
    pub zones: Vec<ZoneStatus>,
    /// Its rollout while one is not complete; `null` otherwise.
    pub rollout: Option<RolloutView>,
}

/// The scheduler leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leader {
    /// The leader's id.
    pub id: String,
    /// Its election key.
    pub key: String,
    /// The key's create_revision: the leader's fencing revision.
    pub create_revision: i64,
    /// Its session lease.
    pub lease: i64,
}

impl Leader {
    /// The leader an election read returned.
    pub fn new(info: &pm_etcd::LeaderInfo) -> Self {
        Self {
            id: info.value.clone(),
            key: info.key.clone(),
            create_revision: info.create_revision,
            lease: info.lease,
        }
    }
}

/// What `pmctl status` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// The time the counts and time-left values refer to (Unix ms).
    pub now_unix_ms: i64,
    /// The scheduler leader; `null` when none is elected.
    pub leader: Option<Leader>,
    /// The pools, sorted by name.
    pub pools: Vec<PoolStatus>,
    /// Values in etcd that could not be decoded, and in `--watch` a failed refresh.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn pool_status(name: &str, pool: &PoolKeys, snapshot: &Snapshot, now_ms: i64) -> PoolStatus {
    let config = pool.config.as_ref().map(|c| &c.value);
    let phase = match config {
        None => Phase::Unconfigured,
        Some(c) if c.deleted => Phase::Deleting,
        Some(_) => Phase::Active,
    };
    let mut totals = Counts::default();
    let zones = zone_names(pool)
        .into_iter()
        .map(|zone| {
            let state = pool.zone(&zone);
            let desired = state.desired.as_ref().map(|d| &d.value);
            let mut counts = Counts {
                desired: desired.map_or(0, |d| d.count),
                ..Counts::default()
            };
            state
                .instances
                .values()
                .for_each(|i| counts.count(&i.value));
            totals.add(&counts);
            ZoneStatus {
                allowed: config.is_some_and(|c| !c.deleted && c.allowed_zones.contains(&zone)),
                accept_new: desired.is_some_and(|d| d.accept_new),
                counts,
                exhausted: state
                    .exhausted
                    .as_ref()
                    .map(|e| Exhaustion::new(&e.value, now_ms)),
                agent: AgentSummary::new(snapshot.agents.get(&zone)),
                zone,
            }
        })
        .collect();
    PoolStatus {
        pool: name.to_string(),
        phase,
        target: match phase {
            Phase::Active => config.map_or(0, |c| c.target_vm_count),
            Phase::Deleting | Phase::Unconfigured => 0,
        },
        distribution: distribution_name(config.map(|c| c.distribution()).unwrap_or_default()),
        totals,
        zones,
        rollout: rollout::view(name, pool).filter(|r| r.state != "complete"),
    }
}

impl StatusView {
    /// The status of a snapshot as of `now_ms`.
    pub fn new(snapshot: &Snapshot, now_ms: i64) -> Self {
        Self {
            now_unix_ms: now_ms,
            leader: snapshot.leader.as_ref().map(Leader::new),
            pools: snapshot
                .pools
                .iter()
                .map(|(name, pool)| pool_status(name, pool, snapshot, now_ms))
                .collect(),
            warnings: snapshot.warnings.clone(),
        }
    }
}

impl Render for StatusView {
    fn table(&self) -> String {
        let mut out = match &self.leader {
            Some(leader) => format!("scheduler leader: {}\n", leader.id),
            None => "scheduler leader: NONE (desired counts are not being updated)\n".into(),
        };
        if self.pools.is_empty() {
            out.push_str("\nno pools (create one with `pmctl config set POOL -f FILE`)\n");
        }
        for pool in &self.pools {
            let t = &pool.totals;
            let phase = match pool.phase {
                Phase::Active => String::new(),
                Phase::Deleting => " [being deleted]".into(),
                Phase::Unconfigured => " [no config]".into(),
            };
            out.push_str(&format!(
                "\npool {}{phase}: target {}, desired {}, running {}, starting {}, lost {}, deleting {} (distribution {})\n",
                pool.pool, pool.target, t.desired, t.running, t.starting, t.lost, t.deleting, pool.distribution
            ));
            if let Some(r) = &pool.rollout {
                let old: u64 = r
                    .revisions
                    .iter()
                    .filter(|c| c.revision != r.revision)
                    .map(|c| c.instances)
                    .sum();
                let reason = if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.reason)
                };
                out.push_str(&format!(
                    "rollout to revision {}: {}, {old} old VM(s) left{reason}\n",
                    r.revision, r.state
                ));
            }
            let mut table = Table::new(&[
                ("ZONE", Align::Left),
                ("DESIRED", Align::Right),
                ("RUNNING", Align::Right),
                ("STARTING", Align::Right),
                ("LOST", Align::Right),
                ("EXHAUSTED UNTIL", Align::Left),
                ("AGENT", Align::Left),
            ]);
            for zone in &pool.zones {
                let mut name = zone.zone.clone();
                if !zone.allowed {
                    name.push_str(" (not allowed)");
                }
                let c = &zone.counts;
                let desired = if zone.accept_new || c.desired == 0 {
                    c.desired.to_string()
                } else {
                    format!("{} (no new)", c.desired)
                };
                table.row(vec![
                    name,
                    desired,
                    c.running.to_string(),
                    c.starting.to_string(),
                    c.lost.to_string(),
                    zone.exhausted
                        .as_ref()
                        .map_or_else(|| "-".into(), Exhaustion::until_text),
                    zone.agent.text(),
                ]);
            }
            out.push_str(&table.render());
        }
        for warning in &self.warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }
}

/// `pmctl status [POOL]`, once.
pub async fn show(store: &Store, pool: Option<&str>, format: OutputFormat) -> Result<()> {
    let snapshot = snapshot::read(store, pool).await?;
    if let Some(pool) = pool {
        if !snapshot.pools.contains_key(pool) {
            return Err(Error::NoSuchPool {
                pool: pool.to_string(),
            });
        }
    }
    output::emit(format, &StatusView::new(&snapshot, now_unix_ms()))
}

/// `pmctl status [POOL] --watch`: redraws on every change under the prefix and, for a
/// table, each second. A failed refresh keeps the last status on screen with a warning
/// and is retried; Ctrl-C ends it.
pub async fn watch(store: &Store, pool: Option<&str>, format: OutputFormat) -> Result<()> {
    let mut snapshot = snapshot::read(store, pool).await?;
    let mut failure: Option<String> = None;
    let mut changes = ResumableWatch::new(
        store.client().clone(),
        WatchRange::Prefix(store.keys().root().to_string()),
        snapshot.revision + 1,
    );
    let mut ticks = tokio::time::interval(REDRAW_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let draw = |snapshot: &Snapshot, failure: &Option<String>| {
        let mut view = StatusView::new(snapshot, now_unix_ms());
        if let Some(e) = failure {
            view.warnings.push(format!("refresh failed, retrying: {e}"));
        }
        match format {
            OutputFormat::Table => {
                output::print(&format!("{}{}", output::CLEAR_SCREEN, view.table()))
            }
            OutputFormat::Json => output::emit_line(&view),
        }
    };
    draw(&snapshot, &failure)?;
    loop {
        let changed = tokio::select! {
            batch = changes.next() => { batch?; true }
            _ = ticks.tick() => failure.is_some(),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        if changed {
            match snapshot::read(store, pool).await {
                Ok(fresh) => {
                    snapshot = fresh;
                    failure = None;
                }
                Err(e) => failure = Some(e.report()),
            }
        }
        if changed || format == OutputFormat::Table {
            draw(&snapshot, &failure)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use pm_etcd::{Stamped, ZoneKeys};
    use pm_proto::{InstanceState, PoolConfig, ZoneDesired};

    use super::*;

    fn stamped<M>(value: M) -> Stamped<M> {
        Stamped {
            value,
            mod_revision: 5,
        }
    }

    fn snapshot() -> Snapshot {
        let mut zone_a = ZoneKeys {
            desired: Some(stamped(ZoneDesired {
                count: 2,
                accept_new: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        for (name, state, preempted) in [
            ("web-a1", InstanceState::Running, false),
            ("web-a2", InstanceState::Running, true),
            ("web-a3", InstanceState::Staging, false),
        ] {
            zone_a.instances.insert(
                name.into(),
                stamped(ObservedInstance {
                    state: state as i32,
                    preempted,
                    ..Default::default()
                }),
            );
        }
        let zone_b = ZoneKeys {
            exhausted: Some(stamped(ZoneExhaustion {
                since_unix_ms: 1_000,
                until_unix_ms: 600_000,
                backoff_multiplier: 1,
                reason: "manual".into(),
                set_by: "pmctl".into(),
                class: ExhaustionClass::Quota as i32,
            })),
            ..Default::default()
        };
        let pool = PoolKeys {
            rollout: None,
            config: Some(stamped(PoolConfig {
                target_vm_count: 3,
                allowed_zones: vec!["zone-a".into(), "zone-b".into()],
                ..Default::default()
            })),
            zones: [
                ("zone-a".to_string(), zone_a),
                ("zone-b".to_string(), zone_b),
            ]
            .into(),
        };
        let agents = ZoneAgents {
            active: Some("agent-1".into()),
            members: [
                ("agent-1".to_string(), Default::default()),
                ("agent-2".to_string(), Default::default()),
            ]
            .into(),
        };
        Snapshot {
            revision: 9,
            pools: [("web".to_string(), pool)].into(),
            agents: [("zone-a".to_string(), agents)].into(),
            leader: None,
            warnings: vec![],
        }
    }

    #[test]
    fn zones_count_and_show_exhaustion_and_agents() {
        let view = StatusView::new(&snapshot(), 1_000);
        let pool = &view.pools[0];
        assert_eq!(pool.phase, Phase::Active);
        assert_eq!(pool.target, 3);
        assert_eq!(
            pool.totals,
            Counts {
                desired: 2,
                running: 1,
                starting: 1,
                lost: 1,
                deleting: 0
            }
        );
        let b = &pool.zones[1];
        assert_eq!(b.counts.desired, 0, "an absent desired key means 0");
        assert_eq!(b.exhausted.as_ref().map(|e| e.seconds_left), Some(599));
        assert_eq!(b.agent.active, None);
        assert_eq!(pool.zones[0].agent.standbys, vec!["agent-2".to_string()]);
        let table = view.table();
        assert!(table.contains("scheduler leader: NONE"), "{table}");
        assert!(table.contains("(9m59s left)"), "{table}");
        assert!(table.contains("quota: "), "the class is shown: {table}");
        assert!(table.contains("agent-1 +1 standby"), "{table}");
        let json = serde_json::to_value(&view).expect("serializes");
        assert_eq!(json["pools"][0]["zones"][0]["running"], 1);
        assert_eq!(json["pools"][0]["zones"][1]["exhausted"]["set_by"], "pmctl");
        assert_eq!(json["pools"][0]["zones"][1]["exhausted"]["class"], "quota");
        assert_eq!(json["leader"], serde_json::Value::Null);
    }
}
