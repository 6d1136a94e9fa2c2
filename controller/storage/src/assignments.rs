//! The `assignments` table: one slot of a run, leased to one agent at a time
//! (`pending -> leased -> closed by its result | expired`), and `open_assignments`, the
//! open ones (pending or leased) again with the indexes of open work.
//!
//! Open work is looked up (offers, leases, expiry, held credit) in `open_assignments`
//! only, a table the size of the work in flight. `assignments` keeps every assignment,
//! indexed only by key and by (run, agent): no lease or expiry changes an indexed column
//! there, so on PostgreSQL each is a HOT update, which writes no index entry (migration
//! 000047).
//!
//! An assignment closed by its result is not written in `assignments` at all: its open
//! row is deleted ([`claim_leased`]), and its row keeps `leased`. So an assignment is
//! done when its state is [`state::DONE`] (closed before this rule) or
//! [`state::LEASED`] with no open row ([`closed_by_result`]). The update that wrote
//! `done` was 8-9 of PostgreSQL's 40 µs a result in `bench ingest --in-process`, and one
//! in five was not HOT (the lease had filled the page).
//!
//! The open row is what a result's close and an expiry contend for: the close deletes
//! it (and takes no other lock), the expiry locks it and the `assignments` row (skipping
//! those locked) before it writes either, and a writer that waits for both (a lease, the
//! accept's lock of assignments it did not close) takes the `assignments` row first.

use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{assignments, open_assignments};
use crate::DbConn;

/// Assignment states as stored.
pub mod state {
    pub const PENDING: &str = "pending";
    pub const LEASED: &str = "leased";
    /// Written by the close before an assignment closed by its result kept `leased`
    /// (see the module's comment): still read, as done.
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

/// Closes the assignments among `ids` that are leased to `agent_id` with the lease not
/// run out at `now`, by deleting their open rows (one statement on PostgreSQL, which
/// locks each row as it deletes it: of two transactions closing the same assignment,
/// the second finds nothing). Returns the open rows as they were. `ids` sorted, at most
/// [`KEYS_PER_LOOKUP`](crate::agents::KEYS_PER_LOOKUP) of them.
pub fn claim_leased(
    conn: &mut DbConn,
    agent_id: &str,
    ids: &[String],
    now: i64,
) -> QueryResult<Vec<OpenAssignment>> {
    use open_assignments::dsl as o;
    match conn {
        // Kept prepared: diesel plans every `DELETE` anew otherwise.
        DbConn::Pg(c) => crate::prepared::Prepared(
            diesel::delete(
                o::open_assignments
                    .filter(o::assignment_id.eq_any(ids))
                    .filter(o::agent_id.eq(agent_id))
                    .filter(in_state(state::LEASED))
                    .filter(o::lease_expires_at.ge(now)),
            )
            .returning(OpenAssignment::as_returning()),
        )
        .get_results(c),
        // One writer: read by key, then delete by key those that qualify (SQLite's
        // planner, without statistics, would rather walk the index of leases).
        DbConn::Sqlite(c) => {
            let timely: Vec<OpenAssignment> = o::open_assignments
                .filter(o::assignment_id.eq_any(ids))
                .select(OpenAssignment::as_select())
                .load(c)?
                .into_iter()
                .filter(|a| {
                    a.agent_id.as_deref() == Some(agent_id)
                        && a.state == state::LEASED
                        && a.lease_expires_at.is_some_and(|deadline| deadline >= now)
                })
                .collect();
            let keys = timely.iter().map(|a| a.assignment_id.as_str());
            diesel::delete(o::open_assignments.filter(o::assignment_id.eq_any(keys))).execute(c)?;
            Ok(timely)
        }
    }
}

/// Which of `ids` still have an open row, locked on PostgreSQL until the end of the
/// caller's transaction (in key order; after their `assignments` rows, as the module's
/// comment says). `ids` sorted.
pub fn lock_open(conn: &mut DbConn, ids: &[String]) -> QueryResult<Vec<String>> {
    let mut open = Vec::new();
    for chunk in ids.chunks(crate::agents::KEYS_PER_LOOKUP) {
        let query = || {
            open_assignments::table
                .filter(open_assignments::assignment_id.eq_any(chunk))
                .order(open_assignments::assignment_id)
                .select(open_assignments::assignment_id)
        };
        open.extend(match conn {
            DbConn::Pg(c) => query().for_update().load::<String>(c)?,
            DbConn::Sqlite(c) => query().load::<String>(c)?,
        });
    }
    Ok(open)
}

/// Whether `a`, read with whether it still has an open row, was closed by its result:
/// done, under either rule of the module's comment.
pub fn closed_by_result(a: &Assignment, open: bool) -> bool {
    a.state == state::DONE || (a.state == state::LEASED && !open)
}
