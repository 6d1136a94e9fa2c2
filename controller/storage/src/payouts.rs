//! The `payouts` table: money on its way to a volunteer's Connect account
//! (`in_transit -> completed | failed | reversed`).

use diesel::prelude::*;

use crate::schema::payouts;

/// A payout as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = payouts)]
pub struct Payout {
    pub id: String,
    pub volunteer_id: String,
    pub account_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub transfer_id: Option<String>,
    pub failure_reason: Option<String>,
    pub attempts: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Payout {
    /// The idempotency key of its transfer, the same on every attempt.
    pub fn idempotency_key(&self) -> String {
        format!("payout-{}", self.id)
    }
}
