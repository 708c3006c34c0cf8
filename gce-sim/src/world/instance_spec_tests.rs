//! Tests of instance validation: fields, machine types, disks, network interfaces and
//! scheduling.

use super::*;
use std::time::Duration;

use crate::world::test_support::{body, instance, world};
use crate::world::{Mutation, World};
use serde_json::json;

/// The error inserting `value` into `z1` of project `p`.
fn refusal(w: &mut World, value: &Value) -> ApiError {
    let bytes = serde_json::to_vec(value).expect("json");
    w.mutate("p", "z1", Mutation::Insert(&bytes), None)
        .expect_err("invalid")
}

/// Instance `a` with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut body = instance("a");
    body[field] = value;
    body
}

#[tokio::test(flavor = "current_thread")]
async fn validation_errors() {
    let mut w = world(Duration::ZERO, Duration::ZERO);
    let mut nameless = instance("a");
    nameless.as_object_mut().expect("object").remove("name");
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "Invalid value at 'resource' (TYPE_MESSAGE), []"),
        (nameless, "resource.name"),
        (with("name", json!("Bad_Name")), "resource.name"),
        (json!({"name": "a"}), "resource.machineType"),
        (
            with("machineType", json!("e2-small")),
            "resource.machineType",
        ),
        (with("labels", json!({"k": 1})), "resource.labels.k"),
        (
            with("scheduling", json!({"preemptible": "yes"})),
            "resource.scheduling.preemptible",
        ),
        (
            with(
                "scheduling",
                json!({"preemptible": true, "onHostMaintenance": "MIGRATE"}),
            ),
            "OnHostMaintenance",
        ),
        (
            with("scheduling", json!({"provisioningModel": "spot"})),
            "resource.scheduling.provisioningModel",
        ),
        (
            with("metadata", json!({"items": [{"key": "k", "value": 1}]})),
            "resource.metadata.items",
        ),
        (with("disks", json!({"boot": true})), "resource.disks"),
    ];
    for (value, expected) in cases {
        let error = refusal(&mut w, &value);
        assert_eq!(error.status, 400, "{value}");
        assert!(
            error.message.contains(expected),
            "{} lacks {expected}",
            error.message
        );
    }
    let error = w
        .mutate("p", "z1", Mutation::Insert(b"{not json"), None)
        .expect_err("parse");
    assert_eq!((error.status, error.reason), (400, "parseError"));
    let error = w
        .mutate("p", "nowhere", Mutation::Insert(&body("a")), None)
        .expect_err("zone");
    assert_eq!(error.status, 404);
    let error = w
        .mutate("p", "z1", Mutation::Insert(&body("a")), Some("abc"))
        .expect_err("request id");
    assert!(error.message.contains("requestId"));
}

#[tokio::test(flavor = "current_thread")]
async fn the_machine_type_must_be_of_the_zone_and_its_catalog() {
    let mut w = world(Duration::ZERO, Duration::ZERO);
    let error = refusal(
        &mut w,
        &with("machineType", json!("zones/z2/machineTypes/e2-small")),
    );
    assert_eq!(error.status, 400);
    assert!(
        error.message.starts_with(
            "Invalid value for field 'resource.machineType': 'zones/z2/machineTypes/e2-small'."
        ),
        "{}",
        error.message
    );
    assert!(error.message.contains("same zone"), "{}", error.message);
    let error = refusal(
        &mut w,
        &with("machineType", json!("zones/z1/machineTypes/e2-huge-3")),
    );
    assert_eq!(error.status, 400);
    assert!(
        error
            .message
            .contains("Machine type with name 'e2-huge-3' does not exist in zone 'z1'."),
        "{}",
        error.message
    );
    let full = format!("{URL_ROOT}projects/p/zones/z1/machineTypes/n2d-highmem-8");
    let accepted = serde_json::to_vec(&with("machineType", json!(full))).expect("json");
    w.mutate("p", "z1", Mutation::Insert(&accepted), None)
        .expect("a catalog type of the zone");
}

#[tokio::test(flavor = "current_thread")]
async fn a_boot_disk_and_a_network_interface_are_required() {
    let mut w = world(Duration::ZERO, Duration::ZERO);
    let mut diskless = instance("a");
    diskless.as_object_mut().expect("object").remove("disks");
    let data_disk_first = with(
        "disks",
        json!([{"initializeParams": {"diskSizeGb": "10"}}, {"boot": true}]),
    );
    let mut unconnected = instance("a");
    unconnected
        .as_object_mut()
        .expect("object")
        .remove("networkInterfaces");
    let cases = [
        (diskless, "'resource.disks'"),
        (with("disks", json!([])), "'resource.disks'"),
        (data_disk_first, "Boot disk must be the first disk"),
        (unconnected, "'resource.networkInterfaces'"),
        (
            with("networkInterfaces", json!([])),
            "'resource.networkInterfaces'",
        ),
    ];
    for (value, expected) in cases {
        let error = refusal(&mut w, &value);
        assert_eq!((error.status, error.reason), (400, "invalid"), "{value}");
        assert!(
            error.message.contains(expected),
            "{} lacks {expected}",
            error.message
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_standard_e2_vm_cannot_terminate_on_host_maintenance() {
    let mut w = world(Duration::ZERO, Duration::ZERO);
    let standard = json!({"onHostMaintenance": "TERMINATE", "automaticRestart": false});
    let error = refusal(&mut w, &with("scheduling", standard.clone()));
    assert_eq!((error.status, error.reason), (400, "badRequest"));
    assert_eq!(
        error.message,
        "e2 instances do not support onHostMaintenance=TERMINATE unless they are preemptible."
    );
    let mut n2 = with("scheduling", standard);
    n2["machineType"] = json!("zones/z1/machineTypes/n2-standard-2");
    let n2 = serde_json::to_vec(&n2).expect("json");
    w.mutate("p", "z1", Mutation::Insert(&n2), None)
        .expect("other families may");
    let spot = json!({"provisioningModel": "SPOT", "onHostMaintenance": "TERMINATE"});
    let spot = serde_json::to_vec(&with("scheduling", spot)).expect("json");
    w.mutate("p", "z2", Mutation::Insert(&spot), None)
        .expect_err("wrong zone's machine type");
    let mut spot_a = instance("b");
    spot_a["scheduling"] = json!({"provisioningModel": "SPOT", "onHostMaintenance": "TERMINATE"});
    let spot_a = serde_json::to_vec(&spot_a).expect("json");
    w.mutate("p", "z1", Mutation::Insert(&spot_a), None)
        .expect("a Spot e2 VM may");
}
