//! `lastmile-demo`: the whole product on one machine, in one process.
//!
//! It starts a controller (embedded SQLite unless `DATABASE_URL` is set), a target
//! site, and twelve probe agents in three countries, three ASNs and four connection
//! classes. Each agent sends from its own loopback address (127.0.0.11 and up), so the
//! controller places it by a real MaxMind DB lookup of the address it sees; the demo
//! writes those small City and ASN databases for its 127.0.0.0/8 test range. Each
//! agent reaches the site through its own emulated last-mile link
//! ([`lastmile_testbed::link`]). An owner then adds and verifies the site, creates a
//! check and runs it several times through the HTTP API, and the demo prints the SLA
//! report the API serves. The owner buys credit by Stripe Checkout at the start and
//! pays for each result from it; two of the three volunteers set up payouts with
//! Stripe Connect, and a payout pass after the runs pays them. Stripe is
//! [`lastmile_testbed::stripe::FakeStripe`], reached through the real client and
//! webhook path. The demo prints where the money went and writes the trial balance.
//!
//! Because the links are emulated, the report must show their physics: each class's
//! fastest ttfb and total ordered dialup > dsl > cable > fibre (the fastest, because a
//! loaded machine only adds delay; see [`judge_physics`]). The demo checks that, and
//! fails only when the report's own confidence intervals show the order reversed: on a
//! machine loaded enough to delay every sample of a fast line, it says the order is
//! not conclusive instead of failing the front door.
//!
//! Beside the `http` check of the home page, a `page` check loads the shop's product
//! page ([`lastmile_testbed::shop`]: HTML, stylesheet, font, script, images, one missing
//! image) as a browser would; its report is on the page total and must show the same
//! ordering, and the demo prints each class's latest page summary. A third check
//! downloads 1 MiB ([`lastmile_testbed::shop::DOWNLOAD_PATH`]) over the DSL and cable
//! lines: its report gives each line's goodput, which must stay within the line's rate
//! and order dsl < cable ([`judge_goodput`]), and a `goodput p10 >= 20 Mbit/s`
//! objective that DSL breaches. A fourth, a `throughput` check, loads the same two
//! lines with four connections for three seconds: each line's goodput and its round
//! trip before and under the load, which must rise by the line's queue
//! ([`judge_speed`]), so its `loaded_latency p95 <= 100 ms` objective is breached on
//! both (bufferbloat).

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use lastmile_agent::measure::{ConnectTo, EngineConfig};
use lastmile_agent::reflector::Reflector;
use lastmile_agent::runner::AgentSettings;
use lastmile_protocol::{AgentLimits, ConnectionClass, Figure, Phase};
use lastmile_testbed::geodb::{self, TestNetwork};
use lastmile_testbed::link::{Link, LinkProfile};
use lastmile_testbed::site::{SiteConfig, TargetSite};
use lastmile_testbed::stripe::FakeStripe;
use lastmile_testbed::udp_link::{Impairment, UdpLink};
use serde_json::json;
use tokio::sync::watch;

use lastmile_billing::{AccountKind, Currency, Money};

use lastmile_controller::config::ControllerConfig;
use lastmile_controller::server::Controller;
use lastmile_domain::billing::TrialBalance;
use lastmile_domain::checks::CheckView;
use lastmile_domain::geo::GeoConfig;
use lastmile_domain::reports::{self, Report};
use lastmile_domain::scheduling::RunView;
use lastmile_domain::sites::SiteView;
use lastmile_domain::{accounts, agents, clock};

pub mod cli;

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Write `report.json` (exactly what the report API served), `isp_report.json` and
    /// `ledger.json` (the trial balance) here.
    pub out: Option<PathBuf>,
    /// PostgreSQL URL; `None` means embedded SQLite in a temporary directory.
    pub database_url: Option<String>,
    /// How many runs of the check to make: 22 by default, so that each connection
    /// class (three agents) has the 59 samples a p95 interval needs, with room to spare.
    pub runs: u32,
    /// How many runs of the page check to make (each loads a whole page over every link,
    /// dial-up included): `runs`, at most 5, unless set.
    pub page_runs: Option<u32>,
    /// Print progress and the report to stdout.
    pub verbose: bool,
    /// After the report, keep the controller and agents running (until Ctrl-C) and
    /// print the dashboard's address with demo sign-ins.
    pub serve: bool,
}

/// The demo check's runs by default (see [`DemoOptions::runs`]).
pub const DEFAULT_RUNS: u32 = 22;

impl DemoOptions {
    /// The page check's runs.
    pub fn page_runs(&self) -> u32 {
        self.page_runs.unwrap_or(self.runs.min(5)).max(1)
    }
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: None,
            database_url: None,
            runs: DEFAULT_RUNS,
            page_runs: None,
            verbose: true,
            serve: false,
        }
    }
}

/// What the demo produced.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The report grouped by connection class and country.
    pub report: Report,
    /// The report grouped by connection class alone.
    pub by_class: Report,
    /// Whether ttfb and total were ordered dialup > dsl > cable > fibre.
    pub physics: Physics,
    /// The `page` check's report grouped by connection class (total = page total).
    pub page_by_class: Report,
    /// Whether the page check's ttfb and page total show the same ordering.
    pub page_physics: Physics,
    /// The download check's report by connection class (dsl, cable): goodput.
    pub download_by_class: Report,
    /// Whether each line's goodput stays within its rate, in the lines' order.
    pub download_physics: Physics,
    /// The throughput check's report by connection class (dsl, cable): goodput, idle
    /// and loaded latency.
    pub speed_by_class: Report,
    /// Whether the loads show the lines: goodput within each rate, and the round trip
    /// under load above the idle one by the line's queue.
    pub speed_physics: Physics,
    /// The video check's report by connection class (dsl, cable): start-up delay and
    /// stall time of the 30 Mbit/s rendition.
    pub stream_by_class: Report,
    /// Whether the stream plays on cable and stalls on DSL, as their rates say.
    pub stream_physics: Physics,
    /// The game check's report by connection class: round trip, jitter and loss of a
    /// udp stream to the site's reflector.
    pub game_by_class: Report,
    /// Whether the stream's round trips follow the lines' and dial-up's upstream loses
    /// what it cannot carry.
    pub game_physics: Physics,
    /// The page check's runs.
    pub page_runs: Vec<RunView>,
    /// Each class's latest page summary, slowest class first.
    pub pages: Vec<(String, lastmile_protocol::PageSummary)>,
    /// Runs made and how many measurements each got.
    pub runs: Vec<RunView>,
    /// What the ISP API served to the ISP of the demo's first network (`isp_report.json`).
    pub isp_report: serde_json::Value,
    /// How each agent's calibration classified its line.
    pub calibration: Vec<CalibratedAgent>,
    /// The ledger's trial balance at the end (`ledger.json`).
    pub ledger: TrialBalance,
    /// This week's leaderboard as the public API served it (`leaderboard.json`).
    pub leaderboard: lastmile_domain::leaderboard::Leaderboard,
    /// Results verification flagged (0 for the demo's honest agents).
    pub flagged: i64,
    /// Calls the agents made to the agent listener their heartbeats named (their
    /// heartbeats, leases and results, once they had it).
    pub agent_listener_calls: u64,
}

/// One demo agent's line as it declared it and as the controller measured it.
#[derive(Debug, Clone)]
pub struct CalibratedAgent {
    /// The class of the emulated link the agent sits behind (and declared).
    pub declared: String,
    /// The class calibration gave it (`None` if it never calibrated).
    pub measured: Option<String>,
    /// Whether the controller flagged the two as contradicting each other.
    pub mismatch: bool,
}

/// One demo agent: where it sits and what line it has.
struct DemoAgent {
    ip: Ipv4Addr,
    class: ConnectionClass,
    country: &'static str,
}

/// The demo's world: three countries, one ASN each, four classes in each.
const PLACES: [(&str, &str, &str, u32, &str); 3] = [
    ("DE", "BE", "Berlin", 64_501, "Demo Telekom DE"),
    ("US", "CA", "San Francisco", 64_502, "Demo Cable US"),
    ("BR", "SP", "Sao Paulo", 64_503, "Demo Fibra BR"),
];

const CLASSES: [ConnectionClass; 4] = [
    ConnectionClass::Dialup,
    ConnectionClass::Dsl,
    ConnectionClass::Cable,
    ConnectionClass::Fibre,
];

