//! Attacks by one account (or a handful) on everyone else: each test is an attack that
//! once worked, and proves it no longer does.

use serde_json::json;

use crate::helpers::{Backend, Client, TestApp, attr, fresh_database, session_cookie};
use crate::on_both_databases;
use crate::process::start_node;

on_both_databases!(
    actions_share_one_budget_across_a_users_sockets,
    a_resume_position_past_the_end_shows_the_room_afresh,
    only_this_sites_pages_may_sign_in_or_out,
    strangers_failures_do_not_lock_the_owner_out,
    lookalike_names_are_taken,
    group_creation_is_limited_per_account_and_address,
    strangers_cannot_use_up_someones_rooms,
    people_leave_groups_hide_conversations_and_block,
    logging_out_closes_that_sessions_sockets,
    nothing_nobody_can_use_is_kept_forever,
    bad_frames_are_answered_briefly_and_within_the_budget,
    failed_log_ins_count_against_an_account_for_an_hour,
    opening_rooms_by_address_spends_the_budget,
);

/// Writes `count` messages of `chars` characters by `author` into the room, straight into
/// the database: a long history, made in a moment.
async fn fill_room(database_url: &str, room_id: &str, author: &str, count: i64, chars: usize) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database_url)
        .await
        .expect("the test's database");
    let (author_id,): (String,) = sqlx::query_as("SELECT id FROM users WHERE username = $1")
        .bind(author)
        .fetch_one(&pool)
        .await
        .expect("the author");
    let (last,): (i64,) = sqlx::query_as("SELECT last_seq FROM rooms WHERE id = $1")
        .bind(room_id)
        .fetch_one(&pool)
        .await
        .expect("the room");
    sqlx::query(
        "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO messages (id, room_id, seq, rev, author_id, body, created_at) \
         SELECT 'fill-' || (i + $2), $3, i + $2, i + $2, $4, $5, 0 FROM n",
    )
    .bind(count)
    .bind(last)
    .bind(room_id)
    .bind(&author_id)
    .bind("x".repeat(chars))
    .execute(&pool)
    .await
    .expect("history written");
    sqlx::query("UPDATE rooms SET last_seq = $1, posted = $1 WHERE id = $2")
        .bind(last + count)
        .bind(room_id)
        .execute(&pool)
        .await
        .expect("room bumped");
    pool.close().await;
}

/// Posts a marker and reads until its echo: every action sent before it has been handled,
/// and its answer written.
async fn drain(client: &mut Client) -> Vec<crate::helpers::Frame> {
    client.frames_until_own_marker().await
}

/// One guest with 20 sockets asks each to catch up on a 5,000-message history of long
/// messages, three times, and then resumes on 20 new sockets from before the beginning. It
/// once took a node from 22 MB to 443 MB (every catch-up read the whole history). With the
/// default budget, the guest's connects (each reads a page of history) spend it, and the
/// next connects and catch-ups are refused; with a budget too large to matter, every
/// catch-up and resume is shown the room's newest page, and the node's peak memory barely
/// moves either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_and_resume_are_bounded_whatever_the_history() {
    catch_up_attack(&[]).await;
    catch_up_attack(&["--action-budget-burst", "1000000"].map(String::from)).await;
}

