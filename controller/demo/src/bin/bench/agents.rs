//! `bench agents`: idle agents at the real agent's cadence against one controller.
//!
//! The bench starts `lastmile-controller serve` as a child process (the release build
//! beside this binary, or `--controller PATH`) on a scratch SQLite data dir or a scratch
//! PostgreSQL database, creates a volunteer with the controller's own CLI, enrols the
//! agents over the API, and then runs them: each simulated agent holds its own
//! keep-alive connection, heartbeats every `--heartbeat-s` (30) seconds with a lease
//! right after, and leases every `--idle-poll-s` (5) seconds in between, as
//! `lastmile-agent run` did before long polls when there is no work (0.23 requests a
//! second per agent; agents in the field keep that cadence for months). With
//! `--long-poll` they run as `lastmile-agent run` does now: leases that wait at the
//! controller up to 20 s, never past the next heartbeat (about 0.1 requests a second).
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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use lastmile_protocol::{ConnectionClass, EnrolRequest, EnrolResponse, LeaseRequest};
use tokio::sync::watch;

use super::harness::{idle_heartbeat, usage, Connection, ControllerProcess};

struct Args {
    steps: Vec<usize>,
    hold: Duration,
    heartbeat: Duration,
    idle_poll: Duration,
    pg: Option<String>,
    controller: Option<PathBuf>,
    /// Agents as `lastmile-agent` runs now: leases that wait at the controller.
    long_poll: bool,
}

fn args(flags: Vec<String>) -> anyhow::Result<Args> {
    let mut a = Args {
        steps: vec![1_000, 5_000, 10_000],
        hold: Duration::from_secs(60),
        heartbeat: Duration::from_secs(30),
        idle_poll: Duration::from_secs(5),
        pg: None,
        controller: None,
        long_poll: false,
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        if flag == "--long-poll" {
            a.long_poll = true;
            continue;
        }
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
            other => bail!("unknown flag {other} (flags: --steps N,N,.. --hold-s S --heartbeat-s S --idle-poll-s S --long-poll --pg ADMIN_URL --controller PATH)"),
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

/// One simulated agent: the idle cadence until `stop`.
async fn agent(
    mut conn: Connection,
    start_after: Duration,
    args: (Duration, Duration),
    window: Arc<Mutex<Window>>,
    mut stop: watch::Receiver<bool>,
) {
    let (heartbeat_every, idle_poll) = args;
    let beat = idle_heartbeat();
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

/// Longest a simulated agent asks a lease to wait, as `lastmile-agent` does.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(20);

/// One simulated agent as `lastmile-agent` runs today, until `stop`: a heartbeat every
/// `heartbeat_every`, and in between leases that wait at the controller for work, each
/// for at most 20 s and never past the next heartbeat (with under a second left, a
/// lease that does not wait, then a sleep until the heartbeat). A lease's latency is
/// recorded as how much later than the asked wait it was answered.
async fn long_polling_agent(
    mut conn: Connection,
    start_after: Duration,
    heartbeat_every: Duration,
    window: Arc<Mutex<Window>>,
    mut stop: watch::Receiver<bool>,
) {
    let beat = idle_heartbeat();
    tokio::select! {
        _ = stop.changed() => return,
        _ = tokio::time::sleep(start_after) => {}
    }
    let mut next_beat = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_beat {
            next_beat = now + heartbeat_every;
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = stop.changed() => return,
                answer = conn.post::<_, serde_json::Value>("/api/v1/agents/heartbeat", &beat) => answer,
            };
            let outcome = outcome.map(drop).map_err(|e| e.to_string());
            lock(&window).record(Call::Heartbeat, started.elapsed(), outcome);
        }
        let until_beat = next_beat.saturating_duration_since(tokio::time::Instant::now());
        let wait = until_beat.min(MAX_LEASE_WAIT).as_secs() as u32;
        let opened = conn.opened;
        let started = Instant::now();
        let request = LeaseRequest {
            max: 2,
            wait_s: (wait > 0).then_some(wait),
        };
        let outcome = tokio::select! {
            _ = stop.changed() => return,
            answer = conn.post::<_, serde_json::Value>("/api/v1/agents/lease", &request) => answer,
        };
        let late = started
            .elapsed()
            .saturating_sub(Duration::from_secs(wait.into()));
        {
            let mut w = lock(&window);
            w.record(
                Call::Lease,
                late,
                outcome.map(drop).map_err(|e| e.to_string()),
            );
            if w.recording {
                w.reconnects += conn.opened - opened;
            }
        }
        if wait == 0 {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(next_beat) => {}
            }
        }
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
    let (controller, key) =
        ControllerProcess::start(args.controller.as_deref(), args.pg.as_deref(), "agents")?;
    let backend = if args.pg.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    if args.long_poll {
        println!(
            "Lastmile agents bench: idle agents against one controller ({backend}), heartbeat every {} s, leases that wait up to {} s (ls = how late a lease was answered after its wait)\n",
            args.heartbeat.as_secs(),
            MAX_LEASE_WAIT.as_secs()
        );
    } else {
        println!(
            "Lastmile agents bench: idle agents against one controller ({backend}), heartbeat every {} s, idle lease every {} s\n",
            args.heartbeat.as_secs(),
            args.idle_poll.as_secs()
        );
    }
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
            if args.long_poll {
                agents.spawn(long_polling_agent(
                    conn,
                    offset,
                    args.heartbeat,
                    window.clone(),
                    stop_rx.clone(),
                ));
            } else {
                agents.spawn(agent(
                    conn,
                    offset,
                    (args.heartbeat, args.idle_poll),
                    window.clone(),
                    stop_rx.clone(),
                ));
            }
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
