//! `wirechat-baseline`: the least a server must do to pass wirechat's load scenarios, and so
//! the most this machine can do with them — the baseline that `bench.sh --baseline` measures
//! wirechat against.
//!
//! It speaks the part of wirechat's protocol the load generator uses, with the same frames
//! (`{"selector","html","swap"}` with the same article markup; ids, times and guest names
//! of the same length) and wirechat's socket buffer sizes: a
//! guest or sign-up gets a cookie, a socket enters `#hi`, `Change group` enters a room (a
//! group by name, a conversation by the pair of names), `New message` is numbered in its
//! room and sent to every member, and `?room=…&after=…` resumes from the room's recent
//! messages. There is no password, no storage, no presence, no limit and no pacing: rooms
//! live in memory, each socket has an unbounded queue its own writer empties, one write per
//! batch (as any tokio-tungstenite fan-out server does). Loopback only.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const SESSION_COOKIE: &str = "wirechat_session";
/// Messages a room keeps for resuming sockets and for the history shown on entry.
const RECENT: usize = 1_000;
/// Messages shown on entering a room, as wirechat's first page.
const PAGE: usize = 50;
/// The longest request head read before the request is refused.
const MAX_HEAD: usize = 16 * 1024;

type Queue = mpsc::UnboundedSender<Utf8Bytes>;

struct Account {
    id: String,
    name: String,
}

struct Room {
    id: Arc<str>,
    /// `#name` for a group; for a conversation, the two names (each sees the other's).
    title: Title,
    state: Mutex<RoomState>,
}

enum Title {
    Group(String),
    Between(String, String),
}

impl Room {
    fn title_for(&self, viewer: &str) -> &str {
        match &self.title {
            Title::Group(title) => title,
            Title::Between(a, b) if a == viewer => b,
            Title::Between(a, _) => a,
        }
    }
}

#[derive(Default)]
struct RoomState {
    seq: i64,
    members: HashMap<u64, Queue>,
    /// (seq, article markup) of the newest messages.
    recent: VecDeque<(i64, String)>,
}

#[derive(Default)]
struct Server {
    accounts: Mutex<HashMap<String, Arc<Account>>>,
    rooms: Mutex<Rooms>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Rooms {
    by_id: HashMap<Arc<str>, Arc<Room>>,
    /// `#name` for groups, `@a/b` for conversations, to the room's id.
    by_key: HashMap<String, Arc<str>>,
}

impl Server {
    /// An id with the length of wirechat's UUIDs, so frames weigh the same.
    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-0000-7000-8000-{n:012x}", std::process::id())
    }

    fn account(&self, cookie: &str) -> Option<Arc<Account>> {
        lock(&self.accounts).get(cookie).cloned()
    }

    fn add_account(&self, name: Option<&str>) -> String {
        let id = self.new_id();
        // A guest's name as long as wirechat's usual ones (a made-up name and 4 digits).
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = name.map_or_else(|| format!("guest{n:09}"), str::to_owned);
        let cookie = self.new_id();
        lock(&self.accounts).insert(cookie.clone(), Arc::new(Account { id, name }));
        cookie
    }

    fn room_named(&self, key: String, title: Title) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.by_key.get(&key).and_then(|id| rooms.by_id.get(id)) {
            return room.clone();
        }
        let id: Arc<str> = Arc::from(self.new_id());
        let room = Arc::new(Room {
            id: id.clone(),
            title,
            state: Mutex::default(),
        });
        rooms.by_id.insert(id.clone(), room.clone());
        rooms.by_key.insert(key, id);
        room
    }

    fn room_by_id(&self, id: &str) -> Option<Arc<Room>> {
        lock(&self.rooms).by_id.get(id).cloned()
    }
}

/// A poisoned lock only means another socket's task panicked; the data is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("WIRECHAT_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:8000".to_owned());
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(serve(&addr)));
    if let Err(e) = result {
        eprintln!("wirechat-baseline: {e}");
        std::process::exit(2);
    }
}

