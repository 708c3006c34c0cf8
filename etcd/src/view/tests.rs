//! Tests of the keyspace view: listings, events in and out of order, resyncs, the zone
//! filter, values that do not decode, and the writer's own records.

use pm_proto::InstanceState;
use prost::Message;

use super::*;
use crate::testing::{delete, put, stored};

fn keys() -> Keyspace {
    Keyspace::default()
}

fn config(target: i64) -> Vec<u8> {
    PoolConfig {
        target_vm_count: target,
        ..Default::default()
    }
    .encode_to_vec()
}

fn desired(count: i64) -> ZoneDesired {
    ZoneDesired {
        count,
        ..Default::default()
    }
}

fn instance(state: InstanceState) -> Vec<u8> {
    ObservedInstance {
        state: state as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

fn events(events: Vec<WatchEvent>) -> WatchBatch {
    WatchBatch::Events(events)
}

fn instance_key(zone: &str, name: &str) -> String {
    keys().instance("web", zone, name).unwrap()
}

fn count(view: &PoolsView, zone: &str) -> Option<i64> {
    let desired = view.pool("web")?.zone(zone).desired.as_ref()?;
    Some(desired.value.count)
}

/// A short description of each change: `put <key>`, `delete <key>`, ...
fn described(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|change| match change {
            Change::Put { key, old, .. } => format!("put {key:?} old={}", old.is_some()),
            Change::Delete { key, old } => format!("delete {key:?} old={}", old.is_some()),
            Change::Undecodable { key, .. } => format!("undecodable {key:?}"),
            Change::Malformed { .. } => "malformed".into(),
        })
        .collect()
}

#[test]
fn a_listing_sorts_keys_into_pools_and_zones() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let listing = vec![
        stored(ks.pool_config("web").unwrap(), config(3), 2),
        stored(
            ks.zone_desired("web", "zone-a").unwrap(),
            desired(2).encode_to_vec(),
            3,
        ),
        stored(
            ks.exhausted("web", "zone-b").unwrap(),
            ZoneExhaustion::default().encode_to_vec(),
            4,
        ),
        stored(
            ks.report("web", "zone-b").unwrap(),
            ExhaustionReport::default().encode_to_vec(),
            5,
        ),
        stored(
            instance_key("zone-a", "web-a1"),
            instance(InstanceState::Running),
            6,
        ),
        stored(ks.event("web", "0001-ab").unwrap(), Vec::new(), 7),
        stored(ks.agent_member("zone-a", "a1").unwrap(), Vec::new(), 8),
    ];
    let changes = view.load(&listing, 8);
    assert_eq!(changes.len(), 5, "{:?}", described(&changes));
    assert!(changes
        .iter()
        .all(|c| matches!(c, Change::Put { old: None, .. })));
    let web = view.pool("web").expect("pool");
    let stored_config = web.config.as_ref().expect("config");
    assert_eq!(
        (
            stored_config.value.target_vm_count,
            stored_config.mod_revision
        ),
        (3, 2)
    );
    assert_eq!(count(&view, "zone-a"), Some(2));
    let zone_a = web.zone("zone-a");
    assert_eq!(zone_a.instances["web-a1"].mod_revision, 6);
    assert_eq!(
        zone_a.instances["web-a1"].value.state(),
        InstanceState::Running
    );
    let zone_b = web.zone("zone-b");
    assert!(zone_b.exhausted.is_some() && zone_b.report.is_some());
    assert_eq!(web.zone("zone-c"), &ZoneKeys::EMPTY);
    assert_eq!(view.pools().len(), 1, "events and agents are not held");
}

#[test]
fn events_put_replace_and_delete_and_empty_zones_and_pools_go() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let dk = ks.zone_desired("web", "zone-a").unwrap();
    let ik = instance_key("zone-a", "web-a1");
    let changes = view.apply(events(vec![
        put(dk.clone(), desired(1).encode_to_vec(), 2),
        put(ik.clone(), instance(InstanceState::Provisioning), 3),
        put(dk.clone(), desired(2).encode_to_vec(), 4),
    ]));
    assert!(matches!(
        &changes[2],
        Change::Put { old: Some(Value::Desired(d)), .. } if d.count == 1
    ));
    assert_eq!(count(&view, "zone-a"), Some(2));
    let changes = view.apply(events(vec![delete(dk, 5)]));
    assert!(matches!(
        &changes[..],
        [Change::Delete { old: Some(Value::Desired(d)), .. }] if d.count == 2
    ));
    assert_eq!(count(&view, "zone-a"), None);
    assert!(view.pool("web").is_some(), "an instance is left");
    let changes = view.apply(events(vec![delete(ik, 6)]));
    assert!(matches!(
        &changes[..],
        [Change::Delete {
            old: Some(Value::Instance(_)),
            ..
        }]
    ));
    assert!(view.pools().is_empty(), "no key left: the pool goes");
    assert!(view.removed.is_empty(), "the watch passed every deletion");
}

