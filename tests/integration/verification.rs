//! Result verification, rule by rule, on both backends: each rule flags a result made
//! up with realistic numbers, and leaves honest results (including slow, noisy lines)
//! alone. A flagged result is kept and listed for operators, but is not in the report,
//! not charged to the owner, not earned by the volunteer and not on the leaderboard.

use std::net::Ipv4Addr;

use lastmile_testbed::site::TargetSite;
use serde_json::{json, Value};

use crate::per_backend;
use crate::support::{balance_sheet, target_site, TestApp, TestDb, OWNER_CREDIT};

per_backend!(
    a_ttfb_shorter_than_the_line_allows_is_flagged_kept_and_not_paid,
    a_body_faster_than_the_calibrated_line_is_flagged_and_slow_lines_are_not,
    a_result_far_from_its_peers_is_flagged_and_honest_variance_is_not,
    copied_and_replayed_results_are_flagged_and_resubmission_is_not,
    only_one_agent_per_volunteer_and_address_is_paid_for_a_run,
    a_farm_submitting_all_at_once_is_still_paid_once_a_run,
    requests_written_in_one_batch_are_judged_as_if_one_after_the_other,
    the_flag_list_is_for_operators_only,
    timings_no_line_can_produce_are_flagged_whatever_the_calibration,
    a_result_with_neither_status_nor_error_is_refused,
    an_uncalibrated_agent_gets_no_work_and_is_not_paid,
    a_load_check_answered_with_a_bare_fetch_is_flagged_missing_summary_and_not_paid,
);

pub const ADMIN: &str = "test-admin-token";

/// A controller whose scheduler stays out of the way (runs are made by the test) and
/// whose admin token is [`ADMIN`].
pub async fn admin_app(db: &TestDb) -> TestApp {
    TestApp::start_with(db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.admin_token = Some(ADMIN.into());
    })
    .await
}

/// An owner (token) with a verified site and a check of `agents_per_run`.
async fn owner_and_check(app: &TestApp, agents_per_run: u32) -> (String, String, TargetSite) {
    let site = target_site().await;
    let owner = app.owner("owner");
    let home = format!("{}/", site.origin());
    let selection = json!({ "agents_per_run": agents_per_run });
    let check = app.site_check(&owner, &site, home, selection).await;
    (owner, check, site)
}

/// Marks the agent calibrated as its declared class with these figures, as the
/// controller would have timed them (calibration itself is tested in calibration.rs).
async fn calibrate(app: &TestApp, token: &str, rtt_ms: u64, down_bps: u64) {
    let mut conn = app.db().conn().unwrap();
    let agent = lastmile_domain::agents::agent_by_token(&mut conn, token)
        .unwrap()
        .unwrap();
    drop(conn);
    crate::support::set_calibration(
        app,
        token,
        Some((
            &agent.declared_class,
            (rtt_ms * 1000) as i64,
            down_bps as i64,
        )),
    );
}

/// Leases the agent's one assignment.
async fn lease(app: &TestApp, token: &str) -> Value {
    let (status, lease) = app.lease(token, 1).await;
    assert_eq!(status, 200, "{lease}");
    lease["tasks"][0]["assignment_id"].clone()
}

/// A successful measurement: dns, connect, ttfb, transfer in µs (total is their sum
/// plus 1 ms), and body bytes.
fn measured(assignment: &Value, t: [u64; 4], bytes: u64) -> Value {
    let [dns, connect, ttfb, transfer] = t;
    json!({
        "assignment_id": assignment,
        "started_at": chrono::Utc::now().to_rfc3339(),
        "measurement": {
            "status": 200, "bytes": bytes, "error": null,
            "timings_us": {"dns": dns, "connect": connect, "tls": 0, "ttfb": ttfb,
                "transfer": transfer, "total": dns + connect + ttfb + transfer + 1000}
        }
    })
}

/// Leases the agent's one assignment and submits a successful measurement for it (see
/// [`measured`]).
async fn submit_measured(app: &TestApp, token: &str, t: [u64; 4], bytes: u64) -> Value {
    let assignment = lease(app, token).await;
    submit(app, token, &measured(&assignment, t, bytes)).await
}

/// Submits `body` as the agent's result; asserts that it is accepted and returns the
/// acknowledgement.
async fn submit(app: &TestApp, token: &str, body: &Value) -> Value {
    let (status, ack) = app.submit(token, body.clone()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["disposition"], "accepted", "{ack}");
    ack
}

