//! Runs, leases and their expiry, on both backends.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use diesel::prelude::*;
use lastmile_domain::check_terms::StoredCheck;
use lastmile_domain::clock::now_us;
use lastmile_domain::{checks, scheduling};
use lastmile_protocol::CheckKind;
use lastmile_testbed::site::TargetSite;
use serde_json::{json, Value};

use crate::per_backend;
use crate::scene;
use crate::support::{TestApp, TestDb};

per_backend!(
    many_agents_leasing_concurrently_never_share_an_assignment,
    expired_lease_is_offered_to_another_agent_and_the_late_result_is_not_counted,
    runs_only_go_to_agents_matching_the_selection,
    a_leased_task_carries_the_checks_expectations,
    page_runs_only_go_to_agents_that_can_load_pages,
    pending_work_of_a_run_past_its_deadline_is_given_up_and_no_other,
    an_expiry_pass_takes_a_bounded_batch_of_overdue_leases_oldest_first,
    a_backlog_of_overdue_leases_is_expired_pass_after_pass_up_to_a_bound,
);

/// A check of the site's home page with `selection` (the site verified first).
async fn check_on_site(app: &TestApp, owner: &str, site: &TargetSite, selection: Value) -> String {
    let home = format!("{}/", site.origin());
    app.site_check(owner, site, home, selection).await
}

