//! `bench agents`: idle agents at the real agent's cadence against one controller.
//!
//! The bench starts `lastmile-controller serve` as a child process (the release build
//! beside this binary, or `--controller PATH`) on a scratch SQLite data dir or a scratch
//! PostgreSQL database, creates a volunteer with the controller's own CLI, enrols the
//! agents over the API, and then runs them: each simulated agent holds its own
//! keep-alive connection, heartbeats every `--heartbeat-s` (30) seconds with a lease
//! right after, and leases every `--idle-poll-s` (5) seconds in between, as
//! `lastmile-agent run` does when there is no work (0.23 requests a second per agent).
//! Agents start spread over one heartbeat interval, as a real network's would be.
//!
//! For each step of `--steps` (agents in total, e.g. `1000,5000,10000`) it adds agents,
//! lets one heartbeat interval pass so every agent is in its steady cadence, then
//! measures for `--hold-s` seconds and prints: requests a second, p50/p99 of heartbeat
//! and lease, errors, the controller's CPU (per cent of one core, and microseconds per
//! agent-second) and its RSS (and RSS per agent above the idle controller).
//!
//! The client is a minimal HTTP/1.1 client over one TCP connection per agent (not
//! reqwest: 10k reqwest clients would each build their own TLS configuration and pool,
//! and the load generator shares the machine's cores with the controller it measures).
//! Bodies are the protocol crate's types. Traffic goes to 127.0.0.1 only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use lastmile_protocol::{
    AgentLimits, CheckKind, ConnectionClass, EnrolRequest, EnrolResponse, Heartbeat, LeaseRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

struct Args {
    steps: Vec<usize>,
    hold: Duration,
    heartbeat: Duration,
    idle_poll: Duration,
    pg: Option<String>,
    controller: Option<PathBuf>,
}

fn args(flags: Vec<String>) -> anyhow::Result<Args> {
    let mut a = Args {
        steps: vec![1_000, 5_000, 10_000],
        hold: Duration::from_secs(60),
        heartbeat: Duration::from_secs(30),
        idle_poll: Duration::from_secs(5),
        pg: None,
        controller: None,
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let secs = |v: &str| -> anyhow::Result<Duration> { Ok(Duration::from_secs(v.parse()?)) };
        match flag.as_str() {
            "--steps" => {
                a.steps = value
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--hold-s" => a.hold = secs(&value)?,
            "--heartbeat-s" => a.heartbeat = secs(&value)?,
            "--idle-poll-s" => a.idle_poll = secs(&value)?,
            "--pg" => a.pg = Some(value),
            "--controller" => a.controller = Some(value.into()),
            other => bail!("unknown flag {other} (flags: --steps N,N,.. --hold-s S --heartbeat-s S --idle-poll-s S --pg ADMIN_URL --controller PATH)"),
        }
    }
    if a.steps.windows(2).any(|w| w[1] <= w[0]) || a.steps.is_empty() {
        bail!("--steps must be increasing agent counts");
    }
    Ok(a)
}

pub fn main(flags: Vec<String>) -> anyhow::Result<()> {
    let args = args(flags)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

/// The controller process under test, killed when dropped.
struct ControllerProcess {
    child: Child,
    addr: SocketAddr,
    _data_dir: tempfile::TempDir,
    _scratch: Option<super::storage::ScratchPg>,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("bench has no directory")?
            .join("lastmile-controller"),
    };
    if !path.exists() {
        bail!(
            "{} not found: `cargo build --release --workspace` first, or pass --controller PATH",
            path.display()
        );
    }
    Ok(path)
}

impl ControllerProcess {
    fn start(args: &Args) -> anyhow::Result<(ControllerProcess, String)> {
        let binary = controller_binary(args.controller.as_deref())?;
        let data_dir = tempfile::tempdir()?;
        let scratch = match &args.pg {
            Some(admin) => Some(super::storage::ScratchPg::create(admin, "agents")?),
            None => None,
        };
        let database_url = scratch.as_ref().map(|s| s.url.clone());
        let command = |args: &[&str]| {
            let mut c = Command::new(&binary);
            c.arg("--data-dir").arg(data_dir.path());
            if let Some(url) = &database_url {
                c.arg("--database-url").arg(url);
            }
            c.args(args).env("RUST_LOG", "warn");
            c
        };
        let created = command(&["volunteer", "create", "--name", "bench"]).output()?;
        if !created.status.success() {
            bail!(
                "volunteer create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            );
        }
        let key = String::from_utf8(created.stdout)?
            .lines()
            .last()
            .context("volunteer create printed no key")?
            .trim()
            .to_owned();
        let addr = free_port()?;
        let child = command(&["serve", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?;
        let process = ControllerProcess {
            child,
            addr,
            _data_dir: data_dir,
            _scratch: scratch,
        };
        wait_until_serving(addr)?;
        Ok((process, key))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..300 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("controller did not listen on {addr} within 30 s")
}

/// CPU time (user + system) and resident memory of a process, from `/proc`.
#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    rss_kib: u64,
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Usage {
        cpu: Duration::from_millis(ticks * 1000 / clock_ticks_per_second()),
        rss_kib,
    })
}

/// `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux this runs on; `getconf` says.
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// One agent's connection to the controller: HTTP/1.1 with keep-alive, reconnecting
/// when the controller closed it.
struct Connection {
    addr: SocketAddr,
    token: Option<String>,
    stream: Option<BufReader<TcpStream>>,
    /// Connections opened, to tell how often keep-alive did not hold.
    opened: u64,
}

#[derive(Debug)]
enum CallError {
    Io(std::io::Error),
    Status(u16, String),
    Body(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "{e}"),
            CallError::Status(s, body) => write!(f, "HTTP {s}: {body}"),
            CallError::Body(e) => write!(f, "bad body: {e}"),
        }
    }
}

impl Connection {
    fn new(addr: SocketAddr) -> Connection {
        Connection {
            addr,
            token: None,
            stream: None,
            opened: 0,
        }
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Body(e.to_string()))?;
        let reused = self.stream.is_some();
        match self.exchange(path, &body).await {
            Ok(answer) => answer,
            // The controller closed an idle keep-alive connection just as we sent: a real
            // client retries once on a new connection.
            Err(_) if reused => {
                self.stream = None;
                self.exchange(path, &body).await.map_err(CallError::Io)?
            }
            Err(e) => {
                self.stream = None;
                Err(CallError::Io(e))
            }
        }
    }

    /// Sends one request and reads one answer. The outer error is the connection's (the
    /// request may be retried); the inner is the answer's.
    async fn exchange<R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<Result<R, CallError>> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
            self.opened += 1;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream.get_mut().write_all(&request).await?;
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        let length =
            length.ok_or_else(|| std::io::Error::other("answer without content-length"))?;
        let mut answer = vec![0; length];
        stream.read_exact(&mut answer).await?;
        if close {
            self.stream = None;
        }
        if !(200..300).contains(&status) {
            return Ok(Err(CallError::Status(
                status,
                String::from_utf8_lossy(&answer).into_owned(),
            )));
        }
        Ok(serde_json::from_slice(&answer).map_err(|e| CallError::Body(e.to_string())))
    }
}