fn demo_agents() -> Vec<DemoAgent> {
    let mut out = Vec::new();
    for (i, (country, ..)) in PLACES.iter().enumerate() {
        for (j, class) in CLASSES.iter().enumerate() {
            out.push(DemoAgent {
                ip: Ipv4Addr::new(127, 0, 0, 11 + (i * CLASSES.len() + j) as u8),
                class: *class,
                country,
            });
        }
    }
    out
}

/// Writes the demo's City and ASN databases for its agents' addresses.
fn write_geo_databases(dir: &Path, agents: &[DemoAgent]) -> anyhow::Result<GeoConfig> {
    let networks: Vec<TestNetwork> = agents
        .iter()
        .filter_map(|a| {
            let (country, region, city, asn, org) = PLACES.iter().find(|p| p.0 == a.country)?;
            Some(TestNetwork {
                network: ipnet::IpNet::from(IpAddr::V4(a.ip)),
                country: (*country).into(),
                region: (*region).into(),
                city: (*city).into(),
                asn: *asn,
                as_org: (*org).into(),
            })
        })
        .collect();
    let city_db = dir.join("demo-city.mmdb");
    let asn_db = dir.join("demo-asn.mmdb");
    geodb::write_city_db(&city_db, &networks)?;
    geodb::write_asn_db(&asn_db, &networks)?;
    Ok(GeoConfig {
        city_db: Some(city_db),
        asn_db: Some(asn_db),
        ..GeoConfig::default()
    })
}

macro_rules! say {
    ($opts:expr, $($arg:tt)*) => {
        if $opts.verbose {
            println!($($arg)*);
        }
    };
}

