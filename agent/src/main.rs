use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: pm_agent::AgentConfig =
        pm_etcd::cli::parse_args(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    pm_etcd::cli::init_logging(config.daemon.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(pm_etcd::cli::cancel_on_signal(shutdown.clone()));
    pm_agent::run(config, shutdown).await?;
    Ok(())
}
