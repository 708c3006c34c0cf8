use super::*;
use pm_pool::disruption::DRAINING_LABEL;

fn listed(name: &str, status: InstanceStatus, created: &str) -> (String, Listed) {
    (
        name.to_string(),
        Listed {
            name: name.to_string(),
            status,
            id: format!("id-{name}"),
            created_unix_ms: pm_gce::resources::unix_ms(created).unwrap_or_default(),
            revision: String::new(),
            project: "p".into(),
            labels: BTreeMap::new(),
            label_fingerprint: "fp".into(),
        },
    )
}

/// What goes: deleted at once, or drained (sorted by name).
fn removed(d: &Decision) -> Vec<String> {
    let mut names: Vec<String> = d.delete.clone();
    names.extend(d.drain.iter().map(|s| s.name.clone()));
    names.sort();
    names
}

fn observed(name: &str, state: InstanceState) -> (String, ObservedInstance) {
    (
        name.to_string(),
        ObservedInstance {
            state: state as i32,
            gce_id: format!("id-{name}"),
            running_since_unix_ms: i64::from(state == InstanceState::Running),
            project: "p".into(),
            ..Default::default()
        },
    )
}

/// A pool at revision "new" whose zone holds `old` RUNNING VMs of revision "old".
fn rolling(desired: i64, old: usize, roll: Roll) -> PoolInputs {
    let mut i = inputs(desired);
    i.revision = "new".into();
    i.roll = Some(roll);
    for n in 0..old {
        let (name, mut l) = listed(&format!("w-old{n}"), S::Running, "2026-01-01T00:00:00Z");
        l.revision = "old".into();
        i.listed.insert(name.clone(), l);
        let (_, mut o) = observed(&name, InstanceState::Running);
        o.revision = "old".into();
        i.observed.insert(name, o);
    }
    i
}

fn add_new(i: &mut PoolInputs, name: &str, status: InstanceStatus, running_since: i64) {
    let (name, mut l) = listed(name, status, "2026-01-02T00:00:00Z");
    l.revision = "new".into();
    i.listed.insert(name.clone(), l);
    let (_, mut o) = observed(&name, state_of(status));
    o.revision = "new".into();
    o.running_since_unix_ms = running_since;
    i.observed.insert(name, o);
}

const ROLL: Roll = Roll {
    surge: 1,
    unavailable: 0,
    paused: false,
    min_ready_ms: 0,
};

#[test]
fn a_rollout_surges_then_deletes_an_old_vm_per_ready_new_one() {
    let mut i = rolling(3, 3, ROLL);
    let d = decide(&i);
    assert_eq!(
        (d.create, d.old, removed(&d).len()),
        (1, 3, 0),
        "surge one, delete none"
    );
    add_new(&mut i, "w-new0", S::Staging, 0);
    let d = decide(&i);
    assert_eq!(
        (d.create, removed(&d).len()),
        (0, 0),
        "at the cap, nothing ready"
    );
    add_new(&mut i, "w-new0", S::Running, 1);
    let d = decide(&i);
    assert_eq!(removed(&d).len(), 1, "{d:?}");
    assert!(
        removed(&d)[0].starts_with("w-old"),
        "an old one goes: {d:?}"
    );
    assert_eq!(d.create, 0, "the cap holds until the old one is gone");
}

#[test]
fn a_key_without_its_project_gets_it() {
    let mut i = inputs(1);
    i.listed.extend([listed("w-a", S::Running, "1")]);
    let (name, mut o) = observed("w-a", InstanceState::Running);
    o.project.clear();
    i.observed.insert(name, o);
    assert_eq!(
        decide(&i).update,
        vec![("w-a".to_string(), InstanceState::Running)]
    );
}

#[test]
fn a_young_intent_of_an_old_revision_is_counted_not_resent() {
    let mut i = rolling(1, 0, ROLL);
    i.observed.insert(
        "w-a".into(),
        ObservedInstance {
            state: InstanceState::Provisioning as i32,
            request_id: "rid".into(),
            created_unix_ms: i.now_ms - 1_000,
            revision: "old".into(),
            ..Default::default()
        },
    );
    let d = decide(&i);
    assert!(
        d.resume_insert.is_empty() && d.expired_insert.is_empty(),
        "{d:?}"
    );
    assert_eq!(
        (d.live, d.old, d.create),
        (1, 1, 1),
        "the surge, not a second VM"
    );
    i.now_ms += i.insert_expiry_ms;
    assert_eq!(decide(&i).expired_insert, vec!["w-a".to_string()]);
}

