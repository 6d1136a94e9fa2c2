//! Crash safety: a controller on PostgreSQL, serving real agents, is killed with
//! SIGKILL while assignments are leased, restarted on the same address, and killed
//! again; afterwards the database is reconciled with what really happened.
//!
//! The controller runs in a process of its own so that the kill is real
//! ([`crate::controller_process`]). The parent keeps
//! the agents, the target site and the database. The site counts the connections it
//! accepts, and every http measurement opens exactly one (see `measure.rs`), so the
//! site knows how many measurements the agents made; the database must hold exactly
//! one result for each, count each accepted one once in the aggregates, and pay each
//! accepted one exactly once. PostgreSQL only: SQLite is one process's file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lastmile_agent::limits::VolunteerLimits;
use lastmile_agent::measure::EngineConfig;
use lastmile_agent::runner::AgentSettings;
use lastmile_agent::spool::{self, Spool};
use lastmile_billing::{pricing, Currency, Money};
use lastmile_controller::config::ControllerConfig;
use lastmile_domain::{accounts, billing, checks};
use lastmile_protocol::{AgentLimits, ConnectionClass};
use lastmile_storage::{count_sql, Backend, Db};
use lastmile_testbed::site::{SiteConfig, TargetSite};
use serde_json::{json, Value};

use crate::agent_lifecycle::spawn_agent;
use crate::controller_process::{child_config, fixed_port, ControllerProcess};
use crate::support::{TestDb, DONE, PLACES};

/// How long an agent holds a lease: short, so that some results come back late.
const LEASE_S: u64 = 3;

/// Kills made while an assignment was leased.
const KILLS: usize = 3;

/// The owner's test credit, usd cents.
const GRANTED_MINOR: i64 = 100_000;

