//! The notice scenario: a converged pool with a long `secondsToRest` (60 s) loses one VM
//! at a time to a preemption with GCE's 30 s notice (scaled like the profile's delays).
//! It reports how long after each preemption started its replacement showed up in GCE
//! (p50, p99, max), and what following the notices costs: `zoneOperations.list` calls
//! per minute and zone over the run. Each preemption comes at a seeded random phase of
//! the agents' looks ([`measure::random_phase`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pm_tests::Cluster;
use rand::SeedableRng;
use serde::Serialize;

use crate::measure::{self, until};
use crate::scenarios::{Profile, POLL, POOL};

/// The pools' rest in this scenario: far longer than a notice, so a replacement within
/// the notice is the notice's doing.
const REST_SECONDS: u32 = 60;

/// The seed of the delays before the preemptions.
const SEED: u64 = 20;

/// What the notice run measured.
#[derive(Debug, Clone, Serialize)]
pub struct NoticeRun {
    /// Pool size.
    pub instances: u64,
    /// Zones.
    pub zones: usize,
    /// Preemptions, one at a time.
    pub preemptions: usize,
    /// gce-sim's preemption notice (STOPPING before TERMINATED).
    pub notice_seconds: f64,
    /// The pool's `secondsToRest`.
    pub rest_seconds: u32,
    /// From the preemption to its replacement in GCE, median.
    pub replaced_p50_seconds: f64,
    /// The same, 99th percentile.
    pub replaced_p99_seconds: f64,
    /// The same, slowest.
    pub replaced_max_seconds: f64,
    /// `zoneOperations.list` calls per minute and zone over the run (the agents' notice
    /// looks and their passes' preemption lists).
    pub operation_lists_per_zone_minute: f64,
}

/// The names of the pool's VMs in `zone`.
async fn names(c: &Cluster, zone: &str) -> anyhow::Result<BTreeSet<String>> {
    let all = c.gce_instances(POOL).await;
    Ok(all
        .get(zone)
        .map(|list| list.iter().map(|i| i.name.clone()).collect())
        .unwrap_or_default())
}

/// Runs the notice scenario of the profile.
pub async fn notice(p: &Profile) -> anyhow::Result<NoticeRun> {
    let (n, zones, preemptions) = p.notice;
    let notice = p.boot_delay * 6;
    let c = Cluster::builder()
        .zones(zones)
        .capacity(n * 2)
        .delays(p.op_delay, p.boot_delay)
        .preempt_notice(notice)
        .start()
        .await;
    let mut config = p.pool(&c, n);
    config.seconds_to_rest = REST_SECONDS;
    c.set_pool(POOL, config).await;
    p.wait_running(&c, n).await?;
    measure::quiescent(&c, Duration::from_secs(2), p.bound(n)).await?;
    let before = measure::stats(&c).await?;
    let started = Instant::now();
    let mut times = Vec::with_capacity(preemptions);
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    for i in 0..preemptions {
        let zone = c.zones()[i % zones].clone();
        let known = names(&c, &zone).await?;
        measure::random_phase(&mut rng).await;
        let at = Instant::now();
        let preempted = c.sim().preempt_count(&zone, 1).await?;
        anyhow::ensure!(
            preempted.preempted.len() == 1,
            "nothing to preempt in {zone}"
        );
        until(
            "a replacement in GCE",
            notice + p.bound(1),
            POLL,
            || names(&c, &zone),
            |now| now.iter().any(|name| !known.contains(name)),
        )
        .await?;
        times.push(at.elapsed());
        p.wait_running(&c, n).await?;
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let after = measure::stats(&c).await?;
    let method = "compute.zoneOperations.list";
    let lists = after.count(method).saturating_sub(before.count(method));
    times.sort();
    Ok(NoticeRun {
        instances: n,
        zones,
        preemptions,
        notice_seconds: notice.as_secs_f64(),
        rest_seconds: REST_SECONDS,
        replaced_p50_seconds: measure::quantile(&times, 0.5).as_secs_f64(),
        replaced_p99_seconds: measure::quantile(&times, 0.99).as_secs_f64(),
        replaced_max_seconds: times.last().map_or(0.0, Duration::as_secs_f64),
        operation_lists_per_zone_minute: lists as f64 / zones as f64 / minutes,
    })
}
