//! The benchmark scenarios. Each starts its own system (etcd, gce-sim, schedulers,
//! agents as processes) and returns what it measured.

use std::time::{Duration, Instant};

use pm_etcd::Election;
use pm_proto::PoolConfig;
use pm_tests::cluster::TEMPLATE;
use pm_tests::Cluster;
use rand::SeedableRng;
use serde::Serialize;

use crate::capacity::CapacityTrace;
use crate::measure::{self, until};

/// Delays of gce-sim and the scale of each scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// gce-sim's operation delay.
    pub op_delay: Duration,
    /// gce-sim's boot delay.
    pub boot_delay: Duration,
    /// (instances, zones) of the converge runs.
    pub converge: Vec<(u64, usize)>,
    /// Pool size and zones of the heal runs.
    pub heal: (u64, usize),
    /// Fractions preempted in the heal runs.
    pub heal_fractions: Vec<f64>,
    /// Pool size of the exhaustion run (over 3 zones).
    pub exhaustion: u64,
    /// Length of the steady-state observation.
    pub steady: Duration,
    /// The pools' `secondsToRest`.
    pub rest_seconds: u32,
    /// Instances, zones and maxSurge (percent of the instances) of the rollout run.
    pub rollout: (u64, usize, u32),
    /// Instances, zones and preemptions (one at a time) of the notice run.
    pub notice: (u64, usize, usize),
    /// The capacity run's trace.
    pub capacity: CapacityTrace,
}

impl Profile {
    /// The full run: GCE-like delays at reduced scale in time, the sizes.
    pub fn full() -> Self {
        Self {
            op_delay: Duration::from_millis(2000),
            boot_delay: Duration::from_millis(5000),
            converge: vec![(100, 3), (1000, 10), (10_000, 50)],
            heal: (1000, 10),
            heal_fractions: vec![0.1, 0.5],
            exhaustion: 300,
            steady: Duration::from_secs(60),
            rest_seconds: 5,
            rollout: (1000, 10, 10),
            notice: (300, 3, 20),
            capacity: CapacityTrace {
                instances: 30,
                zones: 3,
                interval: Duration::from_secs(6),
                length: Duration::from_secs(180),
                stockout: Duration::from_secs(60),
            },
        }
    }

    /// A quick run that proves the harness works (CI).
    pub fn quick() -> Self {
        Self {
            op_delay: Duration::from_millis(200),
            boot_delay: Duration::from_millis(500),
            converge: vec![(30, 3)],
            heal: (30, 3),
            heal_fractions: vec![0.1, 0.5],
            exhaustion: 30,
            steady: Duration::from_secs(10),
            rest_seconds: 2,
            rollout: (30, 3, 10),
            notice: (9, 3, 4),
            capacity: CapacityTrace {
                instances: 9,
                zones: 3,
                interval: Duration::from_secs(2),
                length: Duration::from_secs(30),
                stockout: Duration::from_secs(10),
            },
        }
    }

    /// The fastest any instance can be RUNNING: gce-sim boots an instance from its insert
    /// on, while the operation finishes on its own clock.
    pub(crate) fn ideal(&self) -> Duration {
        self.op_delay.max(self.boot_delay)
    }

    pub(crate) fn pool(&self, c: &Cluster, target: u64) -> PoolConfig {
        PoolConfig {
            target_vm_count: i64::try_from(target).unwrap_or(i64::MAX),
            allowed_zones: c.zones().to_vec(),
            prefix: "b-".into(),
            instance_json: TEMPLATE.into(),
            seconds_to_rest: self.rest_seconds,
            seconds_for_exhaustion: 60,
            ..Default::default()
        }
    }

    pub(crate) async fn cluster(
        &self,
        zones: usize,
        capacity: u64,
        agents: usize,
        schedulers: usize,
    ) -> Cluster {
        Cluster::builder()
            .zones(zones)
            .agents(agents)
            .schedulers(schedulers)
            .capacity(capacity)
            .delays(self.op_delay, self.boot_delay)
            .max_waiting(max_waiting(zones * agents))
            .start()
            .await
    }