/// What `GET /api/v1/ops/flags` lists.
pub async fn flags(app: &TestApp) -> Value {
    let (status, list) = app
        .call("GET", "/api/v1/ops/flags", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{list}");
    list
}

/// What [`rules_by_assignment`] gives when only `assignment` is flagged, by `rule`.
fn flagged_once(assignment: &Value, rule: &str) -> [(String, Vec<String>); 1] {
    let assignment = assignment.as_str().unwrap().to_owned();
    [(assignment, vec![rule.to_owned()])]
}

/// The rules of each flagged result, by assignment id.
fn rules_by_assignment(list: &Value) -> Vec<(String, Vec<String>)> {
    list["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["assignment_id"].as_str().unwrap().to_owned(),
                f["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["rule"].as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// A holder's first balance (owner credit or volunteer earnings), minor units.
pub async fn balance(app: &TestApp, token: &str) -> i64 {
    balance_sheet(app, token).await["balances"][0]["balance_minor"]
        .as_i64()
        .unwrap()
}

/// Samples per country in the check's report.
pub async fn samples_by_country(app: &TestApp, owner: &str, check: &str) -> Vec<(String, u64)> {
    let (status, report) = app.report(owner, check, "group_by=country").await;
    assert_eq!(status, 200, "{report}");
    let mut rows: Vec<(String, u64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"]["country"].as_str().unwrap_or("").to_owned(),
                r["samples"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

async fn a_ttfb_shorter_than_the_line_allows_is_flagged_kept_and_not_paid(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 3).await;
    let honest_key = app.volunteer("Honest Ada");
    let cheat_key = app.volunteer("Cheating Carl");
    // Both DSL lines, 16 Mbit/s and 40 ms to the controller; a third calibrated on a
    // line next door (support's default: 40 µs).
    let honest = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &honest_key, "dsl", 1)
        .await;
    calibrate(&app, &honest, 40, 16_000_000).await;
    let cheat = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &cheat_key, "dsl", 1)
        .await;
    calibrate(&app, &cheat, 40, 16_000_000).await;
    let uncalibrated = app
        .agent(Ipv4Addr::new(127, 0, 0, 4), &honest_key, "dsl", 1)
        .await;
    let run_id = app.start_run(&owner, &check).await;

    // Honest: a nearby site answers in 22 ms, below the 40 ms to the controller but
    // above the DSL access floor (10 ms).
    submit_measured(&app, &honest, [900, 21_000, 22_000, 4_100], 8192).await;
    // Made up: 2 ms to the first byte over a 40 ms DSL line.
    let fake_id = lease(&app, &cheat).await;
    let fake = measured(&fake_id, [300, 800, 2_000, 400], 8192);
    let first_ack = submit(&app, &cheat, &fake).await;
    // A 1 ms ttfb is nothing unusual for a line 40 µs from the controller.
    submit_measured(&app, &uncalibrated, [100, 500, 1_000, 300], 8192).await;
    // A retry of the flagged submission: same answer, no second flag, still unpaid.
    assert_eq!(submit(&app, &cheat, &fake).await, first_ack);

    let list = flags(&app).await;
    assert_eq!(
        rules_by_assignment(&list),
        flagged_once(&fake_id, "ttfb_below_rtt"),
        "{list}"
    );
    let flag = &list["flags"][0];
    assert_eq!(flag["volunteer_name"], "Cheating Carl");
    assert_eq!(flag["check_id"], check.as_str());
    assert_eq!(flag["agent_address"], "127.0.0.3");
    let evidence = &flag["reasons"][0]["evidence"];
    assert_eq!(evidence["ttfb_us"], 2_000, "{evidence}");
    assert_eq!(evidence["calibrated_rtt_us"], 40_000, "{evidence}");
    assert_eq!(evidence["floor_us"], 10_000, "{evidence}");
    assert_eq!(list["per_agent"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["per_agent"][0]["flagged_results"], 1, "{list}");

    // Kept: the result is stored.
    assert_eq!(
        crate::support::count(
            &app,
            "SELECT COUNT(*) AS n FROM results WHERE flagged AND ttfb_us = 2000"
        ),
        1
    );
    // Out of the report: DE (honest) and BR (next door) only, not the US cheater.
    assert_eq!(
        samples_by_country(&app, &owner, &check).await,
        [("BR".to_owned(), 1), ("DE".to_owned(), 1)]
    );
    // Out of the money: two results charged, the cheater earned nothing.
    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT - 2 * 5);
    assert_eq!(balance(&app, &honest_key).await, 2 * 4);
    assert_eq!(balance(&app, &cheat_key).await, 0);
    // Out of the leaderboard.
    let (_, board) = app
        .call("GET", "/api/v1/leaderboard?period=week", None, None)
        .await;
    let entries = board["entries"].as_array().unwrap();
    assert!(
        entries.iter().all(|e| e["volunteer"] != "Cheating Carl"),
        "{board}"
    );
    assert_eq!(entries[0]["measurements"], 2, "{board}");
    // The owner sees how many were left out.
    let (_, view) = app
        .get(&format!("/api/v1/checks/{check}/runs/{run_id}"), &owner)
        .await;
    assert_eq!(
        (view["done"].clone(), view["flagged"].clone()),
        (json!(3), json!(1)),
        "{view}"
    );
    // And which result it was, with the rule that flagged it.
    let (status, results) = app
        .get(
            &format!("/api/v1/checks/{check}/runs/{run_id}/results"),
            &owner,
        )
        .await;
    assert_eq!(status, 200, "{results}");
    let flagged: Vec<(Value, Value)> = results
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["flagged"] == true)
        .map(|r| (r["assignment_id"].clone(), r["flag_rules"].clone()))
        .collect();
    assert_eq!(
        flagged,
        [(fake_id.clone(), json!(["ttfb_below_rtt"]))],
        "{results}"
    );
    let (_, check_view) = app.get(&format!("/api/v1/checks/{check}"), &owner).await;
    assert_eq!(check_view["flagged_results"], 1, "{check_view}");
    let (_, metrics) = app.call("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("lastmile_results_flagged_total 1"),
        "{metrics}"
    );
    app.controller.stop().await.unwrap();
}

async fn a_body_faster_than_the_calibrated_line_is_flagged_and_slow_lines_are_not(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 3).await;
    let (modem_key, fibre_key, cheat_key) = (
        app.volunteer("modem"),
        app.volunteer("fibre"),
        app.volunteer("cheat"),
    );
    // Two dial-up lines (56 kbit/s, 150 ms) and a fibre line (1 Gbit/s, 4 ms).
    let modem = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &modem_key, "dialup", 1)
        .await;
    calibrate(&app, &modem, 150, 56_000).await;
    let cheat = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &cheat_key, "dialup", 1)
        .await;
    calibrate(&app, &cheat, 150, 56_000).await;
    let fibre = app
        .agent(Ipv4Addr::new(127, 0, 0, 4), &fibre_key, "fibre", 1)
        .await;
    calibrate(&app, &fibre, 4, 1_000_000_000).await;
    app.start_run(&owner, &check).await;

    // 200 kB over the modem: ~26 s honestly (here 29 s, a slow moment included).
    submit_measured(
        &app,
        &modem,
        [20_000, 160_000, 180_000, 29_000_000],
        200_000,
    )
    .await;
    // 200 kB over fibre in 2 ms: fast, but the line carries it.
    submit_measured(&app, &fibre, [1_000, 300, 5_000, 2_000], 200_000).await;
    // 200 kB over a modem in 40 ms: 37 Mbit/s on a 56 kbit/s line.
    let fake_id = lease(&app, &cheat).await;
    submit(
        &app,
        &cheat,
        &measured(&fake_id, [20_000, 160_000, 170_000, 40_000], 200_000),
    )
    .await;

    let list = flags(&app).await;
    assert_eq!(
        rules_by_assignment(&list),
        flagged_once(&fake_id, "faster_than_line"),
        "{list}"
    );
    let evidence = &list["flags"][0]["reasons"][0]["evidence"];
    assert_eq!(evidence["calibrated_down_bps"], 56_000, "{evidence}");
    assert!(
        evidence["implied_bps"].as_i64().unwrap() > 30_000_000,
        "{evidence}"
    );
    assert_eq!(
        samples_by_country(&app, &owner, &check).await,
        [("BR".to_owned(), 1), ("DE".to_owned(), 1)]
    );
    // Each line's goodput is its own body over its transfer; the made-up one is not in
    // the report.
    let (status, report) = app
        .report(&owner, &check, "group_by=connection_class")
        .await;
    assert_eq!(status, 200, "{report}");
    let goodput = |class: &str| {
        let row = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["group"]["connection_class"] == class)
            .unwrap_or_else(|| panic!("no {class} row in {report}"));
        row["figures"]["goodput"].clone()
    };
    let modem_goodput = goodput("dialup");
    assert_eq!(modem_goodput["unit"], "kbps", "{modem_goodput}");
    assert_eq!(modem_goodput["higher_is_better"], true, "{modem_goodput}");
    assert_eq!(modem_goodput["samples"], 1, "{modem_goodput}");
    let percentiles: Vec<u64> = modem_goodput["percentiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["percentile"].as_u64().unwrap())
        .collect();
    assert_eq!(percentiles, [50, 10, 5, 1], "the low tail: {modem_goodput}");
    // 200 kB in 29 s: 55.2 kbit/s; 200 kB in 2 ms: 800 Mbit/s (HdrHistogram: 3 digits).
    assert_eq!(
        modem_goodput["percentiles"][0]["value"], 55,
        "{modem_goodput}"
    );
    let fibre_goodput = goodput("fibre")["percentiles"][0]["value"]
        .as_u64()
        .unwrap();
    assert!(
        fibre_goodput.abs_diff(800_000) <= 800,
        "fibre goodput {fibre_goodput} kbit/s"
    );
    // The run's results say each one's goodput, the flagged one's too (it is kept).
    let (_, runs) = app
        .get(&format!("/api/v1/checks/{check}/runs"), &owner)
        .await;
    let run = runs
        .as_array()
        .or_else(|| runs["runs"].as_array())
        .and_then(|runs| runs[0]["id"].as_str())
        .unwrap_or_else(|| panic!("{runs}"))
        .to_owned();
    let (status, results) = app
        .get(
            &format!("/api/v1/checks/{check}/runs/{run}/results"),
            &owner,
        )
        .await;
    assert_eq!(status, 200, "{results}");
    let fake = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["assignment_id"] == fake_id)
        .unwrap_or_else(|| panic!("{fake_id} not in {results}"));
    // 200 kB in 40 ms: 40 Mbit/s.
    assert_eq!(fake["figures"]["goodput"], 40_000, "{fake}");
    assert_eq!(fake["flagged"], true, "{fake}");
    assert_eq!(balance(&app, &cheat_key).await, 0);
    assert_eq!(balance(&app, &modem_key).await, 4);
    assert_eq!(balance(&app, &fibre_key).await, 4);
    app.controller.stop().await.unwrap();
}

