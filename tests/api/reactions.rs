//! Reactions: any member toggles their own, everyone sees the counts once, a resume
//! replays what it missed, and a message's reactions stay small however many react.

use serde_json::json;

use crate::helpers::{Backend, Client, TestApp, attr, count};
use crate::on_both_databases;

on_both_databases!(
    members_react_and_everyone_sees_it_once,
    only_members_react_and_with_one_emoji,
    a_resume_replays_the_reactions_it_missed,
    a_message_holds_a_bounded_number_of_reactions,
    reactions_go_through_the_posting_rate,
);

async fn react(client: &mut Client, id: &str, emoji: &str) {
    client
        .act("React", json!({ "messageId": id, "emoji": emoji }))
        .await;
}

/// The chip for `emoji` in an article: its count and its tooltip.
fn chip(html: &str, emoji: &str) -> Option<(i64, String)> {
    let start = html.find(&format!("data-emoji=\"{emoji}\""))?;
    let chip = &html[html[..start].rfind("<button")?..];
    let chip = &chip[..chip.find("</button>")?];
    let title = attr(chip, "title")?;
    let n = chip[chip.find("class=\"count\">")? + 14..]
        .split('<')
        .next()?
        .parse()
        .ok()?;
    Some((n, title))
}

async fn members_react_and_everyone_sees_it_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let id = a.post("lunch at noon?").await;
    b.wait_for_message("lunch at noon?").await;

    react(&mut b, &id, "👍").await;
    for client in [&mut a, &mut b] {
        let change = client.wait_for_change(&id).await;
        assert_eq!(
            chip(&change.html, "👍"),
            Some((1, "bob reacted with 👍".into())),
            "{}",
            change.html
        );
        assert!(change.html.contains("lunch at noon?"));
        assert!(!change.html.contains("(edited)"));
    }
    react(&mut a, &id, "👍").await;
    react(&mut a, &id, "🎉").await;
    a.wait_for_change(&id).await;
    a.wait_for_change(&id).await;
    // Changes published at once may arrive in either order; the page keeps the later rev.
    let (one, two) = (b.wait_for_change(&id).await, b.wait_for_change(&id).await);
    let rev = |html: &str| attr(html, "data-rev").and_then(|r| r.parse::<i64>().ok());
    let change = if rev(&one.html) > rev(&two.html) {
        one
    } else {
        two
    };
    assert_eq!(
        chip(&change.html, "👍"),
        Some((2, "bob, ann reacted with 👍".into()))
    );
    assert_eq!(
        chip(&change.html, "🎉"),
        Some((1, "ann reacted with 🎉".into()))
    );
    // Pressed again, a reaction is taken back; the last one gone, its chip goes.
    react(&mut b, &id, "👍").await;
    let change = a.wait_for_change(&id).await;
    assert_eq!(
        chip(&change.html, "👍"),
        Some((1, "ann reacted with 👍".into()))
    );
    react(&mut a, &id, "🎉").await;
    let change = a.wait_for_change(&id).await;
    assert_eq!(chip(&change.html, "🎉"), None, "{}", change.html);
    // Each change once: nothing more of it before Bob's own next message.
    b.wait_for_change(&id).await;
    b.wait_for_change(&id).await;
    let later = b.frames_until_own_marker().await;
    assert!(later.iter().all(|f| !f.html.contains(&id)), "{later:?}");

    // History shows them; a reaction is no unread message.
    let mut again = app.connect(&bob).await;
    let history = again.wait_for_history().await;
    assert_eq!(
        chip(&history, "👍"),
        Some((1, "ann reacted with 👍".into()))
    );
    // Deleted, a message loses its reactions with its text.
    a.act("Delete message", json!({ "messageId": id })).await;
    let gone = a.wait_for_change(&id).await;
    assert!(!gone.html.contains("data-emoji"), "{}", gone.html);
    let sql = "SELECT COUNT(*) FROM reactions WHERE message_id = $1";
    assert_eq!(count(&app.database_url, sql, &id).await, 0);
    react(&mut b, &id, "👍").await;
    assert!(b.wait_for_error().await.contains("deleted"));
}

