//! Where Redis is, and the connections to it: one server, the master Redis Sentinel names,
//! or every shard of a Redis Cluster.
//!
//! On one server, events go out with PUBLISH and come in over a SUBSCRIBE connection, and
//! commands (presence scripts, PING) take a connection from a pool. With Sentinel, the
//! same commands go to whichever server the sentinels name as master at the time: every
//! connection asks them first, and one connection carries the commands. A failover closes
//! the connections to the old master (it died, or the sentinels closed its clients as they
//! made it a replica), so the layer connects anew, to the new master, and catches up as
//! after any lost connection. On a cluster, each
//! channel lives on the shard that owns its hash slot: events go out with SPUBLISH and come
//! in with SSUBSCRIBE, so a room's traffic crosses one shard and never the whole cluster.
//! The cluster client keeps one multiplexed connection per cluster node (one set for
//! commands, one for subscriptions), follows MOVED redirections, and reports every
//! subscription's messages as RESP3 pushes.
//!
//! A subscriber connection to a cluster counts as lost when any node's connection closes,
//! when a master does not say the cluster is whole (`cluster_state:ok`), or when a
//! subscription changes without being asked (a shard dropped it as its slot moved, or the
//! client moved it to a new connection). The layer then connects anew, which reads the
//! cluster's current topology, subscribes again, and has every socket catch up from the
//! store, as after a lost connection to one server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use deadpool_redis::redis::{
    self, ConnectionInfo, FromRedisValue, IntoConnectionInfo, PushInfo, PushKind, Script, Value,
    aio::{PubSubSink, PubSubStream},
};
use deadpool_redis::{Pool, Runtime};
use futures_util::StreamExt;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, Slot};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, TlsMode, aio::MultiplexedConnection};
use tokio::sync::mpsc;

use crate::layer::PublishError;

/// Longest wait for a connection to be set up, or a command answered, before it counts as
/// failed.
pub const COMMAND_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for one cluster node to accept a connection.
const NODE_CONNECT_WAIT: Duration = Duration::from_secs(1);
/// Attempts a cluster command gets (redirections, a shard reconnecting) before it fails:
/// few, since the layer itself reconnects and catches up after a failure.
const CLUSTER_RETRIES: u32 = 3;
/// Subscriptions sent to a cluster at once, each to its own slot.
const CLUSTER_SUBSCRIBE_CONCURRENCY: usize = 64;

/// Where Redis is.
#[derive(Clone)]
pub enum Servers {
    /// One server (`redis://` or `rediss://`).
    Single(ConnectionInfo),
    /// The master of a group of servers Redis Sentinel watches, found through the
    /// sentinels on every connection.
    Sentinel(Arc<Sentinels>),
    /// A Redis Cluster, reached through any of these nodes; the client learns the rest.
    Cluster {
        nodes: Vec<ConnectionInfo>,
        /// Certificate authorities (PEM) to trust for `rediss://` nodes.
        root_cert: Option<Vec<u8>>,
    },
}

