//! pmctl's command line: global flags, verbs, and their help with examples.

use std::path::PathBuf;
use std::time::Duration;

use pm_daemon::{parse_duration, EtcdArgs, GceArgs};

use crate::config_file::Format;
use crate::output::OutputFormat;
use pm_pool::fields::MAX_TARGET_VM_COUNT;
use pm_pool::removal::Selector;

/// Longest manual exhaustion: a week. Longer is a config change (`allowedZones`), not a
/// back-off.
pub const MAX_EXHAUST_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// The operator's CLI of pm.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "pmctl",
    version,
    about = "pm's operator CLI: set pool configs, scale, and watch pools, zones, agents and the scheduler, all through etcd",
    after_help = "Examples:\n  pmctl --etcd http://127.0.0.1:2379 config set web -f web.rjson\n  pmctl status --watch\n  pmctl -o json instances web\n\nEvery flag can also be set as a PM_* variable (PM_ETCD, PM_PREFIX, PM_OUTPUT, ...) or in --config FILE.\nExit codes: 0 ok, 1 error, 2 usage."
)]
pub struct Cli {
    /// How to reach etcd.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Output format: an aligned table, or JSON for scripts.
    #[arg(
        short = 'o',
        long = "output",
        env = "PM_OUTPUT",
        value_enum,
        global = true,
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A pool name as a command-line value: it becomes a key segment and a label value.
pub(crate) fn pool_name(text: &str) -> Result<String, String> {
    pm_etcd::keys::validate_pool(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

/// A VM name as a command-line value.
fn instance_name(text: &str) -> Result<String, String> {
    pm_etcd::keys::validate_instance_name(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

/// A zone name as a command-line value.
fn zone_name(text: &str) -> Result<String, String> {
    pm_etcd::keys::validate_zone(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

/// A manual exhaustion: at least a second, at most [`MAX_EXHAUST_FOR`].
fn exhaust_for(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is shorter than etcd's minimum lease of 1s"
        ));
    }
    if duration > MAX_EXHAUST_FOR {
        return Err(format!(
            "{text:?} is longer than a week; remove the zone from allowedZones instead"
        ));
    }
    Ok(duration)
}

/// The verbs.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Set, show or delete a pool's config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Change a pool's targetVMCount (a compare-and-swap on its config).
    #[command(after_help = "Example:\n  pmctl scale web 10")]
    Scale {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The new number of instances to keep alive.
        #[arg(value_parser = clap::value_parser!(i64).range(0..=MAX_TARGET_VM_COUNT))]
        count: i64,
    },
    /// Per zone: desired, running, starting, lost, exhaustion, agent; and the scheduler
    /// leader.
    #[command(
        after_help = "Examples:\n  pmctl status\n  pmctl status web --watch\n  pmctl -o json status web\n\n\
        Counts: running = RUNNING and not preempted; starting = PROVISIONING, STAGING or\n\
        unknown; lost = preempted, STOPPING or TERMINATED; deleting = being deleted by pm."
    )]
    Status {
        /// Only this pool.
        #[arg(value_parser = pool_name)]
        pool: Option<String>,
        /// Keep the table on screen, redrawn on every change and each second (Ctrl-C ends).
        /// With -o json: one status object per line, on every change.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// The instances of a pool as its agents observed them.
    #[command(
        after_help = "Examples:\n  pmctl instances web\n  pmctl instances web --zone us-central1-a"
    )]
    Instances {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// Only this zone.
        #[arg(long, value_parser = zone_name)]
        zone: Option<String>,
    },
    /// Drain these VMs and replace them: each is labelled pm-state=draining, its drain
    /// hook runs, and it is deleted when the hook is done or drainSeconds passed (at once
    /// with --hard), within the pool's disruption budget.
    #[command(
        after_help = "Examples:\n  pmctl drain web web-ab12cd34 --reason 'kernel update'\n  pmctl -o json drain web web-ab12cd34 web-ef56gh78 --hard"
    )]
    Drain {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The VMs, as `pmctl instances` names them.
        #[arg(required = true, num_args = 1.., value_parser = instance_name)]
        names: Vec<String>,
        /// Delete at once, without waiting for the drain hook.
        #[arg(long)]
        hard: bool,
        /// Why, for events and the drain hook's REASON.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lower a pool's targetVMCount by N and remove N of its VMs: those with the
    /// selector's label, or those a scale-down would pick. Each drains as `pmctl drain`
    /// does, within the pool's disruption budget, and none is replaced.
    #[command(
        after_help = "Examples:\n  pmctl shed web 3 --reason 'batch window over'\n  pmctl shed web 2 --zone us-central1-a --selector tier=batch --hard\n  pmctl -o json shed web 1 --force"
    )]
    Shed {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// How many VMs to remove (1 to 60).
        #[arg(value_parser = clap::value_parser!(u16).range(1..=60))]
        count: u16,
        /// Only VMs of this zone.
        #[arg(long, value_parser = zone_name)]
        zone: Option<String>,
        /// Only VMs with this GCE label, KEY=VALUE.
        #[arg(long, value_parser = Selector::parse)]
        selector: Option<Selector>,
        /// Delete at once, without waiting for the drain hook.
        #[arg(long)]
        hard: bool,
        /// Why, for events and the drain hook's REASON.
        #[arg(long, default_value = "")]
        reason: String,
        /// Refuse a shed less than this after the pool's last one.
        #[arg(long, value_parser = parse_duration, default_value = "1m")]
        min_interval: Duration,
        /// Shed even within --min-interval of the last shed.
        #[arg(long)]
        force: bool,
    },
    /// Where a pool's `pmctl drain` and `pmctl shed` workflows stand (kept 7 days).
    #[command(
        after_help = "Examples:\n  pmctl workflows web\n  pmctl -o json workflows web 1733300000000-1f2e"
    )]
    Workflows {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// Only this workflow, with each of its VMs.
        id: Option<String>,
    },
    /// Where a pool's rollout to a new revision stands; pause, resume or undo it.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Mark a zone exhausted by hand, or clear its exhaustion.
    #[command(subcommand)]
    Zone(ZoneCommand),
    /// Recent events of one pool or all, optionally following new ones.
    #[command(
        after_help = "Examples:\n  pmctl events web\n  pmctl events --follow\n  pmctl -o json events web --limit 0\n\n\
        With -o json and --follow, each event is printed as one JSON object per line."
    )]
    Events {
        /// Only this pool.
        #[arg(value_parser = pool_name)]
        pool: Option<String>,
        /// Keep printing new events as they happen (Ctrl-C ends).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Show at most this many of the latest events; 0: all that are kept.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The agents of every zone: which is active, which stand by.
    #[command(after_help = "Example:\n  pmctl agents")]
    Agents,
    /// The elected scheduler leader.
    #[command(after_help = "Example:\n  pmctl leader")]
    Leader,
}

