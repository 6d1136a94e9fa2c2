//! Path traces: when an incident opens, the agents that saw it trace the path to the
//! check's target, and the incident shows the hops and where latency or loss jumps.
//!
//! [`request_for_incident`] runs in the transaction that opens the incident: it picks
//! up to [`TRACES_PER_INCIDENT`] agents that measured the check in the rule's window
//! (those that failed first, then the slowest), among those whose heartbeat says they
//! trace, and only for a site whose owner proved control of it. Each gets a pending
//! trace, which the work feed ([`offers`]) wakes it for and its next lease hands out
//! ([`lease`], a [`TraceTask`] beside its measurement tasks). The agent probes with
//! rising TTL through its own address guard and reports ([`record`]); a trace nobody
//! reported within [`TRACE_TTL_US`] expires ([`expire`]). [`find_jumps`] reads a trace
//! the way a person reads traceroute: a jump counts only when it lasts to the end of
//! the path, since a router that answers slowly or not at all for itself (ICMP is its
//! lowest priority) while later hops are fine is not where the time is lost.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use lastmile_protocol::trace::{
    self, TraceHop, TraceReport, TraceTask, MAX_PROBES_PER_HOP, MAX_TRACE_HOPS,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::clock::{to_datetime, Micros};
use crate::error::{Error, Result};
use lastmile_storage::checks::Check;
use lastmile_storage::schema::{agents, path_traces, sites};
use lastmile_storage::{write_tx, DbConn};

/// Agents asked to trace when an incident opens.
pub const TRACES_PER_INCIDENT: i64 = 3;

/// A trace not reported this long after it was asked for expires.
pub const TRACE_TTL_US: Micros = 10 * 60 * 1_000_000;

/// How long each probe's answer is waited for.
const PROBE_TIMEOUT_MS: u32 = 1_000;

/// Round trips must rise at least this much at a hop to be a jump (and by half or
/// more: see [`find_jumps`]).
const JUMP_MIN_US: u64 = 20_000;

/// Loss at or above this share of probes is loss, below it noise.
const LOSS_PERCENT: f64 = 30.0;

