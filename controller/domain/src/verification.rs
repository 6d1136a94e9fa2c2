//! Result verification: nobody is paid for fake work.
//!
//! Every result that arrives in time is judged here, inside the transaction that stores
//! it, *before* it is aggregated or paid (`ingest::accept`). A result that breaks a rule
//! is **flagged**: it is kept (the `results` row with `flagged = true`, and one
//! `result_flags` row per broken rule carrying the numbers that broke it), but it is not
//! folded into the aggregates (so owner reports, ISP views, histogram exports and the
//! dashboard, which all merge aggregates, never see it), the owner is not charged, the
//! volunteer earns nothing and the leaderboard counts no work for it. Operators list
//! flagged results at `GET /api/v1/ops/flags`. The agent's acknowledgement stays
//! `accepted`: the result was received and stored, and an older agent could not parse a
//! new disposition (the wire contract only grows).
//!
//! # Rules, one stable code each
//!
//! | code | rule | can judge when |
//! |------|------|----------------|
//! | `ttfb_below_rtt` | ttfb (or a throughput load's idle or loaded latency, the median of its probes' ttfbs) shorter than one round trip over the agent's access link | the agent has calibrated and its line has a known access floor |
//! | `faster_than_line` | body bytes arrived faster than the line can carry them | calibrated, at least [`MIN_TRANSFER_BYTES`] on the wire |
//! | `peer_outlier` | ttfb or total far from what peers on the same network measured | enough recent peer results (below) |
//! | `copied_result` | exactly the timings and bytes of another agent's result | a response arrived (ttfb and total > 0) |
//! | `replayed_result` | exactly the timings and bytes of an earlier result of the same agent, for another assignment | as above |
//! | `same_address_farm` | another agent of the same volunteer, seen from the same address, already delivered a result for this run | always |
//! | `impossible_timings` | timings no line can produce: phases that add up to more than the total, a response sooner than [`MIN_TTFB_US`], bytes faster than [`MAX_LINK_BPS`] | always, whatever the calibration |
//! | `uncalibrated_agent` | the agent has never calibrated its line, so the line rules cannot judge it | always (runs plan only calibrated agents, so only results of runs planned before an agent lost its calibration reach it) |
//!
//! ## Physics for any line (`impossible_timings`)
//!
//! Some timings break physics whatever the line: the phases are consecutive steps of
//! one measurement, so their sum cannot pass the wall-clock total (beyond rounding each
//! to a whole microsecond); a response needs at least one exchange of packets through
//! two network stacks, which even on loopback takes tens of microseconds; and no
//! access link carries more than 400 Gbit/s (the fastest Ethernet in service), after a
//! first burst of one loopback segment (64 KiB) that may arrive with the first byte.
//! These need no calibration, so an agent cannot escape them by never calibrating.
//!
//! ## Physics (`ttfb_below_rtt`, `faster_than_line`)
//!
//! ttfb is the request sent to the first response byte: it contains at least one round
//! trip over the agent's own access link, whatever the site. Calibration measures the
//! RTT to the *controller*, which is the access link plus the path beyond it, so a site
//! closer than the controller may honestly answer faster than the calibrated RTT. The
//! floor is therefore the smaller of half the calibrated RTT (tolerance for calibration
//! jitter) and the access link's physical minimum round trip for the agent's measured
//! class ([`access_floor_us`]): dial-up modems 100 ms (modulation and error correction),
//! geostationary satellite 480 ms (four 36,000 km legs), mobile 20 ms (radio
//! scheduling), DSL 10 ms (DSLAM, interleaving), cable 5 ms (DOCSIS request-grant),
//! fibre none (nothing to judge). `connect` is deliberately not used: the demo's
//! user-space links cannot delay the TCP handshake (see ARCHITECTURE.md).
//!
//! transfer is first to last body byte. Everything after the first segment crosses the
//! access link's bottleneck, so it takes at least `(bytes - 16 KiB) * 8 / capacity`.
//! Calibration's downstream rate is a lower bound on the capacity (slow start, a distant
//! controller), so the capacity is taken as [`LINE_HEADROOM`] (4) times the measured rate;
//! only bodies of at least 32 KiB are judged, smaller ones fit in a few segments.
//!
//! An agent that never calibrated cannot be judged by these two rules; runs plan only
//! calibrated agents, and `uncalibrated_agent` flags a result that arrives without one.
//!
//! ## Peers (`peer_outlier`)
//!
//! The result's ttfb and total are compared with the recent (last 24 h, up to 200)
//! successful, unflagged, in-time results of the same check from agents of *other
//! volunteers* (one volunteer's agents cannot vouch for each other) in the same ASN and
//! measured class. Latencies are right-skewed (roughly lognormal), so the
//! robust z-score is taken on their logarithms, which makes "ten times faster" as
//! unusual as "ten times slower": `z = (ln x - median) / (1.4826 * MAD)`. Flagged when
//! `|z| > 6` *and* the value differs from the peers' median by at least 10 ms (so that
//! millisecond jitter on fast lines never counts). At least 8 peer results from at least
//! 3 distinct agents are needed, otherwise the rule cannot judge. When the peers agree
//! exactly (MAD = 0, or nearly), the scale is floored at 0.25 in log units, so a value
//! must still be `e^(6 * 0.25)`, about 4.5 times, away from the median. With honest
//! lognormal spread of sigma 0.5, a 6-sigma-equivalent deviation is a factor of 20.
//! Results of unknown ASN (0) and failures (their timings stop where they failed) are
//! not judged.
//!
//! ## Copies and replays (`copied_result`, `replayed_result`)
//!
//! Independent measurements never repeat all six phase timings to the microsecond and
//! the byte count: a match is a copy (another agent's result) or a replay (the same
//! agent's earlier result submitted for a new assignment). Resubmitting the *same*
//! assignment is the idempotent path of `ingest::accept` and never reaches this module.
//! Results without a response (ttfb or total 0) carry too few digits to be unique and
//! are not compared.
//!
//! ## Same-address farming (`same_address_farm`)
//!
//! Several agents of one volunteer behind one address are one line measured several
//! times: only the first result of a run from that (volunteer, address) counts; the
//! others are flagged. Agents of different volunteers behind one address (a shared
//! NAT) are not affected. On PostgreSQL an advisory lock on (run, volunteer, address) is
//! taken first, so two concurrent submissions cannot both be first; SQLite has a single
//! writer.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use lastmile_protocol::{CheckKind, ConnectionClass, Figure};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::agents::Agent;
use crate::clock::{to_datetime, Micros};
use crate::error::{Error, Result};
use crate::figures;
use lastmile_storage::prepared::Prepared;
use lastmile_storage::results::StoredResult;
use lastmile_storage::schema::{agents, checks, result_flags, results, volunteers};
use lastmile_storage::DbConn;

/// One rule a result can break. The codes are stable (stored, and shown to operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    TtfbBelowRtt,
    FasterThanLine,
    PeerOutlier,
    CopiedResult,
    ReplayedResult,
    SameAddressFarm,
    ImpossibleTimings,
    UncalibratedAgent,
    MissingSummary,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::TtfbBelowRtt,
        Rule::FasterThanLine,
        Rule::PeerOutlier,
        Rule::CopiedResult,
        Rule::ReplayedResult,
        Rule::SameAddressFarm,
        Rule::ImpossibleTimings,
        Rule::UncalibratedAgent,
        Rule::MissingSummary,
    ];

    /// The stored code.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::TtfbBelowRtt => "ttfb_below_rtt",
            Rule::FasterThanLine => "faster_than_line",
            Rule::PeerOutlier => "peer_outlier",
            Rule::CopiedResult => "copied_result",
            Rule::ReplayedResult => "replayed_result",
            Rule::SameAddressFarm => "same_address_farm",
            Rule::ImpossibleTimings => "impossible_timings",
            Rule::UncalibratedAgent => "uncalibrated_agent",
            Rule::MissingSummary => "missing_summary",
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Rule> {
        Rule::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::Internal(format!("unknown flag rule {s:?}")))
    }
}

