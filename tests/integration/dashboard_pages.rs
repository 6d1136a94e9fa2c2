//! The dashboard's report page, check editing and pausing, API tokens, DNS TXT site
//! verification, the volunteer's rank and earnings and the public leaderboard, in a
//! real browser (headless Chromium) against real agents, on both backends; and the
//! authorisation of all of it through the HTTP layer.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use lastmile_protocol::ConnectionClass;
use serde_json::{json, Value};

use crate::agent_lifecycle::{settings, spawn_agent};
use crate::browser::Browser;
use crate::dashboard::{
    add_verified_site, assert_status_refused_keeping_name, enrol_key_in, sign_up,
};
use crate::dns::DnsResponder;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(
    an_owner_reads_a_report_of_real_measurements_edits_pauses_and_uses_tokens_and_dns,
    a_volunteer_sees_rank_points_earnings_and_payouts_and_anyone_sees_the_leaderboard,
    another_owner_can_never_see_change_pause_report_or_revoke,
    editing_and_pausing_through_the_api_follow_the_rules_of_creation,
);

const DESKTOP: (u32, u32) = (1280, 1100);
const PHONE: (u32, u32) = (390, 1100);

/// Screenshots of the current page at desktop and phone widths; at phone width the
/// page must not scroll sideways (wide tables scroll inside their own box).
pub(crate) async fn shots(browser: &Browser, db: &TestDb, name: &str) {
    let backend = db.backend_name();
    fit_page(browser, DESKTOP.0).await;
    browser
        .screenshot(&format!("{backend}-{name}-desktop"))
        .await;
    fit_page(browser, PHONE.0).await;
    assert!(
        !browser.scrolls_sideways().await,
        "{name} scrolls sideways at phone width"
    );
    browser.screenshot(&format!("{backend}-{name}-phone")).await;
    browser
        .client
        .set_window_size(DESKTOP.0, DESKTOP.1)
        .await
        .unwrap();
}

/// Sizes the window to `width` and tall enough to show the whole page, so the
/// screenshot is of the page, not of its first screen.
async fn fit_page(browser: &Browser, width: u32) {
    browser.client.set_window_size(width, 900).await.unwrap();
    let height = browser
        .client
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(900);
    let height = (height as u32 + 140).clamp(900, 6000);
    browser.client.set_window_size(width, height).await.unwrap();
}

/// Reloads `path` until `css`'s text contains `want` (20 s at most).
async fn wait_for_text(browser: &Browser, app: &TestApp, path: &str, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        browser.goto(&format!("{}{path}", app.base)).await;
        let text = browser.text(css).await;
        if text.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {css} never showed {want:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two real agents of one volunteer: cable in Berlin (127.0.0.2), DSL in Munich
/// (127.0.0.5). Returns their stop switches and tasks.
#[allow(clippy::type_complexity)]
fn two_agents(
    app: &TestApp,
    key: &str,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
) -> Vec<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let cable = settings(app, Some(key.to_owned()), dirs.0.path());
    let mut dsl = settings(app, Some(key.to_owned()), dirs.1.path());
    dsl.name = "attic-pi".into();
    dsl.declared_class = ConnectionClass::Dsl;
    dsl.engine.source_addr = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)));
    vec![spawn_agent(cable), spawn_agent(dsl)]
}

