//! The etcd layer against a real etcd: fencing, elections, resumable watches, clusters,
//! and bad values.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pm_etcd::etcd_client::Permission;
use pm_etcd::watch::STALL_BOUND;
use pm_etcd::{
    Election, Error, EtcdOptions, ResumableWatch, Secret, Session, Store, WatchBatch, WatchEvent,
    WatchRange,
};
use pm_proto::{PoolConfig, ZoneDesired};
use pm_tests::{eventually, EtcdCluster, TcpProxy};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(20);

async fn store(etcd: &EtcdCluster) -> Store {
    etcd.store().await
}

fn desired(count: i64) -> ZoneDesired {
    ZoneDesired {
        count,
        accept_new: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn deposed_leaders_fenced_write_is_rejected() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let name = store.keys().scheduler_election();
    let election = Election::new(store.client().clone(), &name);
    let key = store.keys().zone_desired("web", "us-central1-a").unwrap();

    let first = Session::grant(store.client(), Duration::from_secs(5))
        .await
        .unwrap();
    let none = CancellationToken::new();
    let leader = election.campaign(&first, "s1", &none).await.unwrap();
    store
        .put_fenced(leader.fence(), &key, &desired(3), 0)
        .await
        .unwrap();
    let stale_fence = leader.fence().clone();

    // The leader's lease is revoked behind its back; a new leader takes over.
    store
        .client()
        .lease_client()
        .revoke(first.lease_id())
        .await
        .unwrap();
    let second = Session::grant(store.client(), Duration::from_secs(5))
        .await
        .unwrap();
    let successor = election.campaign(&second, "s2", &none).await.unwrap();
    store
        .put_fenced(successor.fence(), &key, &desired(5), 0)
        .await
        .unwrap();

    let err = store
        .put_fenced(&stale_fence, &key, &desired(99), 0)
        .await
        .expect_err("a deposed leader must not write");
    assert!(err.is_fenced_out(), "expected fenced out, got {err}");
    let err = store
        .delete_fenced(&stale_fence, &key)
        .await
        .expect_err("fenced delete");
    assert!(err.is_fenced_out());
    let stored = store.get::<ZoneDesired>(&key).await.unwrap().unwrap();
    assert_eq!(
        stored.value.count, 5,
        "the deposed leader's write must not land"
    );
}

#[tokio::test]
async fn failover_when_the_holders_lease_is_revoked() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let election = Election::new(store.client().clone(), &store.keys().scheduler_election());
    let none = CancellationToken::new();

    let s1 = Session::grant(store.client(), Duration::from_secs(5))
        .await
        .unwrap();
    let s2 = Session::grant(store.client(), Duration::from_secs(5))
        .await
        .unwrap();
    let l1 = election.campaign(&s1, "one", &none).await.unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().value, "one");

    let (election2, none2) = (election.clone(), none.clone());
    let second = tokio::spawn(async move {
        let l2 = election2.campaign(&s2, "two", &none2).await;
        (l2, s2)
    });
    let mut observed = election.observe(none.clone()).await.unwrap();
    assert!(!second.is_finished(), "the second candidate must wait");

    store
        .client()
        .lease_client()
        .revoke(s1.lease_id())
        .await
        .unwrap();
    eventually("the first leader's token fires", BOUND, || async {
        l1.is_lost().then_some(())
    })
    .await;
    let (l2, _s2) = tokio::time::timeout(BOUND, second).await.unwrap().unwrap();
    let l2 = l2.expect("second candidate wins");
    assert!(!l2.is_lost());
    assert!(l2.fence().revision() > l1.fence().revision());
    tokio::time::timeout(
        BOUND,
        observed.wait_for(|l| l.as_ref().is_some_and(|l| l.value == "two")),
    )
    .await
    .expect("observer sees the new leader")
    .unwrap();
}

