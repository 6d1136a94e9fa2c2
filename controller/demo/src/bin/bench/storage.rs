//! `bench [storage]`: the storage benchmarks.
//!
//! Prints two tables:
//! 1. results ingested per second on each backend (the full accept path: writer
//!    threads accept results one per transaction as single submissions do, a folder
//!    thread folds them into aggregates and pays for them in batches, timed until all
//!    are folded);
//! 2. on PostgreSQL, a 30-day SLA report over ≥ 1M results (210 cells an hour: 5
//!    countries, 3 regions, 7 networks, 6 classes) built from the aggregates, the
//!    complete days rolled up into day cells first (with confidence intervals; then
//!    also with three objectives and `compare=previous`), against the same
//!    percentiles computed by `percentile_cont` over the raw rows; and where the
//!    report's time goes (reading cells, merging them), beside merging every hour
//!    cell by decoding each, as reports did before day cells and `Merger`.
//!
//! Flags: `--results N` (ingest, default 20000; 0 skips it), `--raw-rows N` (report,
//! default 1000000, spread over 30 days), `--threads N` (default 4), `--pg URL` (admin
//! URL; a scratch database is created and dropped). Nothing here is a test: it prints
//! figures.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};
use hdrhistogram::Histogram;
use lastmile_domain::check_terms::Selection;
use lastmile_domain::checks::{self, NewCheck, Schedule};
use lastmile_domain::ingest::{self, StoredResult};
use lastmile_domain::reports::{self, Dimension, ReportQuery};
use lastmile_domain::scheduling::{self, SchedulingPolicy};
use lastmile_domain::{accounts, agents, clock, histogram};
use lastmile_protocol::{
    CheckKind, ConnectionClass, EnrolRequest, Heartbeat, Measurement, Phase, ResultSubmission,
    Timings,
};
use lastmile_storage::schema::{agents as agents_t, aggregates, results, sites};
use lastmile_storage::{Db, DbConn};

struct Args {
    results: usize,
    raw_rows: i64,
    threads: usize,
    pg: String,
}

fn args(flags: Vec<String>) -> anyhow::Result<Args> {
    let mut a = Args {
        results: 20_000,
        raw_rows: 1_000_000,
        threads: 4,
        pg: DEFAULT_PG.into(),
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--results" => a.results = value.parse()?,
            "--raw-rows" => a.raw_rows = value.parse()?,
            "--threads" => a.threads = value.parse()?,
            "--pg" => a.pg = value,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// A scratch PostgreSQL database, dropped at the end.
/// The PostgreSQL admin URL the benches use unless `--pg` says otherwise.
pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct ScratchPg {
    admin: String,
    name: String,
    pub url: String,
}

impl ScratchPg {
    pub fn create(admin: &str, purpose: &str) -> anyhow::Result<ScratchPg> {
        let name = format!("lastmile_bench_{purpose}_{}", std::process::id());
        let mut conn = PgConnection::establish(admin)?;
        conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))?;
        conn.batch_execute(&format!("CREATE DATABASE {name}"))?;
        // The admin URL with the scratch database's name, keeping its parameters (e.g.
        // `?sslmode=disable`).
        let (path, query) = admin.split_once('?').unwrap_or((admin, ""));
        let base = path
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or_default();
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        Ok(ScratchPg {
            admin: admin.to_owned(),
            url: format!("{base}/{name}{query}"),
            name,
        })
    }
}

