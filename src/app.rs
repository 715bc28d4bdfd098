//! Start-up and shutdown: connect storage, pick the channel layer, bind, serve, and on
//! shutdown drain (not ready, still serving) for a while, then close every socket with
//! "reconnect elsewhere" before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_extra::extract::cookie::Key;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::rate::{RateConfig, RateLimiter};
use crate::config::{Config, redact_url};
use crate::hub::{Hub, Limits};
use crate::layer::{ChannelLayer, LocalLayer, RedisLayer, WritePacing, redis};
use crate::presence::{LocalPresence, Presence, RedisPresence};
use crate::store::Store;
use crate::web::listener::Admission;
use crate::web::{self, AccessLimits, AppState, LoginGuard, Proxies};

/// How long shutdown waits for sockets to say goodbye once they are told to close.
const SOCKETS_CLOSING: Duration = Duration::from_secs(5);
/// How long start-up waits for Redis before serving without it.
const REDIS_START_WAIT: Duration = Duration::from_secs(3);

pub struct Application {
    listener: TcpListener,
    /// `/metrics` on a listener of its own, when asked for.
    metrics_listener: Option<TcpListener>,
    admission: Admission,
    guest_retention: Duration,
    state: AppState,
    node_id: String,
    presence_every: Duration,
    /// The effective settings, secrets redacted, for the start line.
    settings: String,
    /// How long the node keeps serving, not ready, before it stops.
    drain: Duration,
}

/// Connections the kernel may hold for the server before it accepts them (it caps this at
/// `net.core.somaxconn`). The usual 128 overflows when thousands of clients come back at
/// once after a restart or a network cut: the kernel then drops their handshakes, and
/// each one retries a second later, then three, then seven: a storm of reconnects turned
/// into seconds of waiting.
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds `addr` with room for a reconnect storm's handshakes (see `ACCEPT_BACKLOG`).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As the standard library's bind does on Unix: a restarted server can bind at once,
    // while connections of its previous run linger in TIME_WAIT. (On Windows the same
    // option would let another process take the port.)
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