#[tokio::test]
async fn resign_hands_over_at_once_and_fires_the_token() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let election = Election::new(store.client().clone(), &store.keys().scheduler_election());
    let none = CancellationToken::new();
    let s1 = Session::grant(store.client(), Duration::from_secs(30))
        .await
        .unwrap();
    let s2 = Session::grant(store.client(), Duration::from_secs(30))
        .await
        .unwrap();
    let l1 = election.campaign(&s1, "one", &none).await.unwrap();
    let token = l1.lost();
    let (election2, none2) = (election.clone(), none.clone());
    let waiter = tokio::spawn(async move {
        election2
            .campaign(&s2, "two", &none2)
            .await
            .map(|l| (l, s2))
    });
    l1.resign().await.unwrap();
    assert!(token.is_cancelled());
    let (l2, _s2) = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!l2.is_lost());
    assert!(!s1.is_lost(), "resigning keeps the session");
}

#[tokio::test]
async fn leadership_is_lost_when_etcd_is_unreachable_past_the_ttl() {
    let mut etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let election = Election::new(store.client().clone(), &store.keys().scheduler_election());
    let session = Session::grant(store.client(), Duration::from_secs(2))
        .await
        .unwrap();
    let leadership = election
        .campaign(&session, "one", &CancellationToken::new())
        .await
        .unwrap();
    etcd.kill(0).await;
    eventually(
        "the token fires once etcd is gone for a TTL",
        BOUND,
        || async { leadership.is_lost().then_some(()) },
    )
    .await;
    assert!(session.is_lost());
}

#[tokio::test]
async fn campaign_cancelled_withdraws_the_candidate() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let election = Election::new(store.client().clone(), &store.keys().scheduler_election());
    let s1 = Session::grant(store.client(), Duration::from_secs(30))
        .await
        .unwrap();
    let s2 = Session::grant(store.client(), Duration::from_secs(30))
        .await
        .unwrap();
    let _l1 = election
        .campaign(&s1, "one", &CancellationToken::new())
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (e2, c2) = (election.clone(), cancel.clone());
    let waiter = tokio::spawn(async move { e2.campaign(&s2, "two", &c2).await.map(|_| ()) });
    let prefix = format!("{}/", store.keys().scheduler_election());
    eventually("the second candidate's key exists", BOUND, || async {
        (store.list_keys(&prefix).await.ok()?.len() == 2).then_some(())
    })
    .await;
    cancel.cancel();
    let result = tokio::time::timeout(BOUND, waiter).await.unwrap().unwrap();
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(store.list_keys(&prefix).await.unwrap().len(), 1);
}

/// Collects what a watch delivers into the key -> value state it implies.
fn apply(state: &mut std::collections::BTreeMap<String, Vec<u8>>, batch: WatchBatch) -> Vec<i64> {
    match batch {
        WatchBatch::Events(events) => events
            .into_iter()
            .map(|e| {
                let rev = e.revision();
                match e {
                    WatchEvent::Put(kv) => {
                        state.insert(kv.key, kv.value);
                    }
                    WatchEvent::Delete { key, .. } => {
                        state.remove(&key);
                    }
                }
                rev
            })
            .collect(),
        WatchBatch::Resync { keys, .. } => {
            state.clear();
            state.extend(keys.into_iter().map(|k| (k.key, k.value)));
            Vec::new()
        }
    }
}

#[tokio::test]
async fn watch_resumes_across_an_etcd_restart_without_loss_or_duplicates() {
    let mut etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let prefix = store.keys().pools_prefix();
    let start = store.list::<ZoneDesired>(&prefix).await.unwrap().revision;
    let mut watch = ResumableWatch::new(
        store.client().clone(),
        WatchRange::Prefix(prefix.clone()),
        start + 1,
    );
    let key = |i: usize| store.keys().zone_desired(&format!("p{i}"), "z1").unwrap();

    let mut revisions = Vec::new();
    let mut state = std::collections::BTreeMap::new();
    for i in 0..5 {
        store.put(&key(i), &desired(i as i64), 0).await.unwrap();
    }
    while revisions.len() < 5 {
        let batch = tokio::time::timeout(BOUND, watch.next())
            .await
            .unwrap()
            .unwrap();
        revisions.extend(apply(&mut state, batch));
    }

    etcd.restart_all().await;
    let store = Store::new(
        EtcdOptions::new(etcd.endpoints()).connect().await.unwrap(),
        store.keys().clone(),
    );
    for i in 5..10 {
        store.put(&key(i), &desired(i as i64), 0).await.unwrap();
    }
    store.delete(&key(0)).await.unwrap();
    while revisions.len() < 11 {
        let batch = tokio::time::timeout(BOUND, watch.next())
            .await
            .unwrap()
            .unwrap();
        revisions.extend(apply(&mut state, batch));
    }
    let mut sorted = revisions.clone();
    sorted.dedup();
    assert_eq!(sorted, revisions, "no event twice, in order");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]));
    let listed = store.list::<ZoneDesired>(&prefix).await.unwrap();
    let expected: Vec<String> = listed.items.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(state.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(expected.len(), 9);
}