#[test]
fn each_change_of_a_batch_tells_the_value_it_wrote() {
    let mut view = PoolsView::new(keys());
    let ik = instance_key("zone-a", "web-a1");
    let changes = view.apply(events(vec![
        put(ik.clone(), instance(InstanceState::Provisioning), 2),
        put(ik.clone(), instance(InstanceState::Running), 3),
        delete(ik, 4),
    ]));
    let state = |value: &Value| match value {
        Value::Instance(i) => i.state(),
        other => panic!("{other:?}"),
    };
    let [Change::Put {
        old: None,
        new: first,
        ..
    }, Change::Put {
        old: Some(replaced),
        new: second,
        ..
    }, Change::Delete {
        old: Some(deleted), ..
    }] = &changes[..]
    else {
        panic!("{:?}", described(&changes));
    };
    assert_eq!(state(first), InstanceState::Provisioning);
    assert_eq!(state(replaced), InstanceState::Provisioning);
    assert_eq!(state(second), InstanceState::Running);
    assert_eq!(state(deleted), InstanceState::Running);
    assert!(view.pools().is_empty());
}

#[test]
fn writes_older_than_what_the_view_knows_are_ignored() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let dk = ks.zone_desired("web", "zone-a").unwrap();
    view.apply(events(vec![put(
        dk.clone(),
        desired(5).encode_to_vec(),
        10,
    )]));
    let changes = view.apply(events(vec![
        put(dk.clone(), desired(3).encode_to_vec(), 9),
        put(dk.clone(), desired(4).encode_to_vec(), 10),
        delete(dk.clone(), 8),
    ]));
    assert!(changes.is_empty(), "{:?}", described(&changes));
    assert_eq!(count(&view, "zone-a"), Some(5));
    let changes = view.apply(events(vec![put(dk, desired(7).encode_to_vec(), 11)]));
    assert_eq!(changes.len(), 1);
    assert_eq!(count(&view, "zone-a"), Some(7));
}

#[test]
fn the_writers_own_writes_win_over_stale_events_until_the_watch_passes_them() {
    let ks = keys();
    let mut view = PoolsView::for_zone(ks.clone(), "zone-a");
    let ik = instance_key("zone-a", "web-a1");
    let key = ks.parse(ik.as_bytes()).unwrap();
    view.apply(events(vec![put(
        ik.clone(),
        instance(InstanceState::Provisioning),
        3,
    )]));
    view.record(&key, None, 10).unwrap();
    assert!(view.pool("web").is_none(), "recorded as deleted");
    let changes = view.apply(events(vec![put(
        ik.clone(),
        instance(InstanceState::Running),
        7,
    )]));
    assert!(changes.is_empty(), "a stale put does not bring it back");
    assert!(view.pool("web").is_none());
    assert_eq!(view.removed.get(&ik), Some(&10), "kept: the watch is at 8");
    let changes = view.apply(events(vec![delete(ik.clone(), 10)]));
    assert!(changes.is_empty(), "the echo of the delete");
    assert!(
        view.removed.is_empty(),
        "forgotten once the watch passed it"
    );

    let written = ObservedInstance {
        gce_id: "42".into(),
        ..Default::default()
    };
    view.record(&key, Some(Value::Instance(written.clone())), 12)
        .unwrap();
    let changes = view.apply(events(vec![
        put(ik.clone(), instance(InstanceState::Staging), 11),
        put(ik.clone(), written.encode_to_vec(), 12),
    ]));
    assert!(changes.is_empty(), "{:?}", described(&changes));
    let held = &view.pool("web").unwrap().zone("zone-a").instances["web-a1"];
    assert_eq!((held.value.gce_id.as_str(), held.mod_revision), ("42", 12));
    view.record(&key, Some(Value::Desired(desired(1))), 13)
        .unwrap();
    let held = &view.pool("web").unwrap().zone("zone-a").instances["web-a1"];
    assert_eq!(
        held.mod_revision, 12,
        "a value of another kind is not recorded"
    );
}

