//! Results: accepting what agents measured, exactly once, and folding it into the
//! aggregates reports are built from.
//!
//! **Architecture Invariant:** a result is stored once per assignment and counted at
//! most once. The assignment id is the idempotency key: a repeated submission finds the
//! stored result and gets the same acknowledgement. A result that arrives after its
//! lease ran out is stored as `late` and not counted (the slot was re-offered, and the
//! re-offered measurement is the one that counts). Before it is stored,
//! `verification` judges the result; a flagged one is stored with its reasons and
//! neither aggregated nor paid.
//!
//! Accepting and folding are two steps, so that results of one check do not
//! serialise on the rows they all feed:
//!
//! 1. [`accept`] (the agent's request, one short transaction for all the results it
//!    sends; [`accept_many`] for several agents' requests in one, as the controller's
//!    group commit writes them): store each result, close its assignment and, when it
//!    counts, queue it in `fold_queue`. It locks only the submitted assignments (a
//!    timely result's assignment is closed and locked by one update).
//! 2. [`fold_pending`] (a folder, batches of up to [`FOLD_BATCH`]): take queued
//!    results, merge them per aggregate cell (one read and one write per cell, however
//!    many results it gets), pay for all of them in one ledger transaction
//!    (`billing::pay_for_results`) and remove them from the queue, in one transaction.
//!    A result is folded and paid exactly once because leaving the queue and being
//!    folded commit together; after a crash, whatever was queued is folded by the next
//!    pass.
//!
//! The controller runs the folder right after each accept and waits for it (group
//! commit: one pass folds everything queued by the requests that arrived meanwhile),
//! and every second in the background for anything left, so a report misses an
//! acknowledged result for a second at most, and normally not at all.
//!
//! Aggregates are one row per (check, hour bucket, country, region, ASN, connection
//! class) with success/failure counts and an HdrHistogram per phase over the
//! successful samples. A cell is read-modify-written under a lock: `SELECT ... FOR
//! UPDATE` after an `INSERT ... ON CONFLICT DO NOTHING` on PostgreSQL, the single-writer
//! transaction on SQLite; cells are locked in key order.

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel::prelude::*;
use lastmile_protocol::{CheckKind, Hop, Phase, ResultAck, ResultDisposition, ResultSubmission};

use crate::agents::Agent;
use crate::clock::{hour_bucket, now_us, to_us, Micros};
use crate::error::{Error, Result};
use crate::figures::{self, Figures};
pub use crate::fold_handoff::Handoff;
use crate::histogram;
use crate::{billing, checks, verification};
use lastmile_storage::assignments::{state, Assignment, OpenAssignment};
use lastmile_storage::fold_queue;
use lastmile_storage::schema::{aggregates, assignments, results};
use lastmile_storage::{write_tx, DbConn};

pub use lastmile_storage::aggregates::AggregateRow;
pub use lastmile_storage::results::StoredResult;

/// The key of one aggregate row. Unknown country or region is `""`, unknown ASN is `0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateKey {
    pub check_id: String,
    pub bucket_start: Micros,
    pub country: String,
    pub region: String,
    pub asn: i64,
    pub connection_class: String,
}

impl AggregateKey {
    /// The row's primary key, in the table's column order.
    fn primary_key(&self) -> (&str, i64, &str, &str, i64, &str) {
        (
            &self.check_id,
            self.bucket_start,
            &self.country,
            &self.region,
            self.asn,
            &self.connection_class,
        )
    }
}

/// Cell `key` as a row: its counts and one encoded histogram per phase, in
/// [`Phase::ALL`]'s order.
pub fn aggregate_row(
    key: &AggregateKey,
    successes: i64,
    failures: i64,
    hists: [Vec<u8>; 6],
) -> AggregateRow {
    let [dns_hist, connect_hist, tls_hist, ttfb_hist, transfer_hist, total_hist] = hists;
    AggregateRow {
        check_id: key.check_id.clone(),
        bucket_start: key.bucket_start,
        country: key.country.clone(),
        region: key.region.clone(),
        asn: key.asn,
        connection_class: key.connection_class.clone(),
        successes,
        failures,
        dns_hist,
        connect_hist,
        tls_hist,
        ttfb_hist,
        transfer_hist,
        total_hist,
        figures: None,
    }
}

/// A cell with no results yet.
fn empty_row(key: &AggregateKey) -> AggregateRow {
    let empty = histogram::empty_encoded();
    aggregate_row(key, 0, 0, std::array::from_fn(|_| empty.clone()))
}

/// Failed sub-resources a page result may list (agents fetch at most a few hundred).
const MAX_PAGE_FAILED: usize = 1_000;

/// Longest phase a result may report: the histograms' range.
const MAX_PHASE_US: u64 = histogram::MAX_US;

fn validate(sub: &ResultSubmission) -> Result<()> {
    let t = sub.measurement.timings_us;
    for phase in Phase::ALL {
        if t.get(phase) > MAX_PHASE_US {
            return Err(Error::invalid(
                "invalid_result",
                format!("timings_us.{phase} is longer than one hour"),
            ));
        }
    }
    if t.ttfb > t.total || t.transfer > t.total {
        return Err(Error::invalid(
            "invalid_result",
            "timings_us.ttfb and timings_us.transfer cannot exceed timings_us.total",
        ));
    }
    // A response arrived (a status) or it did not (an error saying why); a result with
    // neither says nothing and would count as a success. A udp stream has no response:
    // its summary says what came back.
    if sub.measurement.status.is_none()
        && sub.measurement.error.is_none()
        && sub.measurement.udp.is_none()
    {
        return Err(Error::invalid(
            "invalid_result",
            "a measurement carries a status (a response arrived) or an error (why none did); this one has neither",
        ));
    }
    if let Some(status) = sub.measurement.status {
        if !(100..=599).contains(&status) {
            return Err(Error::invalid(
                "invalid_result",
                format!("status {status} is not an HTTP status"),
            ));
        }
    }
    if sub.measurement.bytes > i64::MAX as u64 {
        return Err(Error::invalid("invalid_result", "bytes is out of range"));
    }
    if let Some(page) = &sub.measurement.page {
        if page.failed.len() > MAX_PAGE_FAILED || page.failed.len() > page.resources as usize {
            return Err(Error::invalid(
                "invalid_result",
                format!(
                    "page.failed lists {} sub-resources; at most page.resources ({}) and {MAX_PAGE_FAILED}",
                    page.failed.len(),
                    page.resources
                ),
            ));
        }
        if page.total_us != t.total {
            return Err(Error::invalid(
                "invalid_result",
                "page.total_us must equal timings_us.total (the page total)",
            ));
        }
        validate_page(&sub.measurement, page)?;
    }
    if let Some(load) = &sub.measurement.throughput {
        validate_load(&sub.measurement, load)?;
    }
    if let Some(session) = &sub.measurement.video {
        validate_session(&sub.measurement, session)?;
    }
    if let Some(stream) = &sub.measurement.udp {
        validate_stream(&sub.measurement, stream)?;
    }
    Ok(())
}