/// Waits (bounded) until `n` agents are online and calibrated: a run plans only those,
/// and one that is still calibrating when the run is made would not measure it.
async fn agents_ready(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        app,
        "SELECT COUNT(*) AS n FROM agents WHERE calibrated_at IS NOT NULL AND last_heartbeat_at IS NOT NULL",
    ) < n
    {
        assert!(Instant::now() < deadline, "{n} agents not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_owner_reads_a_report_of_real_measurements_edits_pauses_and_uses_tokens_and_dns(
    db: TestDb,
) {
    let dns = DnsResponder::start().await;
    let dns_addr = dns.addr;
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.heartbeat_interval_s = 1;
        c.dns_nameserver = Some(dns_addr);
    })
    .await;
    let site = target_site().await;
    let key = app.volunteer("Volunteer");
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let agents = two_agents(&app, &key, &dirs);
    agents_ready(&app, 2).await;

    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    sign_up(&browser, &app, "owner", "Shop Ltd", "ada@shop.example").await;
    app.credit(&app.login("ada@shop.example").owner_id.unwrap(), 1_000);
    add_verified_site(&browser, &site).await;
    assert!(browser.page_text().await.contains("(by file)"));

    // A check from Germany with two objectives, run three times by the two agents.
    browser.goto(&format!("{}/app/checks/new", app.base)).await;
    browser.fill("#name", "Home page").await;
    browser.fill("#countries", "DE").await;
    browser
        .fill("#objectives", "ttfb p95 <= 5000 ms\navailability >= 50 %")
        .await;
    browser.submit("button[value=create]").await;
    let check_page = browser.path().await;
    assert!(check_page.starts_with("/app/checks/"), "{check_page}");
    let check_id = check_page.trim_start_matches("/app/checks/").to_owned();
    for n in 1..=3 {
        browser.goto(&format!("{}{check_page}", app.base)).await;
        browser.submit("form[action$='/runs'] button").await;
        wait_for_text(&browser, &app, &check_page, "tbody tr:first-child", "2 / 2").await;
        let finished = browser.count("tbody tr").await;
        assert_eq!(finished, n);
    }

    // The report: charts drawn from the real measurements, the table by class and
    // country, the objectives judged.
    browser.click("a[href$='/report']").await;
    browser.wait_for("table.report").await;
    assert_eq!(browser.path().await, format!("{check_page}/report"));
    for chart in ["ttfb-p50", "ttfb-p95", "total-p50", "total-p95"] {
        // One dot per class for the one hour bucket the runs landed in.
        let dots = browser.count(&format!("figure#{chart} svg circle")).await;
        assert_eq!(dots, 2, "{chart}");
        let label = browser
            .attr(&format!("figure#{chart} svg"), "aria-label")
            .await
            .unwrap_or_default();
        assert!(!label.is_empty(), "{chart} has no accessible name");
    }
    assert!(browser.count("figure#ttfb-histogram svg rect").await > 1);
    assert!(browser.count("figure#ttfb-cdf svg polyline").await >= 1);
    let legend = browser.text("ul.legend").await;
    assert!(
        legend.contains("dsl") && legend.contains("cable"),
        "{legend}"
    );
    let rows = browser.text("table.report tbody").await;
    assert_eq!(browser.count("table.report tbody tr").await, 2, "{rows}");
    for class in ["cable", "dsl"] {
        let row = rows
            .lines()
            .find(|l| l.starts_with(class))
            .unwrap_or_else(|| panic!("no {class} row in {rows}"));
        assert!(row.contains("DE 3"), "{row}");
        assert!(row.contains("100.0 %"), "{row}");
    }
    assert!(rows.contains("ttfb p95 <= 5000 ms"), "{rows}");
    assert!(rows.contains("availability >= 50 %"), "{rows}");
    // Two objectives on each of the two rows, all met.
    assert_eq!(
        browser.count("table.report .objective .badge.ok").await,
        4,
        "{rows}"
    );
    assert_eq!(
        browser.count("table.report .objective .badge.bad").await,
        0,
        "{rows}"
    );
    assert!(browser.text("p.meta").await.contains("6 measurements"));
    // One country, coloured by its verdict.
    assert_eq!(browser.count("table.countries tbody tr").await, 1);
    assert_eq!(browser.count("table.countries tr.met").await, 1);
    let germany = browser.text("table.countries tbody tr").await;
    assert!(germany.starts_with("DE met 6 100.0 %"), "{germany}");
    // The verdict first, in one line.
    assert_eq!(
        browser.text("#verdict").await,
        "All objectives met (4 judgements over 2 rows)"
    );
    shots(&browser, &db, "report").await;

    // The CSV link reads the report API with the browser's session.
    let csv_href = browser
        .attr("a[download]", "href")
        .await
        .unwrap_or_default();
    assert!(csv_href.starts_with(&format!("/api/v1/checks/{check_id}/report?")));
    let (status, content_type, csv) = browser.fetch(&csv_href).await;
    assert_eq!(status, 200, "{csv}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    assert!(
        csv.starts_with("connection_class,country,samples,"),
        "{csv}"
    );
    assert!(
        csv.contains("\ncable,DE,3,3,0,") && csv.contains("\ndsl,DE,3,3,0,"),
        "{csv}"
    );
    let json_href = browser
        .attr("a[href*='/report?'][href$='country']", "href")
        .await
        .unwrap_or_default();
    let (status, _, report) = browser.fetch(&json_href).await;
    assert_eq!(status, 200);
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 2);
    // Another window that holds the same hour answers the same; an unknown one explains.
    browser.click("a.tab[href='?window=7d']").await;
    browser.wait_for("a.tab.current[href='?window=7d']").await;
    assert!(browser.text("p.meta").await.contains("6 measurements"));
    browser
        .goto(&format!("{}{check_page}/report?window=2y", app.base))
        .await;
    assert!(browser
        .page_text()
        .await
        .contains("not one of 1h, 24h, 7d, 30d"));

    // Edit: the same rules as creating; a refused edit keeps what was typed.
    browser.goto(&format!("{}{check_page}", app.base)).await;
    browser.click("a[href$='/edit']").await;
    browser.wait_for("form.check").await;
    assert_eq!(browser.value("#countries").await.as_deref(), Some("DE"));
    browser.fill("#name", "Home page, hourly").await;
    browser.fill("#every_seconds", "3600").await;
    browser.fill("#expected_status", "200, ok").await;
    assert_status_refused_keeping_name(&browser, "Home page, hourly").await;
    browser.fill("#expected_status", "200").await;
    shots(&browser, &db, "check-edit").await;
    browser.submit("button[value=create]").await;
    assert_eq!(browser.path().await, check_page);
    assert!(browser.text("h1").await.contains("Home page, hourly"));
    let facts = browser.text("dl.facts").await;
    assert!(
        facts.contains("every 1 h") && facts.contains("DE"),
        "{facts}"
    );

    // Pause.
    browser.submit("#pause").await;
    assert_eq!(browser.text("#check-state").await, "paused");
    shots(&browser, &db, "check-paused").await;

    // A named token, shown once, works against the API and sees the pause.
    browser.click("header nav a[href='/app/tokens']").await;
    browser.wait_for("#token-name").await;
    browser.fill("#token-name", "nightly CI").await;
    browser.submit("form[action='/app/tokens'] button").await;
    let secret = browser.text("#new-token").await;
    assert!(secret.starts_with("lmo_"), "{secret}");
    shots(&browser, &db, "tokens-new").await;
    let (status, checks) = app.call("GET", "/api/v1/checks", Some(&secret), None).await;
    assert_eq!(status, 200, "{checks}");
    assert_eq!(checks[0]["id"], check_id.as_str());
    assert_eq!(checks[0]["paused"], true);
    assert_eq!(checks[0]["name"], "Home page, hourly");
    browser.goto(&format!("{}/app/tokens", app.base)).await;
    assert!(!browser.page_text().await.contains(&secret));
    assert!(browser.text("table.tokens").await.contains("active"));
    // Revoked: the API answers 401 and says so.
    browser.submit("form[action$='/revoke'] button").await;
    assert!(browser.text("table.tokens").await.contains("revoked"));
    let (status, refused) = app.call("GET", "/api/v1/checks", Some(&secret), None).await;
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("nightly CI\" was revoked"),
        "{refused}"
    );
    shots(&browser, &db, "tokens-revoked").await;

    // Resume.
    browser.goto(&format!("{}{check_page}", app.base)).await;
    browser.submit("#resume").await;
    assert_eq!(browser.text("#check-state").await, "active");

    // DNS: a site on a host name, proven by a TXT record on the local nameserver.
    browser.goto(&format!("{}/app/sites", app.base)).await;
    browser.fill("#origin", "https://shop.example").await;
    browser.submit("form[action='/app/sites'] button").await;
    let name = browser.text("code.dns-name").await;
    assert_eq!(name, "_lastmile.shop.example");
    let token = browser.text("code.token").await;
    browser.submit("#verify-dns button").await;
    let error = browser.text(".error").await;
    assert!(
        error.contains("_lastmile.shop.example has no TXT record"),
        "{error}"
    );
    shots(&browser, &db, "site-dns").await;
    dns.publish_txt(&name, "v=something-else");
    browser.submit("#verify-dns button").await;
    assert!(browser
        .text(".error")
        .await
        .contains("none of them the token"));
    dns.publish_txt(&name, &token);
    browser.submit("#verify-dns button").await;
    let text = browser.page_text().await;
    assert!(
        text.contains("Ownership is proven (by DNS TXT record)") && !text.contains("not verified"),
        "{text}"
    );
    shots(&browser, &db, "site-dns-verified").await;

    browser.close().await;
    for (stop, task) in agents {
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
}

