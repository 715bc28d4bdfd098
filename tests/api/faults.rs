//! Faults under traffic. Each test runs clients through a few nodes (child processes of the
//! `wirechat` binary, so one can be killed), injects a fault — a node killed or stopped,
//! Redis or PostgreSQL stopped, a client that stops reading — and ends with an audit that
//! compares what each sender saw acknowledged with what every receiver shows and with the
//! `messages` table. Lost and duplicated must both be zero.
//!
//! Clients behave as the page does: a socket that ends reconnects to a live node with the
//! resume protocol (`/ws/chat/?room=<id>&after=<last contiguous seq>`), and a gap in the
//! seqs that does not fill within a second is filled with `Catch up`. Messages are tagged
//! `m:<sender>:<n>;`, so a body names its sender and its place in that sender's order.
//!
//! Run with `-- --nocapture` to see each audit's figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{
    Backend, PATIENCE, TestApp, fresh_database, fresh_prefix, message_ids, seqs, wait_for_metric,
};
use crate::process::{Node, OwnRedis, Process, caddy, free_port, start_node};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// How long a gap in the seqs may stay open before the client asks to catch up; the page
/// waits the same second, since two nodes may publish seq 6 before seq 5.
const GAP_PATIENCE: Duration = Duration::from_secs(1);
/// Each sender posts at most this often, so a test's traffic is bounded on a small machine.
const PACE: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// Processes

/// A PostgreSQL server of the test's own (initdb + pg_ctl from the installed PostgreSQL) on
/// a free port, with its data under the temp dir, so it can be stopped without touching the
/// shared instance on 5432. Stopped (immediately) and removed when dropped.
struct OwnPostgres {
    ctl: PgCtl,
}

/// Runs PostgreSQL's tools for one instance. PostgreSQL refuses to run as root, so under
/// root they run as the `postgres` user, which then owns the instance's directory.
#[derive(Clone)]
struct PgCtl {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

impl PgCtl {
    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin.join(tool));
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self
            .command(tool, args)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let args = ["start", "-w", "-D", "data", "-l", "log", "-o", &options];
        let output = self
            .command("pg_ctl", &args)
            .output()
            .unwrap_or_else(|e| panic!("running pg_ctl: {e}"));
        // The server's own log says why it did not start; it goes with the directory.
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        assert!(
            output.status.success(),
            "pg_ctl {args:?}: {}\nserver log:\n{log}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["stop", "-w", "-D", "data", "-m", mode]);
    }
}

impl OwnPostgres {
    async fn start() -> OwnPostgres {
        tokio::task::spawn_blocking(|| {
            let dir = std::env::temp_dir()
                .join("wirechat-tests")
                .join(format!("pg-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).expect("postgres dir");
            // SAFETY: geteuid has no preconditions.
            let owner = (unsafe { libc::geteuid() } == 0).then(postgres_user);
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
            }
            let ctl = PgCtl {
                dir,
                port: free_port(),
                bin: postgres_bin(),
                owner,
            };
            // From here on, Drop cleans up whatever was made.
            let pg = OwnPostgres { ctl };
            pg.ctl.run(
                "initdb",
                &[
                    "-D",
                    "data",
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            );
            pg.ctl.start();
            pg
        })
        .await
        .expect("starting PostgreSQL")
    }

    /// Stops the server fast: open sessions end and their transactions roll back.
    async fn stop(&self) {
        let ctl = self.ctl.clone();
        tokio::task::spawn_blocking(move || ctl.stop("fast"))
            .await
            .expect("stopping PostgreSQL");
    }

    /// Starts it again on the same port and data.
    async fn restart(&self) {
        let ctl = self.ctl.clone();
        tokio::task::spawn_blocking(move || ctl.start())
            .await
            .expect("restarting PostgreSQL");
    }

    async fn fresh_database(&self) -> String {
        use sqlx::Connection;
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.ctl.port);
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("own PostgreSQL answers");
        sqlx::Executor::execute(&mut admin, "CREATE DATABASE wirechat")
            .await
            .expect("create database");
        format!("postgres://postgres@127.0.0.1:{}/wirechat", self.ctl.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .ctl
            .command("pg_ctl", &["stop", "-w", "-D", "data", "-m", "immediate"])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.ctl.dir);
    }
}

/// The newest installed PostgreSQL's bin directory (Debian keeps them versioned).
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("an installed PostgreSQL with pg_ctl").1
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres"))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
                .flatten()
        })
        .expect("a postgres user to run PostgreSQL as")
}

// ---------------------------------------------------------------------------------------
// Clients