impl Application {
    /// Connects, migrates and binds; the port is known (and can be read) before serving.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        install_tls_provider();
        let settings = format!("{:?}", config.redacted());
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
        let presence_every = Duration::from_millis(config.presence_heartbeat_ms.max(1));
        if config.presence_heartbeat_ms >= config.presence_ttl_ms {
            anyhow::bail!(
                "WIRECHAT_PRESENCE_HEARTBEAT_MS must be shorter than WIRECHAT_PRESENCE_TTL_MS"
            );
        }
        let shutdown = CancellationToken::new();
        // Stopping drains too (readiness fails), but draining does not stop, yet.
        let draining = shutdown.child_token();
        // An empty setting is an unset one: a compose override turns one off that way.
        let mut config = config;
        for setting in [
            &mut config.redis_url,
            &mut config.redis_cluster,
            &mut config.redis_sentinel,
            &mut config.redis_sentinel_master,
        ] {
            if setting
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                *setting = None;
            }
        }
        let redis_settings = [
            config.redis_url.as_ref().map(|_| "REDIS_URL"),
            config
                .redis_cluster
                .as_ref()
                .map(|_| "WIRECHAT_REDIS_CLUSTER"),
            config
                .redis_sentinel
                .as_ref()
                .map(|_| "WIRECHAT_REDIS_SENTINEL"),
        ];
        let redis_settings: Vec<&str> = redis_settings.into_iter().flatten().collect();
        if redis_settings.len() > 1 {
            let how_many = if redis_settings.len() == 2 {
                "both"
            } else {
                "all"
            };
            anyhow::bail!(
                "{} are {how_many} set: set one",
                redis_settings.join(" and ")
            );
        }
        if config.redis_sentinel_master.is_some() && config.redis_sentinel.is_none() {
            anyhow::bail!(
                "WIRECHAT_REDIS_SENTINEL_MASTER is set without WIRECHAT_REDIS_SENTINEL: name the sentinels too"
            );
        }
        let shown = config.redacted();
        let ca_file = config.redis_ca_file.as_deref();
        let (layer, presence) = if let Some(url) = &config.redis_url {
            let shown = shown.redis_url.unwrap_or_default();
            let servers = redis::Servers::single(url, ca_file)
                .with_context(|| format!("Redis URL {shown}"))?;
            connect_redis(&config, servers, &shown, &shutdown).await?
        } else if let Some(nodes) = &config.redis_cluster {
            let shown = shown.redis_cluster.unwrap_or_default();
            let servers = redis::Servers::cluster(nodes, ca_file)
                .with_context(|| format!("Redis Cluster {shown}"))?;
            connect_redis(&config, servers, &shown, &shutdown).await?
        } else if let Some(nodes) = &config.redis_sentinel {
            let Some(master) = &config.redis_sentinel_master else {
                anyhow::bail!(
                    "WIRECHAT_REDIS_SENTINEL needs WIRECHAT_REDIS_SENTINEL_MASTER: the master's name among the sentinels"
                );
            };
            let shown = format!(
                "Sentinel {} (master {})",
                shown.redis_sentinel.unwrap_or_default(),
                shown.redis_sentinel_master.unwrap_or_default()
            );
            let servers = redis::Servers::sentinel(nodes, master, ca_file)
                .with_context(|| format!("Redis {shown}"))?;
            connect_redis(&config, servers, &shown, &shutdown).await?
        } else {
            let layer: Arc<dyn ChannelLayer> = Arc::new(LocalLayer::default());
            let presence: Arc<dyn Presence> = Arc::new(LocalPresence::default());
            (layer, presence)
        };
        let store = Store::connect_with(&config.database_url, config.db_pool_size)
            .await
            .with_context(|| {
                format!(
                    "opening the database at {}",
                    redact_url(&config.database_url)
                )
            })?;
        let secret = match config.secret {
            Some(secret) => secret,
            None => store.shared_secret().await?,
        };
        let cookie_key = signing_key("WIRECHAT_SECRET", &secret)?;
        let previous_cookie_key = config
            .previous_secret
            .as_deref()
            .map(|previous| signing_key("WIRECHAT_PREVIOUS_SECRET", previous))
            .transpose()?;
        let hub = Arc::new(Hub {
            store,
            layer,
            presence,
            limits: Limits {
                max_message_chars: config.max_message_chars,
                max_rooms_per_user: config.max_rooms_per_user,
                catch_up_limit: config.catch_up_limit.max(1),
                new_groups_per_hour: config.new_groups_per_hour,
                new_conversations_per_hour: config.new_conversations_per_hour,
                outbound_queue: config.outbound_queue.max(1),
                ..Limits::default()
            },
            rate: RateLimiter::new(RateConfig {
                per_second: config.rate_per_second,
                burst: config.rate_burst.max(1.0),
            }),
            budget: RateLimiter::new(RateConfig {
                per_second: config.action_budget_per_second,
                burst: config.action_budget_burst.max(1.0),
            }),
            new_groups_by_address: RateLimiter::new(RateConfig {
                per_second: config.new_groups_per_hour as f64 / 3600.0,
                burst: config.new_groups_per_hour.max(1) as f64,
            }),
            shutdown,
            roster: Default::default(),
            roster_changed: Default::default(),
            room_changes: Default::default(),
            pacing: WritePacing::new(
                Duration::from_millis(config.write_gap_ms),
                config.busy_frames_per_second,
            ),
            list_frames: Default::default(),
            pages: Default::default(),
        });
        let listener =
            listen(config.addr).with_context(|| format!("listening on {}", config.addr))?;
        let metrics_listener = match config.metrics_addr {
            None => None,
            Some(addr) => {
                Some(listen(addr).with_context(|| format!("listening for metrics on {addr}"))?)
            }
        };
        let admission = Admission {
            header_timeout: Duration::from_secs(config.header_timeout_secs.max(1)),
            // Behind a proxy every connection comes from it: the proxy must cap them.
            per_address: (config.max_connections_per_address > 0 && !config.trust_proxy)
                .then_some(config.max_connections_per_address),
        };
        Ok(Application {
            listener,
            metrics_listener,
            admission,
            guest_retention: Duration::from_secs(
                config.guest_retention_days.saturating_mul(86_400),
            ),
            state: AppState {
                hub,
                cookie_key,
                previous_cookie_key,
                session_ttl_ms: config.session_hours.saturating_mul(3_600_000),
                secure_cookies: config.secure_cookies,
                sockets: TaskTracker::new(),
                draining,
                access: Arc::new(AccessLimits::new(
                    config.auth_rate_limit,
                    LoginGuard {
                        free_per_address: config.login_failures_per_address.max(1),
                        per_account: config.login_failures_per_account.max(1),
                    },
                    Proxies::new(config.trust_proxy, config.trusted_proxies.clone()),
                    config.max_sockets_per_user,
                )),
                counters: Default::default(),
            },
            node_id,
            presence_every,
            settings,
            drain: Duration::from_millis(config.drain_ms),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served when it has a listener of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Cancelling this token shuts the node down gracefully: `/readyz` answers 503 at
    /// once, everything else is served for the drain period, then every socket is closed
    /// with 1012 and the node stops.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.draining.clone()
    }

    /// Cancelling this token stops the node without waiting out (the rest of) the drain.
    pub fn stop_token(&self) -> CancellationToken {
        self.state.hub.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let shutdown = self.state.hub.shutdown.clone();
        let sockets = self.state.sockets.clone();
        let hub = self.state.hub.clone();
        tokio::spawn(crate::hub::maintain_presence(
            hub.clone(),
            self.presence_every,
        ));
        tokio::spawn(crate::hub::maintain_roster(hub.clone()));
        tokio::spawn(crate::store::purge_now_and_then(
            hub.store.clone(),
            self.guest_retention,
            hub.shutdown.clone(),
        ));
        tokio::spawn(crate::hub::announce_room_members(hub.clone()));
        tokio::spawn({
            let hub = hub.clone();
            async move {
                let metrics = hub.layer.registry().metrics();
                hub.pacing.watch(metrics, hub.shutdown.clone()).await;
            }
        });
        tokio::spawn(drain_then_stop(
            self.state.draining.clone(),
            self.drain,
            shutdown.clone(),
        ));
        tokio::spawn({
            // Upgraded sockets outlive the HTTP server: each one is told to close with
            // 1012 as soon as shutdown starts, so its browser reconnects elsewhere.
            let hub = hub.clone();
            async move {
                hub.shutdown.cancelled().await;
                hub.layer.registry().stop_all();
            }
        });
        tokio::spawn({
            let hub = hub.clone();
            async move {
                let metrics = hub.layer.registry().metrics();
                crate::memory::release_freed_memory(&hub.pacing, metrics, hub.shutdown.clone())
                    .await;
            }
        });
        let metrics_addr = self.metrics_addr();
        let metrics_apart = self.metrics_listener.is_some();
        if let Some(listener) = self.metrics_listener {
            // Scraped through the drain too, until the node stops.
            tokio::spawn(web::listener::serve(
                listener,
                web::metrics_router(self.state.clone()),
                self.admission,
                self.state.counters.clone(),
                shutdown.clone(),
            ));
        }
        let version = env!("CARGO_PKG_VERSION");
        tracing::info!(
            node = %self.node_id,
            %addr,
            metrics = ?metrics_addr,
            version,
            database = ?hub.store.dialect(),
            settings = %self.settings,
            "wirechat {version} listening on http://{addr}"
        );
        // For whatever started this node and waits for it (a supervisor, a test): one line
        // that says where it listens, in a form a program reads.
        let mut ready = serde_json::json!({ "ready": format!("http://{addr}") });
        if let Some(metrics_addr) = metrics_addr {
            ready["metrics"] = format!("http://{metrics_addr}/metrics").into();
        }
        println!("{ready}");
        let counters = self.state.counters.clone();
        web::listener::serve(
            self.listener,
            web::router(self.state, metrics_apart),
            self.admission,
            counters,
            shutdown.clone(),
        )
        .await;
        // The sockets are closing (told when shutdown started); wait for them a while.
        sockets.close();
        if tokio::time::timeout(SOCKETS_CLOSING, sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!(open = sockets.len(), "sockets still open at shutdown");
        }
        crate::hub::announce_what_waits(&hub).await;
        hub.store.close().await;
        tracing::info!(node = %self.node_id, "stopped");
        Ok(())
    }
}

