//! Alerts end to end over real sockets, on both backends: an owner makes a signed
//! webhook channel and a Slack-compatible one (both pointing at a real HTTP receiver),
//! puts rules on a check, agents report a line class failing while another succeeds;
//! incidents open once, are delivered (a failing endpoint retried with backoff, the
//! same delivery id and signature each time), listed by the API, and resolve with a
//! message when the failures leave the window.

use std::net::Ipv4Addr;
use std::time::Duration;

use diesel::RunQueryDsl;
use lastmile_domain::alert_delivery::signature;
use lastmile_testbed::hooks::{HookReceiver, Received};
use serde_json::{json, Value};

use crate::leasing::submission;
use crate::per_backend;
use crate::support::{target_site, TestApp, TestDb};

per_backend!(
    incidents_open_once_are_delivered_signed_and_retried_and_resolve_with_a_message,
    a_run_without_eligible_agents_alerts_and_channels_refuse_what_they_cannot_send_to,
    email_alerts_reach_a_real_smtp_server,
);

/// A real SMTP server: Python's aiosmtpd (installed by `scripts/setup.sh`), keeping what
/// it receives in a maildir.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/smtp-venv.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .unwrap();
        let venv = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let python = format!("{venv}/bin/python");
        assert!(
            std::path::Path::new(&python).exists(),
            "no aiosmtpd venv at {venv}: run scripts/setup.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = SmtpServer { child, port, dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("aiosmtpd did not listen on {port}");
    }

    /// The messages received so far, raw.
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("mail/new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }
}

/// A stored message with its headers unfolded and its quoted-printable body decoded.
fn readable(raw: &str) -> String {
    let text = raw
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("=\n", "");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 1..i + 3).unwrap_or("--"), 16) {
            Ok(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 3..];
            }
            Err(_) => {
                out.push('=');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const WAIT: Duration = Duration::from_secs(20);

async fn alerting_app(db: &TestDb) -> TestApp {
    TestApp::start_with(db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.alert_interval_ms = 150;
        c.alert_retry_ms = 200;
    })
    .await
}

async fn post(app: &TestApp, owner: &str, path: &str, body: Value) -> Value {
    let (status, answer) = app.call("POST", path, Some(owner), Some(body)).await;
    assert_eq!(status, 201, "{path}: {answer}");
    answer
}

fn events(got: &[Received], path: &str) -> Vec<Value> {
    got.iter()
        .filter(|r| r.path == path && r.answered == 200)
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

/// The webhook deliveries to `path` of `event` received with a 200, as (body, request).
fn delivered<'a>(got: &'a [Received], path: &str, event: &str) -> Vec<(Value, &'a Received)> {
    got.iter()
        .filter(|r| r.path == path && r.answered == 200)
        .map(|r| (serde_json::from_str::<Value>(&r.body).unwrap(), r))
        .filter(|(b, _)| b["type"] == event)
        .collect()
}

