//! The wire contract between the Lastmile controller and its probe agents.
//!
//! Everything an agent and the controller say to each other is a type in this crate:
//! enrolment, heartbeats, leased tasks, measurement results with their phase timings,
//! and the closed sets both sides must agree on (connection classes, phases, error kinds).
//! The crate does no I/O on purpose: both binaries, the tests and later the dashboard
//! can depend on it without pulling in a runtime.
//!
//! Conventions: times on the wire are RFC 3339 UTC, durations are integer microseconds,
//! enums are `snake_case`.

pub mod address;
pub mod calibration;
pub mod reflector;
pub mod trace;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version string agents report in their heartbeat.
pub const PROTOCOL_VERSION: &str = "1";

/// How a volunteer's machine reaches the internet.
///
/// Ordered from slowest to fastest typical link, which the report uses to sort rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConnectionClass {
    Dialup,
    Satellite,
    Mobile,
    Dsl,
    Cable,
    Fibre,
}

impl ConnectionClass {
    /// Every class, slowest first.
    pub const ALL: [ConnectionClass; 6] = [
        ConnectionClass::Dialup,
        ConnectionClass::Satellite,
        ConnectionClass::Mobile,
        ConnectionClass::Dsl,
        ConnectionClass::Cable,
        ConnectionClass::Fibre,
    ];

    /// The stable wire name (`"dsl"`, `"fibre"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionClass::Dialup => "dialup",
            ConnectionClass::Satellite => "satellite",
            ConnectionClass::Mobile => "mobile",
            ConnectionClass::Dsl => "dsl",
            ConnectionClass::Cable => "cable",
            ConnectionClass::Fibre => "fibre",
        }
    }
}

impl fmt::Display for ConnectionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is not one of a closed set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// What kind of name was expected ("connection class", "phase").
    pub kind: &'static str,
    /// The name that was given.
    pub given: String,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}", self.kind, self.given)
    }
}

impl std::error::Error for UnknownName {}

impl FromStr for ConnectionClass {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnectionClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "connection class",
                given: s.to_owned(),
            })
    }
}

/// One timed phase of a fetch. Definitions match curl's `-w` variables (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Name resolution (`time_namelookup`).
    Dns,
    /// TCP handshake only (`time_connect - time_namelookup`).
    Connect,
    /// TLS handshake only, 0 for plain HTTP (`time_appconnect - time_connect`).
    Tls,
    /// Request sent to first response byte (`time_starttransfer - time_pretransfer`).
    Ttfb,
    /// First byte to last byte of the body (`time_total - time_starttransfer`).
    Transfer,
    /// Start to last byte (`time_total`).
    Total,
}

impl Phase {
    /// Every phase in the order they happen.
    pub const ALL: [Phase; 6] = [
        Phase::Dns,
        Phase::Connect,
        Phase::Tls,
        Phase::Ttfb,
        Phase::Transfer,
        Phase::Total,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Dns => "dns",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Ttfb => "ttfb",
            Phase::Transfer => "transfer",
            Phase::Total => "total",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "phase",
                given: s.to_owned(),
            })
    }
}

/// A figure a report gives percentiles of: a timing phase, or a figure of the delivery
/// itself. Each has one unit and one direction; aggregates keep one HdrHistogram per
/// figure (the phases in columns of their own, the others by wire name in one column),
/// so a new figure (loaded latency, jitter, loss, stall time for the streaming and
/// gaming kinds) is a variant here and the code that measures it, not a new table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    Dns,
    Connect,
    Tls,
    Ttfb,
    Transfer,
    Total,
    /// Body bytes over the body's transfer time (first byte to last), kbit/s: the
    /// bandwidth the delivery sustained. Only for bodies large enough to say so (see
    /// the controller's `figures` module), and for a throughput load (all its
    /// connections' bytes over the load's time).
    Goodput,
    /// A throughput check's round trip before its load: the median of small requests on
    /// a connection of their own to the site, µs.
    IdleLatency,
    /// The same round trip while the load fills the line, µs: what a call or a game
    /// sharing the line would feel. Its distance from the idle latency is the line's
    /// queueing (bufferbloat).
    LoadedLatency,
    /// A video session's wait from its first request until playback started, µs.
    StartupDelay,
    /// A video session's time stalled (rebuffering) after playback started, µs; 0 for a
    /// session that played through.
    StallTime,
    /// A udp stream's round trip: the median of its probes' round trips, µs.
    Rtt,
    /// A udp stream's jitter: the mean difference between the round trips of
    /// consecutive probes that came back (RFC 5481's packet delay variation, over the
    /// round trip), µs.
    Jitter,
    /// A udp stream's loss: probes that did not come back, in parts per million of
    /// those sent (10,000 is 1 %).
    Loss,
}

/// What a figure's values count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Microseconds.
    Us,
    /// Kilobits (1,000 bits) a second.
    Kbps,
    /// Parts per million (10,000 is 1 %).
    Ppm,
}

impl Unit {
    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Us => "us",
            Unit::Kbps => "kbps",
            Unit::Ppm => "ppm",
        }
    }
}

