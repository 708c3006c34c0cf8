//! The simulated cloud: zones with capacity, instances and operations, whose
//! lifecycles are computed lazily from timestamps so that 20,000 instances cost nothing
//! while nobody looks at them.
//!
//! [`World`] and its construction live here; its calls and their data, one concept
//! a file, beside it.

mod bulk_insert;
mod capacity;
mod discovery;
mod disks;
mod error;
mod forced_status;
mod instance_spec;
mod instance_view;
mod instances;
mod mutation;
mod operations;
mod paging;
mod preemption;
mod projects;
mod reports;
#[cfg(test)]
mod test_support;
mod zones;

pub use discovery::{DiscoveryError, Schemas};
pub use error::ApiError;
pub use mutation::Mutation;
pub use paging::ListQuery;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::control::{Counters, Faults, PoolReport};
use crate::SimConfig;
use zones::Zone;

/// Root of the resource URLs GCE hands out (selfLink, zone, targetLink).
pub const URL_ROOT: &str = "https://www.googleapis.com/compute/v1/";

/// The whole simulated cloud. Every method runs under the server's lock.
pub struct World {
    config: SimConfig,
    zones: BTreeMap<String, Zone>,
    /// (project, zone, requestId) → operation name.
    request_ids: HashMap<(String, String, String), String>,
    rng: StdRng,
    counters: Counters,
    faults: Faults,
    /// method → outcome → count.
    stats: BTreeMap<String, BTreeMap<String, u64>>,
    /// Live instances now and at most, per project and value of the `pm-pool` label.
    pools: BTreeMap<(String, String), PoolReport>,
    /// Calls that change an existing instance (delete, start, stop, setLabels), whatever
    /// their outcome, per (project, zone, instance) and method.
    changes: HashMap<(String, String, String), BTreeMap<String, u64>>,
    /// The request schemas bodies are checked against.
    schemas: Arc<Schemas>,
    /// Projects' metadata and global operations, by project.
    projects: BTreeMap<String, projects::ProjectState>,
    /// (project, requestId) → global operation name.
    global_request_ids: HashMap<(String, String), String>,
}

impl World {
    /// A fresh world for `config`, checking bodies against the embedded discovery
    /// document (for unit tests).
    #[cfg(test)]
    pub(crate) fn new(config: SimConfig) -> World {
        World::with_schemas(config, Schemas::embedded())
    }

    /// A fresh world for `config`, checking bodies against `schemas`.
    pub fn with_schemas(config: SimConfig, schemas: Arc<Schemas>) -> World {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let zones = config
            .zones
            .iter()
            .map(|z| (z.clone(), Zone::new(config.capacity_of(z))))
            .collect();
        World {
            config,
            zones,
            request_ids: HashMap::new(),
            rng,
            counters: Counters::default(),
            faults: Faults::default(),
            stats: BTreeMap::new(),
            pools: BTreeMap::new(),
            changes: HashMap::new(),
            schemas,
            projects: BTreeMap::new(),
            global_request_ids: HashMap::new(),
        }
    }

    /// Back to the state at start: configured zones and capacities, no instances,
    /// operations, faults, counters or stats; the random source re-seeded.
    pub fn reset(&mut self) {
        *self = World::with_schemas(self.config.clone(), self.schemas.clone());
    }

    /// The bound on one `zoneOperations.wait`.
    pub fn wait_bound(&self) -> Duration {
        self.config.wait_bound
    }

    /// The current fault settings.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Replaces the fault settings.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// A uniform draw in [0, 1) from the world's random source.
    pub fn draw(&mut self) -> f64 {
        self.rng.random()
    }
}

/// The full URL of a zone.
fn zone_url(project: &str, zone: &str) -> String {
    format!("{URL_ROOT}projects/{project}/zones/{zone}")
}

/// An instance's resource path, as error messages name it.
fn instance_path(project: &str, zone: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{name}")
}
