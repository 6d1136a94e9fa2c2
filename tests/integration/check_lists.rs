//! An owner's `GET /api/v1/checks` is answered from memory until one of their checks
//! changes (`lastmile_domain::check_lists`), on both backends. What an owner must never
//! notice: their own write, through the API or the dashboard, shows in the very next
//! list; a write made elsewhere (another replica, the scheduler, an operator's SQL; here
//! the domain called directly and plain SQL) shows within the change feed's second.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::per_backend;
use crate::support::{csrf_of, target_site, TestApp, TestDb};

per_backend!(
    an_owners_own_writes_show_in_their_next_list,
    a_write_made_elsewhere_shows_in_the_list_within_seconds,
);

async fn list(app: &TestApp, owner: &str) -> Vec<Value> {
    let (status, list) = app.get("/api/v1/checks", owner).await;
    assert_eq!(status, 200, "{list}");
    list.as_array().unwrap().clone()
}

/// The names in the owner's list, oldest check first.
async fn names(app: &TestApp, owner: &str) -> Vec<String> {
    let checks = list(app, owner).await;
    checks
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn an_owners_own_writes_show_in_their_next_list(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let other = app.owner("other");
    let site_id = app.verified_site(&owner, &site).await;
    let check = |name: &str| {
        json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": name,
               "schedule": {"every_seconds": 3600}})
    };
    let first = app.create_check(&owner, check("First")).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    // Each list below is read twice first, so the second comes from memory.
    assert_eq!(names(&app, &owner).await, ["First"]);
    assert_eq!(names(&app, &owner).await, ["First"]);
    assert!(names(&app, &other).await.is_empty(), "another owner's list");

    let second = app.create_check(&owner, check("Second")).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    assert_eq!(names(&app, &owner).await, ["First", "Second"]);

    let (status, _) = app
        .call(
            "PATCH",
            &format!("/api/v1/checks/{first_id}"),
            Some(&owner),
            Some(json!({"name": "First, renamed"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(names(&app, &owner).await, ["First, renamed", "Second"]);

    let mut replaced = check("Second, replaced");
    replaced["schedule"] = json!({"every_seconds": 7200});
    let (status, _) = app
        .call(
            "PUT",
            &format!("/api/v1/checks/{second_id}"),
            Some(&owner),
            Some(replaced),
        )
        .await;
    assert_eq!(status, 200);
    let checks = list(&app, &owner).await;
    assert_eq!(checks[1]["name"], "Second, replaced");
    assert_eq!(checks[1]["schedule"]["every_seconds"], 7200, "{checks:?}");

    let (status, _) = app
        .call(
            "POST",
            &format!("/api/v1/checks/{first_id}/pause"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list(&app, &owner).await[0]["paused"], true);

    // The dashboard's forms write the same checks.
    let cookie = app.owner_session(&owner).await;
    let csrf = csrf_of(&app.dashboard_page(&cookie, "/app/checks").await);
    let resumed = app
        .post_form(
            &cookie,
            &format!("/app/checks/{first_id}/resume"),
            &[("csrf", csrf.clone())],
        )
        .await;
    assert_eq!(resumed.status(), 303);
    assert_eq!(list(&app, &owner).await[0]["paused"], false);
    let deleted = app
        .post_form(
            &cookie,
            &format!("/app/checks/{second_id}/delete"),
            &[("csrf", csrf.clone())],
        )
        .await;
    assert_eq!(deleted.status(), 303);
    assert_eq!(names(&app, &owner).await, ["First, renamed"]);

    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/sites/{site_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(
        names(&app, &owner).await.is_empty(),
        "the site's checks went with it"
    );
}

/// Reads the owner's list until `shown` holds of it: the feed looks every second, so
/// 10 s is a loaded machine's margin, not a target.
async fn until_listed(app: &TestApp, owner: &str, shown: impl Fn(&[Value]) -> bool) {
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(10) {
        if shown(&list(app, owner).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the list still did not show the write after 10 s");
}

async fn a_write_made_elsewhere_shows_in_the_list_within_seconds(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let created = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "Home",
                   "schedule": {"every_seconds": 3600}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let owner_id = app.get("/api/v1/me", &owner).await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(list(&app, &owner).await[0]["paused"], false);

    // Another replica pauses it (the domain, called without this controller).
    let (o, c) = (owner_id.clone(), id.clone());
    app.db()
        .run(move |conn| lastmile_domain::checks::set_paused(conn, &o, &c, true))
        .await
        .unwrap();
    until_listed(&app, &owner, |l| l[0]["paused"] == true).await;

    // An operator moves its next run by hand, in SQL: the database stamps that write too.
    let next = "2031-01-01T00:00:00Z";
    let at = chrono::DateTime::parse_from_rfc3339(next)
        .unwrap()
        .timestamp_micros();
    let mut conn = app.db().conn().unwrap();
    diesel::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "UPDATE checks SET next_run_at = {at} WHERE id = '{id}'"
        )),
        &mut conn,
    )
    .unwrap();
    until_listed(&app, &owner, |l| l[0]["next_run_at"] == next).await;

    // A check another replica created for the owner.
    let (o, s) = (owner_id.clone(), site_id.clone());
    let url = format!("{}/about", site.origin());
    app.db()
        .run(move |conn| {
            let new =
                serde_json::from_value(json!({"site_id": s, "url": url, "name": "About"})).unwrap();
            lastmile_domain::checks::create(conn, &o, &new, 60)
        })
        .await
        .unwrap();
    until_listed(&app, &owner, |l| l.len() == 2).await;
}
