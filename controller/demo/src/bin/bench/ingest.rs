//! `bench ingest`: results accepted over the real HTTP API by a controller process, and
//! beside it a raw `COPY` of the same rows into PostgreSQL, printed as a ratio.
//!
//! The bench starts `lastmile-controller serve` (as `bench agents` does) on a scratch
//! SQLite data dir or a scratch PostgreSQL database (`--pg ADMIN_URL`), sets up an
//! owner with credit, a verified site, a check and `--agents` calibrated agents in the
//! controller's database, creates enough runs for `--results` assignments and leases
//! them to the agents (one SQL update: leasing is not what is measured; with `--lease`,
//! each agent leases its assignment of each run through the controller's own lease,
//! `scheduling::lease`, on one connection, and the bench prints leases a second and the
//! CPU a lease cost PostgreSQL and this process). Then
//! `--connections` keep-alive connections submit the results, each request carrying
//! `--batch` results of one agent (`1`: `POST /api/v1/results`, as agents have always
//! sent them; more: `POST /api/v1/results/batch`). The clock stops when every answer has
//! arrived; an answer means stored, folded into the aggregates and paid (the bench
//! checks that nothing is left in the fold queue).
//!
//! Prints results/s, requests/s, request latency p50/p99, errors, the controller's CPU
//! (per cent of one core and per result) and RSS, and the PostgreSQL server's CPU. With `--pg`, the same rows (read back
//! from the controller's database) are then written with a `COPY` into the
//! `results` table of a fresh database with the same schema and indexes, and the
//! accept rate is printed as a ratio of that; so is the CPU time a result cost
//! (PostgreSQL and the accepting process) against a row of the `COPY` (PostgreSQL and
//! this process writing the rows), the ratio on a machine with no core to spare.
//!
//! With `--in-process`, the same requests go through the accept path in this process
//! instead of over HTTP (the controller is stopped once it has set up the database):
//! `--connections` threads each take a request and accept its results in one
//! transaction (`ingest::accept`) while one thread folds them as the controller's group
//! commit does; the clock stops when every result is accepted and folded. That is the
//! accept path without HTTP, JSON and the agent's round trips, against the same `COPY`.
//! `--group N` has each thread take N requests a transaction (`ingest::accept_many`),
//! as the controller's group commit of results (`server/accepting.rs`) does when
//! requests arrive faster than one transaction writes them. It makes three passes, each
//! over a third of the requests, and with `--pg` writes each pass's rows with a raw
//! `COPY` right after it: the ratio is the median of the three passes' ratios to their
//! own copies, so that a pass and its reference see the host's load in the same moment.
//! It also prints the CPU time a result cost PostgreSQL and this process, and a row of
//! the `COPY` PostgreSQL. `--interleave` takes the agents'
//! requests in turn (each one's first, then each one's second, ...), so that a
//! transaction of N requests holds N agents and a fold many cells, as a group commit
//! sees them when many agents send at once; by default each agent's requests follow
//! one another (a transaction of 10 holds 2 or 3 agents).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use diesel::prelude::*;
use hdrhistogram::Histogram;
use lastmile_domain::{clock, ingest, scheduling};
use lastmile_protocol::{ResultAck, ResultBatch, ResultBatchAck, ResultSubmission};
use lastmile_storage::results::StoredResult;
use lastmile_storage::schema::{open_assignments, results};
use lastmile_storage::{count_sql, Db};

use super::harness::{postgres_cpu, usage, Connection, ControllerProcess};
use super::storage::{fixture_with_tokens, fold_until_written, measurement, policy, ScratchPg};

struct Args {
    results: usize,
    batch: usize,
    connections: usize,
    agents: usize,
    pg: Option<String>,
    controller: Option<PathBuf>,
    /// Results (with their payments and ledger postings) already stored before the
    /// measured ingest, received over the last 60 days (PostgreSQL only).
    history: usize,
    /// The accept path called in this process, not over HTTP.
    in_process: bool,
    /// Requests per transaction in process.
    group: usize,
    /// The assignments leased through `scheduling::lease`, timed.
    lease: bool,
    /// The requests of all agents taken in turn (each agent's first, then each one's
    /// second, ...), as a controller's group commit sees them when many agents send at
    /// once; by default each agent's requests follow one another.
    interleave: bool,
}

fn args(flags: Vec<String>) -> anyhow::Result<Args> {
    let mut a = Args {
        results: 20_000,
        batch: 50,
        connections: 16,
        agents: 200,
        pg: None,
        controller: None,
        history: 0,
        in_process: false,
        group: 1,
        lease: false,
        interleave: false,
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        if ["--in-process", "--lease", "--interleave"].contains(&flag.as_str()) {
            a.in_process |= flag == "--in-process";
            a.lease |= flag == "--lease";
            a.interleave |= flag == "--interleave";
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--results" => a.results = value.parse()?,
            "--batch" => a.batch = value.parse()?,
            "--connections" => a.connections = value.parse()?,
            "--group" => a.group = value.parse::<usize>()?.max(1),
            "--agents" => a.agents = value.parse()?,
            "--pg" => a.pg = Some(value),
            "--controller" => a.controller = Some(value.into()),
            "--history" => a.history = value.parse()?,
            other => bail!("unknown flag {other} (flags: --results N --batch N --connections N --agents N --pg ADMIN_URL --controller PATH --history N --in-process --group N --lease --interleave)"),
        }
    }
    if !(1..=lastmile_protocol::MAX_RESULTS_PER_BATCH).contains(&a.batch) {
        bail!(
            "--batch must be 1 to {}",
            lastmile_protocol::MAX_RESULTS_PER_BATCH
        );
    }
    if !(1..=250).contains(&a.agents) {
        // Each agent has its own loopback address (127.0.1.x), so that no two count as
        // one volunteer's farm behind one address.
        bail!("--agents must be 1 to 250");
    }
    Ok(a)
}

