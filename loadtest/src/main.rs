//! `wirechat-load`: drives a wirechat node (or a cluster behind one address) with many chat
//! sockets on this machine and reports what a user would feel: how many connected, how fast
//! messages arrived, and whether every message arrived exactly once.
//!
//! Layout: `main.rs` plans a run (accounts, rooms, which client sends), starts worker
//! processes, steps them through the run and adds up their reports; `worker.rs` holds the
//! sockets over `ws.rs`'s WebSocket client; `frames.rs` reads server frames; `http.rs`
//! creates accounts; `compare.rs` puts
//! several runs' reports side by side (`wirechat-load compare`). The bare server the runs
//! are measured against is another binary, `baseline.rs`.
//!
//! One process may hold at most 20,000 descriptors here, and one source address offers
//! about 28,000 ephemeral ports, so sockets are spread over several worker processes and
//! over source addresses 127.0.0.2, 127.0.0.3, …

mod compare;
mod frames;
mod http;
mod worker;
mod ws;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use worker::ClientSpec;

pub const SESSION_COOKIE: &str = "wirechat_session";

/// Upper bounds, so a typo cannot turn a benchmark into a flood.
const MAX_CLIENTS: usize = 200_000;
const MAX_SECONDS: f64 = 900.0;
const MAX_RATE: f64 = 5_000_000.0;
/// Sockets per worker process, under the 20,000-descriptor hard limit with room to spare.
const SOCKETS_PER_PROCESS: usize = 18_000;
/// Sockets per source address, under the ~28,000 ephemeral ports each one has.
const SOCKETS_PER_SOURCE: usize = 14_000;

#[derive(Parser)]
#[command(
    name = "wirechat-load",
    version,
    about = "Load generator for wirechat (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcommands>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Subcommands {
    /// Runs one worker process (started by the coordinator; reads its plan from stdin).
    #[command(hide = true)]
    Worker,
    /// Medians of several runs' `--json` reports, per target (`<target>-<n>.json`), and
    /// each target's ratio to the first one named.
    Compare { reports: Vec<PathBuf> },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Scenario {
    /// N authenticated sockets that only listen: memory per socket and connect rate.
    Idle,
    /// One room with every client in it; `--senders` of them post.
    Fanout,
    /// Many rooms of `--room-size` clients, every client posting.
    Rooms,
    /// Private rooms between pairs of users, both posting.
    Pairs,
    /// Rooms as in `rooms`, but every socket drops at `--storm-at` and comes back with a
    /// resume request.
    ReconnectStorm,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Auth {
    /// `POST /guest`: cheap, no password hashing on the server.
    Guest,
    /// `POST /signup`: each account costs the server one argon2 hash.
    Signup,
}

#[derive(clap::Args, Clone, Debug)]
struct Args {
    /// What to run.
    #[arg(long, value_enum, default_value = "idle")]
    scenario: Scenario,
    /// The node (or the proxy in front of a cluster); must be a loopback address. Give it
    /// several times to drive several nodes directly: worker process `i` connects to the
    /// `i mod n`-th, and accounts are made through the first.
    #[arg(long = "url", default_value = "http://127.0.0.1:8000", action = clap::ArgAction::Append)]
    urls: Vec<String>,
    /// Sockets to open.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Distinct accounts the sockets log in as (round-robin); default one per socket.
    /// Fewer accounts means fewer "user came online" broadcasts.
    #[arg(long)]
    users: Option<usize>,
    /// How accounts are made.
    #[arg(long, value_enum, default_value = "guest")]
    auth: Auth,
    /// Clients per room (rooms, reconnect-storm; fanout uses one room of everyone).
    #[arg(long)]
    room_size: Option<usize>,
    /// Senders per room (default: 1 for fanout and reconnect-storm, everyone for rooms and
    /// pairs).
    #[arg(long)]
    senders_per_room: Option<usize>,
    /// Messages per second in total, shared evenly by all senders.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of sending (idle: seconds to hold the sockets open).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds after the start of sending at which every socket drops (reconnect-storm).
    #[arg(long)]
    storm_at: Option<f64>,
    /// Reconnects after a storm are spread over this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    storm_jitter_ms: u64,
    /// Seconds to wait at most, after sending stops, for the last messages to arrive
    /// (waiting ends earlier once no frame has arrived for a second).
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Worker processes (default: one per 18,000 sockets).
    #[arg(long)]
    procs: Option<usize>,
    /// Source addresses 127.0.0.2, 127.0.0.3, … to spread sockets over (default: one per
    /// 14,000 sockets).
    #[arg(long)]
    sources: Option<usize>,
    /// Handshakes in flight at once, over all workers.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds one socket may take to connect and show its room.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// The server's process id, to report its memory and CPU from /proc. Give it once per
    /// node to report the nodes' sums.
    #[arg(long = "server-pid", action = clap::ArgAction::Append)]
    server_pids: Vec<u32>,
    /// Seconds to let the server settle after connecting, before its memory is read.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn new_histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 15 minutes, three significant digits.
    Histogram::new_with_bounds(1, 900_000_000, 3).expect("valid histogram bounds")
}

/// Every socket is a descriptor: lift the soft limit to the hard one.
pub fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Subcommands::Worker) => worker::main(),
        Some(Subcommands::Compare { reports }) => compare::main(&reports),
        None => coordinate(cli.args),
    };
    if let Err(e) = result {
        eprintln!("wirechat-load: {e}");
        std::process::exit(2);
    }
}

