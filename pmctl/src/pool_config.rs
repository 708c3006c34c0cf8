//! `pmctl config set|get|delete` and `pmctl scale`: the pool config key, written only with
//! compare-and-swap on its mod_revision so concurrent writers never overwrite each other.
//!
//! `config set` replaces the whole document: when the key changed between pmctl's read and
//! its write, it stops with [`Error::Conflict`] and the operator decides. `scale` and
//! `config delete` change one field of the current config, so on a conflict they read it
//! again and retry, a few times.

use std::path::Path;

use pm_etcd::{Store, Versioned};
use pm_pool::fields::{
    DEFAULT_SECONDS_FOR_EXHAUSTION, DEFAULT_SECONDS_TO_REST, MAX_TARGET_VM_COUNT,
};
use pm_pool::ConfigDocument;
use pm_proto::{ObservedInstance, PoolConfig, Severity};
use serde::Serialize;

use crate::config_file::{self, Format};
use crate::error::{Error, Result};
use crate::events::record;
use crate::output::{self, OutputFormat, Render};

/// Attempts of a read-modify-write (`scale`, `config delete`) before giving up.
const RMW_ATTEMPTS: usize = 5;

/// Reads and checks a config file for `pool`: the config to store, or every problem.
pub fn load(pool: &str, path: &Path, format: Format) -> Result<PoolConfig> {
    let text = config_file::read(path)?;
    let shown = path.display().to_string();
    let value = config_file::parse(&text, format).map_err(|message| Error::Syntax {
        path: shown.clone(),
        message,
    })?;
    pm_pool::validate(pool, &value).map_err(|problems| Error::InvalidConfig {
        path: shown,
        problems,
    })
}

/// What `config set` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetResult {
    /// The pool did not exist; its config was written.
    Created,
    /// The config was replaced (a deleted pool is re-created this way).
    Updated,
    /// The stored config was already this one; nothing was written.
    Unchanged,
    /// `--dry-run`: the file is valid; nothing was written.
    Valid,
}

/// What `pmctl config set` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetView {
    /// The pool.
    pub pool: String,
    /// What happened.
    pub result: SetResult,
    /// The config key's mod_revision now (0 for `--dry-run`).
    pub mod_revision: i64,
    /// The config as stored, in canonical field names.
    pub config: ConfigDocument,
}

impl Render for SetView {
    fn table(&self) -> String {
        let what = match self.result {
            SetResult::Created => "config created",
            SetResult::Updated => "config updated",
            SetResult::Unchanged => "config unchanged (already stored)",
            SetResult::Valid => "config is valid (--dry-run: nothing written)",
        };
        let revision = match self.result {
            SetResult::Valid => String::new(),
            _ => format!(" (revision {})", self.mod_revision),
        };
        format!(
            "pool {}: {what}{revision}: target {}, zones {}\n",
            self.pool,
            self.config.target_vm_count,
            self.config.allowed_zones.join(", ")
        )
    }
}

/// `pmctl config set POOL -f FILE --dry-run`: checks without etcd.
pub fn dry_run(pool: &str, path: &Path, format: Format, output: OutputFormat) -> Result<()> {
    let config = load(pool, path, format)?;
    let view = SetView {
        pool: pool.to_string(),
        result: SetResult::Valid,
        mod_revision: 0,
        config: ConfigDocument::from_config(&config),
    };
    output::emit(output, &view)
}

/// The stored config of `pool`, if any.
pub(crate) async fn current(store: &Store, pool: &str) -> Result<Option<Versioned<PoolConfig>>> {
    Ok(store.get(&store.keys().pool_config(pool)?).await?)
}

/// Writes `config` if the key's mod_revision is still `expected`.
async fn write(store: &Store, pool: &str, config: &PoolConfig, expected: i64) -> Result<i64> {
    let key = store.keys().pool_config(pool)?;
    match store.put_if_revision(&key, config, expected).await {
        Ok(revision) => Ok(revision),
        Err(pm_etcd::Error::Conflict {
            expected, actual, ..
        }) => Err(Error::Conflict {
            pool: pool.to_string(),
            expected,
            actual,
        }),
        Err(e) => Err(e.into()),
    }
}

/// `pmctl config set POOL -f FILE [--if-revision N]`.
pub async fn set(
    store: &Store,
    pool: &str,
    config: PoolConfig,
    if_revision: Option<i64>,
    output: OutputFormat,
) -> Result<()> {
    let view = apply(store, pool, config, if_revision).await?;
    output::emit(output, &view)
}