/// The attack above on a node started with `args`.
async fn catch_up_attack(args: &[String]) {
    let budgeted = args.is_empty();
    let database_url = fresh_database(Backend::Sqlite).await;
    let node = start_node("127.0.0.1:0", &database_url, args, "node").await;
    let app = TestApp::at(node.addr, &database_url);
    let victim = app.signup("victim").await;
    let mut watcher = app.connect(&victim).await;
    let room = watcher.room_id.clone();
    fill_room(&database_url, &room, "victim", 5_000, 4_000).await;
    // Written behind the node's back; a message of the node's own tells it the room changed,
    // or it could show an entering socket the page it kept from before.
    watcher.post("the room is full").await;
    let (_, peak_before) = node.memory_kib();

    let attacker = app.guest().await;
    let mut sockets = Vec::new();
    let mut refused_connects = 0;
    for _ in 0..20 {
        match app.open_socket(&attacker, "/ws/chat/").await {
            Ok(mut socket) => {
                socket.wait_for_history().await;
                sockets.push(socket);
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429);
                refused_connects += 1;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    for socket in &mut sockets {
        for _ in 0..3 {
            socket.act("Catch up", json!({ "afterSeq": -1 })).await;
        }
    }
    let (mut afresh, mut refused) = (0, 0);
    for socket in &mut sockets {
        for frame in drain(socket).await {
            match frame.selector.as_str() {
                "#group-name" => afresh += 1,
                "#errors" if frame.html.contains("too fast") => refused += 1,
                "#messages-list" if frame.swap == "beforeend" && frame.html.contains("xxxx") => {
                    panic!("a catch-up from before the beginning sent history piecemeal")
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "{} sockets ({refused_connects} refused), {afresh} catch-ups shown afresh, {refused} refused",
        sockets.len()
    );
    assert_eq!(
        afresh + refused,
        3 * sockets.len(),
        "each catch-up answered once"
    );
    if budgeted {
        assert!(refused_connects > 0, "connecting spends the budget too");
        assert!(refused > afresh, "the budget was spent");
    } else {
        assert_eq!((sockets.len(), afresh), (20, 60));
    }
    for socket in sockets.drain(..) {
        socket.close().await;
    }

    // Resuming from before the beginning (and from the very start) is shown afresh too;
    // with the budget spent, reconnecting waits.
    for after in ["-1", "0"] {
        let path = format!("/ws/chat/?room={room}&after={after}");
        if budgeted {
            // Each resume reads a page of history: the budget runs out again at once.
            let refused = async {
                for _ in 0..30 {
                    match app.open_socket(&attacker, &path).await {
                        Ok(socket) => socket.abandon(),
                        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                            assert_eq!(response.status(), 429);
                            return true;
                        }
                        Err(e) => panic!("connect: {e}"),
                    }
                }
                false
            };
            assert!(
                refused.await,
                "reconnecting over and over was never refused"
            );
            continue;
        }
        let mut socket = app.connect_at(&attacker, &path).await;
        let (_, skipped) = socket
            .wait_for_with_skipped(|f| f.selector == "#messages-list" && f.swap == "innerHTML")
            .await;
        let controls = skipped
            .iter()
            .find(|f| f.selector == "#history-controls")
            .expect("history controls");
        assert!(controls.html.contains("Load older"), "{}", controls.html);
        if after == "0" {
            assert!(
                controls
                    .html
                    .contains("messages arrived while you were away"),
                "{}",
                controls.html
            );
        }
        sockets.push(socket);
    }
    if !budgeted {
        for _ in 0..18 {
            sockets.push(
                app.connect_at(&attacker, &format!("/ws/chat/?room={room}&after=-1"))
                    .await,
            );
        }
    }
    for socket in &mut sockets {
        drain(socket).await;
    }

    // Everyone else is still served.
    watcher.say("still here").await;
    watcher.wait_for_message("still here").await;
    let (_, peak_after) = node.memory_kib();
    let grown_mib = (peak_after.saturating_sub(peak_before)) / 1024;
    eprintln!("peak memory {peak_before} KiB before, {peak_after} KiB after");
    assert!(
        grown_mib < 64,
        "peak memory grew by {grown_mib} MiB during the attack"
    );
}

/// Frames that cannot be parsed cost a unit each, and are answered only within the
/// budget, briefly: a flood of long bad frames once got each answered with an error four
/// times its size.
async fn bad_frames_are_answered_briefly_and_within_the_budget(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            "--action-budget-burst",
            "5",
            "--action-budget-per-second",
            "0",
        ],
    )
    .await;
    let mut socket = app.connect(&app.signup("ann").await).await;
    let long = "\"".repeat(20_000);
    for _ in 0..20 {
        socket.act("Load older", json!({ "beforeSeq": long })).await;
    }
    let answered: Vec<_> = socket
        .frames_until_own_marker()
        .await
        .into_iter()
        .filter(|f| f.selector == "#errors")
        .collect();
    assert!(answered.len() <= 5, "{} answers", answered.len());
    assert!(!answered.is_empty());
    assert!(answered.iter().all(|f| f.html.len() < 1_000));
}

/// Catching up is charged by what it reads; entering rooms, reading history and typing
/// share one budget per user, across all of the user's sockets.
async fn actions_share_one_budget_across_a_users_sockets(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            "--action-budget-burst",
            "10",
            "--action-budget-per-second",
            "0",
        ],
    )
    .await;
    let ann = app.signup("ann").await;
    let mut first = app.connect(&ann).await;
    let mut second = app.connect(&ann).await;
    // Each socket cost 1 to open, and entering a room costs 2 (its history is empty):
    // three here and one there spend the rest of the budget of 10, on either socket.
    for room in ["python", "events", "hi"] {
        first.enter_group(room).await;
    }
    second.enter_group("python").await;
    second
        .act(
            "Change group",
            json!({ "groupName": "off-topic", "isGroup": true }),
        )
        .await;
    let error = second.wait_for_error().await;
    assert!(error.contains("too fast"), "{error}");
    first.act("Load older", json!({ "beforeSeq": 10 })).await;
    let error = first.wait_for_error().await;
    assert!(error.contains("too fast"), "{error}");
    // Typing past the budget is dropped without a word; posting has a limit of its own.
    let mut bob = app.connect(&app.signup("bob").await).await;
    bob.enter_group("events").await;
    second.act("Typing", json!({})).await;
    let frames = bob.frames_until_own_marker().await;
    assert!(
        !frames.iter().any(|f| f.html.contains("is typing")),
        "{frames:?}"
    );
    second.say("posting still works").await;
    second.wait_for_message("posting still works").await;
}