pub fn main(flags: Vec<String>) -> anyhow::Result<()> {
    let args = args(flags)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

/// One request's worth of work: an agent's token and its results.
struct Request {
    token: String,
    results: Vec<ResultSubmission>,
}

/// The leases made through `scheduling::lease` and what they cost.
#[derive(Default)]
struct LeaseCost {
    leases: usize,
    wall: Duration,
    postgres: Duration,
    own: Duration,
}

impl LeaseCost {
    /// Each agent leases its one assignment of the run just created, as the controller
    /// leases (no limit on leases in flight: each agent holds one of every run until
    /// the results are sent). Returns how many were leased.
    fn lease_run(
        &mut self,
        conn: &mut lastmile_storage::DbConn,
        agents: &[(lastmile_domain::agents::Agent, String)],
        now: i64,
    ) -> anyhow::Result<usize> {
        let (pg0, own0, t0) = (postgres_cpu(), own_cpu()?, Instant::now());
        let mut leased = 0;
        for (agent, _) in agents {
            let unbounded = lastmile_domain::agents::Agent {
                max_concurrent: i32::MAX,
                ..agent.clone()
            };
            let got = scheduling::lease(conn, &unbounded, 1, &policy(), now)?;
            leased += got.tasks.len();
        }
        self.wall += t0.elapsed();
        self.postgres += postgres_cpu().saturating_sub(pg0);
        self.own += own_cpu()?.saturating_sub(own0);
        self.leases += leased;
        Ok(leased)
    }

    fn print(&self) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / self.leases.max(1) as f64;
        println!(
            "  leases (scheduling::lease, one connection): {} in {:.1} s: {:.0} leases/s; CPU a lease: PostgreSQL {:.1} µs, this process {:.1} µs",
            self.leases,
            self.wall.as_secs_f64(),
            self.leases as f64 / self.wall.as_secs_f64().max(1e-9),
            per(self.postgres),
            per(self.own),
        );
    }
}

/// This process's CPU time so far.
fn own_cpu() -> anyhow::Result<Duration> {
    Ok(usage(std::process::id())?.cpu)
}

/// Creates the runs and leases their assignments, in the controller's database; returns
/// the requests to send.
fn prepare(db: &Db, args: &Args) -> anyhow::Result<Vec<Request>> {
    let mut conn = db.conn()?;
    let (_, check, agents) = fixture_with_tokens(&mut conn, args.agents)?;
    if args.history > 0 {
        let ids: Vec<String> = agents.iter().map(|(a, _)| a.id.clone()).collect();
        prefill_history(&mut conn, &check, &ids, args.history)?;
    }
    let runs = args.results.div_ceil(args.agents);
    // Each run's assignments are leased as soon as it exists: the i-th to the i-th agent
    // (an agent never holds two of one run), for an hour. Left pending while the other
    // runs were made (tens of seconds with a long history), they were re-offered by the
    // controller's scheduler (`offer_timeout_s`), whose updates deadlocked with this
    // one now and then.
    let mut leased = 0;
    let mut leasing = LeaseCost::default();
    for _ in 0..runs {
        let run = scheduling::create_run(&mut conn, &check, &policy(), clock::now_us())?;
        let now = clock::now_us();
        if args.lease {
            leased += leasing.lease_run(&mut conn, &agents, now)?;
            continue;
        }
        leased += diesel::sql_query(format!(
            "UPDATE assignments SET state = 'leased', agent_id = pick.agent_id, leased_at = {now}, \
             lease_expires_at = {} \
             FROM (SELECT a.id AS assignment_id, g.id AS agent_id FROM \
                     (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS k \
                      FROM assignments WHERE state = 'pending' AND run_id = '{}') a \
                   JOIN (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS k FROM agents) g \
                   ON g.k = a.k) pick \
             WHERE assignments.id = pick.assignment_id",
            now + 3_600_000_000,
            run.id
        ))
        .execute(&mut *conn)?;
        // And their open rows, as a lease writes them.
        diesel::sql_query(format!(
            "UPDATE open_assignments SET state = a.state, agent_id = a.agent_id, \
             lease_expires_at = a.lease_expires_at \
             FROM assignments a \
             WHERE open_assignments.run_id = '{}' AND a.id = open_assignments.assignment_id",
            run.id
        ))
        .execute(&mut *conn)?;
    }
    let tokens: BTreeMap<String, String> = agents
        .into_iter()
        .map(|(agent, token)| (agent.id, token))
        .collect();
    let held: Vec<(String, Option<String>)> = open_assignments::table
        .filter(open_assignments::state.eq("leased"))
        .order(open_assignments::assignment_id)
        .limit(args.results as i64)
        .select((open_assignments::assignment_id, open_assignments::agent_id))
        .load(&mut *conn)?;
    let mut per_agent: BTreeMap<String, Vec<ResultSubmission>> = BTreeMap::new();
    for (i, (id, agent)) in held.into_iter().enumerate() {
        let agent = agent.context("a leased assignment without agent")?;
        per_agent.entry(agent).or_default().push(ResultSubmission {
            assignment_id: id.parse()?,
            started_at: chrono::Utc::now(),
            measurement: measurement(i),
        });
    }
    let mut by_agent: Vec<Vec<Request>> = Vec::new();
    for (agent, mut subs) in per_agent {
        let token = tokens.get(&agent).context("an agent without token")?;
        let mut own = Vec::new();
        while !subs.is_empty() {
            let rest = subs.split_off(subs.len().min(args.batch));
            own.push(Request {
                token: token.clone(),
                results: std::mem::replace(&mut subs, rest),
            });
        }
        by_agent.push(own);
    }
    let requests: Vec<Request> = if args.interleave {
        let rounds = by_agent.iter().map(Vec::len).max().unwrap_or(0);
        let mut lists: Vec<std::vec::IntoIter<Request>> =
            by_agent.into_iter().map(Vec::into_iter).collect();
        let mut requests = Vec::new();
        for _ in 0..rounds {
            requests.extend(lists.iter_mut().filter_map(Iterator::next));
        }
        requests
    } else {
        by_agent.into_iter().flatten().collect()
    };
    if args.lease {
        leasing.print();
    }
    println!(
        "  set up: {} agents, {runs} runs, {leased} assignments leased, {} requests of up to {} results",
        args.agents,
        requests.len(),
        args.batch
    );
    Ok(requests)
}