#[test]
fn a_resync_replaces_the_view_and_tells_what_changed() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let ck = ks.pool_config("web").unwrap();
    let xk = ks.exhausted("web", "zone-a").unwrap();
    let a1 = instance_key("zone-a", "web-a1");
    let a2 = instance_key("zone-a", "web-a2");
    view.load(
        &[
            stored(ck.clone(), config(3), 2),
            stored(xk, ZoneExhaustion::default().encode_to_vec(), 3),
            stored(a1.clone(), instance(InstanceState::Running), 4),
        ],
        4,
    );
    let changes = view.apply(WatchBatch::Resync {
        revision: 20,
        keys: vec![
            stored(ck, config(3), 2),
            stored(a1, instance(InstanceState::Terminated), 15),
            stored(a2, instance(InstanceState::Provisioning), 16),
        ],
    });
    let seen = described(&changes);
    let exhausted = Key::Exhausted {
        pool: "web".into(),
        zone: "zone-a".into(),
    };
    let instance = |name: &str| Key::Instance {
        pool: "web".into(),
        zone: "zone-a".into(),
        name: name.into(),
    };
    assert_eq!(
        seen,
        [
            format!("put {:?} old=true", instance("web-a1")),
            format!("put {:?} old=false", instance("web-a2")),
            format!("delete {exhausted:?} old=true"),
        ],
        "the unchanged config is not a change"
    );
    let zone = view.pool("web").unwrap().zone("zone-a");
    assert!(zone.exhausted.is_none());
    assert_eq!(zone.instances.len(), 2);
    assert!(view.removed.is_empty(), "the watch follows from 21");
}

#[test]
fn a_listing_older_than_the_writers_record_keeps_the_record() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let dk = ks.zone_desired("web", "zone-a").unwrap();
    let key = ks.parse(dk.as_bytes()).unwrap();
    view.record(&key, Some(Value::Desired(desired(4))), 30)
        .unwrap();
    let changes = view.load(&[], 25);
    assert!(changes.is_empty());
    assert_eq!(count(&view, "zone-a"), Some(4));
    let changes = view.load(&[], 31);
    assert_eq!(changes.len(), 1);
    assert_eq!(count(&view, "zone-a"), None);
    let changes = view.apply(events(vec![put(dk, desired(1).encode_to_vec(), 29)]));
    assert!(changes.is_empty(), "older than the listing's deletion");
}

#[test]
fn a_zone_view_keeps_its_zone_and_every_config() {
    let ks = keys();
    let mut view = PoolsView::for_zone(ks.clone(), "zone-a");
    let changes = view.load(
        &[
            stored(ks.pool_config("web").unwrap(), config(3), 2),
            stored(ks.pool_config("api").unwrap(), config(1), 3),
            stored(
                instance_key("zone-a", "web-a1"),
                instance(InstanceState::Running),
                4,
            ),
            stored(
                instance_key("zone-b", "web-b1"),
                instance(InstanceState::Running),
                5,
            ),
            stored(
                ks.zone_desired("web", "zone-b").unwrap(),
                desired(1).encode_to_vec(),
                6,
            ),
        ],
        6,
    );
    assert_eq!(changes.len(), 3, "{:?}", described(&changes));
    assert!(view.pool("api").is_some_and(|p| p.zones.is_empty()));
    let web = view.pool("web").unwrap();
    assert_eq!(web.zones.keys().collect::<Vec<_>>(), ["zone-a"]);
    let changes = view.apply(events(vec![delete(instance_key("zone-b", "web-b1"), 7)]));
    assert!(changes.is_empty(), "other zones' deletions are not changes");
    let b = ks
        .parse(instance_key("zone-b", "web-b2").as_bytes())
        .unwrap();
    view.record(&b, Some(Value::Instance(ObservedInstance::default())), 8)
        .unwrap();
    assert!(!view.pool("web").unwrap().zones.contains_key("zone-b"));
}

#[test]
fn values_that_do_not_decode_are_kept_out_and_reported() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let ck = ks.pool_config("web").unwrap();
    let ik = instance_key("zone-a", "web-a1");
    view.load(&[stored(ck.clone(), config(4), 2)], 2);
    let changes = view.apply(events(vec![
        put(ck.clone(), vec![0xff, 0xff, 0xff], 3),
        put(ik.clone(), vec![0x08, 0xff], 4),
        put("/pm/v1/pools/web/zones/BAD/desired".into(), Vec::new(), 5),
    ]));
    let [Change::Undecodable { key, error }, Change::Undecodable { .. }, Change::Malformed { error: malformed }] =
        &changes[..]
    else {
        panic!("{:?}", described(&changes));
    };
    assert_eq!(key, &Key::PoolConfig { pool: "web".into() });
    assert!(matches!(error, Error::Decode { .. }), "{error}");
    assert!(
        error.to_string().contains(&ck),
        "the error names the key: {error}"
    );
    assert!(
        matches!(malformed, Error::MalformedKey { .. }),
        "{malformed}"
    );
    let web = view.pool("web").unwrap();
    assert_eq!(
        web.config
            .as_ref()
            .map(|c| (c.value.target_vm_count, c.mod_revision)),
        Some((4, 2)),
        "the key keeps what it held"
    );
    assert!(web.zones.is_empty());
    let changes = view.apply(events(vec![delete(ik, 6)]));
    assert!(
        matches!(&changes[..], [Change::Delete { old: None, .. }]),
        "the deletion of a value that never decoded is still told"
    );
}