async fn many_agents_leasing_concurrently_never_share_an_assignment(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    // 24 agents, 8 from each of three addresses, each allowed 3 leases at once.
    let mut tokens = Vec::new();
    for i in 0..24u8 {
        let source = Ipv4Addr::new(127, 0, 0, 2 + i % 3);
        tokens.push(app.agent(source, &key, "dsl", 3).await);
    }
    let check = check_on_site(&app, &owner, &site, json!({"agents_per_run": 10})).await;
    // Three runs of 10 slots each: 30 assignments for 24 agents.
    for _ in 0..3 {
        let (status, run) = app.ask_run(&owner, &check).await;
        assert_eq!(status, 201, "{run}");
        assert_eq!(run["requested"], 10);
        assert_eq!(run["eligible_agents"], 24);
    }

    // Every agent asks for 3 at the same moment.
    let leases = futures_util::future::join_all(tokens.iter().map(|t| app.lease(t, 3))).await;
    let mut seen = HashSet::new();
    let mut per_agent_runs = Vec::new();
    for (status, body) in &leases {
        assert_eq!(*status, 200, "{body}");
        let tasks = body["tasks"].as_array().unwrap();
        let runs: HashSet<&str> = tasks
            .iter()
            .map(|t| t["run_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            runs.len(),
            tasks.len(),
            "an agent got two assignments of one run: {body}"
        );
        per_agent_runs.push(runs.len());
        for t in tasks {
            assert!(
                seen.insert(t["assignment_id"].as_str().unwrap().to_owned()),
                "assignment leased twice: {t}"
            );
        }
    }
    assert_eq!(seen.len(), 30, "every slot is leased exactly once");

    // Nothing is left to lease.
    let (_, more) = app.lease(&tokens[0], 3).await;
    let left = more["tasks"].as_array().unwrap().len();
    assert_eq!(left, 0);
    let open = assert_open_rows_mirror_open_assignments(&mut app.db().conn().unwrap());
    assert_eq!(open.len(), 30);
    app.controller.stop().await.unwrap();
}

async fn expired_lease_is_offered_to_another_agent_and_the_late_result_is_not_counted(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let slow = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let check = check_on_site(&app, &owner, &site, json!({"agents_per_run": 1})).await;
    app.ask_run(&owner, &check).await;

    let (_, first) = app.lease(&slow, 1).await;
    let first = first["tasks"][0].clone();
    assert!(first.is_object(), "the slow agent got the slot");
    // Online after the run was created: not in it until the slot needs another agent.
    let fast = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &key, "cable", 1)
        .await;
    let (_, early) = app.lease(&fast, 1).await;
    assert_eq!(early["tasks"].as_array().unwrap().len(), 0, "{early}");

    // Time passes beyond the lease; the scheduler's expiry pass runs.
    let db_handle = app.db().clone();
    // (Meanwhile the agents heartbeat: they are still online then.)
    let policy = scheduling::SchedulingPolicy {
        online_window_us: 10 * app.controller.state.policy.lease_us,
        ..app.controller.state.policy
    };
    let later = now_us() + policy.lease_us + 1_000_000;
    let outcome = db_handle
        .run(move |c| scheduling::expire(c, &policy, later))
        .await
        .unwrap();
    assert_eq!(outcome.expired_leases, 1);
    assert_eq!(outcome.reoffered, 1);

    // The slow agent may not take the slot again; the other agent gets it.
    let (_, again) = app.lease(&slow, 1).await;
    assert_eq!(again["tasks"].as_array().unwrap().len(), 0);
    let second = app.lease_when_offered(&fast, 1).await;
    let second = second["tasks"][0].clone();
    assert_eq!(second["run_id"], first["run_id"]);
    assert_ne!(second["assignment_id"], first["assignment_id"]);

    // The slow agent's result arrives late: stored, acknowledged as late, not counted.
    let late = submission(&first["assignment_id"], 90_000);
    let (status, ack) = app.submit(&slow, late).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["disposition"], "late");
    let on_time = submission(&second["assignment_id"], 20_000);
    let (status, ack) = app.submit(&fast, on_time).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["disposition"], "accepted");
    // Both sent again (as an agent that did not get its answer does): the same answers,
    // and each result stored once, the expired assignment's and the closed one's. (The
    // re-offered assignment was created at the expiry pass's time, ahead of the clock
    // its result was received by, as with a replica whose clock runs ahead: the look for
    // an earlier result bounded by that creation missed it, and stored it again.)
    for (token, assignment, ttfb, said) in [
        (&slow, &first, 90_000, "late"),
        (&fast, &second, 20_000, "accepted"),
    ] {
        let again = submission(&assignment["assignment_id"], ttfb);
        let (status, ack) = app.submit(token, again).await;
        assert_eq!(
            (status, ack["disposition"].as_str()),
            (200, Some(said)),
            "{ack}"
        );
    }
    assert_eq!(
        crate::support::count(&app, "SELECT COUNT(*) AS n FROM results"),
        2
    );
    assert_open_rows_mirror_open_assignments(&mut app.db().conn().unwrap());

    let (_, report) = app
        .report(&owner, &check, "group_by=connection_class")
        .await;
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["group"]["connection_class"], "cable");
    assert_eq!(rows[0]["samples"], 1);
    app.controller.stop().await.unwrap();
}

async fn runs_only_go_to_agents_matching_the_selection(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    // 127.0.0.2 is DE/AS64501, .3 is US, .5 is DE/AS64504.
    let de_dsl = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let us_dsl = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 1).await;
    let de_fibre = app
        .agent(Ipv4Addr::new(127, 0, 0, 5), &key, "fibre", 1)
        .await;
    let check = check_on_site(
        &app,
        &owner,
        &site,
        json!({"agents_per_run": 5, "countries": ["de"], "connection_classes": ["dsl", "cable"]}),
    )
    .await;
    let (_, run) = app.ask_run(&owner, &check).await;
    assert_eq!(run["eligible_agents"], 1, "{run}");
    assert_eq!(run["requested"], 1);
    for (token, expected) in [(&us_dsl, 0), (&de_fibre, 0), (&de_dsl, 1)] {
        let (_, lease) = app.lease(token, 1).await;
        assert_eq!(
            lease["tasks"].as_array().unwrap().len(),
            expected,
            "{lease}"
        );
    }

    // The same rule, straight through the domain layer: selection by ASN.
    let db_handle = app.db().clone();
    let owner_id = {
        let (_, me) = app.get("/api/v1/me", &owner).await;
        me["id"].as_str().unwrap().to_owned()
    };
    let policy = app.controller.state.policy;
    let eligible = db_handle
        .run(move |c| {
            let check = checks::get(c, &owner_id, &check)?;
            let mut sel = check.selection();
            sel.countries.clear();
            sel.connection_classes.clear();
            sel.asns = vec![64_504];
            scheduling::count_eligible(c, &sel, CheckKind::Http, &policy, now_us())
        })
        .await
        .unwrap();
    assert_eq!(eligible, 1);
    app.controller.stop().await.unwrap();
}