/// The target as a socket address and a `Host` value; anything but loopback is refused.
fn loopback_target(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the URL must start with http:// (loopback targets only)")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let with_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .filter(SocketAddr::is_ipv4)
        .collect();
    let addr = *addrs.first().ok_or("no IPv4 address for the host")?;
    if !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(format!(
            "refusing {url}: only loopback targets (127.0.0.0/8) are allowed"
        ));
    }
    Ok((addr, host.to_owned()))
}

fn validate(args: &Args) -> Result<(), String> {
    if args.clients == 0 || args.clients > MAX_CLIENTS {
        return Err(format!("--clients must be 1..={MAX_CLIENTS}"));
    }
    if !(args.duration > 0.0 && args.duration <= MAX_SECONDS) {
        return Err(format!("--duration must be in (0, {MAX_SECONDS}] seconds"));
    }
    if !(args.rate >= 0.0 && args.rate <= MAX_RATE) {
        return Err(format!("--rate must be in [0, {MAX_RATE}]"));
    }
    if args.scenario == Scenario::Pairs && !args.clients.is_multiple_of(2) {
        return Err("pairs needs an even number of clients".into());
    }
    if args.procs.is_some_and(|p| p == 0 || p > 32)
        || args.sources.is_some_and(|s| s == 0 || s > 250)
    {
        return Err("--procs must be 1..=32 and --sources 1..=250".into());
    }
    if args.drain > 60.0 || args.settle > 60.0 || args.connect_timeout > MAX_SECONDS {
        return Err("--drain and --settle are at most 60 s, --connect-timeout 900 s".into());
    }
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A short id that keeps this run's rooms and messages apart from earlier runs'.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64 ^ u64::from(std::process::id())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:08x}", mixed >> 32)
}

struct Account {
    cookie: String,
    username: String,
}

async fn create_account(
    addr: SocketAddr,
    host: &str,
    auth: Auth,
    name: &str,
    need_name: bool,
) -> Result<Account, String> {
    let response = match auth {
        Auth::Guest => http::request(addr, host, "POST", "/guest", None, None).await,
        Auth::Signup => {
            let form = format!(
                "username={}&password={}",
                http::form_encode(name),
                http::form_encode("loadtest-password")
            );
            http::request(addr, host, "POST", "/signup", None, Some(&form)).await
        }
    }
    .map_err(|e| format!("creating an account: {e}"))?;
    let cookie = response.session_cookie().ok_or_else(|| {
        format!(
            "no session cookie (status {}): {}",
            response.status,
            response.body.chars().take(200).collect::<String>()
        )
    })?;
    let mut username = name.to_owned();
    if need_name && auth == Auth::Guest {
        // A guest's generated name is on the chat page.
        let page = http::request(addr, host, "GET", "/", Some(&cookie), None)
            .await
            .map_err(|e| format!("reading the chat page: {e}"))?;
        username = page
            .body
            .split("id=\"logged-user\">")
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .ok_or("no #logged-user on the chat page")?
            .to_owned();
    }
    Ok(Account { cookie, username })
}

async fn create_accounts(
    args: &Args,
    addr: SocketAddr,
    host: &str,
    run: &str,
    count: usize,
) -> Result<Vec<Account>, String> {
    let need_name = args.scenario == Scenario::Pairs;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (gate, host, auth) = (gate.clone(), host.to_owned(), args.auth);
        let name = format!("lt{run}u{i}");
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut last = String::new();
            for _ in 0..3 {
                match create_account(addr, &host, auth, &name, need_name).await {
                    Ok(account) => return Ok((i, account)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
    }
    let mut accounts: Vec<Option<Account>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, account) = joined.map_err(|e| e.to_string())??;
        accounts[i] = Some(account);
    }
    Ok(accounts.into_iter().flatten().collect())
}

