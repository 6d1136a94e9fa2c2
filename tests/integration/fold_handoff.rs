//! Results handed from the accepting transaction to the folder in memory
//! (`lastmile_domain::ingest::Handoff`), on both backends: the fold uses what it holds
//! only for the queue entries it took, so a result another replica's folder took first
//! is folded and paid once, and what it does not hold it reads back.

use std::net::Ipv4Addr;

use lastmile_billing::ledger;
use lastmile_domain::ingest::{self, Handoff, Request};
use lastmile_protocol::ResultSubmission;
use serde_json::json;

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(a_result_held_in_memory_and_taken_by_another_folder_is_counted_once);

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
    let handoff = Handoff::default();
    let answers = ingest::accept_many(&mut conn, &requests, Some(&handoff)).unwrap();
    assert!(
        answers.iter().flatten().flatten().all(|a| a.is_ok()),
        "{answers:?}"
    );
    assert_eq!(handoff.len(), 3, "the three queued results are held");

    // Another replica's folder (nothing held) takes one queued result first and reads
    // it back; this one then folds the other two from memory.
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
