//! How an observed instance (an `instances/<name>` key) counts: live or not, and which
//! of the words of `pmctl status` it shows as. The scheduler, the agent and pmctl count
//! with these, so their numbers agree.

use pm_proto::{InstanceState, ObservedInstance};

/// Whether an observed instance counts toward the zone's live instances: anything not on
/// its way out. An instance in an unknown state counts, so pm never overshoots by
/// replacing something that may still run.
pub fn is_live(instance: &ObservedInstance) -> bool {
    !instance.preempted
        && !matches!(
            instance.state(),
            InstanceState::Terminated | InstanceState::Deleting
        )
}

/// How an observed instance shows in status counts: the words of `pmctl status`
/// (serialized as them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservedStatus {
    /// RUNNING and not preempted.
    Running,
    /// PROVISIONING, STAGING, or in an unknown state (a call about it in flight).
    Starting,
    /// Preempted, STOPPING or TERMINATED.
    Lost,
    /// pm is deleting it.
    Deleting,
}

impl ObservedStatus {
    /// Every status, in the order shown.
    pub const ALL: [ObservedStatus; 4] = [
        ObservedStatus::Running,
        ObservedStatus::Starting,
        ObservedStatus::Lost,
        ObservedStatus::Deleting,
    ];

    /// How `instance` counts.
    pub fn of(instance: &ObservedInstance) -> Self {
        let state = instance.state();
        if instance.preempted && state != InstanceState::Deleting {
            return ObservedStatus::Lost;
        }
        match state {
            InstanceState::Running => ObservedStatus::Running,
            InstanceState::Provisioning | InstanceState::Staging | InstanceState::Unknown => {
                ObservedStatus::Starting
            }
            InstanceState::Stopping | InstanceState::Terminated => ObservedStatus::Lost,
            InstanceState::Deleting => ObservedStatus::Deleting,
        }
    }

    /// The word: `running`, `starting`, `lost` or `deleting`.
    pub fn word(self) -> &'static str {
        match self {
            ObservedStatus::Running => "running",
            ObservedStatus::Starting => "starting",
            ObservedStatus::Lost => "lost",
            ObservedStatus::Deleting => "deleting",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(state: InstanceState, preempted: bool) -> ObservedInstance {
        ObservedInstance {
            state: state as i32,
            preempted,
            ..Default::default()
        }
    }

    #[test]
    fn each_state_counts_once() {
        use InstanceState as S;
        use ObservedStatus as O;
        let cases = [
            (S::Running, false, O::Running, true),
            (S::Provisioning, false, O::Starting, true),
            (S::Staging, false, O::Starting, true),
            (S::Unknown, false, O::Starting, true),
            (S::Stopping, false, O::Lost, true),
            (S::Terminated, false, O::Lost, false),
            (S::Running, true, O::Lost, false),
            (S::Deleting, false, O::Deleting, false),
            (S::Deleting, true, O::Deleting, false),
        ];
        for (state, preempted, status, live) in cases {
            let o = observed(state, preempted);
            assert_eq!(ObservedStatus::of(&o), status, "{state:?} {preempted}");
            assert_eq!(is_live(&o), live, "{state:?} {preempted}");
        }
        let words: Vec<&str> = ObservedStatus::ALL.iter().map(|s| s.word()).collect();
        assert_eq!(words, ["running", "starting", "lost", "deleting"]);
    }
}
