//! Owner SLA reports: objectives and error budgets, confidence intervals, windows and
//! comparison, histogram export; on both backends. Aggregates are written through the
//! same domain function ingest uses (`ingest::fold`), so results can be placed in past
//! hours.

use base64::Engine;
use diesel::RunQueryDsl;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use lastmile_domain::clock::{now_us, HOUR_US};
use lastmile_domain::ingest::{self, StoredResult};
use lastmile_testbed::site::TargetSite;
use serde_json::{json, Value};

use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(
    objectives_are_judged_with_error_budgets_and_intervals,
    windows_buckets_and_comparison_with_the_previous_window,
    merged_histograms_export_round_trips,
    complete_days_roll_up_into_day_and_week_cells_that_report_the_same_figures,
    complete_quarters_of_a_day_not_rolled_up_are_read_as_quarter_cells,
    goodput_comes_from_large_bodies_with_its_low_tail_in_json_and_csv,
    folds_of_many_cells_add_to_old_and_new_cells_side_by_side,
);

/// An app with an owner and a check carrying `objectives`; returns (app, owner, check id).
///
/// No background rollup pass: these tests fold results into past hours after the fact,
/// which the pass may already have rolled up into quarter and day cells (ingest folds
/// by the time a result arrived, so a span is never added to once it is complete).
async fn app_with_check(db: &TestDb, objectives: Value) -> (TestApp, String, String, TargetSite) {
    let app = TestApp::start_with(db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.rollup_interval_s = 0;
    })
    .await;
    app_with_check_on(app, objectives).await
}

/// [`app_with_check`] with no background rollup or fold pass (a ttfb p95 ≤ 100 ms
/// objective): the test decides when they happen.
async fn app_deciding_rollups(db: &TestDb) -> (TestApp, String, String, TargetSite) {
    let app = TestApp::start_with(db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.rollup_interval_s = 0;
        c.fold_interval_ms = 3_600_000;
    })
    .await;
    app_with_check_on(
        app,
        json!([{"phase": "ttfb", "percentile": 95, "max_ms": 100}]),
    )
    .await
}

async fn app_with_check_on(
    app: TestApp,
    objectives: Value,
) -> (TestApp, String, String, TargetSite) {
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let body = json!({"site_id": site_id, "url": site.origin(), "objectives": objectives});
    let check = app.create_check(&owner, body).await;
    let id = check["id"].as_str().unwrap().to_owned();
    (app, owner, id, site)
}

/// Now, at least a minute before the hour turns (waiting for it to turn if it is
/// closer): a report of the last hour (the hour's bucket so far) asked for after the
/// turn does not hold what was folded before it, which made a test that folds at "now"
/// and then asks for the last hour fail once at 23:00 (CI, stop 44).
async fn clear_of_the_hours_turn() -> i64 {
    const MARGIN_US: i64 = 60_000_000;
    let now = now_us();
    let to_the_turn = HOUR_US - now.rem_euclid(HOUR_US);
    if to_the_turn >= MARGIN_US {
        return now;
    }
    let wait = u64::try_from(to_the_turn).unwrap_or(0) + 1_000_000;
    tokio::time::sleep(std::time::Duration::from_micros(wait)).await;
    now_us()
}

/// Folds one measurement of `class` received at `at` into the aggregates. Its body is
/// large enough for a goodput (64 KiB and more, 2 ms), which varies with the ttfb, so
/// that the reports compared below carry one.
fn fold(app: &TestApp, check: &str, class: &str, at: i64, ttfb_us: i64, ok: bool) {
    fold_stored(app, &stored(check, class, at, ttfb_us, ok));
}

fn fold_stored(app: &TestApp, r: &StoredResult) {
    ingest::fold(&mut app.db().conn().unwrap(), std::slice::from_ref(r)).unwrap();
}

/// The measurement [`fold`] folds.
fn stored(check: &str, class: &str, at: i64, ttfb_us: i64, ok: bool) -> StoredResult {
    StoredResult {
        page: None,
        redirect_hops: None,
        figures: None,
        assignment_id: String::new(),
        run_id: String::new(),
        check_id: check.to_owned(),
        agent_id: String::new(),
        received_at: at,
        started_at: at,
        late: false,
        status: Some(200),
        bytes: 65_536 + ttfb_us,
        error_kind: (!ok).then(|| "total_timeout".to_owned()),
        error_message: None,
        dns_us: 100,
        connect_us: 1000,
        tls_us: 0,
        ttfb_us,
        transfer_us: 2000,
        total_us: ttfb_us + 3100,
        country: "DE".into(),
        region: "BE".into(),
        asn: 64_501,
        connection_class: class.into(),
        remote_addr: None,
        ip_version: None,
        http_version: None,
        bytes_decoded: 65_536 + ttfb_us,
        redirects: 0,
        redirect_us: 0,
    }
}

