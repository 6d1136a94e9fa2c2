//! Path traces: when an incident opens, the agents that saw it trace the path to the
//! target and the incident shows the hops (end to end, with a real agent, on both
//! backends); and the tracer itself through two routers in network namespaces this
//! test creates, where the last link loses probes.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use lastmile_agent::runner::Credentials;
use lastmile_agent::trace::{udp_trace, TraceLimits};
use lastmile_domain::path_traces::find_jumps;
use lastmile_testbed::hooks::HookReceiver;
use serde_json::{json, Value};

use crate::agent_lifecycle::{agents_online, settings, spawn_agent};
use crate::leasing::submission;
use crate::per_backend;
use crate::support::{target_site, TestApp, TestDb};

per_backend!(an_incident_has_the_agents_that_saw_it_trace_the_path,);

async fn an_incident_has_the_agents_that_saw_it_trace_the_path(db: TestDb) {
    let app = TestApp::start_with(&db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.heartbeat_interval_s = 1;
        c.alert_interval_ms = 150;
    })
    .await;
    let site = target_site().await;
    let owner = app.owner("owner");
    let key = app.volunteer("volunteer");
    let hooks = HookReceiver::start().await.unwrap();

    // A real agent, which traces, and an agent of an older version, which does not
    // (its heartbeat has no `path_trace`).
    let state = tempfile::tempdir().unwrap();
    let (stop, agent) = spawn_agent(settings(&app, Some(key.clone()), state.path()));
    agents_online(&app, 1, "the real agent is online").await;
    let older = app.agent(Ipv4Addr::new(127, 0, 0, 3), &key, "dsl", 1).await;

    // The check asks for a page the site does not have: every measurement fails (404).
    let check = app
        .site_check(
            &owner,
            &site,
            format!("{}/gone", site.origin()),
            json!({"agents_per_run": 2}),
        )
        .await;
    let channel = app
        .call(
            "POST",
            "/api/v1/alert-channels",
            Some(&owner),
            Some(json!({"name": "on-call", "kind": "webhook", "url": hooks.url("/hook")})),
        )
        .await
        .1;
    let (status, rule) = app
        .call(
            "POST",
            &format!("/api/v1/checks/{check}/alert-rules"),
            Some(&owner),
            Some(
                json!({"kind": "availability_below", "threshold_percent": 90,
                "min_samples": 2, "channels": [channel["id"]]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{rule}");

    app.start_run(&owner, &check).await;
    let lease = app.lease_when_offered(&older, 1).await;
    let mut failed = submission(&lease["tasks"][0]["assignment_id"], 40_000);
    failed["measurement"]["status"] = json!(404);
    failed["measurement"]["error"] = json!({"kind": "http_status", "message": "404"});
    let (status, ack) = app.submit(&older, failed).await;
    assert_eq!(status, 200, "{ack}");

    // The incident opens on both failures, and the real agent traces the path on its
    // own: woken by the work feed, it leases the trace, probes and reports.
    let incidents = format!("/api/v1/checks/{check}/incidents");
    let deadline = Instant::now() + Duration::from_secs(30);
    let incident = loop {
        let (status, list) = app.get(&incidents, &owner).await;
        assert_eq!(status, 200, "{list}");
        let done = list.as_array().unwrap().first().cloned().filter(|i| {
            i["path_traces"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["state"] == "done"))
        });
        if let Some(incident) = done {
            break incident;
        }
        assert!(Instant::now() < deadline, "no path trace reported: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let traces = incident["path_traces"].as_array().unwrap();
    // Only the agent that traces was asked; the older one never is.
    assert_eq!(traces.len(), 1, "{incident:#}");
    let trace = &traces[0];
    assert_eq!(trace["agent"]["name"], "kitchen-pc");
    assert_eq!(trace["target_addr"], "127.0.0.1");
    assert_eq!(trace["reached"], true, "{trace:#}");
    let hops = trace["hops"].as_array().unwrap();
    assert_eq!(hops.len(), 1, "loopback is one hop: {trace:#}");
    assert_eq!(hops[0]["addr"], "127.0.0.1");
    assert_eq!(hops[0]["sent"], 3);
    assert!(hops[0]["received"].as_u64().unwrap() >= 1, "{trace:#}");
    assert!(
        trace["jumps"]["finding"]
            .as_str()
            .unwrap()
            .starts_with("No hop stands out"),
        "{trace:#}"
    );
    // The single incident's page says the same.
    let id = incident["id"].as_str().unwrap();
    let (status, one) = app.get(&format!("{incidents}/{id}"), &owner).await;
    assert_eq!(status, 200);
    assert_eq!(one["path_traces"][0]["hops"], trace["hops"]);
    // Webhook bodies are fixed when the incident opens: no traces in them yet.
    let got = hooks
        .wait_for(Duration::from_secs(10), |got| !got.is_empty())
        .await;
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "incident.opened");
    assert!(body["incident"].get("path_traces").is_none(), "{body}");

    // The older agent's lease answer never carries the field it would not know.
    let (status, lease) = app.lease(&older, 1).await;
    assert_eq!(status, 200);
    assert!(lease.get("traces").is_none(), "{lease}");

    // Reports: the same again is fine; another agent's is not found; a bent one says why.
    let creds: Credentials =
        serde_json::from_slice(&std::fs::read(state.path().join("credentials.json")).unwrap())
            .unwrap();
    let report = json!({
        "trace_id": trace["id"], "started_at": "2026-12-05T12:00:00Z",
        "target_addr": "127.0.0.1", "reached": true,
        "hops": [{"ttl": 1, "addr": "127.0.0.1", "sent": 3, "rtts_us": [40, 41, 39]}],
    });
    let post = |token: String, body: Value| {
        let app = &app;
        async move {
            app.call("POST", "/api/v1/agents/traces", Some(&token), Some(body))
                .await
        }
    };
    let (status, ack) = post(creds.token.clone(), report.clone()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["trace_id"], trace["id"]);
    let (status, answer) = post(older.clone(), report.clone()).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"], "trace_not_found");
    let mut bent = report.clone();
    bent["hops"][0]["ttl"] = json!(2);
    let (status, answer) = post(creds.token.clone(), bent).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("listed by TTL"),
        "{answer}"
    );
    // The stored trace is the agent's own, not the repeat.
    let (_, again) = app.get(&format!("{incidents}/{id}"), &owner).await;
    assert_eq!(again["path_traces"][0]["hops"], trace["hops"]);

    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
}

/// Network namespaces made for one test, deleted when it ends (their links with them).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.0.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"]);
        // IPv4 only: no neighbour discovery or router solicitations on the links.
        in_ns(
            name,
            "sh",
            &[
                "-c",
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
                 echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            ],
        );
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(status.success(), "ip {args:?} failed");
}

fn in_ns(ns: &str, program: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program} {args:?} in {ns}: {e}"));
    assert!(status.success(), "{program} {args:?} in {ns} failed");
}

