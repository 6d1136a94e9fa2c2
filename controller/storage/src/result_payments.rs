//! The `result_payments` table: which ledger transaction paid for each counted result.
//! Results are paid in batches, one ledger transaction per batch; this table keeps the
//! link per result, and its primary key makes a second payment of one result fail.

use diesel::prelude::*;

use crate::schema::result_payments;
use crate::DbConn;

/// One paid result.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = result_payments, treat_none_as_default_value = false)]
pub struct ResultPayment {
    pub assignment_id: String,
    pub transaction_id: String,
    pub price_minor: i64,
}

/// Records payments (inside the transaction that posts them).
pub fn record(conn: &mut DbConn, rows: &[ResultPayment]) -> QueryResult<()> {
    crate::copy_rows!(conn, result_payments::table, rows);
    Ok(())
}