#[test]
fn a_vm_stopping_while_it_is_deleted_still_holds_its_place() {
    let mut i = rolling(2, 2, ROLL);
    add_new(&mut i, "w-new0", S::Running, 1);
    if let Some(l) = i.listed.get_mut("w-old0") {
        l.status = S::Stopping;
    }
    if let Some(o) = i.observed.get_mut("w-old0") {
        o.state = InstanceState::Deleting as i32;
    }
    assert_eq!(decide(&i).create, 0, "w-old0 is still there");
}

#[test]
fn a_booting_replacement_is_looked_at_again_soon() {
    let mut i = rolling(2, 2, ROLL);
    add_new(&mut i, "w-new0", S::Staging, 0);
    assert_eq!(decide(&i).next_ready_unix_ms, Some(i.now_ms + BOOT_POLL_MS));
    i.roll = None;
    assert_eq!(decide(&i).next_ready_unix_ms, None, "no rollout: the rest");
}

#[test]
fn a_surge_waits_for_the_old_vm_it_replaced_to_be_deleted() {
    let mut i = rolling(2, 2, ROLL);
    add_new(&mut i, "w-new0", S::Running, 1);
    i.in_flight.insert("w-old0".into(), InFlight::Deleting);
    let d = decide(&i);
    assert_eq!(
        (d.create, removed(&d).len()),
        (0, 0),
        "w-old0 still runs: {d:?}"
    );
    i.listed.remove("w-old0");
    i.observed.remove("w-old0");
    i.in_flight.clear();
    assert_eq!(decide(&i).create, 1, "gone: the next surge");
}

#[test]
fn min_ready_holds_old_vms_until_the_new_ones_ran_long_enough() {
    let mut i = rolling(
        2,
        2,
        Roll {
            min_ready_ms: 30_000,
            ..ROLL
        },
    );
    let since = i.now_ms - 10_000;
    add_new(&mut i, "w-new0", S::Running, since);
    let d = decide(&i);
    assert!(removed(&d).is_empty(), "{d:?}");
    assert_eq!(d.next_ready_unix_ms, Some(i.now_ms + 20_000));
    i.now_ms += 20_000;
    assert_eq!(removed(&decide(&i)).len(), 1);
}

#[test]
fn without_surge_unavailable_old_vms_go_ahead_and_no_more() {
    let mut i = rolling(
        4,
        4,
        Roll {
            surge: 0,
            unavailable: 1,
            ..ROLL
        },
    );
    let d = decide(&i);
    assert_eq!((removed(&d).len(), d.create), (1, 0), "{d:?}");
    let gone = removed(&d)[0].clone();
    i.listed.remove(&gone);
    i.observed.remove(&gone);
    let d = decide(&i);
    assert_eq!((removed(&d).len(), d.create), (0, 1), "{d:?}");
}

#[test]
fn a_paused_rollout_neither_surges_nor_deletes_old_vms() {
    let mut i = rolling(
        3,
        3,
        Roll {
            paused: true,
            ..ROLL
        },
    );
    add_new(&mut i, "w-new0", S::Running, 1);
    let d = decide(&i);
    assert_eq!((d.create, removed(&d).len()), (0, 0), "{d:?}");
    let mut lost = rolling(
        3,
        2,
        Roll {
            paused: true,
            ..ROLL
        },
    );
    lost.observed.remove("w-old9");
    assert_eq!(decide(&lost).create, 1, "a loss is still replaced");
}

#[test]
fn without_a_rollout_old_vms_stay_and_scale_down_takes_them_first() {
    let mut i = rolling(3, 2, ROLL);
    i.roll = None;
    add_new(&mut i, "w-new0", S::Running, 1);
    let d = decide(&i);
    assert_eq!((d.create, removed(&d).len(), d.old), (0, 0, 2));
    i.desired = 2;
    let d = decide(&i);
    assert_eq!(removed(&d).len(), 1);
    assert!(removed(&d)[0].starts_with("w-old"), "{d:?}");
}

