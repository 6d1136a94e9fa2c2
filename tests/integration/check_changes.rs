//! Changing and deleting checks and sites over the API, on both backends: `PATCH` changes
//! only the fields it names (a JSON merge patch) under the rules of creation; `DELETE`
//! of a check stops its open run (the unfilled slot is no longer offered and no credit
//! stays held; a result already measured is still taken and paid) and keeps its
//! history; `DELETE` of a site deletes its checks and no check can be made on it.

use std::net::Ipv4Addr;

use lastmile_billing::ledger;
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(
    a_patch_changes_only_what_it_names_under_the_rules_of_creation,
    deleting_a_check_stops_its_runs_and_keeps_its_history,
);

async fn patch(app: &TestApp, owner: &str, check: &str, body: Value) -> (u16, Value) {
    app.call(
        "PATCH",
        &format!("/api/v1/checks/{check}"),
        Some(owner),
        Some(body),
    )
    .await
}

/// A check's view without what changes by itself.
fn stable(mut view: Value) -> Value {
    for key in ["next_run_at", "last_run", "flagged_results"] {
        view.as_object_mut().unwrap().remove(key);
    }
    view
}

async fn a_patch_changes_only_what_it_names_under_the_rules_of_creation(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let created = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "Home",
                "schedule": {"every_seconds": 3600}, "body_contains": "Welcome",
                "selection": {"agents_per_run": 4, "connection_classes": ["dsl"]},
                "objectives": [{"phase": "ttfb", "percentile": 95, "max_ms": 800}]}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    let (status, renamed) = patch(&app, &owner, &id, json!({"name": "Home, hourly"})).await;
    assert_eq!(status, 200, "{renamed}");
    let mut expected = stable(created.clone());
    expected["name"] = json!("Home, hourly");
    assert_eq!(stable(renamed.clone()), expected);
    // Objects merge key by key: the selection keeps its classes.
    let (status, wider) = patch(
        &app,
        &owner,
        &id,
        json!({"selection": {"countries": ["DE", "FR"]}}),
    )
    .await;
    assert_eq!(status, 200, "{wider}");
    assert_eq!(wider["selection"]["countries"], json!(["DE", "FR"]));
    assert_eq!(wider["selection"]["connection_classes"], json!(["dsl"]));
    assert_eq!(wider["selection"]["agents_per_run"], 4);
    // null resets a field to its default.
    let (status, plain) = patch(&app, &owner, &id, json!({"body_contains": null})).await;
    assert_eq!(status, 200, "{plain}");
    assert!(
        plain.get("body_contains").is_none_or(Value::is_null),
        "{plain}"
    );
    assert_eq!(plain["objectives"], created["objectives"]);

    // What creation refuses, a patch refuses, and nothing changes.
    for (body, words) in [
        (json!({"nope": 1}), "nope"),
        (json!({"url": "http://elsewhere.example/"}), "origin"),
        (
            json!({"selection": {"agents_per_run": 0}}),
            "agents_per_run",
        ),
        (json!(["name"]), "JSON object"),
    ] {
        let (status, err) = patch(&app, &owner, &id, body.clone()).await;
        assert_eq!(status, 422, "{body}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    let (_, now) = app.get(&format!("/api/v1/checks/{id}"), &owner).await;
    assert_eq!(stable(now), stable(plain));
    // Another owner's check is not found.
    let stranger = app.owner("stranger");
    let (status, _) = patch(&app, &stranger, &id, json!({"name": "mine"})).await;
    assert_eq!(status, 404);
    app.controller.stop().await.unwrap();
}

async fn deleting_a_check_stops_its_runs_and_keeps_its_history(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let first = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let second = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 1).await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 2}))
        .await;
    let (_, sites) = app.get("/api/v1/sites", &owner).await;
    let site_id = sites[0]["id"].as_str().unwrap().to_owned();
    let other = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "Other"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = app.run_and_lease(&owner, &check, &first).await["assignment_id"].clone();
    assert!(task.is_string());
    let (_, balance) = app.get("/api/v1/me/balance", &owner).await;
    assert!(balance["held_minor"].as_i64().unwrap() > 0, "{balance}");

    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/checks/{check}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get(&format!("/api/v1/checks/{check}"), &owner).await;
    assert_eq!(status, 404);
    let (_, list) = app.get("/api/v1/checks", &owner).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![other.as_str()]);
    // The run's unfilled slot is no longer offered; the measured one is still taken and
    // paid.
    let (_, lease) = app.lease(&second, 1).await;
    assert_eq!(lease["tasks"], json!([]), "{lease}");
    let (status, ack) = app.submit(&first, submission(&task, 40_000)).await;
    assert_eq!(status, 200, "{ack}");
    let policy = lastmile_controller::ControllerConfig::default().scheduling_policy();
    lastmile_domain::scheduling::expire(
        &mut app.db().conn().unwrap(),
        &policy,
        lastmile_domain::clock::now_us(),
    )
    .unwrap();
    let (_, balance) = app.get("/api/v1/me/balance", &owner).await;
    assert_eq!(balance["held_minor"], 0, "{balance}");
    assert_eq!(
        count(
            &app,
            &format!("SELECT COUNT(*) AS n FROM results WHERE check_id = '{check}'")
        ),
        1
    );
    assert_eq!(
        ledger::audit(&mut *app.db().conn().unwrap()).unwrap(),
        Vec::<String>::new()
    );
    // Deleting again, or another owner's check, is a 404.
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/checks/{check}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Deleting the site deletes its other check; no check can be made on it.
    let stranger = app.owner("stranger");
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/sites/{site_id}"),
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/sites/{site_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, list) = app.get("/api/v1/checks", &owner).await;
    assert_eq!(list, json!([]));
    let (_, sites) = app.get("/api/v1/sites", &owner).await;
    assert_eq!(sites, json!([]));
    let (status, err) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin())}),
        )
        .await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"], "site_not_found");
    // Added again, it must be verified again.
    let (status, again) = app
        .call(
            "POST",
            "/api/v1/sites",
            Some(&owner),
            Some(json!({"origin": site.origin()})),
        )
        .await;
    assert_eq!(status, 201, "{again}");
    assert!(again["verified_at"].is_null(), "{again}");
    let (status, err) = app
        .post_check(
            &owner,
            json!({"site_id": again["id"], "url": format!("{}/", site.origin())}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    app.controller.stop().await.unwrap();
}
