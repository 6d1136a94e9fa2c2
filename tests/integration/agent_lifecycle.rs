//! A real agent against a real controller: enrols once, keeps its credentials, measures
//! what it leases, and delivers results that waited in its spool across a restart.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use lastmile_agent::limits::VolunteerLimits;
use lastmile_agent::measure::EngineConfig;
use lastmile_agent::runner::{AgentSettings, Credentials};
use lastmile_agent::spool::Spool;
use lastmile_protocol::{AgentLimits, ConnectionClass, Measurement, ResultSubmission, Timings};
use lastmile_testbed::site::TargetSite;
use serde_json::json;
use tokio::sync::watch;

use crate::per_backend;
use crate::support::{count, target_site, TestApp, TestDb};

per_backend!(
    agent_restart_reuses_its_credentials_and_delivers_its_spool,
    an_agent_past_its_daily_bytes_pauses_and_is_left_out_of_new_runs,
);

/// A real agent's settings: local-test mode from 127.0.0.2, declaring cable, with
/// calibration off so that the declared class stands; the test fixture marks it
/// calibrated as declared once it has enrolled (runs plan only calibrated agents).
pub(crate) fn settings(app: &TestApp, key: Option<String>, state_dir: &Path) -> AgentSettings {
    crate::support::calibrate_when_enrolled(app, state_dir);
    let source = Ipv4Addr::new(127, 0, 0, 2);
    agent_settings(app.base.parse().unwrap(), key, state_dir, source)
}

/// The settings of a real agent of `controller` in local-test mode, sending from
/// `source`: "kitchen-pc", declaring cable, two measurements at once, calibration off.
pub(crate) fn agent_settings(
    controller: url::Url,
    key: Option<String>,
    state_dir: &Path,
    source: Ipv4Addr,
) -> AgentSettings {
    AgentSettings {
        controller,
        enrol_key: key,
        state_dir: state_dir.to_path_buf(),
        name: "kitchen-pc".into(),
        declared_class: ConnectionClass::Cable,
        limits: AgentLimits { max_concurrent: 2 },
        engine: EngineConfig {
            allow_private: true,
            source_addr: Some(IpAddr::V4(source)),
            ..EngineConfig::default()
        },
        idle_poll: Duration::from_millis(100),
        // Calibration is tested through emulated links (calibration.rs, the demo); here
        // the declared class must stand.
        calibration_url: None,
        calibration_bytes_per_day: 0,
        volunteer: VolunteerLimits::default(),
        spool_max_results: 100,
        path_trace: true,
    }
}

