//! The `results` table: one row per assignment an agent reported on, its phases in
//! microseconds and where it was measured from.

use diesel::prelude::*;

use crate::schema::results;
use crate::DbConn;

/// A stored result.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = results, treat_none_as_default_value = false)]
pub struct StoredResult {
    pub assignment_id: String,
    pub run_id: String,
    pub check_id: String,
    pub agent_id: String,
    pub received_at: i64,
    pub started_at: i64,
    pub late: bool,
    pub status: Option<i32>,
    pub bytes: i64,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub dns_us: i64,
    pub connect_us: i64,
    pub tls_us: i64,
    pub ttfb_us: i64,
    pub transfer_us: i64,
    pub total_us: i64,
    pub country: String,
    pub region: String,
    pub asn: i64,
    pub connection_class: String,
    pub remote_addr: Option<String>,
    pub ip_version: Option<i32>,
    pub http_version: Option<String>,
    pub bytes_decoded: i64,
    pub redirects: i32,
    pub redirect_us: i64,
    /// A page check's summary as JSON (`PageSummary`); `None` for an http check.
    pub page: Option<String>,
    /// The redirects followed as JSON (`Vec<Hop>`, bounded by `lastmile_domain::ingest::bound_hops`); `None`
    /// when there were none.
    pub redirect_hops: Option<String>,
}

impl StoredResult {
    /// The phases in microseconds, in `lastmile_protocol::Phase::ALL`'s order (dns,
    /// connect, tls, ttfb, transfer, total).
    pub fn phases_us(&self) -> [i64; 6] {
        [
            self.dns_us,
            self.connect_us,
            self.tls_us,
            self.ttfb_us,
            self.transfer_us,
            self.total_us,
        ]
    }
}

/// Writes results (inside the caller's transaction), with one `COPY` on PostgreSQL
/// ([`copy_rows!`](crate::copy_rows)): the accept path, which writes a batch's hundreds
/// of results at once, took 20.9k–22.4k results/s with it and 17.0k–18.5k with
/// multi-row `INSERT`s of 1,000 (`bench ingest --in-process --group 10`, alternated).
pub fn insert(conn: &mut DbConn, rows: &[StoredResult]) -> QueryResult<()> {
    crate::copy_rows!(conn, results::table, rows);
    Ok(())
}