#[tokio::test]
async fn watch_relists_after_compaction() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let prefix = store.keys().pools_prefix();
    let start = store.list::<ZoneDesired>(&prefix).await.unwrap().revision;
    let key = |i: usize| store.keys().zone_desired(&format!("p{i}"), "z1").unwrap();
    for i in 0..4 {
        store.put(&key(i), &desired(1), 0).await.unwrap();
    }
    store.delete(&key(1)).await.unwrap();
    let last = store.put(&key(3), &desired(7), 0).await.unwrap();
    store
        .client()
        .kv_client()
        .compact(last, None)
        .await
        .unwrap();

    let mut watch = ResumableWatch::new(
        store.client().clone(),
        WatchRange::Prefix(prefix),
        start + 1,
    );
    let batch = tokio::time::timeout(BOUND, watch.next())
        .await
        .unwrap()
        .unwrap();
    let WatchBatch::Resync { revision, keys } = batch else {
        panic!("expected a resync after compaction, got {batch:?}");
    };
    assert!(revision >= last);
    let names: Vec<_> = keys.iter().map(|k| k.key.clone()).collect();
    assert_eq!(names, vec![key(0), key(2), key(3)]);
    store.put(&key(9), &desired(1), 0).await.unwrap();
    let batch = tokio::time::timeout(BOUND, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&batch, WatchBatch::Events(e) if e.len() == 1 && e[0].key() == key(9)),
        "{batch:?}"
    );
}

#[tokio::test]
async fn three_node_cluster_serves_with_one_member_killed() {
    let mut etcd = EtcdCluster::start(3).await;
    let store = store(&etcd).await;
    let key = store.keys().pool_config("web").unwrap();
    let config = PoolConfig {
        target_vm_count: 3,
        ..Default::default()
    };
    store.put(&key, &config, 0).await.unwrap();
    etcd.kill(0).await;
    let written = eventually("writes succeed with one member down", BOUND, || async {
        let mut c = config.clone();
        c.target_vm_count = 4;
        store.put(&key, &c, 0).await.ok()
    })
    .await;
    assert!(written > 0);
    let got = store.get::<PoolConfig>(&key).await.unwrap().unwrap();
    assert_eq!(got.value.target_vm_count, 4);

    // An election still works too.
    let session = Session::grant(store.client(), Duration::from_secs(3))
        .await
        .unwrap();
    let election = Election::new(store.client().clone(), &store.keys().scheduler_election());
    let leader = election
        .campaign(&session, "s", &CancellationToken::new())
        .await
        .unwrap();
    store
        .put_fenced(
            leader.fence(),
            &store.keys().zone_desired("web", "z1").unwrap(),
            &desired(2),
            0,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_values_are_errors_naming_the_key() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let bad = store.keys().zone_desired("web", "z1").unwrap();
    let good = store.keys().zone_desired("web", "z2").unwrap();
    store
        .client()
        .kv_client()
        .put(bad.as_str(), vec![0xff, 0xff, 0xff, 0x01], None)
        .await
        .unwrap();
    store.put(&good, &desired(2), 0).await.unwrap();

    let err = store
        .get::<ZoneDesired>(&bad)
        .await
        .expect_err("garbage must not decode");
    assert!(matches!(err, Error::Decode { .. }));
    assert!(err.to_string().contains(&bad), "{err}");

    let listing = store
        .list::<ZoneDesired>(&store.keys().pool_prefix("web").unwrap())
        .await
        .unwrap();
    assert_eq!(listing.items.len(), 1, "the good key is still listed");
    assert_eq!(listing.items[0].0, good);
    assert_eq!(listing.invalid.len(), 1);
    assert!(listing.invalid[0].to_string().contains(&bad));
}

#[tokio::test]
async fn compare_and_swap_refuses_a_stale_writer() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let key = store.keys().pool_config("web").unwrap();
    let config = |n| PoolConfig {
        target_vm_count: n,
        ..Default::default()
    };
    let r1 = store.put_if_revision(&key, &config(1), 0).await.unwrap();
    let err = store
        .put_if_revision(&key, &config(2), 0)
        .await
        .expect_err("exists");
    assert!(matches!(err, Error::Conflict { actual, .. } if actual == r1));
    let r2 = store.put_if_revision(&key, &config(3), r1).await.unwrap();
    let err = store
        .put_if_revision(&key, &config(4), r1)
        .await
        .expect_err("stale");
    assert!(
        matches!(err, Error::Conflict { expected, actual, .. } if expected == r1 && actual == r2)
    );
    assert_eq!(
        store
            .get::<PoolConfig>(&key)
            .await
            .unwrap()
            .unwrap()
            .value
            .target_vm_count,
        3
    );
    assert!(store.delete_if_revision(&key, r1).await.is_err());
    store.delete_if_revision(&key, r2).await.unwrap();
    assert!(store.get::<PoolConfig>(&key).await.unwrap().is_none());
}