/// A trace in one of `states`, written into the statement so that PostgreSQL's generic
/// plan can use the partial indexes of pending and open traces (the work feed looks
/// every second, the expiry every alerting pass, over a table that keeps every trace).
fn in_state(states: &[&'static str]) -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    lastmile_storage::one_of_literals("\"path_traces\".\"state\"", states)
}

mod state {
    pub const PENDING: &str = "pending";
    pub const LEASED: &str = "leased";
    pub const DONE: &str = "done";
    pub const EXPIRED: &str = "expired";
}

#[derive(QueryableByName)]
struct Witness {
    #[diesel(sql_type = Text)]
    agent_id: String,
}

/// Asks up to [`TRACES_PER_INCIDENT`] agents that measured `check` since `from` to
/// trace the path to its target, in the caller's transaction. Returns how many were
/// asked: none when the site is not (or no longer) verified, or no such agent traces.
pub fn request_for_incident(
    conn: &mut DbConn,
    incident_id: &str,
    check: &Check,
    from: Micros,
    now: Micros,
) -> Result<usize> {
    let verified: Option<(Option<i64>, Option<i64>)> = sites::table
        .find(&check.site_id)
        .select((sites::verified_at, sites::deleted_at))
        .first(conn)
        .optional()?;
    if !matches!(verified, Some((Some(_), None))) {
        return Ok(0);
    }
    // The results of the window are in the recent days' partitions (`received_at`).
    let witnesses: Vec<Witness> = diesel::sql_query(
        "SELECT r.agent_id AS agent_id, \
                MAX(CASE WHEN r.error_kind IS NULL THEN 0 ELSE 1 END) AS failed, \
                MAX(r.total_us) AS slowest \
         FROM results r JOIN agents a ON a.id = r.agent_id \
         WHERE r.check_id = $1 AND r.received_at >= $2 AND NOT r.late \
           AND a.path_trace AND a.revoked_at IS NULL \
         GROUP BY r.agent_id ORDER BY failed DESC, slowest DESC, r.agent_id LIMIT $3",
    )
    .bind::<Text, _>(&check.id)
    .bind::<BigInt, _>(from)
    .bind::<BigInt, _>(TRACES_PER_INCIDENT)
    .load(conn)?;
    for w in &witnesses {
        diesel::insert_into(path_traces::table)
            .values((
                path_traces::id.eq(Uuid::new_v4().to_string()),
                path_traces::incident_id.eq(incident_id),
                path_traces::check_id.eq(&check.id),
                path_traces::agent_id.eq(&w.agent_id),
                path_traces::url.eq(&check.url),
                path_traces::state.eq(state::PENDING),
                path_traces::created_at.eq(now),
                path_traces::expires_at.eq(now + TRACE_TTL_US),
            ))
            .execute(conn)?;
    }
    Ok(witnesses.len())
}

/// Agents with a trace asked for at or after `since`, with when (the work feed wakes
/// each once per trace, as for assignments).
pub fn offers(conn: &mut DbConn, since: Micros) -> Result<Vec<(String, Micros)>> {
    Ok(path_traces::table
        .filter(in_state(&[state::PENDING]))
        .filter(path_traces::created_at.ge(since))
        .select((path_traces::agent_id, path_traces::created_at))
        .load(conn)?)
}

/// Hands the agent its pending traces (at most two a lease), marked leased.
pub fn lease(conn: &mut DbConn, agent_id: &str, now: Micros) -> Result<Vec<TraceTask>> {
    write_tx(conn, |c| {
        let pending = path_traces::table
            .filter(path_traces::agent_id.eq(agent_id))
            .filter(in_state(&[state::PENDING]))
            .filter(path_traces::expires_at.gt(now))
            .order(path_traces::created_at)
            .limit(2)
            .select((path_traces::id, path_traces::url, path_traces::expires_at));
        let rows: Vec<(String, String, i64)> = match c {
            DbConn::Pg(pg) => pending.for_update().skip_locked().load(pg)?,
            DbConn::Sqlite(lite) => pending.load(lite)?,
        };
        let ids: Vec<&String> = rows.iter().map(|r| &r.0).collect();
        diesel::update(path_traces::table.filter(path_traces::id.eq_any(ids)))
            .set((
                path_traces::state.eq(state::LEASED),
                path_traces::leased_at.eq(now),
            ))
            .execute(c)?;
        Ok(rows
            .into_iter()
            .map(|(id, url, expires)| TraceTask {
                trace_id: Uuid::parse_str(&id).unwrap_or_default(),
                url,
                max_hops: MAX_TRACE_HOPS,
                probes_per_hop: MAX_PROBES_PER_HOP,
                probe_timeout_ms: PROBE_TIMEOUT_MS,
                expires_at: to_datetime(expires),
            })
            .collect())
    })
}

/// Stores an agent's report of a trace it leased. The same report again is accepted
/// and changes nothing; a trace of another agent is not found; one past its expiry or
/// never leased is a conflict; a report that cannot be a trace is invalid.
pub fn record(conn: &mut DbConn, agent_id: &str, report: &TraceReport, now: Micros) -> Result<()> {
    trace::check_report(report, MAX_TRACE_HOPS, MAX_PROBES_PER_HOP)
        .map_err(|why| Error::invalid("invalid_trace", why))?;
    let id = report.trace_id.to_string();
    write_tx(conn, |c| {
        let found: Option<(String, String, i64)> = path_traces::table
            .find(&id)
            .filter(path_traces::agent_id.eq(agent_id))
            .select((
                path_traces::state,
                path_traces::agent_id,
                path_traces::expires_at,
            ))
            .first(c)
            .optional()?;
        let Some((current, _, expires_at)) = found else {
            return Err(Error::NotFound {
                what: "path trace",
                code: "trace_not_found",
            });
        };
        match current.as_str() {
            state::DONE => return Ok(()),
            state::LEASED if now <= expires_at => {}
            state::PENDING => {
                return Err(Error::conflict(
                    "trace_not_leased",
                    "this trace was not handed to the agent yet: lease it first",
                ))
            }
            _ => {
                return Err(Error::conflict(
                    "trace_expired",
                    "the trace expired before its report arrived",
                ))
            }
        }
        let hops = serde_json::to_string(&report.hops)
            .map_err(|e| Error::Internal(format!("encoding hops: {e}")))?;
        diesel::update(path_traces::table.find(&id))
            .set((
                path_traces::state.eq(state::DONE),
                path_traces::finished_at.eq(now),
                path_traces::target_addr.eq(&report.target_addr),
                path_traces::reached.eq(report.reached),
                path_traces::hops.eq(hops),
                path_traces::error_kind.eq(report.error.as_ref().map(|e| e.kind.as_str())),
                path_traces::error_message.eq(report
                    .error
                    .as_ref()
                    .map(|e| e.message.chars().take(500).collect::<String>())),
            ))
            .execute(c)?;
        Ok(())
    })
}

/// Expires the traces asked for or leased whose time ran out; returns how many.
pub fn expire(conn: &mut DbConn, now: Micros) -> Result<usize> {
    Ok(diesel::update(
        path_traces::table
            .filter(in_state(&[state::PENDING, state::LEASED]))
            .filter(path_traces::expires_at.lt(now)),
    )
    .set(path_traces::state.eq(state::EXPIRED))
    .execute(conn)?)
}

/// One hop of a trace as shown: who answered, loss, round trips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HopView {
    pub ttl: u8,
    /// The address that answered; `null` for a hop that stayed silent.
    pub addr: Option<String>,
    pub sent: u8,
    pub received: u8,
    pub loss_percent: f64,
    pub rtt_min_us: Option<u64>,
    pub rtt_median_us: Option<u64>,
    pub rtt_max_us: Option<u64>,
}

