//! The Redis channel layer: nodes share events over Redis pub/sub, on one server or
//! sharded over a Redis Cluster (see `connection`).
//!
//! Each group is one Redis channel, `<prefix><group>` (the group is an internal id, never
//! client text). An event is delivered to this node's sockets at once and published once;
//! every node holds a single subscriber connection (on a cluster, one per cluster node),
//! subscribed to exactly the groups that have a socket on that node, and fans each message
//! out in-process. Redis work per message is therefore O(nodes), never O(members).
//!
//! The subscriber runs in a loop that reconnects with backoff when Redis goes away (or a
//! cluster shard fails over, or moves a slot), subscribes again to every group with a
//! local socket, and then tells every local socket to resync from the store, since events
//! published during the gap are lost to this node.

mod connection;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{ChannelLayer, Event, PublishError, Registry, SocketId, Subscriber, wire};
use connection::{COMMAND_WAIT, Incoming, Subscriber as Connection};
pub use connection::{Commands, Servers};

/// Longest wait for Redis to confirm a SUBSCRIBE before a join gives up waiting (the socket
/// is registered regardless, and a resync follows if the connection was lost).
const JOIN_WAIT: Duration = Duration::from_secs(3);
/// How often an idle subscriber connection is checked (PING; on a cluster, every master's
/// `CLUSTER INFO`), so a silently dropped connection or a failing shard is noticed even
/// when no messages flow.
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long after reconnecting to a Redis Cluster a node subscribes once more.
const SETTLE: Duration = Duration::from_secs(3);
/// Why a node subscribes once more to a settled cluster.
const SETTLED: &str = "settled";
/// Channels per SUBSCRIBE when resubscribing, so one command never blocks Redis for long.
const SUBSCRIBE_CHUNK: usize = 500;
/// Subscription changes handled together, coalesced into one command per run of the same
/// kind.
const COMMAND_BATCH: usize = 256;

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
    commands_out: Commands,
    commands: mpsc::UnboundedSender<Command>,
    /// Publications for the publisher, in order.
    publications: mpsc::Sender<Publication>,
}

