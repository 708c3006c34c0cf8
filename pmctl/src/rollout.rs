//! `pmctl rollout status|pause|resume|undo POOL`: where a pool's rollout stands, and
//! the operator's controls. Pause and resume are fields of the stored config (written
//! with compare-and-swap, as every config change); the scheduler leader carries them
//! out and records the events. Undo sets the template, project and prefix of the
//! revision before the current one, from the history the rollout key keeps.

use std::collections::BTreeMap;

use pm_etcd::{PoolKeys, Store};
use pm_pool::ObservedStatus;
use pm_proto::{PoolConfig, Rollout, RolloutState, Severity};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::events::record;
use crate::output::{self, Align, OutputFormat, Render, Table};
use crate::pool_config::read_modify_write;
use crate::snapshot::read_pools;

/// The VMs of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionCount {
    /// The revision; `(none)` for VMs from before revisions.
    pub revision: String,
    /// Its instances, in any state.
    pub instances: u64,
    /// Those RUNNING.
    pub running: u64,
}

/// What `pmctl rollout status` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    /// The pool.
    pub pool: String,
    /// The revision of its stored config.
    pub revision: String,
    /// `progressing`, `complete`, `paused` or `failed`.
    pub state: &'static str,
    /// Whether nothing is replaced now (paused by pmctl, or failed).
    pub paused: bool,
    /// Why it is paused or failed; empty otherwise.
    pub reason: String,
    /// Its VMs by revision, the stored config's first.
    pub revisions: Vec<RevisionCount>,
}

impl Render for RolloutView {
    fn table(&self) -> String {
        let mut out = format!(
            "pool {}: revision {}, {}{}\n",
            self.pool,
            self.revision,
            self.state,
            if self.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.reason)
            }
        );
        let mut table = Table::new(&[
            ("REVISION", Align::Left),
            ("INSTANCES", Align::Right),
            ("RUNNING", Align::Right),
        ]);
        for r in &self.revisions {
            let mark = if r.revision == self.revision {
                " *"
            } else {
                ""
            };
            table.row(vec![
                format!("{}{mark}", r.revision),
                r.instances.to_string(),
                r.running.to_string(),
            ]);
        }
        out.push_str(&table.render());
        out
    }
}

/// The name of a rollout state.
pub fn state_name(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Progressing => "progressing",
        RolloutState::Complete => "complete",
        RolloutState::Paused => "paused",
        RolloutState::Failed => "failed",
    }
}

/// The rollout of a pool from its keys: the config's revision, the state the scheduler
/// recorded (progressing while it has not caught up with the config), and the VMs by
/// revision.
pub fn view(pool: &str, keys: &PoolKeys) -> Option<RolloutView> {
    let config = &keys.config.as_ref()?.value;
    let revision = pm_pool::revision(config);
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    counts.insert(revision.clone(), (0, 0));
    for zone in keys.zones.values() {
        for stamped in zone.instances.values() {
            let o = &stamped.value;
            let entry = counts.entry(o.revision.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(ObservedStatus::of(o) == ObservedStatus::Running);
        }
    }
    let old = counts.iter().any(|(r, c)| *r != revision && c.0 > 0);
    let stored: Option<&Rollout> = keys.rollout.as_ref().map(|r| &r.value);
    let (state, reason) = match stored.filter(|r| r.revision == revision) {
        Some(r) => (r.state(), r.reason.clone()),
        None if old => (RolloutState::Progressing, String::new()),
        None => (RolloutState::Complete, String::new()),
    };
    let mut revisions: Vec<RevisionCount> = counts
        .into_iter()
        .map(|(r, (instances, running))| RevisionCount {
            revision: if r.is_empty() { "(none)".into() } else { r },
            instances,
            running,
        })
        .collect();
    revisions.sort_by_key(|r| r.revision != revision);
    Some(RolloutView {
        pool: pool.to_string(),
        revision,
        state: state_name(state),
        paused: config.rollout_paused || state == RolloutState::Failed,
        reason,
        revisions,
    })
}

/// `pmctl rollout status POOL`.
pub async fn status(store: &Store, pool: &str, format: OutputFormat) -> Result<()> {
    let (pools, _, _) = read_pools(store, Some(pool)).await?;
    let no_pool = || Error::NoSuchPool {
        pool: pool.to_string(),
    };
    let keys = pools.get(pool).ok_or_else(no_pool)?;
    output::emit(format, &view(pool, keys).ok_or_else(no_pool)?)
}

/// What pause, resume and undo print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlView {
    /// The pool.
    pub pool: String,
    /// `pause`, `resume` or `undo`.
    pub action: &'static str,
    /// Whether the config was written.
    pub changed: bool,
    /// The config's revision now.
    pub revision: String,
    /// The config key's mod_revision now.
    pub mod_revision: i64,
}

