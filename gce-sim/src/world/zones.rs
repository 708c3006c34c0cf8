//! Zones: the per-zone, per-project stores of instances, operations and disk names, the
//! sweep that removes deleted (and stocked-out) instances and releases the capacity of
//! stopped ones once due, and `zones.list` / `zones.get`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use tokio::time::Instant;

use super::disks::release_disks;
use super::instances::{Phase, SimInstance};
use super::operations::SimOperation;
use super::paging::list_reply;
use super::{zone_url, ApiError, World, URL_ROOT};

/// One project's instances, operations and disk names in a zone.
#[derive(Default)]
pub(super) struct ProjectZone {
    pub(super) instances: BTreeMap<String, SimInstance>,
    pub(super) operations: BTreeMap<String, SimOperation>,
    /// The operations' names by a key that sorts newest first (`operations::newest_first_key`),
    /// so a newest-first list reads its page instead of sorting the whole history. Kept by
    /// `ProjectZone::insert_operation`.
    pub(super) by_newest: BTreeMap<String, String>,
    /// Names of the disks that exist (see `disks`).
    pub(super) disks: BTreeSet<String>,
}

/// One zone: its capacity, live count and every project's resources.
pub(super) struct Zone {
    pub(super) capacity: u64,
    /// Number of instances holding capacity (`holds_capacity`), over all projects.
    pub(super) live: u64,
    pub(super) projects: BTreeMap<String, ProjectZone>,
    /// (when, project, name) of instances whose `due_at` is set: removed then if in
    /// [`Phase::Deleting`] or [`Phase::Refused`], else their capacity released. An entry
    /// whose instance's `due_at` has changed since is stale and skipped.
    pub(super) due: BTreeSet<(Instant, String, String)>,
}

impl Zone {
    /// An empty zone of `capacity`.
    pub(super) fn new(capacity: u64) -> Zone {
        Zone {
            capacity,
            live: 0,
            projects: BTreeMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// Whether `project` has an instance `name` here.
    pub(super) fn holds(&self, project: &str, name: &str) -> bool {
        self.projects
            .get(project)
            .is_some_and(|pz| pz.instances.contains_key(name))
    }

    /// Removes the instances whose removal is due, and releases the capacity of those
    /// that are off.
    pub(super) fn sweep(&mut self, now: Instant) {
        while self.due.first().is_some_and(|first| first.0 <= now) {
            let Some((at, project, name)) = self.due.pop_first() else {
                break;
            };
            let Some(pz) = self.projects.get_mut(&project) else {
                continue;
            };
            let Some(instance) = pz.instances.get_mut(&name) else {
                continue;
            };
            if instance.due_at != Some(at) {
                continue;
            }
            instance.due_at = None;
            if std::mem::replace(&mut instance.holds_capacity, false) {
                self.live = self.live.saturating_sub(1);
            }
            if matches!(instance.phase, Phase::Deleting | Phase::Refused) {
                let refused = instance.phase == Phase::Refused;
                if let Some(instance) = pz.instances.remove(&name) {
                    release_disks(&mut pz.disks, &name, &instance, refused);
                }
            }
        }
    }
}

impl World {
    /// A served zone, swept of due deletions.
    pub(super) fn zone_mut(&mut self, project: &str, zone: &str) -> Result<&mut Zone, ApiError> {
        let found = self
            .zones
            .get_mut(zone)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project}/zones/{zone}")))?;
        found.sweep(Instant::now());
        Ok(found)
    }

    /// Sets instance `name`'s `due_at` to `at` and queues it for its zone's sweep.
    pub(super) fn schedule(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        at: Instant,
    ) -> Result<(), ApiError> {
        let z = self.zone_mut(project, zone)?;
        if let Some(instance) = z
            .projects
            .get_mut(project)
            .and_then(|pz| pz.instances.get_mut(name))
        {
            instance.due_at = Some(at);
        }
        z.due.insert((at, project.to_string(), name.to_string()));
        Ok(())
    }

    /// `zones.list`.
    pub fn list_zones(&self, project: &str) -> Value {
        let items: Vec<Value> = self
            .zones
            .keys()
            .map(|zone| zone_resource(project, zone))
            .collect();
        list_reply(
            "compute#zoneList",
            &format!("projects/{project}/zones"),
            items,
            None,
        )
    }

    /// `zones.get`.
    pub fn get_zone(&self, project: &str, zone: &str) -> Result<Value, ApiError> {
        if self.zones.contains_key(zone) {
            Ok(zone_resource(project, zone))
        } else {
            Err(ApiError::not_found(&format!(
                "projects/{project}/zones/{zone}"
            )))
        }
    }
}

/// A zone as GCE renders it.
fn zone_resource(project: &str, zone: &str) -> Value {
    let region = zone.rsplit_once('-').map_or(zone, |(region, _)| region);
    json!({
        "kind": "compute#zone",
        "id": format!("{}", 2000 + zone.len()),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": zone,
        "description": zone,
        "status": "UP",
        "region": format!("{URL_ROOT}projects/{project}/regions/{region}"),
        "selfLink": zone_url(project, zone),
        "supportsPzs": false,
    })
}