/// Runs the demo end to end.
pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoOutcome> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("lastmile-demo-")
        .tempdir()?;
    let plan = demo_agents();
    let geo = write_geo_databases(dir.path(), &plan)?;

    // Stripe for the demo: the fake, with test keys of its own.
    let stripe = FakeStripe::start(DEMO_STRIPE_KEY, DEMO_WEBHOOK_SECRET).await?;
    let config = ControllerConfig {
        stripe: lastmile_controller::config::StripeConfig {
            secret_key: Some(DEMO_STRIPE_KEY.into()),
            webhook_secret: Some(DEMO_WEBHOOK_SECRET.into()),
            api_base: Some(stripe.url()),
            payout_threshold_minor: DEMO_PAYOUT_THRESHOLD_MINOR,
            // The demo runs its payout pass itself, after the runs.
            payout_interval_s: 0,
            ..lastmile_controller::config::StripeConfig::default()
        },
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        // As deployed (deploy/compose.yaml): the agents' hot calls on a listener of
        // their own, which their heartbeats name (see ARCHITECTURE "The agent listener").
        agent_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        database_url: opts.database_url.clone(),
        data_dir: dir.path().join("controller"),
        geo,
        heartbeat_interval_s: 2,
        online_window_s: 10,
        lease_s: 30,
        run_deadline_s: 60,
        min_check_interval_s: 1,
        allow_private_sites: true,
        scheduler_tick_ms: 200,
        ..ControllerConfig::default()
    };
    let backend = lastmile_storage::Backend::from_url(&config.effective_database_url());
    let controller = Controller::start(config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    stripe.set_webhook_url(&format!("{}/api/v1/stripe/webhook", controller.url()));
    let site =
        TargetSite::start(SocketAddr::from(([127, 0, 0, 1], 0)), SiteConfig::default()).await?;
    say!(
        opts,
        "Lastmile demo\n  controller  {} ({} database; agents' listener {})\n  target site {}\n  stripe      {} (fake)",
        controller.url(),
        backend.name(),
        controller.agent_url().unwrap_or_default(),
        site.origin(),
        stripe.url()
    );

    // Accounts, as an operator would make them with `owner create` / `volunteer create`.
    let db = controller.state.db.clone();
    let (owner_id, owner_token, volunteer_ids, enrol_keys) = db
        .run(|c| {
            let (owner, token) = accounts::create_owner(c, "Demo Shop Ltd")?;
            let (mut ids, mut keys) = (Vec::new(), Vec::new());
            for (country, ..) in PLACES {
                let (v, key) = accounts::create_volunteer(c, &format!("Volunteers of {country}"))?;
                ids.push(v.id);
                keys.push(key);
            }
            Ok::<_, lastmile_domain::Error>((owner.id, token, ids, keys))
        })
        .await?;

    // The owner's site, verified, and the reflector it runs on its host with the site's
    // token (`lastmile-reflector`), for the game check's udp streams.
    let api = DemoClient::new(controller.url(), &owner_token)?;
    let created: SiteView = api
        .post("/api/v1/sites", &json!({"origin": site.origin()}))
        .await?;
    site.publish_verification_token(&created.verification_token);
    let verified: SiteView = api
        .post(&format!("/api/v1/sites/{}/verify", created.id), &json!({}))
        .await?;
    let reflector = Reflector::start(
        SocketAddr::new(site.addr().ip(), 0),
        created.verification_token.clone(),
    )
    .await?;

    // Links and agents.
    let (stop_agents, agents_stopped) = watch::channel(false);
    let mut links = Vec::new();
    let mut udp_links = Vec::new();
    let mut agent_tasks = tokio::task::JoinSet::new();
    for (i, a) in plan.iter().enumerate() {
        let profile = LinkProfile::for_class(a.class);
        let link = Link::start(SocketAddr::from(([127, 0, 0, 1], 0)), site.addr(), profile).await?;
        // Calibration goes through the same kind of link, so the controller measures the
        // line the agent really has.
        let calibration_link = Link::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            controller.addr,
            profile,
        )
        .await?;
        // Datagrams to the reflector cross a line of the same class, with its jitter
        // and loss.
        let udp_link = UdpLink::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            reflector.addr(),
            profile,
            Impairment::for_class(a.class),
            i as u64,
        )
        .await?;
        let settings = AgentSettings {
            controller: controller.url().parse()?,
            enrol_key: Some(enrol_keys[i / CLASSES.len()].clone()),
            state_dir: dir.path().join(format!("agent-{i}")),
            name: format!("{}-{}-{}", a.country.to_lowercase(), a.class, i),
            declared_class: a.class,
            limits: AgentLimits { max_concurrent: 2 },
            engine: EngineConfig {
                allow_private: true,
                ca_file: None,
                source_addr: Some(IpAddr::V4(a.ip)),
                connect_to: vec![
                    ConnectTo {
                        host: site.addr().ip().to_string(),
                        port: site.addr().port(),
                        addr: link.addr(),
                    },
                    ConnectTo {
                        host: reflector.addr().ip().to_string(),
                        port: reflector.addr().port(),
                        addr: udp_link.addr(),
                    },
                ],
                allow_nets: Vec::new(),
            },
            idle_poll: Duration::from_millis(200),
            calibration_url: Some(format!("http://{}", calibration_link.addr()).parse()?),
            calibration_bytes_per_day: 20 * 1024 * 1024,
            volunteer: lastmile_agent::limits::VolunteerLimits::default(),
            spool_max_results: lastmile_agent::spool::DEFAULT_MAX_RESULTS,
            path_trace: true,
        };
        let mut stopped = agents_stopped.clone();
        agent_tasks.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            lastmile_agent::run(settings, shutdown).await
        });
        links.push(link);
        links.push(calibration_link);
        udp_links.push(udp_link);
    }
    say!(opts, "  agents      {} behind emulated links:", plan.len());
    for class in CLASSES {
        let p = LinkProfile::for_class(class);
        say!(
            opts,
            "              {:<7} {:>9} down / {:>9} up, {:>4} ms RTT",
            class.as_str(),
            rate(p.down_bps),
            rate(p.up_bps),
            p.rtt.as_millis()
        );
    }

    let outcome = async {
        let calibration = wait_for_agents(&controller, plan.len(), &opts).await?;
        buy_credit(&api, &stripe, &opts).await?;
        // Two of the three volunteers set up payouts; the third keeps their earnings.
        for key in &enrol_keys[..2] {
            let volunteer = DemoClient::new(controller.url(), key)?;
            let onboarding: lastmile_domain::payouts::OnboardingView = volunteer
                .post("/api/v1/volunteer/stripe/onboarding", &json!({}))
                .await?;
            let delivery = stripe.complete_onboarding(&onboarding.account_id).await?;
            anyhow::ensure!(
                delivery.status == 200,
                "account.updated webhook answered {}: {}",
                delivery.status,
                delivery.body
            );
        }
        say!(
            opts,
            "  payouts     2 of 3 volunteers onboarded to Stripe Connect"
        );

        say!(
            opts,
            "  site        {} verified: {}; its reflector on udp://{}",
            verified.origin,
            verified.verified,
            reflector.addr()
        );

        let check: CheckView = api
            .post(
                "/api/v1/checks",
                &json!({
                    "site_id": verified.id,
                    "name": "Demo shop home page",
                    "url": format!("{}/", site.origin()),
                    "expected_status": [200],
                    "timeout_ms": 20000,
                    "selection": {"agents_per_run": plan.len()},
                    "isp_sharing": true,
                    // Dial-up cannot keep this promise; the report says so.
                    "objectives": [
                        {"phase": "ttfb", "percentile": 95, "max_ms": 300},
                        {"availability_min": 99.5},
                    ],
                }),
            )
            .await?;
        say!(opts, "  check       {} ({})\n", check.name, check.url);

        let runs = run_times(&api, &check, opts.runs.max(1), &opts).await?;

        let report_path = format!(
            "/api/v1/checks/{}/report?group_by=connection_class,country",
            check.id
        );
        let report_json = api.get_text(&report_path).await?;
        let report: Report = serde_json::from_str(&report_json)?;
        // With the merged histograms: the physics are judged on each class's fastest
        // sample (see `judge_physics`).
        let by_class_json = api
            .get_text(&format!(
                "/api/v1/checks/{}/report?group_by=connection_class&histograms=true",
                check.id
            ))
            .await?;
        let by_class: Report = serde_json::from_str(&by_class_json)?;

        // The ISP operating the demo's German network sees only its own rows.
        let (isp_asn, isp_name) = (PLACES[0].3, PLACES[0].4);
        let isp_token = db
            .run(move |c| Ok::<_, lastmile_domain::Error>(lastmile_domain::isp::create(c, isp_name, &[isp_asn])?.1))
            .await?;
        let isp_api = DemoClient::new(controller.url(), &isp_token)?;
        let isp_json = isp_api.get_text("/api/v1/isp/summary?window=24h").await?;
        let isp_report: serde_json::Value = serde_json::from_str(&isp_json)?;

        let page = page_check(&api, &verified, plan.len(), &opts).await?;
        let shaped = plan
            .iter()
            .filter(|p| DOWNLOAD_CLASSES.contains(&p.class))
            .count();
        let download = download_check(&api, &verified, shaped, &opts).await?;
        let speed = speed_check(&api, &verified, shaped, &opts).await?;
        let stream = stream_check(&api, &verified, shaped, &opts).await?;
        let game = game_check(&api, &verified, reflector.addr(), plan.len(), &opts).await?;
        let page_id = page.check_id.clone();
        let pages = db
            .run(move |c| lastmile_domain::ingest::latest_pages(c, &page_id, 200))
            .await?;
        // The payout pass the server runs periodically, once, now.
        let api_client = controller
            .state
            .stripe
            .clone()
            .context("the demo controller has no Stripe client")?;
        let pass = lastmile_domain::payouts::run_pass(
            &db,
            &api_client,
            lastmile_domain::payouts::threshold(&controller.state.config.stripe),
        )
        .await?;
        say!(
            opts,
            "Payout pass: {} payouts completed ({}) through Stripe Connect, {} failed, {} in transit",
            pass.completed,
            Money::new(pass.paid_minor, Currency::USD),
            pass.failed,
            pass.in_transit
        );

        let ledger = db.run(lastmile_domain::billing::trial_balance).await?;

        if let Some(out) = &opts.out {
            std::fs::create_dir_all(out)?;
            std::fs::write(out.join("page_report.json"), &page.report_json)?;
            std::fs::write(out.join("download_report.json"), &download.report_json)?;
            std::fs::write(out.join("speed_report.json"), &speed.report_json)?;
            std::fs::write(out.join("stream_report.json"), &stream.report_json)?;
            std::fs::write(out.join("game_report.json"), &game.report_json)?;
        }
        if let Some(out) = &opts.out {
            std::fs::create_dir_all(out)?;
            std::fs::write(out.join("report.json"), &report_json)?;
            std::fs::write(out.join("report_by_class.json"), &by_class_json)?;
            std::fs::write(out.join("isp_report.json"), &isp_json)?;
            std::fs::write(
                out.join("ledger.json"),
                serde_json::to_string_pretty(&ledger)?,
            )?;
        }
        Ok::<_, anyhow::Error>((
            report,
            by_class,
            runs,
            isp_report,
            calibration,
            ledger,
            (page, pages),
            (download, speed, stream, game),
        ))
    }
    .await;

    let (
        report,
        by_class,
        runs,
        isp_report,
        calibration,
        ledger,
        (page, pages),
        (download, speed, stream, game),
    ) = match outcome {
        Ok(o) => o,
        Err(e) => {
            let _ = stop_agents.send(true);
            while let Some(done) = agent_tasks.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %e, "demo agent ended with an error");
                }
            }
            drop(links);
            drop(udp_links);
            let _ = controller.stop().await;
            return Err(e);
        }
    };

    let physics = judge_physics(&by_class);
    say!(
        opts,
        "\nSLA report: {} (window from {})\n",
        report.check.name,
        report.window.from
    );
    say!(opts, "{}", reports::to_table(&report));
    say!(
        opts,
        "By connection class:\n{}",
        reports::to_table(&by_class)
    );
    say!(
        opts,
        "Link physics (fastest ttfb and total per class, dialup > dsl > cable > fibre): {physics}"
    );
    let page_physics = judge_physics(&page.by_class);
    say!(
        opts,
        "\nPage load: {} (page total = start to the last byte of the last sub-resource)\n{}",
        page.by_class.check.name,
        reports::to_table(&page.by_class)
    );
    for (class, p) in &pages {
        say!(opts, "  {class:<9} {}", page_line(p));
    }
    say!(
        opts,
        "Page physics (fastest ttfb and page total per class, dialup > dsl > cable > fibre): {page_physics}"
    );
    let download_physics = judge_goodput(&download.by_class);
    print_judged(
        &opts,
        "Download",
        "goodput = body bytes over the body's transfer",
        &download.by_class,
        "Goodput physics (each line within its rate, dsl < cable)",
        &download_physics,
    );
    let speed_physics = judge_speed(&speed.by_class);
    print_judged(
        &opts,
        "Line speed",
        "4 connections for 3 s; latency = HEAD round trips before and during the load",
        &speed.by_class,
        "Load physics (goodput within each rate, dsl < cable; loaded latency above idle by the line's queue)",
        &speed_physics,
    );
    let stream_physics = judge_stream(&stream.by_class);
    print_judged(
        &opts,
        "Stream",
        "6 s of the 30 Mbit/s rendition; start-up = first request to playback, stalls after it",
        &stream.by_class,
        "Stream physics (cable plays through, dsl's 16 Mbit/s stalls the 30 Mbit/s rendition)",
        &stream_physics,
    );
    let game_physics = judge_game(&game.by_class);
    print_judged(
        &opts,
        "Game",
        "a 172-byte packet every 20 ms for 3 s to the site's reflector; jitter = mean change of the round trip",
        &game.by_class,
        "Game physics (round trip dialup > dsl > cable; dial-up's 33.6 kbit/s upstream drops what a 69 kbit/s stream sends)",
        &game_physics,
    );
    let isp_rows = isp_report["rows"].as_array().map_or(0, Vec::len);
    say!(
        opts,
        "ISP view: {} (AS{}) sees {isp_rows} rows, all of its own network",
        PLACES[0].4,
        PLACES[0].3
    );
    say!(opts, "{}", money_summary(&ledger));
    let flagged = controller
        .state
        .db
        .run(lastmile_domain::verification::total_flagged)
        .await?;
    say!(
        opts,
        "Verification: {flagged} results flagged as fake work (kept, not counted, not paid)"
    );
    let leaderboard_json = reqwest::get(format!(
        "{}/api/v1/leaderboard?period=week",
        controller.url()
    ))
    .await?
    .error_for_status()?
    .text()
    .await?;
    let leaderboard: lastmile_domain::leaderboard::Leaderboard =
        serde_json::from_str(&leaderboard_json)?;
    say!(
        opts,
        "Leaderboard this week (points: 10/h online, 1/measurement, 1/10 s measuring):"
    );
    for e in leaderboard.entries.iter().take(5) {
        say!(
            opts,
            "  {:>2}. {:<24} {:>5} points ({} measurements, {:.1} h online)",
            e.rank,
            e.volunteer,
            e.points,
            e.measurements,
            e.online_hours
        );
    }
    if let Some(out) = &opts.out {
        std::fs::write(out.join("leaderboard.json"), &leaderboard_json)?;
        say!(
            opts,
            "Wrote {}, {}, {}, {}, {}, {}, {}, {}, {} and {}",
            out.join("report.json").display(),
            out.join("report_by_class.json").display(),
            out.join("page_report.json").display(),
            out.join("download_report.json").display(),
            out.join("speed_report.json").display(),
            out.join("stream_report.json").display(),
            out.join("game_report.json").display(),
            out.join("isp_report.json").display(),
            out.join("ledger.json").display(),
            out.join("leaderboard.json").display()
        );
    }
    if opts.serve {
        serve_dashboard(&controller, &owner_id, &volunteer_ids[0]).await?;
    }
    let _ = stop_agents.send(true);
    while let Some(done) = agent_tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "demo agent ended with an error");
        }
    }
    drop(links);
    drop(udp_links);
    drop(reflector);
    let agent_listener_calls = controller
        .state
        .metrics
        .agent_listener_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    controller.stop().await?;
    say!(
        opts,
        "Demo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(DemoOutcome {
        report,
        by_class,
        physics,
        page_by_class: page.by_class,
        page_physics,
        download_by_class: download.by_class,
        download_physics,
        speed_by_class: speed.by_class,
        speed_physics,
        stream_by_class: stream.by_class,
        stream_physics,
        game_by_class: game.by_class,
        game_physics,
        page_runs: page.runs,
        pages,
        runs,
        isp_report,
        calibration,
        ledger,
        leaderboard,
        flagged,
        agent_listener_calls,
    })
}

