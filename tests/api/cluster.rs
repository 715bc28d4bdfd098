//! Several nodes as one chat: nodes share a fresh PostgreSQL database and Redis, each test
//! under its own key prefix (or its own Redis server, when the test stops Redis). Nodes run
//! in this process, or as child processes where a test kills one with SIGKILL; Caddy runs
//! in front of them for the end-to-end tests.

use std::collections::BTreeSet;
use std::time::Duration;

use deadpool_redis::redis;

use crate::helpers::{
    Backend, Frame, ListedSeen, PATIENCE, Received, TestApp, attr, follow, fresh_database,
    fresh_prefix, message_ids, metric, seqs, wait_for_metric,
};
use crate::process::{Caddy, OwnRedis, Process, free_port, start_node};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// Presence settings short enough that a dead node's users lapse within a test.
const SHORT_PRESENCE: [&str; 4] = [
    "--presence-ttl-ms",
    "3000",
    "--presence-heartbeat-ms",
    "300",
];

/// One chat's shared settings: database, Redis and key prefix.
struct Cluster {
    database_url: String,
    redis_url: String,
    prefix: String,
    args: Vec<String>,
}

impl Cluster {
    async fn new(redis_url: &str, extra: &[&str]) -> Cluster {
        let database_url = fresh_database(Backend::Postgres).await;
        let prefix = fresh_prefix();
        let mut args = vec![
            "--redis-url".to_owned(),
            redis_url.to_owned(),
            "--redis-prefix".to_owned(),
            prefix.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Cluster {
            database_url,
            redis_url: redis_url.to_owned(),
            prefix,
            args,
        }
    }

    /// A node in this process.
    async fn node(&self) -> TestApp {
        TestApp::start(self.database_url.clone(), self.args.clone()).await
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis_at(&self.redis_url).await
    }

    /// The groups some node of this chat is subscribed to, with the prefix taken off.
    async fn channels(&self) -> BTreeSet<String> {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut self.redis().await)
            .await
            .expect("PUBSUB CHANNELS");
        channels
            .into_iter()
            .map(|c| c[self.prefix.len()..].to_owned())
            .collect()
    }

