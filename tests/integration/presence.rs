//! Agents served from memory (`lastmile_domain::presence`, `agent_work`): heartbeats that
//! change nothing are written in batches, a revoked agent is refused within a refresh,
//! an idle agent's long-polled lease gets new work as soon as it is planned, and the
//! scheduler's runs reach agents found idle before, on both backends.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::per_backend;
use crate::scene;
use crate::support::{count, TestApp, TestDb};

per_backend!(
    a_heartbeat_that_changes_nothing_is_written_with_the_next_flush,
    a_revoked_agent_is_refused_within_a_refresh,
    a_waiting_lease_gets_new_work_as_soon_as_it_is_planned,
    a_lease_its_agent_abandoned_gives_way_to_the_agents_next_one,
    an_agent_found_idle_gets_work_planned_by_someone_else,
    more_changed_agents_than_one_refresh_batch_are_all_read,
);

fn last_beat(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT CAST(COALESCE(MAX(last_heartbeat_at), 0) AS BIGINT) AS n FROM agents",
    )
}

async fn beat(app: &TestApp, token: &str, class: &str) -> u16 {
    let body = json!({"declared_class": class, "version": "test", "limits": {"max_concurrent": 1}});
    let (status, _) = app
        .call_from(
            Ipv4Addr::new(127, 0, 0, 2),
            "POST",
            "/api/v1/agents/heartbeat",
            Some(token),
            Some(body),
        )
        .await;
    status
}

async fn a_heartbeat_that_changes_nothing_is_written_with_the_next_flush(db: TestDb) {
    let app = TestApp::start_with(&db, |c| c.presence_flush_ms = 3_600_000).await;
    let key = app.volunteer("volunteer");
    let token = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let first = last_beat(&app);
    assert!(first > 0, "a first heartbeat is written at once");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(beat(&app, &token, "dsl").await, 200);
    assert_eq!(last_beat(&app), first, "nothing changed: held in memory");
    app.flush_heartbeats();
    assert!(last_beat(&app) > first, "written by the flush");
    // A heartbeat that changes the agent (here its declared class) is written at once.
    let flushed = last_beat(&app);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(beat(&app, &token, "cable").await, 200);
    assert!(last_beat(&app) > flushed);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM agents WHERE declared_class = 'cable'"
        ),
        1
    );
}

async fn a_revoked_agent_is_refused_within_a_refresh(db: TestDb) {
    let app = TestApp::start(&db).await;
    let key = app.volunteer("volunteer");
    let stranger = app.volunteer("stranger");
    let token = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let kept = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 1).await;
    assert_eq!(beat(&app, &token, "dsl").await, 200, "held in memory now");
    let agent = lastmile_domain::agents::agent_by_token(&mut app.db().conn().unwrap(), &token)
        .unwrap()
        .unwrap();
    let revoke = |id: String, with: String| {
        let app = &app;
        async move {
            let path = format!("/api/v1/volunteer/agents/{id}/revoke");
            app.call("POST", &path, Some(&with), None).await
        }
    };
    // Only the agent's own volunteer can revoke it.
    let (status, body) = revoke(agent.id.clone(), stranger.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("agent_not_found"))
    );
    let (status, _) = revoke(uuid::Uuid::new_v4().to_string(), key.clone()).await;
    assert_eq!(status, 404);
    assert_eq!(beat(&app, &token, "dsl").await, 200);

    let (status, body) = revoke(agent.id.clone(), key.clone()).await;
    assert_eq!(status, 204, "{body}");
    // The replica that revoked refuses the token at once; another one within its
    // refresh (the test controller reads changed agents every 100 ms; production every
    // 2 s).
    assert_eq!(beat(&app, &token, "dsl").await, 401);
    let (status, _) = app.lease(&token, 1).await;
    assert_eq!(status, 401);
    assert_eq!(
        beat(&app, &kept, "dsl").await,
        200,
        "its other agent works on"
    );
    let (status, _) = revoke(agent.id.clone(), key.clone()).await;
    assert_eq!(status, 204, "revoking again changes nothing");

    // Revoked behind this replica's back (as another replica would): refused within a
    // refresh.
    let other = lastmile_domain::agents::agent_by_token(&mut app.db().conn().unwrap(), &kept)
        .unwrap()
        .unwrap();
    lastmile_domain::agents::revoke(
        &mut app.db().conn().unwrap(),
        &other.volunteer_id,
        &other.id,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match beat(&app, &kept, "dsl").await {
            401 => break,
            200 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("still answered {other} after 5 s"),
        }
    }
}

/// More agent rows changed at once than one refresh reads (10,000: a replica restarting
/// under a big network, every agent's first heartbeat written through) are read in
/// several batches, and the replica keeps serving. It used to take its own lock twice
/// after a full batch and hang every request for good.
async fn more_changed_agents_than_one_refresh_batch_are_all_read(db: TestDb) {
    let app = TestApp::start(&db).await;
    let key = app.volunteer("volunteer");
    let token = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    assert_eq!(beat(&app, &token, "dsl").await, 200, "held in memory now");
    let now = lastmile_domain::clock::now_us();
    diesel::connection::SimpleConnection::batch_execute(
        &mut *app.db().conn().unwrap(),
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10001) \
             INSERT INTO agents (id, volunteer_id, name, token_hash, declared_class, version, \
               max_concurrent, ip, enrolled_at, class_mismatch, calibration_day, \
               calibration_bytes, check_kinds, changed_at, path_trace) \
             SELECT 'bulk-' || i, v.volunteer_id, 'bulk', 'hash-' || i, 'dsl', '1', 1, \
               '192.0.2.1', {now}, false, 0, 0, 'http', {now}, false \
             FROM n, (SELECT volunteer_id FROM agents LIMIT 1) v"
        ),
    )
    .unwrap();
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM agents"), 10_002);
    // The held agent's change comes after all of them: only a second batch reads it.
    let held = lastmile_domain::agents::agent_by_token(&mut app.db().conn().unwrap(), &token)
        .unwrap()
        .unwrap();
    lastmile_domain::agents::revoke(&mut app.db().conn().unwrap(), &held.volunteer_id, &held.id)
        .unwrap();

    let presence = app.controller.state.presence.clone();
    let db = app.db().clone();
    let refreshed = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || presence.refresh(&mut db.conn().unwrap())),
    )
    .await
    .expect("a refresh over 10,001 changed agents returns")
    .unwrap()
    .unwrap();
    assert!(refreshed <= 1, "only the held agent changed: {refreshed}");
    let status = tokio::time::timeout(Duration::from_secs(10), beat(&app, &token, "dsl"))
        .await
        .expect("the controller still answers");
    assert_eq!(status, 401, "the revocation in the second batch was read");
    // Stopped before the test's process exits: its refresh loop, reading 10,001 rows
    // every 100 ms, is otherwise inside libpq when the process tears down (SIGSEGV).
    app.controller.stop().await.unwrap();
}

