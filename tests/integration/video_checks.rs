//! `video` checks end to end, both backends: the API takes one (and refuses the
//! sessions that do not fit), a real agent behind an emulated DSL line (16 Mbit/s)
//! plays the testbed's HLS stream (`lastmile_testbed::video`: a 2 Mbit/s and a 30
//! Mbit/s rendition of 1-second segments), and the report shows what a viewer would
//! have seen: the low rendition starts at once and plays through, the high one waits
//! for its start-up buffer and stalls, because the line carries half its bitrate. The
//! same video as a DASH presentation (an MPD) plays its low representation the same way,
//! and the live stream as a dynamic MPD from its live edge.

use lastmile_protocol::ConnectionClass;
use lastmile_testbed::video;
use serde_json::{json, Value};

use crate::lines::{class_row, figure, line_app, until, AgentOnLine};
use crate::per_backend;
use crate::support::{count, target_site, TestDb};

per_backend!(a_video_check_plays_what_the_line_carries_and_stalls_on_what_it_cannot);

async fn a_video_check_plays_what_the_line_carries_and_stalls_on_what_it_cannot(db: TestDb) {
    let app = line_app(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let site_id = app.verified_site(&owner, &site).await;
    // One agent on a DSL line (16 Mbit/s down, 40 ms), calibrated over it.
    let agent = AgentOnLine::start(&app, &site, ConnectionClass::Dsl).await;

    let url = format!("{}{}", site.origin(), video::MASTER_PATH);
    let check = |extra: Value| {
        let mut body = json!({"site_id": site_id, "url": url, "kind": "video",
                              "selection": {"agents_per_run": 1}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // Sessions that do not fit are refused, each saying why.
    for (extra, says) in [
        (json!({"video": {"play_ms": 500}}), "play_ms"),
        (json!({"video": {"play_ms": 200000}}), "play_ms"),
        (
            json!({"video": {"max_bitrate_kbps": 0}}),
            "max_bitrate_kbps",
        ),
        (json!({"video": {"playms": 2000}}), "playms"),
        (json!({"body_contains": "x"}), "body_contains"),
        (json!({"throughput": {"connections": 2}}), "throughput"),
        (json!({"kind": "http", "video": {"play_ms": 2000}}), "video"),
    ] {
        let (status, body) = app.post_check(&owner, check(extra.clone())).await;
        assert!(
            (400..500).contains(&status) && body.to_string().contains(says),
            "{extra} -> {status} {body}"
        );
    }

    // The low rendition (2 Mbit/s) and the highest (30 Mbit/s), 6 s of each.
    let objectives = json!([
        {"figure": "stall_time", "percentile": 90, "max_ms": 500},
        {"figure": "startup_delay", "percentile": 50, "max_ms": 3000},
    ]);
    let mut ids = Vec::new();
    for session in [
        json!({"play_ms": 6000, "max_bitrate_kbps": 5000}),
        json!({"play_ms": 6000}),
    ] {
        let (status, created) = app
            .post_check(
                &owner,
                check(json!({"video": session, "objectives": objectives})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["kind"], "video");
        assert_eq!(created["video"], session, "{created}");
        assert_eq!(created["timeout_ms"], 60000, "{created}");
        assert_eq!(created["price_per_result_minor"], 40, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
        let n = ids.len() as i64;
        until(&format!("session {n} is stored"), 90, async || {
            count(&app, "SELECT COUNT(*) AS n FROM results") == n
        })
        .await;
    }
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) AS n FROM results WHERE error_kind IS NULL AND flagged = false \
             AND figures LIKE '%stall_time%'"
        ),
        2,
        "both sessions played, unflagged, with their figures"
    );

    let mut rows = Vec::new();
    for id in &ids {
        rows.push(class_row(&app, &owner, id, 1).await);
    }
    let (low, high) = (&rows[0], &rows[1]);
    let (low_start, low_stall) = (
        figure(low, "startup_delay", 50),
        figure(low, "stall_time", 50),
    );
    let (high_start, high_stall) = (
        figure(high, "startup_delay", 50),
        figure(high, "stall_time", 50),
    );
    eprintln!(
        "dsl: low starts in {low_start} µs, stalls {low_stall} µs; high starts in {high_start} µs, stalls {high_stall} µs"
    );
    // 2.5 s of the low rendition is 625 kB: 0.3 s on the line.
    assert!(low_start < 2_000_000, "low start-up {low_start} µs");
    assert_eq!(low_stall, 0, "the low rendition plays through");
    // 2.5 s of the high one is three 3.75 MB segments: 5.6 s on the line; and each
    // further second of media takes 1.9 s to arrive.
    assert!(high_start > 4_000_000, "high start-up {high_start} µs");
    assert!(high_stall > 0, "the high rendition stalls");
    assert_eq!(low["objectives"][0]["met"], true, "{low}");
    assert_eq!(high["objectives"][0]["met"], false, "{high}");
    assert_eq!(high["objectives"][1]["met"], false, "{high}");

    // The same video on demand as DASH: the MPD's low representation, from its
    // initialisation segment, plays through like the HLS rendition; and the live stream
    // as DASH (a dynamic MPD timed by the site's clock) from its live edge. Each result
    // is stored unflagged with the figures of any session.
    let mut stored = 2;
    for (path, what) in [
        (video::DASH_PATH, "the DASH session"),
        (video::LIVE_DASH_PATH, "the live DASH session"),
    ] {
        let (status, created) = app
            .post_check(
                &owner,
                json!({"site_id": site_id, "url": format!("{}{path}", site.origin()),
                       "kind": "video", "selection": {"agents_per_run": 1},
                       "video": {"play_ms": 3000, "max_bitrate_kbps": 5000}}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        stored += 1;
        until(&format!("{what} is stored"), 90, async || {
            count(&app, "SELECT COUNT(*) AS n FROM results") == stored
        })
        .await;
        let row = class_row(&app, &owner, created["id"].as_str().unwrap(), 1).await;
        assert_eq!(
            count(
                &app,
                "SELECT COUNT(*) AS n FROM results WHERE error_kind IS NULL AND flagged = false \
                 AND figures LIKE '%stall_time%'"
            ),
            stored,
            "{what} played, unflagged: {row}"
        );
        if path == video::DASH_PATH {
            assert_eq!(figure(&row, "stall_time", 50), 0, "{row}");
            assert!(figure(&row, "startup_delay", 50) < 2_000_000, "{row}");
        }
    }

    agent.stop().await;
}