fn row<'a>(report: &'a Value, class: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"]["connection_class"] == class)
        .unwrap_or_else(|| panic!("no {class} row in {report}"))
}

fn outcome<'a>(row: &'a Value, key: &str) -> &'a Value {
    row["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["objective"].get(key).is_some())
        .unwrap_or_else(|| panic!("no {key} objective in {row}"))
}

async fn objectives_are_judged_with_error_budgets_and_intervals(db: TestDb) {
    let (app, owner, check, _site) = app_with_check(
        &db,
        json!([
            {"phase": "ttfb", "percentile": 95, "max_ms": 100.5},
            {"availability_min": 99},
            {"phase": "total", "percentile": 99, "max_ms": 50, "connection_class": "fibre"},
        ]),
    )
    .await;
    let (_, view) = app.get(&format!("/api/v1/checks/{check}"), &owner).await;
    assert_eq!(view["objectives"][0]["max_ms"], 100.5);
    assert_eq!(view["objectives"][2]["connection_class"], "fibre");

    let now = now_us();
    // dsl: ttfb 1..=200 ms twice and one failure. p95 = 190 ms breaches 100.5 ms; 200
    // samples are over it where 5 % of 400 = 20 are allowed. Availability 400/401 meets
    // 99 %.
    for ms in (1..=200).chain(1..=200) {
        fold(&app, &check, "dsl", now, ms * 1000, true);
    }
    fold(&app, &check, "dsl", now, 0, false);
    // fibre: 100 fast samples; every objective met.
    for i in 0..100 {
        fold(&app, &check, "fibre", now, 10_000 + i * 10, true);
    }
    // cable: 10 samples, too few for a p95 interval.
    for i in 0..10 {
        fold(&app, &check, "cable", now, 30_000 + i * 100, true);
    }

    let (status, report) = app
        .report(&owner, &check, "group_by=connection_class")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["confidence"], "0.95");
    let dsl = row(&report, "dsl");
    let latency = outcome(dsl, "phase");
    assert_eq!(latency["met"], false, "{latency}");
    assert_eq!(latency["bad_samples"], 200);
    assert!((latency["allowed_bad_samples"].as_f64().unwrap() - 20.0).abs() < 1e-9);
    assert!((latency["error_budget_remaining"].as_f64().unwrap() + 9.0).abs() < 1e-9);
    assert!(latency["margin"].as_f64().unwrap() < -89.0, "{latency}");
    assert_eq!(latency["conclusive"], true, "{latency}");
    let avail = outcome(dsl, "availability_min");
    assert_eq!(avail["met"], true, "{avail}");
    assert_eq!(avail["bad_samples"], 1);
    let remaining = avail["error_budget_remaining"].as_f64().unwrap();
    assert!((remaining - (1.0 - 1.0 / 4.01)).abs() < 1e-9, "{remaining}");
    // The fibre-only objective applies to the fibre row alone.
    assert_eq!(dsl["objectives"].as_array().unwrap().len(), 2);
    let fibre = row(&report, "fibre");
    assert_eq!(fibre["objectives"].as_array().unwrap().len(), 3);
    assert!(fibre["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["met"] == true));
    assert_eq!(
        outcome(fibre, "connection_class")["error_budget_remaining"],
        1.0
    );

    // Every interval brackets its percentile; the availability interval its availability.
    for phase in ["ttfb", "total"] {
        let p = &dsl["phases"][phase];
        assert_eq!(p["insufficient_samples"], false, "{p}");
        for nn in ["p50", "p90", "p95", "p99"] {
            let v = p[nn].as_u64().unwrap();
            let ci = p[format!("{nn}_ci")].as_array().unwrap();
            let (lo, hi) = (ci[0].as_u64().unwrap(), ci[1].as_u64().unwrap());
            assert!(
                lo <= v && v <= hi && lo < hi,
                "{phase} {nn}: {lo} <= {v} <= {hi}"
            );
        }
    }
    let a = dsl["availability"].as_f64().unwrap();
    let ci = dsl["availability_ci"].as_array().unwrap();
    assert!(
        ci[0].as_f64().unwrap() < a && a < ci[1].as_f64().unwrap(),
        "{dsl}"
    );

    // Too few samples: the interval is null and the row says what it would need.
    let cable = &row(&report, "cable")["phases"]["ttfb"];
    assert_eq!(cable["insufficient_samples"], true, "{cable}");
    assert_eq!(cable["p95_ci"], Value::Null);
    assert!(
        cable["p50_ci"].is_array(),
        "10 samples are enough for p50: {cable}"
    );
    assert!(
        cable["note"].as_str().unwrap().contains("p95 needs 59"),
        "{cable}"
    );
    // A wider confidence needs more samples.
    let (_, wide) = app
        .report(&owner, &check, "group_by=connection_class&confidence=0.99")
        .await;
    assert!(row(&wide, "cable")["phases"]["ttfb"]["note"]
        .as_str()
        .unwrap()
        .contains("p95 needs 90"));

    // CSV: empty interval cells and the note for the cable row.
    let (_, csv) = app
        .report(&owner, &check, "group_by=connection_class&format=csv")
        .await;
    let csv = csv.as_str().unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let cable_line = csv.lines().find(|l| l.starts_with("cable,")).unwrap();
    assert!(cable_line.contains("p95 needs 59"), "{cable_line}");
    let dsl_line: Vec<&str> = csv
        .lines()
        .find(|l| l.starts_with("dsl,"))
        .unwrap()
        .split(',')
        .collect();
    assert!(!dsl_line[col("ttfb_p95_ci_low_us")].is_empty());

    // A bad objective is a 422 naming it, and nothing is stored.
    let (status, body) = app
        .post_check(
            &owner,
            json!({"site_id": view["site_id"], "url": view["url"],
                "objectives": [{"availability_min": 99.9}, {"phase": "ttfb", "percentile": 95}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "invalid_objective");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("objectives[1].max_ms"),
        "{body}"
    );
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM checks"), 1);
    app.controller.stop().await.unwrap();
}

async fn windows_buckets_and_comparison_with_the_previous_window(db: TestDb) {
    let (app, owner, check, _site) = app_with_check(&db, json!([])).await;
    let now = clear_of_the_hours_turn().await;
    let yesterday = now - 25 * HOUR_US;
    // Yesterday: ttfb ~50 ms, all fine. Now: ttfb ~100 ms and a quarter failing.
    for i in 0..200 {
        fold(&app, &check, "dsl", yesterday, 50_000 + i * 10, true);
        fold(&app, &check, "dsl", now, 100_000 + i * 10, i % 4 != 0);
    }
    let get = |query: String| {
        let app = &app;
        let owner = owner.clone();
        let check = check.clone();
        async move {
            let query = format!("group_by=connection_class&{query}");
            app.report(&owner, &check, &query).await
        }
    };
    let (status, day) = get("window=24h&compare=previous".into()).await;
    assert_eq!(status, 200, "{day}");
    let dsl = row(&day, "dsl");
    assert_eq!(dsl["samples"], 200);
    let prev = &dsl["previous"];
    assert_eq!(prev["samples"], 200, "{dsl}");
    let p50 = &prev["phases"]["ttfb"]["p50"];
    assert!(p50["change"].as_i64().unwrap() > 45_000, "{p50}");
    assert_eq!(p50["significant"], true, "{p50}");
    let avail = &prev["availability"];
    assert_eq!(avail["previous"], 1.0);
    assert!(
        (avail["change"].as_f64().unwrap() + 0.25).abs() < 1e-9,
        "{avail}"
    );
    assert_eq!(avail["significant"], true, "{avail}");
    let compared = &day["compared_with"];
    assert_eq!(compared["to"], day["window"]["from"], "{day}");

    // The last hour holds only today's samples; 7 days hold both.
    let (_, hour) = get("window=1h".into()).await;
    assert_eq!(row(&hour, "dsl")["samples"], 200);
    let (_, week) = get("window=7d".into()).await;
    assert_eq!(row(&week, "dsl")["samples"], 400);
    // Hour buckets split the week into the two hours that have data.
    let (_, hourly) = get("window=7d&bucket=1h".into()).await;
    let rows = hourly["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{hourly}");
    assert!(rows
        .iter()
        .all(|r| r["samples"] == 200 && r["group"]["bucket_start"].is_string()));
    // Day buckets merge hours: every sample still counted once.
    let (_, daily) = get("window=30d&bucket=1d".into()).await;
    let total: u64 = daily["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["samples"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 400, "{daily}");
    assert_eq!(daily["bucket"], "1d");
    // A custom window before anything was measured is empty.
    let (_, old) = get("from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z".into()).await;
    assert_eq!(old["rows"].as_array().unwrap().len(), 0);

    // Bad parameters are 4xx naming the problem.
    for (query, code) in [
        ("window=2w", "invalid_window"),
        ("bucket=1w", "invalid_bucket"),
        ("compare=last", "invalid_compare"),
        ("confidence=0.5", "invalid_confidence"),
        ("window=24h&from=2020-01-01T00:00:00Z", "invalid_window"),
    ] {
        let (status, body) = get(query.into()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some(code)),
            "{query}: {body}"
        );
    }
    app.controller.stop().await.unwrap();
}

async fn merged_histograms_export_round_trips(db: TestDb) {
    let (app, owner, check, _site) = app_with_check(&db, json!([])).await;
    let now = now_us();
    for i in 0..300 {
        fold(
            &app,
            &check,
            "dsl",
            now - (i % 3) * HOUR_US,
            20_000 + i * 97,
            true,
        );
        fold(&app, &check, "fibre", now, 5_000 + i * 13, true);
    }
    let (status, report) = app
        .report(&owner, &check, "group_by=connection_class&histograms=true")
        .await;
    assert_eq!(status, 200, "{report}");
    let mut seen = 0;
    for r in report["rows"].as_array().unwrap() {
        for (name, encoded) in r["histograms"].as_object().unwrap() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_str().unwrap())
                .unwrap();
            let h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
            assert_eq!(h.len(), 300);
            if name == "goodput" {
                let g = &r["figures"]["goodput"];
                assert_eq!(h.len(), g["samples"].as_u64().unwrap());
                assert_eq!(h.value_at_quantile(0.1), g["percentiles"][1]["value"]);
            } else {
                let p = &r["phases"][name];
                assert_eq!(h.len(), p["samples"].as_u64().unwrap());
                assert_eq!(h.value_at_quantile(0.95), p["p95"].as_u64().unwrap());
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 2 * 7, "six phases and goodput per row");
    // Without the flag, no histograms.
    let (_, plain) = app
        .report(&owner, &check, "group_by=connection_class")
        .await;
    assert!(plain["rows"][0].get("histograms").is_none());

    // format=hdr: an HdrHistogram interval log with one tagged line per row and phase,
    // and per row and other figure.
    let (status, log) = app
        .report(&owner, &check, "group_by=connection_class&format=hdr")
        .await;
    assert_eq!(status, 200);
    let log = log.as_str().unwrap();
    let mut lines = 0;
    for entry in IntervalLogIterator::new(log.as_bytes()) {
        if let LogEntry::Interval(interval) = entry.unwrap() {
            let tag = interval.tag().unwrap().as_str().to_owned();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(interval.encoded_histogram())
                .unwrap();
            let h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
            let class = if tag.contains("class=dsl") {
                "dsl"
            } else {
                "fibre"
            };
            let (samples, p50) = match tag.rsplit_once(";phase=") {
                Some((_, phase)) => {
                    let p = &row(&report, class)["phases"][phase];
                    (p["samples"].clone(), p["p50"].clone())
                }
                None => {
                    assert!(tag.ends_with(";figure=goodput"), "{tag}");
                    let g = &row(&report, class)["figures"]["goodput"];
                    (g["samples"].clone(), g["percentiles"][0]["value"].clone())
                }
            };
            assert_eq!(h.len(), samples.as_u64().unwrap(), "{tag}");
            assert_eq!(h.value_at_quantile(0.5), p50.as_u64().unwrap(), "{tag}");
            lines += 1;
        }
    }
    assert_eq!(lines, 2 * 7, "{log}");
    app.controller.stop().await.unwrap();
}

/// The reports a rollup must leave unchanged: 30 days, 7 days compared with the week
/// before, daily buckets, hourly buckets.
const ROLLUP_QUERIES: [&str; 4] = [
    "group_by=connection_class&window=30d",
    "group_by=connection_class&window=7d&compare=previous",
    "group_by=connection_class&window=30d&bucket=1d",
    "window=7d&bucket=1h",
];

/// A report's rows (asserting a 200).
async fn report_rows(app: &TestApp, owner: &str, check: &str, query: &str) -> Value {
    let (status, body) = app.report(owner, check, query).await;
    assert_eq!(status, 200, "{body}");
    body["rows"].clone()
}

async fn complete_days_roll_up_into_day_and_week_cells_that_report_the_same_figures(db: TestDb) {
    use lastmile_domain::rollups::{self, day_start, DAY_US};
    let (app, owner, check, _site) = app_deciding_rollups(&db).await;
    let now = now_us();
    let today = day_start(now);
    // Three days ago in three hours, two classes; two days ago; and now.
    for (i, hour) in [1, 5, 23].into_iter().enumerate() {
        for j in 0..50 {
            let at = today - 3 * DAY_US + hour * HOUR_US + j;
            fold(
                &app,
                &check,
                "dsl",
                at,
                40_000 + (i as i64) * 9_000 + j * 37,
                j % 10 != 0,
            );
            fold(&app, &check, "cable", at, 20_000 + j * 11, true);
        }
    }
    for j in 0..30 {
        fold(
            &app,
            &check,
            "dsl",
            today - 2 * DAY_US + 12 * HOUR_US,
            70_000 + j * 101,
            true,
        );
    }
    // A day each 8 to 14 days ago: fourteen days always hold one whole week.
    for d in 8..=14 {
        for j in 0..10 {
            fold(
                &app,
                &check,
                "dsl",
                today - d * DAY_US + 6 * HOUR_US,
                60_000 + d * 1_000 + j * 7,
                true,
            );
        }
    }
    for j in 0..20 {
        fold(&app, &check, "dsl", now, 90_000 + j * 53, true);
    }
    let report = |query: &'static str| report_rows(&app, &owner, &check, query);
    let queries = ROLLUP_QUERIES;
    let mut before = Vec::new();
    for q in queries {
        before.push(report(q).await);
    }
    assert!(
        before[0][0]["figures"]["goodput"]["samples"].as_u64() > Some(0),
        "the reports compared carry a goodput: {}",
        before[0]
    );

    // A result received two days ago still waits to be folded: that day is not complete.
    let queued_at = today - 2 * DAY_US + 13 * HOUR_US;
    let mut conn = app.db().conn().unwrap();
    diesel::sql_query(format!(
        "INSERT INTO fold_queue (first_assignment_id, assignment_ids, runs, results, queued_at) \
         VALUES ('waiting', 'waiting', '{{\"run\": 1}}', 1, {queued_at})"
    ))
    .execute(&mut conn)
    .unwrap();
    assert_eq!(
        rollups::roll_up(&mut conn, now).unwrap(),
        8,
        "14 to 8 days ago, and three days ago"
    );
    diesel::sql_query("DELETE FROM fold_queue WHERE first_assignment_id = 'waiting'")
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        rollups::roll_up(&mut conn, now).unwrap(),
        1,
        "then two days ago"
    );
    assert_eq!(
        rollups::roll_up(&mut conn, now).unwrap(),
        0,
        "a day is rolled up once"
    );
    drop(conn);

    // One cell per class and day; their counts are the hours'. At least one week is
    // whole, and rolled up from its days.
    let week = 7 * DAY_US;
    let day_cells = format!("FROM rollup_cells WHERE span_us = {DAY_US}");
    assert_eq!(
        count(&app, &format!("SELECT COUNT(*) AS n {day_cells}")),
        10
    );
    let samples = "SELECT CAST(COALESCE(SUM(successes + failures), 0) AS BIGINT) AS n";
    assert_eq!(count(&app, &format!("{samples} {day_cells}")), 400);
    let week_cells = format!("FROM rollup_cells WHERE span_us = {week}");
    assert!(count(&app, &format!("SELECT COUNT(*) AS n {week_cells}")) >= 1);
    let days_in_weeks = format!(
        "FROM rollup_cells WHERE span_us = {DAY_US} AND EXISTS (SELECT 1 FROM rollup_cells w \
         WHERE w.span_us = {week} AND rollup_cells.bucket_start >= w.bucket_start \
         AND rollup_cells.bucket_start < w.bucket_start + {week})"
    );
    assert_eq!(
        count(&app, &format!("{samples} {week_cells}")),
        count(&app, &format!("{samples} {days_in_weeks}")),
        "a week cell holds its days"
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT rolled_until AS n FROM aggregate_rollups WHERE check_id = '{check}'")
        ),
        today - DAY_US
    );
    // Reports read the week and day cells now, and say exactly what they said from the
    // hours:
    // the same samples, percentiles, intervals, verdicts, comparison and buckets.
    for (q, was) in queries.iter().zip(&before) {
        assert_eq!(&report(q).await, was, "{q}");
    }
    // They do read the weeks: without the days inside whole weeks, the 30-day report
    // says the same.
    diesel::sql_query(format!("DELETE {days_in_weeks}"))
        .execute(&mut app.db().conn().unwrap())
        .unwrap();
    assert_eq!(&report(queries[0]).await, &before[0]);
    // And the days: without the rolled-up days' hour cells too, it still does; the
    // hourly buckets, which need hours, lose them.
    diesel::sql_query(format!(
        "DELETE FROM aggregates WHERE bucket_start < {}",
        today - DAY_US
    ))
    .execute(&mut app.db().conn().unwrap())
    .unwrap();
    assert_eq!(&report(queries[0]).await, &before[0]);
    let hourly = report(queries[3]).await;
    assert_eq!(
        hourly.as_array().unwrap().len(),
        1,
        "only the hour of now: {hourly}"
    );
    app.controller.stop().await.unwrap();
}

async fn complete_quarters_of_a_day_not_rolled_up_are_read_as_quarter_cells(db: TestDb) {
    use lastmile_domain::rollups::{self, day_start, Span, DAY_US, QUARTER_US};
    let (app, owner, check, _site) = app_deciding_rollups(&db).await;
    let now = now_us();
    let today = day_start(now);
    let yesterday = today - DAY_US;
    // Three days ago (a day to roll up), yesterday in each of its quarters, and now.
    for j in 0..20 {
        fold(
            &app,
            &check,
            "dsl",
            yesterday - 2 * DAY_US + 3 * HOUR_US,
            50_000 + j * 41,
            true,
        );
    }
    for (i, hour) in [1, 7, 13, 19].into_iter().enumerate() {
        for j in 0..25 {
            let at = yesterday + hour * HOUR_US + j;
            fold(
                &app,
                &check,
                "dsl",
                at,
                40_000 + (i as i64) * 7_000 + j * 37,
                j % 8 != 0,
            );
            fold(&app, &check, "cable", at, 20_000 + j * 13, true);
        }
    }
    for j in 0..10 {
        fold(&app, &check, "dsl", now, 90_000 + j * 53, true);
    }
    let report = |query: &'static str| report_rows(&app, &owner, &check, query);
    let queries = ROLLUP_QUERIES;
    let mut before = Vec::new();
    for q in queries {
        before.push(report(q).await);
    }

    // As of 23:00 yesterday: three days ago is complete, yesterday is not, but its first
    // three quarters are (the last ends at midnight, within the grace).
    let mut conn = app.db().conn().unwrap();
    assert_eq!(rollups::roll_up(&mut conn, today - HOUR_US).unwrap(), 1);
    let quarters = format!("FROM rollup_cells WHERE span_us = {QUARTER_US}");
    assert_eq!(
        count(&app, &format!("SELECT COUNT(*) AS n {quarters}")),
        6,
        "three quarters, two classes"
    );
    let samples = "SELECT CAST(COALESCE(SUM(successes + failures), 0) AS BIGINT) AS n";
    assert_eq!(count(&app, &format!("{samples} {quarters}")), 150);
    // A second pass rolls nothing again.
    rollups::roll_up(&mut conn, today - HOUR_US).unwrap();
    assert_eq!(count(&app, &format!("SELECT COUNT(*) AS n {quarters}")), 6);
    // A 30-day read takes yesterday's quarters, then the hours after them.
    let read = rollups::cells(&mut conn, &check, today - 30 * DAY_US, now, Span::Week).unwrap();
    let starts: Vec<i64> = read
        .iter()
        .filter(|c| c.bucket_start >= yesterday)
        .map(|c| c.bucket_start - yesterday)
        .collect();
    for q in 0..3 {
        assert_eq!(
            starts.iter().filter(|s| **s == q * QUARTER_US).count(),
            2,
            "quarter {q}: {starts:?}"
        );
    }
    assert!(
        !starts
            .iter()
            .any(|s| [HOUR_US, 7 * HOUR_US, 13 * HOUR_US].contains(s)),
        "the hours inside rolled-up quarters are not read too: {starts:?}"
    );
    assert_eq!(
        starts.iter().filter(|s| **s == 19 * HOUR_US).count(),
        2,
        "the hour past the last complete quarter is: {starts:?}"
    );
    drop(conn);
    // Reports say exactly what they said from the hours.
    for (q, was) in queries.iter().zip(&before) {
        assert_eq!(&report(q).await, was, "{q}");
    }
    // Yesterday rolls up into a day later; its quarters stay until the next day's does.
    // Yesterday is complete an hour after midnight (the grace): rolled up as of then
    // at the earliest, so that the test holds in the first hour of a UTC day too (it
    // failed every day from 00:00 to 01:00).
    let mut conn = app.db().conn().unwrap();
    let after_grace = now.max(today + rollups::GRACE_US);
    assert_eq!(rollups::roll_up(&mut conn, after_grace).unwrap(), 1);
    drop(conn);
    for (q, was) in queries.iter().zip(&before) {
        assert_eq!(&report(q).await, was, "{q}");
    }
    app.controller.stop().await.unwrap();
}

async fn goodput_comes_from_large_bodies_with_its_low_tail_in_json_and_csv(db: TestDb) {
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.rollup_interval_s = 0;
        c.fold_interval_ms = 3_600_000;
    })
    .await;
    let objectives = json!([{"figure": "goodput", "percentile": 10, "min_kbps": 7000}]);
    let (app, owner, check, _site) = app_with_check_on(app, objectives).await;
    let now = clear_of_the_hours_turn().await;
    // dsl: 1 MiB bodies in 0.5 to 1.49 s (16.8 down to 5.6 Mbit/s); cable: 1 MiB in
    // 100 ms (83.9 Mbit/s).
    for j in 0..100 {
        let mut r = stored(&check, "dsl", now, 40_000, true);
        (r.bytes, r.transfer_us) = (1 << 20, 500_000 + j * 10_000);
        fold_stored(&app, &r);
        let mut r = stored(&check, "cable", now, 20_000, true);
        (r.bytes, r.transfer_us) = (1 << 20, 100_000);
        fold_stored(&app, &r);
    }
    // No goodput from: a body under 64 KiB, a failure, a page (its bytes are the whole
    // page's, its transfer the document's), a body that came at once.
    let mut small = stored(&check, "dsl", now, 40_000, true);
    small.bytes = 60_000;
    let mut failed = stored(&check, "dsl", now, 40_000, false);
    failed.bytes = 1 << 20;
    let mut page = stored(&check, "dsl", now, 40_000, true);
    page.page = Some("{}".into());
    let mut instant = stored(&check, "dsl", now, 40_000, true);
    instant.transfer_us = 0;
    for r in [small, failed, page, instant] {
        fold_stored(&app, &r);
    }

    let (status, report) = app
        .report(&owner, &check, "window=1h&group_by=connection_class")
        .await;
    assert_eq!(status, 200, "{report}");
    let dsl = &row(&report, "dsl")["figures"]["goodput"];
    assert_eq!(dsl["samples"], 100, "{dsl}");
    assert_eq!(row(&report, "dsl")["samples"], 104);
    let value = |g: &Value, nn: u64| {
        g["percentiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["percentile"] == nn)
            .unwrap_or_else(|| panic!("no p{nn} in {g}"))["value"]
            .as_u64()
            .unwrap()
    };
    let close = |actual: u64, expected: u64| {
        assert!(
            actual.abs_diff(expected) * 1000 <= expected,
            "{actual} kbit/s, expected {expected}"
        )
    };
    // 8,388,608 bits over 0.5 .. 1.49 s: the median is the 50th lowest (1.0 s), p10
    // the 10th lowest (1.4 s).
    close(value(dsl, 50), 8_389);
    close(value(dsl, 10), 5_992);
    assert!(value(dsl, 1) <= value(dsl, 10) && value(dsl, 10) <= value(dsl, 50));
    assert!(
        dsl["percentiles"][1]["ci"].is_array(),
        "100 samples give p10 an interval"
    );
    let cable = &row(&report, "cable")["figures"]["goodput"];
    close(value(cable, 50), 83_886);
    close(value(cable, 1), 83_886);

    // goodput p10 >= 7 Mbit/s: dsl's p10 is 6.0 Mbit/s, 30 of its 100 below 7 where 10
    // are allowed, for sure; cable is far above.
    let dsl_objective = outcome(row(&report, "dsl"), "figure");
    assert_eq!(dsl_objective["met"], false, "{dsl_objective}");
    assert_eq!(dsl_objective["conclusive"], true, "{dsl_objective}");
    assert_eq!(dsl_objective["bad_samples"], 30, "{dsl_objective}");
    close(dsl_objective["actual"].as_f64().unwrap() as u64, 5_992);
    let cable_objective = outcome(row(&report, "cable"), "figure");
    assert_eq!(cable_objective["met"], true, "{cable_objective}");
    assert_eq!(cable_objective["bad_samples"], 0, "{cable_objective}");

    let (_, csv) = app
        .report(
            &owner,
            &check,
            "window=1h&group_by=connection_class&format=csv",
        )
        .await;
    let mut lines = csv.as_str().unwrap().lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
    };
    let (class, p50, p10) = (
        at("connection_class"),
        at("goodput_p50_kbps"),
        at("goodput_p10_kbps"),
    );
    at("goodput_p10_ci_low_kbps");
    let dsl_line: Vec<&str> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|cells| cells[class] == "dsl")
        .unwrap();
    assert_eq!(dsl_line[p50], value(dsl, 50).to_string());
    assert_eq!(dsl_line[p10], value(dsl, 10).to_string());
    app.controller.stop().await.unwrap();
}