    /// Creates the benchmark pool of `n` instances and waits until all are RUNNING.
    async fn create_pool(&self, c: &Cluster, n: u64) -> anyhow::Result<Duration> {
        c.set_pool(POOL, self.pool(c, n)).await;
        self.wait_running(c, n).await
    }

    /// Waits until `n` instances are RUNNING; returns how long that took.
    pub(crate) async fn wait_running(&self, c: &Cluster, n: u64) -> anyhow::Result<Duration> {
        let (took, _) = until(
            "pool RUNNING",
            self.bound(n),
            POLL,
            || measure::state(c),
            |s| measure::running(s) == n,
        )
        .await?;
        Ok(took)
    }

    pub(crate) fn bound(&self, n: u64) -> Duration {
        Duration::from_secs(120 + n / 20) + self.ideal() * 20
    }
}

/// The agents' `--max-waiting` with `agents` in all: gce-sim runs in the bench and holds
/// a socket per operation waited on, so all of them together stay within
/// [`SIM_SOCKETS`] (the open-file limit of this machine is 20,000), and each agent keeps
/// its default of 256 when that fits.
fn max_waiting(agents: usize) -> usize {
    (SIM_SOCKETS / agents.max(1)).clamp(1, 256)
}

/// The sockets of waits on operations that gce-sim serves at most at once.
const SIM_SOCKETS: usize = 15_000;

/// The seed of the delays before the heal scenario's preemptions.
const HEAL_SEED: u64 = 10;

pub(crate) const POOL: &str = "bench";
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Scale 0 → N, steady state, and N → 0.
#[derive(Debug, Clone, Serialize)]
pub struct Converge {
    /// Instances.
    pub instances: u64,
    /// Zones.
    pub zones: usize,
    /// Time until all N are RUNNING.
    pub seconds: f64,
    /// `seconds` over the ideal (the longer of operation and boot delay).
    pub ratio_to_ideal: f64,
    /// GCE calls per created instance.
    pub gce_calls_per_instance: f64,
    /// The lower bound: one insert, one wait, and one list per zone per resync.
    pub gce_lower_bound_per_instance: f64,
    /// GCE calls by method during the scale-up.
    pub gce_calls: std::collections::BTreeMap<String, u64>,
    /// etcd writes per instance over create, run and delete.
    pub etcd_writes_per_lifecycle: f64,
    /// etcd writes per minute with nothing changing.
    pub steady_etcd_writes_per_minute: f64,
    /// GCE calls per minute with nothing changing.
    pub steady_gce_calls_per_minute: f64,
    /// Scheduler CPU share of one core in the steady state.
    pub scheduler_steady_cpu_percent: f64,
    /// One agent's CPU share of one core in the steady state.
    pub agent_steady_cpu_percent: f64,
    /// etcd's CPU share of one core in the steady state.
    pub etcd_steady_cpu_percent: f64,
    /// Scheduler CPU seconds over the whole run.
    pub scheduler_cpu_seconds: f64,
    /// One agent's CPU seconds over the whole run.
    pub agent_cpu_seconds: f64,
    /// Scheduler peak RSS.
    pub scheduler_peak_rss_mib: f64,
    /// One agent's peak RSS.
    pub agent_peak_rss_mib: f64,
    /// The largest peak RSS of all agents (one a zone).
    pub agent_peak_rss_mib_max: f64,
    /// The peak RSS of all agents together.
    pub agents_peak_rss_mib_total: f64,
    /// etcd's database size with the pool converged.
    pub etcd_db_size_mib: f64,
    /// pm's keys in etcd with the pool converged.
    pub etcd_keys: i64,
    /// The largest etcd reply any daemon received over the run.
    pub largest_etcd_reply_bytes: f64,
}