/// A resume position past the room's end once set the socket's floor there, and every
/// live message after was dropped as already shown. It is now shown the room afresh.
async fn a_resume_position_past_the_end_shows_the_room_afresh(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ann = app.signup("ann").await;
    let mut ann_socket = app.connect(&ann).await;
    ann_socket.say("before").await;
    ann_socket.wait_for_message("before").await;
    let room = ann_socket.room_id.clone();
    let bob = app.signup("bob").await;
    for after in [i64::MAX, 1_000_000] {
        let mut resumed = app
            .connect_at(&bob, &format!("/ws/chat/?room={room}&after={after}"))
            .await;
        let history = resumed.wait_for_history().await;
        assert!(history.contains("before"), "{}", history);
        ann_socket.say(&format!("after {after}")).await;
        let live = resumed.wait_for_message(&format!("after {after}")).await;
        assert!(attr(&live.html, "data-seq").is_some());
        resumed.close().await;
    }
}

/// Login CSRF: a sandboxed page (`Origin: null`) once logged a real browser into the
/// attacker's account, since only a present, foreign `Origin` was refused. Now a POST needs
/// this site's origin (scheme included), or no `Origin` and the browser's own word that
/// the request came from this site.
async fn only_this_sites_pages_may_sign_in_or_out(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.signup("attacker").await;
    let form = "username=attacker&password=password123";
    let post = |path: &str, headers: &[(&str, String)]| {
        let mut request = app
            .http()
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send()
    };
    let https_origin = format!("https://{}", app.addr);
    for headers in [
        vec![("origin", "null".to_string())],
        vec![],
        vec![("sec-fetch-site", "cross-site".to_string())],
        vec![("sec-fetch-site", "same-site".to_string())],
        vec![("origin", https_origin.clone())],
        vec![("origin", "http://evil.example".to_string())],
    ] {
        for path in ["/login", "/guest", "/logout", "/signup"] {
            let response = post(path, &headers).await.expect("POST");
            assert_eq!(response.status(), 403, "{path} with {headers:?}");
            assert!(session_cookie(&response).is_none());
        }
    }
    for headers in [
        vec![("origin", app.origin())],
        vec![("sec-fetch-site", "same-origin".to_string())],
        vec![("sec-fetch-site", "none".to_string())],
    ] {
        let response = post("/login", &headers).await.expect("POST");
        assert_eq!(response.status(), 303, "{headers:?}");
    }

    // Behind a trusted proxy that terminates TLS, the page's origin is https.
    let mut proxied = TestApp::start(
        crate::helpers::fresh_database(backend).await,
        vec!["--trust-proxy".into()],
    )
    .await;
    proxied.signup("attacker").await;
    let https_origin = format!("https://{}", proxied.addr);
    let through_proxy = |origin: &str, proto: &str| {
        proxied
            .http()
            .post(proxied.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", origin)
            .header("x-forwarded-proto", proto)
            .body(form)
            .send()
    };
    let ok = through_proxy(&https_origin, "https").await.expect("POST");
    assert_eq!(ok.status(), 303);
    let downgraded = through_proxy(&proxied.origin(), "https")
        .await
        .expect("POST");
    assert_eq!(downgraded.status(), 403);
    proxied.stop().await;
}

/// The sign-in limiter once kept every attempted account name as a key: 100 log-ins with a
/// 1.9 MB name took 260 MB, and kept 204 MB. A name longer than any account's is now
/// refused before any lookup or key, and the limiter's keys are hashes in a map of fixed
/// size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_with_huge_names_keep_nothing() {
    let database_url = fresh_database(Backend::Sqlite).await;
    let args = ["--auth-rate-limit", "1000"].map(String::from);
    let node = start_node("127.0.0.1:0", &database_url, &args, "node").await;
    let app = TestApp::at(node.addr, &database_url);
    let (before, _) = node.memory_kib();
    let huge = "a".repeat(1_900_000);
    for i in 0..100 {
        let response = app
            .post_form(
                "/login",
                &[
                    ("username", &format!("{huge}{i}")),
                    ("password", "password123"),
                ],
            )
            .await;
        assert_eq!(response.status(), 401);
        let page = response.text().await.expect("page");
        assert!(page.len() < 100_000, "the name is not echoed back");
    }
    let (after, _) = node.memory_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!("resident memory {before} KiB before, {after} KiB after");
    assert!(grown_mib < 40, "resident memory grew by {grown_mib} MiB");
}

