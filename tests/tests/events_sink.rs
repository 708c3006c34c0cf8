//! `pm-scheduler --events-sink`: every pm event reaches a real HTTP receiver as a
//! CloudEvent 1.0, in order, with its attributes; through a receiver outage, a scheduler
//! failover, a refused type, and in structured mode.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cloudevents::{AttributesReader, Data};
use pm_proto::{Event, SinkCursor};
use pm_scheduler::cloud_event::event_type;
use pm_scheduler::sink::MAX_BATCH;
use pm_tests::cluster::{http_get, metric_sum, TEMPLATE};
use pm_tests::{Cluster, Receiver};

const BOUND: Duration = Duration::from_secs(60);

/// The sink's count of events it dropped.
const DROPPED: &str = "pm_events_sink_dropped_total";

/// How long the receiver stays down.
const OUTAGE: Duration = Duration::from_secs(10);

async fn pmctl(c: &Cluster, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(pm_tests::bin_path("pmctl"));
    command
        .args(["--etcd", &c.etcd_endpoints(), "--prefix", c.prefix()])
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "pmctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The pool's events in etcd, by id (`<pool>/<seq>`), with their create revisions.
async fn stored(c: &Cluster, pool: &str) -> BTreeMap<String, (i64, Event)> {
    let prefix = c.store().keys().events_prefix(pool).unwrap();
    let listing = c.store().list::<Event>(&prefix).await.unwrap();
    listing
        .items
        .into_iter()
        .map(|(key, v)| {
            let seq = key.strip_prefix(&prefix).unwrap().to_string();
            (format!("{pool}/{seq}"), (v.create_revision, v.value))
        })
        .collect()
}

/// Waits until the receiver holds every event of `pool` that etcd holds (but those of
/// kind `refused`), and events of each type in `types`; returns etcd's events.
async fn wait_delivered(
    c: &Cluster,
    receiver: &Receiver,
    pool: &str,
    types: &[&str],
    refused: &str,
) -> BTreeMap<String, (i64, Event)> {
    c.wait(
        &format!("every event of {pool} and the types {types:?} delivered"),
        BOUND,
        || async {
            let got: BTreeSet<String> = receiver
                .received()
                .iter()
                .map(|r| r.event.ty().to_string())
                .collect();
            let ids: BTreeSet<String> = receiver
                .received()
                .iter()
                .map(|r| r.event.id().to_string())
                .collect();
            let stored = stored(c, pool).await;
            let all = stored
                .iter()
                .all(|(id, (_, e))| e.kind == refused || ids.contains(id));
            (all && types.iter().all(|t| got.contains(*t))).then_some(stored)
        },
    )
    .await
}

/// Scheduler `index`'s values of the metrics `names`, once its metrics answer.
async fn scheduler_metric<const N: usize>(
    c: &Cluster,
    index: usize,
    names: [&str; N],
) -> Option<[f64; N]> {
    let metrics = c.scheduler_metrics(index).await;
    let (_, text) = http_get(metrics, "/metrics").await?;
    Some(names.map(|name| metric_sum(&text, name, &[])))
}

/// Waits until the pool has `n` VMs in GCE, all RUNNING.
async fn wait_all_running(c: &Cluster, what: &str, n: usize) {
    c.wait(what, BOUND, || async {
        let running: usize = c.count_status("web", "RUNNING").await.values().sum();
        let all: usize = c.gce_instances("web").await.values().map(Vec::len).sum();
        (running == n && all == n).then_some(())
    })
    .await;
}

/// Checks every received event of `pool` against etcd's record of it.
fn assert_attributes(receiver: &Receiver, pool: &str, stored: &BTreeMap<String, (i64, Event)>) {
    for received in receiver.received() {
        let ce = &received.event;
        assert_eq!(ce.specversion().as_str(), "1.0", "{ce}");
        assert_eq!(ce.source().as_str(), format!("/pm/{pool}"), "{ce}");
        let Some((_, event)) = stored.get(ce.id()) else {
            continue;
        };
        assert_eq!(
            ce.ty(),
            event_type(&event.kind, &event.zone, &event.instance)
        );
        assert_eq!(
            ce.time().map(|t| t.timestamp_millis()),
            Some(event.unix_ms),
            "{ce}"
        );
        let subject = [&event.instance, &event.zone]
            .into_iter()
            .find(|s| !s.is_empty());
        assert_eq!(ce.subject(), subject.map(String::as_str), "{ce}");
        assert_eq!(ce.datacontenttype(), Some("application/json"), "{ce}");
        let data: serde_json::Value = match ce.data() {
            Some(Data::Json(json)) => json.clone(),
            Some(Data::Binary(bytes)) => serde_json::from_slice(bytes).expect("JSON data"),
            Some(Data::String(text)) => serde_json::from_str(text).expect("JSON data"),
            None => panic!("no data: {ce}"),
        };
        assert_eq!(data["kind"], event.kind.as_str(), "{ce}");
        assert_eq!(data["message"], event.message.as_str(), "{ce}");
        assert_eq!(data["pool"], pool, "{ce}");
    }
}

/// The received events of `stored` in arrival order (first arrivals) have increasing
/// create revisions; returns how many arrived more than once.
fn assert_in_order(receiver: &Receiver, stored: &BTreeMap<String, (i64, Event)>) -> usize {
    let mut seen = BTreeSet::new();
    let mut last = 0;
    let mut repeats = 0;
    for received in receiver.received() {
        let id = received.event.id().to_string();
        let Some((revision, _)) = stored.get(&id) else {
            continue;
        };
        if !seen.insert(id.clone()) {
            repeats += 1;
            continue;
        }
        assert!(*revision > last, "{id} (revision {revision}) after {last}");
        last = *revision;
    }
    repeats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_with_its_attributes() {
    let receiver = Receiver::start().await;
    let c = Cluster::builder()
        .zones(3)
        .scheduler_flag("--events-sink", &receiver.url())
        .start()
        .await;
    let config = c.pool_config("web-", 3);
    c.set_pool("web", config.clone()).await;
    wait_delivered(&c, &receiver, "web", &["dev.pm.instance.created"], "").await;

    c.sim().preempt_count("zone-a", 1).await.unwrap();
    pmctl(&c, &["scale", "web", "2"]).await;
    pmctl(&c, &["zone", "exhaust", "web", "zone-b", "--for", "10m"]).await;
    pmctl(&c, &["zone", "clear", "web", "zone-b"]).await;
    let mut next = config.clone();
    next.target_vm_count = 2;
    next.instance_json = TEMPLATE.replace("e2-small", "e2-medium");
    c.set_pool("web", next).await;
    let stored = wait_delivered(
        &c,
        &receiver,
        "web",
        &[
            "dev.pm.instance.created",
            "dev.pm.instance.preempted",
            "dev.pm.instance.deleted",
            "dev.pm.pool.scaled",
            "dev.pm.zone.exhausted",
            "dev.pm.zone.recovered",
            "dev.pm.pool.rollout.started",
        ],
        "",
    )
    .await;
    assert!(
        receiver.undecodable().is_empty(),
        "{:?}",
        receiver.undecodable()
    );
    assert!(
        receiver.received().iter().all(|r| !r.structured),
        "binary by default"
    );
    assert_attributes(&receiver, "web", &stored);
    assert_eq!(
        assert_in_order(&receiver, &stored),
        0,
        "no repeats without failover"
    );
    let [delivered] = scheduler_metric(&c, 0, ["pm_events_sink_delivered_total"])
        .await
        .unwrap();
    assert!(
        delivered >= stored.len() as f64,
        "{delivered} < {}",
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_a_failover_lose_nothing_and_a_refused_type_is_dropped_with_a_warning() {
    let mut receiver = Receiver::start().await;
    let mut c = Cluster::builder()
        .zones(3)
        .schedulers(2)
        .scheduler_flag("--events-sink", &receiver.url())
        .scheduler_flag("--events-sink-mode", "structured")
        .start()
        .await;
    c.set_pool("web", c.pool_config("web-", 3)).await;
    // Every VM RUNNING first: a preemption sent while zone-a's insert is still in flight
    // finds nothing to preempt.
    wait_all_running(&c, "the pool RUNNING", 3).await;
    wait_delivered(&c, &receiver, "web", &["dev.pm.instance.created"], "").await;

    // Down for OUTAGE: preemptions and their replacements happen meanwhile, the leader
    // sees its deliveries fail, and it is killed mid-delivery.
    receiver.stop().await;
    let down = Instant::now();
    let preempted = c.sim().preempt_count("zone-a", 2).await.unwrap();
    assert_eq!(preempted.preempted.len(), 1, "zone-a's one VM is preempted");
    let leader = c
        .wait("the leader retries its deliveries", BOUND, || async {
            for index in 0..c.scheduler_count() {
                let names = [
                    "pm_events_sink_failures_total",
                    "pm_events_sink_lag_seconds",
                ];
                if let Some([failures, lag]) = scheduler_metric(&c, index, names).await {
                    if failures > 0.0 && lag > 0.0 {
                        return Some(index);
                    }
                }
            }
            None
        })
        .await;
    let cursor_key = c.store().keys().sink_cursor();
    let cursor = c
        .store()
        .get::<SinkCursor>(&cursor_key)
        .await
        .unwrap()
        .expect("the leader wrote its cursor")
        .value;
    let before_kill = receiver.received();
    c.scheduler(leader).kill9().await;
    c.start_scheduler();
    wait_all_running(&c, "the replacements run", 3).await;
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    receiver.resume().await;
    let stored = wait_delivered(&c, &receiver, "web", &["dev.pm.instance.preempted"], "").await;
    assert!(
        receiver.undecodable().is_empty(),
        "{:?}",
        receiver.undecodable()
    );
    assert!(
        receiver.received().iter().all(|r| r.structured),
        "structured mode"
    );
    assert_attributes(&receiver, "web", &stored);
    // Only events delivered past the cursor the killed leader wrote may come twice.
    let in_flight = before_kill
        .iter()
        .filter(|r| {
            stored
                .get(r.event.id())
                .is_some_and(|(rev, _)| *rev > cursor.revision)
        })
        .count();
    let repeats = assert_in_order(&receiver, &stored);
    eprintln!(
        "cursor at the kill {}, in flight {in_flight}, repeated {repeats}",
        cursor.revision
    );
    assert!(cursor.revision > 0);
    assert!(
        repeats <= in_flight.min(MAX_BATCH),
        "at most the batch in flight: {repeats}"
    );

    // A type the receiver refuses is dropped with a warning event, which arrives.
    receiver.refuse("dev.pm.pool.scaled", 400);
    pmctl(&c, &["scale", "web", "2"]).await;
    let stored = wait_delivered(
        &c,
        &receiver,
        "web",
        &["dev.pm.pool.events-sink-rejected"],
        "scaled",
    )
    .await;
    let warning = stored
        .values()
        .map(|(_, e)| e)
        .find(|e| e.kind == "events-sink-rejected")
        .expect("a rejection warning");
    assert!(
        warning.message.contains("scaled") && warning.message.contains("400"),
        "{}",
        warning.message
    );
    let scaled = stored
        .iter()
        .find(|(_, (_, e))| e.kind == "scaled")
        .map(|(id, _)| id.as_str())
        .expect("a scaled event");
    assert!(
        receiver.received().iter().all(|r| r.event.id() != scaled),
        "the refused event is not taken"
    );
}

/// After etcd is restored from a snapshot, revisions are handed out again: the events
/// recorded after the restore still reach the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_after_an_etcd_snapshot_restore_are_delivered() {
    let receiver = Receiver::start().await;
    let mut c = Cluster::builder()
        .zones(2)
        .scheduler_flag("--events-sink", &receiver.url())
        .start()
        .await;
    let mut config = c.pool_config("snap-", 2);
    c.set_pool("snap", config.clone()).await;
    wait_delivered(&c, &receiver, "snap", &["dev.pm.instance.created"], "").await;
    let snapshot = c.etcd().dir().join("backup.db");
    c.etcd().snapshot_save(&snapshot).await;

    config.target_vm_count = 5;
    c.set_pool("snap", config).await;
    c.wait("five created and delivered", BOUND, || async {
        let created = receiver
            .received()
            .iter()
            .filter(|r| r.event.ty() == "dev.pm.instance.created")
            .count();
        (created >= 5).then_some(())
    })
    .await;

    // The restore brings back target 2: three VMs go, and their events are new ones at
    // revisions the sink already went past before the restore.
    c.etcd().restore_snapshot(&snapshot).await;
    c.wait("back to two VMs", BOUND, || async {
        let all: usize = c.gce_instances("snap").await.values().map(Vec::len).sum();
        (all == 2).then_some(())
    })
    .await;
    let stored = wait_delivered(&c, &receiver, "snap", &["dev.pm.instance.deleted"], "").await;
    assert_attributes(&receiver, "snap", &stored);
}

/// A key under the events prefix that is no event is dropped once: the cursor passes it,
/// so the next leader does not count it again (it did while the key was the newest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_no_event_is_dropped_once_across_a_failover() {
    let receiver = Receiver::start().await;
    let mut c = Cluster::builder()
        .zones(1)
        .schedulers(2)
        .scheduler_flag("--events-sink", &receiver.url())
        .start()
        .await;
    c.set_pool("web", c.pool_config("web-", 1)).await;
    wait_delivered(&c, &receiver, "web", &["dev.pm.instance.created"], "").await;

    let junk = c.store().keys().event("junk", "0001").unwrap();
    let mut client = c.store().client().clone();
    client
        .put(junk, b"\xff\xffno event".to_vec(), None)
        .await
        .unwrap();
    let leader = c
        .wait("the leader drops the key", BOUND, || async {
            for index in 0..c.scheduler_count() {
                if scheduler_metric(&c, index, [DROPPED]).await == Some([1.0]) {
                    return Some(index);
                }
            }
            None
        })
        .await;
    c.scheduler(leader).kill9().await;
    pmctl(&c, &["scale", "web", "2"]).await;
    wait_delivered(&c, &receiver, "web", &["dev.pm.pool.scaled"], "").await;
    let next = 1 - leader;
    let [after] = c
        .wait("the next leader's metrics", BOUND, || {
            scheduler_metric(&c, next, [DROPPED])
        })
        .await;
    assert_eq!(after, 0.0, "the next leader counted the key again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_and_sheds_arrive_as_cloud_events_in_structured_mode() {
    let receiver = Receiver::start().await;
    let c = Cluster::builder()
        .zones(2)
        .scheduler_flag("--events-sink", &receiver.url())
        .scheduler_flag("--events-sink-mode", "structured")
        .start()
        .await;
    c.set_pool("web", c.pool_config("web-", 3)).await;
    wait_all_running(&c, "3 VMs running", 3).await;
    c.wait_recorded_running("web", 3).await;
    let names: Vec<String> = c
        .gce_instances("web")
        .await
        .into_values()
        .flatten()
        .map(|i| i.name)
        .collect();
    pmctl(&c, &["drain", "web", &names[0], "--hard"]).await;
    pmctl(&c, &["shed", "web", "1", "--reason", "night"]).await;
    let stored = wait_delivered(
        &c,
        &receiver,
        "web",
        &[
            "dev.pm.instance.draining",
            "dev.pm.instance.drained",
            "dev.pm.pool.shed",
        ],
        "",
    )
    .await;
    assert!(
        receiver.received().iter().all(|r| r.structured),
        "structured as asked"
    );
    assert_attributes(&receiver, "web", &stored);
    wait_all_running(&c, "the pool at its lowered target", 2).await;
}
