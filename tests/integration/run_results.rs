//! One run's individual results as its owner reads them: real agents measure a real
//! site that redirects once, and the listing shows what each of them saw, hop included.

use std::net::{IpAddr, Ipv4Addr};

use lastmile_testbed::site::REDIRECT_PATH;
use serde_json::{json, Value};

use crate::agent_lifecycle::{agents_online, eventually, settings, spawn_agent};
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(
    an_owner_reads_each_agents_result_of_a_run_with_its_redirect_hop,
    only_the_checks_owner_reads_a_runs_results_and_only_under_its_check,
);

/// The id of the check's only run.
async fn only_run(app: &TestApp, owner: &str, check: &str) -> String {
    let (status, runs) = app
        .get(&format!("/api/v1/checks/{check}/runs"), owner)
        .await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    runs[0]["id"].as_str().unwrap().to_owned()
}

async fn an_owner_reads_each_agents_result_of_a_run_with_its_redirect_hop(db: TestDb) {
    let app = TestApp::start_with(&db, |c| c.heartbeat_interval_s = 1).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    // Two agents, from Berlin and San Francisco (the test geo databases).
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for (i, source) in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(&app, Some(key.clone()), dir.path());
        s.name = format!("agent-{i}");
        s.engine.source_addr = Some(IpAddr::V4(source));
        agents.push(spawn_agent(s));
        dirs.push(dir);
    }
    agents_online(&app, 2, "both agents are online").await;
    let site_id = app.verified_site(&owner, &site).await;
    let moved = format!("{}{REDIRECT_PATH}", site.origin());
    let (status, check) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "url": moved, "selection": {"agents_per_run": 2}}),
        )
        .await;
    assert_eq!(status, 201, "{check}");
    let check = check["id"].as_str().unwrap().to_owned();
    eventually("both results are stored", || {
        count(&app, "SELECT COUNT(*) AS n FROM results") == 2
    })
    .await;
    let run = only_run(&app, &owner, &check).await;

    let (status, results) = app
        .get(
            &format!("/api/v1/checks/{check}/runs/{run}/results"),
            &owner,
        )
        .await;
    assert_eq!(status, 200, "{results}");
    let results = results.as_array().unwrap().clone();
    assert_eq!(results.len(), 2, "one result per agent: {results:?}");
    let mut countries: Vec<&str> = results
        .iter()
        .map(|r| r["country"].as_str().unwrap_or("?"))
        .collect();
    countries.sort_unstable();
    assert_eq!(countries, ["DE", "US"], "{results:?}");
    assert_ne!(results[0]["agent_id"], results[1]["agent_id"]);
    let started: Vec<&str> = results
        .iter()
        .map(|r| r["started_at"].as_str().unwrap())
        .collect();
    assert!(started[0] <= started[1], "ordered by start: {started:?}");
    for r in &results {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["error"], Value::Null, "{r}");
        assert_eq!(
            (r["late"].clone(), r["flagged"].clone()),
            (json!(false), json!(false))
        );
        assert_eq!(r["remote_addr"], "127.0.0.1", "{r}");
        assert_eq!(r["ip_version"], 4, "{r}");
        assert_eq!(r["http_version"], "1.1", "{r}");
        assert!(r["timings_us"]["ttfb"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["bytes"].as_u64().unwrap() >= 8 * 1024,
            "the home page: {r}"
        );
        assert_eq!(r["page"], Value::Null, "{r}");
        // The one hop: the redirect that was followed, and where it pointed.
        let hops = r["redirects"].as_array().unwrap();
        assert_eq!(hops.len(), 1, "{r}");
        assert_eq!(r["redirect_count"], 1, "{r}");
        assert_eq!(hops[0]["status"], 301, "{r}");
        assert_eq!(hops[0]["url"], moved.as_str(), "{r}");
        assert_eq!(hops[0]["location"], format!("{}/", site.origin()), "{r}");
        assert_eq!(hops[0]["remote_addr"], "127.0.0.1", "{r}");
        assert!(r["redirect_us"].as_u64().unwrap() > 0, "{r}");
        for field in ["received_at", "started_at"] {
            let at = r[field].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(at).is_ok(),
                "{field}: {at}"
            );
        }
    }

    for (stop, task) in agents {
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }
}

async fn only_the_checks_owner_reads_a_runs_results_and_only_under_its_check(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let mallory = app.owner("mallory");
    let key = app.volunteer("v");
    app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "fibre", 1)
        .await;
    let site_id = app.verified_site(&owner, &site).await;
    let mut checks = Vec::new();
    for _ in 0..2 {
        let (status, check) = app
            .post_check(
                &owner,
                json!({"site_id": site_id, "url": site.origin(), "selection": {"agents_per_run": 1}}),
            )
            .await;
        assert_eq!(status, 201, "{check}");
        checks.push(check["id"].as_str().unwrap().to_owned());
    }
    let (status, run) = app.ask_run(&owner, &checks[0]).await;
    assert_eq!(status, 201, "{run}");
    let run = run["id"].as_str().unwrap().to_owned();
    let (check, other_check) = (&checks[0], &checks[1]);

    // The owner sees the run's (so far empty) listing.
    let (status, results) = app
        .get(
            &format!("/api/v1/checks/{check}/runs/{run}/results"),
            &owner,
        )
        .await;
    assert_eq!((status, results), (200, json!([])));

    // Each refusal is the one reading the run itself gives.
    let unknown = uuid::Uuid::new_v4();
    for (who, check, run) in [
        (&mallory, check, &run),
        (&owner, other_check, &run),
        (&owner, check, &unknown.to_string()),
    ] {
        let path = format!("/api/v1/checks/{check}/runs/{run}");
        let (run_status, run_body) = app.call("GET", &path, Some(who), None).await;
        let (status, body) = app
            .call("GET", &format!("{path}/results"), Some(who), None)
            .await;
        assert_eq!(status, 404, "{path}/results: {body}");
        assert_eq!((status, &body), (run_status, &run_body), "{path}");
        assert!(
            ["check_not_found", "run_not_found"].contains(&body["error"].as_str().unwrap()),
            "{body}"
        );
    }
    app.controller.stop().await.unwrap();
}
