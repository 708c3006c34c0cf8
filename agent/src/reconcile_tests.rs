//! Reconcile passes against the in-process fake, with paused time: each test drives a
//! pass, runs its operations as the loop does, and feeds failures to the reaction.

use pm_gce::compute::ApiCall;
use pm_gce::error::{ErrorClass, GceError};
use pm_gce::fake::FakeCompute;
use pm_gce::resources::{Instance, InstanceStatus};
use pm_pool::HookEvent;
use pm_proto::{Hooks, ObservedInstance, OnPreempted, PoolConfig, ZoneDesired};

use pm_etcd::testing::stored;
use pm_etcd::{Keyspace, Stamped, StoredKey, WatchBatch, WatchEvent, ZoneKeys};

use super::*;
use crate::decide::InFlight;
use crate::failure::{react, Action};
use crate::operations::{run, Op, Outcome, Slots};

const ZONE: &str = "zone-a";
const PROJECT: &str = "proj";
const TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn config(on_preempted: OnPreempted) -> PoolConfig {
    PoolConfig {
        target_vm_count: 2,
        allowed_zones: vec![ZONE.into()],
        prefix: "w-".into(),
        instance_json: r#"{"machineType": "zones/{zone}/machineTypes/e2-small"}"#.into(),
        project: PROJECT.into(),
        on_preempted: on_preempted as i32,
        ..Default::default()
    }
}

/// A pool as a pass sees it: the agent's state and the pool's keys in the zone.
struct Pool {
    state: PoolState,
    keys: ZoneKeys,
}

fn state(desired: i64, on_preempted: OnPreempted) -> Pool {
    Pool {
        state: PoolState {
            config: Some(config(on_preempted)),
            ..Default::default()
        },
        keys: ZoneKeys {
            desired: Some(Stamped {
                value: ZoneDesired {
                    count: desired,
                    accept_new: true,
                    ..Default::default()
                },
                mod_revision: 1,
            }),
            ..Default::default()
        },
    }
}

fn observe(pool: &mut Pool, name: &str, o: ObservedInstance) {
    let stamped = Stamped {
        value: o,
        mod_revision: 1,
    };
    pool.keys.instances.insert(name.into(), stamped);
}

fn running(name: &str) -> ObservedInstance {
    ObservedInstance {
        state: InstanceState::Running as i32,
        gce_id: format!("id-{name}"),
        ..Default::default()
    }
}

fn put(fake: &FakeCompute, name: &str, status: InstanceStatus) {
    let mut instance: Instance =
        serde_json::from_value(serde_json::json!({ "name": name })).expect("instance");
    instance.labels.insert("pm-pool".into(), "web".into());
    instance.status = Some(status);
    instance.id = Some(format!("id-{name}"));
    fake.put_instance(PROJECT, ZONE, instance);
}

async fn pass(fake: &FakeCompute, state: &mut PoolState, keys: &ZoneKeys) -> Pass {
    let ctx = PassContext {
        compute: fake,
        zone: ZONE,
        agent_id: "agent-1",
        default_project: None,
        operation_timeout: TIMEOUT,
    };
    match start_pass(&ctx, "web", state, keys) {
        Start::Done(pass) => pass,
        Start::List(request) => {
            let projects = request.projects();
            let adopt = request.adopt_filter.as_deref();
            let listed =
                list_projects(ctx.compute, &projects, ctx.zone, &request.filter, adopt).await;
            continue_pass(&ctx, "web", state, keys, request, listed).await
        }
    }
}

async fn effects_of(fake: &FakeCompute, pool: &mut Pool) -> Effects {
    let pass = pass(fake, &mut pool.state, &pool.keys).await;
    assert!(pass.listed, "{:?}", pass.reports);
    let (project, fx) = pass.effects.expect("effects");
    assert_eq!(project, PROJECT);
    fx
}