impl HopView {
    fn of(hop: &TraceHop) -> HopView {
        let mut rtts = hop.rtts_us.clone();
        rtts.sort_unstable();
        let received = rtts.len().min(usize::from(u8::MAX)) as u8;
        HopView {
            ttl: hop.ttl,
            addr: hop.addr.clone(),
            sent: hop.sent,
            received,
            loss_percent: if hop.sent == 0 {
                0.0
            } else {
                f64::from(hop.sent.saturating_sub(received)) / f64::from(hop.sent) * 100.0
            },
            rtt_min_us: rtts.first().copied(),
            rtt_median_us: rtts.get(rtts.len() / 2).copied(),
            rtt_max_us: rtts.last().copied(),
        }
    }
}

/// Where on the path things went wrong.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Jumps {
    /// The hop from which round trips are markedly longer, to the end of the path.
    pub latency_ttl: Option<u8>,
    /// The hop from which probes are lost, to the end of the path.
    pub loss_ttl: Option<u8>,
    /// What the trace shows, in words.
    pub finding: String,
}

/// The agent that traced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TracingAgent {
    pub id: Uuid,
    pub name: String,
    pub country: Option<String>,
    pub asn: Option<i64>,
    pub connection_class: Option<String>,
}

/// A path trace as the API and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PathTraceView {
    pub id: Uuid,
    pub agent: TracingAgent,
    /// `pending`, `leased`, `done` or `expired`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub target_addr: Option<String>,
    pub reached: Option<bool>,
    pub hops: Vec<HopView>,
    pub jumps: Jumps,
    /// Why the agent could not trace, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

type TraceRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<bool>,
    Option<String>,
    Option<String>,
    String,
);

