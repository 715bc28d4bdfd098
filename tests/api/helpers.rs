//! The real app on port 0, over a fresh database per test, and clients that talk to it the
//! way a browser does: forms over HTTP, JSON frames over the WebSocket.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wirechat::app::Application;
use wirechat::config::Config;

/// A bound on waiting, so a broken test fails instead of hanging. Never a performance claim.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per database backend, as two test functions.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}

fn init_logs() {
    static LOGS: Once = Once::new();
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("wirechat=debug")
                .with_test_writer()
                .init();
        }
    });
}

/// A fresh, empty database for one test: a new SQLite file or a new PostgreSQL database.
pub async fn fresh_database(backend: Backend) -> String {
    let name = format!("wirechat_test_{}", uuid::Uuid::new_v4().simple());
    match backend {
        Backend::Sqlite => {
            let dir: PathBuf = std::env::temp_dir().join("wirechat-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            format!(
                "sqlite://{}?mode=rwc",
                dir.join(format!("{name}.db")).display()
            )
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (see README: Tests)");
            sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            format!("postgres://postgres@127.0.0.1:5432/{name}")
        }
    }
}

/// A Redis key prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!("wirechat-test-{}:", uuid::Uuid::new_v4().simple())
}

/// Two nodes started with `args` on one fresh PostgreSQL database, as a test of the Redis
/// that `args` name: returns once `text`, posted by a user of one, reached a user of the
/// other.
pub async fn two_nodes_carry(args: Vec<String>, text: &str) {
    let database_url = fresh_database(Backend::Postgres).await;
    let n1 = TestApp::start(database_url.clone(), args.clone()).await;
    let n2 = TestApp::start(database_url, args).await;
    let (ann, bob) = (n1.signup("ann").await, n2.signup("bob").await);
    let mut a = n1.connect(&ann).await;
    let mut b = n2.connect(&bob).await;
    a.say(text).await;
    b.wait_for_message(text).await;
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when on a listener of its own (`--metrics-addr`).
    pub metrics_addr: Option<SocketAddr>,
    pub database_url: String,
    args: Vec<String>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, &[]).await
    }

    /// Spawns the app with extra command-line flags (e.g. `--rate-burst 3`).
    pub async fn spawn_with(backend: Backend, args: &[&str]) -> TestApp {
        let database_url = fresh_database(backend).await;
        TestApp::start(database_url, args.iter().map(|s| s.to_string()).collect()).await
    }

    pub async fn start(database_url: String, args: Vec<String>) -> TestApp {
        TestApp::start_on("127.0.0.1:0", database_url, args).await
    }

    async fn start_on(addr: &str, database_url: String, args: Vec<String>) -> TestApp {
        init_logs();
        let mut argv = vec![
            "wirechat".to_string(),
            "--addr".into(),
            addr.into(),
            "--database-url".into(),
            database_url.clone(),
        ];
        // A test's node stops at once when told, unless the test is about draining.
        if !args.iter().any(|a| a == "--drain-ms") {
            argv.extend(["--drain-ms".into(), "0".into()]);
        }
        argv.extend(args.iter().cloned());
        let config = Config::parse_from(argv);
        let app = Application::build(config).await.expect("app builds");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(async move {
            app.run_until_stopped().await.expect("app runs");
        });
        TestApp {
            addr,
            metrics_addr,
            database_url,
            args,
            shutdown,
            server: Some(server),
        }
    }

    /// Tells the node to shut down, as SIGTERM does, without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops the node gracefully and waits until it has exited.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    /// Stops this node and starts a new one on the same database and port.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        self.start_again().await
    }

    /// Starts a stopped node again, on the same database and port.
    pub async fn start_again(&self) -> TestApp {
        TestApp::start_on(
            &self.addr.to_string(),
            self.database_url.clone(),
            self.args.clone(),
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An HTTP client that shows redirects instead of following them.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client")
    }

    /// `GET path` with a session cookie, as a logged-in browser would.
    pub async fn get_as(&self, path: &str, cookie: &str) -> reqwest::Response {
        self.http()
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .expect("GET")
    }

    /// The chat page's HTML as the user with `cookie` sees it.
    pub async fn page(&self, cookie: &str) -> String {
        self.get_as("/", cookie)
            .await
            .text()
            .await
            .expect("page body")
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.http()
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", self.origin())
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// Signs up `username` (password `password123`) and returns its session cookie.
    pub async fn signup(&self, username: &str) -> TestUser {
        let response = self
            .post_form(
                "/signup",
                &[("username", username), ("password", "password123")],
            )
            .await;
        assert_eq!(response.status(), 303, "signup of {username}");
        TestUser {
            username: username.to_owned(),
            cookie: session_cookie(&response).expect("session cookie"),
        }
    }

    /// Signs up each of `usernames`, in order.
    pub async fn signups<const N: usize>(&self, usernames: [&str; N]) -> [TestUser; N] {
        let mut users = Vec::with_capacity(N);
        for username in usernames {
            users.push(self.signup(username).await);
        }
        users
            .try_into()
            .unwrap_or_else(|_| unreachable!("one user per name"))
    }

    /// Continues as a guest, under a generated name, and returns its session cookie.
    pub async fn guest(&self) -> TestUser {
        let response = self.post_form("/guest", &[]).await;
        assert_eq!(response.status(), 303, "guest sign-in");
        TestUser {
            username: String::new(),
            cookie: session_cookie(&response).expect("session cookie"),
        }
    }

    pub async fn connect(&self, user: &TestUser) -> Client {
        self.connect_at(user, "/ws/chat/").await
    }

    /// Opens the chat socket at `path` (which may carry a resume query) and reads the
    /// frames the server sends on connect, up to the active room's history.
    /// Opens `user`'s socket again in `room` after seq `after`, and returns everything it
    /// is sent up to the server's word that the room is shown through seq `through`.
    pub async fn resumed_through(
        &self,
        user: &TestUser,
        room: &str,
        after: i64,
        through: i64,
    ) -> String {
        let mut client = self
            .connect_at(user, &format!("/ws/chat/?room={room}&after={after}"))
            .await;
        let through = through.to_string();
        let (last, mut frames) = client
            .wait_for_with_skipped(|f| f.selector == "#room-seq" && f.html == through)
            .await;
        frames.push(last);
        frames.iter().map(|f| f.html.as_str()).collect()
    }

    pub async fn connect_at(&self, user: &TestUser, path: &str) -> Client {
        let mut client = self.open_socket(user, path).await.expect("socket opens");
        client.room_id = client.wait_for_room().await;
        client
    }

    pub async fn open_socket(
        &self,
        user: &TestUser,
        path: &str,
    ) -> Result<Client, tungstenite::Error> {
        let mut request = format!("ws://{}{}", self.addr, path)
            .into_client_request()
            .expect("request");
        let headers = request.headers_mut();
        headers.insert(
            "cookie",
            HeaderValue::from_str(&user.cookie).expect("cookie"),
        );
        headers.insert(
            "origin",
            HeaderValue::from_str(&self.origin()).expect("origin"),
        );
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client {
            stream,
            username: user.username.clone(),
            room_id: String::new(),
        })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The `name=value` of the session cookie a response sets, ready for a Cookie header.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("wirechat_session=") && !v.starts_with("wirechat_session=;"))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

pub struct TestUser {
    pub username: String,
    pub cookie: String,
}

/// A server frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub selector: String,
    pub html: String,
    pub swap: String,
}

