//! The page as people use it, in headless Chromium: what is typed is never lost (offline,
//! reloaded, or its answer lost with a node), the room is in the address, the layout holds
//! on a phone, links and right-to-left text render as they should, and axe-core finds no
//! accessibility violation, light or dark, desktop or phone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::browser::{Browser, Driver};
use crate::helpers::{Backend, PATIENCE, TestApp, fresh_database, stored};
use crate::process::{free_port, start_node};

async fn js(browser: &Browser, script: &str) -> Value {
    browser
        .client
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` returns true in the page.
async fn wait_until(browser: &Browser, script: &str) {
    let deadline = Instant::now() + PATIENCE;
    while js(browser, script).await != Value::Bool(true) {
        assert!(Instant::now() < deadline, "never true: {script}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times the message list shows `text`.
async fn shown(browser: &Browser, text: &str) -> usize {
    let all = js(
        browser,
        "return document.querySelector('#messages-list').innerText",
    )
    .await;
    all.as_str().unwrap_or_default().matches(text).count()
}

async fn path(browser: &Browser) -> String {
    browser
        .client
        .current_url()
        .await
        .unwrap()
        .path()
        .to_owned()
}

/// Someone signed in at a desktop browser, and then the server stopped (the page says it is
/// reconnecting).
async fn signed_in_then_offline(name: &str) -> (TestApp, Driver, Browser) {
    let mut app = TestApp::spawn(Backend::Sqlite).await;
    let driver = Driver::start().await;
    let browser = driver.desktop().await;
    browser.sign_up(&app, name).await;
    app.stop().await;
    browser.wait_for_text("#connection", "Reconnecting").await;
    (app, driver, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_offline_waits_even_across_a_reload_and_is_delivered_once() {
    let (app, _driver, ann) = signed_in_then_offline("ann").await;
    // Shown at once as waiting, and the box is free for the next message.
    ann.say("typed while offline").await;
    ann.wait_for_text("#outbox", "typed while offline").await;
    ann.wait_for_text("#outbox", "Waiting for the connection")
        .await;
    ann.screenshot("pending.png").await;
    let left = js(&ann, "return document.querySelector('#message-text').value").await;
    assert_eq!(left, "");
    // Reloading while the server is down keeps it in the tab.
    let url = ann.client.current_url().await.unwrap();
    let _ = ann.client.goto(url.as_str()).await;
    let app = app.start_again().await;
    ann.client.goto(url.as_str()).await.unwrap();
    ann.wait_for_text("#messages-list", "typed while offline")
        .await;
    wait_until(
        &ann,
        "return document.querySelector('#outbox').children.length === 0",
    )
    .await;
    assert_eq!(shown(&ann, "typed while offline").await, 1);
    assert_eq!(stored(&app.database_url, "typed while offline").await, 1);
    ann.screenshot("sent.png").await;
    ann.close().await;
}

/// A TCP proxy in front of a node that can swallow what the node sends, as a connection
/// lost just after the node wrote would.
struct Proxy {
    addr: SocketAddr,
    mute: Arc<AtomicBool>,
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let mute = Arc::new(AtomicBool::new(false));
    let muting = mute.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let mute = muting.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let up = tokio::io::copy(&mut from_client, &mut to_server);
                let down = async {
                    let mut buf = vec![0; 16 * 1024];
                    loop {
                        let n = from_server.read(&mut buf).await?;
                        if n == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        if !mute.load(Ordering::SeqCst) {
                            to_client.write_all(&buf[..n]).await?;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    Proxy { addr, mute }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_answer_died_with_its_node_is_stored_once() {
    let database_url = fresh_database(Backend::Sqlite).await;
    let port = free_port();
    let node_addr = format!("127.0.0.1:{port}");
    let mut node = start_node(&node_addr, &database_url, &[], "node").await;
    let proxy = proxy(node.addr).await;
    let app = TestApp::at(proxy.addr, &database_url);
    let driver = Driver::start().await;
    let ann = driver.desktop().await;
    ann.sign_up(&app, "ann").await;
    ann.say("first").await;
    ann.wait_for_text("#messages-list", "first").await;

    // The node stores the message, but its answer never reaches the page; then it dies.
    proxy.mute.store(true, Ordering::SeqCst);
    ann.say("answer lost").await;
    let deadline = Instant::now() + PATIENCE;
    while stored(&database_url, "answer lost").await == 0 {
        assert!(Instant::now() < deadline, "never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ann.wait_for_text("#outbox", "answer lost").await;
    node.process.kill();
    proxy.mute.store(false, Ordering::SeqCst);
    let _node = start_node(&node_addr, &database_url, &[], "node again").await;

    // The page comes back, finds it stored (or sends it again, harmlessly): once.
    ann.wait_for_text("#messages-list", "answer lost").await;
    wait_until(
        &ann,
        "return document.querySelector('#outbox').children.length === 0",
    )
    .await;
    assert_eq!(shown(&ann, "answer lost").await, 1);
    assert_eq!(stored(&database_url, "answer lost").await, 1);
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_is_in_the_address_and_back_returns_to_the_last_one() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let driver = Driver::start().await;
    let ann = driver.desktop().await;
    ann.sign_up(&app, "ann").await;
    assert_eq!(path(&ann).await, "/r/hi");
    ann.click("#groups a[data-group-name='python']").await;
    ann.wait_for_text("#group-name", "#python").await;
    assert_eq!(path(&ann).await, "/r/python");
    ann.client.back().await.unwrap();
    ann.wait_for_text("#group-name", "#hi").await;
    assert_eq!(path(&ann).await, "/r/hi");
    // A link to a room opens it; a reload stays in it.
    ann.client.goto(&app.url("/r/events")).await.unwrap();
    ann.wait_for_text("#group-name", "#events").await;
    ann.client.refresh().await.unwrap();
    ann.wait_for_text("#group-name", "#events").await;
    // A malformed address names no room: the page opens the usual one.
    ann.client.goto(&app.url("/r/%ZZ")).await.unwrap();
    ann.wait_for_text("#group-name", "#").await;
    // And a conversation has an address too.
    app.signup("bob").await;
    ann.client.goto(&app.url("/dm/bob")).await.unwrap();
    ann.wait_for_text("#group-name", "bob").await;
    assert_eq!(path(&ann).await, "/dm/bob");
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_the_room_takes_the_screen_and_the_composer_stays_in_view() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let driver = Driver::start().await;
    // A phone's screen with the keyboard open.
    let pat = driver
        .browser(
            json!({ "deviceMetrics": { "width": 375, "height": 476, "pixelRatio": 2.0 } }),
            &[],
        )
        .await;
    pat.sign_up(&app, "pat-with-a-rather-long-name-x").await;
    let layout = js(
        &pat,
        "const c = document.querySelector('#message-form button[type=submit]').getBoundingClientRect();
         const t = document.querySelector('#message-text').getBoundingClientRect();
         const l = document.querySelector('#messages-list').getBoundingClientRect();
         return [t.top, t.bottom, c.right, innerWidth, innerHeight, l.height];",
    )
    .await;
    let [top, bottom, send_right, width, height, list] =
        [0, 1, 2, 3, 4, 5].map(|i| layout[i].as_f64().expect("a number"));
    assert!(
        top >= 0.0 && bottom <= height,
        "composer out of view: {layout}"
    );
    assert!(send_right <= width, "Send is off the screen: {layout}");
    assert!(
        list >= 150.0,
        "the messages get {list}px of {height}: {layout}"
    );
    assert!(!pat.find("#aside").await.is_displayed().await.unwrap());
    // The rooms are a tap away; picking one closes them, without opening the keyboard.
    pat.click("#rooms-toggle").await;
    assert!(pat.find("#aside").await.is_displayed().await.unwrap());
    pat.click("#groups a[data-group-name='python']").await;
    pat.wait_for_text("#group-name", "#python").await;
    assert!(!pat.find("#aside").await.is_displayed().await.unwrap());
    let focused = js(&pat, "return document.activeElement.id").await;
    assert_ne!(focused, "message-text");
    // On a phone, Enter makes a new line; the Send button sends.
    pat.find("#message-text")
        .await
        .send_keys("two\u{E007}lines")
        .await
        .unwrap();
    let typed = js(&pat, "return document.querySelector('#message-text').value").await;
    assert_eq!(typed, "two\nlines");
    pat.click("#message-form button[type=submit]").await;
    pat.wait_for_text("#messages-list", "lines").await;
    pat.screenshot("chat-phone-room.png").await;
    pat.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_open_in_a_new_tab_and_right_to_left_text_reads_right_to_left() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let driver = Driver::start().await;
    let ann = driver.desktop().await;
    ann.sign_up(&app, "ann").await;
    let address = app.url("/login");
    ann.say(&format!("see {address}.")).await;
    let link = ann.find("#messages-list a[href$='/login']").await;
    assert_eq!(
        link.attr("target").await.unwrap().as_deref(),
        Some("_blank")
    );
    let rel = link.attr("rel").await.unwrap().unwrap_or_default();
    assert!(
        rel.contains("noopener") && rel.contains("nofollow"),
        "{rel}"
    );
    link.click().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while ann.client.windows().await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no new tab");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ann.say("שלום עולם").await;
    ann.wait_for_text("#messages-list", "שלום").await;
    let rtl = js(
        &ann,
        "const b = [...document.querySelectorAll('#messages-list .body')].pop();
         return [b.getAttribute('dir'), b.matches(':dir(rtl)')];",
    )
    .await;
    assert_eq!(rtl, json!(["auto", true]));
    ann.close().await;
}

/// Runs axe-core on the page and returns its violations, each with where it found them.
async fn axe(browser: &Browser) -> Vec<String> {
    let source = include_str!("../vendor/axe-core/axe.min.js");
    browser
        .client
        .execute(&format!("{source}; return true;"), vec![])
        .await
        .expect("axe-core loads");
    let found = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document).then(
               (r) => done(r.passes.length < 10
                 ? ['axe checked almost nothing: ' + r.passes.length + ' rules passed']
                 : r.violations.map((v) => v.id + ': ' + v.nodes.map((n) => n.target.join(' ')).join(', '))),
               (e) => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .expect("axe-core runs");
    serde_json::from_value(found).expect("a list of violations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axe_finds_no_violation_on_the_sign_in_and_chat_pages() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let bob = app.signup("bob").await;
    let mut bob_socket = app.connect(&bob).await;
    let driver = Driver::start().await;
    let phone = json!({ "deviceMetrics": { "width": 375, "height": 740, "pixelRatio": 2.0 } });
    for (size, dark) in [
        ("desktop", false),
        ("desktop", true),
        ("phone", false),
        ("phone", true),
    ] {
        let mut args = vec![];
        if dark {
            args.push("--force-dark-mode");
            args.push("--blink-settings=preferredColorScheme=0");
        }
        if size == "desktop" {
            args.push("--window-size=1280,800");
        }
        let mobile = if size == "phone" {
            phone.clone()
        } else {
            json!({})
        };
        let browser = driver.browser(mobile, &args).await;
        let where_ = format!("{size}, {}", if dark { "dark" } else { "light" });
        browser.client.goto(&app.url("/login")).await.unwrap();
        let is_dark = js(
            &browser,
            "return matchMedia('(prefers-color-scheme: dark)').matches",
        )
        .await;
        assert_eq!(is_dark, json!(dark), "{where_}: the colour scheme");
        let violations = axe(&browser).await;
        assert!(
            violations.is_empty(),
            "sign-in page, {where_}: {violations:#?}"
        );

        let name = format!("axe-{}-{}", &size[..1], u8::from(dark));
        browser.sign_up(&app, &name).await;
        bob_socket
            .say(&format!("hello {name}, see https://example.com"))
            .await;
        browser
            .wait_for_text("#messages-list", &format!("hello {name}"))
            .await;
        browser.say("a message of my own").await;
        browser
            .wait_for_text("#messages-list", "a message of my own")
            .await;
        let violations = axe(&browser).await;
        assert!(
            violations.is_empty(),
            "chat page, {where_}: {violations:#?}"
        );
        if size == "desktop" && !dark {
            browser.screenshot("chat-desktop-light.png").await;
        }
        browser.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_to_their_own_room_in_the_order_they_were_sent() {
    let (app, _driver, ann) = signed_in_then_offline("ann").await;
    // Written in #hi while the server is down; then #events is picked.
    ann.say("one for hi").await;
    ann.say("two for hi").await;
    ann.click("#groups a[data-group-name='events']").await;
    let app = app.start_again().await;
    ann.wait_for_text("#group-name", "#events").await;
    wait_until(
        &ann,
        "return document.querySelector('#outbox').children.length === 0",
    )
    .await;
    let in_hi = |body: &'static str| {
        let url = app.database_url.clone();
        async move {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&url).await.expect("database");
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM messages m JOIN rooms r ON r.id = m.room_id \
                 WHERE r.name = 'hi' AND m.body = $1",
            )
            .bind(body)
            .fetch_one(&pool)
            .await
            .expect("count");
            n
        }
    };
    assert_eq!(in_hi("one for hi").await, 1);
    assert_eq!(in_hi("two for hi").await, 1);

    // A burst past the rate limit (40 at once): the refused ones go again, in their place.
    for i in 0..60 {
        ann.say(&format!("burst {i:02}")).await;
    }
    ann.wait_for_text("#messages-list", "burst 59").await;
    wait_until(
        &ann,
        "return document.querySelector('#outbox').children.length === 0",
    )
    .await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.database_url)
        .await
        .expect("database");
    let bodies: Vec<(String,)> =
        sqlx::query_as("SELECT body FROM messages WHERE body LIKE 'burst %' ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("bodies");
    let expected: Vec<String> = (0..60).map(|i| format!("burst {i:02}")).collect();
    assert_eq!(
        bodies.into_iter().map(|(b,)| b).collect::<Vec<_>>(),
        expected
    );
    ann.close().await;
}
