//! Money through the controller, on both backends: results paid once, runs refused
//! for want of credit before any assignment exists, the balances endpoint, and the
//! operator's grant.

use std::net::Ipv4Addr;

use lastmile_billing::ledger;
use lastmile_testbed::site::TargetSite;
use serde_json::json;

use crate::leasing::submission;
use crate::per_backend;
use crate::scene;
use crate::support::usd_balance as balance;
use crate::support::{count, ledger_transactions, target_site, TestApp, TestDb, OWNER_CREDIT};

per_backend!(
    a_result_submitted_many_times_at_once_is_paid_once,
    a_run_the_credit_cannot_cover_is_refused_with_402_before_any_assignment,
    balances_endpoint_answers_owners_and_volunteers_in_minor_units,
    a_check_shows_its_price_and_scarce_lines_and_countries_cost_more,
    concurrent_runs_cannot_spend_the_same_credit,
    a_scheduled_run_without_credit_is_skipped_and_other_owners_checks_go_on,
    credit_is_held_for_open_and_queued_work_of_the_owner_only,
);

/// A verified site and a check of it measured by `agents_per_run` agents.
async fn check(app: &TestApp, owner: &str, site: &TargetSite, agents_per_run: u32) -> String {
    let selection = json!({ "agents_per_run": agents_per_run });
    app.site_check(owner, site, site.origin(), selection).await
}

async fn a_result_submitted_many_times_at_once_is_paid_once(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let check = check(&app, &owner, &site, 1).await;
    let task = app.run_and_lease(&owner, &check, &agent).await;
    let result = submission(&task["assignment_id"], 40_000);
    // Eight submissions of the same result race each other.
    let acks =
        futures_util::future::join_all((0..8).map(|_| app.submit(&agent, result.clone()))).await;
    for (status, ack) in &acks {
        assert_eq!(*status, 200, "{ack}");
        assert_eq!(ack["disposition"], "accepted");
    }

    // An http check with any class and country costs 5 cents: 4 to the volunteer,
    // 1 to the platform.
    assert_eq!(
        balance(&app, &owner, "owner_credit").await,
        OWNER_CREDIT - 5
    );
    assert_eq!(balance(&app, &key, "volunteer_earnings").await, 4);
    assert_eq!(
        balance(&app, &agent, "volunteer_earnings").await,
        4,
        "an agent token shows its volunteer's balance"
    );
    assert_eq!(ledger_transactions(&app, "result"), 1);
    let mut conn = app.db().conn().unwrap();
    let lines = ledger::trial_balance(&mut *conn).unwrap();
    let platform = lines
        .iter()
        .find(|l| l.account == "platform_revenue:usd")
        .unwrap();
    assert_eq!(platform.balance_minor, 1);
    assert!(ledger::audit(&mut *conn).unwrap().is_empty());
    drop(conn);
    app.controller.stop().await.unwrap();
}

async fn a_run_the_credit_cannot_cover_is_refused_with_402_before_any_assignment(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    // 12 cents: not enough for three results at 5 cents.
    let (owner_id, owner) = app.owner_with_credit("thrifty", 12);
    let key = app.volunteer("v");
    for i in 2..=4 {
        app.agent(Ipv4Addr::new(127, 0, 0, i), &key, "fibre", 1)
            .await;
    }
    let check = check(&app, &owner, &site, 3).await;
    let run_path = format!("/api/v1/checks/{check}/runs");
    let (status, body) = app.call("POST", &run_path, Some(&owner), None).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"], "insufficient_credit");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("3 results at 0.05 usd each (0.15 usd)")
            && message.contains("your credit is 0.12 usd"),
        "{message}"
    );
    for table in ["runs", "assignments", "run_agents"] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        assert_eq!(count(&app, &sql), 0, "{table}");
    }

    // With 3 cents more the run is admitted, and its 15 cents are held...
    app.credit(&owner_id, 3);
    let (status, run) = app.call("POST", &run_path, Some(&owner), None).await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["requested"], 3);
    let (_, me) = app.get("/api/v1/me/balance", &owner).await;
    assert_eq!(me["held_minor"], 15, "{me}");
    // ... so a second run is refused although no result has been paid yet.
    let (status, body) = app.call("POST", &run_path, Some(&owner), None).await;
    assert_eq!(status, 402, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("0.15 usd is held for assignments in progress"),
        "{body}"
    );
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM assignments"), 3);
    app.controller.stop().await.unwrap();
}

