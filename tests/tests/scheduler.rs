//! pm-scheduler against a real etcd: placement, exhaustion leases, agent grace, pool
//! deletion, bad values, and failover of separate processes killed with SIGKILL.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use pm_etcd::{EtcdOptions, Keyspace, Session, Store};
use pm_proto::{
    Event, ExhaustionReport, InstanceState, ObservedInstance, PoolConfig, ZoneDesired,
    ZoneExhaustion,
};
use pm_scheduler::SchedulerConfig;
use pm_tests::{eventually, unique_prefix, Daemon, EtcdCluster};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(20);
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

struct Setup {
    etcd: EtcdCluster,
    store: Store,
    prefix: String,
    /// Agent presence per zone; dropping one makes the zone agentless.
    agents: BTreeMap<String, Session>,
    /// Stops in-process schedulers at the end.
    shutdown: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn setup() -> Setup {
    let etcd = EtcdCluster::start(1).await;
    let prefix = unique_prefix();
    let client = EtcdOptions::new(etcd.endpoints()).connect().await.unwrap();
    let store = Store::new(client, Keyspace::new(&prefix).unwrap());
    let mut agents = BTreeMap::new();
    for zone in ZONES {
        agents.insert(zone.to_string(), register_agent(&store, zone).await);
    }
    Setup {
        etcd,
        store,
        prefix,
        agents,
        shutdown: CancellationToken::new(),
    }
}

/// The member value of an active agent that completes its passes.
fn reconciling_agent() -> pm_proto::AgentInfo {
    pm_proto::AgentInfo {
        reconciling: Some(true),
        ..Default::default()
    }
}

async fn register_agent(store: &Store, zone: &str) -> Session {
    let session = Session::grant(store.client(), Duration::from_secs(30))
        .await
        .unwrap();
    let key = store
        .keys()
        .agent_member(zone, &format!("agent-{zone}"))
        .unwrap();
    store
        .put(&key, &reconciling_agent(), session.lease_id())
        .await
        .unwrap();
    session
}

fn scheduler_args(s: &Setup, id: &str) -> Vec<String> {
    vec![
        "--etcd".into(),
        s.etcd.endpoints().join(","),
        "--prefix".into(),
        s.prefix.clone(),
        "--id".into(),
        id.into(),
        "--lease-ttl".into(),
        "2s".into(),
        "--agent-grace".into(),
        "2s".into(),
        "--resync".into(),
        "5s".into(),
    ]
}

fn start_scheduler(s: &Setup, id: &str) {
    let args: Vec<OsString> = std::iter::once("pm-scheduler".to_string())
        .chain(scheduler_args(s, id))
        .map(OsString::from)
        .collect();
    let config: SchedulerConfig = pm_daemon::parse_args(args).expect("scheduler flags");
    let token = s.shutdown.child_token();
    tokio::spawn(async move { pm_scheduler::run(config, token).await });
}

fn pool_config(target: i64, zones: &[&str]) -> PoolConfig {
    PoolConfig {
        target_vm_count: target,
        allowed_zones: zones.iter().map(|z| z.to_string()).collect(),
        prefix: "web-".into(),
        instance_json: "{}".into(),
        seconds_for_exhaustion: 2,
        ..Default::default()
    }
}

async fn set_config(store: &Store, pool: &str, config: &PoolConfig) {
    store
        .put(&store.keys().pool_config(pool).unwrap(), config, 0)
        .await
        .unwrap();
}

async fn desired(store: &Store, pool: &str) -> BTreeMap<String, (i64, bool, i64)> {
    let mut out = BTreeMap::new();
    for zone in ZONES {
        let key = store.keys().zone_desired(pool, zone).unwrap();
        // A value that does not decode (garbage a test wrote) counts as absent.
        if let Ok(Some(d)) = store.get::<ZoneDesired>(&key).await {
            out.insert(
                zone.to_string(),
                (d.value.count, d.value.accept_new, d.mod_revision),
            );
        }
    }
    out
}

fn counts(d: &BTreeMap<String, (i64, bool, i64)>) -> BTreeMap<String, i64> {
    d.iter().map(|(z, (c, _, _))| (z.clone(), *c)).collect()
}

async fn wait_counts(
    store: &Store,
    pool: &str,
    want: &[(&str, i64)],
) -> BTreeMap<String, (i64, bool, i64)> {
    let want: BTreeMap<String, i64> = want.iter().map(|(z, c)| (z.to_string(), *c)).collect();
    eventually(
        &format!("desired of {pool} becomes {want:?}"),
        BOUND,
        || async {
            let d = desired(store, pool).await;
            (counts(&d) == want).then_some(d)
        },
    )
    .await
}

async fn observe(store: &Store, pool: &str, zone: &str, names: &[&str], state: InstanceState) {
    for name in names {
        let key = store.keys().instance(pool, zone, name).unwrap();
        let value = ObservedInstance {
            state: state as i32,
            ..Default::default()
        };
        store.put(&key, &value, 0).await.unwrap();
    }
}

async fn events(store: &Store, pool: &str) -> Vec<Event> {
    let listing = store
        .list::<Event>(&store.keys().events_prefix(pool).unwrap())
        .await
        .unwrap();
    listing.items.into_iter().map(|(_, v)| v.value).collect()
}

async fn wait_event(store: &Store, pool: &str, kind: &str) -> Event {
    eventually(&format!("event {kind} of {pool}"), BOUND, || async {
        events(store, pool)
            .await
            .into_iter()
            .find(|e| e.kind == kind)
    })
    .await
}

#[tokio::test]
async fn spreads_the_target_evenly_and_writes_only_what_changed() {
    let s = setup().await;
    set_config(&s.store, "web", &pool_config(5, &ZONES)).await;
    start_scheduler(&s, "s1");
    let first = wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 2), ("zone-c", 1)],
    )
    .await;
    assert!(first.values().all(|(_, accept, _)| *accept));

    // Growth by one goes to the smallest zone; the others are not rewritten.
    set_config(&s.store, "web", &pool_config(6, &ZONES)).await;
    let second = wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 2), ("zone-c", 2)],
    )
    .await;
    assert_eq!(second["zone-a"].2, first["zone-a"].2, "zone-a rewritten");
    assert_eq!(second["zone-b"].2, first["zone-b"].2, "zone-b rewritten");
    wait_event(&s.store, "web", "distribution-changed").await;
}