/// Which room each client enters and how fast it sends.
fn plan_clients(args: &Args, run: &str, accounts: &[Account]) -> Vec<ClientSpec> {
    let n = args.clients;
    let sources = args
        .sources
        .unwrap_or(n.div_ceil(SOCKETS_PER_SOURCE).max(1));
    let room_size = match args.scenario {
        Scenario::Idle | Scenario::Fanout => n,
        Scenario::Pairs => 2,
        Scenario::Rooms => args.room_size.unwrap_or(10),
        Scenario::ReconnectStorm => args.room_size.unwrap_or(n.min(100)),
    }
    .clamp(1, n);
    let senders_per_room = match args.scenario {
        Scenario::Idle => 0,
        Scenario::Fanout | Scenario::ReconnectStorm => args.senders_per_room.unwrap_or(1),
        Scenario::Rooms | Scenario::Pairs => args.senders_per_room.unwrap_or(room_size),
    };
    let is_sender = |i: usize| i % room_size < senders_per_room;
    let senders = (0..n).filter(|&i| is_sender(i)).count();
    let per_sender = if senders > 0 {
        args.rate / senders as f64
    } else {
        0.0
    };
    (0..n)
        .map(|i| {
            let account = &accounts[i % accounts.len()];
            let room = i / room_size;
            let (enter, title) = match args.scenario {
                Scenario::Idle => (None, "#hi".to_owned()),
                Scenario::Pairs => {
                    let peer = &accounts[(i ^ 1) % accounts.len()].username;
                    (
                        Some(json!({"action": "Change group", "data": {"groupName": peer, "isGroup": false}})),
                        peer.clone(),
                    )
                }
                _ => {
                    let name = format!("lt-{run}-{room}");
                    (
                        Some(json!({"action": "Change group", "data": {"groupName": name, "isGroup": true}})),
                        format!("#{name}"),
                    )
                }
            };
            ClientSpec {
                idx: i,
                cookie: account.cookie.clone(),
                enter: enter.map(|e| e.to_string()),
                title,
                rate: if is_sender(i) { per_sender } else { 0.0 },
                source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8)),
            }
        })
        .collect()
}

/// Memory (kB) and CPU time (s) of the server process, from /proc.
#[derive(Clone, Copy, Default, Debug)]
struct ServerSample {
    rss_kb: u64,
    cpu_s: f64,
}

/// The sum over every server process; None when there is none or one cannot be read.
fn sample_servers(pids: &[u32]) -> Option<ServerSample> {
    let mut total: Option<ServerSample> = None;
    for &pid in pids {
        let one = sample_server(pid)?;
        let sum = total.get_or_insert_with(ServerSample::default);
        sum.rss_kb += one.rss_kb;
        sum.cpu_s += one.cpu_s;
    }
    total
}

/// The servers count as idle once they used at most 2 % of a core each over the last
/// second (a node's own upkeep runs every second), and are given at most 30 s.
const IDLE_FOR: Duration = Duration::from_secs(1);
const IDLE_SHARE: f64 = 0.02;
const IDLE_WITHIN: Duration = Duration::from_secs(30);

/// The servers as they were when they became idle again, from which they stayed idle for
/// `IDLE_FOR`: what everyone leaving cost them, which happens after the run. None when
/// they did not become idle within `IDLE_WITHIN`, or could not be read.
async fn sample_servers_idle(pids: &[u32]) -> Option<ServerSample> {
    let step = Duration::from_millis(100);
    let window = (IDLE_FOR.as_millis() / step.as_millis()) as usize;
    let most = IDLE_SHARE * IDLE_FOR.as_secs_f64() * pids.len() as f64;
    let deadline = Instant::now() + IDLE_WITHIN;
    let mut samples = std::collections::VecDeque::from([sample_servers(pids)?]);
    loop {
        tokio::time::sleep(step).await;
        let now = sample_servers(pids)?;
        samples.push_back(now);
        if samples.len() > window + 1 {
            samples.pop_front();
        }
        let oldest = *samples.front()?;
        if samples.len() > window && now.cpu_s - oldest.cpu_s <= most {
            return Some(oldest);
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

fn sample_server(pid: u32) -> Option<ServerSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ServerSample {
        rss_kb,
        cpu_s: ticks / hz,
    })
}

/// CPU seconds used by this process's finished children (the workers).
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct passed to it.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) != 0 {
            return 0.0;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

async fn send_all(workers: &mut [Worker], command: &str) -> Result<(), String> {
    for w in workers.iter_mut() {
        w.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("a worker stopped early: {e}"))?;
    }
    Ok(())
}

