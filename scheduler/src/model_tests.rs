//! Tests of the leader's model: counts kept from the view's changes, refused and
//! undecodable values, notices, the leader's own writes, agents.

use pm_etcd::testing::{delete, put, stored};
use proptest::prelude::*;
use prost::Message;

use super::*;

fn events(events: Vec<WatchEvent>) -> WatchBatch {
    WatchBatch::Events(events)
}

fn instance(state: InstanceState) -> Vec<u8> {
    ObservedInstance {
        state: state as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

fn zone(m: &Model, zone: &str) -> ZoneView {
    let pool = m.pool("web").expect("pool");
    pool.zones.get(zone).cloned().unwrap_or_default()
}

#[test]
fn live_counts_follow_puts_and_deletes() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let k = |n: &str| keys.instance("web", "z1", n).unwrap();
    m.apply_pools(events(vec![
        put(k("web-a"), instance(InstanceState::Running), 1),
        put(k("web-b"), instance(InstanceState::Provisioning), 2),
        put(k("web-c"), instance(InstanceState::Terminated), 3),
        put(k("web-a"), instance(InstanceState::Running), 4),
    ]));
    let z1 = zone(&m, "z1");
    assert_eq!(z1.counts.live, 2);
    assert_eq!(
        ObservedStatus::ALL.map(|s| z1.counts.count(s)),
        [1, 1, 1, 0],
        "running, starting, lost, deleting"
    );
    m.apply_pools(events(vec![
        put(k("web-b"), instance(InstanceState::Deleting), 5),
        delete(k("web-a"), 6),
        delete(k("web-a"), 7),
    ]));
    let z1 = zone(&m, "z1");
    assert_eq!(z1.counts.live, 0);
    assert_eq!(z1.counts.instances(), 2);
    assert_eq!(
        ObservedStatus::ALL.map(|s| z1.counts.count(s)),
        [0, 0, 1, 1]
    );
    assert!(m.take_dirty().contains("web"));
}

fn valid_config(target: i64) -> PoolConfig {
    PoolConfig {
        target_vm_count: target,
        allowed_zones: vec!["zone-a".into()],
        prefix: "web-".into(),
        instance_json: "{}".into(),
        ..Default::default()
    }
}

#[test]
fn an_intent_written_and_forgotten_in_one_batch_counts_nothing() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let k = keys.instance("web", "z1", "web-a").unwrap();
    m.apply_pools(events(vec![
        put(k.clone(), instance(InstanceState::Provisioning), 2),
        put(k.clone(), instance(InstanceState::Running), 3),
        delete(k, 4),
    ]));
    assert_eq!(zone(&m, "z1").counts, ZoneCounts::default());
}

#[test]
fn a_refused_config_keeps_the_last_valid_one_and_is_noticed_once() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let ck = keys.pool_config("web").unwrap();
    let mut bad = valid_config(4);
    bad.hooks = Some(pm_proto::Hooks {
        create: ".on-create".into(),
        ..Default::default()
    });
    m.load_pools(&[stored(ck.clone(), bad.encode_to_vec(), 1)], 1);
    let view = m.pool("web").expect("pool");
    assert!(
        view.config.is_none() && view.config_refused,
        "no valid config yet"
    );
    let notices = m.take_notices();
    assert!(
        matches!(&notices[..], [Notice::ConfigRefused { pool, problem }]
            if pool == "web" && problem.contains("hooks.create")),
        "{notices:?}"
    );
    m.load_pools(&[stored(ck.clone(), bad.encode_to_vec(), 2)], 2);
    assert!(
        m.take_notices().is_empty(),
        "reported once, also across reloads"
    );
    let put_config = |value: Vec<u8>, revision| events(vec![put(ck.clone(), value, revision)]);
    assert!(m
        .apply_pools(put_config(valid_config(5).encode_to_vec(), 3))
        .is_empty());
    let mut negative = valid_config(5);
    negative.target_vm_count = -1;
    let notices = m.apply_pools(put_config(negative.encode_to_vec(), 4));
    assert_eq!(notices.len(), 1, "{notices:?}");
    let view = m.pool("web").unwrap();
    assert_eq!(view.config.as_ref().map(|c| c.target_vm_count), Some(5));
    assert!(view.config_refused);
}

