//! The fault suite. The whole system runs as separate processes: a real etcd (one node,
//! or a 3-node cluster), gce-sim, 2 schedulers, and agents for 3 zones with a standby in
//! `zone-a`, whose agents reach etcd through proxies the test can cut. Faults come in a
//! random order with random parameters and timing, while a checker reads gce-sim every
//! 100 ms for the invariants:
//!
//! - live pool instances never exceed target + number of zones;
//! - no name is used twice;
//! - instances without the pool's label and prefix are never touched;
//!
//! and after the faults stop, the pool converges to target within a bound, with GCE and
//! etcd agreeing on every instance (no leaks either way), and no daemon crashed.
//!
//! Every run prints its seed and the command that replays it:
//! `PM_FAULT_SEEDS=<seed> cargo test -p pm-tests --test faults -- --nocapture <test>`.
//! The seed fixes the order of the faults and every parameter (durations, rates,
//! zones, counts); which VMs get preempted is drawn from a second generator, since it
//! depends on what is running, and the daemons' timing is their own. CI runs the
//! fixed seeds below, one topology after the other. A soak runs many random seeds:
//! `PM_FAULT_SOAK=<runs>`; `PM_FAULT_STEPS=<n>` sets the faults per run (default: each
//! kind once, in random order).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use gce_sim::{Faults, InstanceReport, InstancesReport, PoolReport, SimControl, SimStats};
use pm_etcd::Election;
use pm_gce::compute::request_id_for;
use pm_proto::{Distribution, Event, Hooks, PoolConfig};
use pm_tests::cluster::{metric_sum, zone_name, PROJECT, TEMPLATE};
use pm_tests::{write_script, Cluster, TcpProxy};

const POOL: &str = "web";
const PREFIX: &str = "web-";
const TARGET: usize = 12;
const ZONES: usize = 3;
/// The zone with a standby agent; its agents reach etcd through cuttable proxies.
const STANDBY_ZONE: &str = "zone-a";
/// Lease TTL of every daemon.
const TTL: Duration = Duration::from_secs(2);
/// The agents' `--operation-timeout`: how long they wait for a GCE operation.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);
/// Capacity of a zone that is not stocked out.
const CAPACITY: u64 = 1000;
/// Bound on any one wait inside a fault.
const STEP_BOUND: Duration = Duration::from_secs(60);
/// Bound on converging after the faults stopped.
const CONVERGE_BOUND: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);
/// Methods that change instances, counted to prove a cut-off agent stopped acting.
const MUTATIONS: [&str; 3] = [
    "compute.instances.insert",
    "compute.instances.delete",
    "compute.instances.start",
];

/// The kinds of fault; each run draws their order and parameters from its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    KillScheduler,
    KillAgent,
    KillSchedulerAndAgent,
    RestartEtcd,
    LoseEtcdMember,
    LoseEtcdQuorum,
    CutAgentFromEtcd,
    GceErrors,
    GceSlow,
    GceHang,
    PreemptionStorm,
    LongStockout,
    PartitionEtcdMember,
    SnapshotRestore,
    ConfigChange,
    QuotaStorm,
    BackgroundingHooks,
    GceOperationErrors,
    OrphanZone,
}

impl Kind {
    fn all(etcd_members: usize) -> Vec<Kind> {
        let mut kinds = vec![
            Kind::KillScheduler,
            Kind::KillAgent,
            Kind::KillSchedulerAndAgent,
            Kind::RestartEtcd,
            Kind::CutAgentFromEtcd,
            Kind::GceErrors,
            Kind::GceSlow,
            Kind::GceHang,
            Kind::PreemptionStorm,
            Kind::LongStockout,
            Kind::SnapshotRestore,
            Kind::ConfigChange,
            Kind::QuotaStorm,
            Kind::BackgroundingHooks,
            Kind::GceOperationErrors,
            Kind::OrphanZone,
        ];
        if etcd_members >= 3 {
            kinds.extend([
                Kind::LoseEtcdMember,
                Kind::LoseEtcdQuorum,
                Kind::PartitionEtcdMember,
            ]);
        }
        kinds
    }
}

/// What the checker found.
#[derive(Debug, Default)]
struct Findings {
    /// Broken invariants: what broke, and how it first showed.
    violations: BTreeMap<String, String>,
    /// States of gce-sim checked.
    samples: u64,
    /// Most live pool instances at once, as gce-sim counts them (between samples too).
    peak: u64,
    /// The GCE id each pool instance name was first seen with.
    ids: BTreeMap<String, String>,
}

impl Findings {
    fn report(&self) -> String {
        self.violations
            .iter()
            .fold(String::new(), |mut out, (what, how)| {
                let _ = writeln!(out, "  {what}: {how}");
                out
            })
    }
}

/// Reads gce-sim every [`POLL`] and records every broken invariant.
struct Checker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn is_pool(i: &InstanceReport) -> bool {
    i.project == PROJECT
        && i.name.starts_with(PREFIX)
        && i.labels.get("pm-pool").map(String::as_str) == Some(POOL)
}

/// The invariants over one reading of gce-sim: (what broke, how) for each problem.
/// `ids` remembers every pool instance's id across readings, to catch a name used
/// twice however far apart.
fn check(
    report: &InstancesReport,
    foreign: &[InstanceReport],
    ids: &mut BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let peak = pool_peak(report);
    if peak > (TARGET + ZONES) as u64 {
        problems.push((
            "too many live pool instances".to_string(),
            format!("{peak} at once, more than target {TARGET} + {ZONES} zones"),
        ));
    }
    let pool: Vec<&InstanceReport> = report.instances.iter().filter(|i| is_pool(i)).collect();
    let mut zones_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in &pool {
        zones_of.entry(&i.name).or_default().push(&i.zone);
        let first = ids.entry(i.name.clone()).or_insert_with(|| i.id.clone());
        if *first != i.id {
            problems.push((
                format!("name {} used twice", i.name),
                format!("ids {first} and {}", i.id),
            ));
        }
    }
    for (name, zones) in zones_of.iter().filter(|(_, z)| z.len() > 1) {
        problems.push((
            format!("name {name} used twice"),
            format!("in zones {zones:?}"),
        ));
    }
    for f in foreign {
        let what = format!("foreign instance {} touched", f.name);
        match report
            .instances
            .iter()
            .find(|i| i.zone == f.zone && i.name == f.name)
        {
            None => problems.push((what, "deleted".into())),
            Some(now) if now.id != f.id => problems.push((what, "created again".into())),
            Some(now) if now.status != f.status => {
                problems.push((what, format!("went from {} to {}", f.status, now.status)));
            }
            Some(now) if !now.changes.is_empty() => {
                problems.push((what, format!("calls naming it: {:?}", now.changes)));
            }
            Some(_) => {}
        }
    }
    problems
}

