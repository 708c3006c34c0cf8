//! Operations in flight: each insert, delete or start runs in its own task, holding one
//! of `--max-concurrent` slots for the call and then one of `--max-waiting` slots for
//! the wait on its operation (a long poll, one connection each over HTTP/1.1), and
//! reports its outcome back to the loop. A fresh create refused for a stockout, quota or a rate limit
//! cancels the creates of its pool still queued for a slot. Every task ends when the
//! term does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pm_gce::compute::{wait_until_done, Compute};
use pm_gce::error::{ErrorClass, GceError};
use pm_gce::resources::Instance;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::decide::InFlight;

/// An operation to run on one instance.
#[derive(Debug)]
pub enum Op {
    /// `instances.insert` with the instance's requestId.
    Insert {
        /// Derived from the name; GCE de-duplicates retries with it.
        request_id: String,
        /// The rendered instance.
        instance: Box<Instance>,
        /// For fresh creates: skip the insert if this fired while waiting for a slot (a
        /// stockout, quota or a rate limit refused a create of the pool meanwhile).
        /// Resumed inserts have none: they are always sent.
        gate: Option<CancellationToken>,
    },
    /// `instances.delete`.
    Delete,
    /// `instances.start`.
    Start,
    /// `instances.resume` of a suspended instance.
    Resume,
    /// `instances.setLabels` claiming the instance (adopt mode).
    SetLabels {
        /// The labels to set.
        labels: BTreeMap<String, String>,
        /// The fingerprint of the labels GCE listed.
        fingerprint: String,
    },
}

impl Op {
    /// What the operation does, as the decisions count it.
    pub fn kind(&self) -> InFlight {
        match self {
            Op::Insert { .. } => InFlight::Creating,
            Op::Delete => InFlight::Deleting,
            Op::Start | Op::Resume => InFlight::Starting,
            Op::SetLabels { .. } => InFlight::Labelling,
        }
    }
}

/// What an operation task reports back.
#[derive(Debug)]
pub struct OpResult {
    /// Pool.
    pub pool: String,
    /// Instance.
    pub name: String,
    /// What it did.
    pub kind: InFlight,
    /// The outcome.
    pub outcome: Outcome,
}

/// How an operation ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done; for a create, GCE's id of the new instance, if told.
    Done(Option<String>),
    /// GCE refused it or it failed.
    Failed(GceError),
    /// A fresh create gave up before calling GCE (its pool's zone stocked out).
    NotSent,
}

/// The bounds of one term's operations.
#[derive(Clone)]
pub struct Slots {
    /// Calls in flight (`--max-concurrent`).
    calls: Arc<Semaphore>,
    /// Operations waited on at once (`--max-waiting`).
    waits: Arc<Semaphore>,
}

impl Slots {
    /// At most `calls` calls in flight and `waits` operations waited on at once.
    pub fn new(calls: usize, waits: usize) -> Self {
        Self {
            calls: Arc::new(Semaphore::new(calls.max(1))),
            waits: Arc::new(Semaphore::new(waits.max(1))),
        }
    }
}

/// Runs `op` on instance `name`: the call holds a call slot of `slots`, then waiting for
/// its operation (at most `timeout`) holds a wait slot. A fresh create refused for a stockout, quota
/// or a rate limit fires its gate at once, so the creates queued behind it give up
/// before they take the slot it frees (the loop hears of the refusal only later).
pub async fn run(
    compute: &dyn Compute,
    slots: Slots,
    project: &str,
    zone: &str,
    name: &str,
    op: &Op,
    timeout: Duration,
) -> Outcome {
    let outcome = call_and_wait(compute, slots, project, zone, name, op, timeout).await;
    if let (
        Outcome::Failed(e),
        Op::Insert {
            gate: Some(gate), ..
        },
    ) = (&outcome, op)
    {
        if matches!(
            e.class(),
            ErrorClass::Stockout | ErrorClass::Quota | ErrorClass::RateLimit
        ) {
            gate.cancel();
        }
    }
    outcome
}

/// [`run`] without the gate's reaction to a refusal.
async fn call_and_wait(
    compute: &dyn Compute,
    slots: Slots,
    project: &str,
    zone: &str,
    name: &str,
    op: &Op,
    timeout: Duration,
) -> Outcome {
    let started = {
        let Ok(_permit) = slots.calls.acquire_owned().await else {
            return Outcome::NotSent;
        };
        let call = match op {
            Op::Insert {
                request_id,
                instance,
                gate,
            } => {
                if gate.as_ref().is_some_and(CancellationToken::is_cancelled) {
                    return Outcome::NotSent;
                }
                compute
                    .insert(project, zone, instance, request_id)
                    .await
                    .map(Some)
            }
            Op::Delete => compute.delete(project, zone, name).await,
            Op::Start => compute.start(project, zone, name).await.map(Some),
            Op::Resume => compute.resume(project, zone, name).await.map(Some),
            Op::SetLabels {
                labels,
                fingerprint,
            } => compute
                .set_labels(project, zone, name, labels, fingerprint)
                .await
                .map(Some),
        };
        match call {
            Ok(started) => started,
            Err(e) => return Outcome::Failed(e),
        }
    };
    let Ok(_waiting) = slots.waits.acquire_owned().await else {
        return Outcome::NotSent;
    };
    match started {
        Some(started) => match wait_until_done(compute, project, started, timeout).await {
            Ok(done) => Outcome::Done(done.target_id),
            // A delete whose operation finds the instance gone did what it was for.
            Err(e @ GceError::OperationFailed { .. })
                if matches!(op, Op::Delete) && e.class() == ErrorClass::NotFound =>
            {
                Outcome::Done(None)
            }
            Err(e) => Outcome::Failed(e),
        },
        None => Outcome::Done(None),
    }
}

