//! The effects of a decision, as a pure function: the observed keys to write or
//! remove, the events, hooks and counts that report what happened, and the inserts,
//! deletes and starts to issue. The loop in [`crate::active`] carries them out: keys
//! first (an insert is recorded before it is sent), then events and hooks, then calls.

use std::collections::BTreeMap;

use pm_gce::compute::request_id_for;
use pm_gce::resources::{Instance, Operation};
use pm_gce::template::{render_text, TemplateVars};
use pm_pool::disruption::DRAINING_LABEL;
use pm_pool::removal::recorded_labels;
use pm_pool::{HookEvent, REVISION_LABEL};
use pm_proto::{InstanceState, ObservedInstance, PoolConfig, Severity};

use crate::claim::Claim;
use crate::decide::{Decision, DrainStart, Listed};
use crate::metrics::PoolCount;

/// Everything the effects of one decision are built from.
pub struct EffectInputs<'a> {
    /// The pool.
    pub pool: &'a str,
    /// Its GCE project.
    pub project: &'a str,
    /// The zone served.
    pub zone: &'a str,
    /// This agent's id, recorded on what it writes.
    pub agent_id: &'a str,
    /// Unix ms now.
    pub now_ms: i64,
    /// The pool's config.
    pub config: &'a PoolConfig,
    /// Its revision, which new VMs carry.
    pub revision: &'a str,
    /// What GCE listed.
    pub listed: &'a BTreeMap<String, Listed>,
    /// The observed keys, by name.
    pub observed: &'a BTreeMap<String, ObservedInstance>,
    /// The zone's `compute.instances.preempted` operations (listed only when something
    /// was lost), to tell a preemption from a vanishing.
    pub preempted_ops: &'a [Operation],
}

/// Something that happened to an instance: an event, a count, and maybe a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The hook to run.
    pub hook: Option<HookEvent>,
    /// The event's kind.
    pub kind: &'static str,
    /// The instance.
    pub instance: String,
    /// The event's severity.
    pub severity: Severity,
    /// The event's message.
    pub message: String,
    /// The metric counted, once the keys are written.
    pub count: Option<PoolCount>,
    /// For an instance GCE took away: how long it lived (ms), when its creation is known.
    pub lifetime_ms: Option<i64>,
}

/// An insert to send: a fresh create or one resumed with its recorded requestId.
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    /// The instance's name.
    pub name: String,
    /// Its requestId.
    pub request_id: String,
    /// The rendered instance.
    pub instance: Instance,
}

/// What a decision leads to.
#[derive(Debug, Default)]
pub struct Effects {
    /// Observed keys to write (`Some`) or remove (`None`), by name.
    pub writes: BTreeMap<String, Option<ObservedInstance>>,
    /// Events recorded before the keys are written (inserts given up).
    pub early_events: Vec<Notice>,
    /// Events, counts and hooks once the keys are written.
    pub notices: Vec<Notice>,
    /// Fresh creates.
    pub creates: Vec<Insert>,
    /// Inserts resumed with their requestId (they may have reached GCE already).
    pub resumes: Vec<Insert>,
    /// Instances to delete.
    pub deletes: Vec<String>,
    /// Instances to start again.
    pub restarts: Vec<String>,
    /// Suspended instances to resume.
    pub resumes_suspended: Vec<String>,
    /// The template does not render: creates pause, the problem is reported once.
    pub template_error: Option<String>,
    /// Instances to delete, start or resume that live in another project than the
    /// pool's (from before a project change), with their project.
    pub elsewhere: BTreeMap<String, String>,
    /// VMs to claim for the pool (adopt mode).
    pub claims: Vec<Claim>,
    /// VMs to start draining, as the budget allows, each with its `pm-state=draining`
    /// label.
    pub drains: Vec<(DrainStart, Claim)>,
    /// Draining VMs to label `pm-state=draining`.
    pub drain_labels: Vec<Claim>,
    /// Draining VMs whose drain hook has not finished.
    pub drain_hook_pending: Vec<String>,
    /// Drain requests of VMs the zone does not have, to remove.
    pub stale_requests: Vec<String>,
}