/// Stores `n` results of `check` by `agents`, received over the last 60 days, each
/// paid in a ledger transaction of 50 (as the fold pays), with the postings' running
/// balances moved to match, and the runs they were measured in (100 results a run,
/// settled), their planned agents and their assignments (done): the history a
/// long-running controller has, so the bench shows whether accepting (and the leases
/// of its set-up) costs more as history grows. PostgreSQL only (generated in
/// SQL; foreign key checks off for this session, the rows being made consistent by hand).
fn prefill_history(
    conn: &mut lastmile_storage::DbConn,
    check: &lastmile_domain::checks::Check,
    agents: &[String],
    n: usize,
) -> anyhow::Result<()> {
    use diesel::connection::SimpleConnection;
    use lastmile_billing::ledger::{Account, AccountKind};
    use lastmile_billing::Currency;
    if !matches!(conn, lastmile_storage::DbConn::Pg(_)) {
        bail!("--history needs --pg");
    }
    let started = Instant::now();
    const DAYS: i64 = 60;
    let day = lastmile_domain::rollups::DAY_US;
    let now = clock::now_us();
    for d in (0..DAYS).step_by(3) {
        lastmile_domain::retention::prepare_days(conn, now - (DAYS - d) * day)?;
    }
    let volunteer: String = lastmile_storage::schema::agents::table
        .find(&agents[0])
        .select(lastmile_storage::schema::agents::volunteer_id)
        .first(conn)?;
    let owner_account = Account::owner_credit(&check.owner_id, Currency::USD);
    let volunteer_account = Account::volunteer_earnings(&volunteer, Currency::USD);
    let platform_account = Account::platform(AccountKind::PlatformRevenue, Currency::USD);
    let agent_list = agents
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(",");
    let k = agents.len();
    let (check_id, batches) = (&check.id, n.div_ceil(50));
    let account_row = |a: &Account| {
        format!(
            "('{}', '{}', {}, '{}', {now}, 0)",
            a.id(),
            a.kind.as_str(),
            a.holder
                .as_ref()
                .map_or("NULL".to_owned(), |h| format!("'{h}'")),
            a.currency
        )
    };
    // Each result pays 5 cents: 4 to the volunteer, 1 to the platform.
    conn.batch_execute(&format!(
        "SET session_replication_role = replica;
         INSERT INTO ledger_accounts (id, kind, holder, currency, created_at, balance_minor) VALUES {}, {}
           ON CONFLICT (id) DO NOTHING;
         INSERT INTO results (assignment_id, run_id, check_id, agent_id, received_at, started_at, late, status,
             bytes, error_kind, error_message, dns_us, connect_us, tls_us, ttfb_us, transfer_us, total_us,
             country, region, asn, connection_class, remote_addr, ip_version, http_version, bytes_decoded,
             redirects, redirect_us, flagged)
         SELECT 'history-' || g, 'history-run-' || (g / 100), '{check_id}', (ARRAY[{agent_list}])[1 + g % {k}],
             {now} - 3600000000 - g::BIGINT * ({span} / {n}), {now} - 3600000000 - g::BIGINT * ({span} / {n}) - 900000,
             false, 200, 20000 + g % 5000, NULL, NULL, 1000 + g % 900, 9000 + g % 3000, 20000 + g % 7000,
             45000 + g % 20000, 3000 + g % 9000, 80000 + g % 40000, 'DE', 'BE', 64500 + g % 400, 'dsl',
             '2001:db8::' || (g % 1000), 6, '2', 60000, 0, 0, false
         FROM generate_series(1, {n}) g;
         INSERT INTO runs (id, check_id, created_at, deadline_at, eligible_agents, requested,
             settled_at, settled_done, settled_expired, settled_flagged)
         SELECT 'history-run-' || r, '{check_id}', t - 900000000, t + 300000000, 100, 100, t + 300000000, 100, 0, 0
         FROM (SELECT r, {now} - 3600000000 - (r * 100)::BIGINT * ({span} / {n}) AS t
               FROM generate_series(0, {n} / 100) r) x;
         INSERT INTO assignments (id, run_id, check_id, attempt, state, agent_id, created_at, leased_at, lease_expires_at)
         SELECT 'history-' || g, 'history-run-' || (g / 100), '{check_id}', 1, 'done', (ARRAY[{agent_list}])[1 + g % {k}],
             t - 900000000, t - 900000000, t + 120000000
         FROM (SELECT g, {now} - 3600000000 - g::BIGINT * ({span} / {n}) AS t FROM generate_series(1, {n}) g) x
         ON CONFLICT DO NOTHING;
         INSERT INTO run_agents (run_id, agent_id, deadline_at)
         SELECT 'history-run-' || (g / 100), (ARRAY[{agent_list}])[1 + g % {k}], {now} - 3600000000 - g::BIGINT * ({span} / {n}) + 300000000
         FROM generate_series(1, {n}) g
         ON CONFLICT DO NOTHING;
         INSERT INTO ledger_transactions (id, event_key, kind, memo, created_at)
         SELECT 'history-tx-' || b, 'history-results-' || b, 'result', 'history', {now} - b::BIGINT * ({span} / {batches})
         FROM generate_series(0, {batches} - 1) b;
         INSERT INTO ledger_postings (transaction_id, account_id, amount_minor)
         SELECT 'history-tx-' || b, a.id, a.per_result * LEAST(50, {n} - b * 50)
         FROM generate_series(0, {batches} - 1) b,
              (VALUES ('{owner}', -5), ('{volunteer_id}', 4), ('{platform}', 1)) AS a(id, per_result);
         INSERT INTO result_payments (assignment_id, transaction_id, price_minor)
         SELECT 'history-' || g, 'history-tx-' || ((g - 1) / 50), 5 FROM generate_series(1, {n}) g;
         UPDATE ledger_accounts SET balance_minor = balance_minor + {n} * -5 WHERE id = '{owner}';
         UPDATE ledger_accounts SET balance_minor = balance_minor + {n} * 4 WHERE id = '{volunteer_id}';
         UPDATE ledger_accounts SET balance_minor = balance_minor + {n} * 1 WHERE id = '{platform}';
         SET session_replication_role = DEFAULT;
         ANALYZE;",
        account_row(&volunteer_account),
        account_row(&platform_account),
        span = DAYS * day,
        owner = owner_account.id(),
        volunteer_id = volunteer_account.id(),
        platform = platform_account.id(),
    ))?;
    let problems = lastmile_billing::ledger::audit(conn)?;
    if !problems.is_empty() {
        bail!("the prefilled history does not balance: {problems:?}");
    }
    println!(
        "  history: {n} results over {DAYS} days with their runs, assignments and {batches} ledger transactions, stored in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // A database that grew over 60 days has been vacuumed as it grew; one loaded in a
    // few minutes has not, and autovacuum would work through the 10M fresh rows (and
    // the first reads set their hint bits) during the measurement. Vacuumed here, the
    // measurement is of the steady state. (VACUUM runs outside a transaction block.)
    // Likewise its pages were written out by checkpoints as it grew; loaded in minutes,
    // gigabytes of them are still dirty, and the checkpoint that writes them (due
    // `checkpoint_timeout` after the load began) fell into the measurement and made
    // every page the ingest touched first log a full image of itself.
    let vacuum = Instant::now();
    conn.batch_execute("VACUUM (ANALYZE)")?;
    conn.batch_execute("CHECKPOINT")?;
    println!(
        "  vacuumed, analysed and checkpointed, as a database that grew would be, in {:.0} s",
        vacuum.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the senders saw.
struct Seen {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    accepted: u64,
}

async fn send(addr: std::net::SocketAddr, queue: Arc<Mutex<Vec<Request>>>, seen: Arc<Mutex<Seen>>) {
    let mut conn = Connection::new(addr);
    // Bounded by the queue: each turn takes one request out of it.
    loop {
        let Some(request) = queue.lock().map(|mut q| q.pop()).ok().flatten() else {
            return;
        };
        conn.token = Some(request.token);
        let started = Instant::now();
        let outcome: Result<u64, String> = if let [one] = request.results.as_slice() {
            conn.post::<_, ResultAck>("/api/v1/results", one)
                .await
                .map(|_| 1)
                .map_err(|e| e.to_string())
        } else {
            let batch = ResultBatch {
                results: request.results,
            };
            conn.post::<_, ResultBatchAck>("/api/v1/results/batch", &batch)
                .await
                .map(|ack| {
                    ack.results
                        .iter()
                        .filter(|o| o.disposition.is_some())
                        .count() as u64
                })
                .map_err(|e| e.to_string())
        };
        let took = started.elapsed();
        if let Ok(mut seen) = seen.lock() {
            let _ = seen.latency_us.record(took.as_micros() as u64);
            match outcome {
                Ok(n) => seen.accepted += n,
                Err(e) => {
                    *seen
                        .errors
                        .entry(e.chars().take(120).collect())
                        .or_default() += 1
                }
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let backend = if args.pg.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "Lastmile ingest benchmark over HTTP ({backend}): {} results, {} per request, {} connections\n",
        args.results, args.batch, args.connections
    );
    let (mut controller, _) =
        ControllerProcess::start(args.controller.as_deref(), args.pg.as_deref(), "ingest")?;
    let url = match &controller.scratch {
        Some(scratch) => scratch.url.clone(),
        None => controller
            .data_dir
            .path()
            .join("lastmile.db")
            .display()
            .to_string(),
    };
    let db = Db::open(&url, args.connections as u32 + 2)?;
    let requests = prepare(&db, &args)?;
    if args.pg.is_some() {
        // The runs and assignments were made in seconds; a running database's planner
        // knows its tables. Without this, a vacuumed history database kept statistics
        // from before the bench's 20k assignments (none) and planned the scheduler's
        // look for unclaimed assignments as a scan of all of them per run: 176 ms a
        // tick, a tenth of PostgreSQL's time during the measurement.
        // Then the set-up's dirty pages and WAL are written out, so that the measurement
        // does not pay for them, as the `COPY` reference does not pay for the accept's.
        diesel::connection::SimpleConnection::batch_execute(
            &mut *db.conn()?,
            "ANALYZE runs; ANALYZE assignments; ANALYZE open_assignments; ANALYZE run_agents; \
             CHECKPOINT",
        )?;
    }
    if args.in_process {
        // Nothing else writes meanwhile: no scheduler, no background fold.
        controller.stop();
        return accept_in_process(&db, requests, &args);
    }
    let results: usize = requests.iter().map(|r| r.results.len()).sum();
    let request_count = requests.len();
    let queue = Arc::new(Mutex::new(requests));
    let seen = Arc::new(Mutex::new(Seen {
        latency_us: Histogram::new(3)?,
        errors: BTreeMap::new(),
        accepted: 0,
    }));
    let before = usage(controller.pid())?;
    let db_before = postgres_cpu();
    let started = Instant::now();
    let senders: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(send(controller.addr, queue.clone(), seen.clone())))
        .collect();
    for s in senders {
        s.await?;
    }
    let elapsed = started.elapsed();
    let after = usage(controller.pid())?;
    let db_cpu = postgres_cpu().saturating_sub(db_before);
    let mut conn = db.conn()?;
    let left = count_sql(
        &mut conn,
        "SELECT CAST(COALESCE(SUM(results), 0) AS BIGINT) AS n FROM fold_queue",
    )?;
    let folded = count_sql(
        &mut conn,
        "SELECT CAST(COALESCE(SUM(successes + failures), 0) AS BIGINT) AS n FROM aggregates",
    )?;
    let paid = count_sql(
        &mut conn,
        "SELECT COUNT(*) AS n FROM result_payments WHERE assignment_id NOT LIKE 'history-%'",
    )?;
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("a sender panicked"))?;
    let rate = seen.accepted as f64 / elapsed.as_secs_f64();
    let cpu = after.cpu.saturating_sub(before.cpu);
    let ms = |q: f64| seen.latency_us.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10} {:>9} {:>8}",
        "results/s",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "ctl cpu%",
        "µs/result",
        "RSS MiB",
        "pg cpu%"
    );
    println!(
        "  {:>10.0} {:>10.0} {:>10.1} {:>10.1} {:>8} {:>9.0} {:>10.0} {:>9.1} {:>8.0}",
        rate,
        request_count as f64 / elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        seen.errors.values().sum::<u64>(),
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
        cpu.as_micros() as f64 / seen.accepted.max(1) as f64,
        after.rss_kib as f64 / 1024.0,
        100.0 * db_cpu.as_secs_f64() / elapsed.as_secs_f64(),
    );
    println!(
        "  {} of {results} results acknowledged in {:.1} s; in aggregates {folded}, paid {paid}, still queued {left}",
        seen.accepted,
        elapsed.as_secs_f64()
    );
    for (error, n) in &seen.errors {
        println!("  error x{n}: {error}");
    }
    if let Some(admin) = &args.pg {
        let cpu_us = (cpu + db_cpu).as_micros() as f64 / seen.accepted.max(1) as f64;
        compare_with_copy(admin, &mut conn, rate, cpu_us, "accept over HTTP")?;
    }
    drop(controller);
    Ok(())
}

/// The in-process bench: three passes over a third of the requests each, and their
/// median, as a single pass of a second or two on a shared machine varies as much as
/// the reference does. With PostgreSQL, each pass's rows are written with a raw `COPY`
/// right after it ([`COPIES`] times, the median), and each pass is compared with its own
/// copies: a pass and its copies
/// see the host in the same moment, where a pass and a copy seconds apart each saw
/// their own share of its noise (the same build's ratio ranged 0.19-0.27x between runs
/// with a core busy, stop 45).
fn accept_in_process(db: &Db, requests: Vec<Request>, args: &Args) -> anyhow::Result<()> {
    let reference = args.pg.as_deref().map(CopyReference::create).transpose()?;
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
    };
    let (mut accepted, mut elapsed) = (0, Duration::ZERO);
    let (mut accept_db_cpu, mut accept_own_cpu) = (Duration::ZERO, Duration::ZERO);
    let (mut rates, mut copies, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut copied_rows, mut copy_db_cpu, mut copy_own_cpu) = (0, Duration::ZERO, Duration::ZERO);
    for part in thirds(requests) {
        // Each pass starts from a checkpoint, as each copy does.
        diesel::connection::SimpleConnection::batch_execute(&mut *db.conn()?, "CHECKPOINT")?;
        let since = clock::now_us();
        let (db_before, own_before) = (postgres_cpu(), own_cpu()?);
        let (n, took) = in_process(db, part, args.connections, args.group)?;
        accept_db_cpu += postgres_cpu().saturating_sub(db_before);
        accept_own_cpu += own_cpu()?.saturating_sub(own_before);
        accepted += n;
        elapsed += took;
        let rate = n as f64 / took.as_secs_f64();
        rates.push(rate);
        if let Some(reference) = &reference {
            let rows: Vec<StoredResult> = results::table
                .filter(results::received_at.ge(since))
                .select(StoredResult::as_select())
                .load(&mut *db.conn()?)?;
            // A copy of a pass's rows takes a tenth of a second or two, and back to back
            // such copies ranged 70k-121k rows/s (stop 45): each pass's reference is
            // the median of three.
            let mut pass_copies = Vec::with_capacity(COPIES);
            for _ in 0..COPIES {
                let copied = reference.copy(&rows)?;
                pass_copies.push(copied.rate);
                copied_rows += rows.len();
                copy_db_cpu += copied.postgres;
                copy_own_cpu += copied.own;
            }
            let copy_rate = median(&pass_copies);
            copies.push(copy_rate);
            ratios.push(rate / copy_rate);
        }
    }
    let per_result = |cpu: Duration| cpu.as_micros() as f64 / accepted.max(1) as f64;
    println!(
        "  in process, {} request(s) a transaction: {accepted} results accepted and folded in {:.1} s: {:.0} results/s (median of {} passes, in order: {})",
        args.group,
        elapsed.as_secs_f64(),
        median(&rates),
        rates.len(),
        listed(&rates)
    );
    // Where the time went (CPU time on a shared machine varies from run to run as
    // well, with the host's load).
    println!(
        "  CPU a result: PostgreSQL {:.1} µs, the accept path and folder (this process) {:.1} µs",
        per_result(accept_db_cpu),
        per_result(accept_own_cpu)
    );
    if reference.is_none() {
        return Ok(());
    }
    let listed_ratios: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "\n  raw COPY of each pass's rows right after it (median of {COPIES} copies each): {:.0} rows/s (median of the passes': {}); accept in process / COPY = {:.3}x (median of the passes' ratios: {})",
        median(&copies),
        listed(&copies),
        median(&ratios),
        listed_ratios.join(", ")
    );
    let per_row = |cpu: Duration| cpu.as_micros() as f64 / copied_rows.max(1) as f64;
    println!(
        "  PostgreSQL CPU a row of the COPY: {:.1} µs",
        per_row(copy_db_cpu)
    );
    let (cpu_us, copy_us) = (
        per_result(accept_db_cpu + accept_own_cpu),
        per_row(copy_db_cpu + copy_own_cpu),
    );
    println!(
        "  CPU a result: accept in process {cpu_us:.1} µs, a row of the COPY {copy_us:.1} µs (PostgreSQL and the writing process each): {:.3}x",
        copy_us / cpu_us.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// Reads back the results just accepted, writes them with a raw `COPY` and prints the
/// accept `rate` (`what`) as a ratio of it, and the CPU time a result cost the accept
/// (`cpu_us`: PostgreSQL and the process that accepted) as a ratio of a row's.
fn compare_with_copy(
    admin: &str,
    conn: &mut lastmile_storage::DbConn,
    rate: f64,
    cpu_us: f64,
    what: &str,
) -> anyhow::Result<()> {
    let rows: Vec<StoredResult> = results::table
        .filter(results::assignment_id.not_like("history-%"))
        .select(StoredResult::as_select())
        .load(conn)?;
    let (copies, db_cpu, own_cpu) = raw_copy(admin, &rows)?;
    let copy_rate = copies[copies.len() / 2];
    println!(
        "\n  raw COPY of the same {} rows: {copy_rate:.0} rows/s (median of {}: {}); {what} / COPY = {:.3}x",
        rows.len(),
        copies.len(),
        listed(&copies),
        rate / copy_rate
    );
    let per_row =
        |cpu: Duration| cpu.as_micros() as f64 / (copies.len() * rows.len()).max(1) as f64;
    println!(
        "  PostgreSQL CPU a row of the COPY: {:.1} µs",
        per_row(db_cpu)
    );
    // The rate ratio leans on the accept using both cores (its writers, the folder and
    // their PostgreSQL backends) where the `COPY` is one stream: on a machine whose
    // cores are taken by other work it falls towards this one (stop 43: 0.29-0.35x
    // with the two cores free, 0.20-0.27x with a busy loop on one of them, this ratio
    // 0.21-0.22x either way; stop 44: 0.38-0.42x free, 0.26-0.33x loaded, this ratio
    // 0.24-0.29x free and 0.23-0.25x loaded).
    let copy_us = per_row(db_cpu + own_cpu);
    println!(
        "  CPU a result: {what} {cpu_us:.1} µs, a row of the COPY {copy_us:.1} µs (PostgreSQL and the writing process each): {:.3}x",
        copy_us / cpu_us.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// Rates as the bench prints them beside their median: `18600, 18737, 19745`.
fn listed(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `requests` in three parts of (nearly) the same size, in order.
fn thirds(mut requests: Vec<Request>) -> Vec<Vec<Request>> {
    let size = requests.len().div_ceil(3).max(1);
    let mut parts = Vec::new();
    while !requests.is_empty() {
        let rest = requests.split_off(size.min(requests.len()));
        parts.push(std::mem::replace(&mut requests, rest));
    }
    parts
}

/// The requests' results through `ingest::accept_many` on `threads` threads, `group`
/// requests a transaction, with the folder beside them; returns the results accepted
/// and the time until they were all folded.
fn in_process(
    db: &Db,
    requests: Vec<Request>,
    threads: usize,
    group: usize,
) -> anyhow::Result<(usize, std::time::Duration)> {
    let mut conn = db.conn()?;
    let mut agents: BTreeMap<String, lastmile_domain::agents::Agent> = BTreeMap::new();
    let mut work = Vec::with_capacity(requests.len());
    for request in requests {
        if !agents.contains_key(&request.token) {
            let agent = lastmile_domain::agents::agent_by_token(&mut conn, &request.token)?
                .context("a request's agent is not enrolled")?;
            agents.insert(request.token.clone(), agent);
        }
        work.push((agents[&request.token].clone(), request.results));
    }
    drop(conn);
    let queue = Mutex::new(work);
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let writers = std::sync::atomic::AtomicUsize::new(threads);
    // Handed from the writers to the folder in memory, as the controller does.
    let handoff = ingest::Handoff::default();
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let (queue, accepted, writers, handoff) = (&queue, &accepted, &writers, &handoff);
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || -> anyhow::Result<()> {
                    let outcome = (|| -> anyhow::Result<()> {
                        let mut conn = db.conn()?;
                        // Bounded by the queue: each turn takes up to `group` requests.
                        loop {
                            let turn: Vec<(lastmile_domain::agents::Agent, Vec<_>)> = queue
                                .lock()
                                .map(|mut q| {
                                    let keep = q.len().saturating_sub(group);
                                    q.split_off(keep)
                                })
                                .unwrap_or_default();
                            if turn.is_empty() {
                                return Ok(());
                            }
                            let batch: Vec<ingest::Request> = turn
                                .iter()
                                .map(|(agent, subs)| ingest::Request { agent, subs })
                                .collect();
                            let answers = ingest::accept_many(&mut conn, &batch, Some(handoff))?;
                            let n = answers
                                .iter()
                                .flatten()
                                .flatten()
                                .filter(|a| a.is_ok())
                                .count();
                            accepted.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                        }
                    })();
                    writers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    outcome
                })
            })
            .collect();
        let folder = s.spawn(move || fold_until_written(db, writers, Some(handoff)));
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("an accepting thread panicked"))??;
        }
        folder
            .join()
            .map_err(|_| anyhow::anyhow!("the folder panicked"))??;
        Ok(())
    })?;
    Ok((accepted.into_inner(), started.elapsed()))
}