/// A log-in from `address` (through a trusted proxy), with `cookies` sent along.
async fn log_in_from(
    app: &TestApp,
    address: &str,
    username: &str,
    password: &str,
    cookies: &str,
) -> reqwest::Response {
    app.http()
        .post(app.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", app.origin())
        .header("x-forwarded-for", address)
        .header("cookie", cookies)
        .body(format!("username={username}&password={password}"))
        .send()
        .await
        .expect("POST /login")
}

/// The `name=value` of a cookie a response sets.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// 20 wrong passwords from two addresses once locked the owner out everywhere (the
/// account's bucket was shared by all). Now each address is slowed on its own, the account
/// has a much larger ceiling, and past it a browser that logged in before still may, on
/// every node.
async fn strangers_failures_do_not_lock_the_owner_out(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--trust-proxy", "--auth-rate-limit", "1000"]).await;
    app.signup("owner").await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let address = ["10.0.0.1", "10.0.0.2"][i % 2];
        let wrong = log_in_from(&app, address, "owner", "wrong-password", "").await;
        statuses.push(wrong.status().as_u16());
    }
    // Five failures an address, then the wait (a second, doubling) refuses at once.
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        10,
        "{statuses:?}"
    );
    let slowed = log_in_from(&app, "10.0.0.1", "owner", "password123", "").await;
    assert_eq!(
        slowed.status(),
        429,
        "the guessing address waits, even with the password"
    );
    assert!(slowed.headers().contains_key("retry-after"));
    let owner = log_in_from(&app, "10.0.0.3", "owner", "password123", "").await;
    assert_eq!(
        owner.status(),
        303,
        "the owner, elsewhere, is not locked out"
    );

    // Past the account's ceiling, only browsers that logged in to it before may try, on
    // any node: the failures are kept in the database.
    let args: Vec<String> = ["--trust-proxy", "--auth-rate-limit", "1000"]
        .into_iter()
        .chain(["--login-failures-per-account", "8"])
        .map(String::from)
        .collect();
    app.signup("keeper").await;
    let node_a = TestApp::start(app.database_url.clone(), args.clone()).await;
    let node_b = TestApp::start(app.database_url.clone(), args).await;
    let first = log_in_from(&node_a, "10.0.1.1", "keeper", "password123", "").await;
    assert_eq!(first.status(), 303);
    let known = set_cookie(&first, "wirechat_known").expect("a known-browser cookie");
    for i in 0..10 {
        let address = format!("10.0.2.{i}");
        let wrong = log_in_from(&node_a, &address, "keeper", "wrong-password", "").await;
        let expected = if i < 8 { 401 } else { 429 };
        assert_eq!(wrong.status(), expected, "attempt {i}");
    }
    let new_browser = log_in_from(&node_b, "10.0.3.1", "keeper", "password123", "").await;
    assert_eq!(new_browser.status(), 429);
    let text = new_browser.text().await.expect("page");
    assert!(text.contains("new browsers"), "{text}");
    let known_browser = log_in_from(&node_b, "10.0.3.1", "keeper", "password123", &known).await;
    assert_eq!(
        known_browser.status(),
        303,
        "a browser that logged in before still may"
    );
}

