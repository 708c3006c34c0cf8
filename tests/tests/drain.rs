//! The drain path end to end: etcd, gce-sim, pm-scheduler and pm-agents as processes.
//! A scale-down drains its VMs one budget slot at a time, labels them, runs the drain hook
//! with its variables and waits for it; a drain request recycles its VM, a hard one
//! without waiting, a soft one up to drainSeconds.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pm_proto::{Amount, Disruption, Event, Hooks};
use pm_tests::Cluster;

const BOUND: Duration = Duration::from_secs(60);

fn write_hook(dir: &Path, name: &str, sleep: &str) {
    let log = dir.join("drain.log");
    let body = format!(
        "echo \"$EVENT $NAME $HARD $DRAIN_SECONDS $REASON\" >> {}\nsleep {sleep}",
        log.display()
    );
    pm_tests::write_script(dir, name, &body);
}

fn hook_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("drain.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn events(c: &Cluster, pool: &str, kind: &str) -> Vec<Event> {
    let prefix = c.store().keys().events_prefix(pool).unwrap();
    let listing = c.store().list::<Event>(&prefix).await.unwrap();
    let all = listing.items.into_iter().map(|(_, v)| v.value);
    all.filter(|e| e.kind == kind).collect()
}

async fn pool_target(c: &Cluster, pool: &str) -> i64 {
    let key = c.store().keys().pool_config(pool).unwrap();
    let config = c.store().get::<pm_proto::PoolConfig>(&key).await.unwrap();
    config.expect("a config").value.target_vm_count
}

async fn running(c: &Cluster, pool: &str) -> usize {
    c.count_status(pool, "RUNNING").await.values().sum()
}

async fn all_in_gce(c: &Cluster, pool: &str) -> usize {
    c.gce_instances(pool).await.values().map(Vec::len).sum()
}

async fn wait_exactly(c: &Cluster, pool: &str, want: usize) {
    c.wait(
        &format!("{want} RUNNING VMs and no other"),
        BOUND,
        || async {
            let done = running(c, pool).await == want && all_in_gce(c, pool).await == want;
            done.then_some(())
        },
    )
    .await;
}

fn config(
    c: &Cluster,
    target: i64,
    drain_seconds: u32,
    max_concurrent: u32,
) -> pm_proto::PoolConfig {
    let mut config = c.pool_config("web-", target);
    config.hooks = Some(Hooks {
        drain: "on-drain".into(),
        ..Default::default()
    });
    config.disruption = Some(Disruption {
        max_concurrent: Some(Amount {
            value: max_concurrent,
            percent: false,
        }),
        drain_seconds: Some(drain_seconds),
    });
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scale_down_drains_within_the_budget_and_waits_for_the_hook() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-drain", "1");
    let c = Cluster::builder()
        .zones(3)
        .hooks_dir(hooks.path())
        .start()
        .await;
    c.set_pool("web", config(&c, 6, 20, 1)).await;
    wait_exactly(&c, "web", 6).await;
    c.set_pool("web", config(&c, 3, 20, 1)).await;
    let slots = c.store().keys().drain_slots_prefix("web").unwrap();
    let most_slots = AtomicUsize::new(0);
    let most_labelled = AtomicUsize::new(0);
    let (c_ref, slots_ref) = (&c, &slots);
    let (most_slots_ref, most_labelled_ref) = (&most_slots, &most_labelled);
    c.wait("the pool drained to 3", BOUND, || async move {
        let held = c_ref.store().list_keys(slots_ref).await.unwrap().len();
        most_slots_ref.fetch_max(held, Ordering::SeqCst);
        let listed = c_ref.gce_instances("web").await.into_values().flatten();
        let labelled = listed
            .filter(|i| i.labels.get("pm-state").map(String::as_str) == Some("draining"))
            .filter(|i| i.status == Some(pm_gce::resources::InstanceStatus::Running))
            .count();
        most_labelled_ref.fetch_max(labelled, Ordering::SeqCst);
        let done = all_in_gce(c_ref, "web").await == 3 && held == 0;
        done.then_some(())
    })
    .await;
    let most_slots = most_slots.into_inner();
    let most_labelled_running = most_labelled.into_inner();
    assert_eq!(most_slots, 1, "one drain at a time, and drains were seen");
    assert!(
        most_labelled_running >= 1,
        "a draining VM carries the label while it waits"
    );
    let lines = hook_lines(hooks.path());
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        assert!(line.starts_with("drain web-"), "{line}");
        assert!(
            line.contains(" 0 20 scale-down"),
            "HARD, DRAIN_SECONDS, REASON: {line}"
        );
    }
    let drained = events(&c, "web", "drained").await;
    assert_eq!(drained.len(), 3, "{drained:?}");
    assert!(
        drained.iter().all(|e| e.message.contains("drain hook: ok")),
        "{drained:?}"
    );
    assert_eq!(events(&c, "web", "draining").await.len(), 3);
    wait_exactly(&c, "web", 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_hook_dropped_from_a_full_queue_still_waits_its_time() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-drain", "300");
    let mut c = Cluster::builder()
        .zones(1)
        .agents(0)
        .hooks_dir(hooks.path())
        .start()
        .await;
    let (zone, etcd) = (c.zones()[0].clone(), c.etcd_endpoints());
    // The running hook outlasts drainSeconds by far: its drain ends by the wait, not by
    // the hook's timeout.
    let flags = [("--hook-queue", "1"), ("--hook-timeout", "600s")];
    c.start_agent_with(&zone, &etcd, &flags);
    c.set_pool("web", config(&c, 2, 4, 2)).await;
    wait_exactly(&c, "web", 2).await;
    c.set_pool("web", config(&c, 0, 4, 2)).await;
    c.wait("both drained", BOUND, || async {
        (events(&c, "web", "drained").await.len() == 2).then_some(())
    })
    .await;
    let drained = events(&c, "web", "drained").await;
    assert!(
        drained
            .iter()
            .all(|e| e.message.contains("did not finish in time")),
        "the hook that never ran (one queue place, taken) waited drainSeconds too: {drained:?}"
    );
    assert_eq!(hook_lines(hooks.path()).len(), 1, "one hook ran");
    wait_exactly(&c, "web", 0).await;
}