/// Runs the converge scenario for `n` instances over `zones`.
pub async fn converge(p: &Profile, n: u64, zones: usize) -> anyhow::Result<Converge> {
    let mut c = p.cluster(zones, n, 1, 1).await;
    let scheduler = c.scheduler(0).pid();
    let first_zone = c.zones()[0].clone();
    let agent = c.agent(&first_zone, 0).pid();
    let rev0 = measure::etcd_revision(&c).await?;
    let stats0 = measure::stats(&c).await?;
    let took = p.create_pool(&c, n).await?;
    // Let the agents record RUNNING before counting what creating cost.
    measure::quiescent(
        &c,
        Duration::from_secs(2) + Duration::from_secs(u64::from(p.rest_seconds)),
        p.bound(n),
    )
    .await?;
    let rev1 = measure::etcd_revision(&c).await?;
    let stats1 = measure::stats(&c).await?;
    let mut calls = std::collections::BTreeMap::new();
    for (method, outcomes) in &stats1.requests {
        let before = stats0.requests.get(method).map_or(0, |o| o.values().sum());
        calls.insert(method.clone(), outcomes.values().sum::<u64>() - before);
    }
    let total_calls = stats1.total - stats0.total;
    let resyncs = (took.as_secs_f64() / f64::from(p.rest_seconds))
        .ceil()
        .max(1.0);
    let lower = 2.0 * n as f64 + zones as f64 * resyncs;

    let etcd = c.etcd().member_pid(0).unwrap_or_default();
    let (cpu_s0, cpu_a0) = (measure::cpu_seconds(scheduler), measure::cpu_seconds(agent));
    let cpu_e0 = measure::cpu_seconds(etcd);
    let rev_s0 = measure::etcd_revision(&c).await?;
    let calls_s0 = measure::stats(&c).await?.total;
    let steady_start = Instant::now();
    tokio::time::sleep(p.steady).await;
    let window = steady_start.elapsed().as_secs_f64();
    let rev_s1 = measure::etcd_revision(&c).await?;
    let calls_s1 = measure::stats(&c).await?.total;
    let (cpu_s1, cpu_a1) = (measure::cpu_seconds(scheduler), measure::cpu_seconds(agent));
    let cpu_e1 = measure::cpu_seconds(etcd);
    let (db_size, keys) = measure::etcd_size(&c).await?;
    let (rss_max, rss_total) = measure::agents_peak_rss_mib(&mut c);

    c.set_pool(POOL, p.pool(&c, 0)).await;
    until(
        "all instances deleted and forgotten",
        p.bound(n),
        Duration::from_millis(200),
        || async {
            let live = measure::live(&measure::state(&c).await?);
            let observed: usize = c.observed(POOL).await.values().map(Vec::len).sum();
            Ok((live, observed))
        },
        |(live, observed)| *live == 0 && *observed == 0,
    )
    .await?;
    let largest_reply = measure::largest_reply(&c).await;
    let rev2 = measure::etcd_revision(&c).await?;
    let writes = (rev1 - rev0) + (rev2 - rev_s1);
    Ok(Converge {
        instances: n,
        zones,
        seconds: took.as_secs_f64(),
        ratio_to_ideal: took.as_secs_f64() / p.ideal().as_secs_f64(),
        gce_calls_per_instance: total_calls as f64 / n as f64,
        gce_lower_bound_per_instance: lower / n as f64,
        gce_calls: calls,
        etcd_writes_per_lifecycle: writes as f64 / n as f64,
        steady_etcd_writes_per_minute: (rev_s1 - rev_s0) as f64 * 60.0 / window,
        steady_gce_calls_per_minute: (calls_s1 - calls_s0) as f64 * 60.0 / window,
        scheduler_steady_cpu_percent: (cpu_s1 - cpu_s0) * 100.0 / window,
        agent_steady_cpu_percent: (cpu_a1 - cpu_a0) * 100.0 / window,
        etcd_steady_cpu_percent: (cpu_e1 - cpu_e0) * 100.0 / window,
        scheduler_cpu_seconds: measure::cpu_seconds(scheduler),
        agent_cpu_seconds: measure::cpu_seconds(agent),
        scheduler_peak_rss_mib: measure::peak_rss_mib(scheduler),
        agent_peak_rss_mib: measure::peak_rss_mib(agent),
        agent_peak_rss_mib_max: rss_max,
        agents_peak_rss_mib_total: rss_total,
        etcd_db_size_mib: db_size,
        etcd_keys: keys,
        largest_etcd_reply_bytes: largest_reply,
    })
}