/// A pool config file on the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigFileArgs {
    /// The config file; `-` reads stdin.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub path: PathBuf,
    /// The file's syntax.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
}

/// `pmctl config ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ConfigCommand {
    /// Create or replace a pool's config from a file: prevmtable's rjson, Hjson, JSON or
    /// YAML, field names case-insensitive. Every problem is reported with its field and
    /// nothing is written unless the whole config is valid.
    #[command(
        after_help = "Examples:\n  pmctl config set web -f web.rjson\n  cat web.yaml | pmctl config set web -f -\n  pmctl config set web -f web.json --dry-run\n\n\
        Fields: targetVMCount, allowedZones, prefix, instance (required); secondsToRest,\n\
        secondsForExhaustion, hooks {create, delete, vanished, exhausted, preempted},\n\
        project, distribution (even|balanced|any), onPreempted (delete|restart)."
    )]
    Set {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The config file.
        #[command(flatten)]
        file: ConfigFileArgs,
        /// Check the file and show the result without writing anything (needs no etcd).
        #[arg(long)]
        dry_run: bool,
        /// Write only if the stored config still has this mod_revision (from
        /// `config get -o json`; 0: only if the pool does not exist yet).
        #[arg(long, value_name = "REVISION")]
        if_revision: Option<i64>,
    },
    /// What `config set` with a file would change, field by field, and whether it starts
    /// a rollout (a new template, project or prefix).
    #[command(after_help = "Example:\n  pmctl config diff web -f web-new.yaml")]
    Diff {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The config file.
        #[command(flatten)]
        file: ConfigFileArgs,
    },
    /// Show a pool's config.
    #[command(
        after_help = "Examples:\n  pmctl config get web\n  pmctl -o json config get web | jq .config > web.json"
    )]
    Get {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Move a prevmtable pool to pm: read prevmtable's config (rjson) and the hook scripts
    /// it names from the project's metadata through the Compute API, show the pm config and
    /// its diff against the stored one, write the scripts into --hooks-dir as executables
    /// named as the config names them, and store the config. Every problem names the
    /// attribute, field or file it comes from; nothing is written while there is one.
    #[command(
        after_help = "Examples:\n  pmctl config import-prevmtable web --project my-proj --dry-run\n  pmctl config import-prevmtable web --project my-proj --hooks-dir /etc/pm/hooks --adopt\n\n\
        Stop prevmtable first (README: \"Migrating from prevmtable\"). With --adopt the agents\n\
        label prevmtable's VMs (the prefix, no pm-pool label) as the pool's instead of\n\
        ignoring them."
    )]
    ImportPrevmtable {
        /// What to import, and where the hook scripts go.
        #[command(flatten)]
        args: crate::prevmtable::ImportArgs,
        /// How to reach the Compute API.
        #[command(flatten)]
        gce: GceArgs,
    },
    /// Delete a pool: its config becomes a tombstone, the scheduler scales it to 0 and then
    /// removes all of its keys.
    #[command(after_help = "Example:\n  pmctl config delete web")]
    Delete {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
    },
}

/// `pmctl rollout ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RolloutCommand {
    /// The pool's revision, the rollout's state and the VMs of each revision.
    #[command(
        after_help = "Examples:\n  pmctl rollout status web\n  pmctl -o json rollout status web"
    )]
    Status {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Stop replacing VMs: no surge, no old VM deleted, until resumed.
    #[command(after_help = "Example:\n  pmctl rollout pause web")]
    Pause {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Go on with a rollout paused by pause, or by the scheduler after a failure.
    #[command(after_help = "Example:\n  pmctl rollout resume web")]
    Resume {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Go back to the previous revision's template, project and prefix (a new rollout).
    #[command(after_help = "Example:\n  pmctl rollout undo web")]
    Undo {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
    },
}

/// `pmctl zone ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ZoneCommand {
    /// Give a zone no new instances of a pool for a while, as after a stockout. The mark
    /// is an etcd key bound to a lease, so it vanishes by itself when the time is up.
    #[command(after_help = "Example:\n  pmctl zone exhaust web us-central1-a --for 10m")]
    Exhaust {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The zone.
        #[arg(value_parser = zone_name)]
        zone: String,
        /// How long, e.g. 90s, 10m, 2h (1s to 7 days).
        #[arg(long = "for", value_name = "DURATION", value_parser = exhaust_for)]
        duration: Duration,
    },
    /// Remove a zone's exhaustion mark (manual or the scheduler's) at once.
    #[command(after_help = "Example:\n  pmctl zone clear web us-central1-a")]
    Clear {
        /// The pool.
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The zone.
        #[arg(value_parser = zone_name)]
        zone: String,
    },
}
