//! The `runs` table: one run of a check, with the terms it was admitted on.

use diesel::prelude::*;

use crate::schema::runs;

/// A run as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = runs)]
pub struct RunRow {
    pub id: String,
    pub check_id: String,
    pub created_at: i64,
    pub deadline_at: i64,
    pub eligible_agents: i32,
    pub requested: i32,
    /// The task as admitted (the domain's `TaskSpec` as JSON); `None` for runs from before it was
    /// kept, which use the check as it is.
    pub task: Option<String>,
    /// The price of each result as admitted (with `price_currency`).
    pub price_minor: Option<i64>,
    pub price_currency: Option<String>,
}

/// A run's outcome as kept on the run once it settled (see the domain's `run_history`):
/// all `None` until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = runs)]
pub struct RunSettlement {
    pub settled_at: Option<i64>,
    pub settled_done: Option<i32>,
    pub settled_expired: Option<i32>,
    pub settled_flagged: Option<i32>,
}
