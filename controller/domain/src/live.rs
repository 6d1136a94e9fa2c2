//! A check's live feed: its results as they are stored and its incidents as they open,
//! change and resolve, for `GET /api/v1/checks/{id}/events` (Server-Sent Events).
//!
//! The feed reads the database (results by the time they were received, incidents by
//! the time they last changed) from a [`Cursor`], so it sees what every replica stored
//! and a client that reconnects with the last event id it got (`Last-Event-ID`, which
//! browsers' `EventSource` sends by itself) misses nothing and gets nothing twice. Each
//! poll reads at most [`MAX_PER_POLL`] results; a follower polls about once a second, an
//! indexed read of the check's newest results, so followers cost the database in
//! proportion to their number, which suits a dashboard or a CI job, not thousands of
//! followers of one check.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::alerts::RuleKind;
use crate::clock::Micros;
use crate::error::Result;
use crate::incidents::{Incident, IncidentView};
use crate::ingest::StoredResult;
use crate::run_results::ResultView;
use lastmile_storage::schema::{alert_rules, incidents, results};
use lastmile_storage::DbConn;

/// Results one poll reads at most (the next poll goes on from there).
pub const MAX_PER_POLL: i64 = 200;

/// Where a follower is: the last result seen (received time, assignment id) and the
/// last incident change seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub result_at: Micros,
    pub result_id: String,
    pub incident_at: Micros,
}

impl Cursor {
    /// From now on: nothing stored before `now`.
    pub fn at(now: Micros) -> Cursor {
        Cursor {
            result_at: now,
            result_id: String::new(),
            incident_at: now,
        }
    }

    /// The event id that resumes after this point: `<µs>.<assignment id>.<µs>`.
    pub fn event_id(&self) -> String {
        format!("{}.{}.{}", self.result_at, self.result_id, self.incident_at)
    }

    /// Reads an event id made by [`Cursor::event_id`]; `None` for anything else.
    pub fn parse(id: &str) -> Option<Cursor> {
        let mut parts = id.trim().splitn(3, '.');
        let result_at = parts.next()?.parse().ok()?;
        let result_id = parts.next()?.to_owned();
        let incident_at = parts.next()?.parse().ok()?;
        if !result_id.is_empty() && Uuid::parse_str(&result_id).is_err() {
            return None;
        }
        Some(Cursor {
            result_at,
            result_id,
            incident_at,
        })
    }
}

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A result was stored (`result.late` or `result.flagged`: kept, not counted).
    Result {
        run_id: Uuid,
        result: Box<ResultView>,
    },
    /// An incident opened, changed or resolved (its `state` says which).
    Incident { incident: IncidentView },
}

impl LiveEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::Result { .. } => "result",
            LiveEvent::Incident { .. } => "incident",
        }
    }
}

/// The events after `cursor`, each with the cursor just after it (its event id).
pub fn since(
    conn: &mut DbConn,
    check_id: &str,
    cursor: &Cursor,
) -> Result<Vec<(LiveEvent, Cursor)>> {
    let stored: Vec<(StoredResult, bool)> = results::table
        .filter(results::check_id.eq(check_id))
        .filter(results::received_at.ge(cursor.result_at))
        .order((results::received_at.asc(), results::assignment_id.asc()))
        .limit(MAX_PER_POLL)
        .select((StoredResult::as_select(), results::flagged))
        .load(conn)?;
    let mut out = Vec::new();
    let mut at = cursor.clone();
    for (r, flagged) in stored {
        if (r.received_at, r.assignment_id.as_str())
            <= (cursor.result_at, cursor.result_id.as_str())
        {
            continue;
        }
        at.result_at = r.received_at;
        at.result_id = r.assignment_id.clone();
        let run_id = r.run_id.parse().unwrap_or_default();
        let result = Box::new(crate::run_results::view(r, flagged, Vec::new()));
        out.push((LiveEvent::Result { run_id, result }, at.clone()));
    }
    let changed: Vec<(Incident, String)> = incidents::table
        .inner_join(alert_rules::table.on(alert_rules::id.eq(incidents::rule_id)))
        .filter(incidents::check_id.eq(check_id))
        .filter(
            incidents::updated_at
                .gt(cursor.incident_at)
                .or(incidents::resolved_at.gt(cursor.incident_at)),
        )
        .select((Incident::as_select(), alert_rules::kind))
        .load(conn)?;
    let mut changed: Vec<(Micros, Incident, String)> = changed
        .into_iter()
        .map(|(i, kind)| (i.updated_at.max(i.resolved_at.unwrap_or(0)), i, kind))
        .collect();
    changed.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    for (when, incident, kind) in changed {
        at.incident_at = at.incident_at.max(when);
        let kind = RuleKind::parse(&kind).unwrap_or(RuleKind::AvailabilityBelow);
        out.push((
            LiveEvent::Incident {
                incident: incident.view(kind),
            },
            at.clone(),
        ));
    }
    Ok(out)
}

/// Longest one stream lasts, seconds; the client reconnects and resumes.
pub const MAX_STREAM_S: u64 = 3600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_resume_where_they_were_made() {
        let c = Cursor {
            result_at: 1_764_000_000_123_456,
            result_id: "6f1c2a34-1111-4222-8333-944455556666".into(),
            incident_at: 1_764_000_000_000_001,
        };
        assert_eq!(Cursor::parse(&c.event_id()), Some(c));
        assert_eq!(
            Cursor::parse(&Cursor::at(5).event_id()),
            Some(Cursor::at(5))
        );
        for bad in ["", "1.2", "x.y.z", "1.not-a-uuid.2", "1..x"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
