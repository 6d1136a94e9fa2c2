//! The agent listener (`agent_listen`): agents' hot calls on an address of their own,
//! answered as the API answers them, found by real agents through their heartbeat's
//! answer, and given up for the controller's URL when it cannot be reached.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent_lifecycle::{agents_online, eventually, settings, spawn_agent};
use crate::per_backend;
use crate::support::{all_folded, count, target_site, TestApp, TestDb};
use lastmile_testbed::site::TargetSite;

per_backend!(
    a_real_agent_sends_its_hot_calls_to_the_listener_its_heartbeat_names,
    an_agent_whose_listener_cannot_be_reached_uses_the_controllers_url,
    the_listener_answers_and_refuses_as_the_api_does,
    a_long_poll_the_agent_hung_up_on_takes_no_work,
);

/// A quiet controller (see `TestApp::quiet_for_real_agents`) with an agent listener.
async fn with_listener(db: &TestDb) -> TestApp {
    TestApp::start_with(db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.heartbeat_interval_s = 1;
        c.agent_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await
}

fn listener_url(app: &TestApp) -> String {
    app.controller.agent_url().expect("an agent listener")
}

fn listener_requests(app: &TestApp) -> u64 {
    app.controller
        .state
        .metrics
        .agent_listener_requests
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A check of the site's home page, one agent a run.
async fn home_page_check(app: &TestApp, owner: &str, site: &TargetSite) -> String {
    let home = format!("{}/", site.origin());
    app.site_check(owner, site, home, json!({"agents_per_run": 1}))
        .await
}

/// The agent listener's open connections, as `/metrics` says.
async fn listener_connections(app: &TestApp) -> i64 {
    let metrics = reqwest::get(format!("{}/metrics", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("lastmile_agent_listener_connections "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no connection gauge in\n{metrics}"))
}

async fn a_real_agent_sends_its_hot_calls_to_the_listener_its_heartbeat_names(db: TestDb) {
    let app = with_listener(&db).await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();
    let site = target_site().await;
    let (stop, task) = spawn_agent(settings(&app, Some(key), state.path()));
    agents_online(&app, 1, "the agent is online").await;
    eventually("the agent's calls reach the listener", || {
        listener_requests(&app) >= 3
    })
    .await;

    // Work reaches it, and its result comes back, through the listener.
    let check = home_page_check(&app, &owner, &site).await;
    let before = listener_requests(&app);
    app.ask_run(&owner, &check).await;
    eventually("the result is stored", || {
        count(&app, "SELECT COUNT(*) AS n FROM results") == 1
    })
    .await;
    assert!(
        listener_requests(&app) > before,
        "the lease and the result went through the listener"
    );
    all_folded(&app).await;
    let (_, report) = app.report(&owner, &check, "").await;
    assert_eq!(report["rows"][0]["samples"], 1, "{report}");
    let open = listener_connections(&app).await;
    assert!(open >= 1, "the agent keeps its connection: {open}");
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    app.controller.stop().await.unwrap();
}

async fn an_agent_whose_listener_cannot_be_reached_uses_the_controllers_url(db: TestDb) {
    // Heartbeats name a "listener" that is not one: a server answering every request
    // with a 403 page, as a CDN or another service at that address would (an agent
    // that took its answers as the controller's stopped, or put its results aside).
    let wrong = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", wrong.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = wrong.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                let page = "HTTP/1.1 403 Forbidden\r\ncontent-type: text/html\r\n\
                            content-length: 9\r\nconnection: close\r\n\r\nforbidden";
                let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, page.as_bytes()).await;
            });
        }
    });
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.heartbeat_interval_s = 1;
        c.agent_url = Some(dead.clone());
    })
    .await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let state = tempfile::tempdir().unwrap();
    let site = target_site().await;
    let (stop, task) = spawn_agent(settings(&app, Some(key), state.path()));
    agents_online(&app, 1, "the agent is online").await;
    let creds: lastmile_agent::runner::Credentials =
        serde_json::from_slice(&std::fs::read(state.path().join("credentials.json")).unwrap())
            .unwrap();
    let beat =
        json!({"declared_class": "cable", "version": "test", "limits": {"max_concurrent": 2}});
    let (_, ack) = app
        .heartbeat_from(Ipv4Addr::new(127, 0, 0, 2), &creds.token, beat)
        .await;
    assert_eq!(ack["agent_url"], dead.as_str(), "{ack}");

    let check = home_page_check(&app, &owner, &site).await;
    app.ask_run(&owner, &check).await;
    eventually(
        "the agent's result is stored through the controller's URL",
        || count(&app, "SELECT COUNT(*) AS n FROM results") == 1,
    )
    .await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    app.controller.stop().await.unwrap();
}