async fn a_result_far_from_its_peers_is_flagged_and_honest_variance_is_not(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 10).await;
    // Four households on one DSL network (AS64501, behind 127.0.0.2), not calibrated,
    // so physics cannot judge and only their peers can.
    let mut peers = Vec::new();
    for i in 0..4 {
        let key = app.volunteer(&format!("household {i}"));
        peers.push(app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await);
    }
    // Three runs: ttfb 95-160 ms, total 180-300 ms, as DSL lines spread.
    let mut n = 0u64;
    for _ in 0..3 {
        app.start_run(&owner, &check).await;
        for token in &peers {
            n += 1;
            let ttfb = 95_000 + (n * 37_000) % 65_000;
            let t = [2_000 + n, 30_000, ttfb, 55_000 + n * 3_000];
            submit_measured(&app, token, t, 8192).await;
        }
    }
    assert_eq!(rules_by_assignment(&flags(&app).await), []);

    // A fifth household joins and makes its numbers up; one honest neighbour has a slow
    // moment (1.9 times the median ttfb), another a fast one.
    let cheat_key = app.volunteer("cheat");
    let cheat = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &cheat_key, "dsl", 1)
        .await;
    app.start_run(&owner, &check).await;
    let fake_id = lease(&app, &cheat).await;
    submit(
        &app,
        &cheat,
        &measured(&fake_id, [200, 900, 3_000, 1_000], 8192),
    )
    .await;
    submit_measured(&app, &peers[0], [2_500, 31_000, 240_000, 90_000], 8192).await;
    submit_measured(&app, &peers[1], [2_400, 29_000, 70_000, 40_000], 8192).await;

    let list = flags(&app).await;
    assert_eq!(
        rules_by_assignment(&list),
        flagged_once(&fake_id, "peer_outlier"),
        "{list}"
    );
    let evidence = &list["flags"][0]["reasons"][0]["evidence"];
    assert!(evidence["ttfb"]["z"].as_f64().unwrap() < -6.0, "{evidence}");
    assert_eq!(evidence["peer_agents"], 4, "{evidence}");
    assert_eq!(evidence["asn"], 64_501, "{evidence}");
    // 12 + 2 honest results in the report, the made-up one not.
    assert_eq!(
        samples_by_country(&app, &owner, &check).await,
        [("DE".to_owned(), 14)]
    );
    assert_eq!(balance(&app, &cheat_key).await, 0);
    app.controller.stop().await.unwrap();
}