/// A fold writes all its cells at once (on PostgreSQL, one statement to create the
/// missing ones, one to lock them, one to write them): cells that exist and cells it
/// creates, in several hours, countries and classes, each gets its own results, with
/// histograms that hold what the counts say. Two folders of the same cells side by side
/// (two replicas) each add theirs: none is lost, and they do not deadlock.
async fn folds_of_many_cells_add_to_old_and_new_cells_side_by_side(db: TestDb) {
    let (app, _owner, check, _site) = app_deciding_rollups(&db).await;
    let hour = (now_us() / HOUR_US - 3) * HOUR_US;
    let mut results = Vec::new();
    for (h, country, class) in hours_countries_and_classes() {
        let mut r = stored(&check, class, hour + h * HOUR_US + 60_000_000, 40_000, true);
        r.country = country.to_owned();
        results.push(r);
    }
    // Half of the cells exist before the concurrent folds.
    let old: Vec<StoredResult> = results.iter().step_by(2).cloned().collect();
    ingest::fold(&mut app.db().conn().unwrap(), &old).unwrap();

    const FOLDS: usize = 8;
    let folders: Vec<_> = (0..2)
        .map(|folder| {
            let database = app.db().clone();
            let mut mine = results.clone();
            // Each its own order of results: the fold sorts its cells.
            if folder == 1 {
                mine.reverse();
            }
            std::thread::spawn(move || {
                let mut conn = database.conn().unwrap();
                for _ in 0..FOLDS {
                    lastmile_storage::write_tx(&mut conn, |c| ingest::fold(c, &mine)).unwrap();
                }
            })
        })
        .collect();
    for folder in folders {
        folder.join().unwrap();
    }

    let mut conn = app.db().conn().unwrap();
    let rows =
        lastmile_storage::aggregates::hours(&mut conn, &check, hour, hour + 3 * HOUR_US).unwrap();
    assert_eq!(rows.len(), results.len(), "one cell a result");
    for row in &rows {
        let was_old = old.iter().any(|r| {
            r.country == row.country
                && r.connection_class == row.connection_class
                && r.received_at / HOUR_US * HOUR_US == row.bucket_start
        });
        let expected = 2 * FOLDS as i64 + i64::from(was_old);
        assert_eq!(
            row.successes, expected,
            "{} {} {}",
            row.country, row.connection_class, row.bucket_start
        );
        assert_eq!(row.failures, 0);
        for (bytes, value) in [(&row.ttfb_hist, 40_000), (&row.total_hist, 43_100)] {
            let h: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
            assert_eq!(h.len(), expected as u64);
            assert_eq!(h.value_at_quantile(0.5), h.highest_equivalent(value));
        }
    }
    drop(conn);
    app.controller.stop().await.unwrap();
}

/// Three hours, four countries and two classes: 24 cells.
fn hours_countries_and_classes() -> Vec<(i64, &'static str, &'static str)> {
    let mut cells = Vec::new();
    for h in 0..3 {
        for country in ["DE", "FR", "NL", "PL"] {
            for class in ["fibre", "dsl"] {
                cells.push((h, country, class));
            }
        }
    }
    cells
}
