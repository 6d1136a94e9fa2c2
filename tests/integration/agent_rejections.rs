//! A real agent and results the controller refuses: a refusal for good (4xx) moves the
//! result out of the spool into `rejected/` with the controller's answer, so that it is
//! not retried forever; 5xx, 401 and 429 keep it spooled for another attempt.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use lastmile_agent::runner::{AgentSettings, Credentials};
use lastmile_agent::spool::Spool;
use lastmile_protocol::{AgentLimits, Measurement, ResultSubmission, Timings};
use serde_json::json;
use uuid::Uuid;

use crate::agent_lifecycle::{agent_settings, settings, spawn_agent};
use crate::per_backend;
use crate::support::{TestApp, TestDb};

per_backend!(refused_results_move_to_rejected_with_the_controllers_reason);

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn result(remote_addr: &str) -> ResultSubmission {
    ResultSubmission {
        assignment_id: Uuid::new_v4(),
        started_at: chrono::Utc::now(),
        measurement: Measurement {
            status: Some(200),
            bytes: 1000,
            error: None,
            timings_us: Timings {
                dns: 10,
                connect: 100,
                tls: 0,
                ttfb: 20_000,
                transfer: 10_000,
                total: 40_000,
            },
            remote_addr: Some(remote_addr.to_owned()),
            ..Measurement::default()
        },
    }
}

/// A refused result kept in `rejected/` beside the spool, and the controller's answer.
fn rejected(state: &Path, id: Uuid) -> (ResultSubmission, serde_json::Value) {
    let read = |name: String| std::fs::read(state.join("rejected").join(name)).unwrap();
    (
        serde_json::from_slice(&read(format!("{id}.json"))).unwrap(),
        serde_json::from_slice(&read(format!("{id}.reason.json"))).unwrap(),
    )
}

/// How many results `rejected/` holds (reasons not counted).
fn rejected_count(state: &Path) -> usize {
    std::fs::read_dir(state.join("rejected")).map_or(0, |dir| {
        dir.filter(|e| {
            let name = e.as_ref().unwrap().file_name().into_string().unwrap();
            name.ends_with(".json") && !name.ends_with(".reason.json")
        })
        .count()
    })
}

async fn refused_results_move_to_rejected_with_the_controllers_reason(db: TestDb) {
    let app = TestApp::quiet_for_real_agents(&db).await;
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();
    // Two results wait in the spool from an earlier life: one for an assignment the
    // controller never made (404), one with a NUL in the agent's own field (422).
    let spool = Spool::open(state.path().join("spool"), 100).unwrap();
    let unknown = result("127.0.0.1");
    let nul = result("127.0.0.1\u{0}");
    spool.put(&unknown).unwrap();
    spool.put(&nul).unwrap();

    let (stop, task) = spawn_agent(settings(&app, Some(key), state.path()));
    eventually(
        "the spool is empty and both results are in rejected/",
        || spool.is_empty().unwrap() && rejected_count(state.path()) == 2,
    )
    .await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();

    let (kept, reason) = rejected(state.path(), unknown.assignment_id);
    assert_eq!(kept, unknown);
    assert_eq!(
        (reason["status"].as_u64(), reason["error"].as_str()),
        (Some(404), Some("assignment_not_found"))
    );
    let (kept, reason) = rejected(state.path(), nul.assignment_id);
    assert_eq!(kept, nul);
    assert_eq!(
        (reason["status"].as_u64(), reason["error"].as_str()),
        (Some(422), Some("invalid_text"))
    );
    assert_eq!(
        reason["message"],
        "measurement.remote_addr contains a NUL character"
    );
    assert_eq!(
        crate::support::count(&app, "SELECT COUNT(*) AS n FROM results"),
        0
    );
}

/// Submission attempts a fake controller saw, per assignment.
type Attempts = Arc<Mutex<HashMap<Uuid, usize>>>;

/// A controller stand-in on loopback: heartbeats and leases succeed (no work), and
/// each result gets the status `answers` assigns to its assignment.
async fn fake_controller(answers: HashMap<Uuid, u16>) -> (SocketAddr, Attempts) {
    let attempts: Attempts = Arc::default();
    let seen = attempts.clone();
    let answers = Arc::new(answers);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let (seen, answers) = (seen.clone(), answers.clone());
        App::new()
            .route(
                "/api/v1/agents/heartbeat",
                web::post().to(|| async {
                    HttpResponse::Ok().json(json!({
                        "server_time": chrono::Utc::now(), "location": {}, "heartbeat_interval_s": 1
                    }))
                }),
            )
            .route(
                "/api/v1/agents/lease",
                web::post().to(|| async { HttpResponse::Ok().json(json!({"tasks": []})) }),
            )
            .route(
                "/api/v1/results",
                web::post().to(move |body: web::Json<ResultSubmission>| {
                    let (seen, answers) = (seen.clone(), answers.clone());
                    async move {
                        let id = body.assignment_id;
                        *seen.lock().unwrap().entry(id).or_default() += 1;
                        let status = answers.get(&id).copied().unwrap_or(500);
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                            .json(json!({"error": "try_later", "message": format!("answered {status}")}))
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (addr, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_the_controller_may_take_later_stay_in_the_spool() {
    let (unavailable, auth, limited) = (
        result("127.0.0.1"),
        result("127.0.0.1"),
        result("127.0.0.1"),
    );
    let answers = HashMap::from([
        (unavailable.assignment_id, 503),
        (auth.assignment_id, 401),
        (limited.assignment_id, 429),
    ]);
    let (addr, attempts) = fake_controller(answers).await;
    let state = tempfile::tempdir().unwrap();
    let controller: url::Url = format!("http://{addr}").parse().unwrap();
    std::fs::write(
        state.path().join("credentials.json"),
        serde_json::to_vec(&Credentials {
            agent_id: Uuid::new_v4(),
            token: "agent-token".into(),
            controller: controller.clone(),
        })
        .unwrap(),
    )
    .unwrap();
    let spool = Spool::open(state.path().join("spool"), 100).unwrap();
    for r in [&unavailable, &auth, &limited] {
        spool.put(r).unwrap();
    }
    let settings = AgentSettings {
        limits: AgentLimits { max_concurrent: 1 },
        ..agent_settings(controller, None, state.path(), Ipv4Addr::LOCALHOST)
    };
    let (stop, task) = spawn_agent(settings);
    // Each result is sent again after the next heartbeat: two attempts each show that
    // none was given up on.
    eventually("every result was sent twice", || {
        let seen = attempts.lock().unwrap();
        [&unavailable, &auth, &limited]
            .iter()
            .all(|r| seen.get(&r.assignment_id).copied().unwrap_or(0) >= 2)
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(spool.len().unwrap(), 3, "all three still wait in the spool");
    assert_eq!(rejected_count(state.path()), 0);
}