#[test]
fn a_preempted_old_vm_is_replaced_with_the_new_revision() {
    let mut i = rolling(2, 2, ROLL);
    if let Some(l) = i.listed.get_mut("w-old0") {
        l.status = S::Terminated;
    }
    let d = decide(&i);
    assert!(removed(&d).contains(&"w-old0".to_string()));
    // The lost one and the surge: up to the cap of 3.
    assert_eq!((d.live, d.old, d.create), (1, 1, 2), "{d:?}");
}

fn inputs(desired: i64) -> PoolInputs {
    PoolInputs {
        desired,
        may_create: true,
        on_preempted: OnPreempted::Delete,
        listed: BTreeMap::new(),
        observed: BTreeMap::new(),
        in_flight: BTreeMap::new(),
        now_ms: 1_000_000,
        insert_expiry_ms: 600_000,
        revision: String::new(),
        roll: None,
        drain_requests: BTreeMap::new(),
        shed_counted: BTreeSet::new(),
        drain_wait_ms: 30_000,
        label_refused: BTreeSet::new(),
    }
}

use InstanceStatus as S;

#[test]
fn creates_the_deficit_and_counts_inserts_in_flight() {
    let mut i = inputs(5);
    i.listed.extend([listed("w-a", S::Running, "1")]);
    i.observed.extend([observed("w-a", InstanceState::Running)]);
    i.in_flight.insert("w-b".into(), InFlight::Creating);
    let d = decide(&i);
    assert_eq!((d.live, d.create), (2, 3));
    assert!(d.adopt.is_empty() && removed(&d).is_empty());
}

#[test]
fn creates_nothing_when_the_zone_accepts_nothing_new() {
    let mut i = inputs(3);
    i.may_create = false;
    assert_eq!(decide(&i).create, 0);
}

#[test]
fn scale_down_deletes_not_running_first_then_newest() {
    let mut i = inputs(2);
    i.listed.extend([
        listed("w-old", S::Running, "2026-01-01T00:00:00Z"),
        listed("w-new", S::Running, "2026-01-03T00:00:00Z"),
        listed("w-mid", S::Running, "2026-01-02T00:00:00Z"),
        listed("w-boot", S::Staging, "2026-01-01T00:00:00Z"),
    ]);
    for n in ["w-old", "w-new", "w-mid"] {
        i.observed.extend([observed(n, InstanceState::Running)]);
    }
    i.observed
        .extend([observed("w-boot", InstanceState::Staging)]);
    let d = decide(&i);
    assert_eq!(removed(&d), vec!["w-boot".to_string(), "w-new".to_string()]);
    assert_eq!(d.create, 0);
}

#[test]
fn scale_down_compares_creation_times_not_their_text() {
    let mut i = inputs(1);
    // 10:00 Pacific is 17:00 UTC: the newer one, though its text sorts first.
    i.listed.extend([
        listed("w-pacific", S::Running, "2026-01-01T10:00:00-07:00"),
        listed("w-utc", S::Running, "2026-01-01T12:00:00Z"),
    ]);
    for n in ["w-pacific", "w-utc"] {
        i.observed.extend([observed(n, InstanceState::Running)]);
    }
    assert_eq!(removed(&decide(&i)), vec!["w-pacific".to_string()]);
}

#[test]
fn an_instance_in_an_unknown_status_is_left_alone() {
    let mut i = inputs(1);
    i.listed.extend([listed("w-a", S::Unrecognized, "1")]);
    i.observed.extend([observed("w-a", InstanceState::Running)]);
    let d = decide(&i);
    assert_eq!(d.unrecognized, vec!["w-a".to_string()]);
    assert!(d.lost.is_empty() && removed(&d).is_empty() && d.update.is_empty());
    assert!(d.adopt.is_empty() && d.preempted.is_empty());
    assert_eq!((d.live, d.create), (0, 1), "not live, so it is replaced");
}