/// What a worker's reader says once the worker's output ends.
const EXITED: &str = "exited";

/// Waits for one `event` line from every worker; an error when one ends before its line.
async fn gather(
    events: &mut mpsc::UnboundedReceiver<(usize, Value)>,
    count: usize,
    event: &str,
) -> Result<Vec<Value>, String> {
    let mut out: Vec<Option<Value>> = vec![None; count];
    while out.iter().any(Option::is_none) {
        let (w, line) = events
            .recv()
            .await
            .ok_or_else(|| format!("a worker exited before its {event} line"))?;
        if line["event"] == event {
            out[w] = Some(line);
        } else if line["event"] == EXITED && out[w].is_none() {
            return Err(format!("worker {w} exited before its {event} line"));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

fn coordinate(args: Args) -> Result<(), String> {
    validate(&args)?;
    raise_file_limit();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let targets = args
        .urls
        .iter()
        .map(|url| loopback_target(url))
        .collect::<Result<Vec<_>, _>>()?;
    let (addr, host) = targets.first().cloned().ok_or("no --url")?;
    let run = run_id();
    let users = match args.scenario {
        // A pair of sockets on one account would be talking to itself.
        Scenario::Pairs => args.clients,
        _ => args.users.unwrap_or(args.clients).clamp(1, args.clients),
    };
    let started = Instant::now();
    let accounts = create_accounts(&args, addr, &host, &run, users).await?;
    let accounts_s = started.elapsed().as_secs_f64();
    let clients = plan_clients(&args, &run, &accounts);
    let procs = args
        .procs
        .unwrap_or(args.clients.div_ceil(SOCKETS_PER_PROCESS))
        .clamp(1, args.clients);

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (event_tx, mut events) = mpsc::unbounded_channel();
    let mut workers = Vec::with_capacity(procs);
    let mut worker_pids = Vec::with_capacity(procs);
    let before = sample_servers(&args.server_pids);
    let connect_start = Instant::now();
    let per_worker = args.clients.div_ceil(procs);
    for (w, chunk) in clients.chunks(per_worker).enumerate() {
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting a worker: {e}"))?;
        worker_pids.extend(child.id());
        let mut stdin = child.stdin.take().ok_or("no worker stdin")?;
        let stdout = child.stdout.take().ok_or("no worker stdout")?;
        let (addr, host) = &targets[w % targets.len()];
        let plan = json!({
            "run": run,
            "addr": addr.to_string(),
            "host": host,
            "connect_concurrency": args.connect_concurrency.div_ceil(procs),
            "connect_timeout_ms": (args.connect_timeout * 1000.0) as u64,
            "storm_jitter_ms": args.storm_jitter_ms,
            "drain_ms": (args.drain * 1000.0) as u64,
            "clients": chunk.iter().map(ClientSpec::to_json).collect::<Vec<_>>(),
        });
        stdin
            .write_all(format!("{plan}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let tx = event_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send((w, v));
                    }
                    Err(_) => eprintln!("worker {w}: {line}"),
                }
            }
            // The others wait for the next command meanwhile: without this, a worker that
            // died would leave the coordinator waiting for its line for ever.
            let _ = tx.send((w, json!({ "event": EXITED })));
        });
        workers.push(Worker { child, stdin });
    }
    drop(event_tx);
    let count = workers.len();
    let ready = gather(&mut events, count, "ready").await?;
    let connect_s = connect_start.elapsed().as_secs_f64();
    let at_ready = sample_servers(&args.server_pids);
    let loadgen_at_ready = worker_cpu(&worker_pids);
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let settled = sample_servers(&args.server_pids);
    let loadgen_settled = worker_cpu(&worker_pids);

    let go_us = now_us();
    let go = Instant::now();
    if args.scenario != Scenario::Idle {
        send_all(&mut workers, "go").await?;
    }
    match args
        .storm_at
        .filter(|_| args.scenario == Scenario::ReconnectStorm)
    {
        Some(at) if at < args.duration => {
            tokio::time::sleep(Duration::from_secs_f64(at)).await;
            send_all(&mut workers, "storm").await?;
            tokio::time::sleep(Duration::from_secs_f64(args.duration - at)).await;
        }
        _ => tokio::time::sleep(Duration::from_secs_f64(args.duration)).await,
    }
    let sending_s = go.elapsed().as_secs_f64();
    let loadgen_stopped = worker_cpu(&worker_pids);
    send_all(&mut workers, "stop").await?;
    // Sampled once every worker has drained and before any closes its sockets: a node's
    // work on a storm of departures (15,000 people leaving) is not the run's.
    send_all(&mut workers, "drain").await?;
    gather(&mut events, count, "drained").await?;
    let after_run = sample_servers(&args.server_pids);
    let drained_s = go.elapsed().as_secs_f64() - sending_s;
    send_all(&mut workers, "report").await?;
    let reports = gather(&mut events, count, "report").await?;
    for w in &mut workers {
        let _ = w.child.wait().await;
    }
    let closed = sample_servers_idle(&args.server_pids).await;
    let report = summarise(&Summary {
        args: &args,
        run: &run,
        users,
        procs: count,
        accounts_s,
        connect_s,
        sending_s,
        drained_s,
        go_us,
        ready: &ready,
        reports: &reports,
        server: [before, at_ready, settled, after_run, closed],
        loadgen_cpu_s: children_cpu_s(),
        loadgen: [loadgen_at_ready, loadgen_settled, loadgen_stopped],
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_table(&report);
    }
    Ok(())
}

struct Summary<'a> {
    args: &'a Args,
    run: &'a str,
    users: usize,
    procs: usize,
    accounts_s: f64,
    connect_s: f64,
    sending_s: f64,
    drained_s: f64,
    go_us: u64,
    ready: &'a [Value],
    reports: &'a [Value],
    /// Before connecting, when all were connected, after settling, after the run, and
    /// idle again after every socket closed.
    server: [Option<ServerSample>; 5],
    /// All the workers' CPU, once they have exited.
    loadgen_cpu_s: f64,
    /// Each worker's CPU (ns) when all were connected, after settling, and when sending
    /// stopped.
    loadgen: [Option<Vec<u64>>; 3],
}

