//! The ISP API from the outside: scoping to the ISP's own ASNs and to opted-in checks,
//! ownership proofs by mail, quotas, ETags, and the README's curl examples.

use std::net::Ipv4Addr;
use std::sync::Arc;

use lastmile_domain::isp::{self, MemoryMailer};
use lastmile_testbed::site::TargetSite;
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{target_site, TestApp, TestDb};

per_backend!(
    isp_sees_only_its_networks_and_opted_in_checks,
    isp_quota_runs_out_with_429_and_retry_after,
    asn_ownership_is_proven_by_a_mailed_code,
);

/// Agents in AS64501 (.2), AS64502 (.3) and AS64504 (.5) each measure a shared and a
/// private check once: 64 KiB bodies in 14 ms, a goodput of 37.4 Mbit/s.
async fn measured_world(app: &TestApp) -> (String, TargetSite) {
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("v");
    let agents = [
        app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 2).await,
        app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "cable", 2)
            .await,
        app.agent(Ipv4Addr::new(127, 0, 0, 5), &key, "fibre", 2)
            .await,
    ];
    let site_id = app.verified_site(&owner, &site).await;
    for (path, shared) in [("/shared-page", true), ("/private-page", false)] {
        let (status, check) = app
            .post_check(
                &owner,
                json!({"site_id": site_id, "url": format!("{}{path}", site.origin()),
                    "selection": {"agents_per_run": 3}, "isp_sharing": shared}),
            )
            .await;
        assert_eq!(status, 201, "{check}");
        let id = check["id"].as_str().unwrap();
        app.call(
            "POST",
            &format!("/api/v1/checks/{id}/runs"),
            Some(&owner),
            None,
        )
        .await;
    }
    for token in &agents {
        let (_, lease) = app
            .call(
                "POST",
                "/api/v1/agents/lease",
                Some(token),
                Some(json!({"max": 2})),
            )
            .await;
        for task in lease["tasks"].as_array().unwrap() {
            let (status, ack) = app
                .call(
                    "POST",
                    "/api/v1/results",
                    Some(token),
                    Some(large_body(submission(&task["assignment_id"], 30_000))),
                )
                .await;
            assert_eq!(status, 200, "{ack}");
        }
    }
    (owner, site)
}

/// `submission` with a 64 KiB body taking 14 ms of its 30.
fn large_body(mut submission: Value) -> Value {
    submission["measurement"]["bytes"] = json!(65_536);
    submission["measurement"]["timings_us"]["transfer"] = json!(14_000);
    submission
}

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let res = reqwest::Client::new()
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

async fn isp_sees_only_its_networks_and_opted_in_checks(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let (_, site) = measured_world(&app).await;
    let token = {
        let mut conn = app.db().conn().unwrap();
        isp::create(&mut conn, "Telekom", &[64_501, 64_504])
            .unwrap()
            .1
    };

    let (status, headers, summary) = get(&app, &token, "/api/v1/isp/summary?window=24h").await;
    assert_eq!(status, 200, "{summary}");
    let rows = summary["rows"].as_array().unwrap();
    let mut asns: Vec<u64> = rows
        .iter()
        .map(|r| r["group"]["asn"].as_u64().unwrap())
        .collect();
    asns.sort();
    assert_eq!(asns, [64_501, 64_504], "only its own ASNs: {summary}");
    assert!(
        rows.iter().all(|r| r["samples"] == 1),
        "only the shared check counts: {summary}"
    );
    assert_eq!(rows[0]["group"]["region"], "BE");
    // The bandwidth its customers got, per ASN and class: 65,536 bytes in 14 ms.
    for row in rows {
        let goodput = &row["figures"]["goodput"];
        assert_eq!(goodput["samples"], 1, "{row}");
        let p50 = goodput["percentiles"][0]["value"].as_u64().unwrap();
        assert!(
            p50.abs_diff(37_449) <= 37,
            "goodput p50 {p50} kbit/s: {row}"
        );
    }
    let text = summary.to_string();
    assert!(
        !text.contains("http://") && !text.contains("127.0.0.2"),
        "no URLs, no agent addresses: {text}"
    );
    for name in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "etag",
    ] {
        assert!(headers.contains_key(name), "{name} header missing");
    }

    // Asking for someone else's ASN is refused, naming it.
    let (status, _, refused) = get(&app, &token, "/api/v1/isp/summary?asn=64502").await;
    assert_eq!(status, 403);
    assert_eq!(refused["error"], "asn_not_yours");
    assert!(
        refused["message"].as_str().unwrap().contains("AS64502"),
        "{refused}"
    );
    // One of its own narrows the rows.
    let (_, _, one) = get(&app, &token, "/api/v1/isp/summary?asn=64504").await;
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    assert_eq!(one["rows"][0]["group"]["asn"], 64_504);

    let (status, _, destinations) = get(&app, &token, "/api/v1/isp/destinations").await;
    assert_eq!(status, 200, "{destinations}");
    assert_eq!(destinations["rows"].as_array().unwrap().len(), 1);
    assert_eq!(
        destinations["rows"][0]["destination"],
        site.addr().ip().to_string()
    );
    assert_eq!(destinations["rows"][0]["samples"], 2);
    assert!(
        !destinations.to_string().contains("shared-page"),
        "{destinations}"
    );

    let (status, _, series) = get(&app, &token, "/api/v1/isp/series?bucket=day&window=7d").await;
    assert_eq!(status, 200, "{series}");
    assert_eq!(series["points"].as_array().unwrap().len(), 1);

    // Pagination.
    let (_, _, page2) = get(&app, &token, "/api/v1/isp/summary?per_page=1&page=2").await;
    assert_eq!(page2["total_rows"], 2);
    assert_eq!(page2["rows"].as_array().unwrap().len(), 1);
    assert_eq!(page2["rows"][0]["group"]["asn"], 64_504);
    let (status, _, bad) = get(&app, &token, "/api/v1/isp/summary?per_page=0").await;
    assert_eq!((status, bad["error"].as_str()), (422, Some("invalid_page")));

    // The README's examples, run as a user would.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("<!-- isp-examples:start")
        .nth(1)
        .and_then(|s| s.split("<!-- isp-examples:end -->").next())
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README has the ISP examples block");
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .env("C", &app.base)
        .env("ISP_TOKEN", &token)
        .env("ASN", "64501")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README examples failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"asns\":[64501,64504]"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("304"),
        "the ETag poll answers 304: {stdout}"
    );
    app.controller.stop().await.unwrap();
}