#[tokio::test]
async fn sticky_growth_and_shrinkage_follow_observed_instances() {
    let s = setup().await;
    observe(
        &s.store,
        "web",
        "zone-a",
        &["web-1", "web-2", "web-3"],
        InstanceState::Running,
    )
    .await;
    set_config(&s.store, "web", &pool_config(6, &ZONES)).await;
    start_scheduler(&s, "s1");
    // Live instances stay where they are; growth goes to the empty zones.
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 3), ("zone-b", 2), ("zone-c", 1)],
    )
    .await;
    observe(
        &s.store,
        "web",
        "zone-b",
        &["web-4", "web-5"],
        InstanceState::Running,
    )
    .await;
    observe(
        &s.store,
        "web",
        "zone-c",
        &["web-6"],
        InstanceState::Running,
    )
    .await;
    // Shrinking takes from the largest zone first.
    set_config(&s.store, "web", &pool_config(5, &ZONES)).await;
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 2), ("zone-c", 1)],
    )
    .await;
}

#[tokio::test]
async fn a_stockout_report_becomes_an_exhaustion_lease_and_moves_the_deficit() {
    let mut s = setup().await;
    observe(
        &s.store,
        "web",
        "zone-b",
        &["web-1", "web-2"],
        InstanceState::Running,
    )
    .await;
    observe(
        &s.store,
        "web",
        "zone-c",
        &["web-3"],
        InstanceState::Running,
    )
    .await;
    set_config(&s.store, "web", &pool_config(5, &ZONES)).await;
    start_scheduler(&s, "s1");
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 2), ("zone-c", 1)],
    )
    .await;

    let report_key = s.store.keys().report("web", "zone-a").unwrap();
    let report = ExhaustionReport {
        code: "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
        message: "The zone does not have enough resources".into(),
        ..Default::default()
    };
    s.store.put(&report_key, &report, 0).await.unwrap();
    let d = wait_counts(
        &s.store,
        "web",
        &[("zone-a", 0), ("zone-b", 3), ("zone-c", 2)],
    )
    .await;
    assert!(!d["zone-a"].1, "an exhausted zone accepts nothing new");
    let exhausted_key = s.store.keys().exhausted("web", "zone-a").unwrap();
    let x = s
        .store
        .get::<ZoneExhaustion>(&exhausted_key)
        .await
        .unwrap()
        .expect("exhausted key");
    assert_ne!(x.lease, 0, "bound to a lease");
    assert_eq!(x.value.backoff_multiplier, 1);
    assert!(x.value.reason.contains("ZONE_RESOURCE_POOL_EXHAUSTED"));
    assert!(
        s.store
            .get::<ExhaustionReport>(&report_key)
            .await
            .unwrap()
            .is_none(),
        "report consumed"
    );
    wait_event(&s.store, "web", "zone-exhausted").await;

    // The lease runs out: the zone is usable at once. What zones b and c were told to
    // reach stays theirs, though their agents have not recorded it yet: they may be
    // creating it right now, and handing it back to zone-a would create it twice.
    eventually("the exhausted key expires", BOUND, || async {
        s.store
            .get::<ZoneExhaustion>(&exhausted_key)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let d = eventually("zone-a accepts new instances again", BOUND, || async {
        let d = desired(&s.store, "web").await;
        d["zone-a"].1.then_some(d)
    })
    .await;
    let want: BTreeMap<String, i64> = [("zone-a", 0), ("zone-b", 3), ("zone-c", 2)]
        .map(|(z, n)| (z.to_string(), n))
        .into();
    assert_eq!(counts(&d), want);
    wait_event(&s.store, "web", "zone-usable").await;

    // Once zone-c's agent is gone past the grace, its unfulfilled share (one instance)
    // is free again, and goes to the emptiest usable zone: zone-a. Its recorded instance
    // still exists, so it keeps counting (target + zones holds when the agent is back).
    let session = s.agents.remove("zone-c").unwrap();
    session.close().await.unwrap();
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 1), ("zone-b", 3), ("zone-c", 1)],
    )
    .await;

    // A second stockout soon after doubles the back-off.
    s.store.put(&report_key, &report, 0).await.unwrap();
    let x = eventually("second exhaustion", BOUND, || async {
        s.store.get::<ZoneExhaustion>(&exhausted_key).await.unwrap()
    })
    .await;
    assert_eq!(x.value.backoff_multiplier, 2);
    let ttl = s
        .store
        .client()
        .lease_client()
        .time_to_live(x.lease, None)
        .await
        .unwrap();
    assert!(ttl.granted_ttl() == 4, "granted {}", ttl.granted_ttl());
}