/// A generator busier than this share of the cores it can use measured itself as much as
/// the server: its run is marked saturated.
const SATURATED_PCT: f64 = 90.0;

/// How busy the generator was while connecting and while sending, as the larger of two
/// shares: its busiest worker's share of one core (each worker runs on one thread), and
/// all workers' share of the cores they could use (no more than the CPUs `taskset` allows).
/// Either near 100 % means the run measured the generator as much as the server.
fn loadgen_load(s: &Summary<'_>) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let cores = s.procs.min(cpus).max(1) as f64;
    let [at_ready, settled, stopped] = &s.loadgen;
    let busy = |from: Option<&Vec<u64>>, to: Option<&Vec<u64>>, seconds: f64| {
        let (to, seconds) = (to?, seconds.max(1e-9));
        let used: Vec<f64> = match from {
            Some(from) => to
                .iter()
                .zip(from)
                .map(|(t, f)| t.saturating_sub(*f))
                .collect(),
            None => to.clone(),
        }
        .into_iter()
        .map(|ns| ns as f64 / 1e9)
        .collect();
        let busiest = used.iter().copied().fold(0.0, f64::max) / seconds;
        let all = used.iter().sum::<f64>() / (seconds * cores);
        Some(100.0 * busiest.max(all))
    };
    let busy_connect = busy(None, at_ready.as_ref(), s.connect_s);
    let busy_run = busy(settled.as_ref(), stopped.as_ref(), s.sending_s);
    let saturated = [busy_connect, busy_run]
        .iter()
        .any(|b| b.is_some_and(|b| b > SATURATED_PCT));
    json!({
        "cpu_s": s.loadgen_cpu_s,
        "cores": cores,
        "busy_connect_pct": busy_connect,
        "busy_run_pct": busy_run,
        "saturated": saturated,
    })
}

/// Each worker's CPU time so far, in nanoseconds, summed over its threads
/// (`/proc/<pid>/task/*/schedstat`, exact where `/proc/<pid>/stat` counts 10 ms ticks);
/// None when a worker cannot be read.
fn worker_cpu(pids: &[u32]) -> Option<Vec<u64>> {
    pids.iter()
        .map(|pid| {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            let mut ns = 0u64;
            for task in tasks.flatten() {
                let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
                ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
            }
            Some(ns)
        })
        .collect()
}

fn sum(values: &[Value], key: &str) -> u64 {
    values.iter().map(|v| v[key].as_u64().unwrap_or(0)).sum()
}