impl Figure {
    /// Every figure: the phases in the order they happen, then the others.
    pub const ALL: [Figure; 14] = [
        Figure::Dns,
        Figure::Connect,
        Figure::Tls,
        Figure::Ttfb,
        Figure::Transfer,
        Figure::Total,
        Figure::Goodput,
        Figure::IdleLatency,
        Figure::LoadedLatency,
        Figure::StartupDelay,
        Figure::StallTime,
        Figure::Rtt,
        Figure::Jitter,
        Figure::Loss,
    ];

    /// The figures that are not timing phases, in report order.
    pub const OTHERS: [Figure; 8] = [
        Figure::Goodput,
        Figure::IdleLatency,
        Figure::LoadedLatency,
        Figure::StartupDelay,
        Figure::StallTime,
        Figure::Rtt,
        Figure::Jitter,
        Figure::Loss,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self.phase() {
            Some(phase) => phase.as_str(),
            None => match self {
                Figure::Goodput => "goodput",
                Figure::IdleLatency => "idle_latency",
                Figure::LoadedLatency => "loaded_latency",
                Figure::StartupDelay => "startup_delay",
                Figure::StallTime => "stall_time",
                Figure::Rtt => "rtt",
                Figure::Jitter => "jitter",
                Figure::Loss => "loss",
                _ => unreachable!("every phase figure has a phase"),
            },
        }
    }

    /// The timing phase this figure is, if it is one.
    pub fn phase(self) -> Option<Phase> {
        match self {
            Figure::Dns => Some(Phase::Dns),
            Figure::Connect => Some(Phase::Connect),
            Figure::Tls => Some(Phase::Tls),
            Figure::Ttfb => Some(Phase::Ttfb),
            Figure::Transfer => Some(Phase::Transfer),
            Figure::Total => Some(Phase::Total),
            Figure::Goodput
            | Figure::IdleLatency
            | Figure::LoadedLatency
            | Figure::StartupDelay
            | Figure::StallTime
            | Figure::Rtt
            | Figure::Jitter
            | Figure::Loss => None,
        }
    }

    /// What its values count.
    pub fn unit(self) -> Unit {
        match self {
            Figure::Goodput => Unit::Kbps,
            Figure::Loss => Unit::Ppm,
            _ => Unit::Us,
        }
    }

    /// Whether a larger value is the better one (bandwidth), so that the tail that
    /// matters is the low one.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Figure::Goodput)
    }
}

impl From<Phase> for Figure {
    fn from(phase: Phase) -> Figure {
        match phase {
            Phase::Dns => Figure::Dns,
            Phase::Connect => Figure::Connect,
            Phase::Tls => Figure::Tls,
            Phase::Ttfb => Figure::Ttfb,
            Phase::Transfer => Figure::Transfer,
            Phase::Total => Figure::Total,
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Figure {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Figure::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "figure",
                given: s.to_owned(),
            })
    }
}

/// Phase timings of one fetch, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timings {
    pub dns: u64,
    pub connect: u64,
    pub tls: u64,
    pub ttfb: u64,
    pub transfer: u64,
    pub total: u64,
}

impl Timings {
    /// The value of one phase.
    pub fn get(&self, phase: Phase) -> u64 {
        match phase {
            Phase::Dns => self.dns,
            Phase::Connect => self.connect,
            Phase::Tls => self.tls,
            Phase::Ttfb => self.ttfb,
            Phase::Transfer => self.transfer,
            Phase::Total => self.total,
        }
    }
}

/// Why a measurement failed: one stable `snake_case` code per cause a customer would
/// tell apart. Codes are never renamed; earlier, coarser codes are still read
/// (`tls` as `tls_handshake`, `unexpected_status` as `http_status`, `timeout` as
/// `total_timeout`) so that results spooled by older agents are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The name does not exist (NXDOMAIN, or no address record).
    DnsNoSuchName,
    /// The resolver gave no answer in time.
    DnsTimeout,
    /// Name resolution failed otherwise (server failure, ...).
    Dns,
    /// The target refused the TCP connection (RST: nothing listens on that port).
    ConnectRefused,
    /// The TCP handshake got no answer in time.
    ConnectTimeout,
    /// The TCP connection failed otherwise (unreachable network or host, ...).
    Connect,
    /// The server's certificate does not chain to a trusted root.
    TlsUntrusted,
    /// The server's certificate has expired (or is not valid yet).
    TlsExpired,
    /// The server's certificate is not valid for the host name asked for.
    TlsNameMismatch,
    /// The TLS handshake failed otherwise (protocol versions, ciphers, alerts, ...).
    #[serde(alias = "tls")]
    TlsHandshake,
    /// The server answered with a status the check does not expect.
    #[serde(alias = "unexpected_status")]
    HttpStatus,
    /// The body did not contain the text the check expects.
    BodyMismatch,
    /// The body was larger than the check allows.
    BodyTooLarge,
    /// The protocol exchange broke off (reset, malformed response).
    Http,
    /// Redirects went on past the check's limit.
    TooManyRedirects,
    /// The whole measurement ran past its time limit.
    #[serde(alias = "timeout")]
    TotalTimeout,
    /// The target (or a redirect) resolved to an address the agent may not fetch.
    TargetForbidden,
    /// The task could not be understood (bad URL, unsupported kind).
    InvalidTask,
    /// A page check: the page references more sub-resources than the limit allows.
    PageTooManyResources,
    /// A page check: the page (HTML plus sub-resources) is larger than the byte limit.
    PageTooLarge,
    /// A video check: the URL is not an HLS playlist or a DASH MPD that can be played
    /// (neither, no segments, a byte range that cannot be placed, a live playlist
    /// without a target duration, a live MPD without an availability start time, an
    /// MPD addressed by `SegmentBase`).
    PlaylistInvalid,
    /// A udp check: nothing answered the hello at the reflector's address (after
    /// [`UDP_HELLO_ATTEMPTS`] tries), so no stream was sent.
    ReflectorSilent,
    /// A udp check: the address answered, but not as the site's reflector (another
    /// token, or not the reflector protocol), so no stream was sent.
    ReflectorUnverified,
}

