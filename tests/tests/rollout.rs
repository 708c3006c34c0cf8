//! Rollouts end to end: etcd, gce-sim, schedulers and agents as processes. A changed
//! template replaces every VM within maxSurge and maxUnavailable (watched all along by a
//! sampler of gce-sim), through preemptions and the failover of the scheduler and an
//! agent; a prefix or project change orphans nothing; a template GCE refuses pauses the rollout
//! with every old VM kept, and `pmctl rollout undo` brings the pool back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pm_gce::resources::{Instance, InstanceStatus};
use pm_proto::{Amount, Event, ObservedInstance, PoolConfig, UpdatePolicy};
use pm_tests::cluster::{PROJECT, TEMPLATE};
use pm_tests::Cluster;

const BOUND: Duration = Duration::from_secs(90);

fn amount(value: u32) -> Option<Amount> {
    Some(Amount {
        value,
        percent: false,
    })
}

fn with_machine(config: &PoolConfig, machine: &str) -> PoolConfig {
    let mut next = config.clone();
    next.instance_json = TEMPLATE.replace("e2-small", machine);
    next
}

fn live(i: &Instance) -> bool {
    matches!(
        i.status,
        Some(InstanceStatus::Provisioning | InstanceStatus::Staging | InstanceStatus::Running)
    )
}

async fn all_instances(c: &Cluster, pool: &str) -> Vec<Instance> {
    c.gce_instances(pool)
        .await
        .into_values()
        .flatten()
        .collect()
}

/// The most present (PROVISIONING to STOPPING) and the fewest RUNNING instances of a
/// pool seen while it runs.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    lowest_running: Arc<AtomicUsize>,
    preempted: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(c: &Cluster, pool: &str) -> Self {
        Self::across(c, pool, &[PROJECT])
    }

    /// Samples the pool's instances over `projects` together.
    fn across(c: &Cluster, pool: &str, projects: &[&str]) -> Self {
        let projects: Vec<String> = projects.iter().map(|p| p.to_string()).collect();
        let compute_url = c.compute_url();
        let zones = c.zones().to_vec();
        let filter = format!("labels.pm-pool = \"{pool}\"");
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let lowest_running = Arc::new(AtomicUsize::new(usize::MAX));
        let preempted = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, p, l) = (stop.clone(), peak.clone(), lowest_running.clone());
        let x = preempted.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !s.load(Ordering::SeqCst) {
                let (mut live_now, mut running) = (0, 0);
                let mut complete = true;
                let pairs: Vec<(String, String)> = projects
                    .iter()
                    .flat_map(|p| zones.iter().map(|z| (p.clone(), z.clone())))
                    .collect();
                for (project, zone) in &pairs {
                    let url = format!("{compute_url}projects/{project}/zones/{zone}/instances");
                    let reply = http.get(&url).query(&[("filter", &filter)]).send().await;
                    let Ok(body) = reply.and_then(|r| r.error_for_status()) else {
                        complete = false;
                        break;
                    };
                    let Ok(list) = body.json::<serde_json::Value>().await else {
                        complete = false;
                        break;
                    };
                    for item in list["items"].as_array().into_iter().flatten() {
                        let status = item["status"].as_str().unwrap_or_default();
                        // A VM STOPPING while it is deleted is still there; one the
                        // test preempted is going, as GCE takes it.
                        let name = item["name"].as_str().unwrap_or_default();
                        let preempted = x.lock().unwrap().contains(name);
                        live_now += usize::from(match status {
                            "PROVISIONING" | "STAGING" | "RUNNING" => true,
                            "STOPPING" => !preempted,
                            _ => false,
                        });
                        running += usize::from(status == "RUNNING");
                    }
                }
                if complete {
                    p.fetch_max(live_now, Ordering::SeqCst);
                    l.fetch_min(running, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self {
            stop,
            peak,
            lowest_running,
            preempted,
            task,
        }
    }

    /// VMs the test preempts: STOPPING through their notice, they do not count.
    fn preempting(&self, names: &[String]) {
        self.preempted.lock().unwrap().extend(names.iter().cloned());
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.peak.load(Ordering::SeqCst),
            self.lowest_running.load(Ordering::SeqCst),
        )
    }
}

fn pmctl(c: &Cluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(pm_tests::bin_path("pmctl"))
        .args(["--etcd", &c.etcd_endpoints(), "--prefix", c.prefix()])
        .args(args)
        .output()
        .unwrap()
}

