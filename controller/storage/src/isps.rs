//! The `isps` table: an ISP account (its networks are in `isp_asns`).

use diesel::prelude::*;

use crate::schema::isps;

/// An ISP account.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = isps)]
pub struct Isp {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub created_at: i64,
}