impl ErrorKind {
    /// Every kind, in the order the phases of a fetch can produce them.
    pub const ALL: [ErrorKind; 23] = [
        ErrorKind::DnsNoSuchName,
        ErrorKind::DnsTimeout,
        ErrorKind::Dns,
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::Connect,
        ErrorKind::TlsUntrusted,
        ErrorKind::TlsExpired,
        ErrorKind::TlsNameMismatch,
        ErrorKind::TlsHandshake,
        ErrorKind::HttpStatus,
        ErrorKind::BodyMismatch,
        ErrorKind::BodyTooLarge,
        ErrorKind::Http,
        ErrorKind::TooManyRedirects,
        ErrorKind::TotalTimeout,
        ErrorKind::TargetForbidden,
        ErrorKind::InvalidTask,
        ErrorKind::PageTooManyResources,
        ErrorKind::PageTooLarge,
        ErrorKind::PlaylistInvalid,
        ErrorKind::ReflectorSilent,
        ErrorKind::ReflectorUnverified,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::DnsNoSuchName => "dns_no_such_name",
            ErrorKind::DnsTimeout => "dns_timeout",
            ErrorKind::Dns => "dns",
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::TlsUntrusted => "tls_untrusted",
            ErrorKind::TlsExpired => "tls_expired",
            ErrorKind::TlsNameMismatch => "tls_name_mismatch",
            ErrorKind::TlsHandshake => "tls_handshake",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::BodyMismatch => "body_mismatch",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::Http => "http",
            ErrorKind::TooManyRedirects => "too_many_redirects",
            ErrorKind::TotalTimeout => "total_timeout",
            ErrorKind::TargetForbidden => "target_forbidden",
            ErrorKind::InvalidTask => "invalid_task",
            ErrorKind::PageTooManyResources => "page_too_many_resources",
            ErrorKind::PageTooLarge => "page_too_large",
            ErrorKind::PlaylistInvalid => "playlist_invalid",
            ErrorKind::ReflectorSilent => "reflector_silent",
            ErrorKind::ReflectorUnverified => "reflector_unverified",
        }
    }
}

impl FromStr for ErrorKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "error kind",
                given: s.to_owned(),
            })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure of one measurement: a stable kind plus a human detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeasurementError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The outcome of one fetch, as `lastmile-agent measure --json` prints it and as it
/// travels inside a [`ResultSubmission`].
///
/// When redirects were followed, `timings_us` sums each phase over every hop (as curl
/// `-L` sums `time_namelookup`, `time_connect`, ...), `total` is the wall-clock time from
/// the first request to the last byte of the final response, `redirect_us` is the time
/// spent before the final request started (curl's `time_redirect`), and `redirects`
/// lists the hops before the final one. `status`, `bytes`, `remote_addr` and
/// `ip_version` describe the final response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Measurement {
    /// HTTP status, or `null` when no response arrived.
    pub status: Option<u16>,
    /// Body bytes received as they came over the wire (compressed, if the server
    /// compressed them).
    pub bytes: u64,
    /// Why it failed, `null` on success.
    pub error: Option<MeasurementError>,
    /// Phase timings; phases not reached are 0.
    pub timings_us: Timings,
    /// Body bytes after decoding `Content-Encoding` (equal to `bytes` when the body was
    /// not compressed).
    #[serde(default)]
    pub bytes_decoded: u64,
    /// The IP address the final connection went to (`null` before a connection).
    #[serde(default)]
    pub remote_addr: Option<String>,
    /// 4 or 6: the address family of `remote_addr`.
    #[serde(default)]
    pub ip_version: Option<u8>,
    /// The HTTP version of the final response, `"1.1"` or `"2"` (agreed by ALPN).
    #[serde(default)]
    pub http_version: Option<String>,
    /// Time from start until the final request's own name lookup began, µs (0 without
    /// redirects), as curl's `time_redirect`.
    #[serde(default)]
    pub redirect_us: u64,
    /// The redirects followed, in order, before the final response.
    #[serde(default)]
    pub redirects: Vec<Hop>,
    /// A page check's summary (absent for `http` checks). For a page, `timings_us`
    /// keeps the HTML document's phases except `total`, which is the page total (start
    /// to the last byte of the last sub-resource), and `bytes`/`bytes_decoded` count
    /// the whole page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PageSummary>,
    /// A throughput check's summary (absent for other kinds). `bytes` is then every
    /// connection's body bytes, `timings_us.transfer` the load's time (equal to
    /// `throughput.duration_us`) and the other phases the first connection's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<ThroughputSummary>,
    /// A video check's summary (absent for other kinds). `bytes` then counts every
    /// playlist and segment, `timings_us.transfer` runs from the first segment's first
    /// byte to the last segment's last, `total` from the start to the last byte (or
    /// the failure), `dns` to `ttfb` are the first request's, and `status` (with
    /// `remote_addr`, `ip_version`, `http_version`) is the media playlist's response's;
    /// a segment that fails is named in the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSummary>,
    /// A udp check's summary (absent for other kinds). `timings_us.dns` is then the
    /// reflector's name lookup, `connect` and `tls` 0, `ttfb` the round trip of the
    /// hello the reflector answered, `transfer` from the
    /// first probe sent to the end of the wait for the last echo, `total` the whole
    /// session; `bytes` counts the echoes received and `remote_addr` is the reflector's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpSummary>,
}

