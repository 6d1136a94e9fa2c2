//! A run's history: its outcome kept on the run once nothing more can happen to it, and
//! its per-slot rows deleted once its results have aged out.
//!
//! Every run writes a row per planned agent (`run_agents`), per slot and re-offer
//! (`assignments`) and per paid result (`result_payments`): about 400 bytes a result,
//! which at the capacity model's rate (29M results a day) is ~11 GB a day that nothing
//! read after the run was over, kept forever. Two steps end that:
//!
//! - [`settle`]: once a run is past its deadline, no slot is pending or leased and none
//!   of its results waits to be folded, its counts (done, expired, flagged) are written
//!   on the run. Its view is then one row (no count over its assignments and results)
//!   and no longer needs either. Each scheduler pass settles a bounded batch, oldest
//!   deadline first (a partial index holds only the runs not settled yet).
//! - [`archive`]: once a settled run's results have aged out (deadline more than
//!   [`ARCHIVE_MARGIN_US`] before the results' cutoff, and no result of the run left:
//!   a partition kept for a result still queued keeps its runs too), its payment links,
//!   planned agents and assignments are deleted, and the run itself unless it is its
//!   check's latest run, which stays (marked archived) so that a check paused for
//!   longer than the retention still shows how its last run went. Runs only as part of
//!   the retention pass: with no retention set, nothing is archived.
//!
//! What the owner sees of a run does not change at either step: the settled counts are
//! the counts the live view showed (a test compares them).

use diesel::prelude::*;
use diesel::sql_types::BigInt;

use crate::clock::Micros;
use crate::error::Result;
use crate::rollups::DAY_US;
use crate::scheduling::state;
use lastmile_storage::schema::{assignments, result_payments, run_agents, runs};
use lastmile_storage::{write_tx, DbConn};

/// Runs one [`settle`] statement settles at most.
pub const SETTLE_BATCH: i64 = 500;

/// Runs one [`archive`] batch takes (each its own transaction).
const ARCHIVE_BATCH: i64 = 200;

/// Archive batches per pass: a long backlog is worked off over passes.
const ARCHIVE_BATCHES_PER_PASS: usize = 50;

/// How long after the results' cutoff a run's deadline must be before its rows go. A
/// run's results arrive by its deadline plus one lease (minutes), so a day is far more
/// than their spread; the check that no result of the run is left is the real guard.
pub const ARCHIVE_MARGIN_US: Micros = DAY_US;

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// Settles up to `limit` runs that were past their deadline at `now` and have nothing
/// left to happen: writes their done, expired and flagged counts on the run. Returns
/// how many it settled. One statement; replicas running it at once settle a run once
/// (the `settled_at IS NULL` condition is rechecked on the locked row).
pub fn settle(conn: &mut DbConn, now: Micros, limit: i64) -> Result<u32> {
    let sql = format!(
        "UPDATE runs SET settled_at = $1, \
           settled_done = (SELECT COUNT(*) FROM assignments a \
             WHERE a.run_id = runs.id AND a.state = '{done}'), \
           settled_expired = (SELECT COUNT(*) FROM assignments a \
             WHERE a.run_id = runs.id AND a.state = '{expired}'), \
           settled_flagged = (SELECT COUNT(*) FROM results r \
             WHERE r.run_id = runs.id AND r.flagged) \
         WHERE settled_at IS NULL AND id IN (SELECT u.id FROM runs u \
           WHERE u.settled_at IS NULL AND u.deadline_at < $1 \
           AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.run_id = u.id \
             AND a.state IN ('{pending}', '{leased}')) \
           AND NOT EXISTS (SELECT 1 FROM fold_queue q WHERE q.run_id = u.id) \
           ORDER BY u.deadline_at LIMIT $2)",
        done = state::DONE,
        expired = state::EXPIRED,
        pending = state::PENDING,
        leased = state::LEASED,
    );
    let settled = write_tx(conn, |c| {
        diesel::sql_query(&sql)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(limit)
            .execute(c)
    })?;
    Ok(u32::try_from(settled).unwrap_or(u32::MAX))
}

