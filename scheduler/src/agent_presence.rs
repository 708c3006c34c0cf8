//! Whether a zone's agents are alive enough for the zone to get new instances and for
//! its recorded instances to count: a zone has an agent while one of its members
//! reconciles (an active agent that completes passes, not just a member key); one
//! without stays usable for the agent grace after it was last seen with one (or after
//! the term began, for a zone never seen with one).

use std::collections::BTreeMap;
use std::time::Duration;

/// When each zone was last seen with an agent, during one leader term.
#[derive(Debug, Clone)]
pub struct AgentPresence {
    /// A zone without agents for this long gets no new instances.
    grace: Duration,
    /// Unix ms when the term began: zones never seen with an agent count from here.
    started_ms: i64,
    /// Last Unix ms each zone was seen with at least one agent; only grows.
    seen_ms: BTreeMap<String, i64>,
}

impl AgentPresence {
    /// A term beginning at `started_ms` with `grace` for agentless zones.
    pub fn new(grace: Duration, started_ms: i64) -> Self {
        Self {
            grace,
            started_ms,
            seen_ms: BTreeMap::new(),
        }
    }

    /// Records that the `zones` have agents at `now_ms`.
    pub fn seen<'a>(&mut self, zones: impl IntoIterator<Item = &'a String>, now_ms: i64) {
        for zone in zones {
            self.seen_ms.insert(zone.clone(), now_ms);
        }
    }

    /// Whether `zone` may receive new instances as far as agents go at `now_ms`:
    /// `has_agent` now, or last seen with one less than the grace ago.
    pub fn is_ok(&self, zone: &str, has_agent: bool, now_ms: i64) -> bool {
        if has_agent {
            return true;
        }
        let seen = self.seen_ms.get(zone).copied().unwrap_or(self.started_ms);
        let grace = i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(seen) < grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use pm_etcd::now_unix_ms;

    const GRACE: Duration = Duration::from_secs(30);

    /// Unix ms on tokio's clock, which `start_paused` lets the test move.
    fn now(start_ms: i64, start: tokio::time::Instant) -> i64 {
        start_ms + i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    #[tokio::test(start_paused = true)]
    async fn a_zone_never_seen_with_an_agent_gets_the_grace_from_the_term_start() {
        let (start_ms, start) = (now_unix_ms(), tokio::time::Instant::now());
        let presence = AgentPresence::new(GRACE, start_ms);
        tokio::time::advance(GRACE - Duration::from_millis(1)).await;
        assert!(presence.is_ok("z1", false, now(start_ms, start)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!presence.is_ok("z1", false, now(start_ms, start)));
        assert!(presence.is_ok("z1", true, now(start_ms, start)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zone_whose_agents_left_stays_usable_for_the_grace_after_last_seen() {
        let (start_ms, start) = (now_unix_ms(), tokio::time::Instant::now());
        let mut presence = AgentPresence::new(GRACE, start_ms);
        tokio::time::advance(Duration::from_secs(20)).await;
        presence.seen(&["z1".to_string()], now(start_ms, start));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(presence.is_ok("z1", false, now(start_ms, start)));
        assert!(!presence.is_ok("z2", false, now(start_ms, start)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!presence.is_ok("z1", false, now(start_ms, start)));
    }
}