#[test]
fn a_pool_deleted_by_the_writer_is_gone_and_its_echoes_change_nothing() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let ck = ks.pool_config("web").unwrap();
    let dk = ks.zone_desired("web", "zone-a").unwrap();
    view.load(
        &[
            stored(ck.clone(), config(0), 2),
            stored(dk.clone(), desired(0).encode_to_vec(), 3),
        ],
        3,
    );
    view.record_pool_deleted("web", 9).unwrap();
    assert!(view.pool("web").is_none());
    let changes = view.apply(events(vec![
        put(dk.clone(), desired(2).encode_to_vec(), 4),
        delete(dk, 9),
        delete(ck, 9),
    ]));
    assert!(changes.is_empty(), "{:?}", described(&changes));
    assert!(view.removed.is_empty());
}

#[test]
fn a_listing_from_before_what_was_seen_is_a_restore_and_replaces_the_view() {
    let ks = keys();
    let mut view = PoolsView::new(ks.clone());
    let ck = ks.pool_config("web").unwrap();
    let dk = ks.zone_desired("web", "zone-a").unwrap();
    let a1 = instance_key("zone-a", "web-a1");
    let a2 = instance_key("zone-a", "web-a2");
    view.load(
        &[
            stored(ck.clone(), config(6), 90),
            stored(dk.clone(), desired(6).encode_to_vec(), 91),
            stored(a1.clone(), instance(InstanceState::Running), 92),
        ],
        95,
    );
    view.apply(events(vec![put(
        a2.clone(),
        instance(InstanceState::Running),
        99,
    )]));
    // etcd restored from a snapshot taken at revision 50: older values, fewer keys.
    let changes = view.load(
        &[
            stored(ck, config(3), 40),
            stored(dk, desired(3).encode_to_vec(), 41),
        ],
        50,
    );
    assert_eq!(changes.len(), 4, "{:?}", described(&changes));
    let pool = view.pool("web").unwrap();
    assert_eq!(pool.config.as_ref().unwrap().value.target_vm_count, 3);
    assert_eq!(count(&view, "zone-a"), Some(3));
    assert!(view.zone("web", "zone-a").instances.is_empty());
    // From then on the restored revisions count.
    let changes = view.apply(events(vec![put(a1, instance(InstanceState::Running), 51)]));
    assert_eq!(changes.len(), 1);
    assert_eq!(view.zone("web", "zone-a").instances.len(), 1);
}

#[test]
fn a_span_listing_is_the_whole_truth_of_its_span_and_only_of_it() {
    let ks = keys();
    let mut view = PoolsView::for_zone(ks.clone(), "zone-a");
    view.load(
        &[
            stored(ks.pool_config("web").unwrap(), config(3), 2),
            stored(
                instance_key("zone-a", "web-a1"),
                instance(InstanceState::Running),
                9,
            ),
            stored(
                instance_key("zone-a", "web-a2"),
                instance(InstanceState::Running),
                9,
            ),
        ],
        9,
    );
    let zone = ks.zone_prefix("web", "zone-a").unwrap();
    let end = crate::keys::prefix_range_end(zone.as_bytes());
    // A restored etcd's listing of the zone, at a revision below what the view knew:
    // it wins in its span, and the config outside it stays.
    let changes = view.load_span(
        &[stored(
            instance_key("zone-a", "web-a1"),
            instance(InstanceState::Stopping),
            4,
        )],
        4,
        (&zone, &end),
    );
    assert_eq!(changes.len(), 2, "{:?}", described(&changes));
    let web = view.pool("web").unwrap();
    assert!(web.config.is_some());
    let a = &web.zone("zone-a").instances;
    assert_eq!(a.keys().collect::<Vec<_>>(), ["web-a1"]);
    assert_eq!(a["web-a1"].mod_revision, 4);

    // The writer deletes web-a1; another span's watch passing that revision does not make
    // the view forget it, so the zone's watch, still behind, cannot bring it back.
    let config_key = ks.pool_config("web").unwrap();
    let config_end = [config_key.as_bytes(), &[0]].concat();
    let a1 = ks
        .parse(instance_key("zone-a", "web-a1").as_bytes())
        .unwrap();
    view.record(&a1, None, 20).unwrap();
    view.apply_span(
        events(vec![put(config_key.clone(), config(4), 30)]),
        (&config_key, &config_end),
    );
    let stale = put(
        instance_key("zone-a", "web-a1"),
        instance(InstanceState::Running),
        10,
    );
    let changes = view.apply_span(events(vec![stale]), (&zone, &end));
    assert!(changes.is_empty(), "{:?}", described(&changes));
}
