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
use lastmile_storage::schema::{assignments, result_payments, results, run_agents, runs};
use lastmile_storage::{write_tx, DbConn};

/// Runs one [`settle`] statement settles at most.
pub const SETTLE_BATCH: i64 = 500;

/// Runs one [`archive`] batch takes (each its own transaction).
const ARCHIVE_BATCH: usize = 200;

/// Archive batches per pass: 40k runs, twice the capacity model's runs in a pass's
/// interval (2.9M runs a day, a pass every 10 minutes); a longer backlog is worked off
/// over passes. A batch costs ~85 ms with 31 days of results partitions (150 ms while
/// results had a foreign key to their assignment, checked against every partition).
const ARCHIVE_BATCHES_PER_PASS: usize = 200;

/// How long after the results' cutoff a run's deadline must be before its rows go. A
/// run's results arrive by its deadline plus one lease (minutes), so a day is far more
/// than their spread; the check that no result of the run is left is the real guard.
pub const ARCHIVE_MARGIN_US: Micros = DAY_US;

/// Settles up to [`SETTLE_BATCH`] runs that were past their deadline at `now` and have
/// nothing left to happen: writes their done, expired and flagged counts on the run.
/// Returns how many it settled. One statement; replicas running it at once take
/// different runs, each locked as it is picked (`SKIP LOCKED`; a run another replica
/// settled meanwhile fails the pick's `settled_at IS NULL` on its latest version), and
/// SQLite's one writer picks and updates under its write lock.
///
/// The batch size is part of the statement, not a parameter: PostgreSQL plans a
/// statement it has run five times for any parameter, and with an unknown `LIMIT` that
/// plan read every run (a hash join over a sequential scan: 380 ms with 300k runs,
/// against 15-22 ms for 500 runs settled by key). The runs due are picked once, in a
/// materialized CTE, then updated by key: as a subquery in `FROM`, a plan ran it again
/// for every run not settled yet (17.9 s for 2,000), and with the update's own
/// `settled_at IS NULL` the plan walked every such run against the CTE (140-190 ms);
/// by key, 17 ms for 500.
pub fn settle(conn: &mut DbConn, now: Micros) -> Result<u32> {
    // Replicas settling at once take different runs (PostgreSQL); SQLite has one writer.
    let lock = if matches!(conn, DbConn::Pg(_)) {
        " FOR UPDATE OF u SKIP LOCKED"
    } else {
        ""
    };
    // The runs with queued results are read from the queue once (a few entries), not
    // looked for in it run by run.
    let due = format!(
        "SELECT u.id FROM runs u \
           WHERE u.settled_at IS NULL AND u.deadline_at < $1 \
           AND NOT EXISTS (SELECT 1 FROM open_assignments o \
             WHERE o.check_id = u.check_id AND o.run_id = u.id) \
           AND u.id NOT IN (SELECT q.run_id FROM ({}) q)",
        lastmile_storage::fold_queue::QUEUED_RUNS
    );
    // SQLite's write transaction takes the one write lock, which every accept waits
    // for: look first, outside it, so that a pass with nothing to settle (nearly every
    // pass) does not take it. PostgreSQL's statement with nothing to do locks nothing.
    if matches!(conn, DbConn::Sqlite(_)) {
        let any = diesel::sql_query(format!("SELECT COUNT(*) AS n FROM ({due} LIMIT 1) d"))
            .bind::<BigInt, _>(now)
            .get_result::<Count>(conn)?;
        if any.n == 0 {
            return Ok(0);
        }
    }
    // A run due has no open rows left, so each of its assignments still `leased` in
    // `assignments` was closed by its result: done (see `lastmile_storage::assignments`).
    let sql = format!(
        "WITH due AS MATERIALIZED ({due} \
           ORDER BY u.deadline_at LIMIT {SETTLE_BATCH}{lock}) \
         UPDATE runs SET settled_at = $1, \
           settled_done = (SELECT COUNT(*) FROM assignments a \
             WHERE a.run_id = runs.id AND a.state IN ('{done}', '{leased}')), \
           settled_expired = (SELECT COUNT(*) FROM assignments a \
             WHERE a.run_id = runs.id AND a.state = '{expired}'), \
           settled_flagged = (SELECT COUNT(DISTINCT f.assignment_id) FROM result_flags f \
             WHERE f.run_id = runs.id) \
         FROM due WHERE runs.id = due.id",
        done = state::DONE,
        leased = state::LEASED,
        expired = state::EXPIRED,
    );
    let settled = write_tx(conn, |c| {
        diesel::sql_query(&sql).bind::<BigInt, _>(now).execute(c)
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

impl std::ops::AddAssign for Archived {
    fn add_assign(&mut self, batch: Archived) {
        self.runs_deleted += batch.runs_deleted;
        self.runs_kept += batch.runs_kept;
        self.assignments_deleted += batch.assignments_deleted;
        self.planned_deleted += batch.planned_deleted;
        self.payments_deleted += batch.payments_deleted;
    }
}

/// Whether the run (a row of `runs`) has a later run of its check: then it is not its
/// check's latest. A macro, the expression's type being diesel's to spell.
macro_rules! later_run_of_its_check {
    () => {{
        let later = diesel::alias!(runs as later);
        diesel::dsl::exists(
            later
                .filter(later.field(runs::check_id).eq(runs::check_id))
                // Made at the same time or later (a range of the index on check and
                // time), then strictly later, ties broken by id as
                // `scheduling::latest_run` breaks them.
                .filter(later.field(runs::created_at).ge(runs::created_at))
                .filter(
                    later
                        .field(runs::created_at)
                        .gt(runs::created_at)
                        .or(later.field(runs::id).gt(runs::id)),
                ),
        )
    }};
}

/// Archives the settled runs whose deadline is more than [`ARCHIVE_MARGIN_US`] before
/// `results_cutoff` and none of whose results is left (see the module's doc), in
/// bounded batches, each its own transaction. Returns what it removed.
pub fn archive(conn: &mut DbConn, results_cutoff: Micros, now: Micros) -> Result<Archived> {
    let before = results_cutoff - ARCHIVE_MARGIN_US;
    let mut done = Archived::default();
    let mut cursor = None;
    for _ in 0..ARCHIVE_BATCHES_PER_PASS {
        let (looked_at, batch) = write_tx(conn, |c| archive_batch(c, before, now, &mut cursor))?;
        done += batch;
        if looked_at < ARCHIVE_BATCH {
            break;
        }
    }
    done.runs_deleted += delete_superseded(conn)?;
    Ok(done)
}

/// Most archived runs one pass deletes once their check has run again: about one a
/// check that was paused for longer than the retention and then resumed.
const SUPERSEDED_PER_PASS: i64 = 10_000;

/// Deletes archived runs that are no longer their check's latest: kept while they
/// were (a check paused for longer than the retention), their check has run since.
/// Their per-slot rows went when they were archived. The archived runs are found by a
/// partial index that holds only them (`runs_archived`).
fn delete_superseded(conn: &mut DbConn) -> Result<u64> {
    write_tx(conn, |c| {
        let superseded: Vec<String> = runs::table
            .filter(runs::archived_at.is_not_null())
            .filter(later_run_of_its_check!())
            .select(runs::id)
            .limit(SUPERSEDED_PER_PASS)
            .load(c)?;
        let mut deleted = 0;
        for chunk in superseded.chunks(lastmile_storage::agents::KEYS_PER_LOOKUP) {
            deleted += diesel::delete(runs::table.filter(runs::id.eq_any(chunk))).execute(c)?;
        }
        Ok(deleted as u64)
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Where an [`archive`] pass has got to: the last run it looked at, by deadline then id.
type Cursor = Option<(Micros, String)>;

#[derive(QueryableByName)]
struct Candidate {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    deadline_at: Micros,
}

/// Archives the next [`ARCHIVE_BATCH`] settled runs after `cursor` whose deadline is
/// before `before`, except those a result still refers to; moves `cursor` past them.
fn archive_batch(
    conn: &mut DbConn,
    before: Micros,
    now: Micros,
    cursor: &mut Cursor,
) -> Result<(usize, Archived)> {
    // Another replica's pass skips the runs this one has locked (PostgreSQL); SQLite's
    // one writer needs no lock. The batch size is in the statement (see `settle`).
    let lock = if matches!(conn, DbConn::Pg(_)) {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let (after_deadline, after_id) = cursor.clone().unwrap_or((i64::MIN, String::new()));
    let candidates: Vec<Candidate> = diesel::sql_query(format!(
        "SELECT id, deadline_at FROM runs \
         WHERE archived_at IS NULL AND deadline_at < $1 AND settled_at IS NOT NULL \
         AND (deadline_at > $2 OR (deadline_at = $2 AND id > $3)) \
         ORDER BY deadline_at, id LIMIT {ARCHIVE_BATCH}{lock}"
    ))
    .bind::<BigInt, _>(before)
    .bind::<BigInt, _>(after_deadline)
    .bind::<diesel::sql_types::Text, _>(after_id)
    .load(conn)?;
    let Some(last) = candidates.last() else {
        return Ok((0, Archived::default()));
    };
    *cursor = Some((last.deadline_at, last.id.clone()));
    let looked_at = candidates.len();
    // A result received long after its run's deadline, or kept because its day's
    // partition holds one still queued, keeps its run's rows (its assignment is its
    // foreign key) until it ages out too. One lookup for the batch: per run, the index
    // of every day's partition would be probed once per run.
    let ids: Vec<String> = candidates.into_iter().map(|c| c.id).collect();
    let referred: Vec<String> = results::table
        .filter(results::run_id.eq_any(&ids))
        .select(results::run_id)
        .distinct()
        .load(conn)?;
    let ids: Vec<String> = ids
        .into_iter()
        .filter(|id| !referred.contains(id))
        .collect();
    if ids.is_empty() {
        return Ok((looked_at, Archived::default()));
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
    let runs_deleted = diesel::delete(
        runs::table
            .filter(runs::id.eq_any(&ids))
            .filter(later_run_of_its_check!()),
    )
    .execute(conn)? as u64;
    let runs_kept = diesel::update(runs::table.filter(runs::id.eq_any(&ids)))
        .set(runs::archived_at.eq(now))
        .execute(conn)? as u64;
    Ok((
        looked_at,
        Archived {
            runs_deleted,
            runs_kept,
            assignments_deleted,
            planned_deleted,
            payments_deleted,
        },
    ))
}