/// A successful result for an assignment with the given total time. Like real
/// measurements, no two calls give exactly the same timings (the DNS time differs by
/// a microsecond), so verification does not take them for copies or replays.
pub fn submission(assignment_id: &Value, total_us: u64) -> Value {
    static JITTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dns = 10 + JITTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "assignment_id": assignment_id,
        "started_at": chrono::Utc::now().to_rfc3339(),
        "measurement": {
            "status": 200, "bytes": 1000, "error": null,
            "timings_us": {"dns": dns, "connect": 100, "tls": 0, "ttfb": total_us / 2, "transfer": total_us / 4, "total": total_us}
        }
    })
}

async fn a_leased_task_carries_the_checks_expectations(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let agent = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let site_id = app.verified_site(&owner, &site).await;
    let (status, check) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()),
                "selection": {"agents_per_run": 1}, "expected_status": [200, 301],
                "body_contains": "Welcome", "max_bytes": 5000, "max_redirects": 2}),
        )
        .await;
    assert_eq!(status, 201, "{check}");
    assert_eq!(check["body_contains"], "Welcome");
    assert_eq!(check["max_redirects"], 2);
    let id = check["id"].as_str().unwrap();
    let (status, _) = app.ask_run(&owner, id).await;
    assert_eq!(status, 201);
    let (status, lease) = app.lease(&agent, 1).await;
    assert_eq!(status, 200, "{lease}");
    let task = &lease["tasks"][0];
    assert_eq!(task["expected_status"], json!([200, 301]), "{task}");
    assert_eq!(task["body_contains"], "Welcome", "{task}");
    assert_eq!(task["max_bytes"], 5000, "{task}");
    assert_eq!(task["max_redirects"], 2, "{task}");
}

