//! Preemption: named or counted preemptions from the control API, random ones at
//! `--preempt-rate`, each recording a `compute.instances.preempted` operation and
//! giving a live instance its notice (`--preempt-notice-ms`, STOPPING) before it is
//! stopped or deleted.

use std::time::{Duration, SystemTime};

use rand::seq::IndexedRandom;
use rand::Rng;
use tokio::time::Instant;

use super::capacity::{count_live, pool_of};
use super::instances::{Phase, SimInstance};
use super::operations::SimOperation;
use super::{ApiError, World};
use crate::clock::{resource_id, system_event_name};

/// Result of a preemption request.
pub struct Preempted {
    /// Names preempted now.
    pub preempted: Vec<String>,
    /// Names not found, or not live (already stopping, stopped or deleting).
    pub missing: Vec<String>,
}

impl World {
    /// Preempts `count` live instances of `zone`, chosen at random.
    pub fn preempt_count(&mut self, zone: &str, count: u64) -> Result<Vec<String>, ApiError> {
        let z = self
            .zones
            .get_mut(zone)
            .ok_or_else(|| ApiError::not_found(&format!("zones/{zone}")))?;
        z.sweep(Instant::now());
        let live: Vec<(String, String)> = z
            .projects
            .iter()
            .flat_map(|(project, pz)| {
                pz.instances
                    .iter()
                    .filter(|(_, i)| i.is_live())
                    .map(move |(name, _)| (project.clone(), name.clone()))
            })
            .collect();
        let amount = usize::try_from(count).unwrap_or(usize::MAX).min(live.len());
        let chosen: Vec<(String, String)> = live
            .choose_multiple(&mut self.rng, amount)
            .cloned()
            .collect();
        let mut names = Vec::with_capacity(chosen.len());
        for (project, name) in chosen {
            self.preempt_one(&project, zone, &name);
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Preempts the live instances named (in any project and zone).
    pub fn preempt_names(&mut self, names: &[String]) -> Preempted {
        let now = Instant::now();
        let mut targets = Vec::new();
        let mut missing = Vec::new();
        for wanted in names {
            let mut found = false;
            for (zone_name, zone) in self.zones.iter_mut() {
                zone.sweep(now);
                for (project, pz) in &zone.projects {
                    if pz.instances.get(wanted).is_some_and(SimInstance::is_live) {
                        targets.push((project.clone(), zone_name.clone(), wanted.clone()));
                        found = true;
                    }
                }
            }
            if !found {
                missing.push(wanted.clone());
            }
        }
        let mut preempted = Vec::new();
        for (project, zone, name) in targets {
            self.preempt_one(&project, &zone, &name);
            preempted.push(name);
        }
        Preempted { preempted, missing }
    }

    /// Preempts one live instance: STOPPING (holding its capacity) for the preemption
    /// notice, then TERMINATED or, per `instanceTerminationAction: DELETE`, gone; its
    /// `compute.instances.preempted` operation is recorded at the start, as GCE does.
    fn preempt_one(&mut self, project: &str, zone: &str, name: &str) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let notice = self.config.preempt_notice;
        let Some(z) = self.zones.get_mut(zone) else {
            return;
        };
        let Some(instance) = z
            .projects
            .get_mut(project)
            .and_then(|pz| pz.instances.get_mut(name))
        else {
            return;
        };
        if !instance.is_live() {
            return;
        }
        instance.last_stop = Some(wall);
        instance.phase_since = now;
        instance.phase = if instance.delete_on_preempt {
            Phase::Deleting
        } else {
            Phase::Stopping { lasts: notice }
        };
        let id = instance.id;
        let pool = pool_of(&instance.labels);
        if self.schedule(project, zone, name, now + notice).is_err() {
            return;
        }
        count_live(&mut self.pools, project, pool, false);
        self.counters.preempted += 1;
        let op_name = system_event_name(&mut self.rng, wall);
        let op = SimOperation {
            id: resource_id(&mut self.rng),
            operation_type: "compute.instances.preempted",
            target_name: name.to_string(),
            target_id: id,
            user: "system",
            status_message: Some("Instance was preempted."),
            inserted: wall,
            inserted_at: now,
            delay: Duration::ZERO,
            hung: false,
            failure: None,
        };
        if let Some(z) = self.zones.get_mut(zone) {
            z.projects
                .entry(project.to_string())
                .or_default()
                .insert_operation(op_name, op);
        }
    }

    /// Random preemptions over `elapsed`: each live instance is preempted at
    /// `--preempt-rate` per hour (a Poisson process per zone).
    pub fn preempt_randomly(&mut self, elapsed: Duration) {
        let rate_per_hour = self.config.preempt_rate;
        if rate_per_hour <= 0.0 {
            return;
        }
        let zones: Vec<(String, u64)> = self
            .zones
            .iter()
            .map(|(name, zone)| {
                let live = zone
                    .projects
                    .values()
                    .flat_map(|pz| pz.instances.values())
                    .filter(|i| i.is_live())
                    .count();
                (name.clone(), live as u64)
            })
            .collect();
        for (zone, live) in zones {
            let rate_per_second = rate_per_hour * live as f64 / 3600.0;
            if rate_per_second <= 0.0 {
                continue;
            }
            let mut count = 0;
            let mut t = 0.0;
            loop {
                let u: f64 = self.rng.random();
                t += -(1.0 - u).ln() / rate_per_second;
                if t > elapsed.as_secs_f64() {
                    break;
                }
                count += 1;
            }
            if count > 0 {
                if let Err(error) = self.preempt_count(&zone, count) {
                    tracing::warn!(zone, message = %error.message, "random preemption failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::world::test_support::{body, instance, status_of, world};
    use crate::world::{ListQuery, Mutation, World};
    use crate::SimConfig;

    /// Inserts `keep` (stopped when preempted) and `gone` (a Spot VM deleted when
    /// preempted) in `z1`.
    fn insert_keep_and_gone(w: &mut World) {
        w.mutate("p", "z1", Mutation::Insert(&body("keep")), None)
            .expect("insert");
        let mut gone = instance("gone");
        gone["scheduling"] =
            json!({"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"});
        let delete_body = serde_json::to_vec(&gone).expect("json");
        w.mutate("p", "z1", Mutation::Insert(&delete_body), None)
            .expect("insert");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn preemption_stops_or_deletes_and_records_an_operation() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        insert_keep_and_gone(&mut w);
        let result = w.preempt_names(&["keep".into(), "gone".into(), "nobody".into()]);
        assert_eq!(result.preempted, vec!["keep", "gone"]);
        assert_eq!(result.missing, vec!["nobody"]);
        assert_eq!(status_of(&mut w, "keep"), "TERMINATED");
        let instance = w.get_instance("p", "z1", "keep").expect("get");
        assert!(instance["lastStopTimestamp"].is_string());
        assert_eq!(
            w.get_instance("p", "z1", "gone")
                .expect_err("deleted")
                .status,
            404
        );
        let ops = w
            .list_operations(
                "p",
                "z1",
                &ListQuery {
                    filter: Some("operationType = \"compute.instances.preempted\""),
                    ..ListQuery::default()
                },
            )
            .expect("list");
        let items = ops["items"].as_array().expect("items");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["status"], "DONE");
        assert_eq!(items[0]["user"], "system");
        let again = w.preempt_names(&["keep".into()]);
        assert!(again.preempted.is_empty());
        let op = w
            .mutate("p", "z1", Mutation::Start("keep"), None)
            .expect("start");
        assert!(op.error.is_none());
        assert_eq!(status_of(&mut w, "keep"), "RUNNING");
        assert_eq!(w.preempt_count("z1", 5).expect("count"), vec!["keep"]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_preempted_instance_is_stopping_through_its_notice_and_holds_its_capacity() {
        let mut w = World::new(SimConfig {
            zones: vec!["z1".into()],
            capacity: 2,
            op_delay: Duration::ZERO,
            boot_delay: Duration::ZERO,
            preempt_notice: Duration::from_millis(300),
            seed: Some(1),
            ..SimConfig::default()
        });
        insert_keep_and_gone(&mut w);
        let result = w.preempt_names(&["keep".into(), "gone".into()]);
        assert_eq!(result.preempted, vec!["keep", "gone"]);
        let query = ListQuery {
            filter: Some("operationType = \"compute.instances.preempted\""),
            ..ListQuery::default()
        };
        let ops = w.list_operations("p", "z1", &query).expect("list");
        assert_eq!(
            ops["items"].as_array().map(Vec::len),
            Some(2),
            "recorded at the start"
        );
        tokio::time::sleep(Duration::from_millis(299)).await;
        assert_eq!(status_of(&mut w, "keep"), "STOPPING");
        assert_eq!(status_of(&mut w, "gone"), "STOPPING");
        assert_eq!(w.report().0["z1"].live, 2, "both still hold their machines");
        let full = w
            .mutate("p", "z1", Mutation::Insert(&body("new")), None)
            .expect("accepted");
        assert!(full.error.is_some(), "no room while they are STOPPING");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(status_of(&mut w, "keep"), "TERMINATED");
        assert_eq!(
            w.get_instance("p", "z1", "gone").expect_err("gone").status,
            404
        );
        assert_eq!(w.report().0["z1"].live, 0);
        let op = w
            .mutate("p", "z1", Mutation::Insert(&body("new2")), None)
            .expect("insert");
        assert!(op.error.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn random_preemption_follows_the_rate() {
        let config = SimConfig {
            zones: vec!["z1".into()],
            op_delay: Duration::ZERO,
            boot_delay: Duration::ZERO,
            preempt_notice: Duration::ZERO,
            // Ten preemptions per instance per second: over one second all three go.
            preempt_rate: 36_000.0,
            seed: Some(3),
            ..SimConfig::default()
        };
        let mut w = World::new(config.clone());
        for name in ["a", "b", "c"] {
            w.mutate("p", "z1", Mutation::Insert(&body(name)), None)
                .expect("insert");
        }
        w.preempt_randomly(Duration::from_micros(1));
        assert_eq!(w.report().1.preempted, 0, "1 µs at 30/s preempts nothing");
        w.preempt_randomly(Duration::from_secs(1));
        assert_eq!(w.report().1.preempted, 3);
        assert_eq!(status_of(&mut w, "a"), "TERMINATED");

        let mut calm = World::new(SimConfig {
            preempt_rate: 0.0,
            ..config
        });
        calm.mutate("p", "z1", Mutation::Insert(&body("a")), None)
            .expect("insert");
        calm.preempt_randomly(Duration::from_secs(3600));
        assert_eq!(calm.report().1.preempted, 0);
    }
}
