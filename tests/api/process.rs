//! Child processes for tests: wirechat nodes, redis-server, Caddy, each started and
//! waited for by reading the line that says it is ready, and killed when dropped.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::helpers::PATIENCE;

/// Which output of a child process says it is ready.
#[derive(Clone, Copy)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A child process, killed (SIGKILL) when dropped.
pub struct Process {
    pub child: Child,
    name: String,
}

impl Process {
    /// Starts `command` and waits for the first line on `output` that `ready` accepts,
    /// returning what it made of it. That output is read to its end, so the child never
    /// blocks on a full pipe (and is echoed with TEST_LOG); the other one is discarded.
    pub async fn start<T: Send + 'static>(
        command: Command,
        name: &str,
        output: Output,
        ready: impl Fn(&str) -> Option<T> + Send + 'static,
    ) -> (Process, T) {
        Process::start_watched(command, name, output, ready, None).await
    }

    /// As `start`, and every line after the ready one also goes to `rest`, for a test
    /// that waits for what the process says later.
    pub async fn start_watched<T: Send + 'static>(
        mut command: Command,
        name: &str,
        output: Output,
        ready: impl Fn(&str) -> Option<T> + Send + 'static,
        rest: Option<mpsc::UnboundedSender<String>>,
    ) -> (Process, T) {
        let (stdout, stderr) = match output {
            Output::Stdout => (Stdio::piped(), Stdio::null()),
            Output::Stderr => (Stdio::null(), Stdio::piped()),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stream: Box<dyn std::io::Read + Send> = match output {
            Output::Stdout => Box::new(child.stdout.take().expect("stdout")),
            Output::Stderr => Box::new(child.stderr.take().expect("stderr")),
        };
        let (tx, rx) = oneshot::channel();
        let echo = std::env::var_os("TEST_LOG").is_some();
        let label = name.to_owned();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{label}] {line}");
                }
                if tx.is_some() {
                    if let Some(value) = ready(&line)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(value);
                    }
                } else if let Some(rest) = &rest {
                    let _ = rest.send(line);
                }
            }
        });
        let value = tokio::time::timeout(PATIENCE, rx)
            .await
            .unwrap_or_else(|_| panic!("{name} did not start"))
            .unwrap_or_else(|_| panic!("{name} exited before it was ready"));
        (
            Process {
                child,
                name: name.to_owned(),
            },
            value,
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as a supervisor stopping the process does.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit by itself.
    pub async fn terminate(&mut self) {
        self.sigterm();
        self.wait_for_exit().await;
    }

    /// Waits (bounded) for the process to exit by itself.
    pub async fn wait_for_exit(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {PATIENCE:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A wirechat node in a child process.
pub struct Node {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Node {
    /// The node's resident memory and its peak since start, in KiB, from `/proc`.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.child.id()))
            .expect("/proc/<pid>/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Starts a node on `addr` (port 0: any free port).
pub async fn start_node(addr: &str, database_url: &str, args: &[String], name: &str) -> Node {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wirechat"));
    command
        .args(["--addr", addr, "--database-url", database_url])
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "wirechat=info")
        // Stopped nodes stop at once, unless a test asks for a drain with `--drain-ms`.
        .env("WIRECHAT_DRAIN_MS", "0");
    let (process, addr) = Process::start(command, name, Output::Stdout, ready_address).await;
    Node { process, addr }
}

/// The address in a node's ready line (`{"ready":"http://127.0.0.1:1234"}`).
pub fn ready_address(line: &str) -> Option<SocketAddr> {
    let ready: serde_json::Value = serde_json::from_str(line).ok()?;
    ready["ready"]
        .as_str()?
        .strip_prefix("http://")?
        .parse()
        .ok()
}

/// A port nothing listens on right now.
///
/// Chosen below the kernel's ephemeral range (32768 and up): a port from `bind(0)` comes
/// from that range, so one of the many client sockets the tests open meanwhile could take
/// it before the server binds it (a test's own PostgreSQL once failed to start so). And
/// never the same port twice in one run.
pub fn free_port() -> u16 {
    reserve(20_000..32_000, &[0])
}

/// How far above the port its clients use a Redis Cluster node listens for the cluster
/// bus, unless told otherwise.
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// A port for a Redis Cluster node: free, as `free_port` gives, with the port
/// `CLUSTER_BUS_OFFSET` above it free too and never handed to anyone else, since the node
/// binds it for the cluster bus (a test's own PostgreSQL once found its port taken so).
/// Below 22,700, so that the bus port too lies below the kernel's ephemeral range.
pub fn free_port_with_bus() -> u16 {
    reserve(20_000..22_700, &[0, CLUSTER_BUS_OFFSET])
}

/// A port from `range` such that it and each port `offsets` above it are free now and
/// never given before in this run; records them all as given.
fn reserve(range: std::ops::Range<u16>, offsets: &[u16]) -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = rand::random_range(range.clone());
        let ports = offsets.iter().map(|offset| port + offset);
        if ports
            .clone()
            .all(|p| !given.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            given.extend(ports);
            return port;
        }
    }
}

/// A Redis server of a test's own, on a free port, so the test can stop it.
pub struct OwnRedis {
    pub process: Process,
    pub port: u16,
}

/// A redis-server on loopback with `args` (its ports, its mode), keeping nothing on disk;
/// returns once it accepts connections.
pub async fn redis_server(args: &[&str]) -> Process {
    redis_server_logging(args, "Ready to accept connections").await
}

/// A Redis Sentinel started from the configuration file `config` (which it rewrites);
/// returns once it watches its master.
pub async fn sentinel_server(config: &std::path::Path) -> Process {
    redis_server_logging(
        &[&config.display().to_string(), "--sentinel"],
        "+monitor master",
    )
    .await
}

/// A redis-server as `redis_server` starts it; returns once it logs `ready`.
async fn redis_server_logging(args: &[&str], ready: &'static str) -> Process {
    let mut command = Command::new("redis-server");
    // A configuration file, if any, must come first.
    command.args(args).args(["--bind", "127.0.0.1"]).args([
        "--save",
        "",
        "--appendonly",
        "no",
        "--logfile",
        "",
    ]);
    let (process, ()) = Process::start(command, "redis-server", Output::Stdout, move |line| {
        line.contains(ready).then_some(())
    })
    .await;
    process
}

impl OwnRedis {
    pub async fn start(port: u16) -> OwnRedis {
        let process = redis_server(&["--port", &port.to_string()]).await;
        OwnRedis { process, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts a new, empty one on the same port.
    pub async fn crash(&mut self) {
        self.process.kill();
    }

    pub async fn restart(&mut self) {
        *self = OwnRedis::start(self.port).await;
    }
}

/// Caddy running the repository's own Caddyfile in front of nodes on loopback ports.
pub struct Caddy {
    pub process: Process,
    pub addr: SocketAddr,
    /// Caddy's log lines (JSON), from when it serves.
    log: mpsc::UnboundedReceiver<String>,
}

impl Caddy {
    /// Caddy in front of `upstreams`, on a free port: the repository's Caddyfile, given
    /// its upstreams and address through the environment as deploy/cluster.sh gives them.
    pub async fn start(upstreams: &[SocketAddr]) -> Caddy {
        let port = free_port();
        let dir: PathBuf = std::env::temp_dir()
            .join("wirechat-tests")
            .join(format!("caddy-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("caddy dir");
        let upstreams: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
        let mut command = Command::new("caddy");
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Caddyfile"))
            .env("WIRECHAT_UPSTREAMS", upstreams.join(" "))
            .env("WIRECHAT_SITE_ADDRESS", format!(":{port}"))
            .env("HOME", &dir)
            .env("XDG_DATA_HOME", &dir)
            .env("XDG_CONFIG_HOME", &dir);
        let (tx, log) = mpsc::unbounded_channel();
        let (process, ()) = Process::start_watched(
            command,
            "caddy",
            Output::Stderr,
            |line| line.contains("serving initial configuration").then_some(()),
            Some(tx),
        )
        .await;
        Caddy {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    /// Forgets what Caddy has said so far, so `wait_for_log` sees only what comes next.
    pub fn skip_log(&mut self) {
        while self.log.try_recv().is_ok() {}
    }

    /// Waits (bounded) for a log line of Caddy's that `wanted` accepts.
    pub async fn wait_for_log(&mut self, what: &str, wanted: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.log.recv())
                .await
                .unwrap_or_else(|_| panic!("Caddy did not log {what} within {PATIENCE:?}"))
                .unwrap_or_else(|| panic!("Caddy exited before it logged {what}"));
            if let Ok(entry) = serde_json::from_str(&line)
                && wanted(&entry)
            {
                return;
            }
        }
    }
}

/// A Redis Cluster of a test's own: three masters with a replica each, on free ports, with
/// a short node timeout so a replica takes over from a killed master within seconds.
pub struct OwnCluster {
    /// Each server and its port; a killed one stays here, stopped.
    pub servers: Vec<(Process, u16)>,
    /// With TLS, each server's TLS port, in the same order.
    pub tls_ports: Vec<u16>,
    dir: PathBuf,
}

/// A TLS server's certificate, its key, and the authority clients are to trust, as files.
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl TlsFiles {
    /// The server's certificate, key and authority as redis-server takes them, with
    /// clients not asked for certificates of their own.
    fn server_args(&self) -> [&str; 8] {
        [
            "--tls-cert-file",
            &self.cert,
            "--tls-key-file",
            &self.key,
            "--tls-ca-cert-file",
            &self.ca,
            "--tls-auth-clients",
            "no",
        ]
    }
}

/// The cluster's node timeout: how long a master may be unreachable before its replica
/// takes over.
const CLUSTER_NODE_TIMEOUT_MS: &str = "1000";

impl OwnCluster {
    pub async fn start() -> OwnCluster {
        OwnCluster::start_with(CLUSTER_NODE_TIMEOUT_MS, None).await
    }

    /// A cluster whose replicas take over after `node_timeout_ms`; with `tls`, each
    /// server also takes TLS clients on a port of its own, and the servers speak TLS to
    /// each other. Plain clients (this harness) keep the plain ports.
    pub async fn start_with(node_timeout_ms: &str, tls: Option<&TlsFiles>) -> OwnCluster {
        let dir = std::env::temp_dir()
            .join("wirechat-tests")
            .join(format!("redis-cluster-{}", uuid::Uuid::new_v4().simple()));
        let mut servers = Vec::new();
        let mut tls_ports = Vec::new();
        for _ in 0..6 {
            let (process, port, tls_port) = OwnCluster::server(&dir, node_timeout_ms, tls).await;
            servers.push((process, port));
            tls_ports.extend(tls_port);
        }
        let addresses: Vec<String> = servers
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "creating the cluster: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = OwnCluster {
            servers,
            tls_ports,
            dir,
        };
        cluster.wait_until_ok().await;
        cluster.wait_until_replicated().await;
        cluster
    }

    /// One more redis-server in cluster mode, on free ports, not yet in any cluster: its
    /// process, its port, and with `tls`, its TLS port.
    async fn server(
        dir: &std::path::Path,
        node_timeout_ms: &str,
        tls: Option<&TlsFiles>,
    ) -> (Process, u16, Option<u16>) {
        // The cluster bus listens above the port the other servers connect to: the TLS
        // port when they speak TLS to each other (`tls-cluster`), else the plain one.
        let port = match tls {
            Some(_) => free_port(),
            None => free_port_with_bus(),
        };
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("cluster node dir");
        let port_text = port.to_string();
        let node_dir_text = node_dir.display().to_string();
        let mut args = vec![
            "--port",
            &port_text,
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            node_timeout_ms,
            // A replica syncs at once (not after the default 5 s wait for others), and
            // may take over however long ago it last heard its master.
            "--repl-diskless-sync-delay",
            "0",
            "--cluster-replica-validity-factor",
            "0",
            "--dir",
            &node_dir_text,
        ];
        let tls_port = tls.map(|_| free_port_with_bus());
        let tls_port_text = tls_port.map(|p| p.to_string()).unwrap_or_default();
        if let Some(files) = tls {
            args.extend(["--tls-port", &tls_port_text]);
            args.extend(files.server_args());
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        }
        let process = redis_server(&args).await;
        (process, port, tls_port)
    }

    /// Waits (bounded) until every replica has synced with its master, so that it can
    /// take over.
    async fn wait_until_replicated(&self) {
        let command = deadpool_redis::redis::cmd("INFO")
            .arg("replication")
            .clone();
        self.wait_for_every_server("replica synced", &command, |answer| {
            let info = answer.expect("INFO replication");
            info.contains("role:master") || info.contains("master_link_status:up")
        })
        .await;
    }

    /// Waits (bounded) until each server's answer to `command` satisfies `done`.
    async fn wait_for_every_server(
        &self,
        what: &str,
        command: &deadpool_redis::redis::Cmd,
        done: impl Fn(deadpool_redis::redis::RedisResult<String>) -> bool,
    ) {
        let deadline = Instant::now() + PATIENCE;
        for (_, port) in &self.servers {
            while !done(OwnCluster::ask(*port, command).await) {
                assert!(Instant::now() < deadline, "{what}: not on {port}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The nodes as `WIRECHAT_REDIS_CLUSTER` takes them.
    pub fn nodes(&self) -> String {
        self.servers
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live_ports(&mut self) -> Vec<u16> {
        self.servers
            .iter_mut()
            .filter_map(|(process, port)| {
                process
                    .child
                    .try_wait()
                    .ok()
                    .flatten()
                    .is_none()
                    .then_some(*port)
            })
            .collect()
    }

    /// A command's answer from the server on `port`.
    pub async fn ask<T: deadpool_redis::redis::FromRedisValue>(
        port: u16,
        command: &deadpool_redis::redis::Cmd,
    ) -> deadpool_redis::redis::RedisResult<T> {
        let client = deadpool_redis::redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        command.query_async(&mut connection).await
    }

    /// The live masters' ports, with the slot ranges each serves, as one live node sees
    /// the cluster.
    pub async fn masters(&mut self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let port = self.live_ports()[0];
        let nodes: String =
            OwnCluster::ask(port, deadpool_redis::redis::cmd("CLUSTER").arg("NODES"))
                .await
                .expect("CLUSTER NODES");
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port = fields[1]
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let slots = fields[8..]
                    .iter()
                    .filter_map(|range| {
                        let (from, to) = range.split_once('-').unwrap_or((range, range));
                        Some((from.parse().ok()?, to.parse().ok()?))
                    })
                    .collect();
                Some((port, slots))
            })
            .collect()
    }

    /// The hash slot of `key`.
    async fn slot_of(&mut self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        OwnCluster::ask(
            port,
            deadpool_redis::redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key),
        )
        .await
        .expect("CLUSTER KEYSLOT")
    }

    /// The port of the master serving `key`.
    pub async fn master_of(&mut self, key: &str) -> u16 {
        let slot = self.slot_of(key).await;
        self.masters()
            .await
            .into_iter()
            .find(|(_, slots)| slots.iter().any(|(from, to)| (*from..=*to).contains(&slot)))
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
    }

    /// Kills the master serving `key` and waits (bounded) until its replica serves the
    /// slot and every live node sees the cluster as whole again.
    pub async fn fail_over(&mut self, key: &str) -> u16 {
        let doomed = self.kill_master_of(key).await;
        self.taken_over(doomed).await;
        doomed
    }

    /// Kills the master serving `key`; returns its port.
    pub async fn kill_master_of(&mut self, key: &str) -> u16 {
        let doomed = self.master_of(key).await;
        if let Some((process, _)) = self.servers.iter_mut().find(|(_, p)| *p == doomed) {
            process.kill();
        }
        doomed
    }

    /// Whether a replica has taken over from the killed master `doomed`.
    pub async fn replaced(&mut self, doomed: u16) -> bool {
        let masters = self.masters().await;
        masters.len() == 3 && masters.iter().all(|(port, _)| *port != doomed)
    }

    /// Waits (bounded) until a replica has taken over from the killed master `doomed`
    /// and the cluster is whole again.
    pub async fn taken_over(&mut self, doomed: u16) {
        let deadline = Instant::now() + PATIENCE;
        while !self.replaced(doomed).await {
            assert!(
                Instant::now() < deadline,
                "no replica took over from {doomed}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_until_ok().await;
    }

    /// The slot of `key` and the id and port of its master, and of another master to move
    /// it to, for the steps of `SlotMove`.
    pub async fn slot_move(&mut self, key: &str) -> SlotMove {
        let slot = self.slot_of(key).await;
        let source = self.master_of(key).await;
        let masters: Vec<u16> = self.masters().await.into_iter().map(|(p, _)| p).collect();
        let target = *masters
            .iter()
            .find(|port| **port != source)
            .expect("another master");
        let others = masters
            .iter()
            .copied()
            .filter(|port| *port != source && *port != target)
            .collect();
        let id = |port| async move {
            OwnCluster::ask::<String>(port, deadpool_redis::redis::cmd("CLUSTER").arg("MYID"))
                .await
                .expect("CLUSTER MYID")
        };
        SlotMove {
            slot,
            source: (source, id(source).await),
            target: (target, id(target).await),
            others,
            ports: self.live_ports(),
        }
    }

    /// Waits (bounded) until every live node says the cluster is ok.
    async fn wait_until_ok(&self) {
        let command = deadpool_redis::redis::cmd("CLUSTER").arg("INFO").clone();
        self.wait_for_every_server("the cluster is ok", &command, |answer| match answer {
            Ok(info) => info.contains("cluster_state:ok"),
            // A killed server refuses: it has no say.
            Err(e) => e.is_connection_refusal(),
        })
        .await;
    }
}

/// Redis Sentinel of a test's own: a master and its replica, watched by three sentinels
/// (two must agree the master is down), on free ports, quick to fail over.
pub struct OwnSentinel {
    /// The master the sentinels were first told of, then its replica; a killed one stays
    /// here, stopped.
    pub servers: Vec<(Process, u16)>,
    pub sentinels: Vec<(Process, u16)>,
    /// With TLS, the authority (a PEM file) to trust for every server and sentinel, which
    /// then take TLS clients only.
    ca: Option<String>,
    dir: PathBuf,
}

/// The master's name among the test's sentinels.
pub const SENTINEL_MASTER: &str = "chat";

impl OwnSentinel {
    pub async fn start() -> OwnSentinel {
        OwnSentinel::start_with(None).await
    }

    /// With `tls`, the servers and sentinels take TLS clients only (their plain ports
    /// off), and the replica syncs and the sentinels watch and talk to each other over TLS.
    pub async fn start_with(tls: Option<&TlsFiles>) -> OwnSentinel {
        let dir = std::env::temp_dir()
            .join("wirechat-tests")
            .join(format!("redis-sentinel-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        // How a server or sentinel takes clients on `port`.
        let listen = |port: u16| -> Vec<String> {
            let Some(files) = tls else {
                return vec!["--port".to_owned(), port.to_string()];
            };
            ["--port", "0", "--tls-port", &port.to_string()]
                .into_iter()
                .chain(files.server_args())
                .chain(["--tls-replication", "yes"])
                .map(str::to_owned)
                .collect()
        };
        // A replica's sync writes a file to the server's directory: the test's own.
        let in_dir = dir.display().to_string();
        let master_port = free_port();
        let master_args = [
            listen(master_port),
            vec!["--dir".to_owned(), in_dir.clone()],
        ]
        .concat();
        let master =
            redis_server(&master_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let replica_port = free_port();
        let replica_args = [
            listen(replica_port),
            [
                "--dir",
                &in_dir,
                "--replicaof",
                "127.0.0.1",
                &master_port.to_string(),
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(str::to_owned)
            .to_vec(),
        ]
        .concat();
        let replica =
            redis_server(&replica_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            // A sentinel rewrites its configuration file as it learns: each has its own.
            let config = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n"
                ),
            )
            .expect("sentinel config");
            let args = [
                vec![config.display().to_string(), "--sentinel".to_owned()],
                listen(port),
            ]
            .concat();
            let process = redis_server_logging(
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                "+monitor master",
            )
            .await;
            sentinels.push((process, port));
        }
        let own = OwnSentinel {
            servers: vec![(master, master_port), (replica, replica_port)],
            sentinels,
            ca: tls.map(|files| files.ca.clone()),
            dir,
        };
        // A failover needs the replica synced and known to every sentinel, and the
        // sentinels known to each other (a majority of them elects the one that acts).
        let synced = deadpool_redis::redis::cmd("INFO")
            .arg("replication")
            .clone();
        poll("the replica synced", || async {
            own.ask::<String>(replica_port, &synced)
                .await
                .is_ok_and(|info| info.contains("master_link_status:up"))
        })
        .await;
        let master_state = deadpool_redis::redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(SENTINEL_MASTER)
            .clone();
        for (_, port) in &own.sentinels {
            poll(
                "every sentinel knows the replica and the others",
                || async {
                    let state: HashMap<String, String> = match own.ask(*port, &master_state).await {
                        Ok(state) => state,
                        Err(_) => return false,
                    };
                    state.get("num-slaves").map(String::as_str) == Some("1")
                        && state.get("num-other-sentinels").map(String::as_str) == Some("2")
                },
            )
            .await;
        }
        own
    }

    /// The sentinels as `WIRECHAT_REDIS_SENTINEL` takes them.
    pub fn nodes(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss://" } else { "" };
        self.sentinels
            .iter()
            .map(|(_, port)| format!("{scheme}127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A command's answer from the server or sentinel on `port`, over TLS when they take
    /// only that.
    async fn ask<T: deadpool_redis::redis::FromRedisValue>(
        &self,
        port: u16,
        command: &deadpool_redis::redis::Cmd,
    ) -> deadpool_redis::redis::RedisResult<T> {
        let Some(ca) = &self.ca else {
            return OwnCluster::ask(port, command).await;
        };
        wirechat::app::install_tls_provider();
        let client = deadpool_redis::redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}"),
            deadpool_redis::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca)?),
            },
        )?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        command.query_async(&mut connection).await
    }

    /// The port of the master every sentinel names.
    pub async fn master(&self) -> Option<u16> {
        let ask = deadpool_redis::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SENTINEL_MASTER)
            .clone();
        let mut named = BTreeSet::new();
        for (_, port) in &self.sentinels {
            let (_, master): (String, u16) = self.ask(*port, &ask).await.ok()?;
            named.insert(master);
        }
        match named.len() {
            1 => named.pop_first(),
            _ => None,
        }
    }

    /// Kills the master, and waits until every sentinel names the replica and the replica
    /// says it is the master. Returns the new master's port.
    pub async fn fail_over(&mut self) -> u16 {
        let old = self
            .master()
            .await
            .expect("a master named by every sentinel");
        if let Some((process, _)) = self.servers.iter_mut().find(|(_, p)| *p == old) {
            process.kill();
        }
        self.moved_from(old, None).await
    }

    /// Waits until every sentinel names a master other than `old` that says it is the
    /// master, and `old`, if given, says it is a replica. Returns the new master's port.
    pub async fn moved_from(&self, old: u16, old_now: Option<u16>) -> u16 {
        let role = deadpool_redis::redis::cmd("ROLE").clone();
        let says = |port: u16, role_now: &'static str| {
            let role = role.clone();
            async move {
                self.ask::<deadpool_redis::redis::Value>(port, &role)
                    .await
                    .is_ok_and(|role| format!("{role:?}").contains(role_now))
            }
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(new) = self.master().await
                && new != old
                && says(new, "master").await
                && match old_now {
                    Some(port) => says(port, "slave").await,
                    None => true,
                }
            {
                return new;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not move the master from {old}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl OwnSentinel {
    /// Has the sentinels move the master to its replica with both running (`SENTINEL
    /// FAILOVER`), and waits until every sentinel names the replica and the old master
    /// says it is now a replica. Returns the new master's port.
    pub async fn switch(&mut self) -> u16 {
        let old = self.begin_switch().await;
        self.moved_from(old, Some(old)).await
    }

    /// Starts `SENTINEL FAILOVER` and waits until every sentinel names the replica, the
    /// old master still running as one until the sentinels make it a replica (up to
    /// about 10 s later). Returns the old master's port.
    pub async fn begin_switch(&mut self) -> u16 {
        let old = self
            .master()
            .await
            .expect("a master named by every sentinel");
        let failover = deadpool_redis::redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SENTINEL_MASTER)
            .clone();
        let _: String = self
            .ask(self.sentinels[0].1, &failover)
            .await
            .expect("SENTINEL FAILOVER");
        poll("every sentinel names the replica", || async {
            self.master().await.is_some_and(|now| now != old)
        })
        .await;
        old
    }

    /// Closes one node's subscriber connection on the server at `port` (not a
    /// sentinel's), as a network blip would.
    pub async fn drop_a_subscriber(&self, port: u16) {
        let list: String = self
            .ask(
                port,
                deadpool_redis::redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("pubsub"),
            )
            .await
            .expect("CLIENT LIST");
        let id = list
            .lines()
            .filter(|client| !client.contains("name=sentinel"))
            .find_map(|client| {
                client
                    .split(' ')
                    .find_map(|field| field.strip_prefix("id="))
            })
            .expect("a node's subscriber")
            .to_owned();
        let _: i64 = self
            .ask(
                port,
                deadpool_redis::redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(&id),
            )
            .await
            .expect("CLIENT KILL");
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        for (process, _) in self.servers.iter_mut().chain(&mut self.sentinels) {
            process.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (bounded) until `done` says so.
pub async fn poll<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for (process, _) in &mut self.servers {
            process.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One slot moving from one master to another, step by step as `redis-cli --cluster
/// reshard` moves it, so that a test can let traffic flow between the steps.
pub struct SlotMove {
    pub slot: u16,
    /// Port and node id of the master the slot leaves, and of the one it moves to.
    pub source: (u16, String),
    pub target: (u16, String),
    /// The remaining masters, told of the new owner last.
    pub others: Vec<u16>,
    /// Every live server, asked until each sees the new owner.
    ports: Vec<u16>,
}

impl SlotMove {
    fn setslot(&self, state: &str, node: &str) -> deadpool_redis::redis::Cmd {
        deadpool_redis::redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(self.slot)
            .arg(state)
            .arg(node)
            .clone()
    }

    async fn run(port: u16, command: &deadpool_redis::redis::Cmd, what: &str) {
        OwnCluster::ask::<String>(port, command)
            .await
            .unwrap_or_else(|e| panic!("{what} on {port}: {e}"));
    }

    /// The target imports the slot, the source migrates it, and the slot's keys (if any)
    /// go over with MIGRATE; the source still owns the slot.
    pub async fn migrate(&self) {
        let (source, source_id) = &self.source;
        let (target, target_id) = &self.target;
        SlotMove::run(*target, &self.setslot("IMPORTING", source_id), "IMPORTING").await;
        SlotMove::run(*source, &self.setslot("MIGRATING", target_id), "MIGRATING").await;
        loop {
            let keys: Vec<String> = OwnCluster::ask(
                *source,
                deadpool_redis::redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(self.slot)
                    .arg(100),
            )
            .await
            .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let migrate = deadpool_redis::redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(*target)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .clone();
            SlotMove::run(*source, &migrate, "MIGRATE").await;
        }
    }

    /// `CLUSTER SETSLOT <slot> NODE <target>` on the master on `port`: on the target it
    /// takes the slot over; on the source it drops every subscription to the slot's
    /// channels and redirects them to the target from then on.
    pub async fn assign(&self, port: u16) {
        let node = self.setslot("NODE", &self.target.1);
        SlotMove::run(port, &node, "SETSLOT NODE").await;
    }

    /// Waits (bounded) until every live server names the target as the slot's owner.
    pub async fn settled(&self) {
        let deadline = Instant::now() + PATIENCE;
        for port in &self.ports {
            loop {
                let slots: deadpool_redis::redis::Value =
                    OwnCluster::ask(*port, deadpool_redis::redis::cmd("CLUSTER").arg("SLOTS"))
                        .await
                        .expect("CLUSTER SLOTS");
                if owner_in(&slots, self.slot) == Some(self.target.0) {
                    break;
                }
                if Instant::now() >= deadline {
                    // Each master's epoch and slots as this server sees them, to tell a
                    // config-epoch conflict from gossip that is merely late.
                    let nodes: String =
                        OwnCluster::ask(*port, deadpool_redis::redis::cmd("CLUSTER").arg("NODES"))
                            .await
                            .unwrap_or_else(|e| e.to_string());
                    panic!(
                        "{port} does not see slot {} on {}:\n{nodes}",
                        self.slot, self.target.0
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The master's port serving `slot` in a `CLUSTER SLOTS` answer.
fn owner_in(slots: &deadpool_redis::redis::Value, slot: u16) -> Option<u16> {
    use deadpool_redis::redis::Value;
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(from)), Some(Value::Int(to)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        if !(*from..=*to).contains(&i64::from(slot)) {
            return None;
        }
        match master.get(1) {
            Some(Value::Int(port)) => u16::try_from(*port).ok(),
            _ => None,
        }
    })
}