/// Sends raw bytes to `addr` and reads the answer until the server closes or `answers`
/// complete answers have come; returns the text.
async fn raw(addr: &str, bytes: &[u8], answers: usize) -> String {
    let (addr, bytes) = (addr.to_owned(), bytes.to_vec());
    tokio::task::spawn_blocking(move || raw_blocking(&addr, &bytes, answers))
        .await
        .unwrap()
}

fn raw_blocking(addr: &str, bytes: &[u8], answers: usize) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded: at most 10 s of reads.
    for _ in 0..10_000 {
        let complete = String::from_utf8_lossy(&got).matches("HTTP/1.1 ").count() >= answers
            && answer_complete(&got);
        if complete {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the last answer in `bytes` has all of its body.
fn answer_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(start) = text.rfind("HTTP/1.1 ") else {
        return false;
    };
    let last = &text[start..];
    let Some((head, body)) = last.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|l| l.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

async fn the_listener_answers_and_refuses_as_the_api_does(db: TestDb) {
    let app = with_listener(&db).await;
    let key = app.volunteer("volunteer");
    let token = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "cable", 2)
        .await;
    let listener = listener_url(&app);
    let addr = listener.trim_start_matches("http://").to_owned();
    let client = TestApp::client_from(Ipv4Addr::new(127, 0, 0, 2));
    let beat =
        json!({"declared_class": "cable", "version": "test", "limits": {"max_concurrent": 2}});

    // The same request to the API and to the listener: the same status and error.
    let both = |path: &str, token: Option<&str>, body: Option<(&str, String)>| {
        let requests = [app.base.clone(), listener.clone()].map(|base| {
            let mut request = client.post(format!("{base}{path}"));
            if let Some(t) = token {
                request = request.bearer_auth(t);
            }
            if let Some((content_type, body)) = &body {
                request = request
                    .header("content-type", *content_type)
                    .body(body.clone());
            }
            request
        });
        async move {
            let mut answers = Vec::new();
            for request in requests {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let auth = response.headers().get("www-authenticate").cloned();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                answers.push((status, body["error"].clone(), auth));
            }
            answers
        }
    };
    let json_type = "application/json";
    let cases: Vec<(&str, Option<&str>, Body, u16)> = vec![
        (
            "/api/v1/agents/heartbeat",
            None,
            Some((json_type, beat.to_string())),
            401,
        ),
        (
            "/api/v1/agents/heartbeat",
            Some("lm_agent_nobody"),
            Some((json_type, beat.to_string())),
            401,
        ),
        (
            "/api/v1/agents/lease",
            Some(&token),
            Some((json_type, "{".into())),
            400,
        ),
        (
            "/api/v1/agents/lease",
            Some(&token),
            Some((json_type, r#"{"max":"x"}"#.into())),
            422,
        ),
        (
            "/api/v1/agents/lease",
            Some(&token),
            Some(("text/plain", r#"{"max":1}"#.into())),
            415,
        ),
        ("/api/v1/agents/lease", Some(&token), None, 415),
        (
            "/api/v1/results/batch",
            Some(&token),
            Some((json_type, r#"{"results":[]}"#.into())),
            422,
        ),
        (
            "/api/v1/results",
            Some(&token),
            Some((json_type, "x".repeat(300 * 1024))),
            413,
        ),
    ];
    for (path, token, body, status) in cases {
        let what = format!(
            "{path} {:?}",
            body.as_ref().map(|b| &b.1[..b.1.len().min(40)])
        );
        let answers = both(path, token, body).await;
        assert_eq!(answers[0].0, status, "the API: {what}: {answers:?}");
        assert_eq!(answers[0], answers[1], "the API, then the listener: {what}");
    }

    // The calls themselves.
    let (status, ack) = post(
        &client,
        &listener,
        "/api/v1/agents/heartbeat",
        &token,
        &beat,
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["agent_url"], listener.as_str());
    assert_eq!(
        ack["location"]["country"], "DE",
        "located by its address: {ack}"
    );
    let (status, lease) = post(
        &client,
        &listener,
        "/api/v1/agents/lease",
        &token,
        &json!({"max": 1}),
    )
    .await;
    assert_eq!(
        (status, lease["tasks"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{lease}"
    );

    // What is not an agent's hot call is not here.
    let (status, body) = {
        let r = client
            .get(format!("{listener}/api/v1/checks"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 404);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("controller's address"),
        "{body}"
    );
    let r = client
        .get(format!("{listener}/api/v1/agents/lease"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    // HTTP the listener does not read is refused, clearly, and the connection closed.
    let chunked = raw(
        &addr,
        b"POST /api/v1/agents/lease HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        1,
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 411 "), "{chunked}");
    assert!(chunked.contains("connection: close"), "{chunked}");
    let garbage = raw(
        &addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        1,
    )
    .await;
    assert!(
        garbage.starts_with("HTTP/1.1 400 "),
        "a TLS hello: {garbage}"
    );

    // Nobody reads a body for a request it will refuse: no 100 Continue, the refusal at
    // once (the body is never sent), and the connection closed.
    let unknown = raw(
        &addr,
        b"POST /api/v1/results HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
          Content-Length: 200000\r\nExpect: 100-continue\r\n\r\n",
        1,
    )
    .await;
    assert!(unknown.starts_with("HTTP/1.1 401 "), "{unknown}");
    assert!(!unknown.contains("100 Continue"), "{unknown}");
    assert!(unknown.contains("connection: close"), "{unknown}");
    // A HEAD's answer has no body (a client would read it as the next answer).
    let head = raw(
        &addr,
        b"HEAD /api/v1/results HTTP/1.1\r\nHost: a\r\n\r\n",
        1,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body: {head:?}");

    // Two requests in one write (pipelined) are answered in order on one connection,
    // the second after the first's long poll gave up (wait_s 1).
    let request = |body: &str| lease_request(&token, body);
    let both = format!(
        "{}{}",
        request(r#"{"max":1,"wait_s":1}"#),
        request(r#"{"max":0}"#)
    );
    let answers = raw(&addr, both.as_bytes(), 2).await;
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    assert!(
        !answers.contains("connection: close"),
        "kept alive: {answers}"
    );
    app.controller.stop().await.unwrap();
}

/// A lease of `body`, by `token`, as raw HTTP/1.1.
fn lease_request(token: &str, body: &str) -> String {
    format!(
        "POST /api/v1/agents/lease HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A lease of one task that does not wait, at `listener`.
async fn lease_now(client: &reqwest::Client, listener: &str, token: &str) -> (u16, Value) {
    let body = json!({"max": 1});
    post(client, listener, "/api/v1/agents/lease", token, &body).await
}

/// A request body and its content type.
type Body<'a> = Option<(&'a str, String)>;

async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let response = client
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn a_long_poll_the_agent_hung_up_on_takes_no_work(db: TestDb) {
    let app = with_listener(&db).await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let token = app
        .agent(Ipv4Addr::new(127, 0, 0, 2), &key, "cable", 1)
        .await;
    let site = target_site().await;
    let check = home_page_check(&app, &owner, &site).await;
    let listener = listener_url(&app);
    let client = TestApp::client_from(Ipv4Addr::new(127, 0, 0, 2));
    let (status, _) = lease_now(&client, &listener, &token).await;
    assert_eq!(status, 200);

    // A long poll, and the agent goes away while it waits (a restart, a lost line).
    let request = lease_request(&token, r#"{"max":1,"wait_s":10}"#);
    let addr = listener.trim_start_matches("http://");
    let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut waiting, request.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Work for the agent: nobody waits for the answer that would carry it, so it stays
    // offered, for the agent's next lease, instead of leased to a closed connection.
    app.ask_run(&owner, &check).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leased = count(
        &app,
        "SELECT COUNT(*) AS n FROM open_assignments WHERE state = 'leased'",
    );
    assert_eq!(leased, 0, "the abandoned long poll took the work");
    let (status, lease) = lease_now(&client, &listener, &token).await;
    assert_eq!(status, 200);
    assert_eq!(lease["tasks"].as_array().map(Vec::len), Some(1), "{lease}");
    app.controller.stop().await.unwrap();
}
