//! The `agents` table: an enrolled agent, where it is, its line as declared and as
//! calibrated, and what it can measure.

use diesel::prelude::*;
use lastmile_protocol::{CheckKind, ConnectionClass, Location};

use crate::schema::agents;

/// An agent as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = agents)]
pub struct Agent {
    pub id: String,
    pub volunteer_id: String,
    pub name: String,
    pub token_hash: String,
    pub declared_class: String,
    pub version: String,
    pub max_concurrent: i32,
    pub ip: String,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
    pub asn: Option<i64>,
    pub as_org: Option<String>,
    pub enrolled_at: i64,
    pub last_heartbeat_at: Option<i64>,
    pub measured_class: Option<String>,
    pub calibrated_at: Option<i64>,
    pub rtt_us: Option<i64>,
    pub down_bps: Option<i64>,
    pub up_bps: Option<i64>,
    pub class_mismatch: bool,
    pub calibration_day: i64,
    pub calibration_bytes: i64,
    /// Why the agent takes no work now, as its last heartbeat said.
    pub paused_reason: Option<String>,
    /// The check kinds the agent can measure, comma-separated (see [`Agent::measures`]).
    pub check_kinds: String,
    /// When anything but the heartbeat time last changed (controllers re-read the rows
    /// changed since they last looked: [`changed_since`]).
    pub changed_at: i64,
    /// When the agent's token was revoked; a revoked agent is refused.
    pub revoked_at: Option<i64>,
    /// Whether the agent runs path traces, as its last heartbeat said.
    pub path_trace: bool,
}

impl Agent {
    /// The class selection and reports use: the measured class once calibration has
    /// run, the declared one until then.
    pub fn connection_class(&self) -> Option<ConnectionClass> {
        self.measured_class
            .as_deref()
            .unwrap_or(&self.declared_class)
            .parse()
            .ok()
    }

    /// Whether the agent said it can measure checks of `kind`.
    pub fn measures(&self, kind: CheckKind) -> bool {
        self.check_kinds.split(',').any(|k| k == kind.as_str())
    }

    /// The agent's location as last resolved.
    pub fn location(&self) -> Location {
        Location {
            country: self.country.clone(),
            region: self.region.clone(),
            city: self.city.clone(),
            asn: self.asn.and_then(|a| u32::try_from(a).ok()),
            as_org: self.as_org.clone(),
        }
    }
}

/// The agent whose token hashes to `token_hash`, unless revoked.
pub fn by_token_hash(conn: &mut crate::DbConn, token_hash: &str) -> QueryResult<Option<Agent>> {
    agents::table
        .filter(agents::token_hash.eq(token_hash))
        .filter(agents::revoked_at.is_null())
        .select(Agent::as_select())
        .first(conn)
        .optional()
}

/// Agents whose row changed (see [`Agent::changed_at`]) at or after `since`, revoked
/// ones included, at most `limit`, oldest change first.
pub fn changed_since(conn: &mut crate::DbConn, since: i64, limit: i64) -> QueryResult<Vec<Agent>> {
    agents::table
        .filter(agents::changed_at.ge(since))
        .order((agents::changed_at, agents::id))
        .limit(limit)
        .select(Agent::as_select())
        .load(conn)
}

/// Most rows one batched statement writes.
pub const BATCH_ROWS: usize = 1000;

/// Most keys one `= ANY(..)` lookup of rows by primary key carries. PostgreSQL plans a
/// custom plan with the array as a constant: with 500 keys it chose a sequential scan
/// of a 40,000-row `assignments` table (every row read and compared with a hash of
/// the keys, 6 ms instead of 2.3 ms by the index, and each of the accept path's
/// batches did it twice); with 100 it used the index on the same table (with 200 the
/// two plans' costs were within 2 %).
pub const KEYS_PER_LOOKUP: usize = 100;

/// `text` as an SQL string literal. The batched statements below write their values
/// inline (diesel binds a fixed number of parameters per query type, and a batch's size
/// varies); the values are our own ids and integers, and quotes are doubled anyway.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Moves each agent's last heartbeat time forward to the given time (never back: a
/// controller flushing late must not undo another's newer beat). One statement per
/// [`BATCH_ROWS`]; the same SQL on both backends (`VALUES` columns are `column1`,
/// `column2` in both).
pub fn record_beats(conn: &mut crate::DbConn, beats: &[(String, i64)]) -> QueryResult<usize> {
    let mut changed = 0;
    for chunk in beats.chunks(BATCH_ROWS) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(id, at)| format!("({}, {at})", literal(id)))
            .collect();
        changed += diesel::sql_query(format!(
            "UPDATE agents SET last_heartbeat_at = v.column2 FROM (VALUES {}) AS v \
             WHERE agents.id = v.column1 \
             AND (agents.last_heartbeat_at IS NULL OR agents.last_heartbeat_at < v.column2)",
            values.join(", ")
        ))
        .execute(conn)?;
    }
    Ok(changed)
}

/// Adds seconds online to agents' tallies per UTC day: `(agent, day, seconds)`. One
/// statement per [`BATCH_ROWS`], each an upsert that adds, so two controllers adding at
/// once cannot lose either's seconds. At most one row per (agent, day) in a batch
/// (PostgreSQL refuses to upsert the same key twice in one statement).
pub fn add_uptime(conn: &mut crate::DbConn, rows: &[(String, i64, i64)]) -> QueryResult<usize> {
    let mut added = 0;
    for chunk in rows.chunks(BATCH_ROWS) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(id, day, seconds)| format!("({}, {day}, {seconds})", literal(id)))
            .collect();
        added += diesel::sql_query(format!(
            "INSERT INTO agent_uptime (agent_id, day, seconds) VALUES {} \
             ON CONFLICT (agent_id, day) DO UPDATE SET seconds = agent_uptime.seconds + excluded.seconds",
            values.join(", ")
        ))
        .execute(conn)?;
    }
    Ok(added)
}

/// Revokes one of the volunteer's agents: its token stops working (within a few
/// seconds on every controller, which re-read changed rows). Returns whether it was
/// theirs and not already revoked.
pub fn revoke(
    conn: &mut crate::DbConn,
    volunteer_id: &str,
    agent_id: &str,
    now: i64,
) -> QueryResult<bool> {
    let changed = diesel::update(
        agents::table
            .find(agent_id)
            .filter(agents::volunteer_id.eq(volunteer_id))
            .filter(agents::revoked_at.is_null()),
    )
    .set((agents::revoked_at.eq(now), agents::changed_at.eq(now)))
    .execute(conn)?;
    Ok(changed == 1)
}
