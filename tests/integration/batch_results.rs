//! Results in batches, on both backends: several results in one request
//! (`POST /api/v1/results/batch`), answered one by one; accepted results folded into
//! the report and paid before the answer; results queued but not folded (a replica that
//! died in between) folded by the background pass; and a group commit of two agents'
//! requests that cross each other closes exactly the assignments of its timely results.

use std::net::Ipv4Addr;

use diesel::RunQueryDsl;
use lastmile_billing::ledger;
use lastmile_domain::{agents, ingest};
use lastmile_protocol::ResultSubmission;
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::scene;
use crate::support::{count, TestApp, TestDb, DONE, OWNER_CREDIT, QUEUED};

per_backend!(
    a_batch_answers_each_result_in_order_and_counts_and_pays_each_once,
    results_queued_but_not_folded_are_folded_by_the_background_pass,
    a_group_commit_closes_exactly_the_assignments_of_its_timely_results,
);

async fn submit_batch(app: &TestApp, token: &str, results: Vec<Value>) -> (u16, Value) {
    app.call(
        "POST",
        "/api/v1/results/batch",
        Some(token),
        Some(json!({ "results": results })),
    )
    .await
}

/// The first balance of the owner or volunteer behind `token`.
async fn balance(app: &TestApp, token: &str) -> i64 {
    let (_, b) = app.get("/api/v1/me/balance", token).await;
    b["balances"][0]["balance_minor"].as_i64().unwrap()
}

/// What each outcome of a batch answer says: the disposition, or the status and code.
fn outcomes(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {answer}"))
        .iter()
        .map(|o| match o["disposition"].as_str() {
            Some(d) => d.to_owned(),
            None => format!("{} {}", o["status"], o["error"]["error"].as_str().unwrap()),
        })
        .collect()
}

async fn a_batch_answers_each_result_in_order_and_counts_and_pays_each_once(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 4)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    // Three runs measured by `agent`, one by `other` (which runs choose, as the agent
    // this check never used, once it is online).
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(app.run_and_lease(&owner, &check, &agent).await["assignment_id"].clone());
    }
    let other = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &key, "fibre", 1)
        .await;
    let others = app.run_and_lease(&owner, &check, &other).await["assignment_id"].clone();
    assert!(tasks.iter().chain([&others]).all(Value::is_string));

    let mut neither = submission(&tasks[2], 30_000);
    neither["measurement"]["status"] = Value::Null;
    let batch = vec![
        submission(&tasks[0], 40_000),
        submission(&tasks[0], 40_000),
        submission(&tasks[1], 50_000),
        submission(&json!(uuid::Uuid::new_v4()), 40_000),
        submission(&others, 40_000),
        neither,
        submission(&tasks[2], 60_000),
    ];
    let expected = [
        "accepted",
        "accepted",
        "accepted",
        "404 assignment_not_found",
        "403 assignment_not_yours",
        "422 invalid_result",
        "accepted",
    ];
    let (status, answer) = submit_batch(&app, &agent, batch.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(outcomes(&answer), expected, "{answer}");
    for (sent, outcome) in batch.iter().zip(answer["results"].as_array().unwrap()) {
        assert_eq!(outcome["assignment_id"], sent["assignment_id"]);
    }
    assert!(answer["results"][5]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("neither"));

    // When the answer arrives, the three results are in the report and paid, in one
    // ledger transaction.
    let settled = |app: &TestApp| {
        (
            count(app, "SELECT COUNT(*) AS n FROM results"),
            count(
                app,
                "SELECT CAST(COALESCE(SUM(successes), 0) AS BIGINT) AS n FROM aggregates",
            ),
            count(app, "SELECT COUNT(*) AS n FROM result_payments"),
            count(
                app,
                "SELECT COUNT(*) AS n FROM ledger_transactions WHERE kind = 'result'",
            ),
            count(app, QUEUED),
        )
    };
    assert_eq!(settled(&app), (3, 3, 3, 1, 0));
    let (_, report) = app.report(&owner, &check, "").await;
    assert_eq!(report["rows"][0]["successes"], 3, "{report}");
    let (_, runs) = app
        .get(&format!("/api/v1/checks/{check}/runs"), &owner)
        .await;
    let finished = runs
        .as_array()
        .or_else(|| runs["runs"].as_array())
        .unwrap_or_else(|| panic!("{runs}"))
        .iter()
        .filter(|r| r["finished"] == true)
        .count();
    assert_eq!(finished, 3, "the three runs answered are finished: {runs}");

    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT - 3 * 5);
    assert_eq!(balance(&app, &key).await, 3 * 4);

    // The same batch again: the same answers, nothing stored or paid twice.
    let (status, again) = submit_batch(&app, &agent, batch).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(outcomes(&again), expected, "{again}");
    assert_eq!(settled(&app), (3, 3, 3, 1, 0));
    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT - 3 * 5);
    let (_, metrics) = app.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    for line in [
        "lastmile_results_accepted_total 3",
        "lastmile_results_duplicate_total 5",
        "lastmile_results_folded_total 3",
        "lastmile_results_unpaid_total 0",
        // Sent one after the other: a transaction each.
        "lastmile_result_requests_total 2",
        "lastmile_result_batches_total 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // A batch must hold 1 to 100 results.
    let (status, body) = submit_batch(&app, &agent, Vec::new()).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("no_results")));
    let many = vec![submission(&tasks[0], 40_000); 101];
    let (status, body) = submit_batch(&app, &agent, many).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("too_many_results")),
        "{body}"
    );

    let problems = ledger::audit(&mut *app.db().conn().unwrap()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    app.controller.stop().await.unwrap();
}

