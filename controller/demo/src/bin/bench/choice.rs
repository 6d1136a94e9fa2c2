//! `bench choice`: what choosing a run's agents costs as the network grows.
//!
//! For each step of N online, calibrated agents (spread over 40 countries, 400
//! networks and the six classes) on each backend: creates runs of a check that asks
//! for `--per-run` agents anywhere (10), in proportion and equally, and prints the time a run's
//! creation takes (the grouped count, the picks, the rows written), the time to count
//! the eligible agents (the dashboard's live count), and how many distinct agents the
//! runs used (rotation: every run new agents while any are left). Then `--runs` checks
//! fall due at once and one scheduler pass creates their runs: the time a run takes
//! when the pass's runs share one count of the eligible agents.
//!
//! Flags: `--steps 10000,100000` (agents), `--runs N` (per step and spread, default
//! 20), `--per-run N` (agents a run, default 10), `--pg URL` (admin URL; a scratch
//! database is created and dropped).

use std::collections::HashSet;
use std::time::Instant;

use diesel::prelude::*;
use lastmile_domain::check_terms::{Selection, Spread};
use lastmile_domain::clock;
use lastmile_domain::scheduling;
use lastmile_protocol::{CheckKind, ConnectionClass};
use lastmile_storage::agents::Agent;
use lastmile_storage::schema::{checks as checks_t, run_agents};
use lastmile_storage::{Db, DbConn};

use crate::storage::{fixture_with_tokens, policy, ScratchPg};

struct Args {
    steps: Vec<usize>,
    runs: usize,
    per_run: i32,
    pg: String,
}

