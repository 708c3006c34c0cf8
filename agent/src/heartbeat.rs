//! The active agent's heartbeat: whether it completes reconcile passes, recorded in its
//! member key (`AgentInfo.reconciling`, bound to its session lease) only when that
//! changes, so a steady zone writes nothing to etcd.
//!
//! A pass *completes* when it listed GCE for a pool that uses the zone (or when no pool
//! uses the zone: there is nothing to list). The agent reconciles while its last
//! completed pass is less than `--stall-after` old; once it is older the member key says
//! so, and the scheduler counts the zone as without agent (its grace then runs).

use std::time::Duration;

use pm_proto::AgentInfo;
use tokio::time::Instant;

/// The agent's member key, where the heartbeat is written.
#[derive(Debug, Clone)]
pub struct Member {
    /// The key.
    pub key: String,
    /// What the agent registered.
    pub info: AgentInfo,
    /// The session lease the key is bound to.
    pub lease: i64,
}

/// The default of `--stall-after`.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(60);

/// What the member key says of the agent's passes, and what it should say.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// An agent whose last completed pass is older than this is stalled.
    stall_after: Duration,
    /// The last completed pass: when (tokio's clock) and its Unix ms.
    last_pass: Option<(Instant, i64)>,
    /// What the member key says: `reconciling`. A term starts with the standby's value.
    recorded: bool,
}

impl Heartbeat {
    /// The heartbeat of a term that has completed no pass yet, stalled after
    /// `stall_after` without one.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            stall_after,
            last_pass: None,
            recorded: false,
        }
    }

    /// A pass completed at `at` (`unix_ms` on the wall clock).
    pub fn passed(&mut self, at: Instant, unix_ms: i64) {
        self.last_pass = Some((at, unix_ms));
    }

    /// Whether the agent reconciles at `now`: its last pass completed less than
    /// the stall bound ago.
    pub fn reconciling(&self, now: Instant) -> bool {
        self.last_pass
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < self.stall_after)
    }

    /// The member value to write at `now` when what it says must change, built on the
    /// registered `info`; `None` when it is up to date.
    pub fn change(&self, info: &AgentInfo, now: Instant) -> Option<AgentInfo> {
        let reconciling = self.reconciling(now);
        (reconciling != self.recorded).then(|| AgentInfo {
            reconciling: Some(reconciling),
            last_pass_unix_ms: self.last_pass.map_or(0, |(_, ms)| ms),
            ..info.clone()
        })
    }

    /// The member key now says `value`.
    pub fn recorded(&mut self, value: &AgentInfo) {
        self.recorded = value.reconciling.unwrap_or(false);
    }

    /// When the agent stalls unless a pass completes first: `None` while it is not
    /// recorded as reconciling (nothing can go stale).
    pub fn deadline(&self) -> Option<Instant> {
        let (at, _) = self.last_pass?;
        self.recorded.then(|| at + self.stall_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    /// Writes what `beat` asks at `now`, if anything; returns whether it wrote.
    fn write(beat: &mut Heartbeat, now: Instant) -> Option<bool> {
        let value = beat.change(&AgentInfo::default(), now)?;
        beat.recorded(&value);
        value.reconciling
    }

    #[tokio::test(start_paused = true)]
    async fn only_changes_are_written() {
        let mut beat = Heartbeat::new(STALL);
        assert_eq!(write(&mut beat, Instant::now()), None, "no pass yet");
        assert_eq!(beat.deadline(), None);
        beat.passed(Instant::now(), 1_000);
        let value = beat.change(&AgentInfo::default(), Instant::now()).unwrap();
        assert_eq!(
            (value.reconciling, value.last_pass_unix_ms),
            (Some(true), 1_000)
        );
        beat.recorded(&value);
        for _ in 0..100 {
            tokio::time::advance(Duration::from_secs(5)).await;
            beat.passed(Instant::now(), 2_000);
            assert_eq!(write(&mut beat, Instant::now()), None, "steady: no write");
        }
        assert_eq!(beat.deadline(), Some(Instant::now() + STALL));
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_without_a_completed_pass_for_the_bound_stalls_and_recovers() {
        let mut beat = Heartbeat::new(STALL);
        beat.passed(Instant::now(), 1_000);
        assert_eq!(write(&mut beat, Instant::now()), Some(true));
        tokio::time::advance(STALL - Duration::from_millis(1)).await;
        assert_eq!(write(&mut beat, Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        let value = beat.change(&AgentInfo::default(), Instant::now()).unwrap();
        assert_eq!(
            (value.reconciling, value.last_pass_unix_ms),
            (Some(false), 1_000)
        );
        beat.recorded(&value);
        assert_eq!(beat.deadline(), None, "stalled: nothing more to watch");
        assert_eq!(write(&mut beat, Instant::now()), None);
        beat.passed(Instant::now(), 70_000);
        assert_eq!(write(&mut beat, Instant::now()), Some(true));
    }
}
