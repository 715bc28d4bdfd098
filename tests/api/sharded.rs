//! Nodes sharing a Redis Cluster: rooms' events sharded over its masters (SPUBLISH and
//! SSUBSCRIBE), presence in one slot. Each test runs a cluster of its own (three masters,
//! a replica each), so one may kill a master.

use std::collections::BTreeSet;

use deadpool_redis::redis;

use crate::cluster::receive_all;
use crate::helpers::{
    Backend, Client, PATIENCE, TestApp, fresh_database, fresh_prefix, refused_at_start,
};
use crate::process::OwnCluster;

/// One chat on a cluster of its own.
struct Sharded {
    redis: OwnCluster,
    database_url: String,
    prefix: String,
}

impl Sharded {
    async fn new() -> Sharded {
        Sharded::on(OwnCluster::start().await).await
    }

    async fn on(redis: OwnCluster) -> Sharded {
        Sharded {
            redis,
            database_url: fresh_database(Backend::Postgres).await,
            prefix: fresh_prefix(),
        }
    }

    /// `client` opens groups until `count` of them live on as many masters: their names
    /// and groups.
    async fn rooms_on_masters(
        &mut self,
        client: &mut Client,
        count: usize,
    ) -> Vec<(String, String)> {
        let mut rooms: Vec<(String, String)> = Vec::new();
        for i in 0..40 {
            let name = format!("shard-{i}");
            client.enter_group(&name).await;
            let group = format!("room:{}", client.room_id);
            let by_master = self.channels_by_master().await;
            let master_of = |group: &str| {
                by_master
                    .iter()
                    .find(|(_, channels)| channels.contains(group))
                    .map(|(port, _)| *port)
            };
            let holder = master_of(&group).expect("the new room's channel is on a master");
            let held: BTreeSet<u16> = rooms
                .iter()
                .map(|(_, g)| master_of(g).expect("an earlier room's channel"))
                .collect();
            if !held.contains(&holder) {
                rooms.push((name, group));
            }
            if rooms.len() == count {
                return rooms;
            }
        }
        panic!("rooms never reached {count} masters");
    }

    async fn node(&self) -> TestApp {
        let args = [
            "--redis-cluster",
            &self.redis.nodes(),
            "--redis-prefix",
            &self.prefix,
            "--rate-burst",
            "1000",
            // The test opens groups until every master holds one: more than the default
            // ten an hour, one time in twenty.
            "--new-groups-per-hour",
            "100",
        ];
        TestApp::start(
            self.database_url.clone(),
            args.iter().map(|s| s.to_string()).collect(),
        )
        .await
    }

    /// Each live master's port and the channels of this chat it holds subscriptions for,
    /// prefix taken off.
    async fn channels_by_master(&mut self) -> Vec<(u16, BTreeSet<String>)> {
        let mut by_master = Vec::new();
        for (port, _) in self.redis.masters().await {
            let channels: Vec<String> = OwnCluster::ask(
                port,
                redis::cmd("PUBSUB")
                    .arg("SHARDCHANNELS")
                    .arg(format!("{}*", self.prefix)),
            )
            .await
            .expect("PUBSUB SHARDCHANNELS");
            let channels = channels
                .into_iter()
                .map(|c| c[self.prefix.len()..].to_owned())
                .collect();
            by_master.push((port, channels));
        }
        by_master
    }

    /// How many people's own channels are subscribed, over every master.
    async fn user_channels(&mut self) -> usize {
        self.channels_by_master()
            .await
            .iter()
            .flat_map(|(_, channels)| channels.iter())
            .filter(|c| c.starts_with("user:"))
            .count()
    }

    /// How many nodes subscribe to `group`, over every master.
    async fn subscribers(&mut self, group: &str) -> i64 {
        let mut total = 0;
        for (port, _) in self.redis.masters().await {
            let (_, count): (String, i64) = OwnCluster::ask(
                port,
                redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(format!("{}{group}", self.prefix)),
            )
            .await
            .expect("PUBSUB SHARDNUMSUB");
            total += count;
        }
        total
    }
}

