//! Time online from heartbeats, and the public leaderboard built from it and from the
//! measurements agents delivered. Both backends.

use std::net::Ipv4Addr;
use std::time::Duration;

use diesel::RunQueryDsl;
use serde_json::json;

use crate::per_backend;
use crate::support::{count, TestApp, TestDb};

per_backend!(
    heartbeats_within_the_online_window_count_as_time_online,
    the_leaderboard_ranks_volunteers_by_points_as_json_and_csv,
);

async fn beat(app: &TestApp, source: Ipv4Addr, token: &str) {
    let (status, body) = app
        .call_from(
            source,
            "POST",
            "/api/v1/agents/heartbeat",
            Some(token),
            Some(json!({"declared_class": "dsl", "version": "test", "limits": {"max_concurrent": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn online_seconds(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT CAST(COALESCE(SUM(seconds), 0) AS BIGINT) AS n FROM agent_uptime",
    )
}

async fn heartbeats_within_the_online_window_count_as_time_online(db: TestDb) {
    // Online window of 2 s: a heartbeat more than 2 s after the last means "was offline".
    let app = TestApp::start_with(&db, |c| c.online_window_s = 2).await;
    let key = app.volunteer("volunteer");
    let source = Ipv4Addr::new(127, 0, 0, 2);
    let token = app.agent(source, &key, "dsl", 1).await;
    assert_eq!(
        online_seconds(&app),
        0,
        "the first heartbeat starts the clock"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    beat(&app, source, &token).await;
    // The controller holds a beat that changed nothing in memory until its next flush.
    app.flush_heartbeats();
    assert_eq!(online_seconds(&app), 1);
    // A gap longer than the window is not time online.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    beat(&app, source, &token).await;
    app.flush_heartbeats();
    assert_eq!(online_seconds(&app), 1);
}

async fn the_leaderboard_ranks_volunteers_by_points_as_json_and_csv(db: TestDb) {
    let app = TestApp::start(&db).await;
    let ada = app.volunteer("Ada");
    let bob = app.volunteer("Bob");
    let cy = app.volunteer("Cy");
    app.agent(Ipv4Addr::new(127, 0, 0, 2), &ada, "dsl", 1).await;
    app.agent(Ipv4Addr::new(127, 0, 0, 3), &bob, "dsl", 1).await;
    app.agent(Ipv4Addr::new(127, 0, 0, 5), &cy, "dsl", 1).await;
    // Two hours online for Ada's agent, one for Bob's and Cy's, long ago and this week.
    let today = lastmile_domain::clock::now_us().div_euclid(86_400_000_000);
    {
        let mut conn = app.db().conn().unwrap();
        for (name, day, seconds) in [
            ("Ada", today, 7_200),
            ("Bob", today, 3_600),
            ("Cy", today, 3_600),
            ("Bob", today - 400, 36_000),
        ] {
            diesel::sql_query(format!(
                "INSERT INTO agent_uptime (agent_id, day, seconds) \
                 SELECT a.id, {day}, {seconds} FROM agents a JOIN volunteers v ON v.id = a.volunteer_id \
                 WHERE v.name = '{name}'"
            ))
            .execute(&mut conn)
            .unwrap();
        }
    }
    let (status, week) = app.call("GET", "/api/v1/leaderboard", None, None).await;
    assert_eq!(status, 200, "{week}");
    assert_eq!(week["period"], "week");
    let ranks: Vec<(String, u64, u64)> = week["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["volunteer"].as_str().unwrap().to_owned(),
                e["rank"].as_u64().unwrap(),
                e["points"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ranks,
        vec![
            ("Ada".into(), 1, 20),
            ("Bob".into(), 2, 10),
            ("Cy".into(), 2, 10)
        ]
    );
    // All time counts Bob's old ten hours too.
    let (_, all) = app
        .call("GET", "/api/v1/leaderboard?period=all_time", None, None)
        .await;
    assert_eq!(all["entries"][0]["volunteer"], "Bob", "{all}");
    assert_eq!(all["entries"][0]["points"], 110, "{all}");
    // CSV, for spreadsheets.
    let answer = reqwest::get(format!("{}/api/v1/leaderboard?format=csv", app.base))
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["content-disposition"],
        "attachment; filename=\"lastmile-leaderboard-week.csv\""
    );
    let csv = answer.text().await.unwrap();
    assert!(csv.starts_with("rank,volunteer,points,"), "{csv}");
    assert!(csv.contains("\n1,Ada,20,2,0,0\n"), "{csv}");
    // A period that does not exist is named in the error.
    let (status, err) = app
        .call("GET", "/api/v1/leaderboard?period=month", None, None)
        .await;
    assert_eq!(status, 422);
    assert!(
        err["message"].as_str().unwrap().contains("\"month\""),
        "{err}"
    );
}
