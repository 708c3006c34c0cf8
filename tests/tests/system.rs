//! The whole system as separate processes: etcd, gce-sim, pm-scheduler, pm-agent.
//! Converging, preemption, stockouts, scale-down, crashes and hooks; etcd losing quorum,
//! one etcd member partitioned from the agents, and etcd restored from a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use pm_proto::{Event, Hooks, ObservedInstance, ZoneExhaustion};
use pm_tests::cluster::{PROJECT, TEMPLATE};
use pm_tests::{Cluster, TcpProxy};

const BOUND: Duration = Duration::from_secs(45);

fn total(counts: &BTreeMap<String, usize>) -> usize {
    counts.values().sum()
}

async fn wait_running(c: &Cluster, pool: &str, want: usize) -> BTreeMap<String, usize> {
    c.wait(
        &format!("{want} RUNNING instances of {pool}"),
        BOUND,
        || async {
            let running = c.count_status(pool, "RUNNING").await;
            let all: usize = c.gce_instances(pool).await.values().map(Vec::len).sum();
            (total(&running) == want && all == want).then_some(running)
        },
    )
    .await
}

async fn events(c: &Cluster, pool: &str) -> Vec<Event> {
    let prefix = c.store().keys().events_prefix(pool).unwrap();
    let listing = c.store().list::<Event>(&prefix).await.unwrap();
    listing.items.into_iter().map(|(_, v)| v.value).collect()
}

async fn wait_event(c: &Cluster, pool: &str, kind: &str) -> Event {
    c.wait(&format!("a {kind} event of {pool}"), BOUND, || async {
        events(c, pool).await.into_iter().find(|e| e.kind == kind)
    })
    .await
}

/// Every pool instance in GCE is known in etcd and the other way round.
async fn assert_no_leaks(c: &Cluster, pool: &str) {
    let gce: BTreeMap<String, BTreeSet<String>> = c
        .gce_instances(pool)
        .await
        .into_iter()
        .map(|(z, list)| (z, list.into_iter().map(|i| i.name).collect()))
        .collect();
    let etcd: BTreeMap<String, BTreeSet<String>> = c
        .observed(pool)
        .await
        .into_iter()
        .map(|(z, names)| (z, names.into_iter().collect()))
        .collect();
    assert_eq!(gce, etcd, "GCE and etcd disagree");
}

