//! pm's etcd traffic at sizes past one etcd reply: listings and watches larger than the
//! client's decode limit, an agent's listing of its own zone, bounded events, and the
//! whole system with more than 8 MiB under one pool's prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pm_etcd::etcd_client::{PutOptions, Txn, TxnOp};
use pm_etcd::range::largest_reply_bytes;
use pm_etcd::{EventLog, ResumableWatch, Store, WatchBatch, WatchEvent, WatchRange};
use pm_proto::{Event, InstanceState, ObservedInstance, PoolConfig, Severity, ZoneDesired};
use pm_tests::cluster::{http_get, metric_sum};
use pm_tests::{Cluster, EtcdCluster};
use prost::Message;

const BOUND: Duration = Duration::from_secs(60);

/// etcd's default limit of operations in one transaction.
const TXN_OPS: usize = 128;

/// The most a reply may hold (the issue's bound).
const REPLY_BOUND: usize = 2 * 1024 * 1024;

/// Writes `(key, value)` pairs in transactions of [`TXN_OPS`], bound to `lease` when set.
async fn put_all(store: &Store, pairs: Vec<(String, Vec<u8>)>, lease: i64) {
    let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
    for chunk in pairs.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), options.clone()))
            .collect();
        store
            .client()
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .expect("bulk put");
    }
}

