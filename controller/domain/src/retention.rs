//! Raw results age out; what was derived from them stays.
//!
//! A raw result is needed while it is folded (aggregates, pay, the leaderboard's
//! per-day tallies), while an owner looks at recent runs, and while verification
//! compares new results with it. After that, reports read aggregates and rolled-up
//! cells, money reads the ledger and `result_payments`, and the leaderboard reads
//! `agent_work_days`: so results older than the retention setting are removed, by the
//! UTC day they were received on, and nothing a report, a balance or a leaderboard
//! shows changes.
//!
//! PostgreSQL partitions `results` by that day (migration `000024`): a pass creates the
//! coming days' partitions ahead ([`prepare_days`]) and drops a whole day's partition
//! once it is past retention, in one statement, with no dead rows left to vacuum. Rows
//! of a day that had no partition yet sit in `results_default` and are moved into the
//! day's partition when it is created. SQLite keeps one table and deletes old rows in
//! bounded batches, each its own short transaction, so agents' writes interleave.
//!
//! Both backends drop exactly the results received before the start of the UTC day
//! `keep_days` before today, never one still queued for folding, and their flags with
//! them; then the runs whose results are all gone lose their per-slot rows
//! ([`crate::run_history::archive`]). Passes from several replicas serialise on an advisory lock (PostgreSQL).

use chrono::{TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::clock::Micros;
use crate::error::Result;
use crate::rollups::{day_start, DAY_US};
use lastmile_storage::{count_sql, write_tx, DbConn};

/// Days ahead of today whose partitions exist before their first result arrives.
pub const DAYS_AHEAD: i64 = 2;

/// Rows one bounded delete removes (SQLite, and rows in PostgreSQL's default partition).
const DELETE_BATCH: i64 = 5_000;

/// Bounded deletes per table per pass: a long backlog is worked off over passes.
const BATCHES_PER_PASS: usize = 40;

/// `pg_advisory_xact_lock` key of partition maintenance ("lmret" in ASCII).
const PARTITION_LOCK: i64 = 0x6c_6d_72_65_74;

/// What one [`age_out`] pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aged {
    /// Whole days' partitions dropped (PostgreSQL).
    pub days_dropped: u32,
    /// Result rows deleted one by one (SQLite; PostgreSQL's default partition).
    pub results_deleted: u64,
    /// Flags of aged-out results deleted.
    pub flags_deleted: u64,
    /// The rows of runs whose results are gone (see `run_history::archive`).
    pub runs: crate::run_history::Archived,
}

/// The first instant whose results are kept when keeping `keep_days` whole days before
/// today's: results received before it age out.
pub fn cutoff(now: Micros, keep_days: u32) -> Micros {
    day_start(now) - i64::from(keep_days) * DAY_US
}

/// The name of day `day`'s partition (days since the Unix epoch): `results_YYYYMMDD`.
fn partition_name(day: i64) -> String {
    let date = Utc
        .timestamp_opt(day * 86_400, 0)
        .single()
        .unwrap_or_default();
    format!("results_{}", date.format("%Y%m%d"))
}

/// The day a partition named by [`partition_name`] holds.
fn partition_day(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("results_")?;
    let date = chrono::NaiveDate::parse_from_str(digits, "%Y%m%d").ok()?;
    let midnight = date.and_hms_opt(0, 0, 0)?.and_utc();
    Some(midnight.timestamp().div_euclid(86_400))
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The days that have a partition of their own, oldest first (PostgreSQL).
pub fn partitioned_days(conn: &mut DbConn) -> Result<Vec<i64>> {
    if !matches!(conn, DbConn::Pg(_)) {
        return Ok(Vec::new());
    }
    let names: Vec<Name> = diesel::sql_query(
        "SELECT c.relname::TEXT AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'results'::regclass",
    )
    .load(conn)?;
    let mut days: Vec<i64> = names
        .iter()
        .filter_map(|n| partition_day(&n.name))
        .collect();
    days.sort_unstable();
    Ok(days)
}

/// Creates the partitions of today and the next [`DAYS_AHEAD`] days that are missing
/// (PostgreSQL; nothing on SQLite), moving any of their rows out of the default
/// partition. Returns how many it created.
pub fn prepare_days(conn: &mut DbConn, now: Micros) -> Result<u32> {
    if !matches!(conn, DbConn::Pg(_)) {
        return Ok(0);
    }
    let today = now.div_euclid(DAY_US);
    let mut created = 0;
    for day in today..=today + DAYS_AHEAD {
        if create_partition(conn, day)? {
            created += 1;
        }
    }
    Ok(created)
}

/// Creates day `day`'s partition unless it exists; true when it created it.
fn create_partition(conn: &mut DbConn, day: i64) -> Result<bool> {
    write_tx(conn, |c| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(PARTITION_LOCK)
            .execute(c)?;
        if partitioned_days(c)?.contains(&day) {
            return Ok(false);
        }
        let (name, from, to) = (partition_name(day), day * DAY_US, (day + 1) * DAY_US);
        let strays = count_sql(
            c,
            &format!(
                "SELECT COUNT(*) AS n FROM (SELECT 1 FROM results_default \
                 WHERE received_at >= {from} AND received_at < {to} LIMIT 1) s"
            ),
        )?;
        if strays == 0 {
            c.batch_execute(&format!(
                "CREATE TABLE {name} PARTITION OF results FOR VALUES FROM ({from}) TO ({to})"
            ))?;
        } else {
            // A partition cannot be created over rows the default partition holds: move
            // them into a table of their own, then attach it as the day's partition.
            c.batch_execute(&format!(
                "CREATE TABLE {name} (LIKE results INCLUDING DEFAULTS); \
                 WITH moved AS (DELETE FROM results_default \
                   WHERE received_at >= {from} AND received_at < {to} RETURNING *) \
                 INSERT INTO {name} SELECT * FROM moved; \
                 ALTER TABLE results ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to})"
            ))?;
        }
        tracing::info!(partition = %name, moved = strays > 0, "results partition created");
        Ok(true)
    })
}

