//! Every class of bad request gets a 4xx JSON error with a stable code, and nothing
//! is half-written. Also: ops endpoints and the OpenAPI document.

use serde_json::{json, Value};

use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(
    bad_requests_get_a_clear_4xx_and_change_nothing,
    one_owner_cannot_see_another_owners_checks,
    ops_endpoints_and_openapi_document_are_served,
);

fn code(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// Posts `body` to `path` as it is, with `content_type`, as the holder of `token`: the
/// answer as it comes.
async fn post_raw(
    app: &TestApp,
    token: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}{path}", app.base))
        .header("content-type", content_type)
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn bad_requests_get_a_clear_4xx_and_change_nothing(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;

    // Missing and wrong tokens.
    let (s, b) = app.call("GET", "/api/v1/checks", None, None).await;
    assert_eq!((s, code(&b)), (401, "unauthorized"));
    let (s, b) = app.get("/api/v1/checks", "lmo_nope").await;
    assert_eq!((s, code(&b)), (401, "unauthorized"));
    // An agent endpoint with an owner token is still unauthorized.
    let (s, b) = app.lease(&owner, 1).await;
    assert_eq!((s, code(&b)), (401, "unauthorized"));
    // Wrong enrolment key.
    let (s, b) = app
        .call(
            "POST",
            "/api/v1/agents/enrol",
            None,
            Some(
                json!({"enrol_key": "lmv_x", "name": "a", "declared_class": "dsl", "version": "1"}),
            ),
        )
        .await;
    assert_eq!((s, code(&b)), (401, "unauthorized"));

    // Malformed JSON, wrong shape, wrong content type, oversized body.
    let (checks, json_type) = ("/api/v1/checks", "application/json");
    let (s, b) = post_raw(&app, &owner, checks, json_type, b"{not json".to_vec()).await;
    assert_eq!((s, code(&b)), (400, "invalid_json"));
    let (s, b) = post_raw(&app, &owner, checks, json_type, br#"{"url": 5}"#.to_vec()).await;
    assert_eq!((s, code(&b)), (422, "invalid_body"));
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("expected a string at line 1"),
        "{b}"
    );
    let (s, b) = post_raw(&app, &owner, checks, "text/plain", b"{}".to_vec()).await;
    assert_eq!((s, code(&b)), (415, "unsupported_media_type"));
    let big = format!(r#"{{"origin": "{}"}}"#, "a".repeat(300 * 1024));
    let (s, b) = post_raw(&app, &owner, "/api/v1/sites", json_type, big.into_bytes()).await;
    assert_eq!((s, code(&b)), (413, "payload_too_large"));

    // Unknown and malformed ids, unknown routes.
    let unknown = uuid::Uuid::new_v4();
    let (s, b) = app.get(&format!("/api/v1/checks/{unknown}"), &owner).await;
    assert_eq!((s, code(&b)), (404, "check_not_found"));
    let (s, b) = app.get("/api/v1/checks/not-a-uuid", &owner).await;
    assert_eq!((s, code(&b)), (404, "not_found"));
    // In words, not the parser's ("Path deserialize error: UUID parsing failed: ...").
    assert_eq!(
        b["message"],
        "no such resource: /api/v1/checks/not-a-uuid holds something that is not an id; \
         ids are UUIDs such as 123e4567-e89b-12d3-a456-426614174000"
    );
    let (s, b) = app.get("/api/v1/nothing-here", &owner).await;
    assert_eq!((s, code(&b)), (404, "not_found"));
    let agent = app
        .agent(
            std::net::Ipv4Addr::new(127, 0, 0, 2),
            &app.volunteer("v"),
            "dsl",
            1,
        )
        .await;
    let (s, b) = app
        .submit(&agent, crate::leasing::submission(&json!(unknown), 1000))
        .await;
    assert_eq!((s, code(&b)), (404, "assignment_not_found"));

    // Invalid filters and check fields: each names what is wrong.
    let url = format!("{}/", site.origin());
    let cases = [
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 0}}),
            "invalid_selection",
        ),
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1, "countries": ["Germany"]}}),
            "invalid_selection",
        ),
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1, "connection_classes": ["isdn"]}}),
            "invalid_body",
        ),
        (
            json!({"site_id": site_id, "url": "http://elsewhere.example/", "selection": {"agents_per_run": 1}}),
            "url_not_on_site",
        ),
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1}, "schedule": {"every_seconds": 0}}),
            "invalid_schedule",
        ),
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1}, "expected_status": [99]}),
            "invalid_expected_status",
        ),
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1}, "max_bytes": 0}),
            "invalid_max_bytes",
        ),
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1}, "body_contains": ""}),
            "invalid_body_contains",
        ),
        (
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1}, "max_redirects": 50}),
            "invalid_max_redirects",
        ),
        (
            json!({"site_id": unknown, "url": url, "selection": {"agents_per_run": 1}}),
            "site_not_found",
        ),
    ];
    for (body, expected) in cases {
        let (s, b) = app.post_check(&owner, body.clone()).await;
        assert!((400..500).contains(&s), "{body} -> {s} {b}");
        assert_eq!(code(&b), expected, "{body} -> {b}");
        assert!(!b["message"].as_str().unwrap().is_empty());
    }
    // Report parameters.
    let (_, check) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "url": url, "selection": {"agents_per_run": 1}}),
        )
        .await;
    let id = check["id"].as_str().unwrap();
    for (query, expected) in [
        ("group_by=city", "invalid_group_by"),
        ("format=xml", "invalid_format"),
        ("from=yesterday", "invalid_query"),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "invalid_window",
        ),
    ] {
        let (s, b) = app.report(&owner, id, query).await;
        assert!((400..500).contains(&s), "{query} -> {s}");
        assert_eq!(code(&b), expected, "{query} -> {b}");
    }

    // Nothing half-written: of all those attempts, only the one valid check exists.
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM checks"), 1);
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM sites"), 1);
    app.controller.stop().await.unwrap();
}

