//! The `aggregates` table: per check, hour and (country, region, ASN, class) cell, the
//! counts and one HdrHistogram per phase, serialized.

use diesel::prelude::*;
use lastmile_protocol::Phase;

use crate::schema::aggregates;

/// One aggregate row as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = aggregates)]
pub struct AggregateRow {
    pub check_id: String,
    pub bucket_start: i64,
    pub country: String,
    pub region: String,
    pub asn: i64,
    pub connection_class: String,
    pub successes: i64,
    pub failures: i64,
    pub dns_hist: Vec<u8>,
    pub connect_hist: Vec<u8>,
    pub tls_hist: Vec<u8>,
    pub ttfb_hist: Vec<u8>,
    pub transfer_hist: Vec<u8>,
    pub total_hist: Vec<u8>,
}

impl AggregateRow {
    /// The serialized histogram of one phase.
    pub fn hist(&self, phase: Phase) -> &[u8] {
        match phase {
            Phase::Dns => &self.dns_hist,
            Phase::Connect => &self.connect_hist,
            Phase::Tls => &self.tls_hist,
            Phase::Ttfb => &self.ttfb_hist,
            Phase::Transfer => &self.transfer_hist,
            Phase::Total => &self.total_hist,
        }
    }

    /// The serialized histogram of one phase, to replace.
    pub fn hist_mut(&mut self, phase: Phase) -> &mut Vec<u8> {
        match phase {
            Phase::Dns => &mut self.dns_hist,
            Phase::Connect => &mut self.connect_hist,
            Phase::Tls => &mut self.tls_hist,
            Phase::Ttfb => &mut self.ttfb_hist,
            Phase::Transfer => &mut self.transfer_hist,
            Phase::Total => &mut self.total_hist,
        }
    }
}
