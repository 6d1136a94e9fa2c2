//! `page` checks end to end: the API takes one, a real agent loads the page (HTML and
//! sub-resources) from a real site, the controller stores its summary, charges the
//! page price and reports the page total.

use std::time::Duration;

use lastmile_testbed::shop;
use lastmile_testbed::site::{SiteConfig, TargetSite};
use serde_json::json;

use crate::agent_lifecycle::{agents_online, eventually, settings, spawn_agent};
use crate::per_backend;
use crate::support::{count, TestApp, TestDb};

per_backend!(a_page_check_flows_from_the_api_through_an_agent_into_the_report);

async fn a_page_check_flows_from_the_api_through_an_agent_into_the_report(db: TestDb) {
    let app = TestApp::start_with(&db, |c| c.heartbeat_interval_s = 1).await;
    let site = TargetSite::start(
        "127.0.0.1:0".parse().unwrap(),
        SiteConfig {
            think_time: Duration::from_millis(10),
            ..SiteConfig::default()
        },
    )
    .await
    .unwrap();
    let (owner_id, owner) = app.owner_with_credit("owner", 100);
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();
    let (stop, task) = spawn_agent(settings(&app, Some(key), state.path()));
    agents_online(&app, 1, "the agent is online").await;
    let site_id = app.verified_site(&owner, &site).await;
    let url = format!("{}{}", site.origin(), shop::PAGE_PATH);

    // A kind that does not exist is refused, naming what is allowed.
    let (status, refused) = app
        .call(
            "POST",
            "/api/v1/checks",
            Some(&owner),
            Some(json!({"site_id": site_id, "url": url, "kind": "browser"})),
        )
        .await;
    assert!((400..500).contains(&status), "{status} {refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("browser") && message.contains("page"),
        "{refused}"
    );

    let (status, check) = app
        .call(
            "POST",
            "/api/v1/checks",
            Some(&owner),
            Some(json!({"site_id": site_id, "url": url, "kind": "page",
                        "selection": {"agents_per_run": 1}})),
        )
        .await;
    assert_eq!(status, 201, "{check}");
    assert_eq!(check["kind"], "page");
    assert_eq!(
        check["price_per_result_minor"], 15,
        "a page costs more than a fetch"
    );
    let id = check["id"].as_str().unwrap().to_owned();

    eventually("the page result is stored", || {
        count(&app, "SELECT COUNT(*) AS n FROM results") == 1
    })
    .await;
    // The summary is kept with the result: every sub-resource, the missing one listed.
    let (resources, bytes, missing) = shop::expected(lastmile_testbed::site::NOT_FOUND.len());
    let stored = count(
        &app,
        &format!(
            "SELECT COUNT(*) AS n FROM results WHERE error_kind IS NULL AND bytes = {bytes} \
             AND page LIKE '%\"resources\":{resources},%' AND page LIKE '%{missing}%' \
             AND page LIKE '%\"http_status\"%' AND total_us > ttfb_us"
        ),
    );
    assert_eq!(stored, 1, "the stored result carries the page summary");

    // The owner reads it with the run's results: the page summary with the result.
    let (_, runs) = app
        .call(
            "GET",
            &format!("/api/v1/checks/{id}/runs"),
            Some(&owner),
            None,
        )
        .await;
    let run = runs[0]["id"].as_str().unwrap().to_owned();
    let (status, results) = app
        .call(
            "GET",
            &format!("/api/v1/checks/{id}/runs/{run}/results"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200, "{results}");
    assert_eq!(results.as_array().map(Vec::len), Some(1), "{results}");
    let page = &results[0]["page"];
    assert_eq!(page["resources"], resources, "{results}");
    assert_eq!(page["bytes"], bytes, "{results}");
    assert_eq!(page["document_url"], url.as_str(), "{results}");
    assert_eq!(page["total_us"], results[0]["timings_us"]["total"]);
    assert!(
        page["failed"].to_string().contains(missing),
        "the missing sub-resource is listed: {results}"
    );

    let (status, report) = app
        .call(
            "GET",
            &format!("/api/v1/checks/{id}/report"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["check"]["kind"], "page");
    let row = &report["rows"][0];
    assert_eq!(row["samples"], 1, "{report}");
    assert_eq!(row["availability"], 1.0);
    // The page total: the document and, after it, the stylesheet, then its font.
    let total = row["phases"]["total"]["p50"].as_u64().unwrap();
    let ttfb = row["phases"]["ttfb"]["p50"].as_u64().unwrap();
    assert!(total >= 3 * 10_000 && total > ttfb, "{row}");
    // The dashboard's report table shows the page total, the point of a page check.
    let cookie = app.owner_session(&owner).await;
    let html = app
        .dashboard_page(&cookie, &format!("/app/checks/{id}/report"))
        .await;
    assert!(html.contains("Page total p95"), "{html}");
    let shown = match total as f64 / 1000.0 {
        ms if ms >= 100.0 => format!("{ms:.0} ms"),
        ms => format!("{ms:.1} ms"),
    };
    assert!(
        html.contains(&shown),
        "the page total {shown} is not in the table"
    );
    // The run's page names the sub-resource that failed, its whole URL and why.
    let (_, runs) = app
        .call(
            "GET",
            &format!("/api/v1/checks/{id}/runs"),
            Some(&owner),
            None,
        )
        .await;
    let run = runs[0]["id"].as_str().unwrap().to_owned();
    let html = app
        .dashboard_page(&cookie, &format!("/app/checks/{id}/runs/{run}"))
        .await;
    assert!(html.contains("1 failed"), "{html}");
    let failed = format!(
        "image {}{}: http_status 404",
        site.origin(),
        shop::MISSING_PATH
    );
    assert!(html.contains(&failed), "{failed} missing from {html}");

    // The owner paid the page price for it: 1.00 usd of credit less 0.15.
    let (status, balance) = app
        .call("GET", "/api/v1/me/balance", Some(&owner), None)
        .await;
    assert_eq!(status, 200, "{balance}");
    assert_eq!(balance["id"], owner_id.as_str());
    let credit = balance["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["kind"] == "owner_credit")
        .map(|b| b["balance_minor"].clone());
    assert_eq!(credit, Some(json!(85)), "{balance}");

    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}
