//! Tests of request checks against the discovery document.

use serde_json::json;

use super::*;

fn check(schema: &str, mut value: Value) -> Result<Value, ApiError> {
    Schemas::embedded()
        .check(schema, &mut value, "resource")
        .map(|()| value)
}

fn message(schema: &str, value: Value) -> String {
    let error = check(schema, value).expect_err("refused");
    assert_eq!((error.status, error.reason), (400, "invalid"));
    error.message
}

#[test]
fn unknown_fields_are_named_where_they_are() {
    assert_eq!(
        message("Instance", json!({"name": "a", "colour": "red"})),
        "Invalid JSON payload received. Unknown name \"colour\" at 'resource': Cannot find field."
    );
    assert_eq!(
        message("Instance", json!({"scheduling": {"preemptable": true}})),
        "Invalid JSON payload received. Unknown name \"preemptable\" at 'resource.scheduling': Cannot find field."
    );
    let nested = json!({"disks": [{"boot": true, "initializeParams": {"sourceImg": "x"}}]});
    assert!(message("Instance", nested).contains("at 'resource.disks[0].initializeParams'"));
    assert!(message(
        "InstancesSetLabelsRequest",
        json!({"labels": {}, "fingerprint": "x"})
    )
    .contains("Unknown name \"fingerprint\""));
}

#[test]
fn wrong_types_and_enum_values_are_named() {
    let cases = [
        (
            json!({"canIpForward": "yes"}),
            "Invalid value at 'resource.canIpForward' (TYPE_BOOL), \"yes\"",
        ),
        (
            json!({"scheduling": {"onHostMaintenance": "REBOOT"}}),
            "Invalid value at 'resource.scheduling.onHostMaintenance' (TYPE_ENUM), \"REBOOT\"",
        ),
        (
            json!({"disks": [{"initializeParams": {"diskSizeGb": "ten"}}]}),
            "'resource.disks[0].initializeParams.diskSizeGb' (TYPE_INT64)",
        ),
        (
            json!({"scheduling": {"availabilityDomain": 3_000_000_000u64}}),
            "'resource.scheduling.availabilityDomain' (TYPE_INT32)",
        ),
        (json!({"disks": {"boot": true}}), "'resource.disks'"),
        (
            json!({"metadata": "startup"}),
            "'resource.metadata' (TYPE_MESSAGE)",
        ),
        (
            json!({"tags": {"items": ["a", 1]}}),
            "'resource.tags.items[1]' (TYPE_STRING), 1",
        ),
        (
            json!({"fingerprint": "not base64!"}),
            "'resource.fingerprint' (TYPE_BYTES)",
        ),
    ];
    for (value, expected) in cases {
        let text = message("Instance", value);
        assert!(text.contains(expected), "{text} lacks {expected}");
    }
    let long = "x".repeat(500);
    assert!(message("Instance", json!({"canIpForward": long})).len() < 200);
}

#[test]
fn proto_json_forms_are_accepted() {
    let value = json!({
        "disks": [{"initializeParams": {"diskSizeGb": 10}}],
        "scheduling": {"availabilityDomain": "2", "preemptible": true},
        "labelFingerprint": "42WmSpB8rSM=",
        "description": null
    });
    let checked = check("Instance", value).expect("valid");
    assert!(checked.get("description").is_none(), "null is unset");
    let bulk = json!({"count": 2, "minCount": "1", "namePattern": "a-#",
                      "instanceProperties": {"machineType": "e2-small"}});
    check("BulkInsertInstanceResource", bulk).expect("valid");
}

#[test]
fn output_only_fields_are_accepted_and_dropped() {
    let value = json!({
        "name": "a", "id": "123", "status": "RUNNING", "cpuPlatform": "Intel",
        "satisfiesPzs": true,
        "disks": [{"boot": true, "index": 0, "kind": "compute#attachedDisk"}]
    });
    let checked = check("Instance", value).expect("valid");
    assert_eq!(checked, json!({"name": "a", "disks": [{"boot": true}]}));
    let error = check("Instance", json!({"id": "not a number"})).expect_err("typed");
    assert!(error.message.contains("'resource.id' (TYPE_UINT64)"));
}

#[test]
fn a_document_loads_from_a_file_and_a_broken_one_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("compute.v1.json");
    std::fs::write(&path, EMBEDDED).expect("write");
    let loaded = Schemas::load(Some(&path)).expect("loads");
    let mut value = json!({"colour": 1});
    assert!(loaded.check("Instance", &mut value, "resource").is_err());
    std::fs::write(&path, r#"{"schemas": {"Instance": {}}}"#).expect("write");
    assert!(matches!(
        Schemas::load(Some(&path)),
        Err(DiscoveryError::MissingSchema { .. })
    ));
    std::fs::write(&path, "not json").expect("write");
    assert!(matches!(
        Schemas::load(Some(&path)),
        Err(DiscoveryError::Malformed { .. })
    ));
    let missing = dir.path().join("missing.json");
    assert!(matches!(
        Schemas::load(Some(&missing)),
        Err(DiscoveryError::Unreadable { .. })
    ));
}

#[test]
fn the_embedded_copy_names_its_source() {
    let document: Value = serde_json::from_str(EMBEDDED).expect("json");
    assert!(document["source"]
        .as_str()
        .is_some_and(|s| s.contains("google-api-python-client")));
    assert!(document["revision"].is_string());
}
