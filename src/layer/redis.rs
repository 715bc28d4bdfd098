//! The Redis channel layer: nodes share events over Redis pub/sub.
//!
//! Each group is one Redis channel, `<prefix><group>` (the group is an internal id, never
//! client text). An event is delivered to this node's sockets at once and PUBLISHed once,
//! over a pooled connection; every node holds a single dedicated subscriber connection,
//! subscribed to exactly the groups that have a socket on that node, and fans each message
//! out in-process. Redis work per message is therefore O(nodes), never O(members).
//!
//! The subscriber runs in a loop that reconnects with backoff when Redis goes away,
//! subscribes again to every group with a local socket, and then tells every local socket
//! to resync from the store, since events published during the gap are lost to this node.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use deadpool_redis::redis::{self, ConnectionInfo, IntoConnectionInfo, aio::PubSubSink};
use deadpool_redis::{Pool, Runtime};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{ChannelLayer, Event, PublishError, Registry, SocketId, Subscriber, wire};

/// Longest wait for Redis to confirm a SUBSCRIBE before a join gives up waiting (the socket
/// is registered regardless, and a resync follows if the connection was lost).
const JOIN_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for the subscriber connection to be set up, or a command on it answered,
/// before it counts as lost.
const COMMAND_WAIT: Duration = Duration::from_secs(3);
/// How often an idle subscriber connection is checked with PING, so a silently dropped
/// connection is noticed even when no messages flow.
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE when resubscribing, so one command never blocks Redis for long.
const SUBSCRIBE_CHUNK: usize = 500;
/// Subscription changes handled together, coalesced into one command per run of the same
/// kind.
const COMMAND_BATCH: usize = 256;

/// Where Redis is and how to reach it: `url` (`redis://` or, over TLS, `rediss://`), and
/// for TLS the certificate authorities in `ca_file` (PEM) instead of the system's.
pub fn connection_info(url: &str, ca_file: Option<&Path>) -> anyhow::Result<ConnectionInfo> {
    let Some(ca_file) = ca_file else {
        return Ok(url.into_connection_info()?);
    };
    let root_cert = std::fs::read(ca_file)
        .with_context(|| format!("reading the Redis CA file {}", ca_file.display()))?;
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    let client = redis::Client::build_with_tls(url, certificates)
        .context("a Redis CA file needs a rediss:// URL")?;
    Ok(client.get_connection_info().clone())
}

