//! Replies: a post may answer a message of its room, and shows a quote of it that leads to
//! it, live and in history.

use serde_json::json;

use crate::helpers::{Backend, Client, TestApp, attr, stored};
use crate::on_both_databases;

on_both_databases!(
    a_reply_quotes_what_it_answers,
    a_reply_answers_a_message_of_its_own_room,
);

async fn reply(client: &mut Client, to: &str, text: &str) {
    client
        .act("New message", json!({ "message": text, "replyTo": to }))
        .await;
}

async fn a_reply_quotes_what_it_answers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let long = format!("who is coming to lunch?{}", " la".repeat(60));
    let id = a.post(&long).await;
    b.wait_for_message("who is coming to lunch?").await;

    reply(&mut b, &id, "me!").await;
    for client in [&mut a, &mut b] {
        let frame = client.wait_for_message("me!").await;
        assert_eq!(
            attr(&frame.html, "data-reply-to").as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            attr(&frame.html, "href").as_deref(),
            Some(format!("#msg-{id}").as_str())
        );
        // The original's author and how it begins, cut short.
        let quote = &frame.html[frame.html.find("class=\"quote\"").unwrap()..];
        let quote = &quote[..quote.find("</a>").unwrap()];
        assert!(quote.contains("<bdi class=\"author\">ann</bdi>"), "{quote}");
        let snippet: String = long.chars().take(120).collect();
        assert!(quote.contains(&format!("{snippet}…")), "{quote}");
        assert!(!quote.contains(&long), "{quote}");
    }
    // History shows the quote too.
    let mut again = app.connect(&bob).await;
    let history = again.wait_for_history().await;
    assert!(
        history.contains(&format!("data-reply-to=\"{id}\"")),
        "{}",
        history
    );
    // Deleted, the original's text leaves the quote with it.
    a.act("Delete message", json!({ "messageId": id })).await;
    a.wait_for_change(&id).await;
    let mut later = app.connect(&bob).await;
    let history = later.wait_for_history().await;
    assert!(!history.contains("who is coming"), "{}", history);
    assert!(history.contains("a deleted message"), "{}", history);
    assert!(history.contains("me!"));
}

async fn a_reply_answers_a_message_of_its_own_room(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ann, bob, eve] = app.signups(["ann", "bob", "eve"]).await;
    let mut a = app.connect(&ann).await;
    let mut e = app.connect(&eve).await;
    let public = a.post("said in public").await;
    a.enter_direct("bob").await;
    let private = a.post("said to bob alone").await;
    let gone = a.post("soon deleted").await;
    a.act("Delete message", json!({ "messageId": gone })).await;
    a.wait_for_change(&gone).await;
    drop(bob);

    // Not Eve's conversation; not the room Ann is in; deleted; not an id.
    reply(&mut e, &private, "eve replies 1").await;
    assert!(e.wait_for_error().await.contains("no such message"));
    reply(&mut a, &public, "ann replies 2").await;
    assert!(
        a.wait_for_error()
            .await
            .contains("no such message in this room")
    );
    reply(&mut a, &gone, "ann replies 3").await;
    assert!(a.wait_for_error().await.contains("deleted"));
    a.act(
        "New message",
        json!({ "message": "ann replies 4", "replyTo": "nope" }),
    )
    .await;
    let refused = a.wait_for_error().await;
    assert!(
        refused.contains("replyTo") && refused.contains("must be a UUID"),
        "{refused}"
    );
    for text in [
        "eve replies 1",
        "ann replies 2",
        "ann replies 3",
        "ann replies 4",
    ] {
        assert_eq!(stored(&app.database_url, text).await, 0);
    }
    // In its room, it is taken.
    reply(&mut a, &private, "ann replies 5").await;
    let frame = a.wait_for_message("ann replies 5").await;
    assert!(frame.html.contains("said to bob alone"));
}
