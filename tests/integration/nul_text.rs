//! A NUL character (U+0000) in a text field: refused with a 422 naming the field and
//! nothing written, on both backends (PostgreSQL cannot store NUL, so before the guard
//! these were 500s there). The texts an agent reports as a server sent them are kept,
//! with the NUL stripped.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb, PASSWORD};

per_backend!(
    api_text_fields_with_a_nul_are_refused_by_name_and_nothing_is_written,
    a_result_with_a_nul_in_its_own_fields_is_refused_but_a_servers_text_is_stripped,
    a_sign_up_form_with_a_nul_is_refused_by_name_and_nothing_is_written,
);

/// Asserts a 422 `invalid_text` whose message names `field`.
fn assert_refused(answer: &(u16, Value), field: &str) {
    let (status, body) = answer;
    assert_eq!(*status, 422, "{field}: {body}");
    assert_eq!(body["error"], "invalid_text", "{field}: {body}");
    assert_eq!(
        body["message"],
        format!("{field} contains a NUL character"),
        "{body}"
    );
}

async fn api_text_fields_with_a_nul_are_refused_by_name_and_nothing_is_written(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let check = |extra: Value| {
        let mut body =
            json!({"site_id": site_id, "url": site.origin(), "selection": {"agents_per_run": 1}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };

    // The check's name, its expected text, and a string deep in its selection.
    for (extra, field) in [
        (json!({"name": "shop\u{0}"}), "name"),
        (json!({"body_contains": "Wel\u{0}come"}), "body_contains"),
        (
            json!({"selection": {"agents_per_run": 1, "countries": ["DE", "U\u{0}S"]}}),
            "selection.countries[1]",
        ),
    ] {
        let answer = app
            .call("POST", "/api/v1/checks", Some(&owner), Some(check(extra)))
            .await;
        assert_refused(&answer, field);
    }
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM checks"), 0);

    // An edit of an existing check is refused the same way and changes nothing.
    let created = app
        .create_check(&owner, check(json!({"name": "shop"})))
        .await;
    let id = created["id"].as_str().unwrap();
    let answer = app
        .call(
            "PUT",
            &format!("/api/v1/checks/{id}"),
            Some(&owner),
            Some(check(json!({"name": "sh\u{0}op"}))),
        )
        .await;
    assert_refused(&answer, "name");
    assert_eq!(
        count(&app, "SELECT COUNT(*) AS n FROM checks WHERE name = 'shop'"),
        1
    );

    // Enrolment: the agent's name.
    let key = app.volunteer("v");
    let answer = app
        .call_from(
            Ipv4Addr::new(127, 0, 0, 2),
            "POST",
            "/api/v1/agents/enrol",
            None,
            Some(json!({"enrol_key": key, "name": "agent\u{0}", "declared_class": "fibre", "version": "test"})),
        )
        .await;
    assert_refused(&answer, "name");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM agents"), 0);

    // Heartbeats: the version and the pause reason.
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    for (beat, field) in [
        (
            json!({"declared_class": "fibre", "version": "2\u{0}", "limits": {"max_concurrent": 1}}),
            "version",
        ),
        (
            json!({"declared_class": "fibre", "version": "test", "limits": {"max_concurrent": 1}, "paused": "busy\u{0}"}),
            "paused",
        ),
    ] {
        let answer = app
            .call_from(
                Ipv4Addr::new(127, 0, 0, 2),
                "POST",
                "/api/v1/agents/heartbeat",
                Some(&agent),
                Some(beat),
            )
            .await;
        assert_refused(&answer, field);
    }
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM agents WHERE version = 'test' AND paused_reason IS NULL"
        ),
        1,
        "the refused heartbeats changed nothing"
    );

    // A query string: the parameter is named.
    let answer = app
        .call(
            "GET",
            &format!("/api/v1/checks/{id}/report?group_by=%00"),
            Some(&owner),
            None,
        )
        .await;
    assert_refused(&answer, "query parameter group_by");
}