/// The traces of these incidents, by incident id, oldest first.
pub fn of_incidents(
    conn: &mut DbConn,
    incident_ids: &[String],
) -> Result<HashMap<String, Vec<PathTraceView>>> {
    let rows: Vec<(TraceRow, lastmile_storage::agents::Agent)> = path_traces::table
        .inner_join(agents::table)
        .filter(path_traces::incident_id.eq_any(incident_ids))
        .order((path_traces::created_at, path_traces::id))
        .select((
            (
                path_traces::id,
                path_traces::state,
                path_traces::created_at,
                path_traces::finished_at,
                path_traces::target_addr,
                path_traces::reached,
                path_traces::hops,
                path_traces::error_message,
                path_traces::incident_id,
            ),
            lastmile_storage::agents::Agent::as_select(),
        ))
        .load(conn)?;
    let mut out: HashMap<String, Vec<PathTraceView>> = HashMap::new();
    for (row, agent) in rows {
        let (id, state, created, finished, target, reached, hops, error, incident) = row;
        let hops: Vec<TraceHop> = hops
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default();
        let jumps = find_jumps(&hops, reached.unwrap_or(false));
        out.entry(incident).or_default().push(PathTraceView {
            id: Uuid::parse_str(&id).unwrap_or_default(),
            agent: TracingAgent {
                id: Uuid::parse_str(&agent.id).unwrap_or_default(),
                name: agent.name.clone(),
                country: agent.country.clone(),
                asn: agent.asn,
                connection_class: agent.connection_class().map(|c| c.as_str().to_owned()),
            },
            state,
            created_at: to_datetime(created),
            finished_at: finished.map(to_datetime),
            target_addr: target,
            reached,
            hops: hops.iter().map(HopView::of).collect(),
            jumps,
            error,
        });
    }
    Ok(out)
}

