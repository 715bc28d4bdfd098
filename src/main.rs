use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use wirechat::app::Application;
use wirechat::config::{Cli, Command, LogFormat};
use wirechat::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            raise_file_limit();
            keep_large_allocations_out_of_the_heap();
            let app = Application::build(cli.config).await?;
            let drain = app.shutdown_token();
            let stop = app.stop_token();
            let mut signals = StopSignals::listen();
            tokio::spawn(async move {
                signals.next().await;
                drain.cancel();
                // Whoever asks twice (a person at Ctrl-C, a supervisor out of patience)
                // does not want to wait for the drain.
                signals.next().await;
                stop.cancel();
            });
            app.run_until_stopped().await
        }
        Command::SeedUsers { count, password } => {
            let store =
                Store::connect_with(&cli.config.database_url, cli.config.db_pool_size).await?;
            let created = wirechat::accounts::seed_users(&store, count, &password).await;
            // Closed either way: on SQLite that folds what was written into the file.
            store.close().await;
            println!("created {} users with password {password:?}", created?);
            Ok(())
        }
    }
}

/// Logs go to standard output, as text or one JSON object per line. Colour codes only
/// help a person at a terminal: in a file or `docker logs` they are noise, and `NO_COLOR`
/// (any value but empty) turns them off everywhere.
fn init_logs(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("wirechat=info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            logs.with_ansi(std::io::stdout().is_terminal() && !no_color)
                .init()
        }
    }
}

/// Every socket is a file descriptor: lift the soft limit to the hard one.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::info!(
                from = before,
                to = limit.rlim_max,
                "raised the open-file limit"
            );
        }
    }
}

/// Argon2 allocates ~19 MiB per hash. glibc raises its mmap threshold after such a block
/// is freed, so later ones land in the heap and stay resident for good; a fixed threshold
/// keeps every large block in its own mapping, returned to the system when freed.
fn keep_large_allocations_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread starts
    // allocating large blocks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// SIGTERM and Ctrl-C, each time one arrives. Listening starts here, at start-up, so a
/// second signal sent while the first is being handled is not missed.
struct StopSignals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn listen() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(interrupt)) => Some((term, interrupt)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                    None
                }
            };
            StopSignals { unix }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, interrupt)) = &mut self.unix {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        tokio::signal::ctrl_c().await.unwrap_or(());
    }
}
