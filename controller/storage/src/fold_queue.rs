//! The `fold_queue` table: results accepted and not yet folded into their aggregates
//! and paid for. Rows are added by the transaction that accepts a result and deleted by
//! the transaction that folds it, so each accepted result is folded exactly once.

use diesel::prelude::*;

use crate::schema::fold_queue;
use crate::DbConn;

/// One queued result.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = fold_queue, treat_none_as_default_value = false)]
pub struct Queued {
    pub assignment_id: String,
    pub run_id: String,
    pub queued_at: i64,
}

/// Queues results (inside the transaction that stores them).
pub fn enqueue(conn: &mut DbConn, rows: &[Queued]) -> QueryResult<()> {
    crate::copy_rows!(conn, fold_queue::table, rows);
    Ok(())
}

/// When the oldest and the newest of the results taken were queued.
pub type QueuedSpan = (i64, i64);

/// Takes up to `max` queued results, oldest first, for the caller's write transaction:
/// their assignment ids and when they were queued ([`QueuedSpan`]). On PostgreSQL the rows stay
/// locked until it ends and rows another transaction holds are skipped (`FOR UPDATE
/// SKIP LOCKED`), so several controllers fold side by side without taking the same
/// result twice. SQLite's single writer does the same by itself.
pub fn take(conn: &mut DbConn, max: i64) -> QueryResult<(Vec<String>, Option<QueuedSpan>)> {
    let query = || {
        fold_queue::table
            .order(fold_queue::queued_at)
            .limit(max)
            .select((fold_queue::assignment_id, fold_queue::queued_at))
    };
    let rows: Vec<(String, i64)> = match conn {
        DbConn::Pg(c) => query().for_update().skip_locked().load(c)?,
        DbConn::Sqlite(c) => query().load(c)?,
    };
    let span = rows
        .first()
        .zip(rows.last())
        .map(|(first, last)| (first.1, last.1));
    Ok((rows.into_iter().map(|r| r.0).collect(), span))
}

/// Removes folded results from the queue.
pub fn remove(conn: &mut DbConn, ids: &[String]) -> QueryResult<usize> {
    let mut removed = 0;
    for chunk in ids.chunks(crate::agents::KEYS_PER_LOOKUP) {
        removed +=
            diesel::delete(fold_queue::table.filter(fold_queue::assignment_id.eq_any(chunk)))
                .execute(conn)?;
    }
    Ok(removed)
}

/// How many of a run's results are still waiting to be folded.
pub fn queued_in_run(conn: &mut DbConn, run_id: &str) -> QueryResult<i64> {
    fold_queue::table
        .filter(fold_queue::run_id.eq(run_id))
        .count()
        .get_result(conn)
}
