//! Faults under traffic. Each test runs clients through a few nodes (child processes of the
//! `wirechat` binary, so one can be killed), injects a fault — a node killed or stopped,
//! Redis or PostgreSQL stopped, a client that stops reading — and ends with an audit that
//! compares what each sender saw acknowledged with what every receiver shows and with the
//! `messages` table. Lost and duplicated must both be zero.
//!
//! Clients behave as the page does: a socket that ends reconnects to a live node with the
//! resume protocol (`/ws/chat/?room=<id>&after=<last contiguous seq>`), and a gap in the
//! seqs that does not fill within a second is filled with `Catch up`. Messages are tagged
//! `m:<sender>:<n>;`, so a body names its sender and its place in that sender's order.
//!
//! Run with `-- --nocapture` to see each audit's figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{
    Backend, PATIENCE, TestApp, fresh_database, fresh_prefix, message_ids, seqs, wait_for_metric,
};
use crate::process::{
    Caddy, Node, OwnCluster, OwnRedis, OwnSentinel, Process, SENTINEL_MASTER, SlotMove, free_port,
    start_node,
};

pub(super) const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// How long a gap in the seqs may stay open before the client asks to catch up; the page
/// waits the same second, since two nodes may publish seq 6 before seq 5.
pub(super) const GAP_PATIENCE: Duration = Duration::from_secs(1);
/// Each sender posts at most this often, so a test's traffic is bounded on a small machine.
pub(super) const PACE: Duration = Duration::from_millis(50);

mod actor;
mod audit;
mod chat;
pub(crate) mod postgres;

use actor::*;
use audit::*;
use chat::*;
use postgres::*;

// The faults

/// Three nodes, two senders on each.
async fn three_nodes_six_senders(name: &'static str) -> Chat {
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start(name, database_url, SHARED_REDIS, 3, &[]).await;
    two_senders_on_each_node(&mut chat).await;
    chat
}

/// Signs up six senders, two on each of three nodes.
async fn two_senders_on_each_node(chat: &mut Chat) {
    for (i, user) in ["ann", "bob", "cat", "dan", "eve", "fay"]
        .iter()
        .enumerate()
    {
        let node = chat.nodes[i % 3].addr;
        chat.join(user, node, Role::sender()).await;
    }
}