/// What a video session measured, against the player model: segments are fetched in
/// order, back to back, on one kept-alive connection; a segment's media is buffered
/// when its last byte arrives; playback starts once [`VIDEO_STARTUP_BUFFER_MS`] of
/// media is buffered (or all the session will play), plays in real time, and stalls
/// when the buffer runs dry until [`VIDEO_REBUFFER_MS`] is buffered again (or all the
/// rest). The session ends when `play_ms` of media has played; playback after the last
/// download is computed, since nothing can stall then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VideoSummary {
    /// The media playlist played (the chosen variant's, or the URL itself).
    pub playlist_url: String,
    /// The chosen variant's `BANDWIDTH`, bit/s (absent without a master playlist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_bps: Option<u64>,
    /// Segments downloaded.
    pub segments: u32,
    /// Media played, milliseconds.
    pub played_ms: u64,
    /// From the first request until playback started, µs (0 when the session failed
    /// before playback started: a failed result gives no figures).
    pub startup_us: u64,
    /// Times playback stopped for want of media after it started.
    pub stalls: u32,
    /// Time spent stalled after playback started, µs (a stall still on at a failure
    /// counts up to the failure). Above 0 only with a stall.
    pub stall_us: u64,
}

/// Media buffered before playback starts, milliseconds (ExoPlayer's default
/// `bufferForPlaybackMs`).
pub const VIDEO_STARTUP_BUFFER_MS: u64 = 2_500;

/// Media buffered before playback resumes after a stall, milliseconds (ExoPlayer's
/// default `bufferForPlaybackAfterRebufferMs`).
pub const VIDEO_REBUFFER_MS: u64 = 5_000;

/// Longest session a video check may ask for, milliseconds of media.
pub const MAX_VIDEO_PLAY_MS: u64 = 120_000;

/// Segments a session downloads at most.
pub const MAX_VIDEO_SEGMENTS: usize = 2_000;

/// A video check's session, in its [`Task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VideoTask {
    /// Media to play, milliseconds (1,000 to [`MAX_VIDEO_PLAY_MS`]).
    pub play_ms: u64,
    /// The highest variant of a master playlist at or under this bitrate is played
    /// (the lowest when none is); absent: the highest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bitrate_kbps: Option<u64>,
}

impl Default for VideoTask {
    /// Twenty seconds of the highest rendition.
    fn default() -> Self {
        VideoTask {
            play_ms: 20_000,
            max_bitrate_kbps: None,
        }
    }
}

/// A udp check's stream, in its [`Task`]: a probe of `packet_bytes` every
/// `interval_ms` for `duration_ms`, to the reflector at the task's `udp://host:port`
/// URL, which must first answer the hello with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UdpTask {
    /// Between probes, milliseconds ([`MIN_UDP_INTERVAL_MS`] to [`MAX_UDP_INTERVAL_MS`]).
    pub interval_ms: u64,
    /// How long the stream lasts, milliseconds ([`MIN_UDP_DURATION_MS`] to
    /// [`MAX_UDP_DURATION_MS`], at most [`MAX_UDP_PROBES`] probes).
    pub duration_ms: u64,
    /// Each probe's UDP payload, bytes ([`reflector::MIN_PROBE_LEN`] to
    /// [`reflector::MAX_PROBE_LEN`]).
    pub packet_bytes: u32,
    /// What the reflector must answer the hello with: the check's site token.
    pub token: String,
}