pub struct Client {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub username: String,
    /// The active room's id, read from the `#group-name` frame.
    pub room_id: String,
}

/// What the socket delivered next: a frame, or the close that ended it.
#[derive(Debug)]
pub enum Received {
    Frame(Frame),
    Closed(Option<CloseFrame>),
}

impl Client {
    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("send frame");
    }

    pub async fn act(&mut self, action: &str, data: Value) {
        self.send_raw(&json!({ "action": action, "data": data }).to_string())
            .await;
    }

    pub async fn say(&mut self, text: &str) {
        self.act("New message", json!({ "message": text })).await;
    }

    pub async fn enter_group(&mut self, name: &str) {
        self.act(
            "Change group",
            json!({ "groupName": name, "isGroup": true }),
        )
        .await;
        self.room_id = self.wait_for_room().await;
    }

    pub async fn enter_direct(&mut self, username: &str) {
        self.act(
            "Change group",
            json!({ "groupName": username, "isGroup": false }),
        )
        .await;
        self.room_id = self.wait_for_room().await;
    }

    pub async fn receive(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {PATIENCE:?}", self.username));
            match next {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
                    return Received::Frame(Frame {
                        selector: v["selector"].as_str().expect("selector").to_owned(),
                        html: v["html"].as_str().expect("html").to_owned(),
                        swap: v["swap"].as_str().expect("swap").to_owned(),
                    });
                }
                Some(Ok(Message::Close(frame))) => return Received::Closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    pub async fn next_frame(&mut self) -> Frame {
        match self.receive().await {
            Received::Frame(frame) => frame,
            Received::Closed(close) => panic!("{}: socket closed: {close:?}", self.username),
        }
    }

    /// Reads frames until one matches, returning it and the frames skipped on the way.
    pub async fn wait_for_with_skipped(
        &mut self,
        mut wanted: impl FnMut(&Frame) -> bool,
    ) -> (Frame, Vec<Frame>) {
        let mut skipped = Vec::new();
        loop {
            let frame = self.next_frame().await;
            if wanted(&frame) {
                return (frame, skipped);
            }
            skipped.push(frame);
        }
    }

    pub async fn wait_for(&mut self, wanted: impl FnMut(&Frame) -> bool) -> Frame {
        self.wait_for_with_skipped(wanted).await.0
    }

    /// Waits for the `#group-name` frame of a newly active room, and returns its id.
    async fn wait_for_room(&mut self) -> String {
        let frame = self.wait_for(|f| f.selector == "#group-name").await;
        attr(&frame.html, "data-room-id").expect("room id in #group-name")
    }

    /// Waits for the history shown on entering a room, and returns it whole.
    pub async fn wait_for_history(&mut self) -> String {
        self.wait_for(|f| f.selector == "#messages-list" && f.swap == "innerHTML")
            .await
            .html
    }

    /// Waits for a new-message frame whose text contains `text`.
    pub async fn wait_for_message(&mut self, text: &str) -> Frame {
        self.wait_for(|f| {
            f.selector == "#messages-list" && f.swap == "beforeend" && f.html.contains(text)
        })
        .await
    }

    /// Posts `text` and returns its message id, once its article is back.
    pub async fn post(&mut self, text: &str) -> String {
        self.say(text).await;
        let frame = self.wait_for_message(text).await;
        let id = message_ids(&frame.html).pop().expect("the article's id");
        id.strip_prefix("msg-").unwrap_or(&id).to_owned()
    }

    /// Waits for the `outerHTML` frame that replaces message `id` (an error instead fails
    /// the test).
    pub async fn wait_for_change(&mut self, id: &str) -> Frame {
        let selector = format!("#msg-{id}");
        let f = self
            .wait_for(|f| {
                (f.selector == selector && f.swap == "outerHTML") || f.selector == "#errors"
            })
            .await;
        assert_eq!(f.selector, selector, "{}", f.html);
        f
    }

    /// Sends `change(n)` (an action and its data) about message `id` ten times, each after
    /// the answer to the one before; whether one was refused as too fast (every other
    /// answer is the message's new state).
    pub async fn refused_as_too_fast(
        &mut self,
        id: &str,
        change: impl Fn(usize) -> (&'static str, Value),
    ) -> bool {
        let selector = format!("#msg-{id}");
        for n in 0..10 {
            let (action, data) = change(n);
            self.act(action, data).await;
            let answer = self
                .wait_for(|f| f.selector == "#errors" || f.selector == selector)
                .await;
            if answer.selector == "#errors" && answer.html.contains("too fast") {
                return true;
            }
        }
        false
    }

    /// Waits for an error fragment (not a notice) and returns its text.
    pub async fn wait_for_error(&mut self) -> String {
        let frame = self
            .wait_for(|f| f.selector == "#errors" && f.html.contains("class=\"error\""))
            .await;
        frame.html
    }

    /// Waits for a notice (what an action did) that says `text`.
    pub async fn wait_for_notice(&mut self, text: &str) {
        self.wait_for(|f| {
            f.selector == "#errors" && f.html.contains("class=\"notice\"") && f.html.contains(text)
        })
        .await;
    }

    /// Sends a marker message and returns every frame that arrived before its echo: a way to
    /// show that something did *not* arrive without sleeping.
    pub async fn frames_until_own_marker(&mut self) -> Vec<Frame> {
        let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
        self.say(&marker).await;
        self.wait_for_with_skipped(|f| f.html.contains(&marker))
            .await
            .1
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        // Read until the server's close, so the server has seen the socket go.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.stream.next()).await {}
    }

    /// Drops the connection without a close handshake, as a crashed browser would.
    pub fn abandon(self) {
        drop(self.stream);
    }

    /// The raw socket, for tests that misbehave on purpose.
    pub fn stream(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.stream
    }
}

/// The value of the first `name="…"` attribute in `html`.
pub fn attr(html: &str, name: &str) -> Option<String> {
    let start = html.find(&format!("{name}=\""))? + name.len() + 2;
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// Every `<article id="msg-…">` id in `html`, in order.
pub fn message_ids(html: &str) -> Vec<String> {
    html.match_indices("id=\"msg-")
        .map(|(i, _)| {
            let rest = &html[i + 4..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_owned()
        })
        .collect()
}

/// Every `data-seq` in `html`, in order.
pub fn seqs(html: &str) -> Vec<i64> {
    html.match_indices("data-seq=\"")
        .filter_map(|(i, _)| {
            let rest = &html[i + 10..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

/// Clients for an address in front of the app (a proxy, or a node in a child process):
/// the same HTTP and socket helpers, with no server of its own to stop.
impl TestApp {
    pub fn at(addr: SocketAddr, database_url: &str) -> TestApp {
        TestApp {
            addr,
            metrics_addr: None,
            database_url: database_url.to_owned(),
            args: Vec::new(),
            shutdown: CancellationToken::new(),
            server: None,
        }
    }
}

/// A metric's value from a node's `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Waits, up to `patience`, until a node's metric satisfies `wanted`: for changes no client
/// can see (a reconnect to Redis, a slow reader cut off), polling the node is the event.
pub async fn wait_for_metric(
    addr: SocketAddr,
    name: &str,
    patience: Duration,
    wanted: impl Fn(f64) -> bool,
) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let value = metric(addr, name).await;
        if wanted(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many messages with this body the database holds.
pub async fn stored(database_url: &str, body: &str) -> i64 {
    count(
        database_url,
        "SELECT COUNT(*) FROM messages WHERE body = $1",
        body,
    )
    .await
}

/// What `sql`, a count with one parameter, finds in the test's database.
pub async fn count(database_url: &str, sql: &str, bind: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database_url)
        .await
        .expect("the test's database");
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(bind)
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

/// Runs the wirechat binary on `database_url` with `args`, which must make it refuse to
/// start; what it said.
pub fn refused_at_start(database_url: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wirechat"))
        .args(["--addr", "127.0.0.1:0", "--database-url", database_url])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("wirechat runs");
    assert!(!output.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout)
}

/// Who a socket sees listed, kept from the frames it is sent: a room's "who is here"
/// (`room_members`) or the sidebar's Online list (`online`).
pub struct ListedSeen {
    /// The list's element, each entry's id prefix, and the count's element.
    list: &'static str,
    entry: &'static str,
    count: &'static str,
    pub ids: BTreeSet<String>,
    pub more: String,
}

impl ListedSeen {
    pub fn room_members() -> ListedSeen {
        ListedSeen {
            list: "room-members",
            entry: "member-",
            count: "#room-members-more",
            ids: BTreeSet::new(),
            more: String::new(),
        }
    }

    pub fn online() -> ListedSeen {
        ListedSeen {
            list: "people",
            entry: "person-",
            count: "#people-more",
            ids: BTreeSet::new(),
            more: String::new(),
        }
    }

    /// The entries' ids in `html`.
    fn ids_in(&self, html: &str) -> Vec<String> {
        html.split(&format!("id=\"{}", self.entry))
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_owned))
            .collect()
    }

    pub fn apply(&mut self, f: &Frame) {
        let list = format!("#{}", self.list);
        match (f.selector.as_str(), f.swap.as_str()) {
            // The sidebar carries the Online list whole.
            ("#aside", "innerHTML") if self.list == "people" => {
                let open = "<ul id=\"people\">";
                let inner = f.html.split(open).nth(1).unwrap_or_default();
                let inner = inner.split("</ul>").next().unwrap_or_default();
                self.ids = self.ids_in(inner).into_iter().collect();
                let count = f
                    .html
                    .split("id=\"people-more\"")
                    .nth(1)
                    .unwrap_or_default();
                let count = count
                    .split_once('>')
                    .map(|(_, rest)| rest)
                    .unwrap_or_default();
                self.more = count.split('<').next().unwrap_or_default().to_owned();
            }
            (s, "innerHTML") if s == list => self.ids = self.ids_in(&f.html).into_iter().collect(),
            (s, "beforeend") if s == list => self.ids.extend(self.ids_in(&f.html)),
            (s, _) if s == self.count => self.more = f.html.clone(),
            (s, "remove") => {
                if let Some(id) = s.strip_prefix('#').and_then(|s| s.strip_prefix(self.entry)) {
                    self.ids.remove(id);
                }
            }
            _ => {}
        }
    }
}

/// Reads `client`'s frames into both lists until `done` says they are as expected.
pub async fn follow(
    client: &mut Client,
    members: &mut ListedSeen,
    online: &mut ListedSeen,
    done: impl Fn(&ListedSeen, &ListedSeen) -> bool,
) {
    while !done(members, online) {
        let f = client.next_frame().await;
        members.apply(&f);
        online.apply(&f);
    }
}
