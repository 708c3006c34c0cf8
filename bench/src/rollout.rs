//! The rollout scenario: a converged pool's template changes (a new machine type) and
//! every VM is replaced within maxSurge, with maxUnavailable 0. It reports the time to
//! complete against the ideal for that surge (each wave of `maxSurge` replacements costs
//! one create and boot, then one delete: a surge slot is free again only once the old VM
//! is gone), the peak of live VMs and the lowest RUNNING count, sampled from gce-sim.

use std::time::{Duration, Instant};

use pm_proto::{Amount, Rollout, RolloutState, UpdatePolicy};
use pm_tests::cluster::TEMPLATE;
use serde::Serialize;

use crate::measure;
use crate::scenarios::{Profile, POLL, POOL};

/// What the rollout run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutRun {
    /// Pool size.
    pub instances: u64,
    /// Zones.
    pub zones: usize,
    /// maxSurge as a count.
    pub max_surge: u64,
    /// From the config change to every VM of the new revision RUNNING.
    pub seconds: f64,
    /// The ideal: ceil(instances / maxSurge) waves of a boot and a delete.
    pub ideal_seconds: f64,
    /// `seconds` over the ideal.
    pub ratio_to_ideal: f64,
    /// The most VMs present at once, STOPPING ones included (bound: instances +
    /// maxSurge).
    pub peak_live: u64,
    /// The fewest RUNNING at once (bound: instances, as maxUnavailable is 0).
    pub lowest_running: u64,
}

/// Runs the rollout scenario of the profile.
pub async fn rollout(p: &Profile) -> anyhow::Result<RolloutRun> {
    let (n, zones, surge_percent) = p.rollout;
    let c = p.cluster(zones, n * 2, 1, 1).await;
    let mut config = p.pool(&c, n);
    config.update = Some(UpdatePolicy {
        max_surge: Some(Amount {
            value: surge_percent,
            percent: true,
        }),
        max_unavailable: Some(Amount {
            value: 0,
            percent: false,
        }),
        ..Default::default()
    });
    c.set_pool(POOL, config.clone()).await;
    p.wait_running(&c, n).await?;
    let max_surge = pm_pool::budgets(&config).max_surge;
    config.instance_json = TEMPLATE.replace("e2-small", "e2-medium");
    let revision = pm_pool::revision(&config);
    let key = c.store().keys().rollout(POOL)?;
    let started = Instant::now();
    c.set_pool(POOL, config).await;
    let (mut peak, mut lowest) = (0, u64::MAX);
    loop {
        let state = measure::state(&c).await?;
        peak = peak.max(measure::present(&state));
        lowest = lowest.min(measure::running(&state));
        let rollout = c.store().get::<Rollout>(&key).await?;
        let complete = rollout.is_some_and(|r| {
            r.value.revision == revision && r.value.state() == RolloutState::Complete
        });
        if complete && measure::running(&state) == n {
            break;
        }
        if started.elapsed() > p.bound(n * 4) {
            anyhow::bail!("the rollout did not complete within {:?}", p.bound(n * 4));
        }
        tokio::time::sleep(POLL).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let waves = n.div_ceil(max_surge.max(1));
    let wave = p.ideal() + p.op_delay;
    let ideal = Duration::from_secs_f64(wave.as_secs_f64() * waves as f64);
    Ok(RolloutRun {
        instances: n,
        zones,
        max_surge,
        seconds,
        ideal_seconds: ideal.as_secs_f64(),
        ratio_to_ideal: seconds / ideal.as_secs_f64(),
        peak_live: peak,
        lowest_running: lowest,
    })
}