/// A page summary must add up with its measurement: its bytes are the measurement's
/// (which the line rules judge: a summary saying 5 MB beside `bytes: 0` would escape
/// them), its resources are counted once by type, and no part of it outlasts the page.
fn validate_page(
    m: &lastmile_protocol::Measurement,
    page: &lastmile_protocol::PageSummary,
) -> Result<()> {
    let invalid = |why: String| Err(Error::invalid("invalid_result", why));
    if (page.bytes, page.bytes_decoded) != (m.bytes, m.bytes_decoded) {
        return invalid(format!(
            "page.bytes and page.bytes_decoded ({}, {}) must equal bytes and bytes_decoded \
             ({}, {}): both count the whole page",
            page.bytes, page.bytes_decoded, m.bytes, m.bytes_decoded
        ));
    }
    if page.resources as usize > MAX_PAGE_FAILED {
        return invalid(format!(
            "page.resources is {}; a page load fetches at most {MAX_PAGE_FAILED}",
            page.resources
        ));
    }
    let c = &page.by_type;
    let typed = [
        c.stylesheet,
        c.script,
        c.image,
        c.font,
        c.icon,
        c.media,
        c.other,
    ]
    .iter()
    .fold(0u64, |a, &n| a + u64::from(n));
    if typed != u64::from(page.resources) {
        return invalid(format!(
            "page.by_type counts {typed} sub-resources; page.resources says {}",
            page.resources
        ));
    }
    let slowest = page.slowest.as_ref().map_or(0, |s| s.timings_us.total);
    if page.document_timings_us.total > page.total_us || slowest > page.total_us {
        return invalid(format!(
            "the document ({} µs) and the slowest sub-resource ({slowest} µs) end within \
             the page total ({} µs)",
            page.document_timings_us.total, page.total_us
        ));
    }
    Ok(())
}

/// A udp summary must fit its measurement and itself: no more echoes than probes, a
/// round trip for each echo, each within the session, loss on the way there within
/// the loss, and no more echo bytes than that many probes can carry.
fn validate_stream(
    m: &lastmile_protocol::Measurement,
    stream: &lastmile_protocol::UdpSummary,
) -> Result<()> {
    use lastmile_protocol::reflector::{MAX_PROBE_LEN, MIN_PROBE_LEN};
    use lastmile_protocol::MAX_UDP_PROBES;
    let invalid = |why: String| Err(Error::invalid("invalid_result", why));
    if m.page.is_some() || m.throughput.is_some() || m.video.is_some() {
        return invalid(
            "a udp stream is not a page load, a throughput load or a video session".into(),
        );
    }
    if m.status.is_some() {
        return invalid("a udp stream has no HTTP status".into());
    }
    if stream.sent as usize > MAX_UDP_PROBES {
        return invalid(format!(
            "udp.sent is {}; a stream sends at most {MAX_UDP_PROBES} probes",
            stream.sent
        ));
    }
    if stream.sent == 0 && m.error.is_none() {
        return invalid(
            "udp.sent is 0 without an error: a stream that sent no probe measured nothing \
             (it is a failure with an error kind)"
                .into(),
        );
    }
    if stream.received > stream.sent {
        return invalid(format!(
            "udp.received ({}) is more than udp.sent ({}): each probe's first echo counts once",
            stream.received, stream.sent
        ));
    }
    if stream.rtt_us.len() != stream.received as usize {
        return invalid(format!(
            "udp.rtt_us lists {} round trips for {} echoes received",
            stream.rtt_us.len(),
            stream.received
        ));
    }
    if stream.lost_up > stream.lost() {
        return invalid(format!(
            "udp.lost_up ({}) is more than the probes lost ({})",
            stream.lost_up,
            stream.lost()
        ));
    }
    let total = m.timings_us.total;
    if let Some(rtt) = stream.rtt_us.iter().find(|&&rtt| rtt == 0 || rtt > total) {
        return invalid(format!(
            "a round trip of {rtt} µs in udp.rtt_us; each is above 0 and within timings_us.total ({total})"
        ));
    }
    if m.bytes > u64::from(stream.received) * MAX_PROBE_LEN as u64 {
        return invalid(format!(
            "bytes ({}) is more than {} echoes of at most {MAX_PROBE_LEN} bytes carry",
            m.bytes, stream.received
        ));
    }
    // Every echo is exactly as long as its probe, and every probe of a stream as long
    // as the others.
    let received = u64::from(stream.received);
    let even = match received {
        0 => m.bytes == 0,
        n => m.bytes.is_multiple_of(n) && m.bytes / n >= MIN_PROBE_LEN as u64,
    };
    if !even {
        return invalid(format!(
            "bytes ({}) is not {} echoes of one length of at least {MIN_PROBE_LEN} bytes: \
             each echo is as long as its probe",
            m.bytes, stream.received
        ));
    }
    Ok(())
}

/// A video summary must fit its measurement: playback starts and stalls while the
/// segments arrive, so neither the start-up delay nor the stall time can pass the
/// session's total.
fn validate_session(
    m: &lastmile_protocol::Measurement,
    session: &lastmile_protocol::VideoSummary,
) -> Result<()> {
    use lastmile_protocol::{MAX_VIDEO_PLAY_MS, MAX_VIDEO_SEGMENTS};
    let invalid = |why: String| Err(Error::invalid("invalid_result", why));
    if m.page.is_some() || m.throughput.is_some() {
        return invalid("a video session is neither a page load nor a throughput load".into());
    }
    if session.segments as usize > MAX_VIDEO_SEGMENTS {
        return invalid(format!(
            "video.segments is {}; a session downloads at most {MAX_VIDEO_SEGMENTS}",
            session.segments
        ));
    }
    if session.played_ms > MAX_VIDEO_PLAY_MS {
        return invalid(format!(
            "video.played_ms is {}; a session plays at most {MAX_VIDEO_PLAY_MS}",
            session.played_ms
        ));
    }
    let total = m.timings_us.total;
    if session.startup_us > total || session.stall_us > total {
        return invalid(format!(
            "video.startup_us ({}) and video.stall_us ({}) are within timings_us.total ({total}): \
             playback starts and stalls while the segments arrive",
            session.startup_us, session.stall_us
        ));
    }
    if session.stalls == 0 && session.stall_us > 0 {
        return invalid("video.stall_us is above 0 without a stall (video.stalls is 0)".into());
    }
    Ok(())
}

/// The kind of task a measurement's summary belongs to, if it carries one.
fn summary_kind(m: &lastmile_protocol::Measurement) -> Option<CheckKind> {
    if m.throughput.is_some() {
        Some(CheckKind::Throughput)
    } else if m.video.is_some() {
        Some(CheckKind::Video)
    } else if m.page.is_some() {
        Some(CheckKind::Page)
    } else if m.udp.is_some() {
        Some(CheckKind::Udp)
    } else {
        None
    }
}

