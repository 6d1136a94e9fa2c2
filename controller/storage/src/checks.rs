//! The `checks` table: what an owner asked to measure, as stored. List-valued filters
//! and objectives are JSON text (portable across backends); the domain reads them into
//! its types (`lastmile_domain::checks::CheckFields`).

use diesel::prelude::*;

use crate::schema::checks;
use crate::DbError;

/// A check as stored. List-valued filters are JSON text (portable across backends).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = checks)]
pub struct Check {
    pub id: String,
    pub owner_id: String,
    pub site_id: String,
    pub name: String,
    pub kind: String,
    pub url: String,
    pub expected_status: String,
    pub max_bytes: i64,
    pub timeout_ms: i64,
    pub countries: String,
    pub asns: String,
    pub connection_classes: String,
    pub agents_per_run: i32,
    pub interval_s: Option<i64>,
    pub next_run_at: Option<i64>,
    pub created_at: i64,
    pub isp_sharing: bool,
    pub body_contains: Option<String>,
    pub objectives: String,
    pub max_redirects: i32,
    /// When the owner paused the schedule; `None` while it runs.
    pub paused_at: Option<i64>,
    /// How a run's agents are spread over the selection's groups: `proportional` or
    /// `equal`.
    pub spread: String,
    /// A throughput check's load as JSON (`lastmile_protocol::ThroughputTask`);
    /// `None` for the other kinds.
    pub throughput: Option<String>,
    /// A video check's session as JSON (`lastmile_protocol::VideoTask`); `None` for
    /// the other kinds.
    pub video: Option<String>,
    /// A udp check's stream as JSON (`lastmile_protocol::UdpTask` without its token,
    /// which is the site's); `None` for the other kinds.
    pub udp: Option<String>,
}

/// Whether the check with this id was deleted (false for one that does not exist).
pub fn is_deleted(conn: &mut crate::DbConn, id: &str) -> QueryResult<bool> {
    Ok(checks::table
        .find(id)
        .select(checks::deleted_at)
        .first::<Option<i64>>(conn)
        .optional()?
        .flatten()
        .is_some())
}

impl Check {
    /// Statuses that count as success (empty: any 2xx or 3xx).
    pub fn expected_status(&self) -> Vec<u16> {
        serde_json::from_str(&self.expected_status).unwrap_or_default()
    }
}

const NOT_FOUND: DbError = DbError::NotFound {
    what: "check",
    code: "check_not_found",
};

/// The owner's check with this id (not deleted).
pub fn get(conn: &mut crate::DbConn, owner_id: &str, id: &str) -> Result<Check, DbError> {
    checks::table
        .filter(checks::id.eq(id).and(checks::owner_id.eq(owner_id)))
        .filter(checks::deleted_at.is_null())
        .select(Check::as_select())
        .first(conn)
        .optional()?
        .ok_or(NOT_FOUND)
}

/// Any check by id, deleted or not (for the scheduler and the alert pass, which act
/// for every owner and on history).
pub fn get_any(conn: &mut crate::DbConn, id: &str) -> Result<Check, DbError> {
    checks::table
        .find(id)
        .select(Check::as_select())
        .first(conn)
        .optional()?
        .ok_or(NOT_FOUND)
}

/// The owner's checks (not deleted), oldest first.
pub fn list(conn: &mut crate::DbConn, owner_id: &str) -> QueryResult<Vec<Check>> {
    checks::table
        .filter(checks::owner_id.eq(owner_id))
        .filter(checks::deleted_at.is_null())
        .order(checks::created_at)
        .select(Check::as_select())
        .load(conn)
}

/// A write to a check, as the change feed sees it (see `changed_since`).
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct Change {
    pub id: String,
    pub owner_id: String,
    /// Stamped by the database on every insert and update (migration 000043), strictly
    /// increasing per check: (id, changed_at) names one write.
    pub changed_at: i64,
}

/// Checks written at or after `since` (the database's clock), oldest write first, at
/// most `limit`.
pub fn changed_since(conn: &mut crate::DbConn, since: i64, limit: i64) -> QueryResult<Vec<Change>> {
    checks::table
        .filter(checks::changed_at.ge(since))
        .order((checks::changed_at, checks::id))
        .limit(limit)
        .select((checks::id, checks::owner_id, checks::changed_at))
        .load(conn)
}

/// The latest write to any check, by the database's clock (`None` without checks).
pub fn last_change(conn: &mut crate::DbConn) -> QueryResult<Option<i64>> {
    checks::table
        .select(diesel::dsl::max(checks::changed_at))
        .first(conn)
}