/// A broken rule and the numbers that broke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Flag {
    pub rule: Rule,
    /// The figures the rule compared (microseconds, bits per second, z-scores, ids).
    #[schema(value_type = Object)]
    pub evidence: serde_json::Value,
}

/// A success of a check whose kind measures more than a fetch (a page, a load, a
/// session, a stream) must carry that kind's summary: without it the result would count
/// as a success with none of the figures the check is about (no loss, no stall), an
/// easy way for a hand-made result to be paid and to improve a report. Honest agents
/// always send one; a failure (an error) needs none.
pub fn missing_summary(
    r: &StoredResult,
    kind: Option<&CheckKind>,
    summary: Option<CheckKind>,
) -> Option<Flag> {
    let kind = *kind?;
    if r.error_kind.is_some() || kind == CheckKind::Http || summary == Some(kind) {
        return None;
    }
    Some(Flag {
        rule: Rule::MissingSummary,
        evidence: json!({"check_kind": kind.as_str(), "summary": summary.map(CheckKind::as_str)}),
    })
}

/// ttfb may be no shorter than this fraction of the calibrated RTT (jitter tolerance).
pub const RTT_FRACTION: f64 = 0.5;
/// The capacity assumed is this many times the calibrated downstream rate.
pub const LINE_HEADROOM: u64 = 4;
/// Bodies smaller than this are not judged by the line rate.
pub const MIN_TRANSFER_BYTES: i64 = 32 * 1024;
/// Bytes that may arrive with the first byte (an initial burst of segments).
pub const FIRST_BURST_BYTES: i64 = 16 * 1024;
/// |z| above which a result disagrees with its peers.
pub const PEER_Z_MAX: f64 = 6.0;
/// The log-scale spread never counts as smaller than this (peers that agree exactly).
pub const PEER_MIN_SCALE: f64 = 0.25;
/// A disagreement smaller than this (µs) is never flagged.
pub const PEER_MIN_DIFF_US: f64 = 10_000.0;
/// Peer results needed to judge, and distinct peer agents among them.
pub const MIN_PEER_RESULTS: usize = 8;
pub const MIN_PEER_AGENTS: usize = 3;
/// How far back and how many peer results are compared.
pub const PEER_WINDOW_US: Micros = 24 * 3_600_000_000;
pub const MAX_PEER_RESULTS: i64 = 200;
/// How far back a copy or replay is looked for: results are partitioned by day on
/// PostgreSQL, so an unbounded lookup would probe every day kept (90 by default) on
/// every request; copies are of recent results (a peer's current numbers), and an old
/// replay still has to pass the physics and peer rules.
pub const COPY_WINDOW_US: Micros = 7 * 24 * 3_600_000_000;
/// A run's results all arrive within its deadline; a day bounds a run's lookups by time.
const RUN_WINDOW_US: Micros = 24 * 3_600_000_000;
/// No response arrives sooner than this after its request, µs, on any line (loopback
/// included).
pub const MIN_TTFB_US: i64 = 20;
/// No access link carries more than this, bit/s.
pub const MAX_LINK_BPS: u128 = 400_000_000_000;
/// Bytes that may arrive with the first byte on any link (one loopback segment).
pub const ANY_LINK_BURST_BYTES: i64 = 64 * 1024;
/// Rounding each phase to whole microseconds can make their sum pass the total by this.
const PHASE_ROUNDING_US: i64 = 5;
/// The MAD of a normal distribution times this is its standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;

/// The shortest round trip the access link of a line of `class` can have, µs (see the
/// module's physics section). `rtt_us` tells geostationary from low-orbit satellites.
pub fn access_floor_us(class: ConnectionClass, rtt_us: i64) -> i64 {
    match class {
        ConnectionClass::Dialup => 100_000,
        ConnectionClass::Satellite if rtt_us >= 450_000 => 480_000,
        ConnectionClass::Satellite => 20_000,
        ConnectionClass::Mobile => 20_000,
        ConnectionClass::Dsl => 10_000,
        ConnectionClass::Cable => 5_000,
        ConnectionClass::Fibre => 0,
    }
}

/// The time a page's or a fetch's bytes had to arrive in: for a page load `bytes`
/// counts every resource while `transfer_us` is the HTML's alone; all of those bytes
/// arrived between the HTML's first byte and the end of the page, so that span is the
/// (generous) time the line had to carry them.
fn transfer_span_us(r: &StoredResult) -> i64 {
    if r.page.is_some() {
        (r.total_us - r.ttfb_us).max(r.transfer_us)
    } else {
        r.transfer_us
    }
}

/// The physics rules that hold for any line (see the module's "Physics for any line").
pub fn impossible(r: &StoredResult) -> Option<Flag> {
    let mut broken = Vec::new();
    let phases = r.dns_us + r.connect_us + r.tls_us + r.ttfb_us + r.transfer_us;
    if phases > r.total_us + PHASE_ROUNDING_US {
        broken.push("phases_exceed_total");
    }
    // A status means a response arrived, so its first byte took a real exchange.
    if r.status.is_some() && r.ttfb_us < MIN_TTFB_US {
        broken.push("ttfb_below_any_line");
    }
    let span_us = transfer_span_us(r);
    let bits = u128::from((r.bytes - ANY_LINK_BURST_BYTES).max(0).unsigned_abs()) * 8;
    let min_span_us = bits * 1_000_000 / MAX_LINK_BPS;
    if (span_us.max(0) as u128) < min_span_us {
        broken.push("faster_than_any_line");
    }
    if broken.is_empty() {
        return None;
    }
    Some(Flag {
        rule: Rule::ImpossibleTimings,
        evidence: json!({
            "broken": broken,
            "timings_us": {"dns": r.dns_us, "connect": r.connect_us, "tls": r.tls_us,
                           "ttfb": r.ttfb_us, "transfer": r.transfer_us, "total": r.total_us},
            "phases_sum_us": phases, "bytes": r.bytes, "transfer_span_us": span_us,
            "min_ttfb_us": MIN_TTFB_US, "max_line_bps": MAX_LINK_BPS as u64,
        }),
    })
}