fn args(flags: Vec<String>) -> anyhow::Result<Args> {
    let mut args = Args {
        steps: vec![10_000, 100_000],
        runs: 20,
        per_run: 10,
        pg: crate::storage::DEFAULT_PG.to_owned(),
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--steps" => {
                args.steps = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--runs" => args.runs = value()?.parse()?,
            "--per-run" => args.per_run = value()?.parse::<i32>()?.max(1),
            "--pg" => args.pg = value()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// `n` online, calibrated agents of the fixture's volunteer, in bulk.
fn add_agents(conn: &mut DbConn, volunteer_id: &str, n: usize) -> anyhow::Result<()> {
    let now = clock::now_us();
    // Ids unique to this fill (ids are text; agents' own are UUIDs).
    let run = format!("{now:x}");
    let rows: Vec<Agent> = (0..n)
        .map(|i| {
            let class = ConnectionClass::ALL[i % ConnectionClass::ALL.len()].as_str();
            Agent {
                id: format!("bench-{run}-{i:08}"),
                volunteer_id: volunteer_id.to_owned(),
                name: format!("b{i}"),
                token_hash: format!("bench-{run}-{i:08}"),
                declared_class: class.into(),
                version: "bench".into(),
                max_concurrent: 4,
                ip: format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
                country: Some(format!("C{}", i % 40)),
                region: None,
                city: None,
                asn: Some(64_000 + (i % 400) as i64),
                as_org: None,
                enrolled_at: now,
                last_heartbeat_at: Some(now),
                measured_class: Some(class.into()),
                calibrated_at: Some(now),
                rtt_us: Some(1_000),
                down_bps: Some(1_000_000_000),
                up_bps: Some(100_000_000),
                class_mismatch: false,
                calibration_day: 0,
                calibration_bytes: 0,
                paused_reason: None,
                check_kinds: "http,page".into(),
                path_trace: false,
                changed_at: now,
                revoked_at: None,
            }
        })
        .collect();
    lastmile_storage::write_tx(conn, |c| {
        lastmile_storage::insert_rows!(c, lastmile_storage::schema::agents::table, &rows);
        Ok::<_, lastmile_storage::DbError>(())
    })?;
    Ok(())
}

fn bench(
    backend: &str,
    db: &Db,
    agents_n: usize,
    runs_n: usize,
    per_run: i32,
) -> anyhow::Result<()> {
    let mut conn = db.conn()?;
    let (_, check, _) = fixture_with_tokens(&mut conn, 0)?;
    let volunteer: String = diesel::sql_query("SELECT id FROM volunteers LIMIT 1")
        .load::<IdRow>(&mut *conn)?
        .pop()
        .map(|r| r.id)
        .unwrap_or_default();
    let started = Instant::now();
    add_agents(&mut conn, &volunteer, agents_n)?;
    if let DbConn::Pg(pg) = &mut *conn {
        diesel::sql_query("ANALYZE").execute(pg)?;
    }
    let filled = started.elapsed();
    let policy = policy();
    for spread in [Spread::Proportional, Spread::Equal] {
        diesel::update(checks_t::table.find(&check.id))
            .set((
                checks_t::agents_per_run.eq(per_run),
                checks_t::spread.eq(spread.as_str()),
            ))
            .execute(&mut *conn)?;
        let check = lastmile_storage::checks::get_any(&mut conn, &check.id)?;
        let mut times = Vec::new();
        let mut used = HashSet::new();
        for _ in 0..runs_n {
            let t = Instant::now();
            let run = scheduling::create_run(&mut conn, &check, &policy, clock::now_us())?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            let planned: Vec<String> = run_agents::table
                .filter(run_agents::run_id.eq(run.id.to_string()))
                .select(run_agents::agent_id)
                .load(&mut *conn)?;
            used.extend(planned);
        }
        times.sort_by(f64::total_cmp);
        let t = Instant::now();
        let counted = scheduling::count_eligible(
            &mut conn,
            &Selection::default(),
            CheckKind::Http,
            &policy,
            clock::now_us(),
        )?;
        let count_ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "  {backend:<9} {agents_n:>8} {:<13} {:>9.1} {:>9.1} {:>10.1} {:>8} {:>10}/{}",
            spread.as_str(),
            times[times.len() / 2],
            times[times.len() - 1],
            count_ms,
            counted,
            used.len(),
            runs_n * per_run as usize,
        );
    }
    // A scheduler pass: `runs_n` checks due at once share one census of the eligible
    // agents, as the scheduler's runs do (the runs above, made one at a time as "run
    // now" makes them, count the agents for each).
    let now = clock::now_us();
    let copies: Vec<lastmile_storage::checks::Check> = (0..runs_n)
        .map(|i| {
            let mut c = check.clone();
            c.id = format!("{}-due-{i}", check.id);
            c.next_run_at = Some(now - 1);
            c.interval_s = Some(300);
            c.spread = Spread::Proportional.as_str().to_owned();
            c.agents_per_run = per_run;
            c
        })
        .collect();
    lastmile_storage::write_tx(&mut conn, |c| {
        lastmile_storage::insert_rows!(c, checks_t::table, &copies);
        Ok::<_, lastmile_storage::DbError>(())
    })?;
    let t = Instant::now();
    let made = scheduling::run_due_checks(&mut conn, &policy, now)?;
    let pass_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "  {backend:<9} {agents_n:>8} scheduler pass: {} runs in {pass_ms:.1} ms, {:.1} ms a run",
        made.len(),
        pass_ms / made.len().max(1) as f64
    );
    eprintln!(
        "  ({backend}: {agents_n} agents written in {:.1} s)",
        filled.as_secs_f64()
    );
    Ok(())
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

pub fn main(flags: Vec<String>) -> anyhow::Result<()> {
    let args = args(flags)?;
    println!(
        "Choosing a run's agents: {} runs of {} agents per step and spread\n",
        args.runs, args.per_run
    );
    println!(
        "  {:<9} {:>8} {:<13} {:>9} {:>9} {:>10} {:>8} {:>12}",
        "backend", "agents", "spread", "p50 ms", "max ms", "count ms", "eligible", "distinct/slots"
    );
    for &n in &args.steps {
        let dir = tempfile::tempdir()?;
        let sqlite = Db::open(&dir.path().join("bench.db").display().to_string(), 2)?;
        bench("sqlite", &sqlite, n, args.runs, args.per_run)?;
        let scratch = ScratchPg::create(&args.pg, "choice")?;
        let pg = Db::open(&scratch.url, 2)?;
        bench("postgres", &pg, n, args.runs, args.per_run)?;
        drop(pg);
    }
    Ok(())
}