/// The `results` table of a fresh, migrated database, which copies of accepted rows
/// are written into with one raw `COPY` each.
struct CopyReference {
    // The scratch database outlives the connection to it (fields drop in order).
    db: Db,
    _scratch: ScratchPg,
}

/// One raw `COPY` of rows: how fast, and the CPU time PostgreSQL and this process
/// (writing the rows) spent on it.
struct Copied {
    rate: f64,
    postgres: Duration,
    own: Duration,
}

impl CopyReference {
    fn create(admin: &str) -> anyhow::Result<CopyReference> {
        let scratch = ScratchPg::create(admin, "copy")?;
        let db = Db::open(&scratch.url, 1)?;
        let mut conn = db.conn()?;
        let lastmile_storage::DbConn::Pg(pg) = &mut *conn else {
            bail!("the COPY database is not PostgreSQL");
        };
        // The rows alone, with the table's indexes but without its foreign keys (the
        // runs, checks and agents they point to are not in this database).
        diesel::connection::SimpleConnection::batch_execute(
            pg,
            "DO $$ DECLARE c record; BEGIN \
               FOR c IN SELECT conname FROM pg_constraint \
                        WHERE conrelid = 'results'::regclass AND contype = 'f' LOOP \
                 EXECUTE format('ALTER TABLE results DROP CONSTRAINT %I', c.conname); \
               END LOOP; END $$;",
        )?;
        // No autovacuum here: on a server that runs it (the default; this machine's CI
        // configuration turns it off), a copy's rows would have the partitions they
        // land in analyzed while the next accept pass runs, on its cores and in its
        // CPU time.
        diesel::connection::SimpleConnection::batch_execute(
            pg,
            "DO $$ DECLARE p record; BEGIN \
               FOR p IN SELECT inhrelid::regclass AS part FROM pg_inherits \
                        WHERE inhparent = 'results'::regclass LOOP \
                 EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = false)', p.part); \
               END LOOP; END $$;",
        )?;
        drop(conn);
        Ok(CopyReference {
            db,
            _scratch: scratch,
        })
    }

