//! Result ingestion, aggregation and reports, on both backends.

use std::net::Ipv4Addr;

use lastmile_storage::count_sql;
use serde_json::json;

use crate::leasing::submission;
use crate::per_backend;
use crate::scene;
use crate::support::{count, TestApp, TestDb, OWNER_CREDIT};

per_backend!(
    repeated_result_submission_is_stored_once,
    report_merges_results_by_class_and_country_as_json_and_csv,
    agent_location_comes_from_the_address_it_connects_from,
    a_result_keeps_its_address_family_decoded_size_and_redirects,
    a_summary_of_another_kind_than_the_task_is_refused,
);

/// A hand-made result for an http fetch that carries a throughput load's (or a video
/// session's, or a page's) summary is refused, naming both kinds: its figures would
/// otherwise land in a check that never asked for them. The assignment stays open for
/// the honest result, which is then accepted.
async fn a_summary_of_another_kind_than_the_task_is_refused(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    let task = app.run_and_lease(&owner, &check, &agent).await;
    assert_eq!(task["kind"], "http");
    let honest = submission(&task["assignment_id"], 40_000);
    let mut load = honest.clone();
    load["measurement"]["bytes"] = json!(2_000_000);
    load["measurement"]["timings_us"]["transfer"] = json!(10_000);
    load["measurement"]["throughput"] = json!({
        "connections": 4, "requests": 8, "bytes": 2_000_000, "duration_us": 10_000,
        "idle_latency_us": [5_000], "loaded_latency_us": [9_000]
    });
    let mut session = honest.clone();
    session["measurement"]["video"] = json!({
        "playlist_url": "http://x/index.m3u8", "segments": 2, "played_ms": 2000,
        "startup_us": 10_000, "stalls": 0, "stall_us": 0
    });
    for (forged, kind) in [(load, "throughput"), (session, "video")] {
        let (status, body) = app.submit(&agent, forged).await;
        assert_eq!(status, 422, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("a {kind} summary")) && message.contains("http task"),
            "{body}"
        );
    }
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM results"), 0);
    let (status, ack) = app.submit(&agent, honest).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["disposition"], "accepted");
}

async fn repeated_result_submission_is_stored_once(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    let task = app.run_and_lease(&owner, &check, &agent).await;
    let other = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &key, "fibre", 1)
        .await;
    let result = submission(&task["assignment_id"], 40_000);

    // Another agent cannot submit for it.
    let (status, body) = app.submit(&other, result.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("assignment_not_yours"))
    );

    let (s1, ack1) = app.submit(&agent, result.clone()).await;
    let (s2, ack2) = app.submit(&agent, result).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        ack1, ack2,
        "a repeated submission gets the same acknowledgement"
    );
    assert_eq!(ack1["disposition"], "accepted");

    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM results"), 1);
    assert_eq!(
        count(
            &app,
            "SELECT CAST(SUM(successes) AS BIGINT) AS n FROM aggregates"
        ),
        1
    );
    let (_, metrics) = app.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("lastmile_results_accepted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lastmile_results_duplicate_total 1"),
        "{metrics}"
    );
    // Money moved once: the owner paid 5 cents, the volunteer earned 4.
    let (_, owner_balance) = app.get("/api/v1/me/balance", &owner).await;
    assert_eq!(
        owner_balance["balances"][0]["balance_minor"],
        OWNER_CREDIT - 5,
        "{owner_balance}"
    );
    let (_, volunteer_balance) = app.get("/api/v1/me/balance", &key).await;
    assert_eq!(
        volunteer_balance["balances"][0],
        json!({"kind": "volunteer_earnings", "currency": "usd", "balance_minor": 4})
    );
    app.controller.stop().await.unwrap();
}