#[tokio::test]
async fn a_session_bound_key_vanishes_when_the_session_closes() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let key = store.keys().agent_member("z1", "agent-1").unwrap();
    let session = Session::grant(store.client(), Duration::from_secs(30))
        .await
        .unwrap();
    store
        .put(&key, &pm_proto::AgentInfo::default(), session.lease_id())
        .await
        .unwrap();
    let token = session.lost();
    session.close().await.unwrap();
    assert!(token.is_cancelled());
    assert!(store
        .get::<pm_proto::AgentInfo>(&key)
        .await
        .unwrap()
        .is_none());
}

/// Waits for the next batch of `watch`, for at most `bound`.
async fn next_within(watch: &mut ResumableWatch, bound: Duration) -> WatchBatch {
    tokio::time::timeout(bound, watch.next())
        .await
        .unwrap_or_else(|_| panic!("no watch batch within {bound:?}"))
        .unwrap()
}

#[tokio::test]
async fn a_member_without_a_leader_refuses_requests_at_once() {
    let mut etcd = EtcdCluster::start(3).await;
    let lone = EtcdOptions::new(vec![etcd.endpoint(0)]);
    let mut client = lone.connect().await.unwrap();
    etcd.kill(1).await;
    etcd.kill(2).await;
    // require_leader: "no leader" at once, not a request timing out on a lone member.
    let err = eventually("the lone member knows it has no leader", BOUND, || {
        let mut client = client.clone();
        async move {
            let started = std::time::Instant::now();
            let err = client.get("k", None).await.err()?;
            (started.elapsed() < Duration::from_secs(2)).then_some(err)
        }
    })
    .await;
    assert!(err.to_string().contains("no leader"), "{err}");
    client.get("k", None).await.expect_err("still no leader");
}

#[tokio::test]
async fn a_watch_whose_stream_goes_silent_moves_to_another_member() {
    let etcd = EtcdCluster::start(3).await;
    let writer = store(&etcd).await;
    let prefix = writer.keys().pools_prefix();
    let key = |i: usize| writer.keys().zone_desired(&format!("p{i}"), "z1").unwrap();
    let (_, start) = writer.list_raw(&prefix).await.unwrap();
    // The watch reaches etcd through two proxies; the second is cut until the stream is
    // open, so it goes through the first.
    let first = TcpProxy::for_url(&etcd.endpoint(0)).await;
    let second = TcpProxy::for_url(&etcd.endpoint(1)).await;
    second.cut();
    let mut options = EtcdOptions::new(vec![first.url(), second.url()]);
    // HTTP/2 pings would notice the silence only after minutes.
    options.keep_alive = Duration::from_secs(300);
    let client = options.connect().await.unwrap();
    let mut watch = ResumableWatch::new(client, WatchRange::Prefix(prefix), start + 1);
    writer.put(&key(0), &desired(1), 0).await.unwrap();
    let batch = next_within(&mut watch, BOUND).await;
    assert!(
        matches!(&batch, WatchBatch::Events(e) if e[0].key() == key(0)),
        "{batch:?}"
    );

    second.restore();
    first.blackhole();
    writer.put(&key(1), &desired(1), 0).await.unwrap();
    // Generous: the reopened stream may try the silent member again before the other.
    let batch = next_within(&mut watch, STALL_BOUND * 10).await;
    assert!(
        matches!(&batch, WatchBatch::Events(e) if e.len() == 1 && e[0].key() == key(1)),
        "{batch:?}"
    );
}

