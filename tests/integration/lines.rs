//! One real agent behind an emulated last-mile line, for the tests of the kinds that
//! measure the line itself (throughput loads, video sessions, udp streams): the agent
//! reaches the site and the controller through `lastmile_testbed::link` relays of one
//! class (and a reflector through a `udp_link` relay), so it calibrates as that class
//! and measures what that line carries.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use lastmile_agent::limits::VolunteerLimits;
use lastmile_agent::measure::{ConnectTo, EngineConfig};
use lastmile_agent::runner::AgentSettings;
use lastmile_protocol::{AgentLimits, ConnectionClass};
use lastmile_testbed::link::{Link, LinkProfile};
use lastmile_testbed::site::TargetSite;
use lastmile_testbed::udp_link::{Impairment, UdpLink};
use serde_json::Value;
use tokio::sync::watch;

use crate::support::{count, TestApp, DONE};

/// Waits until `done`, checking every 100 ms, for at most `secs` seconds.
pub async fn until(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A report row's pNN of a figure, in its unit.
pub fn figure(row: &Value, name: &str, percentile: u64) -> u64 {
    row["figures"][name]["percentiles"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["percentile"] == percentile))
        .and_then(|p| p["value"].as_u64())
        .unwrap_or_else(|| panic!("no {name} p{percentile} in {row}"))
}

/// A controller for tests of an agent on a line: heartbeats every second (so the agent
/// calibrates and is planned at once), leases and runs long enough for a slow line's
/// measurement.
pub async fn line_app(db: &crate::support::TestDb) -> TestApp {
    TestApp::start_with(db, |c| {
        c.heartbeat_interval_s = 1;
        c.lease_s = 60;
        c.run_deadline_s = 120;
    })
    .await
}