impl Servers {
    /// One server at `url`; with `ca_file`, TLS trusts the authorities in that PEM file
    /// instead of the system's.
    pub fn single(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Servers> {
        let Some(ca_file) = ca_file else {
            return Ok(Servers::Single(url.into_connection_info()?));
        };
        let info = trusting_in(url, read_ca_file(ca_file)?)
            .context("a Redis CA file needs a rediss:// URL")?;
        Ok(Servers::Single(info))
    }

    /// A cluster reached through `nodes` (`host:port` or URLs, comma-separated).
    pub fn cluster(nodes: &str, ca_file: Option<&Path>) -> anyhow::Result<Servers> {
        let nodes = node_list(nodes, "cluster node")?;
        let root_cert = ca_file.map(read_ca_file).transpose()?;
        Ok(Servers::Cluster { nodes, root_cert })
    }

    /// The master named `master` by the sentinels at `nodes` (`host:port` or URLs,
    /// comma-separated; a URL's user and password are the sentinels' own). `master` is the
    /// name, or a URL whose host is the name and whose user, password, database and scheme
    /// (`rediss://` for TLS, trusting `ca_file` if given) are the master's.
    pub fn sentinel(nodes: &str, master: &str, ca_file: Option<&Path>) -> anyhow::Result<Servers> {
        let nodes = node_list(nodes, "sentinel")?;
        // Sentinels that take TLS clients have certificates from the authority of the
        // servers they watch, as a rule: one file serves for both.
        let tls_sentinels = nodes.iter().any(is_tls);
        let (name, login, tls) = if master.contains("://") {
            let info = master
                .into_connection_info()
                .context("WIRECHAT_REDIS_SENTINEL_MASTER is not a valid URL")?;
            match info.addr() {
                ConnectionAddr::Tcp(host, _) => (host.clone(), info.redis_settings().clone(), None),
                ConnectionAddr::TcpTls { host, insecure, .. } => (
                    host.clone(),
                    info.redis_settings().clone(),
                    Some(if *insecure {
                        TlsMode::Insecure
                    } else {
                        TlsMode::Secure
                    }),
                ),
                _ => anyhow::bail!("WIRECHAT_REDIS_SENTINEL_MASTER's host is the master's name"),
            }
        } else {
            (master.trim().to_owned(), Default::default(), None)
        };
        if name.is_empty() {
            anyhow::bail!(
                "WIRECHAT_REDIS_SENTINEL_MASTER is empty: name the master the sentinels watch"
            );
        }
        if ca_file.is_some() && tls.is_none() && !tls_sentinels {
            anyhow::bail!("a Redis CA file needs a rediss:// master URL or rediss:// sentinels");
        }
        let root_cert = ca_file.map(read_ca_file).transpose()?;
        let nodes = match &root_cert {
            Some(root_cert) if tls_sentinels => nodes
                .into_iter()
                .map(|node| {
                    if is_tls(&node) {
                        trusting_in(node, root_cert.clone())
                    } else {
                        Ok(node)
                    }
                })
                .collect::<redis::RedisResult<Vec<_>>>()?,
            _ => nodes,
        };
        let sentinel_login = nodes
            .iter()
            .map(|node| node.redis_settings().clone())
            .find(|login| login.password().is_some());
        let addresses = nodes.iter().map(|node| node.addr().clone());
        let mut builder = SentinelClientBuilder::new(addresses, &name, SentinelServerType::Master)?
            .set_client_to_redis_db(login.db());
        if let Some(username) = login.username() {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = login.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(tls) = tls {
            builder = builder.set_client_to_redis_tls_mode(tls);
            if let Some(root_cert) = root_cert {
                builder = builder.set_client_to_redis_certificates(trusting(root_cert));
            }
        }
        if let Some(login) = sentinel_login {
            if let Some(username) = login.username() {
                builder = builder.set_client_to_sentinel_username(username);
            }
            if let Some(password) = login.password() {
                builder = builder.set_client_to_sentinel_password(password);
            }
        }
        Ok(Servers::Sentinel(Arc::new(Sentinels {
            asking: tokio::sync::Mutex::new((builder.build()?, None)),
            nodes,
            name,
            master: Mutex::new(None),
        })))
    }

    /// With Sentinel, the master last found (`host:port`); otherwise nothing.
    pub fn master(&self) -> Option<String> {
        match self {
            Servers::Sentinel(sentinels) => sentinels.last().as_ref().map(ToString::to_string),
            _ => None,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Servers::Cluster { .. })
    }

    /// Refuses, with what to do instead, a cluster given as one server, one server given
    /// as a cluster, a server that is not a sentinel given as one, sentinels that watch
    /// no master of the name given, a server that turns the password away, and one whose
    /// certificate this node does not trust; says nothing of servers that do not answer
    /// yet (a node may start before Redis does).
    pub async fn check_mode(&self) -> anyhow::Result<()> {
        let (nodes, want) = match self {
            Servers::Single(info) => (std::slice::from_ref(info), "standalone"),
            Servers::Sentinel(sentinels) => (sentinels.nodes.as_slice(), "sentinel"),
            Servers::Cluster { nodes, .. } => (nodes.as_slice(), "cluster"),
        };
        for node in nodes {
            let ask = async {
                let client = match self {
                    Servers::Cluster {
                        root_cert: Some(root_cert),
                        ..
                    } if is_tls(node) => {
                        redis::Client::open(trusting_in(node.clone(), root_cert.clone())?)?
                    }
                    _ => redis::Client::open(node.clone())?,
                };
                let mut connection = client.get_multiplexed_async_connection().await?;
                let info = redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut connection)
                    .await?;
                let mode = info
                    .lines()
                    .find_map(|line| line.strip_prefix("redis_mode:"))
                    .unwrap_or("standalone")
                    .trim()
                    .to_owned();
                let watched = match self {
                    Servers::Sentinel(sentinels) if mode == "sentinel" => Some(
                        redis::cmd("SENTINEL")
                            .arg("get-master-addr-by-name")
                            .arg(&sentinels.name)
                            .query_async::<Option<Vec<String>>>(&mut connection)
                            .await?
                            .is_some(),
                    ),
                    _ => None,
                };
                redis::RedisResult::Ok((mode, watched))
            };
            let addr = node.addr();
            let (mode, watched) = match tokio::time::timeout(NODE_CONNECT_WAIT, ask).await {
                Ok(Ok(found)) => found,
                Ok(Err(e))
                    if e.kind() == redis::ErrorKind::AuthenticationFailed
                        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) =>
                {
                    anyhow::bail!(
                        "{addr} turned this node away: {e} (check the password in its URL)"
                    )
                }
                Ok(Err(e)) if untrusted_certificate(&e) => {
                    anyhow::bail!(
                        "{addr} showed a certificate this node does not trust: {e} (check \
                         WIRECHAT_REDIS_CA_FILE, which names the authorities to trust, and \
                         that the certificate is for this host name)"
                    )
                }
                _ => continue,
            };
            let setting = |mode: &str| match mode {
                "sentinel" => "WIRECHAT_REDIS_SENTINEL",
                "cluster" => "WIRECHAT_REDIS_CLUSTER",
                _ => "REDIS_URL",
            };
            let (is, instead) = match mode.as_str() {
                "sentinel" => (
                    "a Redis Sentinel",
                    "name the sentinels in WIRECHAT_REDIS_SENTINEL",
                ),
                "cluster" => (
                    "a Redis Cluster node",
                    "name the cluster's nodes in WIRECHAT_REDIS_CLUSTER",
                ),
                _ => ("a Redis without cluster mode", "name it in REDIS_URL"),
            };
            if mode != want {
                anyhow::bail!("{addr} is {is}: {instead}, not {}", setting(want));
            }
            if let (Servers::Sentinel(sentinels), Some(false)) = (self, watched) {
                anyhow::bail!(
                    "the sentinel at {addr} watches no master named {}: check WIRECHAT_REDIS_SENTINEL_MASTER",
                    sentinels.name
                );
            }
            return Ok(());
        }
        Ok(())
    }