/// What the demo's page check produced.
struct PageCheck {
    check_id: String,
    runs: Vec<RunView>,
    by_class: Report,
    report_json: String,
}

/// Creates the `page` check of the shop's product page, runs it as often as the http
/// check, and fetches its report by connection class.
async fn page_check(
    api: &DemoClient,
    site: &SiteView,
    agents: usize,
    opts: &DemoOptions,
) -> anyhow::Result<PageCheck> {
    let check: CheckView = api
        .post(
            "/api/v1/checks",
            &json!({
                "site_id": site.id,
                "name": "Demo shop product page (page load)",
                "url": format!("{}{}", site.origin, lastmile_testbed::shop::PAGE_PATH),
                "kind": "page",
                "expected_status": [200],
                "timeout_ms": 30000,
                "selection": {"agents_per_run": agents},
            }),
        )
        .await?;
    say!(
        opts,
        "\n  check       {} ({}, kind page)",
        check.name,
        check.url
    );
    let runs = run_times(api, &check, opts.page_runs(), opts).await?;
    let report_json = api
        .get_text(&format!(
            "/api/v1/checks/{}/report?group_by=connection_class",
            check.id
        ))
        .await?;
    let by_class: Report = api
        .get(&format!(
            "/api/v1/checks/{}/report?group_by=connection_class&histograms=true",
            check.id
        ))
        .await?;
    Ok(PageCheck {
        check_id: check.id.to_string(),
        runs,
        by_class,
        report_json,
    })
}

/// Prints a by-class check's table under `title` (with `what` its figures mean), then
/// the verdict on its physics.
fn print_judged(
    opts: &DemoOptions,
    title: &str,
    what: &str,
    report: &Report,
    rule: &str,
    physics: &Physics,
) {
    say!(
        opts,
        "\n{title}: {} ({what})\n{}",
        report.check.name,
        reports::to_table(report)
    );
    say!(opts, "{rule}: {physics}");
}

/// A check's report by connection class, as the demo reads it and writes it out.
struct ClassReport {
    by_class: Report,
    report_json: String,
}

/// Creates the check `body` describes, runs it `runs` times and fetches its report by
/// connection class.
async fn check_by_class(
    api: &DemoClient,
    body: &serde_json::Value,
    runs: u32,
    opts: &DemoOptions,
) -> anyhow::Result<ClassReport> {
    let check: CheckView = api.post("/api/v1/checks", body).await?;
    say!(opts, "\n  check       {} ({})", check.name, check.url);
    run_times(api, &check, runs, opts).await?;
    let path = format!(
        "/api/v1/checks/{}/report?group_by=connection_class",
        check.id
    );
    let report_json = api.get_text(&path).await?;
    Ok(ClassReport {
        by_class: serde_json::from_str(&report_json)?,
        report_json,
    })
}

/// The lines the download check measures. Dial-up would take 2.5 minutes for 1 MiB;
/// fibre 8 ms, which a user-space relay on a loaded machine cannot shape: a relay
/// descheduled for 20 ms sends the whole body at once after its first byte, the
/// transfer reads far shorter than the line allows, and verification rightly flags the
/// result as faster than the line (with 256 KiB, 2 ms on fibre, seen on debug builds:
/// transfers of 0.5 ms, 4 Gbit/s, 1 to 2 results in 9).
const DOWNLOAD_CLASSES: [ConnectionClass; 2] = [ConnectionClass::Dsl, ConnectionClass::Cable];

/// Creates an `http` check of the site's 1 MiB download for [`DOWNLOAD_CLASSES`],
/// runs it as often as the page check, and fetches its report by connection class:
/// goodput per line. It promises 20 Mbit/s to 90 % of downloads, which DSL's 16 Mbit/s
/// cannot keep.
async fn download_check(
    api: &DemoClient,
    site: &SiteView,
    agents: usize,
    opts: &DemoOptions,
) -> anyhow::Result<ClassReport> {
    check_by_class(
        api,
        &json!({
            "site_id": site.id,
            "name": "Demo shop download (1 MiB)",
            "url": format!("{}{}", site.origin, lastmile_testbed::shop::DOWNLOAD_PATH),
            "expected_status": [200],
            "timeout_ms": 20000,
            "selection": {"agents_per_run": agents, "connection_classes": DOWNLOAD_CLASSES},
            "objectives": [{"figure": "goodput", "percentile": 10, "min_kbps": 20000}],
        }),
        opts.page_runs(),
        opts,
    )
    .await
}

/// Creates a `throughput` check of the site's download for [`DOWNLOAD_CLASSES`] (four
/// connections for three seconds) and runs it once: each line's goodput, and its round
/// trip before and under the load. It promises a loaded round trip under 100 ms, which
/// the emulated lines' 250 ms buffers cannot keep (bufferbloat).
async fn speed_check(
    api: &DemoClient,
    site: &SiteView,
    agents: usize,
    opts: &DemoOptions,
) -> anyhow::Result<ClassReport> {
    check_by_class(
        api,
        &json!({
            "site_id": site.id,
            "name": "Demo line speed",
            "kind": "throughput",
            "url": format!("{}{}", site.origin, lastmile_testbed::shop::DOWNLOAD_PATH),
            "throughput": {"connections": 4, "duration_ms": 3000},
            "timeout_ms": 20000,
            "expected_status": [200],
            "selection": {"agents_per_run": agents, "connection_classes": DOWNLOAD_CLASSES},
            "objectives": [{"figure": "loaded_latency", "percentile": 95, "max_ms": 100}],
        }),
        1,
        opts,
    )
    .await
}

/// Creates a `video` check of the site's HLS stream ([`lastmile_testbed::video`]) for
/// [`DOWNLOAD_CLASSES`], 6 s of its 30 Mbit/s rendition, and runs it once: cable's
/// 100 Mbit/s plays it through, DSL's 16 Mbit/s waits for the start-up buffer and
/// stalls. It promises stalls under half a second to 90 % of sessions.
async fn stream_check(
    api: &DemoClient,
    site: &SiteView,
    agents: usize,
    opts: &DemoOptions,
) -> anyhow::Result<ClassReport> {
    check_by_class(
        api,
        &json!({
            "site_id": site.id,
            "name": "Demo stream (HLS, 30 Mbit/s)",
            "kind": "video",
            "url": format!("{}{}", site.origin, lastmile_testbed::video::MASTER_PATH),
            "video": {"play_ms": 6000},
            "expected_status": [200],
            "selection": {"agents_per_run": agents, "connection_classes": DOWNLOAD_CLASSES},
            "objectives": [{"figure": "stall_time", "percentile": 90, "max_ms": 500}],
        }),
        1,
        opts,
    )
    .await
}

