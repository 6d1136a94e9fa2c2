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

/// The owner's site with this id.
pub fn get(conn: &mut crate::DbConn, owner_id: &str, id: &str) -> Result<Site, crate::DbError> {
    sites::table
        .filter(sites::id.eq(id).and(sites::owner_id.eq(owner_id)))
        .filter(sites::deleted_at.is_null())
        .select(Site::as_select())
        .first(conn)
        .optional()?
        .ok_or(crate::DbError::NotFound {
            what: "site",
            code: "site_not_found",
        })
}

/// The verification token of the site with this id, whoever owns it (the scheduler
/// puts it into a udp check's tasks).
pub fn token_of(conn: &mut crate::DbConn, id: &str) -> Result<String, crate::DbError> {
    sites::table
        .find(id)
        .select(sites::verification_token)
        .first(conn)
        .optional()?
        .ok_or(crate::DbError::NotFound {
            what: "site",
            code: "site_not_found",
        })
}

/// The owner's sites, oldest first.
pub fn list(conn: &mut crate::DbConn, owner_id: &str) -> QueryResult<Vec<Site>> {
    sites::table
        .filter(sites::owner_id.eq(owner_id))
        .filter(sites::deleted_at.is_null())
        .order(sites::created_at)
        .select(Site::as_select())
        .load(conn)
}