/// Preempting a share of a pool and its replacement.
#[derive(Debug, Clone, Serialize)]
pub struct Heal {
    /// Pool size.
    pub instances: u64,
    /// Share preempted.
    pub fraction: f64,
    /// Instances preempted.
    pub preempted: u64,
    /// p50 of the time from preemption to the replacement being created.
    pub created_p50_seconds: f64,
    /// p99 of the same.
    pub created_p99_seconds: f64,
    /// p50 of the time from preemption to the replacement RUNNING.
    pub running_p50_seconds: f64,
    /// p99 of the same.
    pub running_p99_seconds: f64,
}

/// Converges a pool, then preempts each fraction of it in turn and times the healing.
pub async fn heal(p: &Profile) -> anyhow::Result<Vec<Heal>> {
    let (n, zones) = p.heal;
    let c = p.cluster(zones, n * 2, 1, 1).await;
    p.create_pool(&c, n).await?;
    let mut out = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(HEAL_SEED);
    for &fraction in &p.heal_fractions {
        // Start from a settled system, not right after the agents' last sync.
        let quiet = Duration::from_secs(u64::from(p.rest_seconds)) + Duration::from_millis(700);
        measure::quiescent(&c, quiet, p.bound(n)).await?;
        let per_zone = ((n as f64 * fraction) / zones as f64).round().max(1.0) as u64;
        measure::random_phase(&mut rng).await;
        let before = measure::state(&c).await?;
        let start = Instant::now();
        for zone in c.zones() {
            c.sim().preempt_count(zone, per_zone).await?;
        }
        let k = per_zone * zones as u64;
        let base_live = measure::live(&before) - k;
        let base_running = measure::running(&before) - k;
        let mut created = Vec::with_capacity(k as usize);
        let mut running = Vec::with_capacity(k as usize);
        while running.len() < k as usize {
            if start.elapsed() > p.bound(n) {
                anyhow::bail!("replacements of {k} preempted instances not RUNNING in time");
            }
            let s = measure::state(&c).await?;
            let at = start.elapsed();
            while (created.len() as u64) < k && measure::live(&s) > base_live + created.len() as u64
            {
                created.push(at);
            }
            while (running.len() as u64) < k
                && measure::running(&s) > base_running + running.len() as u64
            {
                running.push(at);
            }
            tokio::time::sleep(POLL).await;
        }
        out.push(Heal {
            instances: n,
            fraction,
            preempted: k,
            created_p50_seconds: measure::quantile(&created, 0.5).as_secs_f64(),
            created_p99_seconds: measure::quantile(&created, 0.99).as_secs_f64(),
            running_p50_seconds: measure::quantile(&running, 0.5).as_secs_f64(),
            running_p99_seconds: measure::quantile(&running, 0.99).as_secs_f64(),
        });
        until(
            "pool whole again",
            p.bound(n),
            POLL,
            || measure::state(&c),
            |s| measure::running(s) == n && measure::live(s) == n,
        )
        .await?;
    }
    Ok(out)
}

/// A zone stocking out while it has to replace instances.
#[derive(Debug, Clone, Serialize)]
pub struct Exhaustion {
    /// Pool size (over 3 zones).
    pub instances: u64,
    /// Instances the stocked-out zone had to replace.
    pub deficit: u64,
    /// From the first stockout to the whole deficit created in the other zones.
    pub deficit_elsewhere_seconds: f64,
}