async fn results_queued_but_not_folded_are_folded_by_the_background_pass(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    let task = app.run_and_lease(&owner, &check, &agent).await;
    // Accepted as a request does, but not folded: as if the replica that accepted it
    // died before its fold pass.
    let mut conn = app.db().conn().unwrap();
    let stored = agents::agent_by_token(&mut conn, &agent).unwrap().unwrap();
    let sub: ResultSubmission =
        serde_json::from_value(submission(&task["assignment_id"], 40_000)).unwrap();
    let accepted = ingest::accept(&mut conn, &stored, &[sub]).unwrap();
    assert!(accepted[0].as_ref().unwrap().queued);
    drop(conn);

    // The background pass (every second) folds and pays it.
    crate::support::all_folded(&app).await;
    let (_, report) = app.report(&owner, &check, "").await;
    assert_eq!(report["rows"][0]["successes"], 1, "{report}");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM result_payments"), 1);
    let (_, balance) = app.get("/api/v1/me/balance", &owner).await;
    assert_eq!(balance["balances"][0]["balance_minor"], OWNER_CREDIT - 5);
    app.controller.stop().await.unwrap();
}

/// Two agents' requests written in one transaction (the controller's group commit):
/// each agent's timely results close their assignments; a submission of the other's
/// assignment is refused whichever request comes first; a late result is stored and
/// leaves its assignment as it was; a repeat in the same request is a duplicate.
async fn a_group_commit_closes_exactly_the_assignments_of_its_timely_results(db: TestDb) {
    // Only this test folds and expires: no background pass.
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.fold_interval_ms = 3_600_000;
    })
    .await;
    let site = crate::support::target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let a = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 2)
        .await;
    let b = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &key, "fibre", 2)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 2}))
        .await;
    app.start_run(&owner, &check).await;
    app.start_run(&owner, &check).await;
    let tasks = |lease: &Value| -> Vec<Value> {
        lease["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["assignment_id"].clone())
            .collect()
    };
    let (_, lease_a) = app.lease(&a, 2).await;
    let (_, lease_b) = app.lease(&b, 2).await;
    let (tasks_a, tasks_b) = (tasks(&lease_a), tasks(&lease_b));
    assert_eq!(
        (tasks_a.len(), tasks_b.len()),
        (2, 2),
        "{lease_a} {lease_b}"
    );
    let id = |t: &Value| t.as_str().unwrap().to_owned();
    let (a1, a2, b1, b2) = (
        id(&tasks_a[0]),
        id(&tasks_a[1]),
        id(&tasks_b[0]),
        id(&tasks_b[1]),
    );
    let mut conn = app.db().conn().unwrap();
    // A's second lease has run out (the expiry pass has not come by): its result is late.
    for sql in [
        format!("UPDATE assignments SET lease_expires_at = 1 WHERE id = '{a2}'"),
        format!("UPDATE open_assignments SET lease_expires_at = 1 WHERE assignment_id = '{a2}'"),
    ] {
        diesel::sql_query(sql).execute(&mut *conn).unwrap();
    }

    let sub = |task: &Value, ttfb: u64| -> ResultSubmission {
        serde_json::from_value(submission(task, ttfb)).unwrap()
    };
    let from_a = vec![
        sub(&tasks_b[0], 41_000),
        sub(&tasks_a[0], 42_000),
        sub(&tasks_a[1], 43_000),
        sub(&tasks_a[0], 42_000),
    ];
    let from_b = vec![sub(&tasks_a[0], 44_000), sub(&tasks_b[0], 45_000)];
    let agent_a = agents::agent_by_token(&mut conn, &a).unwrap().unwrap();
    let agent_b = agents::agent_by_token(&mut conn, &b).unwrap().unwrap();
    let requests = [
        ingest::Request {
            agent: &agent_a,
            subs: &from_a,
        },
        ingest::Request {
            agent: &agent_b,
            subs: &from_b,
        },
    ];
    let answers = ingest::accept_many(&mut conn, &requests, None).unwrap();
    let said: Vec<Vec<String>> = answers
        .into_iter()
        .map(|request| {
            request
                .unwrap()
                .into_iter()
                .map(|answer| match answer {
                    Ok(s) => format!(
                        "{:?}{}",
                        s.ack.disposition,
                        if s.duplicate { " again" } else { "" }
                    ),
                    Err(e) => e.code().to_owned(),
                })
                .collect()
        })
        .collect();
    assert_eq!(
        said,
        vec![
            vec!["assignment_not_yours", "Accepted", "Late", "Accepted again"],
            vec!["assignment_not_yours", "Accepted"],
        ]
    );
    let state = |id: &str| {
        count(
            &app,
            &format!("SELECT COUNT(*) AS n FROM assignments a WHERE a.id = '{id}' AND {DONE}"),
        )
    };
    assert_eq!(
        [state(&a1), state(&a2), state(&b1), state(&b2)],
        [1, 0, 1, 0],
        "closed: the two timely results' assignments only"
    );
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM results"), 3);
    assert_eq!(count(&app, QUEUED), 2);
    drop(conn);
    app.controller.stop().await.unwrap();
}
