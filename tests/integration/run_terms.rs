//! A run is measured and paid as it was admitted, and a run that can measure nothing
//! says so: on both backends.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::scene;
use crate::support::usd_balance as balance;
use crate::support::{target_site, TestApp, TestDb, OWNER_CREDIT};

per_backend!(
    editing_a_check_while_its_run_is_open_changes_only_later_runs,
    a_run_with_no_eligible_agent_says_so_and_charges_nothing,
    selections_that_cannot_match_are_refused_naming_the_allowed_values,
);

async fn editing_a_check_while_its_run_is_open_changes_only_later_runs(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    // An agent from before page loads: it measures `http` only.
    let agent = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let site_id = app.verified_site(&owner, &site).await;
    let home = format!("{}/", site.origin());
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": home, "selection": {"agents_per_run": 1}}),
        )
        .await;
    let check_id = check["id"].as_str().unwrap().to_owned();
    assert_eq!(check["price_per_result_minor"], 5);
    let run = app.start_run(&owner, &check_id).await;

    // While the run is open, the owner turns the check into a dearer page check of
    // another URL, for dial-up lines only (a scarcity surcharge on top).
    let (status, edited) = app
        .call(
            "PUT",
            &format!("/api/v1/checks/{check_id}"),
            Some(&owner),
            Some(json!({"site_id": site_id, "url": format!("{}/page/", site.origin()), "kind": "page",
                        "selection": {"agents_per_run": 1, "connection_classes": ["dialup"]}})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert!(
        edited["price_per_result_minor"].as_i64().unwrap() > 15,
        "{edited}"
    );

    // The open run still hands out what was admitted: the http fetch of the home page.
    let (status, lease) = app.lease(&agent, 1).await;
    assert_eq!(status, 200, "{lease}");
    let task = &lease["tasks"][0];
    assert_eq!(task["run_id"], run.as_str(), "{lease}");
    assert_eq!(task["kind"], "http", "{task}");
    assert_eq!(task["url"], home.as_str(), "{task}");

    // Its result is stored, counted and paid at the admitted price.
    let (status, ack) = app
        .submit(&agent, submission(&task["assignment_id"], 40_000))
        .await;
    assert_eq!(
        (status, ack["disposition"].as_str()),
        (200, Some("accepted"))
    );
    assert_eq!(
        balance(&app, &owner, "owner_credit").await,
        OWNER_CREDIT - 5
    );
    assert_eq!(balance(&app, &key, "volunteer_earnings").await, 4);

    // The next run is of the check as edited: a page check, which this agent cannot
    // measure, so nobody is eligible and nothing is charged.
    let (status, next) = app.ask_run(&owner, &check_id).await;
    assert_eq!(status, 201, "{next}");
    assert_eq!(next["problem"], "no_eligible_agents", "{next}");
    assert_eq!(
        balance(&app, &owner, "owner_credit").await,
        OWNER_CREDIT - 5
    );
    app.controller.stop().await.unwrap();
}

async fn a_run_with_no_eligible_agent_says_so_and_charges_nothing(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    // Agents in Germany only (see support::PLACES); the check asks for Brazil.
    app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let site_id = app.verified_site(&owner, &site).await;
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()),
                   "selection": {"agents_per_run": 3, "countries": ["BR"]}}),
        )
        .await;
    let check_id = check["id"].as_str().unwrap().to_owned();
    assert!(check.get("last_run").is_none(), "no run yet: {check}");

    let (status, run) = app.ask_run(&owner, &check_id).await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["problem"], "no_eligible_agents", "{run}");
    assert_eq!(run["eligible_agents"], 0);
    assert_eq!(run["requested"], 0);
    assert_eq!(run["finished"], true);
    assert_eq!(balance(&app, &owner, "owner_credit").await, OWNER_CREDIT);

    // The check shows it.
    let (status, shown) = app.get(&format!("/api/v1/checks/{check_id}"), &owner).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["last_run"]["id"], run["id"], "{shown}");
    assert_eq!(
        shown["last_run"]["problem"], "no_eligible_agents",
        "{shown}"
    );

    // A run that does find agents carries no problem.
    let (status, ok) = app
        .call(
            "PUT",
            &format!("/api/v1/checks/{check_id}"),
            Some(&owner),
            Some(
                json!({"site_id": site_id, "url": format!("{}/", site.origin()),
                        "selection": {"agents_per_run": 3, "countries": ["DE"]}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
    let run = app.start_run(&owner, &check_id).await;
    let (_, shown) = app.get(&format!("/api/v1/checks/{check_id}"), &owner).await;
    assert_eq!(shown["last_run"]["id"], run.as_str(), "{shown}");
    assert!(shown["last_run"].get("problem").is_none(), "{shown}");
    app.controller.stop().await.unwrap();
}

async fn selections_that_cannot_match_are_refused_naming_the_allowed_values(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let url = format!("{}/", site.origin());
    let refused = |selection: Value| {
        let body = json!({"site_id": site_id, "url": url, "selection": selection});
        let app = &app;
        let owner = &owner;
        async move {
            let (status, body) = app.post_check(owner, body).await;
            assert_eq!(status, 422, "{body}");
            body["message"].as_str().unwrap().to_owned()
        }
    };
    let message = refused(json!({"countries": ["XX"]})).await;
    assert!(
        message.contains("\"XX\"") && message.contains("ISO 3166-1"),
        "{message}"
    );
    let message = refused(json!({"countries": ["DE", "UK"]})).await;
    assert!(message.contains("GB"), "{message}");
    let message = refused(json!({"connection_classes": ["quantum"]})).await;
    assert!(
        message.contains("quantum") && message.contains("dialup") && message.contains("fibre"),
        "{message}"
    );
    // Nothing was created, and a real code in any case still works.
    let (_, list) = app.get("/api/v1/checks", &owner).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    app.create_check(
        &owner,
        json!({"site_id": site_id, "url": url, "selection": {"countries": ["de", "BR"]}}),
    )
    .await;
    app.controller.stop().await.unwrap();
}