#[tokio::test]
async fn a_zone_whose_active_agent_does_not_reconcile_counts_as_without_agent() {
    let s = setup().await;
    set_config(&s.store, "web", &pool_config(3, &ZONES)).await;
    start_scheduler(&s, "s1");
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)],
    )
    .await;
    // zone-c's member key stays, but says its passes stopped completing.
    let key = s
        .store
        .keys()
        .agent_member("zone-c", "agent-zone-c")
        .unwrap();
    let lease = s.agents["zone-c"].lease_id();
    let stalled = pm_proto::AgentInfo {
        reconciling: Some(false),
        ..Default::default()
    };
    s.store.put(&key, &stalled, lease).await.unwrap();
    let d = wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 1), ("zone-c", 0)],
    )
    .await;
    assert!(!d["zone-c"].1);
    s.store
        .put(&key, &reconciling_agent(), lease)
        .await
        .unwrap();
    eventually("zone-c accepts again", BOUND, || async {
        desired(&s.store, "web").await["zone-c"].1.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_zone_whose_agent_is_gone_past_the_grace_gets_nothing_new() {
    let mut s = setup().await;
    set_config(&s.store, "web", &pool_config(3, &ZONES)).await;
    start_scheduler(&s, "s1");
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)],
    )
    .await;
    let session = s.agents.remove("zone-c").unwrap();
    session.close().await.unwrap();
    let d = wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 1), ("zone-c", 0)],
    )
    .await;
    assert!(!d["zone-c"].1);
    // The agent comes back: the zone is usable again (sticky: nothing moves back).
    s.agents
        .insert("zone-c".into(), register_agent(&s.store, "zone-c").await);
    eventually("zone-c accepts again", BOUND, || async {
        desired(&s.store, "web").await["zone-c"].1.then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_no_usable_zone_desired_stays_at_what_is_observed() {
    let s = setup().await;
    observe(
        &s.store,
        "web",
        "zone-a",
        &["web-1"],
        InstanceState::Running,
    )
    .await;
    let mut config = pool_config(4, &ZONES);
    config.seconds_for_exhaustion = 600;
    set_config(&s.store, "web", &config).await;
    for zone in ZONES {
        let x = ZoneExhaustion {
            reason: "manual".into(),
            ..Default::default()
        };
        let lease = s.store.grant_lease(Duration::from_secs(600)).await.unwrap();
        s.store
            .put(&s.store.keys().exhausted("web", zone).unwrap(), &x, lease)
            .await
            .unwrap();
    }
    start_scheduler(&s, "s1");
    let d = wait_counts(
        &s.store,
        "web",
        &[("zone-a", 1), ("zone-b", 0), ("zone-c", 0)],
    )
    .await;
    assert!(d.values().all(|(_, accept, _)| !accept));
    let e = wait_event(&s.store, "web", "no-usable-zone").await;
    assert!(e.message.contains("3 instance"), "{}", e.message);
}

#[tokio::test]
async fn removed_zones_get_zero_and_deleted_pools_are_cleaned_up() {
    let s = setup().await;
    observe(
        &s.store,
        "web",
        "zone-c",
        &["web-1"],
        InstanceState::Running,
    )
    .await;
    set_config(&s.store, "web", &pool_config(3, &ZONES)).await;
    start_scheduler(&s, "s1");
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)],
    )
    .await;
    set_config(&s.store, "web", &pool_config(3, &["zone-a", "zone-b"])).await;
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 1), ("zone-c", 0)],
    )
    .await;

    // A drain slot and a workflow left behind go with the pool too.
    let keys = s.store.keys();
    let leftovers = [
        keys.drain_slot("web", 0).unwrap(),
        keys.workflow("web", "wf1").unwrap(),
    ];
    for key in &leftovers {
        s.store
            .client()
            .kv_client()
            .put(key.as_str(), vec![], None)
            .await
            .unwrap();
    }
    let mut tombstone = pool_config(3, &["zone-a", "zone-b"]);
    tombstone.deleted = true;
    set_config(&s.store, "web", &tombstone).await;
    // Zones without instances lose their desired key (absent means 0); zone-c keeps a 0
    // until its last instance is gone.
    wait_counts(&s.store, "web", &[("zone-c", 0)]).await;
    // The agent deletes the last instance; then every key of the pool goes.
    s.store
        .delete(&s.store.keys().instance("web", "zone-c", "web-1").unwrap())
        .await
        .unwrap();
    let pool_prefix = s.store.keys().pool_prefix("web").unwrap();
    eventually("the pool's keys are removed", BOUND, || async {
        let keys = s.store.list_keys(&pool_prefix).await.unwrap();
        keys.iter().all(|k| k.contains("/events/")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn garbage_values_are_skipped_and_other_pools_still_scheduled() {
    let s = setup().await;
    let raw = |key: String, bytes: Vec<u8>| {
        let mut kv = s.store.client().kv_client();
        async move { kv.put(key, bytes, None).await.unwrap() }
    };
    raw(
        s.store.keys().pool_config("bad").unwrap(),
        vec![0xff, 0x00, 0xff],
    )
    .await;
    raw(
        s.store.keys().instance("web", "zone-a", "web-x").unwrap(),
        vec![0x0a],
    )
    .await;
    raw(
        s.store.keys().zone_desired("web", "zone-b").unwrap(),
        b"<html>".to_vec(),
    )
    .await;
    raw(
        format!("{}pools/web/zones/UPPER/desired", s.store.keys().root()),
        vec![1],
    )
    .await;
    set_config(&s.store, "web", &pool_config(3, &ZONES)).await;
    start_scheduler(&s, "s1");
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)],
    )
    .await;
    let bad = s.store.keys().zone_desired("bad", "zone-a").unwrap();
    assert!(
        s.store.get::<ZoneDesired>(&bad).await.unwrap().is_none(),
        "nothing acts on a bad config"
    );
}

