//! Running the operator's hooks: from the hooks dir only, with a cleared environment
//! holding prevmtable's variables plus `POOL` and `EVENT` (and what `--hook-env` lets
//! through), one timeout over the whole run, output into the log, bounded concurrency and
//! a bounded queue, and never in the way of reconciling.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pm_etcd::EventLog;
use pm_pool::is_plain_hook_name;
pub use pm_pool::HookEvent;
use pm_proto::Severity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::Semaphore;

/// Output lines of one hook run that are logged; the rest is counted and dropped, so a
/// hook printing megabytes cannot flood the log.
const MAX_LOGGED_LINES: usize = 200;

/// Longest logged line, in bytes.
const MAX_LINE_BYTES: usize = 2048;

/// How long the output of what a hook left behind is still read after the hook exited.
const READ_GRACE: Duration = Duration::from_secs(1);

/// `PATH` of a hook when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Hooks waiting for a slot or running, at most, unless set otherwise.
pub const DEFAULT_QUEUE: usize = 1000;

/// Why a hook did not run or failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// The name is not a plain file name (a path, `..`, hidden, odd characters).
    #[error("hook name {0:?} is not a plain name in the hooks dir")]
    BadName(String),
    /// The agent has no hooks dir.
    #[error("hook {0:?} is configured but the agent has no --hooks-dir")]
    NoHooksDir(String),
    /// The hook is missing or not executable.
    #[error("hook {name:?} cannot run: {reason}")]
    NotRunnable {
        /// The hook.
        name: String,
        /// Why.
        reason: String,
    },
    /// It ran past the timeout and was killed.
    #[error("hook {name:?} timed out after {timeout:?} and was killed")]
    TimedOut {
        /// The hook.
        name: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The queue of hooks waiting to run was full; this one was dropped.
    #[error("hook {name:?} dropped: {queued} hooks already waiting or running")]
    Dropped {
        /// The hook.
        name: String,
        /// How many were queued.
        queued: usize,
    },
    /// It exited unsuccessfully.
    #[error("hook {name:?} failed: {status}")]
    Failed {
        /// The hook.
        name: String,
        /// Its exit status.
        status: String,
    },
}

impl HookError {
    /// The `result` label of `pm_hook_runs_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            HookError::BadName(_) => "bad_name",
            HookError::NoHooksDir(_) => "no_hooks_dir",
            HookError::NotRunnable { .. } => "not_runnable",
            HookError::TimedOut { .. } => "timed_out",
            HookError::Failed { .. } => "failed",
            HookError::Dropped { .. } => "dropped",
        }
    }
}

/// Labels of `pm_hook_runs_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HookRunLabels {
    /// Zone of the agent.
    pub zone: String,
    /// `EVENT`: create, delete, vanished, exhausted, preempted.
    pub event: &'static str,
    /// `ok` or [`HookError::result_label`].
    pub result: &'static str,
}

/// Whether `name` may be passed on to hooks with `--hook-env`: a variable name, not one
/// pm sets itself, and never one holding pm's secrets.
pub fn check_passed_env(name: &str) -> Result<(), String> {
    let shaped = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !shaped {
        return Err("is not a variable name ([A-Za-z_][A-Za-z0-9_]*)".into());
    }
    let own = ["PATH", "PROJECT", "ZONE", "NAME", "POOL", "EVENT"];
    let drain = ["REASON", "HARD", "DRAIN_SECONDS"];
    if own.contains(&name) || drain.contains(&name) {
        return Err("is set by pm for every hook".into());
    }
    if name == "PM_ETCD_PASSWORD" || name.ends_with("_PASSWORD") {
        return Err("holds a secret; hooks never see it".into());
    }
    Ok(())
}

