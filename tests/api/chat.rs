//! Rooms, messages, history, privacy, presence, unread badges and catch-up.

use serde_json::json;

use crate::helpers::{
    Backend, ListedSeen, Received, TestApp, attr, follow, message_ids, metric, seqs,
};
use crate::on_both_databases;

on_both_databases!(
    group_message_is_one_fragment_for_everyone,
    private_rooms_are_private,
    history_pages_backwards,
    a_room_entered_again_at_once_shows_every_change_since,
    html_in_messages_is_text,
    formatting_is_rendered_once_on_the_server,
    unread_badges_follow_other_rooms,
    presence_is_live_and_counts_users_not_tabs,
    a_crowded_room_lists_some_and_counts_the_rest,
    lists_are_right_after_a_storm_of_departures,
    reconnect_catches_up_without_duplicates,
    new_groups_appear_for_their_members,
    slow_reader_is_cut_off,
    a_busy_node_gathers_frames_into_fewer_writes,
);

/// Sockets entering a room one after another share the page read for the first, while
/// nothing in the room changes; a message, an edit, a reaction or a deletion in between is
/// shown to the next one all the same.
async fn a_room_entered_again_at_once_shows_every_change_since(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    // Ann stays, so the node follows the room throughout.
    let mut a = app.connect(&ann).await;
    let id = a.post("first words").await;
    let history = app.connect(&bob).await.wait_for_history().await;
    assert!(history.contains("first words"), "{history}");
    // The same again: the page kept is the page read.
    assert_eq!(app.connect(&bob).await.wait_for_history().await, history);

    let selector = format!("#msg-{id}");
    a.act(
        "Edit message",
        json!({ "messageId": id, "message": "better words" }),
    )
    .await;
    a.wait_for(|f| f.selector == selector).await;
    let history = app.connect(&bob).await.wait_for_history().await;
    assert!(
        history.contains("better words") && !history.contains("first words"),
        "{history}"
    );

    a.act("React", json!({ "messageId": id, "emoji": "👍" }))
        .await;
    a.wait_for(|f| f.selector == selector && f.html.contains("data-emoji"))
        .await;
    let history = app.connect(&bob).await.wait_for_history().await;
    assert!(history.contains("ann reacted with 👍"), "{history}");

    a.post("second words").await;
    let history = app.connect(&bob).await.wait_for_history().await;
    assert!(history.contains("second words"), "{history}");

    a.act("Delete message", json!({ "messageId": id })).await;
    a.wait_for(|f| f.selector == selector && f.html.contains("deleted"))
        .await;
    let history = app.connect(&bob).await.wait_for_history().await;
    assert!(
        history.contains("This message was deleted.") && !history.contains("better words"),
        "{history}"
    );
}

async fn group_message_is_one_fragment_for_everyone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    a.enter_group("python").await;
    b.enter_group("python").await;
    assert_eq!(a.room_id, b.room_id);

    a.say("hello python").await;
    for client in [&mut a, &mut b] {
        let frame = client.wait_for_message("hello python").await;
        assert_eq!(frame.selector, "#messages-list");
        assert_eq!(frame.swap, "beforeend");
        let ids = message_ids(&frame.html);
        assert_eq!(ids.len(), 1, "one article per frame: {}", frame.html);
        let uuid = uuid::Uuid::parse_str(ids[0].trim_start_matches("msg-")).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(seqs(&frame.html), vec![1]);
        assert!(
            frame
                .html
                .contains("<strong class=\"author\"><bdi>ann</bdi></strong>")
        );
        // Text that reads right to left, or overrides direction, cannot flip its
        // neighbours: the body picks its own direction, names are isolated.
        assert!(frame.html.contains("<p class=\"body\" dir=\"auto\">"));
    }
    // Exactly once: nothing else about it arrives before the next message.
    b.say("second").await;
    let (_, skipped) = a.wait_for_with_skipped(|f| f.html.contains("second")).await;
    assert!(skipped.iter().all(|f| !f.html.contains("hello python")));
}

