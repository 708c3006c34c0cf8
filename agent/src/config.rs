//! pm-agent's settings: flags, `PM_*` variables, an optional config file.

use std::path::PathBuf;
use std::time::Duration;

use pm_daemon::{parse_duration, DaemonArgs, GceArgs};

/// The per-zone reconciler against GCE.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "pm-agent",
    version,
    about = "pm's per-zone agent: keeps the zone's instances of every pool at the scheduler's desired count and runs hooks",
    after_help = "Example:\n  pm-agent --zone us-central1-a --etcd http://127.0.0.1:2379 --project my-project --hooks-dir /etc/pm/hooks --metrics 0.0.0.0:9465\n  pm-agent --zone zone-a --gce-endpoint http://127.0.0.1:8080/compute/v1/ --no-auth --project demo\n\nEvery flag can also be set as a PM_* variable (PM_ZONE, PM_PROJECT, ...) or in --config FILE."
)]
pub struct AgentConfig {
    /// The zone this agent serves.
    #[arg(long, env = "PM_ZONE")]
    pub zone: String,
    /// etcd, id, lease, events, metrics, logs.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// GCE project of pools that name none.
    #[arg(long, env = "PM_PROJECT")]
    pub project: Option<String>,
    /// Endpoint, credentials and call timeout of the Compute API.
    #[command(flatten)]
    pub gce: GceArgs,
    /// Directory of hook executables; hooks are run from here only.
    #[arg(long, env = "PM_HOOKS_DIR", value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// A hook still running after this long is killed.
    #[arg(long, env = "PM_HOOK_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub hook_timeout: Duration,
    /// Hooks running at once; more wait their turn (reconciling never waits).
    #[arg(long, env = "PM_HOOK_CONCURRENCY", default_value_t = 4)]
    pub hook_concurrency: usize,
    /// Hooks waiting or running at most; a hook beyond is dropped, with an event.
    #[arg(long, env = "PM_HOOK_QUEUE", default_value_t = crate::hooks::DEFAULT_QUEUE)]
    pub hook_queue: usize,
    /// A variable of the agent's environment to pass on to hooks (repeatable, or a comma
    /// list). Hooks otherwise get only PATH and the documented PROJECT, ZONE, NAME, POOL
    /// and EVENT.
    #[arg(
        long = "hook-env",
        env = "PM_HOOK_ENV",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub hook_env: Vec<String>,
    /// GCE creates and deletes in flight at once, over all pools.
    #[arg(long, env = "PM_MAX_CONCURRENT", default_value_t = 32)]
    pub max_concurrent: usize,
    /// GCE operations waited on at once, over all pools: each wait is a long poll that
    /// holds one connection; operations beyond it wait for a slot before they are polled.
    #[arg(long, env = "PM_MAX_WAITING", default_value_t = 256)]
    pub max_waiting: usize,
    /// Longest wait for one GCE operation to finish.
    #[arg(long, env = "PM_OPERATION_TIMEOUT", value_parser = parse_duration, default_value = "5m")]
    pub operation_timeout: Duration,
    /// An active agent that completed no reconcile pass (no GCE list) for this long says
    /// so in its member key: the scheduler then counts its zone as without agent.
    #[arg(long, env = "PM_STALL_AFTER", value_parser = parse_duration, default_value = "60s")]
    pub stall_after: Duration,
    /// How often the active agent looks for new preemption notices (one
    /// `zoneOperations.list` per project); 0s turns it off.
    #[arg(long, env = "PM_NOTICE_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub notice_interval: Duration,
}

/// The shortest `--notice-interval`: faster looks only cost calls.
pub const MIN_NOTICE_INTERVAL: Duration = Duration::from_millis(100);

impl AgentConfig {
    /// Checks the settings that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        pm_etcd::keys::validate_zone(&self.zone).map_err(|e| format!("--zone: {e}"))?;
        if self.max_concurrent == 0 {
            return Err("--max-concurrent must be at least 1".into());
        }
        if self.max_waiting == 0 {
            return Err("--max-waiting must be at least 1".into());
        }
        if self.hook_concurrency == 0 {
            return Err("--hook-concurrency must be at least 1".into());
        }
        if !self.notice_interval.is_zero() && self.notice_interval < MIN_NOTICE_INTERVAL {
            return Err(format!(
                "--notice-interval must be 0s (off) or at least {MIN_NOTICE_INTERVAL:?}"
            ));
        }
        if self.hook_queue == 0 {
            return Err("--hook-queue must be at least 1".into());
        }
        for name in &self.hook_env {
            crate::hooks::check_passed_env(name)
                .map_err(|e| format!("--hook-env {name:?}: {e}"))?;
        }
        self.gce.validate()?;
        if let Some(dir) = &self.hooks_dir {
            if !dir.is_dir() {
                return Err(format!("--hooks-dir {} is not a directory", dir.display()));
            }
        }
        self.daemon.validate()?;
        Ok(())
    }
}