/// Runs the operations of `fx` as the loop does, one slot, and returns their outcomes.
async fn operate(fake: &FakeCompute, fx: Effects) -> Vec<(String, InFlight, Outcome)> {
    let slots = Slots::new(1, 1);
    let mut ops: Vec<(String, Op)> = Vec::new();
    for insert in fx.creates.into_iter().chain(fx.resumes) {
        let op = Op::Insert {
            request_id: insert.request_id,
            instance: Box::new(insert.instance),
            gate: None,
        };
        ops.push((insert.name, op));
    }
    ops.extend(fx.restarts.into_iter().map(|n| (n, Op::Start)));
    ops.extend(fx.resumes_suspended.into_iter().map(|n| (n, Op::Resume)));
    ops.extend(fx.deletes.into_iter().map(|n| (n, Op::Delete)));
    ops.extend(fx.claims.into_iter().map(|c| {
        let op = Op::SetLabels {
            labels: c.labels,
            fingerprint: c.fingerprint,
        };
        (c.name, op)
    }));
    let mut outcomes = Vec::new();
    for (name, op) in ops {
        let outcome = run(fake, slots.clone(), PROJECT, ZONE, &name, &op, TIMEOUT).await;
        outcomes.push((name, op.kind(), outcome));
    }
    outcomes
}