/// The physics rules on a result of an agent with this calibration. No calibration, no
/// judgement.
pub fn physics(agent: &Agent, r: &StoredResult) -> Vec<Flag> {
    let mut flags = Vec::new();
    if r.error_kind.is_some() {
        return flags;
    }
    let (Some(class), Some(rtt_us), Some(down_bps)) = (
        agent
            .measured_class
            .as_deref()
            .and_then(|c| c.parse::<ConnectionClass>().ok()),
        agent.rtt_us,
        agent.down_bps,
    ) else {
        return flags;
    };
    let floor = ((rtt_us as f64 * RTT_FRACTION) as i64).min(access_floor_us(class, rtt_us));
    if floor > 0 && r.ttfb_us < floor {
        flags.push(Flag {
            rule: Rule::TtfbBelowRtt,
            evidence: json!({
                "ttfb_us": r.ttfb_us, "calibrated_rtt_us": rtt_us, "class": class,
                "floor_us": floor,
            }),
        });
    } else if floor > 0 {
        // A throughput load's latency probes are small requests timed to their
        // response's first byte: ttfbs of their own, under the same floor; so are a
        // udp stream's probes, echoed by the reflector.
        let probe = r
            .figures
            .as_deref()
            .map(figures::parse)
            .and_then(|figures| {
                figures.into_iter().find(|&(figure, value)| {
                    matches!(
                        figure,
                        Figure::IdleLatency | Figure::LoadedLatency | Figure::Rtt
                    ) && (value as i64) < floor
                })
            });
        if let Some((figure, value)) = probe {
            flags.push(Flag {
                rule: Rule::TtfbBelowRtt,
                evidence: json!({
                    "figure": figure, "value_us": value, "calibrated_rtt_us": rtt_us,
                    "class": class, "floor_us": floor,
                }),
            });
        }
    }
    let transfer_us = transfer_span_us(r);
    if r.bytes >= MIN_TRANSFER_BYTES && down_bps > 0 {
        let capacity = down_bps.unsigned_abs().saturating_mul(LINE_HEADROOM);
        let bits = (r.bytes - FIRST_BURST_BYTES).max(0).unsigned_abs() * 8;
        let min_transfer_us = (u128::from(bits) * 1_000_000 / u128::from(capacity)) as i64;
        if transfer_us < min_transfer_us {
            let implied_bps = if transfer_us > 0 {
                (u128::from(bits) * 1_000_000 / transfer_us as u128) as i64
            } else {
                i64::MAX
            };
            flags.push(Flag {
                rule: Rule::FasterThanLine,
                evidence: json!({
                    "bytes": r.bytes, "transfer_us": transfer_us,
                    "min_transfer_us": min_transfer_us, "implied_bps": implied_bps,
                    "calibrated_down_bps": down_bps, "headroom": LINE_HEADROOM,
                }),
            });
        }
    }
    flags
}

/// Where a value sits among its peers' values (robust z on logarithms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerScore {
    pub z: f64,
    /// The peers' median, µs.
    pub median_us: f64,
    /// 1.4826 × MAD of the peers' logarithms, floored at [`PEER_MIN_SCALE`].
    pub scale: f64,
}

/// The robust z-score of `value_us` among `peers_us` (see the module's peers section).
/// `None` without peers.
pub fn peer_score(value_us: i64, peers_us: &[i64]) -> Option<PeerScore> {
    let ln = |v: i64| (v.max(1) as f64).ln();
    let mut logs: Vec<f64> = peers_us.iter().map(|v| ln(*v)).collect();
    let median = median_of(&mut logs)?;
    let mut deviations: Vec<f64> = logs.iter().map(|l| (l - median).abs()).collect();
    let mad = median_of(&mut deviations)?;
    let scale = (MAD_TO_SIGMA * mad).max(PEER_MIN_SCALE);
    Some(PeerScore {
        z: (ln(value_us) - median) / scale,
        median_us: median.exp(),
        scale,
    })
}

