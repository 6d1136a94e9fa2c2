//! The dashboard in a real browser (headless Chromium), on both backends: an owner signs
//! up, adds and verifies a site; accounts cannot see each other's sites; forms without
//! the CSRF token change nothing.

use lastmile_testbed::site::TargetSite;

use crate::browser::Browser;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb, PASSWORD};

per_backend!(
    an_owner_signs_up_adds_a_site_and_verifies_it_in_the_browser,
    one_owner_cannot_open_another_owners_site,
    forms_without_the_csrf_token_change_nothing,
    a_volunteer_gets_an_install_command_and_sees_the_agent_it_enrols,
    an_owner_creates_a_filtered_check_runs_it_and_sees_a_real_agent_measure,
    an_owner_deletes_a_check_then_its_site_and_their_history_stays,
);

pub(crate) async fn sign_up(browser: &Browser, app: &TestApp, role: &str, name: &str, email: &str) {
    browser.goto(&format!("{}/app/sign-up", app.base)).await;
    browser
        .click(&format!("input[name=role][value={role}]"))
        .await;
    browser.fill("#name", name).await;
    browser.fill("#email", email).await;
    browser.fill("#password", PASSWORD).await;
    browser.submit("button[type=submit]").await;
}

/// Submits the check form, whose expected status is nonsense: asserts that the error
/// names the expected status codes and that the form keeps the typed `name`.
pub(crate) async fn assert_status_refused_keeping_name(browser: &Browser, name: &str) {
    browser.submit("button[value=create]").await;
    assert!(browser
        .text(".error")
        .await
        .contains("expected status codes"));
    assert_eq!(browser.value("#name").await.as_deref(), Some(name));
}

/// Adds `site` on the sites page the browser is on and verifies it by file.
pub(crate) async fn add_verified_site(browser: &Browser, site: &TargetSite) {
    browser.fill("#origin", &site.origin()).await;
    browser.submit("form[action='/app/sites'] button").await;
    site.publish_verification_token(&browser.text("code.token").await);
    browser.submit("#verify-file button").await;
}

/// The enrolment key in the install command the agents page shows.
pub(crate) fn enrol_key_in(command: &str) -> String {
    command
        .split_whitespace()
        .skip_while(|w| *w != "--enrol-key")
        .nth(1)
        .unwrap()
        .to_owned()
}

async fn an_owner_signs_up_adds_a_site_and_verifies_it_in_the_browser(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let browser = Browser::start(1280, 900).await;
    let shot = |name: &str| format!("{}-{name}", db.backend_name());

    browser.goto(&format!("{}/app/sign-up", app.base)).await;
    browser.screenshot(&shot("sign-up")).await;
    // A short password is refused with the reason, and what was typed stays.
    browser.fill("#name", "Shop Ltd").await;
    browser.fill("#email", "ada@shop.example").await;
    browser.fill("#password", "short").await;
    // The browser's own minlength check would stop the form; the server must too.
    browser
        .client
        .execute(
            "document.querySelector('#password').removeAttribute('minlength')",
            vec![],
        )
        .await
        .unwrap();
    browser.submit("button[type=submit]").await;
    let error = browser.text(".error").await;
    assert!(error.contains("at least 10 characters"), "{error}");
    assert_eq!(
        browser.value("#email").await.as_deref(),
        Some("ada@shop.example")
    );

    sign_up(&browser, &app, "owner", "Shop Ltd", "ada@shop.example").await;
    assert_eq!(browser.path().await, "/app/sites");
    assert!(browser.page_text().await.contains("No sites yet"));
    browser.screenshot(&shot("sites-empty")).await;

    // A bad origin is explained on the form.
    browser.fill("#origin", "ftp://shop.example").await;
    browser.submit("form[action='/app/sites'] button").await;
    let error = browser.text(".error").await;
    assert!(error.contains("http"), "{error}");

    browser.fill("#origin", &site.origin()).await;
    browser.submit("form[action='/app/sites'] button").await;
    assert!(browser.path().await.starts_with("/app/sites/"));
    assert!(browser.page_text().await.contains("not verified"));
    browser.screenshot(&shot("site-unverified")).await;

    // Verifying before the file is served says why it failed.
    browser.submit("form[action$='/verify'] button").await;
    let error = browser.text(".error").await;
    assert!(!error.is_empty());
    // Serve the token the page shows, then verify.
    let token = browser.text("section.card p code").await;
    site.publish_verification_token(&token);
    browser.submit("form[action$='/verify'] button").await;
    let text = browser.page_text().await;
    assert!(
        text.contains("verified") && !text.contains("not verified"),
        "{text}"
    );
    browser.screenshot(&shot("site-verified")).await;

    // The list shows it verified; signing out and in again brings the owner back.
    browser.goto(&format!("{}/app/sites", app.base)).await;
    assert!(browser.page_text().await.contains(&site.origin()));
    browser.submit("header form button").await;
    assert_eq!(browser.path().await, "/app/sign-in");
    browser.fill("#email", "ada@shop.example").await;
    browser.fill("#password", "not the password").await;
    browser.submit("button[type=submit]").await;
    assert!(browser.text(".error").await.contains("wrong"));
    browser.screenshot(&shot("sign-in-wrong")).await;
    browser.fill("#password", "a long enough password").await;
    browser.submit("button[type=submit]").await;
    assert_eq!(
        browser.path().await,
        "/app/sites",
        "{}",
        browser.page_text().await
    );

    // At phone width the page still reads (no horizontal scrolling).
    browser.client.set_window_size(390, 844).await.unwrap();
    assert!(!browser.scrolls_sideways().await);
    browser.screenshot(&shot("sites-phone")).await;
    browser.close().await;
}