async fn a_volunteer_sees_rank_points_earnings_and_payouts_and_anyone_sees_the_leaderboard(
    db: TestDb,
) {
    let app = TestApp::quiet_for_real_agents(&db).await;
    let site = target_site().await;
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    sign_up(
        &browser,
        &app,
        "volunteer",
        "Ada Lovelace",
        "ada@volunteer.example",
    )
    .await;
    // Before any work: no rank, nothing earned.
    assert!(browser.text("#rank-week").await.contains("no points yet"));
    browser
        .submit("form[action='/app/agents/enrol-key'] button")
        .await;
    let command = browser.text("pre code").await;
    let key = enrol_key_in(&command);
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let agents = two_agents(&app, &key, &dirs);
    agents_ready(&app, 2).await;
    // Another volunteer with fewer points: six minutes online (one point).
    let other = app.volunteer("Bob");
    app.agent(Ipv4Addr::new(127, 0, 0, 3), &other, "fibre", 1)
        .await;
    {
        use diesel::RunQueryDsl;
        let today = lastmile_domain::clock::now_us().div_euclid(86_400_000_000);
        diesel::sql_query(format!(
            "INSERT INTO agent_uptime (agent_id, day, seconds) \
             SELECT a.id, {today}, 360 FROM agents a JOIN volunteers v ON v.id = a.volunteer_id \
             WHERE v.name = 'Bob'"
        ))
        .execute(&mut app.db().conn().unwrap())
        .unwrap();
    }

    // An owner's check, run twice by Ada's two agents: four paid results.
    let owner = app.owner("Shop");
    let site_id = app.verified_site(&owner, &site).await;
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "selection": {"countries": ["DE"]}}),
        )
        .await;
    let id = check["id"].as_str().unwrap();
    for _ in 0..2 {
        let run_id = app.start_run(&owner, id).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, run) = app
                .call(
                    "GET",
                    &format!("/api/v1/checks/{id}/runs/{run_id}"),
                    Some(&owner),
                    None,
                )
                .await;
            if run["done"] == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "run did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A payout of 5 cents in transit, as `payouts::start` leaves it (row and ledger).
    let volunteer_id = app.login("ada@volunteer.example").volunteer_id.unwrap();
    lastmile_billing::ledger::with_write_tx(&mut *app.db().conn().unwrap(), |c| {
        lastmile_billing::ledger::post(
            c,
            &lastmile_billing::movements::payout_started(
                &volunteer_id,
                lastmile_billing::Money::new(5, lastmile_billing::Currency::USD),
                "po_test_1",
            ),
        )
    })
    .unwrap();
    {
        use diesel::RunQueryDsl;
        let now = lastmile_domain::clock::now_us();
        diesel::sql_query(format!(
            "INSERT INTO payouts (id, volunteer_id, account_id, amount_minor, currency, status, \
             attempts, created_at, updated_at) \
             VALUES ('po_test_1', '{volunteer_id}', 'acct_test', 5, 'usd', 'in_transit', 0, {now}, {now})"
        ))
        .execute(&mut app.db().conn().unwrap())
        .unwrap();
    }

    browser.goto(&format!("{}/app/agents", app.base)).await;
    let week = browser.text("#rank-week").await;
    assert!(week.contains("#1"), "{week}");
    assert!(week.contains("2 ranked"), "{week}");
    let stats = browser.text("section.stats").await;
    // Four results at 5 cents less the 20 % fee: 16 cents earned, 5 of them paid out.
    assert!(stats.contains("0.11 USD"), "{stats}");
    assert!(stats.contains("0.05 USD"), "{stats}");
    let payouts = browser.text("#payouts").await;
    assert!(
        payouts.contains("0.05 USD") && payouts.contains("in transit"),
        "{payouts}"
    );
    let agents_table = browser.text("table").await;
    assert!(agents_table.contains("attic-pi"), "{agents_table}");
    shots(&browser, &db, "volunteer-earnings").await;

    // The leaderboard marks Ada's own row; signed out, anyone can read it.
    browser.click("header nav a[href='/app/leaderboard']").await;
    browser.wait_for("table.leaderboard").await;
    assert!(browser.text("tr.you").await.contains("Ada Lovelace"));
    browser.submit("header form button").await;
    browser.goto(&format!("{}/app/leaderboard", app.base)).await;
    assert_eq!(browser.path().await, "/app/leaderboard");
    let rows = browser.text("table.leaderboard tbody").await;
    let first = rows.lines().next().unwrap_or_default().to_owned();
    assert!(first.starts_with("1 Ada Lovelace"), "{rows}");
    assert!(rows.contains("Bob"), "{rows}");
    assert_eq!(browser.count("tr.you").await, 0);
    shots(&browser, &db, "leaderboard-week").await;
    // On a phone no figure is lost: the measurements move under the points.
    browser
        .client
        .set_window_size(PHONE.0, PHONE.1)
        .await
        .unwrap();
    let points = browser.text("table.leaderboard tbody tr td.points").await;
    assert!(points.contains("measurements"), "{points}");
    browser
        .client
        .set_window_size(DESKTOP.0, DESKTOP.1)
        .await
        .unwrap();
    let points = browser.text("table.leaderboard tbody tr td.points").await;
    assert!(!points.contains("measurements"), "{points}");
    browser.click("a.tab[href$='all_time']").await;
    browser.wait_for("a.tab.current[href$='all_time']").await;
    assert!(browser
        .text("table.leaderboard")
        .await
        .contains("Ada Lovelace"));
    // The CSV link is the public API.
    let href = browser
        .attr("a[download]", "href")
        .await
        .unwrap_or_default();
    assert_eq!(href, "/api/v1/leaderboard?period=all_time&format=csv");
    let (status, _, csv) = browser.fetch(&href).await;
    assert_eq!(status, 200);
    assert!(
        csv.lines().nth(1).unwrap().starts_with("1,Ada Lovelace,"),
        "{csv}"
    );
    browser.close().await;
    for (stop, task) in agents {
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
}

