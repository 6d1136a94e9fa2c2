//! Raw results age out (`lastmile_domain::retention`), on both backends: results
//! received before the retention cutoff are removed with their flags (on PostgreSQL a
//! whole day's partition at a time), never one still queued for folding, and nothing
//! derived from them changes: the report, the leaderboard, the agent's activity, the
//! balances and the ledger's audit.

use std::net::Ipv4Addr;

use diesel::RunQueryDsl;
use lastmile_billing::ledger;
use lastmile_domain::clock::now_us;
use lastmile_domain::retention::{self, Aged};
use lastmile_domain::rollups::{day_start, DAY_US};
use lastmile_storage::{Backend, DbConn};
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(raw_results_past_retention_age_out_and_nothing_counted_from_them_changes);

/// What an owner and a volunteer see that was counted from results.
async fn derived(app: &TestApp, owner: &str, check: &str, volunteer: &str) -> Vec<Value> {
    let (status, report) = app.report(owner, check, "window=30d").await;
    assert_eq!(status, 200, "{report}");
    let (_, board) = app
        .call("GET", "/api/v1/leaderboard?period=all_time", None, None)
        .await;
    let (_, mut owner_balance) = app.get("/api/v1/me/balance", owner).await;
    // The credit held for results still queued: the test queues one by hand.
    owner_balance["held_minor"].take();
    let (_, volunteer_balance) = app.get("/api/v1/me/balance", volunteer).await;
    vec![
        report["rows"].clone(),
        board,
        owner_balance,
        volunteer_balance,
    ]
}