/// An agent from before page loads lists no kinds in its heartbeat: it would fail to
/// parse a page task (and lose its whole lease), so page runs leave it out while http
/// runs still plan it in.
async fn page_runs_only_go_to_agents_that_can_load_pages(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let old = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 2).await;
    let new = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 2).await;
    let (status, ack) = app
        .call_from(
            Ipv4Addr::new(127, 0, 0, 3),
            "POST",
            "/api/v1/agents/heartbeat",
            Some(&new),
            Some(json!({"declared_class": "dsl", "version": "test",
                        "limits": {"max_concurrent": 2}, "kinds": ["http", "page"]})),
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    let site_id = app.verified_site(&owner, &site).await;
    let mut runs = Vec::new();
    for kind in ["page", "http"] {
        let check = app
            .create_check(
                &owner,
                json!({"site_id": site_id, "url": format!("{}/", site.origin()), "kind": kind}),
            )
            .await;
        let id = check["id"].as_str().unwrap().to_owned();
        let (status, run) = app.ask_run(&owner, &id).await;
        assert_eq!(status, 201, "{run}");
        runs.push(run);
    }
    assert_eq!(runs[0]["eligible_agents"], 1, "page run: {}", runs[0]);
    assert_eq!(runs[1]["eligible_agents"], 2, "http run: {}", runs[1]);

    // The old agent is offered the http task only; the new one gets both.
    let kinds_leased = |token: String| {
        let app = &app;
        async move {
            let (status, lease) = app.lease(&token, 2).await;
            assert_eq!(status, 200, "{lease}");
            let mut kinds: Vec<String> = lease["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["kind"].as_str().unwrap().to_owned())
                .collect();
            kinds.sort();
            kinds
        }
    };
    assert_eq!(kinds_leased(old).await, ["http"]);
    assert_eq!(kinds_leased(new).await, ["http", "page"]);
}

/// At its deadline a run's slots no agent took are given up (expired), and the run is
/// finished; a run still in time keeps its pending slots.
async fn pending_work_of_a_run_past_its_deadline_is_given_up_and_no_other(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let mut agents = Vec::new();
    for i in 2..=4 {
        agents.push(app.agent(Ipv4Addr::new(127, 0, 0, i), &key, "dsl", 1).await);
    }
    let check = check_on_site(&app, &owner, &site, json!({"agents_per_run": 3})).await;
    let (status, old) = app.ask_run(&owner, &check).await;
    assert_eq!(status, 201, "{old}");
    // One agent takes its slot; the other two slots wait.
    let (_, taken) = app.lease(&agents[0], 1).await;
    assert_eq!(taken["tasks"].as_array().unwrap().len(), 1, "{taken}");

    // The expiry pass runs just past the run's deadline (its leases still in time), with
    // a second run created just before it, still in time.
    // (Meanwhile the agents heartbeat: they are still online then.)
    let policy = scheduling::SchedulingPolicy {
        online_window_us: 10 * app.controller.state.policy.run_deadline_us,
        ..app.controller.state.policy
    };
    let at_deadline = now_us() + policy.run_deadline_us + 1;
    let mut conn = app.db().conn().unwrap();
    let check_row = lastmile_storage::checks::get_any(&mut conn, &check).unwrap();
    let live = scheduling::create_run(&mut conn, &check_row, &policy, at_deadline - 2).unwrap();
    assert_eq!(live.pending, 3, "{live:?}");
    let outcome = scheduling::expire(&mut conn, &policy, at_deadline).unwrap();
    assert_eq!(outcome.abandoned, 2, "{outcome:?}");
    assert_open_rows_mirror_open_assignments(&mut conn);
    drop(conn);

    let run_path = |id: &Value| format!("/api/v1/checks/{check}/runs/{}", id.as_str().unwrap());
    let (_, old) = app.get(&run_path(&old["id"]), &owner).await;
    // The leased slot is the lease's to keep or lose; the two waiting ones are given up.
    assert_eq!(old["pending"], 0, "{old}");
    assert_eq!(
        old["leased"].as_u64().unwrap() + old["expired"].as_u64().unwrap(),
        3,
        "{old}"
    );
    let (_, live) = app
        .get(&run_path(&json!(live.id.to_string())), &owner)
        .await;
    assert_eq!(
        (&live["pending"], &live["expired"]),
        (&json!(3), &json!(0)),
        "{live}"
    );
    app.controller.stop().await.unwrap();
}

/// On SQLite, which keeps no statistics, the filters written with the state in the
/// statement use the partial indexes whose predicates name that state: an agent's
/// leases in flight (counted by every lease with work) through the index of leased
/// assignments by agent, not by reading every leased assignment.
#[test]
fn on_sqlite_a_state_in_the_statement_uses_its_partial_index() {
    use diesel::{QueryDsl, RunQueryDsl};
    use lastmile_storage::assignments::{in_state, state};
    use lastmile_storage::schema::open_assignments;
    #[derive(diesel::QueryableByName)]
    struct Step {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }
    let db = crate::support::TestDb::new(lastmile_storage::Backend::Sqlite);
    let pool = lastmile_storage::Db::open(&db.url, 1).unwrap();
    let plan = |sql: String| -> Vec<String> {
        diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .load::<Step>(&mut *pool.conn().unwrap())
            .unwrap()
            .into_iter()
            .map(|step| step.detail)
            .collect()
    };
    let busy = open_assignments::table
        .filter(in_state(state::LEASED))
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "\"open_assignments\".\"agent_id\" = 'agent'",
        ))
        .count();
    let sql = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&busy).to_string();
    let sql = sql.split(" -- binds").next().unwrap().to_owned();
    let steps = plan(sql);
    assert!(
        steps
            .iter()
            .any(|s| s.contains("open_assignments_leased_agent")),
        "{steps:#?}"
    );
}