/// `aIiceucjs` (capital i) once signed up beside `aliceucjs`, and looked the same in every
/// list. Names are now unique under case folding and confusable skeletons.
async fn lookalike_names_are_taken(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.signup("aliceucjs").await;
    for lookalike in [
        "Aliceucjs",
        "ALICEUCJS",
        "aIiceucjs",
        "allceucjs",
        "al1ceucjs",
        "alice.ucjs",
    ] {
        let response = app
            .post_form(
                "/signup",
                &[("username", lookalike), ("password", "password123")],
            )
            .await;
        assert_eq!(response.status(), 409, "{lookalike}");
        let text = response.text().await.expect("page");
        assert!(text.contains("taken"), "{lookalike}: {text}");
    }
    let trailing_dot = app
        .post_form(
            "/signup",
            &[("username", "aliceucjs."), ("password", "password123")],
        )
        .await;
    assert_eq!(trailing_dot.status(), 422);
    // The owner may type her name in any case.
    let login = app
        .post_form(
            "/login",
            &[("username", "ALICEUCJS"), ("password", "password123")],
        )
        .await;
    assert_eq!(login.status(), 303);
    app.signup("bob").await;
}

/// Four guests once created 1,984 groups in 7 s: every page grew to 747 KB, and every
/// socket got every group. Creating groups is now limited an hour, per account and per
/// address, and a new group is announced to its members alone.
async fn group_creation_is_limited_per_account_and_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--new-groups-per-hour", "3"]).await;
    let mut bystander = app.connect(&app.signup("bystander").await).await;
    let mut first = app.connect(&app.guest().await).await;
    for i in 0..3 {
        first
            .act("Create group", json!({ "groupName": format!("spam-{i}") }))
            .await;
        let title = first.wait_for(|f| f.selector == "#group-name").await;
        assert!(title.html.contains(&format!("#spam-{i}")));
    }
    first
        .act("Create group", json!({ "groupName": "spam-3" }))
        .await;
    let error = first.wait_for_error().await;
    assert!(error.contains("3 new groups an hour"), "{error}");
    // Joining a group that exists is no creation, and still works.
    first.enter_group("python").await;
    // Another account from the same address has no groups left to create either.
    let mut second = app.connect(&app.guest().await).await;
    second
        .act(
            "Change group",
            json!({ "groupName": "spam-4", "isGroup": true }),
        )
        .await;
    let error = second.wait_for_error().await;
    assert!(error.contains("new groups an hour"), "{error}");
    let told = bystander.frames_until_own_marker().await;
    assert!(told.iter().all(|f| !f.html.contains("spam-")), "{told:?}");
    let page = app.page(&app.signup("newcomer").await.cookie).await;
    assert!(
        !page.contains("spam-"),
        "the sidebar lists the groups one joined"
    );
}

/// 520 guests each opening a conversation with one user once filled that user's room cap:
/// they could join nothing more. Only the rooms a person chose count now.
async fn strangers_cannot_use_up_someones_rooms(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--max-rooms-per-user", "6"]).await;
    let victim = app.signup("victim").await;
    for _ in 0..8 {
        let mut stranger = app.connect(&app.guest().await).await;
        stranger.enter_direct("victim").await;
    }
    // The victim's four default groups and two more fill the victim's own six.
    let mut socket = app.connect(&victim).await;
    for group in ["mine-1", "mine-2"] {
        socket
            .act("Create group", json!({ "groupName": group }))
            .await;
        let title = socket.wait_for(|f| f.selector == "#group-name").await;
        assert!(title.html.contains(group));
    }
    socket
        .act("Create group", json!({ "groupName": "mine-3" }))
        .await;
    assert!(socket.wait_for_error().await.contains("6 rooms"));
    // And the conversations a person starts count against their own.
    let mut opener = app.connect(&app.signup("opener").await).await;
    for name in ["victim", "bystander"] {
        if name == "bystander" {
            app.signup("bystander").await;
        }
        opener.enter_direct(name).await;
    }
    opener
        .act("Create group", json!({ "groupName": "one-more" }))
        .await;
    assert!(opener.wait_for_error().await.contains("6 rooms"));
}

