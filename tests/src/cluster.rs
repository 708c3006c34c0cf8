//! The whole system on one machine: a real etcd, gce-sim, and `pm-scheduler` and
//! `pm-agent` as separate processes, so tests can SIGKILL any of them. Every daemon
//! serves its metrics on a free port (`--metrics 127.0.0.1:0`), found from its log.
//!
//! ```no_run
//! # async fn f() {
//! let cluster = pm_tests::Cluster::builder().zones(3).agents(1).start().await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gce_sim::{RunningSim, Sim, SimControl};
use pm_etcd::{EtcdOptions, Keyspace, Store};
use pm_gce::compute::Compute;
use pm_gce::resources::Instance;
use pm_gce::rest::{Auth, RestCompute, RestConfig};
use pm_proto::{InstanceState, ObservedInstance, PoolConfig};

use crate::{unique_prefix, Daemon, EtcdCluster};

/// The GCE project every test pool lives in.
pub const PROJECT: &str = "pm-test";

/// An instance template like an operator's: a small preemptible VM.
pub const TEMPLATE: &str = r#"{
  "name": "{name}",
  "machineType": "projects/{project}/zones/{zone}/machineTypes/e2-small",
  "scheduling": {"preemptible": true, "automaticRestart": false, "onHostMaintenance": "TERMINATE"},
  "disks": [{"boot": true, "autoDelete": true, "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}],
  "networkInterfaces": [{"network": "projects/{project}/global/networks/default"}],
  "labels": {"team": "test"}
}"#;

/// The name of zone `index`: `zone-a` ... `zone-z`, then `zone1-a` ... `zone1-z`,
/// `zone2-a`, ...: unique, and valid GCE-like zone names (ending in `-` and a letter), as
/// pool configs require.
pub fn zone_name(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index % 26).unwrap_or(0));
    match index / 26 {
        0 => format!("zone-{letter}"),
        round => format!("zone{round}-{letter}"),
    }
}

/// Settings of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    /// Number of zones, named by [`zone_name`].
    zones: usize,
    /// Agents started per zone (one active, the others standby).
    agents: usize,
    /// Scheduler replicas.
    schedulers: usize,
    /// Capacity of each zone in gce-sim.
    capacity: u64,
    /// gce-sim's operation delay.
    op_delay: Duration,
    /// gce-sim's boot delay.
    boot_delay: Duration,
    /// `--hooks-dir` of the agents.
    hooks_dir: Option<PathBuf>,
    /// Lease TTL of every daemon.
    lease_ttl: Duration,
    /// Members of the etcd cluster.
    etcd_members: usize,
    /// The agents' `--operation-timeout`.
    operation_timeout: Duration,
    /// gce-sim refuses calls without a token (`--require-auth`); agents and the
    /// cluster's own client use a generated service-account key file.
    require_auth: bool,
    /// The agents' `--max-concurrent`; `None`: the agent's default.
    max_concurrent: Option<usize>,
    /// The agents' `--max-waiting`; `None`: the agent's default.
    max_waiting: Option<usize>,
    /// Flag and value pairs every scheduler gets besides the usual ones.
    scheduler_flags: Vec<(String, String)>,
    /// How long gce-sim keeps a preempted VM STOPPING; `None`: gce-sim's default.
    preempt_notice: Option<Duration>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            zones: 3,
            agents: 1,
            schedulers: 1,
            capacity: 1000,
            op_delay: Duration::from_millis(50),
            boot_delay: Duration::from_millis(100),
            hooks_dir: None,
            lease_ttl: Duration::from_secs(2),
            etcd_members: 1,
            operation_timeout: Duration::from_secs(30),
            require_auth: false,
            max_concurrent: None,
            max_waiting: None,
            scheduler_flags: Vec::new(),
            preempt_notice: None,
        }
    }
}

impl ClusterBuilder {
    /// Number of zones.
    pub fn zones(mut self, zones: usize) -> Self {
        self.zones = zones;
        self
    }

    /// Agents per zone.
    pub fn agents(mut self, agents: usize) -> Self {
        self.agents = agents;
        self
    }

