//! Whether a zone's agents are alive enough for the zone to get new instances and for
//! its recorded instances to count: a zone has an agent while one of its members
//! reconciles (an active agent that completes passes, not just a member key); one
//! without stays usable for the agent grace after it was last seen with one (or after
//! the term began, for a zone never seen with one). A zone *orphaned* has had no agent
//! registered at all (no member key) for the grace: every agent process of it has lost
//! its session, so nothing acts there ([`crate::witness`]).

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
    /// Last Unix ms each zone was seen with any member key; only grows.
    registered_ms: BTreeMap<String, i64>,
}

impl AgentPresence {
    /// A term beginning at `started_ms` with `grace` for agentless zones.
    pub fn new(grace: Duration, started_ms: i64) -> Self {
        Self {
            grace,
            started_ms,
            seen_ms: BTreeMap::new(),
            registered_ms: BTreeMap::new(),
        }
    }

    /// Records that the `zones` have agents at `now_ms`.
    pub fn seen<'a>(&mut self, zones: impl IntoIterator<Item = &'a String>, now_ms: i64) {
        for zone in zones {
            self.seen_ms.insert(zone.clone(), now_ms);
        }
    }

    /// Records that the `zones` have member keys at `now_ms`.
    pub fn registered<'a>(&mut self, zones: impl IntoIterator<Item = &'a String>, now_ms: i64) {
        for zone in zones {
            self.registered_ms.insert(zone.clone(), now_ms);
        }
    }

    /// Whether `zone`, registered (with any member key) or not now, has had no member
    /// key for the grace at `now_ms`.
    pub fn is_orphaned(&self, zone: &str, registered: bool, now_ms: i64) -> bool {
        !registered && self.past_grace(self.registered_ms.get(zone), now_ms)
    }

    /// Whether the grace has passed since `seen` (the term start when never seen).
    fn past_grace(&self, seen: Option<&i64>, now_ms: i64) -> bool {
        let seen = seen.copied().unwrap_or(self.started_ms);
        let grace = i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(seen) >= grace
    }

    /// Whether `zone` may receive new instances as far as agents go at `now_ms`:
    /// `has_agent` now, or last seen with one less than the grace ago.
    pub fn is_ok(&self, zone: &str, has_agent: bool, now_ms: i64) -> bool {
        has_agent || !self.past_grace(self.seen_ms.get(zone), now_ms)
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

    #[tokio::test(start_paused = true)]
    async fn a_zone_is_orphaned_once_it_has_had_no_member_for_the_grace() {
        let (start_ms, start) = (now_unix_ms(), tokio::time::Instant::now());
        let mut presence = AgentPresence::new(GRACE, start_ms);
        let z1 = ["z1".to_string()];
        presence.registered(&z1, now(start_ms, start));
        presence.seen(&z1, now(start_ms, start));
        tokio::time::advance(GRACE).await;
        // Its member key still there (an agent that does not reconcile): gone, not orphaned.
        assert!(!presence.is_ok("z1", false, now(start_ms, start)));
        assert!(!presence.is_orphaned("z1", true, now(start_ms, start)));
        presence.registered(&z1, now(start_ms, start));
        tokio::time::advance(GRACE - Duration::from_millis(1)).await;
        assert!(!presence.is_orphaned("z1", false, now(start_ms, start)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(presence.is_orphaned("z1", false, now(start_ms, start)));
        assert!(
            presence.is_orphaned("z2", false, now(start_ms, start)),
            "never seen"
        );
    }
}