/// An observed RUNNING instance padded to about 400 bytes.
fn padded_instance(agent: &str) -> ObservedInstance {
    ObservedInstance {
        state: InstanceState::Running as i32,
        gce_id: "1234567890123456789".into(),
        request_id: "r".repeat(120),
        created_unix_ms: 1,
        state_changed_unix_ms: 1,
        preempted: false,
        agent_id: agent.repeat(250 / agent.len().max(1)),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_listing_larger_than_the_decode_limit_comes_back_whole_in_bounded_pages() {
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store().await;
    let prefix = format!("{}pools/big/", store.keys().root());
    let pairs: Vec<(String, Vec<u8>)> = (0..6000)
        .map(|i| (format!("{prefix}k{i:05}"), vec![b'x'; 1024]))
        .collect();
    put_all(&store, pairs, 0).await;

    let (keys, revision) = store.list_raw(&prefix).await.expect("paginated listing");
    assert_eq!(keys.len(), 6000, "every key, over 6 MiB in all");
    assert!(keys.windows(2).all(|w| w[0].key < w[1].key), "in key order");
    assert!(keys.iter().all(|k| k.mod_revision <= revision));
    assert_eq!(store.list_keys(&prefix).await.unwrap().len(), 6000);
    let largest = largest_reply_bytes();
    assert!(
        largest <= REPLY_BOUND,
        "largest reply {largest} bytes, over {REPLY_BOUND}"
    );
}

#[tokio::test]
async fn a_revision_deleting_more_than_the_decode_limit_reaches_a_watch_whole() {
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store().await;
    let prefix = format!("{}pools/big/zones/zone-a/instances/", store.keys().root());
    let lease = store.grant_lease(Duration::from_secs(600)).await.unwrap();
    const KEYS: usize = 60_000;
    let pairs: Vec<(String, Vec<u8>)> = (0..KEYS)
        .map(|i| (format!("{prefix}big-instance-{i:08}"), b"v".to_vec()))
        .collect();
    put_all(&store, pairs, lease).await;
    let (_, revision) = store.list_raw(&prefix).await.unwrap();
    let mut watch = ResumableWatch::new(
        store.client().clone(),
        WatchRange::Prefix(prefix.clone()),
        revision + 1,
    );

    // One revision deletes every key: over 4 MiB of delete events.
    store
        .client()
        .lease_client()
        .revoke(lease)
        .await
        .expect("revoke");
    let batch = tokio::time::timeout(BOUND, watch.next())
        .await
        .expect("the watch delivers the deletion, not wedged")
        .unwrap();
    let WatchBatch::Events(events) = batch else {
        panic!("expected events, got {batch:?}");
    };
    assert_eq!(events.len(), KEYS, "the whole revision in one batch");
    assert!(events
        .iter()
        .all(|e| matches!(e, WatchEvent::Delete { .. }) && e.revision() == revision + 1));
    let largest = largest_reply_bytes();
    assert!(largest <= REPLY_BOUND, "largest reply {largest} bytes");
}

#[tokio::test]
async fn an_agent_lists_every_config_and_only_its_own_zone() {
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store().await;
    let keys = store.keys().clone();
    for pool in ["alpha", "beta", "gamma"] {
        let config = PoolConfig {
            target_vm_count: 1,
            ..Default::default()
        };
        store
            .put(&keys.pool_config(pool).unwrap(), &config, 0)
            .await
            .unwrap();
        for zone in ["zone-a", "zone-b"] {
            let desired = ZoneDesired {
                count: 1,
                ..Default::default()
            };
            store
                .put(&keys.zone_desired(pool, zone).unwrap(), &desired, 0)
                .await
                .unwrap();
            let name = format!("{pool}-{zone}");
            let key = keys.instance(pool, zone, &name).unwrap();
            store.put(&key, &padded_instance("a"), 0).await.unwrap();
        }
    }
    // A pool with keys of other zones only: its config still comes back.
    store
        .put(
            &keys.zone_desired("delta", "zone-b").unwrap(),
            &ZoneDesired::default(),
            0,
        )
        .await
        .unwrap();

    let listed = store.list_zone("zone-a", &BTreeSet::new()).await.unwrap();
    assert_eq!(listed.pools, ["alpha", "beta", "delta", "gamma"]);
    let known: BTreeSet<String> = ["beta", "gamma"].map(String::from).into();
    let (found, _) = store.new_pools(&known).await.unwrap();
    assert_eq!(found, ["alpha", "delta"], "only the pools not known yet");
    let again = store.list_zone("zone-a", &known).await.unwrap();
    assert_eq!(again.keys, listed.keys, "the same keys, known pools or not");
    let (listing, revision) = (listed.keys, listed.revision);
    let got: Vec<&str> = listing.iter().map(|k| k.key.as_str()).collect();
    let root = keys.root();
    let mut want = Vec::new();
    for pool in ["alpha", "beta", "gamma"] {
        want.push(format!("{root}pools/{pool}/config"));
        want.push(format!("{root}pools/{pool}/zones/zone-a/desired"));
        want.push(format!(
            "{root}pools/{pool}/zones/zone-a/instances/{pool}-zone-a"
        ));
    }
    want.sort();
    assert_eq!(got, want);
    assert!(listing.iter().all(|k| k.mod_revision <= revision));
}

#[tokio::test]
async fn repeated_events_update_one_key_and_a_flood_is_capped() {
    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store().await;
    let log = EventLog::new(store.clone(), "agent-1", EventLog::DEFAULT_RETENTION);
    for _ in 0..5 {
        log.record(
            "web",
            "create-failed",
            Severity::Warning,
            "zone-a",
            "",
            "quota",
        )
        .await
        .unwrap();
    }
    let prefix = store.keys().events_prefix("web").unwrap();
    assert!(prefix.starts_with(&store.keys().all_events_prefix()));
    assert!(!prefix.starts_with(&store.keys().pools_prefix()));
    let listing = store.list::<Event>(&prefix).await.unwrap();
    assert_eq!(listing.items.len(), 1, "one key for the repeats");
    let first = &listing.items[0].1.value;
    assert_eq!(first.count, 5);
    assert!(first.last_unix_ms >= first.unix_ms);

    for i in 0..200 {
        log.record(
            "web",
            "preempted",
            Severity::Info,
            "zone-a",
            &format!("web-{i}"),
            "gone",
        )
        .await
        .unwrap();
    }
    let listing = store.list::<Event>(&prefix).await.unwrap();
    // The cap counts writes: the 5 recordings above, then 55 new keys.
    let cap = usize::try_from(pm_etcd::events::RATE_CAP).unwrap();
    assert_eq!(
        listing.items.len(),
        1 + cap - 5,
        "writes past the pool's rate cap are held back"
    );
    log.record("db", "created", Severity::Info, "zone-a", "db-1", "created")
        .await
        .unwrap();
    let other = store.keys().events_prefix("db").unwrap();
    assert_eq!(store.list::<Event>(&other).await.unwrap().items.len(), 1);
}

/// Writes `count` observed instances of `pool` in `zone`, about 400 bytes each, plus a few
/// values that do not decode.
async fn bulk_observed(store: &Store, pool: &str, zone: &str, count: usize) {
    let keys = store.keys();
    let value = padded_instance("stale-agent-").encode_to_vec();
    let mut pairs: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let key = keys.instance(pool, zone, &format!("big-{i:08x}")).unwrap();
            (key, value.clone())
        })
        .collect();
    for i in 0..3 {
        let key = keys
            .instance(pool, zone, &format!("big-garbage{i}"))
            .unwrap();
        pairs.push((key, vec![0xff; 40]));
    }
    put_all(store, pairs, 0).await;
}

