//! Site verification by file as an attacker would try it, on both backends: a name that
//! rebinds to loopback between two lookups, redirects into the controller's network,
//! port scanning through the error message, IP-literal origins (IPv6 included).
//!
//! Everything runs on loopback: the controller treats 127.0.0.2 as an allowed network
//! (`allow_site_nets`, like an operator's lab LAN) and 127.0.0.1 as what it must never
//! reach; names are answered by the test nameserver (`dns.rs`) the controller is
//! pointed at. Each forbidden target is a listener that counts the connections it gets.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lastmile_testbed::site::{SiteConfig, TargetSite};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::dns::DnsResponder;
use crate::per_backend;
use crate::support::{TestApp, TestDb};

per_backend!(
    a_rebinding_name_is_resolved_once_and_loopback_is_never_connected,
    a_redirect_into_a_forbidden_address_is_refused_without_connecting,
    a_closed_port_and_a_wrong_answer_read_the_same_to_the_owner,
    an_ipv6_literal_origin_is_verified_without_a_resolver,
    forbidden_literal_and_named_origins_are_refused_before_connecting,
);

const ALLOWED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A controller that guards site verification (no `allow_private_sites`), allows
/// 127.0.0.2 and asks `dns` for names.
async fn guarded_app(db: &TestDb, dns: &DnsResponder) -> TestApp {
    let nameserver = dns.addr;
    TestApp::start_with(db, |c| {
        c.allow_private_sites = false;
        c.allow_site_nets = vec!["127.0.0.2/32".parse().unwrap()];
        c.dns_nameserver = Some(nameserver);
        c.scheduler_tick_ms = 3_600_000;
    })
    .await
}

/// A listener that accepts and counts connections, answering nothing.
struct Counter {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    /// A counter on 127.0.0.1 at a free port.
    async fn on_loopback() -> Counter {
        Counter::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap()
    }