/// Refuses each result whose summary is of another kind than its assignment's task (a
/// throughput summary for an http fetch): its figures would land in a check that never
/// asked for them. Only results carrying a summary are looked up, two queries for the
/// batch (their assignments' runs, then the frozen tasks of those runs this process
/// has not seen, or their checks' kinds for runs from before tasks were frozen); the
/// usual http result costs nothing. A run's task never changes, so
/// this reads outside the accepting transaction.
fn refuse_foreign_summaries(
    conn: &mut DbConn,
    requests: &[Request<'_>],
    mut checked: Vec<Result<Vec<Result<()>>>>,
) -> Result<Vec<Result<Vec<Result<()>>>>> {
    let with_summary: Vec<String> = requests
        .iter()
        .zip(&checked)
        .filter_map(|(request, checked)| Some((request, checked.as_ref().ok()?)))
        .flat_map(|(request, checked)| {
            request
                .subs
                .iter()
                .zip(checked)
                .filter(|(sub, ok)| ok.is_ok() && summary_kind(&sub.measurement).is_some())
                .map(|(sub, _)| sub.assignment_id.to_string())
        })
        .collect();
    if with_summary.is_empty() {
        return Ok(checked);
    }
    // The assignments' runs, then each run's kind once (see `check_terms::run_kinds`).
    let mut run_of: HashMap<String, String> = HashMap::with_capacity(with_summary.len());
    for chunk in with_summary.chunks(lastmile_storage::agents::KEYS_PER_LOOKUP) {
        run_of.extend(
            assignments::table
                .filter(assignments::id.eq_any(chunk))
                .select((assignments::id, assignments::run_id))
                .load::<(String, String)>(conn)?,
        );
    }
    let mut run_ids: Vec<&str> = run_of.values().map(String::as_str).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    let run_kinds = crate::check_terms::run_kinds(conn, &run_ids)?;
    let kinds: HashMap<String, CheckKind> = run_of
        .into_iter()
        .filter_map(|(id, run)| Some((id, *run_kinds.get(&run)?)))
        .collect();
    for (request, checked) in requests.iter().zip(checked.iter_mut()) {
        let Ok(checked) = checked else { continue };
        for (sub, ok) in request.subs.iter().zip(checked.iter_mut()) {
            let (Some(summary), Some(task)) = (
                summary_kind(&sub.measurement),
                kinds.get(&sub.assignment_id.to_string()),
            ) else {
                continue;
            };
            if ok.is_ok() && summary != *task {
                *ok = Err(Error::invalid(
                    "invalid_result",
                    format!(
                        "the measurement carries a {summary} summary, but the assignment is a {task} task"
                    ),
                ));
            }
        }
    }
    Ok(checked)
}

/// A throughput summary must add up with its measurement: it is where the result's
/// goodput and latencies come from, so a summary that contradicts the bytes and the
/// transfer time the physics rules judge would escape them.
fn validate_load(
    m: &lastmile_protocol::Measurement,
    load: &lastmile_protocol::ThroughputSummary,
) -> Result<()> {
    use lastmile_protocol::{
        IDLE_LATENCY_PROBES, LATENCY_PROBE_INTERVAL_MS, MAX_LOADED_LATENCY_PROBES,
        MAX_THROUGHPUT_CONNECTIONS,
    };
    let invalid = |why: String| Err(Error::invalid("invalid_result", why));
    if m.page.is_some() {
        return invalid("a measurement is a page load or a throughput load, not both".into());
    }
    if load.connections == 0 || load.connections > MAX_THROUGHPUT_CONNECTIONS {
        return invalid(format!(
            "throughput.connections must be between 1 and {MAX_THROUGHPUT_CONNECTIONS}, not {}",
            load.connections
        ));
    }
    if load.bytes != m.bytes {
        return invalid(format!(
            "throughput.bytes ({}) must equal bytes ({}): both count the load's body bytes",
            load.bytes, m.bytes
        ));
    }
    if load.duration_us != m.timings_us.transfer {
        return invalid(format!(
            "throughput.duration_us ({}) must equal timings_us.transfer ({}): both are the load's time",
            load.duration_us, m.timings_us.transfer
        ));
    }
    if load.idle_latency_us.len() > IDLE_LATENCY_PROBES {
        return invalid(format!(
            "throughput.idle_latency_us lists {} probes; a load sends {IDLE_LATENCY_PROBES}",
            load.idle_latency_us.len()
        ));
    }
    if load.loaded_latency_us.len() > MAX_LOADED_LATENCY_PROBES {
        return invalid(format!(
            "throughput.loaded_latency_us lists {} probes; at most {MAX_LOADED_LATENCY_PROBES}",
            load.loaded_latency_us.len()
        ));
    }
    let probes = load.idle_latency_us.iter().chain(&load.loaded_latency_us);
    if let Some(long) = probes
        .copied()
        .find(|&rtt| rtt == 0 || rtt > m.timings_us.total)
    {
        return invalid(format!(
            "a latency probe of {long} µs: each is above 0 and within timings_us.total ({})",
            m.timings_us.total
        ));
    }
    // The probes go one after another on one connection, the idle ones before the load
    // begins, the loaded ones from its first body byte on, at most one an interval: a
    // summary that could not have happened in the time the measurement took would put
    // an invented queue (or none) into the owner's figures.
    let total = m.timings_us.total;
    let sum = |probes: &[u64]| probes.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let (idle, loaded) = (sum(&load.idle_latency_us), sum(&load.loaded_latency_us));
    if idle.saturating_add(load.duration_us) > total {
        return invalid(format!(
            "the idle probes ({idle} µs in all) come before the load (throughput.duration_us \
             {}), one after another: together more than timings_us.total ({total})",
            load.duration_us
        ));
    }
    if idle.saturating_add(loaded) > total {
        return invalid(format!(
            "the latency probes take {} µs one after another, more than timings_us.total \
             ({total})",
            idle.saturating_add(loaded)
        ));
    }
    let most = total / (LATENCY_PROBE_INTERVAL_MS * 1_000) + 1;
    if load.loaded_latency_us.len() as u64 > most {
        return invalid(format!(
            "throughput.loaded_latency_us lists {} probes; one every \
             {LATENCY_PROBE_INTERVAL_MS} ms makes at most {most} in timings_us.total ({total})",
            load.loaded_latency_us.len()
        ));
    }
    if load.requests == 0 && load.bytes > 0 {
        return invalid(format!(
            "throughput.bytes is {} but throughput.requests is 0: bytes come with a response",
            load.bytes
        ));
    }
    Ok(())
}

/// What accepting one result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The acknowledgement for the agent (the same for a repeated submission).
    pub ack: ResultAck,
    /// True when this submission had been stored before.
    pub duplicate: bool,
    /// True when verification flagged it: stored, but neither aggregated nor paid.
    pub flagged: bool,
    /// True when it was queued to be folded and paid (accepted, not late, not flagged).
    pub queued: bool,
}

/// Most results one request may carry.
pub const MAX_BATCH: usize = lastmile_protocol::MAX_RESULTS_PER_BATCH;

/// Accepts one result from `agent` (see [`accept`]). Safe to call again with the same
/// submission.
pub fn submit(conn: &mut DbConn, agent: &Agent, sub: &ResultSubmission) -> Result<Submitted> {
    accept(conn, agent, std::slice::from_ref(sub))?
        .pop()
        .unwrap_or_else(|| Err(Error::Internal("accept answered nothing".into())))
}

/// Accepts results from `agent`, in one transaction, and answers each in order: its
/// acknowledgement, or why it was refused (invalid, unknown, not leased to this
/// agent). A refused result does not stop the others. Counted results are queued for
/// [`fold_pending`]. Safe to call again with the same submissions: each assignment is
/// stored once, and the same assignment twice in one call is one result.
pub fn accept(
    conn: &mut DbConn,
    agent: &Agent,
    subs: &[ResultSubmission],
) -> Result<Vec<Result<Submitted>>> {
    accept_many(conn, &[Request { agent, subs }], None)?
        .pop()
        .unwrap_or_else(|| Err(Error::Internal("accept answered nothing".into())))
}

/// One agent's request, in a batch for [`accept_many`].
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub agent: &'a Agent,
    pub subs: &'a [ResultSubmission],
}