fn summarise(s: &Summary<'_>) -> Value {
    let connected = sum(s.ready, "connected");
    let failed = sum(s.ready, "failed");
    let connect_errors: Vec<&Value> = s
        .ready
        .iter()
        .filter_map(|r| r["errors"].as_array())
        .flatten()
        .take(5)
        .collect();

    // Every client must have every seq of its room after the one it entered at, once. The
    // newest seq anyone saw closes each room's range.
    let mut newest: HashMap<&str, i64> = HashMap::new();
    let clients: Vec<&Value> = s
        .reports
        .iter()
        .filter_map(|r| r["clients"].as_array())
        .flatten()
        .filter(|c| c["ready"].as_bool() == Some(true))
        .collect();
    let mut oldest_floor: HashMap<&str, i64> = HashMap::new();
    for c in &clients {
        let room = c["room"].as_str().unwrap_or_default();
        let floor = c["floor"].as_i64().unwrap_or(0);
        let top = c["seen"]
            .as_array()
            .and_then(|r| r.last())
            .and_then(|r| r[1].as_i64())
            .unwrap_or(floor);
        let e = newest.entry(room).or_insert(top);
        *e = (*e).max(top);
        let f = oldest_floor.entry(room).or_insert(floor);
        *f = (*f).min(floor);
    }
    let (mut expected, mut missing) = (0i64, 0i64);
    let mut missing_examples = Vec::new();
    for c in &clients {
        let room = c["room"].as_str().unwrap_or_default();
        let floor = c["floor"].as_i64().unwrap_or(0);
        let seen: i64 = c["seen"]
            .as_array()
            .map(|ranges| {
                ranges
                    .iter()
                    .map(|r| r[1].as_i64().unwrap_or(0) - r[0].as_i64().unwrap_or(0) + 1)
                    .sum()
            })
            .unwrap_or(0);
        let top = newest.get(room).copied().unwrap_or(floor);
        expected += top - floor;
        missing += top - floor - seen;
        if top - floor > seen && missing_examples.len() < 10 {
            missing_examples.push(json!({
                "client": c["idx"], "room": room,
                "gaps": gaps(floor, top, c["seen"].as_array().map_or(&[][..], Vec::as_slice)),
            }));
        }
    }
    let stored: i64 = newest
        .iter()
        .map(|(room, top)| top - oldest_floor.get(room).copied().unwrap_or(*top))
        .sum();

    let mut histogram = new_histogram();
    for r in s.reports {
        for pair in r["histogram"].as_array().into_iter().flatten() {
            if let (Some(v), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                histogram.saturating_record_n(v, n);
            }
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let deliveries = sum(s.reports, "deliveries");
    let last_delivery = s
        .reports
        .iter()
        .map(|r| r["last_delivery_us"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let window_s = if last_delivery > s.go_us {
        (last_delivery - s.go_us) as f64 / 1e6
    } else {
        s.sending_s
    };
    let mut close_codes = serde_json::Map::new();
    for r in s.reports {
        for (code, n) in r["close_codes"].as_object().into_iter().flatten() {
            let total = close_codes.get(code).and_then(Value::as_u64).unwrap_or(0);
            close_codes.insert(code.clone(), json!(total + n.as_u64().unwrap_or(0)));
        }
    }
    let [before, at_ready, settled, after_run, closed] = s.server;
    let server = before.map(|b| {
        let settled = settled.unwrap_or(b);
        let at_ready = at_ready.unwrap_or(b);
        let after = after_run.unwrap_or(settled);

        let rss_delta = settled.rss_kb.saturating_sub(b.rss_kb) as f64;
        json!({
            "pids": s.args.server_pids,
            "rss_before_kb": b.rss_kb,
            "rss_connected_kb": settled.rss_kb,
            "rss_after_run_kb": after.rss_kb,
            "rss_per_socket_kb": if connected > 0 { rss_delta / connected as f64 } else { 0.0 },
            "cpu_connect_s": at_ready.cpu_s - b.cpu_s,
            "cpu_connect_pct": 100.0 * (at_ready.cpu_s - b.cpu_s) / s.connect_s.max(1e-9),
            // Steadier than the rate, which also depends on what else the cores did. Until
            // the sockets settled, so that work a server puts off until after the last
            // connect (announcements gathered for a while) is counted too.
            "cpu_per_connect_us": (connected > 0)
                .then(|| 1e6 * (settled.cpu_s - b.cpu_s) / connected as f64),
            "cpu_run_s": after.cpu_s - settled.cpu_s,
            "cpu_run_pct": 100.0 * (after.cpu_s - settled.cpu_s) / (s.sending_s + s.drained_s).max(1e-9),
            "rss_closed_kb": closed.map(|c| c.rss_kb),
            "cpu_per_close_us": closed
                .filter(|_| connected > 0)
                .map(|c| 1e6 * (c.cpu_s - after.cpu_s) / connected as f64),
        })
    });
    let first_error = s
        .reports
        .iter()
        .find_map(|r| r["first_error"].as_str())
        .map(str::to_owned);
    json!({
        "scenario": format!("{:?}", s.args.scenario).to_lowercase(),
        "run": s.run,
        "url": s.args.urls.join(","),
        "clients": s.args.clients,
        "users": s.users,
        "procs": s.procs,
        "rate_target": s.args.rate,
        "accounts_s": s.accounts_s,
        "connections": {
            "ok": connected,
            "failed": failed,
            "seconds": s.connect_s,
            "per_second": connected as f64 / s.connect_s.max(1e-9),
            "errors": connect_errors,
        },
        "messages": {
            "sent": sum(s.reports, "sent"),
            "stored_seen": stored,
            "server_errors": sum(s.reports, "server_errors"),
            "first_server_error": first_error,
            "sending_s": s.sending_s,
            "drain_s": s.drained_s,
            "deliveries": deliveries,
            "deliveries_per_s": deliveries as f64 / window_s.max(1e-9),
            "expected": expected,
            "missing": missing,
            "duplicates": sum(s.reports, "duplicates"),
            "missing_examples": missing_examples,
        },
        "latency_ms": {
            "count": histogram.len(),
            "p50": ms(histogram.value_at_quantile(0.50)),
            "p90": ms(histogram.value_at_quantile(0.90)),
            "p99": ms(histogram.value_at_quantile(0.99)),
            "p999": ms(histogram.value_at_quantile(0.999)),
            "max": ms(histogram.max()),
        },
        "sockets": {
            "drops": sum(s.reports, "drops"),
            "reconnects": sum(s.reports, "reconnects"),
            "reconnect_failures": sum(s.reports, "reconnect_failures"),
            "resume_failures": sum(s.reports, "resume_failures"),
            "close_codes": close_codes,
        },
        "server": server,
        "loadgen": loadgen_load(s),
    })
}

/// The seqs in `(floor, top]` that `seen` (sorted inclusive ranges) lacks, as ranges.
fn gaps(floor: i64, top: i64, seen: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = floor + 1;
    for r in seen {
        let (a, b) = (r[0].as_i64().unwrap_or(0), r[1].as_i64().unwrap_or(0));
        if a > next {
            out.push(json!([next, a - 1]));
        }
        next = next.max(b + 1);
    }
    if next <= top {
        out.push(json!([next, top]));
    }
    out.truncate(5);
    out
}

fn print_table(r: &Value) {
    let row = |name: &str, value: String| println!("  {name:<26} {value}");
    let f = |v: &Value| match v.as_f64() {
        Some(x) if v.is_f64() => format!("{x:.2}"),
        _ => v.to_string(),
    };
    println!(
        "wirechat-load  scenario={}  run={}  url={}",
        r["scenario"].as_str().unwrap_or(""),
        r["run"].as_str().unwrap_or(""),
        r["url"].as_str().unwrap_or("")
    );
    row(
        "clients / users / procs",
        format!("{} / {} / {}", r["clients"], r["users"], r["procs"]),
    );
    let c = &r["connections"];
    row(
        "connections ok / failed",
        format!(
            "{} / {}  in {} s ({}/s)",
            c["ok"],
            c["failed"],
            f(&c["seconds"]),
            f(&c["per_second"])
        ),
    );
    if c["failed"].as_u64().unwrap_or(0) > 0 {
        row("connect errors", c["errors"].to_string());
    }
    let m = &r["messages"];
    row(
        "messages sent",
        format!("{} (server errors {})", m["sent"], m["server_errors"]),
    );
    if let Some(e) = m["first_server_error"].as_str() {
        row("first server error", e.to_owned());
    }
    row(
        "deliveries",
        format!("{}  ({}/s)", m["deliveries"], f(&m["deliveries_per_s"])),
    );
    row(
        "missing / duplicate",
        format!(
            "{} / {}  (of {} expected)",
            m["missing"], m["duplicates"], m["expected"]
        ),
    );
    if let Some(examples) = m["missing_examples"].as_array().filter(|e| !e.is_empty()) {
        for e in examples.iter().take(3) {
            row("  missing in", e.to_string());
        }
    }
    let l = &r["latency_ms"];
    row(
        "latency ms p50/p90/p99",
        format!("{} / {} / {}", f(&l["p50"]), f(&l["p90"]), f(&l["p99"])),
    );
    row(
        "latency ms p99.9 / max",
        format!("{} / {}", f(&l["p999"]), f(&l["max"])),
    );
    let s = &r["sockets"];
    row(
        "drops / reconnects",
        format!(
            "{} / {} (failed {}, resume failed {}) closes {}",
            s["drops"],
            s["reconnects"],
            s["reconnect_failures"],
            s["resume_failures"],
            s["close_codes"]
        ),
    );
    let srv = &r["server"];
    if srv.is_object() {
        row(
            "server RSS kB",
            format!(
                "{} before, {} connected, {} after run, {} all closed",
                srv["rss_before_kb"],
                srv["rss_connected_kb"],
                srv["rss_after_run_kb"],
                srv["rss_closed_kb"]
            ),
        );
        row(
            "server RSS per socket",
            format!("{} kB", f(&srv["rss_per_socket_kb"])),
        );
        row(
            "server CPU connect / run",
            format!(
                "{} % / {} %  (of one core); {} µs a connect, until settled",
                f(&srv["cpu_connect_pct"]),
                f(&srv["cpu_run_pct"]),
                f(&srv["cpu_per_connect_us"])
            ),
        );
        row(
            "server CPU a close",
            format!("{} µs, until idle", f(&srv["cpu_per_close_us"])),
        );
    }
    let g = &r["loadgen"];
    row(
        "load generator CPU",
        format!(
            "{} s; busy connecting / sending {} % / {} % (its busiest worker, or all on {} core(s)){}",
            f(&g["cpu_s"]),
            f(&g["busy_connect_pct"]),
            f(&g["busy_run_pct"]),
            g["cores"],
            if g["saturated"].as_bool() == Some(true) {
                "  SATURATED: the generator measured itself"
            } else {
                ""
            }
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(loopback_target("http://127.0.0.1:8000").is_ok());
        assert!(loopback_target("http://127.0.0.9:8080/").is_ok());
        assert!(loopback_target("http://localhost:8000").is_ok());
        assert!(loopback_target("http://10.0.0.1:8000").is_err());
        assert!(loopback_target("http://192.168.1.1").is_err());
        assert!(loopback_target("https://127.0.0.1").is_err());
    }

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["wirechat-load"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    fn accounts(n: usize) -> Vec<Account> {
        (0..n)
            .map(|i| Account {
                cookie: format!("c{i}"),
                username: format!("user{i}"),
            })
            .collect()
    }

    #[test]
    fn rooms_split_clients_and_share_the_rate() {
        let a = args(&[
            "--scenario",
            "rooms",
            "--clients",
            "20",
            "--room-size",
            "5",
            "--rate",
            "100",
        ]);
        let plan = plan_clients(&a, "r", &accounts(20));
        assert_eq!(plan[4].title, "#lt-r-0");
        assert_eq!(plan[5].title, "#lt-r-1");
        assert!(plan.iter().all(|c| (c.rate - 5.0).abs() < 1e-9));
    }

    #[test]
    fn fanout_has_one_sender_and_pairs_face_each_other() {
        let a = args(&["--scenario", "fanout", "--clients", "10", "--rate", "50"]);
        let plan = plan_clients(&a, "r", &accounts(10));
        assert_eq!(plan.iter().filter(|c| c.rate > 0.0).count(), 1);
        assert!((plan[0].rate - 50.0).abs() < 1e-9);
        let a = args(&["--scenario", "pairs", "--clients", "4"]);
        let plan = plan_clients(&a, "r", &accounts(4));
        assert_eq!(plan[0].title, "user1");
        assert_eq!(plan[1].title, "user0");
        assert_eq!(plan[3].title, "user2");
    }

    #[test]
    fn gaps_are_the_seqs_nobody_delivered() {
        let seen = vec![json!([11, 13]), json!([16, 20])];
        assert_eq!(gaps(10, 22, &seen), vec![json!([14, 15]), json!([21, 22])]);
        assert!(gaps(10, 20, &seen[1..]).len() == 1);
    }

    #[test]
    fn limits_are_enforced() {
        assert!(validate(&args(&["--clients", "0"])).is_err());
        assert!(validate(&args(&["--duration", "100000"])).is_err());
        assert!(validate(&args(&["--scenario", "pairs", "--clients", "3"])).is_err());
        assert!(validate(&args(&["--clients", "10"])).is_ok());
    }
}
