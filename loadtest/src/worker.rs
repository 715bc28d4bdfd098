//! A worker process: holds its share of the sockets, sends at its clients' rates, and counts
//! what arrives.
//!
//! Each worker runs one single-threaded runtime, so the per-socket tasks share counters and
//! one latency histogram without locks; parallelism comes from running several workers.
//! The coordinator talks to a worker over stdin (one plan line, then `go`, `storm`, `stop`,
//! `drain`, `report`) and reads JSON lines back from its stdout.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::task::LocalSet;

use crate::frames::{self, Frame};
use crate::ws::{Incoming, Ws};
use crate::{SESSION_COOKIE, new_histogram};

/// Where a chat socket is opened.
const WS_PATH: &str = "/ws/chat/";

/// No frame for this long after sending stopped means delivery has finished.
const QUIET: Duration = Duration::from_secs(1);

/// Where the run is; every socket task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hold,
    Go,
    /// Every socket drops its connection and comes back with a resume request; the number
    /// tells one storm from the next.
    Storm(u32),
    Stop,
    Report,
}

/// One client as the coordinator planned it.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub idx: usize,
    pub cookie: String,
    /// The action that enters the client's room, or None to stay in the default room.
    pub enter: Option<String>,
    /// What `#group-name` shows once the client is in its room.
    pub title: String,
    /// Messages per second this client sends after `go` (0: it only listens).
    pub rate: f64,
    pub source: IpAddr,
}

impl ClientSpec {
    pub fn to_json(&self) -> Value {
        json!({
            "idx": self.idx, "cookie": self.cookie, "enter": self.enter,
            "title": self.title, "rate": self.rate, "src": self.source.to_string(),
        })
    }

    fn from_json(v: &Value) -> Option<ClientSpec> {
        Some(ClientSpec {
            idx: v["idx"].as_u64()? as usize,
            cookie: v["cookie"].as_str()?.to_owned(),
            enter: v["enter"].as_str().map(str::to_owned),
            title: v["title"].as_str()?.to_owned(),
            rate: v["rate"].as_f64()?,
            source: v["src"].as_str()?.parse().ok()?,
        })
    }
}

struct Ctx {
    run: String,
    addr: SocketAddr,
    host: String,
    connect_timeout: Duration,
    storm_jitter: Duration,
    /// Before reporting, wait until no frame arrived for `QUIET`, but at most this long.
    drain_max: Duration,
    /// When the last frame arrived, in µs since the epoch.
    last_frame_us: Cell<u64>,
    gate: Semaphore,
    total: usize,
    ready: Cell<usize>,
    failed: Cell<usize>,
    ready_tx: RefCell<Option<tokio::sync::oneshot::Sender<()>>>,
    stats: RefCell<Stats>,
}

