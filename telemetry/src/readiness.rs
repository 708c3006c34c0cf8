//! Readiness: named conditions a daemon must all meet; `/readyz` answers from them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The condition a daemon's etcd watches set: unmet, with etcd's reason, while a watch is
/// refused by an error that retrying cannot fix (permission denied, ...).
pub const WATCH_CONDITION: &str = "etcd-watch";

/// A shared, cheap-to-clone set of conditions. Each is met, or unmet with a reason; the
/// daemon is ready when every condition is met. A condition must be declared with
/// [`Readiness::unmet`] before it counts, so a daemon starts not ready.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// Condition name to `None` (met) or the reason it is not.
    conditions: Arc<Mutex<BTreeMap<&'static str, Option<String>>>>,
}

impl Readiness {
    /// No conditions yet: ready until one is declared.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Option<String>>) -> T) -> T {
        let mut conditions = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conditions)
    }

    /// Marks `condition` met.
    pub fn met(&self, condition: &'static str) {
        self.with(|c| c.insert(condition, None));
    }

    /// Marks `condition` unmet, saying why.
    pub fn unmet(&self, condition: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        self.with(|c| c.insert(condition, Some(reason)));
    }

    /// A callback that marks `condition` unmet with the reason it is given, and met when
    /// given `None`: what `pm_etcd::ResumableWatch::with_health` takes.
    pub fn reporter(&self, condition: &'static str) -> impl Fn(Option<&str>) + Send + Sync {
        let readiness = self.clone();
        move |reason| match reason {
            Some(reason) => readiness.unmet(condition, reason),
            None => readiness.met(condition),
        }
    }

    /// `Ok` when every condition is met, else every unmet one as `name: reason`, joined.
    pub fn check(&self) -> Result<(), String> {
        self.with(|c| {
            let unmet: Vec<String> = c
                .iter()
                .filter_map(|(name, reason)| reason.as_ref().map(|r| format!("{name}: {r}")))
                .collect();
            if unmet.is_empty() {
                Ok(())
            } else {
                Err(unmet.join("; "))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_is_met() {
        let r = Readiness::new();
        assert_eq!(r.check(), Ok(()));
        r.unmet("etcd", "not connected yet");
        r.unmet("agent", "not registered");
        assert_eq!(
            r.check(),
            Err("agent: not registered; etcd: not connected yet".into())
        );
        r.met("etcd");
        assert_eq!(r.check(), Err("agent: not registered".into()));
        r.clone().met("agent");
        assert_eq!(r.check(), Ok(()));
        r.unmet("etcd", "down");
        assert_eq!(r.check(), Err("etcd: down".into()));
    }

    #[test]
    fn a_reporter_sets_its_condition() {
        let r = Readiness::new();
        let report = r.reporter(WATCH_CONDITION);
        report(Some("etcdserver: permission denied"));
        assert_eq!(
            r.check(),
            Err("etcd-watch: etcdserver: permission denied".into())
        );
        report(None);
        assert_eq!(r.check(), Ok(()));
    }
}