/// Between a udp stream's probes by default, milliseconds: a game's 50 updates a
/// second, or a call's 20 ms audio frames.
pub const DEFAULT_UDP_INTERVAL_MS: u64 = 20;
/// A udp stream's length by default, milliseconds.
pub const DEFAULT_UDP_DURATION_MS: u64 = 10_000;
/// A udp probe's payload by default, bytes: a 20 ms G.711 voice frame with its RTP
/// header (160 + 12), about a game update's size.
pub const DEFAULT_UDP_PACKET_BYTES: u32 = 172;
/// Shortest interval between probes, milliseconds (100 packets a second).
pub const MIN_UDP_INTERVAL_MS: u64 = 10;
/// Longest interval between probes, milliseconds.
pub const MAX_UDP_INTERVAL_MS: u64 = 1_000;
/// Shortest stream, milliseconds.
pub const MIN_UDP_DURATION_MS: u64 = 1_000;
/// Longest stream, milliseconds.
pub const MAX_UDP_DURATION_MS: u64 = 60_000;
/// Most probes one stream sends (and one summary lists round trips of).
pub const MAX_UDP_PROBES: usize = 3_000;
/// Hellos an agent sends, [`UDP_HELLO_WAIT_MS`] apart, before it gives up on a silent
/// reflector.
pub const UDP_HELLO_ATTEMPTS: u32 = 3;
/// How long the agent waits for a welcome before the next hello, milliseconds.
pub const UDP_HELLO_WAIT_MS: u64 = 1_000;
/// After the last probe, how long the agent waits for echoes still on their way,
/// milliseconds; an echo later than that is lost (no game waits longer for it).
pub const UDP_ECHO_WAIT_MS: u64 = 1_000;
/// A stream stops early when no echo came back for this long, milliseconds: the
/// reflector went away, and an agent never keeps sending into silence.
pub const UDP_SILENCE_MS: u64 = 3_000;

/// What a udp stream measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UdpSummary {
    /// Probes sent (fewer than the stream's length asks when it stopped on silence).
    pub sent: u32,
    /// Echoes received (each probe's first; duplicates are not counted).
    pub received: u32,
    /// Probes the reflector said it had not received, by the count in the last echo:
    /// loss on the way there. The rest of `sent - received` was lost on the way back,
    /// or after the last echo.
    pub lost_up: u32,
    /// Each echoed probe's round trip, µs, in the order the probes were sent.
    pub rtt_us: Vec<u64>,
}

impl UdpSummary {
    /// Probes that did not come back.
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }

    /// The share of probes sent that did not come back, parts per million (rounded);
    /// `None` when nothing was sent.
    pub fn loss_ppm(&self) -> Option<u64> {
        let sent = u64::from(self.sent);
        (sent > 0).then(|| (u64::from(self.lost()) * 1_000_000 + sent / 2) / sent)
    }

    /// The median round trip of the echoes, µs (the lower middle of an even count: one
    /// that was measured); `None` without an echo.
    pub fn median_rtt_us(&self) -> Option<u64> {
        let mut sorted = self.rtt_us.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len().checked_sub(1)? / 2).copied()
    }

    /// The jitter, µs: the mean difference between the round trips of consecutive
    /// echoes (RFC 5481's packet delay variation over the round trip, as IRTT's "IPDV"
    /// and RFC 3550's jitter before its smoothing), rounded: the variation a game's or
    /// a call's jitter buffer must absorb. `None` with fewer than two echoes.
    pub fn jitter_us(&self) -> Option<u64> {
        let n = self.rtt_us.len().checked_sub(1).filter(|&n| n > 0)? as u64;
        let sum: u64 = self.rtt_us.windows(2).map(|w| w[0].abs_diff(w[1])).sum();
        Some((sum + n / 2) / n)
    }
}

/// What a throughput load measured.
///
/// The agent first sends [`IDLE_LATENCY_PROBES`] small requests (`HEAD` of the check's
/// URL) one after the other on a connection of their own, then opens `connections`
/// connections that each download the URL, again and again, until the load's duration
/// is over or `max_bytes` arrived, and meanwhile sends a probe every
/// [`LATENCY_PROBE_INTERVAL_MS`] on the probe connection (the next one once the last
/// answered, if it took longer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ThroughputSummary {
    /// Connections that downloaded at once.
    pub connections: u32,
    /// Downloads completed or cut by the end of the load, over every connection.
    pub requests: u32,
    /// Body bytes received over every connection (the measurement's `bytes`).
    pub bytes: u64,
    /// From the load's first body byte on any connection to its last, µs (the
    /// measurement's `timings_us.transfer`): goodput is `bytes` over it.
    pub duration_us: u64,
    /// Each idle probe's round trip (request sent to the response's first byte), µs.
    pub idle_latency_us: Vec<u64>,
    /// Each probe's round trip under load, µs, in the order sent. A probe the load's
    /// end cut short is not listed.
    pub loaded_latency_us: Vec<u64>,
}

/// Probes a throughput load sends before the load starts.
pub const IDLE_LATENCY_PROBES: usize = 5;

/// A throughput load sends a probe this often, milliseconds.
pub const LATENCY_PROBE_INTERVAL_MS: u64 = 100;

/// Connections a throughput check may ask for at most.
pub const MAX_THROUGHPUT_CONNECTIONS: u32 = 16;

/// Longest load a throughput check may ask for, milliseconds.
pub const MAX_THROUGHPUT_DURATION_MS: u64 = 30_000;

/// Probes under load a summary may list at most: one per interval of the longest load,
/// and the one that started it.
pub const MAX_LOADED_LATENCY_PROBES: usize =
    (MAX_THROUGHPUT_DURATION_MS / LATENCY_PROBE_INTERVAL_MS) as usize + 1;

/// A throughput check's load, in its [`Task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ThroughputTask {
    /// Connections downloading at once, 1 to [`MAX_THROUGHPUT_CONNECTIONS`].
    pub connections: u32,
    /// How long the load lasts, milliseconds (at most [`MAX_THROUGHPUT_DURATION_MS`],
    /// and less than the task's `timeout_ms`).
    pub duration_ms: u64,
}

