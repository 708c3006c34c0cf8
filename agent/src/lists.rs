//! The GCE lists of passes in flight, one per pool, so that one slow list never holds the
//! other pools back: a pass starts ([`crate::reconcile::start_pass`]), its list runs here
//! beside the others, and the pass goes on when its list returns. The zones the pass
//! counts for the scheduler ([`crate::witness`]) are listed in the same task.

use std::collections::BTreeMap;
use std::sync::Arc;

use pm_gce::compute::{ApiCall, Compute};
use pm_gce::error::GceError;
use pm_gce::resources::Instance;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use crate::reconcile::{list_projects, ListRequest};
use crate::witness::{self, Counted};

/// Lists in flight at once; pools beyond them wait until one returns.
pub const PARALLEL_LISTS: usize = 8;

/// What a list returned: each instance with its project.
type Listed = Result<Vec<(String, Instance)>, GceError>;

/// A returned list with its pass.
pub struct Returned {
    /// The pool.
    pub pool: String,
    /// The pass that asked for it.
    pub request: ListRequest,
    /// When the pass started.
    pub started: Instant,
    /// What GCE answered.
    pub listed: Listed,
    /// The zones counted for the scheduler.
    pub counted: Counted,
}

/// The lists in flight, each in its own task; dropping this (the term ends) aborts them.
#[derive(Default)]
pub struct Lists {
    running: JoinSet<(Listed, Counted)>,
    /// Per pool with a list in flight: its task, its pass and when the pass started.
    waiting: BTreeMap<String, (Id, ListRequest, Instant)>,
}

impl Lists {
    /// Whether a list of `pool` is in flight.
    pub fn busy(&self, pool: &str) -> bool {
        self.waiting.contains_key(pool)
    }

    /// Whether no more lists may start now.
    pub fn full(&self) -> bool {
        self.waiting.len() >= PARALLEL_LISTS
    }

    /// Starts the list `request` asks for, in `zone`.
    pub fn start(
        &mut self,
        pool: &str,
        request: ListRequest,
        compute: Arc<dyn Compute>,
        zone: &str,
    ) {
        let filter = request.filter.clone();
        let adopt_filter = request.adopt_filter.clone();
        let projects = request.projects();
        let zone = zone.to_string();
        let asked = request.witness.clone();
        let task = self.running.spawn(async move {
            let compute = compute.as_ref();
            let adopt_filter = adopt_filter.as_deref();
            let listed = list_projects(compute, &projects, &zone, &filter, adopt_filter).await;
            let counted = witness::count(compute, &projects[0], &filter, &asked).await;
            (listed, counted)
        });
        self.waiting
            .insert(pool.to_string(), (task.id(), request, Instant::now()));
    }

    /// The next list to return; pending forever while none is in flight, so that it can
    /// sit in a `select!`.
    pub async fn next(&mut self) -> Returned {
        loop {
            let (id, (listed, counted)) = match self.running.join_next_with_id().await {
                Some(Ok(returned)) => returned,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a GCE list task failed");
                    let failed = GceError::http(ApiCall::List, 500, "internal", &e.to_string());
                    (e.id(), (Err(failed), Vec::new()))
                }
                None => std::future::pending().await,
            };
            let pool = self
                .waiting
                .iter()
                .find_map(|(pool, (task, ..))| (*task == id).then(|| pool.clone()));
            if let Some((pool, (_, request, started))) =
                pool.and_then(|p| self.waiting.remove_entry(&p))
            {
                return Returned {
                    pool,
                    request,
                    started,
                    listed,
                    counted,
                };
            }
        }
    }
}
