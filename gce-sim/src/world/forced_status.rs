//! Statuses the sim's own lifecycle never reaches, set through the control API so
//! that clients' handling of them can be tested (`SUSPENDING`, `SUSPENDED`, `PENDING`,
//! `PENDING_STOP`, `DEPROVISIONING`, or a status no client knows yet), and
//! `instances.resume`, the way out of `SUSPENDED`.

use tokio::time::Instant;

use super::capacity::{count_live, pool_of};
use super::instances::Phase;
use super::operations::NewOperation;
use super::{instance_path, ApiError, World};

/// Statuses the lifecycle produces (create, stop, start, preemption): they cannot be
/// forced, since nothing would move the instance on from them.
const LIFECYCLE_STATUSES: [&str; 5] = [
    "PROVISIONING",
    "STAGING",
    "RUNNING",
    "STOPPING",
    "TERMINATED",
];

/// The status of a suspended instance: it holds no capacity and only `resume` leaves it.
const SUSPENDED: &str = "SUSPENDED";

impl World {
    /// Puts instance `name` of `zone` (in `project`, or in every project holding one of
    /// that name) into `status` until a call changes it. Returns the projects changed.
    /// The instance stops counting as live in its pool; `SUSPENDED` also frees its
    /// capacity, any other status keeps what it held.
    pub fn set_status(
        &mut self,
        project: Option<&str>,
        zone: &str,
        name: &str,
        status: &str,
    ) -> Result<Vec<String>, ApiError> {
        check_status(status)?;
        let z = self
            .zones
            .get_mut(zone)
            .ok_or_else(|| ApiError::not_found(&format!("zones/{zone}")))?;
        z.sweep(Instant::now());
        let projects: Vec<String> = z
            .projects
            .iter()
            .filter(|(p, pz)| {
                project.is_none_or(|want| want == *p) && pz.instances.contains_key(name)
            })
            .map(|(p, _)| p.clone())
            .collect();
        if projects.is_empty() {
            return Err(ApiError::not_found(&instance_path(
                project.unwrap_or("*"),
                zone,
                name,
            )));
        }
        for project in &projects {
            let (instance, _, _) = self.instance_mut(project, zone, name)?;
            if matches!(instance.phase, Phase::Deleting | Phase::Refused) {
                return Err(ApiError::not_ready(&instance_path(project, zone, name)));
            }
            let was_live = instance.is_live();
            let pool = pool_of(&instance.labels);
            instance.phase = Phase::Forced(status.into());
            instance.phase_since = Instant::now();
            let frees = status == SUSPENDED && instance.holds_capacity;
            if frees {
                instance.holds_capacity = false;
                instance.due_at = None;
                let z = self.zone_mut(project, zone)?;
                z.live = z.live.saturating_sub(1);
            }
            if was_live {
                count_live(&mut self.pools, project, pool, false);
            }
        }
        Ok(projects)
    }

    /// `instances.resume`: a SUSPENDED instance boots again if the zone has room (else
    /// its operation fails with a stockout); any other status is 400 `resourceNotReady`.
    pub(super) fn resume(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<NewOperation, ApiError> {
        let (instance, live, capacity) = self.instance_mut(project, zone, name)?;
        let id = instance.id;
        if instance.phase != Phase::Forced(SUSPENDED.into()) {
            return Err(ApiError {
                status: 400,
                reason: "resourceNotReady",
                message: format!(
                    "The resource '{}' is not ready: only a SUSPENDED instance can be resumed",
                    instance_path(project, zone, name)
                ),
            });
        }
        let failure = if live < capacity {
            self.boot_again(project, zone, name)?;
            self.counters.resumed += 1;
            None
        } else {
            let body = instance.body.clone();
            Some(self.stockout(project, zone, &body))
        };
        Ok(self.new_operation("resume", name, id, failure))
    }
}

/// A status that may be forced: upper-case letters and `_`, not a lifecycle status.
fn check_status(status: &str) -> Result<(), ApiError> {
    let shaped = status.starts_with(|c: char| c.is_ascii_uppercase())
        && status.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    if !shaped {
        return Err(ApiError::invalid(format!(
            "status {status:?} must be upper-case letters and '_', e.g. SUSPENDED"
        )));
    }
    if LIFECYCLE_STATUSES.contains(&status) {
        return Err(ApiError::invalid(format!(
            "status {status} comes from the lifecycle (insert, stop, start, preempt) and cannot be set"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::world::test_support::{body, status_of, world};
    use crate::world::Mutation;

    #[tokio::test(flavor = "current_thread")]
    async fn forced_statuses_show_until_resume_and_suspended_frees_capacity() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        for name in ["a", "b", "c"] {
            w.mutate("p", "z1", Mutation::Insert(&body(name)), None)
                .expect("insert");
        }
        assert_eq!(w.pool_reports()[0].live, 3);
        w.set_status(None, "z1", "a", "SUSPENDED").expect("set");
        w.set_status(Some("p"), "z1", "b", "DEPROVISIONING")
            .expect("set");
        w.set_status(None, "z1", "c", "HIBERNATING").expect("set");
        assert_eq!(status_of(&mut w, "a"), "SUSPENDED");
        assert_eq!(status_of(&mut w, "b"), "DEPROVISIONING");
        let listed = w
            .list_instances("p", "z1", &Default::default())
            .expect("list");
        let listed: serde_json::Value = serde_json::from_slice(&listed).expect("json");
        assert_eq!(listed["items"][2]["status"], "HIBERNATING", "sent as set");
        assert_eq!(w.pool_reports()[0].live, 0);
        assert_eq!(
            w.report().0["z1"].live,
            2,
            "only SUSPENDED frees its machine"
        );

        for (status, why) in [
            ("RUNNING", "a lifecycle status"),
            ("suspended", "lower case"),
            ("", "empty"),
        ] {
            let error = w.set_status(None, "z1", "a", status).expect_err(why);
            assert_eq!(error.status, 400, "{why}");
        }
        assert_eq!(
            w.set_status(None, "z1", "nobody", "SUSPENDED")
                .expect_err("missing")
                .status,
            404
        );
        let error = w
            .mutate("p", "z1", Mutation::Resume("b"), None)
            .expect_err("not suspended");
        assert_eq!((error.status, error.reason), (400, "resourceNotReady"));
        let error = w
            .mutate("p", "z1", Mutation::Start("a"), None)
            .expect_err("start is not resume");
        assert_eq!(error.status, 400);

        w.mutate("p", "z1", Mutation::Insert(&body("d")), None)
            .expect("insert into the room a freed");
        let full = w
            .mutate("p", "z1", Mutation::Resume("a"), None)
            .expect("accepted");
        assert!(full.error.is_some(), "no room to resume into");
        assert_eq!(status_of(&mut w, "a"), "SUSPENDED");
        w.mutate("p", "z1", Mutation::Delete("d"), None)
            .expect("delete");
        let op = w
            .mutate("p", "z1", Mutation::Resume("a"), None)
            .expect("resume");
        assert!(op.error.is_none());
        assert_eq!(status_of(&mut w, "a"), "RUNNING");
        let (zones, counters) = w.report();
        assert_eq!(zones["z1"].live, 3);
        assert_eq!(counters.resumed, 1);
    }
}
