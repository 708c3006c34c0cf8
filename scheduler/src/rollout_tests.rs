use pm_proto::{
    Amount, ExhaustionClass, InstanceState, ObservedInstance, UpdatePolicy, ZoneExhaustion,
};

use super::*;
use crate::model::ZoneView;

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

fn config(machine: &str) -> PoolConfig {
    PoolConfig {
        target_vm_count: 6,
        allowed_zones: ZONES.iter().map(|z| z.to_string()).collect(),
        prefix: "w-".into(),
        instance_json: format!(r#"{{"machineType": "{machine}"}}"#),
        ..Default::default()
    }
}

fn count(n: u32) -> Option<Amount> {
    Some(Amount {
        value: n,
        percent: false,
    })
}

/// A view of `config` whose zones hold `(revision, running)` instances.
fn view(config: &PoolConfig, zones: &[(&str, &[(&str, bool)])]) -> PoolView {
    let mut view = PoolView {
        config: Some(config.clone()),
        ..Default::default()
    };
    for (zone, instances) in zones {
        let zv = view.zone_mut(zone);
        for (revision, running) in *instances {
            let state = if *running {
                InstanceState::Running
            } else {
                InstanceState::Provisioning
            };
            zv.counts.add(&ObservedInstance {
                state: state as i32,
                revision: revision.to_string(),
                ..Default::default()
            });
        }
    }
    view
}

fn all_usable(_: &str) -> bool {
    true
}

/// Steps the plan once and keeps the rollout it writes in the view.
fn step_view(view: &mut PoolView, now: i64) -> RolloutPlan {
    let plan = plan("web", view, all_usable, "s1", now);
    if let Some(next) = &plan.write {
        view.rollout = Some(next.clone());
    }
    plan
}

fn kinds(plan: &RolloutPlan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_pool_whose_vms_all_have_its_revision_is_complete_without_an_event() {
    let c = config("e2-small");
    let rev = pm_pool::revision(&c);
    let mut v = view(&c, &[("zone-a", &[(rev.as_str(), true)])]);
    let plan = step_view(&mut v, 1_000);
    let written = plan.write.expect("first write");
    assert_eq!(written.state(), RolloutState::Complete);
    assert_eq!(written.revision, rev);
    assert_eq!(written.history.len(), 1);
    assert!(plan.zones.is_empty() && plan.events.is_empty());
    let again = step_view(&mut v, 2_000);
    assert_eq!(again.write, None, "nothing changes, nothing is written");
}

#[test]
fn a_new_revision_shares_the_default_budgets_one_per_zone() {
    let old = config("e2-small");
    let old_rev = pm_pool::revision(&old);
    let o = old_rev.as_str();
    let c = config("e2-medium");
    let mut v = view(
        &c,
        &[
            ("zone-a", &[(o, true), (o, true)]),
            ("zone-b", &[(o, true), (o, true)]),
            ("zone-c", &[(o, true), (o, true)]),
        ],
    );
    let plan = step_view(&mut v, 1_000);
    assert_eq!(kinds(&plan), vec!["rollout-started"]);
    let rollout = v.rollout.clone().expect("written");
    assert_eq!(rollout.state(), RolloutState::Progressing);
    for zone in ZONES {
        let roll = &plan.zones[zone];
        assert_eq!(roll.revision, pm_pool::revision(&c));
        assert_eq!((roll.surge, roll.unavailable, roll.paused), (1, 0, false));
    }
}

#[test]
fn a_small_surge_goes_to_the_zone_with_most_old_and_unavailability_to_the_rest() {
    let o = "old1";
    let mut c = config("e2-medium");
    c.update = Some(UpdatePolicy {
        max_surge: count(1),
        max_unavailable: count(1),
        ..Default::default()
    });
    let mut v = view(
        &c,
        &[
            ("zone-a", &[(o, true)]),
            ("zone-b", &[(o, true), (o, true), (o, true)]),
            ("zone-c", &[(o, true), (o, true)]),
        ],
    );
    let plan = step_view(&mut v, 1_000);
    let part = |z: &str| plan.zones.get(z).map(|r| (r.surge, r.unavailable));
    assert_eq!(part("zone-b"), Some((1, 0)), "most old VMs first");
    assert_eq!(part("zone-c"), Some((0, 1)));
    assert_eq!(
        part("zone-a"),
        Some((0, 0)),
        "in the rollout, nothing to spend"
    );
    let surge: u32 = plan.zones.values().map(|r| r.surge).sum();
    let unavailable: u32 = plan.zones.values().map(|r| r.unavailable).sum();
    assert_eq!((surge, unavailable), (1, 1), "never over the budgets");
}

#[test]
fn a_zone_keeps_its_allotment_until_it_has_no_old_vm_then_it_moves() {
    let o = "old1";
    let mut c = config("e2-medium");
    let new = pm_pool::revision(&c);
    let n = new.as_str();
    c.update = Some(UpdatePolicy {
        max_surge: count(1),
        max_unavailable: count(0),
        ..Default::default()
    });
    let mut v = view(
        &c,
        &[
            ("zone-a", &[(o, true), (o, true)]),
            ("zone-b", &[(o, true)]),
        ],
    );
    let plan = step_view(&mut v, 1_000);
    assert_eq!(plan.zones["zone-a"].surge, 1);
    assert_eq!(plan.zones["zone-b"].surge, 0);
    // zone-b cannot take it while zone-a still has an old VM, whatever zone-b shows.
    let mut later = view(
        &c,
        &[
            ("zone-a", &[(o, true), (n, true), (n, false)]),
            ("zone-b", &[(o, true)]),
        ],
    );
    later.rollout = v.rollout.clone();
    let plan = step_view(&mut later, 2_000);
    assert_eq!(plan.zones["zone-a"].surge, 1);
    assert_eq!(plan.zones["zone-b"].surge, 0);
    // zone-a done: its allotment moves to zone-b.
    let mut done = view(
        &c,
        &[
            ("zone-a", &[(n, true), (n, true)]),
            ("zone-b", &[(o, true)]),
        ],
    );
    done.rollout = later.rollout.clone();
    let plan = step_view(&mut done, 3_000);
    assert_eq!(plan.zones.get("zone-a"), None, "no rollout left in zone-a");
    assert_eq!(plan.zones["zone-b"].surge, 1);
}

#[test]
fn an_unusable_zone_gets_no_new_allotment() {
    let o = "old1";
    let c = config("e2-medium");
    let v = view(&c, &[("zone-a", &[(o, true)]), ("zone-b", &[(o, true)])]);
    let plan = plan("web", &v, |z| z != "zone-a", "s1", 1_000);
    assert_eq!(plan.zones["zone-a"].surge, 0);
    assert_eq!(plan.zones["zone-b"].surge, 1);
}

#[test]
fn a_zone_refusing_the_new_revision_pauses_the_rollout_until_resumed() {
    let o = "old1";
    let mut c = config("e2-medium");
    let mut v = view(&c, &[("zone-a", &[(o, true)]), ("zone-b", &[(o, true)])]);
    step_view(&mut v, 1_000);
    v.zone_mut("zone-a").exhausted = Some(ZoneExhaustion {
        since_unix_ms: 2_000,
        class: ExhaustionClass::ZoneError as i32,
        reason: "Invalid value for field 'resource.machineType'".into(),
        ..Default::default()
    });
    let plan = step_view(&mut v, 2_500);
    assert_eq!(kinds(&plan), vec!["rollout-paused"]);
    assert_eq!(plan.events[0].severity, Severity::Error);
    let rollout = v.rollout.clone().expect("rollout");
    assert_eq!(rollout.state(), RolloutState::Failed);
    assert!(
        rollout.reason.contains("zone zone-a refuses"),
        "{}",
        rollout.reason
    );
    assert!(plan.zones.values().all(|r| r.paused), "{:?}", plan.zones);
    assert_eq!(step_view(&mut v, 3_000).write, None, "stays paused, once");
    v.zone_mut("zone-a").exhausted = None;
    c.rollout_resumes = 1;
    v.config = Some(c);
    let plan = step_view(&mut v, 4_000);
    assert_eq!(kinds(&plan), vec!["rollout-resumed"]);
    assert!(plan.zones.values().all(|r| !r.paused));
}

#[test]
fn no_new_vm_running_within_the_deadline_pauses_the_rollout() {
    let o = "old1";
    let mut c = config("e2-medium");
    c.update = Some(UpdatePolicy {
        progress_deadline_seconds: 60,
        ..Default::default()
    });
    let new = pm_pool::revision(&c);
    let mut v = view(&c, &[("zone-a", &[(o, true), (new.as_str(), false)])]);
    step_view(&mut v, 1_000);
    assert!(
        step_view(&mut v, 60_000).events.is_empty(),
        "within the deadline"
    );
    let plan = step_view(&mut v, 61_000);
    assert_eq!(kinds(&plan), vec!["rollout-paused"]);
    let rollout = v.rollout.clone().expect("rollout");
    assert!(
        rollout.reason.contains("RUNNING within 60 s"),
        "{}",
        rollout.reason
    );
}

#[test]
fn pmctl_pauses_and_resumes_and_the_last_old_vm_completes_it() {
    let o = "old1";
    let mut c = config("e2-medium");
    let new = pm_pool::revision(&c);
    let mut v = view(&c, &[("zone-a", &[(o, true)])]);
    step_view(&mut v, 1_000);
    c.rollout_paused = true;
    v.config = Some(c.clone());
    let plan = step_view(&mut v, 2_000);
    assert_eq!(kinds(&plan), vec!["rollout-paused"]);
    assert_eq!(
        v.rollout.as_ref().map(Rollout::state),
        Some(RolloutState::Paused)
    );
    assert!(plan.zones["zone-a"].paused);
    assert_eq!(
        plan.zones["zone-a"].surge, 1,
        "the allotment is kept while paused"
    );
    c.rollout_paused = false;
    v.config = Some(c.clone());
    assert_eq!(kinds(&step_view(&mut v, 3_000)), vec!["rollout-resumed"]);
    let mut done = view(&c, &[("zone-a", &[(new.as_str(), true)])]);
    done.rollout = v.rollout.clone();
    let plan = step_view(&mut done, 4_000);
    assert_eq!(kinds(&plan), vec!["rollout-completed"]);
    let rollout = done.rollout.expect("rollout");
    assert_eq!(rollout.state(), RolloutState::Complete);
    assert!(rollout.allotments.is_empty() && plan.zones.is_empty());
}

#[test]
fn a_change_mid_rollout_retargets_and_keeps_the_allotments() {
    let o = "old1";
    let policy = Some(UpdatePolicy {
        max_surge: count(1),
        ..Default::default()
    });
    let mut c1 = config("e2-medium");
    c1.update.clone_from(&policy);
    let r1 = pm_pool::revision(&c1);
    let mut v = view(&c1, &[("zone-a", &[(o, true), (r1.as_str(), false)])]);
    step_view(&mut v, 1_000);
    let mut c2 = config("e2-large");
    c2.update = policy;
    let mut v2 = view(&c2, &[("zone-a", &[(o, true), (r1.as_str(), false)])]);
    v2.rollout = v.rollout.clone();
    let plan = step_view(&mut v2, 2_000);
    assert_eq!(kinds(&plan), vec!["rollout-started"]);
    let rollout = v2.rollout.clone().expect("rollout");
    assert_eq!(rollout.revision, pm_pool::revision(&c2));
    assert_eq!(rollout.allotments["zone-a"].surge, 1, "no second budget");
    assert_eq!(rollout.history.len(), 2);
}

#[test]
fn the_history_keeps_the_last_revisions_once_each() {
    let mut history = Vec::new();
    for (i, machine) in ["a", "b", "c", "d", "e", "f", "b"].iter().enumerate() {
        let c = config(machine);
        remember(&mut history, &c, &pm_pool::revision(&c), i as i64);
    }
    assert_eq!(history.len(), HISTORY);
    let last = history.last().expect("last");
    assert_eq!(last.revision, pm_pool::revision(&config("b")));
    assert_eq!(
        history
            .iter()
            .filter(|r| r.instance_json.contains("\"b\""))
            .count(),
        1
    );
}

#[test]
fn an_opportunistic_rollout_replaces_nothing_on_purpose() {
    let o = "old1";
    let mut c = config("e2-medium");
    c.update = Some(UpdatePolicy {
        mode: UpdateMode::Opportunistic as i32,
        ..Default::default()
    });
    let mut v = view(&c, &[("zone-a", &[(o, true)])]);
    let plan = step_view(&mut v, 1_000);
    assert_eq!(kinds(&plan), vec!["rollout-started"]);
    assert!(plan.zones.is_empty(), "agents replace nothing");
    assert!(v.rollout.expect("rollout").allotments.is_empty());
}

#[test]
fn zone_views_without_config_plan_nothing() {
    let v = PoolView {
        zones: [("zone-a".to_string(), ZoneView::default())].into(),
        ..Default::default()
    };
    assert_eq!(plan("web", &v, all_usable, "s1", 1), RolloutPlan::default());
}

#[test]
fn old_vms_showing_up_in_a_complete_pool_start_a_rollout() {
    let c = config("e2-medium");
    let new = pm_pool::revision(&c);
    let mut v = view(&c, &[("zone-a", &[(new.as_str(), true)])]);
    step_view(&mut v, 1_000);
    let rollout = v.rollout.clone();
    let mut later = view(&c, &[("zone-a", &[(new.as_str(), true), ("", true)])]);
    later.rollout = rollout;
    let plan = step_view(&mut later, 2_000);
    assert_eq!(kinds(&plan), vec!["rollout-started"]);
    assert_eq!(plan.zones["zone-a"].surge, 1);
    assert_eq!(
        later.rollout.expect("rollout").history.len(),
        1,
        "one revision"
    );
}

fn desired(count: i64, accept_new: bool) -> Option<pm_proto::ZoneDesired> {
    Some(pm_proto::ZoneDesired {
        count,
        accept_new,
        ..Default::default()
    })
}

#[test]
fn an_unavailable_share_stays_until_the_zones_new_vms_run() {
    let mut c = config("e2-medium");
    c.update = Some(UpdatePolicy {
        max_surge: count(0),
        max_unavailable: count(1),
        ..Default::default()
    });
    let new = pm_pool::revision(&c);
    let n = new.as_str();
    let mut v = view(
        &c,
        &[
            ("zone-a", &[("old1", true), (n, true)]),
            ("zone-b", &[("old1", true)]),
        ],
    );
    v.zone_mut("zone-a").desired = desired(2, true);
    v.zone_mut("zone-b").desired = desired(1, true);
    let plan = step_view(&mut v, 1_000);
    assert_eq!(
        plan.zones["zone-a"].unavailable, 1,
        "most old first? {:?}",
        plan.zones
    );
    // zone-a deleted its last old VM ahead; its replacement still boots.
    let mut later = view(
        &c,
        &[
            ("zone-a", &[(n, true), (n, false)]),
            ("zone-b", &[("old1", true)]),
        ],
    );
    later.zone_mut("zone-a").desired = desired(2, true);
    later.zone_mut("zone-b").desired = desired(1, true);
    later.rollout = v.rollout.clone();
    let plan = step_view(&mut later, 2_000);
    assert_eq!(
        plan.zones["zone-b"].unavailable, 0,
        "not twice unavailable: {:?}",
        plan.zones
    );
    let mut done = view(
        &c,
        &[
            ("zone-a", &[(n, true), (n, true)]),
            ("zone-b", &[("old1", true)]),
        ],
    );
    done.zone_mut("zone-a").desired = desired(2, true);
    done.zone_mut("zone-b").desired = desired(1, true);
    done.rollout = later.rollout.clone();
    let plan = step_view(&mut done, 3_000);
    assert_eq!(
        plan.zones["zone-b"].unavailable, 1,
        "zone-a runs: the share moves"
    );
}

#[test]
fn shares_shrink_with_the_budgets_and_leave_zones_that_cannot_create() {
    let o = "old1";
    let mut c = config("e2-medium");
    let mut v = view(
        &c,
        &[
            ("zone-a", &[(o, true), (o, true)]),
            ("zone-b", &[(o, true), (o, true)]),
            ("zone-c", &[(o, true), (o, true)]),
        ],
    );
    for zone in ZONES {
        v.zone_mut(zone).desired = desired(2, true);
    }
    step_view(&mut v, 1_000);
    c.update = Some(UpdatePolicy {
        max_surge: count(1),
        ..Default::default()
    });
    v.config = Some(c);
    let plan = step_view(&mut v, 2_000);
    let surge: u32 = plan.zones.values().map(|r| r.surge).sum();
    assert_eq!(surge, 1, "{:?}", plan.zones);
    let holder = plan
        .zones
        .iter()
        .find(|(_, r)| r.surge == 1)
        .map(|(z, _)| z.clone());
    let holder = holder.expect("one zone keeps it");
    v.zone_mut(&holder).desired = desired(2, false);
    let plan = super::plan("web", &v, |z| z != holder, "s1", 3_000);
    assert_eq!(
        plan.zones[&holder].surge, 0,
        "it may not create: {:?}",
        plan.zones
    );
    let surge: u32 = plan.zones.values().map(|r| r.surge).sum();
    assert_eq!(surge, 1, "the share moved: {:?}", plan.zones);
}