async fn one_owner_cannot_open_another_owners_site(db: TestDb) {
    let app = TestApp::start(&db).await;
    let browser = Browser::start(1280, 900).await;
    sign_up(&browser, &app, "owner", "First", "first@shop.example").await;
    browser.fill("#origin", "https://first.example").await;
    browser.submit("form[action='/app/sites'] button").await;
    let first_site = browser.path().await;
    assert!(first_site.starts_with("/app/sites/"));
    browser.submit("header form button").await;

    sign_up(&browser, &app, "owner", "Second", "second@shop.example").await;
    browser.goto(&format!("{}{first_site}", app.base)).await;
    let text = browser.page_text().await;
    assert!(text.contains("Not found"), "{text}");
    assert!(!text.contains("first.example"), "{text}");
    browser.goto(&format!("{}/app/sites", app.base)).await;
    assert!(!browser.page_text().await.contains("first.example"));
    // Verifying it by posting the form from this session is refused the same way.
    let (cookie, csrf) = browser.session().await;
    let res = reqwest::Client::new()
        .post(format!("{}{first_site}/verify", app.base))
        .header("cookie", cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // A volunteer has no sites at all, and lands on the agents page.
    browser.submit("header form button").await;
    sign_up(&browser, &app, "volunteer", "Ada", "ada@volunteer.example").await;
    assert_eq!(browser.path().await, "/app/agents");
    browser.goto(&format!("{}/app/sites", app.base)).await;
    assert!(browser.page_text().await.contains("volunteer account"));
    browser.close().await;
}

async fn forms_without_the_csrf_token_change_nothing(db: TestDb) {
    let app = TestApp::start(&db).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Sign-up posted from elsewhere (no CSRF cookie): refused, no account.
    let res = http
        .post(format!("{}/app/sign-up", app.base))
        .form(&[
            ("role", "owner"),
            ("name", "Mallory"),
            ("email", "mallory@evil.example"),
            ("password", "a long enough password"),
            ("csrf", "0"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        crate::support::count(&app, "SELECT COUNT(*) AS n FROM logins"),
        0
    );

    // A signed-in browser (through the real forms), then a cross-site post carrying its
    // cookie but not its token: refused, nothing added.
    let browser = Browser::start(1280, 900).await;
    sign_up(&browser, &app, "owner", "Shop", "shop@shop.example").await;
    let cookie = browser.client.get_named_cookie("lm_session").await.unwrap();
    let res = http
        .post(format!("{}/app/sites", app.base))
        .header("cookie", format!("lm_session={}", cookie.value()))
        .form(&[("origin", "https://shop.example"), ("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        crate::support::count(&app, "SELECT COUNT(*) AS n FROM sites"),
        0
    );
    // Without any session, dashboard pages send the browser to sign in.
    let res = http
        .get(format!("{}/app/sites", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/app/sign-in");
    // The session cookie is HttpOnly and SameSite.
    let res = http
        .get(format!("{}/app/sign-in", app.base))
        .send()
        .await
        .unwrap();
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    browser.close().await;
}

async fn a_volunteer_gets_an_install_command_and_sees_the_agent_it_enrols(db: TestDb) {
    let app = TestApp::start(&db).await;
    let browser = Browser::start(1280, 900).await;
    let shot = |name: &str| format!("{}-{name}", db.backend_name());
    sign_up(&browser, &app, "volunteer", "Ada", "ada@volunteer.example").await;
    assert_eq!(browser.path().await, "/app/agents");
    assert!(browser.page_text().await.contains("No agents yet"));

    browser
        .submit("form[action='/app/agents/enrol-key'] button")
        .await;
    let command = browser.text("pre code").await;
    assert!(
        command.starts_with("lastmile-agent run --controller http://127.0.0.1:"),
        "{command}"
    );
    let key = enrol_key_in(&command);
    browser.screenshot(&shot("agents-install")).await;

    // The key works: an agent enrols with it from a German address and heartbeats (it
    // has not calibrated yet, so its declared class is shown).
    app.uncalibrated_agent(std::net::Ipv4Addr::new(127, 0, 0, 2), &key, "dsl")
        .await;
    browser.goto(&format!("{}/app/agents", app.base)).await;
    let row = browser.text("tbody tr").await;
    assert!(row.contains("online"), "{row}");
    assert!(row.contains("DE") && row.contains("AS64501"), "{row}");
    assert!(row.contains("dsl declared"), "{row}");
    assert!(row.contains("not calibrated: no work yet"), "{row}");
    assert!(row.contains("never"), "{row}");
    browser.screenshot(&shot("agents-online")).await;
    // The key is not shown again on a later visit.
    assert!(!browser.page_text().await.contains(&key));

    // A lost machine: revoking its agent stops its token at once.
    let token = app
        .uncalibrated_agent(std::net::Ipv4Addr::new(127, 0, 0, 3), &key, "cable")
        .await;
    let lost = lastmile_domain::agents::agent_by_token(&mut app.db().conn().unwrap(), &token)
        .unwrap()
        .unwrap();
    browser.goto(&format!("{}/app/agents", app.base)).await;
    browser
        .submit(&format!(
            "form[action='/app/agents/{}/revoke'] button",
            lost.id
        ))
        .await;
    assert_eq!(browser.path().await, "/app/agents");
    let rows = browser.text("tbody").await;
    assert_eq!(rows.matches("revoked").count(), 1, "{rows}");
    assert_eq!(
        rows.matches("Revoke").count(),
        1,
        "the other agent keeps its button: {rows}"
    );
    let (status, _) = app.lease(&token, 1).await;
    assert_eq!(status, 401, "the revoked agent's token no longer works");
    browser.close().await;
}

async fn an_owner_creates_a_filtered_check_runs_it_and_sees_a_real_agent_measure(db: TestDb) {
    let app = TestApp::quiet_for_real_agents(&db).await;
    let site = target_site().await;
    let shot = |name: &str| format!("{}-{name}", db.backend_name());
    // A real agent in Germany (127.0.0.2) declaring cable, and a bare one in the US.
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();
    let (stop, agent) = crate::agent_lifecycle::spawn_agent(crate::agent_lifecycle::settings(
        &app,
        Some(key.clone()),
        state.path(),
    ));
    app.agent(std::net::Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 1)
        .await;

    let browser = Browser::start(1280, 1000).await;
    sign_up(&browser, &app, "owner", "Shop Ltd", "ada@shop.example").await;
    // Checks need a verified site: the form says so and links to the sites page.
    browser.goto(&format!("{}/app/checks/new", app.base)).await;
    assert!(browser
        .page_text()
        .await
        .contains("Add and verify a site first"));
    browser.goto(&format!("{}/app/sites", app.base)).await;
    add_verified_site(&browser, &site).await;

    browser.goto(&format!("{}/app/checks/new", app.base)).await;
    // Filters: Germany, cable. The count button works without JavaScript...
    browser.fill("#countries", "de").await;
    browser
        .click("input[name=connection_classes][value=cable]")
        .await;
    browser.submit("button[value=count]").await;
    let counted = browser.text(".eligible").await;
    assert!(counted.starts_with("1 agents online match"), "{counted}");
    // ...and the live count follows edits.
    browser
        .click("input[name=connection_classes][value=dsl]")
        .await;
    browser.fill("#countries", "").await;
    browser
        .wait_for_text(".eligible", "2 agents online match")
        .await;
    // Said once: the live count rewrites the sentence, it does not add another.
    let live = browser.text(".eligible").await;
    assert_eq!(live.matches("agents online match").count(), 1, "{live}");
    // A page check counts only agents that load pages: the bare agent lists no kinds
    // (an agent from before page loads) and is left out.
    browser.click("#kind option[value=page]").await;
    browser
        .wait_for_text(".eligible", "1 agents online match")
        .await;
    browser.click("#kind option[value=http]").await;
    browser.fill("#countries", "DE").await;
    browser
        .click("input[name=connection_classes][value=dsl]")
        .await;
    // A nonsense status code is explained and the form keeps what was typed.
    browser.fill("#expected_status", "200, ok").await;
    browser.fill("#name", "Home page from German cable").await;
    browser.screenshot(&shot("check-new")).await;
    assert_status_refused_keeping_name(&browser, "Home page from German cable").await;
    browser.fill("#expected_status", "200").await;
    // An objective written the way people say it; nonsense is explained.
    browser.fill("#objectives", "fast please").await;
    browser.submit("button[value=create]").await;
    assert!(browser.text(".error").await.contains("ttfb p95 <= 800 ms"));
    browser.fill("#objectives", "ttfb p95 <= 800 ms").await;
    // The whole shop page, as a browser loads it.
    browser
        .fill(
            "#url",
            &format!("{}{}", site.origin(), lastmile_testbed::shop::PAGE_PATH),
        )
        .await;
    browser.click("#kind option[value=page]").await;
    browser.submit("button[value=create]").await;
    let check_page = browser.path().await;
    assert!(check_page.starts_with("/app/checks/"), "{check_page}");
    let facts = browser.text("dl.facts").await;
    assert!(facts.contains("DE") && facts.contains("cable"), "{facts}");
    assert!(
        facts.contains("page: the HTML and its sub-resources"),
        "{facts}"
    );
    assert!(facts.contains("ttfb p95 <= 800 ms"), "{facts}");

    // Without test credit the run is refused, and the page says why.
    browser.submit("form[action$='/runs'] button").await;
    let refused = browser.text(".error").await;
    assert!(refused.contains("credit"), "{refused}");
    assert!(browser.page_text().await.contains("No runs yet"));
    let login = app.login("ada@shop.example");
    app.credit(login.owner_id.as_deref().unwrap(), 1_000);

    // Run now: the real agent measures, and the run shows it.
    browser.goto(&format!("{}{check_page}", app.base)).await;
    browser.submit("form[action$='/runs'] button").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        browser.goto(&format!("{}{check_page}", app.base)).await;
        let runs = browser.text("tbody").await;
        if runs.contains("1 / 1") && runs.contains("finished") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run did not finish: {runs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    browser.screenshot(&shot("check-ran")).await;
    // The checks page shows what the run cost: 10.00 USD less one 15-cent page load.
    browser.goto(&format!("{}/app/checks", app.base)).await;
    let money = browser.text(".money").await;
    assert!(money.contains("Credit: 9.85 USD"), "{money}");
    browser.goto(&format!("{}{check_page}", app.base)).await;
    // The CSV link reads the same API with the browser's session.
    let href = browser.attr("a[download]", "href").await.unwrap();
    let (_, _, csv) = browser.fetch(&href).await;
    assert!(csv.lines().count() >= 2 && csv.contains("cable"), "{csv}");
    assert!(csv.contains(",DE,"), "{csv}");
    browser.close().await;
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}

/// Creates a check named `name` of the site's home page from the new-check form; returns
/// the check page's path.
async fn check_from_form(browser: &Browser, app: &TestApp, name: &str) -> String {
    browser.goto(&format!("{}/app/checks/new", app.base)).await;
    browser.fill("#name", name).await;
    browser.submit("button[value=create]").await;
    let page = browser.path().await;
    assert!(page.starts_with("/app/checks/"), "{page}");
    page
}

async fn an_owner_deletes_a_check_then_its_site_and_their_history_stays(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let browser = Browser::start(1280, 900).await;
    sign_up(&browser, &app, "owner", "Shop Ltd", "ada@shop.example").await;
    app.credit(&app.login("ada@shop.example").owner_id.unwrap(), 1_000);
    browser.goto(&format!("{}/app/sites", app.base)).await;
    add_verified_site(&browser, &site).await;
    let site_page = browser.path().await;
    let doomed = check_from_form(&browser, &app, "Doomed check").await;
    let kept = check_from_form(&browser, &app, "Second check").await;

    // The button is behind a disclosure that says what deleting does.
    browser.goto(&format!("{}{doomed}", app.base)).await;
    browser.click("#delete-check summary").await;
    assert!(browser
        .text("#delete-check")
        .await
        .contains("Its results, reports and charges are kept"));
    browser.submit("#delete-check button").await;
    assert_eq!(browser.path().await, "/app/checks");
    let list = browser.page_text().await;
    assert!(
        !list.contains("Doomed check") && list.contains("Second check"),
        "{list}"
    );
    browser.goto(&format!("{}{doomed}", app.base)).await;
    assert!(browser.page_text().await.contains("Not found"));
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM checks WHERE deleted_at IS NOT NULL"
        ),
        1,
        "the row stays, marked"
    );

    // Deleting the site takes its other check with it.
    browser.goto(&format!("{}{site_page}", app.base)).await;
    browser.click("#delete-site summary").await;
    browser.submit("#delete-site button").await;
    assert_eq!(browser.path().await, "/app/sites");
    assert!(!browser.page_text().await.contains(&site.origin()));
    browser.goto(&format!("{}{kept}", app.base)).await;
    assert!(browser.page_text().await.contains("Not found"));
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM checks WHERE deleted_at IS NOT NULL"
        ),
        2
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM sites WHERE deleted_at IS NOT NULL"
        ),
        1
    );
    browser.close().await;
}