/// What one hook run is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    /// The hook's name in the hooks dir.
    pub name: String,
    /// Which event.
    pub event: HookEvent,
    /// Pool.
    pub pool: String,
    /// GCE project.
    pub project: String,
    /// Zone.
    pub zone: String,
    /// Instance; empty for `exhausted`.
    pub instance: String,
    /// The event's own variables (`drain`: REASON, HARD, DRAIN_SECONDS).
    pub env: Vec<(&'static str, String)>,
}

/// Runs hooks in the background, a bounded number at once.
#[derive(Clone)]
pub struct HookRunner {
    /// The only place hooks are run from; `None`: hooks are reported as not runnable.
    dir: Option<PathBuf>,
    /// Kill a hook after this long.
    timeout: Duration,
    /// Permits for concurrently running hooks.
    slots: Arc<Semaphore>,
    /// Permits for hooks waiting or running; a hook finding none is dropped.
    queue: Arc<Semaphore>,
    /// The queue's size.
    queue_size: usize,
    /// Variables of the agent's environment passed on to hooks (`--hook-env`).
    passthrough: Arc<Vec<String>>,
    /// Where failures are recorded.
    events: Arc<EventLog>,
    /// Runs by zone, event and result; a family of its own unless given one.
    runs: Family<HookRunLabels, Counter>,
}

impl HookRunner {
    /// A runner of hooks from `dir`.
    pub fn new(
        dir: Option<PathBuf>,
        timeout: Duration,
        concurrency: usize,
        events: Arc<EventLog>,
    ) -> Self {
        Self {
            dir,
            timeout,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            queue: Arc::new(Semaphore::new(DEFAULT_QUEUE)),
            queue_size: DEFAULT_QUEUE,
            passthrough: Arc::new(Vec::new()),
            events,
            runs: Family::default(),
        }
    }

    /// At most `size` hooks wait or run at once; more are dropped with an event.
    pub fn with_queue(mut self, size: usize) -> Self {
        self.queue_size = size.max(1);
        self.queue = Arc::new(Semaphore::new(self.queue_size));
        self
    }

    /// Passes these variables of the agent's environment on to hooks (when set).
    pub fn passing_env(mut self, names: Vec<String>) -> Self {
        self.passthrough = Arc::new(names);
        self
    }

    /// Counts runs into `runs` (`pm_hook_runs_total`) instead of a family of its own.
    pub fn counting_runs_in(mut self, runs: Family<HookRunLabels, Counter>) -> Self {
        self.runs = runs;
        self
    }

    /// Starts `call` in the background and returns at once. The outcome goes to the log
    /// and is counted by result; a failure is also recorded as an event.
    pub fn spawn(&self, call: HookCall) -> tokio::task::JoinHandle<Result<(), HookError>> {
        let runner = self.clone();
        let queued = self.queue.clone().try_acquire_owned();
        tokio::spawn(async move {
            let result = match queued {
                Err(_) => Err(HookError::Dropped {
                    name: call.name.clone(),
                    queued: runner.queue_size,
                }),
                Ok(_queued) => match runner.slots.clone().acquire_owned().await {
                    Ok(_permit) => runner.run(&call).await,
                    Err(_) => Ok(()),
                },
            };
            let labels = HookRunLabels {
                zone: call.zone.clone(),
                event: call.event.as_str(),
                result: result
                    .as_ref()
                    .map_or_else(HookError::result_label, |()| "ok"),
            };
            runner.runs.get_or_create(&labels).inc();
            if let Err(e) = &result {
                runner
                    .events
                    .emit(
                        &call.pool,
                        "hook-failed",
                        Severity::Error,
                        &call.zone,
                        &call.instance,
                        format!("{} hook: {e}", call.event.as_str()),
                    )
                    .await;
            }
            result
        })
    }