/// A pool of multiplexed connections for commands (PUBLISH, presence).
pub fn pool(info: &ConnectionInfo) -> anyhow::Result<Pool> {
    // Built from the connection info itself: deadpool's own config would drop its TLS
    // settings.
    let pool = Pool::builder(deadpool_redis::Manager::new(info.clone())?)
        .max_size(16)
        .wait_timeout(Some(COMMAND_WAIT))
        .create_timeout(Some(COMMAND_WAIT))
        .recycle_timeout(Some(COMMAND_WAIT))
        .runtime(Runtime::Tokio1)
        .build()?;
    Ok(pool)
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// Which groups the subscriber connection has confirmed, and who waits for the others.
#[derive(Default)]
struct Subscriptions {
    /// The subscriber connection is up (it may still be resubscribing).
    connected: bool,
    /// Groups whose SUBSCRIBE Redis confirmed on the current connection.
    live: HashSet<String>,
    /// Joins waiting for their group's confirmation.
    waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
}

impl Subscriptions {
    fn confirm(&mut self, group: String) {
        if let Some(waiters) = self.waiters.remove(&group) {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        self.live.insert(group);
    }

    /// The connection is gone: nothing is live, and nobody should wait for it.
    fn lost(&mut self) {
        self.connected = false;
        self.live.clear();
        for (_, waiters) in self.waiters.drain() {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
    }
}

struct Shared {
    registry: Registry,
    prefix: String,
    /// This process's id on the wire, so it skips the events it published itself.
    origin: String,
    subscriptions: Mutex<Subscriptions>,
    /// Follows `Subscriptions::connected`, for those who wait for it.
    connected: watch::Sender<bool>,
}

impl Shared {
    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self, group: &str) -> String {
        format!("{}{group}", self.prefix)
    }
}

pub struct RedisLayer {
    shared: Arc<Shared>,
    pool: Pool,
    commands: mpsc::UnboundedSender<Command>,
    /// Publications for the publisher, in order.
    publications: mpsc::Sender<Publication>,
}

impl RedisLayer {
    /// Starts the subscriber for `url`; it runs until `stop` is cancelled. Channel names
    /// start with `prefix`, so several chats (or tests) can share one Redis.
    pub fn start(
        info: &ConnectionInfo,
        pool: Pool,
        prefix: &str,
        origin: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<RedisLayer> {
        let client = redis::Client::open(info.clone())?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            registry: Registry::default(),
            prefix: prefix.to_owned(),
            origin: origin.to_owned(),
            subscriptions: Mutex::default(),
            connected: watch::Sender::new(false),
        });
        tokio::spawn(subscriber(shared.clone(), client, inbox, stop));
        let (publications, queue) = mpsc::channel(PUBLICATION_QUEUE);
        tokio::spawn(publisher(pool.clone(), queue));
        Ok(RedisLayer {
            shared,
            pool,
            commands,
            publications,
        })
    }

    /// Waits until the subscriber connection is up, at most `limit`; false if it is not.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let mut connected = self.shared.connected.subscribe();
        tokio::time::timeout(limit, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Queues a PUBLISH with the node's publisher; done once Redis has answered it.
    async fn send(&self, group: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        let (done, answer) = oneshot::channel();
        let publication = Publication {
            channel: self.shared.channel(group),
            payload,
            done,
        };
        // The queue is fair: a publication waiting for room keeps its place.
        if self.publications.send(publication).await.is_err() {
            return Err(PublishError::Stopped);
        }
        answer.await.unwrap_or(Err(PublishError::Stopped))
    }
}

/// A PUBLISH waiting for the publisher, and who waits for its answer.
struct Publication {
    channel: String,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// Publications waiting for the publisher, at most; past it publishers wait.
const PUBLICATION_QUEUE: usize = 4096;
/// PUBLISH commands sent in one pipeline, at most.
const PUBLICATION_BATCH: usize = 256;

/// Sends this node's publications to Redis in the order they were queued: whatever has
/// queued up goes in one pipeline, and the next pipeline only once it is answered. One
/// connection at a time keeps a room's events in order on every node (over a pool of
/// connections, two PUBLISHes in flight at once can overtake each other), and a pipeline
/// costs Redis and this node one round trip for many events.
async fn publisher(pool: Pool, mut queue: mpsc::Receiver<Publication>) {
    let mut batch = Vec::with_capacity(PUBLICATION_BATCH);
    while queue.recv_many(&mut batch, PUBLICATION_BATCH).await > 0 {
        let sent = match pool.get().await {
            Ok(mut conn) => {
                let mut pipe = redis::pipe();
                for p in &batch {
                    pipe.cmd("PUBLISH").arg(&p.channel).arg(&p.payload);
                }
                pipe.query_async::<Vec<i64>>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(|e| PublishError::Command(Arc::new(e)))
            }
            Err(e) => Err(PublishError::Connection(Arc::new(e))),
        };
        let failed = sent.is_err();
        for p in batch.drain(..) {
            let _ = p.done.send(sent.clone());
        }
        if failed {
            // Redis is away: what queued meanwhile fails at once rather than a wait for a
            // connection each.
            while let Ok(p) = queue.try_recv() {
                let _ = p.done.send(sent.clone());
            }
        }
    }
}

impl ChannelLayer for RedisLayer {
    fn publish<'a>(
        &'a self,
        group: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let metrics = self.shared.registry.metrics();
        if matches!(event, Event::Message { .. }) {
            metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        }
        let payload = super::wire::encode(&self.shared.origin, &event);
        // This node's sockets get the event now, whether or not Redis is reachable, so
        // people on the same node keep chatting through an outage.
        self.shared.registry.deliver(group, Arc::new(event));
        Box::pin(async move {
            let Some(payload) = payload else {
                return Ok(());
            };
            let started = Instant::now();
            match self.send(group, payload).await {
                Ok(()) => {
                    metrics.publish_latency.observe(started.elapsed());
                    Ok(())
                }
                Err(e) => {
                    metrics.publish_failures.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        })
    }

    fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    fn join(&self, group: &str, member: &Subscriber) -> BoxFuture<'static, ()> {
        let first = self.shared.registry.join(group, member);
        let confirmed = {
            let mut subs = self.shared.subscriptions();
            // While disconnected there is nothing to wait for: the group is subscribed on
            // reconnect, and every socket resyncs after that.
            if !subs.connected || subs.live.contains(group) {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                subs.waiters.entry(group.to_owned()).or_default().push(tx);
                Some(rx)
            }
        };
        if first {
            let _ = self.commands.send(Command::Subscribe(group.to_owned()));
        }
        let group = group.to_owned();
        Box::pin(async move {
            if let Some(confirmed) = confirmed
                && tokio::time::timeout(JOIN_WAIT, confirmed).await.is_err()
            {
                tracing::warn!(group, "subscription not confirmed in time");
            }
        })
    }

    fn leave(&self, group: &str, socket: SocketId) {
        if self.shared.registry.leave(group, socket) {
            let _ = self.commands.send(Command::Unsubscribe(group.to_owned()));
        }
    }

    fn leave_all(&self, socket: SocketId) {
        for group in self.shared.registry.leave_all(socket) {
            let _ = self.commands.send(Command::Unsubscribe(group));
        }
    }

    fn subscribed(&self) -> usize {
        self.shared.subscriptions().live.len()
    }

    fn backend_status(&self) -> BoxFuture<'_, Option<(&'static str, Result<(), String>)>> {
        Box::pin(async move {
            let ping = async {
                let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            };
            let status = match tokio::time::timeout(COMMAND_WAIT, ping).await {
                Err(_) => Err("no answer".to_owned()),
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) if !*self.shared.connected.borrow() => {
                    Err("subscriber reconnecting".to_owned())
                }
                Ok(Ok(_)) => Ok(()),
            };
            Some(("redis", status))
        })
    }
}

/// The node's one pub/sub connection, kept up for as long as the node runs.
async fn subscriber(
    shared: Arc<Shared>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut ever_connected = false;
    loop {
        let connecting = tokio::time::timeout(COMMAND_WAIT, client.get_async_pubsub());
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            result = connecting => match result {
                Ok(Ok(pubsub)) => Some(pubsub),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot connect the Redis subscriber");
                    None
                }
                Err(_) => {
                    tracing::warn!("Redis subscriber connection timed out");
                    None
                }
            },
        };
        let Some(pubsub) = pubsub else {
            if !wait_to_retry(&mut backoff, &mut commands, &stop).await {
                return;
            }
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();

        // From here joins wait for confirmation; the groups that already have sockets are
        // read in the same critical section, so every group is either in this snapshot or
        // joined later with its own SUBSCRIBE queued behind it.
        let groups = {
            let mut subs = shared.subscriptions();
            subs.connected = true;
            shared.registry.groups()
        };
        if let Err(e) = subscribe(&shared, &mut sink, &groups).await {
            tracing::warn!(error = %e, "resubscribing failed");
            lost(&shared);
            if !wait_to_retry(&mut backoff, &mut commands, &stop).await {
                return;
            }
            continue;
        }
        shared.connected.send_replace(true);
        let metrics = shared.registry.metrics();
        if ever_connected {
            metrics.reconnects.fetch_add(1, Ordering::Relaxed);
            metrics
                .resubscriptions
                .fetch_add(groups.len() as u64, Ordering::Relaxed);
            tracing::info!(channels = groups.len(), "Redis subscriber reconnected");
        } else {
            tracing::info!(channels = groups.len(), "Redis subscriber connected");
        }
        ever_connected = true;
        backoff = BACKOFF_FIRST;
        // Anything published while this node was not subscribed is in the store; each
        // socket reads what it missed. (Also right at start, for sockets that joined while
        // Redis was still unreachable.)
        if !groups.is_empty() {
            shared.registry.deliver_all(Arc::new(Event::Resync));
        }

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let reason = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = stream.next() => match message {
                    Some(message) => receive(&shared, &message),
                    None => break "connection closed".to_owned(),
                },
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let mut batch = vec![command];
                    while batch.len() < COMMAND_BATCH {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = apply(&shared, &mut sink, batch).await {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(COMMAND_WAIT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "PING unanswered".to_owned(),
                    }
                }
            }
        };
        tracing::warn!(reason, "lost the Redis subscriber connection; reconnecting");
        lost(&shared);
        if !wait_to_retry(&mut backoff, &mut commands, &stop).await {
            return;
        }
    }
}