/// A mass expiry is worked off in bounded passes, the leases that ran out first first:
/// one pass is never a transaction the size of every overdue lease.
/// Three agents' leases of one run, run out 20, 10 and 30 seconds before the `now`
/// returned, each agent allowed one lease.
async fn three_overdue_leases(db: &TestDb) -> (TestApp, Vec<String>, i64) {
    let (app, site, owner, key) = scene::start(db).await;
    let mut agents = Vec::new();
    for i in 2..=4 {
        agents.push(app.agent(Ipv4Addr::new(127, 0, 0, i), &key, "dsl", 1).await);
    }
    let check = check_on_site(&app, &owner, &site, json!({"agents_per_run": 3})).await;
    let (status, run) = app.ask_run(&owner, &check).await;
    assert_eq!(status, 201, "{run}");
    let mut leased = Vec::new();
    for agent in &agents {
        let (_, taken) = app.lease(agent, 1).await;
        let id = taken["tasks"][0]["assignment_id"]
            .as_str()
            .unwrap()
            .to_owned();
        leased.push(id);
    }
    // The three leases ran out in the order third, first, second.
    let now = now_us();
    let mut conn = app.db().conn().unwrap();
    for (id, ago_s) in leased.iter().zip([20, 10, 30]) {
        let at = now - ago_s * 1_000_000;
        for sql in [
            format!("UPDATE assignments SET lease_expires_at = {at} WHERE id = '{id}'"),
            format!(
                "UPDATE open_assignments SET lease_expires_at = {at} WHERE assignment_id = '{id}'"
            ),
        ] {
            diesel::sql_query(sql).execute(&mut *conn).unwrap();
        }
    }
    drop(conn);
    (app, leased, now)
}

fn expired_ids(conn: &mut lastmile_storage::DbConn) -> Vec<String> {
    let mut ids: Vec<String> = lastmile_storage::schema::assignments::table
        .filter(lastmile_storage::schema::assignments::state.eq(scheduling::state::EXPIRED))
        .select(lastmile_storage::schema::assignments::id)
        .load(conn)
        .unwrap();
    ids.sort();
    ids
}

async fn an_expiry_pass_takes_a_bounded_batch_of_overdue_leases_oldest_first(db: TestDb) {
    let (app, leased, now) = three_overdue_leases(&db).await;
    let mut conn = app.db().conn().unwrap();
    let policy = app.controller.state.policy;
    let expired = expired_ids;
    let first = scheduling::expire_at_most(&mut conn, &policy, now, 2).unwrap();
    assert_eq!(first.expired_leases, 2, "{first:?}");
    let mut oldest = vec![leased[2].clone(), leased[0].clone()];
    oldest.sort();
    assert_eq!(
        expired(&mut conn),
        oldest,
        "the two leases that ran out first"
    );
    let second = scheduling::expire_at_most(&mut conn, &policy, now, 2).unwrap();
    assert_eq!(second.expired_leases, 1, "{second:?}");
    let mut all = leased.clone();
    all.sort();
    assert_eq!(expired(&mut conn), all);
}

