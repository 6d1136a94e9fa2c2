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
    /// The cell's key, in the table's primary key order.
    pub fn primary_key(&self) -> (&str, i64, &str, &str, i64, &str) {
        (
            &self.check_id,
            self.bucket_start,
            &self.country,
            &self.region,
            self.asn,
            &self.connection_class,
        )
    }

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

/// The columns of [`AggregateRow`]s as arrays, each row's value at the same position:
/// the parameters of one statement over many cells (`unnest` zips them back).
struct Columns<'a> {
    check_ids: Vec<&'a str>,
    bucket_starts: Vec<i64>,
    countries: Vec<&'a str>,
    regions: Vec<&'a str>,
    asns: Vec<i64>,
    classes: Vec<&'a str>,
    successes: Vec<i64>,
    failures: Vec<i64>,
    hists: [Vec<&'a [u8]>; 6],
    figures: Vec<Option<&'a [u8]>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [AggregateRow]) -> Columns<'a> {
        let hist = |phase: Phase| rows.iter().map(|r| r.hist(phase)).collect();
        Columns {
            check_ids: rows.iter().map(|r| r.check_id.as_str()).collect(),
            bucket_starts: rows.iter().map(|r| r.bucket_start).collect(),
            countries: rows.iter().map(|r| r.country.as_str()).collect(),
            regions: rows.iter().map(|r| r.region.as_str()).collect(),
            asns: rows.iter().map(|r| r.asn).collect(),
            classes: rows.iter().map(|r| r.connection_class.as_str()).collect(),
            successes: rows.iter().map(|r| r.successes).collect(),
            failures: rows.iter().map(|r| r.failures).collect(),
            hists: Phase::ALL.map(hist),
            figures: rows.iter().map(|r| r.figures.as_deref()).collect(),
        }
    }
}

/// The cells' columns, zipped by `unnest` with each cell's position (`n`): the binds
/// of [`bind_columns`], in the table's column order.
const CELLS: &str = "unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
     $6::text[], $7::bigint[], $8::bigint[], $9::bytea[], $10::bytea[], $11::bytea[], \
     $12::bytea[], $13::bytea[], $14::bytea[], $15::bytea[]) WITH ORDINALITY \
     AS c (check_id, bucket_start, country, region, asn, connection_class, successes, \
     failures, dns_hist, connect_hist, tls_hist, ttfb_hist, transfer_hist, total_hist, \
     figures, n)";

/// Binds [`Columns`] as the parameters `$1` to `$15` of [`CELLS`].
macro_rules! bind_columns {
    ($query:expr, $columns:expr) => {{
        use diesel::sql_types::{Array, BigInt, Binary, Nullable, Text};
        let c = $columns;
        let [dns, connect, tls, ttfb, transfer, total] = &c.hists;
        $query
            .bind::<Array<Text>, _>(&c.check_ids)
            .bind::<Array<BigInt>, _>(&c.bucket_starts)
            .bind::<Array<Text>, _>(&c.countries)
            .bind::<Array<Text>, _>(&c.regions)
            .bind::<Array<BigInt>, _>(&c.asns)
            .bind::<Array<Text>, _>(&c.classes)
            .bind::<Array<BigInt>, _>(&c.successes)
            .bind::<Array<BigInt>, _>(&c.failures)
            .bind::<Array<Binary>, _>(dns)
            .bind::<Array<Binary>, _>(connect)
            .bind::<Array<Binary>, _>(tls)
            .bind::<Array<Binary>, _>(ttfb)
            .bind::<Array<Binary>, _>(transfer)
            .bind::<Array<Binary>, _>(total)
            .bind::<Array<Nullable<Binary>>, _>(&c.figures)
    }};
}

/// PostgreSQL: the hour cells of `empty`'s keys, locked until the end of the caller's
/// transaction and in `empty`'s order, each created from `empty` first if missing.
/// Two statements for any number of cells, where a cell at a time took two a cell: an
/// interleaved fold (results of many agents, so of many cells) writes hundreds.
///
/// The order is the caller's: every folder passes its cells sorted the same way, so
/// that two folders sharing cells create and lock them in one order and cannot
/// deadlock. Not kept prepared: a generic plan made while the table is small could
/// scan it.
pub fn lock_or_create_hours(
    conn: &mut diesel::PgConnection,
    empty: &[AggregateRow],
) -> QueryResult<Vec<AggregateRow>> {
    if empty.is_empty() {
        return Ok(Vec::new());
    }
    let columns = Columns::of(empty);
    bind_columns!(
        diesel::sql_query(format!(
            "INSERT INTO aggregates (check_id, bucket_start, country, region, asn, \
                 connection_class, successes, failures, dns_hist, connect_hist, tls_hist, \
                 ttfb_hist, transfer_hist, total_hist, figures) \
             SELECT check_id, bucket_start, country, region, asn, connection_class, \
                 successes, failures, dns_hist, connect_hist, tls_hist, ttfb_hist, \
                 transfer_hist, total_hist, figures \
             FROM {CELLS} ORDER BY n \
             ON CONFLICT DO NOTHING"
        )),
        &columns
    )
    .execute(conn)?;
    bind_columns!(
        diesel::sql_query(format!(
            "SELECT a.* FROM {CELLS} JOIN aggregates a \
                 ON a.check_id = c.check_id AND a.bucket_start = c.bucket_start \
                 AND a.country = c.country AND a.region = c.region AND a.asn = c.asn \
                 AND a.connection_class = c.connection_class \
             ORDER BY c.n FOR UPDATE OF a"
        )),
        &columns
    )
    .load(conn)
}

/// PostgreSQL: replaces the hour cells of `rows`' keys with `rows`, in one statement.
/// The cells exist and are locked by the caller ([`lock_or_create_hours`]); returns
/// how many were written.
pub fn write_hours(conn: &mut diesel::PgConnection, rows: &[AggregateRow]) -> QueryResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let columns = Columns::of(rows);
    bind_columns!(
        diesel::sql_query(format!(
            "UPDATE aggregates a SET successes = c.successes, failures = c.failures, \
                 dns_hist = c.dns_hist, connect_hist = c.connect_hist, tls_hist = c.tls_hist, \
                 ttfb_hist = c.ttfb_hist, transfer_hist = c.transfer_hist, \
                 total_hist = c.total_hist, figures = c.figures \
             FROM {CELLS} \
             WHERE a.check_id = c.check_id AND a.bucket_start = c.bucket_start \
                 AND a.country = c.country AND a.region = c.region AND a.asn = c.asn \
                 AND a.connection_class = c.connection_class"
        )),
        &columns
    )
    .execute(conn)
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
