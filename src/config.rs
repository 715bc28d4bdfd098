//! Command line and environment: every setting is a flag with an environment fallback.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "wirechat",
    version,
    about = "Real-time chat rendered on the server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the chat server (the default).
    Serve,
    /// Fill the database with generated users, like the tutorial's Faker script.
    SeedUsers {
        /// How many users to create.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// The password every generated user gets.
        #[arg(long, default_value = "password")]
        password: String,
    },
}

#[derive(Debug, Clone, Parser)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(
        long,
        env = "WIRECHAT_ADDR",
        default_value = "127.0.0.1:8000",
        global = true
    )]
    pub addr: SocketAddr,

    /// Address for `/metrics` alone (port 0 picks a free port). When set, `/metrics` is
    /// served only there, not on `--addr`: keep it on the operators' network.
    #[arg(long, env = "WIRECHAT_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<SocketAddr>,

    /// `sqlite:<file>` (embedded, the default) or `postgres://…`.
    // A URL may carry a password: help shows the variable's name, never its value.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://wirechat.db",
        global = true
    )]
    pub database_url: String,

    /// Most database connections this node holds (default: 16 on PostgreSQL, 8 on
    /// SQLite). Every node holds up to this many of PostgreSQL's `max_connections`.
    #[arg(long, env = "WIRECHAT_DB_POOL_SIZE", global = true)]
    pub db_pool_size: Option<u32>,

    /// Redis for running several nodes as one chat; unset, this node works alone.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, global = true)]
    pub redis_url: Option<String>,

    /// Instead of REDIS_URL, a Redis Cluster (Redis 7 or later): some of its nodes,
    /// `host:port` or URLs, comma-separated. Rooms' events are sharded over its masters.
    #[arg(
        long,
        env = "WIRECHAT_REDIS_CLUSTER",
        hide_env_values = true,
        global = true
    )]
    pub redis_cluster: Option<String>,

    /// Instead of REDIS_URL, Redis Sentinel: some of the sentinels, `host:port` or URLs,
    /// comma-separated. Every connection goes to the master they name, so a failover they
    /// make moves the chat to the new master. Needs WIRECHAT_REDIS_SENTINEL_MASTER.
    #[arg(
        long,
        env = "WIRECHAT_REDIS_SENTINEL",
        hide_env_values = true,
        global = true
    )]
    pub redis_sentinel: Option<String>,

    /// With WIRECHAT_REDIS_SENTINEL: the master's name among the sentinels (`mymaster`),
    /// or a URL whose host is that name and which holds the master's password, database
    /// and scheme (`rediss://:secret@mymaster/0`).
    #[arg(
        long,
        env = "WIRECHAT_REDIS_SENTINEL_MASTER",
        hide_env_values = true,
        global = true
    )]
    pub redis_sentinel_master: Option<String>,

    /// With a `rediss://` Redis URL: a PEM file of the certificate authorities to trust for
    /// Redis's certificate, instead of the system's (a private CA, a self-signed server).
    #[arg(long, env = "WIRECHAT_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix of every Redis key and channel this chat uses, so several chats (or test
    /// runs) can share one Redis.
    #[arg(
        long,
        env = "WIRECHAT_REDIS_PREFIX",
        default_value = "wirechat:",
        global = true
    )]
    pub redis_prefix: String,

    /// With Redis: how long a socket's presence outlives its node's last heartbeat, in
    /// milliseconds. A node that dies leaves its users shown as online this long.
    #[arg(
        long,
        env = "WIRECHAT_PRESENCE_TTL_MS",
        default_value_t = 20_000,
        global = true
    )]
    pub presence_ttl_ms: u64,

    /// With Redis: how often a node renews its presence and removes the users of nodes
    /// that stopped renewing theirs, in milliseconds. Must be well under the TTL.
    #[arg(
        long,
        env = "WIRECHAT_PRESENCE_HEARTBEAT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub presence_heartbeat_ms: u64,

    /// How log lines are written: `text` for people (coloured only on a terminal, and
    /// never with `NO_COLOR` set) or `json`, one object per line, for log collectors.
    #[arg(
        long,
        env = "WIRECHAT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,

    /// How long the node keeps serving after it is told to stop (SIGTERM, Ctrl-C), in
    /// milliseconds, with `/readyz` answering 503 meanwhile so that load balancers send
    /// new clients elsewhere; then it closes its sockets (code 1012: reconnect) and exits.
    /// A second signal ends the wait at once.
    #[arg(
        long,
        env = "WIRECHAT_DRAIN_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub drain_ms: u64,

    /// This node's name in logs and metrics (default: generated).
    #[arg(long, env = "WIRECHAT_NODE_ID", global = true)]
    pub node_id: Option<String>,

    /// Key for signing session cookies, at least 32 characters (default: generated once
    /// and kept in the database, so every node on that database agrees).
    #[arg(long, env = "WIRECHAT_SECRET", hide_env_values = true, global = true)]
    pub secret: Option<String>,

    /// The secret before `WIRECHAT_SECRET`, while rotating it: cookies it signed are still
    /// taken, and given back signed with the new one, so nobody is signed out.
    #[arg(
        long,
        env = "WIRECHAT_PREVIOUS_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub previous_secret: Option<String>,

    /// Longest message, in characters.
    #[arg(
        long,
        env = "WIRECHAT_MAX_MESSAGE_CHARS",
        default_value_t = 4000,
        global = true
    )]
    pub max_message_chars: usize,

    /// Messages per second a user may sustain.
    #[arg(
        long,
        env = "WIRECHAT_RATE_PER_SECOND",
        default_value_t = 20.0,
        global = true
    )]
    pub rate_per_second: f64,

    /// Messages a user may send in one burst.
    #[arg(
        long,
        env = "WIRECHAT_RATE_BURST",
        default_value_t = 40.0,
        global = true
    )]
    pub rate_burst: f64,

    /// Most messages a catch-up or a resume sends; a client further behind is shown the
    /// room afresh (its newest page, with "Load older" for the rest).
    #[arg(
        long,
        env = "WIRECHAT_CATCH_UP_LIMIT",
        default_value_t = 500,
        global = true
    )]
    pub catch_up_limit: i64,

    /// Cost units per second a user may spend on actions other than posting (entering a
    /// room, reading history, catching up, creating and browsing groups, typing), across
    /// all of the user's sockets on a node.
    #[arg(
        long,
        env = "WIRECHAT_ACTION_BUDGET_PER_SECOND",
        default_value_t = 10.0,
        global = true
    )]
    pub action_budget_per_second: f64,

    /// Cost units a user may spend at once (see `--action-budget-per-second`).
    #[arg(
        long,
        env = "WIRECHAT_ACTION_BUDGET_BURST",
        default_value_t = 40.0,
        global = true
    )]
    pub action_budget_burst: f64,

    /// Frames queued for one socket before it counts as too slow and is closed (code 1013).
    #[arg(
        long,
        env = "WIRECHAT_OUTBOUND_QUEUE",
        default_value_t = 1024,
        global = true
    )]
    pub outbound_queue: usize,

    /// While the node is busy, a socket waits this many milliseconds after a write before
    /// the next one and sends what arrived meanwhile in one write: far fewer system calls,
    /// for at most this much delay. Sockets that wrote longer ago, and every socket of a
    /// node that is not busy, write at once. 0: never wait.
    #[arg(
        long,
        env = "WIRECHAT_WRITE_GAP_MS",
        default_value_t = 5,
        global = true
    )]
    pub write_gap_ms: u64,

    /// Frames queued per second above which the node counts as busy and paces its writes
    /// (see `--write-gap-ms`); 0: always.
    #[arg(
        long,
        env = "WIRECHAT_BUSY_FRAMES_PER_SECOND",
        default_value_t = crate::layer::WritePacing::DEFAULT_BUSY_RATE,
        global = true
    )]
    pub busy_frames_per_second: u64,

    /// How long a login lasts, in hours.
    #[arg(
        long,
        env = "WIRECHAT_SESSION_HOURS",
        default_value_t = 720,
        global = true
    )]
    pub session_hours: i64,

    /// Days a guest account is kept at least; after that, once it has no live session
    /// (so nobody can sign in as it again) and if it never posted, it is purged.
    #[arg(
        long,
        env = "WIRECHAT_GUEST_RETENTION_DAYS",
        default_value_t = 7,
        global = true
    )]
    pub guest_retention_days: u64,

    /// Mark the session cookie `Secure` (set this when users reach wirechat over HTTPS).
    #[arg(
        long,
        env = "WIRECHAT_SECURE_COOKIES",
        default_value_t = false,
        global = true
    )]
    pub secure_cookies: bool,

    /// Sign-in attempts (log in, sign up, guest) allowed per minute from one address; `off`
    /// turns off every sign-in limit (failed log-ins too), for load tests.
    #[arg(
        long,
        env = "WIRECHAT_AUTH_RATE_LIMIT",
        default_value = "20",
        global = true
    )]
    pub auth_rate_limit: AuthRateLimit,

    /// Failed log-ins into one account from one address before each further attempt from
    /// there waits (1 s, doubling with each failure, up to 15 minutes).
    #[arg(
        long,
        env = "WIRECHAT_LOGIN_FAILURES_PER_ADDRESS",
        default_value_t = 5,
        global = true
    )]
    pub login_failures_per_address: i64,

    /// Failed log-ins into one account per hour, from all addresses together, before only
    /// browsers that logged in to it before may try.
    #[arg(
        long,
        env = "WIRECHAT_LOGIN_FAILURES_PER_ACCOUNT",
        default_value_t = 100,
        global = true
    )]
    pub login_failures_per_account: i64,

    /// Take the client address from the `X-Forwarded-For` header set by the proxy in front
    /// (Caddy); only when every request comes through it.
    #[arg(
        long,
        env = "WIRECHAT_TRUST_PROXY",
        default_value_t = false,
        global = true
    )]
    pub trust_proxy: bool,

    /// With `--trust-proxy`: further proxies in front of that one (a CDN, a load
    /// balancer), as addresses or ranges (`203.0.113.0/24`), comma-separated. Their
    /// entries in `X-Forwarded-For` are skipped on the way to the client's.
    #[arg(
        long,
        env = "WIRECHAT_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<Net>,

    /// Seconds a client has to send a request's headers, from when its connection opens or
    /// its previous response was sent; then the connection is closed.
    #[arg(
        long,
        env = "WIRECHAT_HEADER_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub header_timeout_secs: u64,

    /// Connections one address may hold open at once (sockets included); 0: no cap. Not
    /// applied with `--trust-proxy`, where every connection comes from the proxy.
    #[arg(
        long,
        env = "WIRECHAT_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256,
        global = true
    )]
    pub max_connections_per_address: usize,

    /// Open chat sockets one user may hold on one node.
    #[arg(
        long,
        env = "WIRECHAT_MAX_SOCKETS_PER_USER",
        default_value_t = 20,
        global = true
    )]
    pub max_sockets_per_user: usize,

    /// Groups one user may create an hour, and groups created from one address an hour
    /// (on each node).
    #[arg(
        long,
        env = "WIRECHAT_NEW_GROUPS_PER_HOUR",
        default_value_t = 10,
        global = true
    )]
    pub new_groups_per_hour: i64,

    /// Conversations one user may start an hour.
    #[arg(
        long,
        env = "WIRECHAT_NEW_CONVERSATIONS_PER_HOUR",
        default_value_t = 30,
        global = true
    )]
    pub new_conversations_per_hour: i64,

    /// Rooms one user may be in by their own choice: the groups they joined and the
    /// conversations they started (not those others started with them).
    #[arg(
        long,
        env = "WIRECHAT_MAX_ROOMS_PER_USER",
        default_value_t = 500,
        global = true
    )]
    pub max_rooms_per_user: i64,
}