/// The two calls an idle agent makes.
#[derive(Clone, Copy)]
enum Call {
    Heartbeat,
    Lease,
}

/// Latencies and errors seen while a step is measured.
struct Window {
    recording: bool,
    heartbeat: Histogram<u64>,
    lease: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    reconnects: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            recording: false,
            heartbeat: lastmile_domain::histogram::new_histogram(),
            lease: lastmile_domain::histogram::new_histogram(),
            errors: 0,
            first_error: None,
            reconnects: 0,
        }
    }

    fn record(&mut self, call: Call, took: Duration, outcome: Result<(), String>) {
        if !self.recording {
            return;
        }
        let us = (took.as_micros() as u64).clamp(1, lastmile_domain::histogram::MAX_US);
        match call {
            Call::Heartbeat => self.heartbeat.saturating_record(us),
            Call::Lease => self.lease.saturating_record(us),
        }
        if let Err(e) = outcome {
            self.errors += 1;
            self.first_error.get_or_insert(e);
        }
    }

    fn reset(&mut self, recording: bool) {
        *self = Window::new();
        self.recording = recording;
    }
}

/// The window, also after a simulated agent panicked while holding it (its figures are
/// still figures).
fn lock(window: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    window
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn heartbeat_body() -> Heartbeat {
    Heartbeat {
        declared_class: ConnectionClass::Cable,
        version: concat!("bench-", env!("CARGO_PKG_VERSION")).to_owned(),
        limits: AgentLimits { max_concurrent: 2 },
        paused: None,
        kinds: CheckKind::ALL.to_vec(),
    }
}

/// One simulated agent: the idle cadence until `stop`.
async fn agent(
    mut conn: Connection,
    start_after: Duration,
    args: (Duration, Duration),
    window: Arc<Mutex<Window>>,
    mut stop: watch::Receiver<bool>,
) {
    let (heartbeat_every, idle_poll) = args;
    let beat = heartbeat_body();
    let polls_per_beat = (heartbeat_every.as_millis() / idle_poll.as_millis().max(1)).max(1);
    tokio::select! {
        _ = stop.changed() => return,
        _ = tokio::time::sleep(start_after) => {}
    }
    let mut ticks = tokio::time::interval(idle_poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = 0u128;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        let opened = conn.opened;
        if tick.is_multiple_of(polls_per_beat) {
            let started = Instant::now();
            let outcome = conn
                .post::<_, serde_json::Value>("/api/v1/agents/heartbeat", &beat)
                .await
                .map(drop)
                .map_err(|e| e.to_string());
            lock(&window).record(Call::Heartbeat, started.elapsed(), outcome);
        }
        let started = Instant::now();
        let outcome = conn
            .post::<_, serde_json::Value>(
                "/api/v1/agents/lease",
                &LeaseRequest {
                    max: 2,
                    wait_s: None,
                },
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string());
        let mut w = lock(&window);
        w.record(Call::Lease, started.elapsed(), outcome);
        if w.recording && tick > 0 {
            w.reconnects += conn.opened - opened;
        }
        drop(w);
        tick += 1;
    }
}

/// Enrols `n` agents, 32 at a time; returns their tokens.
async fn enrol(addr: SocketAddr, key: &str, n: usize, first: usize) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    while tokens.len() < n {
        while next < n && pending.len() < 32 {
            let request = EnrolRequest {
                enrol_key: key.to_owned(),
                name: format!("bench-{}", first + next),
                declared_class: ConnectionClass::Cable,
                version: "bench".into(),
            };
            pending.spawn(async move {
                Connection::new(addr)
                    .post::<_, EnrolResponse>("/api/v1/agents/enrol", &request)
                    .await
            });
            next += 1;
        }
        let answer = pending
            .join_next()
            .await
            .context("enrolment tasks ended early")??;
        tokens.push(answer.map_err(|e| anyhow::anyhow!("enrol: {e}"))?.token);
    }
    Ok(tokens)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (controller, key) = ControllerProcess::start(&args)?;
    let backend = if args.pg.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "Lastmile agents bench: idle agents against one controller ({backend}), heartbeat every {} s, idle lease every {} s\n",
        args.heartbeat.as_secs(),
        args.idle_poll.as_secs()
    );
    let idle = usage(controller.pid())?;
    println!(
        "{:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>11} {:>8} {:>9}",
        "agents",
        "req/s",
        "hb p50ms",
        "hb p99ms",
        "ls p50ms",
        "ls p99ms",
        "errors",
        "reconn",
        "ctl cpu%",
        "µs/agent·s",
        "rss MiB",
        "KiB/agent"
    );
    let window = Arc::new(Mutex::new(Window::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    let mut running = 0;
    for &target in &args.steps {
        let tokens = enrol(controller.addr, &key, target - running, running).await?;
        let spread = args.heartbeat.as_millis() as u64;
        for (i, token) in tokens.into_iter().enumerate() {
            let mut conn = Connection::new(controller.addr);
            conn.token = Some(token);
            let offset = Duration::from_millis(spread * i as u64 / (target - running) as u64);
            agents.spawn(agent(
                conn,
                offset,
                (args.heartbeat, args.idle_poll),
                window.clone(),
                stop_rx.clone(),
            ));
        }
        running = target;
        // One full heartbeat interval for the new agents to start and settle.
        tokio::time::sleep(args.heartbeat + args.idle_poll).await;
        lock(&window).reset(true);
        let before = usage(controller.pid())?;
        let started = Instant::now();
        tokio::time::sleep(args.hold).await;
        let after = usage(controller.pid())?;
        let elapsed = started.elapsed().as_secs_f64();
        let w = std::mem::replace(&mut *lock(&window), Window::new());
        let requests = (w.heartbeat.len() + w.lease.len()) as f64;
        let cpu = (after.cpu - before.cpu).as_secs_f64();
        println!(
            "{:>7} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>8} {:>8.1} {:>11.2} {:>8.1} {:>9.2}",
            target,
            requests / elapsed,
            ms(&w.heartbeat, 0.5),
            ms(&w.heartbeat, 0.99),
            ms(&w.lease, 0.5),
            ms(&w.lease, 0.99),
            w.errors,
            w.reconnects,
            100.0 * cpu / elapsed,
            cpu * 1e6 / (elapsed * target as f64),
            after.rss_kib as f64 / 1024.0,
            after.rss_kib.saturating_sub(idle.rss_kib) as f64 / target as f64,
        );
        if let Some(e) = &w.first_error {
            println!("        first error: {e}");
        }
    }
    let _ = stop_tx.send(true);
    while agents.join_next().await.is_some() {}
    Ok(())
}
