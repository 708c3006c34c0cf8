//! gce-sim: a local Compute Engine v1 server with zone capacity, preemption and fault
//! injection, for local runs and tests.
//!
//! In-process:
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! let sim = gce_sim::Sim::builder()
//!     .zones(["us-central1-a", "us-central1-b"])
//!     .capacity(10)
//!     .op_delay(Duration::from_millis(50))
//!     .build()
//!     .expect("valid config")
//!     .start_local()
//!     .await?;
//! let compute_url = sim.compute_url(); // http://127.0.0.1:PORT/compute/v1/
//! sim.control().preempt_count("us-central1-a", 1).await.expect("preempt");
//! sim.stop().await
//! # }
//! ```

mod api;
mod auth;
pub mod cli;
mod clock;
pub mod control;
mod framing;
mod machine_types;
mod world;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use control::{
    CapacityRequest, Counters, Faults, InstanceReport, InstancesReport, PoolReport, PreemptRequest,
    PreemptResponse, SimControl, SimControlError, SimState, SimStats, StatusRequest,
    StatusResponse, TokensReport, ZoneReport,
};
pub use machine_types::default_machine_types;
pub use world::{DiscoveryError, URL_ROOT};

use world::{Schemas, World};

/// How often random preemptions are drawn when `preempt_rate` is set.
const PREEMPT_TICK: Duration = Duration::from_millis(200);

/// How long [`RunningSim::stop`] lets in-flight requests finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Settings of a simulated cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Zones served, e.g. `us-central1-a`.
    pub zones: Vec<String>,
    /// Capacity of every zone without an entry in `zone_capacity`.
    pub capacity: u64,
    /// Per-zone capacities.
    pub zone_capacity: BTreeMap<String, u64>,
    /// Time an operation takes from PENDING to DONE (RUNNING from half of it).
    pub op_delay: Duration,
    /// Time an instance takes from PROVISIONING to RUNNING (STAGING from half of it);
    /// also how long STOPPING lasts.
    pub boot_delay: Duration,
    /// Longest a `zoneOperations.wait` holds before answering with a non-DONE operation.
    pub wait_bound: Duration,
    /// Random preemptions per live instance per hour (0 for none).
    pub preempt_rate: f64,
    /// How long a preempted instance is STOPPING (holding its capacity) before it is
    /// TERMINATED or deleted: GCE's 30 s notice.
    pub preempt_notice: Duration,
    /// Refuse compute calls without a bearer token the sim's token endpoint issued
    /// (401), as GCE refuses calls without valid credentials.
    pub require_auth: bool,
    /// Seed of the random source (ids, preemption choices, injected faults); `None`
    /// seeds from the OS.
    pub seed: Option<u64>,
    /// Machine types every zone offers; an instance of another type is refused.
    pub machine_types: Vec<String>,
    /// A Compute v1 discovery document to check request bodies against, in place of
    /// the trimmed copy compiled in.
    pub discovery_document: Option<PathBuf>,
}

impl Default for SimConfig {
    /// Three zones of capacity 100,000, 100 ms operations, 300 ms boots, 30 s wait bound,
    /// no random preemption, a 300 ms preemption notice, no authentication,
    /// [`default_machine_types`], the compiled-in discovery document. The delays are GCE's
    /// scaled 1:100: an operation of ~10 s, a boot of ~30 s, the 30 s notice.
    fn default() -> Self {
        SimConfig {
            zones: ["us-central1-a", "us-central1-b", "us-central1-c"]
                .map(String::from)
                .to_vec(),
            capacity: 100_000,
            zone_capacity: BTreeMap::new(),
            op_delay: Duration::from_millis(100),
            boot_delay: Duration::from_millis(300),
            wait_bound: Duration::from_secs(30),
            preempt_rate: 0.0,
            preempt_notice: Duration::from_millis(300),
            require_auth: false,
            seed: None,
            machine_types: default_machine_types(),
            discovery_document: None,
        }
    }
}