/// `pmctl -o json drain web ...`: its exit status, stdout as JSON, stderr.
fn pmctl_drain(c: &Cluster, args: &[&str]) -> (bool, serde_json::Value, String) {
    let mut all = vec!["drain", "web"];
    all.extend_from_slice(args);
    pmctl_json(c, &all)
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_requests_recycle_their_vms_hard_at_once_soft_up_to_the_wait() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-drain", "300");
    let c = Cluster::builder()
        .zones(1)
        .hooks_dir(hooks.path())
        .start()
        .await;
    c.set_pool("web", config(&c, 2, 3, 2)).await;
    wait_exactly(&c, "web", 2).await;
    let zone = c.zones()[0].clone();
    let names: Vec<String> = c.gce_instances("web").await[&zone]
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let (ok, _, stderr) = pmctl_drain(&c, &[&names[0], "web-nosuchvm"]);
    assert!(
        !ok && stderr.contains("no VM named web-nosuchvm"),
        "{stderr}"
    );
    let requests = c
        .store()
        .keys()
        .drain_requests_prefix("web", &zone)
        .unwrap();
    assert!(
        c.store().list_keys(&requests).await.unwrap().is_empty(),
        "nothing written"
    );
    let (ok, hard, stderr) = pmctl_drain(&c, &[&names[0], "--hard", "--reason", "kernel update"]);
    assert!(ok, "{stderr}");
    assert_eq!(hard["pool"], "web");
    assert_eq!(hard["state"], "requested");
    assert_eq!(hard["selected"], serde_json::json!([names[0]]));
    let workflow = hard["workflow_id"].as_str().expect("an id").to_string();
    let (ok, _, stderr) = pmctl_drain(&c, &[&names[1]]);
    assert!(ok, "{stderr}");
    c.wait("both VMs replaced", BOUND, || async {
        let now = c.gce_instances("web").await;
        let left = now.values().flatten().any(|i| names.contains(&i.name));
        (!left && running(&c, "web").await == 2).then_some(())
    })
    .await;
    let drained = events(&c, "web", "drained").await;
    let message = |name: &str| {
        drained
            .iter()
            .find(|e| e.instance == name)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert!(message(&names[0]).contains("hard: at once"), "{drained:?}");
    assert!(
        message(&names[1]).contains("did not finish in time"),
        "the soft one waited drainSeconds for a hook that sleeps: {drained:?}"
    );
    let workflows = c.store().keys().workflows_prefix("web").unwrap();
    let recorded = c.store().list_keys(&workflows).await.unwrap();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded.iter().any(|k| k.ends_with(&workflow)),
        "{recorded:?}"
    );
    c.wait("the requests are answered", BOUND, || async {
        c.store()
            .list_keys(&requests)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    wait_exactly(&c, "web", 2).await;
}

/// `pmctl -o json <args>` against the cluster: exit status, stdout as JSON, stderr.
fn pmctl_json(c: &Cluster, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = std::process::Command::new(pm_tests::bin_path("pmctl"))
        .args([
            "--etcd",
            &c.etcd_endpoints(),
            "--prefix",
            c.prefix(),
            "-o",
            "json",
        ])
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shed_lowers_the_target_and_removes_the_selected_vms_without_replacing_them() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-drain", "0");
    let c = Cluster::builder()
        .zones(2)
        .hooks_dir(hooks.path())
        .start()
        .await;
    c.set_pool("web", config(&c, 4, 20, 2)).await;
    wait_exactly(&c, "web", 4).await;
    // Label one VM through the real setLabels call, as an operator's tool would.
    let gce = c.gce_instances("web").await;
    // In the first zone: a plain scale-down by one would trim the last.
    let zone = c.zones()[0].clone();
    let tagged = gce[&zone][0].clone();
    let mut labels = tagged.labels.clone();
    labels.insert("tier".into(), "batch".into());
    let op = c
        .compute()
        .set_labels(
            pm_tests::cluster::PROJECT,
            &zone,
            &tagged.name,
            &labels,
            tagged.label_fingerprint.as_deref().unwrap_or_default(),
        )
        .await
        .unwrap();
    c.compute()
        .wait_operation(pm_tests::cluster::PROJECT, &zone, &op.name)
        .await
        .unwrap();
    c.wait("the label is recorded", BOUND, || async {
        let key = c
            .store()
            .keys()
            .instance("web", &zone, &tagged.name)
            .unwrap();
        let o = c
            .store()
            .get::<pm_proto::ObservedInstance>(&key)
            .await
            .unwrap()?;
        (o.value.labels.get("tier").map(String::as_str) == Some("batch")).then_some(())
    })
    .await;
    // Refusals write nothing.
    let (ok, _, stderr) = pmctl_json(&c, &["shed", "web", "2", "--selector", "tier=batch"]);
    assert!(!ok && stderr.contains("fewer than 2"), "{stderr}");
    let (ok, _, stderr) = pmctl_json(&c, &["shed", "web", "1", "--selector", "Tier"]);
    assert!(!ok && stderr.contains("KEY=VALUE"), "{stderr}");
    assert_eq!(pool_target(&c, "web").await, 4, "nothing was written");

    let (ok, shed, stderr) = pmctl_json(
        &c,
        &[
            "shed",
            "web",
            "1",
            "--selector",
            "tier=batch",
            "--reason",
            "batch done",
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(shed["selected"], serde_json::json!([tagged.name]));
    assert_eq!(shed["state"], "requested");
    let workflow = shed["workflow_id"].as_str().expect("an id").to_string();
    assert_eq!(pool_target(&c, "web").await, 3);
    // A second shed within the interval is refused, unless forced.
    let (ok, _, stderr) = pmctl_json(&c, &["shed", "web", "1"]);
    assert!(!ok && stderr.contains("--min-interval"), "{stderr}");
    c.wait("the labelled VM is gone, and no other", BOUND, || async {
        let now = c.gce_instances("web").await;
        let names: Vec<&str> = now.values().flatten().map(|i| i.name.as_str()).collect();
        let gone = !names.contains(&tagged.name.as_str());
        (gone && names.len() == 3).then_some(())
    })
    .await;
    let desired = |zone: String| {
        let c = &c;
        async move {
            let key = c.store().keys().zone_desired("web", &zone).unwrap();
            let d = c.store().get::<pm_proto::ZoneDesired>(&key).await.unwrap();
            d.map_or(0, |d| d.value.count)
        }
    };
    assert_eq!(
        (
            desired(zone.clone()).await,
            desired(c.zones()[1].clone()).await
        ),
        (1, 2),
        "the shed VM's own zone goes down, so nothing replaces it"
    );
    let (ok, view, stderr) = pmctl_json(&c, &["workflows", "web", &workflow]);
    assert!(ok, "{stderr}");
    assert_eq!(view["state"], "done", "{view}");
    assert_eq!(view["kind"], "shed");
    c.wait_recorded_running("web", 3).await;
    // Without a selector, a forced hard shed takes what a scale-down would: the newest.
    let (ok, shed, stderr) = pmctl_json(&c, &["shed", "web", "2", "--hard", "--force"]);
    assert!(ok, "{stderr}");
    assert_eq!(pool_target(&c, "web").await, 1);
    let chosen: Vec<String> = serde_json::from_value(shed["selected"].clone()).unwrap();
    c.wait("the shed VMs are gone", BOUND, || async {
        let now = c.gce_instances("web").await;
        let left = now.values().flatten().any(|i| chosen.contains(&i.name));
        (!left).then_some(())
    })
    .await;
    wait_exactly(&c, "web", 1).await;
    // Nothing replaces them: the zones' counts add up to the lowered target.
    let mut counts = 0;
    for zone in c.zones() {
        let key = c.store().keys().zone_desired("web", zone).unwrap();
        let desired = c.store().get::<pm_proto::ZoneDesired>(&key).await.unwrap();
        counts += desired.map_or(0, |d| d.value.count);
    }
    assert_eq!(counts, 1, "no zone is told to replace a shed VM");
    wait_exactly(&c, "web", 1).await;
    let lines = hook_lines(hooks.path());
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&tagged.name) && l.ends_with("batch done")),
        "the soft shed ran the drain hook: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shed_mid_drain_survives_a_scheduler_and_agent_failover() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-drain", "300");
    let mut c = Cluster::builder()
        .zones(1)
        .agents(2)
        .schedulers(2)
        .hooks_dir(hooks.path())
        .start()
        .await;
    c.set_pool("web", config(&c, 3, 20, 1)).await;
    wait_exactly(&c, "web", 3).await;
    c.wait_recorded_running("web", 3).await;
    let (ok, shed, stderr) = pmctl_json(&c, &["shed", "web", "1", "--reason", "failover"]);
    assert!(ok, "{stderr}");
    let chosen = shed["selected"][0].as_str().expect("a VM").to_string();
    let zone = c.zones()[0].clone();
    let key = c.store().keys().instance("web", &zone, &chosen).unwrap();
    c.wait("the shed VM drains", BOUND, || async {
        let o = c
            .store()
            .get::<pm_proto::ObservedInstance>(&key)
            .await
            .unwrap()?;
        o.value.drain.is_some().then_some(())
    })
    .await;
    // Its drain waits 20 s for a hook that sleeps: a drain of it meanwhile is refused.
    let (ok, _, stderr) = pmctl_drain(&c, &[&chosen]);
    assert!(!ok && stderr.contains("already asked"), "{stderr}");
    let (_, leader, _) = pmctl_json(&c, &["leader"]);
    let index = (0..c.scheduler_count())
        .find(|i| leader["leader"]["id"] == c.scheduler(*i).name())
        .expect("a scheduler leads");
    c.scheduler(index).kill9().await;
    c.agent(&zone, 0).kill9().await;
    c.wait("the shed VM is gone after the failover", BOUND, || async {
        let now = c.gce_instances("web").await;
        let gone = !now.values().flatten().any(|i| i.name == chosen);
        gone.then_some(())
    })
    .await;
    wait_exactly(&c, "web", 2).await;
    let workflow = shed["workflow_id"].as_str().expect("an id").to_string();
    c.wait("the workflow is done", BOUND, || async {
        let (ok, view, _) = pmctl_json(&c, &["workflows", "web", &workflow]);
        (ok && view["state"] == "done").then_some(())
    })
    .await;
    let desired_key = c.store().keys().zone_desired("web", &zone).unwrap();
    let desired = c
        .store()
        .get::<pm_proto::ZoneDesired>(&desired_key)
        .await
        .unwrap();
    assert_eq!(desired.map(|d| d.value.count), Some(2), "no replacement");
    assert_eq!(pool_target(&c, "web").await, 2);
}
