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
//! With `--work-every-s S`, an owner also asks for a run of a check every `S` seconds
//! while a step is measured (`POST /api/v1/checks/{id}/runs`, `--work-agents` agents a
//! run, chosen by the controller among the calibrated agents), and the bench prints how
//! long new work took to reach an idle agent: from just before the owner's request to
//! the lease answer carrying the assignment (p50/p99), and how many of the planned
//! assignments arrived within the step. An agent that gets work answers it at once with
//! a result (`POST /api/v1/results`), as a fast measurement would, and goes back to its
//! cadence.
//!
//! Each agent connects from its own loopback address (127.2.0.1 on), as agents of a
//! network have their own; `--one-address` puts them all on 127.0.0.1, one volunteer's
//! farm behind one address, whose results the controller checks for farming.
//!
//! With `--agent-listener`, the agents make their hot calls (heartbeat, lease, results)
//! to the controller's agent listener (`--agent-listen`, a minimal HTTP/1.1 whose idle
//! connections hold no buffer) instead of its API address (actix-web), as agents that
//! were told of it do; enrolment stays on the API.
//!
//! With `--hello`, the same agents (polling cadence) hold their connections against an
//! actix-web hello world (`bench hello`, which answers every call with an empty lease)
//! instead of a controller: the floor of CPU and RSS per connected agent that actix-web
//! itself sets, to read the controller's figures against.
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
use lastmile_agent::runner::{lease_wait_s, MAX_LEASE_WAIT};
use lastmile_domain::scheduling::RunView;
use lastmile_protocol::{
    ConnectionClass, EnrolRequest, EnrolResponse, LeaseRequest, LeaseResponse, ResultAck,
    ResultSubmission, Task,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::harness::{idle_heartbeat, usage, Connection, ControllerProcess};
use super::http::Hello;

struct Args {
    steps: Vec<usize>,
    hold: Duration,
    heartbeat: Duration,
    idle_poll: Duration,
    pg: Option<String>,
    controller: Option<PathBuf>,
    /// Agents as `lastmile-agent` runs now: leases that wait at the controller.
    long_poll: bool,
    /// An owner asks for a run this often while a step is measured.
    work_every: Option<Duration>,
    /// Agents each of those runs asks for.
    work_agents: usize,
    /// Against an actix-web hello world instead of a controller.
    hello: bool,
    /// Every agent from 127.0.0.1 (one volunteer's farm behind one address), not each
    /// from its own.
    one_address: bool,
    /// Hot calls to the controller's agent listener, not its API address.
    agent_listener: bool,
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
        work_every: None,
        work_agents: 20,
        hello: false,
        one_address: false,
        agent_listener: false,
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        if [
            "--long-poll",
            "--hello",
            "--one-address",
            "--agent-listener",
        ]
        .contains(&flag.as_str())
        {
            a.long_poll |= flag == "--long-poll";
            a.hello |= flag == "--hello";
            a.one_address |= flag == "--one-address";
            a.agent_listener |= flag == "--agent-listener";
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
            "--work-every-s" => a.work_every = Some(secs(&value)?),
            "--work-agents" => a.work_agents = value.parse()?,
            other => bail!("unknown flag {other} (flags: --steps N,N,.. --hold-s S --heartbeat-s S --idle-poll-s S --long-poll --work-every-s S --work-agents N --hello --one-address --agent-listener --pg ADMIN_URL --controller PATH)"),
        }
    }
    if a.work_every.is_some_and(|every| every.is_zero()) || a.work_agents == 0 {
        bail!("--work-every-s and --work-agents must be above 0");
    }
    if a.hello && (a.long_poll || a.work_every.is_some() || a.pg.is_some() || a.agent_listener) {
        bail!(
            "--hello holds polling agents only (a hello world answers at once and plans no work)"
        );
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

/// What the agents are held against.
enum Server {
    /// A controller, and the enrolment key of its volunteer.
    Controller(Box<ControllerProcess>, String),
    Hello(Hello),
}

impl Server {
    fn addr_and_pid(&self) -> (SocketAddr, u32) {
        match self {
            Server::Controller(c, _) => (c.addr, c.pid()),
            Server::Hello(h) => (h.addr, h.pid()),
        }
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
    /// Assignments that reached an agent: their run, and when the lease answer came.
    deliveries: Vec<(Uuid, Instant)>,
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
            deliveries: Vec::new(),
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

    fn error(&mut self, e: String) {
        if self.recording {
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
        let answer = conn
            .post::<_, LeaseResponse>(
                "/api/v1/agents/lease",
                &LeaseRequest {
                    max: 2,
                    wait_s: None,
                },
            )
            .await
            .map_err(|e| e.to_string());
        let (outcome, work) = split(answer);
        {
            let mut w = lock(&window);
            w.record(Call::Lease, started.elapsed(), outcome);
            if w.recording && tick > 0 {
                w.reconnects += conn.opened - opened;
            }
        }
        answer_work(&mut conn, work, &window).await;
        tick += 1;
    }
}

/// One simulated agent as `lastmile-agent` runs today, until `stop`: a heartbeat every
/// `heartbeat_every`, and in between leases that wait at the controller for work, each
/// for at most 20 s and until the next heartbeat (rounded up to a whole second, as the
/// agent does: [`lease_wait_s`]). A lease's latency is recorded as how much later than
/// the asked wait it was answered.
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
        let wait = lease_wait_s(until_beat);
        let opened = conn.opened;
        let started = Instant::now();
        let request = LeaseRequest {
            max: 2,
            wait_s: (wait > 0).then_some(wait),
        };
        let answer = tokio::select! {
            _ = stop.changed() => return,
            answer = conn.post::<_, LeaseResponse>("/api/v1/agents/lease", &request) => answer,
        };
        let late = started
            .elapsed()
            .saturating_sub(Duration::from_secs(wait.into()));
        let (outcome, work) = split(answer.map_err(|e| e.to_string()));
        {
            let mut w = lock(&window);
            w.record(Call::Lease, late, outcome);
            if w.recording {
                w.reconnects += conn.opened - opened;
            }
        }
        let had_work = !work.is_empty();
        answer_work(&mut conn, work, &window).await;
        if wait == 0 && !had_work {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(next_beat) => {}
            }
        }
    }
}

/// A lease's outcome for the window, and the work it carried.
fn split(answer: Result<LeaseResponse, String>) -> (Result<(), String>, Vec<Task>) {
    match answer {
        Ok(lease) => (Ok(()), lease.tasks),
        Err(e) => (Err(e), Vec::new()),
    }
}

/// Notes when each task arrived and answers it at once with a result, as an agent whose
/// measurement took no time would.
async fn answer_work(conn: &mut Connection, work: Vec<Task>, window: &Mutex<Window>) {
    if work.is_empty() {
        return;
    }
    let arrived = Instant::now();
    {
        let mut w = lock(window);
        if w.recording {
            w.deliveries
                .extend(work.iter().map(|t| (t.run_id, arrived)));
        }
    }
    // Each result its own figures, so that none looks copied from another.
    static ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for task in &work {
        let i = ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = ResultSubmission {
            assignment_id: task.assignment_id,
            started_at: chrono::Utc::now(),
            measurement: super::storage::measurement(i),
        };
        if let Err(e) = conn.post::<_, ResultAck>("/api/v1/results", &result).await {
            lock(window).error(format!("result: {e}"));
        }
    }
}

/// A run the bench asked for.
struct AskedRun {
    id: Uuid,
    /// Just before the owner's request was sent.
    asked: Instant,
    /// The owner's request, until its answer.
    took: Duration,
    /// Assignments the run planned.
    planned: u32,
}

/// The owner's side of `--work-every-s`: a run of `check` every `every` until `stop`;
/// returns each run with when it was asked for, how long the owner's request took and
/// how many assignments it planned.
async fn ask_for_runs(
    mut owner: Connection,
    check: Uuid,
    every: Duration,
    window: Arc<Mutex<Window>>,
    mut stop: watch::Receiver<bool>,
) -> Vec<AskedRun> {
    let mut runs = Vec::new();
    let path = format!("/api/v1/checks/{check}/runs");
    loop {
        tokio::select! {
            _ = stop.changed() => return runs,
            _ = tokio::time::sleep(every) => {}
        }
        let asked = Instant::now();
        match owner
            .post::<_, RunView>(&path, &serde_json::json!({}))
            .await
        {
            Ok(run) => runs.push(AskedRun {
                id: run.id,
                asked,
                took: asked.elapsed(),
                planned: run.pending,
            }),
            Err(e) => lock(&window).error(format!("run: {e}")),
        }
    }
}

/// Enrols agents `first..first + n`, 32 at a time, each from its own loopback address
/// ([`Connection::loopback_source`]); returns their ids and tokens in that order.
async fn enrol(
    addr: SocketAddr,
    key: &str,
    n: usize,
    first: usize,
    one_address: bool,
) -> anyhow::Result<Vec<EnrolResponse>> {
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
            let i = first + next;
            pending.spawn(async move {
                let mut conn = Connection::new(addr);
                conn.source = (!one_address).then(|| Connection::loopback_source(i));
                let answer = conn
                    .post::<_, EnrolResponse>("/api/v1/agents/enrol", &request)
                    .await;
                (i, answer)
            });
            next += 1;
        }
        let (i, answer) = pending
            .join_next()
            .await
            .context("enrolment tasks ended early")??;
        tokens.push((i, answer.map_err(|e| anyhow::anyhow!("enrol: {e}"))?));
    }
    tokens.sort_by_key(|(i, _)| *i);
    Ok(tokens.into_iter().map(|(_, enrolled)| enrolled).collect())
}