async fn incidents_open_once_are_delivered_signed_and_retried_and_resolve_with_a_message(
    db: TestDb,
) {
    let app = alerting_app(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let hooks = HookReceiver::start().await.unwrap();
    // Berlin on DSL, and another country on cable.
    let dsl = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let cable = app
        .agent(Ipv4Addr::new(127, 0, 0, 3), &key, "cable", 1)
        .await;
    let site_id = app.verified_site(&owner, &site).await;
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "Shop home",
                "selection": {"agents_per_run": 2}}),
        )
        .await;
    let check = check["id"].as_str().unwrap().to_owned();

    // The on-call endpoint fails twice before it takes its first delivery.
    hooks.answer_next("/hook", &[500, 503]);
    let webhook = post(
        &app,
        &owner,
        "/api/v1/alert-channels",
        json!({"name": "on-call", "kind": "webhook", "url": hooks.url("/hook")}),
    )
    .await;
    let secret = webhook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{webhook}");
    let slack = post(
        &app,
        &owner,
        "/api/v1/alert-channels",
        json!({"name": "#ops", "kind": "slack", "url": hooks.url("/slack")}),
    )
    .await;
    assert!(slack.get("secret").is_none(), "{slack}");
    // The secret is shown once.
    let (_, channels) = app.get("/api/v1/alert-channels", &owner).await;
    assert_eq!(channels.as_array().unwrap().len(), 2);
    assert!(channels
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.get("secret").is_none()));

    // Four runs: the DSL line fails each time, cable succeeds.
    for _ in 0..4 {
        app.start_run(&owner, &check).await;
        for (agent, fails) in [(&dsl, true), (&cable, false)] {
            let lease = app.lease_when_offered(agent, 1).await;
            let task = lease["tasks"][0]["assignment_id"].clone();
            let mut result = submission(&task, 40_000);
            if fails {
                result["measurement"]["status"] = Value::Null;
                result["measurement"]["error"] =
                    json!({"kind": "connect_timeout", "message": "no answer in 10 s"});
            }
            let (status, ack) = app.submit(agent, result).await;
            assert_eq!(status, 200, "{ack}");
        }
    }

    // Rules made once the failures are in, so that each incident opens on all of them.
    let segments = post(
        &app,
        &owner,
        "/api/v1/alert-channels",
        json!({"name": "network team", "kind": "webhook", "url": hooks.url("/segments")}),
    )
    .await;
    let rules = format!("/api/v1/checks/{check}/alert-rules");
    let availability = post(
        &app,
        &owner,
        &rules,
        json!({"kind": "availability_below", "threshold_percent": 90, "min_samples": 4,
            "channels": [webhook["id"], slack["id"]]}),
    )
    .await;
    assert_eq!(availability["window_s"], 900);
    post(
        &app,
        &owner,
        &rules,
        json!({"kind": "segment_failing", "min_samples": 2, "channels": [segments["id"]]}),
    )
    .await;

    // Both rules fire: one incident each, delivered once each.
    let got = hooks
        .wait_for(WAIT, |got| {
            delivered(got, "/hook", "incident.opened").len() == 1
                && delivered(got, "/segments", "incident.opened").len() == 1
                && !events(got, "/slack").is_empty()
        })
        .await;
    let mut opened = delivered(&got, "/hook", "incident.opened");
    opened.extend(delivered(&got, "/segments", "incident.opened"));
    assert_eq!(opened.len(), 2, "{got:#?}");
    let summaries: Vec<&str> = opened
        .iter()
        .map(|(b, _)| b["incident"]["summary"].as_str().unwrap())
        .collect();
    assert!(
        summaries.contains(
            &"Availability 50 % over the last 15 min (4 of 8 measurements failed), below 90 %"
        ),
        "{summaries:?}"
    );
    let segment = summaries
        .iter()
        .find(|s| s.starts_with("Failing in "))
        .unwrap();
    assert!(
        segment.contains("dsl (0 % of 4 succeeded; the others 100 % of 4)"),
        "{segment}"
    );
    let secrets = [
        secret.clone(),
        segments["secret"].as_str().unwrap().to_owned(),
    ];
    for ((body, request), secret) in opened.iter().zip(&secrets) {
        assert_eq!(body["check"]["name"], "Shop home");
        assert_eq!(body["incident"]["state"], "open");
        // Signed over the exact body, with the id the body carries.
        assert_eq!(
            request.headers["lastmile-signature"],
            signature(secret, request.body.as_bytes())
        );
        assert_eq!(
            request.headers["lastmile-delivery"],
            body["id"].as_str().unwrap()
        );
        assert_eq!(request.headers["lastmile-event"], "incident.opened");
    }
    // The first delivery was refused twice and retried with the same id and bytes.
    let first = got.iter().find(|r| r.path == "/hook").unwrap();
    assert_eq!(first.answered, 500);
    let attempts: Vec<&Received> = got
        .iter()
        .filter(|r| r.headers.get("lastmile-delivery") == first.headers.get("lastmile-delivery"))
        .collect();
    assert_eq!(
        attempts.iter().map(|r| r.answered).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    assert!(attempts.iter().all(|r| r.body == first.body));
    // Slack gets words, not the event.
    let slack_text = events(&got, "/slack")[0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        slack_text,
        "Incident opened on Shop home: Availability 50 % over the last 15 min (4 of 8 measurements failed), below 90 %"
    );
    // The webhook channel's log shows the attempts.
    let (status, log) = app
        .get(
            &format!(
                "/api/v1/alert-channels/{}/deliveries",
                webhook["id"].as_str().unwrap()
            ),
            &owner,
        )
        .await;
    assert_eq!(status, 200, "{log}");
    let retried = log
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == first.headers["lastmile-delivery"].as_str())
        .unwrap();
    assert_eq!(retried["state"], "delivered", "{log}");
    assert_eq!(retried["attempts"], 3);
    assert_eq!(retried["last_status"], 200);

    // The API lists the two open incidents; more passes open nothing more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, open) = app
        .get(
            &format!("/api/v1/checks/{check}/incidents?state=open"),
            &owner,
        )
        .await;
    assert_eq!(status, 200, "{open}");
    assert_eq!(open.as_array().unwrap().len(), 2, "{open}");
    let got = hooks.received();
    assert_eq!(delivered(&got, "/hook", "incident.opened").len(), 1);
    assert_eq!(delivered(&got, "/segments", "incident.opened").len(), 1);

    // The results so far leave the window (as if received two hours ago), and the line
    // recovers.
    {
        let mut conn = app.db().conn().unwrap();
        diesel::sql_query(format!(
            "UPDATE results SET received_at = received_at - 7200000000 WHERE check_id = '{check}'"
        ))
        .execute(&mut conn)
        .unwrap();
    }
    for _ in 0..2 {
        app.start_run(&owner, &check).await;
        for agent in [&dsl, &cable] {
            let lease = app.lease_when_offered(agent, 1).await;
            let task = lease["tasks"][0]["assignment_id"].clone();
            let (status, ack) = app.submit(agent, submission(&task, 40_000)).await;
            assert_eq!(status, 200, "{ack}");
        }
    }
    let got = hooks
        .wait_for(WAIT, |got| {
            delivered(got, "/hook", "incident.resolved").len() == 1
                && delivered(got, "/segments", "incident.resolved").len() == 1
        })
        .await;
    let mut resolved = delivered(&got, "/hook", "incident.resolved");
    resolved.extend(delivered(&got, "/segments", "incident.resolved"));
    assert_eq!(resolved.len(), 2, "{got:#?}");
    let resolutions: Vec<&str> = resolved
        .iter()
        .map(|(b, _)| b["incident"]["resolution"].as_str().unwrap())
        .collect();
    assert!(
        resolutions.contains(
            &"Availability 100 % over the last 15 min (4 measurements), at or above 90 %"
        ),
        "{resolutions:?}"
    );
    let (_, all) = app
        .get(&format!("/api/v1/checks/{check}/incidents"), &owner)
        .await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "resolved" && i["resolved_at"].is_string()),
        "{all}"
    );
    let slack = events(&hooks.received(), "/slack");
    assert_eq!(
        slack.last().unwrap()["text"],
        "Resolved on Shop home: Availability 100 % over the last 15 min (4 measurements), at or above 90 %"
    );
    // Another owner sees none of it.
    let stranger = app.owner("stranger");
    let (status, _) = app
        .get(&format!("/api/v1/checks/{check}/incidents"), &stranger)
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .get(
            &format!(
                "/api/v1/alert-channels/{}/deliveries",
                webhook["id"].as_str().unwrap()
            ),
            &stranger,
        )
        .await;
    assert_eq!(status, 404);
    app.controller.stop().await.unwrap();
}

