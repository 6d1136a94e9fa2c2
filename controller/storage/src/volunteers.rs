//! The `volunteers` table: a person who runs agents and is paid for their work.

use diesel::prelude::*;

use crate::schema::volunteers;

/// A person who runs agents.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = volunteers)]
pub struct Volunteer {
    pub id: String,
    pub name: String,
    pub enrol_key_hash: String,
    pub created_at: i64,
}
