//! pmctl: parse the command line, log warnings to stderr, run, map the outcome to an exit
//! code (0 ok, 1 error, 2 usage).

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let cli: pmctl::Cli =
        pm_daemon::parse_args(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let code = match pmctl::run(cli).await {
        Ok(()) => pmctl::EXIT_OK,
        Err(e) if e.is_broken_pipe() => pmctl::EXIT_OK,
        Err(e) => {
            eprintln!("pmctl: {}", e.report());
            e.exit_code()
        }
    };
    std::process::exit(code);
}