fn notice(
    hook: Option<HookEvent>,
    kind: &'static str,
    name: &str,
    severity: Severity,
    message: String,
    count: Option<PoolCount>,
) -> Notice {
    Notice {
        hook,
        kind,
        instance: name.to_string(),
        severity,
        message,
        count,
        lifetime_ms: None,
    }
}

/// The effects of `decision`. `new_name` makes each fresh instance's name.
pub fn effects(
    decision: &Decision,
    inputs: &EffectInputs<'_>,
    mut new_name: impl FnMut() -> String,
) -> Effects {
    let mut fx = Effects::default();
    let now = inputs.now_ms;
    let stamped = |mut o: ObservedInstance, state: InstanceState| {
        o.state = state as i32;
        o.state_changed_unix_ms = now;
        o.agent_id = inputs.agent_id.to_string();
        o
    };
    let current = |writes: &BTreeMap<String, Option<ObservedInstance>>, name: &str| {
        writes
            .get(name)
            .cloned()
            .flatten()
            .or_else(|| inputs.observed.get(name).cloned())
            .unwrap_or_default()
    };
    for (name, new_state) in decision.adopt.iter().chain(decision.update.iter()) {
        let fresh = ObservedInstance {
            created_unix_ms: now,
            ..Default::default()
        };
        let mut o = stamped(
            inputs.observed.get(name).cloned().unwrap_or(fresh),
            *new_state,
        );
        let listed = inputs.listed.get(name);
        o.gce_id = listed.map(|l| l.id.clone()).unwrap_or_default();
        o.revision = listed.map(|l| l.revision.clone()).unwrap_or_default();
        o.project = listed.map(|l| l.project.clone()).unwrap_or_default();
        o.labels = listed
            .map(|l| recorded_labels(&l.labels))
            .unwrap_or_default();
        if *new_state == InstanceState::Running {
            o.preempted = false;
            if o.running_since_unix_ms == 0 {
                o.running_since_unix_ms = now;
            }
        } else {
            o.running_since_unix_ms = 0;
        }
        fx.writes.insert(name.clone(), Some(o));
    }
    let lifetime = |name: &str| {
        let created = inputs.observed.get(name).map_or(0, |o| o.created_unix_ms);
        (created > 0).then(|| inputs.now_ms.saturating_sub(created).max(0))
    };
    for name in &decision.preempted {
        let mut o = stamped(current(&fx.writes, name), InstanceState::Terminated);
        o.preempted = true;
        fx.writes.insert(name.clone(), Some(o));
        let mut preempted = notice(
            Some(HookEvent::Preempted),
            "preempted",
            name,
            Severity::Warning,
            format!("instance {name} was preempted"),
            Some(PoolCount::Preempted),
        );
        preempted.lifetime_ms = lifetime(name);
        fx.notices.push(preempted);
    }
    for name in &decision.lost {
        fx.writes.insert(name.clone(), None);
        if inputs.observed.get(name).is_some_and(|o| o.preempted) {
            // Seen preempted (STOPPING or TERMINATED) before, and told then: now gone.
            continue;
        }
        let preempted = inputs
            .preempted_ops
            .iter()
            .any(|op| op.target_name() == Some(name.as_str()));
        let mut gone = if preempted {
            notice(
                Some(HookEvent::Preempted),
                "preempted",
                name,
                Severity::Warning,
                format!("instance {name} was preempted and is gone"),
                Some(PoolCount::Preempted),
            )
        } else {
            notice(
                Some(HookEvent::Vanished),
                "vanished",
                name,
                Severity::Warning,
                format!("instance {name} vanished from GCE without pm deleting it"),
                Some(PoolCount::Vanished),
            )
        };
        gone.lifetime_ms = lifetime(name);
        fx.notices.push(gone);
    }
    for name in &decision.expired_insert {
        fx.writes.insert(name.clone(), None);
        fx.early_events.push(notice(
            None,
            "insert-expired",
            name,
            Severity::Warning,
            format!("insert of {name} never showed up in GCE; forgotten"),
            None,
        ));
    }
    for name in &decision.finish_delete {
        fx.writes.insert(name.clone(), None);
        fx.notices.push(notice(
            Some(HookEvent::Delete),
            "deleted",
            name,
            Severity::Info,
            format!("deleted {name}"),
            Some(PoolCount::Deleted),
        ));
    }
    for name in &decision.delete {
        let o = stamped(current(&fx.writes, name), InstanceState::Deleting);
        if let Some(drain) = &o.drain {
            let waited = match drain.hook_outcome.as_str() {
                _ if drain.hard => "hard: at once".to_string(),
                _ if o.preempted => "preempted while it drained".to_string(),
                "" => "the drain hook did not finish in time".to_string(),
                outcome => format!("drain hook: {outcome}"),
            };
            fx.notices.push(notice(
                None,
                "drained",
                name,
                Severity::Info,
                format!("drained {name} ({}); deleting it, {waited}", drain.reason),
                None,
            ));
        }
        fx.writes.insert(name.clone(), Some(o));
    }
    let render = |name: &str| {
        let vars = TemplateVars {
            project: inputs.project,
            zone: inputs.zone,
            name,
            pool: inputs.pool,
        };
        render_text(&inputs.config.instance_json, vars).map(|mut instance| {
            let revision = inputs.revision.to_string();
            instance.labels.insert(REVISION_LABEL.into(), revision);
            instance
        })
    };
    for _ in 0..decision.create {
        let name = new_name();
        match render(&name) {
            Ok(instance) => {
                let request_id = request_id_for(&name);
                let intent = ObservedInstance {
                    request_id: request_id.clone(),
                    created_unix_ms: now,
                    revision: inputs.revision.to_string(),
                    project: inputs.project.to_string(),
                    ..Default::default()
                };
                let intent = stamped(intent, InstanceState::Provisioning);
                fx.writes.insert(name.clone(), Some(intent));
                fx.creates.push(Insert {
                    name,
                    request_id,
                    instance,
                });
            }
            Err(e) => {
                fx.template_error = Some(e.to_string());
                break;
            }
        }
    }
    for name in &decision.resume_insert {
        let Some(o) = inputs.observed.get(name) else {
            continue;
        };
        if let Ok(instance) = render(name) {
            fx.resumes.push(Insert {
                name: name.clone(),
                request_id: o.request_id.clone(),
                instance,
            });
        }
    }
    let starts = decision.drain.iter().map(|s| &s.name);
    let calls = decision
        .delete
        .iter()
        .chain(&decision.restart)
        .chain(&decision.resume)
        .chain(&decision.label_draining)
        .chain(&decision.drain_hook_pending)
        .chain(starts);
    for name in calls {
        if let Some(l) = inputs
            .listed
            .get(name)
            .filter(|l| l.project != inputs.project)
        {
            fx.elsewhere.insert(name.clone(), l.project.clone());
        }
    }
    let draining_label = |name: &str| {
        inputs.listed.get(name).map(|l| {
            let mut labels = l.labels.clone();
            labels.insert(DRAINING_LABEL.0.into(), DRAINING_LABEL.1.into());
            Claim {
                name: name.to_string(),
                labels,
                fingerprint: l.label_fingerprint.clone(),
            }
        })
    };
    fx.drain_labels = decision
        .label_draining
        .iter()
        .filter_map(|name| draining_label(name))
        .collect();
    fx.drains = decision
        .drain
        .iter()
        .filter_map(|start| Some((start.clone(), draining_label(&start.name)?)))
        .collect();
    fx.drain_hook_pending = decision.drain_hook_pending.clone();
    fx.stale_requests = decision.stale_requests.clone();
    fx.deletes = decision.delete.clone();
    fx.restarts = decision.restart.clone();
    fx.resumes_suspended = decision.resume.clone();
    fx
}

