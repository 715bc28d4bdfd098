//! Nothing a person types is lost: a post carries its client's id and is stored once
//! however often it is sent; a resuming socket gets what it missed before anything newer;
//! a client's close is answered.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{
    Backend, Client, Frame, PATIENCE, TestApp, attr, message_ids, metric, seqs, stored,
    wait_for_metric,
};
use crate::on_both_databases;

on_both_databases!(
    a_repeated_client_id_stores_and_delivers_once,
    a_resumed_socket_gets_its_backlog_before_anything_newer,
    a_client_close_is_answered_with_a_close,
    a_message_can_go_to_a_room_not_shown,
    posts_with_client_ids_are_stored_while_others_write,
    posts_sent_in_a_row_are_stored_and_delivered_in_order,
);

mod a_socket_has_a_bounded_number_of_posts_waiting {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::a_socket_has_a_bounded_number_of_posts_waiting().await
    }
}

/// Flags that let one test post as fast as its socket can.
const UNLIMITED: [&str; 8] = [
    "--action-budget-burst",
    "100000",
    "--action-budget-per-second",
    "100000",
    "--rate-burst",
    "100000",
    "--rate-per-second",
    "100000",
];

/// Posts a socket has queued with the store and not had answered, at most (the server's
/// `MAX_IN_FLIGHT`).
const POSTS_IN_FLIGHT: usize = 32;

async fn say_with_id(client: &mut Client, text: &str, client_id: &str) {
    client
        .act(
            "New message",
            json!({ "message": text, "clientId": client_id }),
        )
        .await;
}

/// A retry (the same `clientId`) on the same socket, another socket, after the node
/// restarted, stores and delivers nothing new, and is answered with the first article.
async fn a_repeated_client_id_stores_and_delivers_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut first = app.connect(&ann).await;
    let mut bob_socket = app.connect(&bob).await;
    let id = uuid::Uuid::new_v4().to_string();
    say_with_id(&mut first, "only once", &id).await;
    let echo = first.wait_for_message("only once").await;
    let article = message_ids(&echo.html);
    assert_eq!(
        attr(&echo.html, "data-client-id").as_deref(),
        Some(id.as_str())
    );

    say_with_id(&mut first, "only once", &id).await;
    let again = first.wait_for_message("only once").await;
    assert_eq!(message_ids(&again.html), article, "the same article");
    let mut second = app.connect(&ann).await;
    say_with_id(&mut second, "only once", &id).await;
    let again = second.wait_for_message("only once").await;
    assert_eq!(message_ids(&again.html), article);

    // Bob saw it once, and nothing more of it before his own next message.
    let heard = bob_socket.frames_until_own_marker().await;
    let copies: usize = heard
        .iter()
        .filter(|f| f.html.contains("only once"))
        .count();
    assert_eq!(copies, 1, "{heard:?}");

    // After a restart, on a new socket: still one message, and its article again.
    let app = app.restart().await;
    let mut third = app.connect(&ann).await;
    say_with_id(&mut third, "only once", &id).await;
    let again = third.wait_for_message("only once").await;
    assert_eq!(message_ids(&again.html), article);
    assert_eq!(stored(&app.database_url, "only once").await, 1);

    // The id is the author's: someone else's post with it is theirs.
    let mut bob_socket = app.connect(&bob).await;
    say_with_id(&mut bob_socket, "only once", &id).await;
    let bobs = bob_socket.wait_for_message("only once").await;
    assert_ne!(message_ids(&bobs.html), article);
    assert_eq!(stored(&app.database_url, "only once").await, 2);

    // Not a UUID: refused, and said so with nothing stored.
    third
        .act(
            "New message",
            json!({ "message": "bad id", "clientId": "nope" }),
        )
        .await;
    assert!(third.wait_for_error().await.contains("UUID"));
    assert_eq!(stored(&app.database_url, "bad id").await, 0);
}