    /// The client for a cluster; `pushes` receives what subscriptions bring.
    fn cluster_client(
        nodes: &[ConnectionInfo],
        root_cert: &Option<Vec<u8>>,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> redis::RedisResult<ClusterClient> {
        // Each node gets less than the whole connection's limit: the client waits for every
        // listed node, so one that drops packets must not use up all of it.
        let mut builder = ClusterClientBuilder::new(nodes.to_vec())
            .retries(CLUSTER_RETRIES)
            .connection_timeout(NODE_CONNECT_WAIT)
            .response_timeout(COMMAND_WAIT);
        if let Some(root_cert) = root_cert {
            builder = builder.certs(trusting(root_cert.clone()));
        }
        if let Some(pushes) = pushes {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes);
        }
        builder.build()
    }

    /// The connections for commands and publications.
    pub fn commands(&self) -> anyhow::Result<Commands> {
        match self {
            Servers::Single(info) => {
                // Built from the connection info itself: deadpool's own config would drop
                // its TLS settings.
                let pool = Pool::builder(deadpool_redis::Manager::new(info.clone())?)
                    .max_size(16)
                    .wait_timeout(Some(COMMAND_WAIT))
                    .create_timeout(Some(COMMAND_WAIT))
                    .recycle_timeout(Some(COMMAND_WAIT))
                    .runtime(Runtime::Tokio1)
                    .build()?;
                Ok(Commands::Single(pool))
            }
            Servers::Cluster { nodes, root_cert } => {
                let client = Servers::cluster_client(nodes, root_cert, None)?;
                Ok(Commands::Cluster(Arc::new(ClusterCommands {
                    client,
                    connection: Kept::default(),
                })))
            }
            Servers::Sentinel(sentinels) => Ok(Commands::Sentinel(Arc::new(SentinelCommands {
                sentinels: sentinels.clone(),
                connection: Kept::default(),
            }))),
        }
    }