#[cfg(test)]
mod tests {
    use pm_gce::resources::InstanceStatus;

    use super::*;

    fn config(template: &str) -> PoolConfig {
        PoolConfig {
            target_vm_count: 3,
            allowed_zones: vec!["zone-a".into()],
            prefix: "w-".into(),
            instance_json: template.into(),
            ..Default::default()
        }
    }

    fn observed(state: InstanceState) -> ObservedInstance {
        ObservedInstance {
            state: state as i32,
            gce_id: "1".into(),
            created_unix_ms: 5,
            ..Default::default()
        }
    }

    fn run(decision: &Decision, observed: &BTreeMap<String, ObservedInstance>) -> Effects {
        run_with(decision, observed, &[], "{}")
    }

    fn run_with(
        decision: &Decision,
        observed: &BTreeMap<String, ObservedInstance>,
        preempted_ops: &[Operation],
        template: &str,
    ) -> Effects {
        let config = config(template);
        let listed = BTreeMap::from([(
            "w-new".to_string(),
            Listed {
                name: "w-new".into(),
                status: InstanceStatus::Running,
                id: "77".into(),
                created_unix_ms: 0,
                revision: "r1".into(),
                project: "proj".into(),
                labels: BTreeMap::new(),
                label_fingerprint: String::new(),
            },
        )]);
        let inputs = EffectInputs {
            pool: "web",
            project: "proj",
            zone: "zone-a",
            agent_id: "agent-1",
            now_ms: 1_000,
            config: &config,
            revision: "r1",
            listed: &listed,
            observed,
            preempted_ops,
        };
        let mut n = 0;
        effects(decision, &inputs, || {
            n += 1;
            format!("w-fresh{n}")
        })
    }

