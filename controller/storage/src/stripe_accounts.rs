//! The `stripe_accounts` table: a volunteer's Stripe Connect account.

use diesel::prelude::*;

use crate::schema::stripe_accounts;

/// A volunteer's Connect account.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = stripe_accounts)]
pub struct ConnectAccount {
    pub volunteer_id: String,
    pub account_id: String,
    pub payouts_enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}