    /// A new subscriber connection.
    pub async fn subscriber(&self) -> Result<Subscriber, String> {
        let connecting = async {
            match self {
                Servers::Single(info) => {
                    let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
                    Subscriber::to(client).await
                }
                Servers::Sentinel(sentinels) => Subscriber::to(sentinels.master().await?).await,
                Servers::Cluster { nodes, root_cert } => {
                    let (tx, pushes) = mpsc::unbounded_channel();
                    let client = Servers::cluster_client(nodes, root_cert, Some(tx))
                        .map_err(|e| e.to_string())?;
                    let mut connection = client
                        .get_async_connection()
                        .await
                        .map_err(|e| e.to_string())?;
                    // Mid-failover, a shard may still be listed under its dead master, or
                    // its replica not yet own the slots: subscriptions made then can be
                    // dropped without a word. Subscribe only to a cluster all masters of
                    // which say it is whole.
                    whole(&mut connection).await?;
                    Ok(Subscriber::Cluster {
                        connection,
                        pushes,
                        asked: Asked::default(),
                    })
                }
            }
        };
        tokio::time::timeout(COMMAND_WAIT, connecting)
            .await
            .unwrap_or_else(|_| Err("connecting timed out".to_owned()))
    }
}

/// `nodes` (`host:port` or URLs, comma-separated), each a `kind` of Redis node.
fn node_list(nodes: &str, kind: &str) -> anyhow::Result<Vec<ConnectionInfo>> {
    let nodes = nodes
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(|node| {
            let url = if node.contains("://") {
                node.to_owned()
            } else {
                format!("redis://{node}")
            };
            url.as_str()
                .into_connection_info()
                .with_context(|| format!("{kind} {}", without_login(node)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if nodes.is_empty() {
        anyhow::bail!("no {kind} given: name at least one host:port");
    }
    Ok(nodes)
}

/// `node` as messages may show it: without what comes before an `@` (a password).
fn without_login(node: &str) -> &str {
    match node.rfind('@') {
        Some(at) => &node[at + 1..],
        None => node,
    }
}

/// The sentinels watching one master, and the master they named last.
pub struct Sentinels {
    /// Asks the sentinels and checks with ROLE that the server they name says it is the
    /// master; with the last answer and when it came, so that callers who waited for
    /// one lookup share its answer rather than each ask again.
    asking: tokio::sync::Mutex<(SentinelClient, Option<Looked>)>,
    /// The sentinels, as given.
    nodes: Vec<ConnectionInfo>,
    /// The master's name among the sentinels.
    name: String,
    /// The address of the master last found: a command connection to another one is
    /// stale.
    master: Mutex<Option<ConnectionAddr>>,
}

/// A lookup's answer, and when it came.
type Looked = (Instant, Result<redis::Client, CommandError>);

/// How long a lookup's answer serves the callers that come after it: a node's command
/// connection, its subscriber and its presence may all need the master at once (an
/// outage fails them together), and one lookup can take a second when a sentinel listed
/// before the others does not answer.
const SENTINEL_ANSWER_SERVES: Duration = Duration::from_secs(1);

impl Sentinels {
    /// A client for the server the sentinels name as master now. One lookup at a time,
    /// each bounded on its own (not the wait for one's turn), and one that ended less
    /// than `SENTINEL_ANSWER_SERVES` ago answers for them.
    async fn master(&self) -> Result<redis::Client, CommandError> {
        let mut asking = self.asking.lock().await;
        let (client, last) = &mut *asking;
        if let Some((at, answer)) = last
            && at.elapsed() < SENTINEL_ANSWER_SERVES
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(COMMAND_WAIT, client.async_get_client()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!(
                "finding the master {} through the sentinels (or reaching it): {e}",
                self.name
            )),
            Err(_) => Err("the sentinels did not answer in time".to_owned()),
        };
        *last = Some((Instant::now(), answer.clone()));
        let client = answer?;
        *self.last() = Some(client.get_connection_info().addr().clone());
        Ok(client)
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Option<ConnectionAddr>> {
        self.master.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn is_tls(node: &ConnectionInfo) -> bool {
    matches!(node.addr(), ConnectionAddr::TcpTls { .. })
}

/// Whether `e` says a TLS server's certificate is not trusted (an unknown authority,
/// another host name): a setting to change, not a server that may yet come up.
fn untrusted_certificate(e: &redis::RedisError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        // The redis crate keeps the I/O error, which holds rustls's, behind an Arc.
        let io = error.downcast_ref::<std::io::Error>().or_else(|| {
            error
                .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()?
                .downcast_ref::<std::io::Error>()
        });
        if let Some(tls) = io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return matches!(tls, rustls::Error::InvalidCertificate(_));
        }
        source = error.source();
    }
    false
}

/// TLS that trusts the authorities in `root_cert` (PEM) instead of the system's.
fn trusting(root_cert: Vec<u8>) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }
}

/// `server`'s connection, its TLS trusting the authorities in `root_cert` (PEM); an error
/// for a server not reached over TLS.
fn trusting_in(
    server: impl IntoConnectionInfo,
    root_cert: Vec<u8>,
) -> redis::RedisResult<ConnectionInfo> {
    redis::Client::build_with_tls(server, trusting(root_cert))
        .map(|client| client.get_connection_info().clone())
}

fn read_ca_file(ca_file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(ca_file)
        .with_context(|| format!("reading the Redis CA file {}", ca_file.display()))
}

/// Connections for commands: a pool of connections to one server, or one multiplexed
/// connection per shard of a cluster.
#[derive(Clone)]
pub enum Commands {
    Single(Pool),
    Sentinel(Arc<SentinelCommands>),
    Cluster(Arc<ClusterCommands>),
}

pub struct ClusterCommands {
    client: ClusterClient,
    connection: Kept<ClusterConnection>,
}

impl ClusterCommands {
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        self.connection
            .get(None, || async {
                let connection =
                    tokio::time::timeout(COMMAND_WAIT, self.client.get_async_connection())
                        .await
                        .map_err(|_| timed_out("connecting to the Redis Cluster timed out"))??;
                Ok((connection, None))
            })
            .await
    }
}

/// Commands to the master the sentinels name.
pub struct SentinelCommands {
    sentinels: Arc<Sentinels>,
    connection: Kept<MultiplexedConnection>,
}

impl SentinelCommands {
    /// The connection to the master; a new one when the sentinels have named another
    /// master since it was made.
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let master = self.sentinels.last().clone();
        self.connection
            .get(master, || async {
                let client = self.sentinels.master().await.map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no Redis master", e))
                })?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(COMMAND_WAIT))
                    .set_response_timeout(Some(COMMAND_WAIT));
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok((
                    connection,
                    Some(client.get_connection_info().addr().clone()),
                ))
            })
            .await
    }
}