/// Runs the check `id` `runs` times (its first run is the one made when it was created)
/// and waits until each run's one result is stored (the test's only results).
pub async fn run_and_wait(app: &TestApp, owner: &str, id: &str, runs: i64) {
    let runs_path = format!("/api/v1/checks/{id}/runs");
    for n in 0..runs {
        if n > 0 {
            let (status, run) = app.call("POST", &runs_path, Some(owner), None).await;
            assert_eq!(status, 201, "{run}");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while count(app, "SELECT COUNT(*) AS n FROM results") != n + 1 {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until result {} is stored; {}",
                n + 1,
                where_the_work_is(app)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where a test's work stands, for a timeout's message: the runs, their assignments by
/// state, and whether the agents calibrated (runs plan only calibrated agents).
fn where_the_work_is(app: &TestApp) -> String {
    let n = |sql: &str| count(app, &format!("SELECT COUNT(*) AS n FROM {sql}"));
    let states = [
        ("pending", "a.state = 'pending'".to_owned()),
        ("leased", format!("a.state = 'leased' AND NOT {DONE}")),
        ("done", DONE.to_owned()),
        ("expired", "a.state = 'expired'".to_owned()),
    ]
    .map(|(s, sql)| format!("{s} {}", n(&format!("assignments a WHERE {sql}"))))
    .join(", ");
    format!(
        "runs {}, assignments: {states}; agents {} of which calibrated {}; results {}",
        n("runs"),
        n("agents"),
        n("agents WHERE calibrated_at IS NOT NULL"),
        n("results")
    )
}

/// The first row of the check's report by connection class, once it counts `samples`.
pub async fn class_row(app: &TestApp, owner: &str, id: &str, samples: u64) -> Value {
    let mut report = Value::Null;
    until("the report counts the results", 30, async || {
        let (status, body) = app
            .call(
                "GET",
                &format!("/api/v1/checks/{id}/report?group_by=connection_class"),
                Some(owner),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        report = body;
        report["rows"][0]["samples"] == samples
    })
    .await;
    report["rows"][0].clone()
}

/// Asserts that the check's CSV report by class has each of `columns`.
pub async fn assert_csv_columns(app: &TestApp, owner: &str, id: &str, columns: &[&str]) {
    let (status, csv) = app
        .call(
            "GET",
            &format!("/api/v1/checks/{id}/report?group_by=connection_class&format=csv"),
            Some(owner),
            None,
        )
        .await;
    assert_eq!(status, 200, "{csv}");
    let header = csv
        .as_str()
        .and_then(|c| c.lines().next())
        .unwrap_or_default();
    for column in columns {
        assert!(
            header.split(',').any(|c| c == *column),
            "{column} in {header}"
        );
    }
}

/// The check's latest run's id and its results, as the API lists them.
pub async fn latest_run_results(app: &TestApp, owner: &str, id: &str) -> (String, Value) {
    let runs_path = format!("/api/v1/checks/{id}/runs");
    let (_, runs) = app.call("GET", &runs_path, Some(owner), None).await;
    let runs = runs
        .as_array()
        .or_else(|| runs["runs"].as_array())
        .unwrap_or_else(|| panic!("{runs}"));
    let run = runs[0]["id"].as_str().unwrap().to_owned();
    let (status, results) = app
        .call(
            "GET",
            &format!("{runs_path}/{run}/results"),
            Some(owner),
            None,
        )
        .await;
    assert_eq!(status, 200, "{results}");
    (run, results)
}

/// A running agent on its line; [`AgentOnLine::stop`] ends it.
pub struct AgentOnLine {
    stop: watch::Sender<bool>,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
    _links: [Link; 2],
    _udp: Option<UdpLink>,
    _state: tempfile::TempDir,
}

impl AgentOnLine {
    /// Enrols an agent of a new volunteer on a `class` line to `site` (one
    /// measurement at a time), and waits until it has calibrated as that class.
    pub async fn start(app: &TestApp, site: &TargetSite, class: ConnectionClass) -> AgentOnLine {
        AgentOnLine::start_reaching(app, site, class, None).await
    }

    /// [`AgentOnLine::start`], with the agent's datagrams to `reflector` going through a
    /// UDP line of the same class with `impairment` (jitter, loss).
    pub async fn start_reaching(
        app: &TestApp,
        site: &TargetSite,
        class: ConnectionClass,
        reflector: Option<(SocketAddr, Impairment)>,
    ) -> AgentOnLine {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let profile = LinkProfile::for_class(class);
        let udp = match reflector {
            Some((addr, impairment)) => Some((
                addr,
                UdpLink::start(any_port, addr, profile, impairment, 1)
                    .await
                    .unwrap(),
            )),
            None => None,
        };
        let to_site = Link::start(any_port, site.addr(), profile).await.unwrap();
        let to_controller = Link::start(any_port, app.controller.addr, profile)
            .await
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let settings = AgentSettings {
            controller: app.base.parse().unwrap(),
            enrol_key: Some(app.volunteer("Ada")),
            state_dir: state.path().join("agent"),
            name: format!("ada-{class}"),
            declared_class: class,
            limits: AgentLimits { max_concurrent: 1 },
            engine: EngineConfig {
                allow_private: true,
                source_addr: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
                connect_to: std::iter::once(ConnectTo {
                    host: site.addr().ip().to_string(),
                    port: site.addr().port(),
                    addr: to_site.addr(),
                })
                .chain(udp.as_ref().map(|(reflector, link)| ConnectTo {
                    host: reflector.ip().to_string(),
                    port: reflector.port(),
                    addr: link.addr(),
                }))
                .collect(),
                ..EngineConfig::default()
            },
            idle_poll: Duration::from_millis(200),
            calibration_url: Some(format!("http://{}", to_controller.addr()).parse().unwrap()),
            calibration_bytes_per_day: 20 * 1024 * 1024,
            volunteer: VolunteerLimits::default(),
            spool_max_results: 100,
            path_trace: false,
        };
        let (stop, stopped) = watch::channel(false);
        let agent = tokio::spawn(lastmile_agent::run(settings, async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        }));
        until("the agent has calibrated its line", 60, async || {
            count(
                app,
                &format!("SELECT COUNT(*) AS n FROM agents WHERE measured_class = '{class}'"),
            ) == 1
        })
        .await;
        AgentOnLine {
            stop,
            agent,
            _links: [to_site, to_controller],
            _udp: udp.map(|(_, link)| link),
            _state: state,
        }
    }

    /// Stops the agent (waiting up to 10 s for it to end).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.agent).await;
    }
}
