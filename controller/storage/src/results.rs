//! The `results` table: one row per assignment an agent reported on, its phases in
//! microseconds and where it was measured from.

use diesel::prelude::*;

use crate::schema::results;
use crate::DbConn;

/// A stored result.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
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
    /// The figures besides the phases that the measurement gave, as the controller
    /// derived them at ingest from the kind's summary: JSON of figure wire name to
    /// value (a throughput load's goodput and latencies); `None` when the phases say
    /// it all.
    pub figures: Option<String>,
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

/// The results of `assignment_ids` received between `from` and `to`, each with the
/// volunteer whose agent measured it: the fold's read-back of what it takes from the
/// queue.
///
/// On PostgreSQL each id is looked up by itself (a lateral subquery that `OFFSET 0`
/// keeps from being merged into a join): a probe of the key in each partition the time
/// bounds leave, whatever the statistics say. As one `assignment_id = ANY(..)` query,
/// the generic plan PostgreSQL settles on after five runs, costed with a new day's
/// partition not yet analyzed (estimated at a few rows), read that partition whole
/// through the peers index for every 100 keys: 70–195 ms a statement, and the fold of
/// 40k results took 37 s instead of 2 (`auto_explain`, 3 of ~80 bench runs). SQLite
/// probes its key by each id. The agents are joined to the results found, not inside
/// the probe (where PostgreSQL hashed the agents table again for every key: 100 ms).
pub fn with_volunteers(
    conn: &mut DbConn,
    assignment_ids: &[String],
    (from, to): (i64, i64),
) -> QueryResult<Vec<(StoredResult, String)>> {
    use crate::schema::agents;
    match conn {
        DbConn::Pg(c) => {
            #[derive(QueryableByName)]
            struct Row {
                #[diesel(embed)]
                result: StoredResult,
                #[diesel(sql_type = diesel::sql_types::Text)]
                volunteer_id: String,
            }
            let rows: Vec<Row> = diesel::sql_query(
                "SELECT r.*, ag.volunteer_id FROM ( \
                     SELECT r.* FROM unnest($1) AS k (id) \
                     CROSS JOIN LATERAL ( \
                         SELECT * FROM results \
                         WHERE assignment_id = k.id AND received_at >= $2 AND received_at <= $3 \
                         OFFSET 0) r \
                     OFFSET 0) r \
                 JOIN agents ag ON ag.id = r.agent_id",
            )
            .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(assignment_ids)
            .bind::<diesel::sql_types::BigInt, _>(from)
            .bind::<diesel::sql_types::BigInt, _>(to)
            .load(c)?;
            Ok(rows
                .into_iter()
                .map(|r| (r.result, r.volunteer_id))
                .collect())
        }
        DbConn::Sqlite(c) => {
            let mut rows = Vec::with_capacity(assignment_ids.len());
            for chunk in assignment_ids.chunks(crate::agents::KEYS_PER_LOOKUP) {
                rows.extend(
                    results::table
                        .inner_join(agents::table.on(agents::id.eq(results::agent_id)))
                        .filter(results::assignment_id.eq_any(chunk))
                        .filter(results::received_at.ge(from))
                        .filter(results::received_at.le(to))
                        .select((StoredResult::as_select(), agents::volunteer_id))
                        .load::<(StoredResult, String)>(c)?,
                );
            }
            Ok(rows)
        }
    }
}
