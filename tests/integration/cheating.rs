//! End to end, both backends: three honest agents (the real agent, behind emulated DSL,
//! cable and fibre links) and one cheater that enrols and calibrates its DSL line like
//! everyone but submits made-up timings without measuring. The cheater's results are
//! flagged, absent from the report, and earn nothing; the honest agents are paid and
//! reported.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use lastmile_agent::limits::VolunteerLimits;
use lastmile_agent::measure::{ConnectTo, EngineConfig};
use lastmile_agent::runner::AgentSettings;
use lastmile_protocol::{AgentLimits, ConnectionClass};
use lastmile_testbed::link::{Link, LinkProfile};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::cheater::Cheater;
use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb, OWNER_CREDIT};
use crate::verification::{balance, flags, ADMIN};

per_backend!(a_cheating_agent_is_flagged_unpaid_and_unreported_while_honest_agents_are_paid);

const RUNS: usize = 3;

async fn until(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_cheating_agent_is_flagged_unpaid_and_unreported_while_honest_agents_are_paid(
    db: TestDb,
) {
    let app = TestApp::start_with(&db, |c| {
        c.admin_token = Some(ADMIN.into());
        c.heartbeat_interval_s = 1;
        c.online_window_s = 10;
        c.lease_s = 30;
        c.run_deadline_s = 60;
    })
    .await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let state = tempfile::tempdir().unwrap();
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));

    // Honest agents: AS64501 DSL, AS64503 cable, AS64504 fibre, each its own volunteer.
    let (stop, stopped) = watch::channel(false);
    let mut links = Vec::new();
    let mut agents = tokio::task::JoinSet::new();
    let honest = [
        (Ipv4Addr::new(127, 0, 0, 2), ConnectionClass::Dsl, "Ada"),
        (Ipv4Addr::new(127, 0, 0, 4), ConnectionClass::Cable, "Bea"),
        (Ipv4Addr::new(127, 0, 0, 5), ConnectionClass::Fibre, "Cy"),
    ];
    let mut honest_keys = Vec::new();
    for (i, (ip, class, name)) in honest.into_iter().enumerate() {
        let key = app.volunteer(name);
        honest_keys.push(key.clone());
        let profile = LinkProfile::for_class(class);
        let to_site = Link::start(any_port, site.addr(), profile).await.unwrap();
        let to_controller = Link::start(any_port, app.controller.addr, profile)
            .await
            .unwrap();
        let settings = AgentSettings {
            controller: app.base.parse().unwrap(),
            enrol_key: Some(key),
            state_dir: state.path().join(format!("agent-{i}")),
            name: format!("{name}-{class}"),
            declared_class: class,
            limits: AgentLimits { max_concurrent: 2 },
            engine: EngineConfig {
                allow_private: true,
                source_addr: Some(IpAddr::V4(ip)),
                connect_to: vec![ConnectTo {
                    host: site.addr().ip().to_string(),
                    port: site.addr().port(),
                    addr: to_site.addr(),
                }],
                ..EngineConfig::default()
            },
            idle_poll: Duration::from_millis(200),
            calibration_url: Some(format!("http://{}", to_controller.addr()).parse().unwrap()),
            calibration_bytes_per_day: 20 * 1024 * 1024,
            volunteer: VolunteerLimits::default(),
            spool_max_results: 100,
            path_trace: true,
        };
        let mut stopped = stopped.clone();
        agents.spawn(lastmile_agent::run(settings, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        links.extend([to_site, to_controller]);
    }

    // The cheater: its own volunteer, a real DSL line in AS64502, honestly calibrated.
    let cheat_key = app.volunteer("Mallory");
    let cheater = Cheater::enrol(&app, Ipv4Addr::new(127, 0, 0, 3), &cheat_key, "dsl").await;
    let to_controller = Link::start(
        any_port,
        app.controller.addr,
        LinkProfile::for_class(ConnectionClass::Dsl),
    )
    .await
    .unwrap();
    let ack = cheater
        .calibrate(&format!("http://{}", to_controller.addr()).parse().unwrap())
        .await;
    assert_eq!(ack.measured_class, ConnectionClass::Dsl, "{ack:?}");
    links.push(to_controller);
    until("every agent has calibrated", 60, async || {
        count(
            &app,
            "SELECT COUNT(*) AS n FROM agents WHERE measured_class IS NOT NULL",
        ) == 4
    })
    .await;
    let cheating = tokio::spawn(cheater.run(stopped.clone()));

    let (status, check) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "name": "home", "url": format!("{}/", site.origin()),
                "expected_status": [200], "selection": {"agents_per_run": 4}, "isp_sharing": true}),
        )
        .await;
    assert_eq!(status, 201, "{check}");
    let check = check["id"].as_str().unwrap().to_owned();
    let runs_path = format!("/api/v1/checks/{check}/runs");
    let mut finished: Vec<Value> = Vec::new();
    for n in 0..RUNS {
        if n > 0 {
            let (status, run) = app.call("POST", &runs_path, Some(&owner), None).await;
            assert_eq!(status, 201, "{run}");
        }
        until("the run is measured", 60, async || {
            let (_, runs) = app.call("GET", &runs_path, Some(&owner), None).await;
            let runs = runs.as_array().cloned().unwrap_or_default();
            let latest = runs.first().cloned();
            match latest {
                Some(r) if runs.len() == n + 1 && r["finished"] == true => {
                    finished.push(r);
                    true
                }
                _ => false,
            }
        })
        .await;
    }
    stop.send(true).unwrap();
    while let Some(done) = agents.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(
        cheating.await.unwrap(),
        RUNS,
        "the cheater took part in every run"
    );

    // Every run: four results, one of them (the cheater's) flagged.
    for run in &finished {
        assert_eq!(
            (
                run["requested"].clone(),
                run["done"].clone(),
                run["flagged"].clone()
            ),
            (json!(4), json!(4), json!(1)),
            "{run}"
        );
    }
    // The operator sees exactly the cheater's results, for breaking physics.
    let list = flags(&app).await;
    let flagged = list["flags"].as_array().unwrap();
    assert_eq!(flagged.len(), RUNS, "{list}");
    for f in flagged {
        assert_eq!(f["volunteer_name"], "Mallory", "{f}");
        assert_eq!(f["agent_address"], "127.0.0.3", "{f}");
        assert!(
            f["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["rule"] == "ttfb_below_rtt"),
            "{f}"
        );
    }
    assert_eq!(list["per_agent"][0]["flagged_results"], RUNS, "{list}");

    // The report has the three honest networks, each with every run, and not the
    // cheater's.
    let (status, report) = app
        .call(
            "GET",
            &format!("/api/v1/checks/{check}/report?group_by=asn,connection_class"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let mut rows: Vec<(u64, String, u64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["group"]["asn"].as_u64().unwrap(),
                r["group"]["connection_class"].as_str().unwrap().to_owned(),
                r["samples"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    let runs = RUNS as u64;
    assert_eq!(
        rows,
        [
            (64_501, "dsl".to_owned(), runs),
            (64_503, "cable".to_owned(), runs),
            (64_504, "fibre".to_owned(), runs),
        ],
        "{report}"
    );

    // ISP views merge the same aggregates: the cheater's network shows nothing, an
    // honest network its runs.
    for (asn, samples) in [(64_502, None), (64_501, Some(RUNS))] {
        let token = {
            let mut conn = app.db().conn().unwrap();
            lastmile_domain::isp::create(&mut conn, &format!("ISP of AS{asn}"), &[asn])
                .unwrap()
                .1
        };
        let (status, summary) = app
            .call("GET", "/api/v1/isp/summary?window=24h", Some(&token), None)
            .await;
        assert_eq!(status, 200, "{summary}");
        let rows = summary["rows"].as_array().unwrap();
        match samples {
            None => assert!(rows.is_empty(), "AS{asn}: {summary}"),
            Some(n) => {
                assert_eq!(rows.len(), 1, "AS{asn}: {summary}");
                assert_eq!(rows[0]["samples"], n, "AS{asn}: {summary}");
            }
        }
    }

    // Money: the owner paid for the honest results only; the cheater earned nothing.
    assert_eq!(
        balance(&app, &owner).await,
        OWNER_CREDIT - 3 * RUNS as i64 * 5
    );
    for key in &honest_keys {
        assert_eq!(balance(&app, key).await, RUNS as i64 * 4);
    }
    assert_eq!(balance(&app, &cheat_key).await, 0);
    // Leaderboard: no measurements for the cheater, every run for the others.
    let (_, board) = app
        .call("GET", "/api/v1/leaderboard?period=week", None, None)
        .await;
    for e in board["entries"].as_array().unwrap() {
        let want = if e["volunteer"] == "Mallory" { 0 } else { RUNS };
        assert_eq!(e["measurements"], want, "{board}");
    }
    drop(links);
    app.controller.stop().await.unwrap();
}
