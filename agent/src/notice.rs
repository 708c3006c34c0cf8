//! Preemption notices: GCE records a `compute.instances.preempted` operation when a
//! preemption *starts*, and the VM is STOPPING for about 30 s before it is powered off.
//! The active agent looks for new ones every `--notice-interval` (default 1 s): one
//! `zoneOperations.list` per project its pools use, newest first and one page of
//! [`NOTICE_PAGE`], so the cost does not grow with the zone's history, the pool sizes or
//! `secondsToRest`. A pool with a VM of its prefix among the new notices gets a pass at
//! once; the pass sees the VM STOPPING, counts it as going away, runs the preempted hook
//! and requests the replacement.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use pm_gce::compute::Compute;
use pm_gce::error::GceError;
use pm_gce::resources::Operation;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::active::AgentContext;
use crate::lists::Lists;
use crate::pool_state::Pools;

/// The newest preemption operations looked at per project and look: more new notices
/// than this within one interval are found by the pools' own passes instead.
pub const NOTICE_PAGE: u32 = 50;

/// The filter of preemption operations.
const PREEMPTED: &str = "operationType = \"compute.instances.preempted\"";

/// What one look found: each project with its newest preemption operations, or why not.
pub type Looked = Vec<(String, Result<Vec<Operation>, GceError>)>;

/// The follower of one active term.
pub struct Notices {
    /// When to look.
    tick: Interval,
    /// The look in flight.
    running: Option<JoinHandle<Looked>>,
    /// Per project, the names of the operations the last look listed: the window only
    /// moves forward, so an operation not among them is new. A project's first look
    /// only fills it: what came before the term is for the pools' first passes.
    seen: BTreeMap<String, BTreeSet<String>>,
    /// Pools woken while their list was in flight: woken at the first look that returns
    /// after their list has, so their next pass lists after the notice.
    deferred: BTreeSet<String>,
    /// Per project failing its looks, when that was last logged: once per
    /// [`WARN_EVERY`], not at every look.
    warned: BTreeMap<String, Instant>,
}

/// How often a project whose looks keep failing is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Drop for Notices {
    /// A look in flight ends with the term: a deposed agent calls GCE no more.
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.abort();
        }
    }
}

impl Notices {
    /// Looks every `interval`, the first time at once.
    pub fn new(interval: Duration) -> Self {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self {
            tick,
            running: None,
            seen: BTreeMap::new(),
            deferred: BTreeSet::new(),
            warned: BTreeMap::new(),
        }
    }

    /// Carries out `step`: starts a look, or wakes the pools of what one found.
    pub fn take(&mut self, step: Step, ctx: &AgentContext, pools: &mut Pools, lists: &Lists) {
        let default_project = ctx.default_project.as_deref();
        match step {
            Step::Look => self.look(&ctx.compute, &ctx.zone, pools, default_project),
            Step::Looked(looked) => {
                for (pool, name) in self.wake(looked, pools, lists, default_project) {
                    tracing::info!(%pool, %name, "preemption notice: passing over the pool now");
                }
            }
        }
    }

    /// Starts a look at the projects of `pools` (each pool's, else `default_project`)
    /// unless one is in flight.
    fn look(
        &mut self,
        compute: &Arc<dyn Compute>,
        zone: &str,
        pools: &Pools,
        default_project: Option<&str>,
    ) {
        if self.running.is_some() {
            return;
        }
        let projects: BTreeSet<String> = pools
            .pools
            .values()
            .filter_map(|state| state.config.as_ref())
            .filter_map(|config| pm_pool::project_or(config, default_project))
            .collect();
        if projects.is_empty() {
            return;
        }
        let compute = compute.clone();
        let zone = zone.to_string();
        self.running = Some(tokio::spawn(async move {
            let mut looked = Vec::with_capacity(projects.len());
            for project in projects {
                let ops = compute
                    .recent_operations(&project, &zone, Some(PREEMPTED), NOTICE_PAGE)
                    .await;
                looked.push((project, ops));
            }
            looked
        }));
    }

    /// Wakes every pool with a VM among the new notices of `looked` (and those deferred
    /// whose list has returned); returns the VMs noticed, `(pool, name)`.
    fn wake(
        &mut self,
        looked: Looked,
        pools: &mut Pools,
        lists: &Lists,
        default_project: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut noticed = Vec::new();
        for (project, ops) in looked {
            let ops = match ops {
                Ok(ops) => {
                    self.warned.remove(&project);
                    ops
                }
                Err(e) => {
                    let due = self
                        .warned
                        .get(&project)
                        .is_none_or(|at| at.elapsed() >= WARN_EVERY);
                    if due {
                        tracing::warn!(%project, error = %e, "cannot look for preemption notices; passes find preemptions at their own pace");
                        self.warned.insert(project, Instant::now());
                    }
                    continue;
                }
            };
            let ids: BTreeSet<String> = ops.iter().map(|op| op.name.clone()).collect();
            let Some(before) = self.seen.insert(project.clone(), ids) else {
                continue;
            };
            let fresh = ops.iter().filter(|op| !before.contains(&op.name));
            for name in fresh.filter_map(Operation::target_name) {
                noticed.extend(owners(pools, &project, name, default_project));
            }
        }
        let woken: BTreeSet<String> = noticed.iter().map(|(pool, _)| pool.clone()).collect();
        self.deferred.extend(woken);
        let deferred = std::mem::take(&mut self.deferred);
        for pool in deferred {
            match pools.pools.get_mut(&pool) {
                Some(_) if lists.busy(&pool) => {
                    self.deferred.insert(pool);
                }
                Some(state) => state.wake_within(Duration::ZERO),
                None => {}
            }
        }
        noticed
    }
}

