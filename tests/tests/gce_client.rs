//! The REST client against a real gce-sim over HTTP: every error class, timeouts, a
//! stuck operation, idempotent inserts, pagination, preemption history, and garbage
//! responses from a server that is not GCE at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gce_sim::{Faults, RunningSim, Sim, SimControl};
use pm_gce::{
    request_id_for, wait_until_done, Auth, Backoff, Compute, ErrorClass, GceError, Instance,
    InstanceStatus, OperationStatus, PageRequest, RestCompute, RestConfig,
};
use pm_tests::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PROJECT: &str = "proj";
const ZONE: &str = "us-central1-a";
const BOUND: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 3;
const PREEMPTED: &str = "operationType = \"compute.instances.preempted\"";

struct Setup {
    sim: RunningSim,
    control: SimControl,
    compute: Arc<dyn Compute>,
}

async fn client(base_url: String, timeout: Duration, page_size: u32) -> RestCompute {
    let mut config = RestConfig::new(base_url, Auth::None).expect("config");
    config.timeout = timeout;
    config.wait_timeout = timeout;
    config.backoff =
        Backoff::new(Duration::from_millis(1), Duration::from_millis(5)).expect("backoff");
    config.max_attempts = ATTEMPTS;
    config.page_size = page_size;
    RestCompute::new(config).await.expect("client")
}

async fn setup_with(sim: Sim, timeout: Duration) -> Setup {
    let sim = sim.start_local().await.expect("sim starts");
    let control = sim.control();
    let compute: Arc<dyn Compute> = Arc::new(client(sim.compute_url(), timeout, 2).await);
    Setup {
        sim,
        control,
        compute,
    }
}

fn quick_sim() -> Sim {
    Sim::builder()
        .zones([ZONE, "us-central1-b"])
        .op_delay(Duration::from_millis(20))
        .boot_delay(Duration::from_millis(20))
        .wait_bound(Duration::from_secs(2))
        .seed(42)
        .build()
        .expect("config")
}

async fn setup() -> Setup {
    setup_with(quick_sim(), Duration::from_secs(5)).await
}

fn instance(name: &str) -> Instance {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "machineType": format!("zones/{ZONE}/machineTypes/e2-small"),
        "labels": {"pm-pool": "web"},
        "scheduling": {"preemptible": true, "instanceTerminationAction": "STOP"},
        "disks": [{"boot": true, "autoDelete": true, "initializeParams": {
            "sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}],
        "networkInterfaces": [{"network": "global/networks/default"}]
    }))
    .expect("instance")
}

async fn create(compute: &dyn Compute, name: &str) {
    let op = compute
        .insert(PROJECT, ZONE, &instance(name), &request_id_for(name))
        .await
        .expect("insert accepted");
    wait_until_done(compute, PROJECT, op, BOUND)
        .await
        .expect("insert succeeds");
}

async fn inject(control: &SimControl, status: u16, reason: Option<&str>) {
    control
        .set_faults(&Faults {
            error_rate: 1.0,
            status,
            latency_ms: 0,
            reason: reason.map(str::to_string),
            ..Faults::default()
        })
        .await
        .expect("faults");
}

async fn requests_of(control: &SimControl, method: &str) -> u64 {
    control.stats().await.expect("stats").count(method)
}

