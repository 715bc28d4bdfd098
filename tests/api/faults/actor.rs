//! Clients that post and read as the page does, and what each saw.

use super::*;

/// The nodes clients may (re)connect to. A node about to be stopped is taken out first.
#[derive(Clone, Default)]
pub(super) struct Live(pub(super) Arc<Mutex<Vec<SocketAddr>>>);

impl Live {
    pub(super) fn add(&self, addr: SocketAddr) {
        self.0.lock().unwrap().push(addr);
    }

    pub(super) fn remove(&self, addr: SocketAddr) {
        self.0.lock().unwrap().retain(|a| *a != addr);
    }

    pub(super) fn pick(&self, n: usize) -> Option<SocketAddr> {
        let live = self.0.lock().unwrap();
        (!live.is_empty()).then(|| live[n % live.len()])
    }
}

/// Counters the test body waits on while traffic flows.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) acked: watch::Sender<usize>,
    pub(super) refused: watch::Sender<usize>,
    pub(super) reconnects: watch::Sender<usize>,
}

impl Progress {
    pub(super) async fn wait(counter: &watch::Sender<usize>, what: &str, at_least: usize) {
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

    pub(super) fn now(counter: &watch::Sender<usize>) -> usize {
        *counter.borrow()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Phase {
    /// Everyone reads; senders wait for the first traffic, so that everyone has joined
    /// before anything is posted.
    Hold,
    /// Senders post; everyone reads.
    Run,
    /// Senders have stopped; everyone keeps reading.
    Stop,
    /// Read until every seq up to this one is shown.
    Drain(i64),
}

/// What one client did and saw, across all its connections.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) name: String,
    pub(super) sent: Vec<String>,
    /// Tag, message id and seq of each post whose echo came back on the socket it was sent on.
    pub(super) acked: Vec<(String, String, i64)>,
    /// Posts answered with an `#errors` fragment.
    pub(super) refused: Vec<String>,
    /// Posts whose socket ended before any answer.
    pub(super) unanswered: Vec<String>,
    /// Every message this client has been shown (live, history or catch-up): seq → id.
    pub(super) shown: BTreeMap<i64, String>,
    /// A different message id shown at a seq already taken.
    pub(super) conflicts: Vec<String>,
    /// Messages delivered twice on one socket that never asked to catch up, or again after
    /// a resume that said it had them.
    pub(super) duplicated: Vec<(String, i64)>,
    /// Repeats on a socket after it asked to `Catch up` (dropped by the page, as here).
    pub(super) redundant: usize,
    /// How each connection ended: the close code, or `None` when it was dropped.
    pub(super) closes: Vec<Option<u16>>,
    pub(super) reconnects: usize,
    /// `Catch up` requests made because a gap did not fill.
    pub(super) repairs: usize,
}

impl Tally {
    pub(super) fn contiguous(&self) -> i64 {
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

pub(super) type Socket = WebSocketStream<TcpStream>;

/// One connection's state.
pub(super) struct Conn {
    pub(super) socket: Socket,
    /// Message ids delivered on this connection.
    pub(super) seen: HashSet<String>,
    /// The resume point this connection was opened with: nothing at or below it may come.
    pub(super) after: i64,
    /// The client asked to `Catch up` on this connection: from then on its reply and live
    /// delivery may overlap, and the page drops the repeats.
    pub(super) caught_up: bool,
    pub(super) gap_since: Option<Instant>,
}

pub(super) enum Step {
    Frame { selector: String, html: String },
    Closed(Option<u16>),
    Quiet,
}

/// Opens a chat socket. A small receive buffer makes a client that stops reading fall
/// behind after a few hundred kilobytes instead of several megabytes.
pub(super) async fn open(
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
pub(super) fn articles(selector: &str, html: &str) -> Vec<(String, i64, String)> {
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

pub(super) fn tag(sender: &str, n: usize) -> String {
    format!("m:{sender}:{n:06};")
}

pub(super) struct Actor {
    pub(super) tally: Tally,
    pub(super) index: usize,
    pub(super) cookie: String,
    pub(super) live: Live,
    pub(super) room: String,
    pub(super) conn: Option<Conn>,
    pub(super) small_buffer: bool,
    /// Set while the client should not read at all (a slow consumer).
    pub(super) stall: Option<watch::Receiver<bool>>,
    /// Drain target: every seq up to here must be shown.
    pub(super) target: i64,
    /// How long a gap may stay open before `Catch up`; `None`: never ask, and rely on the
    /// server's own delivery and resync alone.
    pub(super) gap_patience: Option<Duration>,
    pub(super) padding: String,
    pub(super) progress: Arc<Progress>,
}

impl Actor {
    /// Reads the next frame (recording its messages), the end of the connection, or
    /// nothing within PATIENCE. Asks to catch up whenever a gap outlives `gap_patience`.
    pub(super) async fn next(&mut self) -> Step {
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

    pub(super) fn record(&mut self, selector: &str, html: &str) {
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
    pub(super) fn note_gap(&mut self) {
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
    pub(super) async fn connect(&mut self) {
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
                        // Messages can come before the title while others post.
                        Step::Frame { selector, html } => self.record(&selector, &html),
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

    pub(super) async fn reconnect(&mut self, close: Option<u16>) {
        self.tally.closes.push(close);
        self.conn = None;
        self.connect().await;
        self.tally.reconnects += 1;
        self.progress.reconnects.send_modify(|n| *n += 1);
    }

    /// Posts message `n` and reads until its fate is known: echoed (acknowledged), refused
    /// with an error fragment, or unanswered because the socket ended.
    pub(super) async fn post(&mut self, n: usize) {
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
    pub(super) async fn listen(&mut self) -> Step {
        if let Some(stall) = self.stall.as_mut()
            && *stall.borrow()
        {
            // Not reading at all: the node's queue for this socket fills up.
            let _ = stall.wait_for(|stalled| !*stalled).await;
            return Step::Quiet;
        }
        self.next().await
    }

    pub(super) async fn handle(&mut self, step: Step) {
        if let Step::Closed(code) = step {
            self.reconnect(code).await;
        }
    }

    pub(super) async fn run(
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
        while matches!(*phase.borrow(), Phase::Hold | Phase::Run) {
            let posting = sends && *phase.borrow() == Phase::Run;
            let wake = tokio::select! {
                biased;
                _ = phase.changed() => Wake::Phase,
                _ = pace.tick(), if posting => Wake::Tick,
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