/// A person can leave a group, hide a conversation, and block someone: a block closes
/// the conversation both ways until it is lifted.
async fn people_leave_groups_hide_conversations_and_block(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ann, bob) = (app.signup("ann").await, app.signup("bob").await);
    let mut a = app.connect(&ann).await;
    let mut a2 = app.connect(&ann).await;
    let mut b = app.connect(&bob).await;

    // Leaving: every socket of hers drops the group, and one showing it moves on.
    a2.enter_group("python").await;
    let python = a2.room_id.clone();
    a.act("Leave group", json!({ "groupName": "python" })).await;
    a.wait_for_notice("You left #python").await;
    let removed = format!("#room-{python}");
    a2.wait_for(|f| f.selector == removed && f.swap == "remove")
        .await;
    let moved = a2.wait_for(|f| f.selector == "#group-name").await;
    assert!(!moved.html.contains(&python), "{}", moved.html);
    a2.wait_for_notice("You left #python").await;
    assert!(!app.page(&ann.cookie).await.contains("#python"));
    b.enter_group("python").await;
    b.say("python news").await;
    b.wait_for_message("python news").await;
    let heard = a.frames_until_own_marker().await;
    assert!(heard.iter().all(|f| !f.html.contains("python news")));
    a2.enter_group("hi").await;

    // Hiding: the conversation leaves her sidebar until bob writes in it.
    a.enter_direct("bob").await;
    let direct = a.room_id.clone();
    b.enter_direct("ann").await;
    b.enter_group("hi").await;
    a.act("Hide conversation", json!({ "username": "bob" }))
        .await;
    let entry = format!("#room-{direct}");
    a2.wait_for(|f| f.selector == entry && f.swap == "remove")
        .await;
    a.wait_for_notice("hidden until").await;
    assert!(!app.page(&ann.cookie).await.contains(&direct));
    b.enter_direct("ann").await;
    b.say("are you there?").await;
    // Back on every socket of hers, the one that hid it too, with its unread badge.
    for socket in [&mut a, &mut a2] {
        let back = socket
            .wait_for(|f| f.selector == "#directs" && f.html.contains(&direct))
            .await;
        assert_eq!(back.swap, "beforeend");
        let badge = format!("#unread-{direct}");
        let unread = socket.wait_for(|f| f.selector == badge).await;
        assert!(unread.html.starts_with("1<"), "{}", unread.html);
    }
    assert!(app.page(&ann.cookie).await.contains(&direct));

    // Blocking: bob is moved out of their conversation and can neither post in it nor
    // open it again; nor can she, until she unblocks him.
    a.act("Block user", json!({ "username": "bob" })).await;
    a.wait_for_notice("You blocked bob").await;
    let listed = a.wait_for(|f| f.selector == "#blocked-list").await;
    assert!(listed.html.contains("Unblock"), "{}", listed.html);
    b.wait_for(|f| f.selector == entry && f.swap == "remove")
        .await;
    let moved = b.wait_for(|f| f.selector == "#group-name").await;
    assert!(!moved.html.contains(&direct), "{}", moved.html);
    b.wait_for_notice("is closed").await;
    // No way back in by catching up, which once re-entered the room shown.
    b.act("Catch up", json!({ "afterSeq": -1 })).await;
    b.say("sneaking in").await;
    b.wait_for_message("sneaking in").await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.database_url)
        .await
        .expect("the test's database");
    let (sneaked,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM messages WHERE room_id = $1 AND body = 'sneaking in'")
            .bind(&direct)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(sneaked, 0, "posted into the closed conversation");
    pool.close().await;
    b.act(
        "Change group",
        json!({ "groupName": "ann", "isGroup": false }),
    )
    .await;
    assert!(
        b.wait_for_error()
            .await
            .contains("does not take messages from you")
    );
    a.act(
        "Change group",
        json!({ "groupName": "bob", "isGroup": false }),
    )
    .await;
    let refused = a.wait_for_error().await;
    assert!(refused.contains("Unblock"), "{refused}");
    let mut b_again = app.connect(&bob).await;
    let resumed = app
        .connect_at(&bob, &format!("/ws/chat/?room={direct}&after=0"))
        .await;
    assert_ne!(resumed.room_id, direct, "no way back in by resuming");
    b_again.say("from #hi").await;
    b_again.wait_for_message("from #hi").await;

    // Unblocking someone one never blocked changes nothing (it once brought back a
    // conversation its other person had hidden).
    b_again
        .act("Unblock user", json!({ "username": "ann" }))
        .await;
    assert!(b_again.wait_for_error().await.contains("had not blocked"));
    a.act("Unblock user", json!({ "username": "bob" })).await;
    b.wait_for(|f| f.selector == "#directs" && f.html.contains(&direct))
        .await;
    b.enter_direct("ann").await;
    b.say("thanks").await;
    b.wait_for_message("thanks").await;
}

