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

/// The volunteer whose enrolment key hashes to `key_hash`, if any.
pub fn by_enrol_key_hash(
    conn: &mut crate::DbConn,
    key_hash: &str,
) -> QueryResult<Option<Volunteer>> {
    volunteers::table
        .filter(volunteers::enrol_key_hash.eq(key_hash))
        .select(Volunteer::as_select())
        .first(conn)
        .optional()
}

/// The volunteer's display name.
pub fn name(conn: &mut crate::DbConn, id: &str) -> QueryResult<String> {
    volunteers::table
        .find(id)
        .select(volunteers::name)
        .first(conn)
}
