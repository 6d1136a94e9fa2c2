//! The report page's last hour, drawn in 5-minute slots from the raw results (hour
//! cells would give each class one dot), on both backends.

use std::net::Ipv4Addr;

use diesel::RunQueryDsl;
use lastmile_domain::clock::now_us;
use lastmile_domain::recent::{self, SLOT_US};
use serde_json::json;

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{target_site, TestApp, TestDb};

per_backend!(the_last_hour_is_drawn_in_five_minute_slots_from_raw_results);

async fn the_last_hour_is_drawn_in_five_minute_slots_from_raw_results(db: TestDb) {
    let app = TestApp::quiet(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let agent = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "cable", 1)
        .await;
    let check = app
        .site_check(&owner, &site, site.origin(), json!({"agents_per_run": 1}))
        .await;
    // Three runs, their results moved 50, 30 and 10 minutes back.
    let now = now_us();
    let minutes = |m: i64| m * 60 * 1_000_000;
    for (total, ago) in [(40_000, 50), (60_000, 30), (80_000, 10)] {
        let task = app.run_and_lease(&owner, &check, &agent).await["assignment_id"].clone();
        let (status, ack) = app.submit(&agent, submission(&task, total)).await;
        assert_eq!(status, 200, "{ack}");
        let at = now - minutes(ago);
        diesel::sql_query(format!(
            "UPDATE results SET received_at = {at} WHERE assignment_id = '{}'",
            task.as_str().unwrap()
        ))
        .execute(&mut *app.db().conn().unwrap())
        .unwrap();
    }
    let slots = recent::slots(
        &mut app.db().conn().unwrap(),
        &check,
        now - minutes(60),
        now + 1,
    )
    .unwrap();
    assert_eq!(slots.len(), 3, "{slots:?}");
    for (slot, (ttfb, ago)) in slots
        .iter()
        .zip([(20_000u64, 50), (30_000, 30), (40_000, 10)])
    {
        assert_eq!(slot.class, Some(lastmile_protocol::ConnectionClass::Cable));
        assert_eq!(
            slot.start,
            (now - minutes(ago)).div_euclid(SLOT_US) * SLOT_US
        );
        assert_eq!(slot.samples, 1);
        // Within HdrHistogram's precision (3 significant digits).
        assert!(slot.ttfb_p50.abs_diff(ttfb) <= ttfb / 500, "{slot:?}");
    }
    // The page draws a dot per slot for each class.
    let cookie = app.owner_session(&owner).await;
    let html = app
        .dashboard_page(&cookie, &format!("/app/checks/{check}/report?window=1h"))
        .await;
    assert!(html.contains("5-minute slots"), "{html}");
    let chart = html
        .split("id=\"ttfb-p50\"")
        .nth(1)
        .and_then(|rest| rest.split("</figure>").next())
        .unwrap();
    assert_eq!(chart.matches("<circle").count(), 3, "{chart}");
    app.controller.stop().await.unwrap();
}