/// Sockets opened before a logout once kept posting. Logging out now closes every socket
/// of that session, on every node, and leaves the user's other sessions be.
async fn logging_out_closes_that_sessions_sockets(backend: Backend) {
    let database_url = fresh_database(backend).await;
    let args = vec![
        "--redis-url".to_owned(),
        "redis://127.0.0.1:6379".to_owned(),
        "--redis-prefix".to_owned(),
        crate::helpers::fresh_prefix(),
    ];
    let one = TestApp::start(database_url.clone(), args.clone()).await;
    let two = TestApp::start(database_url, args).await;
    let ann = one.signup("ann").await;
    let elsewhere = crate::helpers::TestUser {
        username: "ann".into(),
        cookie: crate::helpers::session_cookie(
            &one.post_form(
                "/login",
                &[("username", "ann"), ("password", "password123")],
            )
            .await,
        )
        .expect("a second session"),
    };
    let mut here = one.connect(&ann).await;
    let mut there = two.connect(&ann).await;
    let mut other_session = two.connect(&elsewhere).await;
    let logout = one
        .http()
        .post(one.url("/logout"))
        .header("cookie", &ann.cookie)
        .header("origin", one.origin())
        .send()
        .await
        .expect("POST /logout");
    assert_eq!(logout.status(), 303);
    for socket in [&mut here, &mut there] {
        loop {
            match socket.receive().await {
                crate::helpers::Received::Frame(_) => continue,
                crate::helpers::Received::Closed(close) => {
                    let close = close.expect("a close frame");
                    assert_eq!(u16::from(close.code), 4001);
                    break;
                }
            }
        }
    }
    other_session.say("still signed in").await;
    other_session.wait_for_message("still signed in").await;
}

