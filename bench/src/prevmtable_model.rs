//! A model of prevmtable's 2015 loop, for the capacity scenario to compare pm with. Every
//! `secondsToRest` it lists every allowed zone, counts the VMs with the prefix whose
//! status is neither STOPPING nor TERMINATED, creates the deficit at once round-robin over
//! the zones not exhausted (polling each operation every 2 s), marks a zone exhausted in
//! memory on ZONE_RESOURCE_POOL_EXHAUSTED for `secondsForExhaustion`, deletes surplus VMs
//! at random, and never deletes TERMINATED ones. It runs until its task is aborted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pm_gce::compute::{operation_result, request_id_for, Compute};
use pm_gce::error::ErrorClass;
use pm_gce::resources::{InstanceStatus, OperationStatus};
use pm_gce::template::{render_text, TemplateVars};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How often prevmtable polled an operation.
const POLL: Duration = Duration::from_secs(2);

/// What the model runs with.
#[derive(Clone)]
pub struct ModelSettings {
    /// The GCE client, against the model's own gce-sim.
    pub compute: Arc<dyn Compute>,
    /// The project.
    pub project: String,
    /// The allowed zones.
    pub zones: Vec<String>,
    /// The name prefix.
    pub prefix: String,
    /// The instance template.
    pub template: String,
    /// VMs to keep.
    pub target: usize,
    /// The loop's period.
    pub rest: Duration,
    /// How long a stocked-out zone is skipped.
    pub exhaustion: Duration,
    /// Seeds the names and the surplus picked.
    pub seed: u64,
}

/// Runs the loop until aborted.
pub async fn run(settings: ModelSettings) {
    let exhausted: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let mut next_zone = 0usize;
    loop {
        let mut alive: Vec<(String, String)> = Vec::new();
        for zone in &settings.zones {
            let Ok(listed) = settings.compute.list(&settings.project, zone, None).await else {
                continue;
            };
            let ours = listed
                .into_iter()
                .filter(|i| i.name.starts_with(&settings.prefix));
            alive.extend(
                ours.filter(|i| {
                    !matches!(
                        i.status,
                        Some(InstanceStatus::Stopping | InstanceStatus::Terminated)
                    )
                })
                .map(|i| (zone.clone(), i.name)),
            );
        }
        let now = Instant::now();
        let usable: Vec<&String> = {
            let exhausted = exhausted.lock().expect("exhausted zones");
            let skipped = |zone: &String| exhausted.get(zone).is_some_and(|until| *until > now);
            settings.zones.iter().filter(|z| !skipped(z)).collect()
        };
        if alive.len() < settings.target && !usable.is_empty() {
            for _ in alive.len()..settings.target {
                let zone = usable[next_zone % usable.len()].clone();
                next_zone += 1;
                let name = format!("{}{:08x}", settings.prefix, rng.random::<u32>());
                tokio::spawn(create(settings.clone(), zone, name, exhausted.clone()));
            }
        } else if alive.len() > settings.target {
            alive.shuffle(&mut rng);
            for (zone, name) in alive.drain(..alive.len() - settings.target) {
                let compute = settings.compute.clone();
                let project = settings.project.clone();
                tokio::spawn(async move { compute.delete(&project, &zone, &name).await });
            }
        }
        tokio::time::sleep(settings.rest).await;
    }
}

/// Inserts one VM and polls its operation every [`POLL`]; a stockout marks its zone.
async fn create(
    settings: ModelSettings,
    zone: String,
    name: String,
    exhausted: Arc<Mutex<BTreeMap<String, Instant>>>,
) {
    let vars = TemplateVars {
        project: &settings.project,
        zone: &zone,
        name: &name,
        pool: "model",
    };
    let Ok(instance) = render_text(&settings.template, vars) else {
        return;
    };
    let compute = settings.compute.as_ref();
    let project = settings.project.as_str();
    let request_id = request_id_for(&name);
    let result = async {
        let mut op = compute
            .insert(project, &zone, &instance, &request_id)
            .await?;
        loop {
            if op.status == OperationStatus::Done {
                return operation_result(op).map(drop);
            }
            tokio::time::sleep(POLL).await;
            op = compute.wait_operation(project, &zone, &op.name).await?;
        }
    }
    .await;
    if let Err(e) = result {
        if e.class() == ErrorClass::Stockout {
            let until = Instant::now() + settings.exhaustion;
            exhausted
                .lock()
                .expect("exhausted zones")
                .insert(zone, until);
        }
    }
}
