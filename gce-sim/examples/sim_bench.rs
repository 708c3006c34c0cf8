//! Measures what gce-sim sustains: inserts/s, lists/s of a 1,000-instance zone, and
//! its resident memory holding 20,000 instances.
//!
//! Runs the gce-sim binary as a separate process (so its memory is its own) and drives
//! it over HTTP. Build both in release mode first:
//!
//! ```text
//! cargo build --release -p gce-sim --bin gce-sim --example sim_bench
//! target/release/examples/sim_bench [--sim target/release/gce-sim] [--instances 20000]
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Benchmark of gce-sim.
#[derive(Debug, Parser)]
struct Args {
    /// The gce-sim binary (default: next to this example's directory).
    #[arg(long)]
    sim: Option<PathBuf>,
    /// Instances to create in total; 1,000 of them go to the listed zone.
    #[arg(long, default_value_t = 20_000)]
    instances: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// Seconds the list phase runs.
    #[arg(long, default_value_t = 5)]
    list_seconds: u64,
}

const LISTED_ZONE: &str = "bench-a";
const OTHER_ZONE: &str = "bench-b";
const LISTED_COUNT: u64 = 1_000;

/// Kills the sim when the benchmark ends, however it ends.
struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

fn template(zone: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "machineType": format!("zones/{zone}/machineTypes/e2-small"),
        "labels": {"pm-pool": "bench", "team": "infra"},
        "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP"},
        "disks": [{"boot": true, "autoDelete": true, "initializeParams": {
            "diskName": format!("{name}-boot"),
            "sourceImage": "projects/debian-cloud/global/images/family/debian-12",
            "diskSizeGb": "20"}}],
        "networkInterfaces": [{"network": "global/networks/default",
            "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]}],
        "metadata": {"items": [{"key": "startup-script", "value": "#!/bin/sh\necho hello\n"}]},
        "serviceAccounts": [{"email": "default",
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing from /proc/{pid}/status"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("malformed {name} line"))?;
        Ok(kib.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn start_sim(binary: &PathBuf, capacity: u64) -> anyhow::Result<(SimProcess, String)> {
    let mut child = Command::new(binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--zones",
            &format!("{LISTED_ZONE},{OTHER_ZONE}"),
            "--capacity",
            &capacity.to_string(),
            "--op-delay-ms",
            "0",
            "--boot-delay-ms",
            "0",
            "--seed",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let sim = SimProcess(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("gce-sim listening on ") else {
        bail!("unexpected first line from gce-sim: {line:?}");
    };
    Ok((sim, url.to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match args.sim {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .context("no parent directory")?
            .join("gce-sim"),
    };
    let (sim, url) = start_sim(&binary, args.instances + 1)?;
    let pid = sim.0.id();
    let http = reqwest::Client::new();
    let (idle_rss, _) = rss_kib(pid)?;

    // Inserts: LISTED_COUNT into the listed zone, the rest into the other.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, url, next, total) = (http.clone(), url.clone(), next.clone(), args.instances);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let zone = if i < LISTED_COUNT {
                    LISTED_ZONE
                } else {
                    OTHER_ZONE
                };
                let name = format!("bench-{i:06}");
                let response = http
                    .post(format!(
                        "{url}/compute/v1/projects/bench/zones/{zone}/instances"
                    ))
                    .json(&template(zone, &name))
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("insert {name}: HTTP {}", response.status());
                }
                response.bytes().await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let insert_elapsed = started.elapsed();
    let (rss, hwm) = rss_kib(pid)?;

    // Lists of the 1,000-instance zone, two pages of 500, following the token.
    let list_url = format!("{url}/compute/v1/projects/bench/zones/{LISTED_ZONE}/instances");
    let single_start = Instant::now();
    let mut single_runs = 0u32;
    while single_start.elapsed() < Duration::from_secs(1) {
        let items = list_all(&http, &list_url).await?;
        if items != LISTED_COUNT {
            bail!("listed {items} instances, expected {LISTED_COUNT}");
        }
        single_runs += 1;
    }
    let single_latency = single_start.elapsed() / single_runs;

    let lists = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.list_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(4) {
        let (http, list_url, lists) = (http.clone(), list_url.clone(), lists.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                list_all(&http, &list_url).await?;
                lists.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let list_elapsed = started.elapsed();
    let full_lists = lists.load(Ordering::Relaxed);

    println!(
        "gce-sim benchmark ({} instances, {} connections)",
        args.instances, args.concurrency
    );
    println!(
        "insert: {:.0} requests/s ({} in {:.2?})",
        args.instances as f64 / insert_elapsed.as_secs_f64(),
        args.instances,
        insert_elapsed
    );
    println!(
        "list of a {LISTED_COUNT}-instance zone (2 pages of 500): {:.0} full lists/s = {:.0} requests/s; one full list alone takes {:.2?}",
        full_lists as f64 / list_elapsed.as_secs_f64(),
        2.0 * full_lists as f64 / list_elapsed.as_secs_f64(),
        single_latency
    );
    println!(
        "memory: RSS {:.1} MiB idle, {:.1} MiB at {} instances (peak {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        args.instances,
        hwm as f64 / 1024.0
    );
    drop(sim);
    Ok(())
}

/// The parts of a list page the benchmark reads; the instances are skipped unparsed so
/// that the client's JSON work does not dominate the measurement.
#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
    #[serde(rename = "nextPageToken")]
    next_page_token: Option<String>,
}

/// Lists every page; returns the number of instances.
async fn list_all(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let mut token: Option<String> = None;
    let mut count = 0;
    loop {
        let mut request = http.get(url).query(&[("maxResults", "500")]);
        if let Some(token) = &token {
            request = request.query(&[("pageToken", token)]);
        }
        let body = request.send().await?.error_for_status()?.bytes().await?;
        let page: Page = serde_json::from_slice(&body)?;
        count += page.items.len() as u64;
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => return Ok(count),
        }
    }
}