/// Three nodes on three shards: group rooms that live on every master, each crossing
/// nodes once and in order; a conversation reaching only its two people; who is online
/// seen everywhere; and a node's subscriptions following its sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_over_a_sharded_cluster() {
    let mut chat = Sharded::new().await;
    let nodes = [chat.node().await, chat.node().await, chat.node().await];
    let ann = nodes[0].signup("ann").await;
    let bob = nodes[1].signup("bob").await;
    let cat = nodes[2].signup("cat").await;
    // Presence: each arrival is seen on the other nodes.
    let mut a = nodes[0].connect(&ann).await;
    let mut b = nodes[1].connect(&bob).await;
    a.wait_for(|f| f.selector == "#people" && f.html.contains("bob"))
        .await;
    let mut c = nodes[2].connect(&cat).await;
    for client in [&mut a, &mut b] {
        client
            .wait_for(|f| f.selector == "#people" && f.html.contains("cat"))
            .await;
    }

    // Ann opens groups until every master holds one of them: one room per shard.
    let rooms = chat.rooms_on_masters(&mut a, 3).await;

    const EACH: usize = 10;
    for (name, group) in &rooms {
        for client in [&mut a, &mut b, &mut c] {
            client.enter_group(name).await;
        }
        assert_eq!(
            chat.subscribers(group).await,
            3,
            "every node follows {name}"
        );
        let said: Vec<Vec<String>> = ["ann", "bob", "cat"]
            .iter()
            .map(|who| {
                (0..EACH)
                    .map(|i| format!("{who}-in-{name}-{i:02}"))
                    .collect()
            })
            .collect();
        for ((x, y), z) in said[0].iter().zip(&said[1]).zip(&said[2]) {
            a.say(x).await;
            b.say(y).await;
            c.say(z).await;
        }
        let everything: Vec<String> = said.concat();
        for client in [&mut a, &mut b, &mut c] {
            let got = receive_all(client, &everything).await;
            for sent in &said {
                let order: Vec<&String> = got
                    .iter()
                    .filter(|(t, _, _)| sent.contains(t))
                    .map(|(t, _, _)| t)
                    .collect();
                assert_eq!(
                    order,
                    sent.iter().collect::<Vec<_>>(),
                    "{}",
                    client.username
                );
            }
            let after = client.frames_until_own_marker().await;
            assert!(
                after
                    .iter()
                    .all(|f| !everything.iter().any(|t| f.html.contains(t.as_str()))),
                "{}: repeated {after:?}",
                client.username
            );
        }
    }

    // A conversation between ann and bob: two nodes follow it, cat's never sees it.
    a.enter_direct("bob").await;
    b.wait_for(|f| f.selector == "#directs" && f.html.contains("ann"))
        .await;
    b.enter_direct("ann").await;
    assert_eq!(a.room_id, b.room_id);
    let direct = format!("room:{}", a.room_id);
    assert_eq!(chat.subscribers(&direct).await, 2);
    a.say("secret for bob").await;
    b.wait_for_message("secret for bob").await;
    let seen_by_cat = c.frames_until_own_marker().await;
    assert!(
        seen_by_cat.iter().all(|f| !f.html.contains("secret")),
        "{seen_by_cat:?}"
    );

    // Bob's node drops its subscriptions with his socket: his own channel, and the
    // conversation only ann's node follows now.
    assert_eq!(chat.user_channels().await, 3);
    b.close().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while chat.user_channels().await != 2 || chat.subscribers(&direct).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's node kept its subscriptions"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(chat.subscribers(&rooms[0].1).await, 2);
}

/// While a master is down and before its replica takes over, rooms on the other masters
/// keep crossing nodes; once the replica has taken over, the failed master's rooms do
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_shards_keep_crossing_nodes_while_a_master_is_down() {
    // Long enough that the message below crosses before any replica takes over.
    let mut chat = Sharded::on(OwnCluster::start_with("6000", None).await).await;
    let nodes = [chat.node().await, chat.node().await];
    let ann = nodes[0].signup("ann").await;
    let bob = nodes[1].signup("bob").await;
    let mut a = nodes[0].connect(&ann).await;
    let mut b = nodes[1].connect(&bob).await;
    let rooms = chat.rooms_on_masters(&mut a, 2).await;
    let [(failing, failing_group), (healthy, _)] = &rooms[..] else {
        unreachable!("two rooms");
    };
    for client in [&mut a, &mut b] {
        client.enter_group(failing).await;
        client.enter_group(healthy).await;
    }
    let doomed = chat
        .redis
        .kill_master_of(&format!("{}{failing_group}", chat.prefix))
        .await;

    a.say("while a master is down").await;
    b.wait_for_message("while a master is down").await;
    assert!(
        !chat.redis.replaced(doomed).await,
        "a replica took over before the message crossed: the test proves nothing"
    );

    chat.redis.taken_over(doomed).await;
    for client in [&mut a, &mut b] {
        client.enter_group(failing).await;
    }
    // Subscriptions follow the new topology within the reconnect's backoff.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut n = 0;
    loop {
        n += 1;
        let text = format!("after the takeover {n}");
        a.say(&text).await;
        match tokio::time::timeout(std::time::Duration::from_secs(1), b.wait_for_message(&text))
            .await
        {
            Ok(_) => break,
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the failed master's room never crossed nodes again"
            ),
        }
    }
}

/// A cluster named as one server, or one server as a cluster, is refused at start with
/// what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_given_in_the_wrong_mode_is_refused_saying_which() {
    let cluster = OwnCluster::start().await;
    let database_url = fresh_database(Backend::Postgres).await;
    let node = cluster
        .nodes()
        .split(',')
        .next()
        .expect("a node")
        .to_owned();
    let cases = [
        (
            vec!["--redis-url".to_owned(), format!("redis://{node}")],
            "name the cluster's nodes in WIRECHAT_REDIS_CLUSTER",
        ),
        (
            vec!["--redis-cluster".to_owned(), "127.0.0.1:6379".to_owned()],
            "without cluster mode: name it in REDIS_URL",
        ),
    ];
    for (redis, said) in cases {
        let args: Vec<&str> = redis.iter().map(String::as_str).collect();
        let text = refused_at_start(&database_url, &args);
        assert!(text.contains(said), "{redis:?}: {text}");
    }
}