/// `SELECT COUNT(*) AS n ...` (or any BIGINT `n`) on the test's own connection.
pub(crate) fn n(db: &Db, sql: &str) -> i64 {
    count_sql(&mut db.conn().unwrap(), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(crate) async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let res = http
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Creates a check (`body` as `POST /api/v1/checks` takes it) through the controller at
/// `base`; asserts that it is created and returns its id.
pub(crate) async fn create_check(
    http: &reqwest::Client,
    base: &str,
    owner: &str,
    body: Value,
) -> String {
    let (status, check) = call(http, base, owner, "POST", "/api/v1/checks", body).await;
    assert_eq!(status, 201, "{check}");
    check["id"].as_str().unwrap().to_owned()
}

/// Asks the controller at `base` for a run of `check` now; asserts that it is made.
pub(crate) async fn ask_run(http: &reqwest::Client, base: &str, owner: &str, check: &str) {
    let path = format!("/api/v1/checks/{check}/runs");
    let (status, run) = call(http, base, owner, "POST", &path, json!({})).await;
    assert_eq!(status, 201, "{run}");
}

/// An HTTP client that gives up on a request after 30 s.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A new owner granted [`GRANTED_MINOR`] of usd credit under `grant_key`: (id, token).
pub(crate) fn owner_with_grant(
    c: &mut lastmile_storage::DbConn,
    name: &str,
    grant_key: &str,
) -> (String, String) {
    let (owner, token) = accounts::create_owner(c, name).unwrap();
    let credit = Money::new(GRANTED_MINOR, Currency::USD);
    billing::grant_credit(c, &owner.id, credit, grant_key).unwrap();
    (owner.id, token)
}

/// Adds `site` for the owner and verifies it (the controller allows private sites);
/// returns the site's id.
pub(crate) async fn verified_site(
    http: &reqwest::Client,
    base: &str,
    owner: &str,
    site: &TargetSite,
) -> String {
    let (status, created) = call(
        http,
        base,
        owner,
        "POST",
        "/api/v1/sites",
        json!({"origin": site.origin()}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    site.publish_verification_token(created["verification_token"].as_str().unwrap());
    let site_id = created["id"].as_str().unwrap().to_owned();
    let (status, verified) = call(
        http,
        base,
        owner,
        "POST",
        &format!("/api/v1/sites/{site_id}/verify"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{verified}");
    site_id
}

/// Waits (bounded) until `done` holds; says `what` if it never does.
pub(crate) async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_controller_loses_no_measurement_and_pays_each_once() {
    let started = Instant::now();
    let test_db = TestDb::new(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let port = fixed_port();
    let config = ControllerConfig {
        heartbeat_interval_s: 1,
        // Agents stay eligible across the controller's downtime.
        online_window_s: 60,
        lease_s: LEASE_S,
        run_deadline_s: 10,
        max_db_connections: 8,
        ..child_config(&test_db, dir.path(), port)
    };
    // The test's own pool (this also runs the migrations, before any child starts).
    let db = Db::open(&test_db.url, 4).unwrap();
    let mut life = 1;
    let mut controller = ControllerProcess::start(&config, life, dir.path()).await;
    let base = format!("http://{}", config.listen);
    let http = http_client();

    // An owner with credit, two volunteers with two agents each.
    let (owner_id, owner) = owner_with_grant(
        &mut db.conn().unwrap(),
        "Crash Test Shop",
        "crash-test-grant",
    );
    let (volunteers, keys) = two_volunteers(&db);

    // The target site answers after a think time, so that leases last long enough to
    // be caught.
    let site = TargetSite::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SiteConfig {
            think_time: Duration::from_millis(400),
            ..SiteConfig::default()
        },
    )
    .await
    .unwrap();
    let site_id = verified_site(&http, &base, &owner, &site).await;

    // Real agents, each from its own address, calibrating their line as they start.
    let agents = PlaceAgents::spawn(&base, &keys, dir.path(), "crash-agent");
    wait_until(
        "all four agents enrolled and calibrated",
        Duration::from_secs(90),
        || {
            n(
                &db,
                "SELECT COUNT(*) AS n FROM agents WHERE measured_class IS NOT NULL",
            ) == PLACES.len() as i64
        },
    )
    .await;

    // From here on every connection to the site is a measurement.
    site.reset_connection_stats();
    let check = create_check(
        &http,
        &base,
        &owner,
        json!({
            "site_id": site_id,
            "name": "crash test",
            "url": format!("{}/", site.origin()),
            "expected_status": [200],
            "timeout_ms": 10_000,
            "selection": {"agents_per_run": PLACES.len()},
        }),
    )
    .await;

    // The check's first run comes from the schedule; the kills start once it is made.
    wait_until("the check's first run", Duration::from_secs(30), || {
        n(&db, "SELECT COUNT(*) AS n FROM runs") == 1
    })
    .await;

    // Run, catch a lease, kill; restart on the same port; again.
    let mut kills: Vec<i64> = Vec::new();
    let mut runs_asked = 0;
    for _ in 0..4 * KILLS {
        if kills.len() == KILLS {
            break;
        }
        ask_run(&http, &base, &owner, &check).await;
        runs_asked += 1;
        wait_until("an assignment is leased", Duration::from_secs(60), || {
            n(
                &db,
                "SELECT COUNT(*) AS n FROM open_assignments WHERE state = 'leased'",
            ) > 0
        })
        .await;
        controller.kill();
        // The dead controller writes nothing more: what is leased now was leased when it
        // died (a result may have been stored between the look and the kill).
        let leased = n(
            &db,
            "SELECT COUNT(*) AS n FROM open_assignments WHERE state = 'leased'",
        );
        if leased > 0 {
            kills.push(leased);
        }
        // At the second kill, stay down longer than a lease, so that results come back
        // late and the restarted controller finds overdue leases.
        let down = if leased > 0 && kills.len() == 2 {
            Duration::from_secs(LEASE_S + 1)
        } else {
            Duration::from_millis(300)
        };
        tokio::time::sleep(down).await;
        life += 1;
        let restarted = lastmile_domain::clock::now_us();
        controller = ControllerProcess::start(&config, life, dir.path()).await;
        // The agents come back after their backoff; the next run is for all of them.
        wait_until(
            "every agent heartbeats to the restarted controller",
            Duration::from_secs(120),
            || {
                n(
                    &db,
                    &format!(
                        "SELECT COUNT(*) AS n FROM agents WHERE last_heartbeat_at >= {restarted}"
                    ),
                ) == PLACES.len() as i64
            },
        )
        .await;
    }
    assert_eq!(kills.len(), KILLS, "leases caught at kills: {kills:?}");

    // One more run in peace, then no more runs; the agents deliver what they have.
    ask_run(&http, &base, &owner, &check).await;
    runs_asked += 1;
    agents.deliver_and_stop(&db, &site).await;
    controller.kill();

    // Reconcile.
    let measurements = site.connections().accepted as i64;
    let results = n(&db, "SELECT COUNT(*) AS n FROM results");
    let late = n(&db, "SELECT COUNT(*) AS n FROM results WHERE late");
    let flagged = n(&db, "SELECT COUNT(*) AS n FROM results WHERE flagged");
    let counted = n(
        &db,
        "SELECT COUNT(*) AS n FROM results WHERE NOT late AND NOT flagged",
    );
    let runs = n(&db, "SELECT COUNT(*) AS n FROM runs");
    let expired = n(
        &db,
        "SELECT COUNT(*) AS n FROM assignments WHERE state = 'expired'",
    );
    let reoffered = n(
        &db,
        "SELECT COUNT(*) AS n FROM assignments WHERE attempt > 1",
    );
    let paid = n(&db, "SELECT COUNT(*) AS n FROM result_payments");
    println!(
        "crash test: {} kills (leased at each: {kills:?}), {runs} runs ({runs_asked} asked \
         for, one by the schedule), {measurements} measurements made, {results} results \
         stored ({late} late, {flagged} flagged, {counted} counted), {expired} assignments \
         expired, {reoffered} re-offered, {paid} results paid; {:.1} s",
        kills.len(),
        started.elapsed().as_secs_f64()
    );

    assert_reconciled(&db, measurements, &owner_id, &volunteers, &check);
    drop(db);
}

/// Two volunteers: their ids and enrolment keys.
pub(crate) fn two_volunteers(db: &Db) -> (Vec<String>, Vec<String>) {
    (0..2)
        .map(|i| {
            let (v, key) =
                accounts::create_volunteer(&mut db.conn().unwrap(), &format!("volunteer {i}"))
                    .unwrap();
            (v.id, key)
        })
        .unzip()
}

/// Real agents, one from each test place (so each is located by its own address), of
/// the volunteers with `keys` in turn, declaring fibre and calibrating as they start.
pub(crate) struct PlaceAgents {
    agents: Vec<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    spools: Vec<PathBuf>,
}

impl PlaceAgents {
    /// Starts them against `controller`, their state under `dir`, named `name-<i>`.
    pub(crate) fn spawn(
        controller: &str,
        keys: &[String],
        dir: &std::path::Path,
        name: &str,
    ) -> PlaceAgents {
        let mut agents = Vec::new();
        let mut spools = Vec::new();
        for (i, place) in PLACES.iter().enumerate() {
            let state_dir = dir.join(format!("agent-{i}"));
            spools.push(state_dir.join("spool"));
            agents.push(spawn_agent(AgentSettings {
                controller: controller.parse().unwrap(),
                enrol_key: Some(keys[i % keys.len()].clone()),
                state_dir,
                name: format!("{name}-{i}"),
                declared_class: ConnectionClass::Fibre,
                limits: AgentLimits { max_concurrent: 2 },
                engine: EngineConfig {
                    allow_private: true,
                    source_addr: Some(IpAddr::V4(place.0)),
                    ..EngineConfig::default()
                },
                idle_poll: Duration::from_millis(100),
                calibration_url: None,
                // The agent's default budget.
                calibration_bytes_per_day: 20 * 1024 * 1024,
                volunteer: VolunteerLimits::default(),
                spool_max_results: spool::DEFAULT_MAX_RESULTS,
                path_trace: true,
            }));
        }
        PlaceAgents { agents, spools }
    }

    /// Waits until no assignment is pending or leased, every spool is empty and the
    /// site is idle (so no more runs must be coming); then stops the agents and asserts
    /// that they left nothing in their spools.
    pub(crate) async fn deliver_and_stop(self, db: &Db, site: &TargetSite) {
        wait_until(
            "no assignment pending or leased, every spool empty, the site idle",
            Duration::from_secs(120),
            || {
                n(db, "SELECT COUNT(*) AS n FROM open_assignments") == 0
                    && spooled(&self.spools) == 0
                    && site.connections().open == 0
            },
        )
        .await;
        for (stop, task) in self.agents {
            stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("an agent did not stop within 60 s")
                .unwrap()
                .unwrap();
        }
        assert_eq!(
            spooled(&self.spools),
            0,
            "results left in spools after the agents stopped"
        );
    }
}

/// Results waiting in the spools at these paths.
fn spooled(spools: &[PathBuf]) -> usize {
    spools
        .iter()
        .map(|s| {
            Spool::open(s, spool::DEFAULT_MAX_RESULTS)
                .unwrap()
                .len()
                .unwrap()
        })
        .sum()
}

/// Asserts what a run of real agents must leave in the database, whatever was killed
/// meanwhile: every measurement the site served (`measurements`) stored once, each
/// result with the agent that held its lease, late exactly when after its lease,
/// aggregates equal to the counted results, each counted result paid once and nothing
/// else, the fold queue empty, the ledger balanced, the owner charged and each of
/// `volunteers` paid for exactly the counted results.
pub(crate) fn assert_reconciled(
    db: &Db,
    measurements: i64,
    owner_id: &str,
    volunteers: &[String],
    check: &str,
) {
    let results = n(db, "SELECT COUNT(*) AS n FROM results");
    let counted = n(
        db,
        "SELECT COUNT(*) AS n FROM results WHERE NOT late AND NOT flagged",
    );
    let paid = n(db, "SELECT COUNT(*) AS n FROM result_payments");
    // Every measurement the site served is stored, once.
    assert_eq!(
        results, measurements,
        "results stored vs. measurements the site served"
    );
    assert_eq!(
        n(
            db,
            "SELECT COUNT(*) AS n FROM (SELECT assignment_id FROM results \
             GROUP BY assignment_id HAVING COUNT(*) > 1) d",
        ),
        0,
        "assignments with two results"
    );
    // A result belongs to the agent that held the lease; an accepted one closed it.
    assert_eq!(
        n(
            db,
            &format!(
                "SELECT COUNT(*) AS n FROM results r JOIN assignments a ON a.id = r.assignment_id \
                 WHERE a.agent_id IS DISTINCT FROM r.agent_id \
                    OR (NOT r.late AND NOT {DONE}) OR (r.late AND {DONE})"
            ),
        ),
        0,
        "results that disagree with their assignment"
    );
    assert_eq!(
        n(
            db,
            &format!(
                "SELECT COUNT(*) AS n FROM assignments a WHERE {DONE} \
                 AND NOT EXISTS (SELECT 1 FROM results r WHERE r.assignment_id = a.id)"
            ),
        ),
        0,
        "assignments done without a result"
    );

    // A result that came after its lease ran out is late, whatever the restarts.
    assert_eq!(
        n(
            db,
            "SELECT COUNT(*) AS n FROM results r JOIN assignments a ON a.id = r.assignment_id \
             WHERE r.received_at > a.lease_expires_at AND NOT r.late",
        ),
        0,
        "results received after their lease ran out but not late"
    );

    // Aggregates equal the counted results.
    let aggregated = n(
        db,
        "SELECT COALESCE(SUM(successes + failures), 0)::BIGINT AS n FROM aggregates",
    );
    assert_eq!(aggregated, counted, "aggregated vs. counted results");

    // One payment per counted result, none for a late or flagged one. Results are paid
    // in batches; `result_payments` links each to the ledger transaction that paid it.
    assert_eq!(paid, counted, "result payments vs. counted results");
    assert_eq!(
        n(
            db,
            "SELECT COUNT(*) AS n FROM results r WHERE NOT r.late AND NOT r.flagged \
             AND NOT EXISTS (SELECT 1 FROM result_payments p \
                             WHERE p.assignment_id = r.assignment_id)",
        ),
        0,
        "counted results left unpaid"
    );
    assert_eq!(
        n(
            db,
            "SELECT COUNT(*) AS n FROM result_payments p \
             WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.assignment_id = p.assignment_id \
                               AND NOT r.late AND NOT r.flagged)",
        ),
        0,
        "payments for results that are not counted"
    );
    assert_eq!(
        n(
            db,
            "SELECT COUNT(*) AS n FROM ledger_transactions t WHERE t.kind = 'result' \
             AND (SELECT COALESCE(SUM(-lp.amount_minor), 0) FROM ledger_postings lp \
                  JOIN ledger_accounts la ON la.id = lp.account_id \
                  WHERE lp.transaction_id = t.id AND la.kind = 'owner_credit') \
              <> (SELECT COALESCE(SUM(p.price_minor), 0) FROM result_payments p \
                  WHERE p.transaction_id = t.id)",
        ),
        0,
        "result transactions whose owners paid other than the prices of their results"
    );
    assert_eq!(
        n(db, "SELECT COUNT(*) AS n FROM fold_queue"),
        0,
        "results still waiting to be folded after the controller stopped"
    );

    // The ledger balances: per transaction and per currency.
    assert_eq!(
        n(
            db,
            "SELECT COUNT(*) AS n FROM (SELECT transaction_id FROM ledger_postings \
             GROUP BY transaction_id HAVING SUM(amount_minor) <> 0) t",
        ),
        0,
        "unbalanced transactions"
    );
    assert_eq!(
        n(
            db,
            "SELECT COUNT(*) AS n FROM (SELECT a.currency FROM ledger_postings p \
             JOIN ledger_accounts a ON a.id = p.account_id \
             GROUP BY a.currency HAVING SUM(p.amount_minor) <> 0) c",
        ),
        0,
        "a currency whose balances do not sum to zero"
    );

    // Who paid and who earned what.
    let price = billing::price_of(&checks::get_any(&mut db.conn().unwrap(), check).unwrap());
    let (share, _fee) = pricing::split(price);
    let balance = |kind: &str, holder: &str| {
        n(
            db,
            &format!(
                "SELECT COALESCE(SUM(p.amount_minor), 0)::BIGINT AS n FROM ledger_postings p \
                 JOIN ledger_accounts a ON a.id = p.account_id \
                 WHERE a.kind = '{kind}' AND a.holder = '{holder}' AND a.currency = 'usd'"
            ),
        )
    };
    assert_eq!(
        balance("owner_credit", owner_id),
        GRANTED_MINOR - counted * price.minor,
        "owner credit vs. granted less the price of each counted result"
    );
    for v in volunteers {
        let earned = n(
            db,
            &format!(
                "SELECT COUNT(*) AS n FROM results r JOIN agents g ON g.id = r.agent_id \
                 WHERE NOT r.late AND NOT r.flagged AND g.volunteer_id = '{v}'"
            ),
        ) * share.minor;
        assert_eq!(
            balance("volunteer_earnings", v),
            earned,
            "earnings of volunteer {v} vs. the share of each of their counted results"
        );
    }
}

/// While the controller is down (here: a port that accepts and hangs up, as a
/// controller does while it dies or restarts), an agent backs off between calls
/// instead of calling again at once: a fleet of agents must not hammer a controller
/// that is coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_back_off_while_the_controller_is_down() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let hang_ups = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    // An agent enrolled before (its credentials kept), started while the controller is away.
    let dir = tempfile::tempdir().unwrap();
    let creds = lastmile_agent::runner::Credentials {
        agent_id: uuid::Uuid::new_v4(),
        token: "lma_test".into(),
        controller: base.parse().unwrap(),
    };
    std::fs::write(
        dir.path().join("credentials.json"),
        serde_json::to_vec(&creds).unwrap(),
    )
    .unwrap();
    let (stop, task) = spawn_agent(AgentSettings {
        controller: base.parse().unwrap(),
        enrol_key: None,
        state_dir: dir.path().to_path_buf(),
        name: "patient".into(),
        declared_class: ConnectionClass::Fibre,
        limits: AgentLimits { max_concurrent: 1 },
        engine: EngineConfig {
            allow_private: true,
            source_addr: Some(IpAddr::V4(PLACES[0].0)),
            ..EngineConfig::default()
        },
        idle_poll: Duration::from_millis(100),
        calibration_url: None,
        calibration_bytes_per_day: 0,
        volunteer: VolunteerLimits::default(),
        spool_max_results: 10,
        path_trace: true,
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    hang_ups.abort();
    // Backoff waits at least half a second between failed calls: in 3 s that is at most
    // 7 calls (fewer on a slow machine, never more).
    let made = calls.load(Ordering::SeqCst);
    assert!(
        (1..=7).contains(&made),
        "{made} calls in 3 s to a controller that hangs up"
    );
}

/// The scheduler claims a due check and creates its run in one transaction: a
/// controller killed in between (here: while the run's transaction waits for the owner's
/// credit account, which the test holds locked) makes the run after its restart. Before,
/// the claim was committed on its own, so the killed controller's one-shot check was
/// never run at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_cut_short_by_a_kill_is_made_after_the_restart() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;

    let test_db = TestDb::new(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let config = child_config(&test_db, dir.path(), fixed_port());
    let db = Db::open(&test_db.url, 2).unwrap();
    let controller = ControllerProcess::start(&config, 1, dir.path()).await;
    let base = format!("http://{}", config.listen);
    let http = http_client();
    let (owner_id, owner, key) = {
        let mut c = db.conn().unwrap();
        let (owner_id, owner) = owner_with_grant(&mut c, "Owner", "grant");
        let (_, key) = accounts::create_volunteer(&mut c, "Volunteer").unwrap();
        (owner_id, owner, key)
    };

    // One online, calibrated agent, so that the run has an assignment to pay for.
    let source = PLACES[0].0;
    let from = crate::support::TestApp::client_from(source);
    let (status, enrolled) = call(
        &from,
        &base,
        "",
        "POST",
        "/api/v1/agents/enrol",
        json!({"enrol_key": key, "name": "agent", "declared_class": "fibre", "version": "test"}),
    )
    .await;
    assert_eq!(status, 201, "{enrolled}");
    let token = enrolled["token"].as_str().unwrap().to_owned();
    let (status, ack) = call(
        &from,
        &base,
        &token,
        "POST",
        "/api/v1/agents/heartbeat",
        json!({"declared_class": "fibre", "version": "test", "limits": {"max_concurrent": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    lastmile_agent::calibrate::Calibrator {
        http: &from,
        base: &base.parse().unwrap(),
        token: &token,
        budget: 20 * 1024 * 1024,
    }
    .run()
    .await
    .unwrap();

    let site = TargetSite::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SiteConfig::default(),
    )
    .await
    .unwrap();
    let site_id = verified_site(&http, &base, &owner, &site).await;

    // Hold the owner's credit account: admitting the run waits for it.
    let mut holder = diesel::PgConnection::establish(&test_db.url).unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM ledger_accounts WHERE id = 'owner_credit:{owner_id}:usd' FOR UPDATE"
        ))
        .unwrap();
    // A check without a schedule: one run, right after creation.
    let home = format!("{}/", site.origin());
    let body = json!({"site_id": site_id, "url": home, "selection": {"agents_per_run": 1}});
    create_check(&http, &base, &owner, body).await;
    wait_until(
        "the scheduler's run waits for the owner's credit account",
        Duration::from_secs(30),
        || {
            n(
                &db,
                "SELECT COUNT(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ) > 0
        },
    )
    .await;
    controller.kill();
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(n(&db, "SELECT COUNT(*) AS n FROM runs"), 0);

    let _controller = ControllerProcess::start(&config, 2, dir.path()).await;
    wait_until(
        "the restarted controller makes the check's run",
        Duration::from_secs(30),
        || n(&db, "SELECT COUNT(*) AS n FROM runs") == 1,
    )
    .await;
}
