//! The command line of `lastmile-agent`, the probe a volunteer runs. Parses flags (each also readable from
//! the environment and a TOML config file) and hands over to the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::{self, Hours, VolunteerLimits};
use crate::measure::{ConnectTo, Engine, EngineConfig, Expectations};
use crate::page::PageLimits;
use crate::runner::{self, AgentSettings};
use crate::spool;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lastmile_protocol::{AgentLimits, ConnectionClass, ThroughputTask, VideoTask};
use serde::Deserialize;

/// Lastmile probe agent: measures websites the way a real user on your line sees them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LASTMILE_LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol (first start only) and work for the controller until stopped.
    Run(Box<RunArgs>),
    /// Measure one URL once and print its phase timings (with --page: the whole page;
    /// with --throughput: a load of several downloads and the round trip under it;
    /// with --video: an HLS or DASH session's start-up delay and stalls; with --udp: a stream
    /// to a reflector at udp://host:port, its round trip, jitter and loss).
    Measure(Box<MeasureArgs>),
}

/// Flags shared by `run` and `measure` that shape how fetches are made.
#[derive(Args, Clone, Default)]
struct EngineArgs {
    /// Local-test mode: allow private, loopback and link-local targets.
    #[arg(long, env = "LASTMILE_ALLOW_PRIVATE")]
    allow_private: bool,
    /// Trust this extra CA certificate file (PEM), e.g. for HTTPS test targets.
    #[arg(long, env = "LASTMILE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Send from this local address.
    #[arg(long, env = "LASTMILE_SOURCE_ADDR", value_parser = runner::parse_ip)]
    source_addr: Option<IpAddr>,
    /// Connect to ADDR:PORT instead for HOST:PORT, as curl's --connect-to (HOST:PORT=ADDR:PORT). Repeatable.
    #[arg(long, value_name = "HOST:PORT=ADDR:PORT")]
    connect_to: Vec<ConnectTo>,
    /// Allow fetching this network although it is private (e.g. a lab LAN), CIDR. Repeatable.
    #[arg(long, value_name = "CIDR")]
    allow_net: Vec<ipnet::IpNet>,
}

#[derive(Args)]
struct RunArgs {
    /// Controller base URL, e.g. https://controller.lastmile.example
    #[arg(long, env = "LASTMILE_CONTROLLER")]
    controller: Option<url::Url>,
    /// The volunteer's enrolment key (needed on the first start only).
    #[arg(long, env = "LASTMILE_ENROL_KEY")]
    enrol_key: Option<String>,
    /// Where credentials and the result spool are kept.
    #[arg(long, env = "LASTMILE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// TOML file with any of these settings (flags and environment win over it).
    #[arg(long, env = "LASTMILE_CONFIG")]
    config: Option<PathBuf>,
    /// Name shown to the volunteer for this machine.
    #[arg(long, env = "LASTMILE_NAME")]
    name: Option<String>,
    /// The kind of line this machine is on: dialup, satellite, mobile, dsl, cable, fibre.
    #[arg(long, env = "LASTMILE_CONNECTION_CLASS")]
    connection_class: Option<ConnectionClass>,
    /// Measurements run at once.
    #[arg(long, env = "LASTMILE_MAX_CONCURRENT")]
    max_concurrent: Option<u32>,
    /// Milliseconds to wait before asking for work again when none was offered.
    #[arg(long, env = "LASTMILE_IDLE_POLL_MS")]
    idle_poll_ms: Option<u64>,
    /// Calibrate the line against this URL instead of the controller.
    #[arg(long, env = "LASTMILE_CALIBRATION_URL")]
    calibration_url: Option<url::Url>,
    /// Most bytes per day calibration may use (default 20 MiB; 0 turns it off, and an
    /// agent that never calibrated is given no work: the controller must have measured
    /// its line to judge its results).
    #[arg(long, env = "LASTMILE_CALIBRATION_BYTES_PER_DAY")]
    calibration_bytes_per_day: Option<u64>,
    /// Most bytes per UTC day measurements may fetch (default: no limit).
    #[arg(long, env = "LASTMILE_MAX_BYTES_PER_DAY")]
    max_bytes_per_day: Option<u64>,
    /// Local hours (HH:MM-HH:MM, may wrap midnight) in which to work only while the machine is idle.
    #[arg(long, env = "LASTMILE_IDLE_ONLY_HOURS", value_parser = parse_hours)]
    idle_only_hours: Option<Hours>,
    /// Load average per core under which the machine counts as idle (default 0.5).
    #[arg(long, env = "LASTMILE_IDLE_MAX_LOAD")]
    idle_max_load: Option<f64>,
    /// Most results kept while the controller is unreachable (default 10000; the oldest are kept).
    #[arg(long, env = "LASTMILE_SPOOL_MAX_RESULTS")]
    spool_max_results: Option<usize>,
    /// Do not run path traces (a few dozen small UDP probes to a check's target when an
    /// incident opens on it).
    #[arg(long, env = "LASTMILE_NO_PATH_TRACE")]
    no_path_trace: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The config file: the same settings as the flags, all optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    controller: Option<url::Url>,
    enrol_key: Option<String>,
    state_dir: Option<PathBuf>,
    name: Option<String>,
    connection_class: Option<ConnectionClass>,
    max_concurrent: Option<u32>,
    idle_poll_ms: Option<u64>,
    calibration_url: Option<url::Url>,
    calibration_bytes_per_day: Option<u64>,
    max_bytes_per_day: Option<u64>,
    idle_only_hours: Option<String>,
    idle_max_load: Option<f64>,
    spool_max_results: Option<usize>,
    path_trace: Option<bool>,
    allow_private: Option<bool>,
    ca_file: Option<PathBuf>,
    source_addr: Option<IpAddr>,
    #[serde(default)]
    connect_to: Vec<String>,
    #[serde(default)]
    allow_nets: Vec<ipnet::IpNet>,
}

