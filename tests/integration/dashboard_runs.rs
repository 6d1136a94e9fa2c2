//! One run's results page in a real browser (headless Chromium), on both backends: a
//! real agent measures a URL of a real site that redirects once, the owner follows the
//! run's link from the check page and reads the agent's row (status, address, HTTP
//! version, the hop), also at phone width; another owner gets the 404 of the API.

use std::time::{Duration, Instant};

use lastmile_testbed::site::REDIRECT_PATH;

use crate::agent_lifecycle::{settings, spawn_agent};
use crate::browser::Browser;
use crate::dashboard::{add_verified_site, sign_up};
use crate::dashboard_pages::shots;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(an_owner_opens_a_runs_results_from_the_check_page_and_another_owner_cannot);

async fn an_owner_opens_a_runs_results_from_the_check_page_and_another_owner_cannot(db: TestDb) {
    // No scheduler ticks: the only run is the one the owner asks for.
    let app = TestApp::quiet_for_real_agents(&db).await;
    let site = target_site().await;
    // A real agent in Germany (127.0.0.2) declaring cable.
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();
    let (stop, agent) = spawn_agent(settings(&app, Some(key), state.path()));

    let browser = Browser::start(1280, 1100).await;
    sign_up(&browser, &app, "owner", "Shop Ltd", "ada@shop.example").await;
    app.credit(&app.login("ada@shop.example").owner_id.unwrap(), 1_000);
    add_verified_site(&browser, &site).await;

    // A check of the URL that answers 301 to the home page.
    let moved = format!("{}{REDIRECT_PATH}", site.origin());
    browser.goto(&format!("{}/app/checks/new", app.base)).await;
    browser.fill("#name", "Old address").await;
    browser.fill("#url", &moved).await;
    browser.submit("button[value=create]").await;
    let check_page = browser.path().await;
    assert!(check_page.starts_with("/app/checks/"), "{check_page}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &app,
        "SELECT COUNT(*) AS n FROM agents WHERE last_heartbeat_at IS NOT NULL AND calibrated_at IS NOT NULL",
    ) < 1
    {
        assert!(Instant::now() < deadline, "the agent never came online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.goto(&format!("{}{check_page}", app.base)).await;
    browser.submit("form[action$='/runs'] button").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        browser.goto(&format!("{}{check_page}", app.base)).await;
        let runs = browser.text("tbody").await;
        if runs.contains("1 / 1") && runs.contains("finished") {
            break;
        }
        assert!(Instant::now() < deadline, "run did not finish: {runs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The run's start links to what each agent saw.
    browser.submit("tbody tr:first-child td a").await;
    let results_page = browser.path().await;
    assert!(
        results_page.starts_with(&format!("{check_page}/runs/")),
        "{results_page}"
    );
    assert!(browser.text("h1").await.starts_with("Run started"));
    assert_eq!(
        browser.count("#results tbody tr").await,
        1,
        "one agent, one row"
    );
    let row = browser.text("#results tbody tr").await;
    for want in ["cable", "DE", "127.0.0.1", "IPv4", "HTTP/1.1"] {
        assert!(row.contains(want), "{want:?} missing from the row: {row}");
    }
    assert_eq!(browser.text("#results .status").await, "200");
    // The hop, readable: its status, the URL asked for and where it pointed.
    assert_eq!(
        browser.text("#results li.hop").await,
        format!("301 {moved} → {}/", site.origin())
    );
    shots(&browser, &db, "run-results").await;
    let (status, _, _) = browser.fetch(&results_page).await;
    assert_eq!(status, 200);

    // Another owner gets the same 404 as for a check that does not exist.
    browser.submit(".who button").await;
    sign_up(&browser, &app, "owner", "Other Ltd", "eve@other.example").await;
    browser.goto(&format!("{}{results_page}", app.base)).await;
    let text = browser.page_text().await;
    assert!(text.contains("Not found"), "{text}");
    assert!(
        !text.contains("Old address") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let (status, _, _) = browser.fetch(&results_page).await;
    assert_eq!(status, 404);

    browser.close().await;
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}