/// One connection every command shares, made anew after one fails.
struct Kept<C> {
    /// The connection, and the address of the server it goes to where that can change.
    slot: Mutex<Option<(C, Option<ConnectionAddr>)>>,
    /// Held while connecting: callers that find no connection wait for one attempt
    /// rather than each make their own.
    connecting: tokio::sync::Mutex<()>,
}

impl<C> Default for Kept<C> {
    fn default() -> Self {
        Kept {
            slot: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }
}

impl<C: Clone> Kept<C> {
    /// The connection kept, unless it goes elsewhere than `to` (when given); otherwise a
    /// new one from `connect`.
    async fn get<F, Fut>(&self, to: Option<ConnectionAddr>, connect: F) -> redis::RedisResult<C>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<(C, Option<ConnectionAddr>)>>,
    {
        let usable = |slot: &Option<(C, Option<ConnectionAddr>)>| match slot {
            Some((connection, at)) if to.is_none() || *at == to => Some(connection.clone()),
            _ => None,
        };
        if let Some(connection) = usable(&self.slot()) {
            return Ok(connection);
        }
        let _turn = self.connecting.lock().await;
        if let Some(connection) = usable(&self.slot()) {
            return Ok(connection);
        }
        let (connection, at) = connect().await?;
        *self.slot() = Some((connection.clone(), at));
        Ok(connection)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(C, Option<ConnectionAddr>)>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a connection's failure the next command connects anew: on a cluster that
    /// reads its topology again (a failover may have promoted a replica the old
    /// connection does not know), as after a redirection or a cluster-down answer the
    /// client's own retries did not get past; with Sentinel it asks the sentinels for the
    /// master again (a replica refusing writes is an old master). A command's own error
    /// (a script's) leaves the connection as it is.
    fn failed(&self, error: &redis::RedisError) {
        use redis::{ErrorKind, ServerErrorKind};
        let topology = matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
        if topology
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
        {
            self.slot().take();
        }
    }

    /// `answer`, as text when it failed, after which the connection is dropped if the
    /// failure was the connection's.
    fn checked<T>(&self, answer: redis::RedisResult<T>) -> Result<T, CommandError> {
        answer.map_err(|e| {
            self.failed(&e);
            e.to_string()
        })
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// A command's failure, as text for logs and readiness.
pub type CommandError = String;

impl Commands {
    /// Runs `script` with `key` (which routes it to its shard on a cluster) and `args`.
    pub async fn run_script<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, CommandError> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        match self {
            Commands::Single(pool) => {
                let mut connection = pool.get().await.map_err(|e| e.to_string())?;
                invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())
            }
            Commands::Sentinel(sentinel) => {
                let mut connection = sentinel.connection().await.map_err(|e| e.to_string())?;
                let answer = invocation.invoke_async(&mut connection).await;
                sentinel.connection.checked(answer)
            }
            Commands::Cluster(cluster) => {
                let mut connection = cluster.connection().await.map_err(|e| e.to_string())?;
                let answer = invocation.invoke_async(&mut connection).await;
                cluster.connection.checked(answer)
            }
        }
    }

    /// Whether Redis answers: the server, the master the sentinels name, or every master
    /// of the cluster.
    pub async fn ping(&self) -> Result<(), CommandError> {
        match self {
            Commands::Single(pool) => {
                let mut connection = pool.get().await.map_err(|e| e.to_string())?;
                ping(&mut connection).await.map_err(|e| e.to_string())
            }
            Commands::Sentinel(sentinel) => {
                let mut connection = sentinel.connection().await.map_err(|e| e.to_string())?;
                let answer = ping(&mut connection).await;
                sentinel.connection.checked(answer)
            }
            Commands::Cluster(cluster) => {
                let mut connection = cluster.connection().await.map_err(|e| e.to_string())?;
                let answer = ping_masters(&mut connection).await;
                cluster.connection.checked(answer)
            }
        }
    }

    /// Publishes each `(channel, payload)`, in order per channel: one pipeline to one
    /// server (or the sentinels' master), or one pipeline per hash slot (a pipeline to a cluster stays within one
    /// slot), all sent at once. Each item's own outcome, in order: on a cluster, one
    /// shard failing fails only the publications to its slots.
    pub async fn publish(&self, batch: &[(&str, &[u8])]) -> Vec<Result<(), PublishError>> {
        match self {
            Commands::Single(pool) => {
                let sent = match pool.get().await {
                    Ok(mut connection) => publications(batch)
                        .query_async::<Vec<i64>>(&mut connection)
                        .await
                        .map(drop)
                        .map_err(|e| PublishError::Command(Arc::new(e))),
                    Err(e) => Err(PublishError::Connection(Arc::new(e))),
                };
                vec![sent; batch.len()]
            }
            Commands::Sentinel(sentinel) => {
                let sent = match sentinel.connection().await {
                    Ok(mut connection) => publications(batch)
                        .query_async::<Vec<i64>>(&mut connection)
                        .await
                        .map(drop)
                        .inspect_err(|e| sentinel.connection.failed(e))
                        .map_err(|e| PublishError::Command(Arc::new(e))),
                    Err(e) => Err(PublishError::Command(Arc::new(e))),
                };
                vec![sent; batch.len()]
            }
            Commands::Cluster(cluster) => {
                let connection = match cluster.connection().await {
                    Ok(connection) => connection,
                    Err(e) => return vec![Err(PublishError::Command(Arc::new(e))); batch.len()],
                };
                let groups = slot_groups(batch.iter().map(|(channel, _)| *channel));
                let sent: Vec<Result<(), PublishError>> =
                    futures_util::future::join_all(groups.iter().map(|group| {
                        let mut pipe = redis::pipe();
                        for &at in group {
                            let (channel, payload) = batch[at];
                            pipe.cmd("SPUBLISH").arg(channel).arg(payload);
                        }
                        let mut connection = connection.clone();
                        async move {
                            pipe.query_async::<Vec<i64>>(&mut connection)
                                .await
                                .map(drop)
                                .inspect_err(|e| cluster.connection.failed(e))
                                .map_err(|e| PublishError::Command(Arc::new(e)))
                        }
                    }))
                    .await;
                let mut outcomes = vec![Ok(()); batch.len()];
                for (group, sent) in groups.iter().zip(sent) {
                    for &at in group {
                        outcomes[at] = sent.clone();
                    }
                }
                outcomes
            }
        }
    }
}

/// One PUBLISH per `(channel, payload)`, in order, as one pipeline.
fn publications(batch: &[(&str, &[u8])]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for (channel, payload) in batch {
        pipe.cmd("PUBLISH").arg(channel).arg(payload);
    }
    pipe
}

async fn ping(connection: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<()> {
    redis::cmd("PING")
        .query_async::<String>(connection)
        .await
        .map(drop)
}

async fn ping_masters(connection: &mut ClusterConnection) -> redis::RedisResult<()> {
    let all_masters = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::AllSucceeded),
    ));
    connection
        .route_command(redis::cmd("PING"), all_masters)
        .await
        .map(drop)
}