/// The nodes clients may (re)connect to. A node about to be stopped is taken out first.
#[derive(Clone, Default)]
struct Live(Arc<Mutex<Vec<SocketAddr>>>);

impl Live {
    fn add(&self, addr: SocketAddr) {
        self.0.lock().unwrap().push(addr);
    }

    fn remove(&self, addr: SocketAddr) {
        self.0.lock().unwrap().retain(|a| *a != addr);
    }

    fn pick(&self, n: usize) -> Option<SocketAddr> {
        let live = self.0.lock().unwrap();
        (!live.is_empty()).then(|| live[n % live.len()])
    }
}

/// Counters the test body waits on while traffic flows.
#[derive(Default)]
struct Progress {
    acked: watch::Sender<usize>,
    refused: watch::Sender<usize>,
    reconnects: watch::Sender<usize>,
}

impl Progress {
    async fn wait(counter: &watch::Sender<usize>, what: &str, at_least: usize) {
        let mut rx = counter.subscribe();
        // Generous: a PostgreSQL outage holds each post for the pool's acquire timeout.
        let reached = tokio::time::timeout(PATIENCE * 2, rx.wait_for(|n| *n >= at_least))
            .await
            .is_ok();
        assert!(
            reached,
            "{what} stayed at {} (< {at_least})",
            *counter.borrow()
        );
    }

    fn now(counter: &watch::Sender<usize>) -> usize {
        *counter.borrow()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Senders post; everyone reads.
    Run,
    /// Senders have stopped; everyone keeps reading.
    Stop,
    /// Read until every seq up to this one is shown.
    Drain(i64),
}

/// What one client did and saw, across all its connections.
#[derive(Debug, Default)]
struct Tally {
    name: String,
    sent: Vec<String>,
    /// Tag, message id and seq of each post whose echo came back on the socket it was sent on.
    acked: Vec<(String, String, i64)>,
    /// Posts answered with an `#errors` fragment.
    refused: Vec<String>,
    /// Posts whose socket ended before any answer.
    unanswered: Vec<String>,
    /// Every message this client has been shown (live, history or catch-up): seq → id.
    shown: BTreeMap<i64, String>,
    /// A different message id shown at a seq already taken.
    conflicts: Vec<String>,
    /// Messages delivered twice on one socket that never asked to catch up, or again after
    /// a resume that said it had them.
    duplicated: Vec<(String, i64)>,
    /// Repeats on a socket after it asked to `Catch up` (dropped by the page, as here).
    redundant: usize,
    /// How each connection ended: the close code, or `None` when it was dropped.
    closes: Vec<Option<u16>>,
    reconnects: usize,
    /// `Catch up` requests made because a gap did not fill.
    repairs: usize,
}

impl Tally {
    fn contiguous(&self) -> i64 {
        let mut n = 0;
        for seq in self.shown.keys() {
            if *seq != n + 1 {
                break;
            }
            n = *seq;
        }
        n
    }
}

type Socket = WebSocketStream<TcpStream>;

/// One connection's state.
struct Conn {
    socket: Socket,
    /// Message ids delivered on this connection.
    seen: HashSet<String>,
    /// The resume point this connection was opened with: nothing at or below it may come.
    after: i64,
    /// The client asked to `Catch up` on this connection: from then on its reply and live
    /// delivery may overlap, and the page drops the repeats.
    caught_up: bool,
    gap_since: Option<Instant>,
}

enum Step {
    Frame { selector: String, html: String },
    Closed(Option<u16>),
    Quiet,
}

/// Opens a chat socket. A small receive buffer makes a client that stops reading fall
/// behind after a few hundred kilobytes instead of several megabytes.
async fn open(
    addr: SocketAddr,
    cookie: &str,
    path: &str,
    small_buffer: bool,
) -> Result<Socket, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if small_buffer {
        socket
            .set_recv_buffer_size(4096)
            .map_err(|e| e.to_string())?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert("cookie", HeaderValue::from_str(cookie).expect("cookie"));
    headers.insert(
        "origin",
        HeaderValue::from_str(&format!("http://{addr}")).expect("origin"),
    );
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// The articles in a messages frame: (id, seq, html) each.
fn articles(selector: &str, html: &str) -> Vec<(String, i64, String)> {
    if selector != "#messages-list" {
        return Vec::new();
    }
    html.split("<article")
        .skip(1)
        .filter_map(|chunk| {
            let dom_id = message_ids(&format!("<article{chunk}"))
                .into_iter()
                .next()?;
            let id = dom_id.strip_prefix("msg-")?.to_owned();
            let seq = seqs(chunk).into_iter().next()?;
            Some((id, seq, chunk.to_owned()))
        })
        .collect()
}

fn tag(sender: &str, n: usize) -> String {
    format!("m:{sender}:{n:06};")
}

struct Actor {
    tally: Tally,
    index: usize,
    cookie: String,
    live: Live,
    room: String,
    conn: Option<Conn>,
    small_buffer: bool,
    /// Set while the client should not read at all (a slow consumer).
    stall: Option<watch::Receiver<bool>>,
    /// Drain target: every seq up to here must be shown.
    target: i64,
    /// How long a gap may stay open before `Catch up`; `None`: never ask, and rely on the
    /// server's own delivery and resync alone.
    gap_patience: Option<Duration>,
    padding: String,
    progress: Arc<Progress>,
}

impl Actor {
    /// Reads the next frame (recording its messages), the end of the connection, or
    /// nothing within PATIENCE. Asks to catch up whenever a gap outlives `gap_patience`.
    async fn next(&mut self) -> Step {
        let limit = Instant::now() + PATIENCE;
        let patience = self.gap_patience;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Step::Closed(None);
            };
            let gap_at = conn.gap_since.zip(patience).map(|(t, p)| t + p);
            let wake = gap_at.map_or(limit, |g| g.min(limit));
            match tokio::time::timeout_at(wake, conn.socket.next()).await {
                Err(_) if gap_at.is_some_and(|g| g <= Instant::now()) => {
                    let after = self.tally.contiguous();
                    conn.caught_up = true;
                    conn.gap_since = Some(Instant::now());
                    self.tally.repairs += 1;
                    let request = json!({"action": "Catch up", "data": {"afterSeq": after}});
                    if conn
                        .socket
                        .send(Message::text(request.to_string()))
                        .await
                        .is_err()
                    {
                        return Step::Closed(None);
                    }
                }
                Err(_) => return Step::Quiet,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let v: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
                    let selector = v["selector"].as_str().unwrap_or_default().to_owned();
                    let html = v["html"].as_str().unwrap_or_default().to_owned();
                    self.record(&selector, &html);
                    return Step::Frame { selector, html };
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Step::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Step::Closed(None),
            }
        }
    }