    /// Writes `rows` into the emptied table with one `COPY`.
    fn copy(&self, rows: &[StoredResult]) -> anyhow::Result<Copied> {
        let mut conn = self.db.conn()?;
        let lastmile_storage::DbConn::Pg(pg) = &mut *conn else {
            bail!("the COPY database is not PostgreSQL");
        };
        // The accept's dirty pages and WAL are written out first: flushed while the
        // copy ran, they slowed the reference by what the accept path wrote, and a
        // heavier accept path then looked better against it.
        diesel::connection::SimpleConnection::batch_execute(pg, "TRUNCATE results; CHECKPOINT")?;
        let (db_before, own_before) = (postgres_cpu(), own_cpu()?);
        let started = Instant::now();
        diesel::copy_from(results::table)
            .from_raw_data(results::table, |out| {
                rows.iter()
                    .try_for_each(|r| csv_row(r, out))
                    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
            })
            .with_format(diesel::pg::CopyFormat::Csv)
            .execute(pg)?;
        let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
        Ok(Copied {
            rate,
            postgres: postgres_cpu().saturating_sub(db_before),
            own: own_cpu()?.saturating_sub(own_before),
        })
    }
}

/// Writes `rows` into the `results` table of a fresh, migrated database with one `COPY`,
/// [`COPIES`] times (emptied in between); returns each copy's rows per second, slowest
/// first, and the CPU time PostgreSQL and this process (writing the rows) spent on them.
fn raw_copy(admin: &str, rows: &[StoredResult]) -> anyhow::Result<(Vec<f64>, Duration, Duration)> {
    let reference = CopyReference::create(admin)?;
    // A single copy of a few tenths of a second into a database just created varied
    // from 56k to 104k rows/s between runs: the reference is the median of three, the
    // table emptied between them.
    let mut rates = Vec::with_capacity(COPIES);
    let (mut db_cpu, mut own) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..COPIES {
        let copied = reference.copy(rows)?;
        rates.push(copied.rate);
        db_cpu += copied.postgres;
        own += copied.own;
    }
    rates.sort_by(f64::total_cmp);
    Ok((rates, db_cpu, own))
}