/// Whether every master the connection knows answers and says the cluster is ok.
async fn whole(connection: &mut ClusterConnection) -> Result<(), CommandError> {
    let all_masters = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let info = connection
        .route_command(redis::cmd("CLUSTER").arg("INFO").clone(), all_masters)
        .await
        .map_err(|e| e.to_string())?;
    // One answer per master, by address; a master's error reply comes as its answer.
    let Value::Map(answers) = info else {
        return Err("CLUSTER INFO did not answer per master".to_owned());
    };
    let whole = !answers.is_empty()
        && answers.iter().all(|(_, answer)| match answer {
            Value::BulkString(text) => String::from_utf8_lossy(text).contains("cluster_state:ok"),
            Value::VerbatimString { text, .. } => text.contains("cluster_state:ok"),
            _ => false,
        });
    if whole {
        Ok(())
    } else {
        Err("the cluster is not whole yet".to_owned())
    }
}

/// What a subscriber connection brings.
pub enum Incoming {
    /// A message published to `channel`.
    Message { channel: String, payload: Bytes },
    /// Nothing for the layer (a confirmation, a notice).
    Nothing,
    /// A subscription on the connection, or one of a cluster's node connections, is
    /// lost: events may have been missed.
    Lost(String),
    /// The connection is closed: nothing more will come.
    Closed,
}