    /// How many nodes are subscribed to `group`.
    async fn subscribers(&self, group: &str) -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{}{group}", self.prefix))
            .query_async(&mut self.redis().await)
            .await
            .expect("PUBSUB NUMSUB");
        count
    }

    /// Waits until the subscriptions satisfy `wanted`. Subscription changes after a socket
    /// closes have no event a client can see, so this polls Redis, bounded by PATIENCE.
    async fn wait_for_channels(&self, what: &str, wanted: impl Fn(&BTreeSet<String>) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let channels = self.channels().await;
            if wanted(&channels) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: channels are {channels:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A node in a child process, so a test can kill it without any cleanup.
async fn child_node(cluster: &Cluster) -> (Process, TestApp) {
    let node = start_node(
        "127.0.0.1:0",
        &cluster.database_url,
        &cluster.args,
        "wirechat node",
    )
    .await;
    (node.process, TestApp::at(node.addr, &cluster.database_url))
}

/// The articles in a messages frame: (id, seq, html) each.
fn articles(frame: &Frame) -> Vec<(String, i64, String)> {
    if frame.selector != "#messages-list" || frame.swap != "beforeend" {
        return Vec::new();
    }
    frame
        .html
        .split("<article")
        .skip(1)
        .filter_map(|chunk| {
            let id = message_ids(&format!("<article{chunk}"))
                .into_iter()
                .next()?;
            let seq = seqs(chunk).into_iter().next()?;
            Some((id, seq, chunk.to_owned()))
        })
        .collect()
}

/// Reads messages until every text in `expected` has arrived; returns them in arrival
/// order as (text, id, seq), failing on any message id seen twice.
pub(crate) async fn receive_all(
    client: &mut crate::helpers::Client,
    expected: &[String],
) -> Vec<(String, String, i64)> {
    let mut got: Vec<(String, String, i64)> = Vec::new();
    while got.len() < expected.len() {
        let frame = client.next_frame().await;
        for (id, seq, html) in articles(&frame) {
            let Some(text) = expected.iter().find(|t| html.contains(t.as_str())) else {
                continue;
            };
            assert!(
                got.iter().all(|(_, seen, _)| *seen != id),
                "{}: {text} delivered twice",
                client.username
            );
            got.push((text.clone(), id, seq));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_cross_nodes_once_and_in_order() {
    let cluster = Cluster::new(SHARED_REDIS, &["--rate-burst", "1000"]).await;
    let (n1, n2) = (cluster.node().await, cluster.node().await);
    let (ann, bob) = (n1.signup("ann").await, n2.signup("bob").await);
    let mut a = n1.connect(&ann).await;
    let mut b = n2.connect(&bob).await;
    a.enter_group("python").await;
    b.enter_group("python").await;
    assert_eq!(a.room_id, b.room_id);

    const EACH: usize = 25;
    let from_ann: Vec<String> = (0..EACH).map(|i| format!("ann-says-{i:03}")).collect();
    let from_bob: Vec<String> = (0..EACH).map(|i| format!("bob-says-{i:03}")).collect();
    for (x, y) in from_ann.iter().zip(&from_bob) {
        a.say(x).await;
        b.say(y).await;
    }
    let everything: Vec<String> = from_ann.iter().chain(&from_bob).cloned().collect();
    for client in [&mut a, &mut b] {
        let got = receive_all(client, &everything).await;
        // Each sender's messages arrive in the order sent, with rising seqs.
        for sent in [&from_ann, &from_bob] {
            let mine: Vec<&(String, String, i64)> =
                got.iter().filter(|(t, _, _)| sent.contains(t)).collect();
            let texts: Vec<&String> = mine.iter().map(|(t, _, _)| t).collect();
            assert_eq!(
                texts,
                sent.iter().collect::<Vec<_>>(),
                "{}",
                client.username
            );
            assert!(
                mine.windows(2).all(|w| w[0].2 < w[1].2),
                "{}",
                client.username
            );
        }
        // And nothing comes twice later.
        let after = client.frames_until_own_marker().await;
        assert!(
            after.iter().all(|f| articles(f).is_empty()
                || !everything.iter().any(|t| f.html.contains(t.as_str()))),
            "{}: repeated {after:?}",
            client.username
        );
    }
}

/// An edit and a deletion made on one node replace the article on the other, once, and a
/// socket there that missed them gets them when it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reactions_and_deletions_cross_nodes_once() {
    let cluster = Cluster::new(SHARED_REDIS, &[]).await;
    let (n1, n2) = (cluster.node().await, cluster.node().await);
    let (ann, bob) = (n1.signup("ann").await, n2.signup("bob").await);
    let mut a = n1.connect(&ann).await;
    let mut b = n2.connect(&bob).await;
    a.say("first words").await;
    let posted = a.wait_for_message("first words").await;
    let id = message_ids(&posted.html).pop().expect("an article");
    let id = id.strip_prefix("msg-").unwrap_or(&id).to_owned();
    let seen = b.wait_for_message("first words").await;
    let after: i64 = attr(&seen.html, "data-seq").unwrap().parse().unwrap();
    let selector = format!("#msg-{id}");

    a.act(
        "Edit message",
        serde_json::json!({ "messageId": id, "message": "better words" }),
    )
    .await;
    let edited = b.wait_for(|f| f.selector == selector).await;
    assert!(edited.html.contains("better words") && edited.html.contains("(edited)"));
    // Bob's reaction reaches Ann's node.
    b.act(
        "React",
        serde_json::json!({ "messageId": id, "emoji": "👍" }),
    )
    .await;
    let reacted = a
        .wait_for(|f| f.selector == selector && f.html.contains("data-emoji"))
        .await;
    assert!(
        reacted.html.contains("bob reacted with 👍"),
        "{}",
        reacted.html
    );
    b.wait_for(|f| f.selector == selector && f.html.contains("data-emoji"))
        .await;
    // So does his reply, quoting it.
    b.act(
        "New message",
        serde_json::json!({ "message": "agreed", "replyTo": id }),
    )
    .await;
    let replied = a.wait_for_message("agreed").await;
    assert!(
        replied.html.contains(&format!("data-reply-to=\"{id}\""))
            && replied.html.contains("better words"),
        "{}",
        replied.html
    );
    // Once: nothing more of either before Bob's own next message.
    let later = b.frames_until_own_marker().await;
    assert!(later.iter().all(|f| f.selector != selector), "{later:?}");

    // Bob is away while Ann deletes it; back on the other node, he gets the deletion.
    let room = b.room_id.clone();
    b.close().await;
    a.act("Delete message", serde_json::json!({ "messageId": id }))
        .await;
    a.wait_for(|f| f.selector == selector && f.html.contains("deleted"))
        .await;
    let mut b = n1
        .connect_at(&bob, &format!("/ws/chat/?room={room}&after={after}"))
        .await;
    let (last, skipped) = b
        .wait_for_with_skipped(|f| f.html.contains("This message was deleted."))
        .await;
    assert!(!last.html.contains("first words") && !last.html.contains("better words"));
    assert!(skipped.iter().all(|f| !f.html.contains("better words")));
}

/// A node shares the page it read for one entering socket with the next, while nothing in
/// the room changes; a message from another node in between is shown to the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_entered_again_shows_what_crossed_from_another_node_since() {
    let cluster = Cluster::new(SHARED_REDIS, &[]).await;
    let (n1, n2) = (cluster.node().await, cluster.node().await);
    let (ann, bob) = (n1.signup("ann").await, n2.signup("bob").await);
    let mut a = n1.connect(&ann).await;
    let mut b = n2.connect(&bob).await;
    b.say("from the other node").await;
    a.wait_for_message("from the other node").await;
    let first = n1.connect(&bob).await.wait_for_history().await;
    assert!(first.contains("from the other node"), "{first}");

    b.say("and once more").await;
    a.wait_for_message("and once more").await;
    let again = n1.connect(&bob).await.wait_for_history().await;
    assert!(again.contains("and once more"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rooms_cross_nodes_and_stay_private() {
    let cluster = Cluster::new(SHARED_REDIS, &[]).await;
    let (n1, n2) = (cluster.node().await, cluster.node().await);
    let (ann, bob, eve) = (
        n1.signup("ann").await,
        n1.signup("bob").await,
        n1.signup("eve").await,
    );
    let mut a = n1.connect(&ann).await;
    let mut b = n2.connect(&bob).await;
    // Eve shares bob's node, so the conversation's events reach the node she is on.
    let mut e = n2.connect(&eve).await;

    a.enter_direct("bob").await;
    let added = b.wait_for(|f| f.selector == "#directs").await;
    assert!(added.html.contains("ann"), "bob learns of it on his node");
    b.enter_direct("ann").await;
    assert_eq!(a.room_id, b.room_id);
    let direct = format!("room:{}", a.room_id);
    assert_eq!(
        cluster.subscribers(&direct).await,
        2,
        "both nodes follow it"
    );

    a.say("secret for bob").await;
    b.wait_for_message("secret for bob").await;
    a.wait_for_message("secret for bob").await;
    b.say("secret for ann").await;
    a.wait_for_message("secret for ann").await;

    let seen_by_eve = e.frames_until_own_marker().await;
    assert!(
        seen_by_eve.iter().all(|f| !f.html.contains("secret")),
        "{seen_by_eve:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_local_members() {
    let cluster = Cluster::new(SHARED_REDIS, &[]).await;
    let (n1, n2) = (cluster.node().await, cluster.node().await);
    assert!(
        cluster.channels().await.is_empty(),
        "no sockets, no channels"
    );
    let (ann, bob) = (n1.signup("ann").await, n1.signup("bob").await);

    let a = n1.connect(&ann).await;
    let hi = format!("room:{}", a.room_id);
    // Ann's node follows the lobby, her own channel and every room she is a member of.
    let only_ann = cluster.channels().await;
    let users = only_ann.iter().filter(|c| c.starts_with("user:")).count();
    assert_eq!(users, 1, "{only_ann:?}");
    assert!(
        only_ann.contains("lobby") && only_ann.contains(&hi),
        "{only_ann:?}"
    );
    assert!(
        only_ann
            .iter()
            .all(|c| c == "lobby" || c.starts_with("user:") || c.starts_with("room:"))
    );
    assert_eq!(cluster.subscribers(&hi).await, 1);

    let mut b = n2.connect(&bob).await;
    assert_eq!(cluster.subscribers(&hi).await, 2, "bob's node joins #hi");
    assert_eq!(cluster.subscribers("lobby").await, 2);
    b.enter_group("only-bob-here").await;
    let new_group = format!("room:{}", b.room_id);
    assert_eq!(cluster.subscribers(&new_group).await, 1, "only bob's node");
    assert_eq!(cluster.channels().await.len(), only_ann.len() + 2);

    // One node's last socket leaving ends that node's subscriptions, and only those.
    b.close().await;
    cluster
        .wait_for_channels("after bob left", |c| *c == only_ann)
        .await;
    assert_eq!(cluster.subscribers(&hi).await, 1);
    assert_eq!(cluster.subscribers("lobby").await, 1);

    a.close().await;
    cluster
        .wait_for_channels("after everyone left", BTreeSet::is_empty)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_killed_node_lapses() {
    let cluster = Cluster::new(SHARED_REDIS, &SHORT_PRESENCE).await;
    let n1 = cluster.node().await;
    let (mut doomed, n2) = child_node(&cluster).await;
    let (ann, bob) = (n1.signup("ann").await, n1.signup("bob").await);
    let mut a = n1.connect(&ann).await;

    let _bob_remote = n2.connect(&bob).await;
    let online = a
        .wait_for(|f| f.selector == "#people" && f.html.contains("bob"))
        .await;
    let bob_id = attr(&online.html, "id")
        .expect("person id")
        .replace("person-", "");
    a.wait_for(|f| f.selector == "#room-members" && f.html.contains("bob"))
        .await;

    // A second tab, on the other node: still one user, so nothing is announced, and
    // closing it leaves bob online through the first.
    let bob_local = n1.connect(&bob).await;
    bob_local.close().await;
    let frames = a.frames_until_own_marker().await;
    assert!(
        frames
            .iter()
            .all(|f| !(f.selector == "#people" && f.html.contains("bob"))
                && f.selector != format!("#person-{bob_id}")
                && f.selector != format!("#member-{bob_id}")),
        "{frames:?}"
    );

    // The node dies without a word; once bob's entries lapse, the surviving node says so.
    doomed.kill();
    let mut gone = BTreeSet::new();
    while gone.len() < 2 {
        let f = a
            .wait_for(|f| {
                f.selector == format!("#person-{bob_id}")
                    || f.selector == format!("#member-{bob_id}")
            })
            .await;
        assert_eq!(f.swap, "remove");
        gone.insert(f.selector);
    }
    // Someone arriving now does not see him in the room.
    let carl = n1.signup("carl").await;
    let mut c = n1.connect(&carl).await;
    let members = c.wait_for(|f| f.selector == "#room-members").await;
    assert!(
        members.html.contains("ann") && !members.html.contains("bob"),
        "{}",
        members.html
    );
}

/// The ids of the connections in pub/sub mode on a Redis server.
async fn pubsub_clients(redis: &mut redis::aio::MultiplexedConnection) -> BTreeSet<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(redis)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|line| line.split(' ').find_map(|kv| kv.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_the_subscriber_connection_is_killed() {
    let own = OwnRedis::start(free_port()).await;
    let cluster = Cluster::new(&own.url(), &[]).await;
    let mut admin = cluster.redis().await;
    let n1 = cluster.node().await;
    let (ann, bob) = (n1.signup("ann").await, n1.signup("bob").await);
    let mut a = n1.connect(&ann).await;
    let before = pubsub_clients(&mut admin).await;
    let n2 = cluster.node().await;
    let mut b = n2.connect(&bob).await;
    let added: Vec<String> = pubsub_clients(&mut admin)
        .await
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(
        added.len(),
        1,
        "one subscriber connection per node: {added:?}"
    );

    a.say("before the kill").await;
    b.wait_for_message("before the kill").await;

    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&added[0])
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    // Sent while bob's node is resubscribing: it arrives live or through the resync,
    // but once.
    a.say("right after the kill").await;
    b.wait_for_message("right after the kill").await;
    wait_for_metric(n2.addr, "wirechat_redis_reconnects_total", PATIENCE, |v| {
        v >= 1.0
    })
    .await;
    wait_for_metric(
        n2.addr,
        "wirechat_redis_resubscriptions_total",
        PATIENCE,
        |v| v >= 3.0,
    )
    .await;

    a.say("after the reconnect").await;
    let (_, skipped) = b
        .wait_for_with_skipped(|f| f.html.contains("after the reconnect"))
        .await;
    assert!(
        skipped
            .iter()
            .all(|f| !f.html.contains("right after the kill")),
        "{skipped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_and_the_node_keeps_chatting_meanwhile() {
    let mut own = OwnRedis::start(free_port()).await;
    let cluster = Cluster::new(&own.url(), &[]).await;
    let (n1, n2) = (cluster.node().await, cluster.node().await);
    let (ann, bob, carl) = (
        n1.signup("ann").await,
        n1.signup("bob").await,
        n1.signup("carl").await,
    );
    let mut a = n1.connect(&ann).await;
    let mut c = n1.connect(&carl).await;
    let mut b = n2.connect(&bob).await;
    a.say("before the outage").await;
    b.wait_for_message("before the outage").await;
    c.wait_for_message("before the outage").await;

    own.crash().await;
    // Redis is gone: people on the same node still talk.
    a.say("during the outage").await;
    c.wait_for_message("during the outage").await;
    a.wait_for_message("during the outage").await;
    // Local delivery comes before the PUBLISH, so the failure is counted a moment later.
    wait_for_metric(n1.addr, "wirechat_publish_failures_total", PATIENCE, |v| {
        v >= 1.0
    })
    .await;

    own.restart().await;
    // Bob's node resubscribes and his socket reads what it missed from the database.
    let caught_up = b.wait_for_message("during the outage").await;
    assert_eq!(articles(&caught_up).len(), 1, "{}", caught_up.html);
    wait_for_metric(n1.addr, "wirechat_redis_reconnects_total", PATIENCE, |v| {
        v >= 1.0
    })
    .await;

    a.say("after the outage").await;
    for client in [&mut a, &mut b, &mut c] {
        let (_, skipped) = client
            .wait_for_with_skipped(|f| f.html.contains("after the outage"))
            .await;
        assert!(
            skipped
                .iter()
                .all(|f| !f.html.contains("during the outage")),
            "{}: {skipped:?}",
            client.username
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_caddy_clients_spread_chat_and_fail_over() {
    let cluster = Cluster::new(SHARED_REDIS, &[]).await;
    let mut nodes = vec![cluster.node().await, cluster.node().await];
    let caddy = Caddy::start(&[nodes[0].addr, nodes[1].addr]).await;
    let gateway = TestApp::at(caddy.addr, &cluster.database_url);
    let (ann, bob) = (gateway.signup("ann").await, gateway.signup("bob").await);

    let mut a = gateway.connect(&ann).await;
    let mut on_ann_node = Vec::new();
    for node in &nodes {
        on_ann_node.push(metric(node.addr, "wirechat_open_sockets").await == 1.0);
    }
    let ann_node = on_ann_node
        .iter()
        .position(|&yes| yes)
        .expect("ann's socket is on a node");
    let mut b = gateway.connect(&bob).await;
    // least_conn sends the second socket to the idle node.
    assert_eq!(
        metric(nodes[1 - ann_node].addr, "wirechat_open_sockets").await,
        1.0
    );
    assert_eq!(
        metric(nodes[ann_node].addr, "wirechat_open_sockets").await,
        1.0
    );

    a.say("hello from ann").await;
    b.wait_for_message("hello from ann").await;
    b.say("hello from bob").await;
    let last_seq = seqs(&a.wait_for_message("hello from bob").await.html)[0];
    let room = a.room_id.clone();

    // Ann's node goes away: her socket is told to reconnect (1012).
    nodes[ann_node].stop().await;
    loop {
        match a.receive().await {
            Received::Frame(_) => continue,
            Received::Closed(close) => {
                assert_eq!(close.map(|c| u16::from(c.code)), Some(1012));
                break;
            }
        }
    }
    b.say("while ann was away 1").await;
    b.say("while ann was away 2").await;

    // She comes back through Caddy, lands on the surviving node and catches up.
    let mut a = gateway
        .connect_at(&ann, &format!("/ws/chat/?room={room}&after={last_seq}"))
        .await;
    assert_eq!(a.room_id, room);
    assert_eq!(
        metric(nodes[1 - ann_node].addr, "wirechat_open_sockets").await,
        2.0
    );
    let catch_up = a.wait_for(|f| f.selector == "#messages-list").await;
    assert!(
        catch_up.html.contains("while ann was away 1")
            && catch_up.html.contains("while ann was away 2"),
        "{}",
        catch_up.html
    );
    assert_eq!(catch_up.html.matches("while ann was away 1").count(), 1);
    b.say("welcome back").await;
    let (_, skipped) = a
        .wait_for_with_skipped(|f| f.html.contains("welcome back"))
        .await;
    assert!(
        skipped
            .iter()
            .all(|f| !f.html.contains("while ann was away"))
    );
}

/// The repository's Caddyfile in front of three nodes, as in production: sockets spread
/// over all three; a draining node (`/readyz` 503) gets no new socket from Caddy while it
/// still serves its own; when it closes them (1012) they come back through Caddy to the
/// other two and catch up, and every message posted meanwhile reaches everyone once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_caddy_a_draining_node_gets_no_new_sockets_and_its_own_move_without_loss() {
    // A drain longer than the test: the node leaves when told a second time.
    let drain = (PATIENCE * 10).as_millis().to_string();
    let cluster = Cluster::new(SHARED_REDIS, &["--drain-ms", &drain]).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("node {i}");
        nodes.push(start_node("127.0.0.1:0", &cluster.database_url, &cluster.args, &name).await);
    }
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut caddy = Caddy::start(&addrs).await;
    let gateway = TestApp::at(caddy.addr, &cluster.database_url);
    let open_sockets = |addrs: Vec<std::net::SocketAddr>| async move {
        let mut counts = Vec::new();
        for addr in addrs {
            counts.push(metric(addr, "wirechat_open_sockets").await as usize);
        }
        counts
    };

    // Six sockets through Caddy, noting the node each one lands on.
    let mut users = Vec::new();
    let mut clients = Vec::new();
    let mut on_node = Vec::new();
    for i in 0..6 {
        let user = gateway.signup(&format!("user{i}")).await;
        let before = open_sockets(addrs.clone()).await;
        clients.push(gateway.connect(&user).await);
        let after = open_sockets(addrs.clone()).await;
        let node = (0..3)
            .find(|&n| after[n] == before[n] + 1)
            .unwrap_or_else(|| panic!("socket {i} on no node: {before:?} then {after:?}"));
        on_node.push(node);
        users.push(user);
    }
    let per_node = open_sockets(addrs.clone()).await;
    assert!(
        per_node.iter().all(|&n| n > 0),
        "sockets spread over every node: {per_node:?}"
    );
    let room = clients[0].room_id.clone();
    assert!(clients.iter().all(|c| c.room_id == room));

    // Node 0 drains. `log[i]` keeps every frame client i receives from here on.
    let drained = 0;
    let survivor = on_node
        .iter()
        .position(|&n| n != drained)
        .expect("a socket on another node");
    let on_drained: Vec<usize> = (0..clients.len())
        .filter(|&i| on_node[i] == drained)
        .collect();
    let mut after_seq = vec![0; clients.len()];
    clients[survivor].say("before the drain").await;
    for (i, client) in clients.iter_mut().enumerate() {
        after_seq[i] = seqs(&client.wait_for_message("before the drain").await.html)[0];
    }
    let mut log: Vec<Vec<Frame>> = vec![Vec::new(); clients.len()];
    caddy.skip_log();
    nodes[drained].process.sigterm();
    let drained_app = TestApp::at(addrs[drained], &cluster.database_url);
    wait_for_status(&drained_app, "/readyz", 503).await;
    let drained_host = addrs[drained].to_string();
    caddy
        .wait_for_log("the draining node's failed check", |entry| {
            entry["msg"] == "status code out of tolerances"
                && entry["status_code"] == 503
                && entry["host"] == drained_host.as_str()
        })
        .await;

    // Still serving its own sockets, both ways.
    let first_on_drained = on_drained[0];
    clients[first_on_drained]
        .say("said on the draining node")
        .await;
    clients[survivor].say("said to the draining node").await;
    for (i, client) in clients.iter_mut().enumerate() {
        read_until_all(
            client,
            &["said on the draining node", "said to the draining node"],
            &mut log[i],
        )
        .await;
    }
    // New sockets through Caddy go to the other two nodes only.
    let drained_before = open_sockets(vec![addrs[drained]]).await[0];
    let mut late = Vec::new();
    for i in 0..4 {
        let user = gateway.signup(&format!("late{i}")).await;
        late.push(gateway.connect(&user).await);
    }
    assert_eq!(
        open_sockets(vec![addrs[drained]]).await[0],
        drained_before,
        "Caddy sent a new socket to the draining node"
    );
    let others: Vec<std::net::SocketAddr> =
        (0..3).filter(|&n| n != drained).map(|n| addrs[n]).collect();
    let elsewhere: usize = open_sockets(others.clone()).await.iter().sum();
    assert_eq!(elsewhere, clients.len() - on_drained.len() + late.len());

    // The drain ends (a second signal): the node closes its sockets with 1012, while the
    // others keep posting.
    nodes[drained].process.sigterm();
    clients[survivor].say("while moving 1").await;
    for &i in &on_drained {
        loop {
            match clients[i].receive().await {
                Received::Frame(frame) => log[i].push(frame),
                Received::Closed(close) => {
                    assert_eq!(close.map(|c| u16::from(c.code)), Some(1012), "client {i}");
                    break;
                }
            }
        }
    }
    nodes[drained].process.wait_for_exit().await;
    clients[survivor].say("while moving 2").await;

    // Each comes back through Caddy, to a live node, after the newest message it holds.
    for &i in &on_drained {
        let newest = log[i]
            .iter()
            .filter(|f| f.selector == "#messages-list")
            .flat_map(|f| seqs(&f.html))
            .fold(after_seq[i], i64::max);
        let path = format!("/ws/chat/?room={room}&after={newest}");
        clients[i] = gateway
            .open_socket(&users[i], &path)
            .await
            .unwrap_or_else(|e| panic!("client {i} reconnects through Caddy: {e}"));
    }
    let expected_elsewhere = clients.len() + late.len();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while open_sockets(others.clone()).await.iter().sum::<usize>() != expected_elsewhere {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the moved sockets are not all on the other nodes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clients[survivor].say("after the move").await;

    let posted = [
        "said on the draining node",
        "said to the draining node",
        "while moving 1",
        "while moving 2",
        "after the move",
    ];
    for (i, client) in clients.iter_mut().enumerate() {
        read_until_all(client, &posted, &mut log[i]).await;
        for text in posted {
            let times: usize = log[i]
                .iter()
                .filter(|f| f.selector == "#messages-list")
                .map(|f| f.html.matches(text).count())
                .sum();
            assert_eq!(times, 1, "client {i} (node {}) got {text:?}", on_node[i]);
        }
    }
}

/// Reads frames into `log` until every text of `texts` is in a message frame there.
async fn read_until_all(client: &mut crate::helpers::Client, texts: &[&str], log: &mut Vec<Frame>) {
    let has = |log: &[Frame], text: &str| {
        log.iter()
            .any(|f| f.selector == "#messages-list" && f.html.contains(text))
    };
    while !texts.iter().all(|t| has(log, t)) {
        log.push(client.next_frame().await);
    }
}

/// `path`'s status at `app`, asked until it is `wanted` (bounded): a node's readiness
/// changes with no event a client can wait for.
async fn wait_for_status(app: &TestApp, path: &str, wanted: u16) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = app
            .http()
            .get(app.url(path))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.as_ref().ok() == Some(&wanted) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} stayed {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Presence as `N` nodes (`node-a`, `node-b`, …) see it, sharing Redis under a fresh key
/// prefix; a node's entries outlive its last heartbeat by `ttl`.
fn shared_presence<const N: usize>(ttl: Duration) -> [wirechat::presence::RedisPresence; N] {
    let prefix = fresh_prefix();
    std::array::from_fn(|i| {
        let name = format!("node-{}", char::from(b'a' + i as u8));
        presence_node(SHARED_REDIS, &prefix, &name, ttl)
    })
}

/// Presence as node `name` sees it, on the Redis at `url` under `prefix`.
fn presence_node(
    url: &str,
    prefix: &str,
    name: &str,
    ttl: Duration,
) -> wirechat::presence::RedisPresence {
    let servers = wirechat::layer::redis::Servers::single(url, None).expect("a Redis URL");
    let commands = servers.commands().expect("connections");
    wirechat::presence::RedisPresence::new(commands, prefix, name, ttl)
}

async fn redis_at(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (see README: Tests)")
}

/// Redis loses every key under `prefix` (as a restart without persistence would, for one
/// chat alone); returns how many there were.
async fn lose_keys(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(redis)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(redis)
            .await
            .expect("DEL");
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_users_across_nodes_and_expires_a_silent_node() {
    use wirechat::model::User;
    use wirechat::presence::{Change, Listing, Members, Presence};

    let [node_a, node_b] = shared_presence(Duration::from_millis(800));
    let ann = User {
        id: "u-ann".into(),
        username: "ann".into(),
    };

    // Socket ids repeat between nodes; the entries do not collide.
    assert!(node_a.connect(1, &ann).await, "first socket anywhere");
    assert!(!node_b.connect(1, &ann).await, "second socket, other node");
    let listed = Members {
        listed: vec![ann.clone()].into(),
        more: 0,
    };
    assert_eq!(
        node_a.enter(1, "r", &ann).await,
        (Listing::Listed, listed.clone())
    );
    assert_eq!(
        node_b.enter(1, "r", &ann).await,
        (Listing::Unchanged, listed.clone())
    );
    assert_eq!(node_b.online_members().await, Some(listed.clone()));
    let among = node_a.online_among(std::slice::from_ref(&ann.id)).await;
    assert_eq!(among, Some(vec![ann.id.clone()]));
    assert_eq!(node_a.in_room("r").await, listed);
    assert_eq!(
        node_a.leave(1, "r", &ann).await,
        Listing::Unchanged,
        "still in r on node b"
    );
    assert!(!node_a.disconnect(1, &ann).await, "still online on node b");

    // Node b goes silent: no heartbeat, no goodbye. Node a's upkeep reports her gone once
    // her entries lapse, exactly once.
    let mut reported = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while reported.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{reported:?}");
        reported.extend(node_a.maintain().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reported.contains(&Change::Offline(ann.clone())),
        "{reported:?}"
    );
    assert!(
        reported.contains(&Change::Left {
            room: "r".into(),
            user: ann.clone(),
            listing: Listing::Unlisted { promoted: None },
        }),
        "{reported:?}"
    );
    assert_eq!(reported.len(), 2, "{reported:?}");
    assert_eq!(node_a.online_members().await, Some(Members::default()));
    assert_eq!(
        node_a.online_among(std::slice::from_ref(&ann.id)).await,
        Some(Vec::new())
    );
    assert_eq!(node_a.in_room("r").await, Members::default());
    assert!(node_a.maintain().await.is_empty());

    // Node b comes back: its heartbeat writes the lapsed entries again, and reports them
    // so they can be announced.
    let back = node_b.maintain().await;
    assert!(back.contains(&Change::Online(ann.clone())), "{back:?}");
    assert!(
        back.contains(&Change::Entered {
            room: "r".into(),
            user: ann.clone(),
            listing: Listing::Listed,
        }),
        "{back:?}"
    );
    assert_eq!(node_a.online_members().await, Some(listed.clone()));
    assert_eq!(
        node_b.leave(1, "r", &ann).await,
        Listing::Unlisted { promoted: None }
    );
    assert!(node_b.disconnect(1, &ann).await, "her last socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowded_room_is_listed_alike_on_every_node() {
    use wirechat::model::User;
    use wirechat::presence::SHOWN;
    use wirechat::presence::{Change, Listing, Presence};

    let [node_a, node_b] = shared_presence(Duration::from_millis(800));
    let people: Vec<User> = (0..SHOWN + 3)
        .map(|n| User {
            id: format!("u-{n:03}"),
            username: format!("user{n:03}"),
        })
        .collect();
    let node_of = |n: usize| {
        if n.is_multiple_of(2) {
            &node_a
        } else {
            &node_b
        }
    };

    // People enter through both nodes; the first SHOWN are listed, the rest counted.
    for (n, person) in people.iter().enumerate() {
        let socket = n as u64;
        assert!(node_of(n).connect(socket, person).await);
        let expected = if n < SHOWN {
            Listing::Listed
        } else {
            Listing::Counted
        };
        let (listing, members) = node_of(n).enter(socket, "r", person).await;
        assert_eq!(listing, expected);
        assert_eq!(members.listed.len() + members.more, n + 1);
    }
    let seen_by_a = node_a.in_room("r").await;
    assert_eq!((seen_by_a.listed.len(), seen_by_a.more), (SHOWN, 3));
    assert_eq!(seen_by_a, node_b.in_room("r").await);

    // A listed person leaving makes room for the one who has waited longest.
    assert_eq!(
        node_a.leave(0, "r", &people[0]).await,
        Listing::Unlisted {
            promoted: Some(people[SHOWN].clone())
        }
    );
    // An unlisted one leaving changes only the count.
    let last_on_b = SHOWN + 1;
    let left = node_b
        .leave(last_on_b as u64, "r", &people[last_on_b])
        .await;
    assert_eq!(left, Listing::Counted);

    // Node b goes silent. When the sweep removes its listed people, the one left unlisted
    // (on node a) takes the first place freed, once.
    let on_b = (0..people.len()).filter(|n| !n.is_multiple_of(2)).count();
    let in_room_on_b = on_b - 1;
    let mut reported = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while reported.len() < on_b + in_room_on_b {
        assert!(tokio::time::Instant::now() < deadline, "{reported:?}");
        reported.extend(node_a.maintain().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promotions: Vec<&Change> = reported
        .iter()
        .filter(|c| {
            matches!(
                c,
                Change::Left {
                    listing: Listing::Unlisted { promoted: Some(_) },
                    ..
                }
            )
        })
        .collect();
    let waiting = people[SHOWN + 2].clone();
    assert!(
        matches!(promotions.as_slice(), [Change::Left { listing: Listing::Unlisted { promoted: Some(p) }, .. }] if *p == waiting),
        "{reported:?}"
    );
    let now = node_a.in_room("r").await;
    let everyone_on_a = people.iter().skip(2).step_by(2).count();
    assert_eq!((now.listed.len(), now.more), (everyone_on_a, 0));
    assert!(now.listed.contains(&waiting));
}

/// Two nodes' changes to a room's member list reach viewers in the order they reach Redis,
/// which need not be the order presence made them. The node looks again at what it
/// announced and puts right what the list now says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_list_change_overtaken_by_another_node_is_corrected() {
    use wirechat::model::User;
    use wirechat::presence::{Listing, Presence};

    let cluster = Cluster::new(SHARED_REDIS, &[]).await;
    let node = cluster.node().await;
    let (ann, bob) = (node.signup("ann").await, node.signup("bob").await);
    let mut a = node.connect(&ann).await;
    let b = node.connect(&bob).await;
    let listed = a
        .wait_for(|f| f.selector == "#room-members" && f.html.contains("bob"))
        .await;
    let bob_id = attr(&listed.html, "id")
        .expect("member id")
        .replace("member-", "");

    // Bob leaves through this node, which tells ann...
    b.close().await;
    let removed = a
        .wait_for(|f| f.selector == format!("#member-{bob_id}"))
        .await;
    assert_eq!(removed.swap, "remove");
    // ...and right after enters again through another node, whose announcement of it
    // reached Redis before this node's removal did: ann's list now lacks him.
    let other = presence_node(
        SHARED_REDIS,
        &cluster.prefix,
        "node-other",
        Duration::from_secs(60),
    );
    let bob_user = User {
        id: bob_id.clone(),
        username: "bob".into(),
    };
    other.connect(1, &bob_user).await;
    let (listing, _) = other.enter(1, &a.room_id, &bob_user).await;
    assert_eq!(listing, Listing::Listed);

    // The node that removed him sees the list say otherwise, and lists him again.
    let back = a
        .wait_for(|f| f.selector == "#room-members" && f.html.contains(&format!("member-{bob_id}")))
        .await;
    assert_eq!(back.swap, "beforeend");
    other.disconnect(1, &bob_user).await;
}

/// After Redis loses its data, the node writes its entries back in an order of its own, so
/// the list may now name others than before: viewers end up seeing the new list, not the
/// old one with the new names added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_lists_are_right_again_after_redis_loses_its_data() {
    use wirechat::presence::Presence;
    use wirechat::presence::SHOWN;

    let mut args = SHORT_PRESENCE.to_vec();
    args.extend(["--auth-rate-limit", "1000"]);
    let cluster = Cluster::new(SHARED_REDIS, &args).await;
    let node = cluster.node().await;
    let ann = node.signup("ann").await;
    let mut a = node.open_socket(&ann, "/ws/chat/").await.expect("socket");
    let mut seen = ListedSeen::room_members();
    let title = a.wait_for(|f| f.selector == "#group-name").await;
    let room = attr(&title.html, "data-room-id").expect("room id");

    // Ann and SHOWN guests: the list is full and one more is counted.
    let mut guests = Vec::new();
    for _ in 0..SHOWN {
        guests.push(node.connect(&node.guest().await).await);
    }
    while !(seen.ids.len() == SHOWN && seen.more == "and 1 more") {
        seen.apply(&a.next_frame().await);
    }

    // Redis loses everything under the chat's prefix.
    assert!(lose_keys(&mut cluster.redis().await, &cluster.prefix).await > 0);

    // The node writes its entries back; ann's list ends up as presence now has it.
    let observer = presence_node(
        SHARED_REDIS,
        &cluster.prefix,
        "observer",
        Duration::from_secs(60),
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = observer.in_room(&room).await;
        let listed: BTreeSet<String> = now.listed.iter().map(|u| u.id.clone()).collect();
        if listed.len() == SHOWN && listed == seen.ids {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ann sees {} listed, presence lists {}: {:?}",
            seen.ids.len(),
            listed.len(),
            seen.ids.symmetric_difference(&listed).collect::<Vec<_>>()
        );
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(100), a.next_frame()).await {
            seen.apply(&f);
        }
    }
    drop(guests);
}

/// Someone whose entry Redis lost (it restarted empty while they were leaving) is still
/// reported as gone from the list when the removal comes: viewers may list them from
/// before, and no one else will tell them otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_after_redis_lost_the_entry_still_unlists() {
    use wirechat::model::User;
    use wirechat::presence::{Listing, Presence};

    let prefix = fresh_prefix();
    let node = presence_node(SHARED_REDIS, &prefix, "node-a", PATIENCE);
    let bob = User {
        id: "u-bob".into(),
        username: "bob".into(),
    };
    assert!(node.connect(1, &bob).await);
    assert_eq!(node.enter(1, "r", &bob).await.0, Listing::Listed);

    // Redis loses everything under the prefix.
    assert!(lose_keys(&mut redis_at(SHARED_REDIS).await, &prefix).await > 0);

    assert_eq!(
        node.leave(1, "r", &bob).await,
        Listing::Unlisted { promoted: None }
    );
    assert!(
        node.disconnect(1, &bob).await,
        "gone from the Online list too"
    );
}

/// While Redis is down, a room's members come from this node's own sockets, good enough to
/// show a newcomer; presence says so, so that no one corrects other nodes' lists by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_says_when_it_answers_from_this_node_alone() {
    use wirechat::model::User;
    use wirechat::presence::Presence;

    let mut own = OwnRedis::start(free_port()).await;
    let node = presence_node(&own.url(), "p:", "node-a", PATIENCE);
    let bob = User {
        id: "u-bob".into(),
        username: "bob".into(),
    };
    assert!(node.connect(1, &bob).await);
    node.enter(1, "r", &bob).await;
    let shared = node.in_room_if_known("r").await.expect("Redis answers");
    assert_eq!(*shared.listed, *std::slice::from_ref(&bob));

    own.crash().await;
    assert_eq!(node.in_room_if_known("r").await, None);
    assert_eq!(*node.in_room("r").await.listed, [bob]);
}

/// An Online list that has room while people online are not on it (nodes of versions that
/// kept no such list left it empty) fills at the next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_list_with_room_fills_at_the_heartbeat() {
    use wirechat::model::User;
    use wirechat::presence::Presence;

    let prefix = fresh_prefix();
    let node = presence_node(SHARED_REDIS, &prefix, "node-a", PATIENCE);
    for n in 0..3u64 {
        let user = User {
            id: format!("u-{n}"),
            username: format!("user{n}"),
        };
        assert!(node.connect(n, &user).await);
    }
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}presence:listed:online"))
        .query_async(&mut redis_at(SHARED_REDIS).await)
        .await
        .expect("DEL");
    let before = node.online_members().await.expect("Redis answers");
    assert_eq!((before.listed.len(), before.more), (0, 3));

    node.maintain().await;
    let after = node.online_members().await.expect("Redis answers");
    assert_eq!((after.listed.len(), after.more), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closed_while_entering_a_room_leaves_no_ghost() {
    use wirechat::model::User;
    use wirechat::presence::{Change, Listing, Members, Presence};

    let [node] = shared_presence(Duration::from_secs(10));
    let ann = User {
        id: "u-ann".into(),
        username: "ann".into(),
    };
    assert!(node.connect(1, &ann).await);
    assert_eq!(node.enter(1, "r", &ann).await.0, Listing::Listed);
    // The socket goes before its session left the room: its room entry goes with it (room
    // entries no longer lapse on their own), and the next upkeep reports the departure.
    assert!(node.disconnect(1, &ann).await, "her only socket");
    assert_eq!(node.in_room("r").await, Members::default());
    let reported = node.maintain().await;
    let left = Change::Left {
        room: "r".into(),
        user: ann.clone(),
        listing: Listing::Unlisted { promoted: None },
    };
    assert_eq!(reported, vec![left]);
}

/// A node that stops closes its sockets, and the people who leave with them leave a
/// crowded room's list and the Online list on the other nodes too: what waited for the
/// node's next round is published before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_on_a_stopping_node_leave_the_lists_on_the_others() {
    use wirechat::presence::SHOWN;

    let cluster = Cluster::new(SHARED_REDIS, &["--auth-rate-limit", "1000"]).await;
    let (mut stopping, staying) = (cluster.node().await, cluster.node().await);
    let ann = staying.signup("ann").await;
    let mut a = staying
        .open_socket(&ann, "/ws/chat/")
        .await
        .expect("socket opens");
    let (mut seen, mut online) = (ListedSeen::room_members(), ListedSeen::online());

    // Ann and twice SHOWN guests on the other node: the lists are full, the rest counted.
    // Leaving together, they change the room's list more than it shows in one round, so
    // it goes whole.
    let mut guests = Vec::new();
    for _ in 0..2 * SHOWN {
        guests.push(stopping.connect(&stopping.guest().await).await);
    }
    let as_expected = |listed: usize, more: String| {
        move |m: &ListedSeen, o: &ListedSeen| {
            [m, o]
                .iter()
                .all(|l| l.ids.len() == listed && l.more == more)
        }
    };
    let more = format!("and {} more", SHOWN + 1);
    follow(&mut a, &mut seen, &mut online, as_expected(SHOWN, more)).await;

    // Their node stops: ann ends up alone in both lists, with nobody counted.
    stopping.stop().await;
    follow(
        &mut a,
        &mut seen,
        &mut online,
        as_expected(1, String::new()),
    )
    .await;
    drop(guests);
}