fn median_of(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The peer rule on (ttfb, total) against peer results `(agent id, ttfb, total)`.
pub fn peer_disagreement(r: &StoredResult, peers: &[(String, i64, i64)]) -> Option<Flag> {
    let agents: HashSet<&str> = peers.iter().map(|p| p.0.as_str()).collect();
    if peers.len() < MIN_PEER_RESULTS || agents.len() < MIN_PEER_AGENTS {
        return None;
    }
    let mut outliers = serde_json::Map::new();
    for (phase, value, pick) in [
        (
            "ttfb",
            r.ttfb_us,
            (|p: &(String, i64, i64)| p.1) as fn(&_) -> i64,
        ),
        ("total", r.total_us, |p: &(String, i64, i64)| p.2),
    ] {
        let values: Vec<i64> = peers.iter().map(pick).collect();
        let Some(score) = peer_score(value, &values) else {
            continue;
        };
        if score.z.abs() > PEER_Z_MAX && (value as f64 - score.median_us).abs() >= PEER_MIN_DIFF_US
        {
            outliers.insert(
                phase.to_owned(),
                json!({
                    "value_us": value, "peer_median_us": score.median_us.round() as i64,
                    "z": (score.z * 100.0).round() / 100.0, "scale": (score.scale * 1000.0).round() / 1000.0,
                }),
            );
        }
    }
    if outliers.is_empty() {
        return None;
    }
    outliers.insert("peer_results".into(), json!(peers.len()));
    outliers.insert("peer_agents".into(), json!(agents.len()));
    outliers.insert("asn".into(), json!(r.asn));
    outliers.insert("class".into(), json!(r.connection_class));
    Some(Flag {
        rule: Rule::PeerOutlier,
        evidence: serde_json::Value::Object(outliers),
    })
}

/// What identifies a measurement's numbers: its phases and byte count. Two results with
/// the same fingerprint are one measurement reported twice.
type Fingerprint = [i64; 7];

fn fingerprint(r: &StoredResult) -> Fingerprint {
    let [dns, connect, tls, ttfb, transfer, total] = r.phases_us();
    [dns, connect, tls, ttfb, transfer, total, r.bytes]
}

/// Results without a response (ttfb or total 0) carry too few digits to be unique and
/// are not compared.
fn comparable(r: &StoredResult) -> bool {
    r.ttfb_us > 0 && r.total_us > 0
}

/// A stored result's assignment, agent and numbers.
#[derive(QueryableByName)]
struct StoredPrint {
    #[diesel(sql_type = diesel::sql_types::Text)]
    assignment_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    agent_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    dns_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    connect_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    tls_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ttfb_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    transfer_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total_us: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes: i64,
}

/// Stored results received between `since` and `until` whose (total, ttfb) pair is one of the
/// candidates', oldest first; the other numbers are compared by the caller. Each pair
/// is one probe of the `(total_us, ttfb_us)` index per partition. On PostgreSQL the
/// pairs are two array constants zipped by `unnest`: as a `VALUES` list of up to 500
/// rows, planning the statement cost 1.4 ms against 0.2 ms (70 day partitions, 500
/// pairs); in `bench ingest --in-process` the statement went from 4.1 to 3.2 µs a
/// result. (`total_us = ANY(..) AND ttfb_us = ANY(..)` probed every total
/// with every ttfb: 2,500 probes a partition for a batch of 50, the one statement that
/// grew with stored history.) The numbers are inlined (integers). A request's own
/// results are left out by the caller, not in SQL: `assignment_id NOT IN (50 ids)`
/// made PostgreSQL estimate each id against each partition's statistics, 7.4 ms of
/// planning a request with 60 days stored (0.4 ms without it) and 28 ms under load, the
/// one thing accepting a result paid for history.
fn stored_prints(
    conn: &mut DbConn,
    candidates: &[&StoredResult],
    (since, until): (Micros, Micros),
) -> Result<Vec<StoredPrint>> {
    let pairs: std::collections::BTreeSet<(i64, i64)> =
        candidates.iter().map(|r| (r.total_us, r.ttfb_us)).collect();
    let columns = "assignment_id, agent_id, dns_us, connect_us, tls_us, ttfb_us, transfer_us, \
                   total_us, bytes, received_at";
    let query = match conn {
        // Each pair is looked up by itself (a lateral subquery that `OFFSET 0` keeps
        // from being merged into a join): one index probe a pair and partition,
        // whatever the planner believes of a partition's size. Joined, a day's partition
        // not yet analyzed (estimated small) was read whole and hashed, every batch.
        DbConn::Pg(_) => {
            let listed = |of: fn(&(i64, i64)) -> i64| -> String {
                pairs
                    .iter()
                    .map(|p| of(p).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let (totals, ttfbs) = (listed(|p| p.0), listed(|p| p.1));
            format!(
                "SELECT r.* FROM unnest('{{{totals}}}'::bigint[], '{{{ttfbs}}}'::bigint[]) \
                     AS w (total_us, ttfb_us) \
                 CROSS JOIN LATERAL ( \
                     SELECT {columns} FROM results \
                     WHERE total_us = w.total_us AND ttfb_us = w.ttfb_us \
                       AND received_at >= {since} AND received_at <= {until} \
                     OFFSET 0) r \
                 ORDER BY r.received_at"
            )
        }
        // SQLite has no lateral join; its planner probes the index by each pair.
        DbConn::Sqlite(_) => {
            let values: Vec<String> = pairs.iter().map(|(t, f)| format!("({t}, {f})")).collect();
            let values = values.join(", ");
            format!(
                "SELECT {columns} FROM results r \
                 JOIN (VALUES {values}) AS w ON r.total_us = w.column1 AND r.ttfb_us = w.column2 \
                 WHERE r.received_at >= {since} AND r.received_at <= {until} \
                 ORDER BY r.received_at"
            )
        }
    };
    Ok(diesel::sql_query(query).load(conn)?)
}

/// Peers' recent results in one (check, ASN, class) cell: (agent, ttfb, total).
type Peers = Vec<(String, i64, i64)>;

/// A cell's latest counted successes, newest first: (agent, volunteer, ttfb, total). A
/// deque: each clean result of a batch joins at the front (at the front of a `Vec`,
/// it moved the cell's 200 results, 13 KB, a result).
type CellResults = std::collections::VecDeque<(String, String, i64, i64)>;

/// A result's peer cell as `results_peers` keys it on PostgreSQL (migration 000044),
/// compared with a bound `check|asn|class`.
const PG_PEER_CELL: &str = "(\"results\".\"check_id\" || '|' || \"results\".\"asn\"::text || '|' \
     || \"results\".\"connection_class\") = ";

/// The (check, ASN, class) cell whose peers judge `r`.
type CellKey = (String, i64, String);

fn cell_of(r: &StoredResult) -> CellKey {
    (r.check_id.clone(), r.asn, r.connection_class.clone())
}

/// The latest counted successes of the (check, ASN, class) cells a batch of requests
/// has judged results in ([`MAX_PEER_RESULTS`] a cell), read once per cell and batch
/// and kept up to date as the batch stores results: a later request of the batch sees
/// its cells as a fresh read would (the earlier requests' counted results first), without
/// the read.
#[derive(Debug, Default)]
pub struct PeerCells {
    cells: HashMap<CellKey, CellResults>,
    /// The volunteer of each agent met in the cells read.
    volunteers: HashMap<String, String>,
}

impl PeerCells {
    /// `r`, just stored by `agent` and judged clean, joins its cell if the cell was read.
    pub fn stored(&mut self, agent: &Agent, r: &StoredResult) {
        if r.late || r.error_kind.is_some() {
            return;
        }
        if let Some(latest) = self.cells.get_mut(&cell_of(r)) {
            latest.push_front((
                agent.id.clone(),
                agent.volunteer_id.clone(),
                r.ttfb_us,
                r.total_us,
            ));
            latest.truncate(MAX_PEER_RESULTS as usize);
        }
    }
}

/// What verification reads once for a whole batch of requests (the controller's group
/// commit), kept up to date as the batch's requests are judged and their results
/// stored, so that each request is judged as if the earlier ones had committed:
///
/// - the results stored before the batch whose numbers match any of the batch's (one
///   statement for the batch, not one a request), and the fingerprints of the results
///   the batch stored since;
/// - which of the batch's agents share their address with another agent of their
///   volunteer (one statement);
/// - the peers' latest results of each cell judged ([`PeerCells`], one read a cell).
#[derive(Debug, Default)]
pub struct Batch {
    /// Stored before the batch, per fingerprint: (assignment, agent), oldest first.
    stored: HashMap<Fingerprint, Vec<(String, String)>>,
    /// Stored by the batch so far, per fingerprint: the first (assignment, agent).
    batch: HashMap<Fingerprint, (String, String)>,
    /// Agents of the batch that share their address with another of their volunteer's.
    with_siblings: HashSet<String>,
    cells: PeerCells,
    /// The kind of task each run of the batch's results measures (its frozen task's:
    /// a check edited while its run is open changes only later runs).
    kinds: HashMap<String, CheckKind>,
}

impl Batch {
    /// Reads what the batch's `agents` and the new `results` they send (all of them,
    /// judged or not) will be judged against.
    pub fn read(conn: &mut DbConn, agents: &[&Agent], results: &[&StoredResult]) -> Result<Self> {
        let mut batch = Batch::default();
        let candidates: Vec<&StoredResult> =
            results.iter().copied().filter(|r| comparable(r)).collect();
        let received = candidates.iter().map(|r| r.received_at);
        if let Some((first, last)) = received.clone().min().zip(received.max()) {
            let wanted: HashSet<Fingerprint> = candidates.iter().map(|r| fingerprint(r)).collect();
            // Up to a day past the batch: another replica's clock may run ahead of this
            // one's; bounded, PostgreSQL leaves out the days' partitions created ahead
            // and the default one.
            let window = (first - COPY_WINDOW_US, last + RUN_WINDOW_US);
            for row in stored_prints(conn, &candidates, window)? {
                let print = [
                    row.dns_us,
                    row.connect_us,
                    row.tls_us,
                    row.ttfb_us,
                    row.transfer_us,
                    row.total_us,
                    row.bytes,
                ];
                if wanted.contains(&print) {
                    batch
                        .stored
                        .entry(print)
                        .or_default()
                        .push((row.assignment_id, row.agent_id));
                }
            }
        }
        batch.with_siblings = with_siblings(conn, agents)?;
        // The batch's runs' kinds, from this process's memory once it has seen them.
        let mut run_ids: Vec<&str> = results.iter().map(|r| r.run_id.as_str()).collect();
        run_ids.sort_unstable();
        run_ids.dedup();
        batch.kinds = crate::check_terms::run_kinds(conn, &run_ids)?;
        Ok(batch)
    }

    /// Whether `agent` shares its address with another agent of its volunteer.
    pub fn has_siblings(&self, agent: &Agent) -> bool {
        self.with_siblings.contains(&agent.id)
    }

    /// `r`, just stored by `agent` (judged `clean` or not, or late and unjudged): a
    /// later request of the batch with its numbers copies or replays it, and a clean one
    /// is a peer of the later requests' results in its cell.
    pub fn stored(&mut self, agent: &Agent, r: &StoredResult, clean: bool) {
        if comparable(r) {
            self.batch
                .entry(fingerprint(r))
                .or_insert_with(|| (r.assignment_id.clone(), agent.id.clone()));
        }
        if clean {
            self.cells.stored(agent, r);
        }
    }
}

/// Which of `agents` share their address with another agent of their volunteer: one
/// count per (volunteer, address) of the batch, by the `(volunteer_id, ip)` index.
/// The lowest id tells whether a lone agent at the address is this one (its address
/// may have changed since the batch read it).
fn with_siblings(conn: &mut DbConn, agents: &[&Agent]) -> Result<HashSet<String>> {
    if agents.is_empty() {
        return Ok(HashSet::new());
    }
    let volunteers: HashSet<&str> = agents.iter().map(|a| a.volunteer_id.as_str()).collect();
    let ips: HashSet<&str> = agents.iter().map(|a| a.ip.as_str()).collect();
    type Group = (String, String, i64, Option<String>);
    let groups: HashMap<(String, String), (i64, Option<String>)> = agents::table
        .filter(agents::volunteer_id.eq_any(volunteers))
        .filter(agents::ip.eq_any(ips))
        .group_by((agents::volunteer_id, agents::ip))
        .select((
            agents::volunteer_id,
            agents::ip,
            diesel::dsl::count_star(),
            diesel::dsl::min(agents::id),
        ))
        .load::<Group>(conn)?
        .into_iter()
        .map(|(volunteer, ip, n, lowest)| ((volunteer, ip), (n, lowest)))
        .collect();
    Ok(agents
        .iter()
        .filter(
            |a| match groups.get(&(a.volunteer_id.clone(), a.ip.clone())) {
                None => false,
                Some((n, lowest)) => *n > 1 || lowest.as_deref() != Some(a.id.as_str()),
            },
        )
        .map(|a| a.id.clone())
        .collect())
}

/// Judges the results one agent sends in one request, each before it is stored,
/// against what the batch read ([`Batch`]). The request's results are compared with
/// each other as with stored ones (the first is the original, a later one with the
/// same numbers a replay), so a request of many results is judged as the same results
/// sent one by one would be.
pub struct Verifier<'a> {
    agent: &'a Agent,
    /// The request's own assignments: a stored result of one of them is this result
    /// submitted again, not a copy.
    own: HashSet<&'a str>,
    /// Results of this request judged (or stored unjudged, late) so far.
    earlier: HashMap<Fingerprint, String>,
    batch: &'a mut Batch,
    /// This agent's peers in the batch's cells (the cells do not change while one
    /// request is judged: its results join them once stored).
    peers: HashMap<CellKey, Peers>,
}

impl<'a> Verifier<'a> {
    /// A verifier for `agent`'s request carrying `results` (all of them, judged or not).
    pub fn new(agent: &'a Agent, results: &'a [StoredResult], batch: &'a mut Batch) -> Self {
        Verifier {
            agent,
            own: results.iter().map(|r| r.assignment_id.as_str()).collect(),
            earlier: HashMap::new(),
            batch,
            peers: HashMap::new(),
        }
    }

    /// Remembers a result stored without judging (a late one): a later result of the
    /// request with the same numbers replays it.
    pub fn remember(&mut self, r: &StoredResult) {
        if comparable(r) {
            self.earlier
                .entry(fingerprint(r))
                .or_insert_with(|| r.assignment_id.clone());
        }
    }

    /// The earliest result with these numbers other than one of this request's own
    /// assignments: stored before the batch, by an earlier request of the batch, or
    /// earlier in this request. (assignment, agent).
    fn original(&self, print: &Fingerprint) -> Option<(String, String)> {
        let before = self.batch.stored.get(print).and_then(|stored| {
            stored
                .iter()
                .find(|(assignment, _)| !self.own.contains(assignment.as_str()))
        });
        before
            .or_else(|| self.batch.batch.get(print))
            .cloned()
            .or_else(|| {
                self.earlier
                    .get(print)
                    .map(|a| (a.clone(), self.agent.id.clone()))
            })
    }

    /// Judges a result about to be stored, whose measurement carried a `summary` of
    /// that kind (a page load, a throughput load, a video session, a udp stream; none
    /// for a fetch). Empty when it breaks no rule. The same-address rule reads the
    /// run's stored results: the caller has stored the batch's earlier results first
    /// when the agent has siblings ([`Batch::has_siblings`]).
    pub fn verify(
        &mut self,
        conn: &mut DbConn,
        r: &StoredResult,
        summary: Option<CheckKind>,
    ) -> Result<Vec<Flag>> {
        let agent = self.agent;
        let mut flags: Vec<Flag> = impossible(r).into_iter().collect();
        if let Some(flag) = missing_summary(r, self.batch.kinds.get(&r.run_id), summary) {
            flags.push(flag);
        }
        if agent.calibrated_at.is_none() {
            flags.push(Flag {
                rule: Rule::UncalibratedAgent,
                evidence: json!({"agent": agent.id}),
            });
        }
        flags.extend(physics(agent, r));

        if r.error_kind.is_none() && r.asn != 0 {
            let peers = self.peers_of(conn, r)?;
            flags.extend(peer_disagreement(r, peers));
        }

        if comparable(r) {
            if let Some((original, original_agent)) = self.original(&fingerprint(r)) {
                let rule = if original_agent == agent.id {
                    Rule::ReplayedResult
                } else {
                    Rule::CopiedResult
                };
                flags.push(Flag {
                    rule,
                    evidence: json!({
                        "original_assignment_id": original, "original_agent_id": original_agent,
                        "timings_us": [r.dns_us, r.connect_us, r.tls_us, r.ttfb_us, r.transfer_us, r.total_us],
                        "bytes": r.bytes,
                    }),
                });
            }
        }
        self.remember(r);

        if self.batch.has_siblings(agent) {
            lock_farm(conn, &r.run_id, agent)?;
            if let Some((counted, counted_agent)) = counted_sibling(conn, agent, r)? {
                flags.push(Flag {
                    rule: Rule::SameAddressFarm,
                    evidence: json!({
                        "address": agent.ip, "volunteer_id": agent.volunteer_id,
                        "counted_assignment_id": counted, "counted_agent_id": counted_agent,
                    }),
                });
            }
        }
        Ok(flags)
    }

    /// Other volunteers' recent counted successes in `r`'s (check, ASN, class) cell: one
    /// volunteer's agents cannot vouch for each other. Read once per cell and batch
    /// ([`PeerCells`]), from the cell's latest [`MAX_PEER_RESULTS`] results (whoever
    /// measured them), so the cost is bounded however many results the cell holds.
    fn peers_of(&mut self, conn: &mut DbConn, r: &StoredResult) -> Result<&Peers> {
        let key = cell_of(r);
        if self.peers.contains_key(&key) {
            return Ok(&self.peers[&key]);
        }
        if !self.batch.cells.cells.contains_key(&key) {
            let since = r.received_at - PEER_WINDOW_US;
            // Bounded after as well as before (by a day: another replica's clock may run
            // ahead), so that PostgreSQL leaves out the partitions created ahead.
            let until = r.received_at + RUN_WINDOW_US;
            let counted = results::table
                .filter(results::received_at.ge(since))
                .filter(results::received_at.le(until))
                // Literals, not bound parameters: `results_peers` holds exactly these
                // rows, and a prepared statement's generic plan can use a partial index
                // only if the statement says so in its text.
                .filter(diesel::dsl::not(results::flagged))
                .filter(diesel::dsl::not(results::late))
                .filter(results::error_kind.is_null())
                .order(results::received_at.desc())
                .limit(MAX_PEER_RESULTS)
                .select((results::agent_id, results::ttfb_us, results::total_us))
                .into_boxed();
            let in_cell = match conn {
                // By the index's expression, which no other index has: see migration
                // 000044 (PostgreSQL read a new day's partition by the check alone).
                DbConn::Pg(_) => counted.filter(
                    diesel::dsl::sql::<diesel::sql_types::Bool>(PG_PEER_CELL)
                        .bind::<diesel::sql_types::Text, _>(format!(
                        "{}|{}|{}",
                        r.check_id, r.asn, r.connection_class
                    )),
                ),
                DbConn::Sqlite(_) => counted
                    .filter(results::check_id.eq(&r.check_id))
                    .filter(results::asn.eq(r.asn))
                    .filter(results::connection_class.eq(&r.connection_class)),
            };
            // Its text is the same every call (the cell is a parameter): kept prepared.
            let latest: Vec<(String, i64, i64)> = Prepared(in_cell).load(conn)?;
            // Their volunteers by key, not joined: on a day's partition without
            // statistics yet PostgreSQL expected one peer and joined each of the 200 to
            // every agent (a millisecond a cell with 150 agents, a scan of all of them
            // with 100k).
            let volunteers = &mut self.batch.cells.volunteers;
            let mut unknown: Vec<&str> = latest
                .iter()
                .map(|(agent, _, _)| agent.as_str())
                .filter(|agent| !volunteers.contains_key(*agent))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            for chunk in unknown.chunks(lastmile_storage::agents::KEYS_PER_LOOKUP) {
                let found: Vec<(String, String)> = agents::table
                    .filter(agents::id.eq_any(chunk))
                    .select((agents::id, agents::volunteer_id))
                    .load(conn)?;
                volunteers.extend(found);
            }
            let latest: CellResults = latest
                .into_iter()
                .filter_map(|(agent, ttfb, total)| {
                    let volunteer = volunteers.get(&agent)?.clone();
                    Some((agent, volunteer, ttfb, total))
                })
                .collect();
            self.batch.cells.cells.insert(key.clone(), latest);
        }
        let peers = self.batch.cells.cells[&key]
            .iter()
            .filter(|(_, volunteer, _, _)| *volunteer != self.agent.volunteer_id)
            .map(|(agent, _, ttfb, total)| (agent.clone(), *ttfb, *total))
            .collect();
        Ok(self.peers.entry(key).or_insert(peers))
    }
}

/// Serializes the same-address decision per (run, volunteer, address) on PostgreSQL,
/// with a transaction-scoped advisory lock: only results that compete for being first
/// wait for each other (the run row, locked before, made every farm's results of a
/// run, and anything else locking the run, queue behind one another).
fn lock_farm(conn: &mut DbConn, run_id: &str, agent: &Agent) -> Result<()> {
    if let DbConn::Pg(c) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<diesel::sql_types::Text, _>(format!(
                "same_address_farm {run_id} {} {}",
                agent.volunteer_id, agent.ip
            ))
            .execute(c)?;
    }
    Ok(())
}

/// A counted result of `r`'s run from another agent of the same volunteer behind the
/// same address, if there is one: its assignment and agent. The run's other counted
/// results are read first (by `results_run`: at most the run's size), then which of
/// their agents are siblings; joined in one statement, PostgreSQL could start from the
/// volunteer's agents at that address instead, all of a farm's (62 ms a result with
/// 10k of them, measured by `bench agents --work-every-s`).
fn counted_sibling(
    conn: &mut DbConn,
    agent: &Agent,
    r: &StoredResult,
) -> Result<Option<(String, String)>> {
    let others: Vec<(String, String)> = results::table
        .filter(results::run_id.eq(&r.run_id))
        .filter(results::received_at.ge(r.received_at - RUN_WINDOW_US))
        .filter(results::agent_id.ne(&agent.id))
        .filter(results::flagged.eq(false))
        .filter(results::late.eq(false))
        .select((results::assignment_id, results::agent_id))
        .load(conn)?;
    let mut candidates: Vec<&str> = others.iter().map(|(_, a)| a.as_str()).collect();
    candidates.sort_unstable();
    candidates.dedup();
    for chunk in candidates.chunks(lastmile_storage::agents::BATCH_ROWS) {
        let sibling: Option<String> = agents::table
            .filter(agents::id.eq_any(chunk))
            .filter(agents::volunteer_id.eq(&agent.volunteer_id))
            .filter(agents::ip.eq(&agent.ip))
            .select(agents::id)
            .first(conn)
            .optional()?;
        if let Some(sibling) = sibling {
            return Ok(others.into_iter().find(|(_, a)| *a == sibling));
        }
    }
    Ok(None)
}

/// Stores the flags of a result that was just inserted and marks it flagged.
pub fn record(conn: &mut DbConn, agent: &Agent, r: &StoredResult, flags: &[Flag]) -> Result<()> {
    for f in flags {
        diesel::insert_into(result_flags::table)
            .values((
                result_flags::assignment_id.eq(&r.assignment_id),
                result_flags::rule.eq(f.rule.as_str()),
                result_flags::agent_id.eq(&agent.id),
                result_flags::volunteer_id.eq(&agent.volunteer_id),
                result_flags::check_id.eq(&r.check_id),
                result_flags::run_id.eq(&r.run_id),
                result_flags::evidence.eq(f.evidence.to_string()),
                result_flags::created_at.eq(r.received_at),
            ))
            .execute(conn)?;
    }
    diesel::update(
        results::table
            .filter(results::assignment_id.eq(&r.assignment_id))
            .filter(results::received_at.eq(r.received_at)),
    )
    .set(results::flagged.eq(true))
    .execute(conn)?;
    tracing::warn!(
        assignment = %r.assignment_id, agent = %agent.id,
        rules = ?flags.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
        "result flagged: kept, not counted, not paid"
    );
    Ok(())
}

/// How many of a check's results still kept were flagged: counted from their flags
/// (which age out with them), by check. Counted from the results, it read every result
/// of the check still kept: ~260k rows for a check measured by ten agents every five
/// minutes over 90 days.
pub fn flagged_count(conn: &mut DbConn, check_id: &str) -> Result<i64> {
    Ok(result_flags::table
        .filter(result_flags::check_id.eq(check_id))
        .select(diesel::dsl::count(result_flags::assignment_id).aggregate_distinct())
        .first(conn)?)
}

/// How many of a run's results were flagged: those with a flag ([`record`] marks a
/// result flagged with its flags, in one transaction). Read from the flags by run
/// rather than from the results, whose index by run is one per day's partition.
pub fn flagged_in_run(conn: &mut DbConn, run_id: &str) -> Result<i64> {
    Ok(result_flags::table
        .filter(result_flags::run_id.eq(run_id))
        .select(diesel::dsl::count(result_flags::assignment_id).aggregate_distinct())
        .first(conn)?)
}

/// One flagged result as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlaggedResult {
    pub assignment_id: String,
    pub run_id: String,
    pub check_id: String,
    pub check_name: String,
    pub agent_id: String,
    pub agent_name: String,
    /// The address the controller sees the agent at.
    pub agent_address: String,
    pub volunteer_id: String,
    pub volunteer_name: String,
    pub received_at: DateTime<Utc>,
    pub ttfb_us: i64,
    pub transfer_us: i64,
    pub total_us: i64,
    pub bytes: i64,
    /// Every rule it broke, with the numbers.
    pub reasons: Vec<Flag>,
}