#[test]
fn garbage_values_are_skipped_and_keep_the_last_good_value() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let ck = keys.pool_config("web").unwrap();
    m.load_pools(&[stored(ck.clone(), valid_config(4).encode_to_vec(), 1)], 1);
    m.apply_pools(events(vec![
        put(ck, vec![0xff, 0xff, 0xff], 2),
        put("/pm/v1/pools/web/zones/BAD/desired".into(), vec![], 3),
        put(
            keys.instance("web", "z1", "web-a").unwrap(),
            vec![0x08, 0xff],
            4,
        ),
    ]));
    let view = m.pool("web").unwrap();
    assert_eq!(view.config.as_ref().unwrap().target_vm_count, 4);
    assert!(view.zones.get("z1").is_none_or(|z| z.counts.live == 0));
}

#[test]
fn an_undecodable_report_still_counts_as_a_stockout_until_consumed() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let rk = keys.report("web", "z1").unwrap();
    m.apply_pools(events(vec![put(rk.clone(), vec![0xff], 2)]));
    let report = zone(&m, "z1").report.expect("a stockout");
    assert_eq!(report.message, "undecodable report");
    let key = keys.parse(rk.as_bytes()).unwrap();
    m.record(&key, None, 3).unwrap();
    assert!(m.pool("web").is_none_or(|p| p.zones.is_empty()));
}

#[test]
fn an_expired_exhaustion_is_noticed() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let xk = keys.exhausted("web", "z1").unwrap();
    m.load_pools(
        &[stored(
            xk.clone(),
            ZoneExhaustion::default().encode_to_vec(),
            1,
        )],
        1,
    );
    let notices = m.apply_pools(events(vec![delete(xk, 9)]));
    assert_eq!(
        notices,
        vec![Notice::ZoneUsable {
            pool: "web".into(),
            zone: "z1".into()
        }]
    );
}

#[test]
fn echoes_of_older_desired_writes_are_ignored() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let dk = keys.zone_desired("web", "z1").unwrap();
    let desired = |count| ZoneDesired {
        count,
        ..Default::default()
    };
    let key = keys.parse(dk.as_bytes()).unwrap();
    m.record(&key, Some(Value::Desired(desired(5))), 10)
        .unwrap();
    m.apply_pools(events(vec![put(dk.clone(), desired(3).encode_to_vec(), 9)]));
    assert_eq!(zone(&m, "z1").desired.unwrap().count, 5);
    m.apply_pools(events(vec![put(dk, desired(7).encode_to_vec(), 11)]));
    assert_eq!(zone(&m, "z1").desired.unwrap().count, 7);
}

#[test]
fn a_removed_pool_is_forgotten_and_the_echo_of_its_removal_changes_nothing() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let ck = keys.pool_config("web").unwrap();
    let dk = keys.zone_desired("web", "z1").unwrap();
    m.load_pools(
        &[
            stored(ck.clone(), valid_config(0).encode_to_vec(), 1),
            stored(dk.clone(), ZoneDesired::default().encode_to_vec(), 2),
        ],
        2,
    );
    m.take_dirty();
    m.record_removed("web", 5).unwrap();
    assert!(m.pool("web").is_none());
    m.apply_pools(events(vec![delete(dk, 5), delete(ck, 5)]));
    assert!(m.pool("web").is_none());
    assert!(m.take_dirty().is_empty());
}

#[test]
fn agents_come_and_go() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let a = keys.agent_member("z1", "a1").unwrap();
    let changed = m.load_agents(&[stored(a.clone(), vec![], 1)]);
    assert!(changed.contains("z1"));
    m.apply_agents(events(vec![delete(a, 2)]));
    assert!(m.agents.is_empty());
}

