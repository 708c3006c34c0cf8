//! Counting a zone without agents for the scheduler (its `witness` module has the why:
//! what the zone lost while no agent ran moves to other zones): when its `desired` key asks, the agent lists the pool's instances in
//! those zones beside its own list, read only, and answers each request in the zone's
//! `witnessed` key with the live ones it saw. It writes an answer when the count or the
//! request changes, not on every pass. A list that fails writes nothing: the scheduler
//! then keeps counting what the zone's keys record, which can only overstate.

use std::collections::BTreeMap;

use pm_etcd::now_unix_ms;
use pm_gce::compute::Compute;
use pm_gce::error::GceError;
use pm_gce::resources::Instance;
use pm_proto::{WitnessRequest, Witnessed};

use crate::decide::is_stopped;

/// Each request with the live instances counted, or why the list failed.
pub type Counted = Vec<(WitnessRequest, Result<u32, GceError>)>;

/// Lists the pool's instances (`filter`, its label) in each requested zone, in `project`
/// and the other projects the request names, and counts the live ones.
pub async fn count(
    compute: &dyn Compute,
    project: &str,
    filter: &str,
    requests: &[WitnessRequest],
) -> Counted {
    let mut counted = Vec::with_capacity(requests.len());
    for request in requests {
        let others = request.projects.iter().map(String::as_str);
        // The scheduler may name the pool's project among the others (a pool naming
        // none runs in the agent's --project, which it does not know): list it once.
        let projects = std::iter::once(project).chain(others.filter(|p| *p != project));
        let mut live = 0;
        let mut failed = None;
        for project in projects {
            match compute.list(project, &request.zone, Some(filter)).await {
                Ok(listed) => live += count_live(&listed),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        counted.push((request.clone(), failed.map_or(Ok(live), Err)));
    }
    counted
}

/// The instances that are not going away or gone: every status but the stopped ones. An
/// instance without a status counts, since overstating is safe and understating is not.
pub fn count_live(instances: &[Instance]) -> u32 {
    let live = instances
        .iter()
        .filter(|i| !i.status.is_some_and(is_stopped));
    u32::try_from(live.count()).unwrap_or(u32::MAX)
}

/// The answers to write for `counted`, by the zone counted: each count that differs
/// from the answer last written for its zone (`written`: live and request time), which
/// is brought up to date; zones no longer asked about are forgotten.
pub fn answers(
    counted: Counted,
    written: &mut BTreeMap<String, (u32, i64)>,
    witness_zone: &str,
    agent_id: &str,
) -> Vec<(String, Witnessed)> {
    written.retain(|zone, _| counted.iter().any(|(r, _)| &r.zone == zone));
    let mut answers = Vec::new();
    for (request, result) in counted {
        let live = match result {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(zone = %request.zone, error = %e, "cannot count the zone for the scheduler");
                continue;
            }
        };
        let answer = (live, request.requested_unix_ms);
        if written.get(&request.zone) == Some(&answer) {
            continue;
        }
        written.insert(request.zone.clone(), answer);
        answers.push((
            request.zone,
            Witnessed {
                witness_zone: witness_zone.to_string(),
                agent_id: agent_id.to_string(),
                live,
                requested_unix_ms: request.requested_unix_ms,
                listed_unix_ms: now_unix_ms(),
            },
        ));
    }
    answers
}

#[cfg(test)]
mod tests {
    use pm_gce::compute::ApiCall;
    use pm_gce::resources::InstanceStatus;

    use super::*;

    fn instance(status: Option<InstanceStatus>) -> Instance {
        let mut instance: Instance =
            serde_json::from_value(serde_json::json!({ "name": "w-a" })).expect("instance");
        instance.status = status;
        instance
    }

    fn request(zone: &str, requested_unix_ms: i64) -> WitnessRequest {
        WitnessRequest {
            zone: zone.into(),
            requested_unix_ms,
            projects: vec![],
        }
    }

    #[test]
    fn stopped_instances_do_not_count_and_unknown_ones_do() {
        let listed = [
            instance(Some(InstanceStatus::Running)),
            instance(Some(InstanceStatus::Provisioning)),
            instance(None),
            instance(Some(InstanceStatus::Terminated)),
            instance(Some(InstanceStatus::Stopping)),
        ];
        assert_eq!(count_live(&listed), 3);
    }

    #[test]
    fn an_answer_is_written_when_the_count_or_the_request_changes() {
        let mut written = BTreeMap::new();
        let first = answers(vec![(request("b", 10), Ok(2))], &mut written, "a", "ag");
        assert_eq!(first.len(), 1);
        let (zone, answer) = &first[0];
        assert_eq!(
            (zone.as_str(), answer.live, answer.requested_unix_ms),
            ("b", 2, 10)
        );
        assert_eq!(
            (answer.witness_zone.as_str(), answer.agent_id.as_str()),
            ("a", "ag")
        );
        assert!(answers(vec![(request("b", 10), Ok(2))], &mut written, "a", "ag").is_empty());
        assert_eq!(
            answers(vec![(request("b", 10), Ok(1))], &mut written, "a", "ag").len(),
            1
        );
        assert_eq!(
            answers(vec![(request("b", 11), Ok(1))], &mut written, "a", "ag").len(),
            1
        );
        let failed = GceError::http(ApiCall::List, 503, "backendError", "down");
        assert!(answers(
            vec![(request("b", 11), Err(failed))],
            &mut written,
            "a",
            "ag"
        )
        .is_empty());
        assert!(answers(Vec::new(), &mut written, "a", "ag").is_empty());
        assert!(
            written.is_empty(),
            "zones no longer asked about are forgotten"
        );
    }
}