/// A subscriber connection: to one server, or to every shard of a cluster.
pub enum Subscriber {
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster {
        connection: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        /// Subscription changes this node asked for whose confirmation has not come yet.
        asked: Asked,
    },
}

/// Subscriptions and unsubscriptions asked for and not yet confirmed, per channel. A
/// confirmation nobody asked for means the cluster client or a shard changed this node's
/// subscriptions by itself: a shard dropped them (its slot moved), or the client moved them
/// to new connections, and events may have been missed meanwhile.
#[derive(Default)]
pub struct Asked {
    subscribe: HashMap<String, usize>,
    unsubscribe: HashMap<String, usize>,
}

impl Asked {
    fn ask(pending: &mut HashMap<String, usize>, channels: &[String]) {
        for channel in channels {
            *pending.entry(channel.clone()).or_default() += 1;
        }
    }

    /// Whether a confirmation for `channel` was asked for (and counts it as come).
    fn confirmed(pending: &mut HashMap<String, usize>, channel: &str) -> bool {
        let Some(count) = pending.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            pending.remove(channel);
        }
        true
    }
}

impl Subscriber {
    /// A subscriber connection to the one server `client` goes to.
    async fn to(client: redis::Client) -> Result<Subscriber, CommandError> {
        let (sink, stream) = client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?
            .split();
        Ok(Subscriber::Single { sink, stream })
    }