async fn serve(addr: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("refusing {addr}: loopback addresses only"));
    }
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()
    } else {
        tokio::net::TcpSocket::new_v4()
    }
    .map_err(|e| e.to_string())?;
    socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
    socket.bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    // The backlog wirechat listens with.
    let listener: TcpListener = socket.listen(4096).map_err(|e| e.to_string())?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("{}", json!({ "ready": format!("http://{local}") }));
    let server = Arc::new(Server::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(server.clone(), stream));
    }
}

/// One request: a page, a cookie, or a socket.
async fn connection(server: Arc<Server>, mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return;
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return;
    };
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or("").split(' ');
    let (method, target) = (start.next().unwrap_or(""), start.next().unwrap_or(""));
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let cookie = header("cookie").and_then(|c| {
        c.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == SESSION_COOKIE).then_some(v)
        })
    });
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let response = match (method, path) {
        ("GET", "/ws/chat/") => {
            let (Some(key), Some(account)) = (
                header("sec-websocket-key"),
                cookie.and_then(|c| server.account(c)),
            ) else {
                let _ = stream.write_all(&plain(403, "no session\n")).await;
                return;
            };
            let accept = derive_accept_key(key.as_bytes());
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            let ws = WebSocketStream::from_partially_read(
                stream,
                buf[head_end..].to_vec(),
                Role::Server,
                Some(socket_config()),
            )
            .await;
            // A task of its own: this one's request buffers are not kept for the socket's
            // life.
            tokio::spawn(socket(server, account, ws, query.to_owned()));
            return;
        }
        ("POST", "/guest" | "/signup") => {
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                .min(MAX_HEAD);
            let mut body = buf[head_end..].to_vec();
            while body.len() < length {
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&body);
            let name = (path == "/signup")
                .then(|| form_value(&body, "username"))
                .flatten();
            let cookie = server.add_account(name.as_deref());
            format!(
                "HTTP/1.1 303 See Other\r\nLocation: /\r\nSet-Cookie: {SESSION_COOKIE}={cookie}; HttpOnly; SameSite=Lax; Path=/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        }
        ("GET", "/") => match cookie.and_then(|c| server.account(c)) {
            Some(account) => plain(
                200,
                &format!(
                    "<span id=\"logged-user\">{}</span>\n",
                    escape(&account.name)
                ),
            ),
            None => plain(303, ""),
        },
        ("GET", "/healthz" | "/readyz") => plain(200, "ok\n"),
        ("GET", "/metrics") => plain(200, ""),
        _ => plain(404, "not found\n"),
    };
    let _ = stream.write_all(&response).await;
}

fn plain(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} -\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A form field's value, `+` and `%XX` decoded.
fn form_value(body: &str, key: &str) -> Option<String> {
    let raw = body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn frame(selector: &str, swap: &str, html: &str) -> Utf8Bytes {
    Utf8Bytes::from(json!({ "selector": selector, "html": html, "swap": swap }).to_string())
}

/// One socket: its writer drains a queue; its reader acts.
/// The buffer sizes wirechat gives its sockets, so that the two differ in what they do,
/// not in how they are configured.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
}

async fn socket(
    server: Arc<Server>,
    account: Arc<Account>,
    ws: WebSocketStream<TcpStream>,
    query: String,
) {
    let query = query.as_str();
    let (mut sink, mut stream) = ws.split();
    let (queue, mut frames) = mpsc::unbounded_channel::<Utf8Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(first) = frames.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(next) = frames.try_recv() {
                if sink.feed(Message::Text(next)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let me = server.next_id.fetch_add(1, Ordering::Relaxed);
    let resume = query_value(query, "room")
        .and_then(|id| server.room_by_id(id))
        .zip(query_value(query, "after").and_then(|a| a.parse::<i64>().ok()));
    let mut room = match resume {
        Some((room, after)) => {
            enter(&room, &account.name, me, &queue, Some(after));
            room
        }
        None => {
            let room = server.room_named("#hi".into(), Title::Group("#hi".into()));
            enter(&room, &account.name, me, &queue, None);
            room
        }
    };
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                break;
            }
            continue;
        };
        let Ok(action) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let data = &action["data"];
        match action["action"].as_str() {
            Some("New message") => {
                if let Some(body) = data["message"].as_str() {
                    post(&server, &room, &account, body);
                }
            }
            Some("Change group") => {
                let Some(name) = data["groupName"].as_str() else {
                    continue;
                };
                let (key, title) = if data["isGroup"].as_bool() == Some(false) {
                    let mut pair = [account.name.as_str(), name];
                    pair.sort_unstable();
                    (
                        format!("@{}/{}", pair[0], pair[1]),
                        Title::Between(account.name.clone(), name.to_owned()),
                    )
                } else {
                    (format!("#{name}"), Title::Group(format!("#{name}")))
                };
                let next = server.room_named(key, title);
                lock(&room.state).members.remove(&me);
                enter(&next, &account.name, me, &queue, None);
                room = next;
            }
            _ => {}
        }
    }
    lock(&room.state).members.remove(&me);
    drop(queue);
    let _ = writer.await;
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Joins `room` and shows it: its title, then its latest page or what came after `after`.
fn enter(room: &Room, viewer: &str, me: u64, queue: &Queue, after: Option<i64>) {
    let title = format!(
        "<span data-room-id=\"{}\"><bdi>{}</bdi></span>",
        room.id,
        escape(room.title_for(viewer))
    );
    let mut state = lock(&room.state);
    let _ = queue.send(frame("#group-name", "innerHTML", &title));
    let skip = match after {
        Some(after) => state.recent.iter().take_while(|(s, _)| *s <= after).count(),
        None => state.recent.len().saturating_sub(PAGE),
    };
    let shown: String = state
        .recent
        .iter()
        .skip(skip)
        .map(|(_, a)| a.as_str())
        .collect();
    let swap = if after.is_some() {
        "beforeend"
    } else {
        "innerHTML"
    };
    let _ = queue.send(frame("#messages-list", swap, &shown));
    state.members.insert(me, queue.clone());
}

/// Numbers a message in its room and queues it for every member.
fn post(server: &Server, room: &Room, author: &Account, body: &str) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let id = server.new_id();
    let mut state = lock(&room.state);
    state.seq += 1;
    let article = format!(
        "<article class=\"message\" id=\"msg-{id}\" data-seq=\"{}\" data-author=\"{}\"><div class=\"bubble\"><header><strong class=\"author\"><bdi>{}</bdi></strong><time datetime=\"{}\" data-ts=\"{now_ms}\">{} UTC</time></header><p class=\"body\" dir=\"auto\">{}</p></div></article>",
        state.seq,
        author.id,
        escape(&author.name),
        rfc3339(now_ms),
        &rfc3339(now_ms)[11..16],
        escape(body)
    );
    let message = frame("#messages-list", "beforeend", &article);
    for queue in state.members.values() {
        let _ = queue.send(message.clone());
    }
    let seq = state.seq;
    state.recent.push_back((seq, article));
    if state.recent.len() > RECENT {
        state.recent.pop_front();
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch (UTC, proleptic
/// Gregorian), as wirechat writes a message's time.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_562_245_488), "2026-12-06T13:04:05.488Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn forms_are_decoded() {
        assert_eq!(
            form_value("username=a%20b+c&password=x", "username").as_deref(),
            Some("a b c")
        );
        assert_eq!(form_value("username=ab%2", "username"), None);
        assert_eq!(form_value("password=x", "username"), None);
    }

    #[test]
    fn message_frames_read_as_wirechat_frames() {
        let server = Server::default();
        let room = server.room_named("#r".into(), Title::Group("#r".into()));
        let (queue, mut frames) = mpsc::unbounded_channel();
        enter(&room, "ann", 1, &queue, None);
        let account = Account {
            id: server.new_id(),
            name: "ann".into(),
        };
        post(&server, &room, &account, "hello <b>");
        let title = frames.try_recv().expect("title");
        assert!(title.as_str().contains("\"#group-name\""));
        let history = frames.try_recv().expect("history");
        assert!(history.as_str().contains("innerHTML"));
        let message: Value =
            serde_json::from_str(frames.try_recv().expect("message").as_str()).expect("JSON");
        assert_eq!(message["swap"], "beforeend");
        let html = message["html"].as_str().expect("html");
        assert!(html.contains("data-seq=\"1\"") && html.contains("hello &lt;b&gt;"));
    }
}