/// Accepts several agents' requests in one transaction (group commit: the requests
/// that arrived while the previous batch was written), each answered as [`accept`]
/// would have answered it alone, in the order given: the requests are judged one after
/// the other, each against the results of the requests before it, so a copy, a replay
/// or a farm sibling in an earlier request of the batch is seen as if it had committed
/// first. What the requests share is paid once: closing the assignments of timely
/// results (one delete of their open rows an agent, which also locks them:
/// [`claim_timely`]) and locking the others, looking for results stored before, the stored results with the batch's
/// numbers and the agents' siblings (`verification::Batch`), writing the results (one
/// `COPY` on PostgreSQL; earlier only when the same-address rule must read them) and
/// queueing the fold, one statement each for the whole batch (or per
/// [`KEYS_PER_LOOKUP`](lastmile_storage::agents::KEYS_PER_LOOKUP) keys), and one
/// commit. A request refused as a whole
/// (too many results) does not stop the others; an error of the database fails the
/// batch, and the caller may then try its requests one by one. Given a `handoff`, the
/// queued results are held there once the transaction commits, for this process's
/// folder ([`fold_pending`]) not to read them back.
pub fn accept_many(
    conn: &mut DbConn,
    requests: &[Request<'_>],
    handoff: Option<&Handoff>,
) -> Result<Vec<Result<Vec<Result<Submitted>>>>> {
    let checked: Vec<Result<Vec<Result<()>>>> = requests
        .iter()
        .map(|request| {
            if request.subs.len() > MAX_BATCH {
                return Err(Error::invalid(
                    "too_many_results",
                    format!(
                        "at most {MAX_BATCH} results per request, not {}",
                        request.subs.len()
                    ),
                ));
            }
            Ok(request.subs.iter().map(validate).collect())
        })
        .collect();
    let checked = refuse_foreign_summaries(conn, requests, checked)?;
    let mut ids: Vec<String> = requests
        .iter()
        .zip(&checked)
        .filter(|(_, checked)| checked.is_ok())
        .flat_map(|(request, _)| request.subs.iter().map(|s| s.assignment_id.to_string()))
        .collect();
    ids.sort();
    ids.dedup();
    let now = now_us();
    let (answers, handed) = write_tx(conn, |c| {
        // The usual submission, a valid result of an assignment leased to its agent and
        // still in time, closes the assignment whatever else is judged of it: closed
        // first, by one delete of its open row that locks it too. The others (late,
        // repeated, someone else's) are locked and read as they are.
        let mut leased = claim_timely(c, requests, &checked, now)?;
        let claimed = leased.len();
        let rest: Vec<String> = ids
            .iter()
            .filter(|id| !leased.contains_key(*id))
            .cloned()
            .collect();
        leased.extend(lock_assignments(c, &rest)?);
        // Only an assignment no longer leased (closed by its result) or past its lease
        // (whose late result may be stored) can have a result already: one still leased
        // and in time has none (an assignment is leased once; a re-offer is a new one),
        // so a batch of fresh results, the usual one, does not look.
        let settled: Vec<&OpenAssignment> =
            leased.values().filter(|a| past_lease(a, now)).collect();
        // A result is received after its assignment was created: bounding the time lets
        // PostgreSQL look in the recent days' partitions only. By a day's margin, not
        // the creation itself: another replica's clock may run ahead of this one's, and
        // a result missed here would be stored twice.
        let mut stored_before: HashMap<String, bool> =
            match settled.iter().map(|a| a.created_at).min() {
                None => HashMap::new(),
                Some(oldest) => results::table
                    .filter(results::assignment_id.eq_any(settled.iter().map(|a| &a.assignment_id)))
                    .filter(results::received_at.ge(oldest - crate::rollups::DAY_US))
                    .select((results::assignment_id, results::late))
                    .load(c)?
                    .into_iter()
                    .collect(),
            };
        // What each submission is, request after request: answered now (refused, or
        // stored before, by an earlier request of the batch too), or new.
        let sorted: Vec<Result<Sorted>> = requests
            .iter()
            .zip(checked)
            .map(|(request, checked)| {
                checked.map(|checked| sort(*request, checked, &leased, &mut stored_before, now))
            })
            .collect();
        let agents: Vec<&Agent> = requests.iter().map(|r| r.agent).collect();
        let new: Vec<&StoredResult> = sorted.iter().flatten().flat_map(|s| &s.new).collect();
        let mut batch = verification::Batch::read(c, &agents, &new)?;
        let mut written = Written {
            hand_off: handoff.is_some(),
            ..Written::default()
        };
        let mut answers = Vec::with_capacity(requests.len());
        for (request, sorted) in requests.iter().zip(sorted) {
            answers.push(match sorted {
                Err(e) => Err(e),
                Ok(sorted) => Ok(judge(c, request.agent, sorted, &mut batch, &mut written)?),
            });
        }
        // Every assignment closed must have its timely result, and every timely result
        // a closed assignment: a result stored with its assignment still leased would
        // be measured again once the lease ran out, and counted twice.
        if written.timely != claimed {
            return Err(Error::Internal(format!(
                "{claimed} assignments closed for {} timely results",
                written.timely
            )));
        }
        written.store(c)?;
        let queued = written
            .queued
            .iter()
            .map(|(run, assignment)| (run.as_str(), assignment.as_str()));
        fold_queue::enqueue(c, &fold_queue::entries(now, queued))?;
        Ok::<_, Error>((answers, written.handed))
    })?;
    if let Some(handoff) = handoff {
        handoff.give(handed);
    }
    Ok(answers)
}

/// Whether a result for `a` arriving `now` is late: its lease is over (run out, or the
/// assignment closed or expired).
fn past_lease(a: &OpenAssignment, now: Micros) -> bool {
    a.state != state::LEASED || a.lease_expires_at.is_none_or(|deadline| now > deadline)
}

/// What the requests of a batch stored, closed and queued so far.
#[derive(Default)]
struct Written<'a> {
    /// Results judged and not yet written: written together (one `COPY` on
    /// PostgreSQL) at the end of the batch, or before a judgement that reads them.
    rows: Vec<StoredResult>,
    /// Flagged results among `rows`, with their agent and flags.
    flagged: Vec<(&'a Agent, usize, Vec<verification::Flag>)>,
    /// Results to fold (run, assignment), queued at the end of the batch: one queue
    /// entry.
    queued: Vec<(String, String)>,
    /// New results in time: as many as the assignments [`claim_timely`] closed.
    timely: usize,
    /// Whether the queued results are to be handed to the folder in memory
    /// ([`Handoff`]), and those results with their agents' volunteers.
    hand_off: bool,
    handed: Vec<(StoredResult, String)>,
}

impl Written<'_> {
    /// Writes the results judged so far, and the flags of those flagged.
    fn store(&mut self, c: &mut DbConn) -> Result<()> {
        lastmile_storage::results::insert(c, &self.rows)?;
        for (agent, i, flags) in self.flagged.drain(..) {
            // Kept for operators, never counted or paid (see `verification`).
            verification::record(c, agent, &self.rows[i], &flags)?;
        }
        self.rows.clear();
        Ok(())
    }
}

/// One request of a batch, its submissions sorted: the answer of each, and the new
/// results, the first of each assignment in the request.
struct Sorted<'a> {
    subs: &'a [ResultSubmission],
    answers: Vec<Answer>,
    new: Vec<StoredResult>,
}

/// Sorts one request's submissions, its assignments locked and the results stored
/// before it known (`stored_before`, to which it adds its own).
fn sort<'a>(
    Request { agent, subs }: Request<'a>,
    checked: Vec<Result<()>>,
    leased: &HashMap<String, OpenAssignment>,
    stored_before: &mut HashMap<String, bool>,
    now: Micros,
) -> Sorted<'a> {
    let mut answers: Vec<Answer> = Vec::with_capacity(subs.len());
    let mut new: Vec<StoredResult> = Vec::new();
    let mut first_of: HashMap<String, usize> = HashMap::new();
    for (sub, valid) in subs.iter().zip(checked) {
        let id = sub.assignment_id.to_string();
        let answer = match (valid, leased.get(&id)) {
            (Err(e), _) => Answer::Refused(e),
            (Ok(()), _) if first_of.contains_key(&id) => Answer::Again(first_of[&id]),
            (Ok(()), None) => Answer::Refused(Error::NotFound {
                what: "assignment",
                code: "assignment_not_found",
            }),
            (Ok(()), Some(a)) if a.agent_id.as_deref() != Some(agent.id.as_str()) => {
                Answer::Refused(Error::forbidden(
                    "assignment_not_yours",
                    "this assignment is not leased to this agent",
                ))
            }
            (Ok(()), Some(_)) if stored_before.contains_key(&id) => {
                Answer::Before(stored_before[&id])
            }
            (Ok(()), Some(assignment)) => {
                let late = past_lease(assignment, now);
                // A later request of the batch with this assignment finds it stored.
                stored_before.insert(id.clone(), late);
                first_of.insert(id, new.len());
                new.push(to_stored(sub, assignment, agent, now, late));
                Answer::New(new.len() - 1)
            }
        };
        answers.push(answer);
    }
    Sorted { subs, answers, new }
}