#[tokio::test]
async fn insert_wait_get_list_delete() {
    let s = setup().await;
    let compute = s.compute.as_ref();
    create(compute, "web-1").await;
    let got = compute
        .get(PROJECT, ZONE, "web-1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.name, "web-1");
    assert_eq!(got.labels.get("pm-pool").map(String::as_str), Some("web"));
    assert!(got.id.is_some() && got.label_fingerprint.is_some());
    assert_eq!(
        got.zone
            .as_deref()
            .and_then(pm_gce::resources::last_segment),
        Some(ZONE)
    );
    eventually("web-1 RUNNING", BOUND, || async {
        let got = compute.get(PROJECT, ZONE, "web-1").await.expect("get")?;
        (got.status == Some(InstanceStatus::Running)).then_some(())
    })
    .await;

    let listed = compute
        .list(PROJECT, ZONE, Some("labels.pm-pool = \"web\""))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);

    let op = compute
        .delete(PROJECT, ZONE, "web-1")
        .await
        .expect("delete")
        .expect("operation");
    wait_until_done(compute, PROJECT, op, BOUND)
        .await
        .expect("delete succeeds");
    eventually("web-1 gone", BOUND, || async {
        compute
            .get(PROJECT, ZONE, "web-1")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(compute
        .delete(PROJECT, ZONE, "web-1")
        .await
        .expect("deleting a missing instance is Ok")
        .is_none());
    s.sim.stop().await.expect("stops");
}

#[tokio::test]
async fn request_id_makes_insert_idempotent() {
    let s = setup().await;
    let rid = request_id_for("web-idem");
    let first = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-idem"), &rid)
        .await
        .expect("insert");
    let retried = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-idem"), &rid)
        .await
        .expect("retried insert returns the same operation");
    assert_eq!(first.name, retried.name);
    let state = s.control.state().await.expect("state");
    assert_eq!(state.counters.inserted, 1, "one VM, not two");
    assert_eq!(requests_of(&s.control, "compute.instances.insert").await, 2);
}

#[tokio::test]
async fn stockout_in_the_operation() {
    let s = setup().await;
    s.control.set_capacity(ZONE, 1).await.expect("capacity");
    create(s.compute.as_ref(), "web-1").await;
    let op = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-2"), &request_id_for("web-2"))
        .await
        .expect("accepted; the failure comes in the operation");
    let error = wait_until_done(s.compute.as_ref(), PROJECT, op, BOUND)
        .await
        .expect_err("stockout");
    assert_eq!(error.class(), ErrorClass::Stockout, "{error}");
    let text = error.to_string();
    assert!(text.contains("ZONE_RESOURCE_POOL_EXHAUSTED"), "{text}");
    assert!(text.contains("HTTP 503 SERVICE UNAVAILABLE"), "{text}");
    assert!(
        text.contains(&format!("'projects/{PROJECT}/zones/{ZONE}'")),
        "{text}"
    );
    assert!(s
        .compute
        .get(PROJECT, ZONE, "web-2")
        .await
        .expect("get")
        .is_none());
}

#[tokio::test]
async fn http_503_on_insert_is_a_stockout_only_when_it_says_so() {
    let s = setup().await;
    inject(&s.control, 503, Some("insufficientCapacity")).await;
    let error = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-1"), &request_id_for("web-1"))
        .await
        .expect_err("503");
    assert_eq!(error.class(), ErrorClass::Stockout, "{error}");
    assert_eq!(requests_of(&s.control, "compute.instances.insert").await, 1);
    s.control.reset().await.expect("reset");

    inject(&s.control, 503, None).await;
    let error = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-1"), &request_id_for("web-1"))
        .await
        .expect_err("503");
    assert_eq!(
        error.class(),
        ErrorClass::Retryable,
        "a plain 503 is transient: {error}"
    );
    assert_eq!(
        requests_of(&s.control, "compute.instances.insert").await,
        u64::from(ATTEMPTS)
    );

    let error = s
        .compute
        .get(PROJECT, ZONE, "web-1")
        .await
        .expect_err("503");
    assert_eq!(error.class(), ErrorClass::Retryable, "{error}");
    assert_eq!(
        requests_of(&s.control, "compute.instances.get").await,
        u64::from(ATTEMPTS),
        "a retryable error is retried up to the back-off's attempts"
    );
}

#[tokio::test]
async fn quota_is_not_retried() {
    let s = setup().await;
    inject(&s.control, 403, Some("quotaExceeded")).await;
    let error = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-1"), &request_id_for("web-1"))
        .await
        .expect_err("quota");
    assert_eq!(error.class(), ErrorClass::Quota, "{error}");
    assert!(error.to_string().contains("quotaExceeded"), "{error}");
    assert_eq!(requests_of(&s.control, "compute.instances.insert").await, 1);
}

#[tokio::test]
async fn rate_limits_are_retried_then_reported() {
    let s = setup().await;
    for (status, reason) in [(429, None), (403, Some("rateLimitExceeded"))] {
        s.control.reset().await.expect("reset");
        inject(&s.control, status, reason).await;
        let error = s
            .compute
            .list(PROJECT, ZONE, None)
            .await
            .expect_err("limited");
        assert_eq!(error.class(), ErrorClass::RateLimit, "{error}");
        assert_eq!(
            requests_of(&s.control, "compute.instances.list").await,
            u64::from(ATTEMPTS)
        );
    }
}

#[tokio::test]
async fn a_retry_after_reaches_the_caller_unretried() {
    let s = setup().await;
    for (status, reason) in [(429, None), (403, Some("quotaExceeded"))] {
        s.control.reset().await.expect("reset");
        s.control
            .set_faults(&Faults {
                error_rate: 1.0,
                status,
                reason: reason.map(str::to_string),
                retry_after_seconds: Some(7),
                ..Faults::default()
            })
            .await
            .expect("faults");
        let error = s
            .compute
            .insert(PROJECT, ZONE, &instance("web-1"), &request_id_for("web-1"))
            .await
            .expect_err("limited");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)), "{error}");
        assert_eq!(
            requests_of(&s.control, "compute.instances.insert").await,
            1,
            "the server said when to come back: HTTP {status} is not retried sooner"
        );
    }
    inject(&s.control, 429, None).await;
    let error = s.compute.list(PROJECT, ZONE, None).await.expect_err("429");
    assert_eq!(error.retry_after(), None, "no header, no delay: {error}");
}