#[test]
fn a_zone_has_a_reconciling_agent_only_while_its_member_says_so() {
    let keys = Keyspace::default();
    let mut m = Model::new(keys.clone());
    let a = keys.agent_member("z1", "a1").unwrap();
    let info = |reconciling| {
        pm_proto::AgentInfo {
            reconciling: Some(reconciling),
            ..Default::default()
        }
        .encode_to_vec()
    };
    m.load_agents(&[stored(a.clone(), info(false), 1)]);
    assert!(m.agents.contains_key("z1"), "registered");
    assert!(m.reconciling.is_empty(), "a member key alone is no agent");
    m.apply_agents(events(vec![put(a.clone(), info(true), 2)]));
    assert!(m.reconciling["z1"].contains("a1"));
    m.apply_agents(events(vec![put(a.clone(), info(false), 3)]));
    assert!(m.reconciling.is_empty(), "stalled");
    m.apply_agents(events(vec![put(a.clone(), info(true), 4)]));
    m.apply_agents(events(vec![put(a.clone(), b"\xff\xff".to_vec(), 5)]));
    assert!(m.reconciling.is_empty(), "undecodable");
    let legacy = pm_proto::AgentInfo::default().encode_to_vec();
    m.apply_agents(events(vec![put(a.clone(), legacy, 6)]));
    assert!(
        m.reconciling["z1"].contains("a1"),
        "an agent older than the field counts by its member key, as before"
    );
    m.apply_agents(events(vec![put(a.clone(), info(true), 6)]));
    m.apply_agents(events(vec![delete(a, 7)]));
    assert!(m.reconciling.is_empty() && m.agents.is_empty(), "gone");
}

/// The counts of `zone`, counted again from the view's instance keys.
fn recounted(m: &Model, zone: &str) -> ZoneCounts {
    let mut counts = ZoneCounts::default();
    for instance in m.view.zone("web", zone).instances.values() {
        counts.add(&instance.value);
    }
    counts
}

fn state() -> impl Strategy<Value = (InstanceState, bool, bool)> {
    let states = prop_oneof![
        Just(InstanceState::Unknown),
        Just(InstanceState::Provisioning),
        Just(InstanceState::Staging),
        Just(InstanceState::Running),
        Just(InstanceState::Stopping),
        Just(InstanceState::Terminated),
        Just(InstanceState::Deleting),
    ];
    (states, any::<bool>(), any::<bool>())
}

proptest! {
    #[test]
    fn counts_kept_from_changes_equal_a_recount(
        steps in prop::collection::vec(
            (0usize..6, prop::option::of(state()), 0i64..3, any::<bool>()),
            1..60,
        ),
    ) {
        let keys = Keyspace::default();
        let mut m = Model::new(keys.clone());
        let mut revision = 10;
        let mut batch = Vec::new();
        for (i, (name, value, lag, batch_ends)) in steps.into_iter().enumerate() {
            revision += 1;
            let key = keys.instance("web", "z1", &format!("vm-{name}")).unwrap();
            // Some events arrive late: older than what the model knows already.
            let at = revision - lag;
            let event = match value {
                Some((state, preempted, confirmed)) => {
                    let observed = ObservedInstance {
                        state: state as i32,
                        preempted,
                        gce_id: if confirmed { "42".into() } else { String::new() },
                        created_unix_ms: i64::try_from(i).unwrap_or_default(),
                        ..Default::default()
                    };
                    put(key, observed.encode_to_vec(), at)
                }
                None => delete(key, at),
            };
            // Several changes of one key may come in one batch.
            batch.push(event);
            if !batch_ends {
                continue;
            }
            m.apply_pools(events(std::mem::take(&mut batch)));
            let kept = m.pool("web").and_then(|p| p.zones.get("z1").map(|z| z.counts.clone()));
            let recount = recounted(&m, "z1");
            let kept = kept.unwrap_or_default();
            prop_assert_eq!(kept.live, recount.live);
            prop_assert_eq!(kept.live_confirmed, recount.live_confirmed);
            prop_assert_eq!(kept.by_status, recount.by_status);
        }
    }
}
