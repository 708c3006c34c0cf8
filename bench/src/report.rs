//! The report: a table for people, JSON for tools, and the targets of issue 8.

use serde::Serialize;

use crate::capacity::CapacityRun;
use crate::notice::NoticeRun;
use crate::rollout::RolloutRun;
use crate::scenarios::{Converge, Exhaustion, Failover, Heal, Profile};

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The machine: cores and memory, from /proc.
    pub machine: String,
    /// The delays and sizes used.
    pub profile: Profile,
    /// Converge runs.
    pub converge: Vec<Converge>,
    /// Heal runs.
    pub heal: Vec<Heal>,
    /// The exhaustion run.
    pub exhaustion: Option<Exhaustion>,
    /// Failover runs.
    pub failover: Vec<Failover>,
    /// The rollout run.
    pub rollout: Option<RolloutRun>,
    /// The preemption-notice run.
    pub notice: Option<NoticeRun>,
    /// The capacity run.
    pub capacity: Option<CapacityRun>,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} GiB")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

impl Report {
    /// An empty report for `profile`.
    pub fn new(profile: &Profile) -> Self {
        Self {
            machine: machine(),
            profile: profile.clone(),
            converge: Vec::new(),
            heal: Vec::new(),
            exhaustion: None,
            failover: Vec::new(),
            rollout: None,
            notice: None,
            capacity: None,
        }
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let p = &self.profile;
        let mut out = format!(
            "pm-bench on {}; gce-sim operation delay {:?}, boot delay {:?}, secondsToRest {}\n\n",
            self.machine, p.op_delay, p.boot_delay, p.rest_seconds
        );
        if let Some(r) = &self.capacity {
            let t = &r.trace;
            out.push_str(&format!(
                "capacity: {} VMs over {} zones, a preemption every {:?} for {:?} ({} in all), zone-b stocked out for {:?}\n\n| system | capacity delivered | seconds below target | lowest RUNNING | cost |\n|---|---|---|---|---|\n",
                t.instances, t.zones, t.interval, t.length, r.preemptions, t.stockout
            ));
            for s in &r.systems {
                out.push_str(&format!(
                    "| {} | {:.3} | {:.1} | {} | {:.3} |\n",
                    s.system,
                    s.capacity_delivered,
                    s.seconds_below_target,
                    s.lowest_running,
                    s.cost
                ));
            }
            out.push('\n');
        }
        if !self.converge.is_empty() {
            out.push_str("| converge | time | x ideal | GCE calls/instance (bound) | etcd writes/lifecycle | steady etcd writes/min | steady GCE calls/min | scheduler CPU steady | agent CPU steady | scheduler RSS | agent RSS |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
            for c in &self.converge {
                out.push_str(&format!(
                    "| {} over {} zones | {:.1} s | {:.2} | {:.2} ({:.2}) | {:.1} | {:.1} | {:.0} | {:.2}% | {:.2}% | {:.1} MiB | {:.1} MiB |\n",
                    c.instances, c.zones, c.seconds, c.ratio_to_ideal, c.gce_calls_per_instance, c.gce_lower_bound_per_instance,
                    c.etcd_writes_per_lifecycle, c.steady_etcd_writes_per_minute, c.steady_gce_calls_per_minute,
                    c.scheduler_steady_cpu_percent, c.agent_steady_cpu_percent, c.scheduler_peak_rss_mib, c.agent_peak_rss_mib
                ));
            }
            out.push_str("\n| converge | agent RSS max (all agents) | etcd CPU steady | etcd DB | etcd keys | largest etcd reply |\n|---|---|---|---|---|---|\n");
            for c in &self.converge {
                out.push_str(&format!(
                    "| {} over {} zones | {:.1} MiB ({:.0} MiB) | {:.1}% | {:.1} MiB | {} | {:.0} KiB |\n",
                    c.instances,
                    c.zones,
                    c.agent_peak_rss_mib_max,
                    c.agents_peak_rss_mib_total,
                    c.etcd_steady_cpu_percent,
                    c.etcd_db_size_mib,
                    c.etcd_keys,
                    c.largest_etcd_reply_bytes / 1024.0
                ));
            }
        }
        if !self.heal.is_empty() {
            out.push_str(
                "\n| heal | preempted | created p50 / p99 | RUNNING p50 / p99 |\n|---|---|---|---|\n",
            );
            for h in &self.heal {
                out.push_str(&format!(
                    "| {:.0}% of {} | {} | {:.2} s / {:.2} s | {:.2} s / {:.2} s |\n",
                    h.fraction * 100.0,
                    h.instances,
                    h.preempted,
                    h.created_p50_seconds,
                    h.created_p99_seconds,
                    h.running_p50_seconds,
                    h.running_p99_seconds
                ));
            }
        }
        if let Some(x) = &self.exhaustion {
            out.push_str(&format!(
                "\nexhaustion: a zone of a {}-instance pool stocks out with {} to replace; deficit created elsewhere {:.2} s after the first stockout\n",
                x.instances, x.deficit, x.deficit_elsewhere_seconds
            ));
        }
        if !self.failover.is_empty() {
            out.push_str(
                "\n| failover (kill -9) | lease TTL | takeover | creations done |\n|---|---|---|---|\n",
            );
            for f in &self.failover {
                out.push_str(&format!(
                    "| {} | {:.0} s | {:.2} s | {:.2} s |\n",
                    f.component, f.lease_ttl_seconds, f.takeover_seconds, f.creations_done_seconds
                ));
            }
        }
        if let Some(r) = &self.rollout {
            out.push_str(&format!(
                "\nrollout: {} VMs over {} zones, maxSurge {}, maxUnavailable 0: {:.1} s ({:.2} x the ideal {:.1} s), peak live {}, lowest RUNNING {}\n",
                r.instances, r.zones, r.max_surge, r.seconds, r.ratio_to_ideal, r.ideal_seconds, r.peak_live, r.lowest_running
            ));
        }
        if let Some(r) = &self.notice {
            out.push_str(&format!(
                "\nnotice: {} VMs over {} zones, {} preemptions one at a time, notice {:.0} s, secondsToRest {}: replacement in GCE after p50 {:.2} s, p99 {:.2} s, max {:.2} s; {:.1} zoneOperations.list calls/min per zone\n",
                r.instances, r.zones, r.preemptions, r.notice_seconds, r.rest_seconds,
                r.replaced_p50_seconds, r.replaced_p99_seconds, r.replaced_max_seconds,
                r.operation_lists_per_zone_minute
            ));
        }
        // The targets' header goes again when no target row follows it.
        let targets = "\n| target | measured | verdict |\n|---|---|---|\n";
        let targets_at = out.len();
        out.push_str(targets);
        if let Some(r) = &self.capacity {
            let of = |name: &str| {
                r.systems
                    .iter()
                    .find(|s| s.system == name)
                    .map_or(0.0, |s| s.capacity_delivered)
            };
            let (pm, model, ideal) = (of("pm"), of("prevmtable model"), of("ideal"));
            out.push_str(&format!(
                "| capacity delivered ≥ 0.995 × ideal | {:.4} × | {} |\n",
                pm / ideal,
                verdict(pm >= 0.995 * ideal)
            ));
            out.push_str(&format!(
                "| ahead of the prevmtable model by ≥ 2 points | {:+.1} points | {} |\n",
                (pm - model) * 100.0,
                verdict(pm - model >= 0.02)
            ));
        }
        if let Some(r) = &self.notice {
            out.push_str(&format!(
                "| replacement ≤ 1 s after the notice (p99) | {:.2} s | {} |\n",
                r.replaced_p99_seconds,
                verdict(r.replaced_p99_seconds <= 1.0)
            ));
        }
        if let Some(r) = &self.rollout {
            let ok = r.peak_live <= r.instances + r.max_surge && r.lowest_running >= r.instances;
            out.push_str(&format!(
                "| rollout within target + maxSurge live, target RUNNING | peak {}, lowest {} | {} |\n",
                r.peak_live,
                r.lowest_running,
                verdict(ok)
            ));
        }
        for f in &self.failover {
            let ok = f.takeover_seconds < f.lease_ttl_seconds + 0.5;
            out.push_str(&format!(
                "| {} failover < TTL + 0.5 s | {:.2} s | {} |\n",
                f.component,
                f.takeover_seconds,
                verdict(ok)
            ));
        }
        let resync = f64::from(p.rest_seconds);
        if let Some(h) = self
            .heal
            .iter()
            .max_by(|a, b| a.created_p99_seconds.total_cmp(&b.created_p99_seconds))
        {
            let ok = h.created_p99_seconds < resync + 0.5 + p.op_delay.as_secs_f64();
            out.push_str(&format!(
                "| replacement created < resync + 0.5 s (+ op delay until GCE shows it) | p99 {:.2} s | {} |\n",
                h.created_p99_seconds, verdict(ok)
            ));
        }
        if let Some(x) = &self.exhaustion {
            let ok = x.deficit_elsewhere_seconds < 1.0 + p.op_delay.as_secs_f64();
            out.push_str(&format!(
                "| stockout deficit created elsewhere < 1 s (+ op delay) | {:.2} s | {} |\n",
                x.deficit_elsewhere_seconds,
                verdict(ok)
            ));
        }
        for c in &self.converge {
            let ratio = c.gce_calls_per_instance / c.gce_lower_bound_per_instance;
            out.push_str(&format!(
                "| GCE calls ≤ 1.2 × bound ({} instances) | {:.2} × | {} |\n",
                c.instances,
                ratio,
                verdict(ratio <= 1.2)
            ));
            out.push_str(&format!(
                "| steady etcd writes = 0 ({} instances) | {:.1}/min | {} |\n",
                c.instances,
                c.steady_etcd_writes_per_minute,
                verdict(c.steady_etcd_writes_per_minute == 0.0)
            ));
            out.push_str(&format!(
                "| no etcd reply over 2 MiB ({} instances) | {:.0} KiB | {} |\n",
                c.instances,
                c.largest_etcd_reply_bytes / 1024.0,
                verdict(c.largest_etcd_reply_bytes <= 2.0 * 1024.0 * 1024.0)
            ));
            out.push_str(&format!(
                "| converge within 2 × ideal ({} instances) | {:.2} × | {} |\n",
                c.instances,
                c.ratio_to_ideal,
                verdict(c.ratio_to_ideal <= 2.0)
            ));
            if c.instances >= 10_000 {
                out.push_str(&format!(
                    "| scheduler CPU < 5% at 10,000 | {:.2}% | {} |\n",
                    c.scheduler_steady_cpu_percent,
                    verdict(c.scheduler_steady_cpu_percent < 5.0)
                ));
                out.push_str(&format!(
                    "| agent RSS < 64 MiB a zone at 10,000 | {:.1} MiB (largest) | {} |\n",
                    c.agent_peak_rss_mib_max,
                    verdict(c.agent_peak_rss_mib_max < 64.0)
                ));
            }
        }
        if out.len() == targets_at + targets.len() {
            out.truncate(targets_at);
        }
        out
    }
}
