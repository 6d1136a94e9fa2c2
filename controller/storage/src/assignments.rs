//! The `assignments` table: one slot of a run, leased to one agent at a time
//! (`pending -> leased -> done | expired`), and `open_assignments`, the open ones
//! (pending or leased) again with the indexes of open work.
//!
//! Open work is looked up (offers, leases, expiry, held credit) in `open_assignments`
//! only, a table the size of the work in flight. `assignments` keeps every assignment,
//! indexed only by key and by (run, agent): no close, lease or expiry changes an
//! indexed column there, so on PostgreSQL each is a HOT update, which writes no index
//! entry (migration 000047). The two tables change together, in the transaction that
//! holds the assignment's row lock in `assignments` (or creates the row): lock the
//! `assignments` row first, then write its open row.

use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{assignments, open_assignments};
use crate::DbConn;

/// Assignment states as stored.
pub mod state {
    pub const PENDING: &str = "pending";
    pub const LEASED: &str = "leased";
    pub const DONE: &str = "done";
    pub const EXPIRED: &str = "expired";
}

/// `open_assignments.state = '<state>'` with the state written into the statement, for
/// filters that should use the partial indexes of open work (their predicates name the
/// state): bound as a parameter, a state leaves PostgreSQL's generic plan unable to
/// prove the predicate, and SQLite's planner never proves it. `state` is
/// [`state::PENDING`] or [`state::LEASED`], never outside input.
pub fn in_state(state: &'static str) -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    crate::one_of_literals("\"open_assignments\".\"state\"", &[state])
}

/// An assignment as stored.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = assignments)]
pub struct Assignment {
    pub id: String,
    pub run_id: String,
    pub check_id: String,
    pub attempt: i32,
    pub state: String,
    pub agent_id: Option<String>,
    pub created_at: i64,
    pub leased_at: Option<i64>,
    pub lease_expires_at: Option<i64>,
}

impl Assignment {
    /// A new slot of run `run_id`, waiting for an agent.
    pub fn new_pending(run_id: &str, check_id: &str, attempt: i32, now: i64) -> Assignment {
        Assignment {
            id: Uuid::new_v4().to_string(),
            run_id: run_id.to_owned(),
            check_id: check_id.to_owned(),
            attempt,
            state: state::PENDING.to_owned(),
            agent_id: None,
            created_at: now,
            leased_at: None,
            lease_expires_at: None,
        }
    }
}

/// An open assignment's row in `open_assignments`: its lookup columns as they are in
/// `assignments`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = open_assignments)]
pub struct OpenAssignment {
    pub assignment_id: String,
    pub run_id: String,
    pub check_id: String,
    pub state: String,
    pub agent_id: Option<String>,
    pub created_at: i64,
    pub lease_expires_at: Option<i64>,
}

impl OpenAssignment {
    /// The open row of `a`, which is pending or leased.
    pub fn of(a: &Assignment) -> OpenAssignment {
        OpenAssignment {
            assignment_id: a.id.clone(),
            run_id: a.run_id.clone(),
            check_id: a.check_id.clone(),
            state: a.state.clone(),
            agent_id: a.agent_id.clone(),
            created_at: a.created_at,
            lease_expires_at: a.lease_expires_at,
        }
    }
}

/// Writes new pending assignments, each with its open row.
pub fn insert_pending(conn: &mut DbConn, slots: &[Assignment]) -> QueryResult<()> {
    let open: Vec<OpenAssignment> = slots.iter().map(OpenAssignment::of).collect();
    crate::insert_rows!(conn, assignments::table, slots);
    crate::insert_rows!(conn, open_assignments::table, &open);
    Ok(())
}

/// Removes the open rows of assignments just closed (done or expired) in
/// `assignments`; returns how many there were.
pub fn forget_open<S: AsRef<str>>(conn: &mut DbConn, ids: &[S]) -> QueryResult<usize> {
    let mut removed = 0;
    for chunk in ids.chunks(crate::agents::KEYS_PER_LOOKUP) {
        let keys: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
        removed += diesel::delete(
            open_assignments::table.filter(open_assignments::assignment_id.eq_any(keys)),
        )
        .execute(conn)?;
    }
    Ok(removed)
}