/// An app with one agent and a check of the scene's site, whose lease found no work
/// (so the controller holds the agent as idle): app, owner token, agent token, check.
async fn idle_agent_and_check(db: &TestDb) -> (TestApp, String, String, String) {
    let (app, site, owner, key) = scene::start(db).await;
    let token = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let check = app
        .site_check(&owner, &site, format!("{}/", site.origin()), json!({}))
        .await;
    let (_, empty) = app.lease(&token, 1).await;
    assert_eq!(empty["tasks"], json!([]), "no work yet: the agent is idle");
    (app, owner, token, check)
}

/// A lease with `wait_s` from an agent that found no work waits; a run planned for it
/// answers it at once.
async fn a_waiting_lease_gets_new_work_as_soon_as_it_is_planned(db: TestDb) {
    let (app, owner, token, check) = idle_agent_and_check(&db).await;

    let waiting = waiting_lease(&app, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "with no work the lease waits");
    // A lease that asks for nothing does not wait for anything (the schema fuzz found
    // one held for the whole 25 s).
    let (status, nothing) = tokio::time::timeout(
        Duration::from_secs(10),
        app.call(
            "POST",
            "/api/v1/agents/lease",
            Some(&token),
            Some(json!({"max": 0, "wait_s": 20})),
        ),
    )
    .await
    .expect("a lease for zero tasks was held");
    assert_eq!((status, &nothing["tasks"]), (200, &json!([])), "{nothing}");
    let (status, run) = app.ask_run(&owner, &check).await;
    let planned = Instant::now();
    assert_eq!(status, 201, "{run}");
    let (answer, answered, waited) = waiting.await.unwrap();
    assert_eq!(answer["tasks"][0]["run_id"], run["id"], "{answer}");
    let delay = answered.saturating_duration_since(planned);
    assert!(
        delay < Duration::from_secs(1),
        "work reached the waiting agent {delay:?} after it was planned (waited {waited:?})"
    );
}

/// A lease that waits (wait 20 s) from `token`, spawned: its answer, when it came and
/// how long it took.
fn waiting_lease(
    app: &TestApp,
    token: &str,
) -> tokio::task::JoinHandle<(serde_json::Value, Instant, Duration)> {
    let (base, token) = (app.base.clone(), token.to_owned());
    tokio::spawn(async move {
        let started = Instant::now();
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{base}/api/v1/agents/lease"))
            .bearer_auth(token)
            .json(&json!({"max": 1, "wait_s": 20}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (answer, Instant::now(), started.elapsed())
    })
}

/// An agent that restarts (or lost its line) while its lease waits leases again; the
/// old lease, which nobody will read, stops waiting at once with nothing, and work
/// planned next goes to the new one.
async fn a_lease_its_agent_abandoned_gives_way_to_the_agents_next_one(db: TestDb) {
    let (app, owner, token, check) = idle_agent_and_check(&db).await;
    let abandoned = waiting_lease(&app, &token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!abandoned.is_finished(), "with no work the lease waits");
    let next = waiting_lease(&app, &token);
    let (answer, _, waited) = tokio::time::timeout(Duration::from_secs(10), abandoned)
        .await
        .expect("the abandoned lease still waits for its 20 s")
        .unwrap();
    assert_eq!(answer["tasks"], json!([]), "{answer}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let (status, run) = app.ask_run(&owner, &check).await;
    assert_eq!(status, 201, "{run}");
    let (answer, _, _) = next.await.unwrap();
    assert_eq!(answer["tasks"][0]["run_id"], run["id"], "{answer}");
}

/// Work planned without this controller's knowledge (another replica, an operator's
/// command; here the domain called directly) reaches an agent its leases found idle,
/// through the work feed.
async fn an_agent_found_idle_gets_work_planned_by_someone_else(db: TestDb) {
    let (app, _, token, check) = idle_agent_and_check(&db).await;
    let policy = app.controller.state.policy;
    let run = app
        .db()
        .run(move |c| {
            let check = lastmile_domain::checks::get_any(c, &check)?;
            lastmile_domain::scheduling::create_run(
                c,
                &check,
                &policy,
                lastmile_domain::clock::now_us(),
            )
        })
        .await
        .unwrap();
    let planned = Instant::now();
    let (status, answer) = app
        .call(
            "POST",
            "/api/v1/agents/lease",
            Some(&token),
            Some(json!({"max": 1, "wait_s": 10})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tasks"][0]["run_id"], run.id.to_string(), "{answer}");
    assert!(
        planned.elapsed() < Duration::from_secs(2),
        "{:?}",
        planned.elapsed()
    );
}