/// `pmctl config set POOL -f FILE` with `config` written as its config document.
fn pmctl_set(c: &Cluster, pool: &str, config: &PoolConfig) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{pool}.json"));
    let document = pm_pool::ConfigDocument::from_config(config);
    std::fs::write(&file, serde_json::to_string(&document).unwrap()).unwrap();
    pmctl(c, &["config", "set", pool, "-f", file.to_str().unwrap()])
}

fn rollout_status(c: &Cluster, pool: &str) -> serde_json::Value {
    let out = pmctl(c, &["rollout", "status", pool, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn event_kinds(c: &Cluster, pool: &str) -> Vec<String> {
    let prefix = c.store().keys().events_prefix(pool).unwrap();
    let listing = c.store().list::<Event>(&prefix).await.unwrap();
    listing
        .items
        .into_iter()
        .map(|(_, v)| v.value.kind)
        .collect()
}

async fn wait_all(c: &Cluster, pool: &str, want: usize, ok: impl Fn(&Instance) -> bool) {
    c.wait(
        &format!("{want} RUNNING instances of {pool}, all as wanted"),
        BOUND,
        || async {
            let all = all_instances(c, pool).await;
            let done = all.len() == want
                && all
                    .iter()
                    .all(|i| i.status == Some(InstanceStatus::Running) && ok(i));
            done.then_some(())
        },
    )
    .await;
}

fn machine_is(i: &Instance, machine: &str) -> bool {
    i.machine_type
        .as_deref()
        .is_some_and(|m| m.ends_with(&format!("/{machine}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_machine_type_replaces_every_vm_within_the_bounds_through_failures() {
    let mut c = Cluster::builder()
        .zones(3)
        .schedulers(2)
        .agents(2)
        .start()
        .await;
    let mut config = c.pool_config("web-", 6);
    config.update = Some(UpdatePolicy {
        max_surge: amount(1),
        max_unavailable: amount(0),
        min_ready_seconds: 1,
        ..Default::default()
    });
    c.set_pool("web", config.clone()).await;
    wait_all(&c, "web", 6, |i| machine_is(i, "e2-small")).await;
    let first = rollout_status(&c, "web");
    assert_eq!(first["state"], "complete", "{first}");
    let old_revision = first["revision"].as_str().unwrap().to_string();

    let sampler = Sampler::start(&c, "web");
    let next = with_machine(&config, "e2-medium");
    let new_revision = pm_pool::revision(&next);
    c.set_pool("web", next).await;
    c.wait("the rollout replaces a first VM", BOUND, || async {
        let all = all_instances(&c, "web").await;
        all.iter()
            .any(|i| machine_is(i, "e2-medium") && i.status == Some(InstanceStatus::Running))
            .then_some(())
    })
    .await;
    let mid = rollout_status(&c, "web");
    assert_eq!(mid["state"], "progressing", "{mid}");
    assert_eq!(mid["revision"], new_revision.as_str());

    // Mid-rollout: two old VMs preempted, the scheduler leader and an agent killed.
    let old_names: Vec<String> = all_instances(&c, "web")
        .await
        .into_iter()
        .filter(|i| machine_is(i, "e2-small") && i.status == Some(InstanceStatus::Running))
        .map(|i| i.name)
        .take(2)
        .collect();
    sampler.preempting(&old_names);
    let names: Vec<&str> = old_names.iter().map(String::as_str).collect();
    c.sim().preempt_names(&names).await.unwrap();
    let out = pmctl(&c, &["leader", "-o", "json"]);
    let leader: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let index = (0..c.scheduler_count())
        .find(|i| leader["leader"]["id"] == c.scheduler(*i).name())
        .expect("a scheduler leads");
    c.scheduler(index).kill9().await;
    c.agent("zone-a", 0).kill9().await;

    wait_all(&c, "web", 6, |i| {
        machine_is(i, "e2-medium")
            && i.labels.get("pm-rev").map(String::as_str) == Some(new_revision.as_str())
    })
    .await;
    let (peak, lowest) = sampler.finish().await;
    eprintln!("sampled: peak {peak}, lowest running {lowest}");
    assert!(peak <= 7, "at most target + maxSurge live at once: {peak}");
    // Two were preempted on purpose; the rollout itself takes none away (maxUnavailable 0).
    assert!(
        lowest >= 4,
        "RUNNING never below target - preempted: {lowest}"
    );
    let done = c
        .wait("the rollout completes", BOUND, || async {
            let s = rollout_status(&c, "web");
            (s["state"] == "complete").then_some(s)
        })
        .await;
    assert_eq!(
        done["revisions"][0]["revision"],
        new_revision.as_str(),
        "{done}"
    );
    assert_eq!(done["revisions"][0]["running"], 6, "{done}");
    assert!(
        done["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["revision"] != old_revision.as_str()),
        "{done}"
    );
    let kinds = event_kinds(&c, "web").await;
    for kind in ["rollout-started", "rollout-completed"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_change_replaces_the_old_vms_and_orphans_none() {
    let c = Cluster::builder().zones(2).start().await;
    let config = c.pool_config("web-", 4);
    c.set_pool("web", config.clone()).await;
    wait_all(&c, "web", 4, |i| i.name.starts_with("web-")).await;
    let mut renamed = config;
    renamed.prefix = "app-".into();
    c.set_pool("web", renamed).await;
    wait_all(&c, "web", 4, |i| i.name.starts_with("app-")).await;
    let observed: Vec<String> = c.observed("web").await.into_values().flatten().collect();
    assert_eq!(observed.len(), 4, "{observed:?}");
    assert!(
        observed.iter().all(|n| n.starts_with("app-")),
        "{observed:?}"
    );
    let mut by_zone: BTreeMap<String, usize> = BTreeMap::new();
    for (zone, list) in c.gce_instances("web").await {
        by_zone.insert(zone, list.len());
    }
    assert_eq!(by_zone.values().sum::<usize>(), 4, "no orphan: {by_zone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_gce_refuses_pauses_the_rollout_keeping_every_old_vm_until_undone() {
    let c = Cluster::builder().zones(2).start().await;
    let config = c.pool_config("web-", 4);
    c.set_pool("web", config.clone()).await;
    wait_all(&c, "web", 4, |i| machine_is(i, "e2-small")).await;
    let sampler = Sampler::start(&c, "web");
    c.set_pool("web", with_machine(&config, "n9-nonexistent-4"))
        .await;
    let failed = c
        .wait("the rollout pauses itself", BOUND, || async {
            let s = rollout_status(&c, "web");
            (s["state"] == "failed").then_some(s)
        })
        .await;
    assert_eq!(failed["paused"], true, "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("refuses revision"),
        "{failed}"
    );
    let kinds = event_kinds(&c, "web").await;
    assert!(kinds.iter().any(|k| k == "rollout-paused"), "{kinds:?}");
    let (_, lowest) = sampler.finish().await;
    assert_eq!(
        lowest, 4,
        "no old VM deleted for a revision that does not come up"
    );
    let all = all_instances(&c, "web").await;
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|i| machine_is(i, "e2-small") && live(i)));

    let out = pmctl(&c, &["rollout", "undo", "web", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait(
        "undo brings the pool back to its VMs' revision",
        BOUND,
        || async {
            let s = rollout_status(&c, "web");
            (s["state"] == "complete").then_some(())
        },
    )
    .await;
    let stored = c
        .store()
        .get::<PoolConfig>(&c.store().keys().pool_config("web").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pm_pool::revision(&stored.value), pm_pool::revision(&config));
    let all = all_instances(&c, "web").await;
    assert_eq!(all.len(), 4, "nothing was replaced: {all:?}");
}

/// The pool's instances in `project`, over every zone.
async fn in_project(c: &Cluster, project: &str, pool: &str) -> Vec<Instance> {
    let filter = format!("labels.pm-pool = \"{pool}\"");
    let mut all = Vec::new();
    for zone in c.zones() {
        all.extend(
            c.compute()
                .list(project, zone, Some(&filter))
                .await
                .unwrap(),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_change_rolls_every_vm_into_the_new_project_with_no_orphan() {
    let c = Cluster::builder().zones(2).start().await;
    let config = c.pool_config("web-", 4);
    c.set_pool("web", config.clone()).await;
    wait_all(&c, "web", 4, |_| true).await;
    let sampler = Sampler::across(&c, "web", &[PROJECT, "pm-other"]);
    let mut moved = config;
    moved.project = "pm-other".into();
    c.set_pool("web", moved).await;
    c.wait("every VM moved to pm-other", BOUND, || async {
        let new = in_project(&c, "pm-other", "web").await;
        let old = in_project(&c, PROJECT, "web").await;
        let running = new
            .iter()
            .filter(|i| i.status == Some(InstanceStatus::Running))
            .count();
        (old.is_empty() && new.len() == 4 && running == 4).then_some(())
    })
    .await;
    let (peak, lowest) = sampler.finish().await;
    assert!(
        peak <= 6,
        "at most target + maxSurge (2 zones) live: {peak}"
    );
    assert!(
        lowest >= 4,
        "no old VM went before its replacement ran: {lowest}"
    );
    let keys = c.store().keys().clone();
    let mut recorded = Vec::new();
    for zone in c.zones() {
        let prefix = keys.instances_prefix("web", zone).unwrap();
        let listing = c.store().list::<ObservedInstance>(&prefix).await.unwrap();
        recorded.extend(listing.items.into_iter().map(|(_, v)| v.value.project));
    }
    assert_eq!(
        recorded,
        vec!["pm-other"; 4],
        "observed keys name the new project"
    );
    let kinds = event_kinds(&c, "web").await;
    assert!(
        !kinds.iter().any(|k| k == "vanished"),
        "nothing was lost: {kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmctl_pauses_and_resumes_a_rollout() {
    let c = Cluster::builder().zones(1).start().await;
    let mut config = c.pool_config("web-", 3);
    config.update = Some(UpdatePolicy {
        max_surge: amount(1),
        max_unavailable: amount(0),
        min_ready_seconds: 3,
        ..Default::default()
    });
    c.set_pool("web", config.clone()).await;
    wait_all(&c, "web", 3, |_| true).await;
    let out = pmctl(&c, &["rollout", "pause", "web", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paused: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (paused["action"].as_str(), paused["changed"].as_bool()),
        (Some("pause"), Some(true))
    );
    // pmctl config set keeps the pause: the new template waits.
    let out = pmctl_set(&c, "web", &with_machine(&config, "e2-medium"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let desired_key = c.store().keys().zone_desired("web", "zone-a").unwrap();
    c.wait("the agent is told the rollout is paused", BOUND, || async {
        let status = rollout_status(&c, "web");
        let desired = c
            .store()
            .get::<pm_proto::ZoneDesired>(&desired_key)
            .await
            .unwrap();
        let told = desired.is_some_and(|d| d.value.rollout_paused);
        (status["state"] == "paused" && told).then_some(())
    })
    .await;
    let all = all_instances(&c, "web").await;
    assert!(
        all.iter().all(|i| machine_is(i, "e2-small")),
        "nothing replaced while paused"
    );
    let out = pmctl(&c, &["rollout", "resume", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_all(&c, "web", 3, |i| machine_is(i, "e2-medium")).await;
    c.wait("the rollout completes", BOUND, || async {
        (rollout_status(&c, "web")["state"] == "complete").then_some(())
    })
    .await;
    let kinds = event_kinds(&c, "web").await;
    for kind in ["rollout-paused", "rollout-resumed", "rollout-completed"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_change_waits_until_every_key_names_its_project() {
    let mut c = Cluster::builder().zones(1).start().await;
    let config = c.pool_config("web-", 1);
    c.set_pool("web", config.clone()).await;
    wait_all(&c, "web", 1, |_| true).await;
    let zone = c.zones()[0].clone();
    // No agent meanwhile, so the key stays as an older pm wrote it: without a project.
    c.agent(&zone, 0).kill9().await;
    let prefix = c.store().keys().instances_prefix("web", &zone).unwrap();
    let listing = c.store().list::<ObservedInstance>(&prefix).await.unwrap();
    let (key, stamped) = listing.items.into_iter().next().expect("one key");
    let mut older = stamped.value;
    older.project.clear();
    c.store().put(&key, &older, 0).await.unwrap();
    let mut moved = config;
    moved.project = "pm-other".into();
    let out = pmctl_set(&c, "web", &moved);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("recorded without their project"),
        "{stderr}"
    );
    c.start_agent(&zone);
    c.wait(
        "the agent records the project; the change goes in",
        BOUND,
        || async { pmctl_set(&c, "web", &moved).status.success().then_some(()) },
    )
    .await;
    c.wait("the VM moves to pm-other", BOUND, || async {
        let new = in_project(&c, "pm-other", "web").await;
        let old = in_project(&c, PROJECT, "web").await;
        (old.is_empty() && new.len() == 1).then_some(())
    })
    .await;
}