async fn isp_quota_runs_out_with_429_and_retry_after(db: TestDb) {
    let app = TestApp::start_with(&db, |c| c.isp_requests_per_minute = 2).await;
    let token = {
        let mut conn = app.db().conn().unwrap();
        isp::create(&mut conn, "Small ISP", &[64_502]).unwrap().1
    };
    let (s1, h1, _) = get(&app, &token, "/api/v1/isp/asns").await;
    let (s2, h2, _) = get(&app, &token, "/api/v1/isp/asns").await;
    let (s3, h3, body) = get(&app, &token, "/api/v1/isp/asns").await;
    assert_eq!((s1, s2, s3), (200, 200, 429));
    assert_eq!(h1["ratelimit-remaining"], "1");
    assert_eq!(h2["ratelimit-remaining"], "0");
    assert_eq!(h3["retry-after"], "30", "one request per 30 s at 2/minute");
    assert_eq!(body["error"], "rate_limited");
    app.controller.stop().await.unwrap();
}

async fn asn_ownership_is_proven_by_a_mailed_code(db: TestDb) {
    let mailer = Arc::new(MemoryMailer::default());
    let app = TestApp::start_with_mailer(&db, mailer.clone()).await;
    let token = {
        let mut conn = app.db().conn().unwrap();
        isp::set_contact(&mut conn, 64_503, "noc@fibra.example").unwrap();
        isp::create(&mut conn, "Fibra", &[]).unwrap().1
    };
    let call = |path: &'static str, body: Value| {
        let token = token.clone();
        let app = &app;
        async move { app.call("POST", path, Some(&token), Some(body)).await }
    };
    // No contact is known for AS64999.
    let (status, body) = call("/api/v1/isp/asn-claims", json!({"asn": 64_999})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("asn_contact_unknown"))
    );

    let (status, claim) = call("/api/v1/isp/asn-claims", json!({"asn": 64_503})).await;
    assert_eq!(status, 201, "{claim}");
    assert_eq!(claim["sent_to"], "n***@fibra.example");
    let (to, _, mail) = mailer.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!(to, "noc@fibra.example");
    let code = mail
        .split("this code: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let confirm = format!(
        "/api/v1/isp/asn-claims/{}/confirm",
        claim["id"].as_str().unwrap()
    );
    let (status, body) = app
        .call(
            "POST",
            &confirm,
            Some(&token),
            Some(json!({"code": "wrong"})),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (422, Some("wrong_code")));
    let (_, _, before) = get(&app, &token, "/api/v1/isp/asns").await;
    assert_eq!(before["asns"], json!([]));
    let (status, body) = app
        .call("POST", &confirm, Some(&token), Some(json!({"code": code})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["asns"], json!([64_503]));
    app.controller.stop().await.unwrap();
}