impl Render for ControlView {
    fn table(&self) -> String {
        let done = match (self.action, self.changed) {
            ("pause", true) => "rollout paused",
            ("pause", false) => "rollout paused already",
            ("resume", _) => "rollout resumed",
            _ => "rolling back",
        };
        format!("pool {}: {done} (revision {})\n", self.pool, self.revision)
    }
}

async fn control(
    store: &Store,
    pool: &str,
    action: &'static str,
    change: impl Fn(&mut PoolConfig) -> Result<()>,
    format: OutputFormat,
) -> Result<()> {
    let (before, mod_revision, changed) = read_modify_write(store, pool, &change).await?;
    // What was written: the same change of what was read, no second read.
    let mut after = before;
    change(&mut after)?;
    let revision = pm_pool::revision(&after);
    if changed {
        let message = format!("rollout {action} by pmctl (revision {revision})");
        record(store, pool, "rollout-control", Severity::Info, "", message).await;
    }
    let view = ControlView {
        pool: pool.to_string(),
        action,
        changed,
        revision,
        mod_revision,
    };
    output::emit(format, &view)
}

/// `pmctl rollout pause POOL`.
pub async fn pause(store: &Store, pool: &str, format: OutputFormat) -> Result<()> {
    let change = |c: &mut PoolConfig| {
        c.rollout_paused = true;
        Ok(())
    };
    control(store, pool, "pause", change, format).await
}

/// `pmctl rollout resume POOL`: also goes on after the scheduler paused the rollout.
pub async fn resume(store: &Store, pool: &str, format: OutputFormat) -> Result<()> {
    let change = |c: &mut PoolConfig| {
        c.rollout_paused = false;
        c.rollout_resumes += 1;
        Ok(())
    };
    control(store, pool, "resume", change, format).await
}

/// `pmctl rollout undo POOL`: the template, project and prefix of the revision before
/// the stored config's.
pub async fn undo(store: &Store, pool: &str, format: OutputFormat) -> Result<()> {
    let (pools, _, _) = read_pools(store, Some(pool)).await?;
    let history = pools
        .get(pool)
        .and_then(|k| k.rollout.as_ref())
        .map(|r| r.value.history.clone())
        .unwrap_or_default();
    let change = move |c: &mut PoolConfig| {
        let current = pm_pool::revision(c);
        let at = history.iter().rposition(|r| r.revision == current);
        let previous = match at {
            Some(i) if i > 0 => &history[i - 1],
            None if !history.is_empty() => &history[history.len() - 1],
            _ => {
                return Err(Error::Refused(format!(
                    "pool {pool:?} has no earlier revision to go back to"
                )))
            }
        };
        c.instance_json.clone_from(&previous.instance_json);
        c.project.clone_from(&previous.project);
        c.prefix.clone_from(&previous.prefix);
        Ok(())
    };
    control(store, pool, "undo", change, format).await
}

#[cfg(test)]
mod tests {
    use pm_etcd::{Stamped, ZoneKeys};
    use pm_proto::ObservedInstance;

    use super::*;

    fn stamped<T>(value: T) -> Stamped<T> {
        Stamped {
            value,
            mod_revision: 1,
        }
    }

    #[test]
    fn the_view_counts_vms_by_revision_current_first() {
        let config = PoolConfig {
            prefix: "w-".into(),
            instance_json: "{}".into(),
            ..Default::default()
        };
        let revision = pm_pool::revision(&config);
        let running = |rev: &str| ObservedInstance {
            state: pm_proto::InstanceState::Running as i32,
            revision: rev.into(),
            ..Default::default()
        };
        let zone = ZoneKeys {
            instances: [
                ("w-a".to_string(), stamped(running(""))),
                ("w-b".to_string(), stamped(running(&revision))),
            ]
            .into(),
            ..Default::default()
        };
        let mut keys = PoolKeys {
            config: Some(stamped(config)),
            rollout: None,
            zones: [("zone-a".to_string(), zone)].into(),
        };
        let v = view("web", &keys).expect("view");
        assert_eq!(v.state, "progressing", "the scheduler has not caught up");
        assert_eq!(v.revisions[0].revision, revision);
        assert_eq!(v.revisions[1].revision, "(none)");
        keys.rollout = Some(stamped(Rollout {
            revision: revision.clone(),
            state: RolloutState::Failed as i32,
            reason: "zone zone-a refuses it".into(),
            ..Default::default()
        }));
        let v = view("web", &keys).expect("view");
        assert_eq!((v.state, v.paused), ("failed", true));
        assert_eq!(v.reason, "zone zone-a refuses it");
    }
}