/// The scheduler's tick runs passes back to back while they come back full: a backlog
/// is cleared in one tick, a transaction a batch, but never more than the passes given.
async fn a_backlog_of_overdue_leases_is_expired_pass_after_pass_up_to_a_bound(db: TestDb) {
    let (app, leased, now) = three_overdue_leases(&db).await;
    let mut conn = app.db().conn().unwrap();
    let policy = app.controller.state.policy;
    // Batches of one, at most two passes: two leases, and more may be waiting.
    let bounded = scheduling::expire_backlog(&mut conn, &policy, now, 1, 2).unwrap();
    assert_eq!(bounded.expired_leases, 2, "{bounded:?}");
    assert!(bounded.full, "{bounded:?}");
    assert_eq!(expired_ids(&mut conn).len(), 2);
    // Passes enough: the last lease, then a pass that finds nothing and stops.
    let rest = scheduling::expire_backlog(&mut conn, &policy, now, 1, 10).unwrap();
    assert_eq!(rest.expired_leases, 1, "{rest:?}");
    assert!(!rest.full, "{rest:?}");
    let mut all = leased.clone();
    all.sort();
    assert_eq!(expired_ids(&mut conn), all);
    // The three re-offers are open work, the expired leases no longer are.
    let open = assert_open_rows_mirror_open_assignments(&mut conn);
    assert_eq!(open.len(), 3, "{open:#?}");
    assert!(open.iter().all(|o| !leased.contains(&o.assignment_id)));
}

/// Open work is looked up in `open_assignments`: every pending or leased assignment
/// has its row there, with the same run, check, state, agent, offer time and lease
/// deadline, and no other assignment has one, except a leased one closed by its
/// result, which has none and has its timely result. Returns the open rows.
pub fn assert_open_rows_mirror_open_assignments(
    conn: &mut lastmile_storage::DbConn,
) -> Vec<lastmile_storage::assignments::OpenAssignment> {
    use lastmile_storage::assignments::{Assignment, OpenAssignment};
    use lastmile_storage::schema::{assignments, open_assignments};
    let open: Vec<OpenAssignment> = open_assignments::table
        .order(open_assignments::assignment_id)
        .select(OpenAssignment::as_select())
        .load(conn)
        .unwrap();
    let open_ids: std::collections::HashSet<&str> =
        open.iter().map(|o| o.assignment_id.as_str()).collect();
    let (expected, closed): (Vec<Assignment>, Vec<Assignment>) = assignments::table
        .filter(assignments::state.eq_any([scheduling::state::PENDING, scheduling::state::LEASED]))
        .order(assignments::id)
        .select(Assignment::as_select())
        .load(conn)
        .unwrap()
        .into_iter()
        .partition(|a| open_ids.contains(a.id.as_str()));
    let expected: Vec<OpenAssignment> = expected.iter().map(OpenAssignment::of).collect();
    assert_eq!(open, expected, "open_assignments against assignments");
    for a in closed {
        assert_eq!(
            a.state,
            scheduling::state::LEASED,
            "{a:?} has lost its open row"
        );
        let timely: i64 = lastmile_storage::schema::results::table
            .filter(lastmile_storage::schema::results::assignment_id.eq(&a.id))
            .filter(lastmile_storage::schema::results::late.eq(false))
            .count()
            .get_result(conn)
            .unwrap();
        assert_eq!(timely, 1, "{a:?} has no open row and no timely result");
    }
    open
}

