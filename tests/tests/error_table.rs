//! The error table of README's "How pm reads GCE's answers", row by row, end to end: a
//! real agent and scheduler against gce-sim over HTTP, with GCE's answers injected
//! through the sim's control API, and what pm then does read back from etcd and the sim.

use std::time::Duration;

use gce_sim::Faults;
use pm_proto::{Event, Severity};
use pm_tests::Cluster;

const BOUND: Duration = Duration::from_secs(45);

async fn events(c: &Cluster, pool: &str) -> Vec<Event> {
    let prefix = c.store().keys().events_prefix(pool).unwrap();
    let listing = c.store().list::<Event>(&prefix).await.unwrap();
    listing.items.into_iter().map(|(_, v)| v.value).collect()
}

/// The first event of `pool` whose kind is `kind` and whose message holds `holding`.
async fn wait_event(c: &Cluster, pool: &str, kind: &str, holding: &str) -> Event {
    c.wait(
        &format!("a {kind} event of {pool} saying {holding:?}"),
        BOUND,
        || async {
            events(c, pool)
                .await
                .into_iter()
                .find(|e| e.kind == kind && e.message.contains(holding))
        },
    )
    .await
}

async fn wait_running(c: &Cluster, pool: &str, want: usize) {
    c.wait(&format!("{want} RUNNING of {pool}"), BOUND, || async {
        let running: usize = c.count_status(pool, "RUNNING").await.values().sum();
        (running == want).then_some(())
    })
    .await;
}

/// Every insert answered with `status` and `reason` from now on.
async fn inserts_fail(c: &Cluster, status: u16, reason: &str) {
    fail(c, status, reason, "compute.instances.insert").await;
}

async fn fail(c: &Cluster, status: u16, reason: &str, method: &str) {
    c.sim()
        .set_faults(&Faults {
            error_rate: 1.0,
            status,
            reason: Some(reason.into()),
            methods: Some(vec![method.into()]),
            ..Faults::default()
        })
        .await
        .unwrap();
}

async fn heal(c: &Cluster) {
    c.sim().set_faults(&Faults::default()).await.unwrap();
}

async fn exhausted(c: &Cluster, pool: &str) -> bool {
    let key = c.store().keys().exhausted(pool, "zone-a").unwrap();
    c.store()
        .get::<pm_proto::ZoneExhaustion>(&key)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_of_the_error_table_leads_to_its_reaction() {
    let c = Cluster::builder().zones(1).start().await;

    // A 503 that says the zone is out of capacity is a stockout: the zone is marked.
    inserts_fail(&c, 503, "insufficientCapacity").await;
    c.set_pool("stock", c.pool_config("stock-", 1)).await;
    wait_event(&c, "stock", "stockout", "zone out of capacity").await;
    c.wait("the zone marked exhausted", BOUND, || async {
        exhausted(&c, "stock").await.then_some(())
    })
    .await;
    heal(&c).await;
    c.set_pool("stock", {
        let mut done = c.pool_config("stock-", 0);
        done.deleted = true;
        done
    })
    .await;

    // Any other 503 is transient: retried and backed off, never a stockout.
    inserts_fail(&c, 503, "backendError").await;
    c.set_pool("flaky", c.pool_config("flaky-", 1)).await;
    wait_event(&c, "flaky", "create-failed", "Retryable").await;
    assert!(!exhausted(&c, "flaky").await, "a plain 503 marks nothing");
    assert!(
        !events(&c, "flaky")
            .await
            .iter()
            .any(|e| e.kind == "stockout"),
        "no stockout event"
    );
    heal(&c).await;
    wait_running(&c, "flaky", 1).await;

    // Quota and rate limits throttle creates: one probe at a time until one succeeds.
    inserts_fail(&c, 403, "quotaExceeded").await;
    c.set_pool("quota", c.pool_config("quota-", 1)).await;
    wait_event(&c, "quota", "creates-throttled", "throttled: quota").await;
    inserts_fail(&c, 429, "rateLimitExceeded").await;
    c.set_pool("rate", c.pool_config("rate-", 1)).await;
    wait_event(&c, "rate", "creates-throttled", "throttled: rate limit").await;
    // resourceNotReady is transient.
    inserts_fail(&c, 400, "resourceNotReady").await;
    c.set_pool("ready", c.pool_config("ready-", 1)).await;
    wait_event(&c, "ready", "create-failed", "Retryable").await;
    heal(&c).await;
    for pool in ["quota", "rate", "ready"] {
        wait_running(&c, pool, 1).await;
    }
    wait_event(&c, "quota", "creates-unthrottled", "probe insert succeeded").await;

    // A 409 naming a disk is the template's fault (a fixed diskName): the event names it.
    let mut fixed = c.pool_config("disk-", 2);
    let mut template: serde_json::Value = serde_json::from_str(&fixed.instance_json).unwrap();
    template["disks"][0]["initializeParams"]["diskName"] = "shared-boot".into();
    fixed.instance_json = template.to_string();
    c.set_pool("disk", fixed).await;
    let refused = wait_event(&c, "disk", "create-failed", "disks/shared-boot").await;
    assert_eq!(refused.severity(), Severity::Error);
    assert!(
        refused.message.contains("already exists"),
        "{}",
        refused.message
    );
    wait_running(&c, "disk", 1).await;

    // A 404 on start (restart mode) lists again and leaves creates going.
    let mut restart = c.pool_config("again-", 2);
    restart.on_preempted = pm_proto::OnPreempted::Restart as i32;
    c.set_pool("again", restart).await;
    wait_running(&c, "again", 2).await;
    fail(&c, 404, "notFound", "compute.instances.start").await;
    let victim = c.gce_instances("again").await["zone-a"][0].name.clone();
    c.sim().preempt_names(&[victim.as_str()]).await.unwrap();
    wait_event(&c, "again", "restart-gone", &victim).await;
    heal(&c).await;
    // A restart paused for minutes (a permanent error's pause) would not come back here.
    wait_running(&c, "again", 2).await;
}
