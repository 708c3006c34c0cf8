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
//! Every run prints its seed. Replay one with
//! `PM_FAULT_SEEDS=<seed> cargo test -p pm-tests --test faults -- --nocapture` (the
//! order and parameters of the faults follow from the seed; the daemons' timing does
//! not). CI runs the fixed seeds below. A soak runs many random seeds:
//! `PM_FAULT_SOAK=<runs>`; `PM_FAULT_STEPS=<n>` sets the faults per run (default: each
//! kind once, in random order).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use pm_etcd::Election;
use pm_gce::compute::request_id_for;
use pm_gce::sim::{Faults, InstanceReport, SimControl};
use pm_proto::Hooks;
use pm_tests::cluster::{metric_sum, zone_name, PROJECT, TEMPLATE};
use pm_tests::{Cluster, TcpProxy};

const POOL: &str = "web";
const PREFIX: &str = "web-";
const TARGET: usize = 12;
const ZONES: usize = 3;
/// The zone with a standby agent; its agents reach etcd through cuttable proxies.
const STANDBY_ZONE: &str = "zone-a";
/// Lease TTL of every daemon (the cluster's default).
const TTL: Duration = Duration::from_secs(2);
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
        ];
        if etcd_members >= 3 {
            kinds.extend([Kind::LoseEtcdMember, Kind::LoseEtcdQuorum]);
        }
        kinds
    }
}

/// What the checker found.
#[derive(Debug, Default)]
struct Findings {
    /// Broken invariants, each once.
    violations: BTreeSet<String>,
    /// States of gce-sim checked.
    samples: u64,
    /// Most live pool instances seen at once.
    max_live: usize,
}

/// Reads gce-sim every [`POLL`] and records every broken invariant.
struct Checker {
    findings: Arc<Mutex<Findings>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn is_pool(i: &InstanceReport) -> bool {
    i.project == PROJECT
        && i.name.starts_with(PREFIX)
        && i.labels.get("pm-pool").map(String::as_str) == Some(POOL)
}

fn is_live(i: &InstanceReport) -> bool {
    matches!(i.status.as_str(), "PROVISIONING" | "STAGING" | "RUNNING")
}

/// The invariants over one listing of gce-sim.
fn check(all: &[InstanceReport], foreign: &[InstanceReport], at: Duration) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let pool: Vec<&InstanceReport> = all.iter().filter(|i| is_pool(i)).collect();
    let live = pool.iter().filter(|i| is_live(i)).count();
    if live > TARGET + ZONES {
        problems.push(format!(
            "{:.1}s: {live} live pool instances, more than target {TARGET} + {ZONES} zones",
            at.as_secs_f64()
        ));
    }
    let mut zones_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in &pool {
        zones_of.entry(&i.name).or_default().push(&i.zone);
    }
    for (name, zones) in zones_of.iter().filter(|(_, z)| z.len() > 1) {
        problems.push(format!("name {name} is used in zones {zones:?}"));
    }
    for f in foreign {
        match all.iter().find(|i| i.zone == f.zone && i.name == f.name) {
            None => problems.push(format!("foreign instance {} was deleted", f.name)),
            Some(now) if now.id != f.id => {
                problems.push(format!("foreign instance {} was recreated", f.name));
            }
            Some(now) if now.status != f.status => problems.push(format!(
                "foreign instance {} went from {} to {}",
                f.name, f.status, now.status
            )),
            Some(_) => {}
        }
    }
    (live, problems)
}