/// The most live pool instances there ever were at once.
fn pool_peak(report: &InstancesReport) -> u64 {
    report
        .pools
        .iter()
        .find(|p| p.project == PROJECT && p.pool == POOL)
        .map_or(0, |p| p.peak)
}

impl Checker {
    fn start(
        sim: SimControl,
        foreign: Vec<InstanceReport>,
        findings: Arc<Mutex<Findings>>,
    ) -> Checker {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.is_cancelled() {
                    let result = sim.instances().await;
                    {
                        let mut f = findings.lock().expect("findings");
                        match result {
                            Ok(report) => {
                                let mut ids = std::mem::take(&mut f.ids);
                                let problems = check(&report, &foreign, &mut ids);
                                f.ids = ids;
                                f.samples += 1;
                                f.peak = f.peak.max(pool_peak(&report));
                                for (what, how) in problems {
                                    f.violations.entry(what).or_insert(how);
                                }
                            }
                            Err(e) => {
                                f.violations
                                    .entry("gce-sim does not answer".into())
                                    .or_insert(e.to_string());
                            }
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        });
        Checker { stop, task }
    }

    async fn finish(self) {
        self.stop.cancel();
        self.task.await.expect("checker task");
    }
}

/// What one run measured.
struct RunReport {
    seed: u64,
    faults: usize,
    samples: u64,
    peak: u64,
    /// How long the pool took to converge after a fault ended, for the faults whose
    /// end it was given time to converge after (the others overlap the next fault);
    /// `None` stands for the end of the whole run.
    recoveries: Vec<(Option<Kind>, Duration)>,
}

impl RunReport {
    fn worst(&self) -> Option<(Option<Kind>, Duration)> {
        self.recoveries
            .iter()
            .copied()
            .max_by_key(|(_, took)| *took)
    }
}

/// Whose election [`System::live_leader`] reads.
#[derive(Debug, Clone, Copy)]
enum Role<'a> {
    Scheduler,
    Agent(&'a str),
}

/// The system under faults, and the run's record.
struct System {
    c: Cluster,
    /// The test that runs it, for the replay command.
    test: &'static str,
    seed: u64,
    /// Draws the faults and their parameters.
    rng: StdRng,
    /// Draws which VMs to preempt.
    victims: StdRng,
    origin: Instant,
    /// One line per fault, for the report and for failures.
    timeline: String,
    /// The proxies of each agent of [`STANDBY_ZONE`], by agent index.
    proxies: BTreeMap<usize, Vec<TcpProxy>>,
    /// Names of the daemons the suite killed on purpose.
    killed: BTreeSet<String>,
    /// What the checker found so far.
    findings: Arc<Mutex<Findings>>,
    _hooks: tempfile::TempDir,
}

/// Polls `$check` (an expression giving an `Option`) until it is `Some`, for at most
/// `$bound`; on timeout the run fails, naming `$what`.
macro_rules! wait_for {
    ($sys:expr, $what:expr, $bound:expr, $check:expr) => {{
        let deadline = Instant::now() + $bound;
        loop {
            if let Some(value) = $check {
                break value;
            }
            if Instant::now() >= deadline {
                $sys.fail(&format!(
                    "timed out after {:?} waiting for: {}",
                    $bound, $what
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }};
}

impl System {
    async fn start(test: &'static str, seed: u64, etcd_members: usize) -> System {
        let hooks = tempfile::tempdir().expect("hooks dir");
        write_script(
            hooks.path(),
            "loud",
            "head -c 3000000 /dev/zero | tr '\\0' x; echo",
        );
        write_script(hooks.path(), "hang", "sleep 30");
        write_script(hooks.path(), "fail", "echo failing on purpose >&2; exit 7");
        // Exits at once, leaving a child that holds its stdout for longer than the hook
        // timeout: the run must end at the timeout and free its slot.
        write_script(hooks.path(), "bg", "(sleep 30; echo late) &\necho started");
        let c = Cluster::builder()
            .zones(ZONES)
            .agents(0)
            .schedulers(2)
            .etcd_members(etcd_members)
            .capacity(CAPACITY)
            .delays(Duration::from_millis(200), Duration::from_millis(500))
            .lease_ttl(TTL)
            .operation_timeout(OPERATION_TIMEOUT)
            .hooks_dir(hooks.path())
            .start()
            .await;
        let mut sys = System {
            c,
            test,
            seed,
            rng: StdRng::seed_from_u64(seed),
            victims: StdRng::seed_from_u64(seed.rotate_left(32) ^ 0x5eed_0ff1_c713_5eed),
            origin: Instant::now(),
            timeline: String::new(),
            proxies: BTreeMap::new(),
            killed: BTreeSet::new(),
            findings: Arc::new(Mutex::new(Findings::default())),
            _hooks: hooks,
        };
        sys.start_standby_zone_agent().await;
        sys.start_standby_zone_agent().await;
        for index in 1..ZONES {
            sys.c.start_agent(&zone_name(index));
        }
        sys
    }

    /// Starts an agent of [`STANDBY_ZONE`] behind its own proxies, one per etcd member.
    async fn start_standby_zone_agent(&mut self) {
        let mut proxies = Vec::new();
        for url in self.c.etcd().endpoints() {
            proxies.push(TcpProxy::for_url(&url).await);
        }
        let urls: Vec<String> = proxies.iter().map(TcpProxy::url).collect();
        let index = self.c.start_agent_via(STANDBY_ZONE, &urls.join(","));
        self.proxies.insert(index, proxies);
    }

    fn note(&mut self, line: String) {
        let line = format!(
            "[{:6.1}s] seed {}: {line}",
            self.origin.elapsed().as_secs_f64(),
            self.seed
        );
        println!("{line}");
        self.timeline.push_str(&line);
        self.timeline.push('\n');
    }

    fn fail(&self, problem: &str) -> ! {
        let findings = self.findings.lock().map(|f| f.report()).unwrap_or_default();
        panic!(
            "fault suite, seed {seed} failed: {problem}\n\
             replay: PM_FAULT_SEEDS={seed} cargo test -p pm-tests --test faults -- --nocapture {test}\n\
             invariants broken so far:\n{findings}\
             faults so far:\n{}\n{}",
            self.timeline,
            self.c.logs(),
            seed = self.seed,
            test = self.test,
        )
    }

    /// A random duration between `from_ms` and `to_ms` milliseconds.
    fn random_duration(&mut self, from_ms: u64, to_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(from_ms..=to_ms))
    }

    /// Instances without the pool's label or prefix in `zone-b`: one RUNNING, two
    /// preempted (TERMINATED), which an agent that mistook them for the pool's would
    /// delete or restart.
    async fn create_foreign(&mut self) -> Vec<InstanceReport> {
        let zone = zone_name(1);
        let names = [
            ("web-nolabel", None),
            ("other-labelled", Some(POOL)),
            ("web-otherpool", Some("api")),
        ];
        for (name, label) in names {
            let mut value: serde_json::Value = serde_json::from_str(
                &TEMPLATE
                    .replace("{name}", name)
                    .replace("{project}", PROJECT)
                    .replace("{zone}", &zone),
            )
            .expect("template");
            if let Some(label) = label {
                value["labels"]["pm-pool"] = label.into();
            }
            let instance = serde_json::from_value(value).expect("instance");
            self.c
                .compute()
                .insert(PROJECT, &zone, &instance, &request_id_for(name))
                .await
                .expect("insert foreign instance");
        }
        let sim = self.c.sim();
        let running = |all: &[InstanceReport]| {
            names
                .iter()
                .all(|(n, _)| all.iter().any(|i| i.name == *n && i.status == "RUNNING"))
        };
        wait_for!(self, "the foreign instances run", STEP_BOUND, {
            running(&sim.instances().await.expect("sim").instances).then_some(())
        });
        sim.preempt_names(&["web-nolabel", "other-labelled"])
            .await
            .expect("preempt foreign instances");
        wait_for!(self, "two foreign instances are TERMINATED", STEP_BOUND, {
            let all = sim.instances().await.expect("sim").instances;
            let foreign: Vec<InstanceReport> = all
                .into_iter()
                .filter(|i| names.iter().any(|(n, _)| *n == i.name))
                .collect();
            let terminated = foreign.iter().filter(|i| i.status == "TERMINATED").count();
            (terminated == 2).then_some(foreign)
        })
    }

    async fn set_pool(&mut self) {
        let mut config = self.c.pool_config(PREFIX, TARGET as i64);
        config.hooks = Some(Hooks {
            create: "loud".into(),
            delete: "fail".into(),
            vanished: "hang".into(),
            exhausted: "fail".into(),
            preempted: "hang".into(),
            drain: "loud".into(),
        });
        self.c.set_pool(POOL, config).await;
    }

    /// The pool's stored config.
    async fn pool_config(&self) -> PoolConfig {
        let key = self.c.store().keys().pool_config(POOL).expect("pool key");
        let stored = self.c.store().get::<PoolConfig>(&key).await;
        stored
            .expect("read the config")
            .expect("the pool has a config")
            .value
    }

    /// The pool's instances in gce-sim, read past fault injection.
    async fn pool_instances(&self) -> Vec<InstanceReport> {
        let report = self.c.sim().instances().await.expect("gce-sim control");
        report.instances.into_iter().filter(is_pool).collect()
    }

    /// RUNNING pool instances, optionally of one zone.
    async fn running(&self, zone: Option<&str>) -> Vec<String> {
        self.pool_instances()
            .await
            .into_iter()
            .filter(|i| i.status == "RUNNING" && zone.is_none_or(|z| i.zone == z))
            .map(|i| i.name)
            .collect()
    }

    /// Whether the pool is at target, everything RUNNING, and etcd records exactly what
    /// GCE holds.
    async fn converged(&self) -> bool {
        let pool = self.pool_instances().await;
        if pool.len() != TARGET || pool.iter().any(|i| i.status != "RUNNING") {
            return false;
        }
        let gce: BTreeMap<String, BTreeSet<String>> = self
            .c
            .zones()
            .iter()
            .map(|z| {
                let names = pool.iter().filter(|i| &i.zone == z).map(|i| i.name.clone());
                (z.clone(), names.collect())
            })
            .collect();
        let Ok(observed) = self.c.try_observed(POOL).await else {
            return false;
        };
        let etcd: BTreeMap<String, BTreeSet<String>> = observed
            .into_iter()
            .map(|(z, names)| (z, names.into_iter().collect()))
            .collect();
        gce == etcd
    }

    async fn wait_converged(&mut self, what: &str, bound: Duration) -> Duration {
        let started = Instant::now();
        wait_for!(self, what, bound, self.converged().await.then_some(()));
        started.elapsed()
    }

    /// Preempts up to `count` random RUNNING pool instances (of `zone`, if given).
    async fn preempt(&mut self, count: usize, zone: Option<&str>) -> Vec<String> {
        let running = self.running(zone).await;
        let victims: Vec<String> = running
            .choose_multiple(&mut self.victims, count)
            .cloned()
            .collect();
        if victims.is_empty() {
            return victims;
        }
        let names: Vec<&str> = victims.iter().map(String::as_str).collect();
        self.c.sim().preempt_names(&names).await.expect("preempt");
        victims
    }

    /// The index of the running daemon that leads `role`'s election, once one does.
    async fn live_leader(&mut self, role: Role<'_>) -> usize {
        let keys = self.c.store().keys();
        let election = match role {
            Role::Scheduler => keys.scheduler_election(),
            Role::Agent(zone) => keys.agent_election(zone).expect("zone"),
        };
        let client = self.c.store().client().clone();
        wait_for!(
            self,
            format!("a running daemon leads {election}"),
            STEP_BOUND,
            {
                let leader = tokio::time::timeout(
                    Duration::from_secs(5),
                    Election::new(client.clone(), &election).leader(),
                )
                .await;
                match leader {
                    Ok(Ok(Some(leader))) => self.running_daemon(role, &leader.value),
                    _ => None,
                }
            }
        )
    }

    /// The index of the running daemon of `role` called `name`.
    fn running_daemon(&mut self, role: Role<'_>, name: &str) -> Option<usize> {
        let count = match role {
            Role::Scheduler => self.c.scheduler_count(),
            Role::Agent(zone) => self.c.agent_count(zone),
        };
        (0..count).find(|&i| {
            let daemon = match role {
                Role::Scheduler => self.c.scheduler(i),
                Role::Agent(zone) => self.c.agent(zone, i),
            };
            daemon.name() == name && daemon.is_running()
        })
    }

    async fn kill_scheduler_leader(&mut self) -> String {
        let leader = self.live_leader(Role::Scheduler).await;
        let daemon = self.c.scheduler(leader);
        daemon.kill9().await;
        let name = daemon.name().to_string();
        self.killed.insert(name.clone());
        self.c.start_scheduler();
        name
    }

    async fn kill_active_agent(&mut self, zone: &str) -> String {
        let active = self.live_leader(Role::Agent(zone)).await;
        let daemon = self.c.agent(zone, active);
        daemon.kill9().await;
        let name = daemon.name().to_string();
        self.killed.insert(name.clone());
        if zone == STANDBY_ZONE {
            self.proxies.remove(&active);
            self.start_standby_zone_agent().await;
        } else {
            self.c.start_agent(zone);
        }
        name
    }

    fn random_zone(&mut self) -> String {
        zone_name(self.rng.random_range(0..ZONES))
    }

    async fn set_faults(&self, faults: Faults) {
        self.c.sim().set_faults(&faults).await.expect("set faults");
    }

    /// Holds a fault for `hold` while preempting a few instances, so that the agents
    /// have creates and deletes to do through it; then clears all GCE faults.
    async fn hold_gce_fault(&mut self, hold: Duration) {
        let count = self.rng.random_range(2..=4);
        let victims = self.preempt(count, None).await;
        self.note(format!("  preempted {victims:?}"));
        tokio::time::sleep(hold).await;
        self.set_faults(Faults::default()).await;
    }

    /// The `/metrics` of agent `index` of `zone`.
    async fn agent_metrics(&mut self, zone: &str, index: usize) -> String {
        let addr = self.c.agent_metrics(zone, index).await;
        match pm_tests::cluster::http_get(addr, "/metrics").await {
            Some((200, text)) => text,
            _ => self.fail(&format!("agent {index} of {zone} serves no metrics")),
        }
    }

    /// Instance-changing GCE calls agent `index` of `zone` made (counted as they end).
    async fn mutations(&mut self, zone: &str, index: usize) -> f64 {
        let text = self.agent_metrics(zone, index).await;
        MUTATIONS
            .iter()
            .map(|m| metric_sum(&text, "pm_gce_calls_total", &[("method", m)]))
            .sum()
    }

    /// `(zone, index)` of every running agent.
    fn running_agents(&mut self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for zone in self.c.zones().to_vec() {
            for i in 0..self.c.agent_count(&zone) {
                if self.c.agent(&zone, i).is_running() {
                    out.push((zone.clone(), i));
                }
            }
        }
        out
    }

    /// The sum of `name` with `labels` over every running agent's metrics.
    async fn agents_sum(&mut self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for (zone, i) in self.running_agents() {
            total += metric_sum(&self.agent_metrics(&zone, i).await, name, labels);
        }
        total
    }

    async fn inject(&mut self, kind: Kind) {
        match kind {
            Kind::KillScheduler | Kind::KillAgent | Kind::KillSchedulerAndAgent => {
                // Each round kills whoever leads once a successor took over.
                let rounds = self.rng.random_range(1..=3);
                let zone = self.random_zone();
                for round in 1..=rounds {
                    let mut killed = Vec::new();
                    if kind != Kind::KillAgent {
                        killed.push(self.kill_scheduler_leader().await);
                    }
                    if kind != Kind::KillScheduler {
                        killed.push(self.kill_active_agent(&zone).await);
                    }
                    self.note(format!(
                        "kill -9 round {round}/{rounds}: {}",
                        killed.join(" and ")
                    ));
                }
            }
            Kind::RestartEtcd => {
                self.note("restart the whole etcd cluster".into());
                self.c.etcd().restart_all().await;
            }
            Kind::LoseEtcdMember => self.lose_etcd_member().await,
            Kind::PartitionEtcdMember => self.partition_etcd_member().await,
            Kind::SnapshotRestore => self.snapshot_restore().await,
            Kind::ConfigChange => self.change_config().await,
            Kind::QuotaStorm => self.quota_storm().await,
            Kind::BackgroundingHooks => self.backgrounding_hooks().await,
            Kind::OrphanZone => self.orphan_zone().await,
            Kind::LoseEtcdQuorum => self.lose_etcd_quorum().await,
            Kind::CutAgentFromEtcd => self.cut_agent_from_etcd().await,
            Kind::GceErrors => {
                let (status, reason) = *[
                    (500, None),
                    (502, None),
                    (503, None),
                    (429, None),
                    (403, Some("quotaExceeded")),
                ]
                .choose(&mut self.rng)
                .expect("statuses");
                let error_rate = self.rng.random_range(0.3..0.7);
                let methods = self.rng.random_bool(0.5).then(|| {
                    vec![
                        "compute.instances.insert".to_string(),
                        "compute.instances.delete".to_string(),
                        "compute.zoneOperations.wait".to_string(),
                    ]
                });
                let hold = self.random_duration(2000, 6000);
                self.note(format!(
                    "GCE answers {:.0}% of {} with HTTP {status}{} for {hold:?}",
                    error_rate * 100.0,
                    methods
                        .as_ref()
                        .map_or("all calls".into(), |m| m.join(", ")),
                    reason.map(|r| format!(" {r}")).unwrap_or_default()
                ));
                self.set_faults(Faults {
                    error_rate,
                    status,
                    reason: reason.map(str::to_string),
                    methods,
                    ..Faults::default()
                })
                .await;
                self.hold_gce_fault(hold).await;
            }
            Kind::GceSlow => {
                let latency_ms = self.rng.random_range(200..=800);
                // Below the agents' operation timeout: slow, but they finish.
                let op_delay_ms = self.rng.random_range(1000..=3000);
                let hold = self.random_duration(3000, 7000);
                self.note(format!("GCE slow: +{latency_ms} ms per call, operations take {op_delay_ms} ms, for {hold:?}"));
                self.set_faults(Faults {
                    latency_ms,
                    op_delay_ms: Some(op_delay_ms),
                    ..Faults::default()
                })
                .await;
                self.hold_gce_fault(hold).await;
            }
            Kind::GceOperationErrors => {
                let operation_error_rate = self.rng.random_range(0.3..0.7);
                let hold = self.random_duration(3000, 7000);
                self.note(format!(
                    "{:.0}% of insert operations end DONE with a 500 INTERNAL_ERROR, for {hold:?}",
                    operation_error_rate * 100.0
                ));
                self.set_faults(Faults {
                    operation_error_rate,
                    ..Faults::default()
                })
                .await;
                self.hold_gce_fault(hold).await;
            }
            Kind::GceHang => {
                let hold = self.random_duration(4000, 8000);
                self.note(format!(
                    "GCE operations never finish, for {hold:?} (agents give up after {OPERATION_TIMEOUT:?})"
                ));
                self.set_faults(Faults {
                    hang_operations: true,
                    ..Faults::default()
                })
                .await;
                self.hold_gce_fault(hold).await;
            }
            Kind::PreemptionStorm => {
                let rounds = self.rng.random_range(1..=3);
                for round in 1..=rounds {
                    let half = self.running(None).await.len() / 2;
                    let victims = self.preempt(half, None).await;
                    self.note(format!(
                        "preemption storm {round}/{rounds}: {} instances",
                        victims.len()
                    ));
                    let gap = self.random_duration(500, 2500);
                    tokio::time::sleep(gap).await;
                }
            }
            Kind::LongStockout => {
                let zone = self.random_zone();
                let hold = self.random_duration(6000, 12000);
                self.c.sim().set_capacity(&zone, 0).await.expect("capacity");
                let count = self.rng.random_range(1..=3);
                let victims = self.preempt(count, Some(&zone)).await;
                self.note(format!(
                    "{zone} stocked out for {hold:?}; preempted {victims:?} there"
                ));
                tokio::time::sleep(hold).await;
                self.c
                    .sim()
                    .set_capacity(&zone, CAPACITY)
                    .await
                    .expect("capacity");
            }
        }
    }

    /// One member of three silent for the agents of [`STANDBY_ZONE`] (their proxies to
    /// it blackholed) while the other two keep quorum: the zone keeps its agent, and pm
    /// heals preemptions there.
    async fn partition_etcd_member(&mut self) {
        let member = self.rng.random_range(0..3);
        for proxies in self.proxies.values() {
            proxies[member].blackhole();
        }
        let victims = self.preempt(2, Some(STANDBY_ZONE)).await;
        self.note(format!(
            "etcd member {member} silent for the {STANDBY_ZONE} agents; preempted {victims:?} there"
        ));
        let took = self
            .wait_converged("the pool heals with a member partitioned", STEP_BOUND)
            .await;
        self.note(format!("  healed with a member partitioned in {took:.1?}"));
        for proxies in self.proxies.values() {
            proxies[member].restore();
        }
    }

    /// etcd restored from a snapshot taken a few seconds earlier, with preemptions in
    /// between: revisions go back, and pm must follow the restored keys.
    async fn snapshot_restore(&mut self) {
        let snapshot = self.c.etcd().dir().join("fault-snapshot.db");
        self.c.etcd().snapshot_save(&snapshot).await;
        let count = self.rng.random_range(1..=3);
        let victims = self.preempt(count, None).await;
        let gap = self.random_duration(1000, 4000);
        self.note(format!(
            "etcd snapshot saved; preempted {victims:?}; restored after {gap:?}"
        ));
        tokio::time::sleep(gap).await;
        self.c.etcd().restore_snapshot(&snapshot).await;
    }

    /// A config change while faults may still be in the air: a scale down and back, a
    /// template change (a rollout), or another distribution.
    async fn change_config(&mut self) {
        let mut config = self.pool_config().await;
        match self.rng.random_range(0..3) {
            0 => {
                let lower = TARGET - self.rng.random_range(1..=3);
                let hold = self.random_duration(1000, 4000);
                self.note(format!(
                    "scale to {lower} for {hold:?}, then back to {TARGET}"
                ));
                config.target_vm_count = lower as i64;
                self.c.set_pool(POOL, config.clone()).await;
                tokio::time::sleep(hold).await;
                config.target_vm_count = TARGET as i64;
            }
            1 => {
                let team = if config.instance_json.contains("\"team\": \"test\"") {
                    "test-b"
                } else {
                    "test"
                };
                self.note(format!("template change (label team={team}): a rollout"));
                config.instance_json =
                    TEMPLATE.replace("\"team\": \"test\"", &format!("\"team\": \"{team}\""));
            }
            _ => {
                let next = *[
                    Distribution::Even,
                    Distribution::Balanced,
                    Distribution::Any,
                ]
                .choose(&mut self.rng)
                .expect("distributions");
                self.note(format!("distribution {next:?}"));
                config.set_distribution(next);
            }
        }
        self.c.set_pool(POOL, config).await;
    }

    /// Every insert refused with 403 quotaExceeded for a few seconds while instances are
    /// preempted: the agents back off and probe instead of retrying the whole deficit.
    async fn quota_storm(&mut self) {
        let short = TARGET.saturating_sub(self.running(None).await.len());
        let inserts = |stats: &SimStats| stats.count("compute.instances.insert");
        let before = inserts(&self.c.sim().stats().await.expect("stats"));
        let events_before = self.event_counts().await;
        self.set_faults(Faults {
            error_rate: 1.0,
            status: 403,
            reason: Some("quotaExceeded".into()),
            methods: Some(vec!["compute.instances.insert".into()]),
            ..Faults::default()
        })
        .await;
        let count = self.rng.random_range(2..=4);
        let victims = self.preempt(count, None).await;
        let hold = self.random_duration(4000, 8000);
        tokio::time::sleep(hold).await;
        self.set_faults(Faults::default()).await;
        let sent = inserts(&self.c.sim().stats().await.expect("stats")) - before;
        let recorded = self.events_since(&events_before).await;
        let of = |kind: &str| recorded.get(kind).copied().unwrap_or(0);
        let (throttled, failed) = (of("creates-throttled"), of(QUOTA_FAILURE));
        // One event per zone entering the throttle, none per refused call.
        if throttled as usize > ZONES || failed > 0 {
            self.fail(&format!(
                "a {hold:?} quota storm recorded {throttled} creates-throttled (at most {ZONES}) and {failed} create-failed (none) events: {recorded:?}"
            ));
        }
        // Each replacement may be tried once before the first refusal comes back; after
        // it, a zone sends one probe per back-off (1 s, then doubling), never the deficit.
        let bound = (short + victims.len()) as u64 + 4 * ZONES as u64;
        self.note(format!(
            "quota storm for {hold:?} (was {short} short, preempted {victims:?}): {sent} inserts (bound {bound}), {throttled} creates-throttled events"
        ));
        if sent > bound {
            self.fail(&format!(
                "{sent} inserts during a {hold:?} quota storm, more than {bound}: the agents retried instead of backing off"
            ));
        }
    }

    /// How many times each event of the pool was recorded, by its key, with its kind
    /// ([`QUOTA_FAILURE`] for a create failing on quota): a repeat within
    /// the window raises the first one's count instead of writing a key.
    async fn event_counts(&self) -> BTreeMap<String, (String, u32)> {
        let store = self.c.store();
        let prefix = store.keys().events_prefix(POOL).expect("events prefix");
        let listing = store.list::<Event>(&prefix).await.expect("list events");
        listing
            .items
            .into_iter()
            .map(|(key, v)| {
                let event = v.value;
                let quota = event.kind == "create-failed" && event.message.contains("quota");
                let kind = if quota {
                    QUOTA_FAILURE.into()
                } else {
                    event.kind
                };
                (key, (kind, event.count.max(1)))
            })
            .collect()
    }

    /// How many times each kind of event was recorded since `before` was read.
    async fn events_since(
        &self,
        before: &BTreeMap<String, (String, u32)>,
    ) -> BTreeMap<String, u32> {
        let mut since = BTreeMap::new();
        for (key, (kind, count)) in self.event_counts().await {
            let earlier = before.get(&key).map_or(0, |(_, c)| *c);
            *since.entry(kind).or_default() += count.saturating_sub(earlier);
        }
        since
    }

    /// Every agent of a zone killed, then some of its VMs preempted: another zone's agent
    /// counts what is left there, the other zones take the lost share (the checker holds
    /// target + zones meanwhile), and the zone's agent, back, finds a whole pool.
    async fn orphan_zone(&mut self) {
        let zone = zone_name(self.rng.random_range(0..ZONES));
        for i in 0..self.c.agent_count(&zone) {
            let daemon = self.c.agent(&zone, i);
            if daemon.is_running() {
                daemon.kill9().await;
                let name = daemon.name().to_string();
                self.killed.insert(name);
            }
        }
        if zone == STANDBY_ZONE {
            self.proxies.clear();
        }
        let count = self.rng.random_range(1..=3);
        let victims = self.preempt(count, Some(&zone)).await;
        self.note(format!(
            "every agent of {zone} killed; preempted {victims:?} there"
        ));
        let started = Instant::now();
        wait_for!(
            self,
            "the other zones take the share the agentless zone lost",
            STEP_BOUND,
            (self.running(None).await.len() >= TARGET).then_some(())
        );
        self.note(format!(
            "  whole without {zone}'s agent in {:.1?}",
            started.elapsed()
        ));
        if zone == STANDBY_ZONE {
            self.start_standby_zone_agent().await;
            self.start_standby_zone_agent().await;
        } else {
            self.c.start_agent(&zone);
        }
        let took = self
            .wait_converged("the pool converges with the zone's agent back", STEP_BOUND)
            .await;
        self.note(format!(
            "  converged in {took:.1?} after the agent came back"
        ));
    }

    /// The create hook becomes one that leaves a child holding its output: replacements
    /// of preempted instances run it, and the pool heals all the same.
    async fn backgrounding_hooks(&mut self) {
        let mut config = self.pool_config().await;
        let mut hooks = config.hooks.clone().unwrap_or_default();
        let previous = std::mem::replace(&mut hooks.create, "bg".into());
        config.hooks = Some(hooks.clone());
        self.c.set_pool(POOL, config.clone()).await;
        let victims = self.preempt(3, None).await;
        self.note(format!(
            "create hook backgrounds a child holding its stdout; preempted {victims:?}"
        ));
        let took = self
            .wait_converged("the pool heals with a backgrounding hook", STEP_BOUND)
            .await;
        self.note(format!("  healed in {took:.1?}"));
        hooks.create = previous;
        config.hooks = Some(hooks);
        self.c.set_pool(POOL, config).await;
    }

    /// One member of three down: pm keeps working (it heals preemptions).
    async fn lose_etcd_member(&mut self) {
        let member = self.rng.random_range(0..3);
        self.note(format!("etcd member {member} killed; preempting 2"));
        self.c.etcd().kill(member).await;
        self.preempt(2, None).await;
        let took = self
            .wait_converged("the pool heals with one etcd member down", STEP_BOUND)
            .await;
        self.note(format!("  healed with a member down in {took:.1?}"));
        self.c.etcd().restart(member);
        self.c.etcd().wait_ready().await;
    }

    /// Two members of three down: once every agent has stepped down, no create,
    /// delete or restart reaches GCE, not even an attempt, though VMs get preempted
    /// meanwhile; pm resumes afterwards.
    async fn lose_etcd_quorum(&mut self) {
        let up = self.rng.random_range(0..3);
        let hold = self.random_duration(2000, 4000);
        let down: Vec<usize> = (0..3).filter(|m| *m != up).collect();
        self.note(format!("etcd members {down:?} killed: no quorum"));
        for m in &down {
            self.c.etcd().kill(*m).await;
        }
        wait_for!(self, "every agent steps down without quorum", STEP_BOUND, {
            (self.agents_sum("pm_agent_active", &[]).await == 0.0).then_some(())
        });
        let calls = |stats: &SimStats| {
            MUTATIONS
                .iter()
                .chain(["compute.instances.bulkInsert"].iter())
                .map(|m| stats.count(m))
                .sum::<u64>()
        };
        let before = calls(&self.c.sim().stats().await.expect("sim stats"));
        let victims = self.preempt(2, None).await;
        if victims.is_empty() {
            self.fail("no RUNNING instance to preempt while etcd has no quorum");
        }
        self.note(format!(
            "  every agent stepped down; preempted {victims:?}; watching GCE for {hold:?}"
        ));
        // The fault's duration, not a wait for anything: GCE must stay untouched.
        tokio::time::sleep(hold).await;
        let after = calls(&self.c.sim().stats().await.expect("sim stats"));
        if after != before {
            self.fail(&format!(
                "{} instance-changing GCE calls while etcd had no quorum",
                after - before
            ));
        }
        for m in down {
            self.c.etcd().restart(m);
        }
        self.c.etcd().wait_ready().await;
        self.note("  quorum back".into());
    }

    /// The active agent of [`STANDBY_ZONE`] loses etcd (connections reset, or a silent
    /// partition) but keeps GCE: the standby takes over and heals preemptions, and the
    /// cut-off agent changes nothing in GCE from the moment of the cut, including the
    /// time its lease runs out.
    async fn cut_agent_from_etcd(&mut self) {
        let silent = self.rng.random_bool(0.5);
        self.wait_converged("the pool converges before the cut", STEP_BOUND)
            .await;
        let active = self.live_leader(Role::Agent(STANDBY_ZONE)).await;
        let name = self.c.agent(STANDBY_ZONE, active).name().to_string();
        let before = self.mutations(STANDBY_ZONE, active).await;
        for proxy in &self.proxies[&active] {
            if silent {
                proxy.blackhole();
            } else {
                proxy.cut();
            }
        }
        let how = if silent {
            "a silent partition"
        } else {
            "resets"
        };
        self.note(format!(
            "cut {name} (active in {STANDBY_ZONE}) off from etcd: {how}"
        ));
        let cut = Instant::now();
        let standby = wait_for!(self, "the standby takes over", STEP_BOUND, {
            let now = self.live_leader(Role::Agent(STANDBY_ZONE)).await;
            (now != active).then_some(now)
        });
        let standby = self.c.agent(STANDBY_ZONE, standby).name().to_string();
        self.note(format!("  {standby} took over after {:.1?}", cut.elapsed()));
        let victims = self.preempt(2, Some(STANDBY_ZONE)).await;
        if victims.is_empty() {
            self.note(format!("  {STANDBY_ZONE} holds no instance to preempt"));
        }
        let heals = format!("the standby deletes {victims:?} and the pool heals");
        wait_for!(self, heals, STEP_BOUND, {
            let pool = self.pool_instances().await;
            let gone = pool.iter().all(|i| !victims.contains(&i.name));
            let running = pool.iter().filter(|i| i.status == "RUNNING").count();
            (gone && running >= TARGET).then_some(())
        });
        let after = self.mutations(STANDBY_ZONE, active).await;
        if after != before {
            self.fail(&format!(
                "{name}, cut off from etcd, made {} instance-changing GCE calls after the cut",
                after - before
            ));
        }
        for proxy in &self.proxies[&active] {
            proxy.restore();
        }
        self.note(format!("  {name} reconnected"));
    }

    /// Ends every fault still in place.
    async fn clear_faults(&mut self) {
        self.set_faults(Faults::default()).await;
        for zone in self.c.zones().to_vec() {
            self.c
                .sim()
                .set_capacity(&zone, CAPACITY)
                .await
                .expect("capacity");
        }
        for proxy in self.proxies.values().flatten() {
            proxy.restore();
        }
    }

    /// With the faults over, a preemption in every zone runs the hooks that print
    /// megabytes, fail and hang; the agents record each outcome and the pool heals.
    async fn hooks_misbehave_harmlessly(&mut self) {
        for zone in self.c.zones().to_vec() {
            self.preempt(1, Some(&zone)).await;
        }
        self.note("preempted one instance per zone to run the hooks".into());
        self.wait_converged("the pool heals while hooks misbehave", STEP_BOUND)
            .await;
        let outcomes = [
            ("create", "ok"),
            ("delete", "failed"),
            ("preempted", "timed_out"),
        ];
        for (event, result) in outcomes {
            let what = format!("a {event} hook run recorded as {result}");
            let labels = [("event", event), ("result", result)];
            wait_for!(self, what, STEP_BOUND, {
                (self.agents_sum("pm_hook_runs_total", &labels).await > 0.0).then_some(())
            });
        }
    }

    /// Every daemon the suite did not kill still runs.
    fn assert_nothing_crashed(&mut self) {
        let mut crashed = Vec::new();
        for i in 0..self.c.scheduler_count() {
            let d = self.c.scheduler(i);
            if !self.killed.contains(d.name()) && !d.is_running() {
                crashed.push(d.name().to_string());
            }
        }
        for zone in self.c.zones().to_vec() {
            for i in 0..self.c.agent_count(&zone) {
                let d = self.c.agent(&zone, i);
                if !self.killed.contains(d.name()) && !d.is_running() {
                    crashed.push(d.name().to_string());
                }
            }
        }
        if !crashed.is_empty() {
            self.fail(&format!("daemons exited on their own: {crashed:?}"));
        }
    }

    /// Fails the run if the checker found a broken invariant.
    fn assert_invariants(&self) {
        let broken = self.findings.lock().expect("findings").report();
        if !broken.is_empty() {
            self.fail(&format!("invariants broken:\n{broken}"));
        }
    }
}

/// One randomized run: converge, inject `steps` faults, stop them, converge again.
async fn run(
    test: &'static str,
    seed: u64,
    etcd_members: usize,
    steps: Option<usize>,
) -> RunReport {
    let mut sys = System::start(test, seed, etcd_members).await;
    let foreign = sys.create_foreign().await;
    let checker = Checker::start(sys.c.sim(), foreign, sys.findings.clone());
    sys.set_pool().await;
    sys.wait_converged("the pool converges before any fault", STEP_BOUND)
        .await;

    let kinds = Kind::all(etcd_members);
    let steps = steps.unwrap_or(kinds.len());
    let mut plan = Vec::new();
    while plan.len() < steps {
        let mut round = kinds.clone();
        round.shuffle(&mut sys.rng);
        plan.extend(round);
    }
    plan.truncate(steps);
    sys.note(format!(
        "{etcd_members} etcd member(s); {steps} faults: {plan:?}"
    ));
    let mut recoveries = Vec::new();
    for (i, kind) in plan.iter().enumerate() {
        sys.note(format!("fault {}/{steps}: {kind:?}", i + 1));
        sys.inject(*kind).await;
        sys.assert_nothing_crashed();
        sys.assert_invariants();
        // Pausing and resuming are the point of these two: always see pm resume.
        let must = matches!(kind, Kind::LoseEtcdQuorum | Kind::CutAgentFromEtcd);
        if sys.rng.random_bool(0.5) || must {
            let what = format!("the pool converges after {kind:?}");
            let took = sys.wait_converged(&what, CONVERGE_BOUND).await;
            sys.note(format!("  converged {took:.1?} after the fault ended"));
            recoveries.push((Some(*kind), took));
        }
        let gap = sys.random_duration(0, 1500);
        tokio::time::sleep(gap).await;
    }

    sys.clear_faults().await;
    sys.note("faults stopped".into());
    let converged_in = sys
        .wait_converged("the pool converges after the faults", CONVERGE_BOUND)
        .await;
    sys.note(format!(
        "converged {converged_in:.1?} after the faults stopped"
    ));
    recoveries.push((None, converged_in));
    sys.hooks_misbehave_harmlessly().await;
    checker.finish().await;
    sys.assert_nothing_crashed();
    sys.assert_invariants();
    let findings = sys.findings.lock().expect("findings");
    RunReport {
        seed,
        faults: steps,
        samples: findings.samples,
        peak: findings.peak,
        recoveries,
    }
}

/// The kind [`System::event_counts`] gives a create that failed on quota: a storm should
/// record none, only the throttle's state changes.
const QUOTA_FAILURE: &str = "create-failed: quota";

/// The seeds to run: `PM_FAULT_SEEDS` (comma-separated), else `PM_FAULT_SOAK` random
/// ones, else `defaults`.
fn seeds(defaults: &[u64]) -> Vec<u64> {
    if let Ok(list) = std::env::var("PM_FAULT_SEEDS") {
        return list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("PM_FAULT_SEEDS: {s:?} is not a seed (u64)"))
            })
            .collect();
    }
    if let Ok(runs) = std::env::var("PM_FAULT_SOAK") {
        let runs: usize = runs
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PM_FAULT_SOAK: {runs:?} is not a number of runs"));
        return (0..runs).map(|_| rand::random()).collect();
    }
    defaults.to_vec()
}

fn steps() -> Option<usize> {
    std::env::var("PM_FAULT_STEPS").ok().map(|n| {
        n.trim()
            .parse()
            .unwrap_or_else(|_| panic!("PM_FAULT_STEPS: {n:?} is not a number"))
    })
}

/// The two topologies share one machine; they take turns so neither starves the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn suite(test: &'static str, etcd_members: usize, defaults: &[u64]) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let what = |kind: Option<Kind>| kind.map_or("the run".to_string(), |k| format!("{k:?}"));
    let mut reports = Vec::new();
    for seed in seeds(defaults) {
        println!("fault suite: seed {seed}, {etcd_members} etcd member(s)");
        let r = run(test, seed, etcd_members, steps()).await;
        // Printed as each run ends, so a soak cut short still reports every run it made.
        let (kind, took) = r.worst().unwrap_or_default();
        println!(
            "fault suite: seed {} passed: {} faults, {} checks, at most {} live (bound {}), {} convergences timed, the slowest {took:.1?} after {}",
            r.seed,
            r.faults,
            r.samples,
            r.peak,
            TARGET + ZONES,
            r.recoveries.len(),
            what(kind)
        );
        reports.push(r);
    }
    let (kind, took) = reports
        .iter()
        .filter_map(RunReport::worst)
        .max_by_key(|(_, took)| *took)
        .unwrap_or_default();
    println!(
        "fault suite: {} runs with {etcd_members} etcd member(s) passed; worst convergence {took:.1?}, after {}",
        reports.len(),
        what(kind)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_with_one_etcd_node() {
    suite("randomized_faults_with_one_etcd_node", 1, &[1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_with_a_three_node_etcd_cluster() {
    suite("randomized_faults_with_a_three_node_etcd_cluster", 3, &[3]).await;
}

#[test]
fn checker_flags_every_broken_invariant() {
    let instance = |zone: &str, name: &str, status: &str, pool: Option<&str>| InstanceReport {
        project: PROJECT.into(),
        zone: zone.into(),
        name: name.into(),
        id: format!("{zone}-{name}"),
        status: status.into(),
        labels: pool
            .map(|p| [("pm-pool".to_string(), p.to_string())].into())
            .unwrap_or_default(),
        changes: BTreeMap::new(),
    };
    let peak = |peak: usize| PoolReport {
        project: PROJECT.into(),
        pool: POOL.into(),
        live: peak as u64,
        peak: peak as u64,
    };
    let foreign = vec![
        instance("zone-b", "web-nolabel", "TERMINATED", None),
        instance("zone-b", "other-labelled", "RUNNING", Some(POOL)),
    ];
    let mut report = InstancesReport {
        instances: (0..TARGET + ZONES)
            .map(|i| instance("zone-a", &format!("web-{i}"), "RUNNING", Some(POOL)))
            .chain(foreign.clone())
            .collect(),
        pools: vec![peak(TARGET + ZONES)],
    };
    let mut ids = BTreeMap::new();
    let problems = check(&report, &foreign, &mut ids);
    assert!(problems.is_empty(), "{problems:?}");

    // One more live at once; a name in two zones; web-1 gone and back with a new id;
    // a foreign instance restarted, the other only called.
    report.pools = vec![peak(TARGET + ZONES + 1)];
    report
        .instances
        .push(instance("zone-c", "web-0", "STAGING", Some(POOL)));
    report.instances[1].id = "new".into();
    report.instances[TARGET + ZONES].status = "RUNNING".into();
    report.instances[TARGET + ZONES + 1]
        .changes
        .insert("compute.instances.delete".into(), 1);
    let problems: BTreeMap<String, String> =
        check(&report, &foreign, &mut ids).into_iter().collect();
    let whats: Vec<&str> = problems.keys().map(String::as_str).collect();
    assert_eq!(
        whats,
        [
            "foreign instance other-labelled touched",
            "foreign instance web-nolabel touched",
            "name web-0 used twice",
            "name web-1 used twice",
            "too many live pool instances",
        ],
        "{problems:?}"
    );
    assert!(problems["foreign instance web-nolabel touched"]
        .contains("went from TERMINATED to RUNNING"));
    assert!(
        problems["foreign instance other-labelled touched"].contains("compute.instances.delete")
    );
}
