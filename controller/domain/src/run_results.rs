//! The individual results of one run, as the check's owner reads them.
//!
//! Reports answer "how fast is my site" from the aggregates; this answers "what did
//! each agent see this time": every stored result of the run with its phases, address,
//! protocol, the redirect hops it followed and, for a page check, the page summary.
//! It is a read of raw results, so it only works while they are kept (raw results age
//! out; aggregates stay). A run holds at most one result per assignment, and a run has
//! at most `agents_per_run` (bounded by `checks`) slots plus the re-offers of expired
//! ones, so the listing is bounded without paging.
//!
//! **Architecture Invariant:** an owner sees only the results of their own check's
//! runs. Access is decided by [`scheduling::get_run`], so a foreign or unknown check
//! or run answers with exactly the 404 that reading the run itself gives.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use lastmile_protocol::{Figure, Hop, PageSummary, Timings};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::clock::to_datetime;
use crate::error::Result;
use crate::ingest::StoredResult;
use crate::scheduling::{self, RunView};
use lastmile_storage::schema::{result_flags, results};
use lastmile_storage::DbConn;

/// Why a measurement failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResultError {
    /// The stable error code the agent reported (`connect_refused`, `http_status`, ...;
    /// the protocol's `ErrorKind`).
    pub kind: String,
    /// The agent's detail (at most 500 characters are kept).
    pub message: String,
}

/// One agent's result in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultView {
    /// The assignment the result answers (its idempotency key).
    pub assignment_id: Uuid,
    pub agent_id: Uuid,
    /// When the agent started measuring (its clock).
    pub started_at: DateTime<Utc>,
    /// When the controller received the result.
    pub received_at: DateTime<Utc>,
    /// Arrived after its lease ran out: kept, but not counted (the slot was re-offered).
    pub late: bool,
    /// Flagged by verification: kept, left out of reports and not charged.
    pub flagged: bool,
    /// The verification rules that flagged it (empty when not flagged).
    pub flag_rules: Vec<String>,
    /// HTTP status of the final response; `null` when none arrived.
    pub status: Option<u16>,
    /// Why it failed; `null` on success.
    pub error: Option<ResultError>,
    /// Phase timings in microseconds, summed over the redirect hops (see the protocol's
    /// `Measurement`); for a page, `total` is the page total.
    pub timings_us: Timings,
    /// Body bytes over the wire (the whole page for a page check).
    pub bytes: u64,
    /// Body bytes after decoding `Content-Encoding`.
    pub bytes_decoded: u64,
    /// The figures other than phases the result gives its report, each in its unit
    /// (`goodput`, kbit/s, for an http body of at least 64 KiB); empty when none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<Figure, u64>,
    /// The IP address the final connection went to.
    pub remote_addr: Option<String>,
    /// 4 or 6: the address family of `remote_addr`.
    pub ip_version: Option<u8>,
    /// The HTTP version of the final response (`"1.1"`, `"2"`).
    pub http_version: Option<String>,
    /// The redirects followed before the final response, in order (at most 20 are
    /// kept, URLs cut to 2048 characters; results stored before hops were kept have
    /// none listed).
    pub redirects: Vec<Hop>,
    /// How many redirects the agent reported; more than `redirects` lists when the
    /// list was cut or the result predates stored hops.
    pub redirect_count: u32,
    /// Time spent before the final request started, µs (curl's `time_redirect`).
    pub redirect_us: u64,
    /// The agent's measured (else declared) connection class when the result arrived.
    pub connection_class: String,
    /// The agent's country (ISO code) from its address; `null` when unknown.
    pub country: Option<String>,
    /// The agent's region from its address; `null` when unknown.
    pub region: Option<String>,
    /// The agent's autonomous system from its address; `null` when unknown.
    pub asn: Option<u32>,
    /// A page check's summary; `null` for an http check.
    pub page: Option<PageSummary>,
}

/// The results of run `run_id` of the owner's check `check_id`, oldest start first.
/// Another owner's check or run, an unknown one, or a run of another check: the
/// same not-found error as [`scheduling::get_run`].
pub fn list(
    conn: &mut DbConn,
    owner_id: &str,
    check_id: &str,
    run_id: &str,
) -> Result<Vec<ResultView>> {
    let run = scheduling::get_run(conn, owner_id, check_id, run_id)?;
    of_run(conn, &run)
}

