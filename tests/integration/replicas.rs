//! Several controllers, one PostgreSQL: three controller processes behind a real load
//! balancer (Debian's HAProxy, configured and started by the test), real agents talking
//! only to the balancer (their hot calls to the replicas' agent listeners, behind a
//! frontend of their own, as heartbeats name it), a check scheduled every two seconds, and one replica killed
//! with SIGKILL while assignments are leased. Afterwards: each scheduled slot made one
//! run (three schedulers, one claim), no assignment handed out twice and every result
//! stored once (every measurement the site served has exactly one result, with the
//! agent that held its lease), the aggregates and the payments equal to the counted
//! results, the ledger balanced.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lastmile_controller::config::ControllerConfig;
use lastmile_storage::{Backend, Db};
use lastmile_testbed::site::{SiteConfig, TargetSite};
use serde_json::json;

use crate::controller_process::{child_config, fixed_port, ControllerProcess};
use crate::crash::{
    assert_reconciled, call, create_check, http_client, n, owner_with_grant, two_volunteers,
    verified_site, wait_until, PlaceAgents,
};
use crate::support::{TestDb, PLACES};

/// Replicas behind the balancer.
const REPLICAS: usize = 3;

/// The check's schedule, seconds.
const EVERY_S: i64 = 2;

/// HAProxy serving `listen` in front of `servers`; stopped when dropped.
struct Balancer {
    child: Child,
    log: PathBuf,
}

