//! Following a check live, on both backends: `GET /api/v1/checks/{id}/events` streams
//! Server-Sent Events over a real socket: each result as it is stored and each incident
//! as it opens; reconnecting with `Last-Event-ID` resumes without repeating or missing
//! an event. And a run's page reloads itself while the run is measuring.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{target_site, TestApp, TestDb};

per_backend!(a_check_is_followed_live_and_resumes_where_it_left_off);

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    name: String,
    data: Value,
}

/// Opens the check's event stream (from `last_id`, if any) and forwards its events.
async fn follow(
    app: &TestApp,
    owner: &str,
    check: &str,
    last_id: Option<&str>,
) -> mpsc::Receiver<Event> {
    let mut request = reqwest::Client::new()
        .get(format!("{}/api/v1/checks/{check}/events", app.base))
        .bearer_auth(owner);
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id);
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let (tx, rx) = mpsc::channel(100);
    let mut answer = answer;
    tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(chunk)) = answer.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = v.to_owned();
                    }
                }
                if !name.is_empty() {
                    let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if tx.send(Event { id, name, data }).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(15), events.recv())
        .await
        .expect("no event within 15 s")
        .expect("the stream ended")
}

async fn a_check_is_followed_live_and_resumes_where_it_left_off(db: TestDb) {
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.alert_interval_ms = 150;
    })
    .await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "cable", 1)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    // Alerts need a channel; this one is never reached in time to matter.
    let (_, channel) = app
        .call(
            "POST",
            "/api/v1/alert-channels",
            Some(&owner),
            Some(json!({"name": "hook", "kind": "slack", "url": "http://127.0.0.1:9/"})),
        )
        .await;
    let (status, rule) = app
        .call(
            "POST",
            &format!("/api/v1/checks/{check}/alert-rules"),
            Some(&owner),
            Some(
                json!({"kind": "availability_below", "threshold_percent": 99, "min_samples": 1,
                "channels": [channel["id"]]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{rule}");

    let cookie = app.owner_session(&owner).await;
    let mut events = follow(&app, &owner, &check, None).await;
    // A run measured: its result arrives as it is stored.
    let run = app.start_run(&owner, &check).await;
    let page = app
        .dashboard_page(&cookie, &format!("/app/checks/{check}/runs/{run}"))
        .await;
    let task = app.lease_when_offered(&agent, 1).await["tasks"][0]["assignment_id"].clone();
    let mut failing = submission(&task, 40_000);
    failing["measurement"]["status"] = Value::Null;
    failing["measurement"]["error"] = json!({"kind": "connect_refused", "message": "refused"});
    let (status, ack) = app.submit(&agent, failing).await;
    assert_eq!(status, 200, "{ack}");
    let first = next(&mut events).await;
    assert_eq!(first.name, "result", "{first:?}");
    assert_eq!(first.data["type"], "result");
    assert_eq!(first.data["run_id"], run.as_str());
    assert_eq!(first.data["result"]["assignment_id"], task);
    assert_eq!(first.data["result"]["error"]["kind"], "connect_refused");
    assert_eq!(first.data["result"]["connection_class"], "cable");
    // The failure opens an incident, which arrives too.
    let opened = next(&mut events).await;
    assert_eq!(opened.name, "incident", "{opened:?}");
    assert_eq!(opened.data["incident"]["state"], "open");
    assert!(
        opened.data["incident"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("Availability 0 %"),
        "{opened:?}"
    );
    drop(events);

    // Reconnecting from the last event id replays nothing, then goes on.
    let mut resumed = follow(&app, &owner, &check, Some(&opened.id)).await;
    let task = app.run_and_lease(&owner, &check, &agent).await["assignment_id"].clone();
    let (status, ack) = app.submit(&agent, submission(&task, 41_000)).await;
    assert_eq!(status, 200, "{ack}");
    let second = next(&mut resumed).await;
    assert_eq!(second.name, "result", "{second:?}");
    assert_eq!(second.data["result"]["assignment_id"], task);
    assert_eq!(second.data["result"]["status"], 200);

    // A run's page reloads itself while measuring, and not once it is finished.
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    let done = app
        .dashboard_page(&cookie, &format!("/app/checks/{check}/runs/{run}"))
        .await;
    assert!(!done.contains("http-equiv=\"refresh\""), "{done}");

    // Another owner's check, and no token, are refused before any stream.
    let stranger = app.owner("stranger");
    let answer = reqwest::Client::new()
        .get(format!("{}/api/v1/checks/{check}/events", app.base))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let answer = reqwest::get(format!("{}/api/v1/checks/{check}/events", app.base))
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    drop(resumed);
    app.controller.stop().await.unwrap();
}