/// What one [`archive`] pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Archived {
    /// Runs whose rows were deleted, the run's own row included.
    pub runs_deleted: u64,
    /// Checks' latest runs whose per-slot rows were deleted and whose own row stays.
    pub runs_kept: u64,
    pub assignments_deleted: u64,
    pub planned_deleted: u64,
    pub payments_deleted: u64,
}

/// Archives the settled runs whose deadline is more than [`ARCHIVE_MARGIN_US`] before
/// `results_cutoff` and none of whose results is left (see the module's doc), in
/// bounded batches, each its own transaction. Returns what it removed.
pub fn archive(conn: &mut DbConn, results_cutoff: Micros, now: Micros) -> Result<Archived> {
    let before = results_cutoff - ARCHIVE_MARGIN_US;
    let mut done = Archived::default();
    for _ in 0..ARCHIVE_BATCHES_PER_PASS {
        let batch = write_tx(conn, |c| archive_batch(c, before, now))?;
        done.runs_deleted += batch.runs_deleted;
        done.runs_kept += batch.runs_kept;
        done.assignments_deleted += batch.assignments_deleted;
        done.planned_deleted += batch.planned_deleted;
        done.payments_deleted += batch.payments_deleted;
        if batch.runs_deleted + batch.runs_kept < ARCHIVE_BATCH as u64 {
            break;
        }
    }
    Ok(done)
}

fn archive_batch(conn: &mut DbConn, before: Micros, now: Micros) -> Result<Archived> {
    // Another replica's pass skips the runs this one has locked (PostgreSQL); SQLite's
    // one writer needs no lock.
    let lock = if matches!(conn, DbConn::Pg(_)) {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let ids: Vec<String> = diesel::sql_query(format!(
        "SELECT u.id AS id FROM runs u \
         WHERE u.archived_at IS NULL AND u.deadline_at < $1 AND u.settled_at IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM results r WHERE r.run_id = u.id) \
         ORDER BY u.deadline_at LIMIT $2{lock}"
    ))
    .bind::<BigInt, _>(before)
    .bind::<BigInt, _>(ARCHIVE_BATCH)
    .load::<IdRow>(conn)?
    .into_iter()
    .map(|r| r.id)
    .collect();
    if ids.is_empty() {
        return Ok(Archived::default());
    }
    let payments_deleted = diesel::delete(
        result_payments::table.filter(
            result_payments::assignment_id.eq_any(
                assignments::table
                    .filter(assignments::run_id.eq_any(&ids))
                    .select(assignments::id),
            ),
        ),
    )
    .execute(conn)? as u64;
    let planned_deleted = diesel::delete(run_agents::table.filter(run_agents::run_id.eq_any(&ids)))
        .execute(conn)? as u64;
    let assignments_deleted =
        diesel::delete(assignments::table.filter(assignments::run_id.eq_any(&ids))).execute(conn)?
            as u64;
    // A run with a later run of its check goes; a check's latest run stays, archived.
    let later = diesel::alias!(runs as later);
    let runs_deleted = diesel::delete(
        runs::table
            .filter(runs::id.eq_any(&ids))
            .filter(diesel::dsl::exists(
                later
                    .filter(later.field(runs::check_id).eq(runs::check_id))
                    .filter(
                        later.field(runs::created_at).gt(runs::created_at).or(later
                            .field(runs::created_at)
                            .eq(runs::created_at)
                            .and(later.field(runs::id).gt(runs::id))),
                    ),
            )),
    )
    .execute(conn)? as u64;
    let runs_kept = diesel::update(runs::table.filter(runs::id.eq_any(&ids)))
        .set(runs::archived_at.eq(now))
        .execute(conn)? as u64;
    Ok(Archived {
        runs_deleted,
        runs_kept,
        assignments_deleted,
        planned_deleted,
        payments_deleted,
    })
}
