//! The body of an instance insert validated as GCE would: name, labels, machine type
//! (of the zone's catalog), boot disk, network interface and scheduling, keeping the
//! client's other fields as compact JSON. The body's shape was checked against the
//! discovery document before (see `discovery`).

use std::collections::BTreeMap;

use pm_gce::resources::{Instance, OnHostMaintenance, ProvisioningModel, TerminationAction};
use pm_gce::template::{validate_label_key, validate_label_value, validate_name};
use serde_json::value::RawValue;
use serde_json::Value;

use super::disks::{disk_names, DiskName};
use super::{ApiError, World, URL_ROOT};

/// Fields of an instance that the server owns; whatever a client sends for them is
/// replaced.
const SERVER_FIELDS: [&str; 12] = [
    "kind",
    "id",
    "name",
    "zone",
    "status",
    "statusMessage",
    "selfLink",
    "creationTimestamp",
    "labels",
    "labelFingerprint",
    "lastStartTimestamp",
    "lastStopTimestamp",
];

/// What GCE requires of an instance name.
const NAME_RULE: &str = "Must be a match of regex '[a-z]([-a-z0-9]*[a-z0-9])?'";

/// Most labels one resource may carry.
const MAX_LABELS: usize = 64;

/// Validated instance fields of an insert.
pub(super) struct InstanceSpec {
    pub(super) name: String,
    pub(super) body: Box<[(Box<str>, Box<RawValue>)]>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) delete_on_preempt: bool,
    /// The disks it creates whose names are known.
    pub(super) disks: Vec<DiskName>,
}

/// Where an instance goes: its project, its zone and the machine types the zone offers.
pub(super) struct Placement<'a> {
    pub(super) project: &'a str,
    pub(super) zone: &'a str,
    pub(super) machine_types: &'a [String],
}

impl World {
    /// Where an instance of `project` in `zone` goes; 404 if the zone is not served.
    pub(super) fn placement<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
    ) -> Result<Placement<'a>, ApiError> {
        if !self.zones.contains_key(zone) {
            return Err(ApiError::not_found(&format!(
                "projects/{project}/zones/{zone}"
            )));
        }
        Ok(Placement {
            project,
            zone,
            machine_types: &self.config.machine_types,
        })
    }
}

/// Validates the labels object at `field` (absent means none).
pub(super) fn parse_labels(
    value: Option<&Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = value else {
        return Err(ApiError::invalid_field(
            field,
            &value.to_string(),
            "Labels must be an object.",
        ));
    };
    if map.len() > MAX_LABELS {
        return Err(ApiError::invalid_field(
            field,
            &map.len().to_string(),
            "At most 64 labels are allowed.",
        ));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in map {
        let Value::String(text) = value else {
            return Err(ApiError::invalid_field(
                &format!("{field}.{key}"),
                &value.to_string(),
                "Label values must be strings.",
            ));
        };
        validate_label_key(key)
            .and_then(|()| validate_label_value(text))
            .map_err(|e| {
                ApiError::invalid_field(&format!("{field}.{key}"), text, &e.to_string())
            })?;
        labels.insert(key.clone(), text.clone());
    }
    Ok(labels)
}

/// Validates an instance body as GCE would and keeps the client's fields.
/// `bare_machine_type` accepts `e2-small` (instance properties of a bulk insert).
pub(super) fn parse_instance(
    value: Value,
    place: &Placement<'_>,
    bare_machine_type: bool,
) -> Result<InstanceSpec, ApiError> {
    let (project, zone) = (place.project, place.zone);
    let Value::Object(mut body) = value else {
        return Err(ApiError::invalid(
            "The instance resource must be a JSON object.",
        ));
    };
    let name = match body.get("name") {
        Some(Value::String(name)) => name.clone(),
        other => {
            return Err(field_error(
                "resource.name",
                other,
                "Must be a string.",
                NAME_RULE,
            ))
        }
    };
    validate_name(&name).map_err(|e| {
        ApiError::invalid_field("resource.name", &name, &format!("{NAME_RULE} ({e})"))
    })?;
    let labels = parse_labels(body.get("labels"), "resource.labels")?;
    let machine_type = match body.get("machineType") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        other => {
            return Err(field_error(
                "resource.machineType",
                other,
                "Invalid machine type.",
                "Machine type is required.",
            ))
        }
    };
    let expanded = expand_machine_type(&machine_type, project, zone, bare_machine_type)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "resource.machineType",
                &machine_type,
                "Expected a URL or a partial URL like zones/ZONE/machineTypes/TYPE.",
            )
        })?;
    let machine = offered_machine_type(&machine_type, &expanded, place)?.to_string();
    body.insert("machineType".into(), Value::String(expanded));
    let disks = boot_disk_first(body.get("disks"))?;
    let disks = disk_names(&name, disks);
    require_network_interface(body.get("networkInterfaces"))?;
    let typed: Instance = serde_path_to_error::deserialize(Value::Object(body.clone()))
        .map_err(|e| ApiError::undecodable(&e))?;
    let mut scheduling = typed.scheduling.unwrap_or_default();
    let spot = scheduling.preemptible == Some(true)
        || scheduling.provisioning_model == Some(ProvisioningModel::Spot);
    if spot {
        if scheduling.on_host_maintenance == Some(OnHostMaintenance::Migrate) {
            return Err(ApiError::invalid_field(
                "resource.scheduling.preemptible",
                "true",
                "Scheduling must have preemptible be false when OnHostMaintenance isn't TERMINATE.",
            ));
        }
        if scheduling.automatic_restart == Some(true) {
            return Err(ApiError::invalid_field(
                "resource.scheduling.preemptible",
                "true",
                "Scheduling must have preemptible be false when AutomaticRestart is true.",
            ));
        }
        scheduling.on_host_maintenance = Some(OnHostMaintenance::Terminate);
        scheduling.automatic_restart = Some(false);
    } else if machine.starts_with("e2-")
        && scheduling.on_host_maintenance == Some(OnHostMaintenance::Terminate)
    {
        return Err(ApiError::bad_request(
            "e2 instances do not support onHostMaintenance=TERMINATE unless they are preemptible.",
        ));
    } else {
        scheduling
            .on_host_maintenance
            .get_or_insert(OnHostMaintenance::Migrate);
        scheduling.automatic_restart.get_or_insert(true);
    }
    scheduling.preemptible.get_or_insert(false);
    scheduling
        .provisioning_model
        .get_or_insert(ProvisioningModel::Standard);
    let delete_on_preempt =
        scheduling.instance_termination_action == Some(TerminationAction::Delete);
    let scheduling =
        serde_json::to_value(&scheduling).map_err(|e| ApiError::invalid(e.to_string()))?;
    body.insert("scheduling".into(), scheduling);
    for field in SERVER_FIELDS {
        body.remove(field);
    }
    let body = body
        .into_iter()
        .map(
            |(key, value)| match serde_json::value::to_raw_value(&value) {
                Ok(raw) => Ok((key.into_boxed_str(), raw)),
                Err(e) => Err(ApiError::invalid(format!("field {key:?}: {e}"))),
            },
        )
        .collect::<Result<_, _>>()?;
    Ok(InstanceSpec {
        name,
        body,
        labels,
        delete_on_preempt,
        disks,
    })
}

