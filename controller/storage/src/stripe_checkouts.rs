//! The `stripe_checkouts` table: the Checkout sessions an owner opened to buy credit.

use diesel::prelude::*;

use crate::schema::stripe_checkouts;

/// A recorded Checkout session.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = stripe_checkouts)]
pub struct CheckoutRow {
    pub id: String,
    pub owner_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}