/// Creates a `udp` check of the site's reflector for every line, a 172-byte packet
/// every 20 ms for 3 s (a game's or a call's rhythm, 69 kbit/s with its headers), and
/// runs it once: each line's round trip, jitter and loss. It promises under 1 % loss to
/// 95 % of streams, which dial-up's 33.6 kbit/s upstream cannot keep.
async fn game_check(
    api: &DemoClient,
    site: &SiteView,
    reflector: SocketAddr,
    agents: usize,
    opts: &DemoOptions,
) -> anyhow::Result<ClassReport> {
    check_by_class(
        api,
        &json!({
            "site_id": site.id,
            "name": "Demo game (udp, 50 packets/s)",
            "kind": "udp",
            "url": format!("udp://{reflector}"),
            "udp": {"interval_ms": 20, "duration_ms": 3000, "packet_bytes": 172},
            "selection": {"agents_per_run": agents},
            "objectives": [
                {"figure": "loss", "percentile": 95, "max_percent": 1},
                {"figure": "jitter", "percentile": 95, "max_ms": 30},
            ],
        }),
        1,
        opts,
    )
    .await
}

/// Whether the game's streams show the lines: their median round trips in the order of
/// the lines' (dial-up 150 ms and its full buffer, DSL 40, cable 20), and dial-up,
/// whose 33.6 kbit/s upstream cannot carry the stream's 69 kbit/s, losing more than a
/// tenth of it. Broken when a line has no stream, when dial-up loses less than that or
/// when the round trips are out of order; fibre (4 ms) is not judged against cable
/// (20 ms), which a loaded machine's timers can blur, nor is loss on the other lines
/// (their impairments drop 0.1 % to 1 %).
pub fn judge_game(by_class: &Report) -> Physics {
    let median = |class: ConnectionClass, figure: Figure| {
        by_class
            .rows
            .iter()
            .find(|r| r.group.connection_class == Some(class))
            .and_then(|r| r.figures.get(&figure))
            .and_then(|f| f.get(50))
            .map(|p| p.value)
    };
    let ordered = [
        ConnectionClass::Dialup,
        ConnectionClass::Dsl,
        ConnectionClass::Cable,
    ];
    let mut rtts = Vec::new();
    for class in ordered {
        match median(class, Figure::Rtt) {
            Some(rtt) => rtts.push((class, rtt)),
            None => return Physics::Broken(format!("no stream came back on {class}")),
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let text = rtts
        .iter()
        .map(|(c, rtt)| format!("{c} {:.1} ms", ms(*rtt)))
        .collect::<Vec<_>>()
        .join(", ");
    if rtts.windows(2).any(|w| w[0].1 <= w[1].1) {
        return Physics::Broken(format!("round trips out of the lines' order: {text}"));
    }
    let Some(dialup_loss) = median(ConnectionClass::Dialup, Figure::Loss) else {
        return Physics::Broken("no loss figure of dialup".into());
    };
    if dialup_loss < 100_000 {
        return Physics::Broken(format!(
            "dialup lost {:.1} % of a stream twice its upstream's rate",
            dialup_loss as f64 / 10_000.0
        ));
    }
    Physics::Holds
}

/// Whether the stream shows the lines: on cable (100 Mbit/s, more than three times the
/// rendition's 30) no session stalls; on DSL (16 Mbit/s, about half) its sessions stall
/// and start later than cable's. Broken when a line has no session, when cable stalls
/// and DSL does not, or when DSL starts sooner; a cable stall beside a DSL one is not
/// conclusive (a machine loaded enough to stall a relay stalls a player too).
pub fn judge_stream(by_class: &Report) -> Physics {
    let median = |class: ConnectionClass, figure: Figure| {
        by_class
            .rows
            .iter()
            .find(|r| r.group.connection_class == Some(class))
            .and_then(|r| r.figures.get(&figure))
            .and_then(|f| f.get(50))
            .map(|p| p.value)
    };
    let [slow, fast] = DOWNLOAD_CLASSES;
    let (Some(slow_stall), Some(fast_stall), Some(slow_start), Some(fast_start)) = (
        median(slow, Figure::StallTime),
        median(fast, Figure::StallTime),
        median(slow, Figure::StartupDelay),
        median(fast, Figure::StartupDelay),
    ) else {
        return Physics::Broken(format!("no stream session on {slow} or {fast}"));
    };
    let s = |us: u64| us as f64 / 1e6;
    if slow_start <= fast_start || (slow_stall == 0 && fast_stall > 0) {
        return Physics::Broken(format!(
            "start-up {slow} {:.1} s, {fast} {:.1} s; stalls {slow} {:.1} s, {fast} {:.1} s",
            s(slow_start),
            s(fast_start),
            s(slow_stall),
            s(fast_stall)
        ));
    }
    if slow_stall == 0 || fast_stall > 0 {
        return Physics::NotConclusive(format!(
            "stall p50: {slow} {:.1} s, {fast} {:.1} s",
            s(slow_stall),
            s(fast_stall)
        ));
    }
    Physics::Holds
}

/// Whether the loads show the lines: their goodput as [`judge_goodput`] judges a
/// download's, and on each line a loaded round trip above the idle one (the line's
/// queue). A line whose loaded median is below its idle median is broken; one whose
/// loaded latency rose by less than half the line's buffer is not conclusive (a
/// machine too loaded to keep the line full).
pub fn judge_speed(by_class: &Report) -> Physics {
    let mut doubts = Vec::new();
    match judge_goodput(by_class) {
        Physics::Broken(why) => return Physics::Broken(why),
        Physics::NotConclusive(why) => doubts.push(why),
        Physics::Holds => {}
    }
    for class in DOWNLOAD_CLASSES {
        let median = |figure: Figure| {
            by_class
                .rows
                .iter()
                .find(|r| r.group.connection_class == Some(class))
                .and_then(|r| r.figures.get(&figure))
                .and_then(|f| f.get(50))
                .map(|p| p.value)
        };
        let (Some(idle), Some(loaded)) =
            (median(Figure::IdleLatency), median(Figure::LoadedLatency))
        else {
            return Physics::Broken(format!("no idle or loaded latency of {class}"));
        };
        let ms = |us: u64| us as f64 / 1000.0;
        if loaded < idle {
            return Physics::Broken(format!(
                "{class}: loaded latency p50 {:.1} ms below idle {:.1} ms",
                ms(loaded),
                ms(idle)
            ));
        }
        let queue = lastmile_testbed::link::BUFFER.as_micros() as u64;
        if loaded < idle + queue / 2 {
            doubts.push(format!(
                "{class}: loaded latency p50 {:.1} ms, idle {:.1} ms: the line's {:.0} ms queue did not fill",
                ms(loaded),
                ms(idle),
                ms(queue)
            ));
        }
    }
    if doubts.is_empty() {
        Physics::Holds
    } else {
        Physics::NotConclusive(doubts.join("; "))
    }
}

/// Whether the download's goodput shows the links: each line's median within its rate
/// (a quarter of headroom: the first bytes arrive with the first byte, not in the
/// transfer) and DSL's below cable's. Only the order can fail the demo, and only when
/// the medians' intervals show it reversed; a median above its rate is printed as not
/// conclusive, because a loaded machine that stalls the relay sends a body in a burst
/// and makes the transfer look shorter than the line allows (as it makes it longer,
/// below).
pub fn judge_goodput(by_class: &Report) -> Physics {
    let goodput = |class: ConnectionClass| {
        by_class
            .rows
            .iter()
            .find(|r| r.group.connection_class == Some(class))
            .and_then(|r| r.figures.get(&Figure::Goodput))
            .and_then(|g| g.get(50))
    };
    let mut doubts = Vec::new();
    for class in DOWNLOAD_CLASSES {
        let Some(median) = goodput(class) else {
            return Physics::Broken(format!("no goodput of {class}"));
        };
        let rate_kbps = LinkProfile::for_class(class).down_bps / 1000;
        if median.value > rate_kbps + rate_kbps / 4 {
            doubts.push(format!(
                "{class} goodput p50 {:.1} Mbit/s above its link's {:.1} Mbit/s",
                median.value as f64 / 1e3,
                rate_kbps as f64 / 1e3
            ));
        }
    }
    let [slower, faster] = DOWNLOAD_CLASSES;
    if let (Some(slow), Some(fast)) = (goodput(slower), goodput(faster)) {
        if fast.value <= slow.value {
            let what = format!(
                "goodput p50: {faster} {:.1} Mbit/s, {slower} {:.1} Mbit/s",
                fast.value as f64 / 1e3,
                slow.value as f64 / 1e3
            );
            match (slow.ci, fast.ci) {
                (Some([slow_low, _]), Some([_, fast_high])) if fast_high < slow_low => {
                    return Physics::Broken(format!("{what}, their intervals apart"));
                }
                _ => doubts.push(what),
            }
        }
    }
    if doubts.is_empty() {
        Physics::Holds
    } else {
        Physics::NotConclusive(doubts.join("; "))
    }
}

/// One page summary on a line: what was fetched, over how many connections, the
/// slowest resource and what failed.
pub fn page_line(p: &lastmile_protocol::PageSummary) -> String {
    let slowest = p.slowest.as_ref().map_or_else(String::new, |s| {
        format!(
            ", slowest {} {:.0} ms",
            s.url.rsplit('/').next().unwrap_or(&s.url),
            s.timings_us.total as f64 / 1000.0
        )
    });
    let failed: Vec<String> = p
        .failed
        .iter()
        .map(|f| {
            format!(
                "{} ({})",
                f.url.rsplit('/').next().unwrap_or(&f.url),
                f.status
                    .map_or_else(|| f.error.kind.to_string(), |s| s.to_string())
            )
        })
        .collect();
    format!(
        "{:>7.0} ms: {} resources, {:.1} KB over {} connections{slowest}{}",
        p.total_us as f64 / 1000.0,
        p.resources,
        p.bytes as f64 / 1000.0,
        p.connections,
        if failed.is_empty() {
            String::new()
        } else {
            format!(", failed {}", failed.join(", "))
        }
    )
}

/// Demo sign-ins for the dashboard: (email, password).
pub const DEMO_OWNER_LOGIN: (&str, &str) = ("owner@demo.lastmile.test", "demo-owner-password");
pub const DEMO_VOLUNTEER_LOGIN: (&str, &str) =
    ("volunteer@demo.lastmile.test", "demo-volunteer-password");

/// Gives the demo owner and a demo volunteer dashboard logins, prints where to sign in,
/// and keeps everything running until Ctrl-C.
async fn serve_dashboard(
    controller: &Controller,
    owner_id: &str,
    volunteer_id: &str,
) -> anyhow::Result<()> {
    let (owner_id, volunteer_id) = (owner_id.to_owned(), volunteer_id.to_owned());
    controller
        .state
        .db
        .run(move |c| {
            lastmile_domain::logins::add_login(
                c,
                lastmile_domain::logins::Account::Owner(&owner_id),
                DEMO_OWNER_LOGIN.0,
                DEMO_OWNER_LOGIN.1,
            )?;
            lastmile_domain::logins::add_login(
                c,
                lastmile_domain::logins::Account::Volunteer(&volunteer_id),
                DEMO_VOLUNTEER_LOGIN.0,
                DEMO_VOLUNTEER_LOGIN.1,
            )
        })
        .await?;
    println!(
        "\nDashboard: {}/app  (agents keep measuring; Ctrl-C to stop)\n  site owner  {} / {}  (Checks → Report: charts and the table; Buy credit pays on the fake Stripe's page)\n  volunteer   {} / {}  (rank, points, earnings, payouts)\n  public      {}/app/leaderboard",
        controller.url(),
        DEMO_OWNER_LOGIN.0,
        DEMO_OWNER_LOGIN.1,
        DEMO_VOLUNTEER_LOGIN.0,
        DEMO_VOLUNTEER_LOGIN.1,
        controller.url()
    );
    tokio::signal::ctrl_c().await?;
    println!("Stopping.");
    Ok(())
}

/// The credit the demo's owner buys by Stripe Checkout.
const DEMO_CREDIT: Money = Money {
    minor: 5_000,
    currency: Currency::USD,
};

/// The fake Stripe's API key and webhook signing secret in the demo.
const DEMO_STRIPE_KEY: &str = "sk_test_lastmile_demo";
const DEMO_WEBHOOK_SECRET: &str = "whsec_lastmile_demo";

/// Volunteers are paid out from 10 cents in the demo (one run earns each 16).
const DEMO_PAYOUT_THRESHOLD_MINOR: i64 = 10;

/// The owner buys [`DEMO_CREDIT`] through the API; the fake Stripe "pays" the Checkout
/// session and delivers the signed `checkout.session.completed` to the controller.
async fn buy_credit(
    api: &DemoClient,
    stripe: &FakeStripe,
    opts: &DemoOptions,
) -> anyhow::Result<()> {
    let session: lastmile_domain::payments::CheckoutView = api
        .post(
            "/api/v1/owner/credit/checkout",
            &json!({"amount_minor": DEMO_CREDIT.minor, "currency": DEMO_CREDIT.currency}),
        )
        .await?;
    let delivery = stripe.complete_checkout(&session.session_id).await?;
    anyhow::ensure!(
        delivery.status == 200,
        "checkout.session.completed webhook answered {}: {}",
        delivery.status,
        delivery.body
    );
    let balance: lastmile_domain::billing::Balances = api.get("/api/v1/me/balance").await?;
    let credit = balance
        .balances
        .iter()
        .find(|b| b.kind == "owner_credit" && b.currency == "usd")
        .map_or(0, |b| b.balance_minor);
    anyhow::ensure!(
        credit == DEMO_CREDIT.minor,
        "after paying the Checkout session the owner has {credit} cents of credit"
    );
    say!(
        opts,
        "  credit      the owner bought {DEMO_CREDIT} by Stripe Checkout ({})",
        session.session_id
    );
    Ok(())
}

/// A few lines on where the money went, from the trial balance.
pub fn money_summary(ledger: &TrialBalance) -> String {
    let usd = |kind| Money::new(ledger.total(kind, Currency::USD), Currency::USD);
    let credit_left = usd(AccountKind::OwnerCredit);
    let unpaid = usd(AccountKind::VolunteerEarnings);
    let in_transit = usd(AccountKind::PayoutsInTransit);
    let fee = usd(AccountKind::PlatformRevenue);
    let spent = Money::new(DEMO_CREDIT.minor - credit_left.minor, Currency::USD);
    let earned = Money::new(spent.minor - fee.minor, Currency::USD);
    let paid = Money::new(
        earned.minor - unpaid.minor - in_transit.minor,
        Currency::USD,
    );
    let balanced = ledger
        .accounts
        .iter()
        .fold(
            std::collections::BTreeMap::<&str, i64>::new(),
            |mut sums, l| {
                *sums.entry(l.currency.as_str()).or_default() += l.balance_minor;
                sums
            },
        )
        .values()
        .all(|s| *s == 0);
    format!(
        "Money: the owner bought {} of credit by Stripe Checkout (purchase) and spent \
         {spent} ({credit_left} left); volunteers earned {earned}, of which {paid} was paid \
         out through Stripe Connect (payouts) and {unpaid} awaits payout; platform fee \
         {fee}. Trial balance of {} accounts sums to zero: {}",
        DEMO_CREDIT,
        ledger.accounts.len(),
        if balanced { "yes" } else { "NO" }
    )
}

fn rate(bps: u64) -> String {
    if bps >= 1_000_000 {
        format!("{} Mbit/s", bps / 1_000_000)
    } else {
        format!("{:.1} kbit/s", bps as f64 / 1000.0)
    }
}

/// What a report says about the emulated links' physics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Physics {
    /// Each class's fastest ttfb and total strictly decrease from dialup to fibre.
    Holds,
    /// The fastest samples are out of order, but the medians' confidence intervals of
    /// the classes concerned overlap (or there are too few samples for one): this
    /// machine delayed a fast line's samples more than the links separate the classes.
    NotConclusive(String),
    /// A class has no successful sample, or a faster line's median is conclusively
    /// slower than a slower line's (its interval lies wholly above): the links or the
    /// measurements are broken.
    Broken(String),
}

impl std::fmt::Display for Physics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Physics::Holds => f.write_str("holds"),
            Physics::NotConclusive(why) => {
                write!(f, "not conclusive on this loaded machine ({why})")
            }
            Physics::Broken(why) => write!(f, "DOES NOT HOLD ({why})"),
        }
    }
}