impl Default for ThroughputTask {
    /// Four connections for ten seconds: what browser speed tests settle on to fill a
    /// line of a few hundred Mbit/s past TCP's slow start.
    fn default() -> Self {
        ThroughputTask {
            connections: 4,
            duration_ms: 10_000,
        }
    }
}

/// What a page load fetched besides (and including) its HTML document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PageSummary {
    /// Start to the last byte of the last sub-resource, µs (the measurement's `total`).
    pub total_us: u64,
    /// The HTML document's own phases; its `total` ends at the document's last byte.
    pub document_timings_us: Timings,
    /// The document's URL after redirects: relative references resolve against it.
    pub document_url: String,
    /// Sub-resources requested (the document not included).
    pub resources: u32,
    /// Bytes over the wire for the whole page, document included.
    pub bytes: u64,
    /// Bytes after decoding `Content-Encoding`, document included.
    pub bytes_decoded: u64,
    /// TCP connections opened for the page load.
    pub connections: u32,
    /// Sub-resources requested, per type.
    pub by_type: ResourceCounts,
    /// The sub-resource that took longest (its own `total`), if any was fetched.
    pub slowest: Option<ResourceTiming>,
    /// Sub-resources that failed; they do not fail the page.
    pub failed: Vec<FailedResource>,
}

/// What a sub-resource is for, from how the page references it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Stylesheet,
    Script,
    Image,
    Font,
    Icon,
    /// Audio or video (`<source src>`).
    Media,
    Other,
}

impl ResourceType {
    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Stylesheet => "stylesheet",
            ResourceType::Script => "script",
            ResourceType::Image => "image",
            ResourceType::Font => "font",
            ResourceType::Icon => "icon",
            ResourceType::Media => "media",
            ResourceType::Other => "other",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sub-resources per type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ResourceCounts {
    pub stylesheet: u32,
    pub script: u32,
    pub image: u32,
    pub font: u32,
    pub icon: u32,
    pub media: u32,
    pub other: u32,
}

impl ResourceCounts {
    /// Counts one more resource of `kind`.
    pub fn add(&mut self, kind: ResourceType) {
        let slot = match kind {
            ResourceType::Stylesheet => &mut self.stylesheet,
            ResourceType::Script => &mut self.script,
            ResourceType::Image => &mut self.image,
            ResourceType::Font => &mut self.font,
            ResourceType::Icon => &mut self.icon,
            ResourceType::Media => &mut self.media,
            ResourceType::Other => &mut self.other,
        };
        *slot += 1;
    }

    /// All resources counted.
    pub fn total(&self) -> u32 {
        self.stylesheet + self.script + self.image + self.font + self.icon + self.media + self.other
    }
}

/// One sub-resource's fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceTiming {
    pub url: String,
    #[serde(rename = "type")]
    pub kind: ResourceType,
    pub status: Option<u16>,
    /// Bytes over the wire.
    pub bytes: u64,
    /// Time it waited for a connection (the per-host limit), µs; not in `timings_us`.
    pub queued_us: u64,
    /// Its phases; `dns`, `connect` and `tls` are 0 on a reused connection, `total` runs
    /// from when it got its connection to its last byte.
    pub timings_us: Timings,
}

/// A sub-resource that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedResource {
    pub url: String,
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// Its HTTP status, when one arrived (a 404 is `http_status` with status 404).
    pub status: Option<u16>,
    pub error: MeasurementError,
}

/// Sub-resources a page check fetches at most by default; one more is
/// `page_too_many_resources`.
pub const DEFAULT_MAX_PAGE_RESOURCES: u32 = 200;

/// One redirect that was followed: the request made and where it pointed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hop {
    /// The URL requested.
    pub url: String,
    /// Its (3xx) status.
    pub status: u16,
    /// Where its `Location` pointed (absolute).
    pub location: String,
    /// The IP address the request went to.
    pub remote_addr: Option<String>,
    /// This hop's own phase timings; `total` is the hop's duration.
    pub timings_us: Timings,
}

impl Measurement {
    /// Whether this measurement counts as available (no error).
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

/// Kind of check: `http` fetches one URL; `page` loads an HTML page with its
/// sub-resources (stylesheets, scripts, images, fonts, icons) as a browser would;
/// `throughput` downloads the URL over several connections at once for a while, as a
/// speed test does, and measures the round trip before and during that load; `video`
/// plays an HLS stream or a DASH presentation against a player's buffer model (start-up delay, stalls); `udp`
/// sends an isochronous stream of small packets, as a game or a call does, to the
/// owner's reflector and measures their round trip, jitter and loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Page,
    Throughput,
    Video,
    Udp,
}

impl CheckKind {
    /// Every kind.
    pub const ALL: [CheckKind; 5] = [
        CheckKind::Http,
        CheckKind::Page,
        CheckKind::Throughput,
        CheckKind::Video,
        CheckKind::Udp,
    ];

    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Page => "page",
            CheckKind::Throughput => "throughput",
            CheckKind::Video => "video",
            CheckKind::Udp => "udp",
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(CheckKind::Http),
            "page" => Ok(CheckKind::Page),
            "throughput" => Ok(CheckKind::Throughput),
            "video" => Ok(CheckKind::Video),
            "udp" => Ok(CheckKind::Udp),
            _ => Err(UnknownName {
                kind: "check kind",
                given: s.to_owned(),
            }),
        }
    }
}

