//! Mentions: `@name` of a person of the room is marked for everyone, and counted for that
//! person apart from the unread count, live and after a reconnect, until they read it.

use serde_json::json;

use crate::helpers::{Backend, TestApp, TestUser, attr, count, message_ids};
use crate::on_both_databases;

on_both_databases!(
    a_mention_is_marked_and_counted_for_its_person,
    only_people_of_the_room_are_mentioned_and_at_most_ten,
    a_deleted_mention_counts_no_more,
);

/// The mention badge of room `room_id` in `user`'s sidebar, as the page shows it.
async fn mention_badge(app: &TestApp, user: &TestUser, room_id: &str) -> String {
    let page = app.page(&user.cookie).await;
    let badge = &page[page
        .find(&format!("id=\"mentions-{room_id}\">"))
        .expect("the room's mention badge")..];
    let badge = &badge[badge.find('>').unwrap_or(0) + 1..];
    badge[..badge.find("</span>").unwrap_or(badge.len())].to_owned()
}

async fn a_mention_is_marked_and_counted_for_its_person(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ann, bob] = app.signups(["ann", "bob"]).await;
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let hi = a.room_id.clone();
    b.enter_group("python").await;

    a.say("hey @BOB, and @ann too: lunch?").await;
    let posted = a.wait_for_message("lunch?").await;
    // Bob is marked (his id, so his page can tell); Ann does not mention herself.
    let bob_id = {
        let start = posted.html.find("data-mention=\"").expect("a mention") + 14;
        posted.html[start..start + 36].to_owned()
    };
    assert!(
        posted.html.contains(&format!(
            "<span class=\"mention\" data-mention=\"{bob_id}\">@BOB</span>"
        )),
        "{}",
        posted.html
    );
    assert_eq!(posted.html.matches("class=\"mention\"").count(), 1);
    // Bob, elsewhere, sees the room's mention count apart from its unread count.
    let badge = b
        .wait_for(|f| f.selector == format!("#mentions-{hi}"))
        .await;
    assert!(badge.html.starts_with("@1"), "{}", badge.html);
    a.say("no name in this one").await;
    a.wait_for_message("no name in this one").await;
    let unread = b
        .wait_for(|f| f.selector == format!("#unread-{hi}") && f.html.starts_with('2'))
        .await;
    assert!(unread.html.starts_with('2'));
    // Ann's own sidebar counts nothing; Bob's, read anew, still counts one.
    assert_eq!(mention_badge(&app, &ann, &hi).await, "");
    assert!(mention_badge(&app, &bob, &hi).await.starts_with("@1"));
    // Read, it is gone.
    b.enter_group("hi").await;
    assert_eq!(mention_badge(&app, &bob, &hi).await, "");
}

async fn only_people_of_the_room_are_mentioned_and_at_most_ten(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--auth-rate-limit", "off"]).await;
    let ann = app.signup("ann").await;
    let mut people = Vec::new();
    for n in 0..12 {
        people.push(app.signup(&format!("fan{n:02}")).await);
    }
    app.signup("carol").await;
    let mut a = app.connect(&ann).await;
    // In a conversation with fan00, only fan00 is in the room.
    a.enter_direct("fan00").await;
    let room = a.room_id.clone();
    a.say("@fan00 and @carol").await;
    let posted = a.wait_for_message("and @carol").await;
    assert_eq!(posted.html.matches("class=\"mention\"").count(), 1);
    assert!(posted.html.contains(">@fan00</span>"), "{}", posted.html);
    assert!(!posted.html.contains(">@carol</span>"));
    // In #hi all twelve are, and one message names them all: ten are mentioned.
    a.enter_group("hi").await;
    let everyone: String = (0..12).map(|n| format!("@fan{n:02} ")).collect();
    a.say(&everyone).await;
    let posted = a.wait_for_message("@fan11").await;
    assert_eq!(posted.html.matches("class=\"mention\"").count(), 10);
    let seq = attr(&posted.html, "data-seq").unwrap();
    let sql = "SELECT COUNT(*) FROM mentions WHERE room_id = $1";
    assert_eq!(count(&app.database_url, sql, &a.room_id).await, 10);
    assert!(!seq.is_empty());
    assert_eq!(count(&app.database_url, sql, &room).await, 1);
}

async fn a_deleted_mention_counts_no_more(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ann, bob] = app.signups(["ann", "bob"]).await;
    let mut a = app.connect(&ann).await;
    let hi = a.room_id.clone();
    a.say("@bob look at this").await;
    let posted = a.wait_for_message("look at this").await;
    let id = message_ids(&posted.html).pop().expect("an article");
    let id = id.strip_prefix("msg-").unwrap_or(&id).to_owned();
    assert!(mention_badge(&app, &bob, &hi).await.starts_with("@1"));
    a.act("Delete message", json!({ "messageId": id })).await;
    let gone = a.wait_for_change(&id).await;
    assert!(!gone.html.contains("mention"), "{}", gone.html);
    assert_eq!(mention_badge(&app, &bob, &hi).await, "");
}