async fn copied_and_replayed_results_are_flagged_and_resubmission_is_not(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 2).await;
    let (ada_key, bob_key) = (app.volunteer("Ada"), app.volunteer("Bob"));
    let ada = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &ada_key, "cable", 1)
        .await;
    let bob = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &bob_key, "cable", 1)
        .await;
    let timings = [1_234, 11_873, 31_402, 2_917];

    // Run 1: Ada measures; Bob sends Ada's numbers as his own.
    app.start_run(&owner, &check).await;
    let ada_first = measured(&lease(&app, &ada).await, timings, 8192);
    submit(&app, &ada, &ada_first).await;
    let copied_id = lease(&app, &bob).await;
    submit(&app, &bob, &measured(&copied_id, timings, 8192)).await;
    // Ada retries her own submission (a lost acknowledgement): not a replay.
    submit(&app, &ada, &ada_first).await;

    // Run 2: Ada sends her run-1 measurement again for the new assignment; Bob measures
    // honestly, and his numbers differ from Ada's by one microsecond of DNS.
    app.start_run(&owner, &check).await;
    let replayed_id = lease(&app, &ada).await;
    submit(&app, &ada, &measured(&replayed_id, timings, 8192)).await;
    let [dns, connect, ttfb, transfer] = timings;
    submit_measured(&app, &bob, [dns + 1, connect, ttfb, transfer], 8192).await;

    let list = flags(&app).await;
    let mut got = rules_by_assignment(&list);
    got.sort();
    let mut want = vec![
        (
            copied_id.as_str().unwrap().to_owned(),
            vec!["copied_result".to_owned()],
        ),
        (
            replayed_id.as_str().unwrap().to_owned(),
            vec!["replayed_result".to_owned()],
        ),
    ];
    want.sort();
    assert_eq!(got, want, "{list}");
    let copied = list["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["assignment_id"] == copied_id)
        .unwrap();
    assert_eq!(
        copied["reasons"][0]["evidence"]["original_assignment_id"], ada_first["assignment_id"],
        "{copied}"
    );
    // Each paid once for the one honest result each.
    assert_eq!(balance(&app, &ada_key).await, 4);
    assert_eq!(balance(&app, &bob_key).await, 4);
    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT - 2 * 5);
    app.controller.stop().await.unwrap();
}