fn lost(shared: &Shared) {
    shared.subscriptions().lost();
    shared.connected.send_replace(false);
}

/// Sleeps for the current backoff (with jitter, so nodes do not reconnect in lockstep),
/// dropping subscription changes meanwhile: the next connection subscribes to whatever has
/// local sockets then. False when the node is stopping.
async fn wait_to_retry(
    backoff: &mut Duration,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    stop: &CancellationToken,
) -> bool {
    let jitter = rand::rng().random_range(0.5..1.0);
    let sleep = tokio::time::sleep(backoff.mul_f64(jitter));
    tokio::pin!(sleep);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = &mut sleep => return true,
            command = commands.recv() => if command.is_none() { return false },
        }
    }
}

async fn subscribe(
    shared: &Shared,
    sink: &mut PubSubSink,
    groups: &[String],
) -> Result<(), String> {
    for chunk in groups.chunks(SUBSCRIBE_CHUNK) {
        let channels: Vec<String> = chunk.iter().map(|g| shared.channel(g)).collect();
        match tokio::time::timeout(COMMAND_WAIT, sink.subscribe(&channels)).await {
            Ok(Ok(())) => {
                let mut subs = shared.subscriptions();
                for group in chunk {
                    subs.confirm(group.clone());
                }
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("SUBSCRIBE unanswered".to_owned()),
        }
    }
    Ok(())
}

async fn unsubscribe(
    shared: &Shared,
    sink: &mut PubSubSink,
    groups: &[String],
) -> Result<(), String> {
    if groups.is_empty() {
        return Ok(());
    }
    let channels: Vec<String> = groups.iter().map(|g| shared.channel(g)).collect();
    match tokio::time::timeout(COMMAND_WAIT, sink.unsubscribe(&channels)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("UNSUBSCRIBE unanswered".to_owned()),
    }
}

/// Applies subscription changes in order, one Redis command per run of the same kind.
async fn apply(shared: &Shared, sink: &mut PubSubSink, batch: Vec<Command>) -> Result<(), String> {
    let mut to_subscribe = Vec::new();
    let mut to_unsubscribe = Vec::new();
    for command in batch {
        match command {
            Command::Subscribe(group) => {
                unsubscribe(shared, sink, &std::mem::take(&mut to_unsubscribe)).await?;
                let mut subs = shared.subscriptions();
                if subs.live.contains(&group) {
                    subs.confirm(group);
                } else if !shared.registry.has_group(&group) {
                    // Every socket left before the SUBSCRIBE went out: release any waiter.
                    subs.waiters.remove(&group);
                } else if !to_subscribe.contains(&group) {
                    to_subscribe.push(group);
                }
            }
            Command::Unsubscribe(group) => {
                subscribe(shared, sink, &std::mem::take(&mut to_subscribe)).await?;
                // Decided under the lock a join takes after registering its socket: either
                // the join is visible here and the channel stays, or it comes after and
                // waits for the SUBSCRIBE it queued.
                let mut subs = shared.subscriptions();
                if !shared.registry.has_group(&group) && subs.live.remove(&group) {
                    to_unsubscribe.push(group);
                }
            }
        }
    }
    subscribe(shared, sink, &to_subscribe).await?;
    unsubscribe(shared, sink, &to_unsubscribe).await
}

/// One message from Redis, delivered to the sockets on this node in its group.
fn receive(shared: &Shared, message: &redis::Msg) {
    let Some(group) = message.get_channel_name().strip_prefix(&shared.prefix) else {
        return;
    };
    match wire::decode(Bytes::copy_from_slice(message.get_payload_bytes())) {
        Ok(received) if received.origin == shared.origin => {}
        Ok(received) => shared.registry.deliver(group, Arc::new(received.event)),
        Err(e) => tracing::warn!(error = %e, group, "dropped an event from Redis"),
    }
}