/// A socket resuming while others post once got the newest messages first and its backlog
/// after them; it now gets them in seq order.
async fn a_resumed_socket_gets_its_backlog_before_anything_newer(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &["--rate-burst", "100000", "--rate-per-second", "100000"],
    )
    .await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut poster = app.connect(&ann).await;
    let room = poster.room_id.clone();
    for i in 0..30 {
        poster.say(&format!("backlog {i}")).await;
    }
    poster.wait_for_message("backlog 29").await;
    // A steady stream of new messages while bob resumes, again and again.
    let stop = tokio_util::sync::CancellationToken::new();
    let talking = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                poster.say(&format!("live {n}")).await;
                poster.wait_for_message(&format!("live {n}")).await;
                n += 1;
            }
        }
    });
    for _ in 0..6 {
        let mut resumed = app
            .connect_at(&bob, &format!("/ws/chat/?room={room}&after=2"))
            .await;
        let mut shown = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !shown.contains(&30) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the backlog never came"
            );
            let frame = resumed.next_frame().await;
            if frame.selector == "#messages-list" && frame.swap == "beforeend" {
                shown.extend(seqs(&frame.html));
            }
        }
        assert!(
            shown.windows(2).all(|w| w[0] < w[1]),
            "shown out of order: {shown:?}"
        );
        assert_eq!(shown[0], 3, "{shown:?}");
        resumed.close().await;
    }
    stop.cancel();
    talking.await.expect("the poster");
}

/// The server once dropped the connection when a client closed it (the client saw 1006);
/// it now answers with a close frame, as RFC 6455 asks.
async fn a_client_close_is_answered_with_a_close(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.connect(&app.signup("ann").await).await;
    client
        .stream()
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .expect("close sent");
    let answer = loop {
        match tokio::time::timeout(PATIENCE, client.stream().next())
            .await
            .expect("an answer in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close: {other:?}"),
        }
    };
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Normal));
}

/// What a page wrote in one room while offline is sent once the connection is back, though
/// it may show another room by then: to the room it was written in, if the author is still
/// in it, and the sender is told it is stored.
async fn a_message_can_go_to_a_room_not_shown(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut bob_socket = app.connect(&bob).await;
    bob_socket.enter_group("python").await;
    let python = bob_socket.room_id.clone();
    let mut ann_socket = app.connect(&ann).await;
    assert_ne!(ann_socket.room_id, python, "ann shows #hi");
    let id = uuid::Uuid::new_v4().to_string();
    ann_socket
        .act(
            "New message",
            json!({ "message": "written in python", "clientId": id, "roomId": python }),
        )
        .await;
    let stored_frame = format!("#pending-{id}");
    let told = ann_socket.wait_for(|f| f.selector == stored_frame).await;
    assert_eq!(told.swap, "remove");
    bob_socket.wait_for_message("written in python").await;
    // Again: stored once, told again.
    ann_socket
        .act(
            "New message",
            json!({ "message": "written in python", "clientId": id, "roomId": python }),
        )
        .await;
    ann_socket.wait_for(|f| f.selector == stored_frame).await;
    assert_eq!(stored(&app.database_url, "written in python").await, 1);

    // A room one is not in: refused, with the post's id.
    ann_socket
        .act("Leave group", json!({ "groupName": "python" }))
        .await;
    ann_socket.wait_for_notice("You left #python").await;
    let id = uuid::Uuid::new_v4().to_string();
    ann_socket
        .act(
            "New message",
            json!({ "message": "too late", "clientId": id, "roomId": python }),
        )
        .await;
    let refused = ann_socket.wait_for_error().await;
    assert!(refused.contains("that room"), "{refused}");
    assert!(refused.contains(&id), "{refused}");
    assert_eq!(stored(&app.database_url, "too late").await, 0);
}

/// A batch once read the client ids it carried inside its transaction, and SQLite then
/// refused the transaction's write at once ("database is locked") whenever another
/// connection wrote meanwhile: a quarter of the posts of one user failed while others
/// moved between rooms. Every post is stored now.
async fn posts_with_client_ids_are_stored_while_others_write(backend: Backend) {
    let app = TestApp::spawn_with(backend, &UNLIMITED).await;
    let poster = app.signup("poster").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut movers = Vec::new();
    for i in 0..4 {
        let mut mover = app.connect(&app.signup(&format!("mover{i}")).await).await;
        let stop = stop.clone();
        movers.push(tokio::spawn(async move {
            // Every entry marks a room read: a write.
            while !stop.is_cancelled() {
                for room in ["python", "events", "off-topic", "hi"] {
                    mover.enter_group(room).await;
                }
            }
        }));
    }
    let mut socket = app.connect(&poster).await;
    for n in 0..100 {
        let text = format!("steady {n}");
        say_with_id(&mut socket, &text, &uuid::Uuid::new_v4().to_string()).await;
        let answer = socket
            .wait_for(|f| f.html.contains(&text) || f.selector == "#errors")
            .await;
        assert_eq!(
            answer.selector, "#messages-list",
            "post {n}: {}",
            answer.html
        );
    }
    stop.cancel();
    for mover in movers {
        mover.await.expect("a mover");
    }
}