async fn only_one_agent_per_volunteer_and_address_is_paid_for_a_run(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 5).await;
    let farmer = app.volunteer("farmer");
    let neighbour = app.volunteer("neighbour behind the same NAT");
    // Three agents of the farmer on one address, one more at another address; a
    // different volunteer shares the farmer's address.
    let mut farm = Vec::new();
    for _ in 0..3 {
        farm.push(
            app.agent(Ipv4Addr::new(127, 0, 0, 2), &farmer, "dsl", 1)
                .await,
        );
    }
    let elsewhere = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &farmer, "dsl", 1)
        .await;
    let shared_nat = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &neighbour, "dsl", 1)
        .await;
    let run_id = app.start_run(&owner, &check).await;
    let mut farm_ids = Vec::new();
    for (i, token) in farm.iter().chain([&elsewhere, &shared_nat]).enumerate() {
        let id = lease(&app, token).await;
        let i = i as u64;
        submit(
            &app,
            token,
            &measured(
                &id,
                [1_500 + i, 20_000 + i * 7, 45_000 + i * 311, 6_000 + i],
                8192,
            ),
        )
        .await;
        farm_ids.push(id);
    }
    let list = flags(&app).await;
    let mut got = rules_by_assignment(&list);
    got.sort();
    let mut want: Vec<(String, Vec<String>)> = farm_ids[1..3]
        .iter()
        .map(|id| {
            (
                id.as_str().unwrap().to_owned(),
                vec!["same_address_farm".to_owned()],
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "{list}");
    assert_eq!(
        list["flags"][0]["reasons"][0]["evidence"]["counted_assignment_id"], farm_ids[0],
        "{list}"
    );
    // The farmer is paid for one result from 127.0.0.2 and one from 127.0.0.3; the
    // neighbour for theirs.
    assert_eq!(balance(&app, &farmer).await, 2 * 4);
    assert_eq!(balance(&app, &neighbour).await, 4);
    let (_, view) = app
        .get(&format!("/api/v1/checks/{check}/runs/{run_id}"), &owner)
        .await;
    assert_eq!(
        (view["done"].clone(), view["flagged"].clone()),
        (json!(5), json!(2)),
        "{view}"
    );
    app.controller.stop().await.unwrap();
}

async fn a_farm_submitting_all_at_once_is_still_paid_once_a_run(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 24).await;
    let farmer = app.volunteer("farmer");
    let mut farm = Vec::new();
    for _ in 0..24 {
        farm.push(
            app.agent(Ipv4Addr::new(127, 0, 0, 2), &farmer, "dsl", 1)
                .await,
        );
    }
    let run_id = app.start_run(&owner, &check).await;
    let mut leased = Vec::new();
    for token in &farm {
        leased.push(lease(&app, token).await);
    }
    // All 24 results race to be the run's first from this (volunteer, address).
    let submissions = farm
        .iter()
        .zip(&leased)
        .enumerate()
        .map(|(i, (token, id))| {
            let i = i as u64;
            let body = measured(
                id,
                [1_500 + i, 20_000 + i * 7, 45_000 + i * 311, 6_000 + i],
                8192,
            );
            let app = &app;
            async move { submit(app, token, &body).await }
        });
    futures_util::future::join_all(submissions).await;
    let list = flags(&app).await;
    assert_eq!(rules_by_assignment(&list).len(), 23, "{list}");
    assert_eq!(balance(&app, &farmer).await, 4);
    let (_, view) = app
        .get(&format!("/api/v1/checks/{check}/runs/{run_id}"), &owner)
        .await;
    assert_eq!(
        (view["done"].clone(), view["flagged"].clone()),
        (json!(24), json!(23)),
        "{view}"
    );
    app.controller.stop().await.unwrap();
}

