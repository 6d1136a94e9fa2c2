//! `udp` checks end to end, both backends: the API takes one to the site's reflector
//! (and refuses what does not fit, each saying why), a real agent behind an emulated DSL
//! line with loss and jitter on its UDP path streams to a real reflector run with the
//! site's token, and the controller derives round trip, jitter and loss from the
//! stream's summary into the report, the CSV, the objectives and the run's results. The
//! controller proves the reflector when a check first points at it (a missing one, or
//! one started with another token, is refused at once), and agents prove it again
//! before each stream: a reflector replaced by one of another site gets no stream, its
//! results fail with `reflector_unverified`.

use lastmile_agent::reflector::Reflector;
use lastmile_protocol::ConnectionClass;
use lastmile_testbed::udp_link::Impairment;
use serde_json::{json, Value};
use std::time::Duration;

use crate::lines::{
    assert_csv_columns, class_row, figure, latest_run_results, line_app, run_and_wait, until,
    AgentOnLine,
};
use crate::per_backend;
use crate::support::{count, csrf_of, target_site, TestApp, TestDb};

per_backend!(
    a_udp_check_streams_to_the_sites_reflector_and_reports_round_trip_jitter_and_loss,
    a_udp_check_is_made_and_edited_in_the_dashboard,
);

async fn a_udp_check_streams_to_the_sites_reflector_and_reports_round_trip_jitter_and_loss(
    db: TestDb,
) {
    let app = line_app(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let (_, shown) = app.get(&format!("/api/v1/sites/{site_id}"), &owner).await;
    let token = shown["verification_token"].as_str().unwrap().to_owned();
    // The owner runs the reflector on the site's host with the site's token.
    let reflector = Reflector::start("127.0.0.1:0".parse().unwrap(), token.clone())
        .await
        .unwrap();
    // One agent on a DSL line (16 Mbit/s down, 40 ms) whose datagrams also lose 3 % each
    // way and wait up to 10 ms more.
    let impairment = Impairment {
        jitter: Duration::from_millis(10),
        loss_ppm: 30_000,
    };
    let agent = AgentOnLine::start_reaching(
        &app,
        &site,
        ConnectionClass::Dsl,
        Some((reflector.addr(), impairment)),
    )
    .await;

    let url = format!("udp://{}", reflector.addr());
    let check = |extra: Value| {
        let mut body = json!({"site_id": site_id, "url": url, "kind": "udp",
                              "selection": {"agents_per_run": 1}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // A reflector must be there, and the site's, before a check may point at it: the
    // controller says hello first, as agents do.
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stranger = Reflector::start("127.0.0.1:0".parse().unwrap(), "lms_someone_else".into())
        .await
        .unwrap();
    for (target, says) in [
        (nowhere, "no reflector answered"),
        (stranger.addr(), "another token"),
    ] {
        let (status, body) = app
            .post_check(&owner, check(json!({"url": format!("udp://{target}")})))
            .await;
        assert_eq!(status, 422, "{target}: {body}");
        assert_eq!(body["error"], "reflector_not_verified", "{body}");
        assert!(body.to_string().contains(says), "{body}");
    }
    drop(stranger);

    // Streams that do not fit are refused, each saying why.
    let port = reflector.addr().port();
    for (extra, says) in [
        (json!({"udp": {"interval_ms": 5}}), "udp.interval_ms"),
        (json!({"udp": {"duration_ms": 500}}), "udp.duration_ms"),
        (
            json!({"udp": {"interval_ms": 10, "duration_ms": 60000}}),
            "at most 3000",
        ),
        (json!({"udp": {"packet_bytes": 2000}}), "udp.packet_bytes"),
        (json!({"udp": {"intervall_ms": 20}}), "intervall_ms"),
        (
            json!({"udp": {"duration_ms": 20000}, "timeout_ms": 21000}),
            "timeout_ms",
        ),
        (json!({"expected_status": [200]}), "expected_status"),
        (
            json!({"url": format!("udp://127.0.0.2:{port}")}),
            "site's host",
        ),
        (json!({"url": "udp://127.0.0.1"}), "udp://host:port"),
        (json!({"url": site.origin()}), "udp://host:port"),
        (json!({"kind": "http"}), "a udp:// URL is for kind"),
        (
            json!({"kind": "http", "url": site.origin(), "udp": {"interval_ms": 20}}),
            "udp is a stream for kind",
        ),
        (
            json!({"objectives": [{"figure": "loss", "percentile": 95, "max_ms": 1}]}),
            "objectives[0]",
        ),
        (
            json!({"objectives": [{"figure": "rtt", "percentile": 95, "max_percent": 1}]}),
            "not a share",
        ),
    ] {
        let (status, body) = app.post_check(&owner, check(extra.clone())).await;
        assert!(
            (400..500).contains(&status) && body.to_string().contains(says),
            "{extra} -> {status} {body}"
        );
    }

    let (status, created) = app
        .post_check(
            &owner,
            check(json!({
                "udp": {"interval_ms": 20, "duration_ms": 3000},
                "objectives": [
                    {"figure": "rtt", "percentile": 95, "max_ms": 200},
                    {"figure": "loss", "percentile": 50, "max_percent": 1},
                ],
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["kind"], "udp");
    assert_eq!(
        created["udp"],
        json!({"interval_ms": 20, "duration_ms": 3000, "packet_bytes": 172})
    );
    assert_eq!(
        created["timeout_ms"], 30000,
        "a short stream keeps the usual limit"
    );
    assert_eq!(created["price_per_result_minor"], 20, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    run_and_wait(&app, &owner, &id, 3).await;
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM results WHERE error_kind IS NULL AND flagged = false \
             AND figures LIKE '%jitter%'"
        ),
        3,
        "every stream succeeded, unflagged, with its figures"
    );

    // The report: DSL's round trip is its line's 40 ms plus the jitter's share, the
    // jitter a few ms, and about 6 % of the probes lost (3 % each way).
    let row = &class_row(&app, &owner, &id, 3).await;
    let rtt = figure(row, "rtt", 50);
    let jitter = figure(row, "jitter", 50);
    let loss = figure(row, "loss", 50);
    eprintln!("dsl: rtt {rtt} µs, jitter {jitter} µs, loss {loss} ppm");
    assert!((40_000..=80_000).contains(&rtt), "rtt {rtt} µs");
    assert!((500..=15_000).contains(&jitter), "jitter {jitter} µs");
    assert!(
        (10_000..=200_000).contains(&loss),
        "loss {loss} ppm: about 6 %"
    );
    assert_eq!(row["figures"]["loss"]["unit"], "ppm", "{row}");
    // The objectives: the round trip holds, the loss breaks, read in percent.
    let outcomes = row["objectives"].as_array().unwrap();
    assert_eq!(outcomes[0]["met"], true, "{row}");
    assert_eq!(outcomes[1]["met"], false, "{row}");
    let actual = outcomes[1]["actual"].as_f64().unwrap();
    assert!((1.0..=20.0).contains(&actual), "loss read in %: {row}");

    // The CSV has a column per figure, in its unit.
    assert_csv_columns(
        &app,
        &owner,
        &id,
        &["rtt_p50_us", "jitter_p95_us", "loss_p95_ppm"],
    )
    .await;

    // The report page charts loss in percent; the run page says what the stream saw.
    let cookie = app.owner_session(&owner).await;
    let page = app
        .dashboard_page(&cookie, &format!("/app/checks/{id}/report?window=24h"))
        .await;
    for chart in [r#"id="rtt-p95""#, r#"id="jitter-p95""#, r#"id="loss-p95""#] {
        assert!(page.contains(chart), "{chart} missing");
    }
    let (run, results) = latest_run_results(&app, &owner, &id).await;
    let figures = &results[0]["figures"];
    assert!(
        figures["rtt"].as_u64().is_some() && figures["loss"].as_u64().is_some(),
        "{results}"
    );
    let run_page = app
        .dashboard_page(&cookie, &format!("/app/checks/{id}/runs/{run}"))
        .await;
    assert!(
        run_page.contains(" round trip, ") && run_page.contains(" % lost"),
        "{run_page}"
    );

    // The reflector is replaced by one of another site: the agent, proving it again
    // before its stream, sends none, and the result fails saying why.
    let addr = reflector.addr();
    drop(reflector);
    let mut replaced = None;
    for _ in 0..50 {
        match Reflector::start(addr, "lms_someone_else".into()).await {
            Ok(r) => {
                replaced = Some(r);
                break;
            }
            // The old one's socket closes as its task ends.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _replaced = replaced.expect("the reflector's port again");
    let runs_path = format!("/api/v1/checks/{id}/runs");
    let (status, run) = app.call("POST", &runs_path, Some(&owner), None).await;
    assert_eq!(status, 201, "{run}");
    until("the fourth result is stored", 60, async || {
        count(&app, "SELECT COUNT(*) AS n FROM results") == 4
    })
    .await;
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM results WHERE error_kind = 'reflector_unverified'"
        ),
        1
    );

    agent.stop().await;
}

async fn a_udp_check_is_made_and_edited_in_the_dashboard(db: TestDb) {
    let app = TestApp::start(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    let cookie = app.owner_session(&owner).await;
    let csrf = csrf_of(&app.dashboard_page(&cookie, "/app/checks/new").await);
    let (_, shown) = app.get(&format!("/api/v1/sites/{site_id}"), &owner).await;
    let token = shown["verification_token"].as_str().unwrap().to_owned();
    // The site's page says how to run its reflector, with the token and the URL.
    let site_page = app
        .dashboard_page(&cookie, &format!("/app/sites/{site_id}"))
        .await;
    assert!(
        site_page.contains(&format!(
            "LASTMILE_REFLECTOR_TOKEN={token} lastmile-reflector --listen 0.0.0.0:7301"
        )) && site_page.contains("udp://127.0.0.1:7301"),
        "{site_page}"
    );
    let reflector = Reflector::start("127.0.0.1:0".parse().unwrap(), token)
        .await
        .unwrap();
    let url = format!("udp://{}", reflector.addr());
    let form = |kind: &str, name: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("action", "create".to_owned()),
            ("site_id", site_id.clone()),
            ("url", url.clone()),
            ("name", name.to_owned()),
            ("kind", kind.to_owned()),
            ("udp_interval_ms", "50".to_owned()),
            ("udp_duration_ms", "20000".to_owned()),
            ("packet_bytes", "400".to_owned()),
            ("agents_per_run", "1".to_owned()),
        ]
    };

    // A long stream gets the time it needs by default (this test runs no agent).
    let (status, long) = app
        .post_check(
            &owner,
            json!({"site_id": site_id, "url": url, "kind": "udp",
                   "udp": {"interval_ms": 50, "duration_ms": 60000}}),
        )
        .await;
    assert_eq!(status, 201, "{long}");
    assert_eq!(long["timeout_ms"], 70000, "{long}");
    let (status, patched) = app
        .call(
            "PATCH",
            &format!("/api/v1/checks/{}", long["id"].as_str().unwrap()),
            Some(&owner),
            Some(json!({"udp": {"packet_bytes": 1200}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["udp"],
        json!({"interval_ms": 50, "duration_ms": 60000, "packet_bytes": 1200}),
        "a merge patch changes the fields it names"
    );

    // A stream is for udp checks: an http check with one is refused, saying so.
    let refused = app
        .post_form(&cookie, "/app/checks", &form("http", "Game"))
        .await;
    assert!(refused.status().is_client_error(), "{}", refused.status());
    let page = refused.text().await.unwrap();
    assert!(page.contains("udp://"), "{page}");

    let made = app
        .post_form(&cookie, "/app/checks", &form("udp", "Game"))
        .await;
    assert_eq!(made.status(), 303);
    let check_page = made.headers()["location"].to_str().unwrap().to_owned();
    let shown = app.dashboard_page(&cookie, &check_page).await;
    assert!(
        shown.contains("a 400-byte packet every 50 ms for 20 s"),
        "{shown}"
    );
    let edit = app
        .dashboard_page(&cookie, &format!("{check_page}/edit"))
        .await;
    assert!(edit.contains(r#"<option value="udp" selected>"#), "{edit}");
    assert!(
        edit.contains(r#"name="udp_interval_ms" min="10" max="1000" value="50""#),
        "{edit}"
    );
    // Proven once: an edit that keeps the reflector's URL does not ask it again (the
    // reflector may be down for maintenance), one that moves it does.
    let reflector_port = reflector.addr().port();
    drop(reflector);
    let id = check_page.rsplit('/').next().unwrap();
    let (status, moved) = app
        .call(
            "PATCH",
            &format!("/api/v1/checks/{id}"),
            Some(&owner),
            Some(json!({"url": format!("udp://127.0.0.1:{}", reflector_port + 1)})),
        )
        .await;
    assert_eq!(status, 422, "{moved}");
    assert_eq!(moved["error"], "reflector_not_verified", "{moved}");
    let saved = app
        .post_form(
            &cookie,
            &format!("{check_page}/edit"),
            &form("udp", "Game, renamed"),
        )
        .await;
    assert_eq!(saved.status(), 303);
    let (_, check) = app.get(&format!("/api/v1/checks/{id}"), &owner).await;
    assert_eq!(check["name"], "Game, renamed");
    assert_eq!(check["kind"], "udp");
    assert_eq!(
        check["udp"],
        json!({"interval_ms": 50, "duration_ms": 20000, "packet_bytes": 400})
    );
}
