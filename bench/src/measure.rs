//! What the benchmarks read off the running system: gce-sim's state and stats, etcd's
//! revision, and the CPU and memory of daemon processes.

use std::time::{Duration, Instant};

use gce_sim::{SimState, SimStats, ZoneReport};
use pm_etcd::etcd_client::GetOptions;
use pm_proto::ZoneDesired;
use pm_tests::cluster::{http_get, metric_sum};
use pm_tests::Cluster;
use rand::rngs::StdRng;
use rand::Rng;

/// Instances PROVISIONING, STAGING or RUNNING in one zone (not those stopping).
pub fn zone_live(zone: &ZoneReport) -> u64 {
    ["PROVISIONING", "STAGING", "RUNNING"]
        .iter()
        .map(|s| zone.instances.get(*s).copied().unwrap_or(0))
        .sum()
}

/// Instances PROVISIONING, STAGING or RUNNING over all zones.
pub fn live(state: &SimState) -> u64 {
    state.zones.values().map(zone_live).sum()
}

/// Instances that exist and are not stopped: live ones and those STOPPING (a VM being
/// deleted is STOPPING until it is gone).
pub fn present(state: &SimState) -> u64 {
    let stopping: u64 = state
        .zones
        .values()
        .map(|z| z.instances.get("STOPPING").copied().unwrap_or(0))
        .sum();
    live(state) + stopping
}

/// RUNNING instances over all zones.
pub fn running(state: &SimState) -> u64 {
    state
        .zones
        .values()
        .map(|z| z.instances.get("RUNNING").copied().unwrap_or(0))
        .sum()
}

/// gce-sim's state; the control API is local, so a failure ends the benchmark.
pub async fn state(c: &Cluster) -> anyhow::Result<SimState> {
    Ok(c.sim().state().await?)
}

/// gce-sim's request counts.
pub async fn stats(c: &Cluster) -> anyhow::Result<SimStats> {
    Ok(c.sim().stats().await?)
}

/// etcd's current revision: every write (put, delete, transaction) adds one.
pub async fn etcd_revision(c: &Cluster) -> anyhow::Result<i64> {
    let (_, revision) = c
        .store()
        .list_raw(&format!("{}none/", c.store().keys().root()))
        .await?;
    Ok(revision)
}

/// etcd's database size in MiB and the number of pm's keys.
pub async fn etcd_size(c: &Cluster) -> anyhow::Result<(f64, i64)> {
    let client = c.store().client();
    let status = client.maintenance_client().status().await?;
    let options = GetOptions::new().with_prefix().with_count_only();
    let keys = client
        .kv_client()
        .get(c.store().keys().root(), Some(options))
        .await?
        .count();
    Ok((status.db_size() as f64 / (1024.0 * 1024.0), keys))
}

/// The largest etcd reply any of the cluster's daemons received (their
/// `pm_etcd_largest_reply_bytes`), in bytes.
pub async fn largest_reply(c: &Cluster) -> f64 {
    let mut addrs = Vec::new();
    for i in 0..c.scheduler_count() {
        addrs.push(c.scheduler_metrics(i).await);
    }
    for zone in c.zones() {
        for i in 0..c.agent_count(zone) {
            addrs.push(c.agent_metrics(zone, i).await);
        }
    }
    let mut largest: f64 = 0.0;
    for addr in addrs {
        if let Some((200, text)) = http_get(addr, "/metrics").await {
            largest = largest.max(metric_sum(&text, "pm_etcd_largest_reply_bytes", &[]));
        }
    }
    largest
}

/// Peak RSS in MiB of every agent of the cluster: the largest and the sum.
pub fn agents_peak_rss_mib(c: &mut Cluster) -> (f64, f64) {
    let zones = c.zones().to_vec();
    let mut peaks = Vec::new();
    for zone in &zones {
        for i in 0..c.agent_count(zone) {
            peaks.push(peak_rss_mib(c.agent(zone, i).pid()));
        }
    }
    (
        peaks.iter().copied().fold(0.0, f64::max),
        peaks.iter().sum(),
    )
}

/// The sum of the desired counts of `pool` over the cluster's zones.
pub async fn desired_total(c: &Cluster, pool: &str) -> anyhow::Result<i64> {
    let mut total = 0;
    for zone in c.zones() {
        let key = c.store().keys().zone_desired(pool, zone)?;
        if let Some(d) = c.store().get::<ZoneDesired>(&key).await? {
            total += d.value.count;
        }
    }
    Ok(total)
}

/// CPU seconds (user + system) a process used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident memory of a process in MiB (VmHWM), from /proc.
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Polls `sample` every `every` until `done` holds for it, for at most `bound`; returns
/// the elapsed time and the last sample. An error when the bound passes.
pub async fn until<T, F, Fut>(
    what: &str,
    bound: Duration,
    every: Duration,
    mut sample: F,
    done: impl Fn(&T) -> bool,
) -> anyhow::Result<(Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    loop {
        let value = sample().await?;
        if done(&value) {
            return Ok((start.elapsed(), value));
        }
        if start.elapsed() > bound {
            anyhow::bail!("timed out after {bound:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until etcd has seen no write for `quiet` (the system settled), at most `bound`.
pub async fn quiescent(c: &Cluster, quiet: Duration, bound: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = etcd_revision(c).await?;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        if start.elapsed() > bound {
            anyhow::bail!("etcd did not settle within {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = etcd_revision(c).await?;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

/// The agents' default `--notice-interval`: how often they look for preemptions.
const NOTICE_LOOK_MS: u64 = 1000;

/// Waits a random part of the agents' notice look, so a preemption sent next lands at a
/// random phase of their looks. A replacement boots a whole number of seconds after the
/// look that saw its preemption, so preemptions sent once the pool is whole again would
/// otherwise all land just after a look, and a scenario would time the worst phase only.
pub async fn random_phase(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..NOTICE_LOOK_MS))).await;
}

/// The time at which a fraction `q` of `times` (sorted ascending) had happened.
pub fn quantile(times: &[Duration], q: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((times.len() as f64) * q).ceil() as usize;
    times[rank.clamp(1, times.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_rank() {
        let t: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&t, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&t, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&t[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn own_process_has_cpu_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(peak_rss_mib(pid) > 0.0);
        assert!(cpu_seconds(pid) >= 0.0);
    }
}