#[test]
fn deprovisioning_counts_as_stopping_and_suspended_as_lost() {
    assert_eq!(state_of(S::Deprovisioning), InstanceState::Stopping);
    assert!(is_stopped(S::Deprovisioning));
    for mode in [OnPreempted::Delete, OnPreempted::Restart] {
        let mut i = inputs(2);
        i.on_preempted = mode;
        i.listed.extend([
            listed("w-a", S::Suspended, "1"),
            listed("w-b", S::Suspending, "1"),
        ]);
        i.observed.extend([
            observed("w-a", InstanceState::Running),
            observed("w-b", InstanceState::Running),
        ]);
        let d = decide(&i);
        match mode {
            OnPreempted::Delete => {
                assert_eq!(removed(&d), vec!["w-a".to_string(), "w-b".to_string()]);
                assert_eq!((d.live, d.create), (0, 2), "replaced");
            }
            OnPreempted::Restart => {
                assert_eq!(d.resume, vec!["w-a".to_string()], "resumed, not started");
                assert!(d.restart.is_empty() && removed(&d).is_empty());
                assert_eq!((d.live, d.create), (2, 0), "coming back: no replacement");
            }
        }
    }
}

#[test]
fn unknown_instances_in_gce_are_adopted_not_duplicated() {
    let mut i = inputs(1);
    i.listed.extend([listed("w-a", S::Provisioning, "1")]);
    let d = decide(&i);
    assert_eq!(
        d.adopt,
        vec![("w-a".to_string(), InstanceState::Provisioning)]
    );
    assert_eq!((d.live, d.create), (1, 0));
}

#[test]
fn an_insert_without_a_result_is_resumed_with_its_request_id() {
    let mut i = inputs(1);
    i.observed.insert(
        "w-a".into(),
        ObservedInstance {
            state: InstanceState::Provisioning as i32,
            request_id: "rid".into(),
            created_unix_ms: i.now_ms - 1_000,
            ..Default::default()
        },
    );
    let d = decide(&i);
    assert_eq!(d.resume_insert, vec!["w-a".to_string()]);
    assert_eq!((d.live, d.create), (1, 0), "no duplicate while resuming");
    i.now_ms += i.insert_expiry_ms;
    let d = decide(&i);
    assert_eq!(d.expired_insert, vec!["w-a".to_string()]);
    assert_eq!(d.create, 1);
}

#[test]
fn known_instances_gone_from_gce_are_lost() {
    let mut i = inputs(2);
    i.observed.extend([observed("w-a", InstanceState::Running)]);
    let d = decide(&i);
    assert_eq!(d.lost, vec!["w-a".to_string()]);
    assert_eq!(d.create, 2);
}

#[test]
fn preempted_instances_are_replaced_and_deleted() {
    let mut i = inputs(2);
    i.listed.extend([
        listed("w-a", S::Terminated, "1"),
        listed("w-b", S::Running, "1"),
    ]);
    i.observed.extend([
        observed("w-a", InstanceState::Running),
        observed("w-b", InstanceState::Running),
    ]);
    let d = decide(&i);
    assert_eq!(d.preempted, vec!["w-a".to_string()]);
    assert_eq!(removed(&d), vec!["w-a".to_string()]);
    assert_eq!(
        d.update,
        vec![("w-a".to_string(), InstanceState::Terminated)]
    );
    assert_eq!((d.live, d.create), (1, 1));
}

#[test]
fn preempted_instances_are_restarted_when_asked_without_a_replacement() {
    let mut i = inputs(1);
    i.on_preempted = OnPreempted::Restart;
    i.listed.extend([listed("w-a", S::Terminated, "1")]);
    i.observed.extend([observed("w-a", InstanceState::Running)]);
    let d = decide(&i);
    assert_eq!(d.restart, vec!["w-a".to_string()]);
    assert!(removed(&d).is_empty());
    assert_eq!(d.create, 0);
}

#[test]
fn interrupted_deletes_are_resumed_and_finished() {
    let mut i = inputs(0);
    i.listed.extend([listed("w-a", S::Running, "1")]);
    i.observed.extend([
        observed("w-a", InstanceState::Deleting),
        observed("w-b", InstanceState::Deleting),
    ]);
    let d = decide(&i);
    assert_eq!(removed(&d), vec!["w-a".to_string()]);
    assert_eq!(d.finish_delete, vec!["w-b".to_string()]);
    assert!(d.lost.is_empty());
    assert_eq!(d.live, 0);
}