#[tokio::test]
async fn transient_errors_are_retried_until_success() {
    let s = setup().await;
    s.control
        .set_faults(&Faults {
            error_rate: 0.3,
            status: 500,
            ..Faults::default()
        })
        .await
        .expect("faults");
    let compute = Arc::new(
        client(
            s.sim.compute_url(),
            Duration::from_secs(5),
            pm_gce::compute::MAX_PAGE_SIZE,
        )
        .await,
    );
    let mut succeeded = 0;
    for _ in 0..20 {
        // 30 % failures, 3 attempts: a call fails with probability 2.7 %; the sim's
        // random source is seeded, so the sequence is the same on every run.
        if compute.list(PROJECT, ZONE, None).await.is_ok() {
            succeeded += 1;
        }
    }
    assert!(succeeded >= 18, "only {succeeded} of 20 lists succeeded");
    let stats = s.control.stats().await.expect("stats");
    let outcomes = stats
        .requests
        .get("compute.instances.list")
        .cloned()
        .unwrap_or_default();
    assert!(
        outcomes.get("500").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn not_found_per_call() {
    let s = setup().await;
    let compute = s.compute.as_ref();
    assert!(compute
        .get(PROJECT, ZONE, "nope")
        .await
        .expect("Ok(None)")
        .is_none());
    assert!(compute
        .delete(PROJECT, ZONE, "nope")
        .await
        .expect("Ok(None)")
        .is_none());
    let error = compute
        .start(PROJECT, ZONE, "nope")
        .await
        .expect_err("start");
    assert_eq!(error.class(), ErrorClass::NotFound, "{error}");
    let error = compute
        .wait_operation(PROJECT, ZONE, "operation-nope")
        .await
        .expect_err("wait");
    assert_eq!(error.class(), ErrorClass::NotFound, "{error}");
    let error = compute
        .list(PROJECT, "no-such-zone", None)
        .await
        .expect_err("zone");
    assert_eq!(error.class(), ErrorClass::NotFound, "{error}");
}

#[tokio::test]
async fn duplicate_name_already_exists() {
    let s = setup().await;
    create(s.compute.as_ref(), "web-1").await;
    let error = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-1"), &request_id_for("other"))
        .await
        .expect_err("duplicate");
    assert_eq!(error.class(), ErrorClass::AlreadyExists, "{error}");
}

#[tokio::test]
async fn invalid_instances_are_permanent_and_not_retried() {
    let s = setup().await;
    let mut bad_name = instance("web-1");
    bad_name.name = "Bad_Name".into();
    let mut no_machine = instance("web-2");
    no_machine.machine_type = None;
    for (body, field) in [
        (bad_name, "resource.name"),
        (no_machine, "resource.machineType"),
    ] {
        let error = s
            .compute
            .insert(PROJECT, ZONE, &body, &request_id_for(&body.name))
            .await
            .expect_err("invalid");
        assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
        assert!(error.to_string().contains(field), "{error}");
    }
    assert_eq!(requests_of(&s.control, "compute.instances.insert").await, 2);
    let error = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-3"), "not-a-uuid")
        .await
        .expect_err("bad request id");
    assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
}

#[tokio::test]
async fn the_front_end_refuses_unframed_posts_and_bodies_that_are_not_json() {
    let s = setup().await;
    let http = reqwest::Client::new();
    let start = format!(
        "{}projects/{PROJECT}/zones/{ZONE}/instances/web-1/start",
        s.sim.compute_url()
    );
    // hyper sends no length header for a POST without a body.
    let reply = http.post(&start).send().await.expect("reply");
    assert_eq!(reply.status().as_u16(), 411);
    let page = reply.text().await.expect("page");
    assert!(
        page.contains("POST requests require a <code>Content-length</code> header"),
        "{page}"
    );
    let reply = http
        .post(format!("{}/sim/v1/reset", s.sim.url()))
        .send()
        .await
        .expect("reply");
    assert_eq!(reply.status().as_u16(), 411, "the control API too");
    let insert = format!(
        "{}projects/{PROJECT}/zones/{ZONE}/instances",
        s.sim.compute_url()
    );
    let reply = http
        .post(&insert)
        .header("content-type", "text/plain")
        .body(serde_json::to_string(&instance("web-1")).expect("json"))
        .send()
        .await
        .expect("reply");
    assert_eq!(reply.status().as_u16(), 400);
    assert!(reply.text().await.expect("body").contains("text/plain"));
    assert_eq!(requests_of(&s.control, "compute.instances.insert").await, 1);
    assert!(s
        .compute
        .list(PROJECT, ZONE, None)
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test]
async fn requests_are_checked_like_gce_checks_them() {
    let s = setup().await;
    type Edit = fn(&mut Instance);
    let cases: [(Edit, &str); 8] = [
        (
            |i| drop(i.extra.insert("colour".into(), "red".into())),
            "Unknown name \"colour\" at 'resource'",
        ),
        (
            |i| drop(i.extra.insert("canIpForward".into(), "yes".into())),
            "'resource.canIpForward' (TYPE_BOOL)",
        ),
        (
            |i| i.machine_type = Some("zones/us-central1-b/machineTypes/e2-small".into()),
            "same zone",
        ),
        (
            |i| i.machine_type = Some(format!("zones/{ZONE}/machineTypes/e2-giant-7")),
            "Machine type with name 'e2-giant-7' does not exist in zone 'us-central1-a'",
        ),
        (|i| i.disks = None, "'resource.disks'"),
        (
            |i| i.network_interfaces = None,
            "'resource.networkInterfaces'",
        ),
        (
            |i| {
                let scheduling = serde_json::json!({"onHostMaintenance": "TERMINATE"});
                i.scheduling = Some(serde_json::from_value(scheduling).expect("scheduling"));
            },
            "e2 instances do not support onHostMaintenance=TERMINATE unless they are preemptible",
        ),
        (
            |i| {
                let scheduling = serde_json::json!({"onHostMaintenance": "SOMETIMES"});
                i.extra.insert("scheduling".into(), scheduling);
                i.scheduling = None;
            },
            "'resource.scheduling.onHostMaintenance' (TYPE_ENUM)",
        ),
    ];
    for (n, (edit, expected)) in cases.into_iter().enumerate() {
        let mut body = instance(&format!("web-{n}"));
        edit(&mut body);
        let error = s
            .compute
            .insert(PROJECT, ZONE, &body, &request_id_for(&body.name))
            .await
            .expect_err(expected);
        assert_eq!(error.class(), ErrorClass::Permanent, "{error}");
        assert!(
            error.to_string().contains(expected),
            "{error} lacks {expected}"
        );
    }
    let mut fixed_disk = instance("web-disk-1");
    let disks = fixed_disk.disks.as_mut().expect("disks");
    disks[0].insert(
        "initializeParams".into(),
        serde_json::json!({"diskName": "shared"}),
    );
    create(s.compute.as_ref(), "web-disk-0").await;
    s.compute
        .insert(PROJECT, ZONE, &fixed_disk, &request_id_for("web-disk-1"))
        .await
        .expect("first user of the disk name");
    fixed_disk.name = "web-disk-2".into();
    let error = s
        .compute
        .insert(PROJECT, ZONE, &fixed_disk, &request_id_for("web-disk-2"))
        .await
        .expect_err("disk name taken");
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "The resource 'projects/{PROJECT}/zones/{ZONE}/disks/shared' already exists"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn latency_beyond_the_client_timeout_is_a_retryable_timeout() {
    let s = setup_with(quick_sim(), Duration::from_millis(200)).await;
    s.control
        .set_faults(&Faults {
            latency_ms: 5_000,
            ..Faults::default()
        })
        .await
        .expect("faults");
    let started = tokio::time::Instant::now();
    let error = s
        .compute
        .get(PROJECT, ZONE, "web-1")
        .await
        .expect_err("timeout");
    assert!(matches!(error, GceError::Timeout { .. }), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Retryable);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "each attempt is cut at the timeout, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stuck_operation_hits_the_wait_bound_then_the_deadline() {
    let sim = Sim::builder()
        .zones([ZONE])
        .op_delay(Duration::from_secs(3600))
        .wait_bound(Duration::from_millis(100))
        .build()
        .expect("config");
    let s = setup_with(sim, Duration::from_secs(5)).await;
    let op = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-1"), &request_id_for("web-1"))
        .await
        .expect("insert");
    assert_ne!(op.status, OperationStatus::Done);
    let started = tokio::time::Instant::now();
    let waited = s
        .compute
        .wait_operation(PROJECT, ZONE, &op.name)
        .await
        .expect("wait returns at its bound");
    assert_ne!(waited.status, OperationStatus::Done);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let error = wait_until_done(s.compute.as_ref(), PROJECT, op, Duration::from_millis(700))
        .await
        .expect_err("deadline");
    assert!(
        matches!(error, GceError::OperationTimeout { .. }),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Retryable);
}

#[tokio::test]
async fn hung_operations_and_what_the_control_api_reports() {
    let s = setup().await;
    create(s.compute.as_ref(), "web-1").await;
    create(s.compute.as_ref(), "web-2").await;

    // Operations started while they hang stay RUNNING past any wait, yet the instance
    // is created; once the fault ends, new operations finish again.
    s.control
        .set_faults(&Faults {
            hang_operations: true,
            ..Faults::default()
        })
        .await
        .expect("faults");
    let hung = s
        .compute
        .insert(PROJECT, ZONE, &instance("web-3"), &request_id_for("web-3"))
        .await
        .expect("insert");
    let error = wait_until_done(
        s.compute.as_ref(),
        PROJECT,
        hung,
        Duration::from_millis(2500),
    )
    .await
    .expect_err("never done");
    assert!(
        matches!(&error, GceError::OperationTimeout { last_status, .. } if last_status == "RUNNING"),
        "{error:?}"
    );
    s.control
        .set_faults(&Faults::default())
        .await
        .expect("faults");
    eventually("web-3 runs", BOUND, || async {
        let i = s.compute.get(PROJECT, ZONE, "web-3").await.ok()??;
        (i.status == Some(InstanceStatus::Running)).then_some(())
    })
    .await;

    // A delete refused by an injected error (tried ATTEMPTS times) still counts as
    // changes to web-1; the
    // preemption and the delete of web-2 bring the pool's live count down, not its peak.
    inject(&s.control, 503, None).await;
    assert!(s.compute.delete(PROJECT, ZONE, "web-1").await.is_err());
    s.control
        .set_faults(&Faults::default())
        .await
        .expect("faults");
    s.control.preempt_names(&["web-3"]).await.expect("preempt");
    s.compute
        .delete(PROJECT, ZONE, "web-2")
        .await
        .expect("delete");
    let report = s.control.instances().await.expect("instances");
    let web1 = report
        .instances
        .iter()
        .find(|i| i.name == "web-1")
        .expect("web-1 is still there");
    assert_eq!(web1.status, "RUNNING");
    assert_eq!(
        web1.changes.get("compute.instances.delete"),
        Some(&u64::from(ATTEMPTS)),
        "{web1:?}"
    );
    let web3 = report
        .instances
        .iter()
        .find(|i| i.name == "web-3")
        .expect("web-3");
    assert!(web3.changes.is_empty(), "a preemption is no call: {web3:?}");
    assert_eq!(report.pools.len(), 1, "{:?}", report.pools);
    let pool = &report.pools[0];
    assert_eq!(
        (
            pool.project.as_str(),
            pool.pool.as_str(),
            pool.live,
            pool.peak
        ),
        (PROJECT, "web", 1, 3)
    );
}

#[tokio::test]
async fn pagination_pages_and_list_all() {
    let s = setup().await;
    let names: Vec<String> = (1..=5).map(|i| format!("web-{i}")).collect();
    for name in &names {
        create(s.compute.as_ref(), name).await;
    }
    let mut page = PageRequest {
        max_results: Some(2),
        ..PageRequest::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let list = s
            .compute
            .list_page(PROJECT, ZONE, &page)
            .await
            .expect("page");
        pages += 1;
        assert!(list.items.len() <= 2);
        seen.extend(list.items.into_iter().map(|i| i.name));
        match list.next_page_token {
            Some(token) => page.page_token = Some(token),
            None => break,
        }
    }
    assert_eq!(seen, names);
    assert_eq!(pages, 3);
    let all = s.compute.list(PROJECT, ZONE, None).await.expect("all");
    assert_eq!(all.len(), 5, "list follows pages of 2");
    assert_eq!(requests_of(&s.control, "compute.instances.list").await, 6);
    let some = s
        .compute
        .list(PROJECT, ZONE, Some("name eq 'web-[12]'"))
        .await
        .expect("filtered");
    assert_eq!(some.len(), 2);
}

#[tokio::test]
async fn preemptions_are_listed_as_operations() {
    let s = setup().await;
    create(s.compute.as_ref(), "web-1").await;
    create(s.compute.as_ref(), "web-2").await;
    let reply = s.control.preempt_names(&["web-2"]).await.expect("preempt");
    assert_eq!(reply.preempted, vec!["web-2"]);
    let ops = s
        .compute
        .list_operations(PROJECT, ZONE, Some(PREEMPTED))
        .await
        .expect("operations");
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].target_name(), Some("web-2"));
    assert_eq!(
        ops[0].operation_type.as_deref(),
        Some("compute.instances.preempted")
    );
    let all_ops = s
        .compute
        .list_operations(PROJECT, ZONE, None)
        .await
        .expect("operations");
    assert_eq!(all_ops.len(), 3, "two inserts and one preemption");
    let compute = s.compute.as_ref();
    let stopped = eventually("web-2 TERMINATED", BOUND, || async {
        let got = compute.get(PROJECT, ZONE, "web-2").await.expect("get")?;
        (got.status == Some(InstanceStatus::Terminated)).then_some(got)
    })
    .await;
    assert!(stopped.last_stop_timestamp.is_some());
    let op = compute.start(PROJECT, ZONE, "web-2").await.expect("start");
    wait_until_done(compute, PROJECT, op, BOUND)
        .await
        .expect("started");
}

#[tokio::test]
async fn the_newest_operations_come_first_in_one_page() {
    let s = setup().await;
    for name in ["web-1", "web-2", "web-3"] {
        create(s.compute.as_ref(), name).await;
    }
    for name in ["web-1", "web-3"] {
        s.control.preempt_names(&[name]).await.expect("preempt");
    }
    let compute = s.compute.as_ref();
    let newest = compute
        .recent_operations(PROJECT, ZONE, Some(PREEMPTED), 50)
        .await
        .expect("operations");
    let targets: Vec<_> = newest.iter().filter_map(|op| op.target_name()).collect();
    assert_eq!(targets.len(), 2, "{targets:?}");
    let times: Vec<_> = newest.iter().map(|op| op.insert_time.clone()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let one = compute
        .recent_operations(PROJECT, ZONE, Some(PREEMPTED), 1)
        .await
        .expect("operations");
    assert_eq!(one.len(), 1, "one page of the size asked");
    let all = compute
        .recent_operations(PROJECT, ZONE, None, 50)
        .await
        .expect("operations");
    assert_eq!(all.len(), 5, "three inserts and two preemptions");
}

/// A server that is not GCE: answers each path with a canned raw HTTP response.
async fn garbage_server(responses: BTreeMap<&'static str, String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let responses = responses.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let response = responses
                    .iter()
                    .find(|(suffix, _)| path.split('?').next().unwrap_or("").ends_with(*suffix))
                    .map(|(_, response)| response.clone());
                if let Some(response) = response {
                    let _written = socket.write_all(response.as_bytes()).await;
                }
                let _closed = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/compute/v1/")
}

fn raw(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn garbage_responses_are_clear_errors() {
    let html = "<html><body>Oops</body></html>";
    let responses = BTreeMap::from([
        ("/instances/html", raw("200 OK", "text/html", html)),
        (
            "/instances/truncated",
            raw("200 OK", "application/json", r#"{"name": "x", "sta"#),
        ),
        (
            "/instances/melting",
            raw(
                "200 OK",
                "application/json",
                r#"{"name": "x", "status": "MELTING"}"#,
            ),
        ),
        (
            "/instances/bad-gateway",
            raw("502 Bad Gateway", "text/html", html),
        ),
        ("/instances/hangup", String::new()),
        (
            "/instances/nameless/start",
            raw("200 OK", "application/json", r#"{"status": "DONE"}"#),
        ),
        (
            "/instances",
            raw(
                "200 OK",
                "application/json",
                r#"{"items": [], "nextPageToken": "same"}"#,
            ),
        ),
    ]);
    let base = garbage_server(responses).await;
    let compute = client(base, Duration::from_secs(5), 500).await;

    let error = compute.get(PROJECT, ZONE, "html").await.expect_err("html");
    assert!(
        matches!(error, GceError::Decode { status: 200, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("<html>"), "{error}");
    assert_eq!(error.class(), ErrorClass::Permanent);

    let error = compute
        .get(PROJECT, ZONE, "truncated")
        .await
        .expect_err("truncated");
    assert!(error.to_string().contains("EOF"), "{error}");

    let melting = compute
        .get(PROJECT, ZONE, "melting")
        .await
        .expect("a status pm does not know still decodes")
        .expect("found");
    assert_eq!(melting.status, Some(InstanceStatus::Unrecognized));

    let error = compute
        .start(PROJECT, ZONE, "nameless")
        .await
        .expect_err("missing field");
    assert!(
        error.to_string().contains("missing field `name`"),
        "{error}"
    );

    let error = compute
        .get(PROJECT, ZONE, "bad-gateway")
        .await
        .expect_err("502");
    assert!(
        matches!(error, GceError::Http { status: 502, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("Oops"), "{error}");
    assert_eq!(error.class(), ErrorClass::Retryable);

    let error = compute
        .get(PROJECT, ZONE, "hangup")
        .await
        .expect_err("hang-up");
    assert!(matches!(error, GceError::Transport { .. }), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Retryable);

    let error = compute
        .list(PROJECT, ZONE, None)
        .await
        .expect_err("token loop");
    assert!(
        matches!(error, GceError::InvalidResponse { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("repeats"), "{error}");
}
