//! The capacity scenario: what a Spot user pays for, capacity delivered (RUNNING
//! instance-seconds up to the target over target instance-seconds), under a seeded trace
//! of preemptions (one every `interval`, in a zone drawn at random) and a stockout of one
//! zone. pm runs it on its own system; a model of prevmtable's loop
//! ([`crate::prevmtable_model`]) runs the same trace on a second gce-sim with the same
//! delays; the ideal loses exactly one boot time per preemption.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gce_sim::{Sim, SimControl};
use pm_gce::compute::Compute;
use pm_gce::rest::{Auth, RestCompute, RestConfig};
use pm_tests::cluster::{zone_name, PROJECT, TEMPLATE};
use pm_tests::Cluster;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::measure;
use crate::prevmtable_model::{self, ModelSettings};
use crate::scenarios::{Profile, POOL};

/// How often the run samples gce-sim.
const SAMPLE: Duration = Duration::from_millis(100);

/// The seed of the trace.
const SEED: u64 = 20_150_601;

/// The trace's shape, per profile.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityTrace {
    /// Pool size.
    pub instances: u64,
    /// Zones.
    pub zones: usize,
    /// One preemption every this long.
    pub interval: Duration,
    /// Length of the trace.
    pub length: Duration,
    /// How long the stockout of the second zone lasts, from a third of the trace on.
    pub stockout: Duration,
}

/// What one system delivered.
#[derive(Debug, Clone, Serialize)]
pub struct Delivered {
    /// `pm`, `prevmtable model` or `ideal`.
    pub system: &'static str,
    /// RUNNING instance-seconds (up to the target) over target instance-seconds.
    pub capacity_delivered: f64,
    /// Seconds with fewer RUNNING than the target.
    pub seconds_below_target: f64,
    /// The fewest RUNNING at once.
    pub lowest_running: u64,
    /// Live instance-seconds over target instance-seconds.
    pub cost: f64,
}

/// What the capacity run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityRun {
    /// The trace.
    pub trace: CapacityTrace,
    /// Preemptions in it.
    pub preemptions: usize,
    /// pm, the model, the ideal.
    pub systems: Vec<Delivered>,
}

/// One step of the trace.
#[derive(Debug, Clone)]
enum Step {
    /// Preempt one live VM of the zone.
    Preempt(String),
    /// Set the zone's capacity.
    Capacity(String, u64),
}

/// The trace: preemptions and the stockout, each at its offset from the start.
fn trace(t: &CapacityTrace) -> Vec<(Duration, Step)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut steps = Vec::new();
    let mut at = t.interval;
    while at < t.length {
        let zone = zone_name(rng.random_range(0..t.zones));
        steps.push((at, Step::Preempt(zone)));
        at += t.interval;
    }
    let stocked = zone_name(1 % t.zones);
    let from = t.length / 3;
    steps.push((from, Step::Capacity(stocked.clone(), 0)));
    steps.push((from + t.stockout, Step::Capacity(stocked, t.instances * 2)));
    steps.sort_by_key(|(at, _)| *at);
    steps
}

/// Plays `steps` on `sim` from `start`.
async fn replay(sim: SimControl, steps: Vec<(Duration, Step)>, start: Instant) {
    for (at, step) in steps {
        tokio::time::sleep_until((start + at).into()).await;
        let done = match &step {
            Step::Preempt(zone) => sim.preempt_count(zone, 1).await.map(drop),
            Step::Capacity(zone, capacity) => sim.set_capacity(zone, *capacity).await.map(drop),
        };
        if let Err(e) = done {
            eprintln!("capacity trace: {step:?} failed: {e}");
        }
    }
}

/// Samples `sim` for `length` from `start` while `steps` play.
async fn run_trace(
    system: &'static str,
    sim: SimControl,
    steps: Vec<(Duration, Step)>,
    target: u64,
    length: Duration,
) -> anyhow::Result<Delivered> {
    let start = Instant::now();
    let player = tokio::spawn(replay(sim.clone(), steps, start));
    let (mut delivered, mut paid, mut below) = (0.0, 0.0, 0.0);
    let mut lowest = u64::MAX;
    let mut last = Instant::now();
    while start.elapsed() < length {
        let state = sim.state().await?;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        let running = measure::running(&state);
        lowest = lowest.min(running);
        delivered += dt * running.min(target) as f64;
        paid += dt * measure::live(&state) as f64;
        if running < target {
            below += dt;
        }
        tokio::time::sleep(SAMPLE).await;
    }
    player.await?;
    let asked = target as f64 * start.elapsed().as_secs_f64();
    Ok(Delivered {
        system,
        capacity_delivered: delivered / asked,
        seconds_below_target: below,
        lowest_running: lowest,
        cost: paid / asked,
    })
}

/// Runs the capacity scenario of the profile: pm, then the model, on the same trace.
pub async fn capacity(p: &Profile) -> anyhow::Result<CapacityRun> {
    let t = p.capacity.clone();
    let steps = trace(&t);
    let preemptions = steps
        .iter()
        .filter(|(_, s)| matches!(s, Step::Preempt(_)))
        .count();

    let c = Cluster::builder()
        .zones(t.zones)
        .capacity(t.instances * 2)
        .delays(p.op_delay, p.boot_delay)
        .start()
        .await;
    c.set_pool(POOL, p.pool(&c, t.instances)).await;
    p.wait_running(&c, t.instances).await?;
    let pm = run_trace("pm", c.sim(), steps.clone(), t.instances, t.length).await?;
    drop(c);

    let zones: Vec<String> = (0..t.zones).map(zone_name).collect();
    let sim = Sim::builder()
        .zones(zones.clone())
        .capacity(t.instances * 2)
        .op_delay(p.op_delay)
        .boot_delay(p.boot_delay)
        .build()?
        .start_local()
        .await?;
    let compute: Arc<dyn Compute> =
        Arc::new(RestCompute::new(RestConfig::new(sim.compute_url(), Auth::None)?).await?);
    let model = tokio::spawn(prevmtable_model::run(ModelSettings {
        compute,
        project: PROJECT.into(),
        zones,
        prefix: "m-".into(),
        template: TEMPLATE.into(),
        target: usize::try_from(t.instances)?,
        rest: Duration::from_secs(u64::from(p.rest_seconds)),
        exhaustion: Duration::from_secs(60),
        seed: SEED,
    }));
    let control = sim.control();
    measure::until(
        "the model's pool RUNNING",
        p.bound(t.instances),
        SAMPLE,
        || async { Ok(control.state().await?) },
        |s| measure::running(s) == t.instances,
    )
    .await?;
    let modelled = run_trace("prevmtable model", control, steps, t.instances, t.length).await;
    model.abort();
    let modelled = modelled?;

    let lost = preemptions as f64 * p.boot_delay.as_secs_f64();
    let ideal = 1.0 - lost / (t.instances as f64 * t.length.as_secs_f64());
    let lowest_ideal = t.instances.saturating_sub(1);
    Ok(CapacityRun {
        trace: t,
        preemptions,
        systems: vec![
            pm,
            modelled,
            Delivered {
                system: "ideal",
                capacity_delivered: ideal,
                seconds_below_target: lost,
                lowest_running: lowest_ideal,
                cost: 1.0,
            },
        ],
    })
}
