//! PostgreSQL plans of hot statements where a wrong plan costs the accept path dearly.
//! Results land in the day's partition, which has no statistics until autovacuum's
//! next analyze (up to a minute in, every day, and never during `bench ingest`):
//! PostgreSQL then estimates one row per condition and picks among fitting indexes by
//! size, so a statement must leave it only the index that fits.

use diesel::connection::SimpleConnection;
use diesel::RunQueryDsl;
use lastmile_storage::{Backend, Db, DbConn};

use crate::support::TestDb;

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    line: String,
}

/// Verification's peer lookup (`Verifier::peers_of`), as the controller sends it: a
/// cell's latest counted successes, on a day's partition holding 20,000 results of one
/// check in 40 cells and no statistics, in a prepared statement's custom and generic
/// plans. It reads the cell by `results_peers` (keyed by the cell as one expression,
/// migration 000044); keyed by the cell's three columns, PostgreSQL read the check's
/// results by `results_check_received` instead and filtered out the other cells'
/// (2.5 ms a lookup, a third of the database's time in `bench ingest`).
#[test]
fn the_peer_lookup_reads_its_cell_on_a_partition_without_statistics() {
    let test_db = TestDb::new(Backend::Postgres);
    let db = Db::open(&test_db.url, 1).unwrap();
    let mut conn = db.conn().unwrap();
    let DbConn::Pg(pg) = &mut *conn else {
        panic!("a PostgreSQL connection")
    };
    // The rows alone: their assignments' foreign key is not what is looked at.
    pg.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO results (assignment_id, run_id, check_id, agent_id, received_at,
             started_at, late, bytes, dns_us, connect_us, tls_us, ttfb_us, transfer_us,
             total_us, country, region, asn, connection_class, bytes_decoded, redirects,
             redirect_us, flagged)
         SELECT 'a' || i, 'run', 'check', 'agent' || (i % 200), now_us - i * 1000,
             now_us - i * 1000, false, 1000, 1, 1, 1, 20000 + i % 97, 1, 40000 + i % 89,
             'DE', '', 64500 + i % 20, (ARRAY['cable', 'dsl'])[1 + i % 2], 1000, 0, 0, false
           FROM generate_series(1, 20000) i,
                (SELECT (extract(epoch FROM now()) * 1000000)::BIGINT AS now_us) n;
         SET session_replication_role = DEFAULT;
         PREPARE peers(BIGINT, BIGINT, TEXT, BIGINT) AS
         SELECT \"results\".\"agent_id\", \"results\".\"ttfb_us\", \"results\".\"total_us\"
           FROM \"results\"
          WHERE (((((\"results\".\"received_at\" >= $1) AND (\"results\".\"received_at\" <= $2))
                AND NOT (\"results\".\"flagged\")) AND NOT (\"results\".\"late\"))
                AND (\"results\".\"error_kind\" IS NULL))
                AND ((\"results\".\"check_id\" || '|' || \"results\".\"asn\"::text || '|'
                      || \"results\".\"connection_class\") = $3)
          ORDER BY \"results\".\"received_at\" DESC LIMIT $4;",
    )
    .unwrap();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        pg.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .unwrap();
        let plan: Vec<String> = diesel::sql_query(
            "EXPLAIN EXECUTE peers(\
             (extract(epoch FROM now()) * 1000000)::BIGINT - 86400000000, \
             (extract(epoch FROM now()) * 1000000)::BIGINT + 86400000000, 'check|64505|dsl', 200)",
        )
        .load::<Line>(pg)
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
        let plan = plan.join("\n");
        // A partition's copy of `results_peers` is named after its expression.
        assert!(
            plan.contains("_expr_received_at_idx") && !plan.contains("check_id_received_at"),
            "{mode}: the peer lookup should read its cell by results_peers:\n{plan}"
        );
    }
}
