//! The `sites` table: an origin an owner adds, and whether (and how) they proved they
//! control it.

use diesel::prelude::*;

use crate::schema::sites;

/// A site as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sites)]
pub struct Site {
    pub id: String,
    pub owner_id: String,
    pub origin: String,
    pub verification_token: String,
    pub verified_at: Option<i64>,
    pub created_at: i64,
    /// How ownership was proven: `file` or `dns` (`None` before, and for sites verified
    /// before the DNS method existed).
    pub verified_by: Option<String>,
}