/// Removes the results received before [`cutoff`]`(now, keep_days)` and their flags,
/// except results still queued for folding (they stay until a later pass), known by
/// time: a queue entry's `queued_at` is its results' `received_at`. On
/// PostgreSQL whole days are dropped with their partition; what else is that old (in the
/// default partition, or on SQLite) is deleted in bounded batches.
pub fn age_out(conn: &mut DbConn, now: Micros, keep_days: u32) -> Result<Aged> {
    let before = cutoff(now, keep_days);
    let mut aged = Aged::default();
    if matches!(conn, DbConn::Pg(_)) {
        for day in partitioned_days(conn)? {
            if (day + 1) * DAY_US > before {
                break;
            }
            if drop_partition(conn, day)? {
                aged.days_dropped += 1;
            }
        }
    }
    aged.flags_deleted = delete_in_batches(
        conn,
        "DELETE FROM result_flags WHERE (assignment_id, rule) IN \
         (SELECT assignment_id, rule FROM result_flags WHERE created_at < $1 LIMIT $2)",
        before,
    )?;
    aged.results_deleted = delete_in_batches(
        conn,
        "DELETE FROM results WHERE (assignment_id, received_at) IN \
         (SELECT r.assignment_id, r.received_at FROM results r WHERE r.received_at < $1 \
          AND NOT EXISTS (SELECT 1 FROM fold_queue q WHERE q.queued_at = r.received_at) \
          LIMIT $2)",
        before,
    )?;
    aged.runs = crate::run_history::archive(conn, before, now)?;
    Ok(aged)
}

/// Drops day `day`'s partition and the flags of its results, unless one of its results
/// is still queued for folding; true when it dropped it.
fn drop_partition(conn: &mut DbConn, day: i64) -> Result<bool> {
    write_tx(conn, |c| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(PARTITION_LOCK)
            .execute(c)?;
        if !partitioned_days(c)?.contains(&day) {
            return Ok(false);
        }
        let name = partition_name(day);
        // A queue entry is queued when its results are received: one queued that day
        // may hold results of this partition.
        let queued = count_sql(
            c,
            &format!(
                "SELECT COUNT(*) AS n FROM (SELECT 1 FROM fold_queue \
                 WHERE queued_at >= {} AND queued_at < {} LIMIT 1) s",
                day * DAY_US,
                (day + 1) * DAY_US
            ),
        )?;
        if queued > 0 {
            tracing::warn!(partition = %name, "results partition past retention still has queued results: kept");
            return Ok(false);
        }
        c.batch_execute(&format!(
            "DELETE FROM result_flags WHERE assignment_id IN (SELECT assignment_id FROM {name}); \
             DROP TABLE {name}"
        ))?;
        tracing::info!(partition = %name, "results partition past retention dropped");
        Ok(true)
    })
}

/// Runs `sql` (binding `$1` = `before`, `$2` = the batch size) until it deletes fewer
/// rows than a batch or [`BATCHES_PER_PASS`] batches ran; each batch is its own
/// transaction. Returns the rows deleted.
fn delete_in_batches(conn: &mut DbConn, sql: &str, before: Micros) -> Result<u64> {
    let mut deleted = 0u64;
    for _ in 0..BATCHES_PER_PASS {
        let n = write_tx(conn, |c| {
            diesel::sql_query(sql)
                .bind::<BigInt, _>(before)
                .bind::<BigInt, _>(DELETE_BATCH)
                .execute(c)
        })?;
        deleted += n as u64;
        if (n as i64) < DELETE_BATCH {
            break;
        }
    }
    Ok(deleted)
}

/// One maintenance pass: the coming days' partitions, then (unless `keep_days` is
/// `None`: keep everything) the results past retention.
pub fn maintain(conn: &mut DbConn, now: Micros, keep_days: Option<u32>) -> Result<(u32, Aged)> {
    let created = prepare_days(conn, now)?;
    let aged = match keep_days {
        Some(days) => age_out(conn, now, days)?,
        None => Aged::default(),
    };
    Ok((created, aged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_to_their_day() {
        let day = 20_428; // 2025-12-06
        assert_eq!(partition_name(day), "results_20251206");
        assert_eq!(partition_day(&partition_name(day)), Some(day));
        assert_eq!(partition_day(&partition_name(0)), Some(0));
        assert_eq!(partition_day("results_default"), None);
        assert_eq!(partition_day("results_2025120"), None);
    }

    #[test]
    fn the_cutoff_keeps_whole_days_before_today() {
        let now = 20_427 * DAY_US + 5 * crate::clock::HOUR_US;
        assert_eq!(cutoff(now, 0), 20_427 * DAY_US);
        assert_eq!(cutoff(now, 30), (20_427 - 30) * DAY_US);
    }
}