#[tokio::test]
async fn a_standby_takes_over_after_the_leader_is_killed() {
    let s = setup().await;
    set_config(&s.store, "web", &pool_config(3, &ZONES)).await;
    let dir = s.etcd.dir().to_path_buf();
    let mut s1 = Daemon::start(&dir, "s1", "pm-scheduler", &scheduler_args(&s, "s1"), &[]);
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 1), ("zone-b", 1), ("zone-c", 1)],
    )
    .await;
    let mut s2 = Daemon::start(&dir, "s2", "pm-scheduler", &scheduler_args(&s, "s2"), &[]);
    let election = pm_etcd::Election::new(
        s.store.client().clone(),
        &s.store.keys().scheduler_election(),
    );
    assert_eq!(election.leader().await.unwrap().unwrap().value, "s1");
    let prefix = format!("{}/", s.store.keys().scheduler_election());
    eventually("the standby campaigns", BOUND, || async {
        (s.store.list_keys(&prefix).await.unwrap().len() == 2).then_some(())
    })
    .await;

    s1.kill9().await;
    let killed = Instant::now();
    set_config(&s.store, "web", &pool_config(6, &ZONES)).await;
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 2), ("zone-c", 2)],
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(election.leader().await.unwrap().unwrap().value, "s2");
    println!("failover after kill -9 with a 2s lease: new leader wrote after {took:?}");
    assert!(s2.is_running(), "standby log:\n{}", s2.log());
    assert_eq!(s2.terminate(BOUND).await, Some(0), "clean exit on SIGTERM");
    assert!(
        election.leader().await.unwrap().is_none(),
        "a stopped leader resigns"
    );
}