    fn resolve(&self, name: &str) -> Result<PathBuf, HookError> {
        if !is_plain_hook_name(name) {
            return Err(HookError::BadName(name.to_string()));
        }
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| HookError::NoHooksDir(name.to_string()))?;
        let path = dir.join(name);
        let not_runnable = |reason: String| HookError::NotRunnable {
            name: name.to_string(),
            reason,
        };
        let meta = std::fs::metadata(&path)
            .map_err(|e| not_runnable(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(not_runnable(format!("{} is not a file", path.display())));
        }
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(not_runnable(format!(
                "{} is not executable",
                path.display()
            )));
        }
        Ok(path)
    }

    /// Runs one hook to its end (or timeout) in the foreground. The timeout covers the
    /// whole run, reading its output included; at the end its process group is killed in
    /// every case, so a child it left behind holding its pipes never keeps the slot.
    pub async fn run(&self, call: &HookCall) -> Result<(), HookError> {
        let path = self.resolve(&call.name)?;
        let mut command = Command::new(&path);
        command.env_clear().env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        );
        for name in self.passthrough.iter() {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .env("PROJECT", &call.project)
            .env("ZONE", &call.zone)
            .env("POOL", &call.pool)
            .env("EVENT", call.event.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !call.instance.is_empty() {
            command.env("NAME", &call.instance);
        }
        for (name, value) in &call.env {
            command.env(name, value);
        }
        if let Some(dir) = path.parent() {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|e| HookError::NotRunnable {
            name: call.name.clone(),
            reason: e.to_string(),
        })?;
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(log_output(s, call.clone(), "stdout")));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(log_output(s, call.clone(), "stderr")));
        let group = child.id();
        let mut readers: Vec<_> = [out, err].into_iter().flatten().collect();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let exited = tokio::time::timeout_at(deadline, child.wait()).await;
        if exited.is_ok() {
            // Children it left behind may hold its pipes open: read what they write for a
            // moment, within the timeout, then end them with the group.
            let grace = deadline.min(tokio::time::Instant::now() + READ_GRACE);
            let drained = async {
                for reader in readers.iter_mut() {
                    reader.await.ok();
                }
            };
            tokio::time::timeout_at(grace, drained).await.ok();
        }
        // The hook runs in its own process group: end what it started too, whether it
        // timed out or left children behind.
        if let Some(pid) = group {
            std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status()
                .ok();
        }
        for reader in &readers {
            reader.abort();
        }
        let status = match exited {
            Ok(status) => status.map_err(|e| HookError::Failed {
                name: call.name.clone(),
                status: e.to_string(),
            })?,
            Err(_) => {
                child.start_kill().ok();
                child.wait().await.ok();
                return Err(HookError::TimedOut {
                    name: call.name.clone(),
                    timeout: self.timeout,
                });
            }
        };
        if status.success() {
            tracing::info!(hook = %call.name, event = call.event.as_str(), pool = %call.pool, zone = %call.zone, instance = %call.instance, "hook succeeded");
            Ok(())
        } else {
            Err(HookError::Failed {
                name: call.name.clone(),
                status: status.to_string(),
            })
        }
    }
}

/// Logs a hook's output line by line, bounded in lines and line length; the rest is read
/// and dropped so the hook never blocks on a full pipe and never fills memory.
async fn log_output<R: AsyncRead + Unpin>(mut stream: R, call: HookCall, which: &'static str) {
    let mut chunk = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut logged = 0usize;
    let mut dropped = 0usize;
    let mut emit = |line: &mut Vec<u8>| {
        if logged < MAX_LOGGED_LINES {
            let text = String::from_utf8_lossy(line);
            tracing::info!(hook = %call.name, pool = %call.pool, instance = %call.instance, stream = which, "{}", text.trim_end());
            logged += 1;
        } else {
            dropped += 1;
        }
        line.clear();
    };
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &chunk[..n] {
            if byte == b'\n' {
                emit(&mut line);
            } else if line.len() < MAX_LINE_BYTES {
                line.push(byte);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
    if dropped > 0 {
        tracing::warn!(hook = %call.name, stream = which, dropped, "hook output truncated");
    }
}
