//! Instances: their lifecycle phases (status computed from timestamps), and the
//! calls that create and change one: `insert`, `delete`, `start`, `stop`,
//! `setLabels`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use pm_gce::resources::InstanceStatus;
use serde::de::value::{self, StrDeserializer};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;

use super::capacity::{count_live, pool_of};
use super::instance_spec::{parse_instance, parse_labels, InstanceSpec};
use super::operations::{Failure, NewOperation};
use super::{instance_path, ApiError, World};
use crate::clock::resource_id;

/// How an instance is doing; with the time it entered the phase this gives its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// PROVISIONING, then STAGING, then RUNNING (each boot-delay half).
    Booting,
    /// Inserted into a full zone: PROVISIONING until its insert operation fails, then
    /// removed, as GCE shows a stocked-out create.
    Refused,
    /// STOPPING for `lasts` (the boot delay, or the preemption notice), then TERMINATED.
    Stopping {
        /// How long it is STOPPING.
        lasts: Duration,
    },
    /// STOPPING until it is removed (delete, or preemption with action DELETE).
    Deleting,
    /// A status set through the control API (`SUSPENDED`, `DEPROVISIONING`, or one pm
    /// does not know), kept until a call changes it.
    Forced(Box<str>),
}

/// One instance, as the world keeps it.
pub(super) struct SimInstance {
    pub(super) id: u64,
    /// The client's fields minus `instance_spec::SERVER_FIELDS`,
    /// machineType expanded to a URL, each kept as compact JSON text: a tenth of the
    /// memory of a `serde_json::Map`.
    pub(super) body: Box<[(Box<str>, Box<RawValue>)]>,
    /// Sorted by key.
    pub(super) labels: Box<[(String, String)]>,
    pub(super) label_fingerprint: String,
    pub(super) created: SystemTime,
    pub(super) last_start: SystemTime,
    pub(super) last_stop: Option<SystemTime>,
    pub(super) phase: Phase,
    pub(super) phase_since: Instant,
    pub(super) delete_on_preempt: bool,
    /// Counted in its zone's `live`: from boot until it is off (a STOPPING instance
    /// still holds its machine), or until it is SUSPENDED.
    pub(super) holds_capacity: bool,
    /// When its zone's sweep next acts on it: removes it (in [`Phase::Deleting`] and
    /// [`Phase::Refused`]) or releases its capacity (it is off).
    pub(super) due_at: Option<Instant>,
}

impl SimInstance {
    /// Its status at `now`, as pm reads it.
    pub(super) fn status(&self, now: Instant, boot_delay: Duration) -> InstanceStatus {
        let elapsed = now.saturating_duration_since(self.phase_since);
        match &self.phase {
            Phase::Booting if elapsed >= boot_delay => InstanceStatus::Running,
            Phase::Booting if elapsed >= boot_delay / 2 => InstanceStatus::Staging,
            Phase::Booting | Phase::Refused => InstanceStatus::Provisioning,
            Phase::Stopping { lasts } if elapsed >= *lasts => InstanceStatus::Terminated,
            Phase::Stopping { .. } | Phase::Deleting => InstanceStatus::Stopping,
            Phase::Forced(status) => {
                InstanceStatus::deserialize(StrDeserializer::<value::Error>::new(status))
                    .unwrap_or(InstanceStatus::Unrecognized)
            }
        }
    }

    /// Its status at `now`, as GCE spells it (a forced unknown status as it was set).
    pub(super) fn status_text(&self, now: Instant, boot_delay: Duration) -> &str {
        match &self.phase {
            Phase::Forced(status) => status,
            _ => self.status(now, boot_delay).as_str(),
        }
    }

    /// Booting or up: counts in its pool's live count, and may be preempted.
    pub(super) fn is_live(&self) -> bool {
        self.phase == Phase::Booting
    }
}