/// The results of `run`, oldest start first. A [`RunView`] is only had from
/// [`scheduling::get_run`] or [`scheduling::list_runs`], which check the owner, so a
/// caller that already read the run (the dashboard, for its heading) does not read it
/// again.
pub fn of_run(conn: &mut DbConn, run: &RunView) -> Result<Vec<ResultView>> {
    let (check_id, run_id) = (&run.check_id.to_string(), &run.id.to_string());
    let stored: Vec<(StoredResult, bool)> = results::table
        .filter(results::run_id.eq(run_id))
        .filter(results::check_id.eq(check_id))
        // Received after the run was made: PostgreSQL reads those days' partitions only.
        .filter(results::received_at.ge(crate::clock::to_us(run.created_at)))
        .order((results::started_at.asc(), results::assignment_id.asc()))
        .select((StoredResult::as_select(), results::flagged))
        .load(conn)?;
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if stored.iter().any(|(_, flagged)| *flagged) {
        let flags: Vec<(String, String)> = result_flags::table
            .filter(result_flags::run_id.eq(run_id))
            .filter(result_flags::check_id.eq(check_id))
            .order((result_flags::assignment_id, result_flags::rule))
            .select((result_flags::assignment_id, result_flags::rule))
            .load(conn)?;
        for (assignment, rule) in flags {
            rules.entry(assignment).or_default().push(rule);
        }
    }
    Ok(stored
        .into_iter()
        .map(|(r, flagged)| {
            let flag_rules = if flagged {
                rules.remove(&r.assignment_id).unwrap_or_default()
            } else {
                Vec::new()
            };
            view(r, flagged, flag_rules)
        })
        .collect())
}

pub(crate) fn view(r: StoredResult, flagged: bool, flag_rules: Vec<String>) -> ResultView {
    let us = |v: i64| u64::try_from(v).unwrap_or(0);
    let figures = crate::figures::of_result(&r).into_iter().collect();
    let known = |s: String| (!s.is_empty()).then_some(s);
    // JSON this controller wrote; a row it cannot read back shows without the detail
    // rather than failing the whole listing.
    let redirects = r
        .redirect_hops
        .as_deref()
        .and_then(|json| parse(&r.assignment_id, "redirect_hops", json))
        .unwrap_or_default();
    let page = r
        .page
        .as_deref()
        .and_then(|json| parse(&r.assignment_id, "page", json));
    ResultView {
        assignment_id: r.assignment_id.parse().unwrap_or_default(),
        agent_id: r.agent_id.parse().unwrap_or_default(),
        started_at: to_datetime(r.started_at),
        received_at: to_datetime(r.received_at),
        late: r.late,
        flagged,
        flag_rules,
        status: r.status.and_then(|s| u16::try_from(s).ok()),
        error: r.error_kind.map(|kind| ResultError {
            kind,
            message: r.error_message.unwrap_or_default(),
        }),
        timings_us: Timings {
            dns: us(r.dns_us),
            connect: us(r.connect_us),
            tls: us(r.tls_us),
            ttfb: us(r.ttfb_us),
            transfer: us(r.transfer_us),
            total: us(r.total_us),
        },
        bytes: us(r.bytes),
        bytes_decoded: us(r.bytes_decoded),
        figures,
        remote_addr: r.remote_addr,
        ip_version: r.ip_version.and_then(|v| u8::try_from(v).ok()),
        http_version: r.http_version,
        redirects,
        redirect_count: u32::try_from(r.redirects).unwrap_or(0),
        redirect_us: us(r.redirect_us),
        connection_class: r.connection_class,
        country: known(r.country),
        region: known(r.region),
        asn: u32::try_from(r.asn).ok().filter(|&asn| asn != 0),
        page,
    }
}

fn parse<T: serde::de::DeserializeOwned>(assignment: &str, column: &str, json: &str) -> Option<T> {
    match serde_json::from_str(json) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(%assignment, column, error = %e, "stored result JSON unreadable");
            None
        }
    }
}