/// Flagged results per agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentFlags {
    pub agent_id: String,
    pub agent_name: String,
    pub volunteer_id: String,
    pub flagged_results: i64,
}

/// What `GET /api/v1/ops/flags` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FlagList {
    /// Newest first.
    pub flags: Vec<FlaggedResult>,
    /// Every agent with flagged results, most first.
    pub per_agent: Vec<AgentFlags>,
}

/// Most flagged results one listing returns.
pub const MAX_LIST: i64 = 1000;

/// The newest `limit` flagged results (of one agent, if given) and the per-agent counts.
pub fn list(conn: &mut DbConn, agent_id: Option<&str>, limit: i64) -> Result<FlagList> {
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(Error::invalid(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIST}"),
        ));
    }
    let mut q = results::table
        .inner_join(agents::table.on(agents::id.eq(results::agent_id)))
        .inner_join(volunteers::table.on(volunteers::id.eq(agents::volunteer_id)))
        .inner_join(checks::table.on(checks::id.eq(results::check_id)))
        .filter(results::flagged.eq(true))
        .into_boxed();
    if let Some(a) = agent_id {
        q = q.filter(results::agent_id.eq(a.to_owned()));
    }
    type Row = (
        (String, String, String, String, i64, i64, i64, i64, i64),
        (String, String),
        (String, String),
        String,
    );
    let rows: Vec<Row> = q
        .order((results::received_at.desc(), results::assignment_id.asc()))
        .limit(limit)
        .select((
            (
                results::assignment_id,
                results::run_id,
                results::check_id,
                results::agent_id,
                results::received_at,
                results::ttfb_us,
                results::transfer_us,
                results::total_us,
                results::bytes,
            ),
            (agents::name, agents::ip),
            (volunteers::id, volunteers::name),
            checks::name,
        ))
        .load(conn)?;
    let ids: Vec<&str> = rows.iter().map(|r| r.0 .0.as_str()).collect();
    let mut reasons: HashMap<String, Vec<Flag>> = HashMap::new();
    for (assignment, rule, evidence) in result_flags::table
        .filter(result_flags::assignment_id.eq_any(&ids))
        .order((result_flags::assignment_id, result_flags::rule))
        .select((
            result_flags::assignment_id,
            result_flags::rule,
            result_flags::evidence,
        ))
        .load::<(String, String, String)>(conn)?
    {
        reasons.entry(assignment).or_default().push(Flag {
            rule: rule.parse()?,
            evidence: serde_json::from_str(&evidence)
                .map_err(|e| Error::Internal(format!("stored flag evidence: {e}")))?,
        });
    }
    let flags = rows
        .into_iter()
        .map(
            |(
                (id, run, check, agent, at, ttfb, transfer, total, bytes),
                (name, ip),
                (vid, vname),
                cname,
            )| {
                FlaggedResult {
                    reasons: reasons.remove(&id).unwrap_or_default(),
                    assignment_id: id,
                    run_id: run,
                    check_id: check,
                    check_name: cname,
                    agent_id: agent,
                    agent_name: name,
                    agent_address: ip,
                    volunteer_id: vid,
                    volunteer_name: vname,
                    received_at: to_datetime(at),
                    ttfb_us: ttfb,
                    transfer_us: transfer,
                    total_us: total,
                    bytes,
                }
            },
        )
        .collect();

    let counts: Vec<(String, i64)> = results::table
        .filter(results::flagged.eq(true))
        .group_by(results::agent_id)
        .select((results::agent_id, diesel::dsl::count_star()))
        .load(conn)?;
    let counts: Vec<(String, i64)> = counts
        .into_iter()
        .filter(|(a, _)| agent_id.is_none_or(|only| only == a))
        .collect();
    let ids: Vec<&str> = counts.iter().map(|(a, _)| a.as_str()).collect();
    let names: HashMap<String, (String, String)> = agents::table
        .filter(agents::id.eq_any(&ids))
        .select((agents::id, agents::name, agents::volunteer_id))
        .load::<(String, String, String)>(conn)?
        .into_iter()
        .map(|(id, name, volunteer)| (id, (name, volunteer)))
        .collect();
    let mut per_agent: Vec<AgentFlags> = counts
        .into_iter()
        .map(|(agent_id, n)| {
            let (agent_name, volunteer_id) = names.get(&agent_id).cloned().unwrap_or_default();
            AgentFlags {
                agent_id,
                agent_name,
                volunteer_id,
                flagged_results: n,
            }
        })
        .collect();
    per_agent.sort_by(|a, b| {
        b.flagged_results
            .cmp(&a.flagged_results)
            .then_with(|| a.agent_id.cmp(&b.agent_id))
    });
    Ok(FlagList { flags, per_agent })
}