/// Converges a pool over 3 zones, then makes zone A lose its instances with no capacity
/// left to replace them, and times the move of its deficit.
pub async fn exhaustion(p: &Profile) -> anyhow::Result<Exhaustion> {
    let n = p.exhaustion;
    let c = p.cluster(3, n * 2, 1, 1).await;
    p.create_pool(&c, n).await?;
    let zone_a = c.zones()[0].clone();
    let before = measure::state(&c).await?;
    let deficit = before.zones.get(&zone_a).map_or(0, measure::zone_live);
    let others: u64 = measure::live(&before) - deficit;
    let stockouts0 = before.counters.stockouts;
    c.sim().set_capacity(&zone_a, 0).await?;
    c.sim().preempt_count(&zone_a, deficit).await?;
    until(
        "a stockout",
        p.bound(n),
        POLL,
        || measure::state(&c),
        |s| s.counters.stockouts > stockouts0,
    )
    .await?;
    let (moved, _) = until(
        "the deficit created elsewhere",
        p.bound(n),
        POLL,
        || measure::state(&c),
        |s| {
            s.zones
                .iter()
                .filter(|(z, _)| **z != zone_a)
                .map(|(_, r)| r.live)
                .sum::<u64>()
                >= others + deficit
        },
    )
    .await?;
    Ok(Exhaustion {
        instances: n,
        deficit,
        deficit_elsewhere_seconds: moved.as_secs_f64(),
    })
}

/// A leader killed with SIGKILL and the standby's takeover.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// `scheduler` or `agent`.
    pub component: String,
    /// The daemons' lease TTL.
    pub lease_ttl_seconds: f64,
    /// From the kill to the standby's first write (scheduler: the new desired counts;
    /// agent: the first create).
    pub takeover_seconds: f64,
    /// From the kill to every instance the change asked for existing in GCE.
    pub creations_done_seconds: f64,
}

/// The end of a failover run: the standby's takeover happened now; waits until the
/// `target` instances exist and reports both times.
async fn finish_failover(
    p: &Profile,
    c: &Cluster,
    component: &str,
    target: u64,
    killed: Instant,
) -> anyhow::Result<Failover> {
    let takeover = killed.elapsed();
    until(
        "the new instances",
        p.bound(target),
        POLL,
        || measure::state(c),
        |s| measure::live(s) == target,
    )
    .await?;
    Ok(Failover {
        component: component.into(),
        lease_ttl_seconds: 2.0,
        takeover_seconds: takeover.as_secs_f64(),
        creations_done_seconds: killed.elapsed().as_secs_f64(),
    })
}

/// Kills the scheduler leader right after a scale-up and times the standby.
pub async fn scheduler_failover(p: &Profile) -> anyhow::Result<Failover> {
    let n = 30;
    let mut c = p.cluster(3, 200, 1, 2).await;
    p.create_pool(&c, n).await?;
    let election = Election::new(
        c.store().client().clone(),
        &c.store().keys().scheduler_election(),
    );
    let leader = election
        .leader()
        .await?
        .map(|l| l.value)
        .unwrap_or_default();
    let index = usize::from(c.scheduler(1).name() == leader);
    c.scheduler(index).kill9().await;
    let killed = Instant::now();
    c.set_pool(POOL, p.pool(&c, n + 6)).await;
    until(
        "new desired counts",
        p.bound(n),
        POLL,
        || measure::desired_total(&c, POOL),
        |t| *t == (n + 6) as i64,
    )
    .await?;
    finish_failover(p, &c, "scheduler", n + 6, killed).await
}

/// Kills the active agent of a zone right after a scale-up and times the standby.
pub async fn agent_failover(p: &Profile) -> anyhow::Result<Failover> {
    let n = 10;
    let mut c = p.cluster(1, 200, 2, 1).await;
    p.create_pool(&c, n).await?;
    let zone = c.zones()[0].clone();
    let election = Election::new(
        c.store().client().clone(),
        &c.store().keys().agent_election(&zone)?,
    );
    let active = election
        .leader()
        .await?
        .map(|l| l.value)
        .unwrap_or_default();
    let first = c.agent(&zone, 0).name().to_string();
    let index = usize::from(active != first);
    let inserts = |s: &gce_sim::SimStats| s.count("compute.instances.insert");
    let before = inserts(&measure::stats(&c).await?);
    c.agent(&zone, index).kill9().await;
    let killed = Instant::now();
    c.set_pool(POOL, p.pool(&c, n + 5)).await;
    until(
        "the standby's first create",
        p.bound(n),
        POLL,
        || measure::stats(&c),
        |s| inserts(s) > before,
    )
    .await?;
    finish_failover(p, &c, "agent", n + 5, killed).await
}
