//! Calibration: agents measure their line against the controller through an emulated
//! link; the controller classifies it, flags contradictions, selects by the measured
//! class, and keeps calibration traffic within a daily allowance. Both backends.

use std::net::{Ipv4Addr, SocketAddr};

use lastmile_agent::calibrate::Calibrator;
use lastmile_domain::agents;
use lastmile_domain::clock::now_us;
use lastmile_protocol::ConnectionClass;
use lastmile_testbed::link::{Link, LinkProfile};
use serde_json::json;

use crate::per_backend;
use crate::support::{target_site, TestApp, TestDb};

per_backend!(
    a_line_that_contradicts_its_declaration_is_flagged_and_selected_as_measured,
    calibration_traffic_stays_within_the_daily_allowance,
    a_calibration_the_controller_did_not_time_is_refused,
    the_figures_an_agent_reports_are_ignored_for_what_the_controller_timed,
);

/// An emulated `line` in front of the controller, and its URL: calibrating through it
/// measures that line.
async fn link_to_controller(app: &TestApp, line: ConnectionClass) -> (Link, url::Url) {
    let link = Link::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        app.controller.addr,
        LinkProfile::for_class(line),
    )
    .await
    .unwrap();
    let base = format!("http://{}", link.addr()).parse().unwrap();
    (link, base)
}

/// A calibrator for the agent with `token` through `base`, allowed 20 MiB.
fn calibrator<'a>(http: &'a reqwest::Client, base: &'a url::Url, token: &'a str) -> Calibrator<'a> {
    Calibrator {
        http,
        base,
        token,
        budget: 20 * 1024 * 1024,
    }
}

/// The agents that heartbeated in the last hour, as stored.
async fn online_last_hour(app: &TestApp) -> Vec<agents::Agent> {
    let since = now_us() - 3_600_000_000;
    app.db()
        .run(move |c| agents::online_since(c, since))
        .await
        .unwrap()
}

/// Enrols an agent from `source` declaring `declared`, calibrates it through a link of
/// class `line`, and returns its token and the controller's answer.
async fn calibrate_through(
    app: &TestApp,
    key: &str,
    source: Ipv4Addr,
    declared: &str,
    line: ConnectionClass,
) -> (String, lastmile_protocol::calibration::CalibrationAck) {
    let token = app.agent(source, key, declared, 1).await;
    let (_link, base) = link_to_controller(app, line).await;
    let http = TestApp::client_from(source);
    let ack = calibrator(&http, &base, &token).run().await.unwrap();
    (token, ack)
}

async fn a_line_that_contradicts_its_declaration_is_flagged_and_selected_as_measured(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let key = app.volunteer("volunteer");
    // Declares fibre, sits behind a dial-up modem.
    let (_, liar) = calibrate_through(
        &app,
        &key,
        Ipv4Addr::new(127, 0, 0, 2),
        "fibre",
        ConnectionClass::Dialup,
    )
    .await;
    assert_eq!(liar.declared_class, ConnectionClass::Fibre);
    assert_eq!(liar.measured_class, ConnectionClass::Dialup);
    assert!(liar.mismatch);
    // Declares cable honestly.
    let (_, honest) = calibrate_through(
        &app,
        &key,
        Ipv4Addr::new(127, 0, 0, 3),
        "cable",
        ConnectionClass::Cable,
    )
    .await;
    assert_eq!(honest.measured_class, ConnectionClass::Cable);
    assert!(!honest.mismatch);

    // Both classes are stored, with the figures behind them.
    let stored = online_last_hour(&app).await;
    let flagged = stored.iter().find(|a| a.declared_class == "fibre").unwrap();
    assert_eq!(flagged.measured_class.as_deref(), Some("dialup"));
    assert!(flagged.class_mismatch);
    let down = flagged.down_bps.unwrap();
    assert!(
        (40_000..=70_000).contains(&down),
        "dial-up downstream measured {down} bit/s"
    );
    // 150 ms of propagation, plus serializing the ping's request (~300 bytes at 33.6
    // kbit/s) and answer (~200 bytes at 56 kbit/s) on the modem itself.
    let rtt_ms = flagged.rtt_us.unwrap() / 1000;
    assert!(
        (140..=290).contains(&rtt_ms),
        "dial-up RTT measured {rtt_ms} ms"
    );

    // Selection goes by the measured class: nobody is fibre, one agent is dial-up.
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    for (class, eligible) in [("fibre", 0), ("dialup", 1), ("cable", 1)] {
        let check = app
            .create_check(
                &owner,
                json!({"site_id": site_id, "name": class, "url": format!("{}/", site.origin()),
                    "selection": {"connection_classes": [class]}}),
            )
            .await;
        let (status, run) = app.ask_run(&owner, check["id"].as_str().unwrap()).await;
        assert_eq!(status, 201, "{run}");
        assert_eq!(run["eligible_agents"], eligible, "{class}: {run}");
    }
}