/// Agent -> controller: enrol with a volunteer's enrolment key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrolRequest {
    /// The volunteer's enrolment key.
    pub enrol_key: String,
    /// A name the volunteer recognises ("kitchen-pc").
    pub name: String,
    /// The connection class the volunteer says this machine has.
    pub declared_class: ConnectionClass,
    /// Agent software version.
    pub version: String,
}

/// Controller -> agent: the agent's identity and secret token (shown only once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrolResponse {
    pub agent_id: Uuid,
    /// Bearer token for every later call. The controller keeps only its hash.
    pub token: String,
}

/// The volunteer's limits, sent with each heartbeat so that the scheduler respects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentLimits {
    /// Measurements the agent runs at once.
    pub max_concurrent: u32,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits { max_concurrent: 2 }
    }
}

/// Agent -> controller: "I am alive".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    pub declared_class: ConnectionClass,
    pub version: String,
    pub limits: AgentLimits,
    /// Why the agent takes no work now (daily byte limit reached, machine busy during
    /// idle-only hours, spool full); absent when it takes work. A paused agent is not
    /// planned into new runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The check kinds this agent can measure. An agent from before this list sends
    /// none and is taken to measure `http` only, so it is never handed a task of a kind
    /// it cannot parse.
    #[serde(default)]
    pub kinds: Vec<CheckKind>,
    /// Whether this agent runs path traces ([`trace::TraceTask`] in a lease answer).
    /// An agent from before sends nothing and is never handed one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_trace: bool,
}

/// Where the controller places the agent, from the address it connected from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// ISO 3166-2 subdivision code (without the country prefix).
    pub region: Option<String>,
    pub city: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Name of the autonomous system's organisation.
    pub as_org: Option<String>,
}

/// Controller -> agent: heartbeat acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAck {
    pub server_time: DateTime<Utc>,
    /// The location the controller resolved for this agent.
    pub location: Location,
    /// Seconds until the next heartbeat is due.
    pub heartbeat_interval_s: u32,
    /// Where this controller serves the agent protocol's hot calls (heartbeat, lease,
    /// path traces, results) on a listener of their own, when it has one, e.g.
    /// `https://agents.example.net`: an agent sends those calls there from now on, and
    /// back to the controller's URL when it cannot be reached. Absent: everything goes
    /// to the controller's URL, as before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
}

/// Agent -> controller: lease up to `max` assignments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseRequest {
    pub max: u32,
    /// With no work now, wait up to this many seconds for some before answering (a long
    /// poll: work reaches a waiting agent as soon as it is planned). The controller caps
    /// it (25 s by default); absent or 0, the answer comes at once, as agents from
    /// before this field expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u32>,
}

/// One measurement task leased to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    /// Also the result's idempotency key.
    pub assignment_id: Uuid,
    pub check_id: Uuid,
    pub run_id: Uuid,
    pub kind: CheckKind,
    pub url: String,
    /// Status codes that count as success; empty means any 2xx or 3xx.
    pub expected_status: Vec<u16>,
    /// Largest body the agent reads before giving up.
    pub max_bytes: u64,
    /// The (decoded) body must contain this text, or the result is `body_mismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Time limit for the whole measurement, milliseconds.
    pub timeout_ms: u64,
    /// Redirects followed at most; one more is `too_many_redirects`. 0 does not follow.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// The lease ends here; a result after it is recorded as late.
    pub lease_expires_at: DateTime<Utc>,
    /// A throughput check's load; absent for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<ThroughputTask>,
    /// A video check's session; absent for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoTask>,
    /// A udp check's stream; absent for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpTask>,
}

/// How many redirects a task follows when the controller does not say: curl's and
/// browsers' habit of following a few, not unbounded.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

fn default_max_redirects() -> u32 {
    DEFAULT_MAX_REDIRECTS
}

/// Controller -> agent: the leased tasks (possibly none).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseResponse {
    pub tasks: Vec<Task>,
    /// Path traces to run (only for agents whose heartbeat says `path_trace`); absent
    /// when there are none, so agents from before never see the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<trace::TraceTask>,
}

/// Agent -> controller: the outcome of one assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultSubmission {
    pub assignment_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub measurement: Measurement,
}

/// What the controller did with a submitted result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResultDisposition {
    /// Stored and counted in the aggregates.
    Accepted,
    /// Stored, but the lease had expired: not counted.
    Late,
}

/// Controller -> agent: the result is safely stored; the agent may drop it from its spool.
///
/// A repeated submission of the same assignment gets the same acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultAck {
    pub assignment_id: Uuid,
    pub disposition: ResultDisposition,
}

/// Most results one [`ResultBatch`] may carry.
pub const MAX_RESULTS_PER_BATCH: usize = 100;

/// Agent -> controller: several results in one request (`POST /api/v1/results/batch`),
/// e.g. a spool delivered after an outage. 1 to [`MAX_RESULTS_PER_BATCH`] results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultBatch {
    pub results: Vec<ResultSubmission>,
}