async fn one_owner_cannot_see_another_owners_checks(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let alice = app.owner("alice");
    let mallory = app.owner("mallory");
    let site_id = app.verified_site(&alice, &site).await;
    let body =
        json!({"site_id": site_id, "url": site.origin(), "selection": {"agents_per_run": 1}});
    let (_, check) = app.post_check(&alice, body.clone()).await;
    let id = check["id"].as_str().unwrap();
    for path in [
        format!("/api/v1/checks/{id}"),
        format!("/api/v1/checks/{id}/report"),
        format!("/api/v1/checks/{id}/runs"),
        format!("/api/v1/sites/{site_id}"),
    ] {
        let (s, b) = app.call("GET", &path, Some(&mallory), None).await;
        assert_eq!(s, 404, "{path}: {b}");
    }
    let (s, _) = app.ask_run(&mallory, id).await;
    assert_eq!(s, 404);
    // Mallory cannot put a check on Alice's site either.
    let (s, b) = app.post_check(&mallory, body).await;
    assert_eq!((s, code(&b)), (404, "site_not_found"));
    let (_, list) = app.get("/api/v1/checks", &mallory).await;
    assert_eq!(list, json!([]));
    app.controller.stop().await.unwrap();
}

async fn ops_endpoints_and_openapi_document_are_served(db: TestDb) {
    let app = TestApp::start(&db).await;
    let (s, health) = app.call("GET", "/healthz", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], db.backend.name());
    let (s, metrics) = app.call("GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("# TYPE lastmile_agents_online gauge"),
        "{metrics}"
    );
    assert!(metrics.contains("lastmile_results_accepted_total 0"));
    let (s, doc) = app.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/agents/enrol",
        "/api/v1/agents/heartbeat",
        "/api/v1/agents/lease",
        "/api/v1/results",
        "/api/v1/checks",
        "/api/v1/checks/{id}/report",
        "/api/v1/checks/{id}/runs/{run_id}/results",
        "/api/v1/sites/{id}/verify",
    ] {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    for schema in ["Report", "ResultView", "Hop", "PageSummary"] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "OpenAPI lacks the {schema} schema"
        );
    }
    app.controller.stop().await.unwrap();
}
