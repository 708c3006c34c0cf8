//! Disk names in a zone. An instance creates its disks: the boot disk is named
//! `initializeParams.diskName`, or after the instance; another disk is tracked only
//! when it names itself. A name already used in the zone is 409 `alreadyExists` naming
//! the disk, as GCE answers. A disk without `autoDelete: true` (the API's default is
//! false) outlives its instance and keeps its name taken.

use std::collections::BTreeSet;

use serde_json::Value;

use super::instances::SimInstance;
use super::{ApiError, World};

/// A disk an instance creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DiskName {
    pub(super) name: String,
    /// Deleted with the instance.
    pub(super) auto_delete: bool,
}

/// The named disks that the disks of instance `instance` create (only those made from
/// `initializeParams`; attached existing disks are not created).
pub(super) fn disk_names(instance: &str, disks: &[Value]) -> Vec<DiskName> {
    disks
        .iter()
        .filter_map(|disk| {
            let params = disk.get("initializeParams")?;
            let named = params.get("diskName").and_then(Value::as_str);
            let boot = disk.get("boot") == Some(&Value::Bool(true));
            let name = named.or(boot.then_some(instance))?;
            Some(DiskName {
                name: name.to_string(),
                auto_delete: disk.get("autoDelete") == Some(&Value::Bool(true)),
            })
        })
        .collect()
}

/// The named disks a stored instance created.
fn created_disks(name: &str, instance: &SimInstance) -> Vec<DiskName> {
    let stored = instance
        .body
        .iter()
        .find(|(key, _)| &**key == "disks")
        .and_then(|(_, raw)| serde_json::from_str::<Vec<Value>>(raw.get()).ok())
        .unwrap_or_default();
    disk_names(name, &stored)
}

/// Frees the names of the disks removed with instance `name`: those deleted with it, or
/// all of them when it never came up (`never_created`: its insert stocked out).
pub(super) fn release_disks(
    disks: &mut BTreeSet<String>,
    name: &str,
    instance: &SimInstance,
    never_created: bool,
) {
    for disk in created_disks(name, instance) {
        if disk.auto_delete || never_created {
            disks.remove(&disk.name);
        }
    }
}

impl World {
    /// 409 if a disk the instances would create is named like a disk of the zone, or
    /// like another of them.
    pub(super) fn check_disk_names<'a>(
        &mut self,
        project: &str,
        zone: &str,
        wanted: impl IntoIterator<Item = &'a DiskName>,
    ) -> Result<(), ApiError> {
        let taken = self
            .zone_mut(project, zone)?
            .projects
            .get(project)
            .map(|pz| &pz.disks);
        let mut new = BTreeSet::new();
        for disk in wanted {
            let used = taken.is_some_and(|t| t.contains(&disk.name));
            if used || !new.insert(disk.name.as_str()) {
                return Err(ApiError::already_exists(&format!(
                    "projects/{project}/zones/{zone}/disks/{}",
                    disk.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::world::test_support::{instance, world};
    use crate::world::{ApiError, Mutation, World};

    fn insert(w: &mut World, body: &Value) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(body).expect("json");
        w.mutate("p", "z1", Mutation::Insert(&bytes), None)
            .map(|_| ())
    }

    fn delete(w: &mut World, name: &str) {
        w.mutate("p", "z1", Mutation::Delete(name), None)
            .expect("delete");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_disk_name_used_in_the_zone_is_409_naming_the_disk() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let data = json!({"deviceName": "data", "initializeParams": {"diskName": "data"}});
        let mut a = instance("a");
        a["disks"].as_array_mut().expect("disks").push(data.clone());
        insert(&mut w, &a).expect("first");
        let mut b = instance("b");
        b["disks"].as_array_mut().expect("disks").push(data);
        let error = insert(&mut w, &b).expect_err("taken");
        assert_eq!((error.status, error.reason), (409, "alreadyExists"));
        assert_eq!(
            error.message,
            "The resource 'projects/p/zones/z1/disks/data' already exists"
        );
        let mut boot_named_b = instance("c");
        boot_named_b["disks"][0]["initializeParams"]["diskName"] = json!("a");
        let error = insert(&mut w, &boot_named_b).expect_err("a's boot disk");
        assert!(error.message.contains("/disks/a'"), "{}", error.message);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_disk_outlives_its_instance_unless_auto_deleted() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        let mut kept = instance("kept");
        kept["disks"][0]["autoDelete"] = json!(false);
        insert(&mut w, &kept).expect("insert");
        delete(&mut w, "kept");
        tokio::task::yield_now().await;
        assert!(w.get_instance("p", "z1", "kept").is_err(), "instance gone");
        let error = insert(&mut w, &instance("kept")).expect_err("its disk stays");
        assert!(
            error.message.contains("'projects/p/zones/z1/disks/kept'"),
            "{}",
            error.message
        );
        insert(&mut w, &instance("freed")).expect("insert");
        delete(&mut w, "freed");
        tokio::task::yield_now().await;
        insert(&mut w, &instance("freed")).expect("an auto-deleted disk frees its name");
    }
}
