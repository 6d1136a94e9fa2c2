//! The `results` table: one row per assignment an agent reported on, its phases in
//! microseconds and where it was measured from.

use diesel::prelude::*;

use crate::schema::results;

/// A stored result.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = results)]
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