/// Stores `config` as the pool's (compare-and-swap against the stored revision, or
/// `if_revision`), keeps the rollout state the document does not hold, and records a
/// `config-set` event when it changed anything.
pub async fn apply(
    store: &Store,
    pool: &str,
    config: PoolConfig,
    if_revision: Option<i64>,
) -> Result<SetView> {
    let stored = current(store, pool).await?;
    let mut config = config;
    if let Some(s) = &stored {
        // Not part of the document: `rollout pause` and `resume` keep theirs.
        config.rollout_paused = s.value.rollout_paused;
        config.rollout_resumes = s.value.rollout_resumes;
        if s.value.project != config.project {
            refuse_unrecorded_projects(store, pool).await?;
        }
    }
    let stored_revision = stored.as_ref().map_or(0, |s| s.mod_revision);
    let expected = if_revision.unwrap_or(stored_revision);
    if expected != stored_revision {
        return Err(Error::Conflict {
            pool: pool.to_string(),
            expected,
            actual: stored_revision,
        });
    }
    let (result, mod_revision) = match &stored {
        Some(s) if s.value == config => (SetResult::Unchanged, s.mod_revision),
        Some(_) => (
            SetResult::Updated,
            write(store, pool, &config, expected).await?,
        ),
        None => (
            SetResult::Created,
            write(store, pool, &config, expected).await?,
        ),
    };
    if result != SetResult::Unchanged {
        let verb = if result == SetResult::Created {
            "created"
        } else {
            "updated"
        };
        let message = format!(
            "config {verb} by pmctl: target {}, zones {}",
            config.target_vm_count,
            config.allowed_zones.join(",")
        );
        record(store, pool, "config-set", Severity::Info, "", message).await;
    }
    Ok(SetView {
        pool: pool.to_string(),
        result,
        mod_revision,
        config: ConfigDocument::from_config(&config),
    })
}

/// Refuses a project change while some VM's key does not name its project (recorded
/// before projects were): the agents could not list it in the old project.
async fn refuse_unrecorded_projects(store: &Store, pool: &str) -> Result<()> {
    let prefix = format!("{}zones/", store.keys().pool_prefix(pool)?);
    let (stored, _) = store.list_raw(&prefix).await?;
    let unrecorded = stored
        .iter()
        .filter(|kv| {
            let instance = matches!(
                store.keys().parse(kv.key.as_bytes()),
                Ok(pm_etcd::Key::Instance { .. })
            );
            instance
                && pm_etcd::decode::<ObservedInstance>(&kv.key, &kv.value)
                    .is_ok_and(|o| o.project.is_empty())
        })
        .count();
    if unrecorded == 0 {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "pool {pool:?}: {unrecorded} VM(s) were recorded without their project (by an older pm); \
         their agents record it at their next list: try again in a minute"
    )))
}

/// What `pmctl config get` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GetView {
    /// The pool.
    pub pool: String,
    /// The config key's mod_revision: pass it to `config set --if-revision`.
    pub mod_revision: i64,
    /// True once `config delete` ran: the pool is being scaled to 0 and removed.
    pub deleted: bool,
    /// The config document, accepted as it is by `config set`.
    pub config: ConfigDocument,
}

impl Render for GetView {
    fn table(&self) -> String {
        let c = &self.config;
        let or_default = |value: Option<u32>, default: u32| match value {
            Some(v) => v.to_string(),
            None => format!("{default} (default)"),
        };
        let hooks = c
            .hooks
            .as_ref()
            .map(|h| h.pairs().join(", "))
            .unwrap_or_else(|| "none".into());
        let instance = match &c.instance {
            serde_json::Value::String(text) => format!("(not JSON) {text}"),
            value => serde_json::to_string_pretty(value).unwrap_or_default(),
        };
        let rows = [
            ("pool", self.pool.clone()),
            (
                "state",
                if self.deleted {
                    "being deleted (scaling to 0, then removed)".into()
                } else {
                    "active".into()
                },
            ),
            ("revision", self.mod_revision.to_string()),
            ("targetVMCount", c.target_vm_count.to_string()),
            ("spares", c.spares.unwrap_or(0).to_string()),
            ("allowedZones", c.allowed_zones.join(", ")),
            ("prefix", c.prefix.clone()),
            (
                "project",
                c.project
                    .clone()
                    .unwrap_or_else(|| "(the agent's --project)".into()),
            ),
            ("distribution", c.distribution.to_string()),
            ("onPreempted", c.on_preempted.to_string()),
            (
                "secondsToRest",
                or_default(c.seconds_to_rest, DEFAULT_SECONDS_TO_REST),
            ),
            (
                "secondsForExhaustion",
                or_default(c.seconds_for_exhaustion, DEFAULT_SECONDS_FOR_EXHAUSTION),
            ),
            ("hooks", hooks),
        ];
        let mut out: String = rows
            .iter()
            .map(|(name, value)| format!("{:<22}{value}\n", format!("{name}:")))
            .collect();
        out.push_str("instance:\n");
        out.push_str(&instance);
        out.push('\n');
        out
    }
}

