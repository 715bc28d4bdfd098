//! A chat under test: its nodes, Redis, proxy and clients.

use super::*;

pub(super) struct Chat {
    pub(super) name: &'static str,
    pub(super) database_url: String,
    pub(super) args: Vec<String>,
    pub(super) nodes: Vec<Node>,
    pub(super) started: usize,
    pub(super) live: Live,
    pub(super) progress: Arc<Progress>,
    pub(super) phase: watch::Sender<Phase>,
    pub(super) actors: Vec<(JoinHandle<Tally>, oneshot::Receiver<()>)>,
    pub(super) room: String,
    pub(super) proxy: Option<Process>,
    /// Clients fill lingering gaps with `Catch up`, as the page does.
    pub(super) client_catch_up: bool,
}

/// How a client takes part.
#[derive(Default)]
pub(super) struct Role {
    pub(super) sends: bool,
    pub(super) small_buffer: bool,
    pub(super) stall: Option<watch::Receiver<bool>>,
    pub(super) padding: usize,
}

impl Role {
    pub(super) fn sender() -> Role {
        Role {
            sends: true,
            ..Role::default()
        }
    }
}

impl Chat {
    pub(super) async fn start(
        name: &'static str,
        database_url: String,
        redis_url: &str,
        nodes: usize,
        extra: &[&str],
    ) -> Chat {
        Chat::start_on(name, database_url, ["--redis-url", redis_url], nodes, extra).await
    }

    /// As `start`, with Redis named by `redis` (`--redis-url` or `--redis-cluster`, and
    /// its value).
    pub(super) async fn start_on(
        name: &'static str,
        database_url: String,
        redis: [&str; 2],
        nodes: usize,
        extra: &[&str],
    ) -> Chat {
        let mut args: Vec<String> = [
            redis[0],
            redis[1],
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
            phase: watch::Sender::new(Phase::Hold),
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

    /// The chat's Redis prefix.
    pub(super) fn prefix(&self) -> &str {
        let at = self
            .args
            .iter()
            .position(|a| a == "--redis-prefix")
            .expect("a prefix");
        &self.args[at + 1]
    }

    /// Starts one more node and lets clients connect to it.
    pub(super) async fn add_node(&mut self) -> usize {
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
    pub(super) async fn behind_caddy(&mut self) -> SocketAddr {
        let upstreams: Vec<SocketAddr> = self.nodes.iter().map(|n| n.addr).collect();
        let caddy = Caddy::start(&upstreams).await;
        let addr = caddy.addr;
        self.proxy = Some(caddy.process);
        *self.live.0.lock().unwrap() = vec![addr];
        addr
    }

    /// Stops node `i` with SIGTERM and starts a new one on the same address.
    pub(super) async fn restart_in_place(&mut self, i: usize) {
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
    pub(super) async fn join(&mut self, username: &str, addr: SocketAddr, role: Role) {
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

    /// Says, for the audit's reader, which step of a slot move was just taken and how far
    /// the room's stored seqs had come by then.
    pub(super) async fn step(&self, moving: &SlotMove, what: &str) {
        let rows = stored_messages(&self.database_url, &self.room).await;
        // The time, to read against the nodes' logs (TEST_LOG=1).
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!(
            "{now} [{}] slot {} from {} to {}: {what}, stored through seq {}",
            self.name,
            moving.slot,
            moving.source.0,
            moving.target.0,
            rows.last().map_or(0, |r| r.1)
        );
    }

    pub(super) fn acked(&self) -> usize {
        Progress::now(&self.progress.acked)
    }

    /// Waits until `more` messages beyond the current count have been acknowledged.
    /// Waits until `more` messages have been acknowledged (the first call lets the
    /// senders start).
    pub(super) async fn traffic(&self, more: usize) {
        self.phase.send_if_modified(|phase| {
            let held = *phase == Phase::Hold;
            if held {
                *phase = Phase::Run;
            }
            held
        });
        let target = self.acked() + more;
        Progress::wait(&self.progress.acked, "acknowledged messages", target).await;
    }

    /// Senders stop posting (everyone keeps reading) until the next `traffic`.
    pub(super) fn pause(&self) {
        self.phase.send_replace(Phase::Hold);
    }

    pub(super) async fn reconnects(&self, at_least: usize) {
        Progress::wait(&self.progress.reconnects, "reconnects", at_least).await;
    }

    /// Stops the senders, lets every client read up to the newest stored message, and
    /// audits the result.
    pub(super) async fn finish(self) -> (Audit, Vec<Tally>) {
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
pub(super) async fn stored_messages(database_url: &str, room: &str) -> Vec<(String, i64, String)> {
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