impl Drop for ScratchPg {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&self.admin) {
            let _ = conn.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// What [`fixture_with_tokens`] sets up: the owner's id, the check, and the agents
/// with their tokens.
pub type Fixture = (
    String,
    lastmile_domain::checks::Check,
    Vec<(agents::Agent, String)>,
);

/// An owner with plenty of credit (and its API token), a verified site and an `http`
/// check of it that asks for `agents_per_run` agents a run.
pub fn owner_with_check(
    conn: &mut DbConn,
    agents_per_run: usize,
) -> anyhow::Result<(accounts::Owner, String, lastmile_domain::checks::Check)> {
    let (owner, token) = accounts::create_owner(conn, "bench")?;
    // Enough credit that no run is refused for money.
    lastmile_domain::billing::grant_credit(
        conn,
        &owner.id,
        lastmile_billing::Money::new(1_000_000_000, lastmile_billing::Currency::USD),
        &format!("bench-{}", owner.id),
    )?;
    let site_id = verified_site(conn, &owner.id)?;
    let check = checks::create(
        conn,
        &owner.id,
        &bench_check(&site_id, "bench", agents_per_run)?,
        1,
    )?;
    Ok((owner, token, check))
}

/// A site of the owner's, marked verified (the bench's target is never fetched).
pub fn verified_site(conn: &mut DbConn, owner_id: &str) -> anyhow::Result<String> {
    let site = lastmile_domain::sites::create(
        conn,
        owner_id,
        &lastmile_domain::sites::NewSite {
            origin: "https://bench.example".into(),
        },
    )?;
    diesel::update(sites::table.find(&site.id))
        .set(sites::verified_at.eq(clock::now_us()))
        .execute(conn)?;
    Ok(site.id)
}

/// An http check of the bench's site, run once (a schedule is the caller's).
pub fn bench_check(site_id: &str, name: &str, agents_per_run: usize) -> anyhow::Result<NewCheck> {
    Ok(NewCheck {
        site_id: site_id.parse()?,
        name: Some(name.into()),
        url: "https://bench.example/".into(),
        kind: CheckKind::Http,
        throughput: None,
        video: None,
        udp: None,
        expected_status: vec![],
        max_bytes: None,
        timeout_ms: None,
        selection: Selection {
            agents_per_run: agents_per_run.max(1) as u32,
            ..Selection::default()
        },
        schedule: Schedule::default(),
        body_contains: None,
        max_redirects: None,
        isp_sharing: false,
        objectives: Vec::new(),
    })
}

/// An owner, a verified site, a check and `agents` online, calibrated agents with their
/// tokens.
pub fn fixture_with_tokens(conn: &mut DbConn, agents_n: usize) -> anyhow::Result<Fixture> {
    let (owner, _, check) = owner_with_check(conn, agents_n)?;
    let (_, key) = accounts::create_volunteer(conn, "bench")?;
    let countries = ["DE", "US", "BR", "FR", "JP"];
    let mut list = Vec::new();
    for i in 0..agents_n {
        let class = ConnectionClass::ALL[i % ConnectionClass::ALL.len()];
        let location = lastmile_protocol::Location {
            country: Some(countries[i % countries.len()].into()),
            asn: Some(64_500 + (i % 7) as u32),
            ..Default::default()
        };
        let ip: std::net::IpAddr = format!("127.0.1.{}", i % 250 + 1).parse()?;
        let enrolled = agents::enrol(
            conn,
            &EnrolRequest {
                enrol_key: key.clone(),
                name: format!("a{i}"),
                declared_class: class,
                version: "bench".into(),
            },
            ip,
            &location,
        )?;
        let id = enrolled.agent_id.to_string();
        agents::heartbeat(
            conn,
            &id,
            &Heartbeat {
                declared_class: class,
                version: "bench".into(),
                limits: lastmile_protocol::AgentLimits { max_concurrent: 64 },
                paused: None,
                kinds: lastmile_protocol::CheckKind::ALL.to_vec(),
                path_trace: false,
            },
            ip,
            &location,
            90_000_000,
            None,
            clock::now_us(),
        )?;
        record_fast_lines(conn, std::slice::from_ref(&id))?;
        let agent =
            agents::agent_by_token(conn, &enrolled.token)?.context("agent just enrolled")?;
        list.push((agent, enrolled.token));
    }
    Ok((owner.id, check, list))
}

/// Runs plan only agents whose line the controller has measured: records for `ids` a
/// calibration as the controller would (their declared class, and a fast line so that
/// no line rule flags the bench's results), without the pings and transfers behind it.
pub fn record_fast_lines(conn: &mut DbConn, ids: &[String]) -> anyhow::Result<()> {
    let now = clock::now_us();
    for chunk in ids.chunks(1_000) {
        diesel::update(agents_t::table.filter(agents_t::id.eq_any(chunk)))
            .set((
                agents_t::measured_class.eq(agents_t::declared_class.nullable()),
                agents_t::calibrated_at.eq(now),
                agents_t::rtt_us.eq(1_000),
                agents_t::down_bps.eq(1_000_000_000),
                agents_t::up_bps.eq(100_000_000),
                agents_t::changed_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// [`fixture_with_tokens`] without the tokens.
fn fixture(
    conn: &mut DbConn,
    agents_n: usize,
) -> anyhow::Result<(String, lastmile_domain::checks::Check, Vec<agents::Agent>)> {
    let (owner, check, list) = fixture_with_tokens(conn, agents_n)?;
    Ok((owner, check, list.into_iter().map(|(a, _)| a).collect()))
}

pub fn policy() -> SchedulingPolicy {
    SchedulingPolicy {
        lease_us: 3_600_000_000,
        online_window_us: 3_600_000_000,
        max_attempts: 3,
        run_deadline_us: 3_600_000_000,
        offer_us: 3_600_000_000,
    }
}

pub fn measurement(i: usize) -> Measurement {
    // dns + connect + ttfb + transfer stay within the total, as a real measurement's do.
    let total = 40_000 + (i as u64 * 7919) % 400_000;
    Measurement {
        status: Some(200),
        bytes: 8192,
        error: None,
        timings_us: Timings {
            dns: 1_000,
            connect: 5_000,
            tls: 0,
            ttfb: total / 2,
            transfer: total / 3,
            total,
        },
        ..Measurement::default()
    }
}

/// The folder, as the controller runs it: folds batches while results arrive, until
/// no writer is left (`writers` counts them down) and the queue is empty.
pub fn fold_until_written(
    db: &Db,
    writers: &std::sync::atomic::AtomicUsize,
    handoff: Option<&ingest::Handoff>,
) -> anyhow::Result<()> {
    let mut conn = db.conn()?;
    // As the controller's folder keeps them.
    let run_terms = lastmile_domain::billing::RunTermsCache::default();
    // Bounded by the writers: once none is left, the queue only empties.
    loop {
        let writing = writers.load(std::sync::atomic::Ordering::SeqCst) > 0;
        let folded =
            ingest::fold_pending(&mut conn, ingest::FOLD_BATCH, handoff, Some(&run_terms))?;
        if folded.results + folded.missing == 0 {
            if !writing {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Ingest benchmark: returns results per second.
fn bench_ingest(db: &Db, results: usize, threads: usize) -> anyhow::Result<f64> {
    const AGENTS: usize = 50;
    let mut conn = db.conn()?;
    let (_, check, agent_list) = fixture(&mut conn, AGENTS)?;
    // Set up: runs and leases (not timed).
    let runs = results.div_ceil(AGENTS);
    let mut work: Vec<(agents::Agent, ResultSubmission)> = Vec::with_capacity(runs * AGENTS);
    for _ in 0..runs {
        scheduling::create_run(&mut conn, &check, &policy(), clock::now_us())?;
        for agent in &agent_list {
            for task in scheduling::lease(&mut conn, agent, 1, &policy(), clock::now_us())?.tasks {
                let i = work.len();
                work.push((
                    agent.clone(),
                    ResultSubmission {
                        assignment_id: task.assignment_id,
                        started_at: chrono::Utc::now(),
                        measurement: measurement(i),
                    },
                ));
            }
        }
    }
    drop(conn);
    work.truncate(results);
    let n = work.len();
    let chunks: Vec<Vec<(agents::Agent, ResultSubmission)>> = {
        let mut c: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, w) in work.into_iter().enumerate() {
            c[i % threads].push(w);
        }
        c
    };
    let started = Instant::now();
    let submitting = std::sync::atomic::AtomicUsize::new(threads);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let submitting = &submitting;
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || -> anyhow::Result<()> {
                    let mut conn = db.conn()?;
                    let outcome = chunk.iter().try_for_each(|(agent, sub)| {
                        ingest::submit(&mut conn, agent, sub).map(|_| ())
                    });
                    submitting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(outcome?)
                })
            })
            .collect();
        let folder = s.spawn(move || fold_until_written(db, submitting, None));
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
        }
        folder
            .join()
            .map_err(|_| anyhow::anyhow!("folder thread panicked"))??;
        Ok(())
    })?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[derive(QueryableByName, Debug)]
struct RawPercentiles {
    #[diesel(sql_type = Text)]
    connection_class: String,
    #[diesel(sql_type = Text)]
    country: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Double)]
    p50: f64,
    #[diesel(sql_type = Double)]
    p99: f64,
}

/// Report benchmark on PostgreSQL: `rows` raw results vs their aggregates.
fn bench_report(db: &Db, rows: i64) -> anyhow::Result<()> {
    let mut conn = db.conn()?;
    let (_, check, agent_list) = fixture(&mut conn, 30)?;
    let now = clock::now_us();
    let DbConn::Pg(pg) = &mut *conn else {
        anyhow::bail!("report benchmark needs PostgreSQL");
    };
    // Raw rows: generated in the database (foreign keys off for the bulk load; the
    // benchmark reads them, it does not need them to point anywhere).
    let load = Instant::now();
    let agent_ids: Vec<String> = agent_list.iter().map(|a| format!("'{}'", a.id)).collect();
    pg.batch_execute(&format!(
        "SET session_replication_role = replica;
         INSERT INTO results (assignment_id, run_id, check_id, agent_id, received_at, started_at, late, status, bytes,
             error_kind, error_message, dns_us, connect_us, tls_us, ttfb_us, transfer_us, total_us, country, region, asn, connection_class)
         SELECT 'bench-' || g, 'bench-run', '{check}', (ARRAY[{agents}])[1 + g % {n_agents}],
             {now} - (g % 720) * 3600000000, {now} - (g % 720) * 3600000000, false, 200, 8192, NULL, NULL,
             1000, 5000, 0, (20000 + (g * 7919) % 400000) / 2, (20000 + (g * 7919) % 400000) / 3, 20000 + (g * 7919) % 400000,
             (ARRAY['DE','US','BR','FR','JP'])[1 + (g / 720) % 5], (ARRAY['N','S','E'])[1 + (g / 720) % 3],
             64500 + (g / 720) % 7, (ARRAY['dialup','satellite','mobile','dsl','cable','fibre'])[1 + (g / 720) % 6]
         FROM generate_series(1::bigint, {rows}::bigint) AS g;
         SET session_replication_role = DEFAULT;
         ANALYZE results;",
        check = check.id,
        agents = agent_ids.join(","),
        n_agents = agent_ids.len(),
    ))?;
    println!(
        "  loaded {rows} raw results in {:.1} s",
        load.elapsed().as_secs_f64()
    );

    // Aggregates: fold the same rows, as ingest would have, an hour at a time (a cell
    // is one hour; holding every cell's histograms at once would not fit in memory).
    let fold = Instant::now();
    let mut cells_written = 0usize;
    let first_hour = clock::hour_bucket(now - 720 * clock::HOUR_US);
    for hour in 0..=721i64 {
        let from = first_hour + hour * clock::HOUR_US;
        let batch: Vec<StoredResult> = results::table
            .filter(results::check_id.eq(&check.id))
            .filter(results::started_at.ge(from))
            .filter(results::started_at.lt(from + clock::HOUR_US))
            .select(StoredResult::as_select())
            .load(pg)?;
        let mut cells: BTreeMap<ingest::AggregateKey, (i64, Vec<Histogram<u64>>)> = BTreeMap::new();
        for r in &batch {
            let (successes, hists) = cells.entry(ingest::key_of(r)).or_insert_with(|| {
                (
                    0,
                    Phase::ALL
                        .iter()
                        .map(|_| histogram::new_histogram())
                        .collect(),
                )
            });
            *successes += 1;
            for (h, v) in hists.iter_mut().zip(r.phases_us()) {
                h.saturating_record(v.max(0) as u64);
            }
        }
        let rows: Vec<_> = cells
            .iter()
            .map(|(key, (successes, hists))| {
                ingest::aggregate_row(
                    key,
                    *successes,
                    0,
                    std::array::from_fn(|i| histogram::encode(&hists[i])),
                )
            })
            .collect();
        for chunk in rows.chunks(500) {
            diesel::insert_into(aggregates::table)
                .values(chunk)
                .execute(pg)?;
        }
        cells_written += rows.len();
    }
    println!(
        "  folded them into {cells_written} aggregate cells in {:.1} s",
        fold.elapsed().as_secs_f64()
    );
    let roll = Instant::now();
    let days = lastmile_domain::rollups::roll_up(&mut conn, clock::now_us())?;
    println!(
        "  rolled the complete days up into day cells: {days} days in {:.1} s",
        roll.elapsed().as_secs_f64()
    );
    drop(conn);

    let query = ReportQuery {
        from: clock::to_datetime(now - 31 * 24 * clock::HOUR_US),
        to: clock::to_datetime(now + clock::HOUR_US),
        group_by: vec![Dimension::ConnectionClass, Dimension::Country],
        confidence: Default::default(),
        histograms: false,
        bucket: None,
        compare: false,
    };
    let mut from_aggregates = Vec::new();
    let mut report = None;
    for _ in 0..5 {
        let t = Instant::now();
        let mut conn = db.conn()?;
        report = Some(reports::build(&mut conn, &check, &query)?);
        from_aggregates.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The same report with objectives judged on every row and the previous window
    // compared (intervals are always computed).
    let mut with_objectives = check.clone();
    with_objectives.objectives = serde_json::json!([
        {"phase": "ttfb", "percentile": 95, "max_ms": 200},
        {"phase": "total", "percentile": 99, "max_ms": 400},
        {"availability_min": 99.5},
    ])
    .to_string();
    let full_query = ReportQuery {
        compare: true,
        ..query.clone()
    };
    let mut full = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut conn = db.conn()?;
        reports::build(&mut conn, &with_objectives, &full_query)?;
        full.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // Where a report's time goes: reading the cells it merges.
    let t = Instant::now();
    let read = lastmile_domain::rollups::cells(
        &mut *db.conn()?,
        &check.id,
        clock::hour_bucket(now - 31 * 24 * clock::HOUR_US),
        now + clock::HOUR_US,
        lastmile_domain::rollups::Span::Week,
    )?;
    let read_ms = t.elapsed().as_secs_f64() * 1000.0;
    let read_bytes: usize = read
        .iter()
        .map(|r| Phase::ALL.iter().map(|p| r.hist(*p).len()).sum::<usize>())
        .sum();
    println!(
        "  the report reads {} cells ({} of them before today: week and day cells), {:.1} MB of histograms, in {read_ms:.1} ms",
        read.len(),
        read.iter()
            .filter(|r| r.bucket_start < lastmile_domain::rollups::day_start(now))
            .count(),
        read_bytes as f64 / 1e6
    );
    let t = Instant::now();
    let mut merger: Vec<histogram::Merger> = Phase::ALL
        .iter()
        .map(|_| histogram::Merger::new())
        .collect();
    for row in &read {
        for (m, phase) in merger.iter_mut().zip(Phase::ALL) {
            m.add_encoded(row.hist(phase)).map_err(anyhow::Error::msg)?;
        }
    }
    let merged: Vec<Histogram<u64>> = merger
        .into_iter()
        .map(|m| m.finish().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "  merging them into one histogram per phase: {:.1} ms ({} samples)",
        t.elapsed().as_secs_f64() * 1000.0,
        merged[5].len()
    );
    // What the merge itself costs: every stored histogram of the window added into
    // one per phase, by decoding each (what reports did before) and from its bytes.
    let stored: Vec<lastmile_storage::aggregates::AggregateRow> = aggregates::table
        .filter(aggregates::check_id.eq(&check.id))
        .select(lastmile_storage::aggregates::AggregateRow::as_select())
        .load(&mut *db.conn()?)?;
    let t = Instant::now();
    let mut decoded: Vec<Histogram<u64>> = Phase::ALL
        .iter()
        .map(|_| histogram::new_histogram())
        .collect();
    for row in &stored {
        for (h, phase) in decoded.iter_mut().zip(Phase::ALL) {
            h.add(histogram::decode(row.hist(phase)).map_err(anyhow::Error::msg)?)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
    }
    let by_decoding = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let mut mergers: Vec<histogram::Merger> = Phase::ALL
        .iter()
        .map(|_| histogram::Merger::new())
        .collect();
    for row in &stored {
        for (m, phase) in mergers.iter_mut().zip(Phase::ALL) {
            m.add_encoded(row.hist(phase)).map_err(anyhow::Error::msg)?;
        }
    }
    let from_bytes: Vec<Histogram<u64>> = mergers
        .into_iter()
        .map(|m| m.finish().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let by_bytes = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(decoded == from_bytes, "the two merges disagree");
    let mut from_raw = Vec::new();
    let mut raw = Vec::new();
    // percentile_cont over 10M rows takes about a minute: once is enough there.
    for _ in 0..if rows > 2_000_000 { 1 } else { 3 } {
        let t = Instant::now();
        let mut conn = db.conn()?;
        let DbConn::Pg(pg) = &mut *conn else {
            unreachable!()
        };
        raw = diesel::sql_query(
            "SELECT connection_class, country, COUNT(*) AS n,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY total_us) AS p50,
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY total_us) AS p99
             FROM results WHERE check_id = $1 AND late = false AND error_kind IS NULL
             GROUP BY connection_class, country",
        )
        .bind::<Text, _>(&check.id)
        .load::<RawPercentiles>(pg)?;
        from_raw.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let report = report.context("report built")?;
    let samples: u64 = report.rows.iter().map(|r| r.samples).sum();
    println!(
        "\n  SLA report over {samples} results ({} rows, grouped by class x country)",
        report.rows.len()
    );
    println!("  {:<34} {:>12}", "method", "median time");
    println!(
        "  {:<34} {:>9.1} ms",
        "merge aggregates (HdrHistogram)",
        median(&mut from_aggregates)
    );
    println!(
        "  {:<34} {:>9.1} ms",
        "  + 3 objectives, compare=previous",
        median(&mut full)
    );
    println!(
        "  {:<34} {:>9.1} ms",
        "percentile_cont over raw rows",
        median(&mut from_raw)
    );
    println!(
        "  merging the {} stored cells' 6 histograms: {by_decoding:.1} ms decoding each, \
         {by_bytes:.1} ms adding their bytes",
        stored.len()
    );
    // Agreement check on one row, so the comparison is of equal answers.
    if let (Some(r), Some(row)) = (
        raw.first(),
        report.rows.iter().find(|row| {
            raw.first().is_some_and(|r| {
                row.group.country.as_deref() == Some(&r.country)
                    && row.group.connection_class.map(|c| c.as_str())
                        == Some(r.connection_class.as_str())
            })
        }),
    ) {
        let agg = row
            .phases
            .get(&lastmile_protocol::Phase::Total)
            .map(|p| (p.p50, p.p99));
        println!(
            "  {}/{}: raw n={} p50={:.0} p99={:.0} us; aggregates n={} p50/p99={:?} us",
            r.connection_class, r.country, r.n, r.p50, r.p99, row.samples, agg
        );
    }
    Ok(())
}

pub fn main(flags: Vec<String>) -> anyhow::Result<()> {
    let args = args(flags)?;
    println!("Lastmile storage benchmark ({} threads)\n", args.threads);
    println!(
        "Ingest: {} results through the full accept path",
        args.results
    );
    if args.results > 0 {
        let dir = tempfile::tempdir()?;
        let sqlite = Db::open(
            &dir.path().join("bench.db").display().to_string(),
            args.threads as u32 + 1,
        )?;
        let sqlite_rate = bench_ingest(&sqlite, args.results, args.threads)?;
        let scratch = ScratchPg::create(&args.pg, "ingest")?;
        let pg = Db::open(&scratch.url, args.threads as u32 + 1)?;
        let pg_rate = bench_ingest(&pg, args.results, args.threads)?;
        println!("  {:<12} {:>14}", "backend", "results/s");
        println!("  {:<12} {:>14.0}", "sqlite", sqlite_rate);
        println!("  {:<12} {:>14.0}", "postgres", pg_rate);
    }

    println!("\nReport: aggregates vs raw rows on PostgreSQL");
    let scratch = ScratchPg::create(&args.pg, "report")?;
    let db = Db::open(&scratch.url, 4)?;
    bench_report(&db, args.raw_rows)?;
    Ok(())
}