/// Flagged results in total (for the demo's summary and the metrics).
pub fn total_flagged(conn: &mut DbConn) -> Result<i64> {
    Ok(results::table
        .filter(results::flagged.eq(true))
        .count()
        .get_result(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ttfb_us: i64, transfer_us: i64, total_us: i64, bytes: i64) -> StoredResult {
        StoredResult {
            assignment_id: "a".into(),
            run_id: "r".into(),
            check_id: "c".into(),
            agent_id: "x".into(),
            received_at: 0,
            started_at: 0,
            late: false,
            status: Some(200),
            bytes,
            error_kind: None,
            error_message: None,
            dns_us: 100,
            connect_us: 1000,
            tls_us: 0,
            ttfb_us,
            transfer_us,
            total_us,
            country: "DE".into(),
            region: "BE".into(),
            asn: 64_501,
            connection_class: "dsl".into(),
            remote_addr: None,
            ip_version: None,
            http_version: None,
            bytes_decoded: bytes,
            redirects: 0,
            redirect_us: 0,
            page: None,
            redirect_hops: None,
            figures: None,
        }
    }

    fn agent(class: Option<&str>, rtt_ms: i64, down_bps: i64) -> Agent {
        Agent {
            id: "x".into(),
            volunteer_id: "v".into(),
            name: "n".into(),
            token_hash: String::new(),
            declared_class: "dsl".into(),
            version: "t".into(),
            max_concurrent: 1,
            ip: "127.0.0.2".into(),
            country: None,
            region: None,
            city: None,
            asn: None,
            as_org: None,
            enrolled_at: 0,
            last_heartbeat_at: None,
            measured_class: class.map(str::to_owned),
            calibrated_at: class.map(|_| 0),
            rtt_us: class.map(|_| rtt_ms * 1000),
            down_bps: class.map(|_| down_bps),
            up_bps: class.map(|_| down_bps / 10),
            class_mismatch: false,
            calibration_day: 0,
            calibration_bytes: 0,
            paused_reason: None,
            check_kinds: "http,page".into(),
            path_trace: false,
            changed_at: 0,
            revoked_at: None,
        }
    }

    fn rules(flags: &[Flag]) -> Vec<Rule> {
        flags.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn a_ttfb_shorter_than_the_access_link_allows_is_flagged() {
        // Dial-up, 150 ms RTT: the floor is min(75 ms, 100 ms) = 75 ms.
        let modem = agent(Some("dialup"), 150, 56_000);
        assert_eq!(
            rules(&physics(&modem, &result(3_000, 0, 5_000, 8_192))),
            [Rule::TtfbBelowRtt]
        );
        assert!(physics(&modem, &result(160_000, 1_200_000, 1_400_000, 8_192)).is_empty());
        // DSL with a distant controller (RTT 120 ms): a nearby site answering in 15 ms
        // is honest; the access floor is 10 ms.
        let dsl = agent(Some("dsl"), 120, 16_000_000);
        assert!(physics(&dsl, &result(15_000, 5_000, 25_000, 8_192)).is_empty());
        assert_eq!(
            rules(&physics(&dsl, &result(2_000, 500, 3_000, 8_192))),
            [Rule::TtfbBelowRtt]
        );
        // Fibre: nothing to judge on ttfb.
        let fibre = agent(Some("fibre"), 4, 1_000_000_000);
        assert!(physics(&fibre, &result(100, 10, 200, 8_192)).is_empty());
    }

    #[test]
    fn a_throughput_loads_latency_probes_are_held_to_the_same_floor() {
        // DSL, 40 ms calibrated: the floor is min(20 ms, 10 ms) = 10 ms.
        let dsl = agent(Some("dsl"), 40, 16_000_000);
        let load = |idle_us: u64, loaded_us: u64| StoredResult {
            figures: Some(format!(
                r#"{{"goodput": 16000, "idle_latency": {idle_us}, "loaded_latency": {loaded_us}}}"#
            )),
            ..result(45_000, 2_000_000, 2_100_000, 4_000_000)
        };
        assert!(physics(&dsl, &load(41_000, 290_000)).is_empty());
        let flags = physics(&dsl, &load(3_000, 290_000));
        assert_eq!(rules(&flags), [Rule::TtfbBelowRtt]);
        assert_eq!(
            flags[0].evidence["figure"], "idle_latency",
            "{:?}",
            flags[0]
        );
        assert_eq!(
            rules(&physics(&dsl, &load(41_000, 2_000))),
            [Rule::TtfbBelowRtt]
        );
    }

    #[test]
    fn a_udp_streams_round_trip_is_held_to_the_same_floor() {
        let dsl = agent(Some("dsl"), 40, 16_000_000);
        let stream = |rtt_us: u64| StoredResult {
            figures: Some(format!(
                r#"{{"loss": 2000, "rtt": {rtt_us}, "jitter": 1500}}"#
            )),
            // The hello's round trip is the stream's ttfb.
            ..result(42_000, 10_000_000, 10_050_000, 86_000)
        };
        assert!(physics(&dsl, &stream(41_000)).is_empty());
        let flags = physics(&dsl, &stream(900));
        assert_eq!(rules(&flags), [Rule::TtfbBelowRtt]);
        assert_eq!(flags[0].evidence["figure"], "rtt", "{:?}", flags[0]);
    }

    #[test]
    fn a_body_faster_than_the_line_is_flagged_with_headroom() {
        let dsl = agent(Some("dsl"), 40, 16_000_000);
        // 512 KiB at 16 Mbit/s takes ~254 ms after the first burst; 4x headroom: 64 ms.
        let bytes = 512 * 1024;
        assert!(physics(&dsl, &result(45_000, 254_000, 300_000, bytes)).is_empty());
        // Twice the calibrated rate (a lower bound) is still plausible.
        assert!(physics(&dsl, &result(45_000, 127_000, 180_000, bytes)).is_empty());
        let flags = physics(&dsl, &result(45_000, 20_000, 70_000, bytes));
        assert_eq!(rules(&flags), [Rule::FasterThanLine]);
        assert_eq!(flags[0].evidence["calibrated_down_bps"], 16_000_000);
        // Small bodies are not judged.
        assert!(physics(&dsl, &result(45_000, 0, 50_000, 20_000)).is_empty());
    }

    #[test]
    fn a_page_is_judged_on_all_its_bytes_over_the_time_after_the_first_byte() {
        let dsl = agent(Some("dsl"), 40, 16_000_000);
        // A 2 MiB page whose HTML body took 5 ms, its resources the next 1.2 s: honest.
        let mut page = result(45_000, 5_000, 1_250_000, 2 * 1024 * 1024);
        page.page = Some("{}".into());
        assert!(
            physics(&dsl, &page).is_empty(),
            "{:?}",
            physics(&dsl, &page)
        );
        // The same bytes over 100 ms is 40x the line.
        let mut fast = result(45_000, 5_000, 145_000, 2 * 1024 * 1024);
        fast.page = Some("{}".into());
        assert_eq!(rules(&physics(&dsl, &fast)), [Rule::FasterThanLine]);
    }

    #[test]
    fn an_uncalibrated_agent_or_a_failure_is_not_judged_by_physics() {
        let unknown = agent(None, 0, 0);
        assert!(physics(&unknown, &result(1, 1, 2, 1_000_000)).is_empty());
        let modem = agent(Some("dialup"), 150, 56_000);
        let mut failed = result(0, 0, 3_000, 0);
        failed.error_kind = Some("connect_refused".into());
        assert!(physics(&modem, &failed).is_empty());
    }

    fn peers(values: &[(i64, i64)]) -> Vec<(String, i64, i64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, (t, tot))| (format!("agent-{}", i % 4), *t, *tot))
            .collect()
    }

    #[test]
    fn a_result_far_from_its_peers_is_flagged_and_honest_spread_is_not() {
        // Twelve DSL peers: ttfb 110-160 ms, total 250-330 ms.
        let honest: Vec<(i64, i64)> = (0..12)
            .map(|i| (110_000 + i * 4_500, 250_000 + i * 7_000))
            .collect();
        let p = peers(&honest);
        let fake = peer_disagreement(&result(3_000, 1_000, 9_000, 8_192), &p).unwrap();
        assert_eq!(fake.rule, Rule::PeerOutlier);
        assert!(
            fake.evidence["ttfb"]["z"].as_f64().unwrap() < -6.0,
            "{fake:?}"
        );
        // 1.7 times slower than the median: a bad moment, not fake.
        assert!(peer_disagreement(&result(230_000, 200_000, 480_000, 8_192), &p).is_none());
    }

    #[test]
    fn peers_that_agree_exactly_still_leave_room_for_honest_variance() {
        // MAD = 0: every peer saw 40 ms.
        let p = peers(&[(40_000, 60_000); 10]);
        assert_eq!(
            peer_score(40_000, &[40_000; 10]).unwrap().scale,
            PEER_MIN_SCALE
        );
        assert!(peer_disagreement(&result(90_000, 20_000, 130_000, 8_192), &p).is_none());
        assert!(peer_disagreement(&result(2_000, 1_000, 4_000, 8_192), &p).is_some());
        // Millisecond jitter on a fast line is never an outlier.
        let fast = peers(&[(2_000, 3_000); 10]);
        assert!(peer_disagreement(&result(9_000, 1_000, 11_000, 8_192), &fast).is_none());
    }

    #[test]
    fn a_batchs_clean_results_join_the_cells_it_read_newest_first() {
        let key = ("c".to_owned(), 64_501, "dsl".to_owned());
        let old: CellResults = (0..MAX_PEER_RESULTS)
            .map(|i| ("p".into(), "w".into(), 100_000 + i, 200_000 + i))
            .collect();
        let mut cells = PeerCells::default();
        cells.cells.insert(key.clone(), old);
        let a = agent(Some("dsl"), 20, 10_000_000);
        cells.stored(&a, &result(111_000, 5_000, 222_000, 8192));
        let late = StoredResult {
            late: true,
            ..result(1, 1, 1, 1)
        };
        cells.stored(&a, &late);
        let failed = StoredResult {
            error_kind: Some("timeout".into()),
            ..result(2, 2, 2, 2)
        };
        cells.stored(&a, &failed);
        let elsewhere = StoredResult {
            asn: 64_502,
            ..result(3, 3, 3, 3)
        };
        cells.stored(&a, &elsewhere);
        let latest = &cells.cells[&key];
        assert_eq!(
            latest.len(),
            MAX_PEER_RESULTS as usize,
            "still the latest 200"
        );
        assert_eq!(latest[0], ("x".into(), "v".into(), 111_000, 222_000));
        assert_eq!(latest[1].2, 100_000, "the read ones after it");
        assert!(
            !cells.cells.contains_key(&(key.0, 64_502, key.2)),
            "a cell not read stays unread: its first read finds the result stored"
        );
    }

    #[test]
    fn too_few_peers_cannot_judge() {
        let few = peers(&[(100_000, 200_000); 7]);
        assert!(peer_disagreement(&result(1_000, 1_000, 2_000, 8_192), &few).is_none());
        let one_agent: Vec<(String, i64, i64)> = (0..20)
            .map(|_| ("a".to_owned(), 100_000, 200_000))
            .collect();
        assert!(peer_disagreement(&result(1_000, 1_000, 2_000, 8_192), &one_agent).is_none());
    }

    #[test]
    fn slow_link_variance_is_not_an_outlier() {
        // Dial-up-like lognormal spread (sigma ~0.4): 0.5x to 2.2x the median.
        let spread = [
            300, 420, 560, 610, 700, 760, 800, 900, 1_050, 1_200, 1_400, 1_650,
        ];
        let p: Vec<(String, i64, i64)> = spread
            .iter()
            .enumerate()
            .map(|(i, ms)| (format!("a{}", i % 5), ms * 1000, ms * 2000))
            .collect();
        for honest_ms in [200, 2_500, 3_000] {
            assert!(
                peer_disagreement(&result(honest_ms * 1000, 0, honest_ms * 2000, 8_192), &p)
                    .is_none(),
                "{honest_ms} ms"
            );
        }
    }

    #[test]
    fn rule_codes_round_trip() {
        for r in Rule::ALL {
            assert_eq!(r.as_str().parse::<Rule>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