fn sql(conn: &mut DbConn, statement: &str) {
    diesel::sql_query(statement)
        .execute(conn)
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn raw_results_past_retention_age_out_and_nothing_counted_from_them_changes(db: TestDb) {
    let pg = db.backend == Backend::Postgres;
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        // This test decides when maintenance runs, and folds nothing behind its back.
        c.rollup_interval_s = 0;
        c.fold_interval_ms = 3_600_000;
    })
    .await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let task = app.run_and_lease(&owner, &check, &agent).await["assignment_id"].clone();
        let (status, body) = app
            .submit(&agent, submission(&task, 40_000 + i * 1_000))
            .await;
        assert_eq!(status, 200, "{body}");
        ids.push(task.as_str().unwrap().to_owned());
    }
    let before = derived(&app, &owner, &check, &key).await;
    assert_eq!(before[0][0]["successes"], 8, "{}", before[0]);

    // Move results back in time, as if received then: two 50 days ago, three 40 days
    // ago (one of them with a flag), one 39 days ago that is still queued for folding (a
    // replica died before folding it), and two stay today.
    let now = now_us();
    let today = day_start(now);
    let mut conn = app.db().conn().unwrap();
    let days_ago = |d: i64| today - d * DAY_US + 3_600_000_000;
    let back = |conn: &mut DbConn, ids: &[String], at: i64| {
        let list = ids
            .iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        sql(
            conn,
            &format!("UPDATE results SET received_at = {at} WHERE assignment_id IN ({list})"),
        );
    };
    back(&mut conn, &ids[0..2], days_ago(50));
    // On PostgreSQL the days 40 to 38 ago have partitions of their own (made as if the
    // controller ran then); 50 days ago has none, so those rows sit in the default
    // partition.
    if pg {
        assert_eq!(retention::prepare_days(&mut conn, days_ago(40)).unwrap(), 3);
    }
    back(&mut conn, &ids[2..5], days_ago(40));
    back(&mut conn, &ids[5..6], days_ago(39));
    {
        use diesel::prelude::*;
        use lastmile_storage::schema::results;
        let (run_id, received_at): (String, i64) = results::table
            .filter(results::assignment_id.eq(&ids[5]))
            .select((results::run_id, results::received_at))
            .first(&mut *conn)
            .unwrap();
        let queued = lastmile_storage::fold_queue::entries(received_at, [(&*run_id, &*ids[5])]);
        lastmile_storage::fold_queue::enqueue(&mut conn, &queued).unwrap();
    }
    sql(
        &mut conn,
        &format!(
            "INSERT INTO result_flags (assignment_id, rule, agent_id, volunteer_id, check_id, run_id, evidence, created_at) \
             SELECT r.assignment_id, 'copy', r.agent_id, a.volunteer_id, r.check_id, r.run_id, '{{}}', r.received_at \
             FROM results r JOIN agents a ON a.id = r.agent_id WHERE r.assignment_id = '{}'",
            ids[3]
        ),
    );
    if pg {
        let (name, d) = ("results_default", days_ago(50));
        assert_eq!(
            count(
                &app,
                &format!("SELECT COUNT(*) AS n FROM {name} WHERE received_at = {d}")
            ),
            2
        );
        // Creating the partition of a day whose rows sit in the default partition moves
        // them into it.
        assert_eq!(retention::prepare_days(&mut conn, days_ago(50)).unwrap(), 3);
        assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM results_default"), 0);
        assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM results"), 8);
    }

    // Keep 30 days: what is older goes, except the queued result.
    let aged = retention::age_out(&mut conn, now, 30).unwrap();
    let remaining = |app: &TestApp| -> Vec<String> {
        let mut c = app.db().conn().unwrap();
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Text)]
            assignment_id: String,
        }
        let mut ids: Vec<String> = diesel::sql_query("SELECT assignment_id FROM results")
            .load::<Id>(&mut c)
            .unwrap()
            .into_iter()
            .map(|r| r.assignment_id)
            .collect();
        ids.sort();
        ids
    };
    let mut kept: Vec<String> = ids[5..].to_vec();
    kept.sort();
    assert_eq!(remaining(&app), kept);
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM result_flags"), 0);
    if pg {
        // Days 50 to 48 and 40 to 38 ago were dropped whole, except 39 days ago, which
        // holds the queued result; nothing was deleted row by row.
        assert_eq!(
            aged,
            Aged {
                days_dropped: 5,
                results_deleted: 0,
                flags_deleted: 0,
                runs: Default::default(),
            }
        );
        let days = retention::partitioned_days(&mut conn).unwrap();
        let cutoff_day = retention::cutoff(now, 30).div_euclid(DAY_US);
        assert_eq!(
            days.iter()
                .filter(|d| **d < cutoff_day)
                .copied()
                .collect::<Vec<_>>(),
            vec![today.div_euclid(DAY_US) - 39]
        );
    } else {
        assert_eq!(
            aged,
            Aged {
                days_dropped: 0,
                results_deleted: 5,
                flags_deleted: 1,
                runs: Default::default(),
            }
        );
    }
    // Nothing counted from them changed.
    assert_eq!(derived(&app, &owner, &check, &key).await, before);
    assert_eq!(ledger::audit(&mut *conn).unwrap(), Vec::<String>::new());
    // A second pass finds nothing more to do.
    assert_eq!(
        retention::age_out(&mut conn, now, 30).unwrap(),
        Aged::default()
    );
    // Once folded (here: taken off the queue), the last old result goes too; keeping
    // one day keeps today's.
    sql(&mut conn, "DELETE FROM fold_queue");
    retention::age_out(&mut conn, now, 30).unwrap();
    let mut today_only: Vec<String> = ids[6..].to_vec();
    today_only.sort();
    assert_eq!(remaining(&app), today_only);
    retention::age_out(&mut conn, now, 1).unwrap();
    assert_eq!(remaining(&app), today_only);
    // The coming days' partitions exist before their first result (PostgreSQL).
    retention::maintain(&mut conn, now, Some(30)).unwrap();
    if pg {
        let days = retention::partitioned_days(&mut conn).unwrap();
        let t = today.div_euclid(DAY_US);
        assert!(
            (t..=t + retention::DAYS_AHEAD).all(|d| days.contains(&d)),
            "{days:?}"
        );
    }
    assert_eq!(derived(&app, &owner, &check, &key).await, before);
    drop(conn);
    app.controller.stop().await.unwrap();
}