/// The new-work columns: the owner's request p50, p50/p99 from each run's request to
/// each of its assignments' arrival, and arrived/planned.
fn new_work(runs: &[AskedRun], deliveries: &[(Uuid, Instant)]) -> String {
    let asked: std::collections::HashMap<Uuid, Instant> =
        runs.iter().map(|run| (run.id, run.asked)).collect();
    let mut took = lastmile_domain::histogram::new_histogram();
    for (run, arrived) in deliveries {
        if let Some(at) = asked.get(run) {
            let us = arrived.saturating_duration_since(*at).as_micros() as u64;
            took.saturating_record(us.clamp(1, lastmile_domain::histogram::MAX_US));
        }
    }
    let planned: u32 = runs.iter().map(|run| run.planned).sum();
    let mut request = lastmile_domain::histogram::new_histogram();
    for run in runs {
        let us = run.took.as_micros() as u64;
        request.saturating_record(us.clamp(1, lastmile_domain::histogram::MAX_US));
    }
    format!(
        " {:>9.1} {:>10.1} {:>10.1} {:>9}",
        ms(&request, 0.5),
        ms(&took, 0.5),
        ms(&took, 0.99),
        format!("{}/{planned}", took.len())
    )
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let server = if args.hello {
        Server::Hello(Hello::start()?)
    } else {
        let (controller, key) =
            ControllerProcess::start(args.controller.as_deref(), args.pg.as_deref(), "agents")?;
        Server::Controller(Box::new(controller), key)
    };
    let (addr, pid) = server.addr_and_pid();
    // Where the agents' hot calls go.
    let hot_addr = match &server {
        Server::Controller(c, _) if args.agent_listener => c.agent_addr,
        _ => addr,
    };
    let backend = match (&server, &args.pg) {
        (Server::Hello(_), _) => "none: an actix-web hello world",
        (_, Some(_)) if args.agent_listener => "postgres, hot calls to the agent listener",
        (_, Some(_)) => "postgres",
        (_, None) if args.agent_listener => "sqlite, hot calls to the agent listener",
        (_, None) => "sqlite",
    };
    if args.long_poll {
        println!(
            "Lastmile agents bench: idle agents against one server ({backend}), heartbeat every {} s, leases that wait up to {} s (ls = how late a lease was answered after its wait)\n",
            args.heartbeat.as_secs(),
            MAX_LEASE_WAIT.as_secs()
        );
    } else {
        println!(
            "Lastmile agents bench: idle agents against one server ({backend}), heartbeat every {} s, idle lease every {} s\n",
            args.heartbeat.as_secs(),
            args.idle_poll.as_secs()
        );
    }
    // With --work-every-s: an owner, a verified site and a check the runs are asked of.
    let work = match (args.work_every, &server) {
        (Some(every), Server::Controller(controller, _)) => {
            let db = controller.db()?;
            let (_, token, check) =
                super::storage::owner_with_check(&mut *db.conn()?, args.work_agents)?;
            println!(
                "New work: a run of {} agents every {} s (run = the owner's request; work = from the owner's request to the lease answer carrying it)\n",
                args.work_agents,
                every.as_secs()
            );
            Some((db, token, check.id.parse::<Uuid>()?, every))
        }
        _ => None,
    };
    let idle = usage(pid)?;
    println!(
        "{:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>11} {:>8} {:>9}{}",
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
        "KiB/agent",
        if work.is_some() {
            format!(
                " {:>9} {:>10} {:>10} {:>9}",
                "run p50ms", "work p50ms", "work p99ms", "work got"
            )
        } else {
            String::new()
        }
    );
    let window = Arc::new(Mutex::new(Window::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    let mut running = 0;
    for &target in &args.steps {
        let enrolled = match &server {
            Server::Controller(_, key) => {
                enrol(addr, key, target - running, running, args.one_address).await?
            }
            Server::Hello(_) => (running..target)
                .map(|_| EnrolResponse {
                    agent_id: Uuid::new_v4(),
                    token: "hello".into(),
                })
                .collect(),
        };
        if let Some((db, ..)) = &work {
            let ids: Vec<String> = enrolled.iter().map(|e| e.agent_id.to_string()).collect();
            super::storage::record_fast_lines(&mut *db.conn()?, &ids)?;
        }
        let spread = args.heartbeat.as_millis() as u64;
        for (i, enrolled) in enrolled.into_iter().enumerate() {
            let mut conn = Connection::new(hot_addr);
            conn.token = Some(enrolled.token);
            conn.source = (!args.one_address).then(|| Connection::loopback_source(running + i));
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
        let before = usage(pid)?;
        let started = Instant::now();
        let (stop_asking, asking_stopped) = watch::channel(false);
        let asking = work.as_ref().map(|(_, token, check, every)| {
            let mut owner = Connection::new(addr);
            owner.token = Some(token.clone());
            tokio::spawn(ask_for_runs(
                owner,
                *check,
                *every,
                window.clone(),
                asking_stopped,
            ))
        });
        tokio::time::sleep(args.hold).await;
        let after = usage(pid)?;
        let elapsed = started.elapsed().as_secs_f64();
        let mut w = std::mem::replace(&mut *lock(&window), Window::new());
        let mut work_figures = String::new();
        if let Some(asking) = asking {
            // The runs asked for last get a few seconds to arrive; requests meanwhile
            // are not counted.
            lock(&window).reset(true);
            let _ = stop_asking.send(true);
            let runs = asking.await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            w.deliveries
                .append(&mut std::mem::replace(&mut *lock(&window), Window::new()).deliveries);
            work_figures = new_work(&runs, &w.deliveries);
        }
        let requests = (w.heartbeat.len() + w.lease.len()) as f64;
        let cpu = (after.cpu - before.cpu).as_secs_f64();
        println!(
            "{:>7} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>8} {:>8.1} {:>11.2} {:>8.1} {:>9.2}{}",
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
            work_figures,
        );
        if let Some(e) = &w.first_error {
            println!("        first error: {e}");
        }
    }
    let _ = stop_tx.send(true);
    while agents.join_next().await.is_some() {}
    Ok(())
}
