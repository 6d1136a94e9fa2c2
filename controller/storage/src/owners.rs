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

/// The owner whose API token hashes to `token_hash`, if any.
pub fn by_token_hash(conn: &mut crate::DbConn, token_hash: &str) -> QueryResult<Option<Owner>> {
    owners::table
        .filter(owners::token_hash.eq(token_hash))
        .select(Owner::as_select())
        .first(conn)
        .optional()
}

/// The owner with this id, if any.
pub fn by_id(conn: &mut crate::DbConn, id: &str) -> QueryResult<Option<Owner>> {
    owners::table
        .find(id)
        .select(Owner::as_select())
        .first(conn)
        .optional()
}

/// The owner's display name.
pub fn name(conn: &mut crate::DbConn, id: &str) -> QueryResult<String> {
    owners::table.find(id).select(owners::name).first(conn)
}