/// Once `draining` is cancelled, waits `drain` (or until `stop` comes sooner), then stops.
/// Meanwhile readiness fails, so a load balancer that asks sends new clients elsewhere,
/// while this node's sockets and requests are served as before: a client is moved only
/// when its replacement has somewhere to go.
async fn drain_then_stop(draining: CancellationToken, drain: Duration, stop: CancellationToken) {
    draining.cancelled().await;
    if stop.is_cancelled() {
        return;
    }
    tracing::info!(
        drain_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
        "draining: /readyz answers 503 while the node keeps serving (a second signal stops at once)"
    );
    tokio::select! {
        _ = tokio::time::sleep(drain) => {}
        _ = stop.cancelled() => {}
    }
    tracing::info!("shutting down: closing sockets so clients reconnect elsewhere");
    stop.cancel();
}

/// The Redis channel layer and presence, sharing their command connections. The subscriber
/// keeps reconnecting in the background until `stop`, so a node may start while Redis is
/// down and serve its own sockets meanwhile.
async fn connect_redis(
    config: &Config,
    servers: redis::Servers,
    shown: &str,
    stop: &CancellationToken,
) -> anyhow::Result<(Arc<dyn ChannelLayer>, Arc<dyn Presence>)> {
    servers.check_mode().await?;
    let commands = servers
        .commands()
        .with_context(|| format!("Redis {shown}"))?;
    // Unique per process, even when two nodes are given the same WIRECHAT_NODE_ID.
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let layer = RedisLayer::start(
        &servers,
        commands.clone(),
        &config.redis_prefix,
        &instance,
        stop.clone(),
    )
    .with_context(|| format!("Redis {shown}"))?;
    if layer.wait_connected(REDIS_START_WAIT).await {
        tracing::info!(redis = %shown, prefix = %config.redis_prefix, "using the Redis channel layer");
    } else {
        tracing::warn!(redis = %shown, "Redis is not answering yet; serving this node's sockets and retrying");
    }
    // Presence's scripts read and write many keys at once: on a cluster they share one
    // slot, through a hash tag.
    let presence_prefix = if servers.is_cluster() {
        format!("{{{}}}", config.redis_prefix)
    } else {
        config.redis_prefix.clone()
    };
    let presence = RedisPresence::new(
        commands,
        &presence_prefix,
        &instance,
        Duration::from_millis(config.presence_ttl_ms),
    );
    Ok((Arc::new(layer), Arc::new(presence)))
}

/// The key that signs cookies, from the secret setting `name` holds.
fn signing_key(name: &str, secret: &str) -> anyhow::Result<Key> {
    if secret.len() < 32 {
        anyhow::bail!("{name} must be at least 32 characters long");
    }
    Ok(Key::derive_from(secret.as_bytes()))
}

/// TLS to PostgreSQL and Redis runs on rustls with ring (sqlx names ring; the Redis client
/// asks for the process's default provider). ring, not aws-lc-rs: it builds with a C
/// compiler alone. Its provider is deprecated only for lacking post-quantum key exchange,
/// which neither PostgreSQL nor Redis offers. Installed once; a second call finds it there.
#[allow(deprecated)]
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