fn failure(outcome: &Outcome) -> &GceError {
    match outcome {
        Outcome::Failed(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_stockout_in_the_operation_reports_the_zone_and_forgets_the_intent() {
    let fake = FakeCompute::new();
    let mut pool = state(1, OnPreempted::Delete);
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(fx.creates.len(), 1);
    let intent = fx.writes[&fx.creates[0].name].clone().expect("intent");
    assert_eq!(intent.request_id, fx.creates[0].request_id);
    fake.fail_next_operation(ApiCall::Insert, "ZONE_RESOURCE_POOL_EXHAUSTED", 503);
    let outcomes = operate(&fake, fx).await;
    let error = failure(&outcomes[0].2);
    assert_eq!(error.class(), ErrorClass::Stockout);
    let reaction = react(outcomes[0].1, error, || Duration::from_secs(1));
    assert_eq!(reaction.action, Action::Stockout);
    assert!(reaction.forget_intent);
    assert!(fake.instances(PROJECT, ZONE).is_empty());

    pool.state
        .pause_creates(pool.state.exhaustion_base(), "stockout".into(), true);
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.creates.is_empty(), "creates stay paused");
    tokio::time::advance(pool.state.exhaustion_base()).await;
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(
        fx.creates.len(),
        1,
        "the pause ends with the exhaustion base"
    );
}

fn quota() -> GceError {
    GceError::http(
        ApiCall::Insert,
        403,
        "quotaExceeded",
        "Quota 'CPUS' exceeded",
    )
}

/// Sends the fresh creates of `fx` as the loop does: behind the pool's gate, one slot,
/// each outcome fed back to the pool's state at once. Returns the kinds of the events of
/// state changes.
async fn create_gated(fake: &FakeCompute, pool: &mut Pool, fx: Effects) -> Vec<&'static str> {
    let slots = Slots::new(1, 1);
    let gate = pool.state.create_gate.clone();
    let mut changes = Vec::new();
    for insert in fx.creates {
        let op = Op::Insert {
            request_id: insert.request_id,
            instance: Box::new(insert.instance),
            gate: Some(gate.clone()),
        };
        let outcome = run(
            fake,
            slots.clone(),
            PROJECT,
            ZONE,
            &insert.name,
            &op,
            TIMEOUT,
        )
        .await;
        let change = match outcome {
            Outcome::Done(_) => pool.state.create_succeeded(),
            Outcome::Failed(e) => {
                let reaction = react(InFlight::Creating, &e, || panic!("its own back-off"));
                assert_eq!(reaction.action, Action::Throttle, "{e}");
                pool.state.throttle_creates(&e)
            }
            Outcome::NotSent => None,
        };
        changes.extend(change.map(|r| r.kind));
    }
    changes
}

/// Advances the clock to the end of the pool's create pause.
async fn until_the_pause_ends(pool: &Pool) {
    let until = pool.state.pause.as_ref().expect("paused").until;
    tokio::time::advance(until.saturating_duration_since(tokio::time::Instant::now())).await;
}

#[tokio::test(start_paused = true)]
async fn a_quota_storm_sends_one_probe_per_back_off_then_ramps_up_as_probes_succeed() {
    const REFUSED: usize = 4;
    let fake = FakeCompute::new();
    let mut pool = state(20, OnPreempted::Delete);
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(fx.creates.len(), 20);
    for _ in 0..REFUSED {
        fake.fail_next(Some(ApiCall::Insert), quota());
    }
    let changes = create_gated(&fake, &mut pool, fx).await;
    assert_eq!(
        fake.calls_of(ApiCall::Insert).len(),
        1,
        "the refusal cancels the creates still queued"
    );
    assert_eq!(changes, ["creates-throttled"]);
    let until = pool.state.pause.as_ref().expect("paused").until;
    let paused = pass(&fake, &mut pool.state, &pool.keys).await;
    assert!(paused.effects.expect("effects").1.creates.is_empty());
    assert!(
        paused.next_sync <= until,
        "the pass after the pause is not a rest later"
    );
    let mut probes = Vec::new();
    for _ in 1..REFUSED {
        until_the_pause_ends(&pool).await;
        let fx = effects_of(&fake, &mut pool).await;
        probes.push(fx.creates.len());
        let started = tokio::time::Instant::now();
        let changes = create_gated(&fake, &mut pool, fx).await;
        assert!(changes.is_empty(), "no event per refusal: {changes:?}");
        let until = pool.state.pause.as_ref().expect("paused").until;
        assert!(until - started <= crate::throttle::QUOTA_BACKOFF.max());
    }
    assert_eq!(probes, [1, 1, 1], "one probe insert per back-off");

    // The quota is back: the next probe succeeds and creates ramp up round by round.
    until_the_pause_ends(&pool).await;
    let mut rounds = Vec::new();
    let mut changes = Vec::new();
    loop {
        let fx = effects_of(&fake, &mut pool).await;
        if fx.creates.is_empty() {
            break;
        }
        rounds.push(fx.creates.len());
        changes.extend(create_gated(&fake, &mut pool, fx).await);
    }
    assert_eq!(rounds, [1, 2, 4, 8, 5]);
    assert_eq!(changes, ["creates-unthrottled"]);
    assert_eq!(fake.instances(PROJECT, ZONE).len(), 20);
    assert_eq!(fake.calls_of(ApiCall::Insert).len(), REFUSED + 20);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_the_probe_back() {
    let fake = FakeCompute::new();
    let mut pool = state(3, OnPreempted::Delete);
    let fx = effects_of(&fake, &mut pool).await;
    let mut told = quota();
    if let GceError::Http { retry_after, .. } = &mut told {
        *retry_after = Some(Duration::from_secs(40));
    }
    fake.fail_next(Some(ApiCall::Insert), told);
    create_gated(&fake, &mut pool, fx).await;
    tokio::time::advance(Duration::from_secs(39)).await;
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.creates.is_empty(), "GCE said 40 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(fx.creates.len(), 1, "then one probe");
}

#[tokio::test(start_paused = true)]
async fn list_failures_and_create_failures_back_off_apart() {
    let fake = FakeCompute::new();
    let mut pool = state(1, OnPreempted::Delete);
    let unavailable = |call| GceError::http(call, 503, "backendError", "try later");
    for _ in 0..6 {
        fake.fail_next(Some(ApiCall::List), unavailable(ApiCall::List));
        let failed = pass(&fake, &mut pool.state, &pool.keys).await;
        assert!(!failed.listed);
    }
    let reaction = react(InFlight::Creating, &unavailable(ApiCall::Insert), || {
        pool.state.create_retry.next_delay()
    });
    let Action::BackOff { delay, .. } = reaction.action else {
        panic!("{reaction:?}")
    };
    assert!(
        delay <= crate::pool_state::CREATE_BACKOFF.base(),
        "the first create failure waits the first delay, not one grown by lists: {delay:?}"
    );
    fake.fail_next(Some(ApiCall::List), unavailable(ApiCall::List));
    let now = tokio::time::Instant::now();
    let failed = pass(&fake, &mut pool.state, &pool.keys).await;
    assert!(
        failed.next_sync >= now + Duration::from_secs(32),
        "the lists' own back-off goes on growing"
    );
    assert_eq!(effects_of(&fake, &mut pool).await.creates.len(), 1);
    fake.fail_next(Some(ApiCall::List), unavailable(ApiCall::List));
    let now = tokio::time::Instant::now();
    let failed = pass(&fake, &mut pool.state, &pool.keys).await;
    assert!(
        failed.next_sync <= now + crate::pool_state::LIST_BACKOFF.base(),
        "a list that succeeds starts the list back-off over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_list_backs_the_pass_off() {
    let fake = FakeCompute::new();
    let mut pool = state(1, OnPreempted::Delete);
    fake.fail_next(
        Some(ApiCall::List),
        GceError::http(
            ApiCall::List,
            429,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
        ),
    );
    let now = tokio::time::Instant::now();
    let first = pass(&fake, &mut pool.state, &pool.keys).await;
    assert!(!first.listed && first.effects.is_none());
    assert_eq!(first.reports[0].kind, "gce-error");
    assert!(first.next_sync <= now + Duration::from_secs(1));
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(fx.creates.len(), 1, "the next pass lists and creates");
    fake.fail_next(
        Some(ApiCall::Insert),
        GceError::http(
            ApiCall::Insert,
            429,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
        ),
    );
    let outcomes = operate(&fake, fx).await;
    let reaction = react(InFlight::Creating, failure(&outcomes[0].2), || {
        panic!("a rate-limited create has the throttle's back-off")
    });
    assert_eq!(reaction.action, Action::Throttle);
}

#[tokio::test(start_paused = true)]
async fn a_slow_insert_is_followed_in_the_lists_not_repeated() {
    let fake = FakeCompute::new();
    fake.hang_operations(true);
    let mut pool = state(1, OnPreempted::Delete);
    let fx = effects_of(&fake, &mut pool).await;
    let intent = fx.writes.clone();
    let name = fx.creates[0].name.clone();
    let outcomes = operate(&fake, fx).await;
    let error = failure(&outcomes[0].2);
    assert!(
        matches!(error, GceError::OperationTimeout { .. }),
        "{error}"
    );
    let reaction = react(InFlight::Creating, error, || panic!("no back-off"));
    assert_eq!(reaction.action, Action::FollowInLists);
    assert!(!reaction.forget_intent, "the intent stays");
    for (n, o) in intent {
        observe(&mut pool, &n, o.expect("intent"));
    }
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.creates.is_empty() && fx.resumes.is_empty(), "{fx:?}");
    let recorded = fx.writes[&name].clone().expect("updated");
    assert_eq!(recorded.state(), InstanceState::Running, "seen in the list");
    assert_eq!(fake.calls_of(ApiCall::Insert).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_delete_is_finished() {
    let fake = FakeCompute::new();
    let mut pool = state(0, OnPreempted::Delete);
    put(&fake, "w-a", InstanceStatus::Running);
    let mut deleting = running("w-a");
    deleting.state = InstanceState::Deleting as i32;
    observe(&mut pool, "w-a", deleting.clone());
    observe(&mut pool, "w-b", deleting);
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(fx.deletes, ["w-a"]);
    assert_eq!(fx.writes["w-b"], None, "the delete that finished unseen");
    assert_eq!(fx.notices[0].hook, Some(HookEvent::Delete));
    let outcomes = operate(&fake, fx).await;
    assert!(matches!(outcomes[0].2, Outcome::Done(_)));
    assert!(fake.instances(PROJECT, ZONE).is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_intent_of_an_old_revision_is_kept_not_sent_with_the_new_template() {
    let fake = FakeCompute::new();
    let mut pool = state(1, OnPreempted::Delete);
    observe(
        &mut pool,
        "w-a",
        ObservedInstance {
            state: InstanceState::Provisioning as i32,
            request_id: pm_gce::request_id_for("w-a"),
            created_unix_ms: now_unix_ms(),
            revision: "0123456789".into(),
            ..Default::default()
        },
    );
    let fx = effects_of(&fake, &mut pool).await;
    assert!(
        fx.resumes.is_empty(),
        "not sent with the new template: {fx:?}"
    );
    assert!(
        !fx.writes.contains_key("w-a"),
        "its key stays until it expires"
    );
    assert!(fx.creates.is_empty(), "it holds its place: {fx:?}");
}

#[tokio::test(start_paused = true)]
async fn an_intent_from_an_earlier_term_is_resumed_or_adopted() {
    let fake = FakeCompute::new();
    let mut pool = state(2, OnPreempted::Delete);
    let revision = pool
        .state
        .config
        .as_ref()
        .map(pm_pool::revision)
        .unwrap_or_default();
    let intent = |name: &str| ObservedInstance {
        state: InstanceState::Provisioning as i32,
        request_id: pm_gce::request_id_for(name),
        created_unix_ms: now_unix_ms(),
        revision: revision.clone(),
        ..Default::default()
    };
    observe(&mut pool, "w-a", intent("w-a"));
    put(&fake, "w-b", InstanceStatus::Staging);
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.creates.is_empty(), "no duplicate: {fx:?}");
    assert_eq!(fx.resumes.len(), 1);
    assert_eq!(fx.resumes[0].request_id, pm_gce::request_id_for("w-a"));
    let adopted = fx.writes["w-b"].clone().expect("adopted");
    assert_eq!(
        (adopted.state(), adopted.gce_id.as_str()),
        (InstanceState::Staging, "id-w-b")
    );
    operate(&fake, fx).await;
    let resumed = fake.calls_of(ApiCall::Insert);
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0].request_id.as_deref(),
        Some(pm_gce::request_id_for("w-a").as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn restart_mode_starts_a_preempted_instance_without_a_replacement() {
    let fake = FakeCompute::new();
    let mut pool = state(1, OnPreempted::Restart);
    put(&fake, "w-a", InstanceStatus::Running);
    observe(&mut pool, "w-a", running("w-a"));
    assert!(fake.record_preemption(PROJECT, ZONE, "w-a"));
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(fx.restarts, ["w-a"]);
    assert!(fx.creates.is_empty() && fx.deletes.is_empty());
    assert_eq!(fx.notices[0].kind, "preempted");
    assert!(fx.writes["w-a"].as_ref().is_some_and(|o| o.preempted));
    let outcomes = operate(&fake, fx).await;
    assert!(matches!(outcomes[0].2, Outcome::Done(_)));
    assert_eq!(fake.calls_of(ApiCall::Start).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn restart_mode_resumes_a_suspended_instance() {
    let fake = FakeCompute::new();
    let mut pool = state(1, OnPreempted::Restart);
    put(&fake, "w-a", InstanceStatus::Suspended);
    observe(&mut pool, "w-a", running("w-a"));
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(fx.resumes_suspended, ["w-a"]);
    assert!(fx.creates.is_empty() && fx.restarts.is_empty() && fx.deletes.is_empty());
    let outcomes = operate(&fake, fx).await;
    assert!(
        matches!(outcomes[0].2, Outcome::Done(_)),
        "{:?}",
        outcomes[0].2
    );
    assert_eq!(fake.calls_of(ApiCall::Resume).len(), 1);
    let status = fake.instances(PROJECT, ZONE)[0].status;
    assert_eq!(status, Some(InstanceStatus::Running));
}

#[tokio::test(start_paused = true)]
async fn an_instance_in_an_unknown_status_is_logged_once_and_left_alone() {
    let fake = FakeCompute::new();
    let mut pool = state(1, OnPreempted::Delete);
    put(&fake, "w-a", InstanceStatus::Unrecognized);
    observe(&mut pool, "w-a", running("w-a"));
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.deletes.is_empty() && fx.restarts.is_empty(), "{fx:?}");
    assert!(!fx.writes.contains_key("w-a"), "its key stays as it was");
    assert_eq!(fx.creates.len(), 1, "not live: replaced");
    assert!(pool.state.unrecognized_logged.contains("w-a"));
    fake.set_status(PROJECT, ZONE, "w-a", InstanceStatus::Running);
    effects_of(&fake, &mut pool).await;
    assert!(
        pool.state.unrecognized_logged.is_empty(),
        "forgotten once GCE shows it known"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_config_is_reported_once_and_the_last_valid_one_kept() {
    let fake = FakeCompute::new();
    let mut pools = crate::pool_state::Pools::new(ZONE, Keyspace::default());
    let keys = Keyspace::default();
    let key = keys.pool_config("web").expect("key");
    let stored = |config: &PoolConfig, revision: i64| {
        stored(key.clone(), prost::Message::encode_to_vec(config), revision)
    };
    let put = |kv: StoredKey| WatchBatch::Events(vec![WatchEvent::Put(kv)]);
    let good = config(OnPreempted::Delete);
    pools.apply_span(put(stored(&good, 2)), ("", &[0xff]));
    let mut bad = good.clone();
    bad.hooks = Some(Hooks {
        create: "../escape".into(),
        ..Default::default()
    });
    pools.apply_span(put(stored(&bad, 3)), ("", &[0xff]));
    let undecodable = StoredKey {
        value: b"\xff\xff garbage".to_vec(),
        ..stored(&good, 4)
    };
    let (state, zone) = pools.state_and_keys("web");
    assert_eq!(
        state.config.as_ref(),
        Some(&good),
        "the last valid config stays"
    );
    let first = pass(&fake, state, zone).await;
    assert_eq!(first.reports.len(), 1, "{:?}", first.reports);
    assert_eq!(first.reports[0].kind, "invalid-config");
    assert!(first.reports[0].message.contains("hooks.create"));
    let second = pass(&fake, state, zone).await;
    assert!(second.reports.is_empty(), "reported once");
    pools.apply_span(put(undecodable), ("", &[0xff]));
    let (state, zone) = pools.state_and_keys("web");
    assert_eq!(state.config.as_ref(), Some(&good));
    let third = pass(&fake, state, zone).await;
    assert_eq!(third.reports.len(), 1, "a new problem is reported");
    pools.apply_span(put(stored(&good, 5)), ("", &[0xff]));
    assert!(pools.pools["web"].config_problem.is_none());
}

/// A VM named like the pool's without any pool label, as prevmtable made them.
fn put_unlabelled(fake: &FakeCompute, name: &str, labels: &[(&str, &str)]) {
    let mut instance: Instance =
        serde_json::from_value(serde_json::json!({ "name": name })).expect("instance");
    for (k, v) in labels {
        instance.labels.insert((*k).into(), (*v).into());
    }
    instance.status = Some(InstanceStatus::Running);
    instance.id = Some(format!("id-{name}"));
    fake.put_instance(PROJECT, ZONE, instance);
}

#[tokio::test(start_paused = true)]
async fn adopt_mode_labels_the_prefixed_vms_before_it_counts_and_creates() {
    let fake = FakeCompute::new();
    put_unlabelled(&fake, "w-old1", &[("team", "a")]);
    put_unlabelled(&fake, "w-other", &[("pm-pool", "db")]);
    put_unlabelled(&fake, "x-foreign", &[]);
    let mut pool = state(2, OnPreempted::Delete);
    // Without adopt mode the VM is not the pool's: two creates.
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!((fx.creates.len(), fx.claims.len()), (2, 0));

    let mut config = config(OnPreempted::Delete);
    config.adopt = true;
    pool.state.config = Some(config.clone());
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.creates.is_empty() && fx.writes.is_empty(), "{fx:?}");
    let names: Vec<&str> = fx.claims.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["w-old1"], "only the unlabelled prefixed VM");
    let outcomes = operate(&fake, fx).await;
    assert!(matches!(outcomes[0].2, Outcome::Done(_)), "{outcomes:?}");
    let adopted = fake
        .get(PROJECT, ZONE, "w-old1")
        .await
        .expect("get")
        .expect("there");
    assert_eq!(adopted.labels["pm-pool"], "web");
    assert_eq!(adopted.labels["pm-rev"], pm_pool::revision(&config));
    assert_eq!(adopted.labels["team"], "a", "its own labels are kept");
    let other = fake
        .get(PROJECT, ZONE, "w-other")
        .await
        .expect("get")
        .expect("there");
    assert_eq!(other.labels.get("pm-pool").map(String::as_str), Some("db"));

    // Now a member: recorded, and one create makes the count.
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.claims.is_empty());
    assert!(
        fx.writes.get("w-old1").is_some_and(Option::is_some),
        "{fx:?}"
    );
    assert_eq!(fx.creates.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_claim_with_a_stale_fingerprint_is_refused_and_decided_again() {
    let fake = FakeCompute::new();
    put_unlabelled(&fake, "w-old1", &[]);
    let mut pool = state(1, OnPreempted::Delete);
    let mut config = config(OnPreempted::Delete);
    config.adopt = true;
    pool.state.config = Some(config);
    let mut fx = effects_of(&fake, &mut pool).await;
    fx.claims[0].fingerprint = "stale".into();
    let outcomes = operate(&fake, fx).await;
    let error = failure(&outcomes[0].2);
    assert!(
        matches!(error, GceError::Http { status: 412, .. }),
        "{error}"
    );
    let fx = effects_of(&fake, &mut pool).await;
    assert_eq!(
        fx.claims.len(),
        1,
        "claimed again with the fresh fingerprint"
    );
    pool.state.label_refused.insert("w-old1".into());
    let fx = effects_of(&fake, &mut pool).await;
    assert!(fx.claims.is_empty());
    assert_eq!(
        fx.creates.len(),
        1,
        "a refused VM does not hold the pool back"
    );
}