#[tokio::test]
async fn inserts_in_flight_in_a_stocked_out_zone_do_not_hold_its_share() {
    let s = setup().await;
    set_config(&s.store, "web", &pool_config(6, &ZONES)).await;
    start_scheduler(&s, "s1");
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 2), ("zone-b", 2), ("zone-c", 2)],
    )
    .await;
    // zone-a's agent recorded two inserts (not confirmed by GCE yet), then a stockout.
    observe(
        &s.store,
        "web",
        "zone-a",
        &["web-1", "web-2"],
        InstanceState::Provisioning,
    )
    .await;
    observe(
        &s.store,
        "web",
        "zone-b",
        &["web-3", "web-4"],
        InstanceState::Running,
    )
    .await;
    observe(
        &s.store,
        "web",
        "zone-c",
        &["web-5", "web-6"],
        InstanceState::Running,
    )
    .await;
    let report = ExhaustionReport {
        code: "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
        ..Default::default()
    };
    s.store
        .put(&s.store.keys().report("web", "zone-a").unwrap(), &report, 0)
        .await
        .unwrap();
    // The deficit moves at once, without waiting for the doomed inserts to fail.
    wait_counts(
        &s.store,
        "web",
        &[("zone-a", 0), ("zone-b", 3), ("zone-c", 3)],
    )
    .await;
}