#[derive(Args)]
struct MeasureArgs {
    /// The URL to fetch.
    url: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// A status that counts as success (repeatable, or comma-separated); default any 2xx or 3xx.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(100..=599))]
    expect_status: Vec<u16>,
    /// The body must contain this text, or the measurement fails with body_mismatch.
    #[arg(long)]
    body_contains: Option<String>,
    /// Largest body to read; a longer one fails with body_too_large (default 10 MiB).
    /// With --throughput: the load's bytes over all connections, after which it ends
    /// (default 100 MiB). With --video: the session's playlists and segments together
    /// (default 100 MiB; more fails with body_too_large).
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Redirects to follow at most (0: do not follow); one more fails with too_many_redirects.
    #[arg(long, default_value_t = lastmile_protocol::DEFAULT_MAX_REDIRECTS)]
    max_redirects: u32,
    /// Load the page as a browser would: the HTML and its stylesheets, scripts, images,
    /// fonts and icons (--max-bytes then bounds the whole page).
    #[arg(long)]
    page: bool,
    /// With --page: sub-resources at most; more fails with page_too_many_resources.
    #[arg(long, default_value_t = lastmile_protocol::DEFAULT_MAX_PAGE_RESOURCES)]
    max_resources: u32,
    /// Load the line as a speed test does: several connections download the URL again
    /// and again for a while (goodput), with HEAD round trips timed before and during
    /// the load (idle and loaded latency).
    #[arg(long, conflicts_with = "page")]
    throughput: bool,
    /// With --throughput: connections downloading at once.
    #[arg(long, default_value_t = ThroughputTask::default().connections,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(lastmile_protocol::MAX_THROUGHPUT_CONNECTIONS)))]
    connections: u32,
    /// With --throughput: how long the load lasts, milliseconds (less than --timeout-ms).
    #[arg(long, default_value_t = ThroughputTask::default().duration_ms,
          value_parser = clap::value_parser!(u64).range(1..=lastmile_protocol::MAX_THROUGHPUT_DURATION_MS))]
    duration_ms: u64,
    /// Play the URL's HLS stream or DASH presentation (an MPD) as a player does: a
    /// master playlist's variant or an MPD's video representation (see
    /// --max-bitrate-kbps), its segments one after the other until --play-ms of media,
    /// and the start-up delay and stalls of a player's buffer model. A live stream is
    /// played from its live edge, reloading its playlist, in about --play-ms of time
    /// (a live DASH presentation from its live edge too, each segment fetched once its
    /// MPD says it is published).
    #[arg(long, conflicts_with_all = ["page", "throughput"])]
    video: bool,
    /// With --video: milliseconds of media to play.
    #[arg(long, default_value_t = VideoTask::default().play_ms,
          value_parser = clap::value_parser!(u64).range(1_000..=lastmile_protocol::MAX_VIDEO_PLAY_MS))]
    play_ms: u64,
    /// With --video: play the highest variant at or under this bitrate, kbit/s (the
    /// lowest when none is); default the highest.
    #[arg(long)]
    max_bitrate_kbps: Option<u64>,
    /// Stream to the reflector at the URL (udp://host:port) as a game or a call does:
    /// a packet every --interval-ms for --stream-ms, once the reflector answered with
    /// --token (the site's verification token); prints the round trip, jitter and loss.
    #[arg(long, conflicts_with_all = ["page", "throughput", "video"], requires = "token")]
    udp: bool,
    /// With --udp: what the reflector must answer with (the site's verification token).
    #[arg(long)]
    token: Option<String>,
    /// With --udp: milliseconds between packets.
    #[arg(long, default_value_t = lastmile_protocol::DEFAULT_UDP_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(lastmile_protocol::MIN_UDP_INTERVAL_MS..=lastmile_protocol::MAX_UDP_INTERVAL_MS))]
    interval_ms: u64,
    /// With --udp: how long the stream lasts, milliseconds (with 1 s to wait for the
    /// last echoes, less than --timeout-ms).
    #[arg(long, default_value_t = lastmile_protocol::DEFAULT_UDP_DURATION_MS,
          value_parser = clap::value_parser!(u64).range(lastmile_protocol::MIN_UDP_DURATION_MS..=lastmile_protocol::MAX_UDP_DURATION_MS))]
    stream_ms: u64,
    /// With --udp: each packet's UDP payload, bytes.
    #[arg(long, default_value_t = lastmile_protocol::DEFAULT_UDP_PACKET_BYTES,
          value_parser = clap::value_parser!(u32).range(lastmile_protocol::reflector::MIN_PROBE_LEN as i64..=lastmile_protocol::reflector::MAX_PROBE_LEN as i64))]
    packet_bytes: u32,
    /// Measure this many times, one after the other, each on fresh connections (with
    /// --json, one object per line). The first measurement of a process also pays for
    /// loading the agent's code; later ones are timed as a running agent's are.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    count: u32,
    #[command(flatten)]
    engine: EngineArgs,
}