#[derive(Default)]
struct Stats {
    sent: u64,
    server_errors: u64,
    first_error: Option<String>,
    connect_failures: Vec<String>,
    deliveries: u64,
    duplicates: u64,
    first_delivery_us: u64,
    last_delivery_us: u64,
    drops: u64,
    reconnects: u64,
    reconnect_failures: u64,
    resume_failures: u64,
    close_codes: BTreeMap<u16, u64>,
    histogram: Option<Histogram<u64>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Ctx {
    fn settle_one(&self, ok: bool, error: Option<String>) {
        if ok {
            self.ready.set(self.ready.get() + 1);
        } else {
            self.failed.set(self.failed.get() + 1);
            let mut stats = self.stats.borrow_mut();
            if stats.connect_failures.len() < 5 {
                stats.connect_failures.extend(error);
            }
        }
        if self.ready.get() + self.failed.get() == self.total
            && let Some(tx) = self.ready_tx.borrow_mut().take()
        {
            let _ = tx.send(());
        }
    }
}

/// What one client saw of its room.
#[derive(Default)]
struct Track {
    room_id: String,
    /// The newest seq in the room's history when the client entered: everything after it
    /// must arrive live (or by catch-up), exactly once.
    floor: Option<i64>,
    /// Bit `i` is seq `floor + 1 + i`.
    seen: Vec<u64>,
    in_room: bool,
    /// A new connection asked to resume; its first room title says whether it did.
    resuming: bool,
    /// The resume landed elsewhere: the room must be entered again.
    needs_enter: bool,
}

impl Track {
    /// Records `seq`; true the first time.
    fn mark(&mut self, seq: i64) -> bool {
        let Some(floor) = self.floor else {
            return false;
        };
        let i = (seq - floor - 1) as usize;
        let (word, bit) = (i / 64, i % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        let first = self.seen[word] & (1 << bit) == 0;
        self.seen[word] |= 1 << bit;
        first
    }

    /// The newest seq up to which nothing is missing: where a resume continues from.
    fn contiguous(&self) -> i64 {
        let floor = self.floor.unwrap_or(0);
        let mut n = 0i64;
        for word in &self.seen {
            if *word == u64::MAX {
                n += 64;
            } else {
                n += i64::from(word.trailing_ones());
                break;
            }
        }
        floor + n
    }

    /// Seen seqs as inclusive ranges, for the coordinator's accounting.
    fn ranges(&self) -> Vec<(i64, i64)> {
        let floor = self.floor.unwrap_or(0);
        let mut out: Vec<(i64, i64)> = Vec::new();
        for (w, word) in self.seen.iter().enumerate() {
            if *word == 0 {
                continue;
            }
            for bit in 0..64 {
                if word & (1 << bit) == 0 {
                    continue;
                }
                let seq = floor + 1 + (w * 64 + bit) as i64;
                match out.last_mut() {
                    Some(last) if last.1 + 1 == seq => last.1 = seq,
                    _ => out.push((seq, seq)),
                }
            }
        }
        out
    }

    fn on_frame(&mut self, ctx: &Ctx, spec: &ClientSpec, text: &str) {
        // One clock read a frame: the generator's time per frame is taken from the server's.
        // The wall clock, as latency is measured against the sender's: a step in it can
        // end the drain early or hold it to its limit, never lose a delivery.
        let now = now_us();
        ctx.last_frame_us.set(now);
        match frames::parse(text) {
            Frame::RoomTitle { room_id, title } => {
                self.in_room = title == spec.title;
                if self.in_room && self.room_id.is_empty() {
                    self.room_id = room_id.to_owned();
                }
                if self.resuming {
                    self.resuming = false;
                    if !self.in_room {
                        ctx.stats.borrow_mut().resume_failures += 1;
                        self.needs_enter = spec.enter.is_some();
                    }
                }
            }
            Frame::Messages { replace, html } if self.in_room => {
                if self.floor.is_none() {
                    if replace {
                        let newest = frames::articles(html).map(|a| a.seq).max();
                        self.floor = Some(newest.unwrap_or(0));
                    }
                    return;
                }
                let mut stats = ctx.stats.borrow_mut();
                for article in frames::articles(html) {
                    if article.seq <= self.floor.unwrap_or(0) {
                        continue;
                    }
                    if self.mark(article.seq) {
                        stats.deliveries += 1;
                        if stats.first_delivery_us == 0 {
                            stats.first_delivery_us = now;
                        }
                        stats.last_delivery_us = now;
                        if let (Some(sent), Some(h)) = (
                            frames::sent_us(article.body, &ctx.run),
                            stats.histogram.as_mut(),
                        ) {
                            h.saturating_record(now.saturating_sub(sent).max(1));
                        }
                    } else if !replace {
                        // A page of history shown again after a fallback is not a
                        // duplicate; the same message appended twice is.
                        stats.duplicates += 1;
                    }
                }
            }
            Frame::Error(text) => {
                let mut stats = ctx.stats.borrow_mut();
                stats.server_errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(text.chars().take(200).collect());
                }
            }
            _ => {}
        }
    }
}

/// Opens a socket from `spec.source`, with the session cookie and the same-origin header.
async fn open(ctx: &Ctx, spec: &ClientSpec, resume: Option<(&str, i64)>) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    // Lets a source port left in TIME_WAIT by an earlier run be bound again.
    socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
    bind_address_no_port(&socket)?;
    socket
        .bind(SocketAddr::new(spec.source, 0))
        .map_err(|e| format!("bind {}: {e}", spec.source))?;
    let stream = socket
        .connect(ctx.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let target = match resume {
        Some((room, after)) => format!("{WS_PATH}?room={room}&after={after}"),
        None => WS_PATH.to_owned(),
    };
    let origin = format!("Origin: http://{}", ctx.host);
    let cookie = format!("Cookie: {SESSION_COOKIE}={}", spec.cookie);
    Ws::upgrade(stream, &ctx.host, &target, &[&origin, &cookie]).await
}

/// Defers choosing the source port from `bind` to `connect`. Without it, `bind` to port 0
/// searches the source address's whole port range for a port no socket holds at all, which
/// grows with every open socket and made the load generator, not the server, the limit on
/// connects per second; at `connect` the kernel only needs the 4-tuple to be unique.
fn bind_address_no_port(socket: &TcpSocket) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "IP_BIND_ADDRESS_NO_PORT: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Connects and waits until the client's room is shown with its history.
async fn connect_and_enter(ctx: &Ctx, spec: &ClientSpec, track: &mut Track) -> Result<Ws, String> {
    let mut ws = open(ctx, spec, None).await?;
    if let Some(enter) = spec.enter.as_deref() {
        ws.send_texts([enter])
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    while track.floor.is_none() {
        match ws.next().await {
            Ok(Some(Incoming::Text(text))) => track.on_frame(ctx, spec, text),
            Ok(Some(Incoming::Close(code))) => {
                return Err(format!("closed while entering: {code}"));
            }
            Ok(Some(Incoming::Other)) => {}
            Err(e) => return Err(format!("read: {e}")),
            Ok(None) => return Err("closed while entering".into()),
        }
        if let Some(error) = ctx.stats.borrow().first_error.as_ref()
            && track.floor.is_none()
            && !track.in_room
            && spec.enter.is_some()
            && error.contains("There is no")
        {
            return Err(format!("could not enter: {error}"));
        }
    }
    Ok(ws)
}

/// Comes back after a drop: resumes the room after the last contiguous seq, as the browser
/// client does. Bounded: a few attempts with a growing pause.
async fn reconnect(ctx: &Ctx, spec: &ClientSpec, track: &mut Track) -> Option<Ws> {
    for attempt in 0..8u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
        let room = track.room_id.clone();
        let resume = (!room.is_empty()).then(|| (room.as_str(), track.contiguous()));
        if let Ok(ws) = open(ctx, spec, resume).await {
            ctx.stats.borrow_mut().reconnects += 1;
            track.in_room = false;
            track.resuming = true;
            return Some(ws);
        }
    }
    ctx.stats.borrow_mut().reconnect_failures += 1;
    None
}

/// Sends at a steady rate from the moment of `go`, catching up after a stall rather than
/// thinning out, so an overloaded server shows up as latency.
struct Pacer {
    start: tokio::time::Instant,
    rate: f64,
    sent: u64,
    interval: tokio::time::Interval,
}

impl Pacer {
    fn new(rate: f64, idx: usize) -> Pacer {
        let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
        // Spread the clients' first sends over one period so they do not all send together.
        let spread = (idx.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
        let start = tokio::time::Instant::now() + period.mul_f64(spread);
        let mut interval = tokio::time::interval_at(start, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Pacer {
            start,
            rate,
            sent: 0,
            interval,
        }
    }

    /// Restarts the schedule, so sends missed while disconnected are not burst out at once.
    fn restart(&mut self) {
        self.start = tokio::time::Instant::now();
        self.sent = 0;
    }

    fn owed(&self) -> u64 {
        let due = tokio::time::Instant::now()
            .saturating_duration_since(self.start)
            .as_secs_f64()
            * self.rate;
        (due as u64 + 1).saturating_sub(self.sent).min(1000)
    }
}

/// The next phase after the one `phase` has seen, or None once the coordinator is gone.
/// The receiver comes back with it, so a socket's wait is made once per change, not once
/// per frame.
async fn next_phase(mut phase: watch::Receiver<Phase>) -> (watch::Receiver<Phase>, Option<Phase>) {
    let next = match phase.changed().await {
        Ok(()) => Some(*phase.borrow_and_update()),
        Err(_) => None,
    };
    (phase, next)
}

async fn run_client(ctx: Rc<Ctx>, spec: ClientSpec, phase: watch::Receiver<Phase>) -> Value {
    let mut track = Track::default();
    let connected = {
        let _permit = ctx.gate.acquire().await;
        tokio::time::timeout(
            ctx.connect_timeout,
            connect_and_enter(&ctx, &spec, &mut track),
        )
        .await
        .unwrap_or_else(|_| Err("timed out entering the room".into()))
    };
    let mut ws = match connected {
        Ok(ws) => {
            ctx.settle_one(true, None);
            Some(ws)
        }
        Err(e) => {
            ctx.settle_one(false, Some(e));
            None
        }
    };
    // What the coordinator says now, which a handler's await may have let change unseen.
    let latest = phase.clone();
    let mut phase_change = Box::pin(next_phase(phase));
    let mut pacer: Option<Pacer> = None;
    let mut n = 0u64;
    let mut storms_seen = 0u32;
    while let Some(socket) = ws.as_mut() {
        let mut lost = false;
        tokio::select! {
            biased;
            (receiver, next) = &mut phase_change => {
                phase_change = Box::pin(next_phase(receiver));
                let Some(next) = next else {
                    break;
                };
                match next {
                    Phase::Go if spec.rate > 0.0 && pacer.is_none() => {
                        pacer = Some(Pacer::new(spec.rate, spec.idx));
                    }
                    Phase::Storm(k) if k != storms_seen => {
                        storms_seen = k;
                        // An abrupt drop, like a network cut: no close handshake.
                        drop(ws.take());
                        let pause = ctx.storm_jitter.mul_f64(
                            (spec.idx.wrapping_mul(40_503) % 1000) as f64 / 1000.0,
                        );
                        tokio::time::sleep(pause).await;
                        ws = reconnect(&ctx, &spec, &mut track).await;
                        if let Some(p) = pacer.as_mut() {
                            p.restart();
                        }
                        continue;
                    }
                    Phase::Stop => pacer = None,
                    Phase::Report => break,
                    _ => {}
                }
            },
            _ = async { pacer.as_mut().expect("guarded").interval.tick().await }, if pacer.is_some() => {
                let p = pacer.as_mut().expect("guarded");
                let owed = p.owed();
                let posts = (0..owed).map(|_| {
                    let body = frames::message_body(&ctx.run, spec.idx, n, now_us());
                    n += 1;
                    format!(r#"{{"action":"New message","data":{{"message":"{body}"}}}}"#)
                });
                lost = socket.send_texts(posts).await.is_err();
                p.sent += owed;
                ctx.stats.borrow_mut().sent += owed;
            },
            message = socket.next() => match message {
                Ok(Some(Incoming::Text(text))) => {
                    track.on_frame(&ctx, &spec, text);
                    if track.needs_enter {
                        track.needs_enter = false;
                        if let Some(enter) = spec.enter.as_deref() {
                            lost = socket.send_texts([enter]).await.is_err();
                        }
                    }
                }
                Ok(Some(Incoming::Close(code))) => {
                    *ctx.stats.borrow_mut().close_codes.entry(code).or_default() += 1;
                    lost = true;
                }
                Ok(Some(Incoming::Other)) => {}
                Err(_) | Ok(None) => lost = true,
            },
        }
        if lost {
            ctx.stats.borrow_mut().drops += 1;
            ws = None;
            if *latest.borrow() != Phase::Report {
                ws = reconnect(&ctx, &spec, &mut track).await;
                if let Some(p) = pacer.as_mut() {
                    p.restart();
                }
            }
        }
    }
    let ranges: Vec<Value> = track.ranges().iter().map(|(a, b)| json!([a, b])).collect();
    json!({
        "idx": spec.idx,
        "ready": track.floor.is_some(),
        "room": track.room_id,
        "floor": track.floor.unwrap_or(0),
        "seen": ranges,
    })
}

fn emit(line: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        // The coordinator is gone (interrupted): there is no one left to report to.
        std::process::exit(1);
    }
}

/// Entry point of `wirechat-load worker`: reads the plan from stdin and runs it.
pub fn main() -> Result<(), String> {
    crate::raise_file_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    LocalSet::new().block_on(&runtime, work())
}

async fn work() -> Result<(), String> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let plan_line = stdin
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no plan on stdin")?;
    let plan: Value = serde_json::from_str(&plan_line).map_err(|e| e.to_string())?;
    let clients: Vec<ClientSpec> = plan["clients"]
        .as_array()
        .ok_or("plan has no clients")?
        .iter()
        .map(|c| ClientSpec::from_json(c).ok_or("bad client in plan"))
        .collect::<Result<_, _>>()?;
    let host = plan["host"].as_str().ok_or("plan has no host")?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let ctx = Rc::new(Ctx {
        run: plan["run"].as_str().unwrap_or_default().to_owned(),
        addr: plan["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or("plan has no addr")?,
        host: host.to_owned(),
        connect_timeout: Duration::from_millis(
            plan["connect_timeout_ms"].as_u64().unwrap_or(60_000),
        ),
        storm_jitter: Duration::from_millis(plan["storm_jitter_ms"].as_u64().unwrap_or(1000)),
        drain_max: Duration::from_millis(plan["drain_ms"].as_u64().unwrap_or(10_000)),
        last_frame_us: Cell::new(now_us()),
        gate: Semaphore::new(plan["connect_concurrency"].as_u64().unwrap_or(64).max(1) as usize),
        total: clients.len(),
        ready: Cell::new(0),
        failed: Cell::new(0),
        ready_tx: RefCell::new(Some(ready_tx)),
        stats: RefCell::new(Stats {
            histogram: Some(new_histogram()),
            ..Stats::default()
        }),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Hold);
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|spec| tokio::task::spawn_local(run_client(ctx.clone(), spec, phase_rx.clone())))
        .collect();
    if ctx.total == 0 {
        let _ = ctx.ready_tx.borrow_mut().take().map(|tx| tx.send(()));
    }
    let _ = ready_rx.await;
    emit(&json!({
        "event": "ready",
        "connected": ctx.ready.get(),
        "failed": ctx.failed.get(),
        "seconds": started.elapsed().as_secs_f64(),
        "errors": ctx.stats.borrow().connect_failures,
    }));
    let mut storms = 0;
    while let Some(line) = stdin.next_line().await.map_err(|e| e.to_string())? {
        let next = match line.trim() {
            "go" => Phase::Go,
            "storm" => {
                storms += 1;
                Phase::Storm(storms)
            }
            "stop" => Phase::Stop,
            "drain" => {
                // Messages still in flight would otherwise count as missing.
                let waiting = Instant::now();
                let quiet = QUIET.as_micros() as u64;
                while now_us().saturating_sub(ctx.last_frame_us.get()) < quiet
                    && waiting.elapsed() < ctx.drain_max
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // The sockets stay open until every worker has drained and the coordinator
                // has sampled the server: the node's work on departures is not the run's.
                emit(&json!({ "event": "drained" }));
                continue;
            }
            "report" => Phase::Report,
            other => return Err(format!("unknown command {other:?}")),
        };
        let _ = phase_tx.send(next);
        if next == Phase::Report {
            break;
        }
    }
    let _ = phase_tx.send(Phase::Report);
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        clients.push(task.await.map_err(|e| e.to_string())?);
    }
    let stats = ctx.stats.borrow();
    let histogram: Vec<Value> = stats
        .histogram
        .as_ref()
        .map(|h| {
            h.iter_recorded()
                .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
                .collect()
        })
        .unwrap_or_default();
    emit(&json!({
        "event": "report",
        "sent": stats.sent,
        "server_errors": stats.server_errors,
        "first_error": stats.first_error,
        "deliveries": stats.deliveries,
        "duplicates": stats.duplicates,
        "first_delivery_us": stats.first_delivery_us,
        "last_delivery_us": stats.last_delivery_us,
        "drops": stats.drops,
        "reconnects": stats.reconnects,
        "reconnect_failures": stats.reconnect_failures,
        "resume_failures": stats.resume_failures,
        "close_codes": stats.close_codes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "histogram": histogram,
        "clients": clients,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_ranges_gaps_and_the_resume_point() {
        let mut t = Track {
            floor: Some(10),
            ..Track::default()
        };
        for seq in [11, 12, 13, 15, 80, 81] {
            assert!(t.mark(seq));
        }
        assert!(!t.mark(12));
        assert_eq!(t.ranges(), vec![(11, 13), (15, 15), (80, 81)]);
        assert_eq!(t.contiguous(), 13);
        assert!(t.mark(14));
        assert_eq!(t.contiguous(), 15);
    }

    #[test]
    fn a_full_first_word_continues_into_the_next() {
        let mut t = Track {
            floor: Some(0),
            ..Track::default()
        };
        for seq in 1..=70 {
            t.mark(seq);
        }
        assert_eq!(t.contiguous(), 70);
        assert_eq!(t.ranges(), vec![(1, 70)]);
    }
}