/// Judges the report's physics from its merged histograms (`histograms=true`) and its
/// medians' confidence intervals.
///
/// The order is read on each class's fastest sample and not on the median, because a
/// busy machine only ever adds delay to a measurement: no sample can beat its line, so
/// each class's fastest one is its line's floor, and the order of the floors is the
/// links' physics however loaded the machine is, once one sample per class got through
/// undelayed. When none did (a machine loaded for the whole run), the floors can be out
/// of order with nothing wrong; the demo then fails only if the report's own intervals
/// say so: a faster line whose median's interval lies wholly above a slower line's, or
/// a sample faster than its own link's round trip.
pub fn judge_physics(by_class: &Report) -> Physics {
    use base64::Engine as _;
    let row = |class: ConnectionClass| {
        by_class
            .rows
            .iter()
            .find(|r| r.group.connection_class == Some(class))
    };
    let fastest = |class: ConnectionClass, phase: Phase| -> Option<u64> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(row(class)?.histograms.get(&Figure::from(phase))?)
            .ok()?;
        let h = lastmile_domain::histogram::decode(&bytes).ok()?;
        (!h.is_empty()).then(|| h.min())
    };
    // No sample can beat its line: a total shorter than one round trip of its class's
    // link means the link did not shape it, whatever the load.
    for class in CLASSES {
        let rtt = LinkProfile::for_class(class).rtt.as_micros() as u64;
        if let Some(total) = fastest(class, Phase::Total).filter(|t| *t < rtt) {
            return Physics::Broken(format!(
                "a {class} total of {:.1} ms beats its link's {:.1} ms round trip",
                total as f64 / 1e3,
                rtt as f64 / 1e3
            ));
        }
    }
    let mut doubts = Vec::new();
    for phase in [Phase::Ttfb, Phase::Total] {
        for pair in CLASSES.windows(2) {
            let (slower, faster) = (pair[0], pair[1]);
            let (Some(slow_floor), Some(fast_floor)) =
                (fastest(slower, phase), fastest(faster, phase))
            else {
                return Physics::Broken(format!(
                    "no successful {phase} sample of {slower} or {faster}"
                ));
            };
            if slow_floor > fast_floor {
                continue;
            }
            let median_ci = |class| {
                row(class)
                    .and_then(|r| r.phases.get(&phase))
                    .and_then(|p| p.p50_ci)
            };
            let what = format!(
                "fastest {phase}: {faster} {:.1} ms, {slower} {:.1} ms",
                fast_floor as f64 / 1e3,
                slow_floor as f64 / 1e3
            );
            match (median_ci(slower), median_ci(faster)) {
                (Some([_, slow_high]), Some([fast_low, _])) if fast_low > slow_high => {
                    return Physics::Broken(format!(
                        "{what}; median intervals {faster} from {:.1} ms, {slower} up to {:.1} ms",
                        fast_low as f64 / 1e3,
                        slow_high as f64 / 1e3
                    ));
                }
                _ => doubts.push(what),
            }
        }
    }
    if doubts.is_empty() {
        Physics::Holds
    } else {
        Physics::NotConclusive(doubts.join("; "))
    }
}

