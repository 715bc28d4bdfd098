//! Start-up and shutdown: connect storage, pick the channel layer, bind, serve, and on
//! shutdown close every socket with "reconnect elsewhere" before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_extra::extract::cookie::Key;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::presence::LocalPresence;
use crate::chat::rate::{RateConfig, RateLimiter};
use crate::config::Config;
use crate::hub::{Hub, Limits};
use crate::layer::LocalLayer;
use crate::store::Store;
use crate::web::{self, AppState};

/// How long shutdown waits for sockets to say goodbye.
const SOCKET_DRAIN: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    state: AppState,
    node_id: String,
}

impl Application {
    /// Connects, migrates and binds; the port is known (and can be read) before serving.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        if config.redis_url.is_some() {
            anyhow::bail!(
                "REDIS_URL is set, but this build has only the in-process channel layer; unset it to run one node"
            );
        }
        let store = Store::connect(&config.database_url)
            .await
            .with_context(|| format!("opening the database at {}", redact(&config.database_url)))?;
        let secret = match config.secret {
            Some(secret) => secret,
            None => store.shared_secret().await?,
        };
        if secret.len() < 32 {
            anyhow::bail!("WIRECHAT_SECRET must be at least 32 characters long");
        }
        let cookie_key = Key::derive_from(secret.as_bytes());
        let hub = Arc::new(Hub {
            store,
            layer: Arc::new(LocalLayer::default()),
            presence: Arc::new(LocalPresence::default()),
            limits: Limits {
                max_message_chars: config.max_message_chars,
                outbound_queue: config.outbound_queue.max(1),
                ..Limits::default()
            },
            rate: RateLimiter::new(RateConfig {
                per_second: config.rate_per_second,
                burst: config.rate_burst.max(1.0),
            }),
            shutdown: CancellationToken::new(),
        });
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("listening on {}", config.addr))?;
        let node_id = config
            .node_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
        Ok(Application {
            listener,
            state: AppState {
                hub,
                cookie_key,
                session_ttl_ms: config.session_hours.saturating_mul(3_600_000),
                secure_cookies: config.secure_cookies,
                sockets: TaskTracker::new(),
            },
            node_id,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Cancelling this token shuts the node down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.hub.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let shutdown = self.state.hub.shutdown.clone();
        let sockets = self.state.sockets.clone();
        let hub = self.state.hub.clone();
        tracing::info!(node = %self.node_id, %addr, database = ?hub.store.dialect(), "wirechat listening on http://{addr}");
        axum::serve(self.listener, web::router(self.state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await?;
        // Upgraded sockets outlive the HTTP server; each one saw the same token and is
        // closing with 1012 so its browser reconnects elsewhere.
        sockets.close();
        if tokio::time::timeout(SOCKET_DRAIN, sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!(open = sockets.len(), "sockets still open at shutdown");
        }
        hub.store.close().await;
        tracing::info!(node = %self.node_id, "stopped");
        Ok(())
    }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
