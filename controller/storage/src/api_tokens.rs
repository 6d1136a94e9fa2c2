//! The `api_tokens` table: an owner's named API tokens, stored as hashes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::clock::to_datetime;
use crate::schema::api_tokens;

/// A token as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_tokens)]
pub struct ApiToken {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub token_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl ApiToken {
    pub fn created(&self) -> DateTime<Utc> {
        to_datetime(self.created_at)
    }

    pub fn revoked(&self) -> Option<DateTime<Utc>> {
        self.revoked_at.map(to_datetime)
    }
}