/// Runs an agent until the returned sender is told to stop.
pub(crate) fn spawn_agent(
    settings: AgentSettings,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(lastmile_agent::run(settings, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    (stop, task)
}

/// A check of the site's home page for one agent a run (the site verified first).
async fn home_page_check(app: &TestApp, owner: &str, site: &TargetSite) -> String {
    let home = format!("{}/", site.origin());
    let selection = json!({"agents_per_run": 1});
    app.site_check(owner, site, home, selection).await
}

/// Waits (20 s at most) until `check` holds.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `n` agents have heartbeated and are calibrated.
pub(crate) async fn agents_online(app: &TestApp, n: i64, what: &str) {
    eventually(what, || {
        count(
            app,
            "SELECT COUNT(*) AS n FROM agents WHERE last_heartbeat_at IS NOT NULL AND calibrated_at IS NOT NULL",
        ) == n
    })
    .await;
}

async fn agent_restart_reuses_its_credentials_and_delivers_its_spool(db: TestDb) {
    // Without long polls: an agent stopped while its lease waits at the controller
    // leaves that lease waiting there until its time is up, and the run this test makes
    // next would be leased to it (then expire and be offered again; see ARCHITECTURE.md,
    // "Serving agents at scale"). What this test is about is what a restart keeps.
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.heartbeat_interval_s = 1;
        c.max_lease_wait_s = 0;
    })
    .await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();

    // First start: enrols, heartbeats.
    let (stop, task) = spawn_agent(settings(&app, Some(key), state.path()));
    agents_online(&app, 1, "the agent is online").await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let creds: Credentials =
        serde_json::from_slice(&std::fs::read(state.path().join("credentials.json")).unwrap())
            .unwrap();

    // While it is down, a run is leased in its name and its result waits in the spool
    // (as if the agent had measured and then lost the controller).
    let check = home_page_check(&app, &owner, &site).await;
    app.ask_run(&owner, &check).await;
    let (_, lease) = app
        .lease_from(Ipv4Addr::new(127, 0, 0, 2), &creds.token, 1)
        .await;
    let assignment_id = lease["tasks"][0]["assignment_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let spool = Spool::open(state.path().join("spool"), 100).unwrap();
    spool
        .put(&ResultSubmission {
            assignment_id,
            started_at: chrono::Utc::now(),
            measurement: Measurement {
                status: Some(200),
                bytes: 8192,
                error: None,
                timings_us: Timings {
                    dns: 5,
                    connect: 50,
                    tls: 0,
                    ttfb: 20_000,
                    transfer: 1_000,
                    total: 21_100,
                },
                ..Measurement::default()
            },
        })
        .unwrap();

    // Second start: no enrolment key needed, the spooled result goes out, and new work
    // is measured for real.
    let (stop, task) = spawn_agent(settings(&app, None, state.path()));
    eventually("the spooled result is stored", || {
        count(&app, "SELECT COUNT(*) AS n FROM results") == 1
    })
    .await;
    eventually("the spool is empty", || spool.pending().unwrap().is_empty()).await;
    app.ask_run(&owner, &check).await;
    eventually("the new run is measured", || {
        count(&app, "SELECT COUNT(*) AS n FROM results") == 2
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();

    assert_eq!(
        count(&app, "SELECT COUNT(*) AS n FROM agents"),
        1,
        "the restart did not enrol again"
    );
    let (_, report) = app
        .report(&owner, &check, "group_by=connection_class,country")
        .await;
    let row = &report["rows"][0];
    let flags = count(&app, "SELECT COUNT(*) AS n FROM result_flags");
    let late = count(&app, "SELECT COUNT(*) AS n FROM results WHERE late");
    assert_eq!(
        row["samples"], 2,
        "{flags} result(s) flagged, {late} late: {report}"
    );
    assert_eq!(row["group"]["country"], "DE");
    assert_eq!(row["group"]["connection_class"], "cable");
    app.controller.stop().await.unwrap();
}

async fn an_agent_past_its_daily_bytes_pauses_and_is_left_out_of_new_runs(db: TestDb) {
    let app = TestApp::quiet_for_real_agents(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();
    // One byte a day: the first measurement spends it.
    let mut limited = settings(&app, Some(key), state.path());
    limited.volunteer.max_bytes_per_day = Some(1);
    let (stop, task) = spawn_agent(limited);
    agents_online(&app, 1, "the agent is online").await;

    let check = home_page_check(&app, &owner, &site).await;
    let (status, first) = app.ask_run(&owner, &check).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["eligible_agents"], 1);
    eventually("the first run is measured", || {
        count(&app, "SELECT COUNT(*) AS n FROM results") == 1
    })
    .await;
    // The agent tells the controller why it stops taking work...
    eventually("the agent reports itself paused", || {
        count(
            &app,
            "SELECT COUNT(*) AS n FROM agents WHERE paused_reason LIKE 'daily byte limit reached%'",
        ) == 1
    })
    .await;
    // ...so the next run does not count on it, and nothing more is measured.
    let (status, second) = app.ask_run(&owner, &check).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["eligible_agents"], 0, "{second}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM results"), 1);
    let usage: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.path().join("usage.json")).unwrap()).unwrap();
    assert!(usage["bytes"].as_u64().unwrap() > 1, "{usage}");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}