/// Raw copies of the rows whose median is the reference.
const COPIES: usize = 3;

/// One result as a CSV line in the `results` table's column order (an empty unquoted
/// field is NULL; text is quoted).
fn csv_row(r: &StoredResult, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    fn text(s: &str) -> String {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
    fn opt<T: ToString>(v: &Option<T>) -> String {
        v.as_ref().map(ToString::to_string).unwrap_or_default()
    }
    let opt_text = |v: &Option<String>| v.as_deref().map(text).unwrap_or_default();
    let fields = [
        text(&r.assignment_id),
        text(&r.run_id),
        text(&r.check_id),
        text(&r.agent_id),
        r.received_at.to_string(),
        r.started_at.to_string(),
        r.late.to_string(),
        opt(&r.status),
        r.bytes.to_string(),
        opt_text(&r.error_kind),
        opt_text(&r.error_message),
        r.dns_us.to_string(),
        r.connect_us.to_string(),
        r.tls_us.to_string(),
        r.ttfb_us.to_string(),
        r.transfer_us.to_string(),
        r.total_us.to_string(),
        text(&r.country),
        text(&r.region),
        r.asn.to_string(),
        text(&r.connection_class),
        opt_text(&r.remote_addr),
        opt(&r.ip_version),
        opt_text(&r.http_version),
        r.bytes_decoded.to_string(),
        r.redirects.to_string(),
        r.redirect_us.to_string(),
        opt_text(&r.page),
        "false".to_owned(),
        opt_text(&r.redirect_hops),
        opt_text(&r.figures),
    ];
    writeln!(out, "{}", fields.join(","))
}