async fn a_run_without_eligible_agents_alerts_and_channels_refuse_what_they_cannot_send_to(
    db: TestDb,
) {
    let app = alerting_app(&db).await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let hooks = HookReceiver::start().await.unwrap();
    let site_id = app.verified_site(&owner, &site).await;
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "Brazil",
                "selection": {"agents_per_run": 1, "countries": ["BR"]}}),
        )
        .await;
    let check = check["id"].as_str().unwrap().to_owned();
    let channel = post(
        &app,
        &owner,
        "/api/v1/alert-channels",
        json!({"name": "hook", "kind": "webhook", "url": hooks.url("/hook")}),
    )
    .await;
    let rules = format!("/api/v1/checks/{check}/alert-rules");
    post(
        &app,
        &owner,
        &rules,
        json!({"kind": "no_eligible_agents", "channels": [channel["id"]]}),
    )
    .await;
    app.start_run(&owner, &check).await;
    let got = hooks
        .wait_for(WAIT, |got| {
            !delivered(got, "/hook", "incident.opened").is_empty()
        })
        .await;
    let opened = delivered(&got, "/hook", "incident.opened");
    assert_eq!(opened.len(), 1, "{got:#?}");
    let summary = opened[0].0["incident"]["summary"].as_str().unwrap();
    assert!(
        summary.ends_with("found no eligible agent for the check's selection"),
        "{summary}"
    );

    // What cannot be sent to, or makes no sense, is refused in words.
    for (body, words) in [
        (
            json!({"name": "x", "kind": "webhook", "url": "ftp://example.com/"}),
            "must be an http(s) URL",
        ),
        (json!({"name": "x", "kind": "webhook"}), "needs a `url`"),
        (
            json!({"name": "x", "kind": "email", "email": "not-an-address"}),
            "email",
        ),
        (
            json!({"name": "x", "kind": "slack", "url": "https://user:pw@hooks.example.com/x"}),
            "user name or password",
        ),
        (
            json!({"name": "", "kind": "email", "email": "a@example.com"}),
            "`name`",
        ),
    ] {
        let (status, err) = app
            .call(
                "POST",
                "/api/v1/alert-channels",
                Some(&owner),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    for (body, words) in [
        (
            json!({"kind": "availability_below", "channels": [channel["id"]]}),
            "threshold_percent",
        ),
        (
            json!({"kind": "objective_breached", "channels": [channel["id"]]}),
            "no objectives",
        ),
        (
            json!({"kind": "segment_failing", "window_s": 10, "channels": [channel["id"]]}),
            "`window_s`",
        ),
        (
            json!({"kind": "segment_failing", "channels": []}),
            "`channels`",
        ),
        (
            json!({"kind": "segment_failing", "channels": [uuid::Uuid::new_v4()]}),
            "not one of your alert channels",
        ),
    ] {
        let (status, err) = app
            .call("POST", &rules, Some(&owner), Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    // Another owner's channel is not one of yours.
    let stranger = app.owner("stranger");
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/alert-channels/{}", channel["id"].as_str().unwrap()),
            Some(&stranger),
            None,
        )
        .await;
    assert_eq!(status, 404);
    app.controller.stop().await.unwrap();
}

async fn email_alerts_reach_a_real_smtp_server(db: TestDb) {
    let smtp = SmtpServer::start();
    let port = smtp.port;
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.alert_interval_ms = 150;
        c.alert_retry_ms = 200;
        c.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        c.mail_from = "Lastmile alerts <alerts@lastmile.test>".into();
    })
    .await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let agent = app.agent(Ipv4Addr::new(127, 0, 0, 2), &key, "dsl", 1).await;
    let site_id = app.verified_site(&owner, &site).await;
    let check = app
        .create_check(
            &owner,
            json!({"site_id": site_id, "url": format!("{}/", site.origin()), "name": "Shop home",
                "selection": {"agents_per_run": 1}}),
        )
        .await;
    let check = check["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let task = app.run_and_lease(&owner, &check, &agent).await["assignment_id"].clone();
        let mut result = submission(&task, 40_000);
        result["measurement"]["status"] = Value::Null;
        result["measurement"]["error"] = json!({"kind": "connect_refused", "message": "refused"});
        let (status, ack) = app.submit(&agent, result).await;
        assert_eq!(status, 200, "{ack}");
    }
    let channel = post(
        &app,
        &owner,
        "/api/v1/alert-channels",
        json!({"name": "me", "kind": "email", "email": "oncall@shop.test"}),
    )
    .await;
    assert_eq!(channel["target"], "oncall@shop.test");
    post(
        &app,
        &owner,
        &format!("/api/v1/checks/{check}/alert-rules"),
        json!({"kind": "availability_below", "threshold_percent": 99.5, "channels": [channel["id"]]}),
    )
    .await;
    let mut mail = Vec::new();
    for _ in 0..200 {
        mail = smtp.messages();
        if !mail.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mail.len(), 1, "{mail:?}");
    let message = readable(&mail[0]);
    for expected in [
        "Subject: [Lastmile] Incident opened on Shop home: Availability 0 % over the last 15 min (3 of 3 measurements failed), below 99.5 %",
        "From: \"Lastmile alerts\" <alerts@lastmile.test>",
        "To: oncall@shop.test",
        "X-RcptTo: oncall@shop.test",
        "Content-Type: text/plain; charset=utf-8",
        "What broke: Availability 0 % over the last 15 min (3 of 3 measurements failed), below 99.5 %",
        &format!("Check: Shop home ({check})"),
    ] {
        assert!(message.contains(expected), "{expected:?} not in {message}");
    }
    let (_, log) = app
        .get(
            &format!(
                "/api/v1/alert-channels/{}/deliveries",
                channel["id"].as_str().unwrap()
            ),
            &owner,
        )
        .await;
    assert_eq!(log[0]["state"], "delivered", "{log}");
    assert_eq!(log[0]["attempts"], 1, "{log}");
    app.controller.stop().await.unwrap();
}
