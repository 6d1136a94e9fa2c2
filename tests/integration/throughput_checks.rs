//! `throughput` checks end to end, both backends: the API takes one (and refuses the
//! loads that do not fit), a real agent behind an emulated DSL line downloads the shop's
//! segment over four connections for two seconds while it probes the round trip, the
//! controller derives goodput and the idle and loaded latency from its summary, and the
//! report, the CSV, the objectives and the run's results show them. The line queues
//! 250 ms before it pushes back (`lastmile_testbed::link::BUFFER`), so the loaded
//! latency must come out well above the idle one: the bufferbloat the kind exists for.

use lastmile_protocol::ConnectionClass;
use lastmile_testbed::shop;
use serde_json::{json, Value};

use crate::lines::{
    assert_csv_columns, class_row, figure, latest_run_results, line_app, run_and_wait, AgentOnLine,
};
use crate::per_backend;
use crate::support::{count, csrf_of, target_site, TestApp, TestDb};

per_backend!(
    a_throughput_check_measures_the_line_and_its_queue_under_load,
    a_throughput_check_is_made_and_edited_in_the_dashboard,
);

async fn a_throughput_check_measures_the_line_and_its_queue_under_load(db: TestDb) {
    let app = line_app(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    // One agent on a DSL line (16 Mbit/s down, 40 ms), calibrated over it.
    let agent = AgentOnLine::start(&app, &site, ConnectionClass::Dsl).await;

    let url = format!("{}{}", site.origin(), shop::DOWNLOAD_PATH);
    let check = |extra: Value| {
        let mut body = json!({"site_id": site_id, "url": url, "kind": "throughput",
                              "selection": {"agents_per_run": 1}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // Loads that do not fit are refused, each saying why.
    for (extra, says) in [
        (json!({"throughput": {"connections": 17}}), "connections"),
        (json!({"throughput": {"duration_ms": 500}}), "duration_ms"),
        (json!({"throughput": {"conections": 2}}), "conections"),
        (
            json!({"throughput": {"duration_ms": 20000}, "timeout_ms": 22000}),
            "timeout_ms",
        ),
        (json!({"body_contains": "x"}), "body_contains"),
        (
            json!({"kind": "http", "throughput": {"connections": 2}}),
            "throughput",
        ),
    ] {
        let (status, body) = app.post_check(&owner, check(extra.clone())).await;
        assert!(
            (400..500).contains(&status) && body.to_string().contains(says),
            "{extra} -> {status} {body}"
        );
    }

    let (status, created) = app
        .post_check(
            &owner,
            check(json!({
                "throughput": {"connections": 4, "duration_ms": 2000},
                "timeout_ms": 15000,
                "objectives": [
                    {"figure": "goodput", "percentile": 10, "min_kbps": 8000},
                    {"figure": "loaded_latency", "percentile": 50, "max_ms": 100},
                ],
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["kind"], "throughput");
    assert_eq!(
        created["throughput"],
        json!({"connections": 4, "duration_ms": 2000})
    );
    assert_eq!(created["max_bytes"], 100 * 1024 * 1024, "{created}");
    assert_eq!(
        created["price_per_result_minor"], 40,
        "a load costs more than a fetch"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    run_and_wait(&app, &owner, &id, 3).await;
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM results WHERE error_kind IS NULL AND flagged = false \
             AND figures LIKE '%loaded_latency%'"
        ),
        3,
        "every load succeeded, unflagged, with its figures"
    );

    // The report: DSL's goodput is its line's 16 Mbit/s (within 2x: kbit/s, not bytes),
    // its idle latency the line's 40 ms round trip, and under load the probes wait
    // behind the line's queue.
    let row = &class_row(&app, &owner, &id, 3).await;
    let goodput = figure(row, "goodput", 50);
    let idle = figure(row, "idle_latency", 50);
    let loaded = figure(row, "loaded_latency", 50);
    eprintln!("dsl: goodput {goodput} kbit/s, idle {idle} µs, loaded {loaded} µs");
    assert!(
        (8_000..=32_000).contains(&goodput),
        "goodput {goodput} kbit/s"
    );
    assert!((35_000..=150_000).contains(&idle), "idle latency {idle} µs");
    assert!(
        loaded >= idle + 100_000,
        "loaded latency {loaded} µs is not above idle {idle} µs by the line's queue"
    );
    assert_eq!(row["figures"]["loaded_latency"]["unit"], "us", "{row}");
    // The objectives: the goodput floor holds, the loaded latency bound breaks.
    let outcomes = row["objectives"].as_array().unwrap();
    assert_eq!(outcomes[0]["met"], true, "{row}");
    assert_eq!(outcomes[1]["met"], false, "{row}");
    assert!(
        outcomes[1]["actual"].as_f64().unwrap() > 100.0,
        "loaded latency read in ms: {row}"
    );

    // The CSV has a column per figure, in its unit.
    assert_csv_columns(
        &app,
        &owner,
        &id,
        &[
            "goodput_p10_kbps",
            "idle_latency_p50_us",
            "loaded_latency_p95_us",
        ],
    )
    .await;

    // The report page charts each figure's worse tail over time, in its unit.
    let cookie = app.owner_session(&owner).await;
    let page = app
        .dashboard_page(&cookie, &format!("/app/checks/{id}/report?window=24h"))
        .await;
    for chart in [
        r#"id="goodput-p10""#,
        r#"id="idle-latency-p95""#,
        r#"id="loaded-latency-p95""#,
    ] {
        assert!(page.contains(chart), "{chart} missing");
    }
    assert!(page.contains(" Mbit/s\n"), "a goodput axis in Mbit/s");

    // Each run's result carries its own figures.
    let (_, results) = latest_run_results(&app, &owner, &id).await;
    let figures = &results[0]["figures"];
    assert!(
        figures["goodput"].as_u64().is_some() && figures["loaded_latency"].as_u64().is_some(),
        "{results}"
    );

    agent.stop().await;
}

async fn a_throughput_check_is_made_and_edited_in_the_dashboard(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let cookie = app.owner_session(&owner).await;
    let csrf = csrf_of(&app.dashboard_page(&cookie, "/app/checks/new").await);
    let url = format!("{}{}", site.origin(), shop::DOWNLOAD_PATH);
    let form = |kind: &str, name: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("action", "create".to_owned()),
            ("site_id", site_id.clone()),
            ("url", url.clone()),
            ("name", name.to_owned()),
            ("kind", kind.to_owned()),
            ("connections", "8".to_owned()),
            ("duration_ms", "5000".to_owned()),
            ("timeout_ms", "15000".to_owned()),
            ("agents_per_run", "1".to_owned()),
        ]
    };

    // A long load gets the time it needs by default (this test runs no agent).
    let (status, long) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "url": url, "kind": "throughput",
                   "throughput": {"duration_ms": 30000}}),
        )
        .await;
    assert_eq!(status, 201, "{long}");
    assert_eq!(long["timeout_ms"], 35000, "{long}");

    // A load is for throughput checks: an http check with one is refused, saying so.
    let refused = app
        .post_form(&cookie, "/app/checks", &form("http", "Speed"))
        .await;
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let page = refused.text().await.unwrap();
    assert!(page.contains("is a load for kind"), "{page}");

    let made = app
        .post_form(&cookie, "/app/checks", &form("throughput", "Speed"))
        .await;
    assert_eq!(made.status(), 303);
    let check_page = made.headers()["location"].to_str().unwrap().to_owned();
    let shown = app.dashboard_page(&cookie, &check_page).await;
    assert!(
        shown.contains("over 8 connections at once for 5 s"),
        "{shown}"
    );
    // The edit form shows the check as it is: its kind (it used to fall back to http,
    // and saving the form turned a page or throughput check into an http one) and load.
    let edit = app
        .dashboard_page(&cookie, &format!("{check_page}/edit"))
        .await;
    assert!(
        edit.contains(r#"<option value="throughput" selected>"#),
        "{edit}"
    );
    assert!(
        edit.contains(r#"name="connections" min="1" max="16" value="8""#),
        "{edit}"
    );
    let saved = app
        .post_form(
            &cookie,
            &format!("{check_page}/edit"),
            &form("throughput", "Speed, renamed"),
        )
        .await;
    assert_eq!(saved.status(), 303);
    let id = check_page.rsplit('/').next().unwrap();
    let (_, check) = app.get(&format!("/api/v1/checks/{id}"), &owner).await;
    assert_eq!(check["name"], "Speed, renamed");
    assert_eq!(check["kind"], "throughput");
    assert_eq!(
        check["throughput"],
        json!({"connections": 8, "duration_ms": 5000})
    );
}