    async fn bind(addr: SocketAddr) -> std::io::Result<Counter> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Ok(Counter {
            addr,
            accepted,
            task,
        })
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server on `ip` that answers every request with a 302 to `location` (the request's
/// path appended), counting its connections.
struct Redirector {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Redirector {
    async fn start(ip: Ipv4Addr, location: String) -> Redirector {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let location = location.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&head);
                    let path = request.split(' ').nth(1).unwrap_or("/");
                    let answer = format!(
                        "HTTP/1.1 302 Found\r\nlocation: {location}{path}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Redirector { addr, task }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Adds `origin` for `owner`: (site id, token, verification URL).
async fn add_site(app: &TestApp, owner: &str, origin: &str) -> (String, String, String) {
    let (status, created) = app
        .call(
            "POST",
            "/api/v1/sites",
            Some(owner),
            Some(json!({"origin": origin})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let field = |k: &str| created[k].as_str().unwrap().to_owned();
    (
        field("id"),
        field("verification_token"),
        field("verification_url"),
    )
}

async fn verify(app: &TestApp, owner: &str, id: &str) -> (u16, Value) {
    app.call(
        "POST",
        &format!("/api/v1/sites/{id}/verify"),
        Some(owner),
        Some(json!({})),
    )
    .await
}

/// Adds `origin` for the owner, publishes its verification token on `site` and asks
/// for verification: the answer as it comes.
async fn add_and_verify(
    app: &TestApp,
    owner: &str,
    site: &TargetSite,
    origin: &str,
) -> (u16, Value) {
    let (id, token, _) = add_site(app, owner, origin).await;
    site.publish_verification_token(&token);
    verify(app, owner, &id).await
}

/// Asserts that a verification answer is a 200 saying the site is verified.
fn assert_verified(answer: &(u16, Value)) {
    let (status, verified) = answer;
    assert_eq!(*status, 200, "{verified}");
    assert_eq!(verified["verified"], true);
}

/// A test site on 127.0.0.2 and a counting listener on 127.0.0.1 at the same port, so
/// that one URL reaches either, depending on what its name resolves to.
async fn site_and_loopback_twin() -> (TargetSite, Counter) {
    for _ in 0..20 {
        let site = TargetSite::start(SocketAddr::from((ALLOWED, 0)), SiteConfig::default())
            .await
            .unwrap();
        let twin = SocketAddr::from((Ipv4Addr::LOCALHOST, site.addr().port()));
        if let Ok(counter) = Counter::bind(twin).await {
            return (site, counter);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.1 after 20 tries");
}

async fn a_rebinding_name_is_resolved_once_and_loopback_is_never_connected(db: TestDb) {
    let dns = DnsResponder::start().await;
    let app = guarded_app(&db, &dns).await;
    let owner = app.owner("owner");
    let (site, loopback) = site_and_loopback_twin().await;
    // The attacker's nameserver: an allowed address for the check, loopback after.
    dns.publish_a_sequence("rebind.test", &[ALLOWED, Ipv4Addr::LOCALHOST]);
    let origin = format!("http://rebind.test:{}", site.addr().port());
    let (id, token, _) = add_site(&app, &owner, &origin).await;
    site.publish_verification_token(&token);

    let (status, verified) = verify(&app, &owner, &id).await;
    assert_eq!(
        loopback.connections(),
        0,
        "the controller connected to 127.0.0.1"
    );
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["verified"], true, "{verified}");
    assert_eq!(
        site.connections().accepted,
        1,
        "the token was read from 127.0.0.2"
    );
    assert_eq!(
        dns.a_queries("rebind.test"),
        1,
        "the name was resolved more than once"
    );
}

async fn a_redirect_into_a_forbidden_address_is_refused_without_connecting(db: TestDb) {
    let dns = DnsResponder::start().await;
    let app = guarded_app(&db, &dns).await;
    let owner = app.owner("owner");
    let loopback = Counter::on_loopback().await;
    dns.publish_a_sequence("inside.test", &[Ipv4Addr::LOCALHOST]);

    // To loopback by address, by name, and to the NAT64 form of loopback.
    let port = loopback.addr.port();
    let mut messages = Vec::new();
    for target in [
        format!("http://127.0.0.1:{port}"),
        format!("http://inside.test:{port}"),
        format!("http://[64:ff9b::7f00:1]:{port}"),
    ] {
        let redirector = Redirector::start(ALLOWED, target.clone()).await;
        let (id, _, url) = add_site(&app, &owner, &format!("http://{}", redirector.addr)).await;
        let (status, refused) = verify(&app, &owner, &id).await;
        assert_eq!(status, 422, "{target}: {refused}");
        assert_eq!(refused["error"], "verification_failed", "{refused}");
        let message = refused["message"].as_str().unwrap();
        messages.push(message.replace(&url, "<url>"));
    }
    assert_eq!(loopback.connections(), 0, "a redirect reached 127.0.0.1");
    assert_eq!(dns.a_queries("inside.test"), 1);
    // A refused redirect reads like any other failure.
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");

    // Redirects to an allowed address are followed: the token is read there.
    let site = TargetSite::start(SocketAddr::from((ALLOWED, 0)), SiteConfig::default())
        .await
        .unwrap();
    let redirector = Redirector::start(ALLOWED, site.origin()).await;
    let origin = format!("http://{}", redirector.addr);
    assert_verified(&add_and_verify(&app, &owner, &site, &origin).await);
}

async fn a_closed_port_and_a_wrong_answer_read_the_same_to_the_owner(db: TestDb) {
    let dns = DnsResponder::start().await;
    let app = guarded_app(&db, &dns).await;
    let owner = app.owner("owner");
    // A closed port: bound to learn a free one, then closed.
    let closed = {
        let listener = std::net::TcpListener::bind((ALLOWED, 0)).unwrap();
        listener.local_addr().unwrap()
    };
    // An open one that answers 404 (the token is not published).
    let site = TargetSite::start(SocketAddr::from((ALLOWED, 0)), SiteConfig::default())
        .await
        .unwrap();
    let mut answers = Vec::new();
    for origin in [format!("http://{closed}"), site.origin()] {
        let (id, _, url) = add_site(&app, &owner, &origin).await;
        let (status, refused) = verify(&app, &owner, &id).await;
        let message = refused["message"].as_str().unwrap_or_default();
        assert!(message.contains(&url), "{refused}");
        answers.push((
            status,
            refused["error"].clone(),
            message.replace(&url, "<url>"),
        ));
    }
    assert_eq!(site.connections().accepted, 1, "the open site was asked");
    assert_eq!(answers[0], answers[1], "closed and open ports read apart");
    assert_eq!(answers[0].0, 422);
    assert!(answers[0].2.contains("status 200"), "{:?}", answers[0]);
}

async fn an_ipv6_literal_origin_is_verified_without_a_resolver(db: TestDb) {
    let site = match TargetSite::start("[::1]:0".parse().unwrap(), SiteConfig::default()).await {
        Ok(site) => site,
        Err(e) => {
            println!("skipped: this machine has no IPv6 loopback ([::1]: {e})");
            return;
        }
    };
    assert!(
        site.origin().starts_with("http://[::1]:"),
        "{}",
        site.origin()
    );
    // Local testing (every address allowed) ...
    let app = TestApp::start(&db).await;
    let owner = app.owner("owner");
    assert_verified(&add_and_verify(&app, &owner, &site, &site.origin()).await);
    drop(app);

    // ... and with the guard on, [::1] allowed as a network: the literal is judged as
    // it is, not sent to a resolver.
    let db = TestDb::new(db.backend);
    let app = TestApp::start_with(&db, |c| {
        c.allow_private_sites = false;
        c.allow_site_nets = vec!["::1/128".parse().unwrap()];
        c.scheduler_tick_ms = 3_600_000;
    })
    .await;
    let owner = app.owner("owner");
    assert_verified(&add_and_verify(&app, &owner, &site, &site.origin()).await);
}

async fn forbidden_literal_and_named_origins_are_refused_before_connecting(db: TestDb) {
    let dns = DnsResponder::start().await;
    let app = guarded_app(&db, &dns).await;
    let owner = app.owner("owner");
    let loopback = Counter::on_loopback().await;
    let port = loopback.addr.port();
    dns.publish_a_sequence("private.test", &[Ipv4Addr::new(10, 0, 0, 1)]);
    dns.publish_a_sequence("loopback.test", &[Ipv4Addr::LOCALHOST]);
    for (origin, block) in [
        ("http://[fd00::1]:8080".to_owned(), "unique local"),
        (format!("http://127.0.0.1:{port}"), "loopback"),
        (format!("http://[::1]:{port}"), "loopback"),
        (format!("http://[64:ff9b::7f00:1]:{port}"), "NAT64"),
        (format!("http://[::ffff:127.0.0.1]:{port}"), "IPv4-mapped"),
        ("http://[2001:db8::1]:8080".to_owned(), "documentation"),
        ("http://private.test:8080".to_owned(), "private use"),
        (format!("http://loopback.test:{port}"), "loopback"),
    ] {
        let (id, _, _) = add_site(&app, &owner, &origin).await;
        let (status, refused) = verify(&app, &owner, &id).await;
        assert_eq!(status, 403, "{origin}: {refused}");
        assert_eq!(refused["error"], "private_origin", "{origin}: {refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(message.contains(block), "{origin}: {message}");
        // The refusal names the switch a local tester needs.
        assert!(
            message.contains("--allow-private-sites"),
            "{origin}: {message}"
        );
    }
    assert_eq!(loopback.connections(), 0);
}