async fn another_owner_can_never_see_change_pause_report_or_revoke(db: TestDb) {
    // No scheduler ticks: the only runs are ones somebody asked for.
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    // The first owner (API) has a site, a check and a named token.
    let (first_id, first) = app.owner_with_credit("First", 1_000);
    let site_id = app.verified_site(&first, &site).await;
    let check = app
        .create_check(
            &first,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "First's check"}),
        )
        .await;
    let check_id = check["id"].as_str().unwrap().to_owned();
    let (token, token_secret) =
        lastmile_domain::api_tokens::create(&mut app.db().conn().unwrap(), &first_id, "first's CI")
            .unwrap();

    // The second owner signs up in the browser and tries the first owner's pages.
    let browser = Browser::start(DESKTOP.0, DESKTOP.1).await;
    sign_up(&browser, &app, "owner", "Second", "second@shop.example").await;
    for page in ["", "/edit", "/report"] {
        browser
            .goto(&format!("{}/app/checks/{check_id}{page}", app.base))
            .await;
        let text = browser.page_text().await;
        assert!(text.contains("Not found"), "{page}: {text}");
        assert!(!text.contains("First's check"), "{page}: {text}");
    }
    browser
        .screenshot(&format!("{}-report-not-yours", db.backend_name()))
        .await;
    let (cookie, csrf) = browser.session().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |path: String, form: Vec<(&'static str, String)>| {
        http.post(format!("{}{path}", app.base))
            .header("cookie", cookie.clone())
            .form(&form)
            .send()
    };
    let csrf_only = vec![("csrf", csrf.clone())];
    for path in [
        format!("/app/checks/{check_id}/pause"),
        format!("/app/checks/{check_id}/resume"),
        format!("/app/checks/{check_id}/runs"),
        format!("/app/tokens/{}/revoke", token.id),
    ] {
        let res = post(path.clone(), csrf_only.clone()).await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    let res = post(
        format!("/app/checks/{check_id}/edit"),
        vec![
            ("csrf", csrf.clone()),
            ("site_id", site_id.clone()),
            ("url", format!("{}/", site.origin())),
            ("name", "Hijacked".into()),
            ("agents_per_run", "1".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 404);
    // The report API with the second owner's session cookie: not found either.
    let res = http
        .get(format!(
            "{}/api/v1/checks/{check_id}/report?format=csv",
            app.base
        ))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Nor with the second owner's own API token.
    let second = app.owner("Second API");
    for (method, path, body) in [
        ("GET", format!("/api/v1/checks/{check_id}/report"), None),
        ("POST", format!("/api/v1/checks/{check_id}/pause"), None),
        (
            "PUT",
            format!("/api/v1/checks/{check_id}"),
            Some(
                json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "Hijacked"}),
            ),
        ),
    ] {
        let (status, body) = app.call(method, &path, Some(&second), body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // Nothing changed: the first owner's check is unpaused and named as before, and
    // the first owner's token still works.
    let (status, check) = app
        .call(
            "GET",
            &format!("/api/v1/checks/{check_id}"),
            Some(&token_secret),
            None,
        )
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["name"], "First's check");
    assert_eq!(check["paused"], false);
    assert_eq!(
        crate::support::count(&app, "SELECT COUNT(*) AS n FROM runs"),
        0
    );
    // Writes through the API still need a token: a session cookie may only read.
    let res = http
        .post(format!("{}/api/v1/checks/{check_id}/pause", app.base))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    browser.close().await;
}

async fn editing_and_pausing_through_the_api_follow_the_rules_of_creation(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("Owner");
    let site_id = app.verified_site(&owner, &site).await;
    let url = format!("{}/", site.origin());
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": url, "schedule": {"every_seconds": 60}}),
        )
        .await;
    let id = check["id"].as_str().unwrap().to_owned();

    // A bad edit is refused with the reason creation gives, and changes nothing.
    let (status, refused) = app
        .call(
            "PUT",
            &format!("/api/v1/checks/{id}"),
            Some(&owner),
            Some(json!({"site_id": site_id, "url": "https://elsewhere.example/", "name": "Moved"})),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"], "url_not_on_site");
    let (status, refused) = app
        .call(
            "PUT",
            &format!("/api/v1/checks/{id}"),
            Some(&owner),
            Some(
                json!({"site_id": site_id, "url": url, "objectives": [{"availability_min": 250}]}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    let (_, unchanged) = app
        .call("GET", &format!("/api/v1/checks/{id}"), Some(&owner), None)
        .await;
    assert_eq!(unchanged["schedule"]["every_seconds"], 60);
    assert_eq!(unchanged["name"], check["name"]);

    // A good edit keeps the id and creation time.
    let (status, edited) = app
        .call(
            "PUT",
            &format!("/api/v1/checks/{id}"),
            Some(&owner),
            Some(json!({"site_id": site_id, "url": url, "name": "Edited", "schedule": {"every_seconds": 120},
                "selection": {"connection_classes": ["satellite"], "agents_per_run": 3}})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["id"], id.as_str());
    assert_eq!(edited["created_at"], check["created_at"]);
    assert_eq!(edited["name"], "Edited");
    assert_eq!(edited["selection"]["agents_per_run"], 3);
    // Satellite-only selections cost more: the price follows the edit.
    assert!(
        edited["price_per_result_minor"].as_i64() > check["price_per_result_minor"].as_i64(),
        "{edited}"
    );

    // Paused: the scheduler makes no run however late it is; resumed, it does.
    let (status, paused) = app
        .call(
            "POST",
            &format!("/api/v1/checks/{id}/pause"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    let policy = app.controller.state.policy;
    let later = lastmile_domain::clock::now_us() + 3_600 * 1_000_000;
    let made =
        lastmile_domain::scheduling::run_due_checks(&mut app.db().conn().unwrap(), &policy, later)
            .unwrap();
    assert!(made.is_empty(), "a paused check ran: {made:?}");
    let (status, resumed) = app
        .call(
            "POST",
            &format!("/api/v1/checks/{id}/resume"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["paused"], false);
    let made =
        lastmile_domain::scheduling::run_due_checks(&mut app.db().conn().unwrap(), &policy, later)
            .unwrap();
    assert_eq!(made.len(), 1);

    // The account's original token and named tokens both work; a revoked one is 401.
    let owner_id = {
        let (_, me) = app.call("GET", "/api/v1/me", Some(&owner), None).await;
        me["id"].as_str().unwrap().to_owned()
    };
    let mut conn = app.db().conn().unwrap();
    let (named, secret) =
        lastmile_domain::api_tokens::create(&mut conn, &owner_id, "deploy").unwrap();
    let (status, _) = app.call("GET", "/api/v1/checks", Some(&secret), None).await;
    assert_eq!(status, 200);
    // Revoked behind the controller's back (as another replica would): it trusts a
    // token it found valid for `agent_refresh_ms` (100 ms here, 2 s in production),
    // then refuses it.
    lastmile_domain::api_tokens::revoke(&mut conn, &owner_id, &named.id).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = app.call("GET", "/api/v1/me", Some(&secret), None).await;
        if status != 401 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        }
        break (status, body);
    };
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let (status, _) = app.call("GET", "/api/v1/checks", Some(&owner), None).await;
    assert_eq!(status, 200);
    // An empty name is refused.
    assert!(lastmile_domain::api_tokens::create(&mut conn, &owner_id, "  ").is_err());
}
