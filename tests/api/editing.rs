//! Edits and deletions: by the author only, stored with the room's next seq, replacing the
//! article in place for everyone once, replayed by a resume that missed them, and a deleted
//! text found nowhere.

use serde_json::json;

use crate::helpers::{Backend, Client, TestApp, attr, count};
use crate::on_both_databases;

on_both_databases!(
    authors_edit_and_delete_and_everyone_sees_it_once,
    only_the_author_changes_a_message_and_others_are_told_why,
    a_resume_replays_the_edits_and_deletions_it_missed,
    a_change_is_no_unread_message,
    a_change_does_not_bring_back_a_hidden_conversation,
    changes_go_through_the_posting_rate,
);

async fn edit(client: &mut Client, id: &str, text: &str) {
    client
        .act("Edit message", json!({ "messageId": id, "message": text }))
        .await;
}

async fn delete(client: &mut Client, id: &str) {
    client
        .act("Delete message", json!({ "messageId": id }))
        .await;
}

/// How many times `text` is in the database, anywhere in a message row.
async fn stored_anywhere(database_url: &str, text: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM messages WHERE body LIKE $1 OR COALESCE(client_id, '') LIKE $1";
    count(database_url, sql, &format!("%{text}%")).await
}

async fn authors_edit_and_delete_and_everyone_sees_it_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let id = a.post("first draft").await;
    b.wait_for_message("first draft").await;

    edit(&mut a, &id, "second *draft*").await;
    for client in [&mut a, &mut b] {
        let change = client.wait_for_change(&id).await;
        assert!(
            change.html.contains("second <em>draft</em>"),
            "{}",
            change.html
        );
        assert!(change.html.contains("(edited)"), "{}", change.html);
        assert_eq!(
            attr(&change.html, "data-src").as_deref(),
            Some("second *draft*")
        );
        let seq: i64 = attr(&change.html, "data-seq").unwrap().parse().unwrap();
        let rev: i64 = attr(&change.html, "data-rev").unwrap().parse().unwrap();
        assert!(rev > seq, "an edit takes the room's next seq: {seq} {rev}");
    }
    // Once: nothing more of it before Bob's own next message.
    let later = b.frames_until_own_marker().await;
    assert!(later.iter().all(|f| !f.html.contains("draft")), "{later:?}");

    let secret = "a secret said by mistake";
    let oops = a.post(secret).await;
    delete(&mut a, &oops).await;
    for client in [&mut a, &mut b] {
        let change = client.wait_for_change(&oops).await;
        assert!(
            change.html.contains("This message was deleted."),
            "{}",
            change.html
        );
        assert!(!change.html.contains(secret));
        assert!(
            change.html.contains("class=\"message deleted\""),
            "{}",
            change.html
        );
    }
    // The text is gone from the database, and from history.
    assert_eq!(stored_anywhere(&app.database_url, secret).await, 0);
    let mut again = app.connect(&bob).await;
    let history = again.wait_for_history().await;
    assert!(!history.contains(secret));
    assert!(history.contains("This message was deleted."));
    assert!(history.contains("second <em>draft</em>"));

    // A deleted message stays deleted.
    edit(&mut a, &oops, "back again").await;
    assert!(a.wait_for_error().await.contains("deleted"));
}

async fn only_the_author_changes_a_message_and_others_are_told_why(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ann, bob, eve] = app.signups(["ann", "bob", "eve"]).await;
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let mut e = app.connect(&eve).await;
    let public = a.post("said in public").await;
    a.enter_direct("bob").await;
    let private = a.post("said to bob alone").await;

    edit(&mut b, &public, "bob was here").await;
    assert!(b.wait_for_error().await.contains("only edit your own"));
    delete(&mut b, &private).await;
    assert!(b.wait_for_error().await.contains("only delete your own"));
    // Eve is not in the conversation: to her there is no such message.
    delete(&mut e, &private).await;
    assert!(e.wait_for_error().await.contains("no such message"));
    edit(&mut e, &uuid::Uuid::now_v7().to_string(), "x").await;
    assert!(e.wait_for_error().await.contains("no such message"));
    edit(&mut e, "not-an-id", "x").await;
    assert!(e.wait_for_error().await.contains("UUID"));
    // The author's edit is checked like a post.
    edit(&mut a, &private, "   ").await;
    let refused = a.wait_for_error().await;
    assert!(!refused.is_empty());
    edit(&mut a, &private, &"x".repeat(5000)).await;
    assert!(a.wait_for_error().await.contains("4000"));

    // Nothing changed.
    let mut b2 = app.connect(&bob).await;
    b2.enter_direct("ann").await;
    let history = b2.wait_for_history().await;
    assert!(history.contains("said to bob alone"));
    assert!(!history.contains("(edited)"));
}