impl Balancer {
    /// Writes a config into `dir` and starts HAProxy in the foreground. Requests are
    /// balanced by their bearer token (consistent hashing), so each agent talks to one
    /// replica while it lives: an agent's calibration session is in its replica's
    /// memory, and round robin would scatter its pings and echoes over three. When a
    /// replica dies, only its agents move. Health checks every 200 ms take a dead
    /// replica out after two misses; a request whose connection a dead replica refuses
    /// is sent to another (`retries`, `redispatch`); the agents' addresses are passed on
    /// in `X-Forwarded-For`, which the controllers trust from the balancer's address.
    /// A second frontend, `agents_listen`, balances the agents' hot calls the same way
    /// over the replicas' agent listeners (`agent_servers`, health-checked on their
    /// API's port).
    fn start(
        dir: &Path,
        listen: u16,
        servers: &[u16],
        agents_listen: u16,
        agent_servers: &[u16],
    ) -> Balancer {
        let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("HAProxy is not installed: run scripts/setup.sh");
        let mut config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    option forwardfor\n    retries 3\n    option redispatch\n\
             \x20   timeout connect 1s\n    timeout client 90s\n    timeout server 90s\n\
             frontend agents\n    bind 127.0.0.1:{listen}\n    default_backend controllers\n\
             backend controllers\n    balance hdr(Authorization)\n    hash-type consistent\n\
             \x20   option httpchk GET /healthz\n\
             \x20   default-server inter 200ms fall 2 rise 2\n"
        );
        for (i, port) in servers.iter().enumerate() {
            config.push_str(&format!("    server c{i} 127.0.0.1:{port} check\n"));
        }
        config.push_str(&format!(
            "frontend agent_calls\n    bind 127.0.0.1:{agents_listen}\n    default_backend agent_listeners\n\
             backend agent_listeners\n    balance hdr(Authorization)\n    hash-type consistent\n\
             \x20   option httpchk GET /healthz\n\
             \x20   default-server inter 200ms fall 2 rise 2\n"
        ));
        for (i, (port, api)) in agent_servers.iter().zip(servers).enumerate() {
            config.push_str(&format!(
                "    server a{i} 127.0.0.1:{port} check port {api}\n"
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Balancer { child, log }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A counter or gauge from the `/metrics` of the replica on `port` (0 if absent).
async fn metric(http: &reqwest::Client, port: u16, name: &str) -> f64 {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_lose_nothing_when_one_is_killed() {
    let started = Instant::now();
    let test_db = TestDb::new(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    // The test's own pool (this also runs the migrations, before any replica starts).
    let db = Db::open(&test_db.url, 4).unwrap();

    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 2 * REPLICAS + 2 {
        let port = fixed_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let balancer_port = ports.pop().unwrap();
    let balancer_agents_port = ports.pop().unwrap();
    let agent_ports = ports.split_off(REPLICAS);
    let configs: Vec<ControllerConfig> = ports
        .iter()
        .zip(&agent_ports)
        .map(|(&port, &agent_port)| {
            let mut config = ControllerConfig {
                heartbeat_interval_s: 1,
                online_window_s: 60,
                lease_s: 3,
                run_deadline_s: 20,
                max_db_connections: 4,
                agent_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, agent_port))),
                agent_url: Some(format!("http://127.0.0.1:{balancer_agents_port}")),
                ..child_config(&test_db, dir.path(), port)
            };
            config.geo.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            config
        })
        .collect();
    let mut replicas = Vec::new();
    for config in &configs {
        replicas.push(Some(ControllerProcess::start(config, 1, dir.path()).await));
    }
    let balancer = Balancer::start(
        dir.path(),
        balancer_port,
        &ports,
        balancer_agents_port,
        &agent_ports,
    );
    let base = format!("http://127.0.0.1:{balancer_port}");
    let http = http_client();
    let health = format!("{base}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(&health)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "HAProxy did not serve /healthz within 30 s:\n{}",
            std::fs::read_to_string(&balancer.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (owner_id, owner) =
        owner_with_grant(&mut db.conn().unwrap(), "Replica Shop", "replica-grant");
    let (volunteers, keys) = two_volunteers(&db);
    let site = TargetSite::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SiteConfig {
            think_time: Duration::from_millis(300),
            ..SiteConfig::default()
        },
    )
    .await
    .unwrap();
    let site_id = verified_site(&http, &base, &owner, &site).await;

    // Real agents from the test places, all talking to the balancer.
    let agents = PlaceAgents::spawn(&base, &keys, dir.path(), "replica-agent");
    wait_until(
        "all four agents enrolled and calibrated through the balancer",
        Duration::from_secs(90),
        || {
            n(
                &db,
                "SELECT COUNT(*) AS n FROM agents WHERE measured_class IS NOT NULL",
            ) == PLACES.len() as i64
        },
    )
    .await;
    // The balancer passed the agents' own addresses on: they are located by them.
    assert_eq!(
        n(
            &db,
            "SELECT COUNT(*) AS n FROM agents WHERE country IS NULL"
        ),
        0,
        "agents located as the balancer's address"
    );

    site.reset_connection_stats();
    let check = create_check(
        &http,
        &base,
        &owner,
        json!({
            "site_id": site_id,
            "name": "replica test",
            "url": format!("{}/", site.origin()),
            "expected_status": [200],
            "timeout_ms": 10_000,
            "selection": {"agents_per_run": PLACES.len()},
            "schedule": {"every_seconds": EVERY_S},
        }),
    )
    .await;

    // Three schedulers run the check; kill one replica while its work is out.
    wait_until("three scheduled runs", Duration::from_secs(60), || {
        n(&db, "SELECT COUNT(*) AS n FROM runs") >= 3
    })
    .await;
    wait_until("an assignment is leased", Duration::from_secs(60), || {
        n(
            &db,
            "SELECT COUNT(*) AS n FROM open_assignments WHERE state = 'leased'",
        ) > 0
    })
    .await;
    // The replica that handed out the most leases: agents hashed to it.
    let mut busiest = (0, -1.0);
    for (i, port) in ports.iter().enumerate() {
        let leased = metric(&http, *port, "lastmile_assignments_leased_total").await;
        if leased > busiest.1 {
            busiest = (i, leased);
        }
    }
    // Its agent listener's count dies with it: read it first. (Agents hashed to it may
    // all have been its: counting the survivors only, the check below failed once.)
    let listened_by_killed = metric(
        &http,
        ports[busiest.0],
        "lastmile_agent_listener_requests_total",
    )
    .await;
    replicas[busiest.0].take().unwrap().kill();
    let killed_at = lastmile_domain::clock::now_us();
    let leased_at_kill = n(
        &db,
        "SELECT COUNT(*) AS n FROM open_assignments WHERE state = 'leased'",
    );

    // The two left carry on: more runs, measured and delivered through the balancer.
    wait_until(
        "three more runs after the kill, measured",
        Duration::from_secs(90),
        || {
            n(
                &db,
                &format!(
                    "SELECT COUNT(*) AS n FROM runs r WHERE r.created_at > {killed_at} \
                 AND EXISTS (SELECT 1 FROM results x JOIN assignments a ON a.id = x.assignment_id \
                             WHERE a.run_id = r.id)"
                ),
            ) >= 3
        },
    )
    .await;

    // Stop the schedule; the agents deliver what they have.
    let (status, paused) = call(
        &http,
        &base,
        &owner,
        "POST",
        &format!("/api/v1/checks/{check}/pause"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    agents.deliver_and_stop(&db, &site).await;
    // The hot calls went through the agent listeners (the killed replica said so before
    // it died, the replicas alive now say so).
    let mut listened = listened_by_killed;
    for (replica, port) in replicas.iter().zip(&ports) {
        if replica.is_some() {
            listened += metric(&http, *port, "lastmile_agent_listener_requests_total").await;
        }
    }
    assert!(
        listened > 0.0,
        "no call reached the agent listeners through the balancer"
    );
    for replica in replicas.into_iter().flatten() {
        replica.kill();
    }
    drop(balancer);

    // Each scheduled slot made one run: three schedulers, one claim. The claim moves
    // the next run time on by the interval from the moment it is made, so two runs of
    // the schedule are never closer than the interval (two claims of one slot would be
    // milliseconds apart).
    let times: Vec<i64> = {
        use diesel::prelude::*;
        use lastmile_storage::schema::runs;
        runs::table
            .filter(runs::check_id.eq(&check))
            .order(runs::created_at)
            .select(runs::created_at)
            .load(&mut db.conn().unwrap())
            .unwrap()
    };
    let closest = times.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        closest >= EVERY_S * 1_000_000 - 50_000,
        "two scheduled runs {closest} µs apart: a slot was claimed twice"
    );

    let measurements = site.connections().accepted as i64;
    let results = n(&db, "SELECT COUNT(*) AS n FROM results");
    let late = n(&db, "SELECT COUNT(*) AS n FROM results WHERE late");
    let reoffered = n(
        &db,
        "SELECT COUNT(*) AS n FROM assignments WHERE attempt > 1",
    );
    println!(
        "replica test: {REPLICAS} replicas, one killed with {leased_at_kill} assignments \
         leased; {} runs, {measurements} measurements, {results} results ({late} late), \
         {reoffered} re-offered; {:.1} s",
        times.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(measurements > 0);
    assert_reconciled(&db, measurements, &owner_id, &volunteers, &check);
}