/// Judges one request's new results, in order, each before it is stored, so that none
/// is compared with itself and a replay within the request is caught as one across
/// requests would be; hands them to `written` and answers each submission.
fn judge<'a>(
    c: &mut DbConn,
    agent: &'a Agent,
    Sorted { subs, answers, new }: Sorted<'_>,
    batch: &mut verification::Batch,
    written: &mut Written<'a>,
) -> Result<Vec<Result<Submitted>>> {
    if batch.has_siblings(agent) {
        // The same-address rule reads the run's stored results: the batch's so far too.
        written.store(c)?;
    }
    // Which summary each new result's measurement carried.
    let mut summaries: Vec<Option<CheckKind>> = vec![None; new.len()];
    for (answer, sub) in answers.iter().zip(subs) {
        if let Answer::New(i) = answer {
            summaries[*i] = summary_kind(&sub.measurement);
        }
    }
    let mut verifier = verification::Verifier::new(agent, &new, batch);
    let mut flags: Vec<Vec<verification::Flag>> = Vec::with_capacity(new.len());
    for (r, summary) in new.iter().zip(&summaries) {
        flags.push(if r.late {
            verifier.remember(r);
            Vec::new()
        } else {
            verifier.verify(c, r, *summary)?
        });
    }
    drop(verifier);
    let submitted = |sub: &ResultSubmission, i: usize, duplicate: bool| {
        let (r, flagged) = (&new[i], !flags[i].is_empty());
        Submitted {
            ack: ack(sub, r.late),
            duplicate,
            flagged: flagged && !duplicate,
            queued: !r.late && !flagged && !duplicate,
        }
    };
    let answered = answers
        .into_iter()
        .zip(subs)
        .map(|(answer, sub)| match answer {
            Answer::Refused(e) => Err(e),
            Answer::Before(late) => Ok(Submitted {
                ack: ack(sub, late),
                duplicate: true,
                flagged: false,
                queued: false,
            }),
            Answer::New(i) => Ok(submitted(sub, i, false)),
            Answer::Again(i) => Ok(submitted(sub, i, true)),
        })
        .collect();
    for (r, flags) in new.into_iter().zip(flags) {
        batch.stored(agent, &r, !r.late && flags.is_empty());
        // A timely result's assignment was closed by `claim_timely`.
        if !r.late {
            written.timely += 1;
            if flags.is_empty() {
                written
                    .queued
                    .push((r.run_id.clone(), r.assignment_id.clone()));
                if written.hand_off {
                    written.handed.push((r.clone(), agent.volunteer_id.clone()));
                }
            } else {
                written.flagged.push((agent, written.rows.len(), flags));
            }
        }
        written.rows.push(r);
    }
    Ok(answered)
}

/// What [`accept`] answers one submission, before the new results are judged.
enum Answer {
    Refused(Error),
    /// Stored by an earlier request (late or not).
    Before(bool),
    /// The i-th new result.
    New(usize),
    /// The same assignment as the i-th new result, earlier in this request.
    Again(usize),
}

fn ack(sub: &ResultSubmission, late: bool) -> ResultAck {
    ResultAck {
        assignment_id: sub.assignment_id,
        disposition: if late {
            ResultDisposition::Late
        } else {
            ResultDisposition::Accepted
        },
    }
}

/// Closes the assignments that the batch's valid submissions are timely results of
/// (leased to the submitting agent, the lease not run out at `now`) by deleting their
/// open rows (`assignments::claim_leased`): one statement per agent and
/// [`KEYS_PER_LOOKUP`](lastmile_storage::agents::KEYS_PER_LOOKUP) keys, which locks
/// them as it closes them. Their rows in `assignments` are not written (see
/// `lastmile_storage::assignments`). Returns the open rows as they were (leased), which
/// is how the batch's judgement reads them: each is a new, timely result, and every
/// such result closes its assignment.
///
/// Agents in id order, keys in index order within each: two transactions that claim
/// the same assignments (an agent's retry beside its first try) lock them in one
/// order. The rest are locked after, in id order (`lock_assignments`); only two
/// batches crossing each other with assignments submitted by agents they are not
/// leased to can then wait for each other, and PostgreSQL ends one of them as a
/// deadlock, whose requests are then written one by one (`accepting::write_batch`).
fn claim_timely(
    conn: &mut DbConn,
    requests: &[Request<'_>],
    checked: &[Result<Vec<Result<()>>>],
    now: Micros,
) -> Result<HashMap<String, OpenAssignment>> {
    let mut by_agent: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (request, checked) in requests.iter().zip(checked) {
        let Ok(valid) = checked else { continue };
        let ids = by_agent.entry(request.agent.id.as_str()).or_default();
        for (sub, valid) in request.subs.iter().zip(valid) {
            if valid.is_ok() {
                ids.push(sub.assignment_id.to_string());
            }
        }
    }
    let mut claimed = HashMap::new();
    for (agent_id, mut ids) in by_agent {
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(lastmile_storage::agents::KEYS_PER_LOOKUP) {
            let rows = lastmile_storage::assignments::claim_leased(conn, agent_id, chunk, now)?;
            claimed.extend(rows.into_iter().map(|a| (a.assignment_id.clone(), a)));
        }
    }
    Ok(claimed)
}

/// The assignments with these ids as they stand, each read as its open row would be
/// (one closed by its result in state [`state::DONE`]), locked until the end of the
/// caller's transaction on PostgreSQL: the `assignments` rows, then their open rows,
/// each in id order (as a lease and an expiry take them), so that two requests cannot
/// deadlock and a close or an expiry of the assignment meanwhile is waited for (SQLite's
/// single writer needs no lock).
fn lock_assignments(conn: &mut DbConn, ids: &[String]) -> Result<HashMap<String, OpenAssignment>> {
    let mut rows: Vec<Assignment> = Vec::with_capacity(ids.len());
    // `ids` is sorted: chunk after chunk still locks in id order.
    for chunk in ids.chunks(lastmile_storage::agents::KEYS_PER_LOOKUP) {
        let query = || {
            assignments::table
                .filter(assignments::id.eq_any(chunk))
                .order(assignments::id)
        };
        rows.extend(match conn {
            DbConn::Pg(c) => query()
                .select(Assignment::as_select())
                .for_update()
                .load(c)?,
            DbConn::Sqlite(c) => query()
                .select(Assignment::as_select())
                .load::<Assignment>(c)?,
        });
    }
    // A close holds the open row, not the `assignments` row: this waits for it.
    let open: HashSet<String> = lastmile_storage::assignments::lock_open(conn, ids)?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(|a| {
            let mut row = OpenAssignment::of(&a);
            if lastmile_storage::assignments::closed_by_result(&a, open.contains(&a.id)) {
                row.state = state::DONE.to_owned();
            }
            (a.id, row)
        })
        .collect())
}

/// Results folded per transaction: large enough that a busy controller folds
/// hundreds of results per aggregate write, small enough that one fold holds its
/// locks for milliseconds.
pub const FOLD_BATCH: i64 = 2_000;