    fn record(&mut self, selector: &str, html: &str) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        for (id, seq, _) in articles(selector, html) {
            if seq <= conn.after {
                self.tally.duplicated.push((id.clone(), seq));
            } else if !conn.seen.insert(id.clone()) {
                if conn.caught_up {
                    self.tally.redundant += 1;
                } else {
                    self.tally.duplicated.push((id.clone(), seq));
                }
            }
            match self.tally.shown.get(&seq) {
                Some(known) if *known != id => self
                    .tally
                    .conflicts
                    .push(format!("seq {seq}: {known} and {id}")),
                Some(_) => {}
                None => {
                    self.tally.shown.insert(seq, id);
                }
            }
        }
        self.note_gap();
    }

    /// Starts the gap timer when a seq below the newest one known is missing, and stops it
    /// when none is.
    fn note_gap(&mut self) {
        let top = self
            .tally
            .shown
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.target);
        let gap = self.tally.contiguous() < top;
        if let Some(conn) = self.conn.as_mut() {
            if gap {
                conn.gap_since.get_or_insert_with(Instant::now);
            } else {
                conn.gap_since = None;
            }
        }
    }

    /// Opens a socket on a live node — resuming the room after the last contiguous seq
    /// once the room is known — and reads up to the room's title.
    async fn connect(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let mut attempt = self.index;
        loop {
            attempt += 1;
            let after = self.tally.contiguous();
            let path = if self.room.is_empty() {
                "/ws/chat/".to_owned()
            } else {
                format!("/ws/chat/?room={}&after={after}", self.room)
            };
            let opened = match self.live.pick(attempt) {
                Some(addr) => open(addr, &self.cookie, &path, self.small_buffer).await,
                None => Err("no live node".to_owned()),
            };
            if let Ok(socket) = opened {
                self.conn = Some(Conn {
                    socket,
                    seen: HashSet::new(),
                    after,
                    caught_up: false,
                    gap_since: None,
                });
                loop {
                    match self.next().await {
                        Step::Frame { selector, html } if selector == "#group-name" => {
                            let room = crate::helpers::attr(&html, "data-room-id")
                                .expect("room id in #group-name");
                            if self.room.is_empty() {
                                self.room = room;
                            } else {
                                assert_eq!(
                                    room, self.room,
                                    "{}: resumed elsewhere",
                                    self.tally.name
                                );
                            }
                            return;
                        }
                        Step::Frame { .. } => continue,
                        Step::Closed(_) | Step::Quiet => break,
                    }
                }
                self.conn = None;
            }
            // A node may be starting or stopping: poll, bounded, for one that answers.
            assert!(
                Instant::now() < deadline,
                "{}: no node took the socket within {PATIENCE:?}",
                self.tally.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reconnect(&mut self, close: Option<u16>) {
        self.tally.closes.push(close);
        self.conn = None;
        self.connect().await;
        self.tally.reconnects += 1;
        self.progress.reconnects.send_modify(|n| *n += 1);
    }

    /// Posts message `n` and reads until its fate is known: echoed (acknowledged), refused
    /// with an error fragment, or unanswered because the socket ended.
    async fn post(&mut self, n: usize) {
        let tag = tag(&self.tally.name, n);
        self.tally.sent.push(tag.clone());
        let request =
            json!({"action": "New message", "data": {"message": format!("{tag}{}", self.padding)}});
        let sent = match self.conn.as_mut() {
            Some(conn) => conn
                .socket
                .send(Message::text(request.to_string()))
                .await
                .is_ok(),
            None => false,
        };
        if !sent {
            self.tally.unanswered.push(tag);
            self.reconnect(None).await;
            return;
        }
        loop {
            match self.next().await {
                Step::Frame { selector, html } if selector == "#errors" => {
                    // A failed Catch up says "Something went wrong"; a refused post says why.
                    if !html.contains("Something went wrong") {
                        self.tally.refused.push(tag);
                        self.progress.refused.send_modify(|n| *n += 1);
                        return;
                    }
                }
                Step::Frame { selector, html } => {
                    if let Some((id, seq, _)) = articles(&selector, &html)
                        .into_iter()
                        .find(|(_, _, h)| h.contains(&tag))
                    {
                        self.tally.acked.push((tag, id, seq));
                        self.progress.acked.send_modify(|n| *n += 1);
                        return;
                    }
                }
                Step::Closed(code) => {
                    self.tally.unanswered.push(tag);
                    self.reconnect(code).await;
                    return;
                }
                Step::Quiet => panic!(
                    "{}: no answer to {tag} within {PATIENCE:?}",
                    self.tally.name
                ),
            }
        }
    }

    /// Reads one step while not posting; a stalled client reads nothing until released.
    /// Safe to cancel: it only waits on the socket (or the stall), so a racing timer never
    /// interrupts a reconnect half-way.
    async fn listen(&mut self) -> Step {
        if let Some(stall) = self.stall.as_mut()
            && *stall.borrow()
        {
            // Not reading at all: the node's queue for this socket fills up.
            let _ = stall.wait_for(|stalled| !*stalled).await;
            return Step::Quiet;
        }
        self.next().await
    }

    async fn handle(&mut self, step: Step) {
        if let Step::Closed(code) = step {
            self.reconnect(code).await;
        }
    }

    async fn run(
        mut self,
        sends: bool,
        mut phase: watch::Receiver<Phase>,
        stopped: oneshot::Sender<()>,
    ) -> Tally {
        enum Wake {
            Phase,
            Tick,
            Read(Step),
        }
        let mut pace = tokio::time::interval(PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0;
        while *phase.borrow() == Phase::Run {
            let wake = tokio::select! {
                biased;
                _ = phase.changed() => Wake::Phase,
                _ = pace.tick(), if sends => Wake::Tick,
                step = self.listen() => Wake::Read(step),
            };
            match wake {
                Wake::Phase => {}
                Wake::Tick => {
                    n += 1;
                    self.post(n).await;
                }
                Wake::Read(step) => self.handle(step).await,
            }
        }
        let _ = stopped.send(());
        let target = loop {
            if let Phase::Drain(target) = *phase.borrow() {
                break target;
            }
            let wake = tokio::select! {
                _ = phase.changed() => Wake::Phase,
                step = self.listen() => Wake::Read(step),
            };
            if let Wake::Read(step) = wake {
                self.handle(step).await;
            }
        };
        // The newest stored seq may be one this client has not heard of at all.
        self.target = target;
        self.note_gap();
        let deadline = Instant::now() + PATIENCE;
        while self.tally.contiguous() < target && Instant::now() < deadline {
            let step = self.listen().await;
            self.handle(step).await;
        }
        self.tally
    }
}

// ---------------------------------------------------------------------------------------
// A chat under test

struct Chat {
    name: &'static str,
    database_url: String,
    args: Vec<String>,
    nodes: Vec<Node>,
    started: usize,
    live: Live,
    progress: Arc<Progress>,
    phase: watch::Sender<Phase>,
    actors: Vec<(JoinHandle<Tally>, oneshot::Receiver<()>)>,
    room: String,
    proxy: Option<Process>,
    /// Clients fill lingering gaps with `Catch up`, as the page does.
    client_catch_up: bool,
}

/// How a client takes part.
#[derive(Default)]
struct Role {
    sends: bool,
    small_buffer: bool,
    stall: Option<watch::Receiver<bool>>,
    padding: usize,
}

impl Role {
    fn sender() -> Role {
        Role {
            sends: true,
            ..Role::default()
        }
    }
}

impl Chat {
    async fn start(
        name: &'static str,
        database_url: String,
        redis_url: &str,
        nodes: usize,
        extra: &[&str],
    ) -> Chat {
        let mut args: Vec<String> = [
            "--redis-url",
            redis_url,
            "--redis-prefix",
            &fresh_prefix(),
            "--rate-burst",
            "100000",
            "--rate-per-second",
            "100000",
            "--auth-rate-limit",
            "off",
            "--presence-ttl-ms",
            "3000",
            "--presence-heartbeat-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut chat = Chat {
            name,
            database_url,
            args,
            nodes: Vec::new(),
            started: 0,
            live: Live::default(),
            progress: Arc::new(Progress::default()),
            phase: watch::Sender::new(Phase::Run),
            actors: Vec::new(),
            room: String::new(),
            proxy: None,
            client_catch_up: true,
        };
        for _ in 0..nodes {
            chat.add_node().await;
        }
        chat
    }

    /// Starts one more node and lets clients connect to it.
    async fn add_node(&mut self) -> usize {
        self.started += 1;
        let node = start_node(
            "127.0.0.1:0",
            &self.database_url,
            &self.args,
            &format!("{}-node{}", self.name, self.started),
        )
        .await;
        self.live.add(node.addr);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Puts Caddy in front of the nodes; from then on clients reconnect through it alone.
    async fn behind_caddy(&mut self) -> SocketAddr {
        let upstreams: Vec<SocketAddr> = self.nodes.iter().map(|n| n.addr).collect();
        let (process, addr) = caddy(&upstreams).await;
        self.proxy = Some(process);
        *self.live.0.lock().unwrap() = vec![addr];
        addr
    }

    /// Stops node `i` with SIGTERM and starts a new one on the same address.
    async fn restart_in_place(&mut self, i: usize) {
        let addr = self.nodes[i].addr;
        self.nodes[i].process.terminate().await;
        self.started += 1;
        self.nodes[i] = start_node(
            &addr.to_string(),
            &self.database_url,
            &self.args,
            &format!("{}-node{}", self.name, self.started),
        )
        .await;
    }

    /// Signs a client up and starts it on the node (or proxy) at `addr`, in `#hi`.
    async fn join(&mut self, username: &str, addr: SocketAddr, role: Role) {
        let user = TestApp::at(addr, &self.database_url).signup(username).await;
        let mut actor = Actor {
            tally: Tally {
                name: username.to_owned(),
                ..Tally::default()
            },
            index: self.actors.len(),
            cookie: user.cookie,
            live: Live(Arc::new(Mutex::new(vec![addr]))),
            room: String::new(),
            conn: None,
            small_buffer: role.small_buffer,
            stall: role.stall,
            target: 0,
            gap_patience: self.client_catch_up.then_some(GAP_PATIENCE),
            padding: "x".repeat(role.padding),
            progress: self.progress.clone(),
        };
        actor.connect().await;
        // Its first socket is on `addr`; later ones go to any live node.
        actor.live = self.live.clone();
        if self.room.is_empty() {
            self.room = actor.room.clone();
        }
        assert_eq!(actor.room, self.room, "everyone starts in #hi");
        let (stopped_tx, stopped_rx) = oneshot::channel();
        let handle = tokio::spawn(actor.run(role.sends, self.phase.subscribe(), stopped_tx));
        self.actors.push((handle, stopped_rx));
    }

    fn acked(&self) -> usize {
        Progress::now(&self.progress.acked)
    }

    /// Waits until `more` messages beyond the current count have been acknowledged.
    async fn traffic(&self, more: usize) {
        let target = self.acked() + more;
        Progress::wait(&self.progress.acked, "acknowledged messages", target).await;
    }

    async fn reconnects(&self, at_least: usize) {
        Progress::wait(&self.progress.reconnects, "reconnects", at_least).await;
    }

    /// Stops the senders, lets every client read up to the newest stored message, and
    /// audits the result.
    async fn finish(self) -> (Audit, Vec<Tally>) {
        self.phase.send_replace(Phase::Stop);
        let mut handles = Vec::new();
        for (handle, stopped) in self.actors {
            tokio::time::timeout(PATIENCE, stopped)
                .await
                .expect("a client stops sending")
                .expect("client task alive");
            handles.push(handle);
        }
        let rows = stored_messages(&self.database_url, &self.room).await;
        self.phase
            .send_replace(Phase::Drain(rows.last().map_or(0, |r| r.1)));
        let mut tallies = Vec::new();
        for handle in handles {
            tallies.push(handle.await.expect("client task"));
        }
        let audit = Audit::of(&tallies, &rows);
        println!("fault audit [{}]: {audit}", self.name);
        audit.assert_clean(self.name, &tallies);
        (audit, tallies)
    }
}

/// The room's stored messages: (id, seq, body), by seq.
async fn stored_messages(database_url: &str, room: &str) -> Vec<(String, i64, String)> {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(database_url)
        .await
        .expect("database for the audit");
    sqlx::query_as("SELECT id, seq, body FROM messages WHERE room_id = $1 ORDER BY seq")
        .bind(room)
        .fetch_all(&mut db)
        .await
        .expect("SELECT messages")
}

// ---------------------------------------------------------------------------------------
// The audit

#[derive(Debug, Default)]
struct Audit {
    sent: usize,
    acknowledged: usize,
    refused: usize,
    unanswered: usize,
    unanswered_stored: usize,
    refused_stored: usize,
    stored: usize,
    receivers: usize,
    /// (acknowledged message, receiver) pairs shown.
    delivered: usize,
    /// Acknowledged messages missing from the database, plus (acknowledged message,
    /// receiver) pairs the receiver never showed.
    lost: usize,
    /// (stored but unacknowledged message, receiver) pairs never shown.
    unseen_unacknowledged: usize,
    /// Repeats on one socket, and messages stored more than once.
    duplicated: usize,
    out_of_order: usize,
    gaps_in_seq: usize,
    conflicts: usize,
    repairs: usize,
    redundant: usize,
    reconnects: usize,
}

impl Audit {
    fn of(tallies: &[Tally], rows: &[(String, i64, String)]) -> Audit {
        let mut audit = Audit {
            stored: rows.len(),
            receivers: tallies.len(),
            ..Audit::default()
        };
        let by_id: HashMap<&str, &(String, i64, String)> =
            rows.iter().map(|r| (r.0.as_str(), r)).collect();
        // Tag → how many rows carry it.
        let mut copies: HashMap<&str, usize> = HashMap::new();
        for (_, _, body) in rows {
            if let Some(end) = body.find(';') {
                *copies.entry(&body[..=end]).or_default() += 1;
            }
        }
        audit.duplicated += copies.values().map(|c| c - 1).sum::<usize>();
        audit.gaps_in_seq = rows
            .iter()
            .enumerate()
            .filter(|(i, r)| r.1 != *i as i64 + 1)
            .count();
        let mut acknowledged_ids = HashSet::new();
        for t in tallies {
            audit.sent += t.sent.len();
            audit.acknowledged += t.acked.len();
            audit.refused += t.refused.len();
            audit.unanswered += t.unanswered.len();
            audit.unanswered_stored += t
                .unanswered
                .iter()
                .filter(|tag| copies.contains_key(tag.as_str()))
                .count();
            audit.refused_stored += t
                .refused
                .iter()
                .filter(|tag| copies.contains_key(tag.as_str()))
                .count();
            for (tag, id, seq) in &t.acked {
                match by_id.get(id.as_str()) {
                    Some((_, stored_seq, body)) if stored_seq == seq && body.starts_with(tag) => {}
                    _ => audit.lost += 1,
                }
                acknowledged_ids.insert(id.as_str());
            }
            audit.out_of_order += t.acked.windows(2).filter(|w| w[0].2 >= w[1].2).count();
            audit.duplicated += t.duplicated.len();
            audit.conflicts += t.conflicts.len();
            audit.repairs += t.repairs;
            audit.redundant += t.redundant;
            audit.reconnects += t.reconnects;
        }
        for t in tallies {
            for (id, seq, _) in rows {
                let shown = t.shown.get(seq) == Some(id);
                match (acknowledged_ids.contains(id.as_str()), shown) {
                    (true, true) => audit.delivered += 1,
                    (true, false) => audit.lost += 1,
                    (false, false) => audit.unseen_unacknowledged += 1,
                    (false, true) => {}
                }
            }
        }
        audit
    }

    fn assert_clean(&self, name: &str, tallies: &[Tally]) {
        let detail = || {
            tallies
                .iter()
                .map(|t| {
                    format!(
                        "{}: contiguous {}, shown {}, duplicated {:?}, conflicts {:?}, closes {:?}",
                        t.name,
                        t.contiguous(),
                        t.shown.len(),
                        t.duplicated.iter().take(5).collect::<Vec<_>>(),
                        t.conflicts.iter().take(5).collect::<Vec<_>>(),
                        t.closes
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(self.acknowledged > 0, "[{name}] nothing was acknowledged");
        assert_eq!(self.lost, 0, "[{name}] lost messages\n{}", detail());
        assert_eq!(self.duplicated, 0, "[{name}] duplicates\n{}", detail());
        assert_eq!(
            self.unseen_unacknowledged,
            0,
            "[{name}] stored messages some receivers never showed\n{}",
            detail()
        );
        assert_eq!(
            self.conflicts,
            0,
            "[{name}] two messages at one seq\n{}",
            detail()
        );
        assert_eq!(self.gaps_in_seq, 0, "[{name}] stored seqs are not 1..=n");
        assert_eq!(
            self.out_of_order, 0,
            "[{name}] a sender's messages out of order"
        );
        assert_eq!(
            self.delivered,
            self.acknowledged * self.receivers,
            "[{name}]"
        );
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, acknowledged {}, refused {} (stored anyway: {}), unanswered {} (stored: {}), \
             stored {}, receivers {}, delivered {}/{}, lost {}, duplicated {}, \
             unacknowledged-but-stored unseen {}, gap catch-ups {} (repeats after them {}), \
             reconnects {}",
            self.sent,
            self.acknowledged,
            self.refused,
            self.refused_stored,
            self.unanswered,
            self.unanswered_stored,
            self.stored,
            self.receivers,
            self.delivered,
            self.acknowledged * self.receivers,
            self.lost,
            self.duplicated,
            self.unseen_unacknowledged,
            self.repairs,
            self.redundant,
            self.reconnects,
        )
    }
}

// ---------------------------------------------------------------------------------------
// The faults

/// Three nodes, two senders on each.
async fn three_nodes_six_senders(name: &'static str) -> Chat {
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start(name, database_url, SHARED_REDIS, 3, &[]).await;
    for (i, user) in ["ann", "bob", "cat", "dan", "eve", "fay"]
        .iter()
        .enumerate()
    {
        let node = chat.nodes[i % 3].addr;
        chat.join(user, node, Role::sender()).await;
    }
    chat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_with_sigkill() {
    let mut chat = three_nodes_six_senders("sigkill").await;
    chat.traffic(100).await;
    let doomed = chat.nodes[0].addr;
    chat.live.remove(doomed);
    chat.nodes[0].process.kill();
    // Its two clients notice the dropped connection and resume on the other nodes.
    chat.reconnects(2).await;
    chat.traffic(100).await;
    let (_, tallies) = chat.finish().await;
    for t in tallies
        .iter()
        .filter(|t| t.name == "ann" || t.name == "dan")
    {
        assert!(!t.closes.is_empty(), "{}: {:?}", t.name, t.closes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stopped_with_sigterm() {
    let mut chat = three_nodes_six_senders("sigterm").await;
    chat.traffic(100).await;
    let stopping = chat.nodes[0].addr;
    chat.live.remove(stopping);
    chat.nodes[0].process.terminate().await;
    chat.reconnects(2).await;
    chat.traffic(100).await;
    let (_, tallies) = chat.finish().await;
    for t in tallies
        .iter()
        .filter(|t| t.name == "ann" || t.name == "dan")
    {
        assert_eq!(t.closes, vec![Some(1012)], "{}: told to reconnect", t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_node() {
    let mut chat = three_nodes_six_senders("rolling").await;
    chat.traffic(60).await;
    for i in 0..3 {
        let old = chat.nodes[i].addr;
        chat.live.remove(old);
        chat.nodes[i].process.terminate().await;
        chat.add_node().await;
        chat.traffic(60).await;
    }
    let (_, tallies) = chat.finish().await;
    // Every socket was on a node that stopped, and each was told so.
    every_socket_was_told_to_reconnect(&tallies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_caddy() {
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start("rolling-caddy", database_url, SHARED_REDIS, 2, &[]).await;
    let gateway = chat.behind_caddy().await;
    for user in ["ann", "bob", "cat", "dan"] {
        chat.join(user, gateway, Role::sender()).await;
    }
    chat.traffic(60).await;
    // Each node in turn stops and comes back on its address; clients only know Caddy's.
    for i in 0..2 {
        chat.restart_in_place(i).await;
        chat.traffic(60).await;
    }
    let (_, tallies) = chat.finish().await;
    every_socket_was_told_to_reconnect(&tallies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted() {
    redis_outage("redis", true).await;
}

/// The same outage with clients that never ask to `Catch up`: the nodes' own resync after
/// Redis returns brings every socket up to date. During the outage each socket kept being
/// shown its own node's messages, so the resync must start at the first hole, not after
/// the newest message shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_repaired_by_the_server_alone() {
    redis_outage("redis-no-client-catch-up", false).await;
}

async fn redis_outage(name: &'static str, client_catch_up: bool) {
    let mut redis = OwnRedis::start(free_port()).await;
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start(name, database_url, &redis.url(), 3, &[]).await;
    chat.client_catch_up = client_catch_up;
    for (i, user) in ["ann", "bob", "cat", "dan", "eve", "fay"]
        .iter()
        .enumerate()
    {
        let node = chat.nodes[i % 3].addr;
        chat.join(user, node, Role::sender()).await;
    }
    chat.traffic(60).await;
    redis.process.terminate().await;
    // Without Redis each node's own clients still hear each other.
    chat.traffic(60).await;
    let port = redis.port;
    redis = OwnRedis::start(port).await;
    // The nodes resubscribe (no client-visible event: poll their metrics, bounded) and
    // their sockets read what they missed from the database.
    for node in &chat.nodes {
        wait_for_metric(
            node.addr,
            "wirechat_redis_reconnects_total",
            PATIENCE,
            |v| v >= 1.0,
        )
        .await;
    }
    chat.traffic(60).await;
    chat.finish().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted() {
    let pg = OwnPostgres::start().await;
    let database_url = pg.fresh_database().await;
    let mut chat = Chat::start("postgres", database_url, SHARED_REDIS, 2, &[]).await;
    for (i, user) in ["ann", "bob", "cat", "dan"].iter().enumerate() {
        let node = chat.nodes[i % 2].addr;
        chat.join(user, node, Role::sender()).await;
    }
    chat.traffic(60).await;
    pg.stop().await;
    // Every sender's next post is refused with an error fragment, never echoed.
    let acked_before = chat.acked();
    Progress::wait(&chat.progress.refused, "refused posts", 4).await;
    pg.restart().await;
    chat.traffic(60).await;
    let (audit, tallies) = chat.finish().await;
    assert!(audit.refused >= 4, "{audit}");
    assert_eq!(
        audit.refused_stored, 0,
        "a refused post was stored: {audit}"
    );
    assert!(tallies.iter().all(|t| !t.refused.is_empty()));
    assert!(acked_before > 0);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_catches_up() {
    let database_url = fresh_database(Backend::Postgres).await;
    let mut chat = Chat::start(
        "slow-consumer",
        database_url,
        SHARED_REDIS,
        2,
        &["--outbound-queue", "8"],
    )
    .await;
    let busy = |sends| Role {
        sends,
        padding: 3500,
        ..Role::default()
    };
    for (i, user) in ["ann", "bob", "cat"].iter().enumerate() {
        let node = chat.nodes[i % 2].addr;
        chat.join(user, node, busy(true)).await;
    }
    let (first, second) = (chat.nodes[0].addr, chat.nodes[1].addr);
    chat.join("reader", second, busy(false)).await;
    let (stall, stalled) = watch::channel(false);
    chat.join(
        "sloth",
        first,
        Role {
            small_buffer: true,
            stall: Some(stalled),
            ..Role::default()
        },
    )
    .await;
    chat.traffic(20).await;
    stall.send_replace(true);
    // The sloth's node cuts it off once its queue is full (no client-visible event until
    // it reads again, so this polls the node, bounded).
    wait_for_metric(
        chat.nodes[0].addr,
        "wirechat_slow_consumer_closes_total",
        PATIENCE * 2,
        |v| v >= 1.0,
    )
    .await;
    // The room carries on while the sloth still reads nothing.
    chat.traffic(100).await;
    stall.send_replace(false);
    chat.reconnects(1).await;
    chat.traffic(20).await;
    let (_, tallies) = chat.finish().await;
    let sloth = tallies.iter().find(|t| t.name == "sloth").expect("sloth");
    assert_eq!(sloth.closes.len(), 1, "{:?}", sloth.closes);
    assert!(
        matches!(sloth.closes[0], Some(1013) | None),
        "{:?}",
        sloth.closes
    );
}

/// Every client's socket was closed at least once, and always with 1012 ("restarting,
/// reconnect"), never dropped silently.
fn every_socket_was_told_to_reconnect(tallies: &[Tally]) {
    for t in tallies {
        assert!(!t.closes.is_empty(), "{}", t.name);
        assert!(
            t.closes.iter().all(|c| *c == Some(1012)),
            "{}: {:?}",
            t.name,
            t.closes
        );
    }
}