    /// Scheduler replicas.
    pub fn schedulers(mut self, schedulers: usize) -> Self {
        self.schedulers = schedulers;
        self
    }

    /// Capacity of every zone.
    pub fn capacity(mut self, capacity: u64) -> Self {
        self.capacity = capacity;
        self
    }

    /// gce-sim's operation and boot delays.
    pub fn delays(mut self, op_delay: Duration, boot_delay: Duration) -> Self {
        self.op_delay = op_delay;
        self.boot_delay = boot_delay;
        self
    }

    /// The agents' hooks dir.
    pub fn hooks_dir(mut self, dir: &Path) -> Self {
        self.hooks_dir = Some(dir.to_path_buf());
        self
    }

    /// Members of the etcd cluster (default 1).
    pub fn etcd_members(mut self, members: usize) -> Self {
        self.etcd_members = members;
        self
    }

    /// Every daemon's `--lease-ttl` (default 2 s; whole seconds).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The agents' `--operation-timeout` (default 30 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// gce-sim requires credentials; a service-account key file whose `token_uri` is
    /// gce-sim's token endpoint is generated, and the agents (`--credentials FILE`) and
    /// the cluster's own client use it.
    pub fn require_auth(mut self) -> Self {
        self.require_auth = true;
        self
    }

    /// The agents' `--max-concurrent` (default: the agent's).
    pub fn max_concurrent(mut self, max: usize) -> Self {
        self.max_concurrent = Some(max);
        self
    }

    /// The agents' `--max-waiting` (default: the agent's).
    pub fn max_waiting(mut self, max: usize) -> Self {
        self.max_waiting = Some(max);
        self
    }

    /// How long gce-sim keeps a preempted VM STOPPING (its preemption notice).
    pub fn preempt_notice(mut self, notice: Duration) -> Self {
        self.preempt_notice = Some(notice);
        self
    }

    /// One more flag and value every scheduler gets (`--events-sink URL`, ...).
    pub fn scheduler_flag(mut self, flag: &str, value: &str) -> Self {
        self.scheduler_flags.push((flag.into(), value.into()));
        self
    }

    /// Starts etcd, gce-sim, the schedulers and the agents.
    pub async fn start(self) -> Cluster {
        let etcd = EtcdCluster::start(self.etcd_members).await;
        let zones: Vec<String> = (0..self.zones).map(zone_name).collect();
        let mut sim = Sim::builder();
        if let Some(notice) = self.preempt_notice {
            sim = sim.preempt_notice(notice);
        }
        let sim = sim
            .zones(zones.clone())
            .capacity(self.capacity)
            .op_delay(self.op_delay)
            .boot_delay(self.boot_delay)
            .require_auth(self.require_auth)
            .build()
            .expect("gce-sim settings")
            .start_local()
            .await
            .expect("gce-sim starts");
        let prefix = unique_prefix();
        let client = EtcdOptions::new(etcd.endpoints())
            .connect()
            .await
            .expect("etcd");
        let store = Store::new(client, Keyspace::new(&prefix).expect("prefix"));
        let credentials = self.require_auth.then(|| {
            crate::service_account::generate(&etcd.dir().join("credentials"), &sim.token_url())
        });
        let auth = credentials
            .clone()
            .map_or(Auth::None, Auth::ServiceAccountFile);
        let mut rest = RestConfig::new(sim.compute_url(), auth).expect("rest config");
        rest.timeout = Duration::from_secs(10);
        let compute: Arc<dyn Compute> =
            Arc::new(RestCompute::new(rest).await.expect("rest client"));
        let mut cluster = Cluster {
            settings: self.clone(),
            etcd,
            sim,
            store,
            compute,
            credentials,
            prefix,
            zones: zones.clone(),
            schedulers: Vec::new(),
            agents: BTreeMap::new(),
            started: 0,
        };
        for _ in 0..self.schedulers {
            cluster.start_scheduler();
        }
        for zone in &zones {
            for _ in 0..self.agents {
                cluster.start_agent(zone);
            }
        }
        cluster
    }
}