/// What one [`fold_pending`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folded {
    /// Results folded into aggregates (and paid, unless counted in `unpaid`).
    pub results: usize,
    /// Results the owner's credit no longer covered.
    pub unpaid: usize,
    /// Queued results whose stored row was not found (deleted behind the queue's
    /// back): their queue entries are gone, nothing was folded or paid for them.
    /// Never expected; counted so that an operator sees it.
    pub missing: usize,
}

/// Folds up to `max` queued results: merges them into their aggregate cells, pays for
/// them and removes them from the queue, in one transaction. Returns what it did;
/// `results == 0` when nothing was queued (or everything queued is being folded by
/// another controller). The results held in `handoff` are not read back; a fold that
/// rolls back has taken them out of it, and the next one reads them back. The runs'
/// terms held in `run_terms` are not read again.
pub fn fold_pending(
    conn: &mut DbConn,
    max: i64,
    handoff: Option<&Handoff>,
    run_terms: Option<&billing::RunTermsCache>,
) -> Result<Folded> {
    write_tx(conn, |c| {
        let (ids, Some((oldest, newest))) = fold_queue::take(c, max)? else {
            return Ok(Folded::default());
        };
        // A result is queued in the transaction that receives it (`queued_at` is its
        // `received_at`): a day's margin either side still lets PostgreSQL read only
        // the days' partitions around them (not the days created ahead, nor the
        // default partition), each key probed in each partition read.
        let (received_from, received_to) = (
            oldest - crate::rollups::DAY_US,
            newest + crate::rollups::DAY_US,
        );
        let queued = ids.len();
        let (mut rows, missing) = match handoff {
            Some(handoff) => handoff.take(ids),
            None => (Vec::new(), ids),
        };
        if !missing.is_empty() {
            rows.extend(lastmile_storage::results::with_volunteers(
                c,
                &missing,
                (received_from, received_to),
            )?);
        }
        rows.sort_by(|(a, _), (b, _)| {
            (a.received_at, &a.assignment_id).cmp(&(b.received_at, &b.assignment_id))
        });
        fold_into_cells(c, rows.iter().map(|(r, _)| r))?;
        crate::leaderboard::add_work(c, rows.iter().map(|(r, _)| r))?;
        let to_pay: Vec<billing::ToPay<'_>> = rows
            .iter()
            .map(|(r, volunteer_id)| billing::ToPay {
                assignment_id: &r.assignment_id,
                run_id: &r.run_id,
                volunteer_id,
            })
            .collect();
        let unpaid = billing::pay_for_results(c, &to_pay, run_terms)?;
        let missing = queued.saturating_sub(rows.len());
        if missing > 0 {
            tracing::error!(
                missing,
                queued,
                "queued results have no stored row: their queue entries are removed without folding"
            );
        }
        Ok(Folded {
            results: rows.len(),
            unpaid,
            missing,
        })
    })
}

fn to_stored(
    sub: &ResultSubmission,
    a: &OpenAssignment,
    agent: &Agent,
    now: Micros,
    late: bool,
) -> StoredResult {
    let m = &sub.measurement;
    let t = m.timings_us;
    StoredResult {
        assignment_id: a.assignment_id.clone(),
        run_id: a.run_id.clone(),
        check_id: a.check_id.clone(),
        agent_id: agent.id.clone(),
        received_at: now,
        started_at: to_us(sub.started_at),
        late,
        status: m.status.map(i32::from),
        bytes: m.bytes as i64,
        error_kind: m.error.as_ref().map(|e| e.kind.as_str().to_owned()),
        error_message: m
            .error
            .as_ref()
            .map(|e| observed(&e.message).take(500).collect()),
        dns_us: t.dns as i64,
        connect_us: t.connect as i64,
        tls_us: t.tls as i64,
        ttfb_us: t.ttfb as i64,
        transfer_us: t.transfer as i64,
        total_us: t.total as i64,
        country: agent.country.clone().unwrap_or_default(),
        region: agent.region.clone().unwrap_or_default(),
        asn: agent.asn.unwrap_or(0),
        connection_class: agent
            .connection_class()
            .map_or_else(|| agent.declared_class.clone(), |c| c.as_str().to_owned()),
        remote_addr: m.remote_addr.as_ref().map(|a| a.chars().take(64).collect()),
        ip_version: m.ip_version.map(i32::from),
        http_version: m.http_version.as_ref().map(|v| v.chars().take(8).collect()),
        // An older agent does not report the decoded size: its body was not decoded.
        bytes_decoded: if m.bytes_decoded == 0 {
            m.bytes
        } else {
            m.bytes_decoded
        } as i64,
        redirects: m.redirects.len().min(i32::MAX as usize) as i32,
        redirect_us: m.redirect_us as i64,
        page: m
            .page
            .as_ref()
            .and_then(|p| serde_json::to_string(&observed_page(p)).ok()),
        redirect_hops: if m.redirects.is_empty() {
            None
        } else {
            serde_json::to_string(&bound_hops(&m.redirects)).ok()
        },
        figures: figures::of_measurement(m),
    }
}

/// A text the agent reports as a server sent it (an error message, a URL), without
/// the NUL characters PostgreSQL cannot store. Kept rather than refused: a strange
/// server is still honestly measured (`api::nul_text` lets exactly these through).
fn observed(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().filter(|&c| c != '\0')
}

/// The page summary with NULs stripped from its URLs and error messages.
fn observed_page(p: &lastmile_protocol::PageSummary) -> lastmile_protocol::PageSummary {
    let text = |s: &str| observed(s).collect::<String>();
    let mut page = p.clone();
    page.document_url = text(&page.document_url);
    if let Some(slowest) = &mut page.slowest {
        slowest.url = text(&slowest.url);
    }
    for failed in &mut page.failed {
        failed.url = text(&failed.url);
        failed.error.message = text(&failed.error.message);
    }
    page
}

/// Hops kept per result: a check follows at most this many redirects
/// ([`checks::MAX_REDIRECTS`]), so an honest agent never reports more.
pub const MAX_STORED_HOPS: usize = checks::MAX_REDIRECTS as usize;

/// Characters kept of a hop's URL and `Location`: what browsers and CDNs reliably
/// handle; past that the tail identifies nothing an owner needs.
pub const MAX_HOP_URL_CHARS: usize = 2048;

/// The hops as stored. A submission is bounded only by the request body limit, and a
/// result row is kept and served back to the owner for as long as raw results live,
/// so one faulty or hostile agent must not be able to park megabytes of URLs in it:
/// at most [`MAX_STORED_HOPS`] hops (the first ones, where the chain started), each
/// URL and `Location` cut to [`MAX_HOP_URL_CHARS`] characters, the address to 64 (as
/// the result's own). The result's `redirects` column keeps the count reported, so a
/// cut list is visible as fewer hops than that count.
pub fn bound_hops(hops: &[Hop]) -> Vec<Hop> {
    let cut = |s: &str, n: usize| observed(s).take(n).collect::<String>();
    hops.iter()
        .take(MAX_STORED_HOPS)
        .map(|h| Hop {
            url: cut(&h.url, MAX_HOP_URL_CHARS),
            status: h.status,
            location: cut(&h.location, MAX_HOP_URL_CHARS),
            remote_addr: h.remote_addr.as_deref().map(|a| cut(a, 64)),
            timings_us: h.timings_us,
        })
        .collect()
}