async fn report_merges_results_by_class_and_country_as_json_and_csv(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    // Two DE agents (dsl from .2, fibre from .5) and one US dsl agent.
    let de_dsl = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let de_fibre = app
        .agent(Ipv4Addr::new(127, 0, 0, 5), &key, "fibre", 1)
        .await;
    let us_dsl = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 1).await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 3}))
        .await;
    // Ten runs; per run: DE dsl 100 ms + i, DE fibre 10 ms + i, US dsl fails every other run.
    for i in 0..10u64 {
        app.ask_run(&owner, &check).await;
        for (token, total) in [
            (&de_dsl, 100_000 + i * 1000),
            (&de_fibre, 10_000 + i * 100),
            (&us_dsl, 200_000),
        ] {
            let (_, lease) = app.lease(token, 1).await;
            let id = lease["tasks"][0]["assignment_id"].clone();
            let mut result = submission(&id, total);
            if token == &us_dsl && i % 2 == 1 {
                result["measurement"]["error"] = json!({"kind": "timeout", "message": "too slow"});
            }
            let (status, ack) = app.submit(token, result).await;
            assert_eq!(status, 200, "{ack}");
        }
    }
    let (status, report) = app
        .report(&owner, &check, "group_by=connection_class,country")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["check"]["id"], check.as_str());
    let rows = report["rows"].as_array().unwrap();
    let row = |class: &str, country: &str| {
        rows.iter()
            .find(|r| r["group"]["connection_class"] == class && r["group"]["country"] == country)
            .unwrap_or_else(|| panic!("no {class}/{country} row in {report}"))
    };
    let de = row("dsl", "DE");
    assert_eq!(de["samples"], 10);
    assert_eq!(de["availability"], 1.0);
    let p50 = de["phases"]["total"]["p50"].as_u64().unwrap();
    assert!(
        (104_000..=105_100).contains(&p50),
        "median of 100..109 ms is about 104 ms: {p50}"
    );
    let p99 = de["phases"]["total"]["p99"].as_u64().unwrap();
    assert!((108_900..=109_100).contains(&p99), "{p99}");
    let us = row("dsl", "US");
    assert_eq!(us["samples"], 10);
    assert_eq!(us["failures"], 5);
    assert_eq!(us["availability"], 0.5);
    assert!(
        row("fibre", "DE")["phases"]["ttfb"]["p50"]
            .as_u64()
            .unwrap()
            < 10_000
    );

    // Grouping by class alone merges the two DSL rows.
    let (_, by_class) = app
        .report(&owner, &check, "group_by=connection_class")
        .await;
    let dsl = by_class["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"]["connection_class"] == "dsl")
        .unwrap()
        .clone();
    assert_eq!(dsl["samples"], 20);
    assert!(dsl["group"].get("country").is_none());

    // Regions come from the geo database too: DE splits into BE (dsl) and BY (fibre).
    let (_, by_region) = app.report(&owner, &check, "group_by=country,region").await;
    let regions: Vec<(String, String, u64)> = by_region["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"]["country"].as_str().unwrap().to_owned(),
                r["group"]["region"].as_str().unwrap().to_owned(),
                r["samples"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        regions,
        [
            ("DE".into(), "BE".into(), 10),
            ("DE".into(), "BY".into(), 10),
            ("US".into(), "CA".into(), 10)
        ]
    );

    // CSV carries the same numbers.
    let (status, csv) = app
        .report(
            &owner,
            &check,
            "group_by=connection_class,country&format=csv",
        )
        .await;
    assert_eq!(status, 200);
    // A download says what to save it as.
    let answer = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/checks/{check}/report?group_by=connection_class,country&format=csv",
            app.base
        ))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    let disposition = answer.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        disposition.starts_with(&format!("attachment; filename=\"lastmile-report-{check}-"))
            && disposition.ends_with(&format!("-to-{today}.csv\"")),
        "{disposition}"
    );
    let csv = csv.as_str().unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        &header[..6],
        [
            "connection_class",
            "country",
            "samples",
            "successes",
            "failures",
            "availability"
        ]
    );
    let us_line = csv.lines().find(|l| l.starts_with("dsl,US,")).unwrap();
    assert!(us_line.starts_with("dsl,US,10,5,5,0.500000,"), "{us_line}");

    // A window that ends before anything was measured is empty.
    let window = "from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z";
    let (_, old) = app.report(&owner, &check, window).await;
    assert_eq!(old["rows"].as_array().unwrap().len(), 0);
    app.controller.stop().await.unwrap();
}