/// Reads a trace: the hop where latency jumps and the hop where loss starts, each only
/// when it lasts to the end of the path.
///
/// Latency: the hop where the floor of median round trips from there to the end (the
/// least median of it and every later hop) rises most over the floor before it, by at
/// least [`JUMP_MIN_US`] and by half or more. Loss: the
/// first hop losing [`LOSS_PERCENT`] or more of its probes (a silent hop loses all) after
/// one that did not, when every later hop loses as much; a path that goes silent to the
/// end without reaching the target is loss from its first silent hop.
pub fn find_jumps(hops: &[TraceHop], reached: bool) -> Jumps {
    let views: Vec<HopView> = hops.iter().map(HopView::of).collect();
    let lossy = |h: &HopView| h.sent > 0 && h.loss_percent >= LOSS_PERCENT;

    let mut loss_ttl = None;
    for (i, hop) in views.iter().enumerate() {
        let before_fine = i == 0 || !lossy(&views[i - 1]);
        if lossy(hop) && before_fine && views[i..].iter().all(lossy) {
            loss_ttl = Some(hop.ttl);
            break;
        }
    }
    // Silent hops at the end of a trace that reached its target are routers that do not
    // answer for themselves, not loss (the target did answer).
    if reached {
        if let Some(ttl) = loss_ttl {
            let tail_answered = views
                .iter()
                .filter(|h| h.ttl >= ttl)
                .any(|h| h.received > 0);
            if !tail_answered {
                loss_ttl = None;
            }
        }
    }

    // The floor from each answering hop on: the least median round trip of it and every
    // hop after it. It only rises along the path, and it rises where a delay starts that
    // every later hop pays too; a router slow to answer for itself does not raise it.
    let mut latency: Option<(u8, u64)> = None;
    let mut floor_before = 0u64;
    for (i, hop) in views.iter().enumerate() {
        if hop.rtt_median_us.is_none() {
            continue;
        }
        let floor = views[i..]
            .iter()
            .filter_map(|h| h.rtt_median_us)
            .min()
            .unwrap_or(0);
        let rise = floor.saturating_sub(floor_before);
        if rise >= JUMP_MIN_US && rise >= floor_before / 2 && latency.is_none_or(|(_, r)| rise > r)
        {
            latency = Some((hop.ttl, rise));
        }
        floor_before = floor;
    }

    let answered = |ttl: u8| {
        views
            .iter()
            .find(|h| h.ttl == ttl)
            .and_then(|h| h.addr.clone())
            .unwrap_or_else(|| "no answer".into())
    };
    let mut words = Vec::new();
    if let Some((ttl, rise)) = latency {
        words.push(format!(
            "Round trips rise by {} ms at hop {ttl} ({}) and stay up to the end",
            (rise + 500) / 1000,
            answered(ttl)
        ));
    }
    if let Some(ttl) = loss_ttl {
        let hop = &views[usize::from(ttl).saturating_sub(1).min(views.len() - 1)];
        if hop.received == 0
            && views[usize::from(ttl) - 1..]
                .iter()
                .all(|h| h.received == 0)
        {
            words.push(format!("Nothing answers from hop {ttl} on"));
        } else {
            words.push(format!(
                "Probes are lost from hop {ttl} ({}) on: {:.0} % there",
                answered(ttl),
                hop.loss_percent
            ));
        }
    }
    if words.is_empty() {
        words.push(if reached {
            "No hop stands out: the target answered with no jump in latency or loss on the way"
                .to_owned()
        } else if views.is_empty() {
            "No hop was probed".to_owned()
        } else {
            "The target did not answer; no hop stands out on the way".to_owned()
        });
    }
    Jumps {
        latency_ttl: latency.map(|(ttl, _)| ttl),
        loss_ttl,
        finding: words.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ttl: u8, addr: &str, rtts_ms: &[u64]) -> TraceHop {
        TraceHop {
            ttl,
            addr: (!rtts_ms.is_empty()).then(|| addr.to_owned()),
            sent: 3,
            rtts_us: rtts_ms.iter().map(|ms| ms * 1000).collect(),
        }
    }

    #[test]
    fn a_lasting_rise_in_round_trips_is_the_latency_jump() {
        let hops = [
            hop(1, "10.0.0.1", &[1, 1, 2]),
            hop(2, "10.0.1.1", &[5, 6, 5]),
            hop(3, "10.0.2.1", &[85, 90, 88]),
            hop(4, "10.0.3.1", &[86, 91, 89]),
            hop(5, "192.0.2.1", &[88, 90, 87]),
        ];
        let j = find_jumps(&hops, true);
        assert_eq!(j.latency_ttl, Some(3));
        assert_eq!(j.loss_ttl, None);
        assert!(j.finding.contains("hop 3 (10.0.2.1)"), "{}", j.finding);
    }

    #[test]
    fn a_slow_router_whose_later_hops_are_fast_is_not_a_jump() {
        // Hop 2 answers slowly for itself (ICMP is its lowest priority), the path on is fine.
        let hops = [
            hop(1, "10.0.0.1", &[1, 1, 1]),
            hop(2, "10.0.1.1", &[150, 160, 140]),
            hop(3, "10.0.2.1", &[6, 7, 6]),
            hop(4, "192.0.2.1", &[7, 7, 8]),
        ];
        let j = find_jumps(&hops, true);
        assert_eq!(j.latency_ttl, None);
        assert!(j.finding.starts_with("No hop stands out"), "{}", j.finding);
    }

    #[test]
    fn loss_counts_when_it_lasts_to_the_end() {
        let lossy_end = [
            hop(1, "10.0.0.1", &[1, 1, 1]),
            hop(2, "10.0.1.1", &[2, 2, 2]),
            hop(3, "192.0.2.1", &[3]),
        ];
        let j = find_jumps(&lossy_end, true);
        assert_eq!(j.loss_ttl, Some(3));
        assert!(j.finding.contains("67 %"), "{}", j.finding);

        // A silent router in the middle is not loss: the hops after it answer.
        let silent_middle = [
            hop(1, "10.0.0.1", &[1, 1, 1]),
            hop(2, "", &[]),
            hop(3, "192.0.2.1", &[3, 3, 3]),
        ];
        assert_eq!(find_jumps(&silent_middle, true).loss_ttl, None);

        // A path that goes dark and never reaches the target: loss from the first silent hop.
        let dark = [
            hop(1, "10.0.0.1", &[1, 1, 1]),
            hop(2, "10.0.1.1", &[2, 2, 2]),
            hop(3, "", &[]),
            hop(4, "", &[]),
        ];
        let j = find_jumps(&dark, false);
        assert_eq!(j.loss_ttl, Some(3));
        assert!(
            j.finding.contains("Nothing answers from hop 3"),
            "{}",
            j.finding
        );

        // The same silent tail after the target answered (at a TTL past it) is no loss.
        assert_eq!(find_jumps(&dark, true).loss_ttl, None);
    }
}