/// The most recent stored page summary of a page check per connection class (counted
/// results only), slowest class first: what the demo and an owner's tooling show
/// beside the page-total report. Reads at most `limit` recent results.
pub fn latest_pages(
    conn: &mut DbConn,
    check_id: &str,
    limit: i64,
) -> Result<Vec<(String, lastmile_protocol::PageSummary)>> {
    let rows: Vec<(String, Option<String>)> = results::table
        .filter(results::check_id.eq(check_id))
        .filter(results::late.eq(false))
        .filter(results::page.is_not_null())
        .order(results::received_at.desc())
        .limit(limit)
        .select((results::connection_class, results::page))
        .load(conn)?;
    let mut latest: std::collections::BTreeMap<lastmile_protocol::ConnectionClass, _> =
        std::collections::BTreeMap::new();
    for (class, page) in rows {
        let (Ok(class), Some(page)) = (class.parse(), page) else {
            continue;
        };
        if let Ok(summary) = serde_json::from_str(&page) {
            latest.entry(class).or_insert(summary);
        }
    }
    Ok(latest
        .into_iter()
        .map(|(class, summary)| (class.as_str().to_owned(), summary))
        .collect())
}

/// The aggregate bucket a result belongs to: the hour it was *received* in, so that a
/// spooled result that arrives late still lands in a bucket reports have not closed.
pub fn key_of(r: &StoredResult) -> AggregateKey {
    AggregateKey {
        check_id: r.check_id.clone(),
        bucket_start: hour_bucket(r.received_at),
        country: r.country.clone(),
        region: r.region.clone(),
        asn: r.asn,
        connection_class: r.connection_class.clone(),
    }
}

/// Adds accepted results to their aggregate rows (creating the rows if needed), inside
/// the caller's write transaction, as a fold does. Used to place results directly
/// (tests, tools); accepted results reach their cells through [`fold_pending`].
pub fn fold(conn: &mut DbConn, results: &[StoredResult]) -> Result<()> {
    fold_into_cells(conn, results.iter())
}

/// What a batch adds to one cell: the successes' samples of each phase as a list, not
/// a histogram. A histogram of 1 µs to 1 h is 23,552 counters (184 KiB) to allocate,
/// zero and then add counter by counter; six a cell were 10 % of the folder's CPU in
/// `bench ingest --in-process` (`perf`), for a few hundred samples each.
struct CellDelta {
    successes: i64,
    failures: i64,
    samples: [Vec<u64>; 6],
    figures: Figures,
}

/// Merges results into their aggregate cells: the batch's samples recorded into each
/// cell's stored histograms, which are written once.
fn fold_into_cells<'a>(
    conn: &mut DbConn,
    results: impl Iterator<Item = &'a StoredResult>,
) -> Result<()> {
    let mut cells: BTreeMap<AggregateKey, CellDelta> = BTreeMap::new();
    for r in results {
        let cell = cells.entry(key_of(r)).or_insert_with(|| CellDelta {
            successes: 0,
            failures: 0,
            samples: Default::default(),
            figures: Figures::default(),
        });
        if r.error_kind.is_some() {
            cell.failures += 1;
        } else {
            cell.successes += 1;
            for (samples, value) in cell.samples.iter_mut().zip(r.phases_us()) {
                samples.push(value.max(0) as u64);
            }
            for (figure, value) in figures::of_result(r) {
                cell.figures.record(figure, value);
            }
        }
    }
    // In key order, so that two folders create and lock shared cells in the same order.
    let cells: Vec<(AggregateKey, CellDelta)> = cells.into_iter().collect();
    let mut rows: Vec<AggregateRow> = match conn {
        DbConn::Pg(c) => {
            let empty: Vec<AggregateRow> = cells.iter().map(|(key, _)| empty_row(key)).collect();
            lastmile_storage::aggregates::lock_or_create_hours(c, &empty)?
        }
        DbConn::Sqlite(c) => cells
            .iter()
            .map(|(key, _)| sqlite_cell(c, key))
            .collect::<Result<_>>()?,
    };
    let keys_match = rows.len() == cells.len()
        && rows
            .iter()
            .zip(&cells)
            .all(|(row, (key, _))| row.primary_key() == key.primary_key());
    if !keys_match {
        return Err(Error::Internal(format!(
            "{} aggregate cells locked for {} to fold",
            rows.len(),
            cells.len()
        )));
    }
    for (row, (_, delta)) in rows.iter_mut().zip(cells) {
        row.successes += delta.successes;
        row.failures += delta.failures;
        if delta.successes > 0 {
            for (phase, samples) in Phase::ALL.into_iter().zip(&delta.samples) {
                *row.hist_mut(phase) = histogram::record_into_encoded(row.hist(phase), samples)
                    .map_err(Error::Internal)?;
            }
            delta
                .figures
                .merge_into(&mut row.figures)
                .map_err(Error::Internal)?;
        }
    }
    match conn {
        DbConn::Pg(c) => {
            lastmile_storage::aggregates::write_hours(c, &rows)?;
        }
        // One writer, statements in process: a cell at a time costs no round trip.
        DbConn::Sqlite(c) => {
            for row in &rows {
                diesel::update(aggregates::table.find(row.primary_key()))
                    .set(row)
                    .execute(c)?;
            }
        }
    }
    Ok(())
}