/// Reads from `stream` until the server closes it (or resets it); panics if it answers
/// with anything but a close.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(crate::helpers::PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Connections that sent half their headers once stayed open for 300 s and more: a cheap
/// way to spend a node's 20,000 descriptors. They are now closed after the header timeout,
/// and one address holds at most its share of connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_time_out_and_one_address_holds_its_share() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let app = TestApp::spawn_with(Backend::Sqlite, &["--header-timeout-secs", "1"]).await;
    let mut half = TcpStream::connect(app.addr).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request");
    assert!(
        closed_by_server(&mut half).await,
        "a half-sent request stays open"
    );

    let capped =
        TestApp::spawn_with(Backend::Sqlite, &["--max-connections-per-address", "5"]).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(capped.addr).await.expect("connect"));
    }
    // The sixth is closed at once: the first five are still open, so nothing else could.
    let mut sixth = TcpStream::connect(capped.addr).await.expect("connect");
    assert!(closed_by_server(&mut sixth).await);
    drop(held.pop());
    // Once the server has seen one go, the address may connect again.
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    loop {
        if let Ok(response) = capped.http().get(capped.url("/login")).send().await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Expired sessions and guest accounts nobody can sign in as again once lived forever.
/// They are purged now (one node at a time), except guests whose name is on a message.
async fn nothing_nobody_can_use_is_kept_forever(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let log_out = |user: &crate::helpers::TestUser| {
        app.http()
            .post(app.url("/logout"))
            .header("cookie", &user.cookie)
            .header("origin", app.origin())
            .send()
    };
    let silent = app.guest().await;
    let poster = app.guest().await;
    let mut socket = app.connect(&poster).await;
    socket.say("a guest was here").await;
    socket.wait_for_message("a guest was here").await;
    socket.close().await;
    let recent = app.guest().await;
    for guest in [&silent, &poster, &recent] {
        assert_eq!(log_out(guest).await.expect("logout").status(), 303);
    }
    app.signup("member").await;

    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.database_url)
        .await
        .expect("the test's database");
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.expect(sql);
            n
        }
    };
    // Every guest but the most recent joined long ago; the member's session has expired.
    let (recent_id,): (String,) =
        sqlx::query_as("SELECT id FROM users WHERE password_hash IS NULL ORDER BY id DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .expect("the recent guest");
    sqlx::query("UPDATE users SET created_at = 0 WHERE id <> $1")
        .bind(&recent_id)
        .execute(&pool)
        .await
        .expect("aged");
    sqlx::query("UPDATE sessions SET expires_at = 1")
        .execute(&pool)
        .await
        .expect("expired");
    let guests = "SELECT COUNT(*) FROM users WHERE password_hash IS NULL";
    assert_eq!(count(guests).await, 3);

    let store = wirechat::store::Store::connect(&app.database_url)
        .await
        .expect("a second node's store");
    let now = wirechat::store::now_ms();
    let purged = store
        .purge(now, now - 86_400_000)
        .await
        .expect("purge")
        .expect("the first node to ask purges");
    assert_eq!(purged.guests, 1, "{purged:?}");
    assert!(purged.sessions >= 1, "{purged:?}");
    assert_eq!(
        count(guests).await,
        2,
        "the guest who posted, and the recent one, stay"
    );
    assert_eq!(count("SELECT COUNT(*) FROM sessions").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM users WHERE password_hash IS NOT NULL").await,
        1
    );
    // Another node asking now finds the turn taken.
    assert_eq!(
        store.purge(now, now - 86_400_000).await.expect("purge"),
        None
    );
    store.close().await;
    pool.close().await;
}

/// An address that tried now and then kept adding to the account's count forever, and in
/// a day locked the owner's new browsers out. The count is per hour now.
async fn failed_log_ins_count_against_an_account_for_an_hour(backend: Backend) {
    let url = fresh_database(backend).await;
    let store = wirechat::store::Store::connect(&url)
        .await
        .expect("a fresh store");
    let name = wirechat::chat::names::Username::parse("owner").expect("a name");
    let owner = store.create_user(&name, None, None).await.expect("owner");
    let hour = 3_600_000;
    for _ in 0..5 {
        store
            .record_login_failure(&owner.id, "10.0.0.7", hour)
            .await
            .expect("counted");
    }
    let since = wirechat::store::now_ms() - hour;
    let failures = store
        .login_failures(&owner.id, "10.0.0.7", since)
        .await
        .expect("read");
    assert_eq!((failures.here, failures.recent), (5, 5));
    // The same failures an hour and more ago count for the address's delay, not for the
    // account's hour.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("the database");
    sqlx::query("UPDATE login_failures SET window_started_at = window_started_at - $1")
        .bind(2 * hour)
        .execute(&pool)
        .await
        .expect("aged");
    store
        .record_login_failure(&owner.id, "10.0.0.7", hour)
        .await
        .expect("counted");
    let failures = store
        .login_failures(&owner.id, "10.0.0.7", since)
        .await
        .expect("read");
    assert_eq!((failures.here, failures.recent), (6, 1));
    pool.close().await;
    store.close().await;
}

/// A page's address may name a room (`?with=bob`); opening sockets so, again and again,
/// once cost nothing (an empty conversation reads no history), and one account pinned a
/// node at 500 connects a second. Each connect now costs a unit, a named room two more.
async fn opening_rooms_by_address_spends_the_budget(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.signup("bob").await;
    let churner = app.guest().await;
    let mut refused = false;
    for _ in 0..60 {
        match app.open_socket(&churner, "/ws/chat/?with=bob").await {
            Ok(socket) => socket.abandon(),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429);
                refused = true;
                break;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    assert!(refused, "60 connects in a row were never refused");
}