impl EngineArgs {
    fn into_config(self) -> EngineConfig {
        EngineConfig {
            allow_private: self.allow_private,
            ca_file: self.ca_file,
            source_addr: self.source_addr,
            connect_to: self.connect_to,
            allow_nets: self.allow_net,
        }
    }
}

fn settings_from(args: RunArgs) -> anyhow::Result<AgentSettings> {
    let file: ConfigFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let mut connect_to = args.engine.connect_to;
    for c in &file.connect_to {
        connect_to.push(
            c.parse()
                .map_err(|e: String| anyhow::anyhow!("config connect_to: {e}"))?,
        );
    }
    let idle_only = match args.idle_only_hours {
        Some(h) => Some(h),
        None => file
            .idle_only_hours
            .as_deref()
            .map(parse_hours)
            .transpose()
            .map_err(|e| anyhow::anyhow!("config idle_only_hours: {e}"))?,
    };
    let idle_max_load = args
        .idle_max_load
        .or(file.idle_max_load)
        .unwrap_or(limits::DEFAULT_IDLE_MAX_LOAD);
    anyhow::ensure!(
        idle_max_load.is_finite() && idle_max_load > 0.0,
        "idle max load must be a positive number, not {idle_max_load}"
    );
    let controller = args
        .controller
        .or(file.controller)
        .context("no controller given: pass --controller URL (or LASTMILE_CONTROLLER, or `controller` in the config file)")?;
    Ok(AgentSettings {
        controller,
        enrol_key: args.enrol_key.or(file.enrol_key),
        state_dir: args.state_dir.or(file.state_dir).unwrap_or_else(runner::default_state_dir),
        name: args
            .name
            .or(file.name)
            .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "lastmile-agent".into())),
        declared_class: args
            .connection_class
            .or(file.connection_class)
            .context("declare this machine's line with --connection-class (dialup, satellite, mobile, dsl, cable, fibre)")?,
        limits: AgentLimits {
            max_concurrent: args
                .max_concurrent
                .or(file.max_concurrent)
                .unwrap_or(AgentLimits::default().max_concurrent)
                .max(1),
        },
        engine: EngineConfig {
            allow_private: args.engine.allow_private || file.allow_private.unwrap_or(false),
            ca_file: args.engine.ca_file.or(file.ca_file),
            source_addr: args.engine.source_addr.or(file.source_addr),
            connect_to,
            allow_nets: args.engine.allow_net.into_iter().chain(file.allow_nets).collect(),
        },
        idle_poll: Duration::from_millis(args.idle_poll_ms.or(file.idle_poll_ms).unwrap_or(5_000)),
        calibration_url: args.calibration_url.or(file.calibration_url),
        calibration_bytes_per_day: args
            .calibration_bytes_per_day
            .or(file.calibration_bytes_per_day)
            .unwrap_or(20 * 1024 * 1024),
        volunteer: VolunteerLimits {
            max_bytes_per_day: args.max_bytes_per_day.or(file.max_bytes_per_day),
            idle_only,
            idle_max_load,
        },
        spool_max_results: args
            .spool_max_results
            .or(file.spool_max_results)
            .unwrap_or(spool::DEFAULT_MAX_RESULTS),
        path_trace: !args.no_path_trace && file.path_trace.unwrap_or(true),
    })
}