impl Checker {
    fn start(sim: SimControl, foreign: Vec<InstanceReport>, origin: Instant) -> Checker {
        let findings = Arc::new(Mutex::new(Findings::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (findings, stop) = (findings.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    let result = sim.instances().await;
                    {
                        let mut f = findings.lock().expect("findings");
                        match result {
                            Ok(all) => {
                                let (live, problems) = check(&all, &foreign, origin.elapsed());
                                f.samples += 1;
                                f.max_live = f.max_live.max(live);
                                f.violations.extend(problems);
                            }
                            Err(e) => {
                                f.violations.insert(format!("gce-sim does not answer: {e}"));
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
        Checker {
            findings,
            stop,
            task,
        }
    }

    async fn finish(self) -> Findings {
        self.stop.cancel();
        self.task.await.expect("checker task");
        Arc::try_unwrap(self.findings)
            .expect("checker done")
            .into_inner()
            .expect("findings")
    }
}

/// What one run measured.
struct RunReport {
    seed: u64,
    faults: usize,
    samples: u64,
    max_live: usize,
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

/// The system under faults, and the run's record.
struct System {
    c: Cluster,
    seed: u64,
    rng: StdRng,
    origin: Instant,
    /// One line per fault, for the report and for failures.
    timeline: String,
    /// The proxies of each agent of [`STANDBY_ZONE`], by agent index.
    proxies: BTreeMap<usize, Vec<TcpProxy>>,
    /// Names of the daemons the suite killed on purpose.
    killed: BTreeSet<String>,
    _hooks: tempfile::TempDir,
}

fn write_script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("hook script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
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
    async fn start(seed: u64, etcd_members: usize) -> System {
        let hooks = tempfile::tempdir().expect("hooks dir");
        write_script(
            hooks.path(),
            "loud",
            "head -c 3000000 /dev/zero | tr '\\0' x; echo",
        );
        write_script(hooks.path(), "hang", "sleep 600");
        write_script(hooks.path(), "fail", "echo failing on purpose >&2; exit 7");
        let c = Cluster::builder()
            .zones(ZONES)
            .agents(0)
            .schedulers(2)
            .etcd_members(etcd_members)
            .capacity(CAPACITY)
            .delays(Duration::from_millis(200), Duration::from_millis(500))
            .operation_timeout(Duration::from_secs(4))
            .hooks_dir(hooks.path())
            .start()
            .await;
        let mut sys = System {
            c,
            seed,
            rng: StdRng::seed_from_u64(seed),
            origin: Instant::now(),
            timeline: String::new(),
            proxies: BTreeMap::new(),
            killed: BTreeSet::new(),
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
        panic!(
            "fault suite, seed {} failed: {problem}\n\
             replay: PM_FAULT_SEEDS={} cargo test -p pm-tests --test faults -- --nocapture\n\
             faults so far:\n{}\n{}",
            self.seed,
            self.seed,
            self.timeline,
            self.c.logs()
        )
    }

    fn pause(&mut self, from_ms: u64, to_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(from_ms..=to_ms))
    }

    /// Instances without the pool's label or prefix, in `zone-b`, RUNNING.
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
        wait_for!(self, "the foreign instances run", STEP_BOUND, {
            let all = sim.instances().await.expect("sim");
            let foreign: Vec<InstanceReport> = all
                .into_iter()
                .filter(|i| names.iter().any(|(n, _)| *n == i.name) && i.status == "RUNNING")
                .collect();
            (foreign.len() == names.len()).then_some(foreign)
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
        });
        self.c.set_pool(POOL, config).await;
    }

    /// The pool's instances in gce-sim, read past fault injection.
    async fn pool_instances(&self) -> Vec<InstanceReport> {
        let all = self.c.sim().instances().await.expect("gce-sim control");
        all.into_iter().filter(is_pool).collect()
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

    /// Preempts `count` random RUNNING pool instances (of `zone`, if given).
    async fn preempt(&mut self, count: usize, zone: Option<&str>) -> Vec<String> {
        let running = self.running(zone).await;
        let victims: Vec<String> = running
            .choose_multiple(&mut self.rng, count)
            .cloned()
            .collect();
        if victims.is_empty() {
            return victims;
        }
        let names: Vec<&str> = victims.iter().map(String::as_str).collect();
        self.c.sim().preempt_names(&names).await.expect("preempt");
        victims
    }

    /// The index of the daemon that leads `election` among `names`, once a running one
    /// does.
    async fn live_leader(&mut self, election: String, scheduler: bool, zone: &str) -> usize {
        let client = self.c.store().client().clone();
        let deadline = Instant::now() + STEP_BOUND;
        loop {
            let leader = tokio::time::timeout(
                Duration::from_secs(5),
                Election::new(client.clone(), &election).leader(),
            )
            .await;
            if let Ok(Ok(Some(leader))) = leader {
                let count = if scheduler {
                    self.c.scheduler_count()
                } else {
                    self.c.agent_count(zone)
                };
                for i in 0..count {
                    let daemon = if scheduler {
                        self.c.scheduler(i)
                    } else {
                        self.c.agent(zone, i)
                    };
                    if daemon.name() == leader.value && daemon.is_running() {
                        return i;
                    }
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no running daemon leads {election}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn scheduler_leader(&mut self) -> usize {
        let election = self.c.store().keys().scheduler_election();
        self.live_leader(election, true, "").await
    }

    async fn active_agent(&mut self, zone: &str) -> usize {
        let election = self.c.store().keys().agent_election(zone).expect("zone");
        self.live_leader(election, false, zone).await
    }

    async fn kill_scheduler_leader(&mut self) -> String {
        let leader = self.scheduler_leader().await;
        let daemon = self.c.scheduler(leader);
        daemon.kill9().await;
        let name = daemon.name().to_string();
        self.killed.insert(name.clone());
        self.c.start_scheduler();
        name
    }

    async fn kill_active_agent(&mut self, zone: &str) -> String {
        let active = self.active_agent(zone).await;
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

    /// Counts of instance-changing GCE calls an agent made, from its `/metrics`.
    async fn mutations(&mut self, zone: &str, index: usize) -> f64 {
        let addr = self.c.agent_metrics(zone, index).await;
        let Some((200, text)) = pm_tests::cluster::http_get(addr, "/metrics").await else {
            self.fail(&format!("agent {index} of {zone} serves no metrics"));
        };
        MUTATIONS
            .iter()
            .map(|m| metric_sum(&text, "pm_gce_calls_total", &[("method", m)]))
            .sum()
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
                let hold = self.pause(2000, 6000);
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
                let op_delay_ms = self.rng.random_range(2000..=5000);
                let hold = self.pause(3000, 7000);
                self.note(format!("GCE slow: +{latency_ms} ms per call, operations take {op_delay_ms} ms, for {hold:?}"));
                self.set_faults(Faults {
                    latency_ms,
                    op_delay_ms: Some(op_delay_ms),
                    ..Faults::default()
                })
                .await;
                self.hold_gce_fault(hold).await;
            }
            Kind::GceHang => {
                let hold = self.pause(4000, 8000);
                self.note(format!(
                    "GCE operations never finish, for {hold:?} (agents give up after 4 s)"
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
                    let gap = self.pause(500, 2500);
                    tokio::time::sleep(gap).await;
                }
            }
            Kind::LongStockout => {
                let zone = self.random_zone();
                let hold = self.pause(6000, 12000);
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

    /// Two members of three down: no creates, deletes or restarts while etcd has no
    /// quorum, even when instances get preempted meanwhile; pm resumes afterwards.
    async fn lose_etcd_quorum(&mut self) {
        let up = self.rng.random_range(0..3);
        let down: Vec<usize> = (0..3).filter(|m| *m != up).collect();
        self.note(format!("etcd members {down:?} killed: no quorum"));
        for m in &down {
            self.c.etcd().kill(*m).await;
        }
        // Leases run out and every daemon stops acting; what was in flight finishes.
        tokio::time::sleep(TTL + Duration::from_secs(3)).await;
        let before = self.c.sim().state().await.expect("sim state").counters;
        let victims = self.preempt(2, None).await;
        let hold = self.pause(2000, 4000);
        self.note(format!(
            "  preempted {victims:?} without quorum; watching GCE for {hold:?}"
        ));
        tokio::time::sleep(hold).await;
        let after = self.c.sim().state().await.expect("sim state").counters;
        if (after.inserted, after.deleted, after.started)
            != (before.inserted, before.deleted, before.started)
        {
            self.fail(&format!(
                "GCE changed while etcd had no quorum: before {before:?}, after {after:?}"
            ));
        }
        for m in down {
            self.c.etcd().restart(m);
        }
        self.c.etcd().wait_ready().await;
        self.note("  quorum back".into());
    }

    /// The active agent of [`STANDBY_ZONE`] loses etcd but keeps GCE: the standby takes
    /// over, and the cut-off agent calls no instance-changing method from then on.
    async fn cut_agent_from_etcd(&mut self) {
        let active = self.active_agent(STANDBY_ZONE).await;
        let name = self.c.agent(STANDBY_ZONE, active).name().to_string();
        self.note(format!(
            "cut {name} (active in {STANDBY_ZONE}) off from etcd"
        ));
        for proxy in &self.proxies[&active] {
            proxy.cut();
        }
        let took = Instant::now();
        let standby = self.active_agent_other_than(active).await;
        let standby = self.c.agent(STANDBY_ZONE, standby).name().to_string();
        self.note(format!(
            "  {standby} took over after {:.1?}",
            took.elapsed()
        ));
        let before = self.mutations(STANDBY_ZONE, active).await;
        let victims = self.preempt(2, Some(STANDBY_ZONE)).await;
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
                "{name}, cut off from etcd, changed GCE after the standby took over ({before} then {after} instance-changing calls)"
            ));
        }
        for proxy in &self.proxies[&active] {
            proxy.restore();
        }
        self.note(format!("  {name} reconnected"));
    }

    async fn active_agent_other_than(&mut self, old: usize) -> usize {
        let deadline = Instant::now() + STEP_BOUND;
        loop {
            let active = self.active_agent(STANDBY_ZONE).await;
            if active != old {
                return active;
            }
            if Instant::now() >= deadline {
                self.fail("the standby never took over from the cut-off agent");
            }
            tokio::time::sleep(POLL).await;
        }
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

    /// Hook runs of `event` with `result`, summed over the running agents.
    async fn hook_runs(&mut self, event: &str, result: &str) -> f64 {
        let mut total = 0.0;
        for zone in self.c.zones().to_vec() {
            for i in 0..self.c.agent_count(&zone) {
                if !self.c.agent(&zone, i).is_running() {
                    continue;
                }
                let addr = self.c.agent_metrics(&zone, i).await;
                if let Some((200, text)) = pm_tests::cluster::http_get(addr, "/metrics").await {
                    let labels = [("event", event), ("result", result)];
                    total += metric_sum(&text, "pm_hook_runs_total", &labels);
                }
            }
        }
        total
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
            wait_for!(self, what, STEP_BOUND, {
                (self.hook_runs(event, result).await > 0.0).then_some(())
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
}

/// One randomized run: converge, inject `steps` faults, stop them, converge again.
async fn run(seed: u64, etcd_members: usize, steps: Option<usize>) -> RunReport {
    let mut sys = System::start(seed, etcd_members).await;
    let foreign = sys.create_foreign().await;
    sys.set_pool().await;
    sys.wait_converged("the pool converges before any fault", STEP_BOUND)
        .await;
    let checker = Checker::start(sys.c.sim(), foreign, sys.origin);

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
        if sys.rng.random_bool(0.5) {
            let what = format!("the pool converges after {kind:?}");
            let took = sys.wait_converged(&what, CONVERGE_BOUND).await;
            sys.note(format!("  converged {took:.1?} after the fault ended"));
            recoveries.push((Some(*kind), took));
        }
        let gap = sys.pause(0, 1500);
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
    let findings = checker.finish().await;
    sys.assert_nothing_crashed();
    if !findings.violations.is_empty() {
        let list: String = findings.violations.iter().fold(String::new(), |mut s, v| {
            let _ = writeln!(s, "  {v}");
            s
        });
        sys.fail(&format!("invariants broken:\n{list}"));
    }
    RunReport {
        seed,
        faults: steps,
        samples: findings.samples,
        max_live: findings.max_live,
        recoveries,
    }
}

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

async fn suite(etcd_members: usize, defaults: &[u64]) {
    let mut reports = Vec::new();
    for seed in seeds(defaults) {
        println!("fault suite: seed {seed}, {etcd_members} etcd member(s)");
        reports.push(run(seed, etcd_members, steps()).await);
    }
    let what = |kind: Option<Kind>| kind.map_or("the run".to_string(), |k| format!("{k:?}"));
    for r in &reports {
        let (kind, took) = r.worst().unwrap_or_default();
        println!(
            "fault suite: seed {} passed: {} faults, {} checks, at most {} live (bound {}), {} convergences timed, the slowest {took:.1?} after {}",
            r.seed,
            r.faults,
            r.samples,
            r.max_live,
            TARGET + ZONES,
            r.recoveries.len(),
            what(kind)
        );
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
    suite(1, &[1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_faults_with_a_three_node_etcd_cluster() {
    suite(3, &[3]).await;
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
    };
    let foreign = vec![instance("zone-b", "web-nolabel", "RUNNING", None)];
    let mut all: Vec<InstanceReport> = (0..TARGET + ZONES)
        .map(|i| instance("zone-a", &format!("web-{i}"), "RUNNING", Some(POOL)))
        .collect();
    all.push(instance("zone-a", "web-x", "TERMINATED", Some(POOL)));
    all.extend(foreign.clone());
    let (live, problems) = check(&all, &foreign, Duration::ZERO);
    assert_eq!((live, problems.len()), (TARGET + ZONES, 0), "{problems:?}");

    all.push(instance("zone-c", "web-0", "STAGING", Some(POOL)));
    all.retain(|i| i.name != "web-nolabel");
    all.push(instance("zone-b", "web-nolabel", "TERMINATED", None));
    let (live, problems) = check(&all, &foreign, Duration::ZERO);
    assert_eq!(live, TARGET + ZONES + 1);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("more than target"));
    assert!(problems[1].contains("web-0 is used in zones"));
    assert!(problems[2].contains("went from RUNNING to TERMINATED"));
}