async fn only_members_react_and_with_one_emoji(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ann, bob, eve] = app.signups(["ann", "bob", "eve"]).await;
    let mut a = app.connect(&ann).await;
    let mut e = app.connect(&eve).await;
    a.enter_direct("bob").await;
    let private = a.post("said to bob alone").await;
    drop(bob);

    // Eve is not in the conversation: to her there is no such message.
    react(&mut e, &private, "👍").await;
    assert!(e.wait_for_error().await.contains("no such message"));
    react(&mut e, &uuid::Uuid::now_v7().to_string(), "👍").await;
    assert!(e.wait_for_error().await.contains("no such message"));
    react(&mut e, "not-an-id", "👍").await;
    assert!(e.wait_for_error().await.contains("UUID"));
    for bad in ["", "ok", "👍👍", "<b>", &"👍".repeat(1000)] {
        react(&mut a, &private, bad).await;
        assert!(
            a.wait_for_error().await.contains("single emoji"),
            "{bad:?} was taken"
        );
    }
    // Nothing changed.
    let sql = "SELECT COUNT(*) FROM reactions WHERE message_id = $1";
    assert_eq!(count(&app.database_url, sql, &private).await, 0);
    // Any single emoji does, not only the ones offered.
    react(&mut a, &private, "🦀").await;
    let change = a.wait_for_change(&private).await;
    assert_eq!(
        chip(&change.html, "🦀"),
        Some((1, "ann reacted with 🦀".into()))
    );
}

async fn a_resume_replays_the_reactions_it_missed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let id = a.post("react to this").await;
    let seen = b.wait_for_message("react to this").await;
    let room = b.room_id.clone();
    let after: i64 = attr(&seen.html, "data-seq").unwrap().parse().unwrap();
    b.close().await;

    react(&mut a, &id, "😂").await;
    a.wait_for_change(&id).await;

    let html = app.resumed_through(&bob, &room, after, after + 1).await;
    assert_eq!(
        chip(&html, "😂"),
        Some((1, "ann reacted with 😂".into())),
        "{html}"
    );
    assert_eq!(html.matches(&format!("id=\"msg-{id}\"")).count(), 1);
}

/// However many people react and with whatever, one message carries at most `MAX_KINDS`
/// (20) emoji and names at most ten people for each: its article stays small.
async fn a_message_holds_a_bounded_number_of_reactions(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-burst", "100"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    let id = a.post("react away").await;
    let emoji: Vec<char> = ('\u{1F600}'..='\u{1F614}').collect();
    for e in &emoji[..20] {
        react(&mut a, &id, &e.to_string()).await;
        a.wait_for_change(&id).await;
    }
    react(&mut a, &id, &emoji[20].to_string()).await;
    assert!(a.wait_for_error().await.contains("at most 20 different"));

    // Twelve more people add one already there: ten are named, the rest counted.
    let first = emoji[0].to_string();
    for n in 0..12 {
        let user = app.signup(&format!("fan{n}")).await;
        let mut c = app.connect(&user).await;
        react(&mut c, &id, &first).await;
        c.wait_for_change(&id).await;
    }
    let mut b = app.connect(&ann).await;
    let history = b.wait_for_history().await;
    let (n, title) = chip(&history, &first).expect("the first emoji's chip");
    assert_eq!(n, 13);
    assert_eq!(
        title,
        format!(
            "ann, {} and 3 others reacted with {first}",
            (0..9)
                .map(|n| format!("fan{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    );
    assert_eq!(history.matches("data-emoji=").count(), 20);
}

/// Reactions cost like posts: past the posting rate they are refused, and the refusal
/// says so.
async fn reactions_go_through_the_posting_rate(backend: Backend) {
    let app =
        TestApp::spawn_with(backend, &["--rate-burst", "3", "--rate-per-second", "0.01"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    let id = a.post("one").await;
    let refused = a
        .refused_as_too_fast(&id, |_| {
            ("React", json!({ "messageId": id, "emoji": "👍" }))
        })
        .await;
    assert!(refused, "ten reactions at once were all taken");
}