/// `pmctl config get POOL`.
pub async fn get(store: &Store, pool: &str, output: OutputFormat) -> Result<()> {
    let Some(stored) = current(store, pool).await? else {
        return Err(Error::NoSuchPool {
            pool: pool.to_string(),
        });
    };
    let view = GetView {
        pool: pool.to_string(),
        mod_revision: stored.mod_revision,
        deleted: stored.value.deleted,
        config: ConfigDocument::from_config(&stored.value),
    };
    output::emit(output, &view)
}

/// What `pmctl config delete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteResult {
    /// The tombstone was written.
    Deleting,
    /// The pool was being deleted already.
    AlreadyDeleting,
}

/// What `pmctl config delete` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteView {
    /// The pool.
    pub pool: String,
    /// What happened.
    pub result: DeleteResult,
    /// The config key's mod_revision now.
    pub mod_revision: i64,
}

impl Render for DeleteView {
    fn table(&self) -> String {
        match self.result {
            DeleteResult::Deleting => format!(
                "pool {}: deleted; the scheduler scales it to 0, then removes its keys\n",
                self.pool
            ),
            DeleteResult::AlreadyDeleting => {
                format!("pool {}: already being deleted\n", self.pool)
            }
        }
    }
}

/// Reads the pool's config, lets `change` edit it (or refuse), and writes it with
/// compare-and-swap, reading again after a conflict. Returns the config as it was before,
/// the key's mod_revision now, and whether anything was written (an edit that changes
/// nothing writes nothing).
pub(crate) async fn read_modify_write(
    store: &Store,
    pool: &str,
    change: impl Fn(&mut PoolConfig) -> Result<()>,
) -> Result<(PoolConfig, i64, bool)> {
    let mut last = None;
    for _ in 0..RMW_ATTEMPTS {
        let Some(stored) = current(store, pool).await? else {
            return Err(Error::NoSuchPool {
                pool: pool.to_string(),
            });
        };
        let mut config = stored.value.clone();
        change(&mut config)?;
        if config == stored.value {
            return Ok((stored.value, stored.mod_revision, false));
        }
        match write(store, pool, &config, stored.mod_revision).await {
            Ok(revision) => return Ok((stored.value, revision, true)),
            Err(e @ Error::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last
        .unwrap_or_else(|| Error::Refused(format!("pool {pool:?}: could not write its config"))))
}

/// `pmctl config delete POOL`: writes the tombstone (`deleted`, target 0).
pub async fn delete(store: &Store, pool: &str, output: OutputFormat) -> Result<()> {
    let (_, mod_revision, written) = read_modify_write(store, pool, |config| {
        config.deleted = true;
        config.target_vm_count = 0;
        Ok(())
    })
    .await?;
    if written {
        let message = "pool deleted by pmctl: scaling to 0, then its keys are removed".into();
        record(store, pool, "pool-deleting", Severity::Info, "", message).await;
    }
    let view = DeleteView {
        pool: pool.to_string(),
        result: if written {
            DeleteResult::Deleting
        } else {
            DeleteResult::AlreadyDeleting
        },
        mod_revision,
    };
    output::emit(output, &view)
}

/// What `pmctl scale` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScaleView {
    /// The pool.
    pub pool: String,
    /// targetVMCount before.
    pub previous: i64,
    /// targetVMCount now.
    pub target: i64,
    /// Whether the config was written (false: it already had this target).
    pub changed: bool,
    /// The config key's mod_revision now.
    pub mod_revision: i64,
}

impl Render for ScaleView {
    fn table(&self) -> String {
        if self.changed {
            format!(
                "pool {}: targetVMCount {} -> {}\n",
                self.pool, self.previous, self.target
            )
        } else {
            format!(
                "pool {}: targetVMCount is {} already\n",
                self.pool, self.target
            )
        }
    }
}

/// `pmctl scale POOL N`.
pub async fn scale(store: &Store, pool: &str, target: i64, output: OutputFormat) -> Result<()> {
    let (before, mod_revision, changed) = read_modify_write(store, pool, |config| {
        if config.deleted {
            return Err(Error::Refused(format!(
                "pool {pool:?} is being deleted; re-create it with `pmctl config set {pool} -f FILE`"
            )));
        }
        let total = target.saturating_add(i64::from(config.spares));
        if total > MAX_TARGET_VM_COUNT {
            return Err(Error::Refused(format!(
                "targetVMCount {target} + spares {} is {total}, more than {MAX_TARGET_VM_COUNT}",
                config.spares
            )));
        }
        config.target_vm_count = target;
        Ok(())
    })
    .await?;
    if changed {
        let message = format!(
            "scaled by pmctl: targetVMCount {} -> {target}",
            before.target_vm_count
        );
        record(store, pool, "scaled", Severity::Info, "", message).await;
    }
    let view = ScaleView {
        pool: pool.to_string(),
        previous: before.target_vm_count,
        target,
        changed,
        mod_revision,
    };
    output::emit(output, &view)
}
