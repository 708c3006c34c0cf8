//! Helpers of the world's unit tests: a small two-zone world and an instance body.

use std::time::Duration;

use serde_json::{json, Value};

use super::World;
use crate::SimConfig;

/// A world of zones `z1` and `z2`, capacity 3 each, seeded, with the delays given (the
/// preemption notice as long as a boot).
pub(super) fn world(op_delay: Duration, boot_delay: Duration) -> World {
    let config = SimConfig {
        zones: vec!["z1".into(), "z2".into()],
        capacity: 3,
        op_delay,
        boot_delay,
        preempt_notice: boot_delay,
        seed: Some(1),
        ..SimConfig::default()
    };
    World::new(config)
}

/// A preemptible `pm-pool=web` instance `name` in `z1`, with a boot disk deleted with
/// it and a network interface.
pub(super) fn instance(name: &str) -> Value {
    json!({
        "name": name,
        "machineType": "zones/z1/machineTypes/e2-small",
        "labels": {"pm-pool": "web"},
        "scheduling": {"preemptible": true},
        "disks": [{"boot": true, "autoDelete": true, "initializeParams": {
            "sourceImage": "projects/debian-cloud/global/images/family/debian-12"}}],
        "networkInterfaces": [{"network": "global/networks/default"}]
    })
}

/// The insert body of [`instance`] `name`.
pub(super) fn body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&instance(name)).expect("json")
}

/// The status of instance `name` of project `p` in `z1`.
pub(super) fn status_of(world: &mut World, name: &str) -> String {
    world.get_instance("p", "z1", name).expect("get")["status"]
        .as_str()
        .expect("status")
        .to_string()
}