async fn agent_location_comes_from_the_address_it_connects_from(db: TestDb) {
    let app = TestApp::start(&db).await;
    let key = app.volunteer("v");
    for (ip, country, region, city, asn) in crate::support::PLACES {
        let token = app.agent(ip, &key, "cable", 1).await;
        let (status, ack) = app
            .call_from(
                ip,
                "POST",
                "/api/v1/agents/heartbeat",
                Some(&token),
                Some(json!({"declared_class": "cable", "version": "t", "limits": {"max_concurrent": 1}})),
            )
            .await;
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack["location"]["country"], country);
        assert_eq!(ack["location"]["region"], region);
        assert_eq!(ack["location"]["city"], city);
        assert_eq!(ack["location"]["asn"], asn);
    }
    // An address outside the databases has no location (and is not invented).
    let token = app
        .agent(Ipv4Addr::new(127, 0, 0, 9), &key, "cable", 1)
        .await;
    let (_, ack) = app
        .call_from(
            Ipv4Addr::new(127, 0, 0, 9),
            "POST",
            "/api/v1/agents/heartbeat",
            Some(&token),
            Some(
                json!({"declared_class": "cable", "version": "t", "limits": {"max_concurrent": 1}}),
            ),
        )
        .await;
    assert_eq!(ack["location"]["country"], serde_json::Value::Null);
    app.controller.stop().await.unwrap();
}

async fn a_result_keeps_its_address_family_decoded_size_and_redirects(db: TestDb) {
    let (app, site, owner, key) = scene::start(&db).await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 2}))
        .await;
    let new_agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let old_agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &key, "fibre", 1)
        .await;
    app.ask_run(&owner, &check).await;
    let mut assignments = Vec::new();
    for agent in [&new_agent, &old_agent] {
        let (_, lease) = app.lease(agent, 1).await;
        assignments.push(lease["tasks"][0]["assignment_id"].clone());
    }
    // A current agent: a failed TLS handshake after one redirect, over IPv6.
    let hop = json!({"url": "http://shop.example/", "status": 301, "location": "https://shop.example/",
        "remote_addr": "2001:db8::1", "timings_us": {"dns": 1, "connect": 2, "tls": 0, "ttfb": 3, "transfer": 4, "total": 10}});
    let current = json!({
        "assignment_id": assignments[0],
        "started_at": chrono::Utc::now().to_rfc3339(),
        "measurement": {
            "status": 200, "bytes": 1000, "bytes_decoded": 5000,
            "error": {"kind": "body_mismatch", "message": "no 'Order now'"},
            "timings_us": {"dns": 10, "connect": 100, "tls": 50, "ttfb": 20, "transfer": 40, "total": 300},
            "remote_addr": "2001:db8::1", "ip_version": 6, "http_version": "2", "redirect_us": 120, "redirects": [hop]
        }
    });
    // An older agent: the four-field shape and a code it used to send.
    let mut older = submission(&assignments[1], 40_000);
    older["measurement"]["error"] = json!({"kind": "timeout", "message": "slow"});
    for (agent, body) in [(&new_agent, current), (&old_agent, older)] {
        let (status, ack) = app.submit(agent, body).await;
        assert_eq!(status, 200, "{ack}");
    }
    let mut conn = app.db().conn().unwrap();
    let count = |conn: &mut _, sql: &str| count_sql(conn, sql).unwrap();
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM results WHERE remote_addr = '2001:db8::1' AND ip_version = 6 AND http_version = '2' \
             AND bytes = 1000 AND bytes_decoded = 5000 AND redirects = 1 AND redirect_us = 120 \
             AND error_kind = 'body_mismatch' AND redirect_hops LIKE '%\"location\":\"https://shop.example/\"%'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT COUNT(*) AS n FROM results WHERE remote_addr IS NULL AND ip_version IS NULL \
             AND bytes_decoded = bytes AND redirects = 0 AND redirect_hops IS NULL AND error_kind = 'total_timeout'"
        ),
        1,
        "an older agent's result is stored with today's code"
    );
    drop(conn);
    app.controller.stop().await.unwrap();
}
