//! What the control API reports: request counts by method and outcome, zones and
//! counters, every instance with the calls that changed it, and pools' live counts.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::World;
use crate::control::{Counters, InstanceReport, PoolReport, ZoneReport};

impl World {
    /// Counts one API request.
    pub fn count_request(&mut self, method: &str, outcome: &str) {
        *self
            .stats
            .entry(method.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Request counts by method and outcome.
    pub fn stats(&self) -> &BTreeMap<String, BTreeMap<String, u64>> {
        &self.stats
    }

    /// Zones, capacities, instances by status and counters.
    pub fn report(&mut self) -> (BTreeMap<String, ZoneReport>, Counters) {
        let now = Instant::now();
        let boot = self.config.boot_delay;
        let zones = self
            .zones
            .iter_mut()
            .map(|(name, zone)| {
                zone.sweep(now);
                let mut instances: BTreeMap<String, u64> = BTreeMap::new();
                let mut operations = 0;
                for pz in zone.projects.values() {
                    operations += pz.operations.len() as u64;
                    for instance in pz.instances.values() {
                        *instances
                            .entry(instance.status_text(now, boot).to_string())
                            .or_default() += 1;
                    }
                }
                let report = ZoneReport {
                    capacity: zone.capacity,
                    live: zone.live,
                    instances,
                    operations,
                };
                (name.clone(), report)
            })
            .collect();
        (zones, self.counters.clone())
    }

    /// Every instance of every project and zone, as the control API lists them.
    pub fn instance_reports(&mut self) -> Vec<InstanceReport> {
        let now = Instant::now();
        let boot = self.config.boot_delay;
        let mut out = Vec::new();
        for (zone_name, zone) in &mut self.zones {
            zone.sweep(now);
            for (project, pz) in &zone.projects {
                for (name, instance) in &pz.instances {
                    out.push(InstanceReport {
                        project: project.clone(),
                        zone: zone_name.clone(),
                        name: name.clone(),
                        id: instance.id.to_string(),
                        status: instance.status_text(now, boot).to_string(),
                        labels: instance.labels.iter().cloned().collect(),
                        changes: self
                            .changes
                            .get(&(project.clone(), zone_name.clone(), name.clone()))
                            .cloned()
                            .unwrap_or_default(),
                    });
                }
            }
        }
        out
    }

    /// Live instances now and at most per project and `pm-pool` label, since start or
    /// the last reset.
    pub fn pool_reports(&self) -> Vec<PoolReport> {
        self.pools
            .iter()
            .map(|((project, pool), report)| PoolReport {
                project: project.clone(),
                pool: pool.clone(),
                ..report.clone()
            })
            .collect()
    }

    /// Counts a call of `method` that changes instance `name`, whatever its outcome.
    pub fn count_change(&mut self, project: &str, zone: &str, name: &str, method: &str) {
        *self
            .changes
            .entry((project.to_string(), zone.to_string(), name.to_string()))
            .or_default()
            .entry(method.to_string())
            .or_default() += 1;
    }
}