/// A running system; every process is killed when it drops.
pub struct Cluster {
    /// How it was built.
    settings: ClusterBuilder,
    /// The etcd.
    etcd: EtcdCluster,
    /// gce-sim, in this process.
    sim: RunningSim,
    /// Typed access to the cluster's keyspace.
    store: Store,
    /// The REST client against gce-sim, as an operator would look at GCE.
    compute: Arc<dyn Compute>,
    /// The service-account key file agents get, when gce-sim requires credentials.
    credentials: Option<PathBuf>,
    /// The key prefix of this cluster.
    prefix: String,
    /// Zone names.
    zones: Vec<String>,
    /// Scheduler processes, in start order.
    schedulers: Vec<Daemon>,
    /// Agent processes per zone, in start order.
    agents: BTreeMap<String, Vec<Daemon>>,
    /// Daemons started so far; numbers their ids and logs.
    started: usize,
}

impl Cluster {
    /// A builder with 3 zones, 1 agent per zone, 1 scheduler.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The etcd.
    pub fn etcd(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }

    /// Typed etcd access under this cluster's prefix.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// etcd's client URLs, comma-separated, as `--etcd` takes them.
    pub fn etcd_endpoints(&self) -> String {
        self.etcd.endpoints().join(",")
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Zone names.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// gce-sim's control API.
    pub fn sim(&self) -> SimControl {
        self.sim.control()
    }

    /// The Compute API root of gce-sim.
    pub fn compute_url(&self) -> String {
        self.sim.compute_url()
    }

    /// A REST client of gce-sim.
    pub fn compute(&self) -> &dyn Compute {
        self.compute.as_ref()
    }

    fn common_args(&self, etcd: &str) -> Vec<String> {
        vec![
            "--etcd".into(),
            etcd.to_string(),
            "--prefix".into(),
            self.prefix.clone(),
            "--lease-ttl".into(),
            format!("{}s", self.settings.lease_ttl.as_secs()),
            "--metrics".into(),
            "127.0.0.1:0".into(),
            "--resync".into(),
            "10s".into(),
        ]
    }

    /// Where the metrics server of the scheduler started as `index` listens, once it
    /// has logged it.
    pub async fn scheduler_metrics(&self, index: usize) -> SocketAddr {
        let daemon = &self.schedulers[index];
        self.wait(
            &format!("{} logs its metrics address", daemon.name()),
            Duration::from_secs(10),
            || async { metrics_addr(&daemon.log()) },
        )
        .await
    }

    /// Where the metrics server of agent `index` of `zone` listens, once it has logged it.
    pub async fn agent_metrics(&self, zone: &str, index: usize) -> SocketAddr {
        let daemon = &self.agents[zone][index];
        self.wait(
            &format!("{} logs its metrics address", daemon.name()),
            Duration::from_secs(10),
            || async { metrics_addr(&daemon.log()) },
        )
        .await
    }

    /// Starts one more scheduler replica; returns its index.
    pub fn start_scheduler(&mut self) -> usize {
        self.started += 1;
        let id = format!("scheduler-{}", self.started);
        let mut args = self.common_args(&self.etcd_endpoints());
        args.extend([
            "--id".into(),
            id.clone(),
            "--agent-grace".into(),
            "5s".into(),
        ]);
        for (flag, value) in &self.settings.scheduler_flags {
            args.extend([flag.clone(), value.clone()]);
        }
        let daemon = Daemon::start(self.etcd.dir(), &id, "pm-scheduler", &args, &[]);
        self.schedulers.push(daemon);
        self.schedulers.len() - 1
    }

    /// Starts one more agent for `zone`; returns its index in the zone.
    pub fn start_agent(&mut self, zone: &str) -> usize {
        let etcd = self.etcd_endpoints();
        self.start_agent_via(zone, &etcd)
    }

    /// Starts one more agent for `zone` that reaches etcd at `etcd` (comma-separated
    /// client URLs, e.g. through a [`crate::TcpProxy`]); returns its index in the zone.
    pub fn start_agent_via(&mut self, zone: &str, etcd: &str) -> usize {
        let auth = self.auth_flags();
        self.spawn_agent(zone, etcd, auth, &[])
    }

    /// Starts one more agent for `zone` that sends no credentials (`--no-auth`), even
    /// when gce-sim requires them; returns its index in the zone.
    pub fn start_agent_without_credentials(&mut self, zone: &str) -> usize {
        let etcd = self.etcd_endpoints();
        self.spawn_agent(zone, &etcd, vec!["--no-auth".into()], &[])
    }

    /// Starts one more agent for `zone` that reaches etcd at `etcd`, with `extra` flag
    /// and value pairs in place of the usual ones (or added); returns its index in the
    /// zone.
    pub fn start_agent_with(&mut self, zone: &str, etcd: &str, extra: &[(&str, &str)]) -> usize {
        let auth = self.auth_flags();
        self.spawn_agent(zone, etcd, auth, extra)
    }

    /// The credential flags of agents: the generated key file, or `--no-auth`.
    fn auth_flags(&self) -> Vec<String> {
        match &self.credentials {
            Some(file) => vec!["--credentials".into(), file.to_string_lossy().into_owned()],
            None => vec!["--no-auth".into()],
        }
    }

    /// Starts one more agent for `zone` reaching etcd at `etcd`, with the credential
    /// flags `auth` and the `extra` flag and value pairs; returns its index in the zone.
    fn spawn_agent(
        &mut self,
        zone: &str,
        etcd: &str,
        auth: Vec<String>,
        extra: &[(&str, &str)],
    ) -> usize {
        self.started += 1;
        let id = format!("agent-{zone}-{}", self.started);
        let mut args = self.common_args(etcd);
        args.extend([
            "--zone".into(),
            zone.into(),
            "--id".into(),
            id.clone(),
            "--project".into(),
            PROJECT.into(),
            "--gce-endpoint".into(),
            self.sim.compute_url(),
            "--gce-timeout".into(),
            "10s".into(),
            "--hook-timeout".into(),
            "5s".into(),
            "--operation-timeout".into(),
            format!("{}ms", self.settings.operation_timeout.as_millis()),
        ]);
        args.extend(auth);
        if let Some(dir) = &self.settings.hooks_dir {
            args.extend(["--hooks-dir".into(), dir.to_string_lossy().into_owned()]);
        }
        if let Some(max) = self.settings.max_waiting {
            args.extend(["--max-waiting".into(), max.to_string()]);
        }
        if let Some(max) = self.settings.max_concurrent {
            args.extend(["--max-concurrent".into(), max.to_string()]);
        }
        for (flag, value) in extra {
            match args.iter().position(|a| a == flag) {
                Some(i) => args[i + 1] = value.to_string(),
                None => args.extend([flag.to_string(), value.to_string()]),
            }
        }
        let daemon = Daemon::start(self.etcd.dir(), &id, "pm-agent", &args, &[]);
        let list = self.agents.entry(zone.to_string()).or_default();
        list.push(daemon);
        list.len() - 1
    }

    /// Schedulers started so far, running or not.
    pub fn scheduler_count(&self) -> usize {
        self.schedulers.len()
    }

    /// Agents started so far for `zone`, running or not.
    pub fn agent_count(&self, zone: &str) -> usize {
        self.agents.get(zone).map_or(0, Vec::len)
    }

    /// The scheduler started as `index`.
    pub fn scheduler(&mut self, index: usize) -> &mut Daemon {
        &mut self.schedulers[index]
    }

    /// Agent `index` of `zone`.
    pub fn agent(&mut self, zone: &str, index: usize) -> &mut Daemon {
        &mut self.agents.get_mut(zone).expect("zone has agents")[index]
    }

    /// The last lines of every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for d in self.schedulers.iter().chain(self.agents.values().flatten()) {
            let log = d.log();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("==== {} (last 60 lines)\n", d.name()));
            for line in &lines[lines.len().saturating_sub(60)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Polls `check` until it returns `Some`, for at most `bound`; on timeout panics
    /// with `what` and the daemons' logs.
    pub async fn wait<T, F, Fut>(&self, what: &str, bound: Duration, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        match crate::poll_until(bound, check).await {
            Some(value) => value,
            None => panic!(
                "timed out after {bound:?} waiting for: {what}\n{}",
                self.logs()
            ),
        }
    }

    /// Writes a pool config with the standard template.
    pub async fn set_pool(&self, pool: &str, config: PoolConfig) {
        let key = self.store.keys().pool_config(pool).expect("pool name");
        self.store
            .put(&key, &config, 0)
            .await
            .expect("write pool config");
    }

    /// A pool config over every zone with the standard template.
    pub fn pool_config(&self, prefix: &str, target: i64) -> PoolConfig {
        PoolConfig {
            target_vm_count: target,
            allowed_zones: self.zones.clone(),
            prefix: prefix.into(),
            instance_json: TEMPLATE.into(),
            seconds_to_rest: 1,
            seconds_for_exhaustion: 3,
            ..Default::default()
        }
    }

    /// Every instance in gce-sim carrying `pool`'s label, by zone.
    pub async fn gce_instances(&self, pool: &str) -> BTreeMap<String, Vec<Instance>> {
        let filter = format!("labels.pm-pool = \"{pool}\"");
        let mut out = BTreeMap::new();
        for zone in &self.zones {
            let list = self
                .compute
                .list(PROJECT, zone, Some(&filter))
                .await
                .expect("list gce-sim");
            out.insert(zone.clone(), list);
        }
        out
    }

    /// Instance names per zone in the given GCE status (e.g. "RUNNING").
    pub async fn count_status(&self, pool: &str, status: &str) -> BTreeMap<String, usize> {
        self.gce_instances(pool)
            .await
            .into_iter()
            .map(|(zone, list)| {
                let n = list
                    .iter()
                    .filter(|i| i.status.map(|s| s.as_str()) == Some(status))
                    .count();
                (zone, n)
            })
            .collect()
    }

    /// Waits until etcd records exactly `n` observed instances of `pool`, all RUNNING:
    /// what pmctl, which reads etcd, then sees.
    pub async fn wait_recorded_running(&self, pool: &str, n: usize) {
        self.wait(
            &format!("{n} RUNNING VMs recorded"),
            Duration::from_secs(60),
            || async {
                let mut states = Vec::new();
                for zone in &self.zones {
                    let prefix = self.store.keys().instances_prefix(pool, zone).ok()?;
                    let listing = self.store.list::<ObservedInstance>(&prefix).await.ok()?;
                    states.extend(listing.items.into_iter().map(|(_, o)| o.value.state()));
                }
                let running = states.iter().all(|s| *s == InstanceState::Running);
                (states.len() == n && running).then_some(())
            },
        )
        .await;
    }

    /// The observed instance names in etcd, per zone.
    pub async fn observed(&self, pool: &str) -> BTreeMap<String, Vec<String>> {
        self.try_observed(pool).await.expect("list observed")
    }

    /// The observed instance names in etcd, per zone, or the error etcd gave.
    pub async fn try_observed(&self, pool: &str) -> pm_etcd::Result<BTreeMap<String, Vec<String>>> {
        let mut out = BTreeMap::new();
        for zone in &self.zones {
            let prefix = self.store.keys().instances_prefix(pool, zone)?;
            let keys = self.store.list_keys(&prefix).await?;
            out.insert(
                zone.clone(),
                keys.into_iter()
                    .filter_map(|k| k.rsplit('/').next().map(str::to_string))
                    .collect(),
            );
        }
        Ok(out)
    }
}

/// The address in a daemon's `metrics listening on ADDR` log line, if it is there.
pub fn metrics_addr(log: &str) -> Option<SocketAddr> {
    const MARK: &str = "metrics listening on ";
    let start = log.find(MARK)? + MARK.len();
    let addr: String = log[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// `GET http://ADDR/PATH`: the status code and body, or `None` when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// One sample of an exposition: family-suffixed name, labels, value.
#[derive(Debug)]
pub struct Sample {
    /// The series name, e.g. `pm_instances_created_total`.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of an OpenMetrics/Prometheus text exposition (our label values hold no
/// quotes or commas).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}