fn parse_hours(s: &str) -> Result<Hours, String> {
    s.parse()
}

async fn measure(args: MeasureArgs) -> anyhow::Result<()> {
    let engine = Engine::new(args.engine.into_config())?;
    let default_max_bytes = if args.throughput || args.video {
        100 * 1024 * 1024
    } else {
        10 * 1024 * 1024
    };
    let expect = Expectations {
        status: args.expect_status,
        body_contains: args.body_contains,
        max_bytes: args.max_bytes.unwrap_or(default_max_bytes),
        timeout: Duration::from_millis(args.timeout_ms),
        max_redirects: args.max_redirects,
    };
    let limits = PageLimits {
        max_resources: args.max_resources,
    };
    let load = ThroughputTask {
        connections: args.connections,
        duration_ms: args.duration_ms,
    };
    let session = VideoTask {
        play_ms: args.play_ms,
        max_bitrate_kbps: args.max_bitrate_kbps,
    };
    let stream = lastmile_protocol::UdpTask {
        interval_ms: args.interval_ms,
        duration_ms: args.stream_ms,
        packet_bytes: args.packet_bytes,
        token: args.token.clone().unwrap_or_default(),
    };
    let mut failed = false;
    for i in 0..args.count {
        let m = if args.page {
            engine.measure_page(&args.url, &expect, limits).await
        } else if args.throughput {
            engine.measure_throughput(&args.url, &expect, load).await
        } else if args.video {
            engine.measure_video(&args.url, &expect, session).await
        } else if args.udp {
            engine.measure_udp(&args.url, &expect, &stream).await
        } else {
            engine.measure(&args.url, &expect).await
        };
        failed |= m.error.is_some();
        if args.json {
            println!("{}", serde_json::to_string(&m)?);
            continue;
        }
        if args.count > 1 {
            println!(
                "{}measurement {} of {}",
                if i > 0 { "\n" } else { "" },
                i + 1,
                args.count
            );
        }
        match (&m.page, &m.throughput, &m.video, &m.udp) {
            (Some(page), ..) => print!("{}", page_table(&m, page)),
            (None, Some(load), ..) => print!("{}", throughput_table(&m, load)),
            (None, None, Some(session), _) => print!("{}", video_table(&m, session)),
            (None, None, None, Some(stream)) => print!("{}", udp_table(&m, stream)),
            (None, None, None, None) => print!("{}", measurement_table(&m)),
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// A single fetch as `measure` prints it.
fn measurement_table(m: &lastmile_protocol::Measurement) -> String {
    use std::fmt::Write;
    let t = m.timings_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let mut out = String::new();
    let status = m.status.map_or("-".into(), |s| s.to_string());
    let _ = writeln!(out, "status    {status}");
    let _ = writeln!(out, "bytes     {}", m.bytes);
    for (name, us) in [
        ("dns", t.dns),
        ("connect", t.connect),
        ("tls", t.tls),
        ("ttfb", t.ttfb),
        ("transfer", t.transfer),
        ("total", t.total),
    ] {
        let _ = writeln!(out, "{name:<9} {:>10.3} ms", ms(us));
    }
    if let Some(e) = &m.error {
        let _ = writeln!(out, "error     {}: {}", e.kind, e.message);
    }
    out
}

/// The page summary as `measure --page` prints it.
fn page_table(m: &lastmile_protocol::Measurement, page: &lastmile_protocol::PageSummary) -> String {
    use std::fmt::Write;
    let ms = |us: u64| us as f64 / 1000.0;
    let d = page.document_timings_us;
    let mut out = String::new();
    let _ = writeln!(out, "page       {}", page.document_url);
    let _ = writeln!(
        out,
        "status     {}",
        m.status.map_or("-".into(), |s| s.to_string())
    );
    let _ = writeln!(out, "total      {:>10.3} ms", ms(page.total_us));
    let _ = writeln!(
        out,
        "document   dns {:.3} / connect {:.3} / tls {:.3} / ttfb {:.3} / transfer {:.3} / total {:.3} ms ({})",
        ms(d.dns),
        ms(d.connect),
        ms(d.tls),
        ms(d.ttfb),
        ms(d.transfer),
        ms(d.total),
        m.http_version.as_deref().map_or("-".into(), |v| format!("HTTP/{v}"))
    );
    let c = page.by_type;
    let _ = writeln!(
        out,
        "resources  {} (stylesheet {}, script {}, image {}, font {}, icon {}, media {}, other {})",
        page.resources, c.stylesheet, c.script, c.image, c.font, c.icon, c.media, c.other
    );
    let _ = writeln!(
        out,
        "bytes      {} on the wire, {} decoded, over {} connection(s)",
        page.bytes, page.bytes_decoded, page.connections
    );
    if let Some(s) = &page.slowest {
        let t = s.timings_us;
        let _ = writeln!(
            out,
            "slowest    {} ({}) {:.3} ms: dns {:.3} / connect {:.3} / tls {:.3} / ttfb {:.3} / transfer {:.3}, queued {:.3}",
            s.url,
            s.kind,
            ms(t.total),
            ms(t.dns),
            ms(t.connect),
            ms(t.tls),
            ms(t.ttfb),
            ms(t.transfer),
            ms(s.queued_us)
        );
    }
    for f in &page.failed {
        let _ = writeln!(
            out,
            "failed     {} ({}): {}{}",
            f.url,
            f.kind,
            f.error.kind,
            f.status.map_or(String::new(), |s| format!(" {s}"))
        );
    }
    if let Some(e) = &m.error {
        let _ = writeln!(out, "error      {}: {}", e.kind, e.message);
    }
    out
}

/// The throughput load as `measure --throughput` prints it: goodput is every body byte
/// over the load's first to last byte (bits per µs are Mbit/s).
fn throughput_table(
    m: &lastmile_protocol::Measurement,
    load: &lastmile_protocol::ThroughputSummary,
) -> String {
    use crate::throughput::percentile;
    use std::fmt::Write;
    let ms = |us: Option<u64>| us.map_or("-".into(), |us| format!("{:.3} ms", us as f64 / 1000.0));
    let goodput = if load.duration_us > 0 {
        format!(
            "{:.2} Mbit/s",
            load.bytes as f64 * 8.0 / load.duration_us as f64
        )
    } else {
        "-".into()
    };
    let mut out = String::new();
    let _ = writeln!(out, "status       {}", status_text(m));
    let _ = writeln!(out, "connections  {}", load.connections);
    let _ = writeln!(out, "requests     {}", load.requests);
    let _ = writeln!(out, "bytes        {}", load.bytes);
    let _ = writeln!(
        out,
        "goodput      {goodput} over {}",
        ms(Some(load.duration_us))
    );
    let _ = writeln!(
        out,
        "idle         {} median of {} probes",
        ms(percentile(&load.idle_latency_us, 50)),
        load.idle_latency_us.len()
    );
    let _ = writeln!(
        out,
        "loaded       {} median, {} p90 of {} probes",
        ms(percentile(&load.loaded_latency_us, 50)),
        ms(percentile(&load.loaded_latency_us, 90)),
        load.loaded_latency_us.len()
    );
    if let Some(e) = &m.error {
        let _ = writeln!(out, "error        {}: {}", e.kind, e.message);
    }
    out
}

/// "200 (HTTP/1.1)": a measurement's status and HTTP version, "-" for what it lacks.
fn status_text(m: &lastmile_protocol::Measurement) -> String {
    format!(
        "{} ({})",
        m.status.map_or("-".into(), |s| s.to_string()),
        m.http_version
            .as_deref()
            .map_or("-".into(), |v| format!("HTTP/{v}"))
    )
}

/// The video session as `measure --video` prints it.
pub(crate) fn video_table(
    m: &lastmile_protocol::Measurement,
    session: &lastmile_protocol::VideoSummary,
) -> String {
    use std::fmt::Write;
    let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "playlist   {}",
        if session.playlist_url.is_empty() {
            "-"
        } else {
            &session.playlist_url
        }
    );
    let _ = writeln!(
        out,
        "rendition  {}",
        session
            .bitrate_bps
            .map_or("- (no master playlist)".into(), |bps| format!(
                "{} kbit/s",
                bps / 1000
            ))
    );
    let _ = writeln!(out, "status     {}", status_text(m));
    let _ = writeln!(out, "segments   {}", session.segments);
    let _ = writeln!(out, "bytes      {}", m.bytes);
    let _ = writeln!(out, "startup    {}", ms(session.startup_us));
    let _ = writeln!(out, "stalls     {}", session.stalls);
    let _ = writeln!(out, "stalled    {}", ms(session.stall_us));
    let _ = writeln!(out, "played     {:.3} s", session.played_ms as f64 / 1000.0);
    if let Some(e) = &m.error {
        let _ = writeln!(out, "error      {}: {}", e.kind, e.message);
    }
    out
}

/// The udp stream as `measure --udp` prints it.
pub(crate) fn udp_table(
    m: &lastmile_protocol::Measurement,
    stream: &lastmile_protocol::UdpSummary,
) -> String {
    use std::fmt::Write;
    let ms = |us: Option<u64>| us.map_or("-".into(), |us| format!("{:.3} ms", us as f64 / 1000.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reflector  {}",
        m.remote_addr.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "hello      {}", ms(Some(m.timings_us.ttfb)));
    let _ = writeln!(out, "sent       {}", stream.sent);
    let _ = writeln!(out, "received   {}", stream.received);
    let _ = writeln!(
        out,
        "lost       {} ({:.2} %): {} on the way there, {} on the way back",
        stream.lost(),
        stream.loss_ppm().unwrap_or(0) as f64 / 10_000.0,
        stream.lost_up,
        stream.lost() - stream.lost_up
    );
    let _ = writeln!(
        out,
        "rtt        {} median, {} p95",
        ms(stream.median_rtt_us()),
        ms(crate::throughput::percentile(&stream.rtt_us, 95))
    );
    let _ = writeln!(out, "jitter     {}", ms(stream.jitter_us()));
    if let Some(e) = &m.error {
        let _ = writeln!(out, "error      {}: {}", e.kind, e.message);
    }
    out
}

/// Parses the command line and runs what it asks for.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A one-off measurement runs on one thread, so hyper's connection task and the
    // body reader never wake each other across threads (measured: connect and transfer
    // closer to curl's by ~0.1 ms each in the fidelity bench).
    let runtime = match cli.command {
        Command::Measure(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Command::Run(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    lastmile_logs::init("info", lastmile_logs::Format::json_if(cli.log_json));
    match cli.command {
        Command::Measure(args) => measure(*args).await,
        Command::Run(args) => {
            let settings = settings_from(*args)?;
            runner::run(settings, shutdown_signal()).await
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (how systemd stops the agent).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
