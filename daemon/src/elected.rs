//! The loop of an elected daemon: grant a session, campaign, lead while elected, resign
//! on shutdown, campaign again. pm-scheduler and pm-agent both run it through
//! [`run_elected`]; what they do in each phase is their [`Candidate`].

use std::future::Future;
use std::time::Duration;

use pm_etcd::{Election, Leadership, Session, Store};
use tokio_util::sync::CancellationToken;

use crate::terms::run_terms;

/// How a term of leadership ended, while the daemon was still meant to run.
#[derive(Debug)]
pub enum TermEnd {
    /// Leadership was lost (fenced out, lease gone, resigned): campaign again.
    Lost,
    /// etcd failed in a way the leader could not ride out: resign, back off, campaign
    /// again.
    Failed(pm_etcd::Error),
}

/// What a daemon does in each phase of a term of [`run_elected`], in this order:
/// [`starting`](Candidate::starting), [`stand_by`](Candidate::stand_by),
/// [`elected`](Candidate::elected), [`lead`](Candidate::lead),
/// [`stepped_down`](Candidate::stepped_down).
pub trait Candidate: Sync {
    /// Before the term's session is granted.
    fn starting(&self) {}

    /// With the term's new session, before campaigning: e.g. register as a standby under
    /// the session's lease. An error fails the term.
    fn stand_by(&self, _session: &Session) -> impl Future<Output = pm_etcd::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Right after winning the election, before leading.
    fn elected(&self, leadership: &Leadership);

    /// Leads while holding `leadership`, until it is lost or fails. Dropped at shutdown.
    fn lead(&self, leadership: &Leadership) -> impl Future<Output = TermEnd> + Send;

    /// After leading stopped and before resigning: `end` is how the term ended, `None`
    /// at shutdown.
    fn stepped_down(&self, end: Option<&TermEnd>);
}

/// Campaigns as `id` in the election named `election`, with sessions of `lease_ttl`,
/// until `shutdown` fires. Each term grants a session, campaigns (at shutdown it closes
/// the session and returns), and leads through `candidate` under a watch on `shutdown`:
/// at shutdown it resigns and closes the session, so a standby leads at once; a lost
/// term campaigns again; a failed one resigns, and the next term follows
/// `run_terms`' back-off. `on_error` counts each failed term.
pub async fn run_elected(
    store: &Store,
    election: &str,
    id: &str,
    lease_ttl: Duration,
    shutdown: &CancellationToken,
    on_error: impl FnMut(&pm_etcd::Error),
    candidate: &impl Candidate,
) {
    let election = Election::new(store.client().clone(), election);
    run_terms(shutdown, on_error, || {
        term(store, &election, id, lease_ttl, shutdown, candidate)
    })
    .await;
}

/// One term: session, campaign, lead until lost, failed or shut down.
async fn term(
    store: &Store,
    election: &Election,
    id: &str,
    lease_ttl: Duration,
    shutdown: &CancellationToken,
    candidate: &impl Candidate,
) -> pm_etcd::Result<()> {
    candidate.starting();
    let session = Session::grant(store.client(), lease_ttl).await?;
    candidate.stand_by(&session).await?;
    let leadership = match election.campaign(&session, id, shutdown).await {
        Ok(l) => l,
        Err(pm_etcd::Error::Cancelled) => {
            session.close().await.ok();
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    candidate.elected(&leadership);
    let end = tokio::select! {
        end = candidate.lead(&leadership) => Some(end),
        _ = shutdown.cancelled() => None,
    };
    candidate.stepped_down(end.as_ref());
    match end {
        None => {
            leadership.resign().await.ok();
            session.close().await.ok();
            Ok(())
        }
        Some(TermEnd::Lost) => Ok(()),
        Some(TermEnd::Failed(e)) => {
            leadership.resign().await.ok();
            Err(e)
        }
    }
}