/// What the follower is to do next.
pub enum Step {
    /// A look is due.
    Look,
    /// A look returned.
    Looked(Looked),
}

/// The next step of `notices`; pending forever without a follower, so that it can sit in
/// a `select!`.
pub async fn step(notices: Option<&mut Notices>) -> Option<Step> {
    let Some(notices) = notices else {
        return std::future::pending().await;
    };
    let Notices { tick, running, .. } = notices;
    tokio::select! {
        _ = tick.tick() => Some(Step::Look),
        looked = returned(running) => Some(Step::Looked(looked)),
    }
}

/// What the look in flight found; pending while none is (cancel-safe: the look stays in
/// flight).
async fn returned(running: &mut Option<JoinHandle<Looked>>) -> Looked {
    let Some(handle) = running.as_mut() else {
        return std::future::pending().await;
    };
    let looked = handle.await;
    *running = None;
    looked.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the preemption notice look failed");
        Vec::new()
    })
}

/// The pools of `project` whose prefix `name` has, with `name`.
fn owners(
    pools: &Pools,
    project: &str,
    name: &str,
    default_project: Option<&str>,
) -> Vec<(String, String)> {
    pools
        .pools
        .iter()
        .filter(|(_, state)| {
            state.config.as_ref().is_some_and(|config| {
                !config.prefix.is_empty()
                    && name.starts_with(&config.prefix)
                    && pm_pool::project_or(config, default_project).as_deref() == Some(project)
            })
        })
        .map(|(pool, _)| (pool.clone(), name.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pm_etcd::Keyspace;
    use pm_proto::OnPreempted;
    use tokio::time::Instant;

    use super::*;
    use crate::pool_state::PoolState;

    const LATER: Duration = Duration::from_secs(3600);

    /// Pools `web` (prefix `w-`, project `proj`) and `db` (prefix `d-`), neither due.
    fn pools() -> Pools {
        let mut pools = Pools::new("zone-a", Keyspace::default());
        for (pool, prefix) in [("web", "w-"), ("db", "d-")] {
            let mut config = crate::reconcile::tests::config(OnPreempted::Delete);
            config.prefix = prefix.into();
            let state = PoolState {
                config: Some(config),
                next_sync: Instant::now() + LATER,
                ..Default::default()
            };
            pools.pools.insert(pool.into(), state);
        }
        pools
    }

    fn preempted(name: &str, target: &str) -> Operation {
        let link = format!(
            "https://compute.googleapis.com/compute/v1/projects/proj/zones/zone-a/instances/{target}"
        );
        serde_json::from_value(serde_json::json!({
            "name": name,
            "operationType": "compute.instances.preempted",
            "targetLink": link,
            "status": "DONE",
        }))
        .unwrap()
    }

    fn due(pools: &Pools, pool: &str) -> bool {
        pools.pools[pool].next_sync <= Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn only_new_notices_wake_only_the_pools_they_name() {
        let mut notices = Notices::new(Duration::from_secs(1));
        let mut pools = pools();
        let lists = Lists::default();
        let before = vec![("proj".to_string(), Ok(vec![preempted("op-0", "w-0")]))];
        assert!(notices.wake(before, &mut pools, &lists, None).is_empty());
        assert!(
            !due(&pools, "web"),
            "the first look only learns what is there"
        );
        let first = vec![(
            "proj".to_string(),
            Ok(vec![preempted("op-1", "w-1"), preempted("op-0", "w-0")]),
        )];
        let noticed = notices.wake(first, &mut pools, &lists, None);
        assert_eq!(noticed, [("web".to_string(), "w-1".to_string())]);
        assert!(due(&pools, "web") && !due(&pools, "db"));

        pools.pools.get_mut("web").unwrap().next_sync = Instant::now() + LATER;
        let again = vec![(
            "proj".to_string(),
            Ok(vec![preempted("op-2", "x-1"), preempted("op-1", "w-1")]),
        )];
        assert!(notices.wake(again, &mut pools, &lists, None).is_empty());
        assert!(!due(&pools, "web"), "a notice seen before wakes nothing");

        let primed = vec![("elsewhere".to_string(), Ok(vec![]))];
        assert!(notices.wake(primed, &mut pools, &lists, None).is_empty());
        let other = vec![("elsewhere".to_string(), Ok(vec![preempted("op-3", "d-1")]))];
        assert!(notices.wake(other, &mut pools, &lists, None).is_empty());
        assert!(!due(&pools, "db"), "another project's VM is not the pool's");

        let failed = GceError::http(pm_gce::compute::ApiCall::ListOperations, 503, "x", "down");
        let down = vec![("proj".to_string(), Err(failed))];
        assert!(notices.wake(down, &mut pools, &lists, None).is_empty());
        let newer = vec![(
            "proj".to_string(),
            Ok(vec![preempted("op-4", "d-7"), preempted("op-2", "x-1")]),
        )];
        let noticed = notices.wake(newer, &mut pools, &lists, None);
        assert_eq!(noticed, [("db".to_string(), "d-7".to_string())]);
        assert!(due(&pools, "db"));
    }
}