    #[test]
    fn creates_are_recorded_as_intents_before_they_are_sent() {
        let decision = Decision {
            create: 2,
            ..Default::default()
        };
        let fx = run(&decision, &BTreeMap::new());
        let names: Vec<&str> = fx.creates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["w-fresh1", "w-fresh2"]);
        let intent = fx.writes["w-fresh1"].clone().expect("an intent");
        assert_eq!(intent.state(), InstanceState::Provisioning);
        assert_eq!(intent.request_id, fx.creates[0].request_id);
        assert_eq!(fx.creates[0].request_id, request_id_for("w-fresh1"));
        assert!(intent.gce_id.is_empty(), "not confirmed yet");
        assert_eq!(fx.creates[0].instance.name, "w-fresh1");
        assert_eq!(fx.creates[0].instance.labels["pm-pool"], "web");
    }

    #[test]
    fn a_draining_vm_preempted_is_drained_as_preempted_not_as_late() {
        let mut vm = observed(InstanceState::Running);
        vm.drain = Some(pm_proto::Drain {
            reason: "scale-down".into(),
            ..Default::default()
        });
        let observed = BTreeMap::from([("w-a".to_string(), vm)]);
        let decision = Decision {
            preempted: vec!["w-a".into()],
            delete: vec!["w-a".into()],
            ..Default::default()
        };
        let fx = run(&decision, &observed);
        let drained = fx.notices.iter().find(|n| n.kind == "drained");
        let message = drained.map(|n| n.message.as_str()).unwrap_or_default();
        assert!(message.contains("preempted while it drained"), "{message}");
    }

    #[test]
    fn an_adopted_instance_is_recorded_with_its_gce_id() {
        let decision = Decision {
            adopt: vec![("w-new".into(), InstanceState::Running)],
            ..Default::default()
        };
        let o = run(&decision, &BTreeMap::new()).writes["w-new"]
            .clone()
            .expect("written");
        assert_eq!(
            (o.state(), o.gce_id.as_str(), o.agent_id.as_str()),
            (InstanceState::Running, "77", "agent-1")
        );
        assert_eq!(o.created_unix_ms, 1_000);
    }

    #[test]
    fn a_resumed_insert_keeps_its_request_id() {
        let mut intent = observed(InstanceState::Provisioning);
        intent.request_id = "rid-1".into();
        let known = BTreeMap::from([("w-a".to_string(), intent)]);
        let decision = Decision {
            resume_insert: vec!["w-a".into()],
            ..Default::default()
        };
        let fx = run(&decision, &known);
        assert_eq!(fx.resumes.len(), 1);
        assert_eq!(fx.resumes[0].request_id, "rid-1");
        assert!(fx.creates.is_empty() && fx.writes.is_empty());
    }

    #[test]
    fn losses_are_told_apart_by_the_preemption_operations() {
        let created_at = |ms| ObservedInstance {
            created_unix_ms: ms,
            ..observed(InstanceState::Running)
        };
        let known = BTreeMap::from([
            ("w-a".to_string(), created_at(400)),
            ("w-b".to_string(), created_at(0)),
        ]);
        let decision = Decision {
            lost: vec!["w-a".into(), "w-b".into()],
            ..Default::default()
        };
        let op: Operation = serde_json::from_value(serde_json::json!({
            "name": "systemevent-1",
            "status": "DONE",
            "operationType": "compute.instances.preempted",
            "targetLink": "https://www.googleapis.com/compute/v1/projects/proj/zones/zone-a/instances/w-a"
        }))
        .expect("operation");
        let fx = run_with(&decision, &known, &[op], "{}");
        assert_eq!(
            fx.writes,
            BTreeMap::from([("w-a".into(), None), ("w-b".into(), None)])
        );
        let kinds: Vec<(&str, Option<HookEvent>)> =
            fx.notices.iter().map(|n| (n.kind, n.hook)).collect();
        assert_eq!(
            kinds,
            [
                ("preempted", Some(HookEvent::Preempted)),
                ("vanished", Some(HookEvent::Vanished))
            ]
        );
        let lifetimes: Vec<Option<i64>> = fx.notices.iter().map(|n| n.lifetime_ms).collect();
        assert_eq!(
            lifetimes,
            [Some(600), None],
            "creation unknown: no lifetime"
        );

        // Seen preempted before (STOPPING, then gone): told once, not again.
        let told = BTreeMap::from([(
            "w-a".to_string(),
            ObservedInstance {
                preempted: true,
                ..created_at(400)
            },
        )]);
        let gone = Decision {
            lost: vec!["w-a".into()],
            ..Default::default()
        };
        let fx = run_with(&gone, &told, &[], "{}");
        assert_eq!(fx.writes, BTreeMap::from([("w-a".into(), None)]));
        assert!(fx.notices.is_empty(), "{:?}", fx.notices);
    }

    #[test]
    fn deletes_and_preemptions_are_marked_before_they_are_acted_on() {
        let known = BTreeMap::from([
            ("w-a".to_string(), observed(InstanceState::Running)),
            ("w-b".to_string(), observed(InstanceState::Deleting)),
        ]);
        let decision = Decision {
            preempted: vec!["w-a".into()],
            delete: vec!["w-a".into()],
            finish_delete: vec!["w-b".into()],
            ..Default::default()
        };
        let fx = run(&decision, &known);
        let a = fx.writes["w-a"].clone().expect("kept");
        assert!(
            a.preempted,
            "the preemption stays recorded while it is deleted"
        );
        assert_eq!(a.state(), InstanceState::Deleting);
        assert_eq!(fx.writes["w-b"], None);
        assert_eq!(fx.deletes, ["w-a"]);
        assert_eq!(fx.notices.len(), 2);
        assert_eq!(fx.notices[1].count, Some(PoolCount::Deleted));
    }

    #[test]
    fn a_template_that_does_not_render_stops_creating() {
        let decision = Decision {
            create: 3,
            ..Default::default()
        };
        let fx = run_with(&decision, &BTreeMap::new(), &[], "not json");
        assert!(fx.creates.is_empty() && fx.writes.is_empty());
        assert!(fx.template_error.is_some());
    }
}