/// SQLite: the aggregate row for `key`, created empty if missing (its one writer needs
/// no lock).
fn sqlite_cell(c: &mut diesel::SqliteConnection, key: &AggregateKey) -> Result<AggregateRow> {
    let found = aggregates::table
        .find(key.primary_key())
        .select(AggregateRow::as_select())
        .first(c)
        .optional()?;
    Ok(match found {
        Some(row) => row,
        None => {
            let empty = empty_row(key);
            diesel::insert_into(aggregates::table)
                .values(&empty)
                .execute(c)?;
            empty
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lastmile_protocol::Timings;

    /// A throughput result whose summary adds up: 2 MB over 1 s, 5 idle and 10 loaded
    /// probes.
    fn load() -> ResultSubmission {
        let bytes = 2_000_000;
        ResultSubmission {
            assignment_id: uuid::Uuid::nil(),
            started_at: chrono::Utc::now(),
            measurement: lastmile_protocol::Measurement {
                status: Some(200),
                bytes,
                bytes_decoded: bytes,
                timings_us: Timings {
                    dns: 10,
                    connect: 40_000,
                    tls: 0,
                    ttfb: 45_000,
                    transfer: 1_000_000,
                    total: 1_400_000,
                },
                throughput: Some(lastmile_protocol::ThroughputSummary {
                    connections: 4,
                    requests: 8,
                    bytes,
                    duration_us: 1_000_000,
                    idle_latency_us: vec![40_000; 5],
                    loaded_latency_us: vec![90_000; 10],
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_video_summary_must_fit_its_session() {
        let session = || {
            let mut sub = load();
            sub.measurement.throughput = None;
            sub.measurement.video = Some(lastmile_protocol::VideoSummary {
                playlist_url: "http://x/high/index.m3u8".into(),
                bitrate_bps: Some(30_000_000),
                segments: 6,
                played_ms: 6_000,
                startup_us: 600_000,
                stalls: 1,
                stall_us: 300_000,
            });
            sub
        };
        assert!(validate(&session()).is_ok());
        let refused = |change: fn(&mut lastmile_protocol::VideoSummary)| {
            let mut sub = session();
            change(sub.measurement.video.as_mut().unwrap());
            validate(&sub).unwrap_err().to_string()
        };
        assert!(refused(|v| v.startup_us = 2_000_000).contains("video.startup_us"));
        assert!(refused(|v| v.stall_us = 2_000_000).contains("video.stall_us"));
        assert!(refused(|v| v.stalls = 0).contains("video.stalls"));
        assert!(refused(|v| v.segments = 5_000).contains("video.segments"));
        assert!(refused(|v| v.played_ms = 200_000).contains("video.played_ms"));
        // Played through: no stall, no stall time.
        let mut smooth = session();
        let v = smooth.measurement.video.as_mut().unwrap();
        (v.stalls, v.stall_us) = (0, 0);
        assert!(validate(&smooth).is_ok());
    }

    #[test]
    fn a_throughput_summary_must_add_up_with_its_measurement() {
        assert!(validate(&load()).is_ok());
        let refused = |change: fn(&mut lastmile_protocol::Measurement)| {
            let mut sub = load();
            change(&mut sub.measurement);
            validate(&sub).unwrap_err().to_string()
        };
        fn summary(
            m: &mut lastmile_protocol::Measurement,
        ) -> &mut lastmile_protocol::ThroughputSummary {
            m.throughput.as_mut().unwrap()
        }
        assert!(refused(|m| summary(m).bytes += 1).contains("throughput.bytes"));
        assert!(refused(|m| summary(m).duration_us -= 1).contains("throughput.duration_us"));
        assert!(refused(|m| summary(m).connections = 0).contains("throughput.connections"));
        assert!(refused(|m| summary(m).connections = 17).contains("throughput.connections"));
        assert!(refused(|m| summary(m).idle_latency_us.push(1)).contains("idle_latency_us"));
        assert!(
            refused(|m| summary(m).loaded_latency_us = vec![1; 302]).contains("loaded_latency_us")
        );
        assert!(refused(|m| summary(m).loaded_latency_us[3] = 0).contains("latency probe"));
        assert!(refused(|m| summary(m).loaded_latency_us[3] = 2_000_000).contains("latency probe"));
        // Probes that could not have fitted in the measurement's time, one after another.
        assert!(
            refused(|m| summary(m).idle_latency_us = vec![1_300_000; 5]).contains("idle probes")
        );
        assert!(
            refused(|m| summary(m).idle_latency_us = vec![90_000; 5]).contains("before the load")
        );
        assert!(
            refused(|m| summary(m).loaded_latency_us = vec![150_000; 10])
                .contains("one after another")
        );
        assert!(refused(|m| summary(m).loaded_latency_us = vec![1_000; 16]).contains("at most 15"));
        assert!(refused(|m| summary(m).requests = 0).contains("throughput.requests is 0"));
        assert!(refused(|m| {
            m.page = Some(lastmile_protocol::PageSummary {
                total_us: m.timings_us.total,
                bytes: m.bytes,
                bytes_decoded: m.bytes_decoded,
                ..Default::default()
            })
        })
        .contains("not both"));
    }

    #[test]
    fn a_page_summary_must_add_up_with_its_measurement() {
        let page = || {
            let mut sub = load();
            let m = &mut sub.measurement;
            m.throughput = None;
            let mut by_type = lastmile_protocol::ResourceCounts::default();
            by_type.add(lastmile_protocol::ResourceType::Image);
            by_type.add(lastmile_protocol::ResourceType::Stylesheet);
            m.page = Some(lastmile_protocol::PageSummary {
                total_us: m.timings_us.total,
                document_timings_us: Timings {
                    total: 300_000,
                    ..m.timings_us
                },
                resources: 2,
                bytes: m.bytes,
                bytes_decoded: m.bytes_decoded,
                by_type,
                ..Default::default()
            });
            sub
        };
        assert!(validate(&page()).is_ok());
        let refused = |change: fn(&mut lastmile_protocol::Measurement)| {
            let mut sub = page();
            change(&mut sub.measurement);
            validate(&sub).unwrap_err().to_string()
        };
        // A measurement that hides the page's bytes from the line rules.
        assert!(refused(|m| m.bytes = 0).contains("page.bytes"));
        assert!(refused(|m| m.page.as_mut().unwrap().bytes_decoded += 1).contains("page.bytes"));
        assert!(refused(|m| m.page.as_mut().unwrap().resources = 3).contains("by_type"));
        assert!(refused(|m| m.page.as_mut().unwrap().resources = u32::MAX).contains("at most"));
        assert!(
            refused(|m| m.page.as_mut().unwrap().document_timings_us.total = 2_000_000)
                .contains("within the page total")
        );
    }

    #[test]
    fn a_udp_summary_must_fit_its_stream() {
        let stream = || {
            let mut sub = load();
            let m = &mut sub.measurement;
            (m.throughput, m.status) = (None, None);
            m.bytes = 4 * 172;
            m.udp = Some(lastmile_protocol::UdpSummary {
                sent: 5,
                received: 4,
                lost_up: 1,
                rtt_us: vec![41_000, 43_000, 40_000, 42_000],
            });
            sub
        };
        assert!(
            validate(&stream()).is_ok(),
            "a stream needs no status: its summary says what came back"
        );
        let refused = |change: fn(&mut lastmile_protocol::Measurement)| {
            let mut sub = stream();
            change(&mut sub.measurement);
            validate(&sub).unwrap_err().to_string()
        };
        fn summary(m: &mut lastmile_protocol::Measurement) -> &mut lastmile_protocol::UdpSummary {
            m.udp.as_mut().unwrap()
        }
        assert!(refused(|m| summary(m).received = 6).contains("udp.received"));
        assert!(refused(|m| summary(m).rtt_us.push(40_000)).contains("udp.rtt_us"));
        assert!(refused(|m| summary(m).lost_up = 2).contains("udp.lost_up"));
        assert!(refused(|m| summary(m).sent = 3_001).contains("udp.sent"));
        assert!(refused(|m| summary(m).rtt_us[1] = 0).contains("round trip"));
        assert!(refused(|m| summary(m).rtt_us[1] = 2_000_000).contains("round trip"));
        assert!(refused(|m| m.bytes = 4 * 1_201).contains("echoes"));
        assert!(refused(|m| m.bytes = 4 * 172 + 1).contains("as long as its probe"));
        assert!(refused(|m| m.bytes = 4 * 39).contains("as long as its probe"));
        assert!(refused(|m| {
            *summary(m) = lastmile_protocol::UdpSummary::default();
            m.bytes = 0;
        })
        .contains("udp.sent is 0"));
        assert!(refused(|m| m.status = Some(200)).contains("no HTTP status"));
    }

    fn hop(i: usize, url: String) -> Hop {
        Hop {
            url: url.clone(),
            status: 301,
            location: format!("{url}/{i}"),
            remote_addr: Some("192.0.2.1".into()),
            timings_us: Timings {
                total: i as u64,
                ..Timings::default()
            },
        }
    }

    #[test]
    fn stored_hops_keep_the_first_twenty_with_urls_cut_to_2048_characters() {
        let long = format!("https://shop.example/{}", "é".repeat(5000));
        let hops: Vec<Hop> = (0..50).map(|i| hop(i, long.clone())).collect();
        let stored = bound_hops(&hops);
        assert_eq!(stored.len(), MAX_STORED_HOPS);
        assert_eq!(MAX_STORED_HOPS, 20);
        for (i, h) in stored.iter().enumerate() {
            assert_eq!(
                h.timings_us.total, i as u64,
                "the chain's first hops, in order"
            );
            assert_eq!(h.url.chars().count(), MAX_HOP_URL_CHARS);
            assert_eq!(h.location.chars().count(), MAX_HOP_URL_CHARS);
            assert!(long.starts_with(&h.url));
            assert_eq!(h.status, 301);
            assert_eq!(h.remote_addr.as_deref(), Some("192.0.2.1"));
        }
    }

    #[test]
    fn ordinary_hops_are_stored_unchanged() {
        let hops = vec![hop(0, "http://shop.example/moved".into())];
        assert_eq!(bound_hops(&hops), hops);
    }
}
