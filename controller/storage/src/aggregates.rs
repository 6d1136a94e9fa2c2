//! The `aggregates` table: per check, hour and (country, region, ASN, class) cell, the
//! counts, one HdrHistogram per phase and those of the other figures in one value, all
//! serialized; and `rollup_cells`, the same cells a day or a week long, rolled up from
//! the hours of complete days.

use diesel::prelude::*;
use lastmile_protocol::Phase;

use crate::schema::{aggregates, rollup_cells};

/// One aggregate row as stored.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable, AsChangeset)]
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
    /// The histograms of the figures that are not phases, by wire name (the domain's
    /// `figures` module encodes them); `None` while the cell has none.
    pub figures: Option<Vec<u8>>,
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

/// A check's hour cells starting in `[from, to)`.
pub fn hours(
    conn: &mut crate::DbConn,
    check_id: &str,
    from: i64,
    to: i64,
) -> QueryResult<Vec<AggregateRow>> {
    aggregates::table
        .filter(aggregates::check_id.eq(check_id))
        .filter(aggregates::bucket_start.ge(from))
        .filter(aggregates::bucket_start.lt(to))
        .select(AggregateRow::as_select())
        .load(conn)
}

/// [`hours`], each handed to `each` as it arrives (see [`for_each_row!`]).
pub fn each_hour<E: From<diesel::result::Error>>(
    conn: &mut crate::DbConn,
    check_id: &str,
    from: i64,
    to: i64,
    each: &mut dyn FnMut(AggregateRow) -> Result<(), E>,
) -> Result<(), E> {
    // The query is written into each backend's arm: `as_select` is typed by backend.
    for_each_row!(
        conn,
        aggregates::table
            .filter(aggregates::check_id.eq(check_id))
            .filter(aggregates::bucket_start.ge(from))
            .filter(aggregates::bucket_start.lt(to))
            .select(AggregateRow::as_select()),
        AggregateRow,
        each
    )
}

/// Names the columns of rolled-up cells that make an [`AggregateRow`] (the hour
/// table's) once, as the selection's type and as its value.
macro_rules! rolled_columns {
    ($($column:ident),* $(,)?) => {
        type RolledColumns = ($(rollup_cells::$column,)*);
        const ROLLED_COLUMNS: RolledColumns = ($(rollup_cells::$column,)*);
    };
}

rolled_columns!(
    check_id,
    bucket_start,
    country,
    region,
    asn,
    connection_class,
    successes,
    failures,
    dns_hist,
    connect_hist,
    tls_hist,
    ttfb_hist,
    transfer_hist,
    total_hist,
    figures,
);

/// A check's rolled-up cells `span_us` long starting in `[from, to)`.
pub fn rolled(
    conn: &mut crate::DbConn,
    span_us: i64,
    check_id: &str,
    from: i64,
    to: i64,
) -> QueryResult<Vec<AggregateRow>> {
    use crate::schema::rollup_cells as d;
    d::table
        .filter(d::check_id.eq(check_id))
        .filter(d::span_us.eq(span_us))
        .filter(d::bucket_start.ge(from))
        .filter(d::bucket_start.lt(to))
        .select(ROLLED_COLUMNS)
        .load(conn)
}

/// [`rolled`], each handed to `each` as it arrives (see [`for_each_row!`]).
pub fn each_rolled<E: From<diesel::result::Error>>(
    conn: &mut crate::DbConn,
    span_us: i64,
    check_id: &str,
    from: i64,
    to: i64,
    each: &mut dyn FnMut(AggregateRow) -> Result<(), E>,
) -> Result<(), E> {
    use crate::schema::rollup_cells as d;
    let query = d::table
        .filter(d::check_id.eq(check_id))
        .filter(d::span_us.eq(span_us))
        .filter(d::bucket_start.ge(from))
        .filter(d::bucket_start.lt(to))
        .select(ROLLED_COLUMNS);
    for_each_row!(conn, query, AggregateRow, each)
}

/// Deletes a check's rolled-up cells of `span_us` starting before `before`.
pub fn delete_rolled_before(
    conn: &mut crate::DbConn,
    span_us: i64,
    check_id: &str,
    before: i64,
) -> QueryResult<usize> {
    use crate::schema::rollup_cells as d;
    diesel::delete(
        d::table
            .filter(d::check_id.eq(check_id))
            .filter(d::span_us.eq(span_us))
            .filter(d::bucket_start.lt(before)),
    )
    .execute(conn)
}

/// Stores rolled-up cells `span_us` long (new ones: a span is rolled up once).
pub fn insert_rolled(
    conn: &mut crate::DbConn,
    span_us: i64,
    rows: &[AggregateRow],
) -> QueryResult<()> {
    use crate::schema::rollup_cells as d;
    for r in rows {
        diesel::insert_into(d::table)
            .values((
                d::check_id.eq(&r.check_id),
                d::span_us.eq(span_us),
                d::bucket_start.eq(r.bucket_start),
                d::country.eq(&r.country),
                d::region.eq(&r.region),
                d::asn.eq(r.asn),
                d::connection_class.eq(&r.connection_class),
                d::successes.eq(r.successes),
                d::failures.eq(r.failures),
                d::dns_hist.eq(&r.dns_hist),
                d::connect_hist.eq(&r.connect_hist),
                d::tls_hist.eq(&r.tls_hist),
                d::ttfb_hist.eq(&r.ttfb_hist),
                d::transfer_hist.eq(&r.transfer_hist),
                d::total_hist.eq(&r.total_hist),
                d::figures.eq(&r.figures),
            ))
            .execute(conn)?;
    }
    Ok(())
}