#[tokio::test]
async fn over_8_mib_under_one_pool_a_new_leader_an_agent_takeover_status_and_a_scale_up_work() {
    let mut c = Cluster::builder()
        .zones(2)
        .agents(0)
        .schedulers(0)
        .start()
        .await;
    let zones = c.zones().to_vec();
    c.set_pool("big", c.pool_config("big-", 3)).await;
    bulk_observed(c.store(), "big", &zones[1], 22_000).await;
    let prefix = c.store().keys().pool_prefix("big").unwrap();
    let (stored, _) = c.store().list_raw(&prefix).await.unwrap();
    let bytes: usize = stored.iter().map(|k| k.key.len() + k.value.len()).sum();
    assert!(bytes > 8 * 1024 * 1024, "{bytes} bytes under {prefix}");

    // A new scheduler leads over it: it writes the pool's desired counts.
    c.start_scheduler();
    let store = c.store().clone();
    let desired_keys: Vec<String> = zones
        .iter()
        .map(|z| store.keys().zone_desired("big", z).unwrap())
        .collect();
    c.wait("the scheduler writes desired counts", BOUND, || async {
        for key in &desired_keys {
            store.get::<ZoneDesired>(key).await.ok()??;
        }
        Some(())
    })
    .await;

    // pmctl status answers over it.
    let status = pmctl(&c, &["status", "big", "-o", "json"]);
    let view: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(view["pools"][0]["pool"], "big", "{status}");

    // Agents take over: the stale keys go, the pool converges.
    for zone in &zones {
        c.start_agent(zone);
    }
    wait_observed(&c, "big", 3).await;
    assert!(
        c.logs().contains("big-garbage0"),
        "an undecodable value is warned about by name"
    );

    // A scale-up converges too.
    let mut config = c.pool_config("big-", 6);
    config.allowed_zones = zones.clone();
    c.set_pool("big", config).await;
    wait_observed(&c, "big", 6).await;

    // The scheduler read all of it in pages: its largest reply stayed within the bound
    // (the decode limit would have taken one reply of all 8 MiB).
    let addr = c.scheduler_metrics(0).await;
    let largest = c
        .wait("the scheduler's largest reply", BOUND, || async {
            let (_, text) = http_get(addr, "/metrics").await?;
            let largest = metric_sum(&text, "pm_etcd_largest_reply_bytes", &[]);
            (largest > 0.0).then_some(largest)
        })
        .await;
    assert!(
        largest <= REPLY_BOUND as f64,
        "the scheduler received a reply of {largest} bytes"
    );
}

/// Waits until `pool` has `want` RUNNING instances in GCE and etcd observes exactly them
/// (besides the undecodable keys, which no one can read).
async fn wait_observed(c: &Cluster, pool: &str, want: usize) {
    c.wait(
        &format!("{want} RUNNING of {pool}, observed"),
        BOUND * 3,
        || async {
            let running: usize = c.count_status(pool, "RUNNING").await.values().sum();
            let all: usize = c.gce_instances(pool).await.values().map(Vec::len).sum();
            let observed: BTreeMap<String, Vec<String>> = c.try_observed(pool).await.ok()?;
            let readable = observed
                .values()
                .flatten()
                .filter(|n| !n.starts_with("big-garbage"))
                .count();
            (running == want && all == want && readable == want).then_some(())
        },
    )
    .await;
}

/// Runs pmctl against the cluster and returns its stdout; fails the test on an error.
fn pmctl(c: &Cluster, args: &[&str]) -> String {
    let out = std::process::Command::new(pm_tests::bin_path("pmctl"))
        .args(["--etcd", &c.etcd_endpoints(), "--prefix", c.prefix()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pmctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_pool_whose_gce_calls_hang_does_not_hold_back_another_pool() {
    let c = Cluster::builder().zones(1).start().await;
    // Every call for the slow pool's project takes 25 s (under the client's 30 s timeout):
    // an agent that passed over its pools one after another would make the fast pool
    // wait behind each of them.
    c.sim()
        .set_faults(&gce_sim::Faults {
            latency_ms: 25_000,
            projects: Some(vec!["pm-slow".into()]),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut slow = c.pool_config("slow-", 2);
    slow.project = "pm-slow".into();
    c.set_pool("a-slow", slow).await;
    c.set_pool("b-fast", c.pool_config("fast-", 3)).await;
    c.wait(
        "the fast pool RUNNING while the slow pool's calls hang",
        Duration::from_secs(20),
        || async {
            let running: usize = c.count_status("b-fast", "RUNNING").await.values().sum();
            (running == 3).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_agents_watches_carry_only_its_zone_of_each_pool() {
    use pm_agent::zone_watch::ZoneWatches;

    let etcd = EtcdCluster::start(1).await;
    let store = etcd.store().await;
    let keys = store.keys().clone();
    let revision = store
        .put(&keys.pool_config("web").unwrap(), &PoolConfig::default(), 0)
        .await
        .unwrap();
    let mut watches = ZoneWatches::new(store.clone(), "zone-a", pm_telemetry::Readiness::new());
    watches.follow("web", revision + 1).unwrap();
    let other = keys.instance("web", "zone-b", "web-b1").unwrap();
    store.put(&other, &padded_instance("b"), 0).await.unwrap();
    let mine = keys.zone_desired("web", "zone-a").unwrap();
    store.put(&mine, &ZoneDesired::default(), 0).await.unwrap();
    let heard = tokio::time::timeout(BOUND, watches.next())
        .await
        .expect("a change of zone-a")
        .unwrap();
    let WatchBatch::Events(events) = heard.batch else {
        panic!("expected events");
    };
    let seen: Vec<&str> = events.iter().map(WatchEvent::key).collect();
    assert_eq!(seen, [mine.as_str()], "zone-b's write is not heard");
    assert_eq!(heard.start, keys.zone_prefix("web", "zone-a").unwrap());
}