async fn private_rooms_are_private(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let [ann, bob, eve] = app.signups(["ann", "bob", "eve"]).await;
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let mut e = app.connect(&eve).await;

    a.enter_direct("bob").await;
    let title = a.wait_for(|f| f.selector == "#messages-list").await;
    assert_eq!(title.html, "", "a new conversation is empty");
    // Bob learns about the conversation live, then opens it: the same room, whoever starts.
    let added = b.wait_for(|f| f.selector == "#directs").await;
    assert!(added.html.contains("ann"));
    b.enter_direct("ann").await;
    assert_eq!(a.room_id, b.room_id);
    let private_room = a.room_id.clone();

    a.say("secret for bob").await;
    b.wait_for_message("secret for bob").await;
    a.wait_for_message("secret for bob").await;

    // Eve tries every door. By name, with each isGroup value:
    e.enter_direct("bob").await;
    assert_ne!(e.room_id, private_room, "eve gets her own room with bob");
    let eve_and_bob = e.room_id.clone();
    let history = e.wait_for(|f| f.selector == "#messages-list").await;
    assert!(!history.html.contains("secret"));
    e.enter_direct("ann").await;
    assert_ne!(e.room_id, private_room);
    e.enter_group("bob").await;
    assert_ne!(e.room_id, private_room, "a group named bob is just a group");
    // By the room's id, as a reconnecting client would:
    let mut resumed = app
        .connect_at(&eve, &format!("/ws/chat/?room={private_room}&after=0"))
        .await;
    assert_ne!(resumed.room_id, private_room);
    let frames = resumed.frames_until_own_marker().await;
    assert!(frames.iter().all(|f| !f.html.contains("secret")));
    // And she never receives their messages live.
    a.say("second secret").await;
    b.wait_for_message("second secret").await;
    let seen = e.frames_until_own_marker().await;
    assert!(
        seen.iter().all(|f| !f.html.contains("secret")),
        "eve saw: {seen:?}"
    );
    // Her own room with bob is also unique per pair.
    let mut b2 = app.connect(&bob).await;
    b2.enter_direct("eve").await;
    assert_eq!(b2.room_id, eve_and_bob);
}

async fn history_pages_backwards(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--rate-burst", "1000"]).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    a.enter_group("events").await;
    for i in 1..=120 {
        a.say(&format!("event number {i}")).await;
    }
    a.wait_for_message("event number 120").await;

    a.enter_group("events").await;
    let list = a.wait_for(|f| f.selector == "#messages-list").await;
    assert_eq!(seqs(&list.html), (71..=120).collect::<Vec<_>>());

    a.act("Load older", json!({ "beforeSeq": 71 })).await;
    let older = a
        .wait_for(|f| f.selector == "#messages-list" && f.swap == "afterbegin")
        .await;
    assert_eq!(seqs(&older.html), (21..=70).collect::<Vec<_>>());
    let more = a.wait_for(|f| f.selector == "#load-older").await;
    assert_eq!(attr(&more.html, "data-before-seq").as_deref(), Some("21"));

    a.act("Load older", json!({ "beforeSeq": 21 })).await;
    let oldest = a
        .wait_for(|f| f.selector == "#messages-list" && f.swap == "afterbegin")
        .await;
    assert_eq!(seqs(&oldest.html), (1..=20).collect::<Vec<_>>());
    let end = a.wait_for(|f| f.selector == "#load-older").await;
    assert!(end.html.contains("beginning"), "{}", end.html);
}

/// Markdown-style formatting reaches every member rendered, the same in history; what it
/// cannot express (raw HTML, script addresses, remote images) stays text.
async fn formatting_is_rendered_once_on_the_server(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let text = "**bold** and `x < y`\n\n```python\nprint(\"hi\")\n```\n\n> quoted\n\n\
                - [docs](https://docs.rs) [bad](javascript:alert(1)) ![img](https://evil.example/t.png)";
    a.say(text).await;
    let live = b.wait_for_message("quoted").await;
    for part in [
        "<div class=\"body\" dir=\"auto\"><p><strong>bold</strong> and <code>x &lt; y</code></p>",
        "<pre data-lang=\"python\"><code>print(&quot;hi&quot;)\n</code></pre>",
        "<blockquote><p>quoted</p></blockquote>",
        "<a href=\"https://docs.rs\" target=\"_blank\" rel=\"nofollow noopener noreferrer ugc\">docs</a>",
        "<a href=\"https://evil.example/t.png\" target=\"_blank\"",
    ] {
        assert!(live.html.contains(part), "{part} in {}", live.html);
    }
    for absent in ["javascript:alert(1)\"", "<img", "href=\"javascript"] {
        assert!(!live.html.contains(absent), "{absent} in {}", live.html);
    }
    // History shows the same article.
    let mut again = app.connect(&bob).await;
    let history = again
        .wait_for(|f| f.selector == "#messages-list" && f.html.contains("quoted"))
        .await;
    let article = |html: &str| html[html.find("<article").unwrap_or(0)..].to_owned();
    assert_eq!(article(&history.html), article(&live.html));
}

