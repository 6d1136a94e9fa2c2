//! The `assignments` table: one slot of a run, leased to one agent at a time
//! (`pending -> leased -> done | expired`).

use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::assignments;

/// Assignment states as stored.
pub mod state {
    pub const PENDING: &str = "pending";
    pub const LEASED: &str = "leased";
    pub const DONE: &str = "done";
    pub const EXPIRED: &str = "expired";
}

/// `assignments.state = '<state>'` with the state written into the statement, for
/// filters that should use the partial indexes of open assignments (their predicates
/// name the states): bound as a parameter, a state leaves PostgreSQL's generic plan
/// unable to prove the predicate, and that plan reads every assignment. `state` is one
/// of the [`state`] constants, never outside input.
pub fn in_state(state: &'static str) -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    crate::one_of_literals("\"assignments\".\"state\"", &[state])
}

/// An assignment as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
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