/// `pmctl status POOL -o json` against the running system.
fn pmctl_status(c: &Cluster, pool: &str) -> serde_json::Value {
    let out = std::process::Command::new(pm_tests::bin_path("pmctl"))
        .args([
            "--etcd",
            &c.etcd_endpoints(),
            "--prefix",
            c.prefix(),
            "status",
            pool,
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    view["pools"][0].clone()
}

fn write_hook(dir: &Path, name: &str) {
    let log = dir.join("hooks.log");
    let body = format!(
        "echo \"$EVENT $POOL $PROJECT $ZONE ${{NAME:-}}\" >> {}\necho hook output for $NAME",
        log.display()
    );
    pm_tests::write_script(dir, name, &body);
}

fn hook_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_heals_preemptions_and_scales_down_with_hooks() {
    let hooks = tempfile::tempdir().unwrap();
    for name in ["on-create", "on-delete", "on-preempted"] {
        write_hook(hooks.path(), name);
    }
    let c = Cluster::builder()
        .zones(3)
        .hooks_dir(hooks.path())
        .start()
        .await;
    let mut config = c.pool_config("web-", 6);
    config.hooks = Some(Hooks {
        create: "on-create".into(),
        delete: "on-delete".into(),
        preempted: "on-preempted".into(),
        ..Default::default()
    });
    c.set_pool("web", config.clone()).await;
    let running = wait_running(&c, "web", 6).await;
    assert!(
        running.values().all(|n| *n == 2),
        "even spread: {running:?}"
    );
    c.wait("every instance is RUNNING in etcd too", BOUND, || async {
        let mut all = 0;
        for zone in c.zones() {
            let prefix = c.store().keys().instances_prefix("web", zone).unwrap();
            let listing = c.store().list::<ObservedInstance>(&prefix).await.unwrap();
            all += listing
                .items
                .iter()
                .filter(|(_, v)| v.value.state() == pm_proto::InstanceState::Running)
                .count();
        }
        (all == 6).then_some(())
    })
    .await;
    assert_no_leaks(&c, "web").await;
    let status = pmctl_status(&c, "web");
    assert_eq!(status["totals"]["running"], 6, "{status}");
    for zone in status["zones"].as_array().unwrap() {
        assert_eq!(
            (zone["desired"].as_i64(), zone["running"].as_i64()),
            (Some(2), Some(2)),
            "{zone}"
        );
        assert!(
            zone["agent"]["active"]
                .as_str()
                .is_some_and(|a| a.starts_with("agent-")),
            "{zone}"
        );
    }
    c.wait("a create hook ran per instance", BOUND, || async {
        (hook_lines(hooks.path())
            .iter()
            .filter(|l| l.starts_with("create web pm-test zone-"))
            .count()
            == 6)
            .then_some(())
    })
    .await;

    // Preempt two: they are replaced, the TERMINATED ones deleted, the hook runs.
    c.sim().preempt_count("zone-a", 2).await.unwrap();
    c.wait("preempted hooks ran", BOUND, || async {
        (hook_lines(hooks.path())
            .iter()
            .filter(|l| l.starts_with("preempted web pm-test zone-a web-"))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let running = wait_running(&c, "web", 6).await;
    assert_eq!(
        running["zone-a"], 2,
        "replacements stay in the zone: {running:?}"
    );
    wait_event(&c, "web", "preempted").await;
    assert_no_leaks(&c, "web").await;

    // Scale down: the surplus goes, with the delete hook.
    config.target_vm_count = 3;
    c.set_pool("web", config).await;
    let running = wait_running(&c, "web", 3).await;
    assert!(running.values().all(|n| *n == 1), "{running:?}");
    c.wait("delete hooks ran", BOUND, || async {
        (hook_lines(hooks.path())
            .iter()
            .filter(|l| l.starts_with("delete web"))
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    c.wait("etcd matches GCE after scale-down", BOUND, || async {
        let names: usize = c.observed("web").await.values().map(Vec::len).sum();
        (names == 3).then_some(())
    })
    .await;
    assert_no_leaks(&c, "web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stocked_out_zone_is_exhausted_and_its_share_moves() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-exhausted");
    let c = Cluster::builder()
        .zones(3)
        .hooks_dir(hooks.path())
        .start()
        .await;
    c.sim().set_capacity("zone-b", 0).await.unwrap();
    let mut config = c.pool_config("api-", 6);
    config.hooks = Some(Hooks {
        exhausted: "on-exhausted".into(),
        ..Default::default()
    });
    c.set_pool("api", config).await;
    let running = wait_running(&c, "api", 6).await;
    assert_eq!(running["zone-b"], 0);
    assert_eq!(running["zone-a"] + running["zone-c"], 6);
    let key = c.store().keys().exhausted("api", "zone-b").unwrap();
    let x = c
        .wait("zone-b is exhausted", BOUND, || async {
            c.store().get::<ZoneExhaustion>(&key).await.unwrap()
        })
        .await;
    assert!(
        x.value.reason.contains("ZONE_RESOURCE_POOL_EXHAUSTED"),
        "{}",
        x.value.reason
    );
    wait_event(&c, "api", "stockout").await;
    c.wait("the exhausted hook ran", BOUND, || async {
        hook_lines(hooks.path())
            .iter()
            .any(|l| l == "exhausted api pm-test zone-b ")
            .then_some(())
    })
    .await;
    assert_no_leaks(&c, "api").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_whose_agent_is_gone_past_the_grace_gets_nothing_new_until_it_is_back() {
    let mut c = Cluster::builder().zones(2).start().await;
    c.set_pool("web", c.pool_config("web-", 4)).await;
    let running = wait_running(&c, "web", 4).await;
    assert_eq!((running["zone-a"], running["zone-b"]), (2, 2));
    c.agent("zone-b", 0).kill9().await;
    // Past the grace (5s) zone-b gets nothing new; its instances still exist and count,
    // so nothing is created elsewhere (target + zones holds when the agent is back).
    wait_accepts_new(&c, "zone-b", false).await;
    let all: usize = c.gce_instances("web").await.values().map(Vec::len).sum();
    assert_eq!(all, 4, "no replacement for instances that still run");
    c.start_agent("zone-b");
    wait_accepts_new(&c, "zone-b", true).await;
    wait_running(&c, "web", 4).await;
    assert_no_leaks(&c, "web").await;
}

/// The pool's instances in GCE that are not TERMINATED.
async fn live(c: &Cluster, pool: &str) -> usize {
    let instances = c.gce_instances(pool).await;
    let all = instances.values().flatten();
    all.filter(|i| i.status.map(|s| s.as_str()) != Some("TERMINATED"))
        .count()
}

/// A zone that lost every agent is counted by another zone's agent: what it lost while
/// no agent ran (both its VMs preempted) moves to the other zone, and target + zones
/// holds throughout, the zone's agent coming back included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_zone_without_agents_loses_moves_elsewhere_as_its_witness_counts() {
    let mut c = Cluster::builder().zones(2).start().await;
    c.set_pool("web", c.pool_config("web-", 4)).await;
    wait_running(&c, "web", 4).await;
    c.agent("zone-b", 0).kill9().await;
    wait_accepts_new(&c, "zone-b", false).await;
    let witnessed_key = c.store().keys().witnessed("web", "zone-b").unwrap();
    let witnessed = |live: u32| {
        let key = witnessed_key.clone();
        let c = &c;
        async move {
            let w = c.store().get::<pm_proto::Witnessed>(&key).await.unwrap()?;
            (w.value.live == live && w.value.witness_zone == "zone-a").then_some(())
        }
    };
    c.wait("zone-a's agent counts zone-b's 2", BOUND, || witnessed(2))
        .await;
    let all: usize = c.gce_instances("web").await.values().map(Vec::len).sum();
    assert_eq!(all, 4, "instances that still run keep their share");
    c.sim().preempt_count("zone-b", 2).await.unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    let peak = std::sync::atomic::AtomicUsize::new(0);
    c.wait("zone-a takes zone-b's lost share", BOUND, || async {
        let running = c.count_status("web", "RUNNING").await;
        peak.fetch_max(live(&c, "web").await, Relaxed);
        (running.get("zone-a") == Some(&4)).then_some(())
    })
    .await;
    let event = c
        .wait("a zone-witnessed event counting none", BOUND, || async {
            let all = events(&c, "web").await;
            let witnessed = all.into_iter().filter(|e| e.kind == "zone-witnessed");
            witnessed
                .filter(|e| e.zone == "zone-b")
                .find(|e| e.message.contains("counted 0"))
        })
        .await;
    assert!(event.message.contains("zone-a"), "{}", event.message);
    c.start_agent("zone-b");
    c.wait(
        "zone-b's agent is back and the pool whole",
        BOUND,
        || async {
            let live = live(&c, "web").await;
            peak.fetch_max(live, Relaxed);
            let running = c.count_status("web", "RUNNING").await;
            let terminated = c.count_status("web", "TERMINATED").await;
            (live == 4 && total(&running) == 4 && total(&terminated) == 0).then_some(())
        },
    )
    .await;
    wait_accepts_new(&c, "zone-b", true).await;
    c.wait("the answer is removed once no one asks", BOUND, || async {
        let answer = c.store().get::<pm_proto::Witnessed>(&witnessed_key).await;
        answer.unwrap().is_none().then_some(())
    })
    .await;
    let peak = peak.into_inner();
    assert!(
        peak <= 4 + 2,
        "{peak} live instances, more than target + zones"
    );
    assert_no_leaks(&c, "web").await;
}

/// Waits until the scheduler tells `zone` of pool `web` that it may (or may not) create.
async fn wait_accepts_new(c: &Cluster, zone: &str, accept_new: bool) {
    let key = c.store().keys().zone_desired("web", zone).unwrap();
    c.wait(
        &format!("{zone} accept_new = {accept_new}"),
        BOUND,
        || async {
            let d = c
                .store()
                .get::<pm_proto::ZoneDesired>(&key)
                .await
                .unwrap()?;
            (d.value.accept_new == accept_new).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_agent_that_cannot_reconcile_counts_as_gone() {
    let mut c = Cluster::builder().zones(2).start().await;
    c.set_pool("web", c.pool_config("web-", 4)).await;
    wait_running(&c, "web", 4).await;
    // zone-b's agent is replaced by one that cannot reach GCE: it is registered and
    // active, but completes no pass.
    c.agent("zone-b", 0).kill9().await;
    let etcd = c.etcd_endpoints();
    let unreachable = [
        ("--gce-endpoint", "http://127.0.0.1:9/compute/v1/"),
        ("--gce-timeout", "1s"),
        ("--stall-after", "3s"),
    ];
    c.start_agent_with("zone-b", &etcd, &unreachable);
    wait_accepts_new(&c, "zone-b", false).await;
    let members = c.store().keys().agent_members_prefix("zone-b").unwrap();
    let listed = c
        .store()
        .list::<pm_proto::AgentInfo>(&members)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "zone-b still has a member key");
    assert!(
        listed.items[0].1.value.reconciling == Some(false),
        "it says it is stalled"
    );
}

/// Pool `mt` of 4 over zone-a and zone-b, with zone-a's machine type, so zone-b answers
/// every insert with a 400 naming itself: returns zone-b's first exhaustion once its
/// share runs in zone-a.
async fn zone_b_refuses_the_template(
    c: &Cluster,
    seconds_for_exhaustion: u32,
) -> pm_etcd::Versioned<ZoneExhaustion> {
    let mut config = c.pool_config("mt-", 4);
    config.instance_json =
        TEMPLATE.replace("zones/{zone}/machineTypes", "zones/zone-a/machineTypes");
    config.seconds_for_exhaustion = seconds_for_exhaustion;
    c.set_pool("mt", config).await;
    let key = c.store().keys().exhausted("mt", "zone-b").unwrap();
    let x = c
        .wait("zone-b is exhausted", BOUND, || async {
            c.store().get::<ZoneExhaustion>(&key).await.unwrap()
        })
        .await;
    assert_eq!(x.value.class(), pm_proto::ExhaustionClass::ZoneError);
    let running = wait_running(c, "mt", 4).await;
    assert_eq!(running["zone-a"], 4, "zone-b's share moved");
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_refusing_the_template_is_reported_with_its_class_and_its_share_moves() {
    let c = Cluster::builder().zones(2).start().await;
    zone_b_refuses_the_template(&c, 120).await;
    let status = pmctl_status(&c, "mt");
    let zones = &status["zones"];
    assert_eq!(zones[1]["exhausted"]["class"], "zone-error", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_error_is_reported_again_as_soon_as_the_zone_gets_a_share_again() {
    let c = Cluster::builder().zones(2).start().await;
    let first = zone_b_refuses_the_template(&c, 2).await;
    let key = c.store().keys().exhausted("mt", "zone-b").unwrap();
    c.wait("zone-b's exhaustion ends", BOUND, || async {
        let now = c.store().get::<ZoneExhaustion>(&key).await.unwrap();
        now.is_none_or(|x| x.create_revision != first.create_revision)
            .then_some(())
    })
    .await;
    // zone-a fills up and loses a VM: its share goes back to zone-b, whose agent must
    // try again and report again at once. Before, its 5-minute create pause kept it
    // silent, and the share it could not create was missed without a word.
    let sim = c.sim();
    sim.set_capacity("zone-a", 3).await.unwrap();
    sim.preempt_count("zone-a", 1).await.unwrap();
    let again = c
        .wait("zone-b is exhausted again", BOUND, || async {
            c.store()
                .get::<ZoneExhaustion>(&key)
                .await
                .unwrap()
                .filter(|x| x.create_revision != first.create_revision)
        })
        .await;
    assert_eq!(again.value.class(), pm_proto::ExhaustionClass::ZoneError);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_insert_is_replaced_without_duplicates() {
    // Slow operations: inserts are in flight when the agent dies.
    let mut c = Cluster::builder()
        .zones(1)
        .delays(Duration::from_millis(2500), Duration::from_millis(100))
        .start()
        .await;
    c.set_pool("batch", c.pool_config("batch-", 4)).await;
    c.wait("inserts were issued and recorded", BOUND, || async {
        let names: usize = c.observed("batch").await.values().map(Vec::len).sum();
        (names == 4).then_some(())
    })
    .await;
    c.agent("zone-a", 0).kill9().await;
    let recorded: BTreeSet<String> = c.observed("batch").await.into_values().flatten().collect();
    c.start_agent("zone-a");
    wait_running(&c, "batch", 4).await;
    let names: BTreeSet<String> = c
        .gce_instances("batch")
        .await
        .into_values()
        .flatten()
        .map(|i| i.name)
        .collect();
    assert_eq!(
        names, recorded,
        "the new agent adopted the inserts of the dead one"
    );
    let state = c.sim().state().await.unwrap();
    assert_eq!(
        state.counters.inserted, 4,
        "no second VM for a retried insert"
    );
    assert_no_leaks(&c, "batch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_agent_takes_over_and_losses_while_down_are_reported() {
    let mut c = Cluster::builder().zones(1).agents(2).start().await;
    let mut config = c.pool_config("db-", 2);
    c.set_pool("db", config.clone()).await;
    wait_running(&c, "db", 2).await;

    // Both agents die; an instance is deleted behind pm's back meanwhile.
    c.agent("zone-a", 0).kill9().await;
    c.agent("zone-a", 1).kill9().await;
    let victim = c.gce_instances("db").await["zone-a"][0].name.clone();
    c.compute()
        .delete(PROJECT, "zone-a", &victim)
        .await
        .unwrap();
    c.wait("the victim is gone from GCE", BOUND, || async {
        let names: Vec<String> = c
            .gce_instances("db")
            .await
            .into_values()
            .flatten()
            .map(|i| i.name)
            .collect();
        (!names.contains(&victim)).then_some(())
    })
    .await;
    let first = c.start_agent("zone-a");
    c.start_agent("zone-a");
    let e = wait_event(&c, "db", "vanished").await;
    assert_eq!(e.instance, victim);
    wait_running(&c, "db", 2).await;

    // The active one dies: the standby acts on the next change.
    c.agent("zone-a", first).kill9().await;
    config.target_vm_count = 3;
    c.set_pool("db", config).await;
    wait_running(&c, "db", 3).await;
    assert_no_leaks(&c, "db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_without_the_label_or_the_prefix_are_never_touched() {
    let c = Cluster::builder().zones(1).start().await;
    let foreign = |name: &str, label: Option<&str>| {
        let mut value: serde_json::Value = serde_json::from_str(
            &TEMPLATE
                .replace("{name}", name)
                .replace("{project}", PROJECT)
                .replace("{zone}", "zone-a"),
        )
        .unwrap();
        match label {
            Some(l) => value["labels"]["pm-pool"] = serde_json::Value::String(l.into()),
            None => {
                value["labels"].as_object_mut().unwrap().remove("pm-pool");
            }
        }
        serde_json::from_value::<pm_gce::resources::Instance>(value).unwrap()
    };
    for (name, label) in [
        ("web-nolabel", None),
        ("other-labelled", Some("web")),
        ("web-otherpool", Some("api")),
    ] {
        let op = c
            .compute()
            .insert(
                PROJECT,
                "zone-a",
                &foreign(name, label),
                &pm_gce::compute::request_id_for(name),
            )
            .await
            .unwrap();
        pm_gce::compute::wait_until_done(c.compute(), PROJECT, op, BOUND)
            .await
            .unwrap();
    }
    c.set_pool("web", c.pool_config("web-", 2)).await;
    wait_running(&c, "web", 3).await; // 2 of pm's plus "other-labelled", which pm ignores
    let mut config = c.pool_config("web-", 0);
    config.target_vm_count = 0;
    c.set_pool("web", config).await;
    c.wait("pm's instances are gone", BOUND, || async {
        let names: Vec<String> = c
            .gce_instances("web")
            .await
            .into_values()
            .flatten()
            .map(|i| i.name)
            .collect();
        (names == vec!["other-labelled".to_string()]).then_some(())
    })
    .await;
    let all: Vec<String> = c
        .compute()
        .list(PROJECT, "zone-a", None)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    for name in ["web-nolabel", "other-labelled", "web-otherpool"] {
        assert!(
            all.contains(&name.to_string()),
            "{name} was touched: {all:?}"
        );
    }
}

/// Waits until the agent has listed the pool `more` more times than now: the reconcile
/// loop is alive and had every chance to act.
async fn wait_syncs(c: &Cluster, more: u64) {
    let list = "compute.instances.list";
    let start = c.sim().stats().await.unwrap().count(list);
    c.wait(&format!("{more} more list calls"), BOUND, || async {
        (c.sim().stats().await.unwrap().count(list) >= start + more).then_some(())
    })
    .await;
}

/// GCE operations that never finish: the instances come up anyway and pm follows them
/// in its lists; once operations finish again, a preempted VM is replaced at once, not
/// after a back-off grown on the slow operations (it would be a minute by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_that_never_finish_do_not_stall_creates() {
    let c = Cluster::builder()
        .zones(1)
        .operation_timeout(Duration::from_secs(1))
        .start()
        .await;
    c.set_pool("web", c.pool_config("web-", 8)).await;
    wait_running(&c, "web", 8).await;
    c.sim()
        .set_faults(&gce_sim::Faults {
            hang_operations: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<String> = c.gce_instances("web").await["zone-a"]
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    c.sim().preempt_names(&names).await.unwrap();
    c.wait("8 creates outlive the operation timeout", BOUND, || async {
        let slow = events(&c, "web")
            .await
            .iter()
            .filter(|e| e.kind == "create-slow")
            .count();
        (slow >= 8).then_some(())
    })
    .await;
    wait_running(&c, "web", 8).await;
    c.wait("etcd drops the deleted VMs", BOUND, || async {
        let gce: BTreeSet<String> = c.gce_instances("web").await["zone-a"]
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let etcd: BTreeSet<String> = c.observed("web").await["zone-a"].iter().cloned().collect();
        (gce == etcd).then_some(())
    })
    .await;

    c.sim()
        .set_faults(&gce_sim::Faults::default())
        .await
        .unwrap();
    let victim = c.gce_instances("web").await["zone-a"][0].name.clone();
    c.sim().preempt_names(&[victim.as_str()]).await.unwrap();
    c.wait(
        "the preempted VM is replaced without a back-off",
        Duration::from_secs(15),
        || async {
            let list = &c.gce_instances("web").await["zone-a"];
            let running = list
                .iter()
                .filter(|i| i.status.map(|s| s.as_str()) == Some("RUNNING"));
            (running.filter(|i| i.name != victim).count() == 8).then_some(())
        },
    )
    .await;
}

/// Every insert answered 403 `quotaExceeded` from now on.
async fn refuse_inserts_for_quota(c: &Cluster) {
    c.sim()
        .set_faults(&gce_sim::Faults {
            error_rate: 1.0,
            status: 403,
            reason: Some("quotaExceeded".into()),
            methods: Some(vec!["compute.instances.insert".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_permanent_errors_do_not_spin() {
    let c = Cluster::builder().zones(1).start().await;
    let insert = "compute.instances.insert";

    // Quota: every insert is refused; the agent backs off instead of retrying at once.
    refuse_inserts_for_quota(&c).await;
    let mut config = c.pool_config("q-", 3);
    c.set_pool("q", config.clone()).await;
    let e = wait_event(&c, "q", "creates-throttled").await;
    assert!(e.message.contains("quota"), "{}", e.message);
    wait_syncs(&c, 5).await;
    let inserts = c.sim().stats().await.unwrap().count(insert);
    assert!(
        inserts <= 9,
        "{inserts} inserts in 5 syncs: the agent spins on quota errors"
    );
    c.sim()
        .set_faults(&gce_sim::Faults::default())
        .await
        .unwrap();
    wait_running(&c, "q", 3).await;

    // Permanent: GCE refuses the template (a bare machine type); one try per instance,
    // an event with GCE's message, and no retry while the config stays the same.
    config.instance_json = TEMPLATE.replace(
        "projects/{project}/zones/{zone}/machineTypes/e2-small",
        "e2-small",
    );
    config.target_vm_count = 5;
    let before = c.sim().stats().await.unwrap().count(insert);
    c.set_pool("q", config).await;
    let e = c
        .wait("a permanent create failure", BOUND, || async {
            events(&c, "q")
                .await
                .into_iter()
                .find(|e| e.kind == "create-failed" && e.message.contains("permanently"))
        })
        .await;
    assert!(
        e.message.contains("machineType"),
        "GCE's message is kept: {}",
        e.message
    );
    let after_failure = c.sim().stats().await.unwrap().count(insert);
    wait_syncs(&c, 5).await;
    let later = c.sim().stats().await.unwrap().count(insert);
    assert_eq!(later, after_failure, "no retry of a permanent error");
    // The new template starts a rollout: the 2 missing and its surge of 1 (one zone).
    assert!(
        after_failure - before <= 3,
        "{} inserts for 2 missing instances and a surge of 1",
        after_failure - before
    );
}

/// A quota storm at a small scale: every insert is refused for 20 s while the pool is 20
/// short. The agent cancels its queued creates and probes with one insert at a time
/// instead of sending the deficit, records entering and leaving the throttle once each,
/// and the pool is whole within about 30 s of the quota coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_storm_is_probed_not_hammered_and_recovers_quickly() {
    const SHORT: usize = 20;
    const SLOTS: usize = 4;
    let c = Cluster::builder()
        .zones(1)
        .max_concurrent(SLOTS)
        .start()
        .await;
    let insert = "compute.instances.insert";
    refuse_inserts_for_quota(&c).await;
    c.set_pool("storm", c.pool_config("storm-", SHORT as i64))
        .await;
    c.wait("the first insert", BOUND, || async {
        (c.sim().stats().await.unwrap().count(insert) > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let inserts = c.sim().stats().await.unwrap().count(insert);
    let kinds: Vec<String> = events(&c, "storm")
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    c.sim()
        .set_faults(&gce_sim::Faults::default())
        .await
        .unwrap();
    let back = tokio::time::Instant::now();
    assert!(
        inserts <= (SLOTS + 8) as u64,
        "{inserts} inserts in a 20 s storm: the slots' worth, then one probe per back-off"
    );
    assert!(
        kinds.len() <= 4,
        "events during the storm are state changes, not one per refusal: {kinds:?}"
    );
    c.wait(
        "the pool is whole soon after the quota returns",
        Duration::from_secs(40),
        || async {
            let running = c.count_status("storm", "RUNNING").await;
            (total(&running) == SHORT).then_some(())
        },
    )
    .await;
    let recovered = back.elapsed();
    assert!(
        recovered <= Duration::from_secs(32),
        "{recovered:?} to recover after the quota came back"
    );
    wait_running(&c, "storm", SHORT).await;
    let changes: Vec<String> = events(&c, "storm")
        .await
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("creates-"))
        .collect();
    assert_eq!(changes, ["creates-throttled", "creates-unthrottled"]);
    assert_no_leaks(&c, "storm").await;
}

#[test]
fn zone_names_stay_unique_and_valid_past_twenty_six() {
    use pm_tests::cluster::zone_name;
    let names: BTreeSet<String> = (0..60).map(zone_name).collect();
    assert_eq!(names.len(), 60);
    assert_eq!(
        (zone_name(0), zone_name(25), zone_name(26), zone_name(27)),
        (
            "zone-a".into(),
            "zone-z".into(),
            "zone1-a".into(),
            "zone1-b".into()
        )
    );
    assert!(
        names.iter().all(|z| pm_pool::naming::is_valid_zone(z)),
        "pool configs accept every harness zone: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_quorum_pm_pauses_safely_and_resumes() {
    let mut c = Cluster::builder().zones(1).etcd_members(3).start().await;
    c.set_pool("q", c.pool_config("q-", 3)).await;
    wait_running(&c, "q", 3).await;
    let calls = |s: &gce_sim::SimStats| {
        s.count("compute.instances.insert") + s.count("compute.instances.delete")
    };

    // Two of three members die: no quorum. A preemption now must not lead to a create or
    // a delete decided on state pm can no longer record.
    c.etcd().kill(1).await;
    c.etcd().kill(2).await;
    let before = calls(&c.sim().stats().await.unwrap());
    c.sim().preempt_count("zone-a", 1).await.unwrap();
    let acted = pm_tests::poll_until(Duration::from_secs(8), || async {
        let now = calls(&c.sim().stats().await.unwrap());
        (now > before).then_some(now)
    })
    .await;
    assert_eq!(
        acted,
        None,
        "pm created or deleted without etcd quorum\n{}",
        c.logs()
    );

    // Quorum returns: pm resumes and heals.
    c.etcd().restart(1);
    c.etcd().restart(2);
    c.etcd().wait_ready().await;
    wait_running(&c, "q", 3).await;
    // The test's own client may hold connections the restarts broke: let it reconnect.
    c.wait("the test's etcd client works again", BOUND, || async {
        c.store().list_keys(c.prefix()).await.ok()
    })
    .await;
    c.wait("every instance recorded again", BOUND, || async {
        let names: usize = c.observed("q").await.values().map(Vec::len).sum();
        (names == 3).then_some(())
    })
    .await;
    assert_no_leaks(&c, "q").await;
}

/// The names of `pool`'s instances in gce-sim with their status, and the calls that
/// changed each (read past the compute API).
async fn sim_instances(c: &Cluster, pool: &str) -> BTreeMap<String, gce_sim::InstanceReport> {
    c.sim()
        .instances()
        .await
        .unwrap()
        .instances
        .into_iter()
        .filter(|i| i.labels.get("pm-pool").map(String::as_str) == Some(pool))
        .map(|i| (i.name.clone(), i))
        .collect()
}

/// The state etcd records for instance `name` of `pool` in `zone`.
async fn observed_state(
    c: &Cluster,
    pool: &str,
    zone: &str,
    name: &str,
) -> Option<pm_proto::InstanceState> {
    let key = c.store().keys().instance(pool, zone, name).unwrap();
    let found = c.store().get::<ObservedInstance>(&key).await.unwrap()?;
    Some(found.value.state())
}

/// Statuses GCE added lately, produced through gce-sim's control API, in delete mode:
/// SUSPENDED is lost (deleted and replaced), DEPROVISIONING is stopping (deleted and
/// replaced), and a status pm does not know is left alone, not counted live.
#[tokio::test]
async fn new_statuses_in_delete_mode_are_replaced_or_left_alone() {
    let c = Cluster::builder().zones(1).start().await;
    c.set_pool("web", c.pool_config("web", 3)).await;
    wait_running(&c, "web", 3).await;
    let names: Vec<String> = sim_instances(&c, "web").await.into_keys().collect();
    let (suspended, deprovisioning, unknown) = (&names[0], &names[1], &names[2]);
    for (name, status) in [
        (suspended, "SUSPENDED"),
        (deprovisioning, "DEPROVISIONING"),
        (unknown, "HIBERNATING"),
    ] {
        c.sim().set_status("zone-a", name, status).await.unwrap();
    }
    let after = c
        .wait(
            "SUSPENDED and DEPROVISIONING replaced, the unknown one kept beside 3 RUNNING",
            BOUND,
            || async {
                let now = sim_instances(&c, "web").await;
                let running = now.values().filter(|i| i.status == "RUNNING").count();
                let gone = !now.contains_key(suspended) && !now.contains_key(deprovisioning);
                (gone && running == 3 && now.len() == 4).then_some(now)
            },
        )
        .await;
    let kept = &after[unknown];
    assert_eq!(kept.status, "HIBERNATING");
    assert!(kept.changes.is_empty(), "left alone: {kept:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = sim_instances(&c, "web").await;
    assert_eq!(later.len(), 4, "no more creates: {later:?}");
    assert!(later[unknown].changes.is_empty(), "still left alone");
}

/// In restart mode a SUSPENDED VM is resumed (the same VM, no replacement) and a
/// DEPROVISIONING one is stopping: counted as coming back, neither deleted nor replaced.
#[tokio::test]
async fn new_statuses_in_restart_mode_are_resumed_or_waited_for() {
    let c = Cluster::builder().zones(1).start().await;
    let mut config = c.pool_config("web", 2);
    config.on_preempted = pm_proto::OnPreempted::Restart as i32;
    c.set_pool("web", config).await;
    wait_running(&c, "web", 2).await;
    let before = sim_instances(&c, "web").await;
    let names: Vec<&String> = before.keys().collect();
    let (suspended, deprovisioning) = (names[0], names[1]);
    c.sim()
        .set_status("zone-a", suspended, "SUSPENDED")
        .await
        .unwrap();
    c.sim()
        .set_status("zone-a", deprovisioning, "DEPROVISIONING")
        .await
        .unwrap();
    c.wait("the SUSPENDED VM resumed", BOUND, || async {
        let now = sim_instances(&c, "web").await;
        (now[suspended].status == "RUNNING").then_some(())
    })
    .await;
    c.wait(
        "the DEPROVISIONING VM recorded as stopping",
        BOUND,
        || async {
            (observed_state(&c, "web", "zone-a", deprovisioning).await
                == Some(pm_proto::InstanceState::Stopping))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sim_instances(&c, "web").await;
    assert_eq!(after.len(), 2, "nothing replaced: {after:?}");
    assert_eq!(after[suspended].id, before[suspended].id, "the same VM");
    assert_eq!(
        after[suspended].changes.get("compute.instances.resume"),
        Some(&1)
    );
    assert_eq!(after[deprovisioning].status, "DEPROVISIONING");
    assert!(
        after[deprovisioning].changes.is_empty(),
        "waited for: {:?}",
        after[deprovisioning]
    );
    assert_eq!(c.sim().state().await.unwrap().counters.resumed, 1);
}

/// Waits until etcd records exactly the instances GCE has of `pool`, `want` of them.
async fn wait_recorded(c: &Cluster, pool: &str, want: usize) {
    c.wait(
        &format!("{want} instances of {pool} recorded"),
        BOUND,
        || async {
            let names: usize = c
                .try_observed(pool)
                .await
                .ok()?
                .values()
                .map(Vec::len)
                .sum();
            (names == want).then_some(())
        },
    )
    .await;
    assert_no_leaks(c, pool).await;
}

/// The agent of `zone` that is active (`pm_agent_active` 1), by index.
async fn active_agent(c: &Cluster, zone: &str) -> usize {
    c.wait(&format!("an active agent in {zone}"), BOUND, || async {
        for i in 0..c.agent_count(zone) {
            let addr = c.agent_metrics(zone, i).await;
            let (_, text) = pm_tests::cluster::http_get(addr, "/metrics").await?;
            if pm_tests::cluster::metric_sum(&text, "pm_agent_active", &[]) == 1.0 {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// One member at a time cut off from the agents (its proxy blackholed), the other two
/// keeping quorum: requests already sent to it fail once the HTTP/2 pings time out (a
/// quarter of the lease TTL each way), idempotent ones are tried again on another member,
/// and lease keep-alives give up a silent stream after a renewal interval, so terms go on.
/// Before, those requests ended the agents' terms and the zone went without an agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_member_partitioned_from_the_agents_freezes_nothing() {
    let mut c = Cluster::builder()
        .zones(1)
        .agents(0)
        .etcd_members(3)
        .start()
        .await;
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies.push(TcpProxy::for_url(&c.etcd().endpoint(i)).await);
    }
    let via: Vec<String> = proxies.iter().map(TcpProxy::url).collect();
    c.start_agent_via("zone-a", &via.join(","));
    c.start_agent_via("zone-a", &via.join(","));
    let mut config = c.pool_config("part-", 2);
    c.set_pool("part", config.clone()).await;
    wait_running(&c, "part", 2).await;

    // Each member in turn is cut off from the agents (the two others keep quorum): one of
    // them carries the active agent's watch, which must not freeze its view.
    for (i, proxy) in proxies.iter().enumerate() {
        proxy.blackhole();
        config.target_vm_count = 3 + i as i64;
        c.set_pool("part", config.clone()).await;
        wait_running(&c, "part", 3 + i).await;
        proxy.restore();
    }

    // With a member cut off, the active agent dies: the standby takes over.
    proxies[0].blackhole();
    let active = active_agent(&c, "zone-a").await;
    c.agent("zone-a", active).kill9().await;
    config.target_vm_count = 2;
    c.set_pool("part", config).await;
    wait_running(&c, "part", 2).await;
    wait_recorded(&c, "part", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_snapshot_restore_pm_converges_on_the_restored_state() {
    let mut c = Cluster::builder().zones(2).start().await;
    let mut config = c.pool_config("snap-", 2);
    c.set_pool("snap", config.clone()).await;
    wait_running(&c, "snap", 2).await;
    wait_recorded(&c, "snap", 2).await;
    let snapshot = c.etcd().dir().join("backup.db");
    c.etcd().snapshot_save(&snapshot).await;

    // After the backup: the pool grows, and etcd's revisions go well past the snapshot's.
    config.target_vm_count = 5;
    c.set_pool("snap", config).await;
    wait_running(&c, "snap", 5).await;
    wait_recorded(&c, "snap", 5).await;

    // The restore brings back target 2 and two recorded instances, at older revisions:
    // the daemons must follow it, and the three VMs etcd no longer knows must go.
    c.etcd().restore_snapshot(&snapshot).await;
    wait_running(&c, "snap", 2).await;
    wait_recorded(&c, "snap", 2).await;
    let target = c
        .store()
        .get::<pm_proto::PoolConfig>(&c.store().keys().pool_config("snap").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(target.value.target_vm_count, 2, "the restored config");
}

/// Well within a preemption notice of 30 s, and far below the pool's rest of 120 s.
const NOTICE_BOUND: Duration = Duration::from_secs(20);

/// GCE records a preemption's operation when it starts, and the VM is STOPPING through
/// its notice. The agent looks for notices every second: the replacement is requested
/// within the notice, long before the pool's next pass (a rest of two minutes), and the
/// preempted hook runs then too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preemption_is_replaced_at_its_notice_not_at_the_next_pass() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-preempted");
    let c = Cluster::builder()
        .zones(1)
        .preempt_notice(Duration::from_secs(30))
        .hooks_dir(hooks.path())
        .start()
        .await;
    let mut config = c.pool_config("web-", 2);
    config.seconds_to_rest = 120;
    config.hooks = Some(Hooks {
        preempted: "on-preempted".into(),
        ..Default::default()
    });
    c.set_pool("web", config).await;
    wait_running(&c, "web", 2).await;
    // The pass that records them RUNNING is the last before a rest of two minutes.
    c.wait("both recorded RUNNING", BOUND, || async {
        let prefix = c.store().keys().instances_prefix("web", "zone-a").unwrap();
        let listing = c.store().list::<ObservedInstance>(&prefix).await.unwrap();
        let running = listing
            .items
            .iter()
            .filter(|(_, v)| v.value.state() == pm_proto::InstanceState::Running);
        (running.count() == 2).then_some(())
    })
    .await;
    let before: BTreeSet<String> = c.gce_instances("web").await["zone-a"]
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let preempted = c.sim().preempt_count("zone-a", 1).await.unwrap();
    let name = preempted.preempted[0].clone();
    c.wait(
        "a replacement within the preempted VM's notice",
        NOTICE_BOUND,
        || async {
            let now = c.gce_instances("web").await;
            let list = now.get("zone-a")?;
            list.iter().any(|i| !before.contains(&i.name)).then_some(())
        },
    )
    .await;
    c.wait(
        "the preempted hook ran at the notice",
        NOTICE_BOUND,
        || async {
            hook_lines(hooks.path())
                .iter()
                .any(|l| l.starts_with(&format!("preempted web pm-test zone-a {name}")))
                .then_some(())
        },
    )
    .await;
}

/// `spares` VMs are kept beyond the target, and replaced like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_are_kept_beyond_the_target() {
    let c = Cluster::builder().zones(3).start().await;
    let mut config = c.pool_config("web-", 3);
    config.spares = 2;
    c.set_pool("web", config).await;
    wait_running(&c, "web", 5).await;
    c.sim().preempt_count("zone-a", 1).await.unwrap();
    wait_running(&c, "web", 5).await;
    assert_no_leaks(&c, "web").await;
}