/// Several agents' requests accepted in one transaction (the controller's group commit,
/// `ingest::accept_many`) are answered as they would be one after the other: a farm
/// sibling, a copy and a repeated assignment in a later request of the batch are caught
/// by the earlier ones, and a refused request or result does not touch the others.
async fn requests_written_in_one_batch_are_judged_as_if_one_after_the_other(db: TestDb) {
    use lastmile_domain::ingest::{self, Request};
    use lastmile_protocol::ResultSubmission;
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 4).await;
    let farmer = app.volunteer("farmer");
    let other = app.volunteer("other");
    let a = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &farmer, "dsl", 1)
        .await;
    let b = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &farmer, "dsl", 1)
        .await;
    let c = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &other, "dsl", 1)
        .await;
    let d = app
        .agent(Ipv4Addr::new(127, 0, 0, 4), &other, "dsl", 1)
        .await;
    app.start_run(&owner, &check).await;
    let (ia, ib, ic, id) = (
        lease(&app, &a).await,
        lease(&app, &b).await,
        lease(&app, &c).await,
        lease(&app, &d).await,
    );
    let sub = |assignment: &Value, t: [u64; 4]| -> ResultSubmission {
        serde_json::from_value(measured(assignment, t, 8192)).unwrap()
    };
    let t_a = [1_500, 20_000, 45_000, 6_000];
    let requests: Vec<(String, Vec<ResultSubmission>)> = vec![
        (a.clone(), vec![sub(&ia, t_a)]),
        // A's sibling on the same address, same run: only A's counts.
        (b.clone(), vec![sub(&ib, [1_600, 21_000, 46_000, 6_100])]),
        // A's numbers exactly: a copy.
        (c.clone(), vec![sub(&ic, t_a)]),
        // D's own result, and one of A's assignments, which is not D's.
        (
            d.clone(),
            vec![sub(&id, [1_700, 22_000, 47_000, 6_200]), sub(&ia, t_a)],
        ),
        // D again with its assignment, as a retry would: stored once.
        (d.clone(), vec![sub(&id, [1_700, 22_000, 47_000, 6_200])]),
        // More than a request may carry: refused alone.
        (d.clone(), vec![sub(&id, t_a); 101]),
    ];
    let mut conn = app.db().conn().unwrap();
    let agents: Vec<_> = requests
        .iter()
        .map(|(token, _)| {
            lastmile_domain::agents::agent_by_token(&mut conn, token)
                .unwrap()
                .unwrap()
        })
        .collect();
    let batch: Vec<Request> = agents
        .iter()
        .zip(&requests)
        .map(|(agent, (_, subs))| Request { agent, subs })
        .collect();
    let answers = ingest::accept_many(&mut conn, &batch, None).unwrap();
    drop(conn);
    // (flagged, queued, duplicate) of each result, or its error code.
    type Said<'a> = Result<(bool, bool, bool), &'a str>;
    let said: Vec<Vec<Said>> = answers
        .iter()
        .map(|answer| match answer {
            Err(e) => vec![Err(e.code())],
            Ok(results) => results
                .iter()
                .map(|r| match r {
                    Ok(s) => Ok((s.flagged, s.queued, s.duplicate)),
                    Err(e) => Err(e.code()),
                })
                .collect(),
        })
        .collect();
    assert_eq!(
        said,
        vec![
            vec![Ok((false, true, false))],
            vec![Ok((true, false, false))],
            vec![Ok((true, false, false))],
            vec![Ok((false, true, false)), Err("assignment_not_yours")],
            vec![Ok((false, false, true))],
            vec![Err("too_many_results")],
        ]
    );
    let mut rules = rules_by_assignment(&flags(&app).await);
    rules.sort();
    let mut expected = vec![
        (
            ib.as_str().unwrap().to_owned(),
            vec!["same_address_farm".to_owned()],
        ),
        (
            ic.as_str().unwrap().to_owned(),
            vec!["copied_result".to_owned()],
        ),
    ];
    expected.sort();
    assert_eq!(rules, expected);
    // Each result stored once; the two counted ones paid once each.
    assert_eq!(
        crate::support::count(&app, "SELECT COUNT(*) AS n FROM results"),
        4
    );
    // Folded and paid by the background pass (every second): nothing was asked over HTTP.
    crate::support::all_folded(&app).await;
    assert_eq!(balance(&app, &farmer).await, 4);
    assert_eq!(balance(&app, &other).await, 4);
    app.controller.stop().await.unwrap();
}