impl Config {
    /// These settings as they may be shown in logs: URLs without their passwords, and the
    /// cookie secret only as being set.
    pub fn redacted(&self) -> Config {
        Config {
            database_url: redact_url(&self.database_url),
            redis_url: self.redis_url.as_deref().map(redact_url),
            redis_cluster: self.redis_cluster.as_deref().map(|nodes| {
                nodes
                    .split(',')
                    .map(redact_url)
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            redis_sentinel: self.redis_sentinel.as_deref().map(|nodes| {
                nodes
                    .split(',')
                    .map(redact_url)
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            redis_sentinel_master: self.redis_sentinel_master.as_deref().map(redact_url),
            secret: self.secret.as_ref().map(|_| "***".to_owned()),
            previous_secret: self.previous_secret.as_ref().map(|_| "***".to_owned()),
            ..self.clone()
        }
    }
}

/// `url` with every password in it replaced by `***`: the one in its user information
/// (`postgres://u:p@h/db`, `redis://:p@h`) and a `password`, `sslpassword` or `pass`
/// (`redis+unix://`) parameter.
/// Everything before the last `@` counts as user information, so a password with an
/// unescaped `@` or `/` in it is hidden whole, if with some of the host.
pub fn redact_url(url: &str) -> String {
    let mut shown = match (url.find("://"), url.rfind('@')) {
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
    };
    if let Some(query) = shown.find('?') {
        let params: Vec<String> = shown[query + 1..]
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if ["password", "sslpassword", "pass"].contains(&key) => {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        shown = format!("{}?{}", &shown[..query], params.join("&"));
    }
    shown
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// `off`, or a number of attempts per minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AuthRateLimit {
    Off,
    PerMinute(u32),
}

impl std::str::FromStr for AuthRateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "0" => Ok(AuthRateLimit::Off),
            n => n
                .parse::<u32>()
                .map(AuthRateLimit::PerMinute)
                .map_err(|_| format!("expected `off` or attempts per minute, got {n:?}")),
        }
    }
}

/// An address, or a range of them (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Net, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a range like 10.0.0.0/8"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Net { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_match() {
        let net: Net = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let all: Net = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("nonsense".parse::<Net>().is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        for (url, shown) in [
            ("postgres://u:p@h/db", "postgres://u:***@h/db"),
            ("redis://:p@h", "redis://:***@h"),
            ("rediss://user:p@h:6380/0", "rediss://user:***@h:6380/0"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=p&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "redis+unix:///tmp/r.sock?pass=p&db=1",
                "redis+unix:///tmp/r.sock?pass=***&db=1",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("sqlite://x.db?mode=rwc", "sqlite://x.db?mode=rwc"),
            ("wirechat.db", "wirechat.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn settings_shown_carry_no_secret() {
        let config = Config::parse_from([
            "wirechat",
            "--database-url",
            "postgres://u:pg-pass@h/db",
            "--redis-url",
            "redis://:redis-pass@h",
            "--secret",
            "cookie-pass-cookie-pass-cookie-pass",
        ]);
        let shown = format!("{:?}", config.redacted());
        for secret in ["pg-pass", "redis-pass", "cookie-pass"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
    }
}