#[tokio::test]
async fn a_watch_relists_after_a_snapshot_restore() {
    let mut etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let prefix = store.keys().pools_prefix();
    let key = |i: usize| store.keys().zone_desired(&format!("p{i}"), "z1").unwrap();
    for i in 0..3 {
        store.put(&key(i), &desired(1), 0).await.unwrap();
    }
    let snapshot = etcd.dir().join("backup.db");
    etcd.snapshot_save(&snapshot).await;
    let (_, start) = store.list_raw(&prefix).await.unwrap();
    let mut watch = ResumableWatch::new(
        store.client().clone(),
        WatchRange::Prefix(prefix.clone()),
        start + 1,
    );
    // After the snapshot: more writes, all delivered.
    store.delete(&key(0)).await.unwrap();
    for i in 3..8 {
        store.put(&key(i), &desired(2), 0).await.unwrap();
    }
    let mut delivered = 0;
    while delivered < 6 {
        match next_within(&mut watch, BOUND).await {
            WatchBatch::Events(events) => delivered += events.len(),
            other => panic!("{other:?}"),
        }
    }

    etcd.restore_snapshot(&snapshot).await;
    let store = Store::new(
        EtcdOptions::new(etcd.endpoints()).connect().await.unwrap(),
        store.keys().clone(),
    );
    let batch = next_within(&mut watch, BOUND).await;
    let WatchBatch::Resync { revision, keys } = batch else {
        panic!("expected a re-list after the restore, got {batch:?}");
    };
    assert!(revision < start + 6, "revisions went back");
    let names: Vec<_> = keys.iter().map(|k| k.key.clone()).collect();
    assert_eq!(names, vec![key(0), key(1), key(2)], "the snapshot's keys");
    // And it follows the restored etcd on.
    store.put(&key(9), &desired(3), 0).await.unwrap();
    let batch = next_within(&mut watch, BOUND).await;
    assert!(
        matches!(&batch, WatchBatch::Events(e) if e.len() == 1 && e[0].key() == key(9)),
        "{batch:?}"
    );
}

#[tokio::test]
async fn a_watch_refused_by_etcd_tells_its_health_until_it_works() {
    let etcd = EtcdCluster::start(1).await;
    let keys = store(&etcd).await.keys().clone();
    let mut admin = etcd.client().await;
    admin.user_add("root", "root-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("pm").await.unwrap();
    admin.user_add("pm", "pm-password", None).await.unwrap();
    admin.user_grant_role("pm", "pm").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut options = EtcdOptions::new(etcd.endpoints());
    options.user = Some(("pm".into(), Secret::new("pm-password")));
    let client = options.connect().await.unwrap();
    let health: Arc<Mutex<Option<String>>> = Arc::default();
    let told = health.clone();
    let mut watch = ResumableWatch::new(client, WatchRange::Prefix(keys.pools_prefix()), 1)
        .with_health(move |reason| *told.lock().unwrap() = reason.map(str::to_string));
    let following = tokio::spawn(async move { watch.next().await });
    let reason = eventually("the refusal is told", BOUND, || async {
        health.lock().unwrap().clone()
    })
    .await;
    assert!(reason.contains("permission denied"), "{reason}");

    let mut root = EtcdOptions::new(etcd.endpoints());
    root.user = Some(("root".into(), Secret::new("root-password")));
    let mut root = root.connect().await.unwrap();
    root.role_grant_permission("pm", Permission::read(keys.root()).with_prefix())
        .await
        .unwrap();
    eventually("the watch works again", BOUND, || async {
        health.lock().unwrap().is_none().then_some(())
    })
    .await;
    following.abort();
}
