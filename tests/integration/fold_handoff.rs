//! Results handed from the accepting transaction to the folder in memory
//! (`lastmile_domain::ingest::Handoff`), on both backends: the fold uses what it holds
//! only for the queue entries it took, so a result another replica's folder took first
//! is folded and paid once, and what it does not hold it reads back; and the queue's
//! entries (one per accepting transaction) as a fold takes them.

use std::net::Ipv4Addr;

use lastmile_billing::ledger;
use lastmile_domain::ingest::{self, Handoff, Request};
use lastmile_protocol::ResultSubmission;
use serde_json::json;

use crate::leasing::submission;
use crate::per_backend;
use lastmile_storage::{count_sql, fold_queue, write_tx};

use crate::support::{count, target_site, TestApp, TestDb, QUEUED};

per_backend!(
    a_result_held_in_memory_and_taken_by_another_folder_is_counted_once,
    a_fold_takes_whole_queue_entries_oldest_first_up_to_its_size,
    one_entry_holds_a_transactions_results_and_counts_them_by_run,
    queued_results_whose_rows_are_gone_are_counted_as_missing_not_folded,
);

async fn a_result_held_in_memory_and_taken_by_another_folder_is_counted_once(db: TestDb) {
    // Only this test folds: no background pass, no request waiting for one.
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.fold_interval_ms = 3_600_000;
    })
    .await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let mut tokens = Vec::new();
    for i in 2..=4 {
        tokens.push(
            app.agent(Ipv4Addr::new(127, 0, 0, i), &key, "fibre", 1)
                .await,
        );
    }
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 3}))
        .await;
    app.start_run(&owner, &check).await;
    let mut subs = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let (_, lease) = app.lease(token, 1).await;
        let task = &lease["tasks"][0]["assignment_id"];
        assert!(task.is_string(), "{lease}");
        let sub: ResultSubmission =
            serde_json::from_value(submission(task, 40_000 + i as u64 * 1_000)).unwrap();
        subs.push(vec![sub]);
    }

    let mut conn = app.db().conn().unwrap();
    let agents: Vec<_> = tokens
        .iter()
        .map(|t| {
            lastmile_domain::agents::agent_by_token(&mut conn, t)
                .unwrap()
                .unwrap()
        })
        .collect();
    let requests: Vec<Request> = agents
        .iter()
        .zip(&subs)
        .map(|(agent, subs)| Request { agent, subs })
        .collect();
    // The first request in one transaction, the other two in the next: two queue
    // entries of the run, of one and two results.
    let handoff = Handoff::default();
    for requests in [&requests[..1], &requests[1..]] {
        let answers = ingest::accept_many(&mut conn, requests, Some(&handoff)).unwrap();
        assert!(
            answers.iter().flatten().flatten().all(|a| a.is_ok()),
            "{answers:?}"
        );
    }
    assert_eq!(handoff.len(), 3, "the three queued results are held");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM fold_queue"), 2);

    // Another replica's folder (nothing held) takes the older entry first and reads
    // its result back; this one then folds the other two from memory.
    let elsewhere = ingest::fold_pending(&mut conn, 1, None, None).unwrap();
    assert_eq!(elsewhere.results, 1);
    let here = ingest::fold_pending(&mut conn, 100, Some(&handoff), None).unwrap();
    assert_eq!(here.results, 2, "only the queue entries it took");
    assert_eq!(
        handoff.len(),
        1,
        "the one folded elsewhere is left to age out"
    );
    assert_eq!(
        ingest::fold_pending(&mut conn, 100, Some(&handoff), None)
            .unwrap()
            .results,
        0
    );

    // Counted, paid and balanced once each.
    let (status, report) = app.report(&owner, &check, "window=1d").await;
    assert_eq!(status, 200, "{report}");
    let successes: u64 = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["successes"].as_u64().unwrap())
        .sum();
    assert_eq!(successes, 3, "{report}");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM result_payments"), 3);
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM fold_queue"), 0);
    assert_eq!(ledger::audit(&mut *conn).unwrap(), Vec::<String>::new());
    drop(conn);
    app.controller.stop().await.unwrap();
}