#[test]
fn in_flight_operations_are_not_repeated() {
    let mut i = inputs(0);
    i.listed.extend([
        listed("w-a", S::Running, "1"),
        listed("w-b", S::Terminated, "1"),
    ]);
    i.observed.extend([
        observed("w-a", InstanceState::Running),
        observed("w-b", InstanceState::Running),
    ]);
    i.in_flight.insert("w-a".into(), InFlight::Deleting);
    i.in_flight.insert("w-b".into(), InFlight::Deleting);
    let d = decide(&i);
    assert!(removed(&d).is_empty() && d.preempted.is_empty(), "{d:?}");
}

fn draining(i: &mut PoolInputs, name: &str, hard: bool, hook_finished: i64) {
    let o = i.observed.get_mut(name).expect("observed");
    o.drain = Some(pm_proto::Drain {
        reason: "test".into(),
        hard,
        started_unix_ms: i.now_ms - 1000,
        hook_finished_unix_ms: hook_finished,
        ..Default::default()
    });
}

fn running(i: &mut PoolInputs, names: &[&str]) {
    for name in names {
        i.listed
            .extend([listed(name, S::Running, "2026-01-01T00:00:00Z")]);
        i.observed.extend([observed(name, InstanceState::Running)]);
    }
}

#[test]
fn voluntary_removals_drain_instead_of_deleting() {
    let mut i = inputs(1);
    running(&mut i, &["w-a", "w-b", "w-c"]);
    let d = decide(&i);
    assert!(d.delete.is_empty(), "{d:?}");
    assert_eq!(d.drain.len(), 2, "{d:?}");
    assert!(d
        .drain
        .iter()
        .all(|s| s.cause == DrainCause::ScaleDown && !s.hard));
}

#[test]
fn a_soft_drain_waits_for_its_hook_or_its_time_and_still_counts() {
    let mut i = inputs(2);
    running(&mut i, &["w-a", "w-b", "w-c"]);
    draining(&mut i, "w-c", false, 0);
    let d = decide(&i);
    // Still there: counted live, not chosen again, nothing else drains or is created.
    assert_eq!((d.live, d.create), (3, 0), "{d:?}");
    assert!(d.drain.is_empty() && d.delete.is_empty(), "{d:?}");
    assert_eq!(d.label_draining, vec!["w-c".to_string()]);
    assert_eq!(d.drain_hook_pending, vec!["w-c".to_string()]);
    assert_eq!(
        d.next_ready_unix_ms,
        Some(i.now_ms - 1000 + 30_000),
        "wakes at the deadline"
    );
    // The hook finished: deleted.
    let now = i.now_ms;
    draining(&mut i, "w-c", false, now);
    assert_eq!(decide(&i).delete, vec!["w-c".to_string()]);
    // Or the wait ran out.
    draining(&mut i, "w-c", false, 0);
    i.drain_wait_ms = 500;
    assert_eq!(decide(&i).delete, vec!["w-c".to_string()]);
}

#[test]
fn a_hard_drain_deletes_at_once_and_a_labelled_one_is_not_labelled_again() {
    let mut i = inputs(2);
    running(&mut i, &["w-a", "w-b", "w-c"]);
    draining(&mut i, "w-c", true, 0);
    let d = decide(&i);
    assert_eq!(d.delete, vec!["w-c".to_string()]);
    assert!(
        d.drain_hook_pending.is_empty(),
        "a hard drain waits for no hook"
    );
    draining(&mut i, "w-c", false, 0);
    let l = i.listed.get_mut("w-c").expect("listed");
    l.labels
        .insert(DRAINING_LABEL.0.into(), DRAINING_LABEL.1.into());
    assert!(decide(&i).label_draining.is_empty());
}