/// The operations of one term: spawns them and hands their results to the loop.
pub struct Operations {
    /// GCE.
    compute: Arc<dyn Compute>,
    /// Permits for calls in flight and operations waited on.
    slots: Slots,
    /// Results arrive here.
    results_tx: mpsc::UnboundedSender<OpResult>,
    /// Receiving end of `results_tx`; one result per spawned operation, so it holds at
    /// most as many as are in flight.
    results_rx: mpsc::UnboundedReceiver<OpResult>,
    /// Fires when the term ends; every operation task stops then.
    term: CancellationToken,
    /// The zone served.
    zone: String,
    /// Longest wait for one operation.
    timeout: Duration,
}

impl Operations {
    /// Operations against `compute` in `zone` within `slots`, ending when `term` fires.
    pub fn new(
        compute: Arc<dyn Compute>,
        slots: Slots,
        zone: &str,
        timeout: Duration,
        term: CancellationToken,
    ) -> Self {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Self {
            compute,
            slots,
            results_tx,
            results_rx,
            term,
            zone: zone.to_string(),
            timeout,
        }
    }

    /// Runs `op` on `name` of `pool` in the background.
    pub fn spawn(&self, pool: &str, project: &str, name: String, op: Op) {
        let compute = self.compute.clone();
        let slots = self.slots.clone();
        let tx = self.results_tx.clone();
        let term = self.term.clone();
        let zone = self.zone.clone();
        let project = project.to_string();
        let pool = pool.to_string();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let work = run(
                compute.as_ref(),
                slots,
                &project,
                &zone,
                &name,
                &op,
                timeout,
            );
            let outcome = tokio::select! {
                _ = term.cancelled() => return,
                outcome = work => outcome,
            };
            tx.send(OpResult {
                pool,
                name,
                kind: op.kind(),
                outcome,
            })
            .ok();
        });
    }

    /// The next result; pending while nothing is in flight.
    pub async fn next(&mut self) -> Option<OpResult> {
        self.results_rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use pm_gce::compute::ApiCall;
    use pm_gce::fake::FakeCompute;

    use super::*;

    fn insert(name: &str, gate: Option<CancellationToken>) -> Op {
        let instance: Instance =
            serde_json::from_value(serde_json::json!({ "name": name })).expect("instance");
        Op::Insert {
            request_id: pm_gce::request_id_for(name),
            instance: Box::new(instance),
            gate,
        }
    }

    /// Runs an insert of `w-a` against `fake`, one slot, waiting at most `timeout`.
    async fn insert_outcome(
        fake: &FakeCompute,
        gate: Option<CancellationToken>,
        timeout: Duration,
    ) -> Outcome {
        let slots = Slots::new(1, 1);
        let op = insert("w-a", gate);
        run(fake, slots, "p", "z-a", "w-a", &op, timeout).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_insert_is_done() {
        let fake = FakeCompute::new();
        let outcome = insert_outcome(&fake, None, Duration::from_secs(5)).await;
        assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
        assert_eq!(fake.instances("p", "z-a").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stockout_in_the_operation_fails_the_insert() {
        let fake = FakeCompute::new();
        fake.fail_next_operation(ApiCall::Insert, "ZONE_RESOURCE_POOL_EXHAUSTED", 503);
        let outcome = insert_outcome(&fake, None, Duration::from_secs(5)).await;
        let Outcome::Failed(e) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(e.class(), ErrorClass::Stockout);
        assert!(fake.instances("p", "z-a").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_that_never_finishes_times_out() {
        let fake = FakeCompute::new();
        fake.hang_operations(true);
        let outcome = insert_outcome(&fake, None, Duration::from_secs(30)).await;
        assert!(
            matches!(outcome, Outcome::Failed(GceError::OperationTimeout { .. })),
            "{outcome:?}"
        );
        assert!(fake.calls_of(ApiCall::WaitOperation).len() > 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_whose_operation_finds_nothing_succeeded() {
        let fake = FakeCompute::new();
        let instance: Instance =
            serde_json::from_value(serde_json::json!({ "name": "w-a" })).expect("instance");
        fake.put_instance("p", "z-a", instance);
        let not_found = |code: &str| GceError::OperationFailed {
            operation: "op-1".into(),
            operation_type: "delete".into(),
            target: "w-a".into(),
            http_status: Some(404),
            http_message: Some("NOT FOUND".into()),
            errors: vec![pm_gce::OperationErrorItem {
                code: code.into(),
                message: Some(
                    "The resource 'projects/p/zones/z-a/instances/w-a' was not found".into(),
                ),
                location: None,
                error_details: Vec::new(),
            }],
        };
        fake.hang_operations(true);
        fake.fail_next(
            Some(ApiCall::WaitOperation),
            not_found("RESOURCE_NOT_FOUND"),
        );
        let delete = || async {
            let slots = Slots::new(1, 1);
            run(
                &fake,
                slots,
                "p",
                "z-a",
                "w-a",
                &Op::Delete,
                Duration::from_secs(5),
            )
            .await
        };
        let outcome = delete().await;
        assert!(matches!(outcome, Outcome::Done(None)), "{outcome:?}");
        let gone = GceError::http(ApiCall::WaitOperation, 404, "notFound", "operation gone");
        fake.fail_next(Some(ApiCall::WaitOperation), gone);
        let instance: Instance =
            serde_json::from_value(serde_json::json!({ "name": "w-a" })).expect("instance");
        fake.put_instance("p", "z-a", instance);
        let outcome = delete().await;
        assert!(
            matches!(outcome, Outcome::Failed(GceError::Http { status: 404, .. })),
            "a lost operation is not a finished delete: {outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_gated_by_a_stockout_is_never_sent() {
        let fake = FakeCompute::new();
        let gate = CancellationToken::new();
        gate.cancel();
        let outcome = insert_outcome(&fake, Some(gate), Duration::from_secs(5)).await;
        assert!(matches!(outcome, Outcome::NotSent), "{outcome:?}");
        assert!(fake.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_refused_for_quota_fires_the_gate_of_those_queued_behind_it() {
        let fake = FakeCompute::new();
        for (status, reason) in [(403, "quotaExceeded"), (429, "rateLimitExceeded")] {
            let gate = CancellationToken::new();
            let refused = GceError::http(ApiCall::Insert, status, reason, "no");
            fake.fail_next(Some(ApiCall::Insert), refused);
            let first = insert_outcome(&fake, Some(gate.clone()), Duration::from_secs(5)).await;
            assert!(matches!(first, Outcome::Failed(_)), "{first:?}");
            let queued = insert_outcome(&fake, Some(gate), Duration::from_secs(5)).await;
            assert!(matches!(queued, Outcome::NotSent), "{reason}: {queued:?}");
        }
        assert_eq!(fake.calls_of(ApiCall::Insert).len(), 2);
        let gate = CancellationToken::new();
        let transient = GceError::http(ApiCall::Insert, 503, "backendError", "oops");
        fake.fail_next(Some(ApiCall::Insert), transient);
        insert_outcome(&fake, Some(gate.clone()), Duration::from_secs(5)).await;
        assert!(
            !gate.is_cancelled(),
            "a transient error says nothing of the others"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn operations_past_the_wait_bound_are_sent_but_polled_later() {
        let fake = Arc::new(FakeCompute::new());
        fake.hang_operations(true);
        let term = CancellationToken::new();
        let mut ops = Operations::new(
            fake.clone(),
            Slots::new(4, 1),
            "z-a",
            Duration::from_secs(5),
            term.clone(),
        );
        ops.spawn("web", "p", "w-a".into(), insert("w-a", None));
        ops.spawn("web", "p", "w-b".into(), insert("w-b", None));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(fake.calls_of(ApiCall::Insert).len(), 2, "both calls sent");
        let waited = |fake: &FakeCompute| -> std::collections::BTreeSet<Option<String>> {
            let waits = fake.calls_of(ApiCall::WaitOperation);
            waits.into_iter().map(|c| c.name).collect()
        };
        assert_eq!(waited(&fake).len(), 1, "one operation polled at a time");
        ops.next().await.expect("the first gives up at its timeout");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(waited(&fake).len(), 2, "then the other");
        term.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn results_come_back_and_stop_with_the_term() {
        let fake = Arc::new(FakeCompute::new());
        let term = CancellationToken::new();
        let mut ops = Operations::new(
            fake.clone(),
            Slots::new(2, 2),
            "z-a",
            Duration::from_secs(5),
            term.clone(),
        );
        ops.spawn("web", "p", "w-a".into(), insert("w-a", None));
        let result = ops.next().await.expect("a result");
        assert_eq!((result.pool.as_str(), result.name.as_str()), ("web", "w-a"));
        assert_eq!(result.kind, InFlight::Creating);
        fake.hang_operations(true);
        ops.spawn("web", "p", "w-b".into(), insert("w-b", None));
        tokio::task::yield_now().await;
        term.cancel();
        let waited = tokio::time::timeout(Duration::from_secs(60), ops.next()).await;
        assert!(waited.is_err(), "a cancelled operation reports nothing");
    }
}
