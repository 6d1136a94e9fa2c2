//! Results in batches, on both backends: several results in one request
//! (`POST /api/v1/results/batch`), answered one by one; accepted results folded into
//! the report and paid before the answer; results queued but not folded (a replica that
//! died in between) folded by the background pass.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lastmile_billing::ledger;
use lastmile_domain::{agents, ingest};
use lastmile_protocol::ResultSubmission;
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::scene;
use crate::support::{count, TestApp, TestDb, OWNER_CREDIT};

per_backend!(
    a_batch_answers_each_result_in_order_and_counts_and_pays_each_once,
    results_queued_but_not_folded_are_folded_by_the_background_pass,
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
            count(app, "SELECT COUNT(*) AS n FROM fold_queue"),
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&app, "SELECT COUNT(*) AS n FROM fold_queue") > 0 {
        assert!(
            Instant::now() < deadline,
            "the queued result was not folded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, report) = app.report(&owner, &check, "").await;
    assert_eq!(report["rows"][0]["successes"], 1, "{report}");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM result_payments"), 1);
    let (_, balance) = app.get("/api/v1/me/balance", &owner).await;
    assert_eq!(balance["balances"][0]["balance_minor"], OWNER_CREDIT - 5);
    app.controller.stop().await.unwrap();
}