/// Waits until every node has reconnected its Redis subscriber (no client-visible event:
/// polls their metrics, bounded).
async fn every_node_resubscribed(chat: &Chat) {
    for node in &chat.nodes {
        wait_for_metric(
            node.addr,
            "wirechat_redis_reconnects_total",
            PATIENCE,
            |v| v >= 1.0,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_with_sigkill() {
    let mut chat = three_nodes_six_senders("sigkill").await;
    chat.traffic(100).await;
    let doomed = chat.nodes[0].addr;
    chat.live.remove(doomed);
    chat.nodes[0].process.kill();
    // Its two clients notice the dropped connection and resume on the other nodes.
    chat.reconnects(2).await;
    chat.traffic(100).await;
    let (_, tallies) = chat.finish().await;
    for t in tallies
        .iter()
        .filter(|t| t.name == "ann" || t.name == "dan")
    {
        assert!(!t.closes.is_empty(), "{}: {:?}", t.name, t.closes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stopped_with_sigterm() {
    let mut chat = three_nodes_six_senders("sigterm").await;
    chat.traffic(100).await;
    let stopping = chat.nodes[0].addr;
    chat.live.remove(stopping);
    chat.nodes[0].process.terminate().await;
    chat.reconnects(2).await;
    chat.traffic(100).await;
    let (_, tallies) = chat.finish().await;
    for t in tallies
        .iter()
        .filter(|t| t.name == "ann" || t.name == "dan")
    {
        assert_eq!(t.closes, vec![Some(1012)], "{}: told to reconnect", t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node() {
    let mut chat = three_nodes_six_senders("rolling").await;
    chat.traffic(60).await;
    for i in 0..3 {
        let old = chat.nodes[i].addr;
        chat.live.remove(old);
        chat.nodes[i].process.terminate().await;
        chat.add_node().await;
        chat.traffic(60).await;
    }
    let (_, tallies) = chat.finish().await;
    // Every socket was on a node that stopped, and each was told so.
    every_socket_was_told_to_reconnect(&tallies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_caddy() {
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start("rolling-caddy", database_url, SHARED_REDIS, 2, &[]).await;
    let gateway = chat.behind_caddy().await;
    for user in ["ann", "bob", "cat", "dan"] {
        chat.join(user, gateway, Role::sender()).await;
    }
    chat.traffic(60).await;
    // Each node in turn stops and comes back on its address; clients only know Caddy's.
    for i in 0..2 {
        chat.restart_in_place(i).await;
        chat.traffic(60).await;
    }
    let (_, tallies) = chat.finish().await;
    every_socket_was_told_to_reconnect(&tallies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted() {
    redis_outage("redis", true).await;
}

/// The same outage with clients that never ask to `Catch up`: the nodes' own resync after
/// Redis returns brings every socket up to date. During the outage each socket kept being
/// shown its own node's messages, so the resync must start at the first hole, not after
/// the newest message shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_repaired_by_the_server_alone() {
    redis_outage("redis-no-client-catch-up", false).await;
}

async fn redis_outage(name: &'static str, client_catch_up: bool) {
    let mut redis = OwnRedis::start(free_port()).await;
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start(name, database_url, &redis.url(), 3, &[]).await;
    chat.client_catch_up = client_catch_up;
    two_senders_on_each_node(&mut chat).await;
    chat.traffic(60).await;
    redis.process.terminate().await;
    // Without Redis each node's own clients still hear each other.
    chat.traffic(60).await;
    let port = redis.port;
    redis = OwnRedis::start(port).await;
    // The nodes resubscribe (no client-visible event: poll their metrics, bounded) and
    // their sockets read what they missed from the database.
    every_node_resubscribed(&chat).await;
    chat.traffic(60).await;
    chat.finish().await;
    drop(redis);
}

/// A Redis Cluster of the test's own, three nodes on it with two senders each whose
/// clients never ask to `Catch up` themselves, 60 messages acknowledged, and the room's
/// channel.
async fn chat_on_own_cluster(name: &'static str) -> (OwnCluster, Chat, String) {
    let redis = OwnCluster::start().await;
    let database_url = fresh_database(Backend::Postgres).await;
    let nodes = redis.nodes();
    let mut chat = Chat::start_on(name, database_url, ["--redis-cluster", &nodes], 3, &[]).await;
    chat.client_catch_up = false;
    two_senders_on_each_node(&mut chat).await;
    chat.traffic(60).await;
    let channel = format!("{}room:{}", chat.prefix(), chat.room);
    (redis, chat, channel)
}

/// On a Redis Cluster, the master holding the room's channel dies and its replica takes
/// over: the nodes find the new master, subscribe again and catch their sockets up, with
/// clients that never ask to `Catch up` themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_master_fails_over() {
    let (mut redis, chat, channel) = chat_on_own_cluster("redis-cluster-failover").await;
    redis.fail_over(&channel).await;
    every_node_resubscribed(&chat).await;
    chat.traffic(60).await;
    chat.finish().await;
    drop(redis);
}

/// With Redis Sentinel, the master dies and the sentinels promote its replica: the nodes
/// ask the sentinels again, subscribe on the new master and catch their sockets up, with
/// clients that never ask to `Catch up` themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_master_fails_over() {
    let mut redis = OwnSentinel::start().await;
    // The sentinels take seconds to agree the master is down and promote its replica;
    // meanwhile these senders post more than a catch-up's default 500 messages, past
    // which a page asks to be shown the room afresh, as these clients never do.
    let chat = on_sentinels(
        "redis-sentinel-failover",
        &redis,
        &["--catch-up-limit", "5000"],
    )
    .await;
    chat.traffic(60).await;
    redis.fail_over().await;
    every_node_resubscribed(&chat).await;
    chat.traffic(60).await;
    chat.finish().await;
    drop(redis);
}

/// On a Redis Cluster, the slot of the room's channel moves to another master and back
/// while messages flow, with clients that never ask to `Catch up` themselves. Each move
/// takes the steps `redis-cli --cluster reshard` takes for a slot, with traffic between
/// them: the target imports the slot and the source migrates it (the source still serves
/// its channels), then `CLUSTER SETSLOT <slot> NODE <target>` goes to every master. The
/// first move tells the source first (it drops the slot's subscriptions and redirects to
/// the target, which still redirects back until it is told: publications fail meanwhile);
/// the second tells the target first (it takes the slot over and tells the others, and the
/// source drops the subscriptions at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_slot_moves_under_traffic() {
    let (mut redis, chat, channel) = chat_on_own_cluster("redis-cluster-slot-move").await;
    for (round, source_first) in [(1.0, true), (2.0, false)] {
        let moving = redis.slot_move(&channel).await;
        moving.migrate().await;
        chat.step(&moving, "importing and migrating").await;
        chat.traffic(30).await;
        let (source, target) = (moving.source.0, moving.target.0);
        let order = if source_first {
            [source, target]
        } else {
            [target, source]
        };
        for port in order.into_iter().chain(moving.others.iter().copied()) {
            moving.assign(port).await;
            chat.step(&moving, &format!("SETSLOT NODE on {port}")).await;
            chat.traffic(20).await;
        }
        moving.settled().await;
        assert_eq!(redis.master_of(&channel).await, target);
        // Every node followed the slot: the source dropped its subscription, and it
        // subscribed again on the target (no client-visible event: polls, bounded).
        for node in &chat.nodes {
            wait_for_metric(
                node.addr,
                "wirechat_redis_reconnects_total",
                PATIENCE,
                |v| v >= round,
            )
            .await;
        }
        chat.traffic(60).await;
    }
    chat.finish().await;
    drop(redis);
}

/// With Redis Sentinel, an operator moves the master to its replica while both run
/// (`SENTINEL FAILOVER`): the sentinels close the old master's clients as they make it a
/// replica, and the nodes follow to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_switches_master_under_traffic() {
    let mut redis = OwnSentinel::start().await;
    let chat = on_sentinels("redis-sentinel-switch", &redis, &[]).await;
    chat.traffic(60).await;
    redis.switch().await;
    every_node_resubscribed(&chat).await;
    chat.traffic(60).await;
    chat.finish().await;
    drop(redis);
}

/// With Redis Sentinel, while an operator's switch is under way (the sentinels name the
/// new master, the old one still runs as a master), one node's subscriber connection
/// drops: it moves to the new master alone and misses what the others still publish to
/// the old one, until they move too and, having moved, tell it to catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_node_that_moves_alone_catches_up() {
    let mut redis = OwnSentinel::start().await;
    let chat = on_sentinels("redis-sentinel-alone", &redis, &[]).await;
    chat.traffic(60).await;
    let old = redis.begin_switch().await;
    redis.drop_a_subscriber(old).await;
    chat.traffic(60).await;
    // Quiet when the others move (seconds later): no publication of theirs fails then,
    // so only their move itself can tell the lone node what it missed.
    chat.pause();
    redis.moved_from(old, Some(old)).await;
    every_node_resubscribed(&chat).await;
    chat.traffic(60).await;
    chat.finish().await;
    drop(redis);
}

/// Three nodes on `redis`'s sentinels, two senders on each, whose clients never ask to
/// catch up.
async fn on_sentinels(name: &'static str, redis: &OwnSentinel, extra: &[&str]) -> Chat {
    let database_url = fresh_database(Backend::Postgres).await;
    let sentinels = redis.nodes();
    let mut args = vec!["--redis-sentinel-master", SENTINEL_MASTER];
    args.extend(extra);
    let mut chat = Chat::start_on(
        name,
        database_url,
        ["--redis-sentinel", &sentinels],
        3,
        &args,
    )
    .await;
    chat.client_catch_up = false;
    two_senders_on_each_node(&mut chat).await;
    chat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted() {
    let pg = OwnPostgres::start().await;
    let database_url = pg.fresh_database().await;
    let mut chat = Chat::start("postgres", database_url, SHARED_REDIS, 2, &[]).await;
    for (i, user) in ["ann", "bob", "cat", "dan"].iter().enumerate() {
        let node = chat.nodes[i % 2].addr;
        chat.join(user, node, Role::sender()).await;
    }
    chat.traffic(60).await;
    pg.stop().await;
    // Every sender's next post is refused with an error fragment, never echoed.
    let acked_before = chat.acked();
    Progress::wait(&chat.progress.refused, "refused posts", 4).await;
    pg.restart().await;
    chat.traffic(60).await;
    let (audit, tallies) = chat.finish().await;
    assert!(audit.refused >= 4, "{audit}");
    assert_eq!(
        audit.refused_stored, 0,
        "a refused post was stored: {audit}"
    );
    assert!(tallies.iter().all(|t| !t.refused.is_empty()));
    assert!(acked_before > 0);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_catches_up() {
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start(
        "slow-consumer",
        database_url,
        SHARED_REDIS,
        2,
        &["--outbound-queue", "8"],
    )
    .await;
    let busy = |sends| Role {
        sends,
        padding: 3500,
        ..Role::default()
    };
    for (i, user) in ["ann", "bob", "cat"].iter().enumerate() {
        let node = chat.nodes[i % 2].addr;
        chat.join(user, node, busy(true)).await;
    }
    let (first, second) = (chat.nodes[0].addr, chat.nodes[1].addr);
    chat.join("reader", second, busy(false)).await;
    let (stall, stalled) = watch::channel(false);
    chat.join(
        "sloth",
        first,
        Role {
            small_buffer: true,
            stall: Some(stalled),
            ..Role::default()
        },
    )
    .await;
    chat.traffic(20).await;
    stall.send_replace(true);
    // The sloth's node cuts it off once its queue is full (no client-visible event until
    // it reads again, so this polls the node, bounded).
    wait_for_metric(
        chat.nodes[0].addr,
        "wirechat_slow_consumer_closes_total",
        PATIENCE * 2,
        |v| v >= 1.0,
    )
    .await;
    // The room carries on while the sloth still reads nothing.
    chat.traffic(100).await;
    stall.send_replace(false);
    chat.reconnects(1).await;
    chat.traffic(20).await;
    let (_, tallies) = chat.finish().await;
    let sloth = tallies.iter().find(|t| t.name == "sloth").expect("sloth");
    assert_eq!(sloth.closes.len(), 1, "{:?}", sloth.closes);
    assert!(
        matches!(sloth.closes[0], Some(1013) | None),
        "{:?}",
        sloth.closes
    );
}

/// Every client's socket was closed at least once, and always with 1012 ("restarting,
/// reconnect"), never dropped silently.
fn every_socket_was_told_to_reconnect(tallies: &[Tally]) {
    for t in tallies {
        assert!(!t.closes.is_empty(), "{}", t.name);
        assert!(
            t.closes.iter().all(|c| *c == Some(1012)),
            "{}: {:?}",
            t.name,
            t.closes
        );
    }
}