/// Why a [`SimConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimConfigError {
    /// No zone to serve.
    #[error("at least one zone is required")]
    NoZones,
    /// A zone name breaks GCE's naming rules.
    #[error("invalid zone name")]
    BadZone(#[source] pm_gce::template::NameError),
    /// A per-zone capacity names a zone that is not served.
    #[error("capacity given for zone {0:?}, which is not in the zone list")]
    UnknownZone(String),
    /// The same zone is listed twice.
    #[error("zone {0:?} is listed twice")]
    DuplicateZone(String),
    /// The preemption rate is negative or not a number.
    #[error("preemption rate {0} must be a finite number >= 0")]
    BadPreemptRate(f64),
    /// The wait bound is zero.
    #[error("the zoneOperations.wait bound must be greater than zero")]
    ZeroWaitBound,
    /// The machine-type catalog is empty.
    #[error("at least one machine type is required")]
    NoMachineTypes,
    /// A machine type breaks GCE's naming rules.
    #[error("invalid machine type {0:?}")]
    BadMachineType(String, #[source] pm_gce::template::NameError),
    /// The same machine type is listed twice.
    #[error("machine type {0:?} is listed twice")]
    DuplicateMachineType(String),
    /// The discovery document cannot be used.
    #[error(transparent)]
    Discovery(DiscoveryError),
}

impl SimConfig {
    /// Checks the settings; the error names the problem.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if self.zones.is_empty() {
            return Err(SimConfigError::NoZones);
        }
        for (i, zone) in self.zones.iter().enumerate() {
            pm_gce::template::validate_resource_name("zone name", zone)
                .map_err(SimConfigError::BadZone)?;
            if self.zones[..i].contains(zone) {
                return Err(SimConfigError::DuplicateZone(zone.clone()));
            }
        }
        if let Some(zone) = self.zone_capacity.keys().find(|z| !self.zones.contains(z)) {
            return Err(SimConfigError::UnknownZone(zone.clone()));
        }
        if !self.preempt_rate.is_finite() || self.preempt_rate < 0.0 {
            return Err(SimConfigError::BadPreemptRate(self.preempt_rate));
        }
        if self.wait_bound.is_zero() {
            return Err(SimConfigError::ZeroWaitBound);
        }
        if self.machine_types.is_empty() {
            return Err(SimConfigError::NoMachineTypes);
        }
        for (i, machine_type) in self.machine_types.iter().enumerate() {
            pm_gce::template::validate_name(machine_type)
                .map_err(|e| SimConfigError::BadMachineType(machine_type.clone(), e))?;
            if self.machine_types[..i].contains(machine_type) {
                return Err(SimConfigError::DuplicateMachineType(machine_type.clone()));
            }
        }
        Ok(())
    }

    /// The capacity of `zone`.
    pub fn capacity_of(&self, zone: &str) -> u64 {
        self.zone_capacity
            .get(zone)
            .copied()
            .unwrap_or(self.capacity)
    }
}

