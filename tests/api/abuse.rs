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
         INSERT INTO messages (id, room_id, seq, author_id, body, created_at) \
         SELECT 'fill-' || (i + $2), $3, i + $2, $4, $5, 0 FROM n",
    )
    .bind(count)
    .bind(last)
    .bind(room_id)
    .bind(&author_id)
    .bind("x".repeat(chars))
    .execute(&pool)
    .await
    .expect("history written");
    sqlx::query("UPDATE rooms SET last_seq = $1 WHERE id = $2")
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
/// once took a node from 22 MB to 443 MB (every catch-up read the whole history); now each
/// answer is the room's newest page, or a refusal once the guest's budget is spent, and the
/// node's peak memory barely moves. The same with a budget too large to matter: the
/// catch-up window alone bounds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_and_resume_are_bounded_whatever_the_history() {
    let (afresh, refused) = catch_up_attack(&[]).await;
    assert!(
        refused > 0,
        "the guest's budget ran out ({afresh} shown afresh)"
    );
    let unlimited = ["--action-budget-burst", "1000000"].map(String::from);
    let (afresh, refused) = catch_up_attack(&unlimited).await;
    assert_eq!((afresh, refused), (60, 0));
}

/// The attack above on a node started with `args`: how many catch-ups were shown afresh,
/// and how many refused.
async fn catch_up_attack(args: &[String]) -> (usize, usize) {
    let database_url = fresh_database(Backend::Sqlite).await;
    let node = start_node("127.0.0.1:0", &database_url, args, "node").await;
    let app = TestApp::at(node.addr, &database_url);
    let victim = app.signup("victim").await;
    let mut watcher = app.connect(&victim).await;
    let room = watcher.room_id.clone();
    fill_room(&database_url, &room, "victim", 5_000, 4_000).await;
    let (_, peak_before) = node.memory_kib();

    let attacker = app.guest().await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(app.connect(&attacker).await);
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
    assert_eq!(afresh + refused, 60, "each catch-up answered once");
    eprintln!("{afresh} catch-ups shown afresh, {refused} refused");
    for socket in sockets.drain(..) {
        socket.close().await;
    }

    // Resuming from before the beginning (and from the very start) is shown afresh too.
    for after in ["-1", "0"] {
        let path = format!("/ws/chat/?room={room}&after={after}");
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
    for _ in 0..18 {
        sockets.push(
            app.connect_at(&attacker, &format!("/ws/chat/?room={room}&after=-1"))
                .await,
        );
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
    (afresh, refused)
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
    // Entering a room costs 2 (its history is empty): three here and two there spend the
    // budget of 10, on either socket.
    for room in ["python", "events", "hi"] {
        first.enter_group(room).await;
    }
    for room in ["python", "events"] {
        second.enter_group(room).await;
    }
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
        let history = resumed
            .wait_for(|f| f.selector == "#messages-list" && f.swap == "innerHTML")
            .await;
        assert!(history.html.contains("before"), "{}", history.html);
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