#[test]
fn requests_drain_first_and_recycle_within_the_count() {
    let mut i = inputs(3);
    running(&mut i, &["w-a", "w-b", "w-c"]);
    let request = DrainRequest {
        reason: "kernel update".into(),
        hard: true,
        workflow_id: "wf1".into(),
        ..Default::default()
    };
    i.drain_requests.insert("w-b".into(), request.clone());
    i.drain_requests.insert("w-gone".into(), request);
    let d = decide(&i);
    assert_eq!(d.drain.len(), 1, "{d:?}");
    let start = &d.drain[0];
    assert_eq!(
        (
            start.name.as_str(),
            start.cause,
            start.hard,
            start.workflow_id.as_str()
        ),
        ("w-b", DrainCause::Request, true, "wf1")
    );
    assert_eq!(d.create, 0, "the replacement comes once it is deleted");
    assert_eq!(d.stale_requests, vec!["w-gone".to_string()]);
    // Scaling down by one while it is asked for: the requested VM is the one that goes.
    i.desired = 2;
    let d = decide(&i);
    assert_eq!(removed(&d), vec!["w-b".to_string()], "{d:?}");
}

#[test]
fn a_draining_vm_that_is_preempted_is_deleted_not_restarted() {
    let mut i = inputs(2);
    i.on_preempted = OnPreempted::Restart;
    running(&mut i, &["w-a", "w-b"]);
    draining(&mut i, "w-b", false, 0);
    i.listed.get_mut("w-b").expect("listed").status = S::Terminated;
    let d = decide(&i);
    assert!(d.restart.is_empty() && d.resume.is_empty(), "{d:?}");
    assert_eq!(d.delete, vec!["w-b".to_string()], "its drain ends now");
    assert!(d.drain_hook_pending.is_empty(), "{d:?}");
    // Gone on its own: it holds no place, and its replacement comes.
    assert_eq!((d.live, d.create), (1, 1), "{d:?}");
    // Asked to drain and preempted before its drain began: deleted, not restarted.
    let mut i = inputs(2);
    i.on_preempted = OnPreempted::Restart;
    running(&mut i, &["w-a", "w-b"]);
    i.drain_requests
        .insert("w-b".into(), DrainRequest::default());
    i.listed.get_mut("w-b").expect("listed").status = S::Terminated;
    let d = decide(&i);
    assert!(d.restart.is_empty(), "{d:?}");
    assert_eq!(d.delete, vec!["w-b".to_string()], "{d:?}");
}

#[test]
fn a_shed_waits_until_the_count_leaves_it_out_and_is_never_replaced() {
    let mut i = inputs(3);
    running(&mut i, &["w-a", "w-b", "w-c"]);
    let shed = DrainRequest {
        reason: "shed".into(),
        hard: true,
        workflow_id: "wf2".into(),
        shed: true,
        ..Default::default()
    };
    i.drain_requests.insert("w-b".into(), shed);
    // The scheduler has not lowered the count for it yet: nothing moves.
    let d = decide(&i);
    assert!(d.drain.is_empty() && d.delete.is_empty(), "{d:?}");
    assert_eq!((d.live, d.create), (3, 0), "{d:?}");
    // Nor is another VM taken in its place when the count drops for another reason.
    i.desired = 2;
    let d = decide(&i);
    assert_eq!(removed(&d), vec!["w-c".to_string()], "{d:?}");
    // The count leaves it out: it drains, and no other VM goes with it.
    i.desired = 2;
    i.shed_counted.insert("w-b".into());
    let d = decide(&i);
    assert_eq!(removed(&d), vec!["w-b".to_string()], "{d:?}");
    assert_eq!(d.create, 0, "{d:?}");
    // Gone: the zone holds its count, and no replacement comes.
    i.listed.remove("w-b");
    i.observed.remove("w-b");
    let d = decide(&i);
    assert_eq!((d.live, d.create), (2, 0), "{d:?}");
    assert_eq!(d.stale_requests, vec!["w-b".to_string()]);
}

#[test]
fn a_label_change_updates_the_key() {
    let mut i = inputs(1);
    running(&mut i, &["w-a"]);
    assert!(decide(&i).update.is_empty());
    let l = i.listed.get_mut("w-a").expect("listed");
    l.labels.insert("tier".into(), "batch".into());
    l.labels
        .insert(DRAINING_LABEL.0.into(), DRAINING_LABEL.1.into());
    assert_eq!(
        decide(&i).update,
        vec![("w-a".to_string(), InstanceState::Running)]
    );
    i.observed.get_mut("w-a").expect("observed").labels =
        [("tier".to_string(), "batch".to_string())].into();
    assert!(decide(&i).update.is_empty(), "pm-state is not recorded");
}