async fn calibration_traffic_stays_within_the_daily_allowance(db: TestDb) {
    let app = TestApp::start_with(&db, |c| c.calibration_bytes_per_day = 100_000).await;
    let key = app.volunteer("volunteer");
    let token = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/api/v1/agents/calibration/{path}", app.base);

    let first = http
        .get(url("download?bytes=65536"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.bytes().await.unwrap().len(), 65_536);

    // 65,536 + 65,536 would pass 100,000: refused, with when to come back and why.
    let second = http
        .get(url("download?bytes=65536"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    let retry_after: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = second.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("calibration allowance of 100000 bytes"),
        "{body}"
    );

    // Uploads count too, and are charged before they are read.
    let upload = |bytes: usize| {
        http.post(url("upload"))
            .bearer_auth(&token)
            .body(vec![0u8; bytes])
            .send()
    };
    let fits = upload(30_000).await.unwrap();
    assert_eq!(fits.status(), 200);
    let receipt: serde_json::Value = fits.json().await.unwrap();
    assert_eq!(receipt["received_bytes"], 30_000);
    assert_eq!(upload(10_000).await.unwrap().status(), 429);

    // Oversized requests say what the limit is.
    let huge = http
        .get(url("download?bytes=9000000"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 422);
    let body: serde_json::Value = huge.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("8388608"),
        "{body}"
    );

    // Another agent has its own allowance.
    let other = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 1).await;
    let own = http
        .get(url("download?bytes=65536"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);

    // Without a token there is no calibration at all.
    let anonymous = http.get(url("ping")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

async fn a_calibration_the_controller_did_not_time_is_refused(db: TestDb) {
    let app = TestApp::start(&db).await;
    let key = app.volunteer("volunteer");
    let token = app
        .uncalibrated_agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl")
        .await;
    // Figures alone, without the pings and transfers behind them, prove nothing.
    let (status, body) = app
        .call(
            "POST",
            "/api/v1/agents/calibration",
            Some(&token),
            Some(json!({"rtt_us": 40_000, "down_bps": 16_000_000, "up_bps": 1_000_000, "bytes_used": 0})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "calibration_incomplete", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("0 ping(s)"),
        "{body}"
    );
    // Nothing was recorded: the agent is still uncalibrated.
    let stored = online_last_hour(&app).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].measured_class, None);
}

async fn the_figures_an_agent_reports_are_ignored_for_what_the_controller_timed(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let key = app.volunteer("volunteer");
    let source = Ipv4Addr::new(127, 0, 0, 2);
    let token = app.uncalibrated_agent(source, &key, "fibre").await;
    // A cheater on a dial-up line makes the calibration's requests as an honest agent
    // does (so they are timed), then reports a line no fibre could match.
    let (_link, base) = link_to_controller(&app, ConnectionClass::Dialup).await;
    let http = TestApp::client_from(source);
    let own_view = calibrator(&http, &base, &token).measure().await.unwrap();
    assert!(own_view.rtt_us > 100_000, "{own_view:?}");
    let forged = json!({"rtt_us": 1, "down_bps": 1_000_000_000_000_000u64, "up_bps": 1_000_000_000_000_000u64,
                        "bytes_used": own_view.bytes_used});
    let response = http
        .post(base.join("/api/v1/agents/calibration").unwrap())
        .bearer_auth(&token)
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ack: lastmile_protocol::calibration::CalibrationAck = response.json().await.unwrap();
    assert_eq!(ack.measured_class, ConnectionClass::Dialup, "{ack:?}");
    assert!(ack.mismatch);

    let stored = online_last_hour(&app).await;
    let down = stored[0].down_bps.unwrap();
    let rtt_ms = stored[0].rtt_us.unwrap() / 1000;
    assert!(
        (30_000..=70_000).contains(&down),
        "timed downstream {down} bit/s"
    );
    assert!((140..=290).contains(&rtt_ms), "timed RTT {rtt_ms} ms");
}