/// [`SimBuilder`] methods that each set one field of the config to the value given.
macro_rules! config_setters {
    ($($(#[doc = $doc:literal])* $field:ident: $type:ty,)*) => {
        $(
            $(#[doc = $doc])*
            pub fn $field(mut self, $field: $type) -> Self {
                self.config.$field = $field;
                self
            }
        )*
    };
}

/// Builds a [`Sim`] from [`SimConfig::default`] plus the settings given.
#[derive(Debug, Clone, Default)]
pub struct SimBuilder {
    config: SimConfig,
}

impl SimBuilder {
    /// Zones served.
    pub fn zones<I, S>(mut self, zones: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.zones = zones.into_iter().map(Into::into).collect();
        self
    }

    /// Capacity of one zone.
    pub fn zone_capacity(mut self, zone: impl Into<String>, capacity: u64) -> Self {
        self.config.zone_capacity.insert(zone.into(), capacity);
        self
    }

    config_setters! {
        /// Capacity of every zone.
        capacity: u64,
        /// Operation duration.
        op_delay: Duration,
        /// Boot (and stop) duration.
        boot_delay: Duration,
        /// Bound of one `zoneOperations.wait`.
        wait_bound: Duration,
        /// Random preemptions per live instance per hour.
        preempt_rate: f64,
        /// How long a preempted instance is STOPPING.
        preempt_notice: Duration,
        /// Refuse compute calls without an issued bearer token.
        require_auth: bool,
    }

    /// The machine types every zone offers.
    pub fn machine_types<I, S>(mut self, machine_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.machine_types = machine_types.into_iter().map(Into::into).collect();
        self
    }

    /// Seed of the random source.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Replaces every setting.
    pub fn config(mut self, config: SimConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates the settings, loads the discovery document and builds the sim.
    pub fn build(self) -> Result<Sim, SimConfigError> {
        self.config.validate()?;
        let schemas = Schemas::load(self.config.discovery_document.as_deref())
            .map_err(SimConfigError::Discovery)?;
        Ok(Sim {
            shared: Arc::new(Shared {
                world: Mutex::new(World::with_schemas(self.config.clone(), schemas)),
                tokens: Mutex::new(auth::Tokens::default()),
                shutdown: CancellationToken::new(),
                preempt_rate: self.config.preempt_rate,
                require_auth: self.config.require_auth,
            }),
        })
    }
}

/// State shared by all handlers.
struct Shared {
    world: Mutex<World>,
    /// Access tokens issued by `POST /token`; kept across `/sim/v1/reset`.
    tokens: Mutex<auth::Tokens>,
    /// Cancelled when the server stops: ends held waits and injected latencies.
    shutdown: CancellationToken,
    preempt_rate: f64,
    /// Compute calls need an issued bearer token.
    require_auth: bool,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        // World methods leave it consistent at every return, so a panic in one handler
        // does not make the data unusable.
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tokens(&self) -> MutexGuard<'_, auth::Tokens> {
        // Every change to the token set is a single insert or clear.
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A simulated Compute Engine, ready to serve.
pub struct Sim {
    shared: Arc<Shared>,
}

impl Sim {
    /// A builder starting from [`SimConfig::default`].
    pub fn builder() -> SimBuilder {
        SimBuilder::default()
    }

    /// The HTTP routes: `/compute/v1/...`, the token endpoint `/token` and
    /// `/sim/v1/...`.
    pub fn router(&self) -> Router {
        let compute = api::routes()
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                auth::require_bearer,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                api::faults_and_stats,
            ));
        let control = Router::new()
            .route("/sim/v1/state", get(control::state))
            .route("/sim/v1/instances", get(control::instances))
            .route(
                "/sim/v1/instances/{zone}/{name}/status",
                post(control::set_status),
            )
            .route("/sim/v1/zones/{zone}", post(control::set_capacity))
            .route("/sim/v1/preempt", post(control::preempt))
            .route("/sim/v1/faults", post(control::set_faults))
            .route("/sim/v1/reset", post(control::reset))
            .route("/sim/v1/stats", get(control::stats))
            .route("/sim/v1/tokens", get(auth::report))
            .route("/sim/v1/tokens/revoke", post(auth::revoke))
            .layer(axum::middleware::from_fn(framing::enforce));
        // The OAuth token endpoint takes a form body, as Google's does on its own host;
        // the Compute front end's JSON rule is not its.
        let oauth = Router::new().route("/token", post(auth::token));
        compute
            .merge(control)
            .merge(oauth)
            .fallback(api::unknown_path)
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
        let shared = self.shared.clone();
        let stop = shared.shutdown.clone();
        let link = tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.cancelled().await;
                stop.cancel();
            }
        });
        let ticker = (shared.preempt_rate > 0.0).then(|| tokio::spawn(preempt_randomly(shared)));
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        link.abort();
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        result
    }

    /// Serves on `listener` in a background task.
    pub fn spawn(self, listener: TcpListener) -> io::Result<RunningSim> {
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.serve(listener, shutdown.clone()));
        Ok(RunningSim {
            addr,
            shutdown,
            task: Some(task),
        })
    }

    /// Serves on a free port of 127.0.0.1 in a background task.
    pub async fn start_local(self) -> io::Result<RunningSim> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        self.spawn(listener)
    }
}

/// Connections waiting to be accepted before new ones are refused; tokio's default of
/// 1024 drops connection attempts when thousands of agent requests arrive at once, and
/// the clients' SYN retries then take up to a minute.
const LISTEN_BACKLOG: u32 = 16_384;

/// A listener on `addr` with a deep accept backlog.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Draws random preemptions until the server stops.
async fn preempt_randomly(shared: Arc<Shared>) {
    let mut last = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(PREEMPT_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        shared.world().preempt_randomly(now - last);
        last = now;
    }
}

/// A gce-sim serving in the background; dropping it stops the server.
pub struct RunningSim {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RunningSim {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint, `http://HOST:PORT/token`, for a service-account key file's
    /// `token_uri`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The Compute API root, `http://HOST:PORT/compute/v1/`.
    pub fn compute_url(&self) -> String {
        format!("http://{}/compute/v1/", self.addr)
    }

    /// A control API client for this sim.
    pub fn control(&self) -> SimControl {
        SimControl::new(self.url())
    }

    /// Stops serving and waits (a few seconds at most) for the server to finish.
    pub async fn stop(mut self) -> io::Result<()> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(STOP_GRACE, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(io::Error::other(join)),
            Err(_elapsed) => {
                abort.abort();
                Ok(())
            }
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