/// The fold queue holds one entry per accepting transaction: a fold takes whole
/// entries, oldest first, until it has `max` results (at least one entry, however
/// large; at most `max / 2` entries looked at), and on PostgreSQL a folder skips the
/// entries another folder holds.
async fn a_fold_takes_whole_queue_entries_oldest_first_up_to_its_size(db: TestDb) {
    let pg = db.backend_name() == "postgres";
    // A migrated database, and no folder but this test's: the controller's folder
    // makes a pass as it starts and another as it stops, and one running while this
    // test queues would take entries.
    let app = TestApp::start(&db).await;
    let database = app.db().clone();
    app.controller.stop().await.unwrap();
    let mut conn = database.conn().unwrap();
    // Runs a, b, c with ten results each, then d, e, f with one, queued in that order.
    let mut expected: Vec<Vec<String>> = Vec::new();
    for (i, (run, results)) in [
        ("a", 10),
        ("b", 10),
        ("c", 10),
        ("d", 1),
        ("e", 1),
        ("f", 1),
    ]
    .into_iter()
    .enumerate()
    {
        let ids: Vec<String> = (0..results).map(|n| format!("{run}{n}")).collect();
        let entries = fold_queue::entries(i as i64 + 1, ids.iter().map(|id| (run, id.as_str())));
        assert_eq!(entries.len(), 1);
        fold_queue::enqueue(&mut conn, &entries).unwrap();
        expected.push(ids);
    }
    assert_eq!(
        count_sql(&mut conn, "SELECT COUNT(*) AS n FROM fold_queue").unwrap(),
        6
    );
    assert_eq!(count_sql(&mut conn, QUEUED).unwrap(), 33);
    assert_eq!(fold_queue::queued_in_run(&mut conn, "a").unwrap(), 10);
    assert_eq!(fold_queue::queued_in_run(&mut conn, "z").unwrap(), 0);
    let results = |runs: &[usize]| -> Vec<String> {
        runs.iter().flat_map(|r| expected[*r].clone()).collect()
    };

    if pg {
        // A folder holding the oldest entry (its transaction still open): another one
        // takes the next, and once the first rolls back the oldest is queued again.
        let mut other = database.conn().unwrap();
        let mut seen = None;
        let rolled_back = write_tx(&mut conn, |c| {
            let mine = fold_queue::take(c, 1)?;
            let theirs = fold_queue::take(&mut other, 1)?;
            seen = Some((mine, theirs));
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        });
        assert!(rolled_back.is_err());
        let (mine, theirs) = seen.unwrap();
        assert_eq!(mine, (results(&[0]), Some((1, 1))));
        assert_eq!(theirs, (results(&[1]), Some((2, 2))));
        // Run b's entry was taken for good (autocommit): queue it again.
        let b = fold_queue::entries(2, expected[1].iter().map(|id| ("b", id.as_str())));
        fold_queue::enqueue(&mut conn, &b).unwrap();
    }

    // 12 results: a and b (20); c would start past 12.
    assert_eq!(
        fold_queue::take(&mut conn, 12).unwrap(),
        (results(&[0, 1]), Some((1, 2)))
    );
    // One entry at least, however large.
    assert_eq!(
        fold_queue::take(&mut conn, 4).unwrap(),
        (results(&[2]), Some((3, 3)))
    );
    // 4 results: no more than two entries looked at.
    assert_eq!(
        fold_queue::take(&mut conn, 4).unwrap(),
        (results(&[3, 4]), Some((4, 5)))
    );
    assert_eq!(
        fold_queue::take(&mut conn, 4).unwrap(),
        (results(&[5]), Some((6, 6)))
    );
    assert_eq!(fold_queue::take(&mut conn, 8).unwrap(), (Vec::new(), None));
    assert_eq!(count_sql(&mut conn, QUEUED).unwrap(), 0);
}

/// A transaction's results of several runs make one entry, and what each run still has
/// queued is counted from it (a run's status waits for them).
async fn one_entry_holds_a_transactions_results_and_counts_them_by_run(db: TestDb) {
    let app = TestApp::start(&db).await;
    let database = app.db().clone();
    app.controller.stop().await.unwrap();
    let mut conn = database.conn().unwrap();
    let results = [
        ("g", "g1"),
        ("h", "h1"),
        ("g", "g2"),
        ("i", "i1"),
        ("g", "g3"),
    ];
    let entries = fold_queue::entries(5, results);
    fold_queue::enqueue(&mut conn, &entries).unwrap();
    assert_eq!(
        count_sql(&mut conn, "SELECT COUNT(*) AS n FROM fold_queue").unwrap(),
        1
    );
    assert_eq!(count_sql(&mut conn, QUEUED).unwrap(), 5);
    let queued: Vec<i64> = ["g", "h", "i", "j"]
        .iter()
        .map(|run| fold_queue::queued_in_run(&mut conn, run).unwrap())
        .collect();
    assert_eq!(queued, vec![3, 1, 1, 0]);
    let ids = ["g1", "h1", "g2", "i1", "g3"].map(String::from).to_vec();
    assert_eq!(fold_queue::take(&mut conn, 2).unwrap(), (ids, Some((5, 5))));
    assert_eq!(fold_queue::queued_in_run(&mut conn, "g").unwrap(), 0);
}

async fn queued_results_whose_rows_are_gone_are_counted_as_missing_not_folded(db: TestDb) {
    // The background pass (every 50 ms) folds what the test queues by hand.
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.fold_interval_ms = 50;
    })
    .await;
    let mut conn = app.db().conn().unwrap();
    // Two results queued whose rows are not stored (as if deleted behind the queue).
    let now = lastmile_domain::clock::now_us();
    let ids = ["gone-1", "gone-2"];
    let entries = fold_queue::entries(now, ids.iter().map(|id| ("run-gone", *id)));
    fold_queue::enqueue(&mut conn, &entries).unwrap();
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count(&app, QUEUED) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue was not emptied in 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, metrics) = app.call("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let counter = |name: &str| -> i64 {
        let metrics = metrics.as_str().unwrap_or_default();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert_eq!(counter("lastmile_results_missing_total"), 2);
    assert_eq!(counter("lastmile_results_folded_total"), 0);
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM result_payments"), 0);
}