/// Traces from the namespace `ns` (this thread enters it; the sockets it opens live
/// there), on a thread of its own.
fn trace_from(ns: &str, target: Ipv4Addr) -> lastmile_agent::trace::PathSeen {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let limits = TraceLimits {
            max_hops: 8,
            probes_per_hop: 3,
            // Longer than the half second the lossy link holds a probe.
            probe_timeout: Duration::from_millis(1_500),
        };
        udp_trace(IpAddr::V4(target), None, limits).unwrap()
    })
    .join()
    .unwrap()
}

/// client — r1 — r2 — target, each in its own namespace, routed; then the link from r2
/// to the target made to lose probes.
#[test]
fn a_path_through_two_routers_shows_each_hop_and_where_loss_starts() {
    let tag = std::process::id();
    let [client, r1, r2, target] = ["c", "r1", "r2", "t"].map(|n| format!("lm{n}{tag}"));
    let mut spaces = Namespaces(Vec::new());
    for ns in [&client, &r1, &r2, &target] {
        spaces.add(ns);
    }
    for (a, a_if, b, b_if) in [
        (&client, "c0", &r1, "r1a"),
        (&r1, "r1b", &r2, "r2a"),
        (&r2, "r2b", &target, "t0"),
    ] {
        ip(&[
            "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
    }
    for (ns, dev, addr) in [
        (&client, "c0", "10.9.1.2/24"),
        (&r1, "r1a", "10.9.1.1/24"),
        (&r1, "r1b", "10.9.2.1/24"),
        (&r2, "r2a", "10.9.2.2/24"),
        (&r2, "r2b", "10.9.3.1/24"),
        (&target, "t0", "10.9.3.2/24"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    // The target's address is known to r2 for good: no ARP crosses the last link, whose
    // every byte counts below.
    ip(&[
        "-n",
        &target,
        "link",
        "set",
        "t0",
        "address",
        "02:00:00:00:03:02",
    ]);
    ip(&[
        "-n",
        &r2,
        "neigh",
        "replace",
        "10.9.3.2",
        "lladdr",
        "02:00:00:00:03:02",
        "dev",
        "r2b",
        "nud",
        "permanent",
    ]);
    ip(&["-n", &client, "route", "add", "default", "via", "10.9.1.1"]);
    ip(&["-n", &r1, "route", "add", "10.9.3.0/24", "via", "10.9.2.2"]);
    ip(&["-n", &r2, "route", "add", "10.9.1.0/24", "via", "10.9.2.1"]);
    ip(&["-n", &target, "route", "add", "default", "via", "10.9.3.1"]);
    for router in [&r1, &r2] {
        in_ns(
            router,
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        );
    }
    let to = Ipv4Addr::new(10, 9, 3, 2);

    // Every hop answers, in order, and the target is reached.
    let seen = trace_from(&client, to);
    let addrs: Vec<Option<&str>> = seen.hops.iter().map(|h| h.addr.as_deref()).collect();
    assert_eq!(
        addrs,
        vec![Some("10.9.1.1"), Some("10.9.2.2"), Some("10.9.3.2")],
        "{seen:?}"
    );
    assert!(seen.reached, "{seen:?}");
    assert!(seen.hops.iter().all(|h| h.sent == 3), "{seen:?}");
    assert_eq!(seen.hops[0].rtts_us.len(), 3, "{seen:?}");
    let clean = find_jumps(&seen.hops, seen.reached);
    assert_eq!(
        (clean.latency_ttl, clean.loss_ttl),
        (None, None),
        "{clean:?}"
    );

    // The last link now passes a probe every half second (a token bucket with room for
    // one, and a queue for one more): of three probes sent back to back to the target,
    // the first passes, the second waits half a second, the third is dropped.
    in_ns(
        &r2,
        "tc",
        &[
            "qdisc", "add", "dev", "r2b", "root", "tbf", "rate", "1kbit", "burst", "100", "limit",
            "100",
        ],
    );
    let lossy = trace_from(&client, to);
    assert_eq!(lossy.hops.len(), 3, "{lossy:?}");
    assert_eq!(
        lossy.hops[0].rtts_us.len(),
        3,
        "routers are not behind it: {lossy:?}"
    );
    assert_eq!(lossy.hops[1].rtts_us.len(), 3, "{lossy:?}");
    assert_eq!(lossy.hops[2].rtts_us.len(), 2, "{lossy:?}");
    assert!(lossy.reached, "{lossy:?}");
    let jumps = find_jumps(&lossy.hops, lossy.reached);
    // One probe in three lost, and the median round trip half a second, from hop 3.
    assert_eq!(jumps.loss_ttl, Some(3), "{jumps:?} {lossy:?}");
    assert_eq!(jumps.latency_ttl, Some(3), "{jumps:?} {lossy:?}");
    assert!(
        jumps.finding.contains("at hop 3 (10.9.3.2)")
            && jumps
                .finding
                .contains("lost from hop 3 (10.9.3.2) on: 33 %"),
        "{}",
        jumps.finding
    );
}
