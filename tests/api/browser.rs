//! The chat in a real browser: Debian's headless Chromium, driven over WebDriver
//! (chromedriver), against the real app. Each user is a separate browser with its own
//! profile, so cookies and sockets are as independent as two people's machines.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{Backend, PATIENCE, TestApp};

/// A chromedriver process for one test; every `Browser` from it is its own Chromium.
pub(crate) struct Driver {
    process: Child,
    port: u16,
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        let port = crate::process::free_port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; .ci/run installs it)");
        // Wait until it accepts connections.
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver { process, port }
    }

    pub(crate) async fn desktop(&self) -> Browser {
        self.browser(json!({}), &["--window-size=1280,800"]).await
    }

    /// A phone-sized screen (375 × 740 CSS pixels), as Chromium's device emulation gives it.
    pub(crate) async fn phone(&self) -> Browser {
        self.browser(
            json!({ "deviceMetrics": { "width": 375, "height": 740, "pixelRatio": 2.0 } }),
            &[],
        )
        .await
    }

    pub(crate) async fn browser(&self, mobile: serde_json::Value, extra: &[&str]) -> Browser {
        let phone = mobile.as_object().is_some_and(|m| !m.is_empty());
        let profile = std::env::temp_dir().join(format!(
            "wirechat-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut caps = serde_json::Map::new();
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            // Without these Chromium keeps calling home, which this network refuses.
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut options = json!({ "binary": "/usr/bin/chromium", "args": args });
        if mobile.as_object().is_some_and(|m| !m.is_empty()) {
            options["mobileEmulation"] = mobile;
        }
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session");
        Browser { client, phone }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

pub(crate) struct Browser {
    pub(crate) client: Client,
    /// A phone: Enter makes a new line, and Send sends.
    phone: bool,
}

impl Browser {
    pub(crate) async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Waits until the text of `css` contains `text`.
    pub(crate) async fn wait_for_text(&self, css: &str, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && el.text().await.is_ok_and(|t| t.contains(text))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {text:?}; page: {}",
                self.client.source().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }

    pub(crate) async fn sign_up(&self, app: &TestApp, username: &str) {
        self.client.goto(&app.url("/login")).await.unwrap();
        let form = self.find("form[action='/signup']").await;
        form.find(Locator::Css("input[name=username]"))
            .await
            .unwrap()
            .send_keys(username)
            .await
            .unwrap();
        form.find(Locator::Css("input[name=password]"))
            .await
            .unwrap()
            .send_keys("password123")
            .await
            .unwrap();
        form.find(Locator::Css("button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_for_text("#logged-user", username).await;
        self.wait_for_text("#group-name", "#hi").await;
    }

    /// Types into the composer and sends, as a person does: Enter on a computer, the Send
    /// button on a phone.
    pub(crate) async fn say(&self, text: &str) {
        let composer = self.find("#message-text").await;
        if self.phone {
            composer.send_keys(text).await.unwrap();
            self.click("#message-form button[type=submit]").await;
        } else {
            composer
                .send_keys(&format!("{text}{}", char::from(Key::Enter)))
                .await
                .unwrap();
        }
    }

    pub(crate) async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_a_browser_and_a_third_sees_nothing_private() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let driver = Driver::start().await;
    let ann = driver.desktop().await;
    let bob = driver.desktop().await;
    let eve = driver.phone().await;

    ann.sign_up(&app, "ann").await;
    bob.sign_up(&app, "bob").await;
    // They see each other come online.
    ann.wait_for_text("#people", "bob").await;
    bob.wait_for_text("#people", "ann").await;

    ann.say("hello from ann").await;
    bob.wait_for_text("#messages-list", "hello from ann").await;
    // The composer keeps focus after sending, so the next message can follow at once.
    let focused = ann
        .client
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused, "message-text");
    // Typing shows on the other side, and the notice goes away by itself.
    bob.find("#message-text")
        .await
        .send_keys("typing a reply")
        .await
        .unwrap();
    ann.wait_for_text("#typing", "bob is typing").await;
    let deadline = Instant::now() + PATIENCE;
    while !ann.find("#typing").await.text().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the typing notice never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.find("#message-text").await.clear().await.unwrap();
    bob.say("hi ann, bob here").await;
    ann.wait_for_text("#messages-list", "bob here").await;

    // Markup in a message is shown as text and never runs.
    ann.say(
        "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">",
    )
    .await;
    bob.wait_for_text("#messages-list", "<img src=x onerror=")
        .await;
    assert_eq!(bob.count("#messages-list img").await, 0);
    assert_eq!(bob.count("#messages-list script").await, 0);
    assert_ne!(bob.client.title().await.unwrap(), "pwned");
    // Formatting is shown as such; a script address is not a link.
    ann.say("**loud** and `code` and [click](javascript:document.title='pwned')")
        .await;
    bob.wait_for_text("#messages-list", "loud and code and click")
        .await;
    assert_eq!(bob.count("#messages-list .body strong").await, 1);
    assert_eq!(bob.count("#messages-list .body code").await, 1);
    assert_eq!(bob.count("#messages-list .body a").await, 0);

    // Bob reacts from the picker; Ann adds hers by pressing his chip.
    bob.click("#messages-list article:last-child button[data-act='pick']")
        .await;
    bob.click("#messages-list article:last-child .picker button[data-emoji='🎉']")
        .await;
    ann.wait_for_text("#messages-list article:last-child button.reaction", "🎉 1")
        .await;
    assert_eq!(
        bob.count("#messages-list article:last-child button.reaction[aria-pressed='true']")
            .await,
        1
    );
    assert_eq!(
        ann.count("#messages-list button.reaction[aria-pressed='true']")
            .await,
        0
    );
    ann.click("#messages-list article:last-child button.reaction")
        .await;
    bob.wait_for_text("#messages-list article:last-child button.reaction", "🎉 2")
        .await;
    assert_eq!(bob.count("#messages-list .picker").await, 0);

    // Ann fixes a typo, then takes a message back: Bob sees both where the message is.
    ann.say("a typo herre").await;
    bob.wait_for_text("#messages-list", "a typo herre").await;
    ann.click("#messages-list article.mine:last-child button[data-act='edit']")
        .await;
    let box_ = ann.find("#messages-list .edit-form textarea").await;
    box_.clear().await.unwrap();
    // Emptied, it is not sent, and the page says why.
    ann.click("#messages-list .edit-form button[type='submit']")
        .await;
    ann.wait_for_text("#errors", "cannot be empty").await;
    box_.send_keys("a typo here").await.unwrap();
    ann.click("#messages-list .edit-form button[type='submit']")
        .await;
    bob.wait_for_text("#messages-list article:last-child", "(edited)")
        .await;
    bob.wait_for_text("#messages-list article:last-child .body", "a typo here")
        .await;
    assert_eq!(ann.count("#messages-list .edit-form").await, 0);
    ann.click("#messages-list article.mine:last-child button[data-act='delete']")
        .await;
    ann.click("#messages-list article.mine:last-child button[data-act='delete-yes']")
        .await;
    bob.wait_for_text(
        "#messages-list article:last-child",
        "This message was deleted.",
    )
    .await;
    assert!(!bob.client.source().await.unwrap().contains("a typo here"));

    // A private conversation, started from the online list.
    eve.sign_up(&app, "eve").await;
    ann.click("#people a[data-group-name='bob']").await;
    ann.wait_for_text("#group-name", "bob").await;
    ann.say("a secret for bob").await;
    ann.wait_for_text("#messages-list", "a secret for bob")
        .await;
    // Bob gets the conversation in his sidebar with an unread badge, and opens it.
    bob.wait_for_text("#directs", "ann").await;
    bob.wait_for_text("#directs .badge", "1").await;
    bob.click("#directs a[data-group-name='ann']").await;
    bob.wait_for_text("#messages-list", "a secret for bob")
        .await;
    assert_eq!(bob.find("#directs .badge").await.text().await.unwrap(), "");

    // Eve, in #hi all along, sees the public talk but nothing private.
    eve.say("eve was here").await;
    ann.click("#groups a[data-group-name='hi']").await;
    ann.wait_for_text("#messages-list", "eve was here").await;
    eve.wait_for_text("#messages-list", "eve was here").await;
    let eve_page = eve.client.source().await.unwrap();
    assert!(!eve_page.contains("secret"), "eve saw a private message");

    ann.screenshot("chat-desktop.png").await;
    eve.screenshot("chat-phone.png").await;
    for browser in [ann, bob, eve] {
        browser.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_after_a_restart_and_shows_what_was_missed_once() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let driver = Driver::start().await;
    let ann = driver.desktop().await;
    ann.sign_up(&app, "ann").await;
    ann.say("before the restart").await;
    ann.wait_for_text("#messages-list", "before the restart")
        .await;

    let bob = app.signup("bob").await;

    // The server goes away: the page says it is reconnecting.
    let mut app = app;
    app.stop().await;
    ann.wait_for_text("#connection", "Reconnecting").await;
    // It comes back on the same address and database, and bob posts while ann's page may
    // still be waiting to reconnect.
    let app = app.start_again().await;
    let mut bob_socket = app.connect(&bob).await;
    bob_socket.say("sent meanwhile").await;
    bob_socket.wait_for_message("sent meanwhile").await;

    ann.wait_for_text("#messages-list", "sent meanwhile").await;
    let deadline = Instant::now() + PATIENCE;
    while !ann
        .find("#connection")
        .await
        .text()
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the banner stayed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = ann
        .client
        .execute(
            "return document.querySelector('#messages-list').innerText",
            vec![],
        )
        .await
        .unwrap();
    let shown = shown.as_str().unwrap_or_default();
    assert_eq!(
        shown.matches("sent meanwhile").count(),
        1,
        "shown exactly once"
    );
    assert_eq!(
        shown.matches("before the restart").count(),
        1,
        "nothing repeated"
    );
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_up_loads_history_and_new_messages_do_not_yank_the_view() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--rate-burst", "1000"]).await;
    let bob = app.signup("bob").await;
    let mut bob_socket = app.connect(&bob).await;
    let mut second = String::new();
    for i in 1..=80 {
        if i == 2 {
            second = bob_socket.post("history line 2").await;
        } else {
            bob_socket.say(&format!("history line {i}")).await;
        }
    }
    bob_socket.wait_for_message("history line 80").await;
    // An old message changed since: a page of older history shows it as it now is.
    bob_socket
        .act(
            "Edit message",
            serde_json::json!({ "messageId": second, "message": "history line two, fixed" }),
        )
        .await;
    bob_socket.wait_for_change(&second).await;

    let driver = Driver::start().await;
    let ann = driver.desktop().await;
    ann.sign_up(&app, "ann").await;
    ann.wait_for_text("#messages-list", "history line 80").await;
    assert_eq!(ann.count("#messages-list article").await, 50);

    // Scrolling to the top fetches the older page, keeping what the reader looked at: the
    // first message in view stays the first in view (give or take one).
    let first_visible = "const l = document.querySelector('#messages-list');
        const top = l.getBoundingClientRect().top;
        const all = [...l.children];
        return all.findIndex((a) => a.getBoundingClientRect().bottom > top + 1)
            - all.length;";
    ann.client
        .execute(
            "document.querySelector('#messages-list').scrollTop = 0",
            vec![],
        )
        .await
        .unwrap();
    let before_load = ann.client.execute(first_visible, vec![]).await.unwrap();
    ann.wait_for_text("#messages-list", "history line 1\n")
        .await;
    assert_eq!(ann.count("#messages-list article").await, 80);
    ann.wait_for_text("#messages-list", "history line two, fixed")
        .await;
    let after_load = ann.client.execute(first_visible, vec![]).await.unwrap();
    // Counted from the end, the same message keeps its index as older ones come in above.
    let moved = after_load.as_i64().unwrap() - before_load.as_i64().unwrap();
    assert!(moved.abs() <= 1, "the view jumped by {moved} messages");
    let scroll_top = || async {
        ann.client
            .execute(
                "return document.querySelector('#messages-list').scrollTop",
                vec![],
            )
            .await
            .unwrap()
            .as_f64()
            .unwrap()
    };
    let before = scroll_top().await;
    assert!(before > 0.0, "the view stayed on the messages it showed");

    // A new message while scrolled up: the view stays put and the pill appears.
    bob_socket.say("news while ann reads").await;
    ann.wait_for_text("#messages-list", "news while ann reads")
        .await;
    assert_eq!(scroll_top().await, before);
    let pill = ann.find("#new-pill").await;
    assert!(
        pill.is_displayed().await.unwrap(),
        "the new-messages pill shows"
    );
    pill.click().await.unwrap();
    assert!(!ann.find("#new-pill").await.is_displayed().await.unwrap());

    // A message in another group raises its badge, bold, until the room is opened.
    bob_socket.enter_group("python").await;
    bob_socket.say("over in python").await;
    ann.wait_for_text("#groups a[data-group-name='python'] .badge", "1")
        .await;
    ann.click("#groups a[data-group-name='python']").await;
    ann.wait_for_text("#messages-list", "over in python").await;
    assert_eq!(
        ann.find("#groups a[data-group-name='python'] .badge")
            .await
            .text()
            .await
            .unwrap(),
        ""
    );
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_search_and_mentions_in_a_browser() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--rate-burst", "1000"]).await;
    let bob = app.signup("bob").await;
    let mut bob_socket = app.connect(&bob).await;
    let first = bob_socket.post("the very first line").await;
    for i in 1..=80 {
        bob_socket.say(&format!("history line {i}")).await;
    }
    bob_socket
        .act(
            "New message",
            serde_json::json!({ "message": "about that first line", "replyTo": first }),
        )
        .await;
    bob_socket.wait_for_message("about that first line").await;

    let driver = Driver::start().await;
    let ann = driver.desktop().await;
    ann.sign_up(&app, "ann").await;
    ann.wait_for_text(
        "#messages-list article:last-child .quote",
        "the very first line",
    )
    .await;
    // The original is pages back: the quote loads history until it is there.
    ann.click("#messages-list article:last-child a.quote").await;
    ann.wait_for_text("#messages-list article.sought", "the very first line")
        .await;

    // Ann answers from the page: her post quotes what she replied to.
    ann.click("#messages-list article:last-child button[data-act='reply']")
        .await;
    ann.wait_for_text("#reply-bar", "about that first line")
        .await;
    ann.say("noted").await;
    let frame = bob_socket.wait_for_message("noted").await;
    assert!(
        frame.html.contains("about that first line") && frame.html.contains("class=\"quote\""),
        "{}",
        frame.html
    );
    assert!(!ann.find("#reply-bar").await.is_displayed().await.unwrap());

    // From another room, a search finds the first line and shows it where it was said.
    ann.click("#groups a[data-group-name='python']").await;
    ann.wait_for_text("#group-name", "python").await;
    ann.click("#search-open").await;
    ann.find("#search-query")
        .await
        .send_keys("VERY first")
        .await
        .unwrap();
    ann.click("#search-form button[type='submit']").await;
    ann.wait_for_text("#search-results", "the very first line")
        .await;
    ann.click("#search-results li:last-child a.found").await;
    ann.wait_for_text("#group-name", "hi").await;
    ann.wait_for_text("#messages-list article.sought", "the very first line")
        .await;
    assert!(
        !ann.find("#search-dialog")
            .await
            .is_displayed()
            .await
            .unwrap()
    );

    // Bob names Ann in another room: her sidebar and her tab's title count the mention
    // apart from the unread messages.
    bob_socket.enter_group("python").await;
    bob_socket.say("@ann are you around?").await;
    ann.wait_for_text("#groups a[data-group-name='python'] .mention-badge", "@1")
        .await;
    assert!(ann.client.title().await.unwrap().starts_with("(@1 · 1)"));
    ann.click("#groups a[data-group-name='python']").await;
    ann.wait_for_text("#messages-list .mention.me", "@ann")
        .await;
    // Typing @ offers the names of the room; Tab takes the one chosen.
    let composer = ann.find("#message-text").await;
    composer.send_keys("hi @bo").await.unwrap();
    ann.wait_for_text("#mention-suggestions", "@bob").await;
    composer.send_keys("\u{E004}").await.unwrap();
    let typed = composer.prop("value").await.unwrap();
    assert_eq!(typed.as_deref(), Some("hi @bob "));

    // The room's menu opens from the keyboard, and Escape closes it.
    let summary = ann.find("#room-actions summary").await;
    summary.send_keys("\u{E007}").await.unwrap();
    let leave = ann
        .find("#room-actions .menu button[data-action='Leave group']")
        .await;
    assert!(leave.is_displayed().await.unwrap());
    leave.send_keys("\u{E00C}").await.unwrap();
    assert!(!leave.is_displayed().await.unwrap());
    ann.close().await;
}
