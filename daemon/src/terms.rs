//! The retry loop around a daemon's terms: run one, and after a failure wait a growing,
//! jittered delay before the next.

use std::future::Future;
use std::time::Duration;

use pm_backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// Delays between failed terms, and between attempts to reach etcd at start.
pub(crate) const RETRY: Backoff =
    Backoff::from_consts(Duration::from_millis(100), Duration::from_secs(5));

/// Runs `term` (one session of a daemon: campaign, act, lose) again and again until
/// `shutdown` fires. A term that fails is retried after a growing, jittered delay, reset
/// by a term that ends well; `on_error` sees each failure first (to count it).
pub(crate) async fn run_terms<F, Fut>(
    shutdown: &CancellationToken,
    mut on_error: impl FnMut(&pm_etcd::Error),
    mut term: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = pm_etcd::Result<()>>,
{
    let mut retry = RETRY.attempts();
    while !shutdown.is_cancelled() {
        match term().await {
            Ok(()) => retry.reset(),
            Err(e) => {
                on_error(&e);
                let delay = retry.next_delay();
                tracing::warn!(error = %e, ?delay, "session failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