/// On PostgreSQL a result closes its assignment without writing its row in
/// `assignments`: the close deletes the open row, and the row keeps `leased` (see
/// `lastmile_storage::assignments`). Before, the close was an update there, a HOT one
/// since migration 000047 but not always (one in five in `bench ingest`). Counted in
/// the closing transaction's own statistics; the run then counts the assignment done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_result_closes_its_assignment_without_writing_its_row() {
    use lastmile_domain::{agents, ingest};
    #[derive(diesel::QueryableByName, Debug, PartialEq)]
    struct Updates {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n_tup_upd: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n_tup_hot_upd: i64,
    }
    let db = TestDb::new(lastmile_storage::Backend::Postgres);
    let (app, owner, check, agent) = one_agent_one_slot(&db).await;
    let task = app.run_and_lease(&owner, &check, &agent).await;
    let mut conn = app.db().conn().unwrap();
    let stored = agents::agent_by_token(&mut conn, &agent).unwrap().unwrap();
    let sub: lastmile_protocol::ResultSubmission =
        serde_json::from_value(submission(&task["assignment_id"], 40_000)).unwrap();
    // The transaction's view also holds what this connection did before and has not
    // reported yet (the controller shares the pool): the close is the difference.
    let updates = |c: &mut lastmile_storage::DbConn| {
        diesel::sql_query(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables \
             WHERE relname = 'assignments'",
        )
        .get_result::<Updates>(c)
    };
    let updates = conn
        .transaction(|c| {
            let before = updates(c)?;
            let accepted = ingest::accept(c, &stored, &[sub]).unwrap();
            assert!(accepted[0].is_ok(), "{accepted:?}");
            let after = updates(c)?;
            Ok::<_, diesel::result::Error>(Updates {
                n_tup_upd: after.n_tup_upd - before.n_tup_upd,
                n_tup_hot_upd: after.n_tup_hot_upd - before.n_tup_hot_upd,
            })
        })
        .unwrap();
    assert_eq!(
        updates,
        Updates {
            n_tup_upd: 0,
            n_tup_hot_upd: 0
        },
        "the close writes nothing in assignments"
    );
    assert!(assert_open_rows_mirror_open_assignments(&mut conn).is_empty());
    let run = run_of(&app, &owner, &check, &task).await;
    assert_eq!(
        (run["done"].as_u64(), run["leased"].as_u64()),
        (Some(1), Some(0)),
        "{run}"
    );
    drop(conn);
    app.controller.stop().await.unwrap();
}