async fn balances_endpoint_answers_owners_and_volunteers_in_minor_units(db: TestDb) {
    let app = TestApp::start(&db).await;
    let (_, owner) = app.owner_with_credit("owner", 2_500);
    let key = app.volunteer("v");

    let (status, body) = app.call("GET", "/api/v1/me/balance", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = app
        .call("GET", "/api/v1/me/balance", Some("lmo_nonsense"), None)
        .await;
    assert_eq!(status, 401);

    let (status, body) = app.get("/api/v1/me/balance", &owner).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["holder"], "owner");
    assert_eq!(
        body["balances"],
        json!([{"kind": "owner_credit", "currency": "usd", "balance_minor": 2500}])
    );
    assert_eq!(body["held_minor"], 0);

    let (status, body) = app.get("/api/v1/me/balance", &key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["holder"], "volunteer");
    assert_eq!(
        body["balances"],
        json!([
            {"kind": "volunteer_earnings", "currency": "usd", "balance_minor": 0},
            {"kind": "payouts_in_transit", "currency": "usd", "balance_minor": 0},
        ])
    );
    assert!(body.get("held_minor").is_none(), "{body}");

    // The endpoint is in the API document.
    let (_, doc) = app.call("GET", "/api/openapi.json", None, None).await;
    assert!(
        doc["paths"]["/api/v1/me/balance"]["get"].is_object(),
        "{}",
        doc["paths"]
    );
    app.controller.stop().await.unwrap();
}

async fn a_check_shows_its_price_and_scarce_lines_and_countries_cost_more(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let mut prices = Vec::new();
    for selection in [
        json!({}),
        json!({"connection_classes": ["dialup"]}),
        json!({"connection_classes": ["dialup", "fibre"]}),
        json!({"connection_classes": ["satellite"], "countries": ["BR"]}),
        json!({"countries": ["BR", "DE"]}),
    ] {
        let (status, check) = app
            .post_check(
                &owner,
                json!({"site_id": site_id, "url": site.origin(), "selection": selection}),
            )
            .await;
        assert_eq!(status, 201, "{check}");
        assert_eq!(check["price_currency"], "usd");
        prices.push(check["price_per_result_minor"].as_i64().unwrap());
    }
    // Any line 5; dial-up only x4; dial-up or fibre is served by fibre; satellite in
    // Brazil x3 x1.5 rounded up; Brazil or Germany is served by Germany.
    assert_eq!(prices, [5, 20, 5, 23, 5]);
    app.controller.stop().await.unwrap();
}

async fn concurrent_runs_cannot_spend_the_same_credit(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    // Enough for one run of two results, not two.
    let (_, owner) = app.owner_with_credit("owner", 14);
    let key = app.volunteer("v");
    for i in 2..=3 {
        app.agent(Ipv4Addr::new(127, 0, 0, i), &key, "fibre", 1)
            .await;
    }
    let check = check(&app, &owner, &site, 2).await;
    let run_path = format!("/api/v1/checks/{check}/runs");
    let answers = futures_util::future::join_all(
        (0..6).map(|_| app.call("POST", &run_path, Some(&owner), None)),
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 402, 402, 402, 402, 402], "{answers:?}");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM assignments"), 2);
    app.controller.stop().await.unwrap();
}

