//! SQLite has no statistics (no `ANALYZE` is run): it picks an index by the shape of a
//! statement alone, so a statement that filters on columns no index starts with reads
//! the whole table, however small its answer. Each test here asks SQLite for the plan
//! of a statement the controller sends (as it sends it: the shapes were taken from its
//! own query log) and asserts the index that fits. Stop 32 ran EXPLAIN QUERY PLAN over
//! every statement the demo and the alert, ISP, live, ledger, leaderboard and retention
//! tests send; these are the ones it found reading whole tables.

use diesel::RunQueryDsl;
use lastmile_storage::{Backend, Db};

use crate::support::TestDb;

#[derive(diesel::QueryableByName)]
struct Step {
    #[diesel(sql_type = diesel::sql_types::Text)]
    detail: String,
}

/// The steps of `sql`'s plan on a fresh, migrated SQLite database.
fn plan(db: &Db, sql: &str) -> Vec<String> {
    diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
        .load::<Step>(&mut *db.conn().unwrap())
        .unwrap()
        .into_iter()
        .map(|s| s.detail)
        .collect()
}

fn assert_uses(db: &Db, sql: &str, index: &str) {
    let steps = plan(db, sql);
    assert!(
        steps.iter().any(|s| s.contains(index)),
        "{sql}\nshould use {index}: {steps:#?}"
    );
}

/// A check's results read by arrival (the report page's last hour, a live follower's
/// poll in arrival order, an alert rule's window): by `(check_id, received_at)`, not
/// every retained result of the check (the index was `(check_id, started_at)`).
#[test]
fn a_checks_results_by_arrival_are_read_by_range() {
    let test_db = TestDb::new(Backend::Sqlite);
    let db = Db::open(&test_db.url, 1).unwrap();
    let window = "check_id = 'c' AND received_at >= 1000";
    let by_range = "results_check_received (check_id=? AND received_at>?";
    // recent.rs: the last hour's counted successes.
    assert_uses(&db, &format!("SELECT connection_class FROM results WHERE {window} AND received_at < 2000 AND NOT late AND NOT flagged AND error_kind IS NULL LIMIT 10"), by_range);
    // live.rs: results since the follower's cursor, in arrival order.
    assert_uses(&db, &format!("SELECT assignment_id FROM results WHERE {window} ORDER BY received_at, assignment_id LIMIT 100"), by_range);
    // incidents.rs: an alert rule's window, per segment.
    assert_uses(&db, &format!("SELECT country, COUNT(*) FROM results WHERE {window} AND NOT late AND NOT flagged GROUP BY country, asn, connection_class"), by_range);
}

/// The leaderboard's week or month: the agents' uptime and work since a day, not every
/// day of every agent.
#[test]
fn the_leaderboard_reads_the_days_of_its_period() {
    let test_db = TestDb::new(Backend::Sqlite);
    let db = Db::open(&test_db.url, 1).unwrap();
    assert_uses(
        &db,
        "SELECT `agent_uptime`.`agent_id`, `agent_uptime`.`seconds` FROM `agent_uptime` WHERE (`agent_uptime`.`day` >= 20000)",
        "agent_uptime_day (day>?)",
    );
    assert_uses(
        &db,
        "SELECT `agent_work_days`.`agent_id`, `agent_work_days`.`results`, `agent_work_days`.`measuring_us` FROM `agent_work_days` WHERE (`agent_work_days`.`day` >= 20000)",
        "agent_work_days_day (day>?)",
    );
}

/// An ISP's views: the cells of its networks in the window, not every cell of every
/// check.
#[test]
fn an_isps_views_read_the_cells_of_its_networks() {
    let test_db = TestDb::new(Backend::Sqlite);
    let db = Db::open(&test_db.url, 1).unwrap();
    assert_uses(
        &db,
        "SELECT `checks`.`url`, `aggregates`.`check_id`, `aggregates`.`ttfb_hist` FROM (`aggregates` INNER JOIN `checks` ON (`checks`.`id` = `aggregates`.`check_id`)) WHERE ((((`checks`.`isp_sharing` = 1) AND (`aggregates`.`asn` IN (64501, 64502))) AND (`aggregates`.`bucket_start` >= 1000)) AND (`aggregates`.`bucket_start` < 2000))",
        "aggregates_asn (asn=? AND bucket_start>? AND bucket_start<?)",
    );
}

/// Every replica's change feed of checks, once a second: the writes of the last
/// seconds, by `changed_at`, not every check of every owner.
#[test]
fn the_check_change_feed_reads_the_last_writes() {
    let test_db = TestDb::new(Backend::Sqlite);
    let db = Db::open(&test_db.url, 1).unwrap();
    assert_uses(
        &db,
        "SELECT `checks`.`id`, `checks`.`owner_id`, `checks`.`changed_at` FROM `checks` WHERE (`checks`.`changed_at` >= 1000) ORDER BY `checks`.`changed_at`, `checks`.`id` LIMIT 10000",
        "checks_changed (changed_at>?)",
    );
    assert_uses(
        &db,
        "SELECT MAX(`checks`.`changed_at`) FROM `checks`",
        "checks_changed",
    );
}

/// Verification's peer lookup (`Verifier::peers_of`): a cell's latest counted
/// successes through the partial `results_peers` (migration 000044), whose predicate
/// the statement names as literals, not the check's every result by arrival.
#[test]
fn the_peer_lookup_reads_its_cell() {
    let test_db = TestDb::new(Backend::Sqlite);
    let db = Db::open(&test_db.url, 1).unwrap();
    assert_uses(
        &db,
        "SELECT `results`.`agent_id`, `results`.`ttfb_us`, `results`.`total_us` FROM `results` WHERE ((((((((`results`.`received_at` >= 1000) AND (`results`.`received_at` <= 2000)) AND NOT (`results`.`flagged`)) AND NOT (`results`.`late`)) AND (`results`.`error_kind` IS NULL)) AND (`results`.`check_id` = 'c')) AND (`results`.`asn` = 64501)) AND (`results`.`connection_class` = 'dsl')) ORDER BY `results`.`received_at` DESC LIMIT 200",
        "results_peers (check_id=? AND asn=? AND connection_class=? AND received_at>? AND received_at<?)",
    );
}