async fn the_flag_list_is_for_operators_only(db: TestDb) {
    let app = admin_app(&db).await;
    let owner = app.owner("owner");
    for (token, why) in [
        (None, "missing Authorization"),
        (Some("wrong"), "not the admin token"),
        (Some(owner.as_str()), "not the admin token"),
    ] {
        let (status, body) = app.call("GET", "/api/v1/ops/flags", token, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(body["message"].as_str().unwrap().contains(why), "{body}");
    }
    let (status, body) = app
        .call("GET", "/api/v1/ops/flags?limit=0", Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_limit")),
        "{body}"
    );
    let (status, body) = app
        .call("GET", "/api/v1/ops/flags?agent=nope", Some(ADMIN), None)
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .call("GET", "/api/v1/ops/flags", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"flags": [], "per_agent": []}));
    app.controller.stop().await.unwrap();

    // Without a configured token, nobody is an operator.
    let off = TestApp::start(&db).await;
    let (status, body) = off
        .call("GET", "/api/v1/ops/flags", Some(ADMIN), None)
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("LASTMILE_ADMIN_TOKEN"),
        "{body}"
    );
    off.controller.stop().await.unwrap();
}

/// A result of `agent`'s one assignment with these timings, status 200 and `bytes`.
fn with_timings(assignment: &Value, t: [u64; 6], bytes: u64) -> Value {
    let [dns, connect, tls, ttfb, transfer, total] = t;
    json!({
        "assignment_id": assignment,
        "started_at": chrono::Utc::now().to_rfc3339(),
        "measurement": {
            "status": 200, "bytes": bytes, "error": null,
            "timings_us": {"dns": dns, "connect": connect, "tls": tls, "ttfb": ttfb,
                "transfer": transfer, "total": total}
        }
    })
}

async fn timings_no_line_can_produce_are_flagged_whatever_the_calibration(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 1).await;
    let key = app.volunteer("Mallory");
    // The fastest line there is: support's calibration (40 µs, 100 Gbit/s), under which
    // the calibrated rules pass all but the 10 GB body; physics for any line does not.
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let cases: [([u64; 6], u64, &str); 5] = [
        ([0, 0, 0, 0, 0, 0], 1_000, "ttfb_below_any_line"),
        ([1, 1, 1, 1, 1, 1], 1_000, "ttfb_below_any_line"),
        ([1, 1, 0, 1, 1, 5], 1_000, "ttfb_below_any_line"),
        (
            [10, 50, 0, 300, 1, 400],
            10_000_000_000,
            "faster_than_any_line",
        ),
        (
            [5_000, 9_000, 0, 15_000, 2_000, 20_000],
            1_000,
            "phases_exceed_total",
        ),
    ];
    let mut flagged = Vec::new();
    for (timings, bytes, broken) in cases {
        app.start_run(&owner, &check).await;
        let assignment = lease(&app, &agent).await;
        submit(&app, &agent, &with_timings(&assignment, timings, bytes)).await;
        flagged.push((assignment.as_str().unwrap().to_owned(), broken));
    }
    // And an honest loopback measurement passes.
    app.start_run(&owner, &check).await;
    submit_measured(&app, &agent, [40, 90, 180, 60], 70_000).await;

    let list = flags(&app).await;
    let rules = rules_by_assignment(&list);
    assert_eq!(rules.len(), flagged.len(), "{list}");
    for (assignment, broken) in &flagged {
        let (_, rules) = rules.iter().find(|(a, _)| a == assignment).unwrap();
        assert!(rules.iter().any(|r| r == "impossible_timings"), "{list}");
        let flag = list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["assignment_id"] == assignment.as_str())
            .unwrap();
        let evidence = &flag["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == "impossible_timings")
            .unwrap()["evidence"];
        assert!(
            evidence["broken"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b == broken),
            "{assignment}: {evidence}"
        );
    }
    // None of them is in the report or paid; the honest one is.
    assert_eq!(
        samples_by_country(&app, &owner, &check).await,
        [("DE".to_owned(), 1)]
    );
    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT - 5);
    assert_eq!(balance(&app, &key).await, 4);
    app.controller.stop().await.unwrap();
}