impl RedisLayer {
    /// Starts the subscriber for `url`; it runs until `stop` is cancelled. Channel names
    /// start with `prefix`, so several chats (or tests) can share one Redis.
    pub fn start(
        servers: &Servers,
        commands_out: Commands,
        prefix: &str,
        origin: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<RedisLayer> {
        if servers.is_cluster() && prefix.contains(['{', '}']) {
            // A hash tag in the prefix would put every channel in one slot, on one shard.
            anyhow::bail!("with a Redis Cluster, WIRECHAT_REDIS_PREFIX may not hold '{{' or '}}'");
        }
        if servers.is_cluster() && prefix.is_empty() {
            // Presence's keys share the hash tag `{<prefix>}`, which Redis ignores empty.
            anyhow::bail!("with a Redis Cluster, WIRECHAT_REDIS_PREFIX may not be empty");
        }
        let (commands, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            registry: Registry::default(),
            prefix: prefix.to_owned(),
            origin: origin.to_owned(),
            subscriptions: Mutex::default(),
            connected: watch::Sender::new(false),
        });
        let (publications, queue) = mpsc::channel(PUBLICATION_QUEUE);
        tokio::spawn(subscriber(
            shared.clone(),
            servers.clone(),
            publications.clone(),
            inbox,
            stop,
        ));
        tokio::spawn(publisher(commands_out.clone(), origin.to_owned(), queue));
        Ok(RedisLayer {
            shared,
            commands_out,
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

/// How often a node whose publications failed tries again to tell the other nodes.
const UNSENT_RETRY: Duration = Duration::from_millis(250);

/// Sends this node's publications to Redis in the order they were queued: whatever has
/// queued up goes in one pipeline (one per hash slot on a cluster), and the next only once
/// it is answered. One connection at a time keeps a room's events in order on every node
/// (over a pool of connections, two PUBLISHes in flight at once can overtake each other),
/// and a pipeline costs Redis and this node one round trip for many events.
///
/// A failed publication's event is in the store but may have reached no other node, and
/// those nodes may not have lost their own connections (a cluster shard failing over
/// fails this node's publications while the others have already moved to the new master).
/// So its channel is remembered, and as soon as Redis answers again a resync goes out on
/// it, ahead of anything newer: every node catches that group's sockets up from the
/// store.
async fn publisher(commands: Commands, origin: String, mut queue: mpsc::Receiver<Publication>) {
    let mut batch = Vec::with_capacity(PUBLICATION_BATCH);
    let mut unsent: BTreeSet<String> = BTreeSet::new();
    let resync = wire::encode(&origin, &Event::Resync).unwrap_or_default();
    loop {
        let received = if unsent.is_empty() {
            queue.recv_many(&mut batch, PUBLICATION_BATCH).await
        } else {
            tokio::time::timeout(UNSENT_RETRY, queue.recv_many(&mut batch, PUBLICATION_BATCH))
                .await
                .unwrap_or(usize::MAX)
        };
        if received == 0 {
            return;
        }
        let markers: Vec<String> = unsent.iter().cloned().collect();
        let items: Vec<(&str, &[u8])> = markers
            .iter()
            .map(|channel| (channel.as_str(), resync.as_slice()))
            .chain(
                batch
                    .iter()
                    .map(|p| (p.channel.as_str(), p.payload.as_slice())),
            )
            .collect();
        let sent = commands.publish(&items).await;
        drop(items);
        let (marked, published) = sent.split_at(markers.len());
        for (channel, sent) in markers.iter().zip(marked) {
            if sent.is_ok() {
                unsent.remove(channel);
            }
        }
        let mut failure = None;
        for (p, sent) in batch.drain(..).zip(published) {
            if let Err(e) = sent {
                unsent.insert(p.channel);
                failure = Some(e.clone());
            }
            let _ = p.done.send(sent.clone());
        }
        if let Some(failure) = failure
            && published.iter().all(Result::is_err)
        {
            // Redis is away: what queued meanwhile fails at once rather than a wait for a
            // connection each.
            while let Ok(p) = queue.try_recv() {
                unsent.insert(p.channel);
                let _ = p.done.send(Err(failure.clone()));
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
            let ping = self.commands_out.ping();
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
///
/// A connection to a cluster that lost part of it (a master died) stands while a new one
/// is made: it still brings the events of the shards it reaches, so rooms there keep
/// crossing nodes until the cluster is whole again and a new connection has subscribed
/// to everything (only the failed shard's rooms reach just this node's sockets
/// meanwhile). A new connection that could not subscribe to everything is dropped and the
/// standing one kept; one that did replaces it, and the resync follows. While the new
/// one subscribes, an event can come over both: the socket's view shows a message once
/// whatever way it comes (a room not on screen may count it twice among its unread).
async fn subscriber(
    shared: Arc<Shared>,
    servers: Servers,
    publications: mpsc::Sender<Publication>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    // With Sentinel, the master this node last subscribed on.
    let mut subscribed_on: Option<String> = None;
    let mut ever_connected = false;
    // Whether the connection being made follows a lost one (not a settled cluster's).
    let mut after_loss = false;
    let mut standing: Option<Connection> = None;
    loop {
        let connection = tokio::select! {
            _ = stop.cancelled() => return,
            result = meanwhile(&shared, &mut standing, servers.subscriber()) => result
                .inspect_err(|e| tracing::warn!(error = %e, "cannot connect the Redis subscriber"))
                .ok(),
        };
        let Some(mut connection) = connection else {
            after_loss = ever_connected;
            if !wait_to_retry(&shared, &mut standing, &mut backoff, &mut commands, &stop).await {
                return;
            }
            continue;
        };

        // From here joins wait for confirmation; the groups that already have sockets are
        // read in the same critical section, so every group is either in this snapshot or
        // joined later with its own SUBSCRIBE queued behind it.
        let groups = {
            let mut subs = shared.subscriptions();
            subs.connected = true;
            shared.registry.groups()
        };
        // Checked again once subscribed: a cluster that changed meanwhile (a failover)
        // may have dropped some of the new subscriptions.
        let subscribing = async {
            subscribe(&shared, &mut connection, &groups).await?;
            tokio::time::timeout(COMMAND_WAIT, connection.ping())
                .await
                .unwrap_or_else(|_| Err("PING unanswered".to_owned()))
        };
        let subscribed = meanwhile(&shared, &mut standing, subscribing).await;
        if let Err(e) = subscribed {
            tracing::warn!(error = %e, "resubscribing failed");
            after_loss = ever_connected;
            lost(&shared);
            if !wait_to_retry(&shared, &mut standing, &mut backoff, &mut commands, &stop).await {
                return;
            }
            continue;
        }
        drop(standing.take());
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
        // A node that reached the new master before this one has missed what this node
        // published to the old one meanwhile, and no failure told anyone: tell it now.
        let master = servers.master();
        if subscribed_on.is_some() && master != subscribed_on {
            resync_everywhere(&shared, &publications, &groups).await;
        }
        subscribed_on = master;

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        // A cluster that has just changed (a failover) can still drop subscriptions made
        // in its first moments without a word; once it has settled, subscribe once more.
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        let settling = servers.is_cluster() && after_loss;
        let reason = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut settle, if settling => {
                    break SETTLED.to_owned();
                }
                incoming = connection.next() => match incoming {
                    Incoming::Message { channel, payload } => receive(&shared, &channel, payload),
                    Incoming::Nothing => {}
                    Incoming::Lost(reason) => break reason,
                    Incoming::Closed => break "connection closed".to_owned(),
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
                    if let Err(e) = apply(&shared, &mut connection, batch).await {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(COMMAND_WAIT, connection.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break e,
                        Err(_) => break "PING unanswered".to_owned(),
                    }
                }
            }
        };
        if reason == SETTLED {
            tracing::info!("the Redis Cluster settled; subscribing once more");
        } else {
            tracing::warn!(reason, "lost the Redis subscriber connection; reconnecting");
        }
        after_loss = reason != SETTLED;
        lost(&shared);
        standing = servers.is_cluster().then_some(connection);
        if !wait_to_retry(&shared, &mut standing, &mut backoff, &mut commands, &stop).await {
            return;
        }
    }
}

/// Has the publisher send a resync on each of `groups`' channels, in order with this
/// node's other publications and, like any of them, again once Redis answers if it
/// fails: every node that follows one catches its sockets up from the store.
async fn resync_everywhere(
    shared: &Shared,
    publications: &mpsc::Sender<Publication>,
    groups: &[String],
) {
    let resync = wire::encode(&shared.origin, &Event::Resync).unwrap_or_default();
    for group in groups {
        // Nobody waits for the answer: a failure is the publisher's to repair.
        let (done, _) = oneshot::channel();
        let publication = Publication {
            channel: shared.channel(group),
            payload: resync.clone(),
            done,
        };
        if publications.send(publication).await.is_err() {
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
    shared: &Shared,
    standing: &mut Option<Connection>,
    backoff: &mut Duration,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    stop: &CancellationToken,
) -> bool {
    let jitter = rand::rng().random_range(0.5..1.0);
    let sleep = tokio::time::sleep(backoff.mul_f64(jitter));
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    let waiting = async {
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = &mut sleep => return true,
                command = commands.recv() => if command.is_none() { return false },
            }
        }
    };
    meanwhile(shared, standing, waiting).await
}

/// Waits for `until`, meanwhile passing on the events `standing` still brings; it is
/// dropped once closed. Its losses change nothing: the connection that replaces it
/// resyncs every socket.
async fn meanwhile<T>(
    shared: &Shared,
    standing: &mut Option<Connection>,
    until: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(until);
    loop {
        let Some(connection) = standing.as_mut() else {
            return until.await;
        };
        tokio::select! {
            done = &mut until => return done,
            incoming = connection.next() => match incoming {
                Incoming::Message { channel, payload } => receive(shared, &channel, payload),
                Incoming::Nothing | Incoming::Lost(_) => {}
                Incoming::Closed => *standing = None,
            },
        }
    }
}

async fn subscribe(
    shared: &Shared,
    connection: &mut Connection,
    groups: &[String],
) -> Result<(), String> {
    for chunk in groups.chunks(SUBSCRIBE_CHUNK) {
        let channels: Vec<String> = chunk.iter().map(|g| shared.channel(g)).collect();
        match tokio::time::timeout(COMMAND_WAIT, connection.subscribe(&channels)).await {
            Ok(Ok(())) => {
                let mut subs = shared.subscriptions();
                for group in chunk {
                    // A page of its room read before now may lack what others published
                    // meanwhile, which this node did not receive.
                    shared.registry.restamp(group);
                    subs.confirm(group.clone());
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("SUBSCRIBE unanswered".to_owned()),
        }
    }
    Ok(())
}

async fn unsubscribe(
    shared: &Shared,
    connection: &mut Connection,
    groups: &[String],
) -> Result<(), String> {
    if groups.is_empty() {
        return Ok(());
    }
    let channels: Vec<String> = groups.iter().map(|g| shared.channel(g)).collect();
    match tokio::time::timeout(COMMAND_WAIT, connection.unsubscribe(&channels)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("UNSUBSCRIBE unanswered".to_owned()),
    }
}

/// Applies subscription changes in order, one Redis command per run of the same kind.
async fn apply(
    shared: &Shared,
    connection: &mut Connection,
    batch: Vec<Command>,
) -> Result<(), String> {
    let mut to_subscribe = Vec::new();
    let mut to_unsubscribe = Vec::new();
    for command in batch {
        match command {
            Command::Subscribe(group) => {
                unsubscribe(shared, connection, &std::mem::take(&mut to_unsubscribe)).await?;
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
                subscribe(shared, connection, &std::mem::take(&mut to_subscribe)).await?;
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
    subscribe(shared, connection, &to_subscribe).await?;
    unsubscribe(shared, connection, &to_unsubscribe).await
}

/// One message from Redis, delivered to the sockets on this node in its group.
fn receive(shared: &Shared, channel: &str, payload: Bytes) {
    let Some(group) = channel.strip_prefix(&shared.prefix) else {
        return;
    };
    match wire::decode(payload) {
        Ok(received) if received.origin == shared.origin => {}
        Ok(received) => shared.registry.deliver(group, Arc::new(received.event)),
        Err(e) => tracing::warn!(error = %e, group, "dropped an event from Redis"),
    }
}