/// Labels' fingerprint: 8 bytes of a hash of the sorted labels, base64 like GCE's.
fn label_fingerprint(labels: &BTreeMap<String, String>) -> String {
    use base64::Engine;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in labels {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    base64::engine::general_purpose::STANDARD.encode(hash.to_be_bytes())
}

/// A backend failure inside an operation, as GCE words it.
fn internal_error() -> Failure {
    Failure {
        code: "INTERNAL_ERROR",
        message: "Internal error. Please try again or contact Google Support. (Code: '-6071327010911421934')".into(),
        details: Vec::new(),
        http_status: 500,
        http_message: "INTERNAL SERVER ERROR",
    }
}

impl World {
    /// `instances.insert`. Into a full zone (or, with the `operationErrorRate` fault, by
    /// chance) the instance shows as PROVISIONING until its operation fails with the
    /// stockout (or an internal error), then it is gone.
    pub(super) fn insert(
        &mut self,
        project: &str,
        zone: &str,
        body: &[u8],
    ) -> Result<NewOperation, ApiError> {
        let value = self.request_body(body, "Instance")?;
        let spec = parse_instance(value, &self.placement(project, zone)?, false)?;
        let id = resource_id(&mut self.rng);
        if self.zone_mut(project, zone)?.holds(project, &spec.name) {
            return Err(ApiError::already_exists(&instance_path(
                project, zone, &spec.name,
            )));
        }
        self.check_disk_names(project, zone, &spec.disks)?;
        let z = self.zone_mut(project, zone)?;
        let full = z.live >= z.capacity;
        let rate = self.faults.operation_error_rate;
        let failure = if full {
            Some(self.stockout(project, zone, &spec.body))
        } else if rate > 0.0 && self.draw() < rate {
            Some(internal_error())
        } else {
            None
        };
        if failure.is_some() {
            let fails_at = Instant::now() + self.config.op_delay;
            self.add_instance(project, zone, id, &spec, Phase::Refused, Some(fails_at))?;
        } else {
            self.create(project, zone, id, &spec)?;
        }
        Ok(self.new_operation("insert", &spec.name, id, failure))
    }

    /// Creates the instance `spec` describes, live from now.
    pub(super) fn create(
        &mut self,
        project: &str,
        zone: &str,
        id: u64,
        spec: &InstanceSpec,
    ) -> Result<(), ApiError> {
        self.add_instance(project, zone, id, spec, Phase::Booting, None)?;
        self.went_live(project, zone, &spec.name)?;
        self.counters.inserted += 1;
        Ok(())
    }

    /// Stores a new instance in `phase`, queued for the zone's sweep at `due_at`.
    fn add_instance(
        &mut self,
        project: &str,
        zone: &str,
        id: u64,
        spec: &InstanceSpec,
        phase: Phase,
        due_at: Option<Instant>,
    ) -> Result<(), ApiError> {
        let wall = SystemTime::now();
        let instance = SimInstance {
            id,
            body: spec.body.clone(),
            label_fingerprint: label_fingerprint(&spec.labels),
            labels: spec.labels.clone().into_iter().collect(),
            created: wall,
            last_start: wall,
            last_stop: None,
            phase,
            phase_since: Instant::now(),
            delete_on_preempt: spec.delete_on_preempt,
            holds_capacity: false,
            due_at: None,
        };
        let pz = self
            .zone_mut(project, zone)?
            .projects
            .entry(project.to_string())
            .or_default();
        pz.instances.insert(spec.name.clone(), instance);
        pz.disks
            .extend(spec.disks.iter().map(|disk| disk.name.clone()));
        match due_at {
            Some(at) => self.schedule(project, zone, &spec.name, at),
            None => Ok(()),
        }
    }

    /// An instance with its zone's live count and capacity.
    pub(super) fn instance_mut(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<(&mut SimInstance, u64, u64), ApiError> {
        let z = self.zone_mut(project, zone)?;
        let (live, capacity) = (z.live, z.capacity);
        z.projects
            .get_mut(project)
            .and_then(|pz| pz.instances.get_mut(name))
            .map(|i| (i, live, capacity))
            .ok_or_else(|| ApiError::not_found(&instance_path(project, zone, name)))
    }

    /// `instances.delete`: STOPPING until the operation's delay passes, holding its
    /// capacity until it is gone.
    pub(super) fn delete(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<NewOperation, ApiError> {
        let remove_at = Instant::now() + self.config.op_delay;
        let (instance, _, _) = self.instance_mut(project, zone, name)?;
        let id = instance.id;
        if instance.phase != Phase::Deleting {
            let was_live = instance.is_live();
            let pool = pool_of(&instance.labels);
            instance.phase = Phase::Deleting;
            instance.phase_since = Instant::now();
            self.schedule(project, zone, name, remove_at)?;
            if was_live {
                count_live(&mut self.pools, project, pool, false);
            }
            self.counters.deleted += 1;
        }
        Ok(self.new_operation("delete", name, id, None))
    }

    /// `instances.start`: a TERMINATED instance boots again if the zone has room.
    pub(super) fn start(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<NewOperation, ApiError> {
        let boot = self.config.boot_delay;
        let now = Instant::now();
        let (instance, live, capacity) = self.instance_mut(project, zone, name)?;
        let id = instance.id;
        let failure = match (&instance.phase, instance.status(now, boot)) {
            (Phase::Booting, _) => None,
            (Phase::Stopping { .. }, InstanceStatus::Terminated) if live < capacity => {
                self.boot_again(project, zone, name)?;
                self.counters.started += 1;
                None
            }
            (Phase::Stopping { .. }, InstanceStatus::Terminated) => {
                let body = instance.body.clone();
                Some(self.stockout(project, zone, &body))
            }
            (Phase::Stopping { .. } | Phase::Deleting | Phase::Refused | Phase::Forced(_), _) => {
                return Err(ApiError::not_ready(&instance_path(project, zone, name)))
            }
        };
        Ok(self.new_operation("start", name, id, failure))
    }

    /// A stopped or suspended instance boots from now, taking capacity again.
    pub(super) fn boot_again(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let (instance, _, _) = self.instance_mut(project, zone, name)?;
        instance.phase = Phase::Booting;
        instance.phase_since = Instant::now();
        instance.last_start = SystemTime::now();
        instance.due_at = None;
        self.went_live(project, zone, name)
    }

    /// `instances.stop`: STOPPING for the boot delay, holding its capacity until it is
    /// TERMINATED.
    pub(super) fn stop(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
    ) -> Result<NewOperation, ApiError> {
        let off_at = Instant::now() + self.config.boot_delay;
        let lasts = self.config.boot_delay;
        let (instance, _, _) = self.instance_mut(project, zone, name)?;
        let id = instance.id;
        match instance.phase {
            Phase::Booting | Phase::Forced(_) => {
                let was_live = instance.is_live();
                let pool = pool_of(&instance.labels);
                instance.phase = Phase::Stopping { lasts };
                instance.phase_since = Instant::now();
                instance.last_stop = Some(SystemTime::now());
                if instance.holds_capacity {
                    self.schedule(project, zone, name, off_at)?;
                }
                if was_live {
                    count_live(&mut self.pools, project, pool, false);
                }
                self.counters.stopped += 1;
            }
            Phase::Stopping { .. } => {}
            Phase::Deleting | Phase::Refused => {
                return Err(ApiError::not_ready(&instance_path(project, zone, name)))
            }
        }
        Ok(self.new_operation("stop", name, id, None))
    }

    /// `instances.setLabels`: 412 `conditionNotMet` on a stale fingerprint.
    pub(super) fn set_labels(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        body: &[u8],
    ) -> Result<NewOperation, ApiError> {
        let value = self.request_body(body, "InstancesSetLabelsRequest")?;
        let labels = parse_labels(value.get("labels"), "labels")?;
        let fingerprint = value.get("labelFingerprint").and_then(Value::as_str);
        let (instance, _, _) = self.instance_mut(project, zone, name)?;
        if fingerprint != Some(instance.label_fingerprint.as_str()) {
            return Err(ApiError {
                status: 412,
                reason: "conditionNotMet",
                message: "Labels fingerprint either invalid or resource labels have changed"
                    .to_string(),
            });
        }
        instance.label_fingerprint = label_fingerprint(&labels);
        instance.labels = labels.into_iter().collect();
        let id = instance.id;
        Ok(self.new_operation("setLabels", name, id, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::test_support::{body, status_of, world};
    use crate::world::Mutation;
    use pm_gce::resources::OperationStatus;
    use serde_json::json;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_operation_error_fault_fails_inserts_inside_their_operation() {
        let mut w = world(Duration::from_millis(100), Duration::ZERO);
        w.set_faults(crate::Faults {
            operation_error_rate: 1.0,
            ..crate::Faults::default()
        });
        let op = w
            .mutate("p", "z1", Mutation::Insert(&body("a")), None)
            .expect("accepted");
        assert!(op.error.is_none(), "the failure shows once DONE");
        assert_eq!(status_of(&mut w, "a"), "PROVISIONING");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            w.get_instance("p", "z1", "a").expect_err("gone").status,
            404
        );
        let done = w.get_operation("p", "z1", &op.name).expect("operation");
        assert_eq!(done.status, OperationStatus::Done);
        assert_eq!(done.http_error_status_code, Some(500));
        assert_eq!(done.error.expect("error").errors[0].code, "INTERNAL_ERROR");
        assert_eq!(w.report().0["z1"].live, 0, "nothing was created");
        w.set_faults(crate::Faults::default());
        let op = w
            .mutate("p", "z1", Mutation::Insert(&body("a")), None)
            .expect("insert");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = w.get_operation("p", "z1", &op.name).expect("operation");
        assert!(done.error.is_none());
        let bad = crate::Faults {
            operation_error_rate: 1.5,
            ..crate::Faults::default()
        };
        assert!(bad.validate().unwrap_err().contains("operationErrorRate"));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn lifecycle_follows_the_delays() {
        let mut w = world(Duration::from_millis(200), Duration::from_millis(200));
        let op = w
            .mutate("p", "z1", Mutation::Insert(&body("a")), None)
            .expect("insert");
        assert_eq!(op.status, OperationStatus::Pending);
        assert_eq!(status_of(&mut w, "a"), "PROVISIONING");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(status_of(&mut w, "a"), "STAGING");
        let op = w.get_operation("p", "z1", &op.name).expect("op");
        assert_eq!(op.status, OperationStatus::Running);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status_of(&mut w, "a"), "RUNNING");
        let op = w.get_operation("p", "z1", &op.name).expect("op");
        assert_eq!(op.status, OperationStatus::Done);
        assert!(op.end_time.is_some());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn stopping_and_deleting_instances_hold_their_capacity_until_they_are_off() {
        let mut w = world(Duration::from_millis(100), Duration::from_millis(200));
        for name in ["a", "b", "c"] {
            w.mutate("p", "z1", Mutation::Insert(&body(name)), None)
                .expect("insert");
        }
        w.mutate("p", "z1", Mutation::Stop("a"), None)
            .expect("stop");
        w.mutate("p", "z1", Mutation::Delete("b"), None)
            .expect("delete");
        assert_eq!(w.pool_reports()[0].live, 1, "only c is live in its pool");
        assert_eq!(
            w.report().0["z1"].live,
            3,
            "but a and b still hold machines"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(w.get_instance("p", "z1", "b").is_err(), "deleted");
        assert_eq!(w.report().0["z1"].live, 2);
        assert_eq!(status_of(&mut w, "a"), "STOPPING");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status_of(&mut w, "a"), "TERMINATED");
        assert_eq!(w.report().0["z1"].live, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn set_labels_checks_the_fingerprint() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        w.mutate("p", "z1", Mutation::Insert(&body("a")), None)
            .expect("insert");
        let current = w.get_instance("p", "z1", "a").expect("get")["labelFingerprint"].clone();
        let stale =
            serde_json::to_vec(&json!({"labels": {"x": "y"}, "labelFingerprint": "c3RhbGU="}))
                .expect("json");
        let error = w
            .mutate("p", "z1", Mutation::SetLabels("a", &stale), None)
            .expect_err("stale");
        assert_eq!((error.status, error.reason), (412, "conditionNotMet"));
        let fresh = serde_json::to_vec(&json!({"labels": {"x": "y"}, "labelFingerprint": current}))
            .expect("json");
        w.mutate("p", "z1", Mutation::SetLabels("a", &fresh), None)
            .expect("set");
        let got = w.get_instance("p", "z1", "a").expect("get");
        assert_eq!(got["labels"], json!({"x": "y"}));
        assert_ne!(got["labelFingerprint"], current);
    }
}
