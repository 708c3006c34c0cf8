//! Creates throttled by a quota or rate limit: the probe-and-ramp state of one pool.
//!
//! When GCE refuses a create for quota or rate limit, the creates still queued are
//! cancelled (by the loop, through the pool's gate) and creates pause for the throttle's
//! own back-off, at least the `Retry-After` GCE sent, capped at [`QUOTA_BACKOFF`]'s
//! maximum otherwise, so that a pool probes again within [`QUOTA_BACKOFF`]'s cap of the
//! quota returning. After the pause one probe insert is sent, not the whole deficit.
//! Creates then ramp up as they succeed, like TCP's slow start: the window of creates in
//! flight starts at one and grows by one with every success, so it doubles each round
//! (1, 2, 4, 8, ...) until it reaches [`RAMP_END`], where the limit ends. A refusal while
//! ramping starts over from one probe.
//!
//! The pool is "throttled" from the first refusal to the first success; entering and
//! leaving are one event each ([`entered`], [`left`]), not one per failed call.

use std::time::Duration;

use pm_backoff::{Attempts, Backoff};
use pm_gce::error::{ErrorClass, GceError};
use pm_proto::Severity;
use tokio::time::Instant;

use crate::reconcile::Report;

/// Delays between probes while quota or a rate limit refuses creates. Its cap bounds how
/// long after the quota returns the next probe goes out.
pub const QUOTA_BACKOFF: Backoff =
    Backoff::from_consts(Duration::from_secs(2), Duration::from_secs(15));

/// The longest `Retry-After` taken as given; a longer one waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Once this many creates may be in flight, the ramp ends and creates are not limited.
pub const RAMP_END: usize = 64;

/// A refusal that starts a new back-off: how long creates pause, and whether the pool
/// just became throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// How long creates pause before the next probe.
    pub delay: Duration,
    /// Whether this refusal throttled creates (it was not throttled before).
    pub entered: bool,
}

/// The throttle of one pool's creates.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// What throttles creates (quota or rate limit), from the first refusal to the
    /// first success.
    cause: Option<ErrorClass>,
    /// Creates allowed in flight at once while ramping; `None`: not limited.
    window: Option<usize>,
    /// The delays between probes; reset by a success.
    attempts: Attempts,
    /// When the current back-off ends. A refusal before then is of a create sent before
    /// it began, and changes nothing.
    backing_off_until: Option<Instant>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            cause: None,
            window: None,
            attempts: QUOTA_BACKOFF.attempts(),
            backing_off_until: None,
        }
    }
}

impl Throttle {
    /// What throttles creates now, if anything.
    pub fn cause(&self) -> Option<ErrorClass> {
        self.cause
    }

    /// A create was refused with `class` (quota or rate limit), GCE asking to wait
    /// `retry_after`. Returns the new back-off, or `None` while one already runs (the
    /// refusal of a create sent before it, which says nothing new).
    pub fn refused(&mut self, class: ErrorClass, retry_after: Option<Duration>) -> Option<Refused> {
        let now = Instant::now();
        if self.backing_off_until.is_some_and(|until| now < until) {
            return None;
        }
        let delay = self.attempts.next_delay().max(told(retry_after));
        self.backing_off_until = Some(now + delay);
        self.window = Some(1);
        let entered = self.cause.is_none();
        self.cause = Some(class);
        Some(Refused { delay, entered })
    }

    /// A create (or restart) succeeded: the window grows by one. Returns what throttled
    /// creates when this success ends it.
    pub fn succeeded(&mut self) -> Option<ErrorClass> {
        self.attempts.reset();
        self.backing_off_until = None;
        self.window = self.window.map(|w| w + 1).filter(|w| *w < RAMP_END);
        self.cause.take()
    }

    /// How many of `wanted` fresh creates to send now, with `in_flight` creates of the
    /// pool still running.
    pub fn allow(&self, wanted: usize, in_flight: usize) -> usize {
        match self.window {
            Some(window) => wanted.min(window.saturating_sub(in_flight)),
            None => wanted,
        }
    }
}

/// The least wait a `Retry-After` asks for, at most [`MAX_RETRY_AFTER`]; zero without
/// one.
pub fn told(retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or_default().min(MAX_RETRY_AFTER)
}