/// Controller -> agent: one answer per submitted result, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultBatchAck {
    pub results: Vec<ResultOutcome>,
}

/// The answer for one result of a batch: stored (`disposition`, the same as
/// [`ResultAck`]'s: the agent may drop it from its spool) or refused (`error`, with the
/// status and body a single submission of it would have got: it will never be
/// accepted, so the agent drops it too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultOutcome {
    pub assignment_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<ResultDisposition>,
    /// The HTTP status a single submission would have got (403, 404, 422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// The JSON body of every 4xx/5xx answer from the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// Stable machine code, e.g. `"check_not_found"`.
    pub error: String,
    /// What is wrong, for a person.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_class_names_round_trip() {
        for class in ConnectionClass::ALL {
            let json = serde_json::to_string(&class).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", class.as_str()));
            assert_eq!(class.as_str().parse::<ConnectionClass>(), Ok(class));
        }
        assert!("isdn".parse::<ConnectionClass>().is_err());
    }

    #[test]
    fn figure_names_round_trip_and_phases_keep_theirs() {
        for figure in Figure::ALL {
            let json = serde_json::to_string(&figure).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", figure.as_str()));
            assert_eq!(figure.as_str().parse::<Figure>(), Ok(figure));
        }
        for phase in Phase::ALL {
            let figure = Figure::from(phase);
            assert_eq!(figure.phase(), Some(phase));
            assert_eq!(figure.as_str(), phase.as_str());
            assert_eq!(figure.unit(), Unit::Us);
            assert!(!figure.higher_is_better());
        }
        assert_eq!(Figure::Goodput.phase(), None);
        assert_eq!(Figure::Goodput.unit(), Unit::Kbps);
        assert!(Figure::Goodput.higher_is_better());
        assert_eq!("jitter".parse::<Figure>().unwrap(), Figure::Jitter);
        assert_eq!(Figure::Loss.unit(), Unit::Ppm);
        assert!(!Figure::Loss.higher_is_better());
        assert!("wobble".parse::<Figure>().is_err());
    }

    #[test]
    fn a_streams_figures_are_its_loss_median_round_trip_and_mean_variation() {
        let stream = UdpSummary {
            sent: 8,
            received: 5,
            lost_up: 1,
            rtt_us: vec![40_000, 44_000, 41_000, 41_000, 50_000],
        };
        assert_eq!(stream.lost(), 3);
        assert_eq!(stream.loss_ppm(), Some(375_000));
        assert_eq!(stream.median_rtt_us(), Some(41_000));
        // |4| + |3| + |0| + |9| ms over 4 steps.
        assert_eq!(stream.jitter_us(), Some(4_000));
        let one = UdpSummary {
            sent: 1,
            received: 1,
            lost_up: 0,
            rtt_us: vec![40_000],
        };
        assert_eq!(one.jitter_us(), None, "no variation without a second echo");
        assert_eq!(UdpSummary::default().loss_ppm(), None);
        assert_eq!(UdpSummary::default().median_rtt_us(), None);
    }

    #[test]
    fn measurement_json_has_the_documented_shape() {
        let m = Measurement {
            status: Some(200),
            bytes: 10,
            error: None,
            timings_us: Timings {
                dns: 1,
                connect: 2,
                tls: 0,
                ttfb: 3,
                transfer: 4,
                total: 10,
            },
            bytes_decoded: 10,
            remote_addr: Some("192.0.2.1".into()),
            ip_version: Some(4),
            http_version: Some("1.1".into()),
            redirect_us: 0,
            redirects: Vec::new(),
            page: None,
            throughput: None,
            video: None,
            udp: None,
        };
        let v = serde_json::to_value(&m).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"status": 200, "bytes": 10, "error": null,
                "timings_us": {"dns": 1, "connect": 2, "tls": 0, "ttfb": 3, "transfer": 4, "total": 10},
                "bytes_decoded": 10, "remote_addr": "192.0.2.1", "ip_version": 4, "http_version": "1.1",
                "redirect_us": 0, "redirects": []})
        );
        // A result in the older, shorter shape (a spooled one) still reads.
        let old = serde_json::json!({"status": 200, "bytes": 10, "error": {"kind": "timeout", "message": "slow"},
            "timings_us": {"dns": 1, "connect": 2, "tls": 0, "ttfb": 3, "transfer": 4, "total": 10}});
        let m: Measurement = serde_json::from_value(old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.error.map(|e| e.kind), Some(ErrorKind::TotalTimeout));
        assert!(m.redirects.is_empty());
    }

    #[test]
    fn error_kinds_have_stable_names_and_older_codes_still_read() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
        }
        for (old, new) in [
            ("tls", ErrorKind::TlsHandshake),
            ("unexpected_status", ErrorKind::HttpStatus),
            ("timeout", ErrorKind::TotalTimeout),
            ("dns", ErrorKind::Dns),
            ("connect", ErrorKind::Connect),
        ] {
            let kind: Option<ErrorKind> = serde_json::from_str(&format!("\"{old}\"")).ok();
            assert_eq!(kind, Some(new), "{old}");
        }
    }
}
