//! Alerts in the dashboard, in a real browser (headless Chromium), on both backends: an
//! owner adds a webhook channel (its secret shown once), is told why an email channel
//! cannot be made here, puts a rule on a check from its page, sees the incident the
//! agents' failures open (banner, incidents table) and the channel's delivery log, and
//! deletes the rule, which resolves the incident; the checks list shows each check's
//! state, last run, 24-hour availability and SLA verdict. Every page also at phone width.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lastmile_testbed::hooks::HookReceiver;
use serde_json::{json, Value};

use crate::browser::Browser;
use crate::dashboard::{add_verified_site, sign_up};
use crate::dashboard_pages::shots;
use crate::leasing::submission;
use crate::per_backend;
use crate::support::{target_site, TestApp, TestDb};

per_backend!(an_owner_sets_up_alerts_sees_the_incident_and_the_deliveries_in_the_browser);

/// Chooses `value` in the `<select>` matching `css`.
async fn choose(browser: &Browser, css: &str, value: &str) {
    browser
        .client
        .execute(
            "document.querySelector(arguments[0]).value = arguments[1]",
            vec![json!(css), json!(value)],
        )
        .await
        .unwrap();
}

/// Reloads `url` until `css`'s text contains `want` (20 s at most); returns the text.
async fn reload_until(browser: &Browser, url: &str, css: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        browser.goto(url).await;
        let text = if browser.count(css).await > 0 {
            browser.text(css).await
        } else {
            String::new()
        };
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {css} never showed {want:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn an_owner_sets_up_alerts_sees_the_incident_and_the_deliveries_in_the_browser(db: TestDb) {
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.alert_interval_ms = 150;
        c.alert_retry_ms = 200;
    })
    .await;
    let site = target_site().await;
    let hooks = HookReceiver::start().await.unwrap();
    let key = app.volunteer("Volunteer");
    let agent = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    // It runs path traces (its heartbeat says so), so the incident will ask it for one.
    let beat = json!({"declared_class": "dsl", "version": "test",
        "limits": {"max_concurrent": 1}, "path_trace": true});
    let (status, ack) = app
        .heartbeat_from(Ipv4Addr::new(127, 0, 0, 2), &agent, beat)
        .await;
    assert_eq!(status, 200, "{ack}");

    let browser = Browser::start(1280, 1100).await;
    sign_up(&browser, &app, "owner", "Shop Ltd", "ada@shop.example").await;
    let owner_id = app.login("ada@shop.example").owner_id.unwrap();
    app.credit(&owner_id, 1_000);
    add_verified_site(&browser, &site).await;
    browser.goto(&format!("{}/app/checks/new", app.base)).await;
    browser.fill("#name", "Home page").await;
    browser.submit("button[value=create]").await;
    let check_page = browser.path().await;
    let check_id = check_page.trim_start_matches("/app/checks/").to_owned();
    assert!(browser
        .text("#incidents + p")
        .await
        .contains("No incidents"));
    assert!(browser.page_text().await.contains("First add a channel"));

    // A webhook channel: its secret is shown once.
    browser.click("header nav a[href='/app/alerts']").await;
    browser.wait_for("#channel-name").await;
    browser.fill("#channel-name", "on-call").await;
    choose(&browser, "#channel-kind", "webhook").await;
    browser.fill("#channel-target", &hooks.url("/hook")).await;
    browser.submit("form[action='/app/alerts'] button").await;
    let secret = browser.text("#new-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    shots(&browser, &db, "alerts-new").await;
    browser.goto(&format!("{}/app/alerts", app.base)).await;
    assert!(!browser.page_text().await.contains(&secret));
    assert!(browser.text("table.channels").await.contains("on-call"));
    // Email cannot be sent from this controller, and the page says why.
    browser.fill("#channel-name", "me").await;
    choose(&browser, "#channel-kind", "email").await;
    browser.fill("#channel-target", "ada@shop.example").await;
    browser.submit("form[action='/app/alerts'] button").await;
    assert!(
        browser
            .text(".error")
            .await
            .contains("no SMTP relay configured"),
        "{}",
        browser.page_text().await
    );

    // A rule, from the check's page.
    browser.goto(&format!("{}{check_page}", app.base)).await;
    choose(&browser, "#rule-kind", "availability_below").await;
    browser.fill("#rule-threshold", "90").await;
    browser.click("input[name=channels]").await;
    browser.submit("form[action$='/alert-rules'] button").await;
    let rules = browser.text("ul.rules").await;
    assert!(
        rules.contains("Availability below 90 % over 15 min (at least 3 results) → on-call"),
        "{rules}"
    );

    // The agent's line fails three runs in a row.
    let (_, token) =
        lastmile_domain::api_tokens::create(&mut app.db().conn().unwrap(), &owner_id, "test")
            .unwrap();
    for _ in 0..3 {
        let task = app.run_and_lease(&token, &check_id, &agent).await["assignment_id"].clone();
        let mut result = submission(&task, 40_000);
        result["measurement"]["status"] = Value::Null;
        result["measurement"]["error"] = json!({"kind": "dns_timeout", "message": "no answer"});
        let (status, ack) = app.submit(&agent, result).await;
        assert_eq!(status, 200, "{ack}");
    }
    let url = format!("{}{check_page}", app.base);
    let banner = reload_until(&browser, &url, ".incident", "Availability 0 %").await;
    assert!(
        banner.contains(
            "Availability 0 % over the last 15 min (3 of 3 measurements failed), below 90 %"
        ),
        "{banner}"
    );
    assert!(browser.text("table.incidents").await.contains("open"));
    shots(&browser, &db, "check-incident").await;

    // The agent is asked to trace the path; its report (hop 3 slow and lossy) shows on
    // the check's page with that hop marked.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let trace = loop {
        let (status, lease) = app.lease(&agent, 1).await;
        assert_eq!(status, 200, "{lease}");
        if let Some(trace) = lease["traces"].get(0) {
            break trace.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no trace asked for");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(trace["url"], format!("{}/", site.origin()));
    let report = json!({
        "trace_id": trace["trace_id"], "started_at": "2026-12-05T12:00:00Z",
        "target_addr": "127.0.0.1", "reached": true,
        "hops": [
            {"ttl": 1, "addr": "10.0.0.1", "sent": 3, "rtts_us": [900, 1_100, 1_000]},
            {"ttl": 2, "addr": "198.51.100.1", "sent": 3, "rtts_us": [5_000, 5_200, 5_100]},
            {"ttl": 3, "addr": "127.0.0.1", "sent": 3, "rtts_us": [180_000, 190_000]},
        ],
    });
    let (status, ack) = app
        .call("POST", "/api/v1/agents/traces", Some(&agent), Some(report))
        .await;
    assert_eq!(status, 200, "{ack}");
    let traced = reload_until(&browser, &url, ".traces", "Round trips rise").await;
    assert!(
        traced.contains("From test agent (dsl, DE, AS64501) to 127.0.0.1"),
        "{traced}"
    );
    assert!(
        traced.contains("Round trips rise by 185 ms at hop 3 (127.0.0.1)")
            && traced.contains("Probes are lost from hop 3 (127.0.0.1) on: 33 %"),
        "{traced}"
    );
    let jump = browser.text("table.trace tr.jump").await;
    assert!(
        jump.contains("127.0.0.1") && jump.contains("33 %"),
        "{jump}"
    );
    assert!(
        jump.contains("180.0 / 190.0 / 190.0 ms"),
        "min / median / max: {jump}"
    );
    assert_eq!(browser.count("table.trace tr.jump").await, 1);
    shots(&browser, &db, "check-trace").await;
    // The checks list answers "is it OK" at a glance.
    browser.goto(&format!("{}/app/checks", app.base)).await;
    assert_eq!(browser.text("tbody.checks td.state").await, "incident");
    assert_eq!(
        browser.text("tbody.checks td.availability").await,
        "0.0 % of 3"
    );
    let row = browser.text("tbody.checks tr").await;
    assert!(row.contains("0 of 1 ok"), "{row}");
    assert_eq!(browser.text("tbody.checks td.sla").await, "no objectives");
    shots(&browser, &db, "checks-health").await;

    // The delivery log: delivered once.
    let got = hooks
        .wait_for(Duration::from_secs(20), |got| !got.is_empty())
        .await;
    assert_eq!(got.len(), 1);
    browser.goto(&format!("{}/app/alerts", app.base)).await;
    browser.click("table.channels a").await;
    let log = reload_until(
        &browser,
        &format!("{}{}", app.base, browser.path().await),
        "table.deliveries",
        "delivered",
    )
    .await;
    assert!(log.contains("incident.opened"), "{log}");
    shots(&browser, &db, "alert-deliveries").await;

    // Deleting the rule resolves its incident, with the reason.
    browser.goto(&url).await;
    browser
        .submit("form[action*='/alert-rules/'][action$='/delete'] button")
        .await;
    assert!(browser.page_text().await.contains("No rules"));
    let incidents = reload_until(&browser, &url, "table.incidents", "resolved").await;
    assert!(
        incidents.contains("The alert rule was deleted"),
        "{incidents}"
    );
    assert_eq!(browser.count(".incident").await, 0);
    // Without the incident, the list says what the last run saw.
    browser.goto(&format!("{}/app/checks", app.base)).await;
    assert_eq!(browser.text("tbody.checks td.state").await, "down");
    browser.close().await;
    app.controller.stop().await.unwrap();
}
