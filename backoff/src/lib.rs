//! The one jittered, capped exponential backoff of pm.
//!
//! Every retry loop in pm (etcd reconnects, GCE retries, agent error handling) takes its
//! delays from [`Backoff`], so the policy is validated once and behaves the same
//! everywhere. Delays use "full jitter": the n-th delay is uniform in
//! `[base * 2^n / 2, base * 2^n]`, capped at `max`, so that many clients retrying at once
//! spread out instead of hammering a recovering server together.

use std::time::Duration;

use rand::Rng;

/// Why a backoff policy was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    /// The base delay is zero, so the backoff would spin.
    #[error("backoff base delay must be greater than zero")]
    ZeroBase,
    /// The cap is below the base delay.
    #[error("backoff max delay {max:?} is below its base delay {base:?}")]
    MaxBelowBase {
        /// The base delay given.
        base: Duration,
        /// The max delay given.
        max: Duration,
    },
}

/// A validated backoff policy: exponential growth from `base`, capped at `max`, jittered.
///
/// The policy is immutable and cheap to copy; the retry state lives in [`Attempts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay; always > 0.
    base: Duration,
    /// Largest delay; always >= base.
    max: Duration,
}

impl Backoff {
    /// Builds a policy. Fails when `base` is zero or `max < base`.
    pub fn new(base: Duration, max: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if max < base {
            return Err(BackoffError::MaxBelowBase { base, max });
        }
        Ok(Self { base, max })
    }

    /// A policy from constants, for `const` items: an invalid pair fails the build there.
    pub const fn from_consts(base: Duration, max: Duration) -> Self {
        assert!(
            !base.is_zero(),
            "backoff base delay must be greater than zero"
        );
        assert!(
            max.as_nanos() >= base.as_nanos(),
            "backoff max delay is below its base delay"
        );
        Self { base, max }
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The un-jittered ceiling of the delay before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The jittered delay before retry number `attempt`: uniform in `[ceiling/2, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = ceiling - half;
        let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// Calls `call` until it succeeds, `should_retry` says an error is final, or
    /// `max_attempts` calls were made (at least one is), sleeping [`Backoff::delay`]
    /// between calls. Returns the last result.
    pub async fn retry<T, E, F, Fut>(
        &self,
        max_attempts: u32,
        should_retry: impl Fn(&E) -> bool,
        mut call: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempts = self.attempts();
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    if attempts.count() + 1 >= max_attempts || !should_retry(&error) {
                        return Err(error);
                    }
                    tokio::time::sleep(attempts.next_delay()).await;
                }
            }
        }
    }

    /// A fresh retry sequence of this policy.
    pub fn attempts(&self) -> Attempts {
        Attempts {
            policy: *self,
            attempt: 0,
        }
    }
}

/// The state of one retry sequence: how many delays were handed out so far.
#[derive(Debug, Clone)]
pub struct Attempts {
    /// The policy the delays come from.
    policy: Backoff,
    /// Number of delays handed out since the last reset.
    attempt: u32,
}

impl Attempts {
    /// The delay to wait before the next retry; each call grows the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Number of delays handed out since the last reset.
    pub fn count(&self) -> u32 {
        self.attempt
    }

    /// Starts over from the base delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_zero_base_and_max_below_base() {
        assert_eq!(Backoff::new(ms(0), ms(10)), Err(BackoffError::ZeroBase));
        assert_eq!(
            Backoff::new(ms(20), ms(10)),
            Err(BackoffError::MaxBelowBase {
                base: ms(20),
                max: ms(10)
            })
        );
    }

    #[test]
    fn const_policies_match_validated_ones() {
        const POLICY: Backoff =
            Backoff::from_consts(Duration::from_millis(5), Duration::from_secs(1));
        assert_eq!(Backoff::new(ms(5), ms(1000)), Ok(POLICY));
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(ms(100), ms(1000)).expect("valid");
        let ceilings: Vec<_> = (0..6).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.ceiling(u32::MAX), ms(1000));
    }

    #[test]
    fn delays_stay_within_half_and_full_ceiling() {
        let b = Backoff::new(ms(100), ms(1000)).expect("valid");
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                let c = b.ceiling(attempt);
                assert!(d >= c / 2 && d <= c, "attempt {attempt}: {d:?} vs {c:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_at_a_final_error_or_after_the_attempts() {
        let b = Backoff::new(ms(10), ms(100)).expect("valid");
        let calls = std::cell::Cell::new(0u32);
        let r: Result<u32, &str> = b
            .retry(
                5,
                |_| true,
                || {
                    calls.set(calls.get() + 1);
                    async {
                        if calls.get() < 3 {
                            Err("again")
                        } else {
                            Ok(calls.get())
                        }
                    }
                },
            )
            .await;
        assert_eq!(r, Ok(3));
        calls.set(0);
        let r: Result<u32, &str> = b
            .retry(
                4,
                |_| true,
                || {
                    calls.set(calls.get() + 1);
                    async { Err("down") }
                },
            )
            .await;
        assert_eq!((r, calls.get()), (Err("down"), 4));
        calls.set(0);
        let r: Result<u32, &str> = b
            .retry(
                4,
                |e| *e != "fatal",
                || {
                    calls.set(calls.get() + 1);
                    async { Err("fatal") }
                },
            )
            .await;
        assert_eq!((r, calls.get()), (Err("fatal"), 1));
        calls.set(0);
        let r: Result<u32, &str> = b
            .retry(
                0,
                |_| true,
                || {
                    calls.set(calls.get() + 1);
                    async { Err("once") }
                },
            )
            .await;
        assert_eq!((r, calls.get()), (Err("once"), 1), "at least one call");
    }

    #[test]
    fn attempts_grow_and_reset() {
        let b = Backoff::new(ms(10), ms(10_000)).expect("valid");
        let mut a = b.attempts();
        let first = a.next_delay();
        assert!(first <= ms(10));
        for _ in 0..5 {
            a.next_delay();
        }
        assert_eq!(a.count(), 6);
        assert!(a.next_delay() >= ms(320));
        a.reset();
        assert_eq!(a.count(), 0);
        assert!(a.next_delay() <= ms(10));
    }
}