async fn wait_for_agents(
    controller: &Controller,
    want: usize,
    opts: &DemoOptions,
) -> anyhow::Result<Vec<CalibratedAgent>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let since = clock::now_us() - controller.state.policy.online_window_us;
        let online = controller
            .state
            .db
            .run(move |c| agents::online_since(c, since))
            .await?;
        let calibrated = online.iter().filter(|a| a.measured_class.is_some()).count();
        if online.len() >= want && calibrated >= want {
            say!(
                opts,
                "  online      {} agents, calibrated; the controller placed and classified them:",
                online.len()
            );
            let mut seen: Vec<String> = online
                .iter()
                .map(|a| {
                    format!(
                        "{} AS{} {:<14} declared {:<7} measured {:<7} ({} down, {:.0} ms)",
                        a.country.as_deref().unwrap_or("??"),
                        a.asn.unwrap_or(0),
                        a.city.as_deref().unwrap_or("?"),
                        a.declared_class,
                        a.measured_class.as_deref().unwrap_or("-"),
                        rate(a.down_bps.unwrap_or(0).max(0) as u64),
                        a.rtt_us.unwrap_or(0) as f64 / 1000.0,
                    )
                })
                .collect();
            seen.sort();
            for place in seen {
                say!(opts, "              {place}");
            }
            return Ok(online
                .into_iter()
                .map(|a| CalibratedAgent {
                    declared: a.declared_class,
                    measured: a.measured_class,
                    mismatch: a.class_mismatch,
                })
                .collect());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {want} agents came online and {calibrated} calibrated within 30 s",
            online.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `check` `times` times, one after the other, each waited for: the first run comes
/// from the check's schedule, the later ones are "run now".
async fn run_times(
    api: &DemoClient,
    check: &CheckView,
    times: u32,
    opts: &DemoOptions,
) -> anyhow::Result<Vec<RunView>> {
    let mut runs = Vec::new();
    for n in 1..=times {
        let run = if n == 1 {
            first_run(api, check).await?
        } else {
            api.post(&format!("/api/v1/checks/{}/runs", check.id), &json!({}))
                .await?
        };
        runs.push(wait_for_run(api, check, run, (n, times), opts).await?);
    }
    Ok(runs)
}

async fn first_run(api: &DemoClient, check: &CheckView) -> anyhow::Result<RunView> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let runs: Vec<RunView> = api
            .get(&format!("/api/v1/checks/{}/runs", check.id))
            .await?;
        if let Some(run) = runs.into_iter().next() {
            return Ok(run);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the scheduler did not start the check's first run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_run(
    api: &DemoClient,
    check: &CheckView,
    run: RunView,
    (n, of): (u32, u32),
    opts: &DemoOptions,
) -> anyhow::Result<RunView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = Instant::now();
    let mut last_done = u32::MAX;
    loop {
        let now: RunView = api
            .get(&format!("/api/v1/checks/{}/runs/{}", check.id, run.id))
            .await?;
        // On a terminal the progress line updates in place; in a log, only the final
        // line of each run is printed.
        let interactive = std::io::stdout().is_terminal();
        if now.done != last_done && opts.verbose && interactive {
            print!(
                "\r  run {n}/{of}: {:>2}/{} measured, {} in progress",
                now.done, now.requested, now.leased
            );
            let _ = std::io::stdout().flush();
            last_done = now.done;
        }
        if now.finished {
            let line = format!(
                "  run {n}/{of}: {:>2}/{} measured in {:.1} s",
                now.done,
                now.requested,
                started.elapsed().as_secs_f64()
            );
            say!(
                opts,
                "{}{line}{}",
                if interactive { "\r" } else { "" },
                " ".repeat(12)
            );
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "run {n} did not finish within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The owner's side of the API, over real HTTP.
struct DemoClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl DemoClient {
    fn new(base: String, token: &str) -> anyhow::Result<DemoClient> {
        Ok(DemoClient {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base,
            token: token.to_owned(),
        })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        Self::parse(path, response).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let text = self.get_text(path).await?;
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from GET {path}"))
    }

    async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "GET {path} answered {status}: {text}");
        Ok(text)
    }

    async fn parse<T: serde::de::DeserializeOwned>(
        path: &str,
        response: reqwest::Response,
    ) -> anyhow::Result<T> {
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "POST {path} answered {status}: {text}");
        serde_json::from_str(&text).with_context(|| format!("unexpected answer from POST {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report by class whose rows have these goodput medians (kbit/s) and intervals.
    fn goodput_report(rows: &[(&str, u64, Option<[u64; 2]>)]) -> Report {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(class, p50, ci)| {
                json!({
                    "group": {"connection_class": class},
                    "samples": 15, "successes": 15, "failures": 0, "availability": 1.0,
                    "phases": {},
                    "figures": {"goodput": {
                        "unit": "kbps", "higher_is_better": true, "samples": 15,
                        "percentiles": [{"percentile": 50, "value": p50, "ci": ci}],
                    }},
                })
            })
            .collect();
        serde_json::from_value(json!({
            "check": {"id": uuid::Uuid::nil(), "name": "download", "url": "http://x/"},
            "window": {"from": "2026-12-06T00:00:00Z", "to": "2026-12-06T01:00:00Z", "bucket": "1h"},
            "group_by": ["connection_class"],
            "rows": rows,
        }))
        .unwrap_or_else(|e| panic!("a report: {e}"))
    }

    /// A speed report by class: (class, goodput p50 kbit/s, idle p50 µs, loaded p50 µs).
    fn speed_report(rows: &[(&str, u64, u64, u64)]) -> Report {
        let figure = |unit: &str, better: bool, value: u64| {
            json!({"unit": unit, "higher_is_better": better, "samples": 3,
                   "percentiles": [{"percentile": 50, "value": value, "ci": null}]})
        };
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(class, goodput, idle, loaded)| {
                json!({
                    "group": {"connection_class": class},
                    "samples": 3, "successes": 3, "failures": 0, "availability": 1.0,
                    "phases": {},
                    "figures": {
                        "goodput": figure("kbps", true, *goodput),
                        "idle_latency": figure("us", false, *idle),
                        "loaded_latency": figure("us", false, *loaded),
                    },
                })
            })
            .collect();
        let mut report = goodput_report(&[]);
        report.rows = serde_json::from_value(json!(rows)).unwrap();
        report
    }

    /// A report by class whose rows have only two figures' medians: (class, first,
    /// second), each figure named with its unit.
    fn two_figure_report(figures: [(&str, &str); 2], rows: &[(&str, u64, u64)]) -> Report {
        let figure = |unit: &str, value: u64| {
            json!({"unit": unit, "higher_is_better": false, "samples": 3,
                   "percentiles": [{"percentile": 50, "value": value, "ci": null}]})
        };
        let [(a, a_unit), (b, b_unit)] = figures;
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|(class, first, second)| {
                json!({
                    "group": {"connection_class": class},
                    "samples": 3, "successes": 3, "failures": 0, "availability": 1.0,
                    "phases": {},
                    "figures": {a: figure(a_unit, *first), b: figure(b_unit, *second)},
                })
            })
            .collect();
        let mut report = goodput_report(&[]);
        report.rows = serde_json::from_value(json!(rows)).unwrap();
        report
    }

    /// A stream report by class: (class, start-up p50 µs, stall p50 µs).
    fn stream_report(rows: &[(&str, u64, u64)]) -> Report {
        two_figure_report([("startup_delay", "us"), ("stall_time", "us")], rows)
    }

    #[test]
    fn stream_physics_want_dsl_to_stall_where_cable_plays_through() {
        let lines = stream_report(&[("dsl", 5_700_000, 700_000), ("cable", 900_000, 0)]);
        assert_eq!(judge_stream(&lines), Physics::Holds);
        // Both stalled: a loaded machine, not conclusive.
        let both = stream_report(&[("dsl", 5_700_000, 700_000), ("cable", 900_000, 100_000)]);
        assert!(matches!(judge_stream(&both), Physics::NotConclusive(_)));
        // Cable stalls while DSL plays through, or DSL starts first: broken.
        let reversed = stream_report(&[("dsl", 5_700_000, 0), ("cable", 900_000, 100_000)]);
        assert!(matches!(judge_stream(&reversed), Physics::Broken(_)));
        let sooner = stream_report(&[("dsl", 800_000, 700_000), ("cable", 900_000, 0)]);
        assert!(matches!(judge_stream(&sooner), Physics::Broken(_)));
        let missing = stream_report(&[("dsl", 5_700_000, 700_000)]);
        assert!(matches!(judge_stream(&missing), Physics::Broken(_)));
    }

    /// A game report by class: (class, rtt p50 µs, loss p50 ppm).
    fn game_report(rows: &[(&str, u64, u64)]) -> Report {
        two_figure_report([("rtt", "us"), ("loss", "ppm")], rows)
    }

    #[test]
    fn game_physics_want_the_lines_round_trips_in_order_and_dialup_to_drop() {
        let lines = game_report(&[
            ("dialup", 420_000, 550_000),
            ("dsl", 41_000, 0),
            ("cable", 21_000, 0),
            ("fibre", 5_000, 0),
        ]);
        assert_eq!(judge_game(&lines), Physics::Holds);
        // Fibre is not judged against cable.
        let fibre_slow = game_report(&[
            ("dialup", 420_000, 550_000),
            ("dsl", 41_000, 0),
            ("cable", 21_000, 0),
            ("fibre", 25_000, 0),
        ]);
        assert_eq!(judge_game(&fibre_slow), Physics::Holds);
        let out_of_order = game_report(&[
            ("dialup", 420_000, 550_000),
            ("dsl", 19_000, 0),
            ("cable", 21_000, 0),
        ]);
        assert!(matches!(judge_game(&out_of_order), Physics::Broken(_)));
        // Dial-up carried a stream twice its upstream: something does not shape it.
        let no_drop = game_report(&[
            ("dialup", 160_000, 0),
            ("dsl", 41_000, 0),
            ("cable", 21_000, 0),
        ]);
        assert!(matches!(judge_game(&no_drop), Physics::Broken(_)));
        let missing = game_report(&[("dsl", 41_000, 0), ("cable", 21_000, 0)]);
        assert!(matches!(judge_game(&missing), Physics::Broken(_)));
    }

    #[test]
    fn speed_physics_want_the_queue_to_show_under_load() {
        let lines = speed_report(&[
            ("dsl", 16_000, 50_000, 300_000),
            ("cable", 99_000, 30_000, 280_000),
        ]);
        assert_eq!(judge_speed(&lines), Physics::Holds);
        // A queue that did not fill: not conclusive.
        let shallow = speed_report(&[
            ("dsl", 16_000, 50_000, 60_000),
            ("cable", 99_000, 30_000, 280_000),
        ]);
        assert!(
            matches!(judge_speed(&shallow), Physics::NotConclusive(ref why) if why.contains("dsl"))
        );
        // Loaded below idle, or a goodput order reversed: broken.
        let reversed = speed_report(&[
            ("dsl", 16_000, 50_000, 40_000),
            ("cable", 99_000, 30_000, 280_000),
        ]);
        assert!(
            matches!(judge_speed(&reversed), Physics::Broken(ref why) if why.contains("below idle"))
        );
        let missing = speed_report(&[("dsl", 16_000, 50_000, 300_000)]);
        assert!(matches!(judge_speed(&missing), Physics::Broken(_)));
    }

    #[test]
    fn goodput_physics_hold_warn_and_break_as_the_figures_say() {
        let lines = goodput_report(&[
            ("dsl", 16_000, Some([15_900, 16_100])),
            ("cable", 99_000, Some([98_000, 99_500])),
        ]);
        assert_eq!(judge_goodput(&lines), Physics::Holds);
        // Above its line's rate (a stalled relay's burst): said, not failed.
        let burst = goodput_report(&[
            ("dsl", 16_000, Some([15_900, 16_100])),
            ("cable", 140_000, Some([98_000, 150_000])),
        ]);
        assert!(
            matches!(judge_goodput(&burst), Physics::NotConclusive(ref why) if why.contains("cable goodput p50 140.0 Mbit/s above")),
            "{:?}",
            judge_goodput(&burst)
        );
        // Cable slower than DSL, but the intervals overlap: not conclusive.
        let close = goodput_report(&[
            ("dsl", 15_000, Some([9_000, 16_000])),
            ("cable", 12_000, Some([11_000, 60_000])),
        ]);
        assert!(matches!(judge_goodput(&close), Physics::NotConclusive(_)));
        // Cable slower than DSL with the intervals apart: broken.
        let reversed = goodput_report(&[
            ("dsl", 15_000, Some([14_000, 16_000])),
            ("cable", 9_000, Some([8_000, 10_000])),
        ]);
        assert!(matches!(judge_goodput(&reversed), Physics::Broken(_)));
        // A line with no goodput at all: broken.
        let missing = goodput_report(&[("dsl", 16_000, None)]);
        assert!(
            matches!(judge_goodput(&missing), Physics::Broken(ref why) if why.contains("no goodput of cable"))
        );
    }
}