/// A result's close and the expiry pass meet on the open row, since the close no longer
/// writes (nor locks) the assignment's row in `assignments`: an expiry pass that runs
/// while a timely result is closing the lease, its transaction not yet committed,
/// skips that lease, and the assignment ends done, not expired and offered again (its
/// slot measured twice), though the pass runs past the lease's deadline. Locking only the `assignments` row, the pass would expire it
/// and then wait for the close's open row: here, its lock timeout. PostgreSQL only
/// (SQLite has one writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_expiry_pass_skips_a_lease_whose_result_is_closing_it() {
    use diesel::connection::SimpleConnection;
    use lastmile_domain::{agents, ingest};
    let db = TestDb::new(lastmile_storage::Backend::Postgres);
    let (app, owner, check, agent) = one_agent_one_slot(&db).await;
    let task = app.run_and_lease(&owner, &check, &agent).await;
    let mut closing = app.db().conn().unwrap();
    let mut expiring = app.db().conn().unwrap();
    expiring.batch_execute("SET lock_timeout = '3s'").unwrap();
    let stored = agents::agent_by_token(&mut closing, &agent)
        .unwrap()
        .unwrap();
    let sub: lastmile_protocol::ResultSubmission =
        serde_json::from_value(submission(&task["assignment_id"], 40_000)).unwrap();
    // The controller's own policy, a second past the lease.
    let policy = app.controller.state.policy;
    let later = now_us() + policy.lease_us + 1_000_000;
    let during = closing
        .transaction(|c| {
            let accepted = ingest::accept(c, &stored, &[sub]).unwrap();
            assert!(accepted[0].is_ok(), "{accepted:?}");
            Ok::<_, diesel::result::Error>(scheduling::expire_at_most(
                &mut expiring,
                &policy,
                later,
                10,
            ))
        })
        .unwrap();
    let during = during.expect("the expiry pass beside the close");
    assert_eq!(
        (during.expired_leases, during.reoffered),
        (0, 0),
        "the lease being closed is skipped: {during:?}"
    );
    // Once the close has committed, there is nothing left to expire.
    let after = scheduling::expire_at_most(&mut expiring, &policy, later, 10).unwrap();
    assert_eq!((after.expired_leases, after.reoffered), (0, 0), "{after:?}");
    assert!(assert_open_rows_mirror_open_assignments(&mut expiring).is_empty());
    let run = run_of(&app, &owner, &check, &task).await;
    assert_eq!(
        (
            run["done"].as_u64(),
            run["expired"].as_u64(),
            run["pending"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{run}"
    );
    drop((closing, expiring));
    app.controller.stop().await.unwrap();
}

/// The lease's statements and the close of a result are kept prepared on PostgreSQL
/// (`lastmile_storage::prepared`): parsed once per connection and, once PostgreSQL has
/// seen five calls, run on one generic plan, instead of parsed and planned every call
/// (about half of a lease's PostgreSQL time). Without the wrapper, `diesel::sql_query`
/// and `UPDATE` statements are sent unnamed and never show here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_lease_and_the_close_stay_prepared() {
    use lastmile_domain::{agents, ingest};
    #[derive(diesel::QueryableByName, Debug)]
    struct PreparedStatement {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        generic_plans: i64,
    }
    let db = TestDb::new(lastmile_storage::Backend::Postgres);
    let (app, owner, check, agent) = one_agent_one_slot(&db).await;
    let mut conn = app.db().conn().unwrap();
    let stored = agents::agent_by_token(&mut conn, &agent).unwrap().unwrap();
    // Not held back by its own leases: each call takes the new run's slot.
    let unbounded = agents::Agent {
        max_concurrent: i32::MAX,
        ..stored.clone()
    };
    let policy = scheduling::SchedulingPolicy {
        lease_us: 600_000_000,
        online_window_us: 600_000_000,
        max_attempts: 3,
        run_deadline_us: 3_600_000_000,
        offer_us: 60_000_000,
    };
    let calls = 7;
    for _ in 0..calls {
        app.start_run(&owner, &check).await;
        let leased = scheduling::lease(&mut conn, &unbounded, 1, &policy, now_us()).unwrap();
        assert_eq!(leased.tasks.len(), 1, "each run's one slot is leased");
        let sub: lastmile_protocol::ResultSubmission =
            serde_json::from_value(submission(&json!(leased.tasks[0].assignment_id), 40_000))
                .unwrap();
        let accepted = ingest::accept(&mut conn, &stored, &[sub]).unwrap();
        assert!(accepted[0].is_ok(), "{accepted:?}");
    }
    let prepared: Vec<PreparedStatement> =
        diesel::sql_query("SELECT statement, generic_plans FROM pg_prepared_statements")
            .load(&mut conn)
            .unwrap();
    let find = |start: &str| {
        prepared
            .iter()
            .find(|p| p.statement.starts_with(start))
            .unwrap_or_else(|| panic!("{start}... is not kept prepared: {prepared:#?}"))
    };
    // The lease: the slot taken, its open row, the agent's leases in flight; the close.
    find("UPDATE assignments SET state = 'leased'");
    find("SELECT COUNT(*) FROM \"open_assignments\"");
    find("DELETE FROM \"open_assignments\"");
    // A write by key has one plan whatever its key: PostgreSQL settles on it.
    let open = find("UPDATE \"open_assignments\" SET \"state\"");
    assert!(
        open.generic_plans > 0,
        "the open row's update runs on a generic plan after {calls} calls: {open:?}"
    );
    drop(conn);
    app.controller.stop().await.unwrap();
}

/// The run of a leased task, as its owner reads it.
async fn run_of(app: &TestApp, owner: &str, check: &str, task: &Value) -> Value {
    let run_id = task["run_id"].as_str().unwrap();
    let (status, run) = app
        .get(&format!("/api/v1/checks/{check}/runs/{run_id}"), owner)
        .await;
    assert_eq!(status, 200, "{run}");
    run
}

/// A controller with one fibre agent and a check of one slot a run: the app, the
/// owner's token, the check and the agent's token.
async fn one_agent_one_slot(db: &TestDb) -> (TestApp, String, String, String) {
    let (app, site, owner, key) = scene::start(db).await;
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let check = check_on_site(&app, &owner, &site, json!({"agents_per_run": 1})).await;
    (app, owner, check, agent)
}
