//! pmctl, pm's operator CLI, as a library: every verb of DESIGN.md's "CLI contract", each
//! printing a table (`-o table`) or a stable JSON shape (`-o json`). It talks to etcd
//! only (but for the prevmtable import, which reads GCE), so it works while no scheduler
//! leads.
//!
//! - [`cli`]: the command line. [`run`] dispatches it.
//! - [`config_file`], [`yaml`], [`unique_keys`]: pool config files (prevmtable's rjson, Hjson, JSON,
//!   YAML) parsed; what they mean, their checks and their written-back form are
//!   [`pm_pool`]'s.
//! - [`pool_config`], [`zone`], [`rollout`]: the writes, all compare-and-swap or lease-bound.
//! - [`prevmtable`]: a prevmtable config and its hook scripts imported from GCE metadata.
//! - [`snapshot`], [`status`], [`instances`], [`events`], [`agents`]: the reads.
//! - [`output`]: tables, JSON, times.

pub mod agents;
pub mod cli;
pub mod config_diff;
pub mod config_file;
pub mod connect;
pub mod drain;
pub mod error;
pub mod events;
pub mod instances;
pub mod output;
pub mod pool_config;
pub mod prevmtable;
pub mod rollout;
pub mod shed;
pub mod snapshot;
pub mod status;
pub mod unique_keys;
pub mod workflows;
pub mod yaml;
pub mod zone;

pub use cli::{Cli, Command, ConfigCommand, RolloutCommand, ZoneCommand};
pub use error::{Error, Result, EXIT_ERROR, EXIT_OK, EXIT_USAGE};

/// Runs one pmctl command to its end (for `--watch` and `--follow`: until Ctrl-C).
pub async fn run(cli: Cli) -> Result<()> {
    let format = cli.output;
    let etcd = &cli.etcd;
    match cli.command {
        Command::Config(ConfigCommand::Set {
            pool,
            file,
            dry_run,
            if_revision,
        }) => {
            if dry_run {
                // Checking a file needs no etcd.
                return pool_config::dry_run(&pool, &file.path, file.format, format);
            }
            // A bad file fails before any connection is tried.
            let config = pool_config::load(&pool, &file.path, file.format)?;
            let store = connect::connect(etcd).await?;
            pool_config::set(&store, &pool, config, if_revision, format).await
        }
        Command::Config(ConfigCommand::Diff { pool, file }) => {
            let config = pool_config::load(&pool, &file.path, file.format)?;
            let store = connect::connect(etcd).await?;
            config_diff::show(&store, &pool, &config, format).await
        }
        Command::Config(ConfigCommand::ImportPrevmtable { args, gce }) => {
            prevmtable::import(etcd, &gce, &args, format).await
        }
        Command::Config(ConfigCommand::Get { pool }) => {
            pool_config::get(&connect::connect(etcd).await?, &pool, format).await
        }
        Command::Config(ConfigCommand::Delete { pool }) => {
            pool_config::delete(&connect::connect(etcd).await?, &pool, format).await
        }
        Command::Scale { pool, count } => {
            pool_config::scale(&connect::connect(etcd).await?, &pool, count, format).await
        }
        Command::Status { pool, watch } => {
            let store = connect::connect(etcd).await?;
            if watch {
                status::watch(&store, pool.as_deref(), format).await
            } else {
                status::show(&store, pool.as_deref(), format).await
            }
        }
        Command::Rollout(command) => {
            let store = connect::connect(etcd).await?;
            match command {
                RolloutCommand::Status { pool } => rollout::status(&store, &pool, format).await,
                RolloutCommand::Pause { pool } => rollout::pause(&store, &pool, format).await,
                RolloutCommand::Resume { pool } => rollout::resume(&store, &pool, format).await,
                RolloutCommand::Undo { pool } => rollout::undo(&store, &pool, format).await,
            }
        }
        Command::Instances { pool, zone } => {
            let store = connect::connect(etcd).await?;
            instances::show(&store, &pool, zone.as_deref(), format).await
        }
        Command::Zone(ZoneCommand::Exhaust {
            pool,
            zone,
            duration,
        }) => {
            let store = connect::connect(etcd).await?;
            zone::exhaust(&store, &pool, &zone, duration, format).await
        }
        Command::Zone(ZoneCommand::Clear { pool, zone }) => {
            zone::clear(&connect::connect(etcd).await?, &pool, &zone, format).await
        }
        Command::Events {
            pool,
            follow,
            limit,
        } => {
            let store = connect::connect(etcd).await?;
            events::show(&store, pool.as_deref(), limit, follow, format).await
        }
        Command::Drain {
            pool,
            names,
            hard,
            reason,
        } => {
            let store = connect::connect(etcd).await?;
            drain::drain(&store, &pool, &names, hard, &reason, format).await
        }
        Command::Shed {
            pool,
            count,
            zone,
            selector,
            hard,
            reason,
            min_interval,
            force,
        } => {
            let store = connect::connect(etcd).await?;
            let args = shed::ShedArgs {
                pool,
                count: usize::from(count),
                zone,
                selector,
                hard,
                reason,
                min_interval,
                force,
            };
            shed::shed(&store, &args, format).await
        }
        Command::Workflows { pool, id } => {
            let store = connect::connect(etcd).await?;
            workflows::show(&store, &pool, id.as_deref(), format).await
        }
        Command::Agents => agents::show_agents(&connect::connect(etcd).await?, format).await,
        Command::Leader => agents::show_leader(&connect::connect(etcd).await?, format).await,
    }
}