/// The cause of a throttle, in messages.
fn cause_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::RateLimit => "rate limit",
        _ => "quota",
    }
}

/// The event of creates becoming throttled by `error`, the first probe in `delay`.
pub fn entered(error: &GceError, delay: Duration) -> Report {
    let cause = cause_name(error.class());
    Report {
        kind: "creates-throttled",
        severity: Severity::Warning,
        message: format!(
            "creates throttled: {cause}; queued creates cancelled, one probe insert in {delay:?}, then at most every {:?} until one succeeds: {error}",
            QUOTA_BACKOFF.max()
        ),
    }
}

/// The event of creates no longer throttled by `cause`.
pub fn left(cause: ErrorClass) -> Report {
    Report {
        kind: "creates-unthrottled",
        severity: Severity::Info,
        message: format!(
            "creates no longer throttled: {}: a probe insert succeeded; ramping up",
            cause_name(cause)
        ),
    }
}

#[cfg(test)]
mod tests {
    use pm_gce::compute::ApiCall;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_probe_after_a_refusal_then_a_window_doubling_each_round() {
        let mut t = Throttle::default();
        assert_eq!(t.allow(50, 0), 50, "not throttled: not limited");
        let first = t.refused(ErrorClass::Quota, None).expect("a back-off");
        assert!(first.entered);
        assert!(first.delay <= QUOTA_BACKOFF.base(), "{:?}", first.delay);
        assert_eq!(t.cause(), Some(ErrorClass::Quota));
        assert_eq!(
            t.refused(ErrorClass::Quota, None),
            None,
            "a refusal during the back-off is of a create sent before it"
        );
        tokio::time::advance(first.delay).await;
        assert_eq!(t.allow(50, 0), 1, "one probe");
        assert_eq!(t.allow(50, 1), 0, "the probe is in flight");
        let again = t
            .refused(ErrorClass::Quota, None)
            .expect("the probe failed");
        assert!(!again.entered, "still throttled: no new state");
        tokio::time::advance(again.delay).await;
        assert_eq!(t.succeeded(), Some(ErrorClass::Quota), "left on success");
        assert_eq!(t.cause(), None, "left once");
        let mut sent = Vec::new();
        let mut in_flight = 0;
        for _ in 0..5 {
            let now = t.allow(50, in_flight);
            sent.push(now);
            in_flight += now;
            for _ in 0..now {
                t.succeeded();
                in_flight -= 1;
            }
        }
        assert_eq!(sent, vec![2, 4, 8, 16, 32], "the window doubles each round");
        assert_eq!(
            t.allow(500, 0),
            500,
            "past RAMP_END creates are not limited"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probes_wait_at_least_retry_after_and_at_most_the_cap_otherwise() {
        let mut t = Throttle::default();
        let told = t
            .refused(ErrorClass::RateLimit, Some(Duration::from_secs(40)))
            .expect("a back-off");
        assert_eq!(told.delay, Duration::from_secs(40));
        let mut longest = Duration::ZERO;
        for _ in 0..20 {
            tokio::time::advance(MAX_RETRY_AFTER).await;
            let r = t.refused(ErrorClass::Quota, None).expect("a back-off");
            longest = longest.max(r.delay);
        }
        assert!(longest <= QUOTA_BACKOFF.max(), "{longest:?}");
        tokio::time::advance(MAX_RETRY_AFTER).await;
        let huge = t
            .refused(ErrorClass::Quota, Some(Duration::from_secs(86_400)))
            .expect("a back-off");
        assert_eq!(huge.delay, MAX_RETRY_AFTER);
    }

    #[test]
    fn events_name_the_cause() {
        let quota = GceError::http(ApiCall::Insert, 403, "quotaExceeded", "CPUS");
        let e = entered(&quota, Duration::from_secs(2));
        assert_eq!(
            (e.kind, e.severity),
            ("creates-throttled", Severity::Warning)
        );
        assert!(
            e.message.starts_with("creates throttled: quota;"),
            "{}",
            e.message
        );
        let l = left(ErrorClass::RateLimit);
        assert_eq!(l.kind, "creates-unthrottled");
        assert!(
            l.message
                .starts_with("creates no longer throttled: rate limit"),
            "{}",
            l.message
        );
    }
}
