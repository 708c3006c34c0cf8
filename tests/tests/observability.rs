//! `--metrics` of the daemons in an end-to-end run: the counters and gauges follow what
//! the system does, and `/healthz` and `/readyz` answer while etcd is down.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pm_proto::{Event, Hooks};
use pm_telemetry::MetricDef;
use pm_tests::cluster::{http_get, metric_sum as sum};
use pm_tests::Cluster;

const BOUND: Duration = Duration::from_secs(45);

/// `/metrics` of a daemon (panics when it does not answer 200).
async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics")
        .await
        .unwrap_or_else(|| panic!("no answer from {addr}/metrics"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The sum of `name` with `labels` over every daemon at `addrs`.
async fn total(addrs: &[SocketAddr], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut out = 0.0;
    for addr in addrs {
        out += sum(&scrape(*addr).await, name, labels);
    }
    out
}

/// Waits until the sum of `name` with `labels` over `addrs` equals `want`.
async fn wait_total(
    c: &Cluster,
    addrs: &[SocketAddr],
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) {
    c.wait(&format!("{name}{labels:?} == {want}"), BOUND, || async {
        (total(addrs, name, labels).await == want).then_some(())
    })
    .await;
}

/// The daemon exports exactly the families its `METRICS` lists.
fn assert_exports(text: &str, metrics: &[MetricDef]) {
    let exposed: BTreeSet<(String, String)> =
        pm_telemetry::exposed_families(text).into_iter().collect();
    let listed: BTreeSet<(String, String)> = metrics
        .iter()
        .map(|m| (m.name.to_string(), m.kind.as_str().to_string()))
        .collect();
    assert_eq!(exposed, listed);
}

fn write_hook(dir: &Path, name: &str) {
    pm_tests::write_script(dir, name, "exit 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_creates_preemptions_and_stockouts() {
    let hooks = tempfile::tempdir().unwrap();
    write_hook(hooks.path(), "on-create");
    let c = Cluster::builder()
        .zones(3)
        .hooks_dir(hooks.path())
        .start()
        .await;
    let scheduler = [c.scheduler_metrics(0).await];
    let mut agents = Vec::new();
    for zone in c.zones() {
        agents.push(c.agent_metrics(zone, 0).await);
    }
    let mut config = c.pool_config("web-", 6);
    config.seconds_for_exhaustion = 60;
    config.hooks = Some(Hooks {
        create: "on-create".into(),
        ..Default::default()
    });
    c.set_pool("web", config).await;
    let web = [("pool", "web")];

    // Converged: six created, spread two per zone, each recorded as running.
    wait_total(&c, &scheduler, "pm_scheduler_leader", &[], 1.0).await;
    wait_total(&c, &agents, "pm_instances_created_total", &web, 6.0).await;
    wait_total(&c, &scheduler, "pm_pool_target_instances", &web, 6.0).await;
    wait_total(&c, &scheduler, "pm_zone_desired_instances", &web, 6.0).await;
    let running = [("pool", "web"), ("status", "running")];
    wait_total(&c, &scheduler, "pm_zone_instances", &running, 6.0).await;
    wait_total(
        &c,
        &agents,
        "pm_hook_runs_total",
        &[("event", "create"), ("result", "ok")],
        6.0,
    )
    .await;
    let text = scrape(scheduler[0]).await;
    assert_exports(&text, pm_scheduler::metrics::METRICS);
    for zone in c.zones() {
        let labels = [("pool", "web"), ("zone", zone.as_str())];
        assert_eq!(sum(&text, "pm_zone_desired_instances", &labels), 2.0);
        assert_eq!(sum(&text, "pm_zone_exhausted", &labels), 0.0);
        assert_eq!(sum(&text, "pm_zone_agents", &[("zone", zone)]), 1.0);
    }
    for (zone, addr) in c.zones().iter().zip(&agents) {
        let text = scrape(*addr).await;
        assert_exports(&text, pm_agent::metrics::METRICS);
        assert_eq!(sum(&text, "pm_agent_active", &[("zone", zone)]), 1.0);
        let inserts = [("method", "compute.instances.insert"), ("result", "ok")];
        assert!(
            sum(&text, "pm_gce_calls_total", &inserts) >= 2.0,
            "two inserts in {zone}:\n{text}"
        );
        let lists = [("method", "compute.instances.list")];
        assert!(sum(&text, "pm_gce_call_duration_seconds_count", &lists) > 0.0);
        assert!(sum(&text, "pm_reconcile_duration_seconds_count", &[]) > 0.0);
    }
    let inserted = c.sim().state().await.unwrap().counters.inserted;
    assert_eq!(inserted, 6, "the counters match what gce-sim saw");

    // Two preemptions in zone-a: counted there, deleted and replaced.
    c.sim().preempt_count("zone-a", 2).await.unwrap();
    let zone_a = [agents[0]];
    wait_total(&c, &zone_a, "pm_instances_preempted_total", &web, 2.0).await;
    wait_total(&c, &zone_a, "pm_instances_deleted_total", &web, 2.0).await;
    wait_total(&c, &agents, "pm_instances_created_total", &web, 8.0).await;
    wait_total(&c, &scheduler, "pm_zone_instances", &running, 6.0).await;
    let text = scrape(agents[0]).await;
    let lives = sum(&text, "pm_instance_lifetime_seconds_count", &web);
    assert_eq!(lives, 2.0, "the two preempted VMs' lifetimes:\n{text}");
    // The leader integrates what it held between two publishes (a second apart), so
    // how much of a dip it sees depends on timing (its unit tests check the sums): here,
    // that the series are there and capacity delivered rises as the pool runs whole.
    let pool = [("pool", "web")];
    let text = scrape(scheduler[0]).await;
    let families = pm_telemetry::exposed_families(&text);
    assert!(
        families
            .iter()
            .any(|(n, _)| n == "pm_pool_below_target_seconds"),
        "{text}"
    );
    c.wait("capacity delivered rises", BOUND, || async {
        let text = scrape(scheduler[0]).await;
        let delivered = sum(&text, "pm_pool_capacity_delivered_ratio", &pool);
        (delivered > 0.0 && delivered <= 1.0).then_some(())
    })
    .await;

    // zone-b has no room for a replacement: a stockout, and the zone shows exhausted.
    c.sim().set_capacity("zone-b", 0).await.unwrap();
    c.sim().preempt_count("zone-b", 1).await.unwrap();
    wait_total(&c, &[agents[1]], "pm_stockouts_total", &web, 1.0).await;
    let zone_b = [("pool", "web"), ("zone", "zone-b")];
    wait_total(&c, &scheduler, "pm_zone_exhausted", &zone_b, 1.0).await;
    let text = scrape(scheduler[0]).await;
    let left = sum(&text, "pm_zone_exhaustion_remaining_seconds", &zone_b);
    assert!(left > 0.0 && left <= 60.0, "remaining back-off {left}");
    wait_total(&c, &scheduler, "pm_zone_instances", &running, 6.0).await;
}

/// `/readyz` and `/healthz` of a daemon: status codes and the readiness body.
async fn health(addr: SocketAddr) -> Option<(u16, u16, String)> {
    let (healthz, _) = http_get(addr, "/healthz").await?;
    let (readyz, body) = http_get(addr, "/readyz").await?;
    Some((healthz, readyz, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_and_readiness_follows_etcd() {
    let mut c = Cluster::builder().zones(1).start().await;
    let daemons = [
        c.scheduler_metrics(0).await,
        c.agent_metrics("zone-a", 0).await,
    ];
    c.set_pool("db", c.pool_config("db-", 1)).await;
    for addr in daemons {
        c.wait(&format!("{addr} is ready"), BOUND, || async {
            (health(addr).await? == (200, 200, "ready\n".to_string())).then_some(())
        })
        .await;
    }

    c.etcd().kill(0).await;
    for addr in daemons {
        let body = c
            .wait(
                &format!("{addr} is not ready without etcd"),
                BOUND,
                || async {
                    // The first 503 may name another condition only (an agent that lost
                    // its registration says so before its etcd probe fails): wait for
                    // etcd's to be listed.
                    match health(addr).await? {
                        (200, 503, body) if body.contains("etcd: ") => Some(body),
                        _ => None,
                    }
                },
            )
            .await;
        // Other conditions may be listed too (an agent re-registering), but etcd's is.
        assert!(body.starts_with("not ready: "), "{body}");
        let text = scrape(addr).await;
        assert!(
            sum(&text, "pm_etcd_errors_total", &[("op", "probe")]) >= 1.0,
            "{text}"
        );
    }

    c.etcd().restart(0);
    c.etcd().wait_ready().await;
    for addr in daemons {
        c.wait(&format!("{addr} is ready again"), BOUND, || async {
            (health(addr).await? == (200, 200, "ready\n".to_string())).then_some(())
        })
        .await;
    }
}

async fn wait_event(c: &Cluster, pool: &str, kind: &str, zone: &str) {
    let prefix = c.store().keys().events_prefix(pool).unwrap();
    c.wait(
        &format!("a {kind} event of {pool} in {zone}"),
        BOUND,
        || async {
            let listing = c.store().list::<Event>(&prefix).await.unwrap();
            listing
                .items
                .into_iter()
                .any(|(_, e)| e.value.kind == kind && e.value.zone == zone)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_that_loses_its_agent_shows_in_metrics_and_events() {
    let mut c = Cluster::builder().zones(2).start().await;
    let scheduler = [c.scheduler_metrics(0).await];
    c.set_pool("app", c.pool_config("app-", 2)).await;
    let zone_b = [("zone", "zone-b")];
    wait_total(&c, &scheduler, "pm_zone_agents", &zone_b, 1.0).await;

    // Past the grace the scheduler reports the zone, and shows it without agents.
    c.agent("zone-b", 0).kill9().await;
    wait_total(&c, &scheduler, "pm_zone_agents", &zone_b, 0.0).await;
    wait_event(&c, "app", "zone-without-agent", "zone-b").await;

    c.start_agent("zone-b");
    wait_event(&c, "app", "zone-agent-back", "zone-b").await;
    wait_total(&c, &scheduler, "pm_zone_agents", &zone_b, 1.0).await;
}
