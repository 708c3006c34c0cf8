use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: pm_agent::AgentConfig =
        pm_daemon::parse_args(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    pm_daemon::init_logging(config.daemon.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(pm_daemon::cancel_on_signal(shutdown.clone()));
    pm_agent::run(config, shutdown).await?;
    Ok(())
}
