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
            let shutdown = app.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down: closing sockets so clients reconnect elsewhere");
                shutdown.cancel();
            });
            app.run_until_stopped().await
        }
        Command::SeedUsers { count, password } => {
            let store =
                Store::connect_with(&cli.config.database_url, cli.config.db_pool_size).await?;
            let created = wirechat::accounts::seed_users(&store, count, &password).await?;
            println!("created {created} users with password {password:?}");
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

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