/// The bodies of the `burst …` messages in `frames`, in the order shown.
fn bursts(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.selector == "#messages-list" && f.swap == "beforeend")
        .flat_map(|f| {
            f.html
                .match_indices("burst ")
                .map(|(i, _)| {
                    let rest = &f.html[i..];
                    rest[..rest.find('<').unwrap_or(rest.len())].to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A client's posts are stored while it sends the next, not one at a time: sent in a
/// row, without waiting for answers, they reach everyone once, in the order sent, with
/// seqs in that order, and retried ones among them are stored once.
async fn posts_sent_in_a_row_are_stored_and_delivered_in_order(backend: Backend) {
    let app = TestApp::spawn_with(backend, &UNLIMITED).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut sender = app.connect(&ann).await;
    let mut reader = app.connect(&bob).await;
    let ids: Vec<String> = (0..200).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for (n, id) in ids.iter().enumerate() {
        say_with_id(&mut sender, &format!("burst {n:03}"), id).await;
        if n % 50 == 49 {
            // A retry of an earlier post, still in flight or just stored: stored once.
            say_with_id(&mut sender, &format!("burst {:03}", n - 1), &ids[n - 1]).await;
        }
    }
    let expected: Vec<String> = (0..200).map(|n| format!("burst {n:03}")).collect();
    for (client, answered_again) in [(&mut reader, false), (&mut sender, true)] {
        let (last, mut frames) = client
            .wait_for_with_skipped(|f| f.html.contains("burst 199"))
            .await;
        frames.push(last);
        let mut seen = bursts(&frames);
        if answered_again {
            // The sender is answered for each retry with the article again (which replaces
            // itself on the page).
            let mut first = std::collections::HashSet::new();
            seen.retain(|body| first.insert(body.clone()));
        }
        assert_eq!(seen, expected, "{}", client.username);
        let frames: Vec<&Frame> = frames
            .iter()
            .filter(|f| f.html.contains("burst "))
            .collect();
        let mut seqs: Vec<i64> = frames.iter().flat_map(|f| seqs(&f.html)).collect();
        let mut first = std::collections::HashSet::new();
        seqs.retain(|seq| first.insert(*seq));
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
    for n in [48, 49, 98, 99, 198, 199] {
        assert_eq!(stored(&app.database_url, &format!("burst {n:03}")).await, 1);
    }
    // Bob saw nothing more of the burst.
    let later = reader.frames_until_own_marker().await;
    assert!(bursts(&later).is_empty(), "{:?}", bursts(&later));
}

/// While the store cannot commit, a socket that keeps posting has at most
/// `POSTS_IN_FLIGHT` posts waiting with the store; the rest wait, unread, on its
/// connection. Once the store commits again, every post is stored and delivered in order.
async fn a_socket_has_a_bounded_number_of_posts_waiting() {
    use sqlx::{Connection, Executor};
    let app = TestApp::spawn_with(Backend::Postgres, &UNLIMITED).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut sender = app.connect(&ann).await;
    let mut other = app.connect(&bob).await;
    // Readers pass; bumping a room's seq waits for this transaction.
    let mut lock = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("the test's database");
    lock.execute("BEGIN; LOCK TABLE rooms IN EXCLUSIVE MODE")
        .await
        .expect("lock rooms");
    for n in 0..100 {
        say_with_id(
            &mut sender,
            &format!("burst {n:03}"),
            &uuid::Uuid::new_v4().to_string(),
        )
        .await;
    }
    let waiting = "wirechat_posts_waiting";
    wait_for_metric(app.addr, waiting, PATIENCE, |v| v >= POSTS_IN_FLIGHT as f64).await;
    // Another socket's post queues as well: had the first one read further meanwhile, it
    // would be counted here too.
    other.say("from the other socket").await;
    wait_for_metric(app.addr, waiting, PATIENCE, |v| v > POSTS_IN_FLIGHT as f64).await;
    assert_eq!(
        metric(app.addr, waiting).await,
        (POSTS_IN_FLIGHT + 1) as f64
    );

    lock.execute("ROLLBACK").await.expect("unlock rooms");
    let (last, mut frames) = other
        .wait_for_with_skipped(|f| f.html.contains("burst 099"))
        .await;
    frames.push(last);
    let expected: Vec<String> = (0..100).map(|n| format!("burst {n:03}")).collect();
    assert_eq!(bursts(&frames), expected);
    wait_for_metric(app.addr, waiting, PATIENCE, |v| v == 0.0).await;
}
