//! `pm_daemon::run_elected` against a real etcd: a candidate that loses its lease leads
//! again, one that shuts down or fails resigns so the next candidate leads at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pm_daemon::{run_elected, Candidate, TermEnd};
use pm_etcd::{Election, Error, LeaderInfo, Leadership, Session, Store};
use pm_tests::{eventually, EtcdCluster};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(20);

/// A lease so long that only a resignation hands leadership over within [`BOUND`].
const LONG_TTL: Duration = Duration::from_secs(60);

/// Within this, a resignation has handed leadership over.
const AT_ONCE: Duration = Duration::from_secs(5);

/// A candidate that notes each phase it goes through and leads until leadership is lost.
#[derive(Default)]
struct Probe {
    phases: Mutex<Vec<&'static str>>,
    /// When set, the first term fails once this fires.
    fail_first_term: Mutex<Option<CancellationToken>>,
}

impl Probe {
    fn note(&self, phase: &'static str) {
        self.phases.lock().unwrap().push(phase);
    }

    fn phases(&self) -> Vec<&'static str> {
        self.phases.lock().unwrap().clone()
    }

    fn count(&self, phase: &str) -> usize {
        self.phases().iter().filter(|p| **p == phase).count()
    }

    /// Waits until `phase` was noted `times` times.
    async fn reached(&self, phase: &str, times: usize) {
        eventually(&format!("{phase} {times} times"), BOUND, || async {
            (self.count(phase) >= times).then_some(())
        })
        .await;
    }
}

impl Candidate for Probe {
    fn starting(&self) {
        self.note("starting");
    }

    async fn stand_by(&self, _session: &Session) -> pm_etcd::Result<()> {
        self.note("standing by");
        Ok(())
    }

    fn elected(&self, _leadership: &Leadership) {
        self.note("elected");
    }

    async fn lead(&self, leadership: &Leadership) -> TermEnd {
        let fail = self.fail_first_term.lock().unwrap().take();
        if let Some(fail) = fail {
            fail.cancelled().await;
            return TermEnd::Failed(Error::Config("injected failure".into()));
        }
        let lost = leadership.lost();
        lost.cancelled().await;
        TermEnd::Lost
    }

    fn stepped_down(&self, end: Option<&TermEnd>) {
        self.note(match end {
            None => "shut down",
            Some(TermEnd::Lost) => "lost",
            Some(TermEnd::Failed(_)) => "failed",
        });
    }
}

/// One `run_elected` in its own task.
struct Running {
    probe: Arc<Probe>,
    errors: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(store: &Store, id: &'static str, lease_ttl: Duration, probe: Probe) -> Self {
        let probe = Arc::new(probe);
        let errors = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let (store, p, e, s) = (
            store.clone(),
            probe.clone(),
            errors.clone(),
            shutdown.clone(),
        );
        let task = tokio::spawn(async move {
            let election = store.keys().scheduler_election();
            let count = |_: &Error| {
                e.fetch_add(1, Ordering::SeqCst);
            };
            run_elected(&store, &election, id, lease_ttl, &s, count, p.as_ref()).await;
        });
        Self {
            probe,
            errors,
            shutdown,
            task,
        }
    }

    /// Fires the shutdown token; `run_elected` must return within [`BOUND`].
    async fn stop(self) -> Arc<Probe> {
        self.shutdown.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("run_elected returns after shutdown")
            .expect("run_elected does not panic");
        self.probe
    }
}

async fn store(etcd: &EtcdCluster) -> Store {
    etcd.store().await
}

fn election(store: &Store) -> Election {
    Election::new(store.client().clone(), &store.keys().scheduler_election())
}

/// Waits until `id` leads, and returns the leader.
async fn leader_is(store: &Store, id: &str, bound: Duration) -> LeaderInfo {
    let election = election(store);
    eventually(&format!("{id} leads"), bound, || async {
        election.leader().await.ok()?.filter(|l| l.value == id)
    })
    .await
}

/// The number of candidate keys in the election.
async fn candidates(store: &Store) -> usize {
    let prefix = format!("{}/", store.keys().scheduler_election());
    store
        .list_keys(&prefix)
        .await
        .expect("list candidates")
        .len()
}

#[tokio::test]
async fn a_candidate_that_loses_its_lease_campaigns_again_and_leads_again() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let one = Running::start(&store, "one", Duration::from_secs(3), Probe::default());
    let first = leader_is(&store, "one", BOUND).await;
    one.probe.reached("elected", 1).await;
    assert_eq!(
        one.probe.phases(),
        ["starting", "standing by", "elected"],
        "one term's phases, in order"
    );

    store
        .client()
        .lease_client()
        .revoke(first.lease)
        .await
        .expect("revoke the leader's lease");
    let second = eventually("one leads again on a new lease", BOUND, || async {
        election(&store)
            .leader()
            .await
            .ok()?
            .filter(|l| l.value == "one" && l.lease != first.lease)
    })
    .await;
    assert!(second.create_revision > first.create_revision);
    one.probe.reached("elected", 2).await;
    assert_eq!(
        one.probe.phases(),
        [
            "starting",
            "standing by",
            "elected",
            "lost",
            "starting",
            "standing by",
            "elected"
        ]
    );
    assert_eq!(
        one.errors.load(Ordering::SeqCst),
        0,
        "a lost term is no error"
    );
    one.stop().await;
}

#[tokio::test]
async fn shutdown_resigns_so_a_second_candidate_leads_at_once() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let one = Running::start(&store, "one", LONG_TTL, Probe::default());
    leader_is(&store, "one", BOUND).await;
    let two = Running::start(&store, "two", LONG_TTL, Probe::default());
    eventually("two stands by", BOUND, || async {
        (candidates(&store).await == 2).then_some(())
    })
    .await;

    let probe = one.stop().await;
    leader_is(&store, "two", AT_ONCE).await;
    assert_eq!(
        probe.phases(),
        ["starting", "standing by", "elected", "shut down"]
    );
    assert_eq!(candidates(&store).await, 1, "one's candidacy is gone");

    let probe = two.stop().await;
    assert_eq!(probe.count("shut down"), 1);
    assert_eq!(candidates(&store).await, 0, "two resigned too");
}

#[tokio::test]
async fn a_failed_term_is_counted_and_resigned_so_a_second_candidate_leads_at_once() {
    let etcd = EtcdCluster::start(1).await;
    let store = store(&etcd).await;
    let fail = CancellationToken::new();
    let failing = Probe {
        fail_first_term: Mutex::new(Some(fail.clone())),
        ..Probe::default()
    };
    let one = Running::start(&store, "one", LONG_TTL, failing);
    leader_is(&store, "one", BOUND).await;
    let two = Running::start(&store, "two", LONG_TTL, Probe::default());
    eventually("two stands by", BOUND, || async {
        (candidates(&store).await == 2).then_some(())
    })
    .await;

    fail.cancel();
    leader_is(&store, "two", AT_ONCE).await;
    eventually("the failure is counted", BOUND, || async {
        (one.errors.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually("one campaigns again after its back-off", BOUND, || async {
        (one.probe.count("standing by") == 2 && candidates(&store).await == 2).then_some(())
    })
    .await;
    assert_eq!(
        one.probe.phases(),
        [
            "starting",
            "standing by",
            "elected",
            "failed",
            "starting",
            "standing by"
        ]
    );

    let probe = one.stop().await;
    assert_eq!(probe.count("shut down"), 0, "one was standing by");
    assert_eq!(candidates(&store).await, 1, "one withdrew its candidacy");
    two.stop().await;
}