async fn a_resume_replays_the_edits_and_deletions_it_missed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let kept = a.post("kept as it was").await;
    let edited = a.post("before the edit").await;
    let deleted = a.post("soon to be gone").await;
    let seen = b.wait_for_message("soon to be gone").await;
    let room = b.room_id.clone();
    let after: i64 = attr(&seen.html, "data-seq").unwrap().parse().unwrap();
    b.close().await;

    edit(&mut a, &edited, "after the edit").await;
    a.wait_for_change(&edited).await;
    delete(&mut a, &deleted).await;
    a.wait_for_change(&deleted).await;
    a.post("said while bob was away").await;

    // Three changes since what Bob saw: an edit, a deletion and a post; the server says
    // when it has sent everything through the last.
    let html = app.resumed_through(&bob, &room, after, after + 3).await;
    assert!(html.contains("after the edit"), "{html}");
    assert!(html.contains("This message was deleted."), "{html}");
    assert!(html.contains("said while bob was away"), "{html}");
    assert!(!html.contains("soon to be gone"), "{html}");
    assert!(!html.contains(&format!("msg-{kept}")), "{html}");
    // Each once.
    for id in [&edited, &deleted] {
        assert_eq!(
            html.matches(&format!("id=\"msg-{id}\"")).count(),
            1,
            "{html}"
        );
    }
}

async fn a_change_is_no_unread_message(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let id = a.post("to be edited").await;
    b.wait_for_message("to be edited").await;
    b.enter_group("python").await;
    edit(&mut a, &id, "edited while bob looks elsewhere").await;
    a.wait_for_change(&id).await;
    delete(&mut a, &id).await;
    a.wait_for_change(&id).await;
    let later = b.frames_until_own_marker().await;
    assert!(
        later
            .iter()
            .all(|f| !f.selector.starts_with("#unread-") || f.html.is_empty()),
        "{later:?}"
    );
    // Nor when Bob comes back: the sidebar counts messages, not changes.
    let again = app.page(&bob.cookie).await;
    let hi = &again[again
        .find("data-group-name=\"hi\"")
        .expect("#hi in the sidebar")..];
    let badge = &hi[..hi.find("</a>").unwrap_or(hi.len())];
    assert!(!badge.contains(" unread</span>"), "{badge}");
}

/// A hidden conversation comes back with a new message, not with an edit or a deletion.
async fn a_change_does_not_bring_back_a_hidden_conversation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    a.enter_direct("bob").await;
    let id = a.post("hello bob").await;
    b.act("Hide conversation", json!({ "username": "ann" }))
        .await;
    b.wait_for(|f| f.selector.starts_with("#room-") && f.swap == "remove")
        .await;
    edit(&mut a, &id, "hello again, bob").await;
    a.wait_for_change(&id).await;
    delete(&mut a, &id).await;
    a.wait_for_change(&id).await;
    let page = app.page(&bob.cookie).await;
    let directs = &page[page.find("id=\"directs\"").expect("the directs list")..];
    let directs = &directs[..directs.find("</ul>").unwrap_or(directs.len())];
    assert!(!directs.contains("data-group-name=\"ann\""), "{directs}");
    // A message brings it back.
    a.post("are you there?").await;
    let page = app.page(&bob.cookie).await;
    let directs = &page[page.find("id=\"directs\"").expect("the directs list")..];
    let directs = &directs[..directs.find("</ul>").unwrap_or(directs.len())];
    assert!(directs.contains("data-group-name=\"ann\""), "{directs}");
}

/// Edits cost like posts: past the posting rate they are refused, and the refusal says so.
async fn changes_go_through_the_posting_rate(backend: Backend) {
    let app =
        TestApp::spawn_with(backend, &["--rate-burst", "3", "--rate-per-second", "0.01"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    let id = a.post("one").await;
    let refused = a
        .refused_as_too_fast(&id, |n| {
            let data = json!({ "messageId": id, "message": format!("edit {n}") });
            ("Edit message", data)
        })
        .await;
    assert!(refused, "ten edits at once were all taken");
}