async fn a_result_with_neither_status_nor_error_is_refused(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 1).await;
    let key = app.volunteer("v");
    let agent = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    app.start_run(&owner, &check).await;
    let assignment = lease(&app, &agent).await;
    let mut body = measured(&assignment, [900, 21_000, 22_000, 4_100], 8192);
    body["measurement"]["status"] = Value::Null;
    let (status, answer) = app.submit(&agent, body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (422, Some("invalid_result")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("neither"),
        "{answer}"
    );
    assert_eq!(
        crate::support::count(&app, "SELECT COUNT(*) AS n FROM results"),
        0
    );
    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT);
    app.controller.stop().await.unwrap();
}

async fn an_uncalibrated_agent_gets_no_work_and_is_not_paid(db: TestDb) {
    let app = admin_app(&db).await;
    let (owner, check, _site) = owner_and_check(&app, 2).await;
    let key = app.volunteer("v");
    let agent = app
        .uncalibrated_agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl")
        .await;
    let (status, run) = app.ask_run(&owner, &check).await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(
        run["eligible_agents"], 0,
        "an uncalibrated agent is not planned in: {run}"
    );
    assert_eq!(run["problem"], "no_eligible_agents", "{run}");

    // Once its line is measured it is planned in; if the calibration is lost before
    // its result arrives, the result is kept, flagged and not paid.
    crate::support::calibrate_as_declared(&app, &agent);
    app.start_run(&owner, &check).await;
    let assignment = lease(&app, &agent).await;
    crate::support::set_calibration(&app, &agent, None);
    submit(
        &app,
        &agent,
        &measured(&assignment, [900, 21_000, 22_000, 4_100], 8192),
    )
    .await;
    let list = flags(&app).await;
    assert_eq!(
        rules_by_assignment(&list),
        flagged_once(&assignment, "uncalibrated_agent"),
        "{list}"
    );
    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT);
    assert_eq!(balance(&app, &key).await, 0);
    app.controller.stop().await.unwrap();
}

async fn a_load_check_answered_with_a_bare_fetch_is_flagged_missing_summary_and_not_paid(
    db: TestDb,
) {
    // A throughput check's assignment answered with a plain 200 and no load summary:
    // it would count as a success with no goodput or latency under load, and be paid.
    let app = admin_app(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let (status, created) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "kind": "throughput",
                   "selection": {"agents_per_run": 1},
                   "throughput": {"connections": 1, "duration_ms": 1000}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let check = created["id"].as_str().unwrap().to_owned();
    let key = app.volunteer("Mallory");
    let source = Ipv4Addr::new(127, 0, 0, 2);
    let agent = app.agent(source, &key, "dsl", 1).await;
    // It says it measures loads, as agents that do say.
    let beat = json!({"declared_class": "dsl", "version": "test", "limits": {"max_concurrent": 1},
                      "kinds": ["http", "throughput"]});
    let (status, ack) = app.heartbeat_from(source, &agent, beat).await;
    assert_eq!(status, 200, "{ack}");
    app.start_run(&owner, &check).await;
    let assignment = lease(&app, &agent).await;
    let ack = submit(
        &app,
        &agent,
        &measured(&assignment, [900, 21_000, 22_000, 1_000_000], 2_000_000),
    )
    .await;
    assert_eq!(ack["disposition"], "accepted", "kept for operators: {ack}");
    let list = flags(&app).await;
    assert_eq!(
        rules_by_assignment(&list),
        flagged_once(&assignment, "missing_summary"),
        "{list}"
    );
    let evidence = &list["flags"][0]["reasons"][0]["evidence"];
    assert_eq!(evidence["check_kind"], "throughput", "{evidence}");
    assert_eq!(evidence["summary"], Value::Null, "{evidence}");
    assert_eq!(balance(&app, &owner).await, OWNER_CREDIT, "not charged");
    assert_eq!(balance(&app, &key).await, 0, "not earned");
    app.controller.stop().await.unwrap();
}