    /// Subscribes to `channels`: one command for one server; on a cluster, one per slot
    /// (SSUBSCRIBE takes channels of one slot), sent together.
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), CommandError> {
        self.change(channels, true).await
    }

    pub async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), CommandError> {
        self.change(channels, false).await
    }

    async fn change(&mut self, channels: &[String], subscribe: bool) -> Result<(), CommandError> {
        match self {
            Subscriber::Single { sink, .. } if subscribe => sink.subscribe(channels).await,
            Subscriber::Single { sink, .. } => sink.unsubscribe(channels).await,
            Subscriber::Cluster {
                connection, asked, ..
            } => {
                let pending = if subscribe {
                    &mut asked.subscribe
                } else {
                    &mut asked.unsubscribe
                };
                Asked::ask(pending, channels);
                let sent: Vec<_> = by_slot(channels)
                    .into_iter()
                    .map(|channels| {
                        let mut connection = connection.clone();
                        async move {
                            if subscribe {
                                connection.ssubscribe(channels).await
                            } else {
                                connection.sunsubscribe(channels).await
                            }
                        }
                    })
                    .collect();
                all_of(sent).await
            }
        }
        .map_err(|e| e.to_string())
    }

    /// Whether the connection still answers; on a cluster, whether every master does and
    /// says the cluster is whole (a failover under way makes it not).
    pub async fn ping(&mut self) -> Result<(), CommandError> {
        match self {
            Subscriber::Single { sink, .. } => sink
                .ping::<Value>()
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Subscriber::Cluster { connection, .. } => whole(connection).await,
        }
    }

    /// The next thing the connection brings.
    pub async fn next(&mut self) -> Incoming {
        match self {
            Subscriber::Single { stream, .. } => match stream.next().await {
                Some(message) => Incoming::Message {
                    channel: message.get_channel_name().to_owned(),
                    payload: Bytes::copy_from_slice(message.get_payload_bytes()),
                },
                None => Incoming::Closed,
            },
            Subscriber::Cluster { pushes, asked, .. } => match pushes.recv().await {
                Some(push) => cluster_push(push, asked),
                None => Incoming::Closed,
            },
        }
    }
}

/// What a push from a cluster shard means for the layer.
fn cluster_push(push: PushInfo, asked: &mut Asked) -> Incoming {
    let channel = match push.data.first() {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    };
    match push.kind {
        PushKind::SMessage => match push.data.get(1) {
            Some(Value::BulkString(payload)) => Incoming::Message {
                channel,
                payload: Bytes::copy_from_slice(payload),
            },
            _ => Incoming::Nothing,
        },
        PushKind::Disconnection => Incoming::Lost("a shard's connection closed".to_owned()),
        PushKind::SUnsubscribe if !Asked::confirmed(&mut asked.unsubscribe, &channel) => {
            Incoming::Lost(format!("a shard dropped {channel} (its slot moved)"))
        }
        PushKind::SSubscribe if !Asked::confirmed(&mut asked.subscribe, &channel) => {
            Incoming::Lost(format!(
                "{channel} was subscribed again on a new connection"
            ))
        }
        _ => Incoming::Nothing,
    }
}

/// Runs `commands` a bounded number at a time; the first failure, if any.
async fn all_of<F>(commands: Vec<F>) -> redis::RedisResult<()>
where
    F: std::future::Future<Output = redis::RedisResult<()>>,
{
    futures_util::stream::iter(commands)
        .buffer_unordered(CLUSTER_SUBSCRIBE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The places of `channels` grouped by hash slot, each group in the order given: what one
/// cluster command (a pipeline, an SSUBSCRIBE) may carry together.
fn slot_groups<'a>(channels: impl IntoIterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut slots: HashMap<Slot, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (place, channel) in channels.into_iter().enumerate() {
        let at = *slots.entry(Slot::for_key(channel)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(place);
    }
    groups
}

/// `channels` grouped by hash slot, each group in the order given.
fn by_slot(channels: &[String]) -> Vec<Vec<String>> {
    slot_groups(channels.iter().map(String::as_str))
        .into_iter()
        .map(|group| group.into_iter().map(|at| channels[at].clone()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_grouped_by_slot_in_order() {
        // {a} tags hash alike; "b" and "c" land elsewhere.
        let channels: Vec<String> = ["x{a}1", "b", "x{a}2", "c", "x{a}3"]
            .map(String::from)
            .into();
        let groups = by_slot(&channels);
        let tagged = groups
            .iter()
            .find(|g| g.contains(&"x{a}1".to_owned()))
            .expect("the tagged group");
        assert_eq!(tagged, &["x{a}1", "x{a}2", "x{a}3"]);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 5);
    }

    #[test]
    fn only_an_unasked_subscription_change_is_a_loss() {
        let push = |channel: &str| PushInfo {
            kind: PushKind::SUnsubscribe,
            data: vec![
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::Int(0),
            ],
        };
        let mut asked = Asked::default();
        Asked::ask(&mut asked.unsubscribe, &["asked".to_owned()]);
        assert!(matches!(
            cluster_push(push("asked"), &mut asked),
            Incoming::Nothing
        ));
        assert!(asked.unsubscribe.is_empty());
        assert!(matches!(
            cluster_push(push("asked"), &mut asked),
            Incoming::Lost(_)
        ));
        assert!(matches!(
            cluster_push(push("moved"), &mut asked),
            Incoming::Lost(_)
        ));
    }
}