async fn html_in_messages_is_text(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;
    let mut a = app.connect(&ann).await;
    a.say("<script>alert(1)</script> <img src=x onerror=alert(2)>")
        .await;
    let frame = a.wait_for_message("alert(1)").await;
    assert!(
        frame
            .html
            .contains("&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt;"),
        "{}",
        frame.html
    );
    assert!(!frame.html.contains("<script"));
    assert!(!frame.html.contains("<img"));
}

async fn unread_badges_follow_other_rooms(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    a.enter_group("python").await;
    let python = a.room_id.clone();
    assert_ne!(b.room_id, python, "bob stays in #hi");

    a.say("first").await;
    a.say("second").await;
    let badge = format!("#unread-{python}");
    // The count, read out by screen readers as "1 unread".
    let unread = |n: i64| format!("{n}<span class=\"visually-hidden\"> unread</span>");
    let one = b.wait_for(|f| f.selector == badge).await;
    assert_eq!(one.html, unread(1));
    let two = b.wait_for(|f| f.selector == badge).await;
    assert_eq!(two.html, unread(2));

    // Someone who joins later counts nothing said before as unread.
    let newcomer = app.signup("newcomer").await;
    let fresh = app.page(&newcomer.cookie).await;
    assert!(
        fresh.contains(&format!(r#"id="unread-{python}"></span>"#)),
        "{fresh}"
    );
    // A fresh page shows the stored count; entering the room clears it.
    let page = app.page(&bob.cookie).await;
    assert!(
        page.contains(&format!(r#"id="unread-{python}">{}</span>"#, unread(2))),
        "{page}"
    );
    b.enter_group("python").await;
    let cleared = b.wait_for(|f| f.selector == badge).await;
    assert_eq!(cleared.html, "");
    let later = app.connect(&bob).await;
    drop(later);
    let page = app.page(&bob.cookie).await;
    assert!(page.contains(&format!(r#"id="unread-{python}"></span>"#)));
}

async fn presence_is_live_and_counts_users_not_tabs(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let bob_tab1 = app.connect(&bob).await;
    let online = a
        .wait_for(|f| f.selector == "#people" && f.html.contains("bob"))
        .await;
    assert_eq!(online.swap, "beforeend");
    let bob_id = attr(&online.html, "id").unwrap().replace("person-", "");
    // Bob is also in #hi with ann: the room's member list grows.
    let member = a.wait_for(|f| f.selector == "#room-members").await;
    assert!(member.html.contains("bob"));

    let mut bob_tab2 = app.connect(&bob).await;
    bob_tab1.close().await;
    // Still online through the second tab: no "gone" frame before ann's marker.
    let frames = a.frames_until_own_marker().await;
    assert!(
        frames
            .iter()
            .all(|f| f.selector != format!("#person-{bob_id}")),
        "{frames:?}"
    );
    // A room change moves bob out of #hi's member list.
    bob_tab2.enter_group("python").await;
    let left = a
        .wait_for(|f| f.selector == format!("#member-{bob_id}"))
        .await;
    assert_eq!(left.swap, "remove");
    bob_tab2.close().await;
    let gone = a
        .wait_for(|f| f.selector == format!("#person-{bob_id}"))
        .await;
    assert_eq!(gone.swap, "remove");
}

async fn a_crowded_room_lists_some_and_counts_the_rest(backend: Backend) {
    use wirechat::presence::SHOWN;
    let app = TestApp::spawn_with(backend, &["--auth-rate-limit", "1000"]).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    let bob_listed = a
        .wait_for(|f| f.selector == "#room-members" && f.html.contains("bob"))
        .await;
    let bob_id = attr(&bob_listed.html, "id").unwrap().replace("member-", "");

    // Everyone starts in #hi. Ann, bob and the guests fill the list; the last guest only
    // moves the count.
    let mut guests = Vec::new();
    for _ in 0..SHOWN - 1 {
        guests.push(app.connect(&app.guest().await).await);
    }
    let (_, skipped) = a
        .wait_for_with_skipped(|f| f.selector == "#room-members-more" && f.html == "and 1 more")
        .await;
    let listed_after_bob = skipped
        .iter()
        .filter(|f| f.selector == "#room-members" && f.swap == "beforeend")
        .count();
    assert_eq!(listed_after_bob, SHOWN - 2, "{skipped:?}");

    // A newcomer is shown the list and the count, not everyone.
    let mut carl = app
        .open_socket(&app.guest().await, "/ws/chat/")
        .await
        .expect("socket opens");
    // The Online list as well: the first SHOWN people, in the sidebar's list.
    let sidebar = carl.wait_for(|f| f.selector == "#aside").await;
    let online = sidebar
        .html
        .split("<ul id=\"people\">")
        .nth(1)
        .unwrap_or_default();
    let online = online.split("</ul>").next().unwrap_or_default();
    assert_eq!(online.matches("<li id=\"person-").count(), SHOWN);
    let shown = carl.wait_for(|f| f.selector == "#room-members").await;
    assert_eq!(shown.html.matches("<li id=\"member-").count(), SHOWN);
    let count = carl.wait_for(|f| f.selector == "#room-members-more").await;
    assert_eq!(count.html, "and 2 more");
    a.wait_for(|f| f.selector == "#room-members-more" && f.html == "and 2 more")
        .await;

    // A listed person leaving makes room for one of the others.
    b.enter_group("python").await;
    let (_, skipped) = a
        .wait_for_with_skipped(|f| f.selector == "#room-members-more" && f.html == "and 1 more")
        .await;
    let gone = format!("#member-{bob_id}");
    assert!(
        skipped
            .iter()
            .any(|f| f.selector == gone && f.swap == "remove"),
        "{skipped:?}"
    );
    let promoted = skipped
        .iter()
        .filter(|f| f.selector == "#room-members" && f.swap == "beforeend")
        .count();
    assert_eq!(promoted, 1, "{skipped:?}");
    drop(guests);
}

/// Many listed people leave a crowded room at once: the node tells viewers what changed
/// with its next round rather than per departure, and a viewer, or a socket that opened
/// meanwhile, ends with the same lists, by name and count, as a newcomer is shown.
async fn lists_are_right_after_a_storm_of_departures(backend: Backend) {
    use wirechat::presence::SHOWN;
    let app = TestApp::spawn_with(backend, &["--auth-rate-limit", "1000"]).await;
    let ann = app.signup("ann").await;
    let mut a = app
        .open_socket(&ann, "/ws/chat/")
        .await
        .expect("socket opens");
    let (mut members, mut online) = (ListedSeen::room_members(), ListedSeen::online());

    // Ann and SHOWN + 10 guests: the lists are full and eleven more are counted.
    let mut guests = Vec::new();
    for _ in 0..SHOWN + 10 {
        guests.push(app.connect(&app.guest().await).await);
    }
    let full = |m: &ListedSeen, o: &ListedSeen| {
        [m, o]
            .iter()
            .all(|l| l.ids.len() == SHOWN && l.more == "and 11 more")
    };
    follow(&mut a, &mut members, &mut online, full).await;

    // Thirty of the listed guests go at once; the eleven counted take places. Ann opens
    // a second tab meanwhile, shown the lists as they are then.
    let gone: Vec<_> = guests.drain(..30).collect();
    for guest in gone {
        guest.abandon();
    }
    let mut tab = app
        .open_socket(&ann, "/ws/chat/")
        .await
        .expect("socket opens");
    let (mut tab_members, mut tab_online) = (ListedSeen::room_members(), ListedSeen::online());
    // Once everyone waiting is listed, the count is gone and only removals could follow,
    // so a list of the final length is the final list.
    let settled = |m: &ListedSeen, o: &ListedSeen| {
        [m, o]
            .iter()
            .all(|l| l.ids.len() == SHOWN - 19 && l.more.is_empty())
    };
    follow(&mut a, &mut members, &mut online, settled).await;
    follow(&mut tab, &mut tab_members, &mut tab_online, settled).await;

    // Both show what a third tab is shown now.
    let mut third = app
        .open_socket(&ann, "/ws/chat/")
        .await
        .expect("socket opens");
    let (mut third_members, mut third_online) = (ListedSeen::room_members(), ListedSeen::online());
    let shown =
        |m: &ListedSeen, o: &ListedSeen| m.ids.len() == SHOWN - 19 && o.ids.len() == SHOWN - 19;
    follow(&mut third, &mut third_members, &mut third_online, shown).await;
    for (m, o) in [(&members, &online), (&tab_members, &tab_online)] {
        assert_eq!(m.ids, third_members.ids);
        assert_eq!(o.ids, third_online.ids);
    }
    assert!(third_members.more.is_empty() && third_online.more.is_empty());
    drop(guests);
}

async fn reconnect_catches_up_without_duplicates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    a.say("seen by both").await;
    let seen = b.wait_for_message("seen by both").await;
    let last_seq = seqs(&seen.html)[0];
    let room = b.room_id.clone();
    b.abandon();

    for text in ["missed one", "missed two", "missed three"] {
        a.say(text).await;
        a.wait_for_message(text).await;
    }

    let mut b = app
        .connect_at(&bob, &format!("/ws/chat/?room={room}&after={last_seq}"))
        .await;
    assert_eq!(b.room_id, room);
    let catch_up = b.wait_for(|f| f.selector == "#messages-list").await;
    assert_eq!(
        catch_up.swap, "beforeend",
        "resuming never replaces the list"
    );
    assert_eq!(
        seqs(&catch_up.html),
        vec![last_seq + 1, last_seq + 2, last_seq + 3]
    );
    assert!(catch_up.html.contains("missed one") && catch_up.html.contains("missed three"));

    // Live delivery continues, with nothing repeated.
    a.say("after the return").await;
    let (live, skipped) = b
        .wait_for_with_skipped(|f| f.html.contains("after the return"))
        .await;
    assert_eq!(seqs(&live.html), vec![last_seq + 4]);
    assert!(skipped.iter().all(|f| !f.html.contains("missed")));
}

/// A new group is listed for its members only (on each of their sockets); everyone else
/// finds it under "Browse groups", and joining lists it for them.
async fn new_groups_appear_for_their_members(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut a2 = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    a.act("Create group", json!({ "groupName": "#Rust-Lang" }))
        .await;
    let title = a.wait_for(|f| f.selector == "#group-name").await;
    assert!(title.html.contains("#rust-lang"));
    let listed = a2.wait_for(|f| f.selector == "#groups").await;
    assert_eq!(listed.swap, "beforeend");
    assert!(listed.html.contains("#rust-lang"));
    let told_bob = b.frames_until_own_marker().await;
    assert!(
        told_bob.iter().all(|f| !f.html.contains("rust-lang")),
        "{told_bob:?}"
    );
    assert!(app.page(&ann.cookie).await.contains("#rust-lang"));
    assert!(!app.page(&bob.cookie).await.contains("#rust-lang"));

    b.act("Browse groups", json!({ "query": "#ru" })).await;
    let found = b.wait_for(|f| f.selector == "#browse-results").await;
    assert!(found.html.contains("#rust-lang"), "{}", found.html);
    assert!(found.html.contains("1 member"), "{}", found.html);
    assert!(found.html.contains("Join"), "{}", found.html);
    b.act(
        "Change group",
        json!({ "groupName": "rust-lang", "isGroup": true }),
    )
    .await;
    // The row in an open dialog now says so.
    let row = b
        .wait_for(|f| {
            f.selector.starts_with("#browse-")
                && f.selector != "#browse-more"
                && f.swap == "outerHTML"
        })
        .await;
    assert!(
        row.html.contains("2 members") && row.html.contains("Leave"),
        "{}",
        row.html
    );
    b.wait_for_notice("You joined #rust-lang").await;
    assert!(
        app.page(&bob.cookie).await.contains("#rust-lang"),
        "groups come from the database"
    );
    b.act("Browse groups", json!({})).await;
    let all = b.wait_for(|f| f.selector == "#browse-results").await;
    for group in ["#events", "#hi", "#off-topic", "#python", "#rust-lang"] {
        assert!(all.html.contains(group), "{group} in {}", all.html);
    }
    assert!(all.html.contains("2 members"), "{}", all.html);
}

async fn slow_reader_is_cut_off(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            "--outbound-queue",
            "16",
            "--max-message-chars",
            "60000",
            "--rate-burst",
            "100000",
            "--rate-per-second",
            "100000",
        ],
    )
    .await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut sender = app.connect(&ann).await;
    let mut slow = app.connect(&bob).await;
    let room = slow.room_id.clone();
    // Bob stops reading. Ann sends far more than the socket buffers hold (~30 MB) and reads
    // each of her own messages as it comes back: the room is never held up by bob.
    let big = "x".repeat(59_000);
    let total = 500;
    for i in 1..=total {
        sender.say(&format!("n{i} {big}")).await;
        sender.wait_for_message(&format!("n{i} x")).await;
    }
    // Now bob reads what reached him: the server gave up on him part-way.
    let mut last_seq = 0;
    let mut delivered = 0;
    let close = loop {
        match slow.receive().await {
            Received::Frame(f) if f.selector == "#messages-list" && f.swap == "beforeend" => {
                delivered += 1;
                last_seq = *seqs(&f.html).last().unwrap();
            }
            Received::Frame(_) => {}
            Received::Closed(close) => break close,
        }
    };
    assert!(delivered < total, "bob was cut off (got {delivered})");
    // The node gave up on him: with a close (1013), or by dropping a socket whose writes
    // stayed blocked, when no close frame could reach him.
    if let Some(close) = close {
        assert_eq!(u16::from(close.code), 1013);
    }
    let cut_off = crate::helpers::metric(app.addr, "wirechat_slow_consumer_closes_total").await;
    assert!(cut_off >= 1.0, "the node never counted him as too slow");
    // He comes back and catches up: everything after what he saw, once.
    let mut back = app
        .connect_at(&bob, &format!("/ws/chat/?room={room}&after={last_seq}"))
        .await;
    let mut expected = last_seq + 1;
    while expected <= total as i64 {
        let f = back
            .wait_for(|f| f.selector == "#messages-list" && f.swap == "beforeend")
            .await;
        for seq in seqs(&f.html) {
            assert_eq!(seq, expected, "catch-up is complete and in order");
            expected += 1;
        }
    }
}

async fn a_busy_node_gathers_frames_into_fewer_writes(backend: Backend) {
    // Pacing always on, with a gap long enough that a burst of posts falls within it.
    let app = TestApp::spawn_with(
        backend,
        &[
            "--rate-burst",
            "1000",
            "--busy-frames-per-second",
            "0",
            "--write-gap-ms",
            "300",
        ],
    )
    .await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;
    a.enter_group("busy").await;
    b.enter_group("busy").await;
    a.wait_for(|f| f.selector == "#messages-list").await;
    b.wait_for(|f| f.selector == "#messages-list").await;

    const WRITES: &str = "wirechat_socket_writes_total";
    let before = metric(app.addr, WRITES).await;
    // Each post is stored and published on its own, one after the other: unpaced, every
    // one of them is a write to each socket.
    for i in 1..=10 {
        a.say(&format!("burst {i}")).await;
    }
    for client in [&mut a, &mut b] {
        let (last, skipped) = client
            .wait_for_with_skipped(|f| f.html.contains("burst 10"))
            .await;
        let shown: Vec<i64> = skipped
            .iter()
            .chain([&last])
            .filter(|f| f.selector == "#messages-list" && f.swap == "beforeend")
            .flat_map(|f| seqs(&f.html))
            .collect();
        assert_eq!(
            shown,
            (1..=10).collect::<Vec<_>>(),
            "every post, once, in order"
        );
    }
    let writes = metric(app.addr, WRITES).await - before;
    assert!(
        writes < 10.0,
        "20 frames to two sockets should take a few writes, took {writes}"
    );
}