async fn a_scheduled_run_without_credit_is_skipped_and_other_owners_checks_go_on(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let key = app.volunteer("v");
    app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let (_, broke) = app.owner_with_credit("broke", 0);
    let rich = app.owner("rich");
    let mut checks = Vec::new();
    for owner in [&broke, &rich] {
        let site_id = app.verified_site(owner, &site).await;
        let (status, check) = app
            .post_check(
                owner,
                json!({"site_id": site_id, "url": site.origin(), "selection": {"agents_per_run": 1}, "schedule": {"every_seconds": 1}}),
            )
            .await;
        assert_eq!(status, 201, "{check}");
        checks.push(check["id"].as_str().unwrap().to_owned());
    }
    // The scheduler ticks every 100 ms; wait (generously) for the paying owner's
    // check to have run twice.
    let runs_of = |owner: String, check: String| {
        let app = &app;
        async move {
            let (status, runs) = app
                .get(&format!("/api/v1/checks/{check}/runs"), &owner)
                .await;
            assert_eq!(status, 200, "{runs}");
            runs.as_array().unwrap().len()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while runs_of(rich.clone(), checks[1].clone()).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(runs_of(broke.clone(), checks[0].clone()).await, 0);
    app.controller.stop().await.unwrap();
}

/// What a run's admission holds: the owner's assignments still open, and those whose
/// result is accepted and waits in the fold queue, at the run's price; never another
/// owner's work, nor what is folded (paid) or expired.
async fn credit_is_held_for_open_and_queued_work_of_the_owner_only(db: TestDb) {
    use diesel::RunQueryDsl;
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let key = app.volunteer("v");
    for i in 2..=4 {
        app.agent(Ipv4Addr::new(127, 0, 0, i), &key, "fibre", 1)
            .await;
    }
    let (owner_id, owner) = app.owner_with_credit("owner", 1_000);
    let (_, other) = app.owner_with_credit("other", 1_000);
    for who in [&owner, &other] {
        let check = check(&app, who, &site, 3).await;
        let (status, run) = app
            .call(
                "POST",
                &format!("/api/v1/checks/{check}/runs"),
                Some(who),
                None,
            )
            .await;
        assert_eq!(status, 201, "{run}");
    }
    let held = || async {
        let (_, me) = app.get("/api/v1/me/balance", &owner).await;
        me["held_minor"].as_i64().unwrap()
    };
    assert_eq!(held().await, 15, "three open assignments at 5 cents");

    // One of the owner's results accepted and waiting to be folded, one expired: the
    // queued one is still held, the expired one no longer.
    let mut conn = app.db().conn().unwrap();
    let mine = assignments_where(
        &mut conn,
        &format!("c.owner_id = '{owner_id}' ORDER BY a.id"),
    );
    assert_eq!(mine.len(), 3);
    let theirs = assignments_where(&mut conn, &format!("c.owner_id <> '{owner_id}' LIMIT 1"))
        .pop()
        .unwrap();
    let (queued, run) = &mine[0];
    let expired = &mine[1].0;
    for sql in [
        format!("UPDATE assignments SET state = 'done' WHERE id = '{queued}'"),
        format!("DELETE FROM open_assignments WHERE assignment_id = '{queued}'"),
        format!(
            "INSERT INTO fold_queue (first_assignment_id, assignment_ids, runs, results, queued_at) \
             VALUES ('{queued}', '{queued}', '{{\"{run}\": 1}}', 1, 1)"
        ),
        format!("UPDATE assignments SET state = 'expired' WHERE id = '{expired}'"),
        format!("DELETE FROM open_assignments WHERE assignment_id = '{expired}'"),
        // The other owner's queued result is theirs to pay.
        format!("UPDATE assignments SET state = 'done' WHERE id = '{}'", theirs.0),
        format!("DELETE FROM open_assignments WHERE assignment_id = '{}'", theirs.0),
        format!(
            "INSERT INTO fold_queue (first_assignment_id, assignment_ids, runs, results, queued_at) \
             VALUES ('{}', '{}', '{{\"{}\": 1}}', 1, 2)",
            theirs.0, theirs.0, theirs.1
        ),
    ] {
        diesel::sql_query(sql).execute(&mut conn).unwrap();
    }
    drop(conn);
    assert_eq!(held().await, 10, "one open, one queued");

    // Folded: out of the queue, no longer held (it is paid by then).
    let mut conn = app.db().conn().unwrap();
    diesel::sql_query(format!(
        "DELETE FROM fold_queue WHERE first_assignment_id = '{queued}'"
    ))
    .execute(&mut conn)
    .unwrap();
    drop(conn);
    assert_eq!(held().await, 5, "one open");
    app.controller.stop().await.unwrap();
}

/// (id, run) of the assignments whose check matches `condition` (SQL over `a`
/// assignments and `c` checks).
fn assignments_where(
    conn: &mut lastmile_storage::DbConn,
    condition: &str,
) -> Vec<(String, String)> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        run_id: String,
    }
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT a.id, a.run_id FROM assignments a JOIN checks c ON c.id = a.check_id \
         WHERE {condition}"
    ))
    .load(conn)
    .unwrap();
    rows.into_iter().map(|r| (r.id, r.run_id)).collect()
}

/// On SQLite, which keeps no statistics, the credit held at every run's admission is
/// found from the owner's checks and their open assignments, not by reading the open
/// assignments of every owner (the plan SQLite chose for an inner join).
#[test]
fn on_sqlite_held_credit_is_read_from_the_owners_checks() {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Step {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }
    let db = TestDb::new(lastmile_storage::Backend::Sqlite);
    let pool = lastmile_storage::Db::open(&db.url, 1).unwrap();
    let plan: Vec<String> = diesel::sql_query(format!(
        "EXPLAIN QUERY PLAN {}",
        lastmile_domain::billing::held_for_assignments_sql()
    ))
    .bind::<diesel::sql_types::Text, _>("owner")
    .load::<Step>(&mut *pool.conn().unwrap())
    .unwrap()
    .into_iter()
    .map(|step| step.detail)
    .collect();
    assert!(
        plan.iter().any(|s| s.contains("USING INDEX checks_owner")),
        "{plan:#?}"
    );
    assert!(
        plan.iter().all(|s| !s.contains("assignments_pending")),
        "{plan:#?}"
    );
}