/// The name of the machine type at `expanded` (the URL of `sent`), if it is in the
/// request's zone and the zone offers it.
fn offered_machine_type<'a>(
    sent: &str,
    expanded: &'a str,
    place: &Placement<'_>,
) -> Result<&'a str, ApiError> {
    let invalid = |problem: &str| ApiError::invalid_field("resource.machineType", sent, problem);
    let (scope, machine) = expanded
        .rsplit_once("/machineTypes/")
        .ok_or_else(|| invalid("Invalid machine type."))?;
    let zone = scope.rsplit_once("/zones/").map_or("", |(_, zone)| zone);
    if zone != place.zone {
        return Err(invalid(&format!(
            "Machine type must be in the same zone as the instance ('{}'), not in '{zone}'.",
            place.zone
        )));
    }
    if !place.machine_types.iter().any(|m| m == machine) {
        return Err(invalid(&format!(
            "Machine type with name '{machine}' does not exist in zone '{zone}'."
        )));
    }
    Ok(machine)
}

/// The disks of an instance body, if there are some and the first is the boot disk.
fn boot_disk_first(disks: Option<&Value>) -> Result<&[Value], ApiError> {
    let disks = disks
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let Some(first) = disks.first() else {
        return Err(ApiError::invalid_field(
            "resource.disks",
            "",
            "At least one disk, the boot disk, is required.",
        ));
    };
    if first.get("boot") != Some(&Value::Bool(true)) {
        return Err(ApiError::invalid_field(
            "resource.disks[0]",
            &first.to_string(),
            "Boot disk must be the first disk attached to the instance.",
        ));
    }
    Ok(disks)
}

/// 400 unless an instance body has a network interface.
fn require_network_interface(interfaces: Option<&Value>) -> Result<(), ApiError> {
    match interfaces.and_then(Value::as_array) {
        Some(list) if !list.is_empty() => Ok(()),
        _ => Err(ApiError::invalid_field(
            "resource.networkInterfaces",
            "",
            "At least one network interface is required.",
        )),
    }
}

/// 400 for the instance field `field`: `wrong` if it holds `value`, `missing` if absent.
fn field_error(field: &str, value: Option<&Value>, wrong: &str, missing: &str) -> ApiError {
    match value {
        Some(value) => ApiError::invalid_field(field, &value.to_string(), wrong),
        None => ApiError::invalid_field(field, "", missing),
    }
}

/// A machine type as the full URL GCE returns, or `None` if it is not one.
fn expand_machine_type(
    machine_type: &str,
    project: &str,
    zone: &str,
    bare_ok: bool,
) -> Option<String> {
    if machine_type.starts_with("https://") || machine_type.starts_with("http://") {
        return machine_type
            .contains("/machineTypes/")
            .then(|| machine_type.to_string());
    }
    if let Some(rest) = machine_type.strip_prefix("projects/") {
        return rest
            .contains("/machineTypes/")
            .then(|| format!("{URL_ROOT}{machine_type}"));
    }
    if machine_type.starts_with("zones/") {
        return machine_type
            .contains("/machineTypes/")
            .then(|| format!("{URL_ROOT}projects/{project}/{machine_type}"));
    }
    if bare_ok && validate_name(machine_type).is_ok() {
        return Some(format!(
            "{URL_ROOT}projects/{project}/zones/{zone}/machineTypes/{machine_type}"
        ));
    }
    None
}

#[cfg(test)]
#[path = "instance_spec_tests.rs"]
mod tests;