async fn a_result_with_a_nul_in_its_own_fields_is_refused_but_a_servers_text_is_stripped(
    db: TestDb,
) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("v");
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let site_id = app.verified_site(&owner, &site).await;
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": site.origin(), "selection": {"agents_per_run": 1}}),
        )
        .await;
    app.start_run(&owner, check["id"].as_str().unwrap()).await;
    let (status, lease) = app
        .call_from(
            Ipv4Addr::new(127, 0, 0, 2),
            "POST",
            "/api/v1/agents/lease",
            Some(&agent),
            Some(json!({"max": 1})),
        )
        .await;
    assert_eq!(status, 200, "{lease}");
    let assignment = lease["tasks"][0]["assignment_id"].clone();
    let submit = |result: Value| {
        app.call_from(
            Ipv4Addr::new(127, 0, 0, 2),
            "POST",
            "/api/v1/results",
            Some(&agent),
            Some(result),
        )
    };

    // The address the agent connected to is the agent's own field: refused.
    let mut result = submission(&assignment, 40_000);
    result["measurement"]["remote_addr"] = json!("127.0.0.1\u{0}");
    assert_refused(&submit(result).await, "measurement.remote_addr");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM results"), 0);
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM open_assignments WHERE state = 'leased'"
        ),
        1,
        "the assignment is still the agent's to report"
    );

    // What the server sent (here a status line the agent quotes in its error, and a
    // redirect's Location) is kept, NUL stripped.
    let mut result = submission(&assignment, 40_000);
    result["measurement"]["status"] = json!(500);
    result["measurement"]["error"] =
        json!({"kind": "http_status", "message": "unexpected status 500 Oops\u{0}!"});
    result["measurement"]["redirects"] = json!([{
        "url": format!("{}/old", site.origin()), "status": 302,
        "location": format!("{}/n\u{0}ew", site.origin()),
        "remote_addr": "127.0.0.1",
        "timings_us": {"dns": 1, "connect": 1, "tls": 0, "ttfb": 1, "transfer": 1, "total": 4}
    }]);
    let (status, ack) = submit(result).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["disposition"], "accepted");
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM results WHERE error_message = 'unexpected status 500 Oops!'"
        ),
        1
    );
    let stored = count(
        &app,
        &format!(
            "SELECT COUNT(*) AS n FROM results WHERE redirect_hops LIKE '%{}/new%'",
            site.origin()
        ),
    );
    assert_eq!(stored, 1, "the hop's Location is kept without its NUL");
}

async fn a_sign_up_form_with_a_nul_is_refused_by_name_and_nothing_is_written(db: TestDb) {
    let app = TestApp::start(&db).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // A valid double-submit CSRF token, so that only the NUL stands in the way.
    let csrf = "c".repeat(64);
    let sign_up = |name: &'static str| {
        http.post(format!("{}/app/sign-up", app.base))
            .header("cookie", format!("lm_csrf={csrf}"))
            .form(&[
                ("role", "owner"),
                ("name", name),
                ("email", "shop@shop.example"),
                ("password", PASSWORD),
                ("csrf", csrf.as_str()),
            ])
            .send()
    };
    let res = sign_up("Sh\u{0}op").await.unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(page.contains("name contains a NUL character"), "{page}");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM logins"), 0);

    // The same form without the NUL signs up: the token was good.
    let res = sign_up("Shop").await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM logins"), 1);
    let session = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("lm_session="))
        .unwrap();

    // A page whose id holds a NUL names nothing: not found (it was a 500 on PostgreSQL).
    let res = http
        .get(format!("{}/app/checks/%00", app.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // A query parameter holding one is named.
    let res = http
        .get(format!("{}/app/leaderboard?period=we%00ek", app.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("query parameter period contains a NUL character"),
        "{page}"
    );
}
