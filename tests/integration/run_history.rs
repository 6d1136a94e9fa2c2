//! A run's history (`lastmile_domain::run_history`), on both backends: a run that is
//! over keeps its counts on the run, exactly as its view showed them, and once its
//! results have aged out its assignments, planned agents and payment links go, and
//! the run too unless it is its check's latest. Nothing of a run still in the
//! retention window is touched, and no balance changes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use lastmile_billing::ledger;
use lastmile_domain::clock::now_us;
use lastmile_domain::retention;
use lastmile_domain::rollups::{day_start, DAY_US};
use lastmile_domain::run_history::{self, Archived};
use lastmile_domain::scheduling;
use lastmile_storage::{Backend, DbConn};
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::scene;
use crate::support::{all_folded, count, TestApp, TestDb};

per_backend!(
    a_run_over_keeps_its_counts_and_its_rows_go_once_its_results_have,
    the_scheduler_settles_a_run_once_it_is_over,
);

fn sql(conn: &mut DbConn, statement: &str) {
    diesel::sql_query(statement)
        .execute(conn)
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// Leases one task to the first of `agents` offered one and submits a result for it;
/// returns the task's id.
async fn measure(app: &TestApp, agents: &[&str]) -> String {
    for agent in agents {
        let (_, lease) = app.lease(agent, 1).await;
        let task = lease["tasks"][0]["assignment_id"].clone();
        if task.is_string() {
            let (status, body) = app.submit(agent, submission(&task, 40_000)).await;
            assert_eq!(status, 200, "{body}");
            return task.as_str().unwrap().to_owned();
        }
    }
    panic!("no agent was offered a task");
}

/// The check's runs as its owner lists them, oldest first.
async fn runs(app: &TestApp, owner: &str, check: &str) -> Vec<Value> {
    let (status, list) = app
        .get(&format!("/api/v1/checks/{check}/runs"), owner)
        .await;
    assert_eq!(status, 200, "{list}");
    let mut runs = list.as_array().unwrap().clone();
    runs.reverse();
    runs
}

fn counts(run: &Value) -> Value {
    json!([
        run["done"],
        run["pending"],
        run["leased"],
        run["expired"],
        run["flagged"],
        run["finished"]
    ])
}

async fn a_run_over_keeps_its_counts_and_its_rows_go_once_its_results_have(db: TestDb) {
    let pg = db.backend == Backend::Postgres;
    let (app, site, owner, key) = scene::start(&db).await;
    let a1 = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 2).await;
    let a2 = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 2).await;
    let site_id = app.verified_site(&owner, &site).await;
    let check_of = |agents_per_run: u32| {
        json!({"site_id": site_id, "url": format!("{}/", site.origin()),
               "selection": {"agents_per_run": agents_per_run}})
    };
    let check = app.create_check(&owner, check_of(2)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Run A: one result (flagged later), one lease that runs out. Run B: two results.
    app.start_run(&owner, &check).await;
    let flagged = measure(&app, &[&a1]).await;
    let (_, held) = app.lease(&a2, 1).await;
    assert_eq!(held["tasks"].as_array().unwrap().len(), 1, "{held}");
    app.start_run(&owner, &check).await;
    measure(&app, &[&a1]).await;
    measure(&app, &[&a2]).await;
    // Another check's run, in the retention window throughout.
    let other = app.create_check(&owner, check_of(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.start_run(&owner, &other).await;
    measure(&app, &[&a1, &a2]).await;
    all_folded(&app).await;
    let mut conn = app.db().conn().unwrap();
    // Flagged as verification flags a result: a flag, and the result marked.
    sql(
        &mut conn,
        &format!(
            "INSERT INTO result_flags (assignment_id, rule, agent_id, volunteer_id, check_id, run_id, evidence, created_at) \
             SELECT r.assignment_id, 'copy', r.agent_id, a.volunteer_id, r.check_id, r.run_id, '{{}}', r.received_at \
             FROM results r JOIN agents a ON a.id = r.agent_id WHERE r.assignment_id = '{flagged}'"
        ),
    );
    sql(
        &mut conn,
        &format!("UPDATE results SET flagged = TRUE WHERE assignment_id = '{flagged}'"),
    );

    // Nothing settles before its deadline, however finished.
    assert_eq!(run_history::settle(&mut conn, now_us()).unwrap(), 0);
    // Past every deadline and lease: run A still has its lease out (the expiry pass has
    // not run) and run B a result waiting to be folded, so neither settles; the other
    // check's run is over and does.
    let policy = app.controller.state.policy;
    let at = now_us() + policy.run_deadline_us + policy.lease_us + 1;
    let run_b = runs(&app, &owner, &check).await[1]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sql(
        &mut conn,
        &format!(
            "INSERT INTO fold_queue (first_assignment_id, assignment_ids, runs, results, queued_at) \
             VALUES ('x', 'x', '{{\"{run_b}\": 1}}', 1, 1)"
        ),
    );
    let other_run = runs(&app, &owner, &other).await[0].clone();
    assert_eq!(run_history::settle(&mut conn, at).unwrap(), 1);
    sql(&mut conn, "DELETE FROM fold_queue");
    assert_eq!(run_history::settle(&mut conn, at).unwrap(), 1, "run B");
    let expired = scheduling::expire(&mut conn, &policy, at).unwrap();
    assert_eq!(expired.expired_leases, 1, "{expired:?}");
    let live = runs(&app, &owner, &check).await;
    assert_eq!(
        live.iter().map(counts).collect::<Vec<_>>(),
        vec![json!([1, 0, 0, 1, 1, true]), json!([2, 0, 0, 0, 0, true])]
    );
    assert_eq!(run_history::settle(&mut conn, at).unwrap(), 1, "run A");
    assert_eq!(run_history::settle(&mut conn, at).unwrap(), 0);
    // Settled, the runs read as they did live.
    assert_eq!(runs(&app, &owner, &check).await, live);
    assert_eq!(runs(&app, &owner, &other).await, vec![other_run.clone()]);

    // 40 days on for the first check's runs and results: its results age out (30 days
    // kept), then its runs' rows.
    let (_, owner_balance) = app.get("/api/v1/me/balance", &owner).await;
    let (_, volunteer_balance) = app.get("/api/v1/me/balance", &key).await;
    let today = day_start(now_us());
    let back = 40 * DAY_US;
    if pg {
        retention::prepare_days(&mut conn, today - back).unwrap();
    }
    sql(
        &mut conn,
        &format!(
            "UPDATE runs SET created_at = created_at - {back}, deadline_at = deadline_at - {back} \
             WHERE check_id = '{check}'"
        ),
    );
    // The check's results move back too, except run A's, as if it came very late: it
    // keeps run A's rows until it ages out as well.
    let run_a = live[0]["id"].as_str().unwrap();
    let move_back = |conn: &mut DbConn, runs: &str| {
        for (table, column) in [("results", "received_at"), ("result_flags", "created_at")] {
            sql(
                conn,
                &format!(
                    "UPDATE {table} SET {column} = {column} - {back} \
                     WHERE check_id = '{check}' AND run_id {runs}"
                ),
            );
        }
    };
    move_back(&mut conn, &format!("<> '{run_a}'"));
    let of_check = |table: &str| {
        count(
            &app,
            &format!(
                "SELECT COUNT(*) AS n FROM {table} t JOIN runs r ON r.id = t.run_id \
                 WHERE r.check_id = '{check}'"
            ),
        )
    };
    assert_eq!((of_check("assignments"), of_check("run_agents")), (4, 4));
    let payments = count(&app, "SELECT COUNT(*) AS n FROM result_payments");
    assert_eq!(payments, 4, "three results of the check, one of the other");
    let aged = retention::age_out(&mut conn, now_us(), 30).unwrap();
    assert_eq!(
        aged.runs,
        Archived {
            runs_deleted: 0,
            runs_kept: 1,
            assignments_deleted: 2,
            planned_deleted: 2,
            payments_deleted: 2,
        },
        "run B only"
    );
    move_back(&mut conn, &format!("= '{run_a}'"));
    let aged = retention::age_out(&mut conn, now_us(), 30).unwrap();
    assert_eq!(
        aged.runs,
        Archived {
            runs_deleted: 1,
            runs_kept: 0,
            assignments_deleted: 2,
            planned_deleted: 2,
            payments_deleted: 1,
        },
        "run A, whose check has a later run"
    );
    // The check's latest run stays with the counts it had (its times moved back 40
    // days here); the one before it is gone.
    let outcome = |run: &Value| json!([run["id"], counts(run)]);
    let kept = runs(&app, &owner, &check).await;
    assert_eq!(
        kept.iter().map(outcome).collect::<Vec<_>>(),
        vec![outcome(&live[1])]
    );
    let (status, gone) = app
        .get(&format!("/api/v1/checks/{check}/runs/{run_a}"), &owner)
        .await;
    assert_eq!(status, 404, "{gone}");
    let (_, shown) = app.get(&format!("/api/v1/checks/{check}"), &owner).await;
    assert_eq!(shown["last_run"], kept[0], "{shown}");
    assert_eq!((of_check("assignments"), of_check("run_agents")), (0, 0));
    // The other check's run is untouched; no balance moved; the ledger still balances.
    assert_eq!(runs(&app, &owner, &other).await, vec![other_run]);
    let left = |table: &str| count(&app, &format!("SELECT COUNT(*) AS n FROM {table}"));
    assert_eq!((left("assignments"), left("result_payments")), (1, 1));
    assert_eq!(app.get("/api/v1/me/balance", &owner).await.1, owner_balance);
    assert_eq!(
        app.get("/api/v1/me/balance", &key).await.1,
        volunteer_balance
    );
    assert_eq!(ledger::audit(&mut *conn).unwrap(), Vec::<String>::new());
    // A second pass has nothing left to do.
    assert_eq!(
        retention::age_out(&mut conn, now_us(), 30).unwrap(),
        retention::Aged::default()
    );
    // The check runs again (as a check paused for longer than the retention, then
    // resumed): its archived run is no longer its latest, and the next pass deletes it.
    app.start_run(&owner, &check).await;
    let aged = retention::age_out(&mut conn, now_us(), 30).unwrap();
    assert_eq!(
        aged.runs,
        Archived {
            runs_deleted: 1,
            ..Archived::default()
        },
        "the archived run, its check having run since"
    );
    let now_listed = runs(&app, &owner, &check).await;
    assert_eq!(now_listed.len(), 1, "{now_listed:?}");
    assert_ne!(now_listed[0]["id"], kept[0]["id"]);
    let (status, gone) = app
        .get(
            &format!(
                "/api/v1/checks/{check}/runs/{}",
                kept[0]["id"].as_str().unwrap()
            ),
            &owner,
        )
        .await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(runs(&app, &owner, &other).await.len(), 1);
    assert_eq!(ledger::audit(&mut *conn).unwrap(), Vec::<String>::new());
    app.controller.stop().await.unwrap();
}

/// The scheduler's own pass settles runs (nothing here calls `settle`): a run whose
/// deadline has passed and whose results are folded gets its counts on its row.
async fn the_scheduler_settles_a_run_once_it_is_over(db: TestDb) {
    let app = TestApp::start_with(&db, |c| {
        c.run_deadline_s = 3;
        c.scheduler_tick_ms = 100;
    })
    .await;
    let site = crate::support::target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let agent = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    app.start_run(&owner, &check).await;
    measure(&app, &[&agent]).await;
    let settled = || {
        count(
            &app,
            &format!(
                "SELECT COUNT(*) AS n FROM runs WHERE check_id = '{check}' \
                 AND settled_at IS NOT NULL"
            ),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while settled() == 0 {
        assert!(
            Instant::now() < deadline,
            "the run was not settled within 20 s of its 3 s deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its one slot is done (or, on a machine so loaded that the result came after the
    // deadline, given up): either way settled as finished, with nothing left open.
    let run = &runs(&app, &owner, &check).await[0];
    let slots = run["done"].as_u64().unwrap() + run["expired"].as_u64().unwrap();
    assert_eq!(
        (slots, &run["pending"], &run["leased"], &run["finished"]),
        (1, &json!(0), &json!(0), &json!(true)),
        "{run}"
    );
    app.controller.stop().await.unwrap();
}

/// On SQLite a scheduler pass with no run to settle (nearly every pass) must not take
/// the one write lock that every accepted result waits for: it settles nothing, at
/// once, while another connection holds that lock.
#[test]
fn on_sqlite_a_pass_with_nothing_to_settle_leaves_the_write_lock_alone() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let db = TestDb::new(Backend::Sqlite);
    let pool = lastmile_storage::Db::open(&db.url, 2).unwrap();
    let mut writer = diesel::SqliteConnection::establish(&db.url).unwrap();
    writer.batch_execute("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let settled = run_history::settle(&mut pool.conn().unwrap(), now_us());
    assert_eq!(settled.unwrap(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "settling nothing waited {:?} for the write lock",
        started.elapsed()
    );
    writer.batch_execute("ROLLBACK").unwrap();
}
