//! The `result_payments` table: which ledger transaction paid for each counted result.
//! Results are paid in batches, one ledger transaction per batch; this table keeps the
//! link per result, and its primary key makes a second payment of one result fail.

use diesel::prelude::*;

use crate::schema::result_payments;
use crate::DbConn;

/// One paid result.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = result_payments)]
pub struct ResultPayment {
    pub assignment_id: String,
    pub transaction_id: String,
    pub price_minor: i64,
}

/// Records payments (inside the transaction that posts them).
pub fn record(conn: &mut DbConn, rows: &[ResultPayment]) -> QueryResult<()> {
    match conn {
        // One statement per chunk (multi-row inserts need the concrete backend).
        DbConn::Pg(c) => {
            for chunk in rows.chunks(crate::agents::BATCH_ROWS) {
                diesel::insert_into(result_payments::table)
                    .values(chunk)
                    .execute(c)?;
            }
        }
        // Row by row: see `fold_queue::enqueue`.
        DbConn::Sqlite(c) => {
            for row in rows {
                diesel::insert_into(result_payments::table)
                    .values(row)
                    .execute(c)?;
            }
        }
    }
    Ok(())
}
