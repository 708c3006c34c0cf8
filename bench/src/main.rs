//! pm-bench: runs the whole system against gce-sim with GCE-like delays and reports how
//! fast and how cheap pm is: converge, heal, exhaustion, failover, cost, footprint.
//!
//! `pm-bench` runs the full set (tens of minutes); `pm-bench --quick` a small one that
//! proves the harness works (CI runs it). Both print a table and write a JSON report.
//! Build everything first: `cargo build --release --workspace --bins`.

mod capacity;
mod measure;
mod notice;
mod prevmtable_model;
mod report;
mod rollout;
mod scenarios;

use std::path::PathBuf;

use clap::Parser;

use scenarios::Profile;

/// Command line of pm-bench.
#[derive(Parser, Debug)]
#[command(
    name = "pm-bench",
    about = "Benchmarks pm end to end against gce-sim",
    after_help = "Example:\n  cargo build --release --workspace --bins && target/release/pm-bench --json bench.json"
)]
struct Args {
    /// Small sizes and short delays: proves the harness works in a minute or two.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Only the converge runs with at most this many instances (full mode).
    #[arg(long)]
    max_instances: Option<u64>,
    /// Converge runs to do instead of the profile's, as INSTANCESxZONES (e.g. 2000x10);
    /// repeatable.
    #[arg(long, value_name = "NxZ", value_parser = parse_size)]
    converge: Vec<(u64, usize)>,
    /// Run only the converge scenario.
    #[arg(long)]
    converge_only: bool,
    /// Run only the rollout scenario.
    #[arg(long, conflicts_with = "converge_only")]
    rollout_only: bool,
    /// Run only the preemption-notice scenario.
    #[arg(long, conflicts_with_all = ["converge_only", "rollout_only"])]
    notice_only: bool,
    /// Run only the capacity scenario (pm against the prevmtable model).
    #[arg(long, conflicts_with_all = ["converge_only", "rollout_only", "notice_only"])]
    capacity_only: bool,
    /// Run only the heal scenario (preemptions of a converged pool replaced).
    #[arg(long, conflicts_with_all = ["converge_only", "rollout_only", "notice_only", "capacity_only"])]
    heal_only: bool,
}

fn parse_size(text: &str) -> Result<(u64, usize), String> {
    let (n, z) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not INSTANCESxZONES, e.g. 2000x10"))?;
    let n = n
        .parse()
        .map_err(|_| format!("{n:?} is not a number of instances"))?;
    let z: usize = z
        .parse()
        .map_err(|_| format!("{z:?} is not a number of zones"))?;
    if z == 0 {
        return Err("at least one zone".into());
    }
    Ok((n, z))
}

/// Raises this process's open-file limit as far as the system lets it. gce-sim runs in
/// the bench and holds one socket per request in flight from every agent, and each
/// operation of a zone is waited on at once: 60 zones of 500 creates are 30,000 sockets,
/// past a common limit of 20,000.
fn raise_open_files() {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    if rlimit::Resource::NOFILE.set(ceiling, ceiling).is_err() {
        if let Err(e) = rlimit::increase_nofile_limit(ceiling) {
            eprintln!("cannot raise the open-file limit: {e}");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_open_files();
    let mut profile = if args.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    if let Some(max) = args.max_instances {
        profile.converge.retain(|(n, _)| *n <= max);
    }
    if !args.converge.is_empty() {
        profile.converge = args.converge.clone();
    }
    let mut report = report::Report::new(&profile);
    if args.rollout_only || args.notice_only || args.capacity_only || args.heal_only {
        profile.converge.clear();
    }
    for &(n, zones) in &profile.converge {
        eprintln!("converge: {n} instances over {zones} zones");
        report
            .converge
            .push(scenarios::converge(&profile, n, zones).await?);
    }
    if args.rollout_only {
        eprintln!("rollout: {} instances", profile.rollout.0);
        report.rollout = Some(rollout::rollout(&profile).await?);
    } else if args.notice_only {
        eprintln!("notice: {} instances", profile.notice.0);
        report.notice = Some(notice::notice(&profile).await?);
    } else if args.capacity_only {
        eprintln!("capacity: {} instances", profile.capacity.instances);
        report.capacity = Some(capacity::capacity(&profile).await?);
    } else if args.heal_only {
        eprintln!("heal: {} instances", profile.heal.0);
        report.heal = scenarios::heal(&profile).await?;
    } else if !args.converge_only {
        run_the_rest(&profile, &mut report).await?;
    }
    print!("{}", report.table());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("JSON report written to {}", path.display());
    }
    Ok(())
}

/// Heal, exhaustion, failover, rollout, the preemption notice and capacity delivered.
async fn run_the_rest(profile: &Profile, report: &mut report::Report) -> anyhow::Result<()> {
    eprintln!("heal: {} instances", profile.heal.0);
    report.heal = scenarios::heal(profile).await?;
    eprintln!("exhaustion");
    report.exhaustion = Some(scenarios::exhaustion(profile).await?);
    eprintln!("failover: scheduler");
    report
        .failover
        .push(scenarios::scheduler_failover(profile).await?);
    eprintln!("failover: agent");
    report
        .failover
        .push(scenarios::agent_failover(profile).await?);
    eprintln!("rollout: {} instances", profile.rollout.0);
    report.rollout = Some(rollout::rollout(profile).await?);
    eprintln!("notice: {} instances", profile.notice.0);
    report.notice = Some(notice::notice(profile).await?);
    eprintln!("capacity: {} instances", profile.capacity.instances);
    report.capacity = Some(capacity::capacity(profile).await?);
    Ok(())
}
