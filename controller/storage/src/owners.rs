//! The `owners` table: a customer account (sites, checks, credit).

use diesel::prelude::*;

use crate::schema::owners;

/// A customer account.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = owners)]
pub struct Owner {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub created_at: i64,
}
